//! What every handler does with a request before its own work: the run name from the path,
//! the JSON body, the sampling settings, and the blocking thread file work runs on.

use super::error::{ApiError, ApiResult};
use super::AppState;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chargpt::page;
use std::path::PathBuf;

pub use chargpt::page::JSON_LIMIT;

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
    Ok(page::check_name(name)?)
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
    Ok(page::parse_request(&bytes)?)
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
    page::no_such_run(name).into()
}
