//! `chargpt ladder`: trains the lecture's ladder of models one after the other, each at the
//! lecture's settings for that rung, and compares every val loss with the figure the lecture
//! published. Writes a checkpoint per rung, `ladder.md` (the table) and `ladder.png` (every
//! rung's val curve).

use super::format::{duration, markdown_table, text_table, thousands};
use super::grid::{
    on_rank, run_error, train_divided, train_quietly, with_overrides, workers, Trained,
};
use super::plot::{draw_line_plot, LinePlot, Series};
use super::{agree, load_text, UsageError};
use anyhow::{bail, Context, Result};
use chargpt::checkpoint;
use chargpt::config::{Architecture, AttentionScale, Init, ModelConfig, TrainConfig};
use chargpt::distributed::Group;
use chargpt::ladder::{self, Rung, TOLERANCE};
use chargpt::runs::{MetricsRow, Run};
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

pub const TABLE_FILE: &str = "ladder.md";
pub const PLOT_FILE: &str = "ladder.png";

#[derive(Args)]
#[command(after_help = "\
Rungs, in the lecture's order: bigram, single-head, multi-head, feed-forward, residual, \
layernorm, and with --include-big the 10.8M-parameter lecture model (hours on a CPU). Each \
is the preset of the same name, trained as the lecture trained it: n_embd 32, block 8, batch 32, \
AdamW at 1e-3 for 5000 steps (the bigram 1e-2 for 3000), PyTorch's default init and scores \
scaled by 1/sqrt(n_embd). The layernorm rung is the layernorm preset with init=pytorch and \
attention_scale=n-embd, as the lecture's code was at that commit (the preset itself is the \
current gpt.py, with N(0, 0.02) init and 1/sqrt(head_size) scaling).

Every rung uses the same seed. The table gives the val loss two ways: the lecture's estimate \
(mean of 200 random val batches at the last step; what the published figures are) and the exact \
loss over the whole val split; diff is estimate minus published, and a rung within 0.05 of its \
figure counts as reproduced.

Output: DIR/<rung>/ (a checkpoint and its loss.png, as `chargpt train` writes them), DIR/ladder.md and \
DIR/ladder.png. A directory that already holds a ladder is never overwritten: choose another \
--out or delete it. Ctrl-C stops after the current step and keeps the finished rungs' table.

--modern climbs past the lecture instead: from the nanogpt-cpu preset (2000 steps of 12x64), \
each rung adds one idea to all the rungs before: rope (rotary positions), rmsnorm, relu2, \
qk-norm, tied (embeddings), no-bias, wsd (schedule), muon (optimizer). Every rung runs the \
same steps with --seeds seeds (3 by default: seed, seed+1, ...); the table gives the exact val \
loss's mean and spread and what each rung buys against the one before, seed by seed. \
--rungs picks some (each still includes every rung above it). Output in runs/ladder-modern: \
DIR/<rung>/seed-<N>/, ladder.md, ladder.png and curves.png.")]
pub struct LadderArgs {
    /// Comma-separated rungs to train, e.g. bigram,single-head [default: all but lecture; with
    /// --modern, all the modern rungs].
    #[arg(long, value_name = "LIST")]
    rungs: Option<String>,
    /// The modern ladder: ideas since the lecture, one per rung, from the nanogpt-cpu preset.
    #[arg(long, conflicts_with = "include_big")]
    modern: bool,
    /// With --modern: seeds per rung [default: 3].
    #[arg(long, value_name = "N", requires = "modern")]
    seeds: Option<usize>,
    /// Also train the lecture's 10.8M-parameter model (5000 steps of 64x256: hours on a CPU).
    #[arg(long)]
    include_big: bool,
    /// Output directory [default: runs/ladder, or runs/ladder-modern with --modern].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Train every rung for N steps instead of its own, with proportionally fewer evaluations
    /// (for a quick look; the published figures are for the full runs).
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Seed for every rung's initialisation and batches [default: 1337, as in the lecture].
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Print the rungs that would be trained, with their settings, and stop.
    #[arg(long)]
    list: bool,
    /// Print the results as a JSON list of {"rung", "preset", "params", "steps",
    /// "val_estimate", "val_exact", "published", "diff", "wall_s"} instead of the table.
    #[arg(long)]
    json: bool,
}

