//! `chargpt train`: a new run, a resumed one, or a fine-tune, with live progress, an eval line and
//! a short sample at each evaluation, and the run's files in the output directory.

use super::plot::loss_plot;
use super::presets::thousands;
use super::{load_recorded_text, load_text, UsageError};
use anyhow::{anyhow, bail, Context, Result};
use chargpt::checkpoint::{self, Checkpoint, DataInfo, InitFrom, EMBEDDED_SOURCE};
use chargpt::config::{self, ConfigError, ModelConfig, TrainConfig, DEFAULT_PRESET};
use chargpt::data;
use chargpt::model::Model;
use chargpt::rng::Rng;
use chargpt::sampling::{self, SampleSettings};
use chargpt::tokenizer::Tokenizer;
use chargpt::training::{
    run_training, MetricsRow, Run, RunError, RunEvent, RunOptions, RunOutcome, StepRow,
    UnknownChars, VocabChange,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const SAMPLES_FILE: &str = "samples.txt";
pub const PLOT_FILE: &str = "loss.png";
/// Characters in the sample printed at each evaluation, and at the end.
const EVAL_SAMPLE: usize = 200;
const FINAL_SAMPLE: usize = 500;

#[derive(Args)]
#[command(after_help = "\
Settings are applied in this order, later ones winning: the preset, the --config file, each \
--set, then --seed. `chargpt presets` lists the presets; every field of their model and training \
configs is a KEY for --set (a wrong key lists them all).

--resume continues the run in --out exactly: model, optimizer, data order, step, best val loss and \
metrics.csv. Its settings come from the checkpoint; --set and --config may change training \
settings only (for example --set steps=N to extend a finished run).

--init-from DIR fine-tunes the model in DIR on --data: its shape and vocabulary come from the \
checkpoint, the optimizer starts fresh, and the training settings are those of the checkpoint, or \
of --preset if given, then --config, --set and --seed. Of the model settings only dropout may \
change.")]
pub struct TrainArgs {
    /// Preset to start from (`chargpt presets` lists them) [default: default].
    #[arg(long, value_name = "NAME")]
    preset: Option<String>,
    /// A TOML file of settings: `key = value` lines with the names --set takes, and optionally
    /// `preset = "name"`.
    #[arg(long, value_name = "FILE.toml")]
    config: Option<PathBuf>,
    /// Training text, UTF-8 [default: the built-in Tiny Shakespeare; with --resume, the run's
    /// own text].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    /// Output directory [default: runs/<preset>, or runs/finetune with --init-from].
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Override a setting, e.g. --set n_layer=4 --set learning_rate=3e-4 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Continue the run saved in --out exactly where it stopped.
    #[arg(long, conflicts_with = "init_from")]
    resume: bool,
    /// Fine-tune the model saved in DIR on --data (fresh optimizer, output in --out).
    #[arg(long, value_name = "DIR")]
    init_from: Option<PathBuf>,
    /// Seed for initialisation, batch order and dropout.
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// Which implementation of the model trains it (the checkpoint is the same either way).
    #[arg(long, value_enum, default_value_t)]
    engine: super::EngineArg,
    /// With --init-from: what to do with characters of --data that the model's vocabulary
    /// lacks: refuse the text (error), remove them from it (drop), or add them to the
    /// vocabulary (extend: new rows in the token embedding and lm_head) [default: error].
    #[arg(long, value_enum, value_name = "WHAT", requires = "init_from")]
    unknown_chars: Option<UnknownCharsArg>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum UnknownCharsArg {
    Error,
    Drop,
    Extend,
}

impl From<UnknownCharsArg> for UnknownChars {
    fn from(arg: UnknownCharsArg) -> Self {
        match arg {
            UnknownCharsArg::Error => UnknownChars::Error,
            UnknownCharsArg::Drop => UnknownChars::Drop,
            UnknownCharsArg::Extend => UnknownChars::Extend,
        }
    }
}

/// Settings from the command line and a config file, not yet applied.
struct Settings {
    /// (origin, key, value): origin says where a bad setting came from.
    list: Vec<(String, String, String)>,
    preset: Option<String>,
}

impl Settings {
    /// The keys given explicitly (in the config file, with --set or --seed).
    fn given(&self) -> Vec<&str> {
        self.list.iter().map(|(_, k, _)| k.as_str()).collect()
    }
}

fn gather_settings(args: &TrainArgs) -> Result<Settings> {
    let mut list = Vec::new();
    let mut file_preset = None;
    if let Some(path) = &args.config {
        let shown = path.display().to_string();
        let text = data::read_text(path)?;
        let (preset, settings) = config::parse_config_file(&shown, &text)?;
        file_preset = preset;
        list.extend(settings.into_iter().map(|(k, v)| (shown.clone(), k, v)));
    }
    for o in &args.overrides {
        let (k, v) = config::parse_override(o).map_err(|e| {
            UsageError(format!(
                "{e}; write --set KEY=VALUE, for example --set n_layer=4"
            ))
        })?;
        list.push(("--set".to_string(), k.to_string(), v.to_string()));
    }
    if let Some(seed) = args.seed {
        list.push(("--seed".to_string(), "seed".to_string(), seed.to_string()));
    }
    Ok(Settings {
        list,
        preset: args.preset.clone().or(file_preset),
    })
}

fn apply(settings: &Settings, model: &mut ModelConfig, train: &mut TrainConfig) -> Result<()> {
    for (origin, key, value) in &settings.list {
        config::apply_to_configs(model, train, key, value).map_err(|e| {
            if origin == "--set" || origin == "--seed" {
                anyhow!("{origin} {key}={value}: {e}")
            } else {
                anyhow!("{origin}: {e}")
            }
        })?;
    }
    Ok(())
}

/// A resumed or fine-tuned model keeps its shape: the settings may change `allowed` model fields
/// only (or set others to the value they already have).
fn check_model_unchanged(
    saved: &ModelConfig,
    wanted: &ModelConfig,
    allowed: &[&str],
    what: &str,
) -> Result<()> {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(saved), serde_json::to_value(wanted))
    else {
        bail!("cannot compare model settings");
    };
    let changed: Vec<String> = a
        .iter()
        .filter(|(k, v)| !allowed.contains(&k.as_str()) && b.get(*k) != Some(*v))
        .map(|(k, v)| format!("{k} (the checkpoint has {v})"))
        .collect();
    if !changed.is_empty() {
        bail!(
            "cannot change {} when {what}: the model keeps the checkpoint's shape; drop the setting, or train a new model without --resume/--init-from",
            changed.join(", ")
        );
    }
    Ok(())
}

/// Makes sure `dir` exists and takes files, before any time is spent training; clears temporary
/// files an interrupted save of an earlier run left behind.
pub(super) fn check_writable(dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| {
        anyhow!(
            "cannot write to the output directory {}: {e}; choose another --out",
            dir.display()
        )
    };
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
                chargpt::training::METRICS_FILE,
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
    let params = if model.architecture == chargpt::config::Architecture::Bigram {
        v * v
    } else {
        // Embeddings, per block qkv + projection + two feed-forward layers, lm_head.
        (v + t) * c + l * (4.0 * c * c + 2.0 * f * c) + v * c
    };
    let tokens = train.batch_size as f64 * t;
    let per_token = l * (10.0 * c + 2.0 * f + 1.25 * h * t) + 10.0 * c + 3.0 * v;
    4.0 * (4.0 * params + 2.0 * tokens * per_token)
}

/// The machine's memory in bytes, where the system says (Linux).
fn memory_total() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// Refuses settings whose buffers could not be allocated, rather than letting the allocator abort.
/// Refuses settings whose buffers cannot fit in this machine's memory, before allocating them.
pub(super) fn check_memory(model: &ModelConfig, train: &TrainConfig) -> Result<()> {
    let needed = memory_needed(model, train);
    if let Some(total) = memory_total() {
        if needed > total {
            let gib = |b: f64| b / (1u64 << 30) as f64;
            bail!(
                "these settings need about {:.0} GiB of memory and this machine has {:.0} GiB; choose a smaller n_embd, n_layer, block_size or batch_size",
                gib(needed).ceil(),
                gib(total)
            );
        }
    }
    Ok(())
}

fn refuse_to_overwrite(out: &Path) -> Result<()> {
    if checkpoint::exists(out) {
        let step = checkpoint::load_config(out)
            .map(|c| format!(" (step {})", c.step))
            .unwrap_or_default();
        bail!(
            "{} already holds a checkpoint{step}; continue it with --resume, or choose another --out, or delete it first",
            out.display()
        );
    }
    Ok(())
}

/// What the command was asked to do, with its run ready.
struct Prepared {
    run: Run,
    out: PathBuf,
    name: String,
    resumed: bool,
    /// Settings changed to follow others (`config::derive_settings`), one line each.
    notes: Vec<String>,
}

fn prepare(args: &TrainArgs) -> Result<Prepared> {
    let settings = gather_settings(args)?;
    if args.resume {
        let name = settings.preset.as_deref().unwrap_or(DEFAULT_PRESET);
        config::preset(name)?;
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs").join(name));
        if !checkpoint::exists(&out) {
            bail!(
                "nothing to resume: {} holds no checkpoint; start the run without --resume, or point --out at a run",
                out.display()
            );
        }
        let saved = checkpoint::load_config(&out)?;
        let (mut model_cfg, mut train_cfg) = (saved.model.clone(), saved.train.clone());
        apply(&settings, &mut model_cfg, &mut train_cfg)?;
        check_model_unchanged(&saved.model, &model_cfg, &[], "resuming")?;
        check_memory(&model_cfg, &train_cfg)?;
        let (text, info) = match &args.data {
            Some(path) => load_text(Some(path))?,
            None => load_recorded_text(saved.data.as_ref())?,
        };
        if let Some(recorded) = &saved.data {
            if recorded.fingerprint != info.fingerprint {
                note!(
                    "warning: {} is not the text this run started on ({}); the continuation will not match an uninterrupted run",
                    info.source, recorded.source
                );
            }
        }
        check_writable(&out)?;
        let run = Run::resume(&out, train_cfg, &text, info)?;
        let name = saved
            .preset
            .clone()
            .unwrap_or_else(|| "the run".to_string());
        return Ok(Prepared {
            run,
            out,
            name,
            resumed: true,
            notes: Vec::new(),
        });
    }
    if let Some(init) = &args.init_from {
        let ckpt = checkpoint::load(init)?;
        let base = match &settings.preset {
            Some(name) => config::preset(name)?.train,
            None => ckpt.config.train.clone(),
        };
        let mut train_cfg = base.clone();
        let mut model_cfg = ckpt.model.config.clone();
        apply(&settings, &mut model_cfg, &mut train_cfg)?;
        check_model_unchanged(&ckpt.model.config, &model_cfg, &["dropout"], "fine-tuning")?;
        let notes = config::derive_settings(&base, &mut train_cfg, &settings.given());
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/finetune"));
        let same = match (init.canonicalize(), out.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same {
            bail!(
                "--out is the --init-from directory {}; fine-tuning would overwrite the model it starts from: choose another --out",
                init.display()
            );
        }
        refuse_to_overwrite(&out)?;
        check_memory(&model_cfg, &train_cfg)?;
        let (text, info) = load_text(args.data.as_deref())?;
        check_writable(&out)?;
        let model = Model::from_params(model_cfg, ckpt.model.params)
            .ok_or_else(|| anyhow!("the checkpoint's parameters do not fit its config"))?;
        let name = format!("fine-tune of {}", init.display());
        let base_preset = ckpt.config.preset.clone();
        let parent_step = ckpt.config.step;
        let (mut run, change) = Run::fine_tune(
            Checkpoint {
                model,
                tokenizer: ckpt.tokenizer,
                config: ckpt.config,
            },
            train_cfg,
            &text,
            info,
            args.unknown_chars.map_or(UnknownChars::Error, Into::into),
        )?;
        report_vocab_change(&change, &run.data.source);
        run.preset = base_preset;
        run.init_from = Some(InitFrom {
            dir: absolute(init),
            step: parent_step,
            added_chars: change.added.iter().map(|(c, _)| c.to_string()).collect(),
            dropped_chars: change.dropped.iter().map(|(_, n)| n).sum(),
            dropped_kinds: change.dropped.iter().map(|(c, _)| c.to_string()).collect(),
        });
        return Ok(Prepared {
            run,
            out,
            name,
            resumed: false,
            notes,
        });
    }
    let name = settings
        .preset
        .clone()
        .unwrap_or_else(|| DEFAULT_PRESET.to_string());
    let preset = config::preset(&name)?;
    let (mut model_cfg, mut train_cfg) = (preset.model, preset.train.clone());
    apply(&settings, &mut model_cfg, &mut train_cfg)?;
    let notes = config::derive_settings(&preset.train, &mut train_cfg, &settings.given());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&name));
    refuse_to_overwrite(&out)?;
    let (text, info) = load_text(args.data.as_deref())?;
    let mut sized = model_cfg.clone();
    sized.vocab_size = Tokenizer::from_text(&text).map_or(1, |t| t.vocab_size());
    check_memory(&sized, &train_cfg)?;
    // Validate settings and data before touching the output directory.
    let mut run = Run::new(model_cfg, train_cfg, &text, info).map_err(|e| match e {
        RunError::Config(ConfigError::Invalid(_)) => {
            anyhow!("{e}; change it with --set KEY=VALUE or in the --config file")
        }
        e => e.into(),
    })?;
    run.preset = Some(name.clone());
    check_writable(&out)?;
    Ok(Prepared {
        run,
        out,
        name,
        resumed: false,
        notes,
    })
}

