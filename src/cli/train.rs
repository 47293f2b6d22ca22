//! `chargpt train`: a new run, a resumed one, or a fine-tune, with live progress, an eval line and
//! a short sample at each evaluation, and the run's files in the output directory.

use super::format::{duration, eta, rate, thousands};
use super::plot::{exact_point, loss_plot};
use super::{agree, Quiet, UsageError};
use anyhow::Result;
use chargpt::checkpoint::{DataInfo, EMBEDDED_SOURCE};
use chargpt::config::{self, ModelConfig, TrainConfig, DEFAULT_PRESET};
use chargpt::data;
use chargpt::distributed::{self, Group};
use chargpt::runs::{self, FineTune, NewRun, Prepared, ResumeRun, Setting, SettingOrigin, Wording};
use chargpt::runs::{
    run_training, MetricsRow, Run, RunError, RunEvent, RunOptions, RunOutcome, StepRow,
    UnknownChars,
};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

pub const PLOT_FILE: &str = "loss.png";

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
    /// Train for this long: 90s, 20m, 1h, 1h30m (the setting time_budget). The steps are set
    /// from the machine's pace after the first few, the schedule follows them, and the final
    /// evaluation and checkpoint fit inside. It wins over --set steps.
    #[arg(long, value_name = "DURATION")]
    time: Option<String>,
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

/// The "what to do" clauses of the library's refusals, in the command line's words.
pub(super) const WORDING: Wording = Wording {
    change_setting: "change it with --set KEY=VALUE or in the --config file",
    keep_shape: "drop the setting, or train a new model without --resume/--init-from",
    another_out: "choose another --out",
    existing: "continue it with --resume, or choose another --out, or delete it first",
    nothing_to_resume: "start the run without --resume, or point --out at a run",
    give_text: "give its path with --data",
};

/// Settings from the command line and a config file, not yet applied.
struct Settings {
    list: Vec<Setting>,
    preset: Option<String>,
}

fn gather_settings(args: &TrainArgs) -> Result<Settings> {
    let mut list = Vec::new();
    let mut file_preset = None;
    if let Some(path) = &args.config {
        let shown = path.display().to_string();
        let text = data::read_text(path)?;
        let (preset, settings) = config::parse_config_file(&shown, &text)?;
        file_preset = preset;
        list.extend(settings.into_iter().map(|(key, value)| Setting {
            origin: SettingOrigin::File(shown.clone()),
            key,
            value,
        }));
    }
    for o in &args.overrides {
        let (k, v) = config::parse_override(o).map_err(|e| {
            UsageError(format!(
                "{e}; write --set KEY=VALUE, for example --set n_layer=4"
            ))
        })?;
        list.push(Setting {
            origin: SettingOrigin::Flag("--set".into()),
            key: k.to_string(),
            value: v.to_string(),
        });
    }
    if let Some(seed) = args.seed {
        list.push(Setting {
            origin: SettingOrigin::Flag("--seed".into()),
            key: "seed".into(),
            value: seed.to_string(),
        });
    }
    // Last, so that the budget decides the length whatever steps the settings give.
    if let Some(time) = &args.time {
        list.push(Setting {
            origin: SettingOrigin::Flag("--time".into()),
            key: "time_budget".into(),
            value: time.clone(),
        });
    }
    Ok(Settings {
        list,
        preset: args.preset.clone().or(file_preset),
    })
}

/// Makes sure `dir` exists and takes files (see [`runs::check_writable`]).
pub(super) fn check_writable(dir: &Path) -> Result<()> {
    Ok(runs::check_writable(dir, &WORDING)?)
}

/// Refuses settings whose buffers cannot fit in this machine's memory, before allocating them.
pub(super) fn check_memory(model: &ModelConfig, train: &TrainConfig) -> Result<()> {
    Ok(runs::check_memory(model, train)?)
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
        let request = ResumeRun {
            out: &out,
            settings: &settings.list,
            data: args.data.as_deref(),
        };
        return Ok(runs::prepare_resume(&request, &WORDING, &mut |line| {
            note!("{line}")
        })?);
    }
    if let Some(init) = &args.init_from {
        let out = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("runs/finetune"));
        let request = FineTune {
            init_from: init,
            preset: settings.preset.as_deref(),
            settings: &settings.list,
            out: &out,
            data: args.data.as_deref(),
            unknown: args.unknown_chars.map_or(UnknownChars::Error, Into::into),
        };
        return Ok(runs::prepare_fine_tune(&request, &WORDING)?);
    }
    let name = settings
        .preset
        .clone()
        .unwrap_or_else(|| DEFAULT_PRESET.to_string());
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("runs").join(&name));
    let request = NewRun {
        preset: &name,
        settings: &settings.list,
        out: &out,
        data: args.data.as_deref(),
    };
    Ok(runs::prepare_new(&request, &WORDING)?)
}

fn data_name(info: &DataInfo) -> String {
    if info.source == EMBEDDED_SOURCE {
        "Tiny Shakespeare (built in)".into()
    } else {
        info.source.clone()
    }
}

