//! Looking inside a run's model from the page: the endpoints under `/api/runs/NAME/inspect/`
//! (next-character distribution, attention, surprise, embeddings, one head step by step, the
//! model's parts), `/api/runs/NAME/probes` (what every evaluation did on the probe text, for the
//! replay) and `/api/presets/NAME/model`. The numbers come from [`chargpt::inspect`]; this module
//! only picks the model, checks the request and shapes the JSON.
//!
//! Which model: a run this server trains is looked at through its parameters at its last
//! evaluation (a copy the training thread makes then, [`super::live::Snapshot`]); any other run
//! through its checkpoint, loaded once and kept while its files do not change (a few, most
//! recent first).
//!
//! Inspections never run on the thread that serves the requests: each runs on a blocking thread,
//! with its kernels on that thread alone (`kernels::sequentially`), one at a time (a semaphore),
//! so that the page stays responsive and a training beside it keeps its cores.

use super::error::{one_line, ApiError, ApiResult};
use super::live::Snapshot;
use super::request::{blocking, no_such_run, parse_json, run_dir, RunName};
use super::{lock, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chargpt::checkpoint::{self, Checkpoint};
use chargpt::config::ModelConfig;
use chargpt::page::inspect::{self as answers, Looked, RunText};
use chargpt::page::inspect::{HeadRequest, NextRequest, PromptRequest, SurpriseRequest};
use chargpt::page::{self};
use serde::Deserialize;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

/// Checkpoints kept loaded.
const CACHED_MODELS: usize = 3;

type Shared = State<Arc<AppState>>;

/// The inspections' share of the server: one at a time, and the checkpoints last looked at.
pub struct Inspector {
    permit: Arc<tokio::sync::Semaphore>,
    cache: Mutex<Vec<Cached>>,
}

impl Default for Inspector {
    fn default() -> Self {
        Inspector {
            permit: Arc::new(tokio::sync::Semaphore::new(1)),
            cache: Mutex::new(Vec::new()),
        }
    }
}

/// When a checkpoint's files were last written, and how long they are: a change means a new save.
type Stamp = Vec<(Option<SystemTime>, u64)>;

struct Cached {
    name: String,
    stamp: Stamp,
    checkpoint: Arc<Saved>,
}

/// A loaded checkpoint, and its embeddings' answer once computed (a few tens of milliseconds
/// of principal components that do not change until the next save).
pub struct Saved {
    checkpoint: Checkpoint,
    embeddings: OnceLock<Vec<u8>>,
}

fn stamp(dir: &std::path::Path) -> Stamp {
    [checkpoint::CONFIG_FILE, checkpoint::MODEL_FILE]
        .iter()
        .map(|f| match std::fs::metadata(dir.join(f)) {
            Ok(m) => (m.modified().ok(), m.len()),
            Err(_) => (None, 0),
        })
        .collect()
}

/// The model being looked at.
enum Subject {
    Live(Arc<Snapshot>),
    Saved(Arc<Saved>),
}

impl Subject {
    /// The model as the library's answers look at it.
    fn looked<'a>(&'a self, run: &'a str) -> Looked<'a> {
        match self {
            Subject::Live(s) => Looked {
                run,
                model: &s.model,
                tokenizer: &s.tokenizer,
                step: s.step,
                live: true,
                text: RunText::Recorded(Some(&s.data)),
                final_val_loss: None,
            },
            Subject::Saved(c) => Looked {
                run,
                model: &c.checkpoint.model,
                tokenizer: &c.checkpoint.tokenizer,
                step: c.checkpoint.config.step,
                live: false,
                text: RunText::Recorded(c.checkpoint.config.data.as_ref()),
                final_val_loss: c.checkpoint.config.final_val_loss,
            },
        }
    }

    /// Where the embeddings' answer is kept for these parameters.
    fn embeddings_memo(&self) -> &OnceLock<Vec<u8>> {
        match self {
            Subject::Live(s) => &s.embeddings,
            Subject::Saved(c) => &c.embeddings,
        }
    }
}

/// Run `name`'s checkpoint, from the cache while its files have not changed.
fn saved(state: &AppState, name: &str) -> ApiResult<Arc<Saved>> {
    let dir = run_dir(state, name);
    if !dir.is_dir() {
        return Err(no_such_run(name));
    }
    if !checkpoint::exists(&dir) {
        return Err(page::no_checkpoint_yet(name).into());
    }
    let now = stamp(&dir);
    {
        let mut cache = lock(&state.inspector.cache);
        if let Some(i) = cache.iter().position(|c| c.name == name && c.stamp == now) {
            let hit = cache.remove(i);
            let checkpoint = hit.checkpoint.clone();
            cache.insert(0, hit);
            return Ok(checkpoint);
        }
    }
    let loaded = Arc::new(Saved {
        checkpoint: checkpoint::load(&dir).map_err(|e| ApiError::conflict(one_line(&e)))?,
        embeddings: OnceLock::new(),
    });
    let mut cache = lock(&state.inspector.cache);
    cache.retain(|c| c.name != name);
    cache.insert(
        0,
        Cached {
            name: name.to_string(),
            stamp: now,
            checkpoint: loaded.clone(),
        },
    );
    cache.truncate(CACHED_MODELS);
    Ok(loaded)
}

/// Runs `work` on run `name`'s model, off the server's thread, alone, on one core; answers
/// the JSON it returns, with the time the work took in a `Server-Timing` header.
async fn inspect_run(
    state: Arc<AppState>,
    name: String,
    work: impl FnOnce(&Subject) -> ApiResult<Vec<u8>> + Send + 'static,
) -> ApiResult<Response> {
    let live = state.live_run(&name).and_then(|l| l.snapshot());
    let permit = state
        .inspector
        .permit
        .clone()
        .acquire_owned()
        .await
        .map_err(|_| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is stopping"))?;
    let (bytes, took) = blocking(move || -> ApiResult<(Vec<u8>, f64)> {
        // Held until the work is done, even if the client has gone.
        let _permit = permit;
        let started = Instant::now();
        chargpt::runtime::flush_subnormals();
        let subject = match live {
            Some(snapshot) => Subject::Live(snapshot),
            None => Subject::Saved(saved(&state, &name)?),
        };
        let bytes = chargpt::kernels::sequentially(|| work(&subject))?;
        Ok((bytes, started.elapsed().as_secs_f64() * 1000.0))
    })
    .await??;
    Ok(json_bytes(bytes, Some(took)))
}

fn json_bytes(bytes: Vec<u8>, took_ms: Option<f64>) -> Response {
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response();
    if let Some(ms) = took_ms {
        if let Ok(value) = format!("inspect;dur={ms:.2}").parse() {
            response.headers_mut().insert("server-timing", value);
        }
    }
    response
}

// ---- the handlers: the library answers (chargpt::page::inspect) ----

/// `POST /api/runs/NAME/inspect/next`: the distribution of the character after the prompt.
pub async fn next(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: NextRequest = parse_json(body)?;
    request.check()?;
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        Ok(answers::next(&subject.looked(&run), &request)?)
    })
    .await
}

