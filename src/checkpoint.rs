//! Checkpoints: a directory with `model.safetensors` (the parameters, one tensor per name of
//! [`crate::model::ParamLayout`], f32), `config.json` (model config, vocabulary, training config,
//! step, best val loss) and, for resuming, `optimizer.safetensors` (AdamW moments `m.<name>` and
//! `v.<name>`, and the run's counters and random state as metadata).
//!
//! Every file is written atomically: to a temporary file in the same directory, flushed to disk
//! (fsync), then renamed over the old one, so a crash at any moment leaves the previous
//! checkpoint loadable.

use crate::config::{ModelConfig, TrainConfig};
use crate::model::{Model, ParamLayout};
use crate::optimizer::AdamW;
use crate::tokenizer::Tokenizer;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const MODEL_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
const FORMAT: &str = "chargpt-1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error(
        "no checkpoint in {dir}: {file} is missing; train one with `chargpt train --out {dir}`"
    )]
    Missing { dir: String, file: &'static str },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is corrupt or truncated ({reason}); retrain or restore it")]
    Corrupt { path: String, reason: String },
    #[error("{path} does not match its config.json: {reason}; the files come from different models: retrain, or restore both from one run")]
    Mismatch { path: String, reason: String },
    #[error("{dir} holds files of different steps (model {model_step}, optimizer {optimizer_step}): a save was cut off; the model still samples and evaluates, but cannot resume exactly: fine-tune it with --init-from {dir} instead")]
    Torn {
        dir: String,
        model_step: usize,
        optimizer_step: usize,
    },
}

/// Where a run's text came from, so that `--resume` and `eval` can find it again and tell when it
/// changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataInfo {
    /// An absolute path (relative in checkpoints written before they were recorded absolute),
    /// or `embedded:tinyshakespeare`.
    pub source: String,
    pub characters: usize,
    /// [`crate::data::fingerprint`] of the text.
    pub fingerprint: String,
}

/// `DataInfo::source` for the text built into the binary.
pub const EMBEDDED_SOURCE: &str = "embedded:tinyshakespeare";

/// What `config.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    pub format: String,
    pub model: ModelConfig,
    /// The vocabulary in id order, one character per string.
    pub vocab: Vec<String>,
    pub train: TrainConfig,
    /// Optimizer steps taken when these parameters were saved.
    pub step: usize,
    /// The best validation loss estimate (`estimate_loss`) seen so far, and its step.
    pub best_val_loss: Option<f32>,
    #[serde(default)]
    pub best_val_step: Option<usize>,
    /// The exact loss over the whole val split of these parameters, when measured (at the end of
    /// a run).
    #[serde(default)]
    pub final_val_loss: Option<f64>,
    #[serde(default)]
    pub data: Option<DataInfo>,
    /// The preset the run started from, for people reading the file.
    #[serde(default)]
    pub preset: Option<String>,
    /// For a fine-tune: the checkpoint it started from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<InitFrom>,
}

/// The checkpoint a fine-tune started from, and what it did to the vocabulary or the text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitFrom {
    /// The checkpoint directory, as an absolute path.
    pub dir: String,
    /// The step of the parameters it started from.
    pub step: usize,
    /// Characters added to the vocabulary (`--unknown-chars extend`), in id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub added_chars: Vec<String>,
    /// Characters removed from the text (`--unknown-chars drop`): how many, of how many kinds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub dropped_chars: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dropped_kinds: Vec<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl CheckpointConfig {
    pub fn new(model: &ModelConfig, tokenizer: &Tokenizer, train: &TrainConfig) -> Self {
        CheckpointConfig {
            format: FORMAT.into(),
            model: model.clone(),
            vocab: tokenizer.chars().iter().map(|c| c.to_string()).collect(),
            train: train.clone(),
            step: 0,
            best_val_loss: None,
            best_val_step: None,
            final_val_loss: None,
            data: None,
            preset: None,
            init_from: None,
        }
    }
}

/// A run's counters and random state: with the parameters and the AdamW moments, all an exact
/// resume needs (dropout masks and loss-estimate batches are derived from the seed and the step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunCounters {
    /// Steps completed.
    pub step: usize,
    /// State of the batch-sampling generator.
    pub data_rng_state: u64,
    pub best_val_loss: Option<f32>,
    pub best_val_step: Option<usize>,
    /// Wall-clock seconds the run had taken when saved (all sessions together).
    pub elapsed_s: f64,
}

/// What `optimizer.safetensors` holds.
#[derive(Debug, Clone, PartialEq)]
pub struct OptimizerState {
    pub adamw: AdamW,
    pub counters: RunCounters,
}

/// A loaded model with its vocabulary and saved settings.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub config: CheckpointConfig,
}

