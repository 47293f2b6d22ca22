//! Looking inside a trained model: for a model and a text, the numbers behind each idea of the
//! lecture, as the forward pass computes them.
//!
//! - [`next_char_probs`]: `p(next | text[..=t]) = softmax(logits_t)` at every position t, (T, V);
//! - [`attention`]: the softmax weights `a[l][h][t][u]` of every layer and head, (L, H, T, T),
//!   exactly those the forward pass multiplies the values by (evaluation mode: no dropout);
//! - [`surprise`]: each character's loss `-ln p(char | what came before)`, over the same
//!   consecutive windows of `block_size` as `chargpt eval`, so the mean is eval's loss;
//! - [`embeddings`]: the token embeddings projected on their first two principal components, and
//!   the cosine similarity of every pair of position embeddings;
//! - [`head_trace`]: for one position, layer and head, every intermediate number of that head:
//!   the block input row, after LayerNorm, `q = x Wq`, `k = x Wk` and `v = x Wv` of every visible
//!   position, the scores `q . k`, scaled, masked, the softmax weights and the weighted sum.
//!
//! - [`model_parts`]: the model's layers in order, with their shapes and parameter counts, for a
//!   diagram;
//!
//! A run records what these give on a fixed probe text at every evaluation
//! ([`crate::runs::probe_record`]), so that a page can replay how it learned.
//!
//! Texts longer than `block_size` keep their last `block_size` characters (the most the model
//! sees at once), except in [`surprise`], which walks windows over the whole text. Everything
//! runs the fast engine in evaluation mode on one sequence; front ends (`chargpt attention`, the
//! web page) call these and never the model's buffers directly.

use crate::config::{Architecture, NormKind, Position};
use crate::data::{fill_windows, window_count};
use crate::kernels::{layernorm, rmsnorm};
use crate::model::{Activations, Model};
use crate::sampling::{distribution, SampleSettings};
use crate::tokenizer::TokenId;

mod parts;
pub use parts::{model_parts, ModelParts, Part, TensorInfo};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InspectError {
    #[error("the text is empty; give at least one character")]
    EmptyText,
    #[error("a bigram model has no attention (each prediction depends on the current character only); look at a model with attention, e.g. one trained with --preset single-head")]
    NoAttention,
    #[error("position {position} is outside the text of {len} characters (0 to {})", .len - 1)]
    Position { position: usize, len: usize },
    #[error("layer {layer} does not exist: the model has {n_layer} (0 to {})", .n_layer - 1)]
    Layer { layer: usize, n_layer: usize },
    #[error("head {head} does not exist: each layer has {n_head} (0 to {})", .n_head - 1)]
    Head { head: usize, n_head: usize },
    #[error("the text has {len} characters; scoring needs at least {needed} (a window of block_size {block} and the character after it)")]
    TooShort {
        len: usize,
        needed: usize,
        block: usize,
    },
}

/// The last `block_size` tokens of `ids`: what the model sees at once.
pub fn visible(model: &Model, ids: &[TokenId]) -> usize {
    ids.len().saturating_sub(model.config.block_size)
}

/// Runs the model once over `ids` (at most `block_size` of them) in evaluation mode.
pub fn run(model: &Model, ids: &[TokenId]) -> Activations {
    let t = ids.len();
    let mut acts = Activations::new(&model.config, 1, t, false);
    model.forward(&mut acts, ids, None, 1, t, None);
    acts
}

/// `softmax(logits)` of one row, in place.
pub fn softmax(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    let mut sum = 0.0f64;
    for x in row.iter_mut() {
        *x = (*x - max).exp();
        sum += *x as f64;
    }
    for x in row.iter_mut() {
        *x = (*x as f64 / sum) as f32;
    }
}

/// The next-character distribution after every prefix of `ids` (its last `block_size`): row t is
/// what `chargpt sample` draws from with `settings` after reading `ids[..=t]`
/// ([`crate::sampling::distribution`]: `softmax(logits_t / temperature)` over the `top_k` most
/// likely). (T, V), row-major.
pub fn next_char_probs(
    model: &Model,
    ids: &[TokenId],
    settings: SampleSettings,
) -> Result<Vec<f32>, InspectError> {
    if ids.is_empty() {
        return Err(InspectError::EmptyText);
    }
    let ids = &ids[visible(model, ids)..];
    let acts = run(model, ids);
    let v = model.config.vocab_size;
    let mut probs = Vec::with_capacity(acts.logits().len());
    let mut row = Vec::with_capacity(v);
    for logits in acts.logits().chunks_exact(v) {
        distribution(logits, settings, &mut row);
        probs.extend_from_slice(&row);
    }
    Ok(probs)
}

