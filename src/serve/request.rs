//! What every handler does with a request before its own work: the run name from the path,
//! the JSON body, the sampling settings, and the blocking thread file work runs on.

use super::error::{ApiError, ApiResult};
use super::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chargpt::limits;
use chargpt::runs;
use chargpt::sampling::SampleSettings;
use std::path::PathBuf;

/// The largest JSON request body.
pub const JSON_LIMIT: usize = 64 * 1024;

/// A run name from the path, checked: one plain path component, never `..` or a separator.
pub struct RunName(pub String);

impl<S: Send + Sync> FromRequestParts<S> for RunName {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(name) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request(format!("bad run name in the path: {e}")))?;
        check_name(&name)?;
        Ok(RunName(name))
    }
}

pub fn check_name(name: &str) -> ApiResult<()> {
    if runs::valid_run_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!(
            "invalid run name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        ))
        .with_field("name"))
    }
}

/// A request body parsed as JSON, with the size limit's and serde's refusals in plain words.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "the request body is larger than {} KiB, the most a request may send",
                    JSON_LIMIT / 1024
                ),
            )
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"))
        }
    })?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "malformed JSON in the request body: {e}; send an object such as {{\"name\": \"mine\", \"preset\": \"layernorm\"}}"
        ))
    })
}

pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> ApiResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the server failed on this request (a bug); the server and its trainings go on",
        )
    })
}

pub fn run_dir(state: &AppState, name: &str) -> PathBuf {
    state.runs_dir.join(name)
}

pub fn no_such_run(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "no run {name}: the runs directory has no such run; start it, or pick one from GET /api/runs"
    ))
}

/// Temperature and top-k as sampling takes them ([`SampleSettings::check`]), and the prompt
/// no longer than [`limits::MAX_PROMPT_CHARS`].
pub fn check_sample_settings(
    temperature: f32,
    top_k: Option<usize>,
    prompt: &str,
) -> ApiResult<()> {
    let settings = SampleSettings { temperature, top_k };
    settings.check().map_err(|e| {
        let field = if e.starts_with("top_k") {
            "top_k"
        } else {
            "temperature"
        };
        ApiError::bad_request(e).with_field(field)
    })?;
    let chars = prompt.chars().count();
    if chars > limits::MAX_PROMPT_CHARS {
        return Err(ApiError::bad_request(format!(
            "the prompt has {chars} characters, more than the {} a request may send; the model sees only its last block_size of them",
            limits::MAX_PROMPT_CHARS
        ))
        .with_field("prompt"));
    }
    Ok(())
}
