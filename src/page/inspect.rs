//! Looking inside a model from the page: the answers of `/api/runs/NAME/inspect/*` (next
//! character, attention, surprise, embeddings, one head step by step, the model's parts),
//! `/api/runs/NAME/probes` and `/api/presets/NAME/model`. The numbers come from
//! [`crate::inspect`]; here are the requests' checks and the answers' JSON.

use super::{check_sample_settings, one_line, to_json, Answer, Refusal};
use crate::checkpoint::DataInfo;
use crate::config::{self, Architecture, AttentionScale, ModelConfig, NormKind, Position};
use crate::inspect::{self, InspectError};
use crate::model::Model;
use crate::runs::ProbeRecord;
use crate::sampling::{self, SampleSettings};
use crate::tokenizer::{TokenId, Tokenizer};
use serde::{Deserialize, Serialize};

/// The most characters the surprise view scores at once (its text may have one more: the first
/// character, which nothing predicts).
pub const MAX_SURPRISE: usize = 4096;

/// Where the text a run trains on comes from, for the surprise view's excerpts of its val split
/// and the embeddings' character counts.
#[derive(Debug, Clone, Copy)]
pub enum RunText<'a> {
    /// As its checkpoint records it (a file, or the built-in text).
    Recorded(Option<&'a DataInfo>),
    /// In memory (a run trained in a browser tab).
    Given(&'a str),
}

impl RunText<'_> {
    fn load(&self, hint: &'static str) -> Answer<String> {
        match self {
            RunText::Recorded(info) => crate::runs::load_recorded_text(*info, hint)
                .map(|(text, _)| text)
                .map_err(|e| Refusal::conflict(one_line(&e))),
            RunText::Given(text) => Ok(text.to_string()),
        }
    }
}

/// The model looked at, and what every answer says about it.
#[derive(Debug, Clone, Copy)]
pub struct Looked<'a> {
    pub run: &'a str,
    pub model: &'a Model,
    pub tokenizer: &'a Tokenizer,
    /// The step of the parameters.
    pub step: usize,
    /// Whether they are a training's live parameters (at its last evaluation) rather than its
    /// checkpoint.
    pub live: bool,
    pub text: RunText<'a>,
    /// The exact val loss of the whole split, when the checkpoint has it.
    pub final_val_loss: Option<f64>,
}

#[derive(Serialize)]
struct About {
    run: String,
    step: usize,
    live: bool,
}

impl Looked<'_> {
    fn about(&self) -> About {
        About {
            run: self.run.to_string(),
            step: self.step,
            live: self.live,
        }
    }
}

/// A refusal of the library, about the request field it concerns.
fn refused(e: InspectError) -> Refusal {
    let field = match &e {
        InspectError::EmptyText => "prompt",
        InspectError::Position { .. } => "position",
        InspectError::Layer { .. } => "layer",
        InspectError::Head { .. } => "head",
        InspectError::TooShort { .. } => "text",
        InspectError::NoAttention => return Refusal::bad_request(e.to_string()),
    };
    let message = match e {
        InspectError::EmptyText => {
            "the prompt is empty; give at least one character, e.g. \"ROMEO:\"".to_string()
        }
        other => other.to_string(),
    };
    Refusal::bad_request(message).with_field(field)
}

/// The prompt's ids (at least one; characters the model lacks refused in the command line's
/// words), and how many are cut from its front (it keeps its last `block_size`).
fn prompt_ids(looked: &Looked, prompt: &str) -> Answer<(Vec<TokenId>, usize)> {
    if prompt.is_empty() {
        return Err(refused(InspectError::EmptyText));
    }
    check_sample_settings(1.0, None, prompt)?;
    let ids = sampling::encode_prompt(looked.tokenizer, prompt)
        .map_err(|e| Refusal::bad_request(one_line(&e)).with_field("prompt"))?;
    let dropped = inspect::visible(looked.model, &ids);
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

/// Every character of the vocabulary, one string each, in id order.
pub fn vocab(tokenizer: &Tokenizer) -> Vec<String> {
    tokenizer.chars().iter().map(char::to_string).collect()
}

fn one() -> f32 {
    1.0
}

fn no_attention(looked: &Looked) -> Answer<()> {
    if looked.model.config.architecture == Architecture::Bigram {
        return Err(refused(InspectError::NoAttention));
    }
    Ok(())
}

// ---- next character ----

/// `POST /api/runs/NAME/inspect/next`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextRequest {
    #[serde(default)]
    pub prompt: String,
    #[serde(default = "one")]
    pub temperature: f32,
    #[serde(default)]
    pub top_k: Option<usize>,
}