/// Writes `bytes` to `path` so that `path` holds either the old or the new content, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    let err = |source| CheckpointError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp: PathBuf = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        {
            // Closed before the rename.
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Serialises named f32 tensors (name, shape, values) with optional string metadata.
pub fn tensors_to_bytes(
    tensors: &[(String, Vec<usize>, &[f32])],
    metadata: Option<HashMap<String, String>>,
) -> Vec<u8> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            let view = TensorView::new(Dtype::F32, shape.clone(), b)
                .expect("shape and data length agree by construction");
            (name.clone(), view)
        })
        .collect();
    safetensors::tensor::serialize(views, metadata).expect("f32 tensors serialise")
}

/// A parsed safetensors file: each tensor's shape and f32 values, and the metadata.
pub struct TensorFile {
    pub tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    pub metadata: HashMap<String, String>,
}

pub fn read_tensor_file(path: &Path) -> Result<TensorFile, CheckpointError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| CheckpointError::Read {
        path: shown.clone(),
        source,
    })?;
    parse_tensors(&bytes, &shown)
}

/// A safetensors file's bytes parsed (`shown` names the file in errors): a checkpoint in memory,
/// as the page in the browser holds it.
pub fn parse_tensors(bytes: &[u8], shown: &str) -> Result<TensorFile, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: shown.to_string(),
        reason,
    };
    let parsed = SafeTensors::deserialize(bytes).map_err(|e| corrupt(e.to_string()))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| corrupt(e.to_string()))?;
    let mut tensors = HashMap::new();
    for (name, view) in parsed.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(corrupt(format!(
                "tensor {name} is {:?}, expected F32",
                view.dtype()
            )));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name.to_string(), (view.shape().to_vec(), values));
    }
    Ok(TensorFile {
        tensors,
        metadata: meta.metadata().clone().unwrap_or_default(),
    })
}

/// Gathers the tensors named by `layout` (with `prefix` on each name) from `file` into one flat
/// buffer, requiring exactly those names with exactly those shapes.
fn gather(
    file: &TensorFile,
    layout: &ParamLayout,
    prefix: &str,
    shown: &str,
) -> Result<Vec<f32>, CheckpointError> {
    let mismatch = |reason: String| CheckpointError::Mismatch {
        path: shown.to_string(),
        reason,
    };
    let mut flat = vec![0.0f32; layout.len];
    for spec in &layout.specs {
        let name = format!("{prefix}{}", spec.name);
        let (shape, values) = file
            .tensors
            .get(&name)
            .ok_or_else(|| mismatch(format!("tensor {name} is missing")))?;
        if shape != &spec.shape {
            return Err(mismatch(format!(
                "tensor {name} has shape {shape:?}, the config needs {:?}",
                spec.shape
            )));
        }
        flat[spec.range()].copy_from_slice(values);
    }
    let expected = layout.specs.len();
    if file.tensors.len() != expected {
        let mut extra: Vec<_> = file
            .tensors
            .keys()
            .filter(|k| {
                k.strip_prefix(prefix)
                    .is_none_or(|n| layout.spec(n).is_none())
            })
            .cloned()
            .collect();
        extra.sort();
        return Err(mismatch(format!("unexpected tensors {}", extra.join(", "))));
    }
    Ok(flat)
}

fn model_tensors<'a>(
    layout: &ParamLayout,
    values: &'a [f32],
    prefix: &str,
) -> Vec<(String, Vec<usize>, &'a [f32])> {
    layout
        .specs
        .iter()
        .map(|s| {
            (
                format!("{prefix}{}", s.name),
                s.shape.clone(),
                &values[s.range()],
            )
        })
        .collect()
}

/// Saves the model and its config into `dir` (created if needed). `config.step` is also written
/// into the tensor file's metadata, so that a resume can check it against the optimizer's.
pub fn save_model(
    dir: &Path,
    model: &Model,
    config: &CheckpointConfig,
) -> Result<(), CheckpointError> {
    create_dir(dir)?;
    write_atomic(&dir.join(MODEL_FILE), &model_bytes(model, config.step))?;
    write_atomic(&dir.join(CONFIG_FILE), &config_bytes(config))
}

/// What [`MODEL_FILE`] holds for `model` at `step` (the step also goes into the metadata).
pub fn model_bytes(model: &Model, step: usize) -> Vec<u8> {
    let meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    tensors_to_bytes(&model_tensors(&model.layout, &model.params, ""), Some(meta))
}

/// What [`CONFIG_FILE`] holds.
pub fn config_bytes(config: &CheckpointConfig) -> Vec<u8> {
    serde_json::to_vec_pretty(config).expect("config serialises")
}

