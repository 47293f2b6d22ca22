//! `chargpt ladder --modern`: the ladder past the lecture. From nanoGPT's CPU shape, each rung
//! adds one idea of the years since to all the rungs before ([`chargpt::ladder::MODERN_RUNGS`]),
//! every rung at the same budget of steps and trained with several seeds; the table gives each
//! rung's exact val loss (mean, spread) and what it buys against the rung before, seed by seed.
//! Writes a checkpoint per rung and seed, `ladder.md`, `ladder.png` (every rung's exact val
//! loss, each seed and the mean) and `curves.png` (the mean val estimate of each rung against
//! the step).

use super::format::{duration, markdown_table, text_table, thousands};
use super::grid::{
    on_rank, run_error, train_divided, train_quietly, with_overrides, workers, Trained,
};
use super::plot::{draw_line_plot, LinePlot, Series, Style};
use super::{agree, load_text, UsageError};
use anyhow::{bail, Context, Result};
use chargpt::checkpoint;
use chargpt::config::{ModelConfig, TrainConfig};
use chargpt::distributed::Group;
use chargpt::ladder::{self, modern_configs, paired_difference, Spread, MODERN_BASE, MODERN_RUNGS};
use chargpt::runs::{MetricsRow, Run};
use serde::Serialize;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

pub const TABLE_FILE: &str = "ladder.md";
pub const PLOT_FILE: &str = "ladder.png";
pub const CURVES_FILE: &str = "curves.png";

/// What `ladder --modern` was asked for.
pub struct ModernArgs<'a> {
    pub rungs: Option<&'a str>,
    pub out: &'a Path,
    pub steps: Option<usize>,
    pub seed: Option<u64>,
    pub seeds: Option<usize>,
    pub list: bool,
    pub json: bool,
}

/// A rung ready to train.
struct Planned {
    index: usize,
    model: ModelConfig,
    train: TrainConfig,
    params: usize,
}

/// One rung's results over its seeds.
#[derive(Debug, Clone, Serialize)]
struct RungResult {
    rung: &'static str,
    idea: &'static str,
    params: usize,
    steps: usize,
    seeds: Vec<u64>,
    /// The exact val loss of each seed.
    val_exact: Vec<f64>,
    mean: f64,
    sd: f64,
    /// Mean of the per-seed differences from the rung before (absent for the first trained).
    vs_before: Option<f64>,
    /// Their standard error.
    vs_before_se: Option<f64>,
    /// Whether the seeds agree on the sign of the difference (|mean| > 2 standard errors).
    clear: Option<bool>,
    /// Mean wall time of one seed's run.
    wall_s: f64,
    #[serde(skip)]
    metrics: Vec<Vec<MetricsRow>>,
}

fn plan(args: &ModernArgs) -> Result<Vec<Planned>> {
    if args.steps == Some(0) {
        return Err(UsageError("--steps must be at least 1".into()).into());
    }
    if args.seeds == Some(0) {
        return Err(UsageError("--seeds must be at least 1".into()).into());
    }
    let chosen =
        ladder::select_modern(args.rungs).map_err(|e| UsageError(format!("--rungs: {e}")))?;
    chosen
        .into_iter()
        .map(|index| {
            let (model, train) = modern_configs(index)?;
            let (train, params) = with_overrides(&model, train, args.steps, args.seed);
            Ok(Planned {
                index,
                model,
                train,
                params,
            })
        })
        .collect()
}

fn list(planned: &[Planned], seeds: usize) {
    let header = ["rung", "adds", "params", "steps x B x T", "idea"].map(String::from);
    let rows: Vec<Vec<String>> = planned
        .iter()
        .map(|p| {
            let r = &MODERN_RUNGS[p.index];
            let adds: Vec<String> = r.adds.iter().map(|(k, v)| format!("{k}={v}")).collect();
            vec![
                r.name.to_string(),
                if adds.is_empty() {
                    format!("preset {MODERN_BASE}")
                } else {
                    adds.join(" ")
                },
                thousands(p.params),
                format!(
                    "{} x {} x {}",
                    p.train.steps, p.train.batch_size, p.model.block_size
                ),
                r.idea.to_string(),
            ]
        })
        .collect();
    say!(
        "{}",
        text_table(&header, &rows, &[false, false, true, true, false])
    );
    say!(
        "each rung includes every rung above it; {seeds} seed{} per rung",
        if seeds == 1 { "" } else { "s" }
    );
}

