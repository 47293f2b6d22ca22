//! The model: parameters in one flat buffer with named views, activations preallocated for a
//! (B, T) shape, and the forward and backward passes as calls into [`crate::kernels`].
//!
//! ```text
//! tokens (B, T)
//!   -> x = wte[tokens] + wpe[t]                       (B, T, C)   token + position embedding
//!   -> for each block:
//!        a  = ln1(x)               if layer_norm      (B, T, C)
//!        qkv = a Wqkv^T                               (B, T, 3C)  no bias, as in the lecture
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
//!
//! Weights use PyTorch's `nn.Linear` layout (out, in), so a chargpt tensor loads directly into
//! the equivalent PyTorch module. The lecture's per-head `key`, `query`, `value` maps of head h
//! are rows `C + h*hs..`, `h*hs..` and `2C + h*hs..` of `qkv.weight`.

mod activations;
mod backward;
mod forward;
mod layout;

pub use activations::Activations;
pub use layout::{BlockLayout, Linear, Norm, ParamLayout, ParamSpec};

use crate::config::{Init, ModelConfig};
use crate::rng::Rng;
use layout::Role;

/// A model: its configuration, the layout of its parameters, and the parameters.
#[derive(Debug, Clone)]
pub struct Model {
    pub config: ModelConfig,
    pub layout: ParamLayout,
    pub params: Vec<f32>,
}

impl Model {
    /// A freshly initialised model (config validated by the caller).
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        let layout = ParamLayout::new(&config);
        let mut params = vec![0.0f32; layout.len];
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
        Model {
            config,
            layout,
            params,
        }
    }

    /// Wraps existing parameters (e.g. from a checkpoint); the length must match the layout.
    pub fn from_params(config: ModelConfig, params: Vec<f32>) -> Option<Self> {
        let layout = ParamLayout::new(&config);
        (params.len() == layout.len).then_some(Model {
            config,
            layout,
            params,
        })
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
    use crate::config::{preset, Activation, AttentionScale, FeedForward};
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
}
