//! A run directory's records, each a file that grows as the run goes: `metrics.csv` (a row per
//! evaluation), `steps.csv` (a row per step) and `samples.txt` (the sample of every evaluation,
//! and a longer one at the end). The checkpoint (`checkpoint`), the lock (`lock`) and the probe
//! records (`probe`) are in modules of their own.

use super::error::RunError;
use super::probe::{keep_probes_through, PROBES_FILE};
use crate::checkpoint::write_atomic;
use crate::model::Model;
use crate::rng::Rng;
use crate::sampling::{self, SampleSettings};
use crate::tokenizer::Tokenizer;
use std::io::Write;
use std::path::{Path, PathBuf};
use web_time::Instant;

/// The record of samples in a run directory: the sample of every evaluation, and a longer one
/// at the end.
pub const SAMPLES_FILE: &str = "samples.txt";
/// Characters in the sample drawn at each evaluation.
pub const EVAL_SAMPLE: usize = 200;
/// Characters in the sample drawn when a run finishes.
pub const FINAL_SAMPLE: usize = 500;

/// One row of `metrics.csv`: the loss estimates at an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsRow {
    /// Steps completed.
    pub step: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    /// The learning rate of the last step taken (of the first step at step 0).
    pub lr: f32,
    /// Training throughput since the previous evaluation (0 at step 0).
    pub tokens_per_s: f64,
    /// Wall-clock seconds since the run started, all sessions of a resumed run together.
    pub elapsed_s: f64,
}

pub const METRICS_FILE: &str = "metrics.csv";
/// Every training step's loss, one row per step: `step,loss,lr,grad_norm,elapsed_s`.
pub const STEPS_FILE: &str = "steps.csv";
const STEPS_HEADER: &str = "step,loss,lr,grad_norm,elapsed_s";

/// One row of `steps.csv`: what one training step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRow {
    /// Steps completed, this one included (1 for the first step).
    pub step: usize,
    /// The mean loss of the step's batch (in training mode: with dropout, before the update).
    pub loss: f32,
    pub lr: f32,
    /// The gradient's global norm before clipping.
    pub grad_norm: f32,
    /// Wall-clock seconds since the run started, all sessions together.
    pub elapsed_s: f64,
}

impl StepRow {
    /// Writes one CSV line without allocating (a step's record is written in the training loop).
    pub fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{},{},{},{},{:.3}",
            self.step, self.loss, self.lr, self.grad_norm, self.elapsed_s
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.trim().split(',');
        let row = StepRow {
            step: it.next()?.parse().ok()?,
            loss: it.next()?.parse().ok()?,
            lr: it.next()?.parse().ok()?,
            grad_norm: it.next()?.parse().ok()?,
            elapsed_s: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(row)
    }
}

/// The rows of a `steps.csv` (the header and unreadable lines skipped; a missing file has none).
pub fn read_steps(path: &Path) -> Vec<StepRow> {
    std::fs::read_to_string(path)
        .map(|text| parse_steps(&text))
        .unwrap_or_default()
}

/// The rows of a `steps.csv`'s text.
pub fn parse_steps(text: &str) -> Vec<StepRow> {
    text.lines().filter_map(StepRow::parse).collect()
}

/// A `steps.csv` of `rows`.
pub fn steps_csv(rows: &[StepRow]) -> String {
    let mut text = String::from(STEPS_HEADER);
    text.push('\n');
    for row in rows {
        let mut line = Vec::new();
        let _ = row.write_csv(&mut line);
        text.push_str(&String::from_utf8_lossy(&line));
    }
    text
}
const METRICS_HEADER: &str = "step,train_loss,val_loss,lr,tokens_per_s,elapsed_s";

