//! The model: parameters in one flat buffer with named views, activations preallocated for a
//! (B, T) shape, and the forward and backward passes as calls into [`crate::kernels`].
//!
//! ```text
//! tokens (B, T)
//!   -> x = wte[tokens] + wpe[t]                       (B, T, C)   token + position embedding
//!   -> for each block:
//!        a  = ln1(x)               if layer_norm      (B, T, C)   LayerNorm or RMSNorm
//!        qkv = a Wqkv^T                               (B, T, 3C)  no bias, as in the lecture
//!        q, k = rmsnorm(q), rmsnorm(k) per head  if qk_norm
//!        q, k = rope(q), rope(k)   if position = rope
//!        y  = attention(qkv)                          (B, T, C)   H causal heads, concatenated
//!        y  = dropout(y Wproj^T + bproj)  if projection
//!        x  = x + y  (residual) or x = y
//!        b  = ln2(x)               if layer_norm
//!        f  = act(b Wfc^T + bfc)                      (B, T, 4C)  (C for the Linear variant)
//!        f  = dropout(f Wfc2^T + bfc2)     if Mlp
//!        x  = x + f  (residual) or x = f
//!   -> ln_f(x)                     if layer_norm
//!   -> logits = x Wlm^T + blm                         (B, T, V)
//!   -> loss = mean cross-entropy(logits, targets)
//! ```
//! The bigram model is just `logits = wte[tokens]` with `wte` of shape (V, V).
//!
//! Parameter names and shapes (C = n_embd, V = vocab_size, T = block_size, F = 4C or C):
//!
//! | name | shape |
//! |---|---|
//! | `token_embedding.weight` | (V, C), or (V, V) for the bigram |
//! | `position_embedding.weight` | (T, C) |
//! | `blocks.{i}.ln1.weight`, `.bias` | (C) |
//! | `blocks.{i}.attn.qkv.weight` | (3C, C): rows `[q; k; v]`, head h at rows `h*hs..(h+1)*hs` of each |
//! | `blocks.{i}.attn.proj.weight`, `.bias` | (C, C), (C) |
//! | `blocks.{i}.ln2.weight`, `.bias` | (C) |
//! | `blocks.{i}.ffn.fc.weight`, `.bias` | (F, C), (F) |
//! | `blocks.{i}.ffn.proj.weight`, `.bias` | (C, F), (C) (Mlp only) |
//! | `ln_f.weight`, `.bias` | (C) |
//! | `lm_head.weight`, `.bias` | (V, C), (V) |
//! | `blocks.{i}.attn.q_norm.weight`, `k_norm.weight` | (hs) each, with `qk_norm` |
//!
//! The settings beyond the lecture remove tensors: `position = rope` the position embedding,
//! `norm = rms` the norms' biases, `bias = false` every bias, and `tie_embeddings = true`
//! `lm_head.weight`: the head then reads `token_embedding.weight` (V, C), stored once, and its
//! gradient is the sum of both uses (the head's product writes it, the embedding's backward adds
//! to it).
//!
//! Weights use PyTorch's `nn.Linear` layout (out, in), so a chargpt tensor loads directly into
//! the equivalent PyTorch module. The lecture's per-head `key`, `query`, `value` maps of head h
//! are rows `C + h*hs..`, `h*hs..` and `2C + h*hs..` of `qkv.weight`.

mod activations;
mod backward;
mod forward;

pub use crate::layout::{BlockLayout, Linear, Norm, ParamLayout, ParamSpec, QkNorm, Weights};
pub use activations::Activations;

use crate::config::{Init, ModelConfig, Position, Precision};
use crate::kernels::matmul::Weight;
use crate::kernels::matmul_bf16::PackedWeight;
use crate::kernels::rope::RopeTable;
use crate::layout::Role;
use crate::memory::{zeroed, OutOfMemory};
use crate::rng::Rng;
use rayon::prelude::*;
use std::ops::Range;

