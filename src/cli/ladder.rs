//! `chargpt ladder`: trains the lecture's ladder of models one after the other, each at the
//! lecture's settings for that rung, and compares every val loss with the figure the lecture
//! published. Writes a checkpoint per rung, `ladder.md` (the table) and `ladder.png` (every
//! rung's val curve).
//!
//! Also home of what `ladder` and `sweep` share: training one configuration quietly (a progress
//! bar on stderr, nothing on stdout), Ctrl-C handling, and dividing the configurations over the
//! ranks of an mpirun job ([`train_divided`]).

use super::plot::{draw_line_plot, loss_plot, LinePlot, Series};
use super::presets::thousands;
use super::{agree, load_text, one_line, Quiet, UsageError};
use anyhow::{anyhow, bail, Context, Result};
use chargpt::checkpoint;
use chargpt::config::{Architecture, AttentionScale, ConfigError, Init, ModelConfig, TrainConfig};
use chargpt::distributed::{self, Group};
use chargpt::ladder::{self, Rung, TOLERANCE};
use chargpt::training::{run_training, MetricsRow, Run, RunError, RunEvent, RunOptions};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// What one quiet training run gave (sent from rank to rank as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Trained {
    pub val_estimate: f32,
    pub val_exact: f64,
    pub wall_s: f64,
    pub metrics: Vec<MetricsRow>,
}

/// Ctrl-C sets the returned flag (the run in progress stops after its step and saves); a second
/// Ctrl-C quits at once. Under mpirun the ranks get SIGTERM instead, which sets it too.
pub(super) fn stop_on_ctrl_c(group: Group) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    if group.size() > 1 {
        distributed::stop_on_signals(stop.clone());
        return stop;
    }
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            note!("\nquitting without saving");
            std::process::exit(130);
        }
        note!("\nstopping after this step to save (Ctrl-C again to quit without saving)");
    });
    stop
}

/// Trains `run` into `out` with a progress bar on stderr (hidden when stderr is not a terminal)
/// and the exact val loss at the end. `None`: stopped by Ctrl-C (the checkpoint is saved).
/// `started` is when the configuration began to be set up, for the wall time.
pub(super) fn train_quietly(
    run: &mut Run,
    out: &Path,
    stop: &Arc<AtomicBool>,
    label: &str,
    started: Instant,
) -> Result<Option<Trained>> {
    let steps = run.trainer.config.steps;
    let bar = ProgressBar::new(steps as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} step {pos}/{len} [{bar:30}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(250));
    let options = RunOptions {
        out: Some(out.to_path_buf()),
        stop: Some(stop.clone()),
        stop_at: None,
        exact_eval: true,
        probe: None,
    };
    let mut last_val = None;
    let result = run_training(run, &options, &mut |event| match event {
        RunEvent::Step { stats, eta_s, .. } => {
            bar.set_position(stats.step as u64 + 1);
            let val = last_val
                .map(|v| format!(", val {v:.4}"))
                .unwrap_or_default();
            bar.set_message(format!(
                "loss {:.4}{val}  ETA {}",
                stats.loss,
                if eta_s > 0.0 {
                    duration(eta_s)
                } else {
                    "?".into()
                }
            ));
        }
        RunEvent::Eval { row, .. } => last_val = Some(row.val_loss),
        RunEvent::ExactEval { .. } => bar.set_message("measuring the exact val loss"),
    });
    bar.finish_and_clear();
    let outcome = result?;
    if outcome.interrupted {
        return Ok(None);
    }
    // Each run's curves, as `chargpt train` draws them: a sweep or a ladder is read run by run.
    let name = out
        .file_name()
        .map_or("run".into(), |n| n.to_string_lossy());
    let title = format!("{name}: loss");
    let plot = out.join(super::train::PLOT_FILE);
    if let Err(e) = loss_plot(&plot, &title, &run.metrics, &run.step_rows, steps) {
        note!("{label} warning: {}", one_line(&e));
    }
    let val_estimate = run
        .metrics
        .last()
        .map(|r| r.val_loss)
        .ok_or_else(|| anyhow!("the run recorded no evaluation"))?;
    let val_exact = outcome
        .final_val
        .map(|e| e.loss)
        .ok_or_else(|| anyhow!("the run measured no exact val loss"))?;
    Ok(Some(Trained {
        val_estimate,
        val_exact,
        wall_s: started.elapsed().as_secs_f64(),
        metrics: run.metrics.clone(),
    }))
}

