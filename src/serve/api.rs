//! The JSON API (docs/serve.md lists it) and the router that puts it, the guard and the page
//! together.
//!
//! Handlers read and write only under the runs directory: a run is `RUNS/NAME` with `NAME` of
//! [`runs::valid_run_name`], uploads are `RUNS/.uploads/ID.txt`. File work runs on tokio's
//! blocking threads, never on the one thread that serves every request.

use super::error::{json_response, one_line, redact, ApiError, ApiResult};
use super::live::{self, Plan};
use super::request::{blocking, check_name, no_such_run, parse_json, run_dir, RunName, JSON_LIMIT};
use super::{assets, inspect, security, AppState};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use chargpt::checkpoint::{self, write_atomic};
use chargpt::page::{self, History, ResumeRequest, SampleRequest, StartRequest};
use chargpt::rng::Rng;
use chargpt::runs::{self, RunLock, Setting};
use chargpt::runs::{read_metrics, read_steps};
use chargpt::sampling::{self, Generator};
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use chargpt::page::UPLOAD_LIMIT;
/// Where uploads are kept, under the runs directory (a name no run can have).
const UPLOADS: &str = ".uploads";

type Shared = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/presets", get(presets))
        .route("/api/runs", get(list).post(start))
        .route("/api/runs/{name}", get(details))
        .route("/api/runs/{name}/metrics", get(metrics))
        .route("/api/runs/{name}/events", get(events))
        .route("/api/runs/{name}/stop", post(stop))
        .route("/api/runs/{name}/resume", post(resume))
        .route("/api/runs/{name}/delete", post(delete))
        .route("/api/runs/{name}/sample", post(sample))
        .route("/api/runs/{name}/inspect/next", post(inspect::next))
        .route("/api/runs/{name}/inspect/attention", post(inspect::attention))
        .route("/api/runs/{name}/inspect/surprise", post(inspect::surprise))
        .route("/api/runs/{name}/inspect/embeddings", get(inspect::embeddings))
        .route("/api/runs/{name}/inspect/head", post(inspect::head))
        .route("/api/runs/{name}/inspect/model", get(inspect::run_model))
        .route("/api/runs/{name}/probes", get(inspect::probes))
        .route("/api/presets/{name}/model", get(inspect::preset_model))
        .route(
            "/api/uploads",
            post(upload).layer(DefaultBodyLimit::max(UPLOAD_LIMIT)),
        )
        .fallback(assets::serve)
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: read with GET, change with POST (see the API table in docs/serve.md)",
            )
        })
        .layer(DefaultBodyLimit::max(JSON_LIMIT))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security::guard,
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the server failed on this request (a bug); the server and its trainings go on",
                )
                .into_response()
            },
        ))
        .with_state(state)
}

/// The run's summary, completed from the server's own training where the files do not say yet.
fn summary(state: &AppState, name: &str) -> Option<runs::RunSummary> {
    let mut s = runs::summarize(&run_dir(state, name), name)?;
    s.problem = s.problem.as_deref().map(redact);
    if let Some(text) = &mut s.text {
        if let Some(uploaded) = upload_name(state, &text.name) {
            text.name = uploaded;
        }
    }
    if let Some(live) = state.live_run(name) {
        if let Some(p) = live.last_step() {
            s.step = s.step.max(p.step);
            s.steps = Some(p.steps);
        }
        if let Some(live::LiveEvent::Start { preset, .. }) = live.start_event() {
            s.preset = s.preset.or(preset);
        }
    }
    Some(s)
}

// ---- the handlers, in the order of docs/serve.md's table ----

async fn list(State(state): Shared) -> ApiResult<Response> {
    let s = state.clone();
    let list = blocking(move || {
        runs::list_runs(&s.runs_dir)
            .into_iter()
            .filter_map(|r| summary(&s, &r.name))
            .collect::<Vec<_>>()
    })
    .await?;
    #[derive(serde::Serialize)]
    struct Runs {
        runs: Vec<runs::RunSummary>,
    }
    Ok(json_response(StatusCode::OK, &Runs { runs: list }))
}

async fn presets() -> Response {
    json_response(StatusCode::OK, &page::presets())
}

fn settings_from(map: &serde_json::Map<String, serde_json::Value>) -> ApiResult<Vec<Setting>> {
    Ok(page::settings_from(map)?)
}

