//! What `ladder`, `ladder --modern` and `sweep` share: training one configuration of a grid
//! quietly (a progress bar on stderr, nothing on stdout), and dividing the configurations over
//! the ranks of an mpirun job ([`train_divided`]).

use super::format::duration;
use super::plot::{exact_point, loss_plot};
use super::{one_line, Quiet};
use anyhow::{anyhow, Result};
use chargpt::config::{ConfigError, ModelConfig, TrainConfig};
use chargpt::distributed::{self, Group};
use chargpt::ladder;
use chargpt::runs::{run_training, MetricsRow, Run, RunError, RunEvent, RunOptions};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one quiet training run gave (sent from rank to rank as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trained {
    pub val_estimate: f32,
    pub val_exact: f64,
    pub wall_s: f64,
    pub metrics: Vec<MetricsRow>,
}

/// Trains `run` into `out` with a progress bar on stderr (hidden when stderr is not a terminal)
/// and the exact val loss at the end. `None`: stopped by Ctrl-C (the checkpoint is saved).
/// `started` is when the configuration began to be set up, for the wall time.
pub fn train_quietly(
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
        samples: None,
        save_in_memory: false,
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
        RunEvent::Saved(_) | RunEvent::BudgetSet { .. } => {}
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
    let exact = exact_point(&outcome);
    if let Err(e) = loss_plot(&plot, &title, &run.metrics, &run.step_rows, steps, exact) {
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
pub type OnFinished<'a> = dyn FnMut(usize, usize, &[Option<Trained>]) -> Result<()> + 'a;

/// How a grid trained by [`train_divided`] ended, on rank 0.
pub struct Divided {
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
pub fn train_divided(
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
pub fn workers(group: Group) -> String {
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
pub fn on_rank(group: Group, rank: usize) -> String {
    if group.size() > 1 {
        format!(" (rank {rank})")
    } else {
        String::new()
    }
}

/// A `Run::new` error, with the one-line advice the command line gives.
pub fn run_error(e: RunError, what: &str) -> anyhow::Error {
    match e {
        RunError::Config(ConfigError::Invalid(_) | ConfigError::OutOfRange { .. }) => {
            anyhow!("{what}: {e}")
        }
        e => e.into(),
    }
}

/// A rung's training settings with `--steps` and `--seed` applied, and its parameter count on
/// Tiny Shakespeare's 65 characters (what `--list` shows before any text is read).
pub fn with_overrides(
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
