//! A run in the tab: the leader worker's [`Training`] (the library's run loop, one step at a
//! time) and the helper workers' [`Replica`]s.
//!
//! A step with N workers: each draws the same batch (the same generator in every replica) and
//! runs its own shard's forward and backward pass; the leader takes the others' gradients in
//! shard order and ends the step (sum, norm, clipping, AdamW) as one trainer with N shards does
//! on one thread; the helpers apply the same summed gradient. So N workers take the same steps,
//! bit for bit, as one worker with N shards ([`chargpt::training::Trainer::shard_pass`]).

use crate::{prepare_refusal, refusal, TAB};
use chargpt::checkpoint::{self, CheckpointConfig, RunCounters, EMBEDDED_SOURCE};
use chargpt::config::{self, TrainConfig};
use chargpt::data::TINY_SHAKESPEARE;
use chargpt::engine::Engine;
use chargpt::page::live::{messages, LiveEvent, Started};
use chargpt::page::{self, Refusal, ResumeRequest, StartRequest};
use chargpt::runs::{
    self, data_info, default_probe, final_record, probe_line, sample_record, Due, PrepareError,
    Run, RunError, RunEvent, RunOptions, SavedFiles, Session,
};
use chargpt::tokenizer::TokenId;
use chargpt::training::{StepStats, TrainError, Trainer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// What the run loop reported since the page last asked.
#[derive(Default)]
struct Collected {
    events: Vec<LiveEvent>,
    /// Records to append to the run's `samples.txt` and `probes.jsonl`.
    samples: String,
    probes: String,
    /// The last checkpoint saved (in memory), not yet taken.
    saved: Option<SavedFiles>,
    /// The parameters of the last evaluation as `config.json` and `model.safetensors` bytes,
    /// for the inspector, not yet taken.
    snapshot: Option<(Vec<u8>, Vec<u8>)>,
    train: Option<TrainConfig>,
}

impl Collected {
    fn take(&mut self, event: RunEvent<'_>) {
        self.events.extend(LiveEvent::from_run(&event));
        match event {
            RunEvent::Eval {
                row,
                model,
                tokenizer,
                sample,
                probe,
                ..
            } => {
                if let Some(text) = sample {
                    self.samples
                        .push_str(&sample_record(row.step, row.val_loss, text));
                }
                if let Some(line) = probe.and_then(|p| probe_line(p).ok()) {
                    self.probes.push_str(&line);
                }
                if let Some(train) = &self.train {
                    let mut config = CheckpointConfig::new(&model.config, tokenizer, train);
                    config.step = row.step;
                    self.snapshot = Some((
                        checkpoint::config_bytes(&config),
                        checkpoint::model_bytes(model, row.step),
                    ));
                }
            }
            RunEvent::Saved(files) => self.saved = Some(files.clone()),
            RunEvent::Step { .. } | RunEvent::BudgetSet { .. } | RunEvent::ExactEval { .. } => {}
        }
    }
}

/// A run trained by the leader worker.
#[wasm_bindgen]
pub struct Training {
    name: String,
    /// What the final sample is recorded under: the preset, or "fine-tune of RUN".
    label: String,
    run: Run,
    session: Option<Session>,
    stop: Arc<AtomicBool>,
    started: Started,
    collected: Collected,
    /// The step the helpers' shards are in, once the leader ends it.
    pending: Option<Result<StepStats, TrainError>>,
    done: bool,
    /// What the helpers last got ([`Training::replica_settings`]), as [`settings_key`].
    replica_sent: SettingsKey,
}

/// The settings a run changes as it goes ([`chargpt::runs::Session`]): a time budget sets the
/// steps, and with them the learning rate of every later step, and may turn dropout on. Compared
/// after every step, so that the settings are written out only when they change.
type SettingsKey = (usize, Option<usize>, Option<usize>, u32);

fn settings_key(trainer: &Trainer) -> SettingsKey {
    let train = &trainer.config;
    (
        train.steps,
        train.budget_fixed_at,
        train.dropout_from,
        trainer.model.config.dropout.to_bits(),
    )
}

/// The text of a run: the page's (an upload, with its file's name) or the built-in one.
fn text_of(text: Option<String>, text_name: Option<String>) -> (String, String) {
    match text {
        Some(text) => (text, text_name.unwrap_or_else(|| "text.txt".to_string())),
        None => (TINY_SHAKESPEARE.to_string(), EMBEDDED_SOURCE.to_string()),
    }
}

fn settings(
    map: &serde_json::Map<String, serde_json::Value>,
) -> Result<Vec<runs::Setting>, JsValue> {
    page::settings_from(map).map_err(refusal)
}

/// A `POST /api/runs` body, its run name checked, and its settings.
fn start_request(request: &str) -> Result<(StartRequest, Vec<runs::Setting>), JsValue> {
    let request: StartRequest = page::parse_request(request.as_bytes()).map_err(refusal)?;
    page::check_name(&request.name).map_err(refusal)?;
    let settings = settings(&request.settings)?;
    Ok((request, settings))
}

fn preset_refusal(e: PrepareError) -> JsValue {
    let mut r = Refusal::from_prepare(e);
    if r.field.is_none() && r.message.starts_with("unknown preset") {
        r = r.with_field("preset");
    }
    refusal(r)
}

fn run_refusal(e: RunError) -> JsValue {
    refusal(Refusal::bad_request(page::one_line(&e)))
}

#[wasm_bindgen]
impl Training {
    /// `POST /api/runs`: a new run from `request` (`{name, preset, settings}`) on `text` (or the
    /// built-in Tiny Shakespeare), each batch split into `shards` parts.
    #[wasm_bindgen(js_name = newRun)]
    pub fn new_run(
        request: &str,
        text: Option<String>,
        text_name: Option<String>,
        shards: usize,
    ) -> Result<Training, JsValue> {
        let (request, settings) = start_request(request)?;
        let configs = runs::new_configs(request.preset(), &settings).map_err(preset_refusal)?;
        let (text, source) = text_of(text, text_name);
        let info = data_info(&source, &text);
        let (run, notes) = runs::new_run(configs, &text, info, &TAB).map_err(prepare_refusal)?;
        let label = request.preset().to_string();
        Training::begin(request.name, label, run, notes, false, shards)
    }

    /// `POST /api/runs` with `init_from`: a fine-tune of the checkpoint `config` + `model` (run
    /// `init_name`'s) on `text`; the request's `unknown_chars` says what to do with characters
    /// its vocabulary lacks.
    #[wasm_bindgen(js_name = fineTune)]
    pub fn fine_tune(
        request: &str,
        config: &[u8],
        model: &[u8],
        init_name: &str,
        text: Option<String>,
        text_name: Option<String>,
        shards: usize,
    ) -> Result<Training, JsValue> {
        let (request, settings) = start_request(request)?;
        let unknown = request.unknown_chars().map_err(refusal)?;
        let ckpt = checkpoint::from_bytes(config, model)
            .map_err(|e| refusal(Refusal::conflict(page::one_line(&e))))?;
        let configs = runs::fine_tune_configs(&ckpt, request.preset.as_deref(), &settings, &TAB)
            .map_err(preset_refusal)?;
        let (text, source) = text_of(text, text_name);
        let info = data_info(&source, &text);
        let (run, notes) = runs::fine_tune_run(ckpt, configs, &text, info, unknown, init_name)
            .map_err(prepare_refusal)?;
        let label = format!("fine-tune of {init_name}");
        Training::begin(request.name, label, run, notes, false, shards)
    }

    /// `POST /api/runs/NAME/resume`: continues run `name` from its saved files' bytes, exactly.
    #[allow(clippy::too_many_arguments)]
    pub fn resume(
        name: &str,
        request: &str,
        model: Vec<u8>,
        config: Vec<u8>,
        optimizer: Vec<u8>,
        metrics: String,
        steps: String,
        text: Option<String>,
        text_name: Option<String>,
        shards: usize,
    ) -> Result<Training, JsValue> {
        let request: ResumeRequest = page::parse_request(request.as_bytes()).map_err(refusal)?;
        let settings = settings(&request.settings)?;
        let saved = checkpoint::parse_config(&config, checkpoint::CONFIG_FILE)
            .map_err(|e| refusal(Refusal::conflict(page::one_line(&e))))?;
        let step = saved.step;
        let files = SavedFiles {
            step,
            model,
            config,
            optimizer,
            metrics,
            steps,
        };
        let (text, source) = match text {
            Some(_) => text_of(text, text_name),
            // The text its config records: the built-in one (a file path cannot be read here).
            None => match &saved.data {
                Some(d) if d.source != EMBEDDED_SOURCE => {
                    return Err(refusal(Refusal::conflict(format!(
                        "run {name} was trained on {}, which this tab does not have; open the run again with its text",
                        d.source
                    ))))
                }
                _ => text_of(None, None),
            },
        };
        let info = data_info(&source, &text);
        let mut warnings = Vec::new();
        let run = runs::resume_in_memory(name, &files, &settings, &text, info, &TAB, &mut |w| {
            warnings.push(w.trim_start_matches("warning: ").to_string())
        })
        .map_err(prepare_refusal)?;
        let label = saved
            .preset
            .clone()
            .unwrap_or_else(|| "the run".to_string());
        let mut training = Training::begin(name.to_string(), label, run, Vec::new(), true, shards)?;
        training.started.warnings.splice(0..0, warnings);
        Ok(training)
    }

    fn begin(
        name: String,
        label: String,
        mut run: Run,
        notes: Vec<String>,
        resumed: bool,
        shards: usize,
    ) -> Result<Training, JsValue> {
        let shards = shards.clamp(1, run.trainer.config.batch_size);
        // Moved out and back: a run has no destructor of its own.
        let trainer = run.trainer;
        run.trainer = trainer
            .with_shard_count(shards)
            .map_err(|e| refusal(Refusal::bad_request(e.to_string())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let options = RunOptions {
            out: None,
            stop: Some(stop.clone()),
            stop_at: None,
            exact_eval: true,
            probe: Some(default_probe(
                &run.tokenizer,
                &run.dataset.val,
                run.trainer.model.config.block_size,
                Some(&run.data),
            )),
            samples: Some(label.clone()),
            save_in_memory: true,
        };
        let started = Started {
            name: name.clone(),
            step: run.trainer.step,
            steps: run.trainer.config.steps,
            resumed,
            notes,
            warnings: config::setting_warnings(&run.trainer.config),
        };
        let mut collected = Collected {
            train: Some(run.trainer.config.clone()),
            ..Collected::default()
        };
        collected.events.push(LiveEvent::Start {
            step: run.trainer.step,
            steps: run.trainer.config.steps,
            resumed,
            preset: run.preset.clone(),
            params: run.trainer.model.num_params(),
        });
        let mut training = Training {
            name,
            label,
            run,
            session: None,
            stop,
            started,
            collected,
            pending: None,
            done: false,
            replica_sent: (0, None, None, 0),
        };
        let Training { run, collected, .. } = &mut training;
        let session =
            Session::start(run, options, &mut |e| collected.take(e)).map_err(run_refusal)?;
        training.session = Some(session);
        Ok(training)
    }

    /// What `POST /api/runs` answers: `{name, step, steps, resumed, notes, warnings}`.
    pub fn started(&self) -> String {
        serde_json::to_string(&self.started).unwrap_or_default()
    }

    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Shards of each batch (one per worker, or all on this one).
    pub fn shards(&self) -> usize {
        self.run.trainer.shard_count()
    }

    /// Asks the run to stop after the current step (its checkpoint is saved).
    #[wasm_bindgen(js_name = requestStop)]
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// What comes next: `"step"` (take one: [`Training::step`], or the shards' way), or
    /// `"done"` (finished, stopped or failed; the last events say which).
    pub fn due(&mut self) -> String {
        if self.done {
            return "done".into();
        }
        let Training {
            run,
            session,
            collected,
            ..
        } = self;
        let Some(session) = session.as_mut() else {
            return "done".into();
        };
        match session.next(run, &mut |e| collected.take(e)) {
            Ok(Due::Step) => "step".into(),
            Ok(Due::Done(outcome)) => {
                if let Some(sample) = &outcome.final_sample {
                    let line = final_record(outcome.steps_done, &self.label, sample);
                    collected.samples.push_str(&line);
                }
                let steps = run.trainer.config.steps;
                collected.events.extend(LiveEvent::ended(outcome, steps));
                self.done = true;
                "done".into()
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: RunError) -> String {
        self.collected.events.push(LiveEvent::Error {
            error: page::one_line(&e),
        });
        self.done = true;
        "done".into()
    }

    /// One step with every shard on this worker.
    pub fn step(&mut self) {
        let stats = self.run.trainer.train_step(&self.run.dataset.train);
        self.record(stats);
    }

    /// The first shard of a step whose other shards run in helper workers: draws the batch and
    /// runs shard 0; returns its loss.
    #[wasm_bindgen(js_name = firstShard)]
    pub fn first_shard(&mut self) -> f32 {
        self.run.trainer.draw_batch(&self.run.dataset.train);
        self.run.trainer.shard_pass(0)
    }

    /// Shard `k`'s gradient and loss, from a helper.
    #[wasm_bindgen(js_name = setShard)]
    pub fn set_shard(&mut self, k: usize, grads: &[f32], loss: f32) {
        self.run.trainer.set_shard(k, grads, loss);
    }

    /// Ends the step once every shard is in; returns the summed gradient for the helpers (and
    /// [`Training::loss`] the batch's loss). [`Training::recorded`] then records it.
    #[wasm_bindgen(js_name = endStep)]
    pub fn end_step(&mut self) -> Vec<f32> {
        let stats = self.run.trainer.finish_step();
        self.pending = Some(stats);
        self.run.trainer.gradient().to_vec()
    }

    /// The loss of the step just ended (NaN if it failed).
    pub fn loss(&self) -> f32 {
        match &self.pending {
            Some(Ok(stats)) => stats.loss,
            _ => f32::NAN,
        }
    }

    /// Records the step [`Training::end_step`] ended: its events, and an evaluation if one is
    /// due.
    pub fn recorded(&mut self) {
        if let Some(stats) = self.pending.take() {
            self.record(stats);
        }
    }

    fn record(&mut self, stats: Result<StepStats, TrainError>) {
        let Training {
            run,
            session,
            collected,
            ..
        } = self;
        let Some(session) = session.as_mut() else {
            return;
        };
        if let Err(e) = session.stepped(run, stats, &mut |e| collected.take(e)) {
            self.fail(e);
        }
    }

    /// The page's messages since the last call, as JSON `[[event, data], ...]` (consecutive
    /// steps as one `step` message holding an array, as `chargpt serve` streams them).
    #[wasm_bindgen(js_name = takeEvents)]
    pub fn take_events(&mut self) -> String {
        let events = std::mem::take(&mut self.collected.events);
        let list: Vec<serde_json::Value> = messages(&events, None)
            .into_iter()
            .map(|(name, data)| {
                let data: serde_json::Value = serde_json::from_str(&data).unwrap_or_default();
                serde_json::json!([name, data])
            })
            .collect();
        serde_json::to_string(&list).unwrap_or_default()
    }

    /// Records to append to `samples.txt` and `probes.jsonl` since the last call: `[samples,
    /// probes]`.
    #[wasm_bindgen(js_name = takeRecords)]
    pub fn take_records(&mut self) -> Vec<String> {
        vec![
            std::mem::take(&mut self.collected.samples),
            std::mem::take(&mut self.collected.probes),
        ]
    }

    /// The last checkpoint saved since the last call, as the files' bytes: `[model, config,
    /// optimizer]`, with [`Training::saved_records`] its `metrics.csv` and `steps.csv`.
    #[wasm_bindgen(js_name = takeSaved)]
    pub fn take_saved(&mut self) -> Option<Vec<js_sys::Uint8Array>> {
        let saved = self.collected.saved.as_ref()?;
        Some(vec![
            js_sys::Uint8Array::from(&saved.model[..]),
            js_sys::Uint8Array::from(&saved.config[..]),
            js_sys::Uint8Array::from(&saved.optimizer[..]),
        ])
    }

    /// `[metrics.csv, steps.csv]` of the checkpoint [`Training::take_saved`] gave; clears it.
    #[wasm_bindgen(js_name = savedRecords)]
    pub fn saved_records(&mut self) -> Vec<String> {
        self.collected
            .saved
            .take()
            .map(|s| vec![s.metrics, s.steps])
            .unwrap_or_default()
    }

    /// The parameters of the last evaluation since the last call, for the inspector:
    /// `[config.json, model.safetensors]`.
    #[wasm_bindgen(js_name = takeSnapshot)]
    pub fn take_snapshot(&mut self) -> Option<Vec<js_sys::Uint8Array>> {
        let (config, model) = self.collected.snapshot.take()?;
        Some(vec![
            js_sys::Uint8Array::from(&config[..]),
            js_sys::Uint8Array::from(&model[..]),
        ])
    }

    /// The trainer's state as the files' bytes `[config, model, optimizer]`, for the helpers to
    /// start from ([`Replica::new`]).
    #[wasm_bindgen(js_name = replicaFiles)]
    pub fn replica_files(&mut self) -> Vec<js_sys::Uint8Array> {
        self.replica_sent = settings_key(&self.run.trainer);
        let trainer = &self.run.trainer;
        let mut config =
            CheckpointConfig::new(&trainer.model.config, &self.run.tokenizer, &trainer.config);
        config.step = trainer.step;
        let counters = RunCounters {
            step: trainer.step,
            data_rng_state: trainer.data_rng.state(),
            best_val_loss: None,
            best_val_step: None,
            elapsed_s: 0.0,
        };
        vec![
            js_sys::Uint8Array::from(&checkpoint::config_bytes(&config)[..]),
            js_sys::Uint8Array::from(&checkpoint::model_bytes(&trainer.model, trainer.step)[..]),
            js_sys::Uint8Array::from(
                &checkpoint::optimizer_bytes(&trainer.model.layout, &trainer.optimizer, &counters)
                    [..],
            ),
        ]
    }

    /// The settings the helpers follow (the training config and the model's dropout), when they
    /// changed since the helpers started ([`Training::replica_files`]) or last got them; the
    /// leader sends them after a step's record, before the next step ([`Replica::follow`]).
    #[wasm_bindgen(js_name = replicaSettings)]
    pub fn replica_settings(&mut self) -> Option<String> {
        let trainer = &self.run.trainer;
        let now = settings_key(trainer);
        (now != self.replica_sent).then(|| {
            self.replica_sent = now;
            serde_json::json!({ "dropout": trainer.model.config.dropout, "train": &trainer.config })
                .to_string()
        })
    }

    /// The train split's ids, for the helpers to draw the same batches from.
    #[wasm_bindgen(js_name = trainTokens)]
    pub fn train_tokens(&self) -> Vec<TokenId> {
        self.run.dataset.train.clone()
    }
}

/// A helper worker's copy of the leader's trainer: it runs its shard of each step and applies
/// the leader's summed gradient.
#[wasm_bindgen]
pub struct Replica {
    trainer: Trainer,
    train: Vec<TokenId>,
}

#[wasm_bindgen]
impl Replica {
    /// The trainer the leader's [`Training::replica_files`] describe, its batches split into
    /// `shards` parts.
    #[wasm_bindgen(constructor)]
    pub fn new(
        config: &[u8],
        model: &[u8],
        optimizer: &[u8],
        train: Vec<TokenId>,
        shards: usize,
    ) -> Result<Replica, JsValue> {
        let conflict = |e: &dyn std::error::Error| refusal(Refusal::conflict(page::one_line(e)));
        let ckpt = checkpoint::from_bytes(config, model).map_err(|e| conflict(&e))?;
        let state = checkpoint::optimizer_from_bytes(optimizer, &ckpt.model.layout)
            .map_err(|e| conflict(&e))?;
        let mut trainer =
            Trainer::try_with_shards_on(ckpt.model, ckpt.config.train, shards, Engine::Fast)
                .map_err(|e| conflict(&e))?;
        trainer.optimizer = state.adamw;
        trainer.data_rng = chargpt::rng::Rng::from_state(state.counters.data_rng_state);
        trainer.step = state.counters.step;
        Ok(Replica { trainer, train })
    }

    /// Draws the step's batch and runs shard `k` of it; returns its loss.
    pub fn pass(&mut self, k: usize) -> f32 {
        self.trainer.draw_batch(&self.train);
        self.trainer.shard_pass(k)
    }

    /// Shard `k`'s gradient, as [`Replica::pass`] left it.
    pub fn gradient(&self, k: usize) -> Vec<f32> {
        self.trainer.shard_gradient(k).to_vec()
    }

    /// Takes the leader's settings ([`Training::replica_settings`]) for the following steps.
    pub fn follow(&mut self, settings: &str) -> Result<(), JsValue> {
        let bad = |e: &dyn std::fmt::Display| refusal(Refusal::conflict(e.to_string()));
        let value: serde_json::Value = serde_json::from_str(settings).map_err(|e| bad(&e))?;
        let train: TrainConfig =
            serde_json::from_value(value["train"].clone()).map_err(|e| bad(&e))?;
        let dropout = value["dropout"]
            .as_f64()
            .ok_or_else(|| bad(&"the leader's settings have no dropout"))?
            as f32;
        self.trainer.config = train;
        if dropout != self.trainer.model.config.dropout {
            self.trainer.set_dropout(dropout).map_err(|e| bad(&e))?;
        }
        Ok(())
    }

    /// Takes the step the leader ended: its summed gradient and the batch's loss.
    pub fn apply(&mut self, sum: &[f32], loss: f32) -> Result<(), JsValue> {
        self.trainer
            .apply_sum(sum, loss)
            .map(|_| ())
            .map_err(|e| refusal(Refusal::bad_request(e.to_string())))
    }
}