async fn start(State(state): Shared, body: Result<Bytes, BytesRejection>) -> ApiResult<Response> {
    let request: StartRequest = parse_json(body)?;
    check_name(&request.name)?;
    let settings = settings_from(&request.settings)?;
    let data = match &request.upload {
        None => None,
        Some(id) => Some(upload_path(&state, id)?),
    };
    let plan = match &request.init_from {
        Some(init) => {
            check_name(init).map_err(|e| e.with_field("init_from"))?;
            let unknown = request.unknown_chars()?;
            let from = run_dir(&state, init);
            let found = blocking(move || checkpoint::exists(&from)).await?;
            if !found {
                return Err(ApiError::bad_request(format!(
                    "run {init} has no checkpoint to fine-tune from; pick a run that has saved"
                ))
                .with_field("init_from"));
            }
            Plan::FineTune {
                init_from: run_dir(&state, init),
                preset: request.preset.clone(),
                settings,
                data,
                unknown,
            }
        }
        None => Plan::New {
            preset: request.preset().to_string(),
            settings,
            data,
        },
    };
    let started = live::start(state, request.name, plan)
        .await
        .map_err(preset_field)?;
    Ok(json_response(StatusCode::CREATED, &started))
}

/// An unknown preset is about the preset field.
fn preset_field(e: ApiError) -> ApiError {
    if e.field.is_none() && e.message.starts_with("unknown preset") {
        e.with_field("preset")
    } else {
        e
    }
}

async fn details(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    let (s, n) = (state.clone(), name.clone());
    let found = blocking(move || {
        let summary = summary(&s, &n)?;
        let config = checkpoint::load_config(&run_dir(&s, &n))
            .ok()
            .map(|mut c| {
                // An uploaded text's path is the server's business; a file of the user's own
                // (trained from the command line) stays as recorded.
                if let Some(data) = &mut c.data {
                    data.source = redact(&data.source);
                }
                c
            })
            .and_then(|c| serde_json::to_value(c).ok());
        Some((summary, config))
    })
    .await?;
    let Some((summary, config)) = found else {
        return Err(no_such_run(&name));
    };
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "run": summary, "config": config }),
    ))
}

async fn metrics(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    let dir = run_dir(&state, &name);
    let found = blocking(move || {
        runs::summarize(&dir, "")?;
        let metrics = read_metrics(&dir.join(runs::METRICS_FILE));
        let steps = read_steps(&dir.join(runs::STEPS_FILE));
        let samples = runs::read_samples(&dir.join(runs::SAMPLES_FILE));
        Some(History::new(metrics, &steps, samples))
    })
    .await?;
    match found {
        Some(body) => Ok(json_response(StatusCode::OK, &body)),
        None => Err(no_such_run(&name)),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    /// Leave out steps up to this one (the page has them from `steps.csv`).
    after: Option<usize>,
}

async fn events(
    State(state): Shared,
    RunName(name): RunName,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(format!("bad query: {e}")))?;
    match state.live_run(&name) {
        Some(live) => {
            let stream = live::events(live, query.after);
            Ok(Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response())
        }
        None => {
            // Not training here: one `idle` event with where the run stands, then the end.
            let (s, n) = (state.clone(), name.clone());
            let summary = blocking(move || summary(&s, &n)).await?;
            let Some(summary) = summary else {
                return Err(no_such_run(&name));
            };
            let idle = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(live::sse(
                "idle", &summary,
            ))]);
            Ok(Sse::new(idle).into_response())
        }
    }
}

async fn stop(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    if let Some(live) = state.live_run(&name) {
        live.request_stop();
        return Ok(json_response(
            StatusCode::ACCEPTED,
            &serde_json::json!({ "name": name, "stopping": true }),
        ));
    }
    let dir = run_dir(&state, &name);
    let (exists, holder) = blocking(move || (dir.is_dir(), RunLock::holder(&dir))).await?;
    if let Some(pid) = holder {
        return Err(ApiError::conflict(format!(
            "run {name} is being trained by process {pid}, not by this server; stop it there (Ctrl-C)"
        )));
    }
    if !exists {
        return Err(no_such_run(&name));
    }
    Err(ApiError::conflict(format!(
        "run {name} is not training; resume it to train it further"
    )))
}

async fn resume(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: ResumeRequest = parse_json(body)?;
    let settings = settings_from(&request.settings)?;
    let dir = run_dir(&state, &name);
    if !blocking(move || dir.is_dir()).await? {
        return Err(no_such_run(&name));
    }
    let started = live::start(state, name, Plan::Resume { settings }).await?;
    Ok(json_response(StatusCode::ACCEPTED, &started))
}

async fn delete(State(state): Shared, RunName(name): RunName) -> ApiResult<Response> {
    if state.live_run(&name).is_some() {
        return Err(ApiError::conflict(format!(
            "run {name} is training; stop it before deleting it"
        )));
    }
    let dir = run_dir(&state, &name);
    let shown = name.clone();
    blocking(move || -> ApiResult<()> {
        // A symbolic link is not a run directory of ours: never follow one out of the runs
        // directory.
        let is_dir = std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if !is_dir || runs::summarize(&dir, &shown).is_none() {
            return Err(no_such_run(&shown));
        }
        if let Some(pid) = RunLock::holder(&dir) {
            return Err(ApiError::conflict(format!(
                "run {shown} is being trained by process {pid}; stop it before deleting it"
            )));
        }
        std::fs::remove_dir_all(&dir).map_err(|e| {
            ApiError::conflict(format!(
                "cannot delete {}: {e}; check its permissions",
                dir.display()
            ))
        })
    })
    .await??;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({ "name": name, "deleted": true }),
    ))
}