/// `POST /api/runs/NAME/inspect/attention`: every head's weights over the prompt.
pub async fn attention(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: PromptRequest = parse_json(body)?;
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        Ok(answers::attention(&subject.looked(&run), &request)?)
    })
    .await
}

/// `POST /api/runs/NAME/inspect/surprise`: each character's loss over a text, as `chargpt eval`
/// scores it.
pub async fn surprise(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: SurpriseRequest = parse_json(body)?;
    request.check()?;
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        Ok(answers::surprise(&subject.looked(&run), &request)?)
    })
    .await
}

/// `GET /api/runs/NAME/inspect/embeddings`: the characters on the first two principal components
/// of the token embeddings, and the position embeddings' cosine similarities.
pub async fn embeddings(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        if let Some(done) = subject.embeddings_memo().get() {
            return Ok(done.clone());
        }
        let bytes = answers::embeddings(&subject.looked(&run))?;
        Ok(subject.embeddings_memo().get_or_init(|| bytes).clone())
    })
    .await
}

/// `POST /api/runs/NAME/inspect/head`: every number head `head` of layer `layer` computes for
/// query `position`, in order, and the forward pass's own weights and output to compare.
pub async fn head(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: HeadRequest = parse_json(body)?;
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        Ok(answers::head(&subject.looked(&run), &request)?)
    })
    .await
}

/// `GET /api/runs/NAME/inspect/model`: the run's model as a diagram of its parts.
pub async fn run_model(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    let live = state
        .live_run(&name)
        .and_then(|l| l.snapshot())
        .map(|s| s.model.config.clone());
    let (s, n) = (state.clone(), name.clone());
    type Found = (ModelConfig, Option<String>, Option<String>);
    let (config, preset, prompt) = blocking(move || -> ApiResult<Found> {
        let dir = run_dir(&s, &n);
        let saved = checkpoint::load_config(&dir);
        let preset = saved.as_ref().ok().and_then(|c| c.preset.clone());
        let prompt = chargpt::runs::first_probe(&dir.join(chargpt::runs::PROBES_FILE));
        match (live, saved) {
            (Some(config), _) => Ok((config, preset, prompt)),
            (None, Ok(c)) => Ok((c.model, preset, prompt)),
            (None, Err(_)) if !dir.is_dir() => Err(no_such_run(&n)),
            (None, Err(e)) => Err(ApiError::conflict(one_line(&e))),
        }
    })
    .await??;
    let body = answers::model_diagram(&name, preset, config, prompt);
    Ok(json_bytes(body, None))
}

/// `GET /api/presets/NAME/model`: a preset's model (for 65 characters) as a diagram.
pub async fn preset_model(Path(name): Path<String>) -> ApiResult<Response> {
    Ok(json_bytes(answers::preset_model(&name)?, None))
}

#[derive(Deserialize)]
pub struct ProbesQuery {
    /// Only the records of evaluations after this step.
    after: Option<usize>,
}

/// `GET /api/runs/NAME/probes?after=STEP`: what the model of every evaluation did on the run's
/// probe text (`probes.jsonl`), and the vocabulary its ids index.
pub async fn probes(
    State(state): Shared,
    RunName(name): RunName,
    query: Result<Query<ProbesQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    let live_vocab = state
        .live_run(&name)
        .and_then(|l| l.snapshot())
        .map(|s| answers::vocab(&s.tokenizer));
    let (s, n) = (state.clone(), name.clone());
    let body = blocking(move || -> ApiResult<Vec<u8>> {
        let dir = run_dir(&s, &n);
        if !dir.is_dir() {
            return Err(no_such_run(&n));
        }
        let vocab = match live_vocab {
            Some(v) => v,
            None => checkpoint::load_config(&dir)
                .map(|c| c.vocab)
                .map_err(|_| ApiError::from(page::no_checkpoint_yet(&n)))?,
        };
        let records = chargpt::runs::read_probes(&dir.join(chargpt::runs::PROBES_FILE));
        Ok(answers::probes(&n, vocab, records, query.after))
    })
    .await??;
    Ok(json_bytes(body, None))
}