/// The logits after every prefix of `ids` (its last `block_size`), (T, V): what
/// [`next_char_probs`] turns into distributions, for front ends that reshape them themselves
/// (temperature and top-k sliders) with [`crate::sampling::distribution`].
pub fn next_char_logits(model: &Model, ids: &[TokenId]) -> Result<Vec<f32>, InspectError> {
    if ids.is_empty() {
        return Err(InspectError::EmptyText);
    }
    let ids = &ids[visible(model, ids)..];
    Ok(run(model, ids).logits().to_vec())
}

/// The attention weights of every head over a text.
#[derive(Debug, Clone, PartialEq)]
pub struct Attention {
    pub n_layer: usize,
    pub n_head: usize,
    /// Positions looked at (the text's last `block_size`).
    pub len: usize,
    /// `weights[((l * H + h) * T + t) * T + u]`: the weight query t gives key u in head h of
    /// layer l; 0 for u > t (the causal mask).
    pub weights: Vec<f32>,
}

impl Attention {
    /// The (T, T) map of one head.
    pub fn map(&self, layer: usize, head: usize) -> &[f32] {
        let t2 = self.len * self.len;
        let at = (layer * self.n_head + head) * t2;
        &self.weights[at..at + t2]
    }

    /// What head (layer, head) does on average over the queries that have a choice (all but the
    /// first, which can only see itself; a one-character text has only that one).
    pub fn summary(&self, layer: usize, head: usize) -> HeadSummary {
        let (t_n, map) = (self.len, self.map(layer, head));
        let first = usize::from(t_n > 1);
        let queries = (t_n - first).max(1) as f64;
        let mut s = HeadSummary::default();
        for t in first..t_n {
            let row = &map[t * t_n..(t + 1) * t_n];
            s.look_back += (0..=t).map(|u| row[u] as f64 * (t - u) as f64).sum::<f64>();
            s.itself += row[t] as f64;
            if t > 0 {
                s.previous += row[t - 1] as f64;
            }
        }
        s.look_back /= queries;
        s.itself /= queries;
        s.previous /= queries;
        s
    }
}

/// A head's attention in three numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct HeadSummary {
    /// The mean look-back distance `sum_u a[t, u] (t - u)`: 0 for a head that only looks at the
    /// current character, about t/2 for one that spreads evenly over the past.
    pub look_back: f64,
    /// The mean weight on the query's own character, and on the one just before.
    pub itself: f64,
    pub previous: f64,
}

/// The softmax weights of every layer and head over `ids` (its last `block_size`).
pub fn attention(model: &Model, ids: &[TokenId]) -> Result<Attention, InspectError> {
    if ids.is_empty() {
        return Err(InspectError::EmptyText);
    }
    if model.config.architecture == Architecture::Bigram {
        return Err(InspectError::NoAttention);
    }
    let ids = &ids[visible(model, ids)..];
    let acts = run(model, ids);
    let mut weights = Vec::new();
    for l in 0..model.config.n_layer {
        weights.extend_from_slice(acts.attention_weights(l).expect("a block per layer"));
    }
    Ok(Attention {
        n_layer: model.config.n_layer,
        n_head: model.config.n_head,
        len: ids.len(),
        weights,
    })
}

/// Each character's loss over a text, as `chargpt eval` scores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Surprise {
    /// The characters scored: window w covers targets `ids[w*T + 1 ..= w*T + T]`, so the first
    /// character (which nothing predicts) and a partial last window are left out. `scored[i]` is
    /// the index in `ids` of the character `losses[i]` belongs to.
    pub scored: Vec<usize>,
    /// `-ln p(ids[scored[i]] | the window before it)`, in nats.
    pub losses: Vec<f32>,
    /// `p` itself, the probability the model gave the character that came.
    pub probs: Vec<f32>,
    /// For each scored character, the model's five most likely characters there, with their
    /// probabilities (most likely first).
    pub top: Vec<[(TokenId, f32); 5]>,
    pub block_size: usize,
}

