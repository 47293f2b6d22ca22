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
use super::request::{blocking, check_sample_settings, no_such_run, parse_json, run_dir, RunName};
use super::{lock, AppState};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use chargpt::checkpoint::{self, Checkpoint, DataInfo};
use chargpt::config::{self, Architecture, AttentionScale, ModelConfig, NormKind, Position};
use chargpt::inspect::{self, InspectError};
use chargpt::model::Model;
use chargpt::sampling::{self, SampleSettings};
use chargpt::tokenizer::{TokenId, Tokenizer};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

/// The most characters the surprise view scores at once (its text may have one more: the first
/// character, which nothing predicts).
pub const MAX_SURPRISE: usize = 4096;
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
    fn model(&self) -> &Model {
        match self {
            Subject::Live(s) => &s.model,
            Subject::Saved(c) => &c.checkpoint.model,
        }
    }
    fn tokenizer(&self) -> &Tokenizer {
        match self {
            Subject::Live(s) => &s.tokenizer,
            Subject::Saved(c) => &c.checkpoint.tokenizer,
        }
    }
    fn step(&self) -> usize {
        match self {
            Subject::Live(s) => s.step,
            Subject::Saved(c) => c.checkpoint.config.step,
        }
    }
    fn data(&self) -> Option<&DataInfo> {
        match self {
            Subject::Live(s) => Some(&s.data),
            Subject::Saved(c) => c.checkpoint.config.data.as_ref(),
        }
    }
    fn final_val_loss(&self) -> Option<f64> {
        match self {
            Subject::Live(_) => None,
            Subject::Saved(c) => c.checkpoint.config.final_val_loss,
        }
    }
    /// Where the embeddings' answer is kept for these parameters.
    fn embeddings_memo(&self) -> &OnceLock<Vec<u8>> {
        match self {
            Subject::Live(s) => &s.embeddings,
            Subject::Saved(c) => &c.embeddings,
        }
    }
    /// What every answer says about the model it looked at.
    fn about(&self, run: &str) -> About {
        About {
            run: run.to_string(),
            step: self.step(),
            live: matches!(self, Subject::Live(_)),
        }
    }
}

#[derive(Serialize)]
struct About {
    run: String,
    /// The step of the parameters looked at.
    step: usize,
    /// Whether they are a training's live parameters (at its last evaluation) rather than its
    /// checkpoint.
    live: bool,
}

/// Run `name`'s checkpoint, from the cache while its files have not changed.
fn saved(state: &AppState, name: &str) -> ApiResult<Arc<Saved>> {
    let dir = run_dir(state, name);
    if !dir.is_dir() {
        return Err(no_such_run(name));
    }
    if !checkpoint::exists(&dir) {
        return Err(ApiError::conflict(format!(
            "run {name} has no checkpoint yet: a run saves at its first evaluation that improves; try again in a moment"
        )));
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

fn to_json(value: &impl Serialize) -> ApiResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot write the answer as JSON: {e}"),
        )
    })
}

/// A refusal of the library, about the request field it concerns.
fn refused(e: InspectError) -> ApiError {
    let field = match &e {
        InspectError::EmptyText => "prompt",
        InspectError::Position { .. } => "position",
        InspectError::Layer { .. } => "layer",
        InspectError::Head { .. } => "head",
        InspectError::TooShort { .. } => "text",
        InspectError::NoAttention => return ApiError::bad_request(e.to_string()),
    };
    let message = match e {
        InspectError::EmptyText => {
            "the prompt is empty; give at least one character, e.g. \"ROMEO:\"".to_string()
        }
        other => other.to_string(),
    };
    ApiError::bad_request(message).with_field(field)
}

/// The prompt's ids (at least one; characters the model lacks refused in the command line's
/// words), and how many are cut from its front (it keeps its last `block_size`).
fn prompt_ids(subject: &Subject, prompt: &str) -> ApiResult<(Vec<TokenId>, usize)> {
    if prompt.is_empty() {
        return Err(refused(InspectError::EmptyText));
    }
    check_sample_settings(1.0, None, prompt)?;
    let ids = sampling::encode_prompt(subject.tokenizer(), prompt)
        .map_err(|e| ApiError::bad_request(one_line(&e)).with_field("prompt"))?;
    let dropped = inspect::visible(subject.model(), &ids);
    Ok((ids, dropped))
}

/// The characters of `ids`, one string each.
fn chars(tokenizer: &Tokenizer, ids: &[TokenId]) -> Vec<String> {
    ids.iter()
        .map(|&id| {
            tokenizer
                .decode_one(id)
                .map(String::from)
                .unwrap_or_default()
        })
        .collect()
}