/// What a rank tells rank 0 about its share of a grid.
#[derive(Serialize, Deserialize)]
enum Report {
    Done { index: usize, result: Trained },
    Stopped { index: usize },
    Failed { message: String },
    Finished,
}

/// What rank 0 does when item `index` of a grid finishes on `rank`, given every result so far.
pub(super) type OnFinished<'a> = dyn FnMut(usize, usize, &[Option<Trained>]) -> Result<()> + 'a;

/// How a grid trained by [`train_divided`] ended, on rank 0.
pub(super) struct Divided {
    /// Every item's result, by index (`None`: not trained, or stopped).
    pub results: Vec<Option<Trained>>,
    /// The items stopped by Ctrl-C (their checkpoints are saved), with the rank of each.
    pub stopped: Vec<(usize, usize)>,
}

/// Trains items `0..n` of a grid (sweep combinations, ladder rungs), in one process or divided
/// over the ranks of an mpirun job: item i on rank `i % ranks`, each rank on its own threads,
/// with nothing exchanged while they train. So each item's numbers are those of a single
/// process with a rank's thread count.
///
/// `train(i)` trains item i (`None`: stopped by Ctrl-C). On rank 0, `finished(i, rank,
/// results)` is called as each result arrives, with every result so far by index (it prints
/// and writes the report), and the results come back; the other ranks send theirs to rank 0
/// and get `None`. An error on any rank ends the job with its message.
pub(super) fn train_divided(
    group: Group,
    n: usize,
    train: &mut dyn FnMut(usize) -> Result<Option<Trained>>,
    finished: &mut OnFinished<'_>,
) -> Result<Option<Divided>> {
    let (rank, ranks) = (group.rank(), group.size());
    let mine = (rank..n).step_by(ranks);
    if rank > 0 {
        let send = |report: &Report| match serde_json::to_vec(report) {
            Ok(bytes) => distributed::send_to_root(&bytes),
            Err(e) => super::abort_job(group, &e.into()),
        };
        for index in mine {
            match train(index) {
                Ok(Some(result)) => send(&Report::Done { index, result }),
                Ok(None) => {
                    send(&Report::Stopped { index });
                    return Ok(None);
                }
                Err(e) => {
                    let message = format!("{}: {}", group.describe(), one_line(&e));
                    send(&Report::Failed { message });
                    return Err(Quiet(1).into());
                }
            }
        }
        send(&Report::Finished);
        return Ok(None);
    }
    let mut divided = Divided {
        results: (0..n).map(|_| None).collect(),
        stopped: Vec::new(),
    };
    // The ranks still training; each ends with Finished or Stopped.
    let mut pending: Vec<usize> = (1..ranks).collect();
    let gather = || -> Result<()> {
        for index in mine {
            match train(index)? {
                Some(result) => {
                    divided.results[index] = Some(result);
                    finished(index, 0, &divided.results)?;
                }
                None => {
                    divided.stopped.push((index, 0));
                    break;
                }
            }
            if ranks > 1 {
                while let Some((from, bytes)) = distributed::receive_at_root(false) {
                    take(from, &bytes, &mut divided, &mut pending, finished)?;
                }
            }
        }
        while !pending.is_empty() {
            let Some((from, bytes)) = distributed::receive_at_root(true) else {
                break;
            };
            take(from, &bytes, &mut divided, &mut pending, finished)?;
        }
        Ok(())
    };
    match gather() {
        // The other ranks train on, or wait: end them too.
        Err(e) if ranks > 1 => super::abort_job(group, &e),
        Err(e) => Err(e),
        Ok(()) => Ok(Some(divided)),
    }
}

