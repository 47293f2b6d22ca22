//! What can go wrong with a run once its settings are accepted.

use crate::checkpoint::CheckpointError;
use crate::config::ConfigError;
use crate::data::DataError;
use crate::memory::OutOfMemory;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the {what} became {value} in step {step}; training stopped, {kept} (try a lower learning_rate, or grad_clip=1.0)")]
    NonFinite {
        what: &'static str,
        value: f32,
        /// 1-based: the step that failed.
        step: usize,
        /// Where the last good checkpoint is, in words.
        kept: String,
    },
    #[error("the run in {dir} already finished its {steps} steps; continue it with --set steps=N (N > {steps})")]
    AlreadyFinished { dir: String, steps: usize },
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    OutOfMemory(#[from] OutOfMemory),
}