/// Streams the characters drawn after the prompt as plain text, as they are drawn, from the
/// run's latest checkpoint (a training run's too).
async fn sample(
    State(state): Shared,
    RunName(name): RunName,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let request: SampleRequest = parse_json(body)?;
    request.check()?;
    let settings = request.settings();
    let (tokens, seed) = (request.tokens, request.seed);
    let dir = run_dir(&state, &name);
    let shown = name.clone();
    let loaded = blocking(move || -> ApiResult<_> {
        if !dir.is_dir() {
            return Err(no_such_run(&shown));
        }
        if !checkpoint::exists(&dir) {
            return Err(page::no_checkpoint_yet(&shown).into());
        }
        let ckpt = checkpoint::load(&dir).map_err(|e| ApiError::conflict(one_line(&e)))?;
        let prompt = sampling::encode_prompt(&ckpt.tokenizer, &request.prompt)
            .map_err(|e| ApiError::bad_request(one_line(&e)).with_field("prompt"))?;
        Ok((ckpt, prompt))
    })
    .await??;
    let (ckpt, prompt) = loaded;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    // Generation on a thread of its own, one core at most: each character is one row through
    // the model. Characters go out in small chunks; a closed connection stops the drawing.
    tokio::task::spawn_blocking(move || {
        chargpt::runtime::flush_subnormals();
        chargpt::kernels::sequentially(|| {
            let mut generator = Generator::new(&ckpt.model, &prompt, settings);
            let mut rng = Rng::new(seed);
            let mut chunk = String::new();
            let mut sent = Instant::now();
            for i in 0..tokens {
                let id = generator.next_token(&mut rng);
                if let Ok(c) = ckpt.tokenizer.decode_one(id) {
                    chunk.push(c);
                }
                let last = i + 1 == tokens;
                if last || chunk.len() >= 256 || sent.elapsed() >= Duration::from_millis(30) {
                    if tx
                        .blocking_send(Bytes::from(std::mem::take(&mut chunk)))
                        .is_err()
                    {
                        return;
                    }
                    sent = Instant::now();
                }
            }
        })
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[derive(Deserialize)]
struct UploadQuery {
    /// The file's name, for messages.
    filename: Option<String>,
}

/// Keeps an uploaded training text (UTF-8 checked, at most [`UPLOAD_LIMIT`] bytes) under
/// `RUNS/.uploads/`, named by its fingerprint; answers its id for `POST /api/runs`.
async fn upload(
    State(state): Shared,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let filename = page::upload_filename(query.ok().and_then(|Query(q)| q.filename).as_deref());
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            let mut e = ApiError::from(page::upload_too_large(&filename));
            e.status = StatusCode::PAYLOAD_TOO_LARGE;
            e
        } else {
            ApiError::bad_request(format!("cannot read the upload: {e}")).with_field("upload")
        }
    })?;
    let upload = page::check_upload(bytes.to_vec(), &filename)?;
    let id = upload.id.clone();
    let dir = state.runs_dir.join(UPLOADS);
    let path = dir.join(format!("{id}.txt"));
    let name = dir.join(format!("{id}.name"));
    let shown = filename.clone();
    let answer = serde_json::to_value(&upload).unwrap_or_default();
    blocking(move || -> ApiResult<()> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| ApiError::conflict(format!("cannot write {}: {e}", dir.display())))?;
        write_atomic(&path, upload.text.as_bytes())
            .map_err(|e| ApiError::conflict(one_line(&e)))?;
        // The name it was uploaded under, for the list of runs (the text is kept by its id).
        write_atomic(&name, shown.as_bytes()).map_err(|e| ApiError::conflict(one_line(&e)))
    })
    .await??;
    Ok(json_response(StatusCode::CREATED, &answer))
}

/// The name an upload was sent under, if `file` is an upload's file (`ID.txt`).
fn upload_name(state: &AppState, file: &str) -> Option<String> {
    let id = file.strip_suffix(".txt")?;
    let well_formed = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return None;
    }
    let name = std::fs::read_to_string(state.runs_dir.join(UPLOADS).join(format!("{id}.name")));
    name.ok().filter(|n| !n.is_empty())
}

/// The file of upload `id`.
fn upload_path(state: &AppState, id: &str) -> ApiResult<PathBuf> {
    let well_formed = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let path = state.runs_dir.join(UPLOADS).join(format!("{id}.txt"));
    if !well_formed || !path.is_file() {
        return Err(ApiError::bad_request(format!(
            "no upload {id:?}; upload the text again (POST /api/uploads)"
        ))
        .with_field("upload"));
    }
    Ok(path)
}