/// A rung ready to train.
struct Planned {
    rung: &'static Rung,
    model: ModelConfig,
    train: TrainConfig,
    params: usize,
}

/// A finished rung.
#[derive(Debug, Clone, Serialize)]
struct RungResult {
    rung: &'static str,
    preset: &'static str,
    params: usize,
    steps: usize,
    /// The lecture's `estimate_loss` on val at the last step.
    val_estimate: f32,
    /// The mean loss over the whole val split.
    val_exact: f64,
    published: f64,
    /// `val_estimate - published`.
    diff: f64,
    wall_s: f64,
    #[serde(skip)]
    metrics: Vec<MetricsRow>,
}

fn plan(args: &LadderArgs) -> Result<Vec<Planned>> {
    if args.steps == Some(0) {
        return Err(UsageError("--steps must be at least 1".into()).into());
    }
    let rungs = ladder::select(args.rungs.as_deref(), args.include_big)
        .map_err(|e| UsageError(format!("--rungs: {e}")))?;
    rungs
        .into_iter()
        .map(|rung| {
            let (model, train) = rung.configs()?;
            let (train, params) = with_overrides(&model, train, args.steps, args.seed);
            Ok(Planned {
                rung,
                model,
                train,
                params,
            })
        })
        .collect()
}

fn list(planned: &[Planned]) {
    let header = [
        "rung",
        "preset",
        "params",
        "steps x B x T",
        "lr",
        "init",
        "scores scaled by",
        "published",
    ]
    .map(String::from);
    let rows: Vec<Vec<String>> = planned
        .iter()
        .map(|p| {
            let m = &p.model;
            let extra: Vec<String> = p
                .rung
                .overrides
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let preset = if extra.is_empty() {
                p.rung.preset.to_string()
            } else {
                format!("{} + {}", p.rung.preset, extra.join(" "))
            };
            let scale = match (m.architecture, m.attention_scale) {
                (Architecture::Bigram, _) => "-",
                (_, AttentionScale::NEmbd) => "1/sqrt(n_embd)",
                (_, AttentionScale::HeadSize) => "1/sqrt(head_size)",
            };
            let init = match m.init {
                Init::Pytorch => "pytorch",
                Init::Lecture => "N(0, 0.02)",
            };
            vec![
                p.rung.name.to_string(),
                preset,
                thousands(p.params),
                format!(
                    "{} x {} x {}",
                    p.train.steps, p.train.batch_size, m.block_size
                ),
                format!("{:e}", p.train.learning_rate),
                init.to_string(),
                scale.to_string(),
                format!("{}", p.rung.published),
            ]
        })
        .collect();
    say!(
        "{}",
        text_table(
            &header,
            &rows,
            &[false, false, true, true, true, false, false, true]
        )
    );
}

/// The table's rows (also what `ladder.md` holds).
fn result_rows(results: &[RungResult]) -> (Vec<String>, Vec<Vec<String>>, Vec<bool>) {
    let header = [
        "rung",
        "params",
        "val (estimate)",
        "val (exact)",
        "published",
        "diff",
        "within 0.05",
        "wall time",
    ]
    .map(String::from)
    .to_vec();
    let rows = results
        .iter()
        .map(|r| {
            vec![
                r.rung.to_string(),
                thousands(r.params),
                format!("{:.4}", r.val_estimate),
                format!("{:.4}", r.val_exact),
                format!("{}", r.published),
                format!("{:+.3}", r.diff),
                if r.diff.abs() <= TOLERANCE + 5e-7 {
                    "yes"
                } else {
                    "no"
                }
                .to_string(),
                duration(r.wall_s),
            ]
        })
        .collect();
    let right = vec![false, true, true, true, true, true, false, true];
    (header, rows, right)
}