/// `dir` as an absolute path where it can be resolved, for the records in `config.json`.
fn absolute(dir: &Path) -> String {
    dir.canonicalize()
        .unwrap_or_else(|_| dir.to_path_buf())
        .display()
        .to_string()
}

/// `'é' 12, '"' 4, ...`: characters with their counts, the most frequent first.
fn counted(chars: &[(char, usize)]) -> String {
    let mut sorted = chars.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let shown: Vec<String> = sorted
        .iter()
        .take(30)
        .map(|(c, n)| format!("{c:?} {n}"))
        .collect();
    let more = sorted.len().saturating_sub(30);
    if more > 0 {
        format!("{}, and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// One line on what `--unknown-chars` did to the vocabulary or the text.
fn report_vocab_change(change: &VocabChange, source: &str) {
    if !change.added.is_empty() {
        note!(
            "extending the vocabulary by {} character{} of {source} (each starts at its frequency in the text): {}",
            change.added.len(),
            if change.added.len() == 1 { "" } else { "s" },
            counted(&change.added)
        );
    }
    if !change.dropped.is_empty() {
        let total: usize = change.dropped.iter().map(|(_, n)| n).sum();
        note!(
            "dropped {total} character{} of {} kind{} from {source} that the model's vocabulary lacks: {}",
            if total == 1 { "" } else { "s" },
            change.dropped.len(),
            if change.dropped.len() == 1 { "" } else { "s" },
            counted(&change.dropped)
        );
    }
}

fn data_name(info: &DataInfo) -> String {
    if info.source == EMBEDDED_SOURCE {
        "Tiny Shakespeare (built in)".into()
    } else {
        info.source.clone()
    }
}

/// A sample of `n` characters from the model, seeded by the run's seed and the step so that it is
/// the same every time the run is repeated.
fn sample_text(model: &Model, tokenizer: &Tokenizer, seed: u64, step: usize, n: usize) -> String {
    let mut rng = Rng::derived(seed, 0x5A4D_9E11, step as u64, n as u64);
    let ids = sampling::generate(model, &[], n, SampleSettings::default(), &mut rng, |_| {});
    tokenizer.decode(&ids).unwrap_or_default()
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn append(path: &Path, text: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(text.as_bytes())
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 60 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{seconds:.1} s")
    }
}

fn rate(tokens_per_s: f64) -> String {
    if tokens_per_s >= 1000.0 {
        format!("{:.1}k tok/s", tokens_per_s / 1000.0)
    } else {
        format!("{tokens_per_s:.0} tok/s")
    }
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let Prepared {
        mut run,
        out,
        name,
        resumed,
        notes,
    } = prepare(&args)?;
    run.trainer.set_engine(args.engine.into());
    let train_cfg = run.trainer.config.clone();
    let model_cfg = run.trainer.model.config.clone();
    let samples_path = out.join(SAMPLES_FILE);
    let plot_path = out.join(PLOT_FILE);
    if resumed {
        say!(
            "resuming {} at step {} of {} ({} parameters); checkpoints in {}",
            name,
            run.trainer.step,
            train_cfg.steps,
            thousands(run.trainer.model.num_params()),
            out.display()
        );
    } else {
        // A new run starts a new record of samples.
        std::fs::write(&samples_path, "")
            .with_context(|| format!("cannot write {}", samples_path.display()))?;
        say!(
            "training {} ({} parameters: {} layers, {} heads, n_embd {}, block {}) for {} steps of {}x{} characters; checkpoints in {}",
            name,
            thousands(run.trainer.model.num_params()),
            model_cfg.n_layer,
            model_cfg.n_head,
            model_cfg.n_embd,
            model_cfg.block_size,
            train_cfg.steps,
            train_cfg.batch_size,
            model_cfg.block_size,
            out.display()
        );
    }
    say!("{}", split_line(&run));
    for line in &notes {
        note!("note: {line}");
    }
    for line in config::setting_warnings(&train_cfg)
        .into_iter()
        .chain(val_warning(&run))
    {
        note!("warning: {line}");
    }

    let bar = ProgressBar::new(train_cfg.steps as u64).with_position(run.trainer.step as u64);
    bar.set_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));

    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        let bar = bar.clone();
        // A second Ctrl-C quits at once; the atomic writes keep the last checkpoint intact.
        let _ = ctrlc::set_handler(move || {
            if stop.swap(true, Ordering::SeqCst) {
                note!("\nquitting without saving");
                std::process::exit(130);
            }
            bar.suspend(|| {
                note!("stopping after this step to save (Ctrl-C again to quit without saving)")
            });
        });
    }

    let mut plot_warning = false;
    let title = format!("{name}: loss");
    let mut draw_plot = |run_metrics: &[MetricsRow], steps: &[StepRow], bar: &ProgressBar| {
        if let Err(e) = loss_plot(&plot_path, &title, run_metrics, steps, train_cfg.steps) {
            if !plot_warning {
                bar.suspend(|| note!("warning: {}", super::one_line(&e)));
                plot_warning = true;
            }
        }
    };
    let options = RunOptions {
        out: Some(out.clone()),
        stop: Some(stop),
        stop_at: None,
        exact_eval: true,
    };
    let result = run_training(&mut run, &options, &mut |event| match event {
        RunEvent::Step {
            stats,
            tokens_per_s,
            eta_s,
            ..
        } => {
            bar.set_position(stats.step as u64 + 1);
            bar.set_message(format!(
                "loss {:.4}  lr {:.2e}  {}  ETA {}",
                stats.loss,
                stats.lr,
                rate(tokens_per_s),
                eta(eta_s)
            ));
        }
        RunEvent::Eval {
            row,
            saved,
            model,
            tokenizer,
            metrics,
            steps,
            ..
        } => {
            let sample = sample_text(model, tokenizer, train_cfg.seed, row.step, EVAL_SAMPLE);
            bar.suspend(|| {
                let mut line = format!(
                    "step {}: train {:.4}, val {:.4}",
                    row.step, row.train_loss, row.val_loss
                );
                if row.step > 0 {
                    line.push_str(&format!(
                        "  ({}, {}{})",
                        rate(row.tokens_per_s),
                        duration(row.elapsed_s),
                        if saved { ", saved" } else { "" }
                    ));
                }
                say!("{line}\n{}", indent(&sample));
            });
            let record = format!("step {} (val {:.4}):\n{sample}\n\n", row.step, row.val_loss);
            if let Err(e) = append(&samples_path, &record) {
                bar.suspend(|| note!("warning: cannot write {}: {e}", samples_path.display()));
            }
            draw_plot(metrics, steps, &bar);
        }
        RunEvent::ExactEval { windows } => {
            bar.finish_and_clear();
            say!("measuring the exact val loss over {windows} windows...");
        }
    });
    bar.finish_and_clear();
    // The plot also shows the steps after the last evaluation (a run stopped by Ctrl-C).
    draw_plot(&run.metrics, &run.step_rows, &bar);
    let outcome = result?;
    report(&run, &outcome, &out, &samples_path, &name)
}

