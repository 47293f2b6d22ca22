//! Model and training configuration as plain data, and the named presets.
//!
//! One [`ModelConfig`] expresses every rung of the lecture's ladder (bigram, one head, many heads,
//! feed-forward, residual blocks, LayerNorm) and the scaled-up models, by switching parts of the
//! block on or off. Both configs serialise to JSON (inside checkpoints) and accept `KEY=VALUE`
//! overrides by field name ([`apply_override`]).

use serde::{de::DeserializeOwned, Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("unknown preset {0:?}; run `chargpt presets` to list them")]
    UnknownPreset(String),
    #[error("unknown setting {key:?}; known settings: {known}")]
    UnknownKey { key: String, known: String },
    #[error("invalid value {value:?} for {key}: {reason}")]
    InvalidValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("expected KEY=VALUE, got {0:?}")]
    MalformedOverride(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A setting outside its range ([`crate::limits`]).
    #[error("invalid configuration: {message}")]
    OutOfRange { key: &'static str, message: String },
    #[error("{path}{}: {message}", .line.map(|l| format!(" line {l}")).unwrap_or_default())]
    File {
        path: String,
        line: Option<usize>,
        message: String,
    },
}

/// What predicts the next character.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// `logits = table[token]`: a (vocab, vocab) table, no context at all.
    Bigram,
    /// Token + position embedding, `n_layer` blocks, optional final LayerNorm, `lm_head`.
    Transformer,
}

/// The factor applied to the dot products `q . k` before the softmax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttentionScale {
    /// `1 / sqrt(head_size)`: keeps the scores at unit variance (the corrected lecture code).
    HeadSize,
    /// `1 / sqrt(n_embd)`: what the video's code did.
    NEmbd,
}

/// The feed-forward part of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeedForward {
    None,
    /// `act(x W^T + b)` with W of shape (C, C): the ladder's first feed-forward rung.
    Linear,
    /// `act(x W1^T + b1) W2^T + b2` with W1 (4C, C) and W2 (C, 4C): the transformer's MLP.
    Mlp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Relu,
    /// The tanh approximation of GELU (as in GPT-2 and llm.c).
    Gelu,
    /// ReLU squared, `relu(x)^2` (Primer; the modded-nanogpt speedrun).
    Relu2,
}

/// How the model knows where a character is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Position {
    /// A learned vector per position added to the token embedding (`position_embedding.weight`).
    #[default]
    Learned,
    /// Rotary position embedding: each head's queries and keys rotated by an angle proportional
    /// to their position, so that scores depend on relative positions only; no parameters.
    Rope,
}

/// The kind of the pre-norms (`ln1`, `ln2`, `ln_f`) when `layer_norm` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// LayerNorm: subtract the mean, divide by the standard deviation, scale and shift.
    #[default]
    Layer,
    /// RMSNorm: divide by the root mean square, scale; no mean, no shift (no bias tensor).
    Rms,
}

/// The base of RoPE's angles: pair i of a head of size hs turns by `position * BASE^(-2i/hs)`.
pub const ROPE_BASE: f64 = 10000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Init {
    /// Linear and embedding weights N(0, 0.02), biases 0 (the current lecture repository).
    Lecture,
    /// PyTorch's defaults, as the video used: Linear weight and bias U(-1/sqrt(fan_in),
    /// 1/sqrt(fan_in)), Embedding N(0, 1).
    Pytorch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub architecture: Architecture,
    /// Number of distinct characters; filled in from the data (0 in a preset).
    pub vocab_size: usize,
    /// Context length T: the most characters the model sees at once.
    pub block_size: usize,
    /// Width C of the residual stream.
    pub n_embd: usize,
    pub n_head: usize,
    pub n_layer: usize,
    /// Probability of zeroing an activation in training (attention weights, attention output, FFN
    /// output).
    pub dropout: f32,
    pub attention_scale: AttentionScale,
    /// Linear(C, C) with bias after the concatenated heads.
    pub attention_projection: bool,
    pub feed_forward: FeedForward,
    pub activation: Activation,
    /// `x = x + f(x)` around attention and feed-forward instead of `x = f(x)`.
    pub residual: bool,
    /// Pre-norm LayerNorm before attention and before the feed-forward, and a final one before
    /// `lm_head`.
    pub layer_norm: bool,
    pub init: Init,
    /// Learned position embedding, or rotary (RoPE). Checkpoints from before these settings have
    /// none of the fields below and load as the lecture's model: learned positions, LayerNorm, no
    /// QK-norm, an untied `lm_head`, biases.
    #[serde(default)]
    pub position: Position,
    /// LayerNorm or RMSNorm for the pre-norms (with `layer_norm` on).
    #[serde(default)]
    pub norm: NormKind,
    /// RMSNorm of every head's queries and keys (each with a learned gain of head_size) before
    /// the scores (and before RoPE).
    #[serde(default)]
    pub qk_norm: bool,
    /// `lm_head` reuses `token_embedding.weight` (one tensor, both uses' gradients summed).
    #[serde(default)]
    pub tie_embeddings: bool,
    /// Biases in the linear layers (attention projection, feed-forward, `lm_head`) and in the
    /// LayerNorms; `false` removes them all.
    #[serde(default = "default_true")]
    pub bias: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LrSchedule {
    Constant,
    /// Linear warm-up over `warmup_steps`, then cosine decay to `min_lr` at the last step.
    Cosine,
    /// Warm-up, stable, decay: linear warm-up, constant at `learning_rate`, then a linear decay
    /// to `min_lr` over the last `decay_fraction` of the steps.
    Wsd,
}

/// Which optimizer updates the parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OptimizerKind {
    /// AdamW on every tensor.
    #[default]
    Adamw,
    /// Muon (momentum orthogonalised by Newton-Schulz) on the blocks' 2-D weight matrices, at
    /// `muon_lr`; AdamW on the embeddings, `lm_head`, gains and biases.
    Muon,
}

/// Newton-Schulz's coefficients (the speedrun's quintic, tuned to converge fast from small
/// singular values rather than exactly).
pub const NS_COEFFICIENTS: (f32, f32, f32) = (3.4445, -4.7750, 2.0315);
/// Newton-Schulz iterations per update.
pub const NS_STEPS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DecayOn {
    /// Every parameter, as `torch.optim.AdamW(model.parameters())` does in the lecture.
    All,
    /// Only tensors of two or more dimensions (weights and embeddings), as nanoGPT does.
    Matrices,
}

/// The number format of the linear layers' matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// Everything in fp32.
    #[default]
    Fp32,
    /// Mixed precision: the linear layers' products take bf16 operands (rounded to nearest even)
    /// and sum in fp32; parameters, gradients, optimizer state and every other layer stay fp32.
    /// Needs a CPU with AVX512_BF16.
    Bf16,
    /// bf16 where the CPU has AVX512_BF16 in hardware, fp32 elsewhere: what a preset meant for
    /// any machine asks for, so that it takes the faster products where they exist and still
    /// runs everywhere ([`Precision::resolve`]).
    Auto,
}