/// A model: its configuration, the layout of its parameters, and the parameters.
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
    /// In bf16 precision, every linear weight rounded to bf16 and packed for the products (its
    /// range in `params` and the copy); `None` in fp32. [`Model::refresh_bf16`] renews it after
    /// the parameters change.
    bf16: Option<Vec<(Range<usize>, PackedWeight)>>,
    /// With `position = rope`, the cosines and sines of positions `0..block_size`.
    rope: Option<RopeTable>,
}

/// RoPE's table for `config`, where it turns queries and keys.
fn rope_table(config: &ModelConfig) -> Option<RopeTable> {
    (config.position == Position::Rope && config.n_head > 0)
        .then(|| RopeTable::new(config.block_size, config.head_size()))
}

impl Model {
    /// A freshly initialised model (config validated by the caller).
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        Self::try_new(config, seed).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Model::new`], or [`OutOfMemory`] if the system refuses the parameters' buffer.
    pub fn try_new(config: ModelConfig, seed: u64) -> Result<Self, OutOfMemory> {
        let layout = ParamLayout::new(&config);
        let mut params = zeroed::<f32>(layout.len, "the parameters")?;
        let mut rng = Rng::new(seed);
        for spec in &layout.specs {
            let p = &mut params[spec.range()];
            match (config.init, spec.role) {
                (_, Role::NormWeight) => p.fill(1.0),
                (_, Role::NormBias) => p.fill(0.0),
                (Init::Lecture, Role::LinearBias { .. }) => p.fill(0.0),
                (Init::Lecture, Role::Embedding | Role::LinearWeight { .. }) => {
                    p.iter_mut().for_each(|x| *x = 0.02 * rng.normal())
                }
                (Init::Pytorch, Role::Embedding) => p.iter_mut().for_each(|x| *x = rng.normal()),
                (Init::Pytorch, Role::LinearWeight { fan_in } | Role::LinearBias { fan_in }) => {
                    let bound = 1.0 / (fan_in as f32).sqrt();
                    p.iter_mut()
                        .for_each(|x| *x = (2.0 * rng.uniform() - 1.0) * bound);
                }
            }
        }
        Ok(Model {
            rope: rope_table(&config),
            config,
            layout,
            params,
            bf16: None,
        })
    }

    /// The parameters as both engines read them (the reference engine takes only these).
    pub fn weights(&self) -> Weights<'_> {
        Weights {
            config: &self.config,
            layout: &self.layout,
            params: &self.params,
        }
    }

    /// Wraps existing parameters (e.g. from a checkpoint); the length must match the layout.
    pub fn from_params(config: ModelConfig, params: Vec<f32>) -> Option<Self> {
        let layout = ParamLayout::new(&config);
        (params.len() == layout.len).then(|| Model {
            rope: rope_table(&config),
            config,
            layout,
            params,
            bf16: None,
        })
    }

    /// Whether [`Model::extend_vocabulary`] starts new characters at logits the caller chooses:
    /// the bigram's table, or an `lm_head` with rows and a bias of its own. A head tied to the
    /// embedding, or one without a bias, has no context-free constant to hold a chosen logit.
    pub fn sets_new_logits(&self) -> bool {
        self.config.architecture == crate::config::Architecture::Bigram
            || (!self.config.tie_embeddings && self.config.bias)
    }

    /// The model with `new_logits.len()` more characters at the end of its vocabulary. Every
    /// tensor is copied by name; the rows (and, in the bigram's (V, V) table, the columns) of the
    /// new ids are filled so that the model starts where it was for the old characters:
    /// - `token_embedding`: a new character's row is the mean of the old rows (an "average
    ///   character", which training then tells apart);
    /// - where [`Model::sets_new_logits`]: `lm_head.weight`'s new rows are zero, so a new
    ///   character's logit does not depend on the context at first, and `lm_head.bias` is
    ///   `new_logits[j]`; in the bigram table the new columns are `new_logits[j]`;
    /// - otherwise (tied, or no biases) `new_logits` is not read: a new character's head row
    ///   (the new embedding row when tied) and bias are the means of the old ones, so, logits
    ///   being linear in them, its logit starts as the mean of the old characters' logits.
    ///
    /// Choosing `new_logits` (see [`crate::runs::Run::fine_tune`]) sets how likely the new
    /// characters are before any training.
    pub fn extend_vocabulary(&self, new_logits: &[f32]) -> Model {
        let mean_start = !self.sets_new_logits();
        let (v_old, added) = (self.config.vocab_size, new_logits.len());
        let v = v_old + added;
        let config = ModelConfig {
            vocab_size: v,
            ..self.config.clone()
        };
        let layout = ParamLayout::new(&config);
        let mut params = vec![0.0f32; layout.len];
        for spec in &layout.specs {
            let old = self
                .layout
                .spec(&spec.name)
                .expect("extending keeps every tensor");
            let src = &self.params[old.range()];
            let dst = &mut params[spec.range()];
            if old.shape == spec.shape {
                dst.copy_from_slice(src);
                continue;
            }
            let cols_old = if old.shape.len() == 2 {
                old.shape[1]
            } else {
                1
            };
            let cols = if spec.shape.len() == 2 {
                spec.shape[1]
            } else {
                1
            };
            // The old rows (and their old columns) stay where they were.
            for r in 0..v_old {
                dst[r * cols..r * cols + cols_old]
                    .copy_from_slice(&src[r * cols_old..(r + 1) * cols_old]);
            }
            let bigram = spec.shape.len() == 2 && cols == v;
            // The mean of the old rows, for the new ones.
            let fill_mean = |dst: &mut [f32]| {
                let mut mean = vec![0.0f32; cols_old];
                for r in 0..v_old {
                    for (m, &x) in mean.iter_mut().zip(&src[r * cols_old..]) {
                        *m += x / v_old as f32;
                    }
                }
                for r in v_old..v {
                    dst[r * cols..r * cols + cols_old].copy_from_slice(&mean);
                }
            };
            match spec.role {
                Role::Embedding => {
                    fill_mean(dst);
                    if bigram {
                        for r in 0..v {
                            dst[r * cols + v_old..(r + 1) * cols].copy_from_slice(new_logits);
                        }
                    }
                }
                Role::LinearBias { .. } if mean_start => fill_mean(dst),
                Role::LinearBias { .. } => dst[v_old..].copy_from_slice(new_logits),
                // lm_head.weight, the only linear weight with a vocabulary-sized dimension.
                Role::LinearWeight { .. } if mean_start => fill_mean(dst),
                // With a bias of its own, lm_head's new rows stay zero.
                _ => {}
            }
        }
        Model::from_params(config, params).expect("length from the layout")
    }

    /// The precision of the linear layers' products.
    pub fn precision(&self) -> Precision {
        match self.bf16 {
            Some(_) => Precision::Bf16,
            None => Precision::Fp32,
        }
    }

    /// Switches the linear layers' products to `precision` (`auto` as [`Precision::resolve`]
    /// decides): bf16 makes (and fills) the bf16 copies of the linear weights, fp32 drops them.
    /// The caller has checked that the CPU runs bf16 ([`Precision::check_supported`]).
    pub fn set_precision(&mut self, precision: Precision) {
        let precision = precision.resolve();
        if precision == Precision::Bf16 {
            // Every thread's packing buffers at their largest now, not in some later step: for the
            // widest linear layer, or attention's (T, T) scores if wider.
            let widest = self
                .layout
                .linear_weights()
                .map(|(_, oc, ic)| oc.max(ic))
                .chain([self.config.block_size])
                .max()
                .unwrap_or(0);
            rayon::broadcast(|_| crate::kernels::matmul_bf16::reserve_buffers(widest));
        }
        self.bf16 = match precision {
            Precision::Fp32 | Precision::Auto => None,
            Precision::Bf16 => Some(
                self.layout
                    .linear_weights()
                    .map(|(range, oc, ic)| (range, PackedWeight::new(oc, ic)))
                    .collect(),
            ),
        };
        self.refresh_bf16();
    }

    /// Rounds the linear weights into their bf16 copies again (once per optimizer step: the
    /// products then read bf16 weights without converting them each time). Allocates nothing.
    pub fn refresh_bf16(&mut self) {
        let _timer = crate::profile::scope(crate::profile::Kernel::Optimizer, false);
        let params = &self.params;
        if let Some(copies) = &mut self.bf16 {
            copies
                .par_iter_mut()
                .with_max_len(1)
                .for_each(|(range, packed)| packed.pack(&params[range.clone()]));
        }
    }

    /// Bytes held by the bf16 copies (0 in fp32).
    pub fn bf16_bytes(&self) -> usize {
        self.bf16
            .iter()
            .flatten()
            .map(|(_, packed)| packed.bytes())
            .sum()
    }

    /// The linear weight at `range` as the products read it: its fp32 values, and its bf16 copy in
    /// bf16 precision.
    pub(crate) fn weight(&self, range: &Range<usize>) -> Weight<'_> {
        Weight {
            values: &self.params[range.clone()],
            bf16: self
                .bf16
                .as_ref()
                .and_then(|c| c.iter().find(|(r, _)| r == range))
                .map(|(_, packed)| packed),
        }
    }

    pub fn num_params(&self) -> usize {
        self.layout.len
    }

    /// The usual estimate of one training step's floating-point operations on `batch` sequences
    /// of `block_size` tokens (Kaplan et al.; nanoGPT's `estimate_mfu`):
    /// `6 * params * tokens + 12 * n_layer * n_embd * block_size * tokens` (2 flops for the
    /// forward and 4 for the backward multiply-add of every parameter per token, plus the
    /// attention scores and weighted sums, counted over the full T x T).
    pub fn flops_per_step(&self, batch: usize) -> f64 {
        let c = &self.config;
        let tokens = (batch * c.block_size) as f64;
        6.0 * self.num_params() as f64 * tokens
            + 12.0 * (c.n_layer * c.n_embd * c.block_size) as f64 * tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The logits of a 6-character model and of its 8-character extension on one window of 8.
    fn logits_of_both(model: &Model, ext: &Model) -> (Vec<f32>, Vec<f32>) {
        let x: Vec<TokenId> = vec![0, 3, 5, 2, 1, 4, 0, 2];
        let logits = |m: &Model| {
            let mut acts = Activations::new(&m.config, 1, 8, false);
            m.forward(&mut acts, &x, None, 1, 8, None);
            acts.logits().to_vec()
        };
        (logits(model), logits(ext))
    }

    #[test]
    fn a_tied_or_biasless_head_starts_new_characters_at_the_mean_logit() {
        for (tied, bias) in [(true, false), (true, true), (false, false)] {
            let mut cfg = preset("fast").unwrap().model;
            (cfg.vocab_size, cfg.n_embd, cfg.n_head, cfg.n_layer) = (6, 16, 2, 2);
            (cfg.tie_embeddings, cfg.bias) = (tied, bias);
            let model = Model::new(cfg, 3);
            assert!(!model.sets_new_logits());
            let ext = model.extend_vocabulary(&[9.0, 9.0]);
            let (a, b) = logits_of_both(&model, &ext);
            for t in 0..8 {
                let (old, new) = (&a[t * 6..t * 6 + 6], &b[t * 8..t * 8 + 8]);
                let mean = old.iter().sum::<f32>() / 6.0;
                let at = format!("tied {tied}, bias {bias}, position {t}");
                for (o, n) in old.iter().zip(&new[..6]) {
                    assert!((o - n).abs() < 1e-5, "{at}: old logits kept");
                }
                for n in &new[6..] {
                    assert!((n - mean).abs() < 1e-4, "{at}: {n} against the mean {mean}");
                }
            }
        }
    }

    #[test]
    fn extending_the_vocabulary_keeps_the_old_characters_logits() {
        for name in ["layernorm", "bigram"] {
            let mut cfg = preset(name).unwrap().model;
            cfg.vocab_size = 6;
            let model = Model::new(cfg.clone(), 3);
            let ext = model.extend_vocabulary(&[-1.5, 0.25]);
            assert_eq!(ext.config.vocab_size, 8);
            let (a, b) = logits_of_both(&model, &ext);
            for t in 0..8 {
                let (old, new) = (&a[t * 6..t * 6 + 6], &b[t * 8..t * 8 + 8]);
                assert_eq!(old, &new[..6], "{name}: old logits kept");
                assert_eq!(&new[6..], &[-1.5, 0.25], "{name}: new logits as given");
            }
            // A new character reads the mean embedding row.
            let te = ext.layout.spec("token_embedding.weight").unwrap();
            let cols = te.shape[1];
            let rows = &ext.params[te.range()];
            let mean0: f32 = (0..6).map(|r| rows[r * cols]).sum::<f32>() / 6.0;
            assert!((rows[6 * cols] - mean0).abs() < 1e-6);
        }
    }
    use crate::config::{preset, Activation, AttentionScale, FeedForward, NormKind};
    use crate::kernels::gradcheck::check;
    use crate::rng::DropoutSeed;
    use crate::tokenizer::TokenId;

    /// The whole model's gradient against finite differences of its loss, with dropout on (the
    /// same seed gives the same masks, so the loss is a deterministic function of the
    /// parameters), for shapes that take each path through a block.
    #[test]
    fn whole_model_gradient_matches_finite_differences() {
        let base = {
            let mut m = preset("layernorm").unwrap().model;
            m.vocab_size = 7;
            m.n_embd = 8;
            m.n_head = 2;
            m.n_layer = 2;
            m.block_size = 5;
            m.dropout = 0.3;
            m.init = Init::Pytorch;
            m
        };
        let variants = [
            ("pre-norm blocks, ReLU", base.clone()),
            (
                "GELU, n_embd scaling",
                ModelConfig {
                    activation: Activation::Gelu,
                    attention_scale: AttentionScale::NEmbd,
                    ..base.clone()
                },
            ),
            (
                "no residual, Linear feed-forward, no projection, no LayerNorm",
                ModelConfig {
                    residual: false,
                    layer_norm: false,
                    attention_projection: false,
                    feed_forward: FeedForward::Linear,
                    ..base.clone()
                },
            ),
            (
                "residual without LayerNorm, Linear feed-forward",
                ModelConfig {
                    layer_norm: false,
                    feed_forward: FeedForward::Linear,
                    ..base.clone()
                },
            ),
            (
                "no feed-forward",
                ModelConfig {
                    feed_forward: FeedForward::None,
                    ..base.clone()
                },
            ),
            (
                "rope, RMSNorm, relu2, QK-norm",
                ModelConfig {
                    position: Position::Rope,
                    norm: NormKind::Rms,
                    activation: Activation::Relu2,
                    qk_norm: true,
                    ..base.clone()
                },
            ),
            (
                "tied embeddings, no biases",
                ModelConfig {
                    tie_embeddings: true,
                    bias: false,
                    ..base.clone()
                },
            ),
            (
                "rope and QK-norm with LayerNorm, tied, GELU",
                ModelConfig {
                    position: Position::Rope,
                    qk_norm: true,
                    tie_embeddings: true,
                    activation: Activation::Gelu,
                    ..base.clone()
                },
            ),
        ];
        let mut rng = Rng::new(12);
        for (name, cfg) in variants {
            let model = Model::new(cfg.clone(), 5);
            let (b, t) = (3, 5);
            let x: Vec<TokenId> = (0..b * t).map(|_| rng.below(7) as TokenId).collect();
            let y: Vec<TokenId> = (0..b * t).map(|_| rng.below(7) as TokenId).collect();
            let mut acts = Activations::new(&cfg, b, t, true);
            model.forward(&mut acts, &x, Some(&y), b, t, Some(DropoutSeed::new(99)));
            // NaN to start with: backward overwrites the whole gradient.
            let mut grads = vec![f32::NAN; model.num_params()];
            model.backward(&mut acts, &mut grads);
            let mut probe = model.clone();
            let mut probe_acts = Activations::new(&cfg, b, t, true);
            check(
                name,
                &model.params,
                &grads,
                |p| {
                    probe.params.copy_from_slice(p);
                    probe
                        .forward(
                            &mut probe_acts,
                            &x,
                            Some(&y),
                            b,
                            t,
                            Some(DropoutSeed::new(99)),
                        )
                        .unwrap() as f64
                },
                5e-3,
            );
        }
    }

    /// bf16 products change the loss and the gradient by about what rounding the operands to 8
    /// significant bits does (measured: loss 4.19205 against 4.19211, gradient 0.4% of its norm
    /// apart, cosine 0.99999): within 2e-3 and 2%, pointing the same way; the fp32 numbers come
    /// back when switched back.
    #[test]
    fn bf16_loss_and_gradient_are_close_to_fp32() {
        // Heads of 16 (fp32 attention) and of 64 (bf16 attention where the CPU has it).
        for (n_embd, n_head) in [(64, 4), (128, 2)] {
            bf16_close_to_fp32(n_embd, n_head);
        }
    }

    fn bf16_close_to_fp32(n_embd: usize, n_head: usize) {
        let mut cfg = preset("nanogpt-cpu").unwrap().model;
        cfg.vocab_size = 65;
        cfg.n_embd = n_embd;
        cfg.n_head = n_head;
        cfg.n_layer = 2;
        cfg.block_size = 32;
        cfg.dropout = 0.1;
        let (b, t) = (4, 32);
        let mut rng = Rng::new(3);
        let x: Vec<TokenId> = (0..b * t).map(|_| rng.below(65) as TokenId).collect();
        let y: Vec<TokenId> = (0..b * t).map(|_| rng.below(65) as TokenId).collect();
        let mut model = Model::new(cfg.clone(), 9);
        let mut acts = Activations::new(&cfg, b, t, true);
        let mut run = |model: &Model| {
            let loss = model
                .forward(
                    &mut acts,
                    &x,
                    Some(&y),
                    b,
                    t,
                    Some(crate::rng::DropoutSeed::new(4)),
                )
                .unwrap();
            let mut grads = vec![f32::NAN; model.num_params()];
            model.backward(&mut acts, &mut grads);
            (loss, grads)
        };
        let (loss32, grad32) = run(&model);
        model.set_precision(crate::config::Precision::Bf16);
        assert_eq!(model.precision(), crate::config::Precision::Bf16);
        let (loss16, grad16) = run(&model);
        model.set_precision(crate::config::Precision::Fp32);
        let (loss_back, grad_back) = run(&model);
        assert_eq!((loss_back, &grad_back), (loss32, &grad32));

        assert!(
            (loss16 - loss32).abs() < 2e-3,
            "{n_embd}/{n_head}: loss {loss16} vs {loss32}"
        );
        assert_ne!(loss16, loss32, "the bf16 products were not used");
        let dot = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(&u, &v)| u as f64 * v as f64)
                .sum::<f64>()
        };
        let norm32 = dot(&grad32, &grad32).sqrt();
        let diff: Vec<f32> = grad16.iter().zip(&grad32).map(|(a, b)| a - b).collect();
        let relative = dot(&diff, &diff).sqrt() / norm32;
        let cosine = dot(&grad16, &grad32) / (norm32 * dot(&grad16, &grad16).sqrt());
        assert!(
            relative < 0.02 && cosine > 0.9995,
            "gradient: relative difference {relative:.4}, cosine {cosine:.6}"
        );
        // Every tensor's gradient, not just the largest, follows fp32.
        for spec in &model.layout.specs {
            let (a, b) = (&grad16[spec.range()], &grad32[spec.range()]);
            let cosine = dot(a, b) / (dot(a, a) * dot(b, b)).sqrt().max(1e-30);
            assert!(
                cosine > 0.99,
                "{n_embd}/{n_head}: {}: cosine {cosine:.5}",
                spec.name
            );
        }
    }
}