/// What `ladder.md` says about how the rungs were run.
struct Setting {
    seed: u64,
    steps: Option<usize>,
    /// `2 threads`, `2 ranks of 1 thread`.
    workers: String,
}

fn write_report(out: &Path, results: &[RungResult], total_s: f64, setting: &Setting) -> Result<()> {
    let (header, rows, right) = result_rows(results);
    let seed = setting.seed;
    let steps = match setting.steps {
        Some(n) => format!(
            ", **{n} steps per rung instead of each rung's own** (the published figures are for the full runs)"
        ),
        None => String::new(),
    };
    let mut text = format!(
        "# The lecture's ladder, measured by chargpt\n\n\
         `chargpt ladder` on {}, seed {seed}{steps}: {} rung{} in {} of wall time.\n\n",
        setting.workers,
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        duration(total_s)
    );
    text.push_str(&markdown_table(&header, &rows, &right));
    text.push_str(
        "\n- **val (estimate)**: the lecture's `estimate_loss`, the mean loss of 200 random batches \
         of the val split after the last step, in evaluation mode; the published figures are \
         this number.\n\
         - **val (exact)**: the mean loss over every target of the val split, in consecutive \
         windows of `block_size` (`chargpt eval`).\n\
         - **diff**: estimate minus published; within 0.05 counts as reproduced.\n\
         - Every rung is its preset at the lecture's settings: n_embd 32, block 8, batch 32, AdamW \
         at 1e-3 for 5000 steps (the bigram 1e-2 for 3000), PyTorch's default init, scores scaled \
         by 1/sqrt(n_embd).\n\
         - **layernorm**: the `layernorm` preset with `init=pytorch` and \
         `attention_scale=n-embd`, as the lecture's code was at that commit (the preset itself \
         is the current `gpt.py`: N(0, 0.02) init, scores scaled by 1/sqrt(head_size)).\n\
         - **residual**: the lecture's commit gives no figure; 2.09 is from third-party runs.\n\
         - **wall time**: setting up, training, the loss estimates every `eval_interval` steps and \
         the exact val loss, per rung.\n\n\
         ![val loss estimate of every rung against the step](ladder.png)\n",
    );
    let path = out.join(TABLE_FILE);
    checkpoint::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    let series: Vec<Series> = results
        .iter()
        .map(|r| {
            Series::line(
                r.rung,
                // Step 0 (the untrained model, loss 4 and more) would squash the curves.
                r.metrics
                    .iter()
                    .filter(|m| m.step > 0)
                    .map(|m| (m.step as f64, m.val_loss as f64))
                    .collect(),
            )
        })
        .collect();
    draw_line_plot(
        &out.join(PLOT_FILE),
        &LinePlot::new(
            "the lecture's ladder: val loss",
            "step",
            "val loss estimate (200 batches)",
            &series,
        ),
    )
}

/// The rows of the finished rungs, in ladder order.
fn rung_results(planned: &[Planned], trained: &[Option<Trained>]) -> Vec<RungResult> {
    planned
        .iter()
        .zip(trained)
        .filter_map(|(p, t)| {
            let t = t.as_ref()?;
            Some(RungResult {
                rung: p.rung.name,
                preset: p.rung.preset,
                params: p.params,
                steps: p.train.steps,
                val_estimate: t.val_estimate,
                val_exact: t.val_exact,
                published: p.rung.published,
                diff: t.val_estimate as f64 - p.rung.published,
                wall_s: t.wall_s,
                metrics: t.metrics.clone(),
            })
        })
        .collect()
}