impl Precision {
    /// Whether this machine can run it: bf16 needs AVX512_BF16 (or the emulation switch,
    /// [`crate::runtime::BF16_EMULATE_ENV`]).
    pub fn check_supported(self) -> Result<(), ConfigError> {
        match self {
            Precision::Bf16 if !crate::runtime::bf16_available() => Err(ConfigError::Invalid(
                "precision=bf16 needs a CPU with AVX512_BF16, and this one has none; use precision=fp32".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The precision the products take on this machine: `auto` becomes bf16 where the CPU has
    /// AVX512_BF16 (never the emulation, which is slower than fp32) and fp32 elsewhere.
    pub fn resolve(self) -> Precision {
        match self {
            Precision::Auto if crate::runtime::has_avx512_bf16() => Precision::Bf16,
            Precision::Auto => Precision::Fp32,
            other => other,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Sequences per step (B).
    pub batch_size: usize,
    /// Optimizer steps in the whole run.
    pub steps: usize,
    pub learning_rate: f32,
    pub lr_schedule: LrSchedule,
    pub warmup_steps: usize,
    pub min_lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub decay_on: DecayOn,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    pub grad_clip: f32,
    /// Estimate train and val loss every this many steps (and at the last step); 0 picks an
    /// interval that gives about 20 evaluations over the run ([`TrainConfig::eval_every`]). The
    /// presets that reproduce the lecture and nanoGPT keep their intervals; `default` is 0.
    pub eval_interval: usize,
    /// Random batches per split in the loss estimate (the lecture's `eval_iters`).
    pub eval_iters: usize,
    pub seed: u64,
    /// `fp32`, `bf16` for the linear layers' products, or `auto` (bf16 where the CPU has it);
    /// checkpoints from before this setting load as fp32.
    #[serde(default)]
    pub precision: Precision,
    /// With `lr_schedule = wsd`: the fraction of the steps, at the end, over which the learning
    /// rate decays linearly to `min_lr`.
    #[serde(default = "default_decay_fraction")]
    pub decay_fraction: f32,
    /// `adamw`, or `muon` for the blocks' weight matrices (checkpoints from before this setting
    /// load as AdamW).
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Muon's peak learning rate (it follows `lr_schedule` as AdamW's does).
    #[serde(default = "default_muon_lr")]
    pub muon_lr: f32,
    /// Muon's momentum (Nesterov).
    #[serde(default = "default_muon_momentum")]
    pub muon_momentum: f32,
    /// Decoupled weight decay on the matrices Muon updates: `W *= 1 - muon_lr * wd` per step.
    #[serde(default)]
    pub muon_weight_decay: f32,
    /// Train for this long, in seconds (0: no budget; `steps` decides): `--time 20m`, or
    /// `time_budget = "1h"`. The run times its first steps and evaluations, then sets `steps` to
    /// what fits in the budget with the final exact evaluation ([`budget_steps`]); the schedule
    /// (warm-up, decay) then follows those steps. Setting `steps` turns the budget off.
    #[serde(default, deserialize_with = "duration_seconds")]
    pub time_budget: f64,
    /// With `time_budget`: the step at which `steps` was set from the budget (recorded, so that
    /// a resume goes on with those steps, and `--set steps=N` repeats the run). Not a setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_fixed_at: Option<usize>,
    /// With `time_budget` and the wsd schedule, once its steps were set again inside the decay:
    /// the decay's pieces, `(from, to)` pairs. From step `from` the learning rate falls linearly
    /// from the value it had there to `min_lr` at step `to` (the last piece's `to` is `steps`);
    /// the first piece begins where the decay began, at the peak. So a machine whose pace
    /// changes in the decay still ends it inside the budget, and no step taken changes.
    /// Recorded, so that a resume goes on exactly. Not a setting.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decay_plan: Vec<(usize, usize)>,
    /// With `time_budget`, on a model without dropout: the dropout turned on when the budget
    /// turns out to buy more than [`PASSES_WITHOUT_DROPOUT`] passes over the training text (a
    /// fast machine, a long budget or a short text), where such a model learns the text by heart
    /// instead of learning to write like it. 0: never. Decided once, with the first steps set
    /// from the pace (`budget_fixed_at`), from the steps then planned.
    #[serde(default)]
    pub budget_dropout: f32,
    /// The step from which `budget_dropout` is on (recorded, as `budget_fixed_at`: the model's
    /// `dropout` in `config.json` is then `budget_dropout`, and the steps before this one ran
    /// without). Not a setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dropout_from: Option<usize>,
}

/// A duration as a number of seconds or text: `90`, `90s`, `20m`, `1h`, `1h30m`, `1.5h`; `0` or
/// `none` is no budget.
pub fn parse_duration(text: &str) -> Result<f64, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(0.0);
    }
    if let Ok(seconds) = text.parse::<f64>() {
        return check_duration(seconds, text);
    }
    let mut total = 0.0;
    let mut number = String::new();
    let mut any = false;
    for c in text.chars() {
        match c {
            '0'..='9' | '.' => number.push(c),
            'h' | 'm' | 's' if !number.is_empty() => {
                let value: f64 = number.parse().map_err(|_| duration_help(text))?;
                total += value
                    * match c {
                        'h' => 3600.0,
                        'm' => 60.0,
                        _ => 1.0,
                    };
                number.clear();
                any = true;
            }
            _ => return Err(duration_help(text)),
        }
    }
    if !number.is_empty() || !any {
        return Err(duration_help(text));
    }
    check_duration(total, text)
}

fn check_duration(seconds: f64, text: &str) -> Result<f64, String> {
    if seconds.is_finite() && seconds >= 0.0 {
        Ok(seconds)
    } else {
        Err(duration_help(text))
    }
}

fn duration_help(text: &str) -> String {
    format!("{text:?} is not a duration; write e.g. 90s, 20m, 1h or 1h30m")
}

/// Seconds as [`parse_duration`] reads them: `20m`, `1h30m`, `45s`.
pub fn duration_text(seconds: f64) -> String {
    let s = seconds.round() as u64;
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if sec > 0 || out.is_empty() {
        out.push_str(&format!("{sec}s"));
    }
    out
}

/// `time_budget` from a number of seconds or a duration's text.
fn duration_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Given {
        Seconds(f64),
        Text(String),
    }
    match Given::deserialize(d)? {
        Given::Seconds(s) => check_duration(s, &s.to_string()),
        Given::Text(t) => parse_duration(&t),
    }
    .map_err(serde::de::Error::custom)
}

/// The steps that fit in a time budget: `done` steps taken and `elapsed` seconds spent (all
/// sessions, evaluations included), `step_s` seconds a step and `eval_s` an evaluation, whose
/// interval `interval(steps)` follows the steps, and `end_s` for the final exact evaluation and
/// sample. The remaining time goes to steps and the evaluations among them; at least `done + 1`.
pub fn budget_steps(
    budget: f64,
    elapsed: f64,
    done: usize,
    step_s: f64,
    eval_s: f64,
    end_s: f64,
    interval: &dyn Fn(usize) -> usize,
) -> usize {
    let left = budget - elapsed - end_s;
    if left <= 0.0 || step_s <= 0.0 {
        return done + 1;
    }
    // The evaluations depend on the steps and the steps on the time the evaluations leave: a
    // few rounds settle it (the count of evaluations changes by at most one or two).
    let mut steps = done + (left / step_s) as usize;
    for _ in 0..4 {
        let every = interval(steps.max(1)).max(1);
        let evals = (steps / every).saturating_sub(done / every) + 1;
        let for_steps = left - evals as f64 * eval_s;
        steps = done + (for_steps.max(0.0) / step_s) as usize;
    }
    steps.max(done + 1)
}

/// What to tell a learner whose machine is much slower than the one a budgeted recipe was sized
/// on: `guess` is the recipe's `steps` (its first guess, about what the budget buys on the
/// machine it was swept on) and `planned` what the budget buys here. Under half of it, the model
/// is probably too large for this machine and this time: in a fixed time a smaller model that
/// sees more characters won every sweep (`default` for 5 minutes; on 2 Zen 3 cores without bf16,
/// `fast`'s 20 minutes bought its model 1212 steps of a planned 4200 and reached 1.5577, where
/// `default` with dropout 0.1 reached 1.4785).
pub fn budget_advice(budget_s: f64, guess: usize, planned: usize) -> Option<String> {
    (budget_s > 0.0 && planned.saturating_mul(2) < guess).then(|| {
        format!(
            "{} buys this model {planned} steps on this machine, under half the {guess} its recipe was sized for (about {} of that pace): a smaller model that sees more characters may do better in this time (what did on a CPU without bf16: docs/beyond-the-lecture.md, \"The presets fast and best-1h\")",
            duration_text(budget_s),
            ratio_text(planned as f64 / guess as f64),
        )
    })
}

/// Passes over the training text past which a model without dropout learned it by heart in the
/// sweeps (val rising while train went on falling): `default` ended 10 minutes on 2 Zen 4 cores
/// with bf16 (4859 steps, 20 passes) at exact val 1.6001, worse than its 5 minutes there (2304
/// steps, 9.4 passes: 1.4883); on 2 Zen 3 cores 20 minutes (3443 steps, 14 passes) reached
/// 1.5267, where 10 minutes (8 passes) had reached 1.4806 and dropout 0.1 for 20 minutes 1.4785.
pub const PASSES_WITHOUT_DROPOUT: f64 = 12.0;

/// A line for the learner when a time budget buys a model without dropout more than
/// [`PASSES_WITHOUT_DROPOUT`] passes over its training text: on a fast machine the first
/// command's small model, given longer, learns Shakespeare by heart instead of learning to write
/// like him.
pub fn overfit_advice(budget_s: f64, passes: f64, dropout: f32) -> Option<String> {
    (budget_s > 0.0 && dropout == 0.0 && passes > PASSES_WITHOUT_DROPOUT).then(|| {
        format!(
            "{} buys this model {passes:.0} passes over its training text on this machine: without dropout it may learn the text by heart (val rising while train falls); --set dropout=0.1 held that off in longer runs (docs/beyond-the-lecture.md, \"On a CPU with bf16: 2 Zen 4 cores\")",
            duration_text(budget_s),
        )
    })
}

/// The line a run prints when its budget turned on `budget_dropout` ([`TrainConfig::budget_dropout`]):
/// what the budget buys, and how to keep the model as it was.
pub fn dropout_note(budget_s: f64, passes: f64, dropout: f32) -> String {
    format!(
        "{} buys this model {passes:.0} passes over its training text on this machine: dropout {dropout} from here on, so that it learns to write like the text rather than learning it by heart (--set budget_dropout=0 keeps it off)",
        duration_text(budget_s),
    )
}

/// A ratio below 1 as a reader says it: "a third", "a quarter", or a percentage.
fn ratio_text(r: f64) -> String {
    match (1.0 / r).round() as usize {
        3 if (r - 1.0 / 3.0).abs() < 0.04 => "a third".into(),
        4 if (r - 0.25).abs() < 0.03 => "a quarter".into(),
        5 if (r - 0.2).abs() < 0.02 => "a fifth".into(),
        _ => format!("{:.0}%", r * 100.0),
    }
}

fn default_decay_fraction() -> f32 {
    0.2
}

fn default_muon_lr() -> f32 {
    0.02
}

fn default_muon_momentum() -> f32 {
    0.95
}

impl TrainConfig {
    /// The lecture's optimizer: AdamW with PyTorch's defaults, constant learning rate.
    pub fn lecture(batch_size: usize, steps: usize, learning_rate: f32) -> Self {
        TrainConfig {
            batch_size,
            steps,
            learning_rate,
            lr_schedule: LrSchedule::Constant,
            warmup_steps: 0,
            min_lr: learning_rate,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            decay_on: DecayOn::All,
            grad_clip: 0.0,
            eval_interval: 500,
            eval_iters: 200,
            seed: 1337,
            precision: Precision::Fp32,
            decay_fraction: default_decay_fraction(),
            optimizer: OptimizerKind::Adamw,
            muon_lr: default_muon_lr(),
            muon_momentum: default_muon_momentum(),
            muon_weight_decay: 0.0,
            time_budget: 0.0,
            budget_fixed_at: None,
            decay_plan: Vec::new(),
            budget_dropout: 0.0,
            dropout_from: None,
        }
    }

    /// Steps timed before a time budget is turned into steps: the warm-up (at least 3, at most
    /// 200), whose learning rates do not depend on the steps (so that the run is the one
    /// `--set steps=N` makes), and long enough to see a machine settle to its sustained pace.
    pub fn calibration_steps(&self) -> usize {
        self.warmup_steps.clamp(3, 200)
    }

    /// The steps between two evaluations: `eval_interval`, or when that is 0,
    /// [`auto_eval_interval`]: about 20 evaluations over the run.
    pub fn eval_every(&self) -> usize {
        if self.eval_interval > 0 {
            return self.eval_interval;
        }
        auto_eval_interval(self.steps, self.eval_iters)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: &str| Err(ConfigError::Invalid(msg.to_string()));
        if self.batch_size == 0 {
            return bad("batch_size must be at least 1");
        }
        if self.steps == 0 {
            return bad("steps must be at least 1");
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return bad("learning_rate must be a positive number");
        }
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return bad("min_lr must be zero or positive");
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1 and beta2 must lie in [0, 1)");
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return bad("eps must be positive");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight_decay must be zero or positive");
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            return bad("grad_clip must be zero (off) or positive");
        }
        if self.eval_iters == 0 {
            return bad("eval_iters must be at least 1");
        }
        if !(self.decay_fraction > 0.0 && self.decay_fraction <= 1.0) {
            return bad("decay_fraction must lie in (0, 1]: the share of the steps the wsd schedule decays over (0.2 is usual)");
        }
        if !(self.muon_lr.is_finite() && self.muon_lr > 0.0) {
            return bad("muon_lr must be a positive number (0.02 is usual)");
        }
        if !(0.0..1.0).contains(&self.muon_momentum) {
            return bad("muon_momentum must lie in [0, 1) (0.95 is usual)");
        }
        if !(self.muon_weight_decay.is_finite() && self.muon_weight_decay >= 0.0) {
            return bad("muon_weight_decay must be zero or positive");
        }
        if !(0.0..1.0).contains(&self.budget_dropout) {
            return bad(&format!(
                "budget_dropout must lie in [0, 1), got {}",
                self.budget_dropout
            ));
        }
        let pieces_in_order = self.decay_plan.windows(2).all(|w| w[0].0 < w[1].0)
            && self.decay_plan.iter().all(|&(from, to)| from < to);
        if !pieces_in_order {
            return bad("decay_plan's pieces must begin at increasing steps, each before its end (a run records it: remove it to start the decay again)");
        }
        if !(self.time_budget.is_finite() && self.time_budget >= 0.0) {
            return bad("time_budget must be a duration such as 20m, or 0 for none");
        }
        crate::limits::check_fields(self)
            .map_err(|(key, message)| ConfigError::OutOfRange { key, message })?;
        self.precision.check_supported()
    }
}

impl ModelConfig {
    pub fn head_size(&self) -> usize {
        self.n_embd / self.n_head
    }