fn result_rows(results: &[RungResult]) -> (Vec<String>, Vec<Vec<String>>, Vec<bool>) {
    let header = [
        "rung",
        "params",
        "val (exact), mean ± sd",
        "seeds",
        "vs rung before",
        "clear",
        "wall time",
    ]
    .map(String::from)
    .to_vec();
    let rows = results
        .iter()
        .map(|r| {
            let each: Vec<String> = r.val_exact.iter().map(|v| format!("{v:.4}")).collect();
            let vs = match (r.vs_before, r.vs_before_se) {
                (Some(d), Some(se)) => format!("{d:+.4} ± {se:.4}"),
                _ => "-".into(),
            };
            let clear = match r.clear {
                Some(true) if r.vs_before.unwrap_or(0.0) < 0.0 => "better",
                Some(true) => "worse",
                Some(false) => "within noise",
                None => "-",
            };
            vec![
                r.rung.to_string(),
                thousands(r.params),
                format!("{:.4} ± {:.4}", r.mean, r.sd),
                each.join(", "),
                vs,
                clear.to_string(),
                duration(r.wall_s),
            ]
        })
        .collect();
    let right = vec![false, true, true, false, true, false, true];
    (header, rows, right)
}

fn write_report(
    out: &Path,
    results: &[RungResult],
    total_s: f64,
    steps: usize,
    workers: &str,
) -> Result<()> {
    let (header, rows, right) = result_rows(results);
    let seeds = results.first().map_or(0, |r| r.seeds.len());
    let mut text = format!(
        "# The modern ladder, measured by chargpt\n\n\
         `chargpt ladder --modern` on {workers}: {} rung{} from the `{MODERN_BASE}` \
         preset, {steps} steps each, {seeds} seed{} per rung, {} of wall time.\n\n",
        results.len(),
        if results.len() == 1 { "" } else { "s" },
        if seeds == 1 { "" } else { "s" },
        duration(total_s)
    );
    text.push_str(&markdown_table(&header, &rows, &right));
    text.push_str("\n- Each rung adds one idea to every rung above it:\n");
    for r in results {
        let rung = MODERN_RUNGS
            .iter()
            .find(|m| m.name == r.rung)
            .expect("a modern rung");
        let adds: Vec<String> = rung
            .adds
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        text.push_str(&format!(
            "  - **{}** ({}): {}\n",
            r.rung,
            if adds.is_empty() {
                format!("the `{MODERN_BASE}` preset")
            } else {
                adds.join(", ")
            },
            r.idea
        ));
    }
    text.push_str(
        "- **val (exact)**: the mean loss over every target of the val split after the last step \
         (`chargpt eval`); mean and sample standard deviation over the seeds, then each seed's.\n\
         - **vs rung before**: the mean over seeds of (this rung's val - the rung before's val) \
         with the same seed (the same seed draws the same batches), ± its standard error; \
         **clear** when the mean is more than twice the standard error from 0.\n\
         - **wall time**: one seed's run (setting up, training, loss estimates, the exact val \
         loss), the mean over seeds.\n\n\
         ![exact val loss of every rung](ladder.png)\n\n\
         ![mean val loss estimate of every rung against the step](curves.png)\n",
    );
    let path = out.join(TABLE_FILE);
    checkpoint::write_atomic(&path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;

    // Every rung's exact val loss: the mean, and each seed.
    let ticks: Vec<(f64, String)> = results
        .iter()
        .enumerate()
        .map(|(i, r)| (i as f64, r.rung.to_string()))
        .collect();
    let mut series = vec![Series::line(
        "mean over seeds",
        results
            .iter()
            .enumerate()
            .map(|(i, r)| (i as f64, r.mean))
            .collect(),
    )];
    for s in 0..seeds {
        series.push(Series {
            style: Style::Faint,
            ..Series::line(
                format!("seed {}", results[0].seeds[s]),
                results
                    .iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.val_exact.get(s).map(|&v| (i as f64, v)))
                    .collect(),
            )
        });
    }
    draw_line_plot(
        &out.join(PLOT_FILE),
        &LinePlot {
            x_ticks: Some(&ticks),
            min_y_span: 0.05,
            ..LinePlot::new(
                "the modern ladder: exact val loss after the same steps",
                "rung (each adds one idea to those before)",
                "val loss (exact, nats per character)",
                &series,
            )
        },
    )?;
    let curves: Vec<Series> = results
        .iter()
        .map(|r| {
            let rows = &r.metrics[0];
            let points = rows
                .iter()
                .enumerate()
                .filter(|(_, m)| m.step > 0)
                .map(|(j, m)| {
                    let vals: Vec<f64> = r
                        .metrics
                        .iter()
                        .filter_map(|seed| seed.get(j).map(|x| x.val_loss as f64))
                        .collect();
                    (m.step as f64, vals.iter().sum::<f64>() / vals.len() as f64)
                })
                .collect();
            Series::line(r.rung, points)
        })
        .collect();
    draw_line_plot(
        &out.join(CURVES_FILE),
        &LinePlot::new(
            "the modern ladder: val loss",
            "step",
            "val loss estimate (mean over seeds)",
            &curves,
        ),
    )
}

