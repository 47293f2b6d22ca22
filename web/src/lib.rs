//! The page's back end in a browser tab: chargpt's library compiled to WebAssembly, called from
//! the page's Web Workers (`assets/web/tab/`). It adds no training or inspection of its own:
//! a run goes through the library's run loop ([`chargpt::runs::Session`]), every answer
//! through [`chargpt::page`], exactly as `chargpt serve` answers them.
//!
//! - [`Training`]: the leader worker's run (a new run, a fine-tune or a resume, all in memory),
//!   stepped by the worker, with its events and its saves (the files' bytes) to collect.
//! - [`Replica`]: a helper worker's copy of the trainer, which computes one shard of each step
//!   and applies the summed gradient the leader sends back, so that N workers take the same
//!   steps, bit for bit, as one worker with N shards.
//! - [`Inspector`]: the inspector worker's models, answering the `inspect/*` endpoints and
//!   drawing samples.
//!
//! A refusal reaches JavaScript as a thrown string of JSON `{"error", "field", "status"}`.

mod inspector;
mod training;

pub use inspector::Inspector;
pub use training::{Replica, Training};

use chargpt::page::{self, Refusal};
use chargpt::runs::{PrepareError, Wording};
use wasm_bindgen::prelude::*;

/// The "what to do" clauses of the library's refusals, in the tab's words.
pub(crate) const TAB: Wording = Wording {
    change_setting: "change it in the settings",
    keep_shape: "a resumed run keeps its model: change training settings only",
    another_out: "choose another name",
    existing: "resume it, or choose another name, or delete it first",
    nothing_to_resume: "start it as a new run",
    give_text: "open the run again with its text",
};

/// A refusal as JavaScript receives it.
pub(crate) fn refusal(r: Refusal) -> JsValue {
    JsValue::from_str(&refusal_json(r))
}

fn refusal_json(r: Refusal) -> String {
    let mut body = r.to_json();
    body["status"] = r.status.code().into();
    body.to_string()
}

/// The refusals of the tab's own runs directory (IndexedDB), in `chargpt serve`'s words:
/// `kind` is one of `no-such-run`, `no-checkpoint`, `exists`, `training`, `not-training`,
/// `delete-training`.
#[wasm_bindgen]
pub fn refused(kind: &str, name: &str) -> String {
    refusal_json(match kind {
        "no-such-run" => page::no_such_run(name),
        "no-checkpoint" => page::no_checkpoint_yet(name),
        "exists" => Refusal::conflict(format!("run {name} already exists; {}", TAB.existing))
            .with_field("name"),
        "training" => Refusal::conflict(format!("run {name} is already training; stop it first")),
        "not-training" => Refusal::conflict(format!(
            "run {name} is not training; resume it to train it further"
        )),
        "delete-training" => Refusal::conflict(format!(
            "run {name} is training; stop it before deleting it"
        )),
        other => Refusal::bad_request(other.to_string()),
    })
}

pub(crate) fn prepare_refusal(e: PrepareError) -> JsValue {
    refusal(Refusal::from_prepare(e))
}

pub(crate) fn json(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|_| "null".into())
}

/// `GET /api/presets`.
#[wasm_bindgen]
pub fn presets() -> String {
    page::presets().to_string()
}

/// `GET /api/presets/NAME/model`.
#[wasm_bindgen(js_name = presetModel)]
pub fn preset_model(name: &str) -> Result<String, JsValue> {
    page::inspect::preset_model(name).map(json).map_err(refusal)
}

/// Refuses a run name the server would refuse.
#[wasm_bindgen(js_name = checkName)]
pub fn check_name(name: &str) -> Result<(), JsValue> {
    page::check_name(name).map_err(refusal)
}

/// `POST /api/uploads`: the checks (UTF-8, not empty, at most 32 MiB) and the answer; the page
/// keeps the text.
#[wasm_bindgen(js_name = checkUpload)]
pub fn check_upload(bytes: Vec<u8>, filename: Option<String>) -> Result<String, JsValue> {
    let filename = page::upload_filename(filename.as_deref());
    let upload = page::check_upload(bytes, &filename).map_err(refusal)?;
    Ok(serde_json::to_string(&upload).unwrap_or_default())
}

/// The built-in Tiny Shakespeare (the site needs no other download).
#[wasm_bindgen(js_name = tinyShakespeare)]
pub fn tiny_shakespeare() -> String {
    chargpt::data::TINY_SHAKESPEARE.to_string()
}

