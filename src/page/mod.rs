//! The page's API (docs/serve.md lists it), answered the same by every back end: `chargpt serve`
//! over HTTP, and the page's own back end in a browser tab (the engine compiled to WebAssembly).
//! Here are the requests, their checks and the JSON of the answers; a back end only finds the
//! model or run asked about, and carries the bytes.
//!
//! A refusal is a [`Refusal`]: one line that says what is wrong and what to do, the field of the
//! request it is about, and the kind of status a server answers it with.

pub mod inspect;
pub mod live;

use crate::config;
use crate::data::{fingerprint, DataError};
use crate::limits;
use crate::model::ParamLayout;
use crate::runs::{PrepareError, RunError, Setting};
use crate::sampling::SampleSettings;
use serde::{Deserialize, Serialize};

/// The largest text upload: 32 MiB.
pub const UPLOAD_LIMIT: usize = 32 * 1024 * 1024;
/// The largest JSON request body.
pub const JSON_LIMIT: usize = 64 * 1024;

/// What kind of refusal: the HTTP status a server gives it (400, 404, 409).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    BadRequest,
    NotFound,
    Conflict,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::NotFound => 404,
            Status::Conflict => 409,
        }
    }
}

/// A request refused: `{"error": message, "field": field}` with a 4xx status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: Status,
    pub message: String,
    pub field: Option<String>,
}

impl Refusal {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Refusal {
            status: Status::BadRequest,
            message: message.into(),
            field: None,
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Refusal {
            status: Status::Conflict,
            ..Refusal::bad_request(message)
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Refusal {
            status: Status::NotFound,
            ..Refusal::bad_request(message)
        }
    }

    pub fn with_field(mut self, field: &str) -> Self {
        self.field = Some(field.to_string());
        self
    }

    /// The body a server sends: `{"error": ..., "field": ...}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.message });
        if let Some(field) = &self.field {
            body["field"] = field.clone().into();
        }
        body
    }

    /// A refusal of the library's preparation of a run.
    pub fn from_prepare(e: PrepareError) -> Self {
        let field = e.key().map(str::to_string);
        let status = match &e {
            PrepareError::Locked { .. } => Status::Conflict,
            PrepareError::Refused(m) if m.contains("already holds a checkpoint") => {
                Status::Conflict
            }
            _ => Status::BadRequest,
        };
        let message = match &e {
            // The library's words name the command line's flag; the page extends a run instead.
            PrepareError::Run(RunError::AlreadyFinished { dir, steps }) => format!(
                "the run in {dir} already finished its {steps} steps; extend it: set steps above {steps}"
            ),
            _ => one_line(&e),
        };
        // A fine-tune's text with characters the model lacks: the form's choice of what to do.
        let field = field.or_else(|| {
            message
                .contains("--unknown-chars")
                .then(|| "unknown_chars".to_string())
        });
        Refusal {
            status,
            message,
            field,
        }
    }
}

pub type Answer<T> = Result<T, Refusal>;

/// The error and those of its causes that it does not already show, on one line.
pub fn one_line(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        cause = c.source();
    }
    message.replace(['\n', '\r'], " ")
}

/// A request body parsed as JSON (an empty body is `{}`), serde's refusal in plain words.
pub fn parse_request<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Answer<T> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        Refusal::bad_request(format!(
            "malformed JSON in the request body: {e}; send an object such as {{\"name\": \"mine\", \"preset\": \"layernorm\"}}"
        ))
    })
}

/// `value` as JSON bytes.
pub fn to_json(value: &impl Serialize) -> Vec<u8> {
    // Our answers are plain structs of numbers and strings: writing them cannot fail.
    serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec())
}

/// A run name: one plain path component, never `..` or a separator.
pub fn check_name(name: &str) -> Answer<()> {
    if crate::runs::valid_run_name(name) {
        Ok(())
    } else {
        Err(Refusal::bad_request(format!(
            "invalid run name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"
        ))
        .with_field("name"))
    }
}

pub fn no_such_run(name: &str) -> Refusal {
    Refusal::not_found(format!(
        "no run {name}: the runs directory has no such run; start it, or pick one from GET /api/runs"
    ))
}

pub fn no_checkpoint_yet(name: &str) -> Refusal {
    Refusal::conflict(format!(
        "run {name} has no checkpoint yet: a run saves at its first evaluation that improves; try again in a moment"
    ))
}

