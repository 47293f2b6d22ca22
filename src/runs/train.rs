//! The run loop: [`run_training`] takes a prepared run to its last step (or a stop), evaluating,
//! recording and saving as it goes, and reports every step and evaluation as one event stream
//! that the command line, the server and any other front end read.

use super::clock::Clock;
use super::error::RunError;
use super::prepare::Prepared;
use super::probe::{append_probe, default_probe, probe_record, ProbeRecord, PROBES_FILE};
use super::records::{
    append, begin_records, eval_sample, final_record, metrics_csv, sample_record, steps_csv,
    MetricsRow, StepRow, StepsWriter, EVAL_SAMPLE, FINAL_SAMPLE, METRICS_FILE, SAMPLES_FILE,
    STEPS_FILE,
};
use super::run::Run;
use crate::checkpoint::{self, save_checkpoint, CheckpointConfig, RunCounters};
use crate::data::window_count;
use crate::model::Model;
use crate::optimizer::learning_rate;
use crate::tokenizer::{TokenId, Tokenizer};
use crate::training::{ExactLoss, StepStats, TrainError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use web_time::Instant;

/// The share of a time budget a plan leaves unused where it is made once (a cosine schedule):
/// room for the machine to slow down after the steps are set.
const PLAN_SPARE: f64 = 0.03;
/// The share of the time still to come that a plan set again at each evaluation (WSD) leaves
/// unused, on top of [`END_SPARE`]: each evaluation takes back what the one before kept, so only
/// the last plan's spare is lost (about a tenth of one evaluation interval).
const REFIT_SPARE: f64 = 0.1;
/// The share of a time budget its first timing may take before the steps are set.
const CALIBRATION_SHARE: f64 = 0.25;
/// The share of a time budget a run may not spend: below it, it stops before its planned steps.
const END_SPARE: f64 = 0.005;

/// How [`run_training`] runs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Checkpoint directory (model, config, optimizer, metrics.csv); None keeps the run in memory.
    pub out: Option<PathBuf>,
    /// Set from elsewhere (a Ctrl-C handler) to stop after the current step; the state is saved.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop, as if interrupted, once this many steps are done.
    pub stop_at: Option<usize>,
    /// Score the final model on the whole val split (`evaluate_exact`).
    pub exact_eval: bool,
    /// A probe text (at most `block_size` ids, e.g. [`super::default_probe`]): at every
    /// evaluation, what the model does on it ([`probe_record`]) goes into the evaluation's event
    /// and `probes.jsonl` in `out`, so that the page can replay the run.
    pub probe: Option<Vec<TokenId>>,
    /// Draw a sample at every evaluation ([`EVAL_SAMPLE`] characters) and a longer one at the
    /// end ([`FINAL_SAMPLE`]), into the events and `samples.txt` in `out`; the final one is
    /// recorded under this name (the run's preset, or "fine-tune of DIR").
    pub samples: Option<String>,
    /// Without `out`: save in memory, as [`RunEvent::Saved`] with the files' bytes (a run in a
    /// browser tab, whose page keeps them), where a run with `out` writes its directory.
    pub save_in_memory: bool,
}

impl RunOptions {
    /// How a front end trains a prepared run: into its directory, until `stop` is set, with the
    /// exact val loss at the end, the probe records and the samples.
    pub fn recorded(prepared: &Prepared, stop: Arc<AtomicBool>) -> Self {
        let run = &prepared.run;
        RunOptions {
            out: Some(prepared.out.clone()),
            stop: Some(stop),
            stop_at: None,
            exact_eval: true,
            probe: Some(default_probe(
                &run.tokenizer,
                &run.dataset.val,
                run.trainer.model.config.block_size,
                Some(&run.data),
            )),
            samples: Some(prepared.name.clone()),
            save_in_memory: false,
        }
    }
}