impl Surprise {
    pub fn mean(&self) -> f64 {
        self.losses.iter().map(|&l| l as f64).sum::<f64>() / self.losses.len().max(1) as f64
    }
}

/// Every character's loss over `ids`, cut into consecutive non-overlapping windows of
/// `block_size` as [`crate::training::evaluate_exact`] cuts a split: the mean is that function's
/// loss on the same tokens.
pub fn surprise(model: &Model, ids: &[TokenId]) -> Result<Surprise, InspectError> {
    let t = model.config.block_size;
    let windows = window_count(ids.len(), t);
    if windows == 0 {
        return Err(InspectError::TooShort {
            len: ids.len(),
            needed: t + 1,
            block: t,
        });
    }
    let v = model.config.vocab_size;
    let mut acts = Activations::new(&model.config, windows, t, false);
    let (mut inputs, mut targets) = (vec![0; windows * t], vec![0; windows * t]);
    fill_windows(ids, t, 0, windows, &mut inputs, &mut targets);
    model.forward(&mut acts, &inputs, Some(&targets), windows, t, None);
    let losses = acts.losses().to_vec();
    let mut probs = Vec::with_capacity(losses.len());
    let mut top = Vec::with_capacity(losses.len());
    for (row, &target) in acts.logits().chunks_exact(v).zip(&targets) {
        let mut p = row.to_vec();
        softmax(&mut p);
        probs.push(p[target as usize]);
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| p[b].total_cmp(&p[a]).then(a.cmp(&b)));
        let mut best = [(0 as TokenId, 0.0f32); 5];
        for (slot, &i) in best.iter_mut().zip(&order) {
            *slot = (i as TokenId, p[i]);
        }
        top.push(best);
    }
    Ok(Surprise {
        scored: (0..windows * t).map(|i| i + 1).collect(),
        losses,
        probs,
        top,
        block_size: t,
    })
}

/// The embeddings as a learner can look at them.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbeddingMap {
    /// Each character's token embedding projected on the first two principal components of all
    /// of them (centred), (V, 2).
    pub tokens: Vec<[f32; 2]>,
    /// The share of the embeddings' variance along each of the two components.
    pub explained: [f32; 2],
    /// `cos(wpe[i], wpe[j])` for every pair of positions, (T, T); absent without learned
    /// position embeddings.
    pub position_cosine: Option<Vec<f32>>,
}

/// The first two principal components of `rows` (n rows of d values, row-major): the rows
/// centred, projected on the two unit directions of greatest variance. Returns the projections
/// (n, 2) and the share of the total variance along each direction.
///
/// The directions are the top eigenvectors of the covariance `X^T X / n`, found by power
/// iteration (the second after removing the first): plain, deterministic, and exact enough for
/// a picture. Each direction's sign is fixed so that its largest component is positive.
pub fn principal_components(rows: &[f32], n: usize, d: usize) -> (Vec<[f32; 2]>, [f32; 2]) {
    assert_eq!(rows.len(), n * d);
    let mut mean = vec![0.0f64; d];
    for r in rows.chunks_exact(d) {
        for (m, &x) in mean.iter_mut().zip(r) {
            *m += x as f64 / n as f64;
        }
    }
    let x: Vec<f64> = rows
        .chunks_exact(d)
        .flat_map(|r| r.iter().zip(&mean).map(|(&x, m)| x as f64 - m))
        .collect();
    let mut cov = vec![0.0f64; d * d];
    for r in x.chunks_exact(d) {
        for i in 0..d {
            for j in 0..d {
                cov[i * d + j] += r[i] * r[j] / n as f64;
            }
        }
    }
    let total: f64 = (0..d).map(|i| cov[i * d + i]).sum();
    let mut directions: Vec<Vec<f64>> = Vec::new();
    let mut variances = [0.0f64; 2];
    for (k, variance) in variances.iter_mut().enumerate() {
        // Start from a fixed vector that is not orthogonal to anything in particular.
        let mut v: Vec<f64> = (0..d).map(|i| 1.0 + 0.1 * (i as f64 + k as f64)).collect();
        for _ in 0..500 {
            let mut next = vec![0.0f64; d];
            for i in 0..d {
                next[i] = (0..d).map(|j| cov[i * d + j] * v[j]).sum();
            }
            for u in &directions {
                let dot: f64 = next.iter().zip(u).map(|(a, b)| a * b).sum();
                next.iter_mut().zip(u).for_each(|(a, b)| *a -= dot * b);
            }
            let norm = next.iter().map(|a| a * a).sum::<f64>().sqrt();
            if norm == 0.0 {
                break;
            }
            next.iter_mut().for_each(|a| *a /= norm);
            let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
            v = next;
            if change < 1e-12 {
                break;
            }
        }
        let largest = v
            .iter()
            .copied()
            .fold(0.0f64, |m, a| if a.abs() > m.abs() { a } else { m });
        if largest < 0.0 {
            v.iter_mut().for_each(|a| *a = -*a);
        }
        *variance = (0..d)
            .map(|i| v[i] * (0..d).map(|j| cov[i * d + j] * v[j]).sum::<f64>())
            .sum();
        directions.push(v);
    }
    let projections = x
        .chunks_exact(d)
        .map(|r| {
            let p = |u: &Vec<f64>| r.iter().zip(u).map(|(a, b)| a * b).sum::<f64>() as f32;
            [p(&directions[0]), p(&directions[1])]
        })
        .collect();
    let share = |v: f64| if total > 0.0 { (v / total) as f32 } else { 0.0 };
    (projections, [share(variances[0]), share(variances[1])])
}