/// `GET /api/presets`: every preset with its model's size (for 65 characters) and settings,
/// the default, and the limits the form keeps to.
pub fn presets() -> serde_json::Value {
    let presets: Vec<serde_json::Value> = config::presets()
        .iter()
        .map(|p| {
            let mut model = p.model.clone();
            model.vocab_size = 65;
            // Through text, so that an f32 setting shows as typed (0.9, not 0.8999999761581421).
            let as_value = |config: String| {
                serde_json::from_str::<serde_json::Value>(&config).unwrap_or_default()
            };
            let mut settings = as_value(serde_json::to_string(&p.model).unwrap_or_default());
            if let Some(map) = settings.as_object_mut() {
                map.remove("vocab_size");
                let train = as_value(serde_json::to_string(&p.train).unwrap_or_default());
                if let serde_json::Value::Object(train) = train {
                    map.extend(train);
                }
            }
            serde_json::json!({
                "name": p.name,
                "description": p.description,
                "params": ParamLayout::new(&model).len,
                "settings": settings,
            })
        })
        .collect();
    serde_json::json!({
        "presets": presets,
        "default": config::DEFAULT_PRESET,
        "upload_limit": UPLOAD_LIMIT,
        "max_sample": limits::MAX_SAMPLE_TOKENS,
    })
}

/// Settings from a JSON object: numbers, booleans and strings, as `--set KEY=VALUE` takes them.
pub fn settings_from(map: &serde_json::Map<String, serde_json::Value>) -> Answer<Vec<Setting>> {
    map.iter()
        .map(|(key, value)| {
            let text = match value {
                serde_json::Value::String(s) => s.trim().to_string(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(Refusal::bad_request(format!(
                        "setting {key} must be a number, true/false or a string"
                    ))
                    .with_field(key))
                }
            };
            Ok(Setting::field(key, &text))
        })
        .collect()
}

/// `POST /api/runs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub name: String,
    #[serde(default)]
    pub preset: Option<String>,
    /// `{"n_layer": 2, "steps": "300"}`: every key `--set` takes.
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The id `POST /api/uploads` gave; none: the built-in Tiny Shakespeare.
    #[serde(default)]
    pub upload: Option<String>,
    /// Fine-tune this run's checkpoint instead of starting a new model (`--init-from`): its
    /// shape and vocabulary, the training settings of `preset` if given, else its own.
    #[serde(default)]
    pub init_from: Option<String>,
    /// With `init_from`: what to do with characters of the text that the model's vocabulary
    /// lacks, as `--unknown-chars`: "error" (the default), "drop" or "extend".
    #[serde(default)]
    pub unknown_chars: Option<String>,
}

impl StartRequest {
    pub fn preset(&self) -> &str {
        self.preset.as_deref().unwrap_or(config::DEFAULT_PRESET)
    }

    /// `unknown_chars` as the library takes it.
    pub fn unknown_chars(&self) -> Answer<crate::runs::UnknownChars> {
        use crate::runs::UnknownChars;
        match self.unknown_chars.as_deref() {
            None | Some("error") => Ok(UnknownChars::Error),
            Some("drop") => Ok(UnknownChars::Drop),
            Some("extend") => Ok(UnknownChars::Extend),
            Some(other) => Err(Refusal::bad_request(format!(
                "unknown_chars must be error, drop or extend, not {other:?}"
            ))
            .with_field("unknown_chars")),
        }
    }
}

/// `POST /api/runs/NAME/resume`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeRequest {
    /// Training settings only, e.g. `{"steps": 3000}` to extend a finished run.
    #[serde(default)]
    pub settings: serde_json::Map<String, serde_json::Value>,
}

/// Temperature and top-k as sampling takes them ([`SampleSettings::check`]), and the prompt
/// no longer than [`limits::MAX_PROMPT_CHARS`].
pub fn check_sample_settings(temperature: f32, top_k: Option<usize>, prompt: &str) -> Answer<()> {
    let settings = SampleSettings { temperature, top_k };
    settings.check().map_err(|e| {
        let field = if e.starts_with("top_k") {
            "top_k"
        } else {
            "temperature"
        };
        Refusal::bad_request(e).with_field(field)
    })?;
    let chars = prompt.chars().count();
    if chars > limits::MAX_PROMPT_CHARS {
        return Err(Refusal::bad_request(format!(
            "the prompt has {chars} characters, more than the {} a request may send; the model sees only its last block_size of them",
            limits::MAX_PROMPT_CHARS
        ))
        .with_field("prompt"));
    }
    Ok(())
}

fn one() -> f32 {
    1.0
}
fn default_seed() -> u64 {
    1337
}
fn default_tokens() -> usize {
    500
}

/// `POST /api/runs/NAME/sample`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleRequest {
    #[serde(default)]
    pub prompt: String,
    #[serde(default = "one")]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_tokens")]
    pub tokens: usize,
}

impl SampleRequest {
    pub fn check(&self) -> Answer<()> {
        check_sample_settings(self.temperature, self.top_k, &self.prompt)?;
        if self.tokens > limits::MAX_SAMPLE_TOKENS {
            return Err(Refusal::bad_request(format!(
                "tokens must be at most {}; draw several samples for more",
                limits::MAX_SAMPLE_TOKENS
            ))
            .with_field("tokens"));
        }
        Ok(())
    }

    pub fn settings(&self) -> SampleSettings {
        SampleSettings {
            temperature: self.temperature,
            top_k: self.top_k,
        }
    }
}