impl NextRequest {
    /// What can be refused before a model is at hand.
    pub fn check(&self) -> Answer<()> {
        check_sample_settings(self.temperature, self.top_k, &self.prompt)
    }
}

/// The distribution of the character after the prompt: logits and probabilities with the
/// request's temperature and top-k.
pub fn next(looked: &Looked, request: &NextRequest) -> Answer<Vec<u8>> {
    request.check()?;
    let (ids, dropped) = prompt_ids(looked, &request.prompt)?;
    let model = looked.model;
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
    Ok(to_json(&Next {
        about: looked.about(),
        block_size: model.config.block_size,
        dropped,
        tokens: chars(looked.tokenizer, &ids[dropped..]),
        vocab: vocab(looked.tokenizer),
        temperature: request.temperature,
        top_k: request.top_k,
        logits: last,
        probs,
    }))
}

// ---- attention ----

/// `POST /api/runs/NAME/inspect/attention`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptRequest {
    #[serde(default)]
    pub prompt: String,
}

/// A head's summary, as `chargpt attention` prints it.
#[derive(Serialize)]
struct HeadSummary {
    look_back: f64,
    itself: f64,
    previous: f64,
}

/// Every head's weights over the prompt.
pub fn attention(looked: &Looked, request: &PromptRequest) -> Answer<Vec<u8>> {
    no_attention(looked)?;
    let (ids, dropped) = prompt_ids(looked, &request.prompt)?;
    let att = inspect::attention(looked.model, &ids).map_err(refused)?;
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
    Ok(to_json(&Maps {
        about: looked.about(),
        dropped,
        tokens: chars(looked.tokenizer, &ids[dropped..]),
        n_layer: att.n_layer,
        n_head: att.n_head,
        len: t_n,
        weights,
        heads,
    }))
}

// ---- surprise ----

/// `POST /api/runs/NAME/inspect/surprise`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SurpriseRequest {
    /// A text to score; without one, an excerpt of the run's val split.
    #[serde(default)]
    pub text: Option<String>,
    /// Where the excerpt starts in the val split (characters).
    #[serde(default)]
    pub offset: usize,
    /// How many windows of `block_size` the excerpt covers.
    #[serde(default)]
    pub windows: Option<usize>,
}

impl SurpriseRequest {
    pub fn check(&self) -> Answer<()> {
        if self.windows == Some(0) {
            return Err(
                Refusal::bad_request("windows must be at least 1; leave it out for 2")
                    .with_field("windows"),
            );
        }
        Ok(())
    }
}