/// The token embeddings on their first two principal components, and the position embeddings'
/// cosine similarities.
pub fn embeddings(model: &Model) -> EmbeddingMap {
    let v = model.config.vocab_size;
    let wte = &model.params[model.layout.token_embedding.clone()];
    let d = wte.len() / v;
    let (tokens, explained) = principal_components(wte, v, d);
    let position_cosine = model.layout.position_embedding.as_ref().map(|range| {
        let wpe = &model.params[range.clone()];
        let t = wpe.len() / d;
        let norms: Vec<f64> = wpe
            .chunks_exact(d)
            .map(|r| r.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt())
            .collect();
        let mut cos = vec![0.0f32; t * t];
        for i in 0..t {
            for j in 0..t {
                let (a, b) = (&wpe[i * d..(i + 1) * d], &wpe[j * d..(j + 1) * d]);
                let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
                cos[i * t + j] = (dot / (norms[i] * norms[j]).max(1e-30)) as f32;
            }
        }
        cos
    });
    EmbeddingMap {
        tokens,
        explained,
        position_cosine,
    }
}

/// One head's computation at one position, with the model's real numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadTrace {
    pub layer: usize,
    pub head: usize,
    /// The query position t (in the text's last `block_size`).
    pub position: usize,
    pub head_size: usize,
    /// The factor on `q . k` (`1/sqrt(head_size)`, or `1/sqrt(n_embd)` in the ladder's rungs).
    pub scale: f32,
    /// The block's input at t, (C).
    pub input: Vec<f32>,
    /// Whether q and k are RMS-normalised per head (`qk_norm`) and rotated by their position
    /// (`position = rope`) between the linear map and the scores.
    pub qk_norm: bool,
    pub rope: bool,
    /// `ln1(input)` (LayerNorm or RMSNorm, as the model has it), what the head's q, k and v are
    /// computed from (the input itself without a norm), (C).
    pub normed: Vec<f32>,
    /// `normed Wq^T` for this head, (hs): the query before QK-norm and rotation (the query
    /// itself when the model has neither).
    pub q_linear: Vec<f32>,
    /// `q_t` as the scores read it, (hs).
    pub q: Vec<f32>,
    /// `k_u` (as the scores read them) and `v_u` of every position u <= t, (t + 1, hs) each.
    pub k: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// `q_t . k_u` for u <= t.
    pub dots: Vec<f32>,
    /// `scale * q_t . k_u`.
    pub scores: Vec<f32>,
    /// For every position u of the text, whether t may look at it (u <= t): the causal mask.
    pub visible: Vec<bool>,
    /// `softmax(scores)`, (t + 1): the weights the forward pass uses.
    pub weights: Vec<f32>,
    /// `sum_u weights[u] v_u`, (hs): this head's slice of the attention output at t.
    pub output: Vec<f32>,
}