/// What [`run_training`] reports as it goes.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// A step finished. `tokens_per_s` is the training throughput of this session so far,
    /// `eta_s` the time left to the end of the run: steps and evaluations, each at its own
    /// measured pace.
    Step {
        stats: StepStats,
        steps: usize,
        tokens_per_s: f64,
        eta_s: f64,
    },
    /// The loss estimates at an evaluation (`metrics` ends with `row`).
    Eval {
        row: MetricsRow,
        improved: bool,
        saved: bool,
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        metrics: &'a [MetricsRow],
        /// Every training step so far.
        steps: &'a [StepRow],
        /// The evaluation's sample, with [`RunOptions::samples`].
        sample: Option<&'a str>,
        /// What the model does on the probe text, with [`RunOptions::probe`].
        probe: Option<&'a ProbeRecord>,
    },
    /// A time budget became steps at the pace measured (once a run, after its first steps).
    /// `advice`: a line for the learner when they are under half of what the budget buys at
    /// its recipe's pace ([`Run::budget_guess`], [`budget_advice`]): its model is probably too
    /// large for this machine and this time; or when they are so many passes over the text that
    /// a model without dropout may learn it by heart ([`overfit_advice`]).
    ///
    /// [`budget_advice`]: crate::config::budget_advice
    /// [`overfit_advice`]: crate::config::overfit_advice
    BudgetSet {
        steps: usize,
        advice: Option<String>,
    },
    /// The final model's exact val loss is being computed (it takes a moment).
    ExactEval { windows: usize },
    /// A checkpoint saved in memory ([`RunOptions::save_in_memory`]).
    Saved(&'a SavedFiles),
}

/// A checkpoint as the bytes of the files a run directory holds, so that a run kept elsewhere
/// (a browser's storage) is a run directory once written out: `chargpt eval`, `sample` and
/// `train --resume` take it.
#[derive(Debug, Clone)]
pub struct SavedFiles {
    pub step: usize,
    /// `model.safetensors`, `config.json`, `optimizer.safetensors`.
    pub model: Vec<u8>,
    pub config: Vec<u8>,
    pub optimizer: Vec<u8>,
    /// `metrics.csv` and `steps.csv` up to this step.
    pub metrics: String,
    pub steps: String,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub steps_done: usize,
    /// Stopped early (Ctrl-C or `stop_at`) rather than finished.
    pub interrupted: bool,
    pub best: Option<(f32, usize)>,
    pub final_val: Option<ExactLoss>,
    /// The step of the checkpoint on disk at the end.
    pub saved_step: Option<usize>,
    /// Seconds spent in training steps, this session.
    pub train_time_s: f64,
    pub tokens_per_s: f64,
    /// Wall-clock seconds, all sessions together.
    pub elapsed_s: f64,
    /// The final sample of a finished run, with [`RunOptions::samples`].
    pub final_sample: Option<String>,
}