    /// Whether the pre-norms have a bias (a shift): LayerNorm with `bias` on; RMSNorm never.
    pub fn norm_has_bias(&self) -> bool {
        self.bias && self.norm == NormKind::Layer
    }

    /// The factor on `q . k` before the softmax.
    pub fn attention_scale_factor(&self) -> f32 {
        match self.attention_scale {
            AttentionScale::HeadSize => 1.0 / (self.head_size() as f32).sqrt(),
            AttentionScale::NEmbd => 1.0 / (self.n_embd as f32).sqrt(),
        }
    }

    /// Width of the feed-forward hidden layer.
    pub fn ffn_hidden(&self) -> usize {
        match self.feed_forward {
            FeedForward::None => 0,
            FeedForward::Linear => self.n_embd,
            FeedForward::Mlp => 4 * self.n_embd,
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |msg: String| Err(ConfigError::Invalid(msg));
        if self.vocab_size == 0 {
            return bad("vocab_size must be at least 1".into());
        }
        if self.block_size == 0 {
            return bad("block_size must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must lie in [0, 1), got {}", self.dropout));
        }
        crate::limits::check_fields(self)
            .map_err(|(key, message)| ConfigError::OutOfRange { key, message })?;
        if self.architecture == Architecture::Bigram {
            return Ok(());
        }
        if self.n_embd == 0 || self.n_head == 0 || self.n_layer == 0 {
            return bad("n_embd, n_head and n_layer must be at least 1".into());
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            return bad(format!(
                "n_embd ({}) must be divisible by n_head ({})",
                self.n_embd, self.n_head
            ));
        }
        if self.position == Position::Rope && !self.head_size().is_multiple_of(2) {
            return bad(format!(
                "position=rope turns pairs of channels, so the head size n_embd / n_head must be even, got {} / {} = {}",
                self.n_embd,
                self.n_head,
                self.head_size()
            ));
        }
        Ok(())
    }
}

/// A named starting point: a model shape and how to train it.
#[derive(Debug, Clone)]
pub struct Preset {
    pub name: &'static str,
    pub description: &'static str,
    pub model: ModelConfig,
    pub train: TrainConfig,
}

/// The preset `chargpt train` uses without `--preset`.
pub const DEFAULT_PRESET: &str = "default";

/// A transformer with everything on, as in the lecture's final `gpt.py`.
fn gpt(
    n_embd: usize,
    n_head: usize,
    n_layer: usize,
    block_size: usize,
    dropout: f32,
) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Transformer,
        vocab_size: 0,
        block_size,
        n_embd,
        n_head,
        n_layer,
        dropout,
        attention_scale: AttentionScale::HeadSize,
        attention_projection: true,
        feed_forward: FeedForward::Mlp,
        activation: Activation::Relu,
        residual: true,
        layer_norm: true,
        init: Init::Lecture,
        position: Position::Learned,
        norm: NormKind::Layer,
        qk_norm: false,
        tie_embeddings: false,
        bias: true,
    }
}

/// Every model idea of the modern ladder (`chargpt ladder --modern`) on a model: rotary
/// positions, RMSNorm, ReLU², QK-norm, tied embeddings and no biases.
fn modern(model: ModelConfig) -> ModelConfig {
    ModelConfig {
        position: Position::Rope,
        norm: NormKind::Rms,
        activation: Activation::Relu2,
        qk_norm: true,
        tie_embeddings: true,
        bias: false,
        ..model
    }
}