fn vocab(tokenizer: &Tokenizer) -> Vec<String> {
    tokenizer.chars().iter().map(char::to_string).collect()
}

fn one() -> f32 {
    1.0
}

// ---- next character ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NextRequest {
    #[serde(default)]
    prompt: String,
    #[serde(default = "one")]
    temperature: f32,
    #[serde(default)]
    top_k: Option<usize>,
}

/// `POST /api/runs/NAME/inspect/next`: the distribution of the character after the prompt.
pub async fn next(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: NextRequest = parse_json(body)?;
    check_sample_settings(request.temperature, request.top_k, &request.prompt)?;
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        let (ids, dropped) = prompt_ids(subject, &request.prompt)?;
        let model = subject.model();
        let logits = inspect::next_char_logits(model, &ids).map_err(refused)?;
        let v = model.config.vocab_size;
        let last = logits[logits.len() - v..].to_vec();
        let settings = SampleSettings {
            temperature: request.temperature,
            top_k: request.top_k,
        };
        let mut probs = Vec::with_capacity(v);
        sampling::distribution(&last, settings, &mut probs);
        #[derive(Serialize)]
        struct Next {
            #[serde(flatten)]
            about: About,
            block_size: usize,
            dropped: usize,
            tokens: Vec<String>,
            vocab: Vec<String>,
            temperature: f32,
            top_k: Option<usize>,
            logits: Vec<f32>,
            probs: Vec<f32>,
        }
        to_json(&Next {
            about: subject.about(&run),
            block_size: model.config.block_size,
            dropped,
            tokens: chars(subject.tokenizer(), &ids[dropped..]),
            vocab: vocab(subject.tokenizer()),
            temperature: request.temperature,
            top_k: request.top_k,
            logits: last,
            probs,
        })
    })
    .await
}

// ---- attention ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptRequest {
    #[serde(default)]
    prompt: String,
}

/// A head's summary, as `chargpt attention` prints it.
#[derive(Serialize)]
struct HeadSummary {
    look_back: f64,
    itself: f64,
    previous: f64,
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
        if subject.model().config.architecture == Architecture::Bigram {
            return Err(refused(InspectError::NoAttention));
        }
        let (ids, dropped) = prompt_ids(subject, &request.prompt)?;
        let att = inspect::attention(subject.model(), &ids).map_err(refused)?;
        let t_n = att.len;
        let weights: Vec<Vec<Vec<&[f32]>>> = (0..att.n_layer)
            .map(|l| {
                (0..att.n_head)
                    .map(|h| {
                        let map = att.map(l, h);
                        (0..t_n).map(|t| &map[t * t_n..t * t_n + t + 1]).collect()
                    })
                    .collect()
            })
            .collect();
        let heads: Vec<Vec<HeadSummary>> = (0..att.n_layer)
            .map(|l| {
                (0..att.n_head)
                    .map(|h| {
                        let s = att.summary(l, h);
                        HeadSummary {
                            look_back: s.look_back,
                            itself: s.itself,
                            previous: s.previous,
                        }
                    })
                    .collect()
            })
            .collect();
        #[derive(Serialize)]
        struct Maps<'a> {
            #[serde(flatten)]
            about: About,
            dropped: usize,
            tokens: Vec<String>,
            n_layer: usize,
            n_head: usize,
            len: usize,
            /// `weights[l][h][t]`: the t + 1 weights query t gives keys 0..=t (the rest is the
            /// causal mask's 0).
            weights: Vec<Vec<Vec<&'a [f32]>>>,
            heads: Vec<Vec<HeadSummary>>,
        }
        to_json(&Maps {
            about: subject.about(&run),
            dropped,
            tokens: chars(subject.tokenizer(), &ids[dropped..]),
            n_layer: att.n_layer,
            n_head: att.n_head,
            len: t_n,
            weights,
            heads,
        })
    })
    .await
}

// ---- surprise ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SurpriseRequest {
    /// A text to score; without one, an excerpt of the run's val split.
    #[serde(default)]
    text: Option<String>,
    /// Where the excerpt starts in the val split (characters).
    #[serde(default)]
    offset: usize,
    /// How many windows of `block_size` the excerpt covers.
    #[serde(default)]
    windows: Option<usize>,
}

