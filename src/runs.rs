//! Runs on disk, as both front ends (`chargpt train` and `chargpt serve`) see them: preparing a
//! new run or a resumed one from a preset and settings, the lock that lets one process at a time
//! train a run directory, the list of the runs in a directory, and the sample written at each
//! evaluation.
//!
//! Every check a front end used to make before training lives here, in the order they run, so
//! that a command line and a web page refuse the same mistakes with the same words; only the
//! "what to do" clause that names a flag or a button comes from the front end ([`Wording`]).
//!
//! A run trained across ranks (`mpirun`) is prepared on rank 0 alone and sent to the others
//! ([`share_run`]), which need neither its directory nor its text.

use crate::checkpoint::{self, CheckpointError, DataInfo, EMBEDDED_SOURCE};
use crate::config::{self, Architecture, ConfigError, ModelConfig, TrainConfig};
use crate::data::{self, DataError, Dataset};
use crate::distributed::{DistributedError, Group};
use crate::model::{Model, ParamLayout};
use crate::rng::Rng;
use crate::sampling::{self, SampleSettings};
use crate::tokenizer::Tokenizer;
use crate::training::{self, Run, RunError};
use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The record of samples in a run directory: the sample of every evaluation, and a longer one
/// at the end.
pub const SAMPLES_FILE: &str = "samples.txt";
/// The lock file of a run directory: held (an OS file lock) while a process trains the run, with
/// that process's id in it.
pub const LOCK_FILE: &str = "train.lock";
/// Characters in the sample drawn at each evaluation.
pub const EVAL_SAMPLE: usize = 200;

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
                training::METRICS_FILE,
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
            Err(PrepareError::Refused(format!(
                "these settings need about {} of memory and this machine has {} free; choose a smaller n_embd, n_layer, block_size or batch_size{}",
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
    let info = training::data_info(&source, &text);
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
    let name = request.preset.to_string();
    let preset = config::preset(&name)?;
    let (mut model_cfg, mut train_cfg) = (preset.model, preset.train.clone());
    apply_settings(request.settings, &mut model_cfg, &mut train_cfg)?;
    let notes =
        config::derive_settings(&preset.train, &mut train_cfg, &given_keys(request.settings));
    let out = request.out;
    refuse_if_locked(out)?;
    refuse_to_overwrite(out, wording)?;
    let (text, info) = load_text(request.data)?;
    let invalid = |e: ConfigError| invalid_setting(e, wording);
    // Settings in their ranges before their memory is estimated (from numbers nobody meant).
    let mut sized = model_cfg.clone();
    sized.vocab_size = Tokenizer::from_text(&text).map_or(1, |t| t.vocab_size());
    sized.validate().map_err(invalid)?;
    train_cfg.validate().map_err(invalid)?;
    check_memory(&sized, &train_cfg)?;
    // Validate settings and data before touching the output directory.
    let mut run = Run::new(model_cfg, train_cfg, &text, info).map_err(|e| match e {
        RunError::Config(e) => invalid(e),
        e => e.into(),
    })?;
    run.preset = Some(name.clone());
    let lock = claim(out, wording)?;
    Ok(Prepared {
        run,
        out: out.to_path_buf(),
        name,
        resumed: false,
        notes,
        lock,
    })
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
    let (mut model_cfg, mut train_cfg) = (saved.model.clone(), saved.train.clone());
    apply_settings(request.settings, &mut model_cfg, &mut train_cfg)?;
    check_model_unchanged(&saved.model, &model_cfg, &[], "resuming", wording)?;
    train_cfg
        .validate()
        .map_err(|e| invalid_setting(e, wording))?;
    check_memory(&model_cfg, &train_cfg)?;
    let (text, info) = match request.data {
        Some(path) => load_text(Some(path))?,
        None => load_recorded_text(saved.data.as_ref(), wording.give_text)?,
    };
    if let Some(recorded) = &saved.data {
        if recorded.fingerprint != info.fingerprint {
            warn(&format!(
                "warning: {} is not the text this run started on ({}); the continuation will not match an uninterrupted run",
                info.source, recorded.source
            ));
        }
    }
    let lock = claim(out, wording)?;
    let run = Run::resume(out, train_cfg, &text, info)?;
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

/// What rank 0 sends the other ranks of a run besides its tensors.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharedRun {
    model: ModelConfig,
    train: TrainConfig,
    vocabulary: Vec<char>,
    data: checkpoint::DataInfo,
    step: usize,
    optimizer_step: u64,
    data_rng_state: u64,
    best: Option<(f32, usize)>,
    elapsed_before_s: f64,
    train_tokens: usize,
    val_tokens: usize,
}

/// Rank 0's run on every rank of `group` (a collective; with one rank it returns `None` at once).
///
/// Rank 0 passes the run it prepared, or `None` when preparing it failed (the others then get
/// `None` too, and rank 0 reports the error); the others pass `None` and get a copy: model,
/// parameters, AdamW moments and step, the batch generator's state, the step, the vocabulary and
/// the tokenized text. So they need neither the run directory nor the text, and other machines
/// need not share a disk with rank 0. Rank 0 keeps its own run and gets `None` back.
pub fn share_run(group: Group, run: Option<&mut Run>) -> Result<Option<Run>, PrepareError> {
    if group.size() == 1 {
        return Ok(None);
    }
    let garbled = |what: String| {
        PrepareError::Distributed(DistributedError::Garbled {
            rank: group.rank(),
            what,
        })
    };
    let mut header = Vec::new();
    if let Some(run) = &run {
        let t = &run.trainer;
        let shared = SharedRun {
            model: t.model.config.clone(),
            train: t.config.clone(),
            vocabulary: run.tokenizer.chars().to_vec(),
            data: run.data.clone(),
            step: t.step,
            optimizer_step: t.optimizer.step,
            data_rng_state: t.data_rng.state(),
            best: run.best,
            elapsed_before_s: run.elapsed_before_s,
            train_tokens: run.dataset.train.len(),
            val_tokens: run.dataset.val.len(),
        };
        header = serde_json::to_vec(&shared).map_err(|e| garbled(e.to_string()))?;
    }
    // An empty header: rank 0 has no run to share.
    group.broadcast_bytes(&mut header);
    if header.is_empty() {
        return Ok(None);
    }
    if let Some(run) = run {
        let t = &mut run.trainer;
        group.broadcast_f32(&mut t.model.params);
        group.broadcast_f32(&mut t.optimizer.m);
        group.broadcast_f32(&mut t.optimizer.v);
        group.broadcast_u32(&mut run.dataset.train);
        group.broadcast_u32(&mut run.dataset.val);
        return Ok(None);
    }
    let shared: SharedRun = serde_json::from_slice(&header).map_err(|e| garbled(e.to_string()))?;
    let n = ParamLayout::new(&shared.model).len;
    let mut params = vec![0.0; n];
    let mut optimizer = crate::optimizer::AdamW::new(n);
    let mut dataset = Dataset {
        train: vec![0; shared.train_tokens],
        val: vec![0; shared.val_tokens],
    };
    group.broadcast_f32(&mut params);
    group.broadcast_f32(&mut optimizer.m);
    group.broadcast_f32(&mut optimizer.v);
    group.broadcast_u32(&mut dataset.train);
    group.broadcast_u32(&mut dataset.val);
    optimizer.step = shared.optimizer_step;
    let tokenizer = Tokenizer::from_chars(shared.vocabulary).map_err(|e| garbled(e.to_string()))?;
    let model = Model::from_params(shared.model, params)
        .ok_or_else(|| garbled("parameters that do not fit the model".into()))?;
    let mut trainer = crate::training::Trainer::new(model, shared.train);
    trainer.optimizer = optimizer;
    trainer.data_rng = Rng::from_state(shared.data_rng_state);
    trainer.step = shared.step;
    Ok(Some(Run {
        trainer,
        tokenizer,
        dataset,
        data: shared.data,
        preset: None,
        init_from: None,
        best: shared.best,
        elapsed_before_s: shared.elapsed_before_s,
        metrics: Vec::new(),
        step_rows: Vec::new(),
        saved_step: None,
    }))
}

/// Rank 0's text (as [`load_text`] gave it) on every rank of `group` (a collective): `None` on
/// every rank when rank 0 has none to give. With one rank, `text` comes back as it is.
pub fn share_text(
    group: Group,
    text: Option<(String, checkpoint::DataInfo)>,
) -> Result<Option<(String, checkpoint::DataInfo)>, PrepareError> {
    if group.size() == 1 {
        return Ok(text);
    }
    let mut bytes = match &text {
        Some(pair) if group.is_root() => serde_json::to_vec(pair).map_err(|e| {
            PrepareError::Distributed(DistributedError::Garbled {
                rank: 0,
                what: e.to_string(),
            })
        })?,
        _ => Vec::new(),
    };
    group.broadcast_bytes(&mut bytes);
    if bytes.is_empty() {
        return Ok(None);
    }
    if group.is_root() {
        return Ok(text);
    }
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        PrepareError::Distributed(DistributedError::Garbled {
            rank: group.rank(),
            what: e.to_string(),
        })
    })
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

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; its id as the lock file records it.
    Held {
        pid: String,
    },
    Io(std::io::Error),
}