/// The ladder's early rungs: n_embd 32, block 8, PyTorch init, scores scaled by n_embd, nothing but
/// attention (and optionally a feed-forward) between the embedding and `lm_head`.
fn ladder_rung(n_head: usize, feed_forward: FeedForward) -> ModelConfig {
    ModelConfig {
        attention_scale: AttentionScale::NEmbd,
        attention_projection: false,
        feed_forward,
        residual: false,
        layer_norm: false,
        init: Init::Pytorch,
        ..gpt(32, n_head, 1, 8, 0.0)
    }
}

/// Every preset, in the order of the lecture's ladder, then the larger ones.
pub fn presets() -> Vec<Preset> {
    let ladder_train = TrainConfig::lecture(32, 5000, 1e-3);
    let nanogpt_train = TrainConfig {
        lr_schedule: LrSchedule::Cosine,
        warmup_steps: 100,
        min_lr: 1e-4,
        beta2: 0.99,
        weight_decay: 0.1,
        decay_on: DecayOn::Matrices,
        grad_clip: 1.0,
        eval_interval: 250,
        eval_iters: 20,
        ..TrainConfig::lecture(12, 2000, 1e-3)
    };
    // `lecture-5m`, the first command before the modern ideas: the lecture's recipe (LayerNorm,
    // learned positions, AdamW) with GELU, chosen by 5-minute runs on a 2-core machine (exact val
    // loss): 4 layers x 128 wide, B32, 1950 steps: 1.641; 4 x 192, B16, 1900 steps: 1.638; the
    // same at learning rate 2e-3: 1.594 (this one); at 3e-3: 1.601; 4 x 160, B24: 1.634; 6 x 192,
    // B16, 1300 steps: 1.760. In a fixed time, a small model that sees more characters wins.
    let lecture_5m_model = ModelConfig {
        activation: Activation::Gelu,
        ..gpt(192, 6, 4, 128, 0.0)
    };
    let lecture_5m_train = TrainConfig {
        batch_size: 16,
        steps: 1900,
        learning_rate: 2e-3,
        min_lr: 2e-4,
        // About 20 evaluations of 10 batches each: 7% of the run's time.
        eval_interval: 0,
        eval_iters: 10,
        // Five minutes on any machine: the steps are set from the machine's pace as it goes;
        // 1900 is the first guess (about five minutes of 2 Zen 4 cores). WSD rather than cosine:
        // its flat learning rate lets the steps follow the machine's pace until the decay (a
        // cosine run's are set once, after the warm-up). On 2 Zen 3 cores, 5 minutes: cosine
        // 1.6733 (its steps set at step 20, then cut short as the machine slowed), WSD 1.6721.
        lr_schedule: LrSchedule::Wsd,
        time_budget: 300.0,
        ..nanogpt_train.clone()
    };
    // The modern presets' training: `lecture-5m`'s AdamW settings for the embeddings and gains,
    // Muon on the blocks' matrices, the wsd schedule, an evaluation every 250 steps, and bf16
    // products where the CPU has them.
    let modern_train = TrainConfig {
        time_budget: 0.0,
        lr_schedule: LrSchedule::Wsd,
        optimizer: OptimizerKind::Muon,
        muon_lr: 0.02,
        eval_interval: 250,
        precision: Precision::Auto,
        // A model without dropout given more than PASSES_WITHOUT_DROPOUT passes by its budget
        // learns the text by heart: `default` for 10 minutes on 2 Zen 4 cores (20 passes)
        // reached 1.6001 without dropout and 1.4671 with 0.1 throughout.
        budget_dropout: 0.1,
        ..lecture_5m_train.clone()
    };
    // `default`, the first command: every modern idea at 4 x 128, batch 32, for 5 minutes. The
    // sweep, `--time 5m` one run after another on 2 Zen 3 cores (fp32; exact val): this one
    // 1.5064 (971 steps; warm-up 210); with a 50-step warm-up 1.5163 (861 steps, the machine
    // slower then, but ahead at every evaluation of equal steps: 1.714/1.647/1.555 against
    // 1.780/1.655/1.573); 4 x 192 at B16 1.5626 (901 steps); `fast`'s 6 x 256 1.7896 (278
    // steps); `lecture-5m` 1.7452 (900 steps; 1.6721 in 1176 steps in a faster session). In five
    // minutes the small model that sees the most characters wins again, and Muon more than
    // makes up for its Newton-Schulz.
    let default_model = modern(gpt(128, 4, 4, 128, 0.0));
    let default_train = TrainConfig {
        batch_size: 32,
        // A first guess: about five minutes of 2 Zen 3 cores; the budget sets them.
        steps: 1000,
        warmup_steps: 50,
        // A line and a sample every 100 steps (about 30 s here) for the learner watching.
        eval_interval: 100,
        time_budget: 300.0,
        ..modern_train.clone()
    };
    // `fast` and `best-1h`: one recipe (found for an hour, below) for 20 minutes and for 60.
    let best_model = modern(gpt(256, 8, 6, 256, 0.1));
    // `fast` decays over the last half of its steps: `--preset fast` for 20 minutes on 2 Zen 4 cores in
    // bf16, from fresh clones one after another: decay_fraction 0.2 1.4602 (3280 steps, a faster
    // session), 0.35 1.4552 (3005 steps), 0.5 1.4527 (3018 steps, 18 min 35 s: the machine sped
    // up after the steps were fixed where the decay began). At batch 8 the gradient is noisy, and
    // a longer decay averages more of it away. Not for an hour: best-1h with 0.5 reached 1.4187
    // (9357 steps, train 1.04: the long low-rate tail learns the text by heart) against 1.4051
    // with 0.2, so only `fast` takes it.
    let best_train = TrainConfig {
        batch_size: 8,
        warmup_steps: 210,
        muon_weight_decay: 0.05,
        ..modern_train.clone()
    };
    vec![
        Preset {
            name: "bigram",
            description: "the lecture's bigram model: a (vocab, vocab) table of logits",
            model: ModelConfig {
                architecture: Architecture::Bigram,
                n_embd: 0,
                n_head: 0,
                n_layer: 0,
                feed_forward: FeedForward::None,
                attention_projection: false,
                residual: false,
                layer_norm: false,
                init: Init::Pytorch,
                ..gpt(0, 0, 0, 8, 0.0)
            },
            train: TrainConfig {
                eval_interval: 300,
                ..TrainConfig::lecture(32, 3000, 1e-2)
            },
        },
        Preset {
            name: "single-head",
            description: "ladder: one attention head of size 32 between embedding and lm_head",
            model: ladder_rung(1, FeedForward::None),
            train: ladder_train.clone(),
        },
        Preset {
            name: "multi-head",
            description: "ladder: four heads of size 8, concatenated, no projection",
            model: ladder_rung(4, FeedForward::None),
            train: ladder_train.clone(),
        },
        Preset {
            name: "feed-forward",
            description: "ladder: multi-head attention, then Linear(C, C) + ReLU",
            model: ladder_rung(4, FeedForward::Linear),
            train: ladder_train.clone(),
        },
        Preset {
            name: "residual",
            description: "ladder: 3 blocks of attention + projection and a 4x MLP, residual adds",
            model: ModelConfig {
                attention_projection: true,
                feed_forward: FeedForward::Mlp,
                residual: true,
                n_layer: 3,
                ..ladder_rung(4, FeedForward::Mlp)
            },
            train: ladder_train.clone(),
        },
        Preset {
            name: "layernorm",
            description: "ladder: residual blocks with pre-norm LayerNorm (gpt.py at n_embd 32)",
            model: gpt(32, 4, 3, 8, 0.0),
            train: ladder_train,
        },
        Preset {
            name: "nanogpt-cpu",
            description:
                "nanoGPT's CPU run: 4 layers, 4 heads, 128 wide, block 64, GELU, cosine lr",
            model: ModelConfig {
                activation: Activation::Gelu,
                ..gpt(128, 4, 4, 64, 0.0)
            },
            train: nanogpt_train.clone(),
        },
        Preset {
            name: "lecture-5m",
            description: "the lecture's recipe (LayerNorm, AdamW) at 4 x 192 with GELU, for 5 minutes: the first command before the modern ideas",
            model: lecture_5m_model,
            train: lecture_5m_train,
        },
        Preset {
            name: DEFAULT_PRESET,
            description: "the first command: every modern idea at 4 x 128, batch 32, for 5 minutes, its steps set by the machine's pace",
            model: default_model,
            train: default_train,
        },
        Preset {
            name: "fast",
            description: "every modern idea (`ladder --modern`) at 6 x 256, block 256, dropout 0.1, Muon weight decay, for 20 minutes: best-1h's recipe",
            // Every modern idea at 6 x 256 (block 128, B16), 4200 steps: they fit in 20 minutes of
            // 2 Zen 5 cores in bf16 at the machine's slower pace too (0.27 s a step with the
            // evaluations; 0.24 at its faster one), since Newton-Schulz runs in bf16. From a fresh
            // clone: 1.4679 in 16 min 52 s. `chargpt sweep` (exact val): at 4200 steps (fp32
            // Newton-Schulz) dropout 0.1: 1.4573, 0.2: 1.4834; at 4600 steps, decay_fraction 0.2:
            // 1.4579 in 18 min 41 s, 0.35: 1.4539 in 20 min 53 s (the slower pace), too close to
            // 20 minutes. Earlier, at 4 x 192 on a Zen 3: muon_lr 0.02 (3200 steps: 1.4798) beat
            // 0.04 (2950: 1.4935); block 128 beat 256. As a 20-minute budget on 2 Zen 3 cores
            // (fp32, a quarter of the pace): 1176 steps, 1.5577; `default` for 20 minutes there
            // learns the text by heart (1.5267; 1.4806 in 10); with dropout 0.1 it reaches
            // 1.4785, and 4 x 192 or 6 x 128 with dropout 0.1 no better (1.4845, 1.4831): such a
            // CPU gets a line of advice when the budget is set (`budget_advice`).
            // Then `best-1h`'s recipe (block 256 at batch 8, Muon weight decay 0.05, below) won
            // 20 minutes too: on 2 Zen 4 cores in bf16, from a fresh clone, 3280 steps and
            // 1.4602 against 3593 steps and 1.4734 at block 128; on the Zen 5, at 4200 steps,
            // block 256 had reached 1.4548 against 1.4679. The steps are a first guess, about
            // 20 minutes of 2 Zen 5 cores (11000 of best-1h's took 40 to 49 minutes there).
            model: best_model.clone(),
            train: TrainConfig {
                steps: 4200,
                time_budget: 1200.0,
                decay_fraction: 0.5,
                ..best_train.clone()
            },
        },
        Preset {
            name: "best-1h",
            description: "every modern idea at 6 x 256, block 256, Muon weight decay, for an hour",
            // `fast`'s model for an hour needs two changes (`chargpt sweep`, exact val):
            // - Block 256 at batch 8 (the same characters a step): at 4200 steps 1.4548 against
            //   1.4679 at block 128. A character later in a window sees more text before it, and
            //   the exact val scores every position of its windows (the lecture's and nanoGPT's
            //   block is 256 too).
            // - Weight decay on Muon's matrices. Without it more passes over the 1M characters
            //   learn them by heart: batch 16 at block 256 (twice the characters) ended at 1.4740,
            //   worse than batch 8. With `muon_weight_decay` 0.05 the same model ran 11000 steps
            //   (22 passes) to 1.4073 in 49 min 17 s (the same 1.4073 in 40 min 00 s from a fresh
            //   clone, in a faster hour of the machine); 0.1 reached 1.4180; at 4200 steps 0.1
            //   was neutral (1.4711) and 0.3 too strong (1.5278).
            // As an hour's budget on 2 Zen 4 cores in bf16, from a fresh clone: 9760 steps in
            // 58 min 04 s, 1.4051; decaying over the last half (a slower day): 9357 steps in
            // 59 min 32 s, 1.4187. Later, with its decay set again to the pace: 9915 steps,
            // 1.3989; with dropout 0.15, 10738 steps, 1.3997 (train 1.14 against 1.07, val no
            // lower), so 0.1 stays.
            model: best_model,
            train: TrainConfig {
                steps: 11000,
                time_budget: 3600.0,
                ..best_train
            },
        },
        Preset {
            name: "lecture",
            description:
                "the lecture's 10.8M-parameter model: 6 layers, 6 heads, 384 wide, block 256",
            model: gpt(384, 6, 6, 256, 0.2),
            train: TrainConfig::lecture(64, 5000, 3e-4),
        },
    ]
}