/// Rank 0's handling of one report from rank `from`.
fn take(
    from: usize,
    bytes: &[u8],
    divided: &mut Divided,
    pending: &mut Vec<usize>,
    finished: &mut OnFinished<'_>,
) -> Result<()> {
    match serde_json::from_slice::<Report>(bytes)? {
        Report::Done { index, result } if index < divided.results.len() => {
            divided.results[index] = Some(result);
            finished(index, from, &divided.results)?;
        }
        Report::Done { .. } => anyhow::bail!("rank {from} sent the result of an item it has not"),
        Report::Stopped { index } => {
            divided.stopped.push((index, from));
            pending.retain(|&r| r != from);
        }
        Report::Failed { message } => anyhow::bail!("{message}"),
        Report::Finished => pending.retain(|&r| r != from),
    }
    Ok(())
}

/// The workers a grid ran on, for its report: `2 threads`, or `2 ranks of 1 thread`.
pub(super) fn workers(group: Group) -> String {
    let threads = rayon::current_num_threads();
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    if group.size() > 1 {
        format!(
            "{} of {}",
            plural(group.size(), "rank"),
            plural(threads, "thread")
        )
    } else {
        plural(threads, "thread")
    }
}

/// ` (rank 2)` in a job of several ranks, nothing in one process.
pub(super) fn on_rank(group: Group, rank: usize) -> String {
    if group.size() > 1 {
        format!(" (rank {rank})")
    } else {
        String::new()
    }
}

/// `12.3 s`, `2m 05s`, `1h 02m`.
pub(super) fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{seconds:.1} s")
    }
}

/// A table with a header row, columns padded to their widest cell; `right` columns are
/// right-aligned (numbers).
pub(super) fn text_table(header: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
            if right.get(i).copied().unwrap_or(false) {
                out.push_str(&format!("{pad}{cell}  "));
            } else {
                out.push_str(&format!("{cell}{pad}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut text = line(header);
    for row in rows {
        text.push('\n');
        text.push_str(&line(row));
    }
    text
}

/// The same table in Markdown.
pub(super) fn markdown_table(header: &[String], rows: &[Vec<String>], right: &[bool]) -> String {
    let mut text = format!("| {} |\n|", header.join(" | "));
    for i in 0..header.len() {
        text.push_str(if right.get(i).copied().unwrap_or(false) {
            "---:|"
        } else {
            "---|"
        });
    }
    for row in rows {
        text.push_str(&format!("\n| {} |", row.join(" | ")));
    }
    text.push('\n');
    text
}

/// A `Run::new` error, with the one-line advice the command line gives.
pub(super) fn run_error(e: RunError, what: &str) -> anyhow::Error {
    match e {
        RunError::Config(ConfigError::Invalid(_) | ConfigError::OutOfRange { .. }) => {
            anyhow!("{what}: {e}")
        }
        e => e.into(),
    }
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

/// A rung's training settings with `--steps` and `--seed` applied, and its parameter count on
/// Tiny Shakespeare's 65 characters (what `--list` shows before any text is read).
pub(super) fn with_overrides(
    model: &ModelConfig,
    mut train: TrainConfig,
    steps: Option<usize>,
    seed: Option<u64>,
) -> (TrainConfig, usize) {
    if let Some(steps) = steps {
        train = ladder::with_steps(&train, steps);
    }
    if let Some(seed) = seed {
        train.seed = seed;
    }
    let mut sized = model.clone();
    sized.vocab_size = 65;
    (train, chargpt::model::ParamLayout::new(&sized).len)
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
    let stop = stop_on_ctrl_c(group);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_render_as_markdown() {
        let header = ["a".to_string(), "num".to_string()];
        let rows = vec![vec!["long name".to_string(), "1".to_string()]];
        let text = text_table(&header, &rows, &[false, true]);
        assert_eq!(text, "a          num\nlong name    1");
        let md = markdown_table(&header, &rows, &[false, true]);
        assert_eq!(md, "| a | num |\n|---|---:|\n| long name | 1 |\n");
        assert_eq!(duration(12.34), "12.3 s");
        assert_eq!(duration(125.0), "2m 05s");
        assert_eq!(duration(3720.0), "1h 02m");
    }
}
