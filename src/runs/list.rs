//! The runs of a runs directory, as their files tell them (what a page lists).

use super::lock::{RunLock, LOCK_FILE};
use super::records::{read_metrics, StepRow, METRICS_FILE, STEPS_FILE};
use crate::checkpoint::{self, CheckpointConfig, CheckpointError, DataInfo, EMBEDDED_SOURCE};
use crate::model::ParamLayout;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// A process holds its lock.
    Training,
    /// Saved before its last step (stopped, or cut off): it can be resumed.
    Stopped,
    /// Trained to its last step.
    Finished,
}

/// One run of a runs directory, as its files tell it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSummary {
    pub name: String,
    pub preset: Option<String>,
    /// Steps done: the last row of `steps.csv`, or the checkpoint's step.
    pub step: usize,
    /// Steps the run is set to take (unknown before its first checkpoint).
    pub steps: Option<usize>,
    /// The step of the checkpoint on disk.
    pub saved_step: Option<usize>,
    pub params: Option<usize>,
    pub best_val_loss: Option<f32>,
    pub best_val_step: Option<usize>,
    /// The exact val loss, measured at the end of a run.
    pub final_val_loss: Option<f64>,
    /// The last evaluation's val loss estimate.
    pub last_val_loss: Option<f32>,
    /// Characters in the model's vocabulary: losses of models with different vocabularies (or
    /// texts) do not compare.
    pub vocab_size: Option<usize>,
    /// The text it trains on.
    pub text: Option<TextSummary>,
    pub state: RunState,
    /// The process training it, when one is.
    pub pid: Option<String>,
    /// A problem with its files, in words (a corrupt config.json).
    pub problem: Option<String>,
}

/// A run's text, as a list of runs shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TextSummary {
    /// "Tiny Shakespeare" for the built-in text, else the file's name (not its path).
    pub name: String,
    pub characters: usize,
    /// [`crate::data::fingerprint`]: the same for the same text.
    pub fingerprint: String,
}

impl TextSummary {
    pub fn of(info: &DataInfo) -> Self {
        let name = if info.source == EMBEDDED_SOURCE {
            "Tiny Shakespeare".to_string()
        } else {
            Path::new(&info.source)
                .file_name()
                .map_or_else(|| info.source.clone(), |f| f.to_string_lossy().into_owned())
        };
        TextSummary {
            name,
            characters: info.characters,
            fingerprint: info.fingerprint.clone(),
        }
    }
}

/// Whether `name` could be a run's directory under a runs directory: one path component of
/// `[A-Za-z0-9._-]`, 1 to 64 characters, not starting with a dot (so never `.` or `..`).
pub fn valid_run_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// The runs in `dir`: every directory with a valid name that holds a checkpoint, a metrics file or
/// a lock, sorted by name. A missing directory has none.
pub fn list_runs(dir: &Path) -> Vec<RunSummary> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut runs: Vec<RunSummary> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            valid_run_name(&name).then(|| summarize(&e.path(), &name))?
        })
        .collect();
    runs.sort_by(|a, b| a.name.cmp(&b.name));
    runs
}

/// What the files of the run in `dir` say about it; `None` if it holds no run.
pub fn summarize(dir: &Path, name: &str) -> Option<RunSummary> {
    let has = |f: &str| dir.join(f).exists();
    if !(has(checkpoint::CONFIG_FILE) || has(METRICS_FILE) || has(LOCK_FILE)) {
        return None;
    }
    let pid = RunLock::holder(dir);
    let (config, problem) = match checkpoint::load_config(dir) {
        Ok(c) => (Some(c), None),
        Err(CheckpointError::Missing { .. }) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let last_step = last_step_row(&dir.join(STEPS_FILE)).map(|r| r.step);
    let last_val = read_metrics(&dir.join(METRICS_FILE))
        .last()
        .map(|m| m.val_loss);
    let mut summary = summary_of(name, config.as_ref(), last_step, last_val, pid.is_some());
    summary.pid = pid;
    summary.problem = problem;
    Some(summary)
}

/// A run's summary from its saved config (none before its first checkpoint), its last step
/// and last val estimate recorded, and whether it is training now.
pub fn summary_of(
    name: &str,
    config: Option<&CheckpointConfig>,
    last_step: Option<usize>,
    last_val_loss: Option<f32>,
    training: bool,
) -> RunSummary {
    let saved_step = config.map(|c| c.step);
    let step = last_step.max(saved_step).unwrap_or(0);
    let steps = config.map(|c| c.train.steps);
    let state = if training {
        RunState::Training
    } else if saved_step.is_some() && saved_step >= steps {
        RunState::Finished
    } else {
        RunState::Stopped
    };
    RunSummary {
        name: name.to_string(),
        preset: config.and_then(|c| c.preset.clone()),
        step: if training {
            step
        } else {
            saved_step.unwrap_or(step)
        },
        steps,
        saved_step,
        params: config.map(|c| ParamLayout::new(&c.model).len),
        best_val_loss: config.and_then(|c| c.best_val_loss),
        best_val_step: config.and_then(|c| c.best_val_step),
        final_val_loss: config.and_then(|c| c.final_val_loss),
        last_val_loss,
        vocab_size: config.map(|c| c.model.vocab_size),
        text: config.and_then(|c| c.data.as_ref()).map(TextSummary::of),
        state,
        pid: None,
        problem: None,
    }
}

/// The last complete row of a `steps.csv`, read from the end of the file.
fn last_step_row(path: &Path) -> Option<StepRow> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let tail = len.min(4096);
    file.seek(SeekFrom::Start(len - tail)).ok()?;
    let mut bytes = Vec::with_capacity(tail as usize);
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    // The last line may be half written; the complete ones end with a newline.
    let complete = &text[..text.rfind('\n')?];
    complete.lines().rev().find_map(StepRow::parse)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_are_one_plain_path_component() {
        for good in ["default", "ln-4", "a.b_c", &"x".repeat(64)] {
            assert!(valid_run_name(good), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "é",
            "a b",
            &"x".repeat(65),
        ] {
            assert!(!valid_run_name(bad), "{bad}");
        }
    }
}