/// The finished rungs' results, in ladder order: every rung whose seeds have all finished, up to
/// the first that has not (each is compared with the rung before it). `trained` holds rung i's
/// seed s at `i * seeds + s`.
fn rung_results(planned: &[Planned], seeds: usize, trained: &[Option<Trained>]) -> Vec<RungResult> {
    let mut results: Vec<RungResult> = Vec::new();
    for (p, runs) in planned.iter().zip(trained.chunks(seeds)) {
        let Some(runs) = runs
            .iter()
            .map(Option::as_ref)
            .collect::<Option<Vec<&Trained>>>()
        else {
            break;
        };
        let vals: Vec<f64> = runs.iter().map(|t| t.val_exact).collect();
        let spread = Spread::of(&vals);
        let (vs, se, clear) = match results.last() {
            Some(prev) => {
                let (d, clear) = paired_difference(&prev.val_exact, &vals);
                (Some(d.mean), Some(d.standard_error()), Some(clear))
            }
            None => (None, None, None),
        };
        let rung = &MODERN_RUNGS[p.index];
        results.push(RungResult {
            rung: rung.name,
            idea: rung.idea,
            params: p.params,
            steps: p.train.steps,
            seeds: (0..seeds).map(|s| p.train.seed + s as u64).collect(),
            val_exact: vals,
            mean: spread.mean,
            sd: spread.sd,
            vs_before: vs,
            vs_before_se: se,
            clear,
            wall_s: runs.iter().map(|t| t.wall_s).sum::<f64>() / runs.len() as f64,
            metrics: runs.iter().map(|t| t.metrics.clone()).collect(),
        });
    }
    results
}