/// Saves everything a run needs to continue: the optimizer state first, then the model and its
/// config. Each file is replaced atomically; the steps recorded in both tensor files let
/// [`load_optimizer`]'s caller detect the one torn state a crash between two renames can leave.
pub fn save_checkpoint(
    dir: &Path,
    model: &Model,
    config: &CheckpointConfig,
    adamw: &AdamW,
    counters: &RunCounters,
) -> Result<(), CheckpointError> {
    create_dir(dir)?;
    save_optimizer(dir, &model.layout, adamw, counters)?;
    save_model(dir, model, config)
}

fn create_dir(dir: &Path) -> Result<(), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(|source| CheckpointError::Write {
        path: dir.display().to_string(),
        source,
    })
}

/// Whether `dir` holds a checkpoint (its `config.json`).
pub fn exists(dir: &Path) -> bool {
    dir.join(CONFIG_FILE).exists()
}

/// The step recorded in a model file's metadata (None for files without one).
pub fn model_file_step(dir: &Path) -> Result<Option<usize>, CheckpointError> {
    let path = dir.join(MODEL_FILE);
    tensor_file_step(&read_tensor_file(&path)?, &path.display().to_string())
}

/// The step a model file's metadata records, if it records one.
fn tensor_file_step(file: &TensorFile, shown: &str) -> Result<Option<usize>, CheckpointError> {
    match file.metadata.get("step") {
        None => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| CheckpointError::Corrupt {
            path: shown.to_string(),
            reason: format!("metadata step: {e}"),
        }),
    }
}

/// Reads `config.json` alone.
pub fn load_config(dir: &Path) -> Result<CheckpointConfig, CheckpointError> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        return Err(CheckpointError::Missing {
            dir: dir.display().to_string(),
            file: CONFIG_FILE,
        });
    }
    let text = std::fs::read(&path).map_err(|source| CheckpointError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_config(&text, &path.display().to_string())
}

/// A `config.json`'s bytes parsed and checked (`shown` names the file in errors).
pub fn parse_config(text: &[u8], shown: &str) -> Result<CheckpointConfig, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: shown.to_string(),
        reason,
    };
    let config: CheckpointConfig =
        serde_json::from_slice(text).map_err(|e| corrupt(e.to_string()))?;
    if config.format != FORMAT {
        return Err(corrupt(format!(
            "format {:?}, expected {FORMAT:?}",
            config.format
        )));
    }
    config
        .model
        .validate()
        .map_err(|e| corrupt(e.to_string()))?;
    config
        .train
        .validate()
        .map_err(|e| corrupt(e.to_string()))?;
    if config.vocab.len() != config.model.vocab_size {
        return Err(corrupt(format!(
            "vocab has {} characters, model.vocab_size is {}",
            config.vocab.len(),
            config.model.vocab_size
        )));
    }
    Ok(config)
}

/// Loads a model saved by [`save_model`], checking every tensor against the config.
pub fn load(dir: &Path) -> Result<Checkpoint, CheckpointError> {
    let config = load_config(dir)?;
    let model_path = dir.join(MODEL_FILE);
    if !model_path.exists() {
        return Err(CheckpointError::Missing {
            dir: dir.display().to_string(),
            file: MODEL_FILE,
        });
    }
    let file = read_tensor_file(&model_path)?;
    assemble(
        config,
        &file,
        &dir.join(CONFIG_FILE).display().to_string(),
        &model_path.display().to_string(),
    )
}

/// A checkpoint from the bytes of its `config.json` and `model.safetensors` (a checkpoint in
/// memory, or files a page was given), checked as [`load`] checks files.
pub fn from_bytes(config: &[u8], model: &[u8]) -> Result<Checkpoint, CheckpointError> {
    let config = parse_config(config, CONFIG_FILE)?;
    let file = parse_tensors(model, MODEL_FILE)?;
    assemble(config, &file, CONFIG_FILE, MODEL_FILE)
}

/// The step recorded in a model file's bytes, if any.
pub fn model_bytes_step(model: &[u8]) -> Result<Option<usize>, CheckpointError> {
    tensor_file_step(&parse_tensors(model, MODEL_FILE)?, MODEL_FILE)
}

/// The model and vocabulary of `config` with the parameters of `file`, every tensor checked.
fn assemble(
    config: CheckpointConfig,
    file: &TensorFile,
    config_shown: &str,
    model_shown: &str,
) -> Result<Checkpoint, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: config_shown.to_string(),
        reason,
    };
    let mut chars = Vec::with_capacity(config.vocab.len());
    for s in &config.vocab {
        let mut it = s.chars();
        match (it.next(), it.next()) {
            (Some(c), None) => chars.push(c),
            _ => return Err(corrupt(format!("vocab entry {s:?} is not one character"))),
        }
    }
    let tokenizer = Tokenizer::from_chars(chars).map_err(|e| corrupt(e.to_string()))?;
    let layout = ParamLayout::new(&config.model);
    let params = gather(file, &layout, "", model_shown)?;
    if let Some(i) = params.iter().position(|p| !p.is_finite()) {
        return Err(CheckpointError::Corrupt {
            path: model_shown.to_string(),
            reason: format!("parameter {i} is {}", params[i]),
        });
    }
    let model = Model::from_params(config.model.clone(), params).expect("length from layout");
    Ok(Checkpoint {
        model,
        tokenizer,
        config,
    })
}