/// Each character's loss over a text, as `chargpt eval` scores it.
pub fn surprise(looked: &Looked, request: &SurpriseRequest) -> Answer<Vec<u8>> {
    request.check()?;
    let model = looked.model;
    let block = model.config.block_size;
    let most_windows = (MAX_SURPRISE / block).max(1);
    let (text, source, val_chars): (Vec<char>, &'static str, Option<usize>) = match &request.text {
        Some(text) => {
            let unknown = looked.tokenizer.unknown_chars(text);
            if !unknown.is_empty() {
                return Err(Refusal::bad_request(format!(
                    "the text has {} character{} that the model's vocabulary lacks: {}; use only characters of the text it was trained on",
                    unknown.len(),
                    if unknown.len() == 1 { "" } else { "s" },
                    crate::data::list_chars(&unknown, 20)
                ))
                .with_field("text"));
            }
            let chars: Vec<char> = text.chars().collect();
            let most = most_windows * block + 1;
            if chars.len() > most {
                return Err(Refusal::bad_request(format!(
                    "the text has {} characters; the surprise view scores at most {most} at once ({most_windows} windows of {block}); paste a shorter text",
                    chars.len()
                ))
                .with_field("text"));
            }
            (chars, "text", None)
        }
        None => {
            let all = looked
                .text
                .load("put the text back there, or paste a text instead")?;
            // The val split as training cuts it (one token per character).
            let n = all.chars().count();
            let val: Vec<char> = all.chars().skip(crate::data::train_len(n)).collect();
            let windows = request.windows.unwrap_or(2).min(most_windows);
            let room = crate::data::window_count(val.len().saturating_sub(request.offset), block);
            if room == 0 {
                return Err(Refusal::bad_request(format!(
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
    let ids = looked
        .tokenizer
        .encode(&as_text)
        .map_err(|e| Refusal::bad_request(one_line(&e)).with_field("text"))?;
    let s = inspect::surprise(model, &ids).map_err(refused)?;
    let used = s.scored.last().map_or(0, |&i| i + 1);
    let top: Vec<Vec<(String, f32)>> = s
        .top
        .iter()
        .map(|best| {
            best.iter()
                .map(|&(id, p)| (chars(looked.tokenizer, &[id]).concat(), p))
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
    Ok(to_json(&Scored {
        vocab_size: model.config.vocab_size,
        about: looked.about(),
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
        final_val_loss: looked.final_val_loss,
    }))
}

// ---- embeddings ----

/// The characters on the first two principal components of the token embeddings, and the
/// position embeddings' cosine similarities (the same until the parameters change: a back end
/// may keep the answer).
pub fn embeddings(looked: &Looked) -> Answer<Vec<u8>> {
    let model = looked.model;
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
    let counts = looked.text.load("").ok().map(|text| {
        let mut counts = vec![0usize; model.config.vocab_size];
        for c in text.chars() {
            if let Some(id) = looked.tokenizer.id(c) {
                counts[id as usize] += 1;
            }
        }
        counts
    });
    Ok(to_json(&Embeddings {
        counts,
        about: looked.about(),
        vocab: vocab(looked.tokenizer),
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
    }))
}

// ---- one head, step by step ----

/// `POST /api/runs/NAME/inspect/head`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadRequest {
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub layer: usize,
    #[serde(default)]
    pub head: usize,
    /// The query position in the text looked at; the last if left out.
    #[serde(default)]
    pub position: Option<usize>,
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

/// Every number head `head` of layer `layer` computes for query `position`, in order, and the
/// forward pass's own weights and output to compare.
pub fn head(looked: &Looked, request: &HeadRequest) -> Answer<Vec<u8>> {
    no_attention(looked)?;
    let model = looked.model;
    let cfg = &model.config;
    let (ids, dropped) = prompt_ids(looked, &request.prompt)?;
    let len = ids.len() - dropped;
    let position = request.position.unwrap_or(len - 1);
    let trace =
        inspect::head_trace(model, &ids, position, request.layer, request.head).map_err(refused)?;
    let (weights, output) =
        inspect::forward_head_slices(model, &ids, position, request.layer, request.head)
            .ok_or_else(|| Refusal::bad_request("the layer has no attention"))?;
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
        /// scores; whether the norm has a bias.
        qk_norm: bool,
        rope: bool,
        norm_bias: bool,
        steps: Vec<Step>,
        /// The same numbers as the fast forward pass computed them.
        forward: Forward,
    }
    Ok(to_json(&Trace {
        about: looked.about(),
        dropped,
        tokens: chars(looked.tokenizer, &ids[dropped..]),
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
    }))
}

// ---- the model's parts ----

/// `GET /api/runs/NAME/inspect/model`: the model as a diagram of its parts. `prompt` is a
/// prompt in the run's own text (its probe), for the views to start from.
pub fn model_diagram(
    name: &str,
    preset: Option<String>,
    config: ModelConfig,
    prompt: Option<String>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Diagram {
        /// The run or the preset drawn.
        name: String,
        preset: Option<String>,
        config: ModelConfig,
        parts: inspect::ModelParts,
        /// A prompt in the run's own text (its probe: a line of Tiny Shakespeare, or the start
        /// of a line of its val split); none for a preset, or a run that has not evaluated yet.
        prompt: Option<String>,
    }
    let parts = inspect::model_parts(&config);
    to_json(&Diagram {
        name: name.to_string(),
        preset,
        config,
        parts,
        prompt,
    })
}

/// `GET /api/presets/NAME/model`: a preset's model (for 65 characters) as a diagram.
pub fn preset_model(name: &str) -> Answer<Vec<u8>> {
    let preset = config::preset(name).map_err(|e| Refusal::not_found(e.to_string()))?;
    let mut config = preset.model;
    config.vocab_size = 65;
    Ok(model_diagram(name, Some(name.to_string()), config, None))
}

// ---- replay ----

/// `GET /api/runs/NAME/probes?after=STEP`: what the model of every evaluation after `after` did
/// on the run's probe text, and the vocabulary its ids index.
pub fn probes(
    run: &str,
    vocab: Vec<String>,
    records: Vec<ProbeRecord>,
    after: Option<usize>,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Probes {
        run: String,
        vocab: Vec<String>,
        records: Vec<ProbeRecord>,
    }
    to_json(&Probes {
        run: run.to_string(),
        vocab,
        records: records
            .into_iter()
            .filter(|r| after.is_none_or(|a| r.step > a))
            .collect(),
    })
}
