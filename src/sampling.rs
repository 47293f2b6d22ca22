//! Generation: repeatedly predict the next character and sample it.
//!
//! The model's logits `z` at the last position become a distribution `p = softmax(z / temperature)`,
//! optionally restricted to the `top_k` most likely characters, and the next character is drawn
//! from it with a seeded generator: same seed, same text.
//!
//! The context is at most `block_size` characters, since the model has a position embedding for
//! each of `0..block_size` only. The lecture's `generate` crops the context to its last
//! `block_size` characters and recomputes all of them for every new character. [`Generator`]
//! instead keeps every layer's keys and values (a KV cache) and computes only the new
//! character's row: the first `block_size` characters are exactly the lecture's. When the context
//! is full, the positions of all cached characters would shift, so the cache is rebuilt from the
//! last `block_size - shift` characters (`shift` = a quarter of the block by default) and growth
//! resumes; the model then sees between 3/4 and all of a block of context instead of exactly one
//! block. `shift = 1` reproduces the lecture exactly, at the lecture's cost.
//!
//! With rotary positions (`position = rope`) nothing needs rebuilding: scores depend only on how
//! far apart a query and a key are, so a cached key stays valid as the context slides. The cache
//! is a ring of the last `block_size` keys and values ([`Model::forward_ring`]): every character
//! after the prompt costs one row, and the model always sees exactly the last `block_size`
//! characters directly. (Not quite the crop: with several layers, a cached key was computed
//! when its own position attended over the block before it, so the last character depends on up
//! to `n_layer * (block_size - 1)` earlier ones, as in sliding-window attention; a one-layer
//! model gives exactly the crop's logits.)
//!
//! On the reference engine ([`Generator::on`]) there is no cache: every character recomputes the
//! whole context, as the lecture does, over the same windows, so it draws the same text (with
//! RoPE, the whole reach of the ring with each query limited to the last `block_size` keys,
//! [`crate::reference::forward_sliding`]).

use crate::config::Position;
use crate::engine::Engine;
use crate::model::{Activations, Model};
use crate::rng::Rng;
use crate::tokenizer::{TokenId, Tokenizer, TokenizerError};

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error("the prompt has {} character{} that the model's vocabulary lacks: {}; use only characters of the text it was trained on", .0.len(), if .0.len() == 1 { "" } else { "s" }, crate::data::list_chars(.0, 20))]
    UnknownChars(Vec<char>),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// The ids of a prompt; characters the model's vocabulary lacks are one error listing them all.
pub fn encode_prompt(tokenizer: &Tokenizer, text: &str) -> Result<Vec<TokenId>, PromptError> {
    let unknown = tokenizer.unknown_chars(text);
    if !unknown.is_empty() {
        return Err(PromptError::UnknownChars(unknown));
    }
    Ok(tokenizer.encode(text)?)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// Divides the logits: below 1 sharpens the distribution, above 1 flattens it; 0 (the limit
    /// of ever smaller temperatures) always takes the most likely character. At least 0, at most
    /// [`crate::limits::MAX_TEMPERATURE`].
    pub temperature: f32,
    /// Keep only the k most likely characters (None: all).
    pub top_k: Option<usize>,
}

impl SampleSettings {
    /// The settings in their ranges ([`crate::limits::SAMPLING`]), or what is wrong in words
    /// that name the setting as the API does (a command line puts `--` before it).
    pub fn check(&self) -> Result<(), String> {
        let limit = |key| crate::limits::limit(key).expect("sampling limits");
        limit("temperature")
            .check(self.temperature as f64)
            .map_err(|e| format!("{e}; 1.0 samples the model as it is, 0.8 is a little safer"))?;
        if let Some(k) = self.top_k {
            limit("top_k").check(k as f64).map_err(|_| {
                "top_k must be at least 1 (1 always takes the most likely character); leave it out to use all".to_string()
            })?;
        }
        Ok(())
    }
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            temperature: 1.0,
            top_k: None,
        }
    }
}