/// The automatic evaluation interval: a round number (1, 2, 2.5 or 5 times a power of ten) near
/// `steps / 20`, so that a run's curves have about 20 evaluations whatever its length (1900
/// steps: 100; 5000: 250), but never so short that evaluating takes more than about a quarter of
/// the training time. An evaluation is `2 * eval_iters` forward passes of a batch (train and
/// val), and a forward pass is about a third of a training step (forward and backward), so it
/// costs about `2 * eval_iters / 3` steps: the interval is at least four times that (with
/// `eval_iters` 20: 50 steps, so a 200-step run evaluates at 50, 100, 150 and 200).
pub fn auto_eval_interval(steps: usize, eval_iters: usize) -> usize {
    let round = |target: f64| {
        let mut best = 1usize;
        let mut scale = 1usize;
        while scale as f64 <= target * 1.25 {
            for m in [10, 20, 25, 50] {
                let v = scale * m / 10;
                if v >= 1 && v as f64 <= target * 1.25 {
                    best = best.max(v);
                }
            }
            scale *= 10;
        }
        best
    };
    let floor = round(4.0 * 2.0 * eval_iters as f64 / 3.0);
    round(steps as f64 / 20.0).max(floor).min(steps.max(1))
}

/// Training settings that follow others unless they were given themselves, so that changing
/// one setting does not leave its companions at values that no longer make sense:
/// - `warmup_steps` keeps its fraction of `steps` when `steps` is given (100 of 1900 becomes 11
///   of 200);
/// - `min_lr` keeps its ratio to `learning_rate` when `learning_rate` is given (2e-4 for 2e-3
///   becomes 3e-5 for 3e-4);
/// - `muon_lr` keeps its ratio to `learning_rate` too, with the Muon optimizer: `learning_rate`
///   is the rate a learner lowers to fine-tune gently or to get past a NaN, and left alone Muon's
///   matrices (most of a modern model's parameters) would go on at their full rate;
/// - `eval_interval` goes back to automatic (about 20 evaluations) when `steps` is given.
///
/// `base` holds the values before any explicit setting (a preset's, or a checkpoint's for a
/// fine-tune), `given` the keys that were set explicitly. Returns one line per setting it
/// changed, for the user to read.
pub fn derive_settings(base: &TrainConfig, train: &mut TrainConfig, given: &[&str]) -> Vec<String> {
    let set = |k: &str| given.contains(&k);
    let mut notes = Vec::new();
    if set("steps") && !set("time_budget") && base.time_budget > 0.0 {
        notes.push(format!(
            "time_budget {} -> none: the {} steps you set decide the run's length (set time_budget to train for a time)",
            duration_text(base.time_budget),
            train.steps
        ));
    }
    if set("steps") && !set("warmup_steps") && base.steps > 0 && train.steps != base.steps {
        let scaled =
            (base.warmup_steps as f64 * train.steps as f64 / base.steps as f64).round() as usize;
        if scaled != train.warmup_steps {
            notes.push(format!(
                "warmup_steps {} -> {scaled}: the same fraction of the {} steps as {} of {} (set warmup_steps to choose)",
                train.warmup_steps, train.steps, base.warmup_steps, base.steps
            ));
            train.warmup_steps = scaled;
        }
    }
    let (lr, base_lr) = (train.learning_rate, base.learning_rate);
    let lr_changed = set("learning_rate") && base_lr > 0.0 && lr != base_lr;
    if lr_changed && !set("min_lr") && train.lr_schedule != LrSchedule::Constant {
        notes.extend(keep_ratio_to_lr(
            "min_lr",
            &mut train.min_lr,
            base.min_lr,
            base_lr,
            lr,
        ));
    }
    if lr_changed && !set("muon_lr") && train.optimizer == OptimizerKind::Muon {
        notes.extend(keep_ratio_to_lr(
            "muon_lr",
            &mut train.muon_lr,
            base.muon_lr,
            base_lr,
            lr,
        ));
    }
    if set("steps") && !set("eval_interval") && train.eval_interval != 0 {
        // The same interval either way needs no note.
        let automatic = auto_eval_interval(train.steps, train.eval_iters);
        let evals = train.steps.div_ceil(automatic);
        if automatic != train.eval_interval {
            notes.push(format!(
            "eval_interval {} -> {} (automatic: {} evaluation{} over {} steps, about 20 unless that would take over a quarter of the training time; set eval_interval to choose)",
            train.eval_interval,
            automatic,
            evals,
            if evals == 1 { "" } else { "s" },
            train.steps
        ));
        }
        train.eval_interval = 0;
    }
    notes
}