/// `POST /api/runs/NAME/inspect/surprise`: each character's loss over a text, as `chargpt eval`
/// scores it.
pub async fn surprise(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: SurpriseRequest = parse_json(body)?;
    if request.windows == Some(0) {
        return Err(
            ApiError::bad_request("windows must be at least 1; leave it out for 2")
                .with_field("windows"),
        );
    }
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        let model = subject.model();
        let block = model.config.block_size;
        let most_windows = (MAX_SURPRISE / block).max(1);
        let (text, source, val_chars): (Vec<char>, &str, Option<usize>) = match &request.text {
            Some(text) => {
                let unknown = subject.tokenizer().unknown_chars(text);
                if !unknown.is_empty() {
                    return Err(ApiError::bad_request(format!(
                        "the text has {} character{} that the model's vocabulary lacks: {}; use only characters of the text it was trained on",
                        unknown.len(),
                        if unknown.len() == 1 { "" } else { "s" },
                        chargpt::data::list_chars(&unknown, 20)
                    ))
                    .with_field("text"));
                }
                let chars: Vec<char> = text.chars().collect();
                let most = most_windows * block + 1;
                if chars.len() > most {
                    return Err(ApiError::bad_request(format!(
                        "the text has {} characters; the surprise view scores at most {most} at once ({most_windows} windows of {block}); paste a shorter text",
                        chars.len()
                    ))
                    .with_field("text"));
                }
                (chars, "text", None)
            }
            None => {
                let (all, _) = chargpt::runs::load_recorded_text(
                    subject.data(),
                    "put the text back there, or paste a text instead",
                )
                .map_err(|e| ApiError::conflict(one_line(&e)))?;
                // The val split as training cuts it (one token per character).
                let n = all.chars().count();
                let val: Vec<char> = all.chars().skip(chargpt::data::train_len(n)).collect();
                let windows = request.windows.unwrap_or(2).min(most_windows);
                let room = chargpt::data::window_count(val.len().saturating_sub(request.offset), block);
                if room == 0 {
                    return Err(ApiError::bad_request(format!(
                        "offset {} leaves too little of the val split ({} characters) for a window of {block} and the character after it; use an offset up to {}",
                        request.offset,
                        val.len(),
                        val.len().saturating_sub(block + 1)
                    ))
                    .with_field("offset"));
                }
                let len = windows.min(room) * block + 1;
                let excerpt = val[request.offset..request.offset + len].to_vec();
                (excerpt, "val", Some(val.len()))
            }
        };
        let as_text: String = text.iter().collect();
        let ids = subject
            .tokenizer()
            .encode(&as_text)
            .map_err(|e| ApiError::bad_request(one_line(&e)).with_field("text"))?;
        let s = inspect::surprise(model, &ids).map_err(refused)?;
        let used = s.scored.last().map_or(0, |&i| i + 1);
        let tokenizer = subject.tokenizer();
        let top: Vec<Vec<(String, f32)>> = s
            .top
            .iter()
            .map(|best| {
                best.iter()
                    .map(|&(id, p)| (chars(tokenizer, &[id]).concat(), p))
                    .collect()
            })
            .collect();
        #[derive(Serialize)]
        struct Scored {
            #[serde(flatten)]
            about: About,
            /// "val" (an excerpt of the run's val split) or "text" (the text sent).
            source: &'static str,
            offset: usize,
            val_chars: Option<usize>,
            /// The characters scored, with the first (which nothing predicts) in front.
            text: String,
            /// Characters left out at the end (a partial window).
            cut: usize,
            block_size: usize,
            windows: usize,
            /// `losses[i]`, `probs[i]` and `top[i]` belong to `text`'s character i + 1.
            losses: Vec<f32>,
            probs: Vec<f32>,
            top: Vec<Vec<(String, f32)>>,
            mean: f64,
            /// The exact val loss of the whole split, when the checkpoint has it.
            final_val_loss: Option<f64>,
            /// Characters in the vocabulary: `ln vocab_size` is the loss of a uniform guess.
            vocab_size: usize,
        }
        to_json(&Scored {
            vocab_size: model.config.vocab_size,
            about: subject.about(&run),
            source,
            offset: if source == "val" { request.offset } else { 0 },
            val_chars,
            text: text[..used].iter().collect(),
            cut: text.len() - used,
            block_size: block,
            windows: s.losses.len() / block,
            mean: s.mean(),
            losses: s.losses,
            probs: s.probs,
            top,
            final_val_loss: subject.final_val_loss(),
        })
    })
    .await
}

// ---- embeddings ----

