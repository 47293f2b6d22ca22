//! Preparing a run: a new one from a preset and settings, or a resumed one. Every check a front
//! end used to make before training lives here, in the order they run, so that a command line
//! and a web page refuse the same mistakes with the same words; only the "what to do" clause
//! that names a flag or a button comes from the front end ([`Wording`]).

use super::error::RunError;
use super::lock::{LockError, RunLock};
use super::records::{begin_records, parse_metrics, parse_steps, METRICS_FILE};
use super::run::{data_info, Run, Saved, UnknownChars};
use super::train::SavedFiles;
use crate::checkpoint::{
    self, Checkpoint, CheckpointConfig, CheckpointError, DataInfo, InitFrom, EMBEDDED_SOURCE,
};
use crate::config::{self, Architecture, ConfigError, ModelConfig, TrainConfig};
use crate::data::{self, DataError};
use crate::distributed::DistributedError;
use crate::model::Model;
use crate::tokenizer::Tokenizer;
use std::path::{Path, PathBuf};

/// Where a setting came from, so that an error about it can say so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettingOrigin {
    /// A command-line flag (`--set`, `--seed`): the error names the flag and `KEY=VALUE`.
    Flag(String),
    /// A config file: the error names the file.
    File(String),
    /// A field of a request (the web page's form): the error names `KEY=VALUE`.
    Field,
}

/// One `KEY=VALUE` setting, not yet applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub origin: SettingOrigin,
    pub key: String,
    pub value: String,
}

impl Setting {
    pub fn field(key: &str, value: &str) -> Self {
        Setting {
            origin: SettingOrigin::Field,
            key: key.to_string(),
            value: value.to_string(),
        }
    }
}

/// The keys given explicitly, for [`config::derive_settings`].
pub fn given_keys(settings: &[Setting]) -> Vec<&str> {
    settings.iter().map(|s| s.key.as_str()).collect()
}