fn indent(text: &str) -> String {
    text.lines()
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Under mpirun, a rank other than 0: trains the run rank 0 prepared and sent, silently, writing
/// nothing.
fn follow(args: &TrainArgs, group: Group) -> Result<ExitCode> {
    let Some(mut run) = runs::share_run(group, None)? else {
        // Rank 0 could not prepare the run, and says why.
        return Err(Quiet(1).into());
    };
    run.trainer.set_engine(args.engine.into());
    agree(group, run.trainer.set_group(group).map_err(Into::into))?;
    let stop = Arc::new(AtomicBool::new(false));
    distributed::stop_on_signals(stop.clone());
    // Rank 0 writes the records (probes, samples) from its own copy of the same parameters.
    let options = RunOptions {
        out: None,
        stop: Some(stop),
        stop_at: None,
        exact_eval: true,
        probe: None,
        samples: None,
        save_in_memory: false,
    };
    let result = run_training(&mut run, &options, &mut |_| {});
    if result.is_ok() {
        // Rank 0 reports every rank's time in the gradient sums.
        group.gradient_sum_seconds();
    }
    match result {
        Ok(outcome) if outcome.interrupted => Ok(ExitCode::from(130)),
        Ok(_) => Ok(ExitCode::SUCCESS),
        // Every rank sees the same loss: rank 0 reports it.
        Err(RunError::NonFinite { .. }) => Err(Quiet(1).into()),
        Err(e) => super::abort_job(group, &e.into()),
    }
}

pub fn run(args: TrainArgs, group: Group) -> Result<ExitCode> {
    if !group.is_root() {
        return follow(&args, group);
    }
    let mut prepared = prepare(&args);
    // The other ranks wait for the run, or for word that there is none.
    runs::share_run(group, prepared.as_mut().ok().map(|p| &mut p.run))?;
    let prepared = prepared?;
    let bar = ProgressBar::new(prepared.run.trainer.config.steps as u64)
        .with_position(prepared.run.trainer.step as u64);
    let stop = {
        let bar = bar.clone();
        super::stop_on_ctrl_c(group, move || {
            bar.suspend(|| {
                note!("stopping after this step to save (Ctrl-C again to quit without saving)")
            })
        })
    };
    let options = RunOptions::recorded(&prepared, stop);
    let Prepared {
        mut run,
        out,
        name,
        resumed,
        notes,
        // Held to the end of the run: no other process trains `out` meanwhile.
        lock: _lock,
    } = prepared;
    run.trainer.set_engine(args.engine.into());
    if group.size() > 1 {
        agree(group, run.trainer.set_group(group).map_err(Into::into))?;
    }
    let train_cfg = run.trainer.config.clone();
    let model_cfg = run.trainer.model.config.clone();
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
        say!(
            "training {} ({} parameters: {} layers, {} heads, n_embd {}, block {}) for {} of {}x{} characters; checkpoints in {}",
            name,
            thousands(run.trainer.model.num_params()),
            model_cfg.n_layer,
            model_cfg.n_head,
            model_cfg.n_embd,
            model_cfg.block_size,
            length(&train_cfg),
            train_cfg.batch_size,
            model_cfg.block_size,
            out.display()
        );
    }
    say!("{}", split_line(&run));
    if group.size() > 1 {
        let shards = run.trainer.total_shards();
        say!(
            "across {} ranks: each batch of {} in {shards} shards, the steps one process with {shards} threads takes",
            group.size(),
            train_cfg.batch_size,
        );
        distributed::set_fault_note(match run.saved_step {
            Some(step) => format!(
                "the checkpoint of step {step} in {} is intact",
                out.display()
            ),
            None => format!("nothing was saved yet in {}", out.display()),
        });
    }
    for line in &notes {
        note!("note: {line}");
    }
    if train_cfg.precision == config::Precision::Auto {
        note!(
            "note: precision auto: {}",
            match train_cfg.precision.resolve() {
                config::Precision::Bf16 => "bf16 products (this CPU has AVX512_BF16)",
                _ => "fp32 products (this CPU has no AVX512_BF16)",
            }
        );
    }
    for line in config::setting_warnings(&train_cfg)
        .into_iter()
        .chain(val_warning(&run))
    {
        note!("warning: {line}");
    }

    bar.set_style(
        ProgressStyle::with_template("step {pos}/{len} [{bar:30}] {msg}")
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(250));

    let mut plot_warning = false;
    let title = format!("{name}: loss");
    // The run's length: a time budget sets it after the first steps.
    let total_steps = std::cell::Cell::new(train_cfg.steps);
    let mut draw_plot = |run_metrics: &[MetricsRow],
                         steps: &[StepRow],
                         exact: Option<(usize, f64)>,
                         bar: &ProgressBar| {
        if let Err(e) = loss_plot(
            &plot_path,
            &title,
            run_metrics,
            steps,
            total_steps.get(),
            exact,
        ) {
            if !plot_warning {
                bar.suspend(|| note!("warning: {}", super::one_line(&e)));
                plot_warning = true;
            }
        }
    };
    let result = run_training(&mut run, &options, &mut |event| match event {
        RunEvent::Step {
            stats,
            steps,
            tokens_per_s,
            eta_s,
        } => {
            total_steps.set(steps);
            bar.set_length(steps as u64);
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
            metrics,
            steps,
            sample,
            ..
        } => {
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
                say!("{line}\n{}", indent(sample.unwrap_or_default()));
            });
            if saved && group.size() > 1 {
                distributed::set_fault_note(format!(
                    "the checkpoint of step {} in {} is intact",
                    row.step,
                    out.display()
                ));
            }
            draw_plot(metrics, steps, None, &bar);
        }
        RunEvent::BudgetSet { advice, .. } => {
            if let Some(advice) = advice {
                bar.suspend(|| note!("note: {advice}"));
            }
        }
        RunEvent::ExactEval { windows } => {
            bar.finish_and_clear();
            say!("measuring the exact val loss over {windows} windows...");
        }
        RunEvent::Saved(_) => {}
    });
    bar.finish_and_clear();
    // The plot also shows the steps after the last evaluation (a run stopped by Ctrl-C or out
    // of time), and the final exact val loss.
    total_steps.set(run.trainer.config.steps);
    let exact = result.as_ref().ok().and_then(exact_point);
    draw_plot(&run.metrics, &run.step_rows, exact, &bar);
    let outcome = match result {
        // The other ranks may be waiting for this one in the next step: end them too.
        Err(e) if group.size() > 1 => super::abort_job(group, &e.into()),
        other => other?,
    };
    if group.size() > 1 {
        if let Some(seconds) = group.gradient_sum_seconds() {
            let bytes = 4 * run.trainer.model.num_params();
            let ms: Vec<String> = seconds.iter().map(|s| format!("{:.1}", s * 1e3)).collect();
            say!(
                "gradient sum across ranks: {} ms per step on ranks {} ({:.1} MB of gradient; the least is close to the sum's own cost, the rest is waiting for slower ranks)",
                ms.join(", "),
                (0..group.size()).map(|r| r.to_string()).collect::<Vec<_>>().join(", "),
                bytes as f64 / 1e6
            );
        }
    }
    report_budget(
        &run.trainer.config,
        run.trainer.step,
        outcome.interrupted,
        &out,
    );
    report(&outcome, &out)
}