/// The lock on a run directory: an exclusive OS file lock on [`LOCK_FILE`], held from before the
/// first check of the directory to the end of training. The operating system drops it when the
/// process ends in any way (`kill -9` included), so it never outlives its holder; the file stays,
/// with the last holder's id in it.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    pub fn acquire(dir: &Path) -> Result<RunLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    pid: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        };
        write(&mut file).map_err(LockError::Io)?;
        Ok(RunLock { file })
    }

    /// The id of the process that holds `dir`'s lock, if one does.
    pub fn holder(dir: &Path) -> Option<String> {
        let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
        // A shared lock conflicts only with a trainer's exclusive one, so two processes that
        // look at the same time do not see each other as trainers.
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }

    /// Releases the lock (dropping it does the same).
    pub fn release(self) {
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let pid = text.trim();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        "(unknown)".into()
    } else {
        pid.to_string()
    }
}

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
    if !(has(checkpoint::CONFIG_FILE) || has(training::METRICS_FILE) || has(LOCK_FILE)) {
        return None;
    }
    let pid = RunLock::holder(dir);
    let (config, problem) = match checkpoint::load_config(dir) {
        Ok(c) => (Some(c), None),
        Err(CheckpointError::Missing { .. }) => (None, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let last_step = last_step_row(&dir.join(training::STEPS_FILE)).map(|r| r.step);
    let metrics = training::read_metrics(&dir.join(training::METRICS_FILE));
    let saved_step = config.as_ref().map(|c| c.step);
    let step = last_step.max(saved_step).unwrap_or(0);
    let steps = config.as_ref().map(|c| c.train.steps);
    let state = if pid.is_some() {
        RunState::Training
    } else if saved_step.is_some() && saved_step >= steps {
        RunState::Finished
    } else {
        RunState::Stopped
    };
    Some(RunSummary {
        name: name.to_string(),
        preset: config.as_ref().and_then(|c| c.preset.clone()),
        step: if pid.is_some() {
            step
        } else {
            saved_step.unwrap_or(step)
        },
        steps,
        saved_step,
        params: config.as_ref().map(|c| ParamLayout::new(&c.model).len),
        best_val_loss: config.as_ref().and_then(|c| c.best_val_loss),
        best_val_step: config.as_ref().and_then(|c| c.best_val_step),
        final_val_loss: config.as_ref().and_then(|c| c.final_val_loss),
        last_val_loss: metrics.last().map(|m| m.val_loss),
        vocab_size: config.as_ref().map(|c| c.model.vocab_size),
        text: config
            .as_ref()
            .and_then(|c| c.data.as_ref())
            .map(TextSummary::of),
        state,
        pid,
        problem,
    })
}

/// The last complete row of a `steps.csv`, read from the end of the file.
fn last_step_row(path: &Path) -> Option<training::StepRow> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let tail = len.min(4096);
    file.seek(SeekFrom::Start(len - tail)).ok()?;
    let mut bytes = Vec::with_capacity(tail as usize);
    file.read_to_end(&mut bytes).ok()?;
    let text = String::from_utf8_lossy(&bytes);
    // The last line may be half written; the complete ones end with a newline.
    let complete = &text[..text.rfind('\n')?];
    complete.lines().rev().find_map(training::StepRow::parse)
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
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
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

    #[test]
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

    #[test]
    fn a_held_lock_names_its_process_and_dies_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunLock::holder(dir.path()), None);
        let lock = RunLock::acquire(dir.path()).unwrap();
        let me = std::process::id().to_string();
        assert_eq!(RunLock::holder(dir.path()), Some(me.clone()));
        // A second lock on the same file fails, even in the same process (flock locks belong to
        // an open file, not to a process).
        match RunLock::acquire(dir.path()) {
            Err(LockError::Held { pid }) => assert_eq!(pid, me),
            other => panic!("{other:?}"),
        }
        drop(lock);
        assert_eq!(RunLock::holder(dir.path()), None);
        RunLock::acquire(dir.path()).unwrap().release();
    }
}