/// The unnormalised weights `exp((z - max) / temperature)` of `logits` (length V) into
/// `scratch`, 0 outside the `top_k` largest; returns their sum. [`sample_from_logits`] draws
/// from them, [`distribution`] normalises them: one definition of what the sampler draws from.
///
/// As the temperature goes to 0 every weight but the largest logit's goes to 0, so at 0 (or a
/// temperature too small for a float to divide by, which the CPU may read as 0) the weights are
/// 1 for the largest logit (each of several equal ones) and 0 elsewhere. A small temperature
/// that a float can divide by may still make `z / temperature` overflow, so the weights are
/// computed from `z - max`, which is never above 0: no infinity minus infinity, no NaN.
fn weights(logits: &[f32], settings: SampleSettings, scratch: &mut Vec<f32>) -> f64 {
    let temperature = settings.temperature;
    scratch.clear();
    scratch.extend_from_slice(logits);
    if let Some(k) = settings.top_k.filter(|&k| k < logits.len()) {
        // The k-th largest value is the cut: everything below it gets probability 0 (dividing by
        // a positive temperature keeps the order, so the cut is taken on the logits themselves).
        let mut sorted = scratch.clone();
        sorted.sort_unstable_by(|a, b| b.total_cmp(a));
        let cut = sorted[k.max(1) - 1];
        for z in scratch.iter_mut() {
            if *z < cut {
                *z = f32::NEG_INFINITY;
            }
        }
    }
    let max = scratch.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let greedy = !temperature.is_normal();
    let scaled = |z: f32| -> f32 {
        if greedy {
            if z == max {
                1.0
            } else {
                0.0
            }
        } else if temperature == 1.0 {
            (z - max).exp()
        } else {
            ((z - max) as f64 / temperature as f64).exp() as f32
        }
    };
    let mut sum = 0.0f64;
    for z in scratch.iter_mut() {
        *z = scaled(*z);
        sum += *z as f64;
    }
    sum
}

/// The distribution the next character is drawn from given `logits` (length V):
/// `softmax(logits / temperature)` over the `top_k` most likely, 0 elsewhere. Into `out`.
pub fn distribution(logits: &[f32], settings: SampleSettings, out: &mut Vec<f32>) {
    let sum = weights(logits, settings, out);
    for p in out.iter_mut() {
        *p = (*p as f64 / sum) as f32;
    }
}

/// Draws one id from `logits` (length V) with the given settings. `scratch` holds V floats.
pub fn sample_from_logits(
    logits: &[f32],
    settings: SampleSettings,
    rng: &mut Rng,
    scratch: &mut Vec<f32>,
) -> TokenId {
    let sum = weights(logits, settings, scratch);
    let mut r = rng.uniform_f64() * sum;
    for (i, &p) in scratch.iter().enumerate() {
        r -= p as f64;
        if r < 0.0 {
            return i as TokenId;
        }
    }
    // Rounding left r a hair above zero: take the last character with non-zero probability.
    scratch.iter().rposition(|&p| p > 0.0).unwrap_or(0) as TokenId
}

/// Generates one character at a time from a model, with a KV cache.
pub struct Generator<'a> {
    model: &'a Model,
    settings: SampleSettings,
    engine: Engine,
    /// The fast engine's buffers, with the KV cache.
    acts: Activations,
    /// The current context, at most `block_size` ids.
    window: Vec<TokenId>,
    /// How many ids of `window` the activations hold.
    computed: usize,
    /// Ids dropped from the front when the context is full.
    shift: usize,
    /// RoPE: the absolute position of the next row the ring computes (the ids seen so far).
    position: usize,
    /// RoPE on the reference engine: the last `n_layer * (block_size - 1) + 1` ids, all that can
    /// reach the next character's logits through the ring.
    history: Vec<TokenId>,
    scratch: Vec<f32>,
}

impl<'a> Generator<'a> {
    /// Starts from `prompt` (an empty prompt starts from id 0, `'\n'` for Tiny Shakespeare, as the
    /// lecture does; a long one keeps its last `block_size` ids).
    pub fn new(model: &'a Model, prompt: &[TokenId], settings: SampleSettings) -> Self {
        let block = model.config.block_size;
        let start = prompt.len().saturating_sub(block);
        let window = if prompt.is_empty() {
            vec![0]
        } else {
            prompt[start..].to_vec()
        };
        let mut window_buf = Vec::with_capacity(block);
        window_buf.extend_from_slice(&window);
        Generator {
            model,
            settings,
            engine: Engine::Fast,
            acts: Activations::new(&model.config, 1, block, false),
            window: window_buf,
            computed: 0,
            shift: (block / 4).max(1),
            position: 0,
            history: window.clone(),
            scratch: Vec::with_capacity(model.config.vocab_size),
        }
    }