pub fn run(args: LadderArgs, group: Group) -> Result<ExitCode> {
    if args.modern {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/ladder-modern"));
        return super::ladder_modern::run(
            super::ladder_modern::ModernArgs {
                rungs: args.rungs.as_deref(),
                out: &out,
                steps: args.steps,
                seed: args.seed,
                seeds: args.seeds,
                list: args.list,
                json: args.json,
            },
            group,
        );
    }
    let planned = agree(group, plan(&args))?;
    if args.list {
        if group.is_root() {
            list(&planned);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = &args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs/ladder"));
    let checked = (|| -> Result<()> {
        let taken: Vec<&str> = planned
            .iter()
            .filter(|p| checkpoint::exists(&out.join(p.rung.name)))
            .map(|p| p.rung.name)
            .collect();
        if group.is_root() && (!taken.is_empty() || out.join(TABLE_FILE).exists()) {
            let what = if taken.is_empty() {
                TABLE_FILE.to_string()
            } else {
                format!("checkpoints of {}", taken.join(", "))
            };
            bail!(
                "{} already holds a ladder ({what}); choose another --out, or delete it first",
                out.display()
            );
        }
        // Every rank writes its rungs' checkpoints on its own machine.
        super::train::check_writable(out)
    })();
    agree(group, checked)?;
    let (text, info) = load_text(None)?;
    let setting = Setting {
        seed: planned.first().map_or(1337, |p| p.train.seed),
        steps: args.steps,
        workers: workers(group),
    };
    let stop = super::stop_on_ctrl_c(group, || {
        note!("\nstopping after this step to save (Ctrl-C again to quit without saving)")
    });
    let started = Instant::now();
    let n = planned.len();
    let mut train = |i: usize| -> Result<Option<Trained>> {
        let p = &planned[i];
        let rung_started = Instant::now();
        if group.is_root() {
            note!(
                "[{}/{n}] {}: {} parameters, {} steps of {}x{}",
                i + 1,
                p.rung.name,
                thousands(p.params),
                p.train.steps,
                p.train.batch_size,
                p.model.block_size
            );
        }
        let mut run = Run::new(p.model.clone(), p.train.clone(), &text, info.clone())
            .map_err(|e| run_error(e, p.rung.name))?;
        run.preset = Some(p.rung.preset.to_string());
        let dir = out.join(p.rung.name);
        let label = format!("{:>12}", p.rung.name);
        train_quietly(&mut run, &dir, &stop, &label, rung_started)
    };
    let mut finished = |i: usize, rank: usize, trained: &[Option<Trained>]| -> Result<()> {
        let p = &planned[i];
        if let Some(t) = &trained[i] {
            let diff = t.val_estimate as f64 - p.rung.published;
            note!(
                "[{}/{n}] {}: val {:.4} (exact {:.4}), published {}, diff {diff:+.3}, {}{}",
                i + 1,
                p.rung.name,
                t.val_estimate,
                t.val_exact,
                p.rung.published,
                duration(t.wall_s),
                on_rank(group, rank)
            );
        }
        // Rewritten after every rung, so that an interrupted ladder keeps what it measured.
        let results = rung_results(&planned, trained);
        write_report(out, &results, started.elapsed().as_secs_f64(), &setting)
    };
    let Some(divided) = train_divided(group, n, &mut train, &mut finished)? else {
        // Another rank than 0: its results went to rank 0.
        return Ok(ExitCode::SUCCESS);
    };
    let results = rung_results(&planned, &divided.results);
    if !divided.stopped.is_empty() {
        let finished = if results.is_empty() {
            "no rung finished".to_string()
        } else {
            format!(
                "the finished rungs are in {}",
                out.join(TABLE_FILE).display()
            )
        };
        for &(index, rank) in &divided.stopped {
            let dir = out.join(planned[index].rung.name);
            note!(
                "stopped during {}{}; its checkpoint is in {} (continue it with `chargpt train --resume --out {}`); {finished}",
                planned[index].rung.name,
                on_rank(group, rank),
                dir.display(),
                dir.display(),
            );
        }
        return Ok(ExitCode::from(130));
    }
    let total = started.elapsed().as_secs_f64();
    if args.json {
        say!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        let (header, rows, right) = result_rows(&results);
        say!("{}", text_table(&header, &rows, &right));
        say!(
            "whole ladder: {} on {}; table in {}, val curves in {}",
            duration(total),
            setting.workers,
            out.join(TABLE_FILE).display(),
            out.join(PLOT_FILE).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