/// Sets `value` (the setting `key`) to keep the ratio of `base_value` to `base_lr` at the
/// learning rate `lr`; the note for the learner when that changed it.
fn keep_ratio_to_lr(
    key: &str,
    value: &mut f32,
    base_value: f32,
    base_lr: f32,
    lr: f32,
) -> Option<String> {
    let scaled = base_value * lr / base_lr;
    if scaled == *value {
        return None;
    }
    let note = format!(
        "{key} {} -> {}: the same ratio to learning_rate {} as {} to {} (set {key} to choose)",
        short(*value),
        short(scaled),
        short(lr),
        short(base_value),
        short(base_lr)
    );
    *value = scaled;
    Some(note)
}

/// A learning rate as a person writes it: `3e-5`, `2.5e-4`, `0.1` (4 significant digits at most,
/// so float noise such as 2.9999997e-5 does not show).
fn short(x: f32) -> String {
    let text = format!("{x:.3e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    match exponent {
        "0" => mantissa.to_string(),
        e => format!("{mantissa}e{e}"),
    }
}

/// Settings that are valid but probably not what was meant, each as one line of warning.
pub fn setting_warnings(train: &TrainConfig) -> Vec<String> {
    let mut warnings = Vec::new();
    if train.warmup_steps > 0 && train.steps <= train.warmup_steps {
        warnings.push(format!(
            "steps ({}) <= warmup_steps ({}): every step is warm-up, the learning rate only rises; lower warmup_steps",
            train.steps, train.warmup_steps
        ));
    }
    if train.lr_schedule != LrSchedule::Constant && train.min_lr >= train.learning_rate {
        warnings.push(format!(
            "min_lr ({}) >= learning_rate ({}): the schedule never decays; set min_lr below the learning rate (a tenth of it is usual)",
            short(train.min_lr),
            short(train.learning_rate)
        ));
    }
    warnings
}

pub fn preset(name: &str) -> Result<Preset, ConfigError> {
    presets()
        .into_iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ConfigError::UnknownPreset(name.to_string()))
}

/// Splits `KEY=VALUE`.
pub fn parse_override(text: &str) -> Result<(&str, &str), ConfigError> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim(), v.trim())),
        _ => Err(ConfigError::MalformedOverride(text.to_string())),
    }
}

/// The field names a config of type `T` accepts.
pub fn field_names<T: Serialize>(config: &T) -> Vec<String> {
    match serde_json::to_value(config) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// Sets field `key` of `config` to `value`, parsed as JSON where it parses (numbers, booleans) and
/// as a string otherwise (enum names such as `gelu`). Returns `Ok(false)` if `T` has no such field.
pub fn apply_override<T: Serialize + DeserializeOwned>(
    config: &mut T,
    key: &str,
    value: &str,
) -> Result<bool, ConfigError> {
    let mut map = match serde_json::to_value(&*config) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => return Err(ConfigError::Invalid("config is not an object".into())),
    };
    let Some(slot) = map.get_mut(key) else {
        return Ok(false);
    };
    let parsed = serde_json::from_str::<serde_json::Value>(value)
        .unwrap_or_else(|_| serde_json::Value::String(value.to_string()));
    *slot = parsed;
    let invalid = |reason: String| ConfigError::InvalidValue {
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    // Strings that look like numbers ("1e-3") parse as numbers above; a string field such as
    // `activation` still wants a string, so retry as one before giving up.
    match serde_json::from_value::<T>(serde_json::Value::Object(map.clone())) {
        Ok(updated) => {
            *config = updated;
            Ok(true)
        }
        Err(first) => {
            map.insert(
                key.to_string(),
                serde_json::Value::String(value.to_string()),
            );
            match serde_json::from_value::<T>(serde_json::Value::Object(map)) {
                Ok(updated) => {
                    *config = updated;
                    Ok(true)
                }
                Err(_) => Err(invalid(plain_reason(&first.to_string()))),
            }
        }
    }
}

/// serde's reason for a rejected value, with Rust type names replaced by what a user would type.
fn plain_reason(reason: &str) -> String {
    reason
        .replace("expected usize", "expected a whole number (0, 1, 2, ...)")
        .replace("expected u64", "expected a whole number (0, 1, 2, ...)")
        .replace("expected f32", "expected a number")
        .replace("expected a boolean", "expected true or false")
}

/// Every key `--set` and a config file accept: the model's fields (but `vocab_size`, which the
/// data decides) and the training fields.
pub fn known_keys(model: &ModelConfig, train: &TrainConfig) -> Vec<String> {
    let mut known = field_names(model);
    known.retain(|k| k != "vocab_size");
    known.extend(field_names(train));
    known
}

/// Applies one `KEY=VALUE` to whichever of the two configs has the key.
pub fn apply_to_configs(
    model: &mut ModelConfig,
    train: &mut TrainConfig,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    if key == "vocab_size" {
        return Err(ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            reason: "the vocabulary comes from the data".into(),
        });
    }
    let instead = match key {
        "budget_fixed_at" | "decay_plan" => Some("time_budget or steps"),
        "dropout_from" => Some("budget_dropout, or dropout from the first step"),
        _ => None,
    };
    if let Some(instead) = instead {
        return Err(ConfigError::InvalidValue {
            key: key.into(),
            value: value.into(),
            reason: format!("a run records it; set {instead}"),
        });
    }
    if apply_override(model, key, value)? || apply_override(train, key, value)? {
        // A number of steps asked for is the run's length: no budget decides it then (set
        // time_budget after steps to have both, the steps as a first guess).
        // Both start the schedule's plan again, except `time_budget=0`, which finishes the
        // steps a budget planned on the decay it recorded.
        if key == "steps" {
            train.time_budget = 0.0;
            train.decay_plan.clear();
        }
        if key == "time_budget" {
            train.budget_fixed_at = None;
            if train.time_budget > 0.0 {
                train.decay_plan.clear();
            }
        }
        return Ok(());
    }
    Err(ConfigError::UnknownKey {
        key: key.to_string(),
        known: known_keys(model, train).join(", "),
    })
}