    /// Sets how many ids are dropped when the context is full (1 = exactly the lecture's
    /// cropping, recomputing the whole context for every character). Rotary models keep a ring
    /// instead and ignore it.
    pub fn with_shift(mut self, shift: usize) -> Self {
        self.shift = shift.clamp(1, self.model.config.block_size);
        self
    }

    /// Computes the logits on `engine` (the fast one by default).
    pub fn on(mut self, engine: Engine) -> Self {
        self.engine = engine;
        self
    }

    /// Draws the next id and appends it to the context.
    pub fn next_token(&mut self, rng: &mut Rng) -> TokenId {
        let v = self.model.config.vocab_size;
        let t = self.window.len();
        if self.engine == Engine::Reference {
            // The whole window again, and the logits of its last position.
            let pass = match self.model.config.position {
                Position::Learned => {
                    crate::reference::forward(self.model.weights(), &self.window, None, 1, t, None)
                }
                Position::Rope => {
                    crate::reference::forward_sliding(self.model.weights(), &self.history)
                }
            };
            let rows = pass.logits.len() / v;
            let last = &pass.logits[(rows - 1) * v..rows * v];
            let next = sample_from_logits(last, self.settings, rng, &mut self.scratch);
            self.append(next);
            return next;
        }
        if self.rope_ring() {
            let last = if self.computed == 0 {
                // The prompt, at positions 0..t, in one pass.
                self.model.forward_from(&mut self.acts, &self.window, 0);
                self.computed = t;
                self.position = t;
                &self.acts.logits()[(t - 1) * v..t * v]
            } else {
                // The last id drawn, one row at the next position, into the ring.
                let id = self.window[t - 1];
                let (model, acts, position) = (self.model, &mut self.acts, self.position);
                self.position += 1;
                crate::kernels::sequentially(|| model.forward_ring(acts, id, position))
            };
            let next = sample_from_logits(last, self.settings, rng, &mut self.scratch);
            self.append(next);
            return next;
        }
        if self.computed < self.window.len() {
            let (model, acts, window, start) =
                (self.model, &mut self.acts, &self.window, self.computed);
            if start == 0 {
                model.forward_from(acts, window, 0);
            } else {
                // One new row: too little work per kernel to be worth waking other threads.
                crate::kernels::sequentially(|| model.forward_from(acts, window, start));
            }
            self.computed = self.window.len();
        }
        let last = &self.acts.logits()[(t - 1) * v..t * v];
        let next = sample_from_logits(last, self.settings, rng, &mut self.scratch);
        self.append(next);
        next
    }

    /// Whether the fast engine's ring of rotary keys computes the rows.
    fn rope_ring(&self) -> bool {
        self.engine == Engine::Fast && self.model.config.position == Position::Rope
    }

    /// Appends `next` to the context, first dropping `shift` ids if it is full (one, keeping the
    /// ring, for rotary positions).
    fn append(&mut self, next: TokenId) {
        let cfg = &self.model.config;
        if cfg.position == Position::Rope && self.engine == Engine::Reference {
            let reach = cfg.n_layer.max(1) * (cfg.block_size - 1) + 1;
            if self.history.len() == reach {
                self.history.remove(0);
            }
            self.history.push(next);
        }
        if self.window.len() == self.model.config.block_size && self.rope_ring() {
            self.window.remove(0);
        } else if self.window.len() == self.model.config.block_size {
            // Positions are absolute: dropping ids shifts every position, so the cache restarts.
            let drop = self.shift.min(self.window.len());
            self.window.drain(..drop);
            self.computed = 0;
        }
        self.window.push(next);
    }
}