/// The name an upload is shown under: the file's base name, at most 100 characters.
pub fn upload_filename(given: Option<&str>) -> String {
    given
        .map(|f| {
            let base = f.rsplit(['/', '\\']).next().unwrap_or("");
            base.chars().take(100).collect::<String>()
        })
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| "the upload".to_string())
}

/// An upload's refusal when it is over [`UPLOAD_LIMIT`].
pub fn upload_too_large(filename: &str) -> Refusal {
    Refusal::bad_request(format!(
        "{filename} is larger than {} MiB, the most an upload may be; use a shorter text, or train on it with `chargpt train --data FILE`",
        UPLOAD_LIMIT >> 20
    ))
    .with_field("upload")
}

/// A training text, checked: UTF-8, not empty, at most [`UPLOAD_LIMIT`] bytes.
#[derive(Debug, Clone, Serialize)]
pub struct Upload {
    /// Its fingerprint, which names it.
    pub id: String,
    pub filename: String,
    pub characters: usize,
    pub vocab_size: usize,
    #[serde(skip)]
    pub text: String,
}

/// `POST /api/uploads`: the checks and what the answer says; the back end keeps the text.
pub fn check_upload(bytes: Vec<u8>, filename: &str) -> Answer<Upload> {
    if bytes.len() > UPLOAD_LIMIT {
        return Err(upload_too_large(filename));
    }
    let refuse = |e: DataError| Refusal::bad_request(e.to_string()).with_field("upload");
    let text = String::from_utf8(bytes).map_err(|e| {
        refuse(DataError::NotUtf8 {
            path: filename.to_string(),
            offset: e.utf8_error().valid_up_to(),
        })
    })?;
    if text.is_empty() {
        return Err(refuse(DataError::Empty(filename.to_string())));
    }
    let vocab_size = crate::tokenizer::Tokenizer::from_text(&text)
        .map(|t| t.vocab_size())
        .unwrap_or(0);
    Ok(Upload {
        id: fingerprint(&text),
        filename: filename.to_string(),
        characters: text.chars().count(),
        vocab_size,
        text,
    })
}

/// Whether `id` looks like an upload's id (a fingerprint: 16 hex digits).
pub fn upload_id_well_formed(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

pub fn no_such_upload(id: &str) -> Refusal {
    Refusal::bad_request(format!(
        "no upload {id:?}; upload the text again (POST /api/uploads)"
    ))
    .with_field("upload")
}

/// What a run's records hold, for its curves and its feed of samples
/// (`GET /api/runs/NAME/metrics`).
#[derive(Debug, Serialize)]
pub struct History {
    pub metrics: Vec<crate::runs::MetricsRow>,
    /// `[step, loss, lr]` of every training step.
    pub steps: Vec<(usize, f32, f32)>,
    pub samples: Vec<crate::runs::EvalSample>,
}

impl History {
    pub fn new(
        metrics: Vec<crate::runs::MetricsRow>,
        steps: &[crate::runs::StepRow],
        samples: Vec<crate::runs::EvalSample>,
    ) -> Self {
        History {
            metrics,
            steps: steps.iter().map(|r| (r.step, r.loss, r.lr)).collect(),
            samples,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uploads_are_checked_as_serve_checks_them() {
        let e = check_upload(vec![b'a', 0xff, b'b'], "mine.txt").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("upload"));
        assert!(e.message.contains("mine.txt"), "{}", e.message);
        assert!(e.message.contains("UTF-8"), "{}", e.message);
        let e = check_upload(Vec::new(), "empty.txt").unwrap_err();
        assert!(e.message.contains("empty.txt"), "{}", e.message);
        let e = check_upload(vec![b'a'; UPLOAD_LIMIT + 1], "big.txt").unwrap_err();
        assert!(e.message.contains("32 MiB"), "{}", e.message);
        let up = check_upload("héllo\n".as_bytes().to_vec(), "ok.txt").unwrap();
        assert_eq!((up.characters, up.vocab_size), (6, 5));
        assert!(upload_id_well_formed(&up.id));
        assert_eq!(
            upload_filename(Some("C:\\Users\\me\\notes.txt")),
            "notes.txt"
        );
        assert_eq!(upload_filename(Some("")), "the upload");
    }

    #[test]
    fn requests_are_refused_in_plain_words() {
        let e = parse_request::<SampleRequest>(b"{\"tokens\": ").unwrap_err();
        assert!(e.message.starts_with("malformed JSON"), "{}", e.message);
        let r: SampleRequest = parse_request(b"  ").unwrap();
        assert_eq!((r.tokens, r.seed), (500, 1337));
        let r: SampleRequest = parse_request(b"{\"tokens\": 20001}").unwrap();
        assert_eq!(r.check().unwrap_err().field.as_deref(), Some("tokens"));
        let e = check_sample_settings(-1.0, None, "").unwrap_err();
        assert_eq!(e.field.as_deref(), Some("temperature"));
        assert_eq!(Refusal::conflict("x").status.code(), 409);
    }
}