/// The settings of a TOML config file: flat `key = value` lines with the names `--set` takes,
/// and optionally `preset = "name"`. Returns the preset name (if any) and the settings in file
/// order as `(key, value)` strings for [`apply_to_configs`].
#[allow(clippy::type_complexity)]
pub fn parse_config_file(
    path: &str,
    text: &str,
) -> Result<(Option<String>, Vec<(String, String)>), ConfigError> {
    let file_error = |line: Option<usize>, message: String| ConfigError::File {
        path: path.to_string(),
        line,
        message,
    };
    let table: toml::Table = toml::from_str(text).map_err(|e| {
        let line = e
            .span()
            .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
        file_error(
            line,
            format!(
                "{}; write one `key = value` per line",
                e.message().trim().replace('\n', " ")
            ),
        )
    })?;
    let mut preset = None;
    let mut settings = Vec::new();
    for (key, value) in table {
        let text = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(file_error(
                    None,
                    format!(
                        "{key} is a {}, expected a number, true/false or a string",
                        other.type_str()
                    ),
                ))
            }
        };
        if key == "preset" {
            preset = Some(text);
        } else {
            settings.push((key, text));
        }
    }
    Ok((preset, settings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checkpoints written before the precision setting existed have no such field: fp32.
    #[test]
    fn train_configs_without_a_precision_are_fp32() {
        let mut json = serde_json::to_value(TrainConfig::lecture(4, 10, 1e-3)).unwrap();
        json.as_object_mut().unwrap().remove("precision");
        let cfg: TrainConfig = serde_json::from_value(json).unwrap();
        assert_eq!(cfg.precision, Precision::Fp32);
        let mut cfg = TrainConfig::lecture(4, 10, 1e-3);
        apply_override(&mut cfg, "precision", "bf16").unwrap();
        assert_eq!(cfg.precision, Precision::Bf16);
        assert!(apply_override(&mut cfg, "precision", "fp16").is_err());
        apply_override(&mut cfg, "precision", "auto").unwrap();
        assert_eq!(cfg.precision, Precision::Auto);
        cfg.validate().unwrap();
        let resolved = Precision::Auto.resolve();
        let expected = if crate::runtime::has_avx512_bf16() {
            Precision::Bf16
        } else {
            Precision::Fp32
        };
        assert_eq!(resolved, expected);
        assert_eq!(Precision::Fp32.resolve(), Precision::Fp32);
        assert_eq!(Precision::Bf16.resolve(), Precision::Bf16);
    }

    /// Configs written before the modern settings existed (checkpoints, fixtures) have none of
    /// their fields and load as today's behaviour: learned positions, LayerNorm, no QK-norm, an
    /// untied head, biases, AdamW; every setting takes its value through `--set`.
    #[test]
    fn configs_without_the_modern_fields_load_as_the_lecture_model() {
        let p = preset("nanogpt-cpu").unwrap();
        let mut model = serde_json::to_value(&p.model).unwrap();
        for key in ["position", "norm", "qk_norm", "tie_embeddings", "bias"] {
            assert!(
                model.as_object_mut().unwrap().remove(key).is_some(),
                "{key}"
            );
        }
        let model: ModelConfig = serde_json::from_value(model).unwrap();
        assert_eq!(model, p.model);
        let mut train = serde_json::to_value(&p.train).unwrap();
        for key in [
            "decay_fraction",
            "optimizer",
            "muon_lr",
            "muon_momentum",
            "muon_weight_decay",
        ] {
            assert!(
                train.as_object_mut().unwrap().remove(key).is_some(),
                "{key}"
            );
        }
        let train: TrainConfig = serde_json::from_value(train).unwrap();
        assert_eq!(train, p.train);
        assert_eq!(train.optimizer, OptimizerKind::Adamw);

        let (mut m, mut t) = (p.model, p.train);
        for (k, v) in [
            ("position", "rope"),
            ("norm", "rms"),
            ("activation", "relu2"),
            ("qk_norm", "true"),
            ("tie_embeddings", "true"),
            ("bias", "false"),
            ("lr_schedule", "wsd"),
            ("decay_fraction", "0.3"),
            ("optimizer", "muon"),
            ("muon_lr", "0.03"),
        ] {
            apply_to_configs(&mut m, &mut t, k, v).unwrap();
        }
        assert_eq!(
            (m.position, m.norm, m.activation),
            (Position::Rope, NormKind::Rms, Activation::Relu2)
        );
        assert!(m.qk_norm && m.tie_embeddings && !m.bias);
        assert_eq!(
            (t.lr_schedule, t.optimizer),
            (LrSchedule::Wsd, OptimizerKind::Muon)
        );
        assert_eq!((t.decay_fraction, t.muon_lr), (0.3, 0.03));
        let err = apply_to_configs(&mut m, &mut t, "optimizer", "sgd").unwrap_err();
        assert!(err.to_string().contains("`adamw` or `muon`"), "{err}");
    }

    #[test]
    fn modern_settings_are_validated_in_one_line() {
        let mut m = preset("layernorm").unwrap().model;
        m.vocab_size = 65;
        m.position = Position::Rope;
        m.n_embd = 36;
        m.n_head = 4;
        let err = m.validate().unwrap_err().to_string();
        assert!(err.contains("must be even") && !err.contains('\n'), "{err}");
        m.n_embd = 32;
        m.validate().unwrap();
        let mut t = TrainConfig::lecture(4, 10, 1e-3);
        for (key, value) in [
            ("decay_fraction", 0.0),
            ("decay_fraction", 1.5),
            ("muon_lr", 0.0),
            ("muon_momentum", 1.0),
            ("muon_weight_decay", -1.0),
        ] {
            let mut bad = t.clone();
            apply_override(&mut bad, key, &value.to_string()).unwrap();
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{key}={value}: {err}");
        }
        t.decay_fraction = 1.0;
        t.validate().unwrap();
    }

    #[test]
    fn presets_are_valid_and_unique() {
        let all = presets();
        for p in &all {
            let mut m = p.model.clone();
            m.vocab_size = 65;
            m.validate().unwrap();
            p.train.validate().unwrap();
        }
        let mut names: Vec<_> = all.iter().map(|p| p.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        assert!(preset("nope").is_err());
    }

    #[test]
    fn overrides_parse_numbers_enums_and_reject_unknown_keys() {
        let p = preset("layernorm").unwrap();
        let (mut m, mut t) = (p.model, p.train);
        apply_to_configs(&mut m, &mut t, "n_embd", "64").unwrap();
        apply_to_configs(&mut m, &mut t, "activation", "gelu").unwrap();
        apply_to_configs(&mut m, &mut t, "learning_rate", "3e-4").unwrap();
        apply_to_configs(&mut m, &mut t, "layer_norm", "false").unwrap();
        assert_eq!(m.n_embd, 64);
        assert_eq!(m.activation, Activation::Gelu);
        assert!(!m.layer_norm);
        assert_eq!(t.learning_rate, 3e-4);
        let err = apply_to_configs(&mut m, &mut t, "n_embed", "64").unwrap_err();
        assert!(err.to_string().contains("n_embd"), "{err}");
        assert!(apply_to_configs(&mut m, &mut t, "n_embd", "-3").is_err());
        assert!(apply_to_configs(&mut m, &mut t, "activation", "tanh").is_err());
        assert!(parse_override("novalue").is_err());
    }

    #[test]
    fn config_files_give_settings_and_an_optional_preset() {
        let text = "preset = \"layernorm\"\nn_layer = 2\nlearning_rate = 3e-4\nactivation = \"gelu\"\nlayer_norm = false\n";
        let (preset_name, settings) = parse_config_file("a.toml", text).unwrap();
        assert_eq!(preset_name.as_deref(), Some("layernorm"));
        let p = preset("layernorm").unwrap();
        let (mut m, mut t) = (p.model, p.train);
        for (k, v) in &settings {
            apply_to_configs(&mut m, &mut t, k, v).unwrap();
        }
        assert_eq!(m.n_layer, 2);
        assert_eq!(t.learning_rate, 3e-4);
        assert_eq!(m.activation, Activation::Gelu);
        assert!(!m.layer_norm);
        let err = parse_config_file("a.toml", "n_layer = 2\nn_embd = = 3\n").unwrap_err();
        let shown = err.to_string();
        assert!(shown.starts_with("a.toml line 2: "), "{shown}");
        assert!(!shown.contains('\n'), "{shown}");
        assert!(parse_config_file("a.toml", "n_layer = [1, 2]").is_err());
    }

    #[test]
    fn rejected_values_are_explained_in_plain_words() {
        let p = preset("layernorm").unwrap();
        let (mut m, mut t) = (p.model, p.train);
        let err = apply_to_configs(&mut m, &mut t, "n_embd", "-3").unwrap_err();
        assert!(err.to_string().contains("whole number"), "{err}");
        t.steps = 0;
        assert!(t.validate().unwrap_err().to_string().contains("steps"));
    }

    #[test]
    fn automatic_evaluations_are_about_20_and_cheap() {
        assert_eq!(auto_eval_interval(1900, 10), 100);
        assert_eq!(auto_eval_interval(5000, 20), 250);
        assert_eq!(auto_eval_interval(200, 10), 25);
        assert_eq!(auto_eval_interval(200, 20), 50);
        assert_eq!(auto_eval_interval(30, 1), 2);
        assert_eq!(auto_eval_interval(3, 20), 3);
        let t = TrainConfig {
            eval_interval: 0,
            eval_iters: 20,
            ..TrainConfig::lecture(32, 2000, 1e-3)
        };
        assert_eq!(t.eval_every(), 100);
        // The lecture's 200 batches per estimate cost about 133 steps: at most one per 500.
        let lecture = TrainConfig::lecture(32, 2000, 1e-3);
        assert_eq!(auto_eval_interval(2000, lecture.eval_iters), 500);
        assert_eq!(
            TrainConfig {
                eval_interval: 7,
                ..t
            }
            .eval_every(),
            7
        );
    }

    #[test]
    fn durations_read_as_seconds_and_print_back() {
        for (text, seconds) in [
            ("90", 90.0),
            ("90s", 90.0),
            ("20m", 1200.0),
            ("1h", 3600.0),
            ("1h30m", 5400.0),
            ("1.5h", 5400.0),
            ("2m30s", 150.0),
            ("0", 0.0),
            ("none", 0.0),
        ] {
            assert_eq!(parse_duration(text), Ok(seconds), "{text}");
        }
        for bad in ["", "m", "20x", "1h30", "-5m", "fast"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains("write e.g. 90s, 20m, 1h or 1h30m"), "{bad}: {e}");
        }
        assert_eq!(duration_text(1200.0), "20m");
        assert_eq!(duration_text(5400.0), "1h30m");
        assert_eq!(duration_text(45.0), "45s");
        assert_eq!(duration_text(0.0), "0s");
    }

    #[test]
    fn a_budget_is_a_setting_that_steps_turn_off() {
        let p = preset("fast").unwrap();
        let (mut m, mut t) = (p.model, p.train);
        assert_eq!(t.time_budget, 1200.0);
        apply_to_configs(&mut m, &mut t, "time_budget", "1h").unwrap();
        assert_eq!(t.time_budget, 3600.0);
        apply_to_configs(&mut m, &mut t, "steps", "500").unwrap();
        assert_eq!((t.steps, t.time_budget), (500, 0.0));
        // Set after the steps, the budget decides and the steps are its first guess.
        apply_to_configs(&mut m, &mut t, "time_budget", "90s").unwrap();
        assert_eq!((t.steps, t.time_budget), (500, 90.0));
        let e = apply_to_configs(&mut m, &mut t, "time_budget", "soon").unwrap_err();
        assert!(e.to_string().contains("write e.g. 90s"), "{e}");
        assert!(apply_to_configs(&mut m, &mut t, "budget_fixed_at", "3").is_err());
        // The record survives config.json: a number of seconds, and the step it was fixed at.
        t.budget_fixed_at = Some(20);
        let back: TrainConfig = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        assert_eq!((back.time_budget, back.budget_fixed_at), (90.0, Some(20)));
        // A checkpoint from before budgets has none.
        let mut old = serde_json::to_value(preset("nanogpt-cpu").unwrap().train).unwrap();
        old.as_object_mut().unwrap().remove("time_budget");
        let old: TrainConfig = serde_json::from_value(old).unwrap();
        assert_eq!((old.time_budget, old.budget_fixed_at), (0.0, None));
    }

    #[test]
    fn a_budget_buys_the_steps_that_fit_with_their_evaluations() {
        // 100 s left after 10 s and a 5 s end: 85 s; steps of 0.1 s and an evaluation of 1 s
        // every 100 steps: n steps cost 0.1 n + (n / 100 - 0 + 1) s = 85 -> n = 770.
        let every = |_: usize| 100;
        let n = budget_steps(100.0, 10.0, 20, 0.1, 1.0, 5.0, &every);
        assert!((760..=790).contains(&n), "{n}");
        let spent = 10.0 + (n - 20) as f64 * 0.1 + (n / 100 + 1) as f64 * 1.0 + 5.0;
        assert!(spent <= 100.0 + 0.2, "{spent}");
        // No time left: one more step.
        assert_eq!(budget_steps(10.0, 12.0, 7, 0.1, 1.0, 1.0, &every), 8);
    }

    #[test]
    fn companions_of_a_changed_setting_follow_it_unless_given() {
        let base = preset("lecture-5m").unwrap().train;
        let mut t = base.clone();
        t.steps = 200;
        t.learning_rate = 3e-4;
        let notes = derive_settings(&base, &mut t, &["steps", "learning_rate"]);
        assert_eq!(t.warmup_steps, 11, "100 of 1900 is 11 of 200");
        assert!((t.min_lr - 3e-5).abs() < 1e-9, "{}", t.min_lr);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes[0].starts_with("time_budget 5m -> none: the 200 steps you set"),
            "{notes:?}"
        );
        assert!(notes[1].starts_with("warmup_steps 100 -> 11"), "{notes:?}");
        assert!(notes[2].starts_with("min_lr 2e-4 -> 3e-5: "), "{notes:?}");
        // A checkpoint's explicit interval goes back to automatic when steps change.
        let old = TrainConfig {
            eval_interval: 500,
            ..base.clone()
        };
        let mut t = old.clone();
        t.steps = 200;
        derive_settings(&old, &mut t, &["steps"]);
        assert_eq!(t.eval_interval, 0);
        // What was given stays as given, and warnings say what does not make sense.
        let mut t = base.clone();
        t.steps = 50;
        t.warmup_steps = 100;
        t.min_lr = 5e-3;
        derive_settings(&base, &mut t, &["steps", "warmup_steps", "min_lr"]);
        assert_eq!((t.warmup_steps, t.min_lr), (100, 5e-3));
        let warnings = setting_warnings(&t);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("every step is warm-up"));
        assert!(warnings[1].contains("never decays"));
        assert!(setting_warnings(&base).is_empty());
    }

    #[test]
    fn a_budget_far_short_of_its_recipe_suggests_a_smaller_model() {
        // `fast` on 2 Zen 3 cores in fp32: 1212 of 4200 steps.
        let advice = budget_advice(1200.0, 4200, 1212).unwrap();
        assert!(
            advice
                .starts_with("20m buys this model 1212 steps on this machine, under half the 4200"),
            "{advice}"
        );
        assert!(advice.contains("(about 29% of that pace)"), "{advice}");
        assert!(budget_advice(3600.0, 11000, 2750)
            .unwrap()
            .contains("about a quarter of that pace"));
        // Half the guess or more, or no budget: nothing to say.
        assert_eq!(budget_advice(1200.0, 4200, 2100), None);
        assert_eq!(budget_advice(300.0, 1000, 925), None);
        assert_eq!(budget_advice(0.0, 4200, 100), None);
    }

    #[test]
    fn a_budget_of_many_passes_without_dropout_suggests_dropout() {
        // `default` for 10 minutes on 2 Zen 4 cores: 4859 steps of 32 x 128 characters over the
        // 1,003,854 of Tiny Shakespeare's training split.
        let passes = 4859.0 * 32.0 * 128.0 / 1_003_854.0;
        let advice = overfit_advice(600.0, passes, 0.0).unwrap();
        assert!(
            advice.starts_with("10m buys this model 20 passes over its training text"),
            "{advice}"
        );
        assert!(advice.contains("--set dropout=0.1"), "{advice}");
        // Five minutes there (9.4 passes), dropout already on, or no budget: nothing to say.
        assert_eq!(overfit_advice(300.0, 9.4, 0.0), None);
        assert_eq!(overfit_advice(600.0, passes, 0.1), None);
        assert_eq!(overfit_advice(0.0, passes, 0.0), None);
    }

    #[test]
    fn the_first_commands_budget_turns_dropout_on_for_many_passes() {
        let p = preset(DEFAULT_PRESET).unwrap();
        assert_eq!((p.model.dropout, p.train.budget_dropout), (0.0, 0.1));
        let note = dropout_note(600.0, 19.8, 0.1);
        assert!(
            note.starts_with("10m buys this model 20 passes over its training text on this machine: dropout 0.1 from here on"),
            "{note}"
        );
        assert!(note.contains("--set budget_dropout=0"), "{note}");
        let (mut m, mut t) = (p.model.clone(), p.train.clone());
        apply_to_configs(&mut m, &mut t, "budget_dropout", "0").unwrap();
        assert_eq!(t.budget_dropout, 0.0);
        t.budget_dropout = 1.0;
        assert!(t.validate().is_err());
        // The step it was turned on at is the run's record, not a setting.
        assert!(apply_to_configs(&mut m, &mut t, "dropout_from", "3").is_err());
    }

    #[test]
    fn a_lower_learning_rate_lowers_muons_too_unless_muon_lr_is_given() {
        // Fine-tuning the first command's model: 2e-3 -> 3e-4 takes Muon's 0.02 to 0.003.
        let base = preset(DEFAULT_PRESET).unwrap().train;
        assert_eq!(base.optimizer, OptimizerKind::Muon);
        let mut t = base.clone();
        t.learning_rate = 3e-4;
        let notes = derive_settings(&base, &mut t, &["learning_rate"]);
        assert!((t.muon_lr - 3e-3).abs() < 1e-9, "{}", t.muon_lr);
        assert!(
            notes
                .iter()
                .any(|n| n.starts_with("muon_lr 2e-2 -> 3e-3: ")),
            "{notes:?}"
        );
        let mut t = base.clone();
        t.learning_rate = 3e-4;
        t.muon_lr = 0.01;
        derive_settings(&base, &mut t, &["learning_rate", "muon_lr"]);
        assert_eq!(t.muon_lr, 0.01);
        // With AdamW alone muon_lr is unused, and stays as it was.
        let base = preset("lecture-5m").unwrap().train;
        let mut t = base.clone();
        t.learning_rate = 3e-4;
        let notes = derive_settings(&base, &mut t, &["learning_rate"]);
        assert_eq!(t.muon_lr, base.muon_lr);
        assert!(!notes.iter().any(|n| n.contains("muon_lr")), "{notes:?}");
    }

    #[test]
    fn validation_rejects_nonsense() {
        let mut m = preset("layernorm").unwrap().model;
        m.vocab_size = 65;
        m.n_head = 5;
        assert!(m.validate().unwrap_err().to_string().contains("divisible"));
        m.n_head = 4;
        m.dropout = 1.0;
        assert!(m.validate().is_err());
        m.dropout = 0.0;
        m.block_size = 0;
        assert!(m.validate().is_err());
    }
}
