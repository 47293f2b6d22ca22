//! Generation: repeatedly predict the next character and sample it.
//!
//! For a context of at most `block_size` characters (longer contexts keep their last
//! `block_size`), the model's logits `z` at the last position become a distribution
//! `p = softmax(z / temperature)`, optionally restricted to the `top_k` most likely characters,
//! and the next character is drawn from it with a seeded generator: same seed, same text.

use crate::model::{Activations, Model};
use crate::rng::Rng;
use crate::tokenizer::TokenId;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    /// Divides the logits: below 1 sharpens the distribution, above 1 flattens it. Must be > 0.
    pub temperature: f32,
    /// Keep only the k most likely characters (None: all).
    pub top_k: Option<usize>,
}

impl Default for SampleSettings {
    fn default() -> Self {
        SampleSettings {
            temperature: 1.0,
            top_k: None,
        }
    }
}

/// Draws one id from `logits` (length V) with the given settings. `scratch` holds V floats.
pub fn sample_from_logits(
    logits: &[f32],
    settings: SampleSettings,
    rng: &mut Rng,
    scratch: &mut Vec<f32>,
) -> TokenId {
    scratch.clear();
    scratch.extend(logits.iter().map(|&z| z / settings.temperature));
    if let Some(k) = settings.top_k.filter(|&k| k < logits.len()) {
        // The k-th largest value is the cut: everything below it gets probability 0.
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
    let mut sum = 0.0f64;
    for z in scratch.iter_mut() {
        *z = (*z - max).exp();
        sum += *z as f64;
    }
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

/// Generates `max_new` ids after `prompt` (an empty prompt starts from id 0, `'\n'` for Tiny
/// Shakespeare, as the lecture does), calling `on_token` as each one is drawn. Returns the new ids.
pub fn generate(
    model: &Model,
    prompt: &[TokenId],
    max_new: usize,
    settings: SampleSettings,
    rng: &mut Rng,
    mut on_token: impl FnMut(TokenId),
) -> Vec<TokenId> {
    let block = model.config.block_size;
    let v = model.config.vocab_size;
    let mut context: Vec<TokenId> = if prompt.is_empty() {
        vec![0]
    } else {
        prompt.to_vec()
    };
    let mut acts = Activations::new(&model.config, 1, block, false);
    let mut scratch = Vec::with_capacity(v);
    let mut out = Vec::with_capacity(max_new);
    for _ in 0..max_new {
        let start = context.len().saturating_sub(block);
        let window = &context[start..];
        let t = window.len();
        model.forward(&mut acts, window, None, 1, t, None);
        let last = &acts.logits()[(t - 1) * v..t * v];
        let next = sample_from_logits(last, settings, rng, &mut scratch);
        on_token(next);
        out.push(next);
        context.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