impl MetricsRow {
    /// One CSV line. Losses and the learning rate use Rust's shortest round-trip formatting, so
    /// a resumed run's rows compare bit for bit with a straight run's.
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{:.0},{:.3}",
            self.step, self.train_loss, self.val_loss, self.lr, self.tokens_per_s, self.elapsed_s
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.trim().split(',');
        let row = MetricsRow {
            step: it.next()?.parse().ok()?,
            train_loss: it.next()?.parse().ok()?,
            val_loss: it.next()?.parse().ok()?,
            lr: it.next()?.parse().ok()?,
            tokens_per_s: it.next()?.parse().ok()?,
            elapsed_s: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(row)
    }
}

/// The rows of a `metrics.csv` (the header and any unreadable line are skipped; a missing file has
/// none).
pub fn read_metrics(path: &Path) -> Vec<MetricsRow> {
    std::fs::read_to_string(path)
        .map(|text| parse_metrics(&text))
        .unwrap_or_default()
}

/// The rows of a `metrics.csv`'s text.
pub fn parse_metrics(text: &str) -> Vec<MetricsRow> {
    text.lines().filter_map(MetricsRow::parse).collect()
}

/// A `metrics.csv` of `rows`.
pub fn metrics_csv(rows: &[MetricsRow]) -> String {
    let mut text = String::from(METRICS_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.to_csv());
        text.push('\n');
    }
    text
}

/// `steps.csv`, appended to as the run goes: buffered, and flushed at each evaluation, at the end
/// and at least every two seconds, so a reader (a web page) sees recent steps.
pub(super) struct StepsWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    flushed: Instant,
}

impl StepsWriter {
    pub(super) fn open(path: &Path) -> Result<Self, RunError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| RunError::Write {
                path: path.display().to_string(),
                source,
            })?;
        Ok(StepsWriter {
            path: path.to_path_buf(),
            out: std::io::BufWriter::with_capacity(1 << 16, file),
            flushed: Instant::now(),
        })
    }

    pub(super) fn write(&mut self, row: &StepRow) -> Result<(), RunError> {
        row.write_csv(&mut self.out).map_err(|e| self.error(e))?;
        if self.flushed.elapsed().as_secs_f64() >= 2.0 {
            self.flush()?;
        }
        Ok(())
    }

    pub(super) fn flush(&mut self) -> Result<(), RunError> {
        self.flushed = Instant::now();
        self.out.flush().map_err(|e| self.error(e))
    }

    fn error(&self, source: std::io::Error) -> RunError {
        RunError::Write {
            path: self.path.display().to_string(),
            source,
        }
    }
}

/// A sample of `n` characters from the model, seeded by the run's seed and the step so that it is
/// the same every time the run is repeated (the sample `chargpt train` prints at each evaluation).
pub fn eval_sample(
    model: &Model,
    tokenizer: &Tokenizer,
    seed: u64,
    step: usize,
    n: usize,
) -> String {
    let mut rng = Rng::derived(seed, 0x5A4D_9E11, step as u64, n as u64);
    let ids = sampling::generate(model, &[], n, SampleSettings::default(), &mut rng, |_| {});
    tokenizer.decode(&ids).unwrap_or_default()
}

/// One evaluation's sample as [`SAMPLES_FILE`] records it.
pub fn sample_record(step: usize, val_loss: f32, sample: &str) -> String {
    format!("step {step} (val {val_loss:.4}):\n{sample}\n\n")
}