/// How long a run trains: its steps, or its time budget (whose steps the pace will set).
fn length(train: &config::TrainConfig) -> String {
    if train.time_budget > 0.0 && train.budget_fixed_at.is_none() {
        format!(
            "{} (its steps set from this machine's pace after the first {})",
            config::duration_text(train.time_budget),
            train.calibration_steps()
        )
    } else {
        format!("{} steps", thousands(train.steps))
    }
}

/// A budgeted run: the steps its budget became, and where its schedule's decay began; and, when
/// it ended short of them without being stopped (Ctrl-C says so itself), that the budget did it.
fn report_budget(train: &config::TrainConfig, done: usize, interrupted: bool, out: &Path) {
    let Some(at) = train.budget_fixed_at else {
        return;
    };
    let decay = match train.lr_schedule {
        config::LrSchedule::Wsd => format!(
            "; the learning rate decayed from step {}",
            chargpt::optimizer::wsd_decay(train).0
        ),
        _ => String::new(),
    };
    let dropout = match train.dropout_from {
        Some(from) => format!("; dropout {} from step {from}", train.budget_dropout),
        None => String::new(),
    };
    // Pieces of the decay are recorded in config.json, not settings: a resume follows them.
    let repeat = if train.decay_plan.is_empty() {
        format!(
            " (`--set steps={} --set warmup_steps={}` repeats the schedule)",
            train.steps, train.warmup_steps
        )
    } else {
        let at: Vec<String> = train.decay_plan[1..]
            .iter()
            .map(|(from, _)| from.to_string())
            .collect();
        format!(
            " (its decay set again to the pace at step {}: config.json's decay_plan)",
            at.join(", ")
        )
    };
    say!(
        "time budget {}: {} steps, set at step {at} from the pace measured{decay}{dropout}{repeat}",
        config::duration_text(train.time_budget),
        train.steps,
    );
    if done < train.steps && !interrupted {
        // How far down its schedule the run got says whether the steps left matter: a step or
        // two at the floor of a decay do not.
        say!(
            "the budget ran out at step {done} of {} (the machine slowed down after the steps were set), the learning rate at {:.3e} (its floor {:.3e}); `chargpt train --out {} --resume --set time_budget=0` finishes them",
            train.steps,
            chargpt::optimizer::learning_rate(train, done),
            train.min_lr,
            out.display()
        );
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

fn report(outcome: &RunOutcome, out: &Path) -> Result<ExitCode> {
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
    if let Some(sample) = &outcome.final_sample {
        say!("sample:\n{sample}");
    }
    say!(
        "saved to {shown}: model.safetensors, config.json, optimizer.safetensors, metrics.csv, loss.png, samples.txt; try `chargpt sample --model {shown}`"
    );
    Ok(ExitCode::SUCCESS)
}