/// Trains `run` to its configured number of steps: evaluates (`estimate_losses`) at step 0 of a
/// new run, every [`TrainConfig::eval_every`] steps and at the last step; records a metrics row
/// at each and a `steps.csv` row at every step; saves a checkpoint (atomically) when the val
/// estimate improves, at the end and when stopped; never saves non-finite parameters: a NaN or
/// infinite loss stops the run with an error naming the step and the checkpoint that is kept.
///
/// [`TrainConfig::eval_every`]: crate::config::TrainConfig::eval_every
pub fn run_training(
    run: &mut Run,
    options: &RunOptions,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunOutcome, RunError> {
    let mut session = Session::start(run, options.clone(), on_event)?;
    loop {
        match session.next(run, on_event)? {
            Due::Step => {
                let stats = run.trainer.train_step(&run.dataset.train);
                session.stepped(run, stats, on_event)?;
            }
            Due::Done(outcome) => return Ok(outcome),
        }
    }
}

/// What a [`Session`] needs next.
#[derive(Debug)]
pub enum Due {
    /// A training step: the caller takes it (`run.trainer.train_step`, or shards computed
    /// elsewhere) and reports it with [`Session::stepped`].
    Step,
    /// The run is over (finished or stopped), saved and sampled.
    Done(RunOutcome),
}

/// The run loop of [`run_training`], one piece at a time, for a caller that cannot hand the
/// loop its thread (a page in the browser, whose workers compute a step's shards while it waits
/// for their messages): everything but the step itself (evaluations, records, samples, probe
/// records, checkpoints, the stop, the ETA) happens here, so every front end runs the same loop.
pub struct Session {
    options: RunOptions,
    start: Instant,
    steps: usize,
    eval_interval: usize,
    tokens_per_step: f64,
    metrics_path: Option<PathBuf>,
    steps_file: Option<StepsWriter>,
    clock: Clock,
    exact_share: f64,
    /// Steps and seconds since the last evaluation.
    window: (usize, f64),
    /// When the step being taken began.
    step_began: Instant,
    interrupted: bool,
    /// With a time budget not yet turned into steps: the step after which it is
    /// ([`Session::fix_steps`]).
    calibrate_at: Option<usize>,
}

/// Turns on the run's `budget_dropout` from the next step when its budget buys a model without
/// dropout more than [`PASSES_WITHOUT_DROPOUT`] `passes` over the training text, and records the
/// step (`dropout_from`). Returns the dropout turned on. Every rank decides alike: the steps, and
/// so the passes, are the same on all.
///
/// [`PASSES_WITHOUT_DROPOUT`]: crate::config::PASSES_WITHOUT_DROPOUT
fn dropout_for_passes(run: &mut Run, passes: f64) -> Result<Option<f32>, RunError> {
    let train = &run.trainer.config;
    let p = train.budget_dropout;
    if p <= 0.0
        || train.dropout_from.is_some()
        || run.trainer.model.config.dropout > 0.0
        || passes <= crate::config::PASSES_WITHOUT_DROPOUT
    {
        return Ok(None);
    }
    run.trainer.set_dropout(p)?;
    run.trainer.config.dropout_from = Some(run.trainer.step);
    Ok(Some(p))
}

/// The most steps a run may have ([`crate::limits::SETTINGS`]), which a long budget on a small
/// model would pass.
const MAX_STEPS: usize = 10_000_000;

impl Session {
    /// Starts the loop: the records of `options.out` rewritten to the run's, and the evaluation
    /// of step 0 for a new run.
    pub fn start(
        run: &mut Run,
        options: RunOptions,
        on_event: &mut dyn FnMut(RunEvent<'_>),
    ) -> Result<Session, RunError> {
        let start = Instant::now();
        let steps = run.trainer.config.steps;
        if run.trainer.step >= steps {
            return Err(RunError::AlreadyFinished {
                dir: options
                    .out
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_default(),
                steps,
            });
        }
        let metrics_path = options.out.as_ref().map(|d| d.join(METRICS_FILE));
        let mut steps_file = None;
        if let Some(dir) = &options.out {
            begin_records(dir, &run.metrics, &run.step_rows)?;
            steps_file = Some(StepsWriter::open(&dir.join(STEPS_FILE))?);
        }
        let mut session = Session {
            start,
            steps,
            eval_interval: run.trainer.config.eval_every(),
            tokens_per_step: (run.trainer.config.batch_size * run.trainer.model.config.block_size)
                as f64,
            metrics_path,
            steps_file,
            clock: Clock::default(),
            exact_share: exact_eval_share(run),
            window: (0, 0.0),
            step_began: start,
            interrupted: false,
            calibrate_at: None,
            options,
        };
        let train = &mut run.trainer.config;
        if train.time_budget > 0.0 && train.budget_fixed_at.is_none() {
            // `steps` is a first guess until the pace is known; the run lasts past the timing.
            let at = run.trainer.step + train.calibration_steps();
            train.steps = train.steps.max(at + 1);
            session.steps = train.steps;
            session.eval_interval = train.eval_every();
            session.calibrate_at = Some(at);
        }
        run.step_rows.reserve(session.rows_ahead(run.trainer.step));
        if run.trainer.step == 0 {
            let lr = learning_rate(&run.trainer.config, 0);
            session.evaluate(run, lr, 0.0, on_event)?;
        }
        Ok(session)
    }

    /// The rows up to the next evaluation, reserved then, so that a step never grows the vector.
    fn rows_ahead(&self, done: usize) -> usize {
        self.eval_interval.min(self.steps.saturating_sub(done)) + 1
    }

    /// Whether the run is asked to stop: between steps and between the batches of an
    /// evaluation. Several ranks stop at the same point, whichever of them was asked.
    fn stop_requested(&self, run: &Run) -> bool {
        let asked = self
            .options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed));
        run.trainer.group().any(asked)
    }

    /// What comes next: a training step, or the end of the run (the final exact evaluation, the
    /// save and the final sample happen here first).
    pub fn next(
        &mut self,
        run: &mut Run,
        on_event: &mut dyn FnMut(RunEvent<'_>),
    ) -> Result<Due, RunError> {
        if !self.interrupted && run.trainer.step < self.steps && self.out_of_time(run) {
            // The machine slowed down after the budget was turned into steps: the run ends
            // here, inside its budget, with its final evaluation. Its steps stay as planned, so
            // that the record still says what schedule each step had, and a resume with
            // `time_budget=0` finishes them.
            self.steps = run.trainer.step;
        }
        if !self.interrupted && run.trainer.step < self.steps {
            let at_limit = self.options.stop_at.is_some_and(|n| run.trainer.step >= n);
            if self.stop_requested(run) || at_limit {
                self.interrupted = true;
            } else {
                self.step_began = Instant::now();
                return Ok(Due::Step);
            }
        }
        self.finish(run, on_event).map(Due::Done)
    }

    /// Records the step the caller took (`stats`, or the error it met), and evaluates when one
    /// is due.
    pub fn stepped(
        &mut self,
        run: &mut Run,
        stats: Result<StepStats, TrainError>,
        on_event: &mut dyn FnMut(RunEvent<'_>),
    ) -> Result<(), RunError> {
        let stats = stats.map_err(|TrainError::NonFiniteLoss { step, loss }| {
            non_finite(run, &self.options, "loss", loss, step + 1)
        })?;
        let dt = self.step_began.elapsed().as_secs_f64();
        self.clock.step(dt);
        self.window.0 += 1;
        self.window.1 += dt;
        let done = run.trainer.step;
        let row = StepRow {
            step: done,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            elapsed_s: run.elapsed_before_s + self.start.elapsed().as_secs_f64(),
        };
        run.step_rows.push(row);
        if let Some(file) = &mut self.steps_file {
            file.write(&row)?;
        }
        // (Before a budget changes the steps and with them the interval.)
        let at_interval = done.is_multiple_of(self.eval_interval);
        if self.calibrate_at.is_some_and(|at| done >= at) || self.calibration_too_long(run) {
            self.fix_steps(run);
            let budget = run.trainer.config.time_budget;
            let passes =
                self.steps as f64 * self.tokens_per_step / run.dataset.train.len().max(1) as f64;
            let turned_on = dropout_for_passes(run, passes)?;
            let dropout = run.trainer.model.config.dropout;
            let advice = run
                .budget_guess
                .and_then(|guess| crate::config::budget_advice(budget, guess, self.steps))
                .or_else(|| match turned_on {
                    Some(p) => Some(crate::config::dropout_note(budget, passes, p)),
                    None => crate::config::overfit_advice(budget, passes, dropout),
                });
            on_event(RunEvent::BudgetSet {
                steps: self.steps,
                advice,
            });
        } else if self.refits(run) {
            // A WSD run's learning rate is flat until its decay and falls in straight pieces in
            // it: its steps can follow the machine's pace to the end without changing a step
            // taken.
            self.fix_steps(run);
        }
        let steps = self.steps;
        let evals_left = evaluations_after(done, steps, self.eval_interval);
        debug_assert!(evals_left >= usize::from(done == steps));
        let exact = self.options.exact_eval.then_some(self.exact_share);
        let budget = run.trainer.config.time_budget;
        let eta_s = if budget > 0.0 {
            (budget - self.elapsed(run)).max(0.0)
        } else {
            self.clock.eta_s(steps - done, evals_left, exact)
        };
        on_event(RunEvent::Step {
            stats,
            steps,
            tokens_per_s: self.clock.tokens_per_s(self.tokens_per_step),
            eta_s,
        });
        if at_interval || done == steps {
            if let Some(file) = &mut self.steps_file {
                file.flush()?;
            }
            let rate = self.window.0 as f64 * self.tokens_per_step / self.window.1.max(1e-9);
            self.window = (0, 0.0);
            self.evaluate(run, stats.lr, rate, on_event)?;
            run.step_rows.reserve(self.rows_ahead(done));
        }
        Ok(())
    }

    /// Whether a budget not yet turned into steps has spent a quarter of itself
    /// ([`CALIBRATION_SHARE`]) on the timing, with at least 3 steps timed: a short budget for a
    /// large model (`fast` times 200 steps of its warm-up, about 160 s on 2 Zen 3 cores, so
    /// `--preset fast --time 2m` took 2 min 49 s) then sets its steps before its warm-up ends,
    /// rather than spend the budget timing it. The learning rate of a warm-up step does not
    /// depend on the steps, so the run is still the one its recorded steps make. Every rank asks
    /// at the same steps, and they set theirs together.
    fn calibration_too_long(&self, run: &Run) -> bool {
        self.calibrate_at.is_some()
            && self.clock.steps() >= 3
            && run
                .trainer
                .group()
                .any(self.elapsed(run) >= CALIBRATION_SHARE * run.trainer.config.time_budget)
    }

    /// Seconds of the run so far, all sessions.
    fn elapsed(&self, run: &Run) -> f64 {
        run.elapsed_before_s + self.start.elapsed().as_secs_f64()
    }

    /// The time still to spend after the last step: the final exact evaluation (at the measured
    /// pace of an estimate), the final sample and saves, and `spare_s` seconds to spare.
    fn end_s(&self, eval_s: f64, spare_s: f64) -> f64 {
        let exact = if self.options.exact_eval {
            self.exact_share * eval_s
        } else {
            0.0
        };
        exact + 1.0 + spare_s
    }

    /// The seconds a plan keeps spare, `refit` where another evaluation comes before its end
    /// (a WSD run sets its steps again there, in its decay too). A plan made for good keeps 3%
    /// ([`PLAN_SPARE`]): of the budget for a cosine run (set once, after its warm-up), of the
    /// time still to come for a WSD run's last plan. A plan set again later keeps a tenth of
    /// the time still to come ([`REFIT_SPARE`]), so it can absorb a machine 10% slower until the
    /// next, and the next takes the rest back. Each WSD plan also keeps the 0.5% below which
    /// the run stops short ([`END_SPARE`]). With 3% of the budget kept to the end, `fast` on 2
    /// Zen 4 cores, whose machine sped up after its decay began, ended 1 min 25 s inside its 20
    /// minutes; with 3% of the time to come at every plan, the first command on 2 Zen 3 cores
    /// ran out 3 steps short of its last plan (0.75 s spare for 25 s); with a tenth for every
    /// plan, `fast --time 2m` there (its one evaluation at its end) ended 14 s early. With one
    /// margin for both plan and stop, the margin only moved the end: three of four 5-minute runs
    /// and a 20-minute one on a shared Zen 3 ran out in their decay.
    fn plan_spare_s(&self, run: &Run, refit: bool) -> f64 {
        let train = &run.trainer.config;
        let budget = train.time_budget;
        let to_come = (budget - self.elapsed(run)).max(0.0);
        match (train.lr_schedule, refit) {
            (crate::config::LrSchedule::Wsd, true) => END_SPARE * budget + REFIT_SPARE * to_come,
            (crate::config::LrSchedule::Wsd, false) => END_SPARE * budget + PLAN_SPARE * to_come,
            _ => PLAN_SPARE * budget,
        }
    }

    /// An evaluation's seconds: measured, or before one is, its forward passes at a third of
    /// a training step's time per batch.
    fn eval_s(&self, run: &Run) -> f64 {
        self.clock.eval_mean_s().unwrap_or_else(|| {
            2.0 * run.trainer.config.eval_iters as f64 * self.clock.step_s() / 3.0
        })
    }

    /// Turns the time budget into steps at the measured pace ([`budget_steps`]): the run's
    /// `steps` from here on, recorded with the step at which they were set. Inside a WSD decay
    /// the piece in force ends here, and a new one runs from this step's learning rate to
    /// `min_lr` at the new steps (`decay_plan`).
    ///
    /// [`budget_steps`]: crate::config::budget_steps
    fn fix_steps(&mut self, run: &mut Run) {
        let done = run.trainer.step;
        let eval_s = self.eval_s(run);
        let train = run.trainer.config.clone();
        let interval = |steps| {
            crate::config::TrainConfig {
                steps,
                ..train.clone()
            }
            .eval_every()
        };
        let plan = |refit| {
            crate::config::budget_steps(
                train.time_budget,
                self.elapsed(run),
                done,
                self.clock.step_s(),
                eval_s,
                self.end_s(eval_s, self.plan_spare_s(run, refit)),
                &interval,
            )
            .min(MAX_STEPS)
        };
        // A plan with an evaluation before its end will be set again there; one without is
        // the last.
        let steps = plan(true);
        let every = interval(steps).max(1);
        let steps = match (done / every + 1) * every < steps {
            true => steps,
            false => plan(false),
        };
        // Under mpirun every rank takes every step: they take rank 0's plan, whose clock may
        // differ from theirs by a step or two.
        let mut agreed = [steps as u32];
        run.trainer.group().broadcast_u32(&mut agreed);
        let steps = agreed[0] as usize;
        self.calibrate_at = None;
        let (decay_start, _) = crate::optimizer::wsd_decay(&train);
        let refit = train.budget_fixed_at.is_some();
        let config = &mut run.trainer.config;
        if refit && train.lr_schedule == crate::config::LrSchedule::Wsd && decay_start <= done {
            if steps == train.steps {
                return;
            }
            if config.decay_plan.is_empty() {
                config.decay_plan.push((decay_start, train.steps));
            }
            match config.decay_plan.last_mut() {
                Some(last) if last.0 == done => last.1 = steps,
                _ => config.decay_plan.push((done, steps)),
            }
            config.steps = steps;
        } else {
            config.steps = steps;
            if refit && crate::optimizer::wsd_decay(config).0 <= done {
                // Refitted so late that the decay would have begun already: keep the plan
                // (its decay, once begun, follows the pace).
                config.steps = train.steps;
                return;
            }
        }
        config.budget_fixed_at = Some(done);
        self.steps = steps;
        self.eval_interval = config.eval_every();
    }

    /// Whether a budgeted WSD run refits its steps now: at an evaluation before its last step.
    fn refits(&self, run: &Run) -> bool {
        let train = &run.trainer.config;
        let done = run.trainer.step;
        train.time_budget > 0.0
            && train.lr_schedule == crate::config::LrSchedule::Wsd
            && train.budget_fixed_at.is_some()
            && done.is_multiple_of(self.eval_interval)
            && done < train.steps
    }

    /// Whether a run with a budget turned into steps has no time left for another step (on any
    /// rank: they stop together).
    fn out_of_time(&self, run: &Run) -> bool {
        let train = &run.trainer.config;
        if train.time_budget <= 0.0 || train.budget_fixed_at.is_none() {
            return false;
        }
        let left = train.time_budget
            - self.elapsed(run)
            - self.end_s(self.eval_s(run), END_SPARE * train.time_budget);
        run.trainer.group().any(left < self.clock.step_s())
    }

    /// An evaluation (see [`evaluate`]), timed for the ETA; a stop during it ends the run.
    fn evaluate(
        &mut self,
        run: &mut Run,
        lr: f32,
        tokens_per_s: f64,
        on_event: &mut dyn FnMut(RunEvent<'_>),
    ) -> Result<(), RunError> {
        let t0 = Instant::now();
        let group = run.trainer.group();
        let flag = self.options.stop.clone();
        let stop = move || group.any(flag.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)));
        let done = evaluate(
            run,
            &self.options,
            self.metrics_path.as_deref(),
            lr,
            tokens_per_s,
            self.start,
            &stop,
            on_event,
        )?;
        self.interrupted |= !done;
        self.clock.eval(t0.elapsed().as_secs_f64());
        Ok(())
    }

    /// The end: the exact val loss of a finished run, the save, the final sample.
    fn finish(
        &mut self,
        run: &mut Run,
        on_event: &mut dyn FnMut(RunEvent<'_>),
    ) -> Result<RunOutcome, RunError> {
        if let Some(file) = &mut self.steps_file {
            file.flush()?;
        }
        let options = &self.options;
        let mut final_val = None;
        if !self.interrupted && options.exact_eval {
            let windows = window_count(run.dataset.val.len(), run.trainer.model.config.block_size);
            on_event(RunEvent::ExactEval { windows });
            let group = run.trainer.group();
            let flag = options.stop.clone();
            let stop = move || group.any(flag.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)));
            final_val = run.trainer.exact_loss_unless(&run.dataset.val, &stop);
            self.interrupted = final_val.is_none();
        }
        save(
            run,
            options,
            final_val.map(|e| e.loss),
            self.start,
            on_event,
        )?;
        let final_sample = match &options.samples {
            Some(name) if !self.interrupted => {
                let step = run.trainer.step;
                let seed = run.trainer.config.seed;
                let model = &run.trainer.model;
                let text = eval_sample(model, &run.tokenizer, seed, step + 1, FINAL_SAMPLE);
                if let Some(dir) = &options.out {
                    record(&dir.join(SAMPLES_FILE), &final_record(step, name, &text))?;
                }
                Some(text)
            }
            _ => None,
        };
        Ok(RunOutcome {
            steps_done: run.trainer.step,
            interrupted: self.interrupted,
            best: run.best,
            final_val,
            saved_step: run.saved_step,
            train_time_s: self.clock.train_s,
            tokens_per_s: self.clock.tokens_per_s(self.tokens_per_step),
            elapsed_s: run.elapsed_before_s + self.start.elapsed().as_secs_f64(),
            final_sample,
        })
    }
}