/// Saves the optimizer state next to a model saved with the same layout.
pub fn save_optimizer(
    dir: &Path,
    layout: &ParamLayout,
    adamw: &AdamW,
    state: &RunCounters,
) -> Result<(), CheckpointError> {
    write_atomic(
        &dir.join(OPTIMIZER_FILE),
        &optimizer_bytes(layout, adamw, state),
    )
}

/// What [`OPTIMIZER_FILE`] holds: AdamW's moments and step, and the run's counters.
pub fn optimizer_bytes(layout: &ParamLayout, adamw: &AdamW, state: &RunCounters) -> Vec<u8> {
    let mut tensors = model_tensors(layout, &adamw.m, "m.");
    tensors.extend(model_tensors(layout, &adamw.v, "v."));
    let mut meta = HashMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("adamw_step".to_string(), adamw.step.to_string()),
        ("step".to_string(), state.step.to_string()),
        (
            "data_rng_state".to_string(),
            state.data_rng_state.to_string(),
        ),
    ]);
    if let Some(best) = state.best_val_loss {
        meta.insert("best_val_loss".into(), best.to_string());
    }
    if let Some(step) = state.best_val_step {
        meta.insert("best_val_step".into(), step.to_string());
    }
    // `{:?}` prints the shortest text that parses back to the same f64.
    meta.insert("elapsed_s".into(), format!("{:?}", state.elapsed_s));
    tensors_to_bytes(&tensors, Some(meta))
}

pub fn load_optimizer(dir: &Path, layout: &ParamLayout) -> Result<OptimizerState, CheckpointError> {
    let path = dir.join(OPTIMIZER_FILE);
    if !path.exists() {
        return Err(CheckpointError::Missing {
            dir: dir.display().to_string(),
            file: OPTIMIZER_FILE,
        });
    }
    let file = read_tensor_file(&path)?;
    optimizer_from_tensors(&file, layout, &path.display().to_string())
}

/// The optimizer state from the bytes of an [`OPTIMIZER_FILE`], for a model of `layout`.
pub fn optimizer_from_bytes(
    bytes: &[u8],
    layout: &ParamLayout,
) -> Result<OptimizerState, CheckpointError> {
    let file = parse_tensors(bytes, OPTIMIZER_FILE)?;
    optimizer_from_tensors(&file, layout, OPTIMIZER_FILE)
}

fn optimizer_from_tensors(
    file: &TensorFile,
    layout: &ParamLayout,
    shown: &str,
) -> Result<OptimizerState, CheckpointError> {
    let mut m_only = TensorFile {
        tensors: HashMap::new(),
        metadata: HashMap::new(),
    };
    let mut v_only = TensorFile {
        tensors: HashMap::new(),
        metadata: HashMap::new(),
    };
    for (name, t) in file.tensors.iter() {
        let target = if name.starts_with("m.") {
            &mut m_only
        } else {
            &mut v_only
        };
        target.tensors.insert(name.clone(), t.clone());
    }
    let m = gather(&m_only, layout, "m.", shown)?;
    let v = gather(&v_only, layout, "v.", shown)?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: shown.to_string(),
        reason,
    };
    let number = |key: &str| -> Result<u64, CheckpointError> {
        file.metadata
            .get(key)
            .ok_or_else(|| corrupt(format!("metadata {key} is missing")))?
            .parse::<u64>()
            .map_err(|e| corrupt(format!("metadata {key}: {e}")))
    };
    let best_val_loss = match file.metadata.get("best_val_loss") {
        Some(s) => Some(
            s.parse::<f32>()
                .map_err(|e| corrupt(format!("best_val_loss: {e}")))?,
        ),
        None => None,
    };
    let best_val_step = match file.metadata.get("best_val_step") {
        Some(_) => Some(number("best_val_step")? as usize),
        None => None,
    };
    let elapsed_s = match file.metadata.get("elapsed_s") {
        Some(s) => s
            .parse::<f64>()
            .map_err(|e| corrupt(format!("elapsed_s: {e}")))?,
        None => 0.0,
    };
    Ok(OptimizerState {
        adamw: AdamW {
            m,
            v,
            step: number("adamw_step")?,
        },
        counters: RunCounters {
            step: number("step")? as usize,
            data_rng_state: number("data_rng_state")?,
            best_val_loss,
            best_val_step,
            elapsed_s,
        },
    })
}