/// Runs the modern ladder, in one process or with its (rung, seed) runs divided over the ranks of
/// an mpirun job ([`train_divided`]); rank 0 prints and writes the report.
pub fn run(args: ModernArgs, group: Group) -> Result<ExitCode> {
    let planned = agree(group, plan(&args))?;
    let seeds = args.seeds.unwrap_or(ladder::MODERN_SEEDS);
    if args.list {
        if group.is_root() {
            list(&planned, seeds);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let out = args.out;
    let checked = (|| -> Result<()> {
        if group.is_root()
            && (out.join(TABLE_FILE).exists()
                || planned
                    .iter()
                    .any(|p| out.join(MODERN_RUNGS[p.index].name).exists()))
        {
            bail!(
                "{} already holds a ladder; choose another --out, or delete it first",
                out.display()
            );
        }
        // Every rank writes its runs' checkpoints on its own machine.
        super::train::check_writable(out)
    })();
    agree(group, checked)?;
    let (text, info) = load_text(None)?;
    let stop = super::stop_on_ctrl_c(group, || {
        note!("\nstopping after this step to save (Ctrl-C again to quit without saving)")
    });
    let started = Instant::now();
    let steps = planned.first().map_or(0, |p| p.train.steps);
    let n = planned.len();
    let workers = workers(group);
    // Item i is rung i / seeds with seed number i % seeds.
    let seed_of = |i: usize| planned[i / seeds].train.seed + (i % seeds) as u64;
    let dir_of = |i: usize| {
        out.join(MODERN_RUNGS[planned[i / seeds].index].name)
            .join(format!("seed-{}", seed_of(i)))
    };
    let mut train = |i: usize| -> Result<Option<Trained>> {
        let p = &planned[i / seeds];
        let rung = &MODERN_RUNGS[p.index];
        let seed = seed_of(i);
        let mut train = p.train.clone();
        train.seed = seed;
        if group.is_root() {
            note!(
                "[{}/{n}] {}, seed {seed}: {} parameters, {} steps of {}x{}",
                i / seeds + 1,
                rung.name,
                thousands(p.params),
                train.steps,
                train.batch_size,
                p.model.block_size
            );
        }
        let seed_started = Instant::now();
        let mut run = Run::new(p.model.clone(), train, &text, info.clone())
            .map_err(|e| run_error(e, rung.name))?;
        run.preset = Some(MODERN_BASE.to_string());
        let label = format!("{:>8} {seed}", rung.name);
        train_quietly(&mut run, &dir_of(i), &stop, &label, seed_started)
    };
    let mut summarized = 0;
    let mut finished = |i: usize, rank: usize, trained: &[Option<Trained>]| -> Result<()> {
        let r = i / seeds;
        let rung = &MODERN_RUNGS[planned[r].index];
        if group.size() > 1 {
            if let Some(t) = &trained[i] {
                note!(
                    "[{}/{n}] {}, seed {}: val {:.4} (exact), {}{}",
                    r + 1,
                    rung.name,
                    seed_of(i),
                    t.val_exact,
                    duration(t.wall_s),
                    on_rank(group, rank)
                );
            }
        }
        let results = rung_results(&planned, seeds, trained);
        // A summary line for each rung that has joined the table (all its seeds, and every rung
        // before it, done).
        for (r, result) in results.iter().enumerate().skip(summarized) {
            note!(
                "[{}/{n}] {}: val {:.4} ± {:.4} over {} seed{}{}",
                r + 1,
                result.rung,
                result.mean,
                result.sd,
                seeds,
                if seeds == 1 { "" } else { "s" },
                result
                    .vs_before
                    .map(|d| format!(", {d:+.4} against the rung before"))
                    .unwrap_or_default()
            );
        }
        summarized = results.len();
        if results.is_empty() {
            return Ok(());
        }
        write_report(
            out,
            &results,
            started.elapsed().as_secs_f64(),
            steps,
            &workers,
        )
    };
    let Some(divided) = train_divided(group, n * seeds, &mut train, &mut finished)? else {
        // Another rank than 0: its results went to rank 0.
        return Ok(ExitCode::SUCCESS);
    };
    let results = rung_results(&planned, seeds, &divided.results);
    if !divided.stopped.is_empty() {
        for &(i, rank) in &divided.stopped {
            note!(
                "stopped during {} (seed {}){}; its checkpoint is in {}; the finished rungs are in {}",
                MODERN_RUNGS[planned[i / seeds].index].name,
                seed_of(i),
                on_rank(group, rank),
                dir_of(i).display(),
                out.join(TABLE_FILE).display()
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
            "whole ladder: {} on {workers}; table in {}, plots in {} and {}",
            duration(total),
            out.join(TABLE_FILE).display(),
            out.join(PLOT_FILE).display(),
            out.join(CURVES_FILE).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}