/// Evaluations still to come once `done` of `steps` steps are done (the one due at `done`
/// included): one every `interval` steps, and one at the last step.
fn evaluations_after(done: usize, steps: usize, interval: usize) -> usize {
    let regular = steps / interval - done.saturating_sub(1) / interval;
    regular + usize::from(!steps.is_multiple_of(interval))
}

/// The cost of the final exact evaluation in units of one loss estimate: both are forward passes
/// only, over `windows` sequences against `2 * eval_iters * batch_size`.
fn exact_eval_share(run: &Run) -> f64 {
    let t = run.trainer.model.config.block_size;
    let windows = window_count(run.dataset.val.len(), t) as f64;
    let estimate = 2.0 * (run.trainer.config.eval_iters * run.trainer.config.batch_size) as f64;
    windows / estimate.max(1.0)
}

/// The loss estimates at the current step: a metrics row, and a save if val improved (not at
/// step 0, and not at the last step, where the final save follows). `Ok(false)` if `stop` cut
/// the estimates short (nothing is recorded then).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    run: &mut Run,
    options: &RunOptions,
    metrics_path: Option<&Path>,
    lr: f32,
    tokens_per_s: f64,
    start: Instant,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<bool, RunError> {
    let Some((train_loss, val_loss)) = run.trainer.estimate_losses_unless(&run.dataset, stop)
    else {
        return Ok(false);
    };
    let step = run.trainer.step;
    for loss in [train_loss, val_loss] {
        if !loss.is_finite() {
            return Err(non_finite(run, options, "loss estimate", loss, step));
        }
    }
    let row = MetricsRow {
        step,
        train_loss,
        val_loss,
        lr,
        tokens_per_s,
        elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
    };
    run.metrics.push(row);
    if let Some(path) = metrics_path {
        append_line(path, &row.to_csv())?;
    }
    let probe = options
        .probe
        .as_ref()
        .filter(|p| !p.is_empty())
        .map(|p| probe_record(&run.trainer.model, &run.tokenizer, p, step, val_loss));
    if let (Some(dir), Some(probe)) = (&options.out, &probe) {
        let path = dir.join(PROBES_FILE);
        append_probe(&path, probe).map_err(|source| RunError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    let sample = options.samples.is_some().then(|| {
        let seed = run.trainer.config.seed;
        eval_sample(&run.trainer.model, &run.tokenizer, seed, step, EVAL_SAMPLE)
    });
    if let (Some(dir), Some(text)) = (&options.out, &sample) {
        record(
            &dir.join(SAMPLES_FILE),
            &sample_record(step, val_loss, text),
        )?;
    }
    let improved = run.best.is_none_or(|(best, _)| val_loss < best);
    if improved {
        run.best = Some((val_loss, step));
    }
    let saves = options.out.is_some() || options.save_in_memory;
    let saved = improved && step > 0 && step < run.trainer.config.steps && saves;
    if saved {
        save(run, options, None, start, on_event)?;
    }
    on_event(RunEvent::Eval {
        row,
        improved,
        saved,
        model: &run.trainer.model,
        tokenizer: &run.tokenizer,
        metrics: &run.metrics,
        steps: &run.step_rows,
        sample: sample.as_deref(),
        probe: probe.as_ref(),
    });
    Ok(true)
}

/// Appends `text` to the record at `path`.
fn record(path: &Path, text: &str) -> Result<(), RunError> {
    append(path, text).map_err(|source| RunError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn append_line(path: &Path, line: &str) -> Result<(), RunError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(file, "{line}")
    };
    write().map_err(|source| RunError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn non_finite(
    run: &Run,
    options: &RunOptions,
    what: &'static str,
    value: f32,
    step: usize,
) -> RunError {
    let kept = match (&options.out, run.saved_step) {
        (Some(dir), Some(s)) => format!("the checkpoint of step {s} in {} is kept", dir.display()),
        (Some(_), None) => "nothing was saved yet".to_string(),
        (None, Some(s)) if options.save_in_memory => format!("the checkpoint of step {s} is kept"),
        (None, _) => "nothing is saved in memory-only runs".to_string(),
    };
    RunError::NonFinite {
        what,
        value,
        step,
        kept,
    }
}

/// Writes the checkpoint of the current step into `options.out` (or reports its bytes, with
/// [`RunOptions::save_in_memory`]), refusing non-finite parameters (the previous checkpoint
/// stays).
fn save(
    run: &mut Run,
    options: &RunOptions,
    final_val_loss: Option<f64>,
    start: Instant,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<(), RunError> {
    if options.out.is_none() && !options.save_in_memory {
        return Ok(());
    }
    let step = run.trainer.step;
    if let Some(bad) = run.trainer.model.params.iter().find(|p| !p.is_finite()) {
        return Err(non_finite(run, options, "parameters", *bad, step));
    }
    let model = &run.trainer.model;
    let mut config = CheckpointConfig::new(&model.config, &run.tokenizer, &run.trainer.config);
    config.step = step;
    config.best_val_loss = run.best.map(|b| b.0);
    config.best_val_step = run.best.map(|b| b.1);
    config.final_val_loss = final_val_loss;
    config.data = Some(run.data.clone());
    config.preset = run.preset.clone();
    config.init_from = run.init_from.clone();
    let counters = RunCounters {
        step,
        data_rng_state: run.trainer.data_rng.state(),
        best_val_loss: config.best_val_loss,
        best_val_step: config.best_val_step,
        elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
    };
    match &options.out {
        Some(dir) => save_checkpoint(dir, model, &config, &run.trainer.optimizer, &counters)?,
        None => {
            let files = SavedFiles {
                step,
                model: checkpoint::model_bytes(model, step),
                config: checkpoint::config_bytes(&config),
                optimizer: checkpoint::optimizer_bytes(
                    &model.layout,
                    &run.trainer.optimizer,
                    &counters,
                ),
                metrics: metrics_csv(&run.metrics),
                steps: steps_csv(&run.step_rows),
            };
            on_event(RunEvent::Saved(&files));
        }
    }
    run.saved_step = Some(step);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluations_left_count_the_regular_ones_and_the_last() {
        // 200 steps, every 50: evaluations at 50, 100, 150, 200.
        assert_eq!(evaluations_after(1, 200, 50), 4);
        assert_eq!(evaluations_after(50, 200, 50), 4);
        assert_eq!(evaluations_after(51, 200, 50), 3);
        assert_eq!(evaluations_after(200, 200, 50), 1);
        // 210 steps: 50, 100, 150, 200 and the last, 210.
        assert_eq!(evaluations_after(201, 210, 50), 1);
        assert_eq!(evaluations_after(1, 210, 50), 5);
    }
}