/// The records of `dir` as they stand for a run before it trains on: `metrics.csv` and
/// `steps.csv` rewritten from the rows the run holds (`metrics`, `steps`) (a resumed run: those up to its checkpoint,
/// since the steps after it run again; a new run: none), and the samples and probe records of
/// the evaluations kept. Written when a run is prepared, so that a page reading the history
/// while the run starts never sees the rows of steps about to run again, and again when the
/// loop starts.
pub fn begin_records(
    dir: &Path,
    metrics: &[MetricsRow],
    steps: &[StepRow],
) -> Result<(), RunError> {
    std::fs::create_dir_all(dir).map_err(|source| RunError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    write_atomic(&dir.join(METRICS_FILE), metrics_csv(metrics).as_bytes())?;
    write_atomic(&dir.join(STEPS_FILE), steps_csv(steps).as_bytes())?;
    let last = metrics.last().map(|m| m.step);
    keep_probes_through(&dir.join(PROBES_FILE), last)?;
    keep_samples_through(&dir.join(SAMPLES_FILE), last)
}

/// Keeps the records of [`SAMPLES_FILE`] up to the evaluation of step `last` (none if `None`,
/// and no final one: the run goes on).
fn keep_samples_through(path: &Path, last: Option<usize>) -> Result<(), RunError> {
    let kept: String = read_samples(path)
        .iter()
        .filter(|s| last.is_some_and(|l| s.step <= l))
        .map(|s| sample_record(s.step, s.val_loss, &s.text))
        .collect();
    let unchanged = std::fs::read_to_string(path).is_ok_and(|t| t == kept);
    if !unchanged {
        write_atomic(path, kept.as_bytes())?;
    }
    Ok(())
}

/// The final sample of a run as [`SAMPLES_FILE`] records it (not an evaluation's: it has no val
/// loss, and [`read_samples`] leaves it out).
pub fn final_record(step: usize, name: &str, sample: &str) -> String {
    format!("final, step {step} ({name}):\n{sample}\n")
}

/// Appends `text` to `path`, creating it.
pub fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

/// One evaluation's sample, read back from [`SAMPLES_FILE`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EvalSample {
    pub step: usize,
    pub val_loss: f32,
    pub text: String,
}

/// The evaluation samples of a [`SAMPLES_FILE`] (the final sample is not one of them).
pub fn read_samples(path: &Path) -> Vec<EvalSample> {
    std::fs::read_to_string(path)
        .map(|text| parse_samples(&text))
        .unwrap_or_default()
}

/// The evaluation samples of a [`SAMPLES_FILE`]'s text.
pub fn parse_samples(text: &str) -> Vec<EvalSample> {
    // A record is a header line `step N (val X):`, the sample, and a blank line; the next record
    // (an evaluation's or the final one) starts after a blank line.
    let header = |line: &str| -> Option<(usize, f32)> {
        let rest = line.strip_prefix("step ")?.strip_suffix("):")?;
        let (step, val) = rest.split_once(" (val ")?;
        Some((step.parse().ok()?, val.parse().ok()?))
    };
    let mut samples = Vec::new();
    // The record being read: its step, val loss and lines so far.
    let mut current: Option<(usize, f32, Vec<&str>)> = None;
    let mut previous_blank = true;
    let mut finish = |record: Option<(usize, f32, Vec<&str>)>| {
        if let Some((step, val_loss, lines)) = record {
            let text = lines.join("\n").trim_end_matches('\n').to_string();
            samples.push(EvalSample {
                step,
                val_loss,
                text,
            });
        }
    };
    for line in text.split('\n') {
        if previous_blank && (header(line).is_some() || line.starts_with("final, step ")) {
            finish(current.take());
            current = header(line).map(|(step, val)| (step, val, Vec::new()));
        } else if let Some((_, _, lines)) = &mut current {
            lines.push(line);
        }
        previous_blank = line.is_empty();
    }
    finish(current);
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        target_arch = "wasm32",
        ignore = "a file on disk: std's temp_dir has none on wasm32 (the tab keeps runs in IndexedDB)"
    )]
    fn samples_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SAMPLES_FILE);
        let a = "First line\n\nafter a blank line\nstep 3 (val 1.0000): inside";
        let b = "short";
        append(&path, &sample_record(0, 4.17, a)).unwrap();
        append(&path, &sample_record(50, 2.5, b)).unwrap();
        append(&path, "final, step 50 (default):\nthe end\n").unwrap();
        let read = read_samples(&path);
        assert_eq!(read.len(), 2, "{read:?}");
        assert_eq!((read[0].step, read[0].text.as_str()), (0, a));
        assert_eq!((read[1].step, read[1].text.as_str()), (50, b));
        assert!((read[1].val_loss - 2.5).abs() < 1e-6);
    }
}