/// Generates `max_new` ids after `prompt` (see [`Generator`]), calling `on_token` as each one is
/// drawn. Returns the new ids.
pub fn generate(
    model: &Model,
    prompt: &[TokenId],
    max_new: usize,
    settings: SampleSettings,
    rng: &mut Rng,
    mut on_token: impl FnMut(TokenId),
) -> Vec<TokenId> {
    let mut generator = Generator::new(model, prompt, settings);
    (0..max_new)
        .map(|_| {
            let id = generator.next_token(rng);
            on_token(id);
            id
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    fn tiny_model() -> Model {
        let mut cfg = preset("layernorm").unwrap().model;
        cfg.vocab_size = 11;
        cfg.block_size = 6;
        cfg.n_layer = 2;
        Model::new(cfg, 3)
    }

    /// The lecture's generate: crop to the last block_size ids and recompute everything.
    fn lecture_logits(model: &Model, context: &[TokenId]) -> Vec<f32> {
        let block = model.config.block_size;
        let v = model.config.vocab_size;
        let window = &context[context.len().saturating_sub(block)..];
        let mut acts = Activations::new(&model.config, 1, block, false);
        model.forward(&mut acts, window, None, 1, window.len(), None);
        acts.logits()[(window.len() - 1) * v..].to_vec()
    }

    fn argmax(v: &[f32]) -> TokenId {
        v.iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .unwrap()
            .0 as TokenId
    }

    #[test]
    fn kv_cache_matches_recomputation_and_shift_one_is_the_lecture() {
        let model = tiny_model();
        let greedy = SampleSettings {
            temperature: 1.0,
            top_k: Some(1),
        };
        // Greedy text is a function of the logits: each character must be the argmax of a full
        // recomputation over the generator's window, for 20 characters (well past block_size 6,
        // so the cache is rebuilt several times).
        for shift in [1, 2, 6] {
            let mut gen = Generator::new(&model, &[3, 1], greedy).with_shift(shift);
            let mut rng = Rng::new(0);
            let mut context = vec![3, 1];
            for step in 0..20 {
                let window = gen.window.clone();
                if shift == 1 {
                    // Exactly the lecture's crop to the last block_size ids.
                    assert_eq!(
                        window,
                        context[context.len().saturating_sub(6)..],
                        "step {step}"
                    );
                }
                let id = gen.next_token(&mut rng);
                assert_eq!(
                    id,
                    argmax(&lecture_logits(&model, &window)),
                    "shift {shift}, step {step}"
                );
                context.push(id);
            }
        }
        // Before the context is full, the cached logits equal a full recomputation.
        let mut gen = Generator::new(&model, &[3, 1, 4], SampleSettings::default());
        let mut rng = Rng::new(5);
        gen.next_token(&mut rng);
        gen.next_token(&mut rng);
        let window = gen.window.clone();
        gen.model.forward_from(&mut gen.acts, &window, gen.computed);
        let t = window.len();
        let cached = gen.acts.logits()[(t - 1) * 11..t * 11].to_vec();
        for (a, b) in cached.iter().zip(&lecture_logits(&model, &window)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }

    /// With RoPE the ring cache runs past block_size without a rebuild: every character's logits
    /// equal the reference's sliding-window attention over the whole text (with QK-norm, two
    /// layers), and with one layer a full recomputation of the last block_size characters (only
    /// relative positions matter); both engines write the same text.
    #[test]
    fn rope_ring_matches_sliding_attention_and_the_crop() {
        for n_layer in [1, 2] {
            let mut cfg = tiny_model().config;
            cfg.position = Position::Rope;
            cfg.qk_norm = true;
            cfg.n_layer = n_layer;
            let model = Model::new(cfg, 8);
            let v = model.config.vocab_size;
            let mut gen = Generator::new(&model, &[3, 1], SampleSettings::default());
            let mut rng = Rng::new(2);
            let mut context = vec![3, 1];
            for step in 0..30 {
                let id = gen.next_token(&mut rng);
                // The ring's logits of the step just taken, against the whole text.
                let slot = (context.len() - 1) % 6;
                let got = gen.acts.logits()[slot * v..(slot + 1) * v].to_vec();
                let sliding = crate::reference::forward_sliding(model.weights(), &context).logits;
                let want = &sliding[sliding.len() - v..];
                for (a, b) in got.iter().zip(want) {
                    assert!(
                        (a - b).abs() < 1e-4,
                        "{n_layer} layers, step {step}: {a} vs {b}"
                    );
                }
                if n_layer == 1 {
                    for (a, b) in got.iter().zip(&lecture_logits(&model, &context)) {
                        assert!((a - b).abs() < 1e-4, "crop, step {step}: {a} vs {b}");
                    }
                }
                context.push(id);
                assert_eq!(gen.window, context[context.len().saturating_sub(6)..]);
            }
            assert!(gen.position > 20, "the ring went round several times");
            let greedy = SampleSettings {
                temperature: 1.0,
                top_k: Some(1),
            };
            let text = |engine: Engine| {
                let mut gen = Generator::new(&model, &[3, 1], greedy).on(engine);
                let mut rng = Rng::new(4);
                (0..20)
                    .map(|_| gen.next_token(&mut rng))
                    .collect::<Vec<_>>()
            };
            assert_eq!(text(Engine::Fast), text(Engine::Reference));
        }
    }

    /// The reference engine, recomputing every window, draws the same text as the cached fast
    /// engine (greedy, so that a last-digit difference in the logits cannot change a draw).
    #[test]
    fn both_engines_write_the_same_text() {
        let model = tiny_model();
        let greedy = SampleSettings {
            temperature: 1.0,
            top_k: Some(1),
        };
        let text = |engine: Engine| {
            let mut gen = Generator::new(&model, &[3, 1], greedy).on(engine);
            let mut rng = Rng::new(4);
            (0..20)
                .map(|_| gen.next_token(&mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(text(Engine::Fast), text(Engine::Reference));
    }

    #[test]
    fn same_seed_same_text() {
        let model = tiny_model();
        let s = SampleSettings::default();
        let a = generate(&model, &[1], 30, s, &mut Rng::new(9), |_| {});
        let b = generate(&model, &[1], 30, s, &mut Rng::new(9), |_| {});
        let c = generate(&model, &[1], 30, s, &mut Rng::new(10), |_| {});
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn top_k_one_is_greedy_and_low_temperature_sharpens() {
        let logits = [0.1, 2.0, 1.9, -1.0];
        let mut rng = Rng::new(1);
        let mut s = Vec::new();
        let greedy = SampleSettings {
            temperature: 1.0,
            top_k: Some(1),
        };
        for _ in 0..50 {
            assert_eq!(sample_from_logits(&logits, greedy, &mut rng, &mut s), 1);
        }
        let top2 = SampleSettings {
            temperature: 1.0,
            top_k: Some(2),
        };
        for _ in 0..200 {
            let id = sample_from_logits(&logits, top2, &mut rng, &mut s);
            assert!(id == 1 || id == 2);
        }
        let cold = SampleSettings {
            temperature: 0.01,
            top_k: None,
        };
        let ones = (0..200)
            .filter(|_| sample_from_logits(&logits, cold, &mut rng, &mut s) == 1)
            .count();
        assert!(ones > 190, "{ones}");
    }

    #[test]
    fn the_limit_of_small_temperatures_is_the_argmax_without_nans() {
        // Logits large enough that z / T overflows for small T.
        let logits = [30.0, 31.5, -12.0, 31.5, 7.0];
        let mut probs = Vec::new();
        for t in [0.0, 1e-45, 1e-38, 1e-30, 1e-6] {
            let settings = SampleSettings {
                temperature: t,
                top_k: None,
            };
            distribution(&logits, settings, &mut probs);
            // The two equal largest logits share everything.
            assert_eq!(probs, vec![0.0, 0.5, 0.0, 0.5, 0.0], "T = {t}");
        }
        // A temperature a float can divide by, with logits 1e-3 apart, is not yet the argmax.
        let close = [1.0, 1.001];
        let settings = SampleSettings {
            temperature: 1e-3,
            top_k: None,
        };
        distribution(&close, settings, &mut probs);
        let expected = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((probs[1] as f64 - expected).abs() < 1e-3, "{probs:?}");
        // Drawing at T = 0 takes the most likely character (the first of equal ones or the
        // other, never a third).
        let mut rng = Rng::new(3);
        let mut s = Vec::new();
        let zero = SampleSettings {
            temperature: 0.0,
            top_k: None,
        };
        for _ in 0..100 {
            let id = sample_from_logits(&logits, zero, &mut rng, &mut s);
            assert!(id == 1 || id == 3, "{id}");
        }
        assert!(zero.check().is_ok());
        let hot = SampleSettings {
            temperature: 1000.0,
            top_k: None,
        };
        assert!(hot
            .check()
            .unwrap_err()
            .starts_with("temperature must lie between 0 and 100"));
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        let logits = [0.0, (3.0f32).ln()]; // probabilities 1/4, 3/4
        let mut rng = Rng::new(2);
        let mut s = Vec::new();
        let n = 40_000;
        let ones = (0..n)
            .filter(|_| {
                sample_from_logits(&logits, SampleSettings::default(), &mut rng, &mut s) == 1
            })
            .count();
        assert!((ones as f64 / n as f64 - 0.75).abs() < 0.01);
    }
}