/// The "what to do" clauses of the errors below that depend on the front end (a flag to pass, a
/// field to change). Everything else in a message is the same for all front ends.
#[derive(Debug, Clone, Copy)]
pub struct Wording {
    /// After an invalid configuration ("n_embd (30) must be divisible by n_head (4); ...").
    pub change_setting: &'static str,
    /// After a model setting that a resumed or fine-tuned run cannot change.
    pub keep_shape: &'static str,
    /// After an output directory that cannot be written.
    pub another_out: &'static str,
    /// After a new run aimed at a directory that holds a checkpoint.
    pub existing: &'static str,
    /// After a resume of a directory that holds no checkpoint.
    pub nothing_to_resume: &'static str,
    /// After a resume whose recorded text cannot be read.
    pub give_text: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// A setting that does not apply: an unknown key, or a value of the wrong kind.
    #[error("{message}")]
    Setting { key: String, message: String },
    #[error("{0}")]
    Refused(String),
    #[error("{dir} is being trained by process {pid}; wait for it to finish, or stop it first")]
    Locked { dir: String, pid: String },
    #[error("the model was trained on {recorded}; {hint}")]
    RecordedText {
        recorded: String,
        hint: &'static str,
        source: Box<DataError>,
    },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Distributed(#[from] DistributedError),
}

impl PrepareError {
    /// The setting the error is about, when it is about one (a form shows the error beside it).
    pub fn key(&self) -> Option<&str> {
        match self {
            PrepareError::Setting { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// Applies the settings in order, later ones winning.
pub fn apply_settings(
    settings: &[Setting],
    model: &mut ModelConfig,
    train: &mut TrainConfig,
) -> Result<(), PrepareError> {
    for Setting { origin, key, value } in settings {
        config::apply_to_configs(model, train, key, value).map_err(|e| {
            let message = match origin {
                SettingOrigin::Flag(flag) if flag == "--time" => format!("--time {value}: {e}"),
                SettingOrigin::Flag(flag) => format!("{flag} {key}={value}: {e}"),
                SettingOrigin::File(file) => format!("{file}: {e}"),
                SettingOrigin::Field => format!("{key}={value}: {e}"),
            };
            PrepareError::Setting {
                key: key.clone(),
                message,
            }
        })?;
    }
    Ok(())
}

/// A resumed or fine-tuned model keeps its shape: the settings may change `allowed` model fields
/// only (or set others to the value they already have).
pub fn check_model_unchanged(
    saved: &ModelConfig,
    wanted: &ModelConfig,
    allowed: &[&str],
    what: &str,
    wording: &Wording,
) -> Result<(), PrepareError> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(saved), serde_json::to_value(wanted))
    else {
        return Err(PrepareError::Refused(
            "cannot compare model settings".into(),
        ));
    };
    let changed: Vec<String> = a
        .iter()
        .filter(|(k, v)| !allowed.contains(&k.as_str()) && b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} (the checkpoint has {v})"))
        .collect();
    if !changed.is_empty() {
        return Err(PrepareError::Refused(format!(
            "cannot change {} when {what}: the model keeps the checkpoint's shape; {}",
            changed.join(", "),
            wording.keep_shape
        )));
    }
    Ok(())
}

/// Makes sure `dir` exists and takes files, before any time is spent training; clears temporary
/// files an interrupted save of an earlier run left behind.
pub fn check_writable(dir: &Path, wording: &Wording) -> Result<(), PrepareError> {
    let fail = |e: std::io::Error| not_writable(dir, &e, wording);
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".chargpt-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)?;
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let ours = [
                checkpoint::MODEL_FILE,
                checkpoint::CONFIG_FILE,
                checkpoint::OPTIMIZER_FILE,
                METRICS_FILE,
                "loss",
            ]
            .iter()
            .any(|f| name.starts_with(&format!(".{f}.tmp-")));
            if ours {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn not_writable(dir: &Path, e: &std::io::Error, wording: &Wording) -> PrepareError {
    PrepareError::Refused(format!(
        "cannot write to the output directory {}: {e}; {}",
        dir.display(),
        wording.another_out
    ))
}

/// Roughly the bytes a run takes: parameters, gradients and both AdamW moments, plus the training
/// and evaluation activations (per token and layer about 10 C + 2 F values and H T attention
/// weights, and the logits). In f64, so that absurd settings cannot overflow.
fn memory_needed(model: &ModelConfig, train: &TrainConfig) -> f64 {
    let (c, f, h, t, l, v) = (
        model.n_embd as f64,
        model.ffn_hidden() as f64,
        model.n_head as f64,
        model.block_size as f64,
        model.n_layer as f64,
        model.vocab_size.max(1) as f64,
    );
    let params = if model.architecture == Architecture::Bigram {
        v * v
    } else {
        // Embeddings, per block qkv + projection + two feed-forward layers, lm_head.
        (v + t) * c + l * (4.0 * c * c + 2.0 * f * c) + v * c
    };
    let tokens = train.batch_size as f64 * t;
    let per_token = l * (10.0 * c + 2.0 * f + 1.25 * h * t) + 10.0 * c + 3.0 * v;
    4.0 * (4.0 * params + 2.0 * tokens * per_token)
}

/// The share of the free memory a run may plan to take: the estimate is rough, and the
/// process, the page and the other trainings need some too.
const MEMORY_MARGIN: f64 = 0.8;

/// Refuses settings whose buffers cannot fit in the memory this machine (or its container) has
/// free, before allocating them: a run that only fails when the kernel finds no page for memory
/// it promised would be killed with every other training of its process.
pub fn check_memory(model: &ModelConfig, train: &TrainConfig) -> Result<(), PrepareError> {
    check_memory_against(model, train, crate::memory::available())
}

fn check_memory_against(
    model: &ModelConfig,
    train: &TrainConfig,
    available: Option<u64>,
) -> Result<(), PrepareError> {
    let needed = memory_needed(model, train);
    match available {
        Some(free) if needed > MEMORY_MARGIN * free as f64 => {
            let text = |b: f64| crate::memory::bytes_text(b.min(u64::MAX as f64) as u64);
            // A browser tab's WebAssembly has 4 GiB of addresses, whatever the machine has.
            let room = if cfg!(target_arch = "wasm32") {
                "a WebAssembly module in this tab has (4 GiB at most)"
            } else {
                "this machine has"
            };
            Err(PrepareError::Refused(format!(
                "these settings need about {} of memory and {room} {} free; choose a smaller n_embd, n_layer, block_size or batch_size{}",
                text(needed),
                text(free as f64),
                if model.vocab_size > 10_000 {
                    format!(
                        ", or a text with fewer than its {} distinct characters",
                        crate::limits::number(model.vocab_size as f64)
                    )
                } else {
                    String::new()
                }
            )))
        }
        _ => Ok(()),
    }
}

/// An invalid configuration with the front end's "what to do"; a setting out of its range is
/// about that setting (a form shows it beside it).
fn invalid_setting(e: ConfigError, wording: &Wording) -> PrepareError {
    match e {
        ConfigError::OutOfRange { key, .. } => PrepareError::Setting {
            key: key.to_string(),
            message: format!("{e}; {}", wording.change_setting),
        },
        ConfigError::Invalid(_) => {
            PrepareError::Refused(format!("{e}; {}", wording.change_setting))
        }
        e => e.into(),
    }
}

/// A new run never overwrites a checkpoint.
pub fn refuse_to_overwrite(out: &Path, wording: &Wording) -> Result<(), PrepareError> {
    if checkpoint::exists(out) {
        let step = checkpoint::load_config(out)
            .map(|c| format!(" (step {})", c.step))
            .unwrap_or_default();
        return Err(PrepareError::Refused(format!(
            "{} already holds a checkpoint{step}; {}",
            out.display(),
            wording.existing
        )));
    }
    Ok(())
}

/// Reads a training or evaluation text: `path`, or the built-in Tiny Shakespeare. A file's
/// source is recorded absolute, so that `eval` and a resume find it from any directory.
pub fn load_text(path: Option<&Path>) -> Result<(String, DataInfo), DataError> {
    let (text, source) = match path {
        Some(p) => (
            data::read_text(p)?,
            p.canonicalize()
                .unwrap_or_else(|_| p.to_path_buf())
                .display()
                .to_string(),
        ),
        None => (
            data::TINY_SHAKESPEARE.to_string(),
            EMBEDDED_SOURCE.to_string(),
        ),
    };
    let info = data_info(&source, &text);
    Ok((text, info))
}

/// Reads the text a checkpoint was trained on, as its `config.json` records it (`None`: the
/// built-in text); `hint` says what to do when it cannot be read.
pub fn load_recorded_text(
    recorded: Option<&DataInfo>,
    hint: &'static str,
) -> Result<(String, DataInfo), PrepareError> {
    match recorded {
        Some(info) if info.source != EMBEDDED_SOURCE => load_text(Some(Path::new(&info.source)))
            .map_err(|source| PrepareError::RecordedText {
                recorded: info.source.clone(),
                hint,
                source: Box::new(source),
            }),
        _ => Ok(load_text(None)?),
    }
}

/// A run ready to train, with its directory locked for this process.
#[derive(Debug)]
pub struct Prepared {
    pub run: Run,
    pub out: PathBuf,
    /// What to call the run in messages: its preset, "the run", or "fine-tune of DIR".
    pub name: String,
    pub resumed: bool,
    /// Settings changed to follow others (`config::derive_settings`), one line each.
    pub notes: Vec<String>,
    /// Held until the run is dropped: no other process trains `out` meanwhile.
    pub lock: RunLock,
}

/// What a new run is made of.
#[derive(Debug, Clone, Copy)]
pub struct NewRun<'a> {
    pub preset: &'a str,
    pub settings: &'a [Setting],
    pub out: &'a Path,
    /// The training text; `None`: the built-in Tiny Shakespeare.
    pub data: Option<&'a Path>,
}

/// A new run from a preset and settings: every check before the output directory is touched
/// (settings, an existing checkpoint, the text, memory), then the directory locked.
pub fn prepare_new(request: &NewRun<'_>, wording: &Wording) -> Result<Prepared, PrepareError> {
    let configs = new_configs(request.preset, request.settings)?;
    let out = request.out;
    refuse_if_locked(out)?;
    refuse_to_overwrite(out, wording)?;
    let (text, info) = load_text(request.data)?;
    let (run, notes) = new_run(configs, &text, info, wording)?;
    let lock = claim(out, wording)?;
    begin_records(out, &run.metrics, &run.step_rows)?;
    Ok(Prepared {
        name: request.preset.to_string(),
        run,
        out: out.to_path_buf(),
        resumed: false,
        notes,
        lock,
    })
}

/// A new run's settings, not yet checked against its text: the preset's with `settings`
/// applied, and what followed from them.
#[derive(Debug, Clone)]
pub struct NewConfigs {
    pub preset: String,
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// Settings changed to follow others (`config::derive_settings`), one line each.
    pub notes: Vec<String>,
    /// [`Run::budget_guess`].
    pub budget_guess: Option<usize>,
}

/// The preset's settings with `settings` applied.
pub fn new_configs(preset: &str, settings: &[Setting]) -> Result<NewConfigs, PrepareError> {
    let base = config::preset(preset)?;
    let (mut model, mut train) = (base.model, base.train.clone());
    apply_settings(settings, &mut model, &mut train)?;
    let given = given_keys(settings);
    let notes = config::derive_settings(&base.train, &mut train, &given);
    // A preset with a budget has its steps sized for it on the machine it was swept on: the
    // same pace for another budget. Steps given are the learner's, not a recipe's.
    let budget_guess =
        (base.train.time_budget > 0.0 && train.time_budget > 0.0 && !given.contains(&"steps"))
            .then(|| {
                let scaled = base.train.steps as f64 * train.time_budget / base.train.time_budget;
                (scaled.round() as usize).max(1)
            });
    Ok(NewConfigs {
        preset: preset.to_string(),
        model,
        train,
        notes,
        budget_guess,
    })
}

/// A new run of `configs` on `text`, in memory: the settings checked in their ranges and for
/// the memory they need, then the model made. [`prepare_new`] without the directory, for a
/// run kept elsewhere (a browser tab's).
pub fn new_run(
    configs: NewConfigs,
    text: &str,
    info: DataInfo,
    wording: &Wording,
) -> Result<(Run, Vec<String>), PrepareError> {
    let NewConfigs {
        preset,
        model,
        train,
        notes,
        budget_guess,
    } = configs;
    let invalid = |e: ConfigError| invalid_setting(e, wording);
    // Settings in their ranges before their memory is estimated (from numbers nobody meant).
    let mut sized = model.clone();
    sized.vocab_size = Tokenizer::from_text(text).map_or(1, |t| t.vocab_size());
    sized.validate().map_err(invalid)?;
    train.validate().map_err(invalid)?;
    check_memory(&sized, &train)?;
    let mut run = Run::new(model, train, text, info).map_err(|e| match e {
        RunError::Config(e) => invalid(e),
        e => e.into(),
    })?;
    run.preset = Some(preset);
    run.budget_guess = budget_guess;
    Ok((run, notes))
}

/// What a fine-tune is made of.
#[derive(Debug, Clone, Copy)]
pub struct FineTune<'a> {
    /// The checkpoint directory it starts from.
    pub init_from: &'a Path,
    /// The training settings start from this preset's, or (`None`) from the checkpoint's.
    pub preset: Option<&'a str>,
    /// Training settings, and `dropout`.
    pub settings: &'a [Setting],
    pub out: &'a Path,
    /// The text to fine-tune on; `None`: the built-in Tiny Shakespeare.
    pub data: Option<&'a Path>,
    /// What to do with characters of the text that the model's vocabulary lacks.
    pub unknown: UnknownChars,
}

/// A fine-tune of the checkpoint in `request.init_from` (see [`Run::fine_tune`]): the model's
/// shape, parameters and vocabulary, a fresh optimizer, the training settings of the checkpoint
/// (or of a preset) with the settings applied; every check before the output directory is
/// touched, then the directory locked. What `unknown` did is among the notes.
pub fn prepare_fine_tune(
    request: &FineTune<'_>,
    wording: &Wording,
) -> Result<Prepared, PrepareError> {
    let init = request.init_from;
    let ckpt = checkpoint::load(init)?;
    let configs = fine_tune_configs(&ckpt, request.preset, request.settings, wording)?;
    let out = request.out;
    let same = match (init.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(PrepareError::Refused(format!(
            "{} is the directory the model comes from; fine-tuning would overwrite the model it starts from: {}",
            init.display(),
            wording.another_out
        )));
    }
    refuse_if_locked(out)?;
    refuse_to_overwrite(out, wording)?;
    let (text, info) = load_text(request.data)?;
    let lock = claim(out, wording)?;
    let (run, notes) = fine_tune_run(ckpt, configs, &text, info, request.unknown, &absolute(init))?;
    begin_records(out, &run.metrics, &run.step_rows)?;
    Ok(Prepared {
        run,
        out: out.to_path_buf(),
        name: format!("fine-tune of {}", init.display()),
        resumed: false,
        notes,
        lock,
    })
}

/// A fine-tune's settings: the training settings of the checkpoint (or of `preset`) with
/// `settings` applied; the model keeps its shape (only `dropout` may change).
pub fn fine_tune_configs(
    ckpt: &Checkpoint,
    preset: Option<&str>,
    settings: &[Setting],
    wording: &Wording,
) -> Result<(ModelConfig, TrainConfig, Vec<String>), PrepareError> {
    let base = match preset {
        Some(name) => config::preset(name)?.train,
        None => ckpt.config.train.clone(),
    };
    let mut train_cfg = base.clone();
    let mut model_cfg = ckpt.model.config.clone();
    apply_settings(settings, &mut model_cfg, &mut train_cfg)?;
    check_model_unchanged(
        &ckpt.model.config,
        &model_cfg,
        &["dropout"],
        "fine-tuning",
        wording,
    )?;
    let notes = config::derive_settings(&base, &mut train_cfg, &given_keys(settings));
    train_cfg
        .validate()
        .map_err(|e| invalid_setting(e, wording))?;
    check_memory(&model_cfg, &train_cfg)?;
    Ok((model_cfg, train_cfg, notes))
}

/// The fine-tune of `ckpt` (see [`Run::fine_tune`]) with `configs` (from
/// [`fine_tune_configs`]) on `text`, in memory; `init` names where the checkpoint came from in
/// the records. What `unknown` did is among the notes.
pub fn fine_tune_run(
    ckpt: Checkpoint,
    configs: (ModelConfig, TrainConfig, Vec<String>),
    text: &str,
    info: DataInfo,
    unknown: UnknownChars,
    init: &str,
) -> Result<(Run, Vec<String>), PrepareError> {
    let (model_cfg, train_cfg, mut notes) = configs;
    let model = Model::from_params(model_cfg, ckpt.model.params).ok_or_else(|| {
        PrepareError::Refused("the checkpoint's parameters do not fit its config".into())
    })?;
    let base_preset = ckpt.config.preset.clone();
    let parent_step = ckpt.config.step;
    let checkpoint = Checkpoint {
        model,
        tokenizer: ckpt.tokenizer,
        config: ckpt.config,
    };
    let (mut run, change) = Run::fine_tune(checkpoint, train_cfg, text, info, unknown)?;
    notes.extend(change.describe(&run.data.source));
    run.preset = base_preset;
    run.init_from = Some(InitFrom {
        dir: init.to_string(),
        step: parent_step,
        added_chars: change.added.iter().map(|(c, _)| c.to_string()).collect(),
        dropped_chars: change.dropped.iter().map(|(_, n)| n).sum(),
        dropped_kinds: change.dropped.iter().map(|(c, _)| c.to_string()).collect(),
    });
    Ok((run, notes))
}

/// `dir` as an absolute path where it can be resolved, for the records in `config.json`.
fn absolute(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// What a resumed run is made of.
#[derive(Debug, Clone, Copy)]
pub struct ResumeRun<'a> {
    pub out: &'a Path,
    /// Training settings only (`steps=N` extends a finished run).
    pub settings: &'a [Setting],
    /// The text to continue on; `None`: the one `config.json` records.
    pub data: Option<&'a Path>,
}

/// Continues the run saved in `request.out` (see [`Run::resume`]); `warn` receives a line when the
/// text is not the one the run started on.
pub fn prepare_resume(
    request: &ResumeRun<'_>,
    wording: &Wording,
    warn: &mut dyn FnMut(&str),
) -> Result<Prepared, PrepareError> {
    let out = request.out;
    refuse_if_locked(out)?;
    if !checkpoint::exists(out) {
        return Err(PrepareError::Refused(format!(
            "nothing to resume: {} holds no checkpoint; {}",
            out.display(),
            wording.nothing_to_resume
        )));
    }
    let saved = checkpoint::load_config(out)?;
    let train_cfg = resume_configs(&saved, request.settings, wording)?;
    let (text, info) = match request.data {
        Some(path) => load_text(Some(path))?,
        None => load_recorded_text(saved.data.as_ref(), wording.give_text)?,
    };
    warn_other_text(&saved, &info, warn);
    let lock = claim(out, wording)?;
    let run = Run::resume(out, train_cfg, &text, info)?;
    begin_records(out, &run.metrics, &run.step_rows)?;
    let name = saved
        .preset
        .clone()
        .unwrap_or_else(|| "the run".to_string());
    Ok(Prepared {
        run,
        out: out.to_path_buf(),
        name,
        resumed: true,
        notes: Vec::new(),
        lock,
    })
}

/// A resumed run's training settings: the saved ones with `settings` applied (training
/// settings only: the model keeps its shape), checked.
pub fn resume_configs(
    saved: &CheckpointConfig,
    settings: &[Setting],
    wording: &Wording,
) -> Result<TrainConfig, PrepareError> {
    let (mut model_cfg, mut train_cfg) = (saved.model.clone(), saved.train.clone());
    apply_settings(settings, &mut model_cfg, &mut train_cfg)?;
    check_model_unchanged(&saved.model, &model_cfg, &[], "resuming", wording)?;
    train_cfg
        .validate()
        .map_err(|e| invalid_setting(e, wording))?;
    check_memory(&model_cfg, &train_cfg)?;
    Ok(train_cfg)
}

/// Warns when a run resumes on another text than the one it started on.
pub fn warn_other_text(saved: &CheckpointConfig, info: &DataInfo, warn: &mut dyn FnMut(&str)) {
    if let Some(recorded) = &saved.data {
        if recorded.fingerprint != info.fingerprint {
            warn(&format!(
                "warning: {} is not the text this run started on ({}); the continuation will not match an uninterrupted run",
                info.source, recorded.source
            ));
        }
    }
}

/// Continues a run saved in memory ([`SavedFiles`]: a browser tab's) on `text`, exactly as
/// [`prepare_resume`] continues a directory; `shown` names the run in errors.
pub fn resume_in_memory(
    shown: &str,
    files: &SavedFiles,
    settings: &[Setting],
    text: &str,
    info: DataInfo,
    wording: &Wording,
    warn: &mut dyn FnMut(&str),
) -> Result<Run, PrepareError> {
    let saved = checkpoint::parse_config(&files.config, checkpoint::CONFIG_FILE)?;
    let train_cfg = resume_configs(&saved, settings, wording)?;
    warn_other_text(&saved, &info, warn);
    let ckpt = checkpoint::from_bytes(&files.config, &files.model)?;
    let state = checkpoint::optimizer_from_bytes(&files.optimizer, &ckpt.model.layout)?;
    let model_step = checkpoint::model_bytes_step(&files.model)?.unwrap_or(ckpt.config.step);
    let saved_files = Saved {
        checkpoint: ckpt,
        state,
        model_step,
        metrics: parse_metrics(&files.metrics),
        steps: parse_steps(&files.steps),
    };
    Ok(Run::resume_from(saved_files, train_cfg, text, info, shown)?)
}

/// Creates and locks `dir` for training, then checks that it takes files.
pub fn claim(dir: &Path, wording: &Wording) -> Result<RunLock, PrepareError> {
    std::fs::create_dir_all(dir).map_err(|e| not_writable(dir, &e, wording))?;
    let lock = RunLock::acquire(dir).map_err(|e| match e {
        LockError::Held { pid } => PrepareError::Locked {
            dir: dir.display().to_string(),
            pid,
        },
        LockError::Io(e) => not_writable(dir, &e, wording),
    })?;
    check_writable(dir, wording)?;
    Ok(lock)
}

/// Refuses a directory that another process is training, before anything else is checked.
pub fn refuse_if_locked(dir: &Path) -> Result<(), PrepareError> {
    match RunLock::holder(dir) {
        Some(pid) => Err(PrepareError::Locked {
            dir: dir.display().to_string(),
            pid,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presets_budget_carries_the_steps_it_buys_at_the_recipes_pace() {
        let guess = |preset: &str, settings: &[(&str, &str)]| {
            let settings: Vec<Setting> =
                settings.iter().map(|(k, v)| Setting::field(k, v)).collect();
            new_configs(preset, &settings).unwrap().budget_guess
        };
        assert_eq!(guess("fast", &[]), Some(4200));
        assert_eq!(guess("fast", &[("time_budget", "10m")]), Some(2100));
        assert_eq!(
            guess(config::DEFAULT_PRESET, &[("time_budget", "20m")]),
            Some(4000)
        );
        // The learner's steps, or a preset sized in steps only, are no recipe's pace.
        assert_eq!(
            guess("fast", &[("steps", "500"), ("time_budget", "20m")]),
            None
        );
        assert_eq!(guess("fast", &[("steps", "500")]), None);
        assert_eq!(guess("nanogpt-cpu", &[("time_budget", "90s")]), None);
    }

    #[test]
    fn memory_is_checked_against_what_is_free_with_a_margin() {
        let preset = config::preset("nanogpt-cpu").unwrap();
        let mut model = preset.model.clone();
        model.vocab_size = 65;
        let needed = memory_needed(&model, &preset.train);
        let check = |free: f64| check_memory_against(&model, &preset.train, Some(free as u64));
        assert!(check(needed / MEMORY_MARGIN * 1.01).is_ok());
        let e = check(needed / MEMORY_MARGIN * 0.99)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("these settings need about "), "{e}");
        assert!(e.contains("free; choose a smaller n_embd"), "{e}");
        // Where the system does not say, nothing is refused.
        assert!(check_memory_against(&model, &preset.train, None).is_ok());
        // A huge vocabulary is named as the cause.
        model.vocab_size = 1_003_039;
        let e = check_memory_against(&model, &preset.train, Some(1 << 30))
            .unwrap_err()
            .to_string();
        assert!(
            e.ends_with("or a text with fewer than its 1,003,039 distinct characters"),
            "{e}"
        );
    }
}