/// Every number head `head` of layer `layer` computes for query `position` of `ids` (its last
/// `block_size`), read from a forward pass: q, k and v are the rows of that pass's qkv product,
/// and the scores, mask, softmax and weighted sum are recomputed from them step by step (they
/// match the pass's own to float rounding; the tests check it).
pub fn head_trace(
    model: &Model,
    ids: &[TokenId],
    position: usize,
    layer: usize,
    head: usize,
) -> Result<HeadTrace, InspectError> {
    let cfg = &model.config;
    if ids.is_empty() {
        return Err(InspectError::EmptyText);
    }
    if cfg.architecture == Architecture::Bigram {
        return Err(InspectError::NoAttention);
    }
    let ids = &ids[visible(model, ids)..];
    let len = ids.len();
    if position >= len {
        return Err(InspectError::Position { position, len });
    }
    if layer >= cfg.n_layer {
        return Err(InspectError::Layer {
            layer,
            n_layer: cfg.n_layer,
        });
    }
    if head >= cfg.n_head {
        return Err(InspectError::Head {
            head,
            n_head: cfg.n_head,
        });
    }
    let acts = run(model, ids);
    let (c, hs) = (cfg.n_embd, cfg.head_size());
    let t = position;
    let x = acts.block_input(layer).expect("layer checked");
    let input = x[t * c..(t + 1) * c].to_vec();
    let block = &model.layout.blocks[layer];
    let normed = match &block.ln1 {
        Some(norm) => {
            let weight = &model.params[norm.weight.clone()];
            let mut out = vec![0.0f32; c];
            let mut stats = [0.0f32; 2];
            let (mean, rstd) = stats.split_at_mut(1);
            match cfg.norm {
                NormKind::Layer => {
                    let bias = norm.bias.as_ref().map(|b| &model.params[b.clone()]);
                    layernorm::forward(&mut out, mean, rstd, &input, weight, bias, c)
                }
                NormKind::Rms => rmsnorm::forward(&mut out, rstd, &input, weight, c),
            }
            out
        }
        None => input.clone(),
    };
    // The linear maps themselves, from the weights: row `h * hs + i` of the q (k, v) third of
    // qkv.weight dotted with the normed input.
    let w = &model.params[block.qkv.weight.clone()];
    let linear = |part: usize, x: &[f32]| -> Vec<f32> {
        (0..hs)
            .map(|i| {
                let row = &w[(part * c + head * hs + i) * c..][..c];
                row.iter().zip(x).map(|(a, b)| a * b).sum()
            })
            .collect()
    };
    let q_linear = linear(0, &normed);
    // k and v of earlier positions come from the forward pass's own rows (their normed inputs
    // are not kept); q, k as the scores read them, after QK-norm and rotation where the model
    // has them.
    let qkv = acts.qkv(layer).expect("layer checked");
    let row = |u: usize, part: usize| {
        let at = u * 3 * c + part * c + head * hs;
        qkv[at..at + hs].to_vec()
    };
    let q = row(t, 0);
    let k: Vec<Vec<f32>> = (0..=t).map(|u| row(u, 1)).collect();
    let v: Vec<Vec<f32>> = (0..=t).map(|u| row(u, 2)).collect();
    let scale = cfg.attention_scale_factor();
    let dots: Vec<f32> = k
        .iter()
        .map(|ku| q.iter().zip(ku).map(|(a, b)| a * b).sum())
        .collect();
    let scores: Vec<f32> = dots.iter().map(|d| d * scale).collect();
    let mut weights = scores.clone();
    softmax(&mut weights);
    let mut output = vec![0.0f32; hs];
    for (w, vu) in weights.iter().zip(&v) {
        for (o, x) in output.iter_mut().zip(vu) {
            *o += w * x;
        }
    }
    Ok(HeadTrace {
        layer,
        head,
        position,
        head_size: hs,
        scale,
        qk_norm: block.qk_norm.is_some(),
        rope: cfg.position == Position::Rope,
        input,
        normed,
        q_linear,
        q,
        k,
        v,
        dots,
        scores,
        visible: (0..len).map(|u| u <= t).collect(),
        weights,
        output,
    })
}