/// `ETA 4m 05s`, or `ETA ?` before anything was measured.
fn eta(seconds: f64) -> String {
    if seconds > 0.0 && seconds.is_finite() {
        duration(seconds)
    } else {
        "?".into()
    }
}

/// Which part of the text each split is, so that a val loss on a small text can be read.
fn split_line(run: &Run) -> String {
    let (train, val) = (run.dataset.train.len(), run.dataset.val.len());
    format!(
        "data: {} ({} characters): train is the first 90% ({}), val the last 10% ({})",
        data_name(&run.data),
        thousands(train + val),
        thousands(train),
        thousands(val)
    )
}

/// Splits this small give a val loss from a handful of windows: noisy, and only about the end
/// of the text.
const FEW_VAL_WINDOWS: usize = 8;

fn val_warning(run: &Run) -> Option<String> {
    let t = run.trainer.model.config.block_size;
    let windows = data::window_count(run.dataset.val.len(), t);
    (windows < FEW_VAL_WINDOWS).then(|| {
        format!(
            "the val split (the last 10% of the text) holds only {windows} window{} of {t} characters: its loss is noisy and measures only the end of the text; use a longer text",
            if windows == 1 { "" } else { "s" }
        )
    })
}

fn report(
    run: &Run,
    outcome: &RunOutcome,
    out: &Path,
    samples_path: &Path,
    name: &str,
) -> Result<ExitCode> {
    let shown = out.display();
    if outcome.interrupted {
        say!(
            "stopped at step {}; saved to {shown}; continue with `chargpt train --resume --out {shown}`",
            outcome.steps_done
        );
        return Ok(ExitCode::from(130));
    }
    let best = outcome
        .best
        .map(|(loss, step)| format!("; best val estimate {loss:.4} at step {step}"))
        .unwrap_or_default();
    let exact = outcome
        .final_val
        .map(|e| format!("exact val loss {:.4} over {} tokens", e.loss, e.tokens))
        .unwrap_or_default();
    say!(
        "done: {} steps in {} ({} in training, {}); {exact}{best}",
        outcome.steps_done,
        duration(outcome.elapsed_s),
        duration(outcome.train_time_s),
        rate(outcome.tokens_per_s)
    );
    let model = &run.trainer.model;
    let seed = run.trainer.config.seed;
    let sample = sample_text(
        model,
        &run.tokenizer,
        seed,
        outcome.steps_done + 1,
        FINAL_SAMPLE,
    );
    say!("sample:\n{sample}");
    let _ = append(
        samples_path,
        &format!("final, step {} ({name}):\n{sample}\n", outcome.steps_done),
    );
    say!(
        "saved to {shown}: model.safetensors, config.json, optimizer.safetensors, metrics.csv, loss.png, samples.txt; try `chargpt sample --model {shown}`"
    );
    Ok(ExitCode::SUCCESS)
}