/// `GET /api/runs/NAME/inspect/embeddings`: the characters on the first two principal components
/// of the token embeddings, and the position embeddings' cosine similarities.
pub async fn embeddings(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    let run = name.clone();
    inspect_run(state, name, move |subject| {
        if let Some(done) = subject.embeddings_memo().get() {
            return Ok(done.clone());
        }
        let model = subject.model();
        let map = inspect::embeddings(model);
        #[derive(Serialize)]
        struct Embeddings {
            #[serde(flatten)]
            about: About,
            vocab: Vec<String>,
            /// `points[i]`: character i on the two components.
            points: Vec<[f32; 2]>,
            explained: [f32; 2],
            block_size: usize,
            /// (T, T) row-major, to 4 decimals; null without learned position embeddings.
            position_cosine: Option<Vec<f32>>,
            /// How the model knows positions: "learned" (position_embedding.weight), "rope"
            /// (rotated queries and keys, no table) or "none" (a bigram).
            positions: &'static str,
            /// Whether lm_head reuses the token embeddings (`tie_embeddings`).
            tied: bool,
            /// How often each character occurs in the run's text (none if the text cannot be
            /// read): a character seen a handful of times barely moves from where it started.
            counts: Option<Vec<usize>>,
        }
        let counts = chargpt::runs::load_recorded_text(subject.data(), "")
            .ok()
            .map(|(text, _)| {
                let tokenizer = subject.tokenizer();
                let mut counts = vec![0usize; model.config.vocab_size];
                for c in text.chars() {
                    if let Some(id) = tokenizer.id(c) {
                        counts[id as usize] += 1;
                    }
                }
                counts
            });
        to_json(&Embeddings {
            counts,
            about: subject.about(&run),
            vocab: vocab(subject.tokenizer()),
            points: map.tokens,
            explained: map.explained,
            block_size: model.config.block_size,
            positions: match (model.config.architecture, model.config.position) {
                (Architecture::Bigram, _) => "none",
                (_, Position::Learned) => "learned",
                (_, Position::Rope) => "rope",
            },
            tied: model.config.tie_embeddings,
            position_cosine: map.position_cosine.map(|cos| {
                cos.iter()
                    .map(|&c| (c * 10_000.0).round() / 10_000.0)
                    .collect()
            }),
        })
        .map(|bytes| subject.embeddings_memo().get_or_init(|| bytes).clone())
    })
    .await
}

// ---- one head, step by step ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeadRequest {
    #[serde(default)]
    prompt: String,
    #[serde(default)]
    layer: usize,
    #[serde(default)]
    head: usize,
    /// The query position in the text looked at; the last if left out.
    #[serde(default)]
    position: Option<usize>,
}

/// One step of the head's computation: what it is (`id`, which the page knows the formula of),
/// the shape of its result, and the numbers (row-major; `null` for minus infinity).
#[derive(Serialize)]
struct Step {
    id: &'static str,
    shape: Vec<usize>,
    values: Vec<Option<f32>>,
}