/// The pieces of one forward pass a head trace is checked against: the head's softmax row and
/// its slice of the concatenated head outputs at `position` (for tests and front ends that want
/// to show both).
pub fn forward_head_slices(
    model: &Model,
    ids: &[TokenId],
    position: usize,
    layer: usize,
    head: usize,
) -> Option<(Vec<f32>, Vec<f32>)> {
    let cfg = &model.config;
    let ids = &ids[visible(model, ids)..];
    let (t_n, c, hs) = (ids.len(), cfg.n_embd, cfg.head_size());
    let acts = run(model, ids);
    let att = acts.attention_weights(layer)?;
    let row = &att[(head * t_n + position) * t_n..][..=position];
    let out = &acts.heads_output(layer)?[position * c + head * hs..][..hs];
    Some((row.to_vec(), out.to_vec()))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::preset;
    use crate::config::Activation;
    use crate::rng::Rng;
    use crate::training::evaluate_exact;

    /// A small model of preset `name` (vocabulary 11), for the tests here and of the probes.
    pub(crate) fn model(name: &str, seed: u64) -> Model {
        let mut cfg = preset(name).unwrap().model;
        cfg.vocab_size = 11;
        if cfg.architecture == Architecture::Transformer {
            cfg.block_size = 16;
            cfg.n_embd = 16;
            cfg.n_head = 4;
            cfg.n_layer = 2;
        }
        Model::new(cfg, seed)
    }

    /// `n` random ids of that vocabulary.
    pub(crate) fn ids(n: usize, seed: u64) -> Vec<TokenId> {
        let mut rng = Rng::new(seed);
        (0..n).map(|_| rng.below(11) as TokenId).collect()
    }

    #[test]
    fn next_character_probabilities_are_distributions_from_the_logits() {
        let m = model("nanogpt-cpu", 1);
        let text = ids(10, 2);
        let plain = SampleSettings::default();
        let probs = next_char_probs(&m, &text, plain).unwrap();
        assert_eq!(probs.len(), 10 * 11);
        for row in probs.chunks_exact(11) {
            let sum: f64 = row.iter().map(|&p| p as f64).sum();
            assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        }
        // The last row is what generation draws from: 20000 draws of the next character after
        // the text land on each character as often as its probability says.
        let last = &probs[9 * 11..];
        let mut counts = [0usize; 11];
        let mut rng = Rng::new(9);
        let draws = 20_000;
        for _ in 0..draws {
            let mut gen = crate::sampling::Generator::new(&m, &text, plain);
            counts[gen.next_token(&mut rng) as usize] += 1;
        }
        for (c, &p) in counts.iter().zip(last) {
            let f = *c as f64 / draws as f64;
            let sd = (p as f64 * (1.0 - p as f64) / draws as f64).sqrt();
            assert!(
                (f - p as f64).abs() < 5.0 * sd + 1e-4,
                "drawn {f}, probability {p}"
            );
        }
        // Temperature and top-k reshape the bars as they reshape the draws.
        let sharp = next_char_probs(
            &m,
            &text,
            SampleSettings {
                temperature: 0.5,
                top_k: Some(3),
            },
        )
        .unwrap();
        let row = &sharp[9 * 11..];
        assert_eq!(row.iter().filter(|&&p| p > 0.0).count(), 3);
        assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        assert_eq!(
            next_char_probs(&m, &[], plain),
            Err(InspectError::EmptyText)
        );
    }

    #[test]
    fn surprise_averages_to_the_exact_evaluation_of_the_same_windows() {
        for name in ["nanogpt-cpu", "bigram"] {
            let m = model(name, 3);
            let text = ids(200, 4);
            let s = surprise(&m, &text).unwrap();
            let exact = evaluate_exact(&m, &text, 4, crate::engine::Engine::Fast);
            assert_eq!(s.losses.len(), exact.tokens);
            assert!(
                (s.mean() - exact.loss).abs() < 1e-6,
                "{name}: {} vs {}",
                s.mean(),
                exact.loss
            );
            for ((&l, &p), top) in s.losses.iter().zip(&s.probs).zip(&s.top) {
                assert!((l + p.ln()).abs() < 1e-4, "loss is -ln p");
                assert!(top[0].1 >= top[1].1 && top[0].1 >= p);
            }
        }
        let m = model("nanogpt-cpu", 3);
        assert!(matches!(
            surprise(&m, &ids(16, 1)),
            Err(InspectError::TooShort { .. })
        ));
    }

    #[test]
    fn a_head_trace_is_that_heads_slice_of_the_forward_pass() {
        for scale_by_embd in [false, true] {
            let mut m = model("nanogpt-cpu", 5);
            if scale_by_embd {
                m.config.attention_scale = crate::config::AttentionScale::NEmbd;
            }
            let text = ids(12, 6);
            let att = attention(&m, &text).unwrap();
            for (layer, head, position) in [(0, 0, 0), (1, 3, 11), (0, 2, 7)] {
                let trace = head_trace(&m, &text, position, layer, head).unwrap();
                let (row, out) = forward_head_slices(&m, &text, position, layer, head).unwrap();
                for (a, b) in trace.weights.iter().zip(&row) {
                    assert!((a - b).abs() < 1e-6, "weights {a} vs {b}");
                }
                for (a, b) in trace.output.iter().zip(&out) {
                    assert!((a - b).abs() < 1e-5, "output {a} vs {b}");
                }
                assert_eq!(
                    &att.map(layer, head)[position * 12..][..=position],
                    &row[..]
                );
                assert_eq!(trace.visible.iter().filter(|&&v| v).count(), position + 1);
                // q = ln1(x) Wq, computed from the weights, is the forward pass's q.
                for (a, b) in trace.q_linear.iter().zip(&trace.q) {
                    assert!((a - b).abs() < 1e-5, "{a} vs {b}");
                }
            }
        }
        let m = model("nanogpt-cpu", 5);
        let text = ids(5, 1);
        assert!(matches!(
            head_trace(&m, &text, 5, 0, 0),
            Err(InspectError::Position { .. })
        ));
        assert!(matches!(
            head_trace(&m, &text, 0, 2, 0),
            Err(InspectError::Layer { .. })
        ));
        assert!(matches!(
            head_trace(&m, &text, 0, 0, 4),
            Err(InspectError::Head { .. })
        ));
        let bigram = model("bigram", 1);
        assert_eq!(attention(&bigram, &text), Err(InspectError::NoAttention));
    }

    #[test]
    fn the_summary_measures_how_far_a_head_looks_back() {
        let of = |len: usize, weights: Vec<f32>| {
            Attention {
                n_layer: 1,
                n_head: 1,
                len,
                weights,
            }
            .summary(0, 0)
        };
        let s = |look_back, itself, previous| HeadSummary {
            look_back,
            itself,
            previous,
        };
        // A head that always looks at the current character...
        let diagonal = vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];
        assert_eq!(of(3, diagonal), s(0.0, 1.0, 0.0));
        // ...one that always looks at the first: look-back (1 + 2) / 2 over the queries with a
        // choice...
        let first = vec![1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0];
        assert_eq!(of(3, first), s(1.5, 0.0, 0.5));
        // ...and a one-character text, whose only query sees only itself.
        assert_eq!(of(1, vec![1.0]), s(0.0, 1.0, 0.0));
    }

    #[test]
    fn principal_components_of_a_known_matrix() {
        // Points along (1, 1, 0) with spread 10 and along (1, -1, 0) with spread 1: the first
        // component is (1, 1, 0)/sqrt 2, the second (1, -1, 0)/sqrt 2.
        let mut rows = Vec::new();
        for (a, b) in [(-10.0f32, 0.0f32), (10.0, 0.0), (0.0, -1.0), (0.0, 1.0)] {
            let s = std::f32::consts::FRAC_1_SQRT_2;
            rows.extend_from_slice(&[s * (a + b), s * (a - b), 0.0]);
        }
        let (points, explained) = principal_components(&rows, 4, 3);
        let expected = [[-10.0, 0.0], [10.0, 0.0], [0.0, -1.0], [0.0, 1.0]];
        for (p, e) in points.iter().zip(&expected) {
            assert!(
                (p[0] - e[0]).abs() < 1e-4 && (p[1].abs() - e[1].abs()).abs() < 1e-4,
                "{p:?} vs {e:?}"
            );
        }
        assert!((explained[0] - 200.0 / 202.0).abs() < 1e-5, "{explained:?}");
        assert!((explained[1] - 2.0 / 202.0).abs() < 1e-5, "{explained:?}");
        let map = embeddings(&model("nanogpt-cpu", 2));
        assert_eq!(map.tokens.len(), 11);
        let cos = map.position_cosine.unwrap();
        assert_eq!(cos.len(), 16 * 16);
        assert!((cos[0] - 1.0).abs() < 1e-5 && (cos[17] - 1.0).abs() < 1e-5);
    }
    /// RoPE, RMSNorm, QK-norm, tied embeddings and no biases: the trace is still the head's
    /// slice of the forward pass, its query is the linear map's normed per head and rotated by
    /// its position (the reference functions, applied here by hand), there are no position
    /// embeddings to draw, and the diagram holds every parameter once.
    #[test]
    fn a_modern_model_is_traced_and_drawn_as_it_computes() {
        use crate::reference::layers::{qk_norm_forward, rope_forward, AttentionShape};
        let mut cfg = model("nanogpt-cpu", 1).config;
        cfg.position = Position::Rope;
        cfg.norm = NormKind::Rms;
        cfg.qk_norm = true;
        cfg.tie_embeddings = true;
        cfg.bias = false;
        cfg.activation = Activation::Relu2;
        let m = Model::new(cfg.clone(), 4);
        let text = ids(12, 3);
        let hs = cfg.head_size();
        for (layer, head, position) in [(0, 1, 0), (1, 3, 11), (1, 0, 6)] {
            let trace = head_trace(&m, &text, position, layer, head).unwrap();
            assert!(trace.qk_norm && trace.rope);
            let (row, out) = forward_head_slices(&m, &text, position, layer, head).unwrap();
            for (a, b) in trace.weights.iter().zip(&row) {
                assert!((a - b).abs() < 1e-6, "weights {a} vs {b}");
            }
            for (a, b) in trace.output.iter().zip(&out) {
                assert!((a - b).abs() < 1e-5, "output {a} vs {b}");
            }
            // q = rope(qk_norm(ln1(x) Wq)) at the query's position.
            let qk = m.layout.blocks[layer].qk_norm.as_ref().unwrap();
            let shape = AttentionShape {
                batch: 1,
                seq_len: 1,
                channels: hs,
                n_head: 1,
            };
            let mut qkv = trace.q_linear.clone();
            qkv.resize(3 * hs, 0.0);
            let mut normed = vec![0.0; 3 * hs];
            let (wq, wk) = (&m.params[qk.q.clone()], &m.params[qk.k.clone()]);
            qk_norm_forward(&mut normed, &qkv, wq, wk, shape);
            let mut turned = vec![0.0; 3 * hs];
            rope_forward(&mut turned, &normed, position, shape);
            for (a, b) in turned[..hs].iter().zip(&trace.q) {
                assert!((a - b).abs() < 1e-5, "q {a} vs {b}");
            }
        }
        let map = embeddings(&m);
        assert_eq!(map.position_cosine, None, "RoPE has no position table");
        assert_eq!(map.tokens.len(), 11);
        let tokenizer =
            crate::tokenizer::Tokenizer::from_chars("abcdefghijk".chars().collect()).unwrap();
        let record = crate::runs::probe_record(&m, &tokenizer, &text, 0, 2.0);
        assert!(record.position_cosine.is_none() && record.attention.is_some());
        let parts = model_parts(&cfg);
        let sum = |ps: &[Part]| ps.iter().map(|p| p.params).sum::<usize>();
        assert_eq!(
            sum(&parts.before) + parts.n_layer * sum(&parts.block) + sum(&parts.after),
            m.num_params()
        );
        let names: Vec<&str> = parts.block.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "RMSNorm",
                "multi-head attention",
                "residual add",
                "RMSNorm",
                "feed-forward",
                "residual add"
            ]
        );
        assert!(parts.block[1].detail.contains("RoPE"));
        assert!(parts.block[4].detail.contains("ReLU²(x W1) W2"));
        let lm_head = &parts.after[1];
        assert_eq!((lm_head.name.as_str(), lm_head.params), ("lm_head", 0));
        assert!(lm_head.detail.contains("tied"));
        assert_eq!(parts.before.len(), 1, "no position embedding");
    }
}