/// A run's line in `GET /api/runs`, from its saved `config.json` (none before its first
/// checkpoint), its last step and last val estimate, and whether it trains now.
#[wasm_bindgen]
pub fn summary(
    name: &str,
    config: Option<Vec<u8>>,
    last_step: Option<usize>,
    last_val_loss: Option<f32>,
    training: bool,
) -> String {
    let (config, problem) = match config
        .map(|c| chargpt::checkpoint::parse_config(&c, chargpt::checkpoint::CONFIG_FILE))
    {
        Some(Ok(c)) => (Some(c), None),
        Some(Err(e)) => (None, Some(e.to_string())),
        None => (None, None),
    };
    let mut s =
        chargpt::runs::summary_of(name, config.as_ref(), last_step, last_val_loss, training);
    s.problem = problem;
    serde_json::to_string(&s).unwrap_or_default()
}

/// `GET /api/runs/NAME/metrics` from a run's records: `metrics.csv`, `steps.csv`, `samples.txt`.
#[wasm_bindgen]
pub fn history(metrics: &str, steps: &str, samples: &str) -> String {
    let steps = chargpt::runs::parse_steps(steps);
    let history = page::History::new(
        chargpt::runs::parse_metrics(metrics),
        &steps,
        chargpt::runs::parse_samples(samples),
    );
    serde_json::to_string(&history).unwrap_or_default()
}

/// `GET /api/runs/NAME/inspect/model` from a run's `config.json` and `probes.jsonl`.
#[wasm_bindgen(js_name = modelDiagram)]
pub fn model_diagram(name: &str, config: &[u8], probes: &str) -> Result<String, JsValue> {
    let config = chargpt::checkpoint::parse_config(config, chargpt::checkpoint::CONFIG_FILE)
        .map_err(|e| refusal(Refusal::conflict(page::one_line(&e))))?;
    let prompt = chargpt::runs::parse_probes(probes)
        .into_iter()
        .next()
        .map(|r| r.probe);
    Ok(json(page::inspect::model_diagram(
        name,
        config.preset.clone(),
        config.model,
        prompt,
    )))
}

/// `GET /api/runs/NAME/probes?after=STEP` from a run's `config.json` and `probes.jsonl`.
#[wasm_bindgen]
pub fn probes(
    name: &str,
    config: &[u8],
    probes: &str,
    after: Option<usize>,
) -> Result<String, JsValue> {
    let config = chargpt::checkpoint::parse_config(config, chargpt::checkpoint::CONFIG_FILE)
        .map_err(|e| refusal(Refusal::conflict(page::one_line(&e))))?;
    let records = chargpt::runs::parse_probes(probes);
    Ok(json(page::inspect::probes(
        name,
        config.vocab,
        records,
        after,
    )))
}

/// A run's `samples.txt` and `probes.jsonl` kept up to the evaluation of step `last` (a resumed
/// run evaluates the steps after its checkpoint again): `[samples, probes]`.
#[wasm_bindgen(js_name = recordsThrough)]
pub fn records_through(samples: &str, probes: &str, last: usize) -> Vec<String> {
    let samples: String = chargpt::runs::parse_samples(samples)
        .iter()
        .filter(|s| s.step <= last)
        .map(|s| chargpt::runs::sample_record(s.step, s.val_loss, &s.text))
        .collect();
    let probes: String = chargpt::runs::parse_probes(probes)
        .iter()
        .filter(|r| r.step <= last)
        .filter_map(|r| chargpt::runs::probe_line(r).ok())
        .collect();
    vec![samples, probes]
}

/// What the engine was built with: whether its vector code uses WebAssembly's SIMD128.
#[wasm_bindgen]
pub fn simd128() -> bool {
    cfg!(target_feature = "simd128")
}

/// The bytes this module's memory holds now (it only grows).
#[wasm_bindgen(js_name = memoryBytes)]
pub fn memory_bytes() -> f64 {
    chargpt::memory::peak_resident().unwrap_or(0) as f64
}

/// Checks a run directory's `config.json` and `model.safetensors` opened in the page: the
/// refusal a broken or mismatched pair gets natively, or nothing.
#[wasm_bindgen(js_name = checkCheckpoint)]
pub fn check_checkpoint(config: &[u8], model: &[u8]) -> Result<(), JsValue> {
    chargpt::checkpoint::from_bytes(config, model)
        .map(|_| ())
        .map_err(|e| refusal(Refusal::bad_request(page::one_line(&e))))
}