fn step(id: &'static str, shape: Vec<usize>, values: impl IntoIterator<Item = f32>) -> Step {
    Step {
        id,
        shape,
        values: values.into_iter().map(Some).collect(),
    }
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
        let model = subject.model();
        let cfg = &model.config;
        if cfg.architecture == Architecture::Bigram {
            return Err(refused(InspectError::NoAttention));
        }
        let (ids, dropped) = prompt_ids(subject, &request.prompt)?;
        let len = ids.len() - dropped;
        let position = request.position.unwrap_or(len - 1);
        let trace = inspect::head_trace(model, &ids, position, request.layer, request.head)
            .map_err(refused)?;
        let (weights, output) =
            inspect::forward_head_slices(model, &ids, position, request.layer, request.head)
                .ok_or_else(|| ApiError::bad_request("the layer has no attention"))?;
        let max_diff = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        };
        let (c, hs, t) = (cfg.n_embd, trace.head_size, position);
        let has_norm = model.layout.blocks[request.layer].ln1.is_some();
        let mut steps = vec![step("input", vec![c], trace.input.iter().copied())];
        if has_norm {
            let id = match cfg.norm {
                NormKind::Layer => "layernorm",
                NormKind::Rms => "rmsnorm",
            };
            steps.push(step(id, vec![c], trace.normed.iter().copied()));
        }
        // With QK-norm or RoPE the query is first the linear map's, then normed and rotated.
        if trace.qk_norm || trace.rope {
            steps.push(step("q_linear", vec![hs], trace.q_linear.iter().copied()));
        }
        steps.push(step("q", vec![hs], trace.q.iter().copied()));
        steps.push(step("k", vec![t + 1, hs], trace.k.concat()));
        steps.push(step("v", vec![t + 1, hs], trace.v.concat()));
        steps.push(step("dots", vec![t + 1], trace.dots.iter().copied()));
        steps.push(step("scale", vec![t + 1], trace.scores.iter().copied()));
        steps.push(Step {
            id: "mask",
            shape: vec![len],
            values: (0..len)
                .map(|u| trace.visible[u].then(|| trace.scores[u]))
                .collect(),
        });
        steps.push(step("softmax", vec![t + 1], trace.weights.iter().copied()));
        steps.push(step("output", vec![hs], trace.output.iter().copied()));
        #[derive(Serialize)]
        struct Forward {
            weights: Vec<f32>,
            output: Vec<f32>,
            /// The largest difference from the trace's softmax weights and output.
            weights_diff: f32,
            output_diff: f32,
        }
        #[derive(Serialize)]
        struct Trace {
            #[serde(flatten)]
            about: About,
            dropped: usize,
            tokens: Vec<String>,
            layer: usize,
            head: usize,
            position: usize,
            n_layer: usize,
            n_head: usize,
            n_embd: usize,
            head_size: usize,
            scale: f32,
            /// "head_size" (`1/sqrt(hs)`) or "n_embd" (`1/sqrt(C)`).
            scale_by: &'static str,
            /// Whether q and k are RMS-normed per head, and rotated by position, before the
            /// scores; whether the model has learned position embeddings; whether the norm
            /// has a bias.
            qk_norm: bool,
            rope: bool,
            norm_bias: bool,
            steps: Vec<Step>,
            /// The same numbers as the fast forward pass computed them.
            forward: Forward,
        }
        to_json(&Trace {
            about: subject.about(&run),
            dropped,
            tokens: chars(subject.tokenizer(), &ids[dropped..]),
            layer: request.layer,
            head: request.head,
            position,
            n_layer: cfg.n_layer,
            n_head: cfg.n_head,
            n_embd: c,
            head_size: hs,
            scale: trace.scale,
            scale_by: match cfg.attention_scale {
                AttentionScale::HeadSize => "head_size",
                AttentionScale::NEmbd => "n_embd",
            },
            qk_norm: trace.qk_norm,
            rope: trace.rope,
            norm_bias: cfg.norm_has_bias(),
            forward: Forward {
                weights_diff: max_diff(&weights, &trace.weights),
                output_diff: max_diff(&output, &trace.output),
                weights,
                output,
            },
            steps,
        })
    })
    .await
}

// ---- the model's parts ----

#[derive(Serialize)]
struct Diagram {
    /// The run or the preset drawn.
    name: String,
    preset: Option<String>,
    config: ModelConfig,
    parts: inspect::ModelParts,
    /// A prompt in the run's own text (its probe: a line of Tiny Shakespeare, or the start of a
    /// line of its val split), for the views to start from; none for a preset, or a run that
    /// has not evaluated yet.
    prompt: Option<String>,
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
    let parts = inspect::model_parts(&config);
    let body = to_json(&Diagram {
        name,
        preset,
        config,
        parts,
        prompt,
    })?;
    Ok(json_bytes(body, None))
}

/// `GET /api/presets/NAME/model`: a preset's model (for 65 characters) as a diagram.
pub async fn preset_model(Path(name): Path<String>) -> ApiResult<Response> {
    let preset = config::preset(&name).map_err(|e| ApiError::not_found(e.to_string()))?;
    let mut config = preset.model;
    config.vocab_size = 65;
    let parts = inspect::model_parts(&config);
    let body = to_json(&Diagram {
        name: name.clone(),
        preset: Some(name),
        config,
        parts,
        prompt: None,
    })?;
    Ok(json_bytes(body, None))
}

// ---- replay ----

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
        .map(|s| vocab(&s.tokenizer));
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
                .map_err(|_| {
                    ApiError::conflict(format!(
                        "run {n} has no checkpoint yet: a run saves at its first evaluation that improves; try again in a moment"
                    ))
                })?,
        };
        let records: Vec<chargpt::runs::ProbeRecord> = chargpt::runs::read_probes(&dir.join(chargpt::runs::PROBES_FILE))
            .into_iter()
            .filter(|r| query.after.is_none_or(|a| r.step > a))
            .collect();
        #[derive(Serialize)]
        struct Probes {
            run: String,
            vocab: Vec<String>,
            records: Vec<chargpt::runs::ProbeRecord>,
        }
        to_json(&Probes {
            run: n,
            vocab,
            records,
        })
    })
    .await??;
    Ok(json_bytes(body, None))
}
