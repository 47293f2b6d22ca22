//! Every refusal is a 4xx with a JSON body `{"error": "..."}`: one line that says what is wrong
//! and what to do, in the command line's words, and `"field"` when it is about one setting (the
//! page shows it beside that field).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chargpt::page::Refusal;
use chargpt::runs::PrepareError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub field: Option<String>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            field: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    /// A refusal of the library's preparation of a run.
    pub fn from_prepare(e: PrepareError) -> Self {
        Refusal::from_prepare(e).into()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError {
            status: StatusCode::from_u16(r.status.code()).unwrap_or(StatusCode::BAD_REQUEST),
            message: r.message,
            field: r.field,
        }
    }
}

pub use chargpt::page::one_line;

/// The runs directory as the user gave it and as the system spells it in full, set once when
/// the server starts.
static RUNS_DIR: std::sync::OnceLock<(String, Option<String>)> = std::sync::OnceLock::new();

/// Remembers the runs directory, so that [`redact`] can take it out of messages.
pub fn set_runs_dir(dir: &std::path::Path) {
    let full = std::fs::canonicalize(dir)
        .ok()
        .map(|p| p.display().to_string());
    let _ = RUNS_DIR.set((dir.display().to_string(), full));
}

/// `message` with the server's runs directory written as `runs`, as the README and the page
/// name it: the library's messages name a run by its directory (`/home/me/runs/mine already
/// holds a checkpoint`), and an answer must not tell a page where the server keeps its files.
pub fn redact(message: &str) -> String {
    let Some((given, full)) = RUNS_DIR.get() else {
        return message.to_string();
    };
    let sep = std::path::MAIN_SEPARATOR;
    let mut out = message.to_string();
    for dir in full.iter().chain([given]) {
        let dir = dir.trim_end_matches(sep);
        if !dir.is_empty() && dir != "runs" {
            out = out.replace(&format!("{dir}{sep}"), "runs/");
        }
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": redact(&self.message) });
        if let Some(field) = self.field {
            body["field"] = field.into();
        }
        json_response(self.status, &body)
    }
}

pub fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        bytes,
    )
        .into_response()
}
