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

use crate::config::{Architecture, FeedForward, Init, ModelConfig};
use crate::kernels::{
    activation, attention, cross_entropy, dropout, embedding, layernorm, matmul, residual,
};
use crate::rng::Rng;
use crate::tokenizer::TokenId;
use std::ops::Range;

/// One named tensor inside the flat parameter buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    role: Role,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }

    /// Weight matrices and embeddings: what nanoGPT applies weight decay to.
    pub fn is_matrix(&self) -> bool {
        self.shape.len() >= 2
    }
}

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Embedding,
    LinearWeight { fan_in: usize },
    LinearBias { fan_in: usize },
    NormWeight,
    NormBias,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub weight: Range<usize>,
    pub bias: Option<Range<usize>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    pub weight: Range<usize>,
    pub bias: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlockLayout {
    pub ln1: Option<Norm>,
    pub qkv: Linear,
    pub proj: Option<Linear>,
    pub ln2: Option<Norm>,
    pub fc: Option<Linear>,
    pub fc2: Option<Linear>,
}

/// Where every tensor lives in the flat buffer (parameters and gradients share it).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    pub len: usize,
    pub token_embedding: Range<usize>,
    pub position_embedding: Option<Range<usize>>,
    pub blocks: Vec<BlockLayout>,
    pub ln_f: Option<Norm>,
    pub lm_head: Option<Linear>,
}

struct LayoutBuilder {
    specs: Vec<ParamSpec>,
    len: usize,
}

impl LayoutBuilder {
    fn push(&mut self, name: String, shape: Vec<usize>, role: Role) -> Range<usize> {
        let spec = ParamSpec {
            name,
            shape,
            offset: self.len,
            role,
        };
        let range = spec.range();
        self.len = range.end;
        self.specs.push(spec);
        range
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Linear {
        let weight = self.push(
            format!("{prefix}.weight"),
            vec![out, inp],
            Role::LinearWeight { fan_in: inp },
        );
        let bias = bias.then(|| {
            self.push(
                format!("{prefix}.bias"),
                vec![out],
                Role::LinearBias { fan_in: inp },
            )
        });
        Linear { weight, bias }
    }

    fn norm(&mut self, prefix: &str, c: usize) -> Norm {
        Norm {
            weight: self.push(format!("{prefix}.weight"), vec![c], Role::NormWeight),
            bias: self.push(format!("{prefix}.bias"), vec![c], Role::NormBias),
        }
    }
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let mut b = LayoutBuilder {
            specs: Vec::new(),
            len: 0,
        };
        let (v, c) = (cfg.vocab_size, cfg.n_embd);
        if cfg.architecture == Architecture::Bigram {
            let token_embedding =
                b.push("token_embedding.weight".into(), vec![v, v], Role::Embedding);
            return ParamLayout {
                specs: b.specs,
                len: b.len,
                token_embedding,
                position_embedding: None,
                blocks: Vec::new(),
                ln_f: None,
                lm_head: None,
            };
        }
        let token_embedding = b.push("token_embedding.weight".into(), vec![v, c], Role::Embedding);
        let position_embedding = Some(b.push(
            "position_embedding.weight".into(),
            vec![cfg.block_size, c],
            Role::Embedding,
        ));
        let f = cfg.ffn_hidden();
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let p = format!("blocks.{i}");
                let ln1 = cfg.layer_norm.then(|| b.norm(&format!("{p}.ln1"), c));
                let qkv = b.linear(&format!("{p}.attn.qkv"), 3 * c, c, false);
                let proj = cfg
                    .attention_projection
                    .then(|| b.linear(&format!("{p}.attn.proj"), c, c, true));
                let has_ffn = cfg.feed_forward != FeedForward::None;
                let ln2 = (cfg.layer_norm && has_ffn).then(|| b.norm(&format!("{p}.ln2"), c));
                let fc = has_ffn.then(|| b.linear(&format!("{p}.ffn.fc"), f, c, true));
                let fc2 = (cfg.feed_forward == FeedForward::Mlp)
                    .then(|| b.linear(&format!("{p}.ffn.proj"), c, f, true));
                BlockLayout {
                    ln1,
                    qkv,
                    proj,
                    ln2,
                    fc,
                    fc2,
                }
            })
            .collect();
        let ln_f = cfg.layer_norm.then(|| b.norm("ln_f", c));
        let lm_head = Some(b.linear("lm_head", v, c, true));
        ParamLayout {
            specs: b.specs,
            len: b.len,
            token_embedding,
            position_embedding,
            blocks,
            ln_f,
            lm_head,
        }
    }

    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// A view of `buf[range]`.
#[inline]
fn view<'a>(buf: &'a [f32], range: &Range<usize>) -> &'a [f32] {
    &buf[range.clone()]
}

/// Two disjoint mutable views of one buffer.
fn two_mut<'a>(
    buf: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start, "overlapping views");
    if a.start < b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&mut lo[a.clone()], &mut hi[..b.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&mut hi[..a.len()], &mut lo[b.clone()])
    }
}

/// Gradient views of a linear layer's weight and optional bias.
fn linear_grads<'a>(grads: &'a mut [f32], l: &Linear) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match &l.bias {
        Some(bias) => {
            let (w, b) = two_mut(grads, &l.weight, bias);
            (w, Some(b))
        }
        None => (&mut grads[l.weight.clone()], None),
    }
}

/// Activations of one block, each (B, T, ·) unless stated; empty where the config has no such part.
#[derive(Debug, Default)]
pub struct BlockActivations {
    ln1: Vec<f32>,
    ln1_mean: Vec<f32>,
    ln1_rstd: Vec<f32>,
    qkv: Vec<f32>,
    /// (B, H, T, T) softmax weights.
    att: Vec<f32>,
    att_mask: Vec<u8>,
    /// Heads concatenated, before the projection.
    attn_y: Vec<f32>,
    /// Projection output, after dropout.
    proj: Vec<f32>,
    proj_mask: Vec<u8>,
    /// `x + attention branch` (only with residual).
    r1: Vec<f32>,
    ln2: Vec<f32>,
    ln2_mean: Vec<f32>,
    ln2_rstd: Vec<f32>,
    /// (B, T, F) before the activation.
    fc: Vec<f32>,
    /// (B, T, F) after the activation (and dropout, for the Linear variant).
    act: Vec<f32>,
    /// Second FFN linear's output, after dropout (Mlp only).
    fc2: Vec<f32>,
    ffn_mask: Vec<u8>,
    /// `r1 + feed-forward branch` (only with residual).
    r2: Vec<f32>,
}

impl BlockActivations {
    /// The attention branch's output: after the projection if there is one.
    fn attn_branch(&self) -> &[f32] {
        if self.proj.is_empty() {
            &self.attn_y
        } else {
            &self.proj
        }
    }

    /// The stream after the attention half of the block.
    fn after_attn(&self) -> &[f32] {
        if self.r1.is_empty() {
            self.attn_branch()
        } else {
            &self.r1
        }
    }

    fn ffn_branch(&self) -> &[f32] {
        if self.fc2.is_empty() {
            &self.act
        } else {
            &self.fc2
        }
    }

    /// The block's output.
    fn output(&self) -> &[f32] {
        if self.fc.is_empty() {
            self.after_attn()
        } else if self.r2.is_empty() {
            self.ffn_branch()
        } else {
            &self.r2
        }
    }
}

/// Gradient buffers for the backward pass, reused by every block.
#[derive(Debug, Default)]
struct GradScratch {
    /// Gradient of the current block's output, and of its input.
    d_out: Vec<f32>,
    d_in: Vec<f32>,
    /// Gradient of the stream after the attention half.
    d_mid: Vec<f32>,
    /// Gradient of a branch output before dropout.
    d_branch: Vec<f32>,
    /// Gradient of a LayerNorm output (or of the block input through the branch).
    d_norm: Vec<f32>,
    d_attn_y: Vec<f32>,
    d_qkv: Vec<f32>,
    d_act: Vec<f32>,
    d_fc: Vec<f32>,
    /// One row of attention-weight gradients per (batch row, head).
    d_att_rows: Vec<f32>,
    d_logits: Vec<f32>,
}

/// Everything the forward pass computes and the backward pass reads, sized for at most
/// `batch` x `seq_len` tokens. Allocated once; a training step allocates nothing.
#[derive(Debug)]
pub struct Activations {
    capacity_batch: usize,
    capacity_seq: usize,
    vocab: usize,
    n_head: usize,
    batch: usize,
    seq_len: usize,
    has_targets: bool,
    dropout_seed: Option<u64>,
    tokens: Vec<TokenId>,
    targets: Vec<TokenId>,
    encoded: Vec<f32>,
    blocks: Vec<BlockActivations>,
    ln_f: Vec<f32>,
    ln_f_mean: Vec<f32>,
    ln_f_rstd: Vec<f32>,
    logits: Vec<f32>,
    probs: Vec<f32>,
    losses: Vec<f32>,
    grad: GradScratch,
}

impl Activations {
    /// Buffers for up to `batch` sequences of up to `seq_len` tokens. `training` adds the
    /// gradient scratch and the dropout masks.
    pub fn new(cfg: &ModelConfig, batch: usize, seq_len: usize, training: bool) -> Self {
        let n = batch * seq_len;
        let (c, v, h, f) = (cfg.n_embd, cfg.vocab_size, cfg.n_head, cfg.ffn_hidden());
        let z = |len: usize| vec![0.0f32; len];
        let zb = |len: usize, on: bool| if on { vec![0u8; len] } else { Vec::new() };
        let on = |cond: bool, len: usize| if cond { z(len) } else { Vec::new() };
        let dropout = training && cfg.dropout > 0.0;
        let transformer = cfg.architecture == Architecture::Transformer;
        let has_ffn = cfg.feed_forward != FeedForward::None;
        let mlp = cfg.feed_forward == FeedForward::Mlp;
        let blocks = (0..if transformer { cfg.n_layer } else { 0 })
            .map(|_| BlockActivations {
                ln1: on(cfg.layer_norm, n * c),
                ln1_mean: on(cfg.layer_norm, n),
                ln1_rstd: on(cfg.layer_norm, n),
                qkv: z(n * 3 * c),
                att: z(n * h * seq_len),
                att_mask: zb(n * h * seq_len, dropout),
                attn_y: z(n * c),
                proj: on(cfg.attention_projection, n * c),
                proj_mask: zb(n * c, dropout && cfg.attention_projection),
                r1: on(cfg.residual, n * c),
                ln2: on(cfg.layer_norm && has_ffn, n * c),
                ln2_mean: on(cfg.layer_norm && has_ffn, n),
                ln2_rstd: on(cfg.layer_norm && has_ffn, n),
                fc: on(has_ffn, n * f),
                act: on(has_ffn, n * f),
                fc2: on(mlp, n * c),
                ffn_mask: zb(if mlp { n * c } else { n * f }, dropout && has_ffn),
                r2: on(cfg.residual && has_ffn, n * c),
            })
            .collect();
        let grad = if training {
            let g = |cond: bool, len: usize| if cond { z(len) } else { Vec::new() };
            GradScratch {
                d_out: g(transformer, n * c),
                d_in: g(transformer, n * c),
                d_mid: g(transformer, n * c),
                d_branch: g(transformer, n * c),
                d_norm: g(transformer, n * c),
                d_attn_y: g(transformer, n * c),
                d_qkv: g(transformer, n * 3 * c),
                d_act: g(has_ffn && transformer, n * f),
                d_fc: g(has_ffn && transformer, n * f),
                d_att_rows: g(transformer, n * h),
                d_logits: z(n * v),
            }
        } else {
            GradScratch::default()
        };
        Activations {
            capacity_batch: batch,
            capacity_seq: seq_len,
            vocab: v,
            n_head: h,
            batch: 0,
            seq_len: 0,
            has_targets: false,
            dropout_seed: None,
            tokens: vec![0; n],
            targets: vec![0; n],
            encoded: on(transformer, n * c),
            blocks,
            ln_f: on(transformer && cfg.layer_norm, n * c),
            ln_f_mean: on(transformer && cfg.layer_norm, n),
            ln_f_rstd: on(transformer && cfg.layer_norm, n),
            logits: z(n * v),
            probs: z(n * v),
            losses: z(n),
            grad,
        }
    }

    pub fn capacity(&self) -> (usize, usize) {
        (self.capacity_batch, self.capacity_seq)
    }

    /// The (B, T) shape of the last forward pass.
    pub fn shape(&self) -> (usize, usize) {
        (self.batch, self.seq_len)
    }

    /// Logits of the last forward pass, (B, T, V).
    pub fn logits(&self) -> &[f32] {
        &self.logits[..self.batch * self.seq_len * self.vocab]
    }

    /// Per-position losses of the last forward pass with targets, (B, T).
    pub fn losses(&self) -> &[f32] {
        &self.losses[..self.batch * self.seq_len]
    }

    /// Softmax weights of block `layer` from the last forward pass, (B, H, T, T) (before dropout).
    pub fn attention_weights(&self, layer: usize) -> Option<&[f32]> {
        let blk = self.blocks.get(layer)?;
        Some(&blk.att[..self.batch * self.n_head * self.seq_len * self.seq_len])
    }
}

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

    /// Runs the forward pass over `inputs` (B, T). With `targets` it returns the mean
    /// cross-entropy loss. `dropout_seed` switches dropout on (training); `None` is evaluation
    /// mode. Panics if the shape exceeds the activations' capacity or a token is out of range.
    pub fn forward(
        &self,
        acts: &mut Activations,
        inputs: &[TokenId],
        targets: Option<&[TokenId]>,
        batch: usize,
        seq_len: usize,
        dropout_seed: Option<u64>,
    ) -> Option<f32> {
        let cfg = &self.config;
        let (c, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let n = batch * seq_len;
        assert!(batch <= acts.capacity_batch && seq_len <= acts.capacity_seq);
        assert!(seq_len <= cfg.block_size || cfg.architecture == Architecture::Bigram);
        assert_eq!(inputs.len(), n);
        assert!(
            inputs.iter().all(|&t| (t as usize) < v),
            "token id outside the vocabulary"
        );
        acts.batch = batch;
        acts.seq_len = seq_len;
        acts.tokens[..n].copy_from_slice(inputs);
        acts.has_targets = targets.is_some();
        if let Some(targets) = targets {
            assert_eq!(targets.len(), n);
            assert!(targets.iter().all(|&t| (t as usize) < v));
            acts.targets[..n].copy_from_slice(targets);
        }
        let dropout_p = if dropout_seed.is_some() && cfg.dropout > 0.0 {
            assert!(
                acts.grad.d_logits.len() >= n * v,
                "dropout needs training activations"
            );
            cfg.dropout
        } else {
            0.0
        };
        acts.dropout_seed = dropout_seed.filter(|_| dropout_p > 0.0);
        let p = &self.params;
        let lay = &self.layout;

        if cfg.architecture == Architecture::Bigram {
            embedding::forward(
                &mut acts.logits[..n * v],
                inputs,
                view(p, &lay.token_embedding),
                None,
                seq_len,
                v,
            );
        } else {
            embedding::forward(
                &mut acts.encoded[..n * c],
                inputs,
                view(p, &lay.token_embedding),
                lay.position_embedding.as_ref().map(|r| view(p, r)),
                seq_len,
                c,
            );
            let shape = attention::Shape {
                batch,
                seq_len,
                channels: c,
                n_head: h,
            };
            for (l, bl) in lay.blocks.iter().enumerate() {
                let (done, rest) = acts.blocks.split_at_mut(l);
                let x = match done.last() {
                    Some(prev) => &prev.output()[..n * c],
                    None => &acts.encoded[..n * c],
                };
                let seed = acts
                    .dropout_seed
                    .map(|s| crate::rng::mix(s ^ (l as u64 + 1)));
                self.block_forward(bl, x, &mut rest[0], shape, seed, dropout_p);
            }
            let x = match acts.blocks.last() {
                Some(last) => &last.output()[..n * c],
                None => &acts.encoded[..n * c],
            };
            let head_in = match &lay.ln_f {
                Some(norm) => {
                    layernorm::forward(
                        &mut acts.ln_f[..n * c],
                        &mut acts.ln_f_mean[..n],
                        &mut acts.ln_f_rstd[..n],
                        x,
                        view(p, &norm.weight),
                        view(p, &norm.bias),
                        c,
                    );
                    &acts.ln_f[..n * c]
                }
                None => x,
            };
            let lm = lay.lm_head.as_ref().expect("transformer has an lm_head");
            matmul::forward(
                &mut acts.logits[..n * v],
                head_in,
                view(p, &lm.weight),
                lm.bias.as_ref().map(|b| view(p, b)),
                c,
                v,
            );
        }
        targets.map(|targets| {
            cross_entropy::forward(
                &mut acts.probs[..n * v],
                &mut acts.losses[..n],
                &acts.logits[..n * v],
                targets,
                v,
            )
        })
    }

    fn block_forward(
        &self,
        bl: &BlockLayout,
        x: &[f32],
        a: &mut BlockActivations,
        shape: attention::Shape,
        seed: Option<u64>,
        dropout_p: f32,
    ) {
        let cfg = &self.config;
        let p = &self.params;
        let (c, f) = (cfg.n_embd, cfg.ffn_hidden());
        let n = shape.batch * shape.seq_len;
        let att_len = n * cfg.n_head * shape.seq_len;
        let drop = |i: u64| seed.map(|s| crate::rng::mix(s ^ (i << 32)));

        // Attention half.
        let attn_in = match &bl.ln1 {
            Some(norm) => {
                layernorm::forward(
                    &mut a.ln1[..n * c],
                    &mut a.ln1_mean[..n],
                    &mut a.ln1_rstd[..n],
                    x,
                    view(p, &norm.weight),
                    view(p, &norm.bias),
                    c,
                );
                &a.ln1[..n * c]
            }
            None => x,
        };
        matmul::forward(
            &mut a.qkv[..n * 3 * c],
            attn_in,
            view(p, &bl.qkv.weight),
            None,
            c,
            3 * c,
        );
        let att_dropout = drop(1).map(|seed| {
            (
                &mut a.att_mask[..att_len],
                attention::AttentionDropout { p: dropout_p, seed },
            )
        });
        attention::forward(
            &mut a.attn_y[..n * c],
            &mut a.att[..att_len],
            att_dropout,
            &a.qkv[..n * 3 * c],
            shape,
            cfg.attention_scale_factor(),
        );
        if let Some(proj) = &bl.proj {
            matmul::forward(
                &mut a.proj[..n * c],
                &a.attn_y[..n * c],
                view(p, &proj.weight),
                proj.bias.as_ref().map(|b| view(p, b)),
                c,
                c,
            );
            if let Some(seed) = drop(2) {
                dropout::forward(
                    &mut a.proj[..n * c],
                    &mut a.proj_mask[..n * c],
                    dropout_p,
                    seed,
                );
            }
        }
        if cfg.residual {
            let branch = if a.proj.is_empty() {
                &a.attn_y
            } else {
                &a.proj
            };
            residual::forward(&mut a.r1[..n * c], x, &branch[..n * c]);
        }

        // Feed-forward half.
        let Some(fc) = &bl.fc else { return };
        let mid = if cfg.residual {
            &a.r1[..n * c]
        } else if a.proj.is_empty() {
            &a.attn_y[..n * c]
        } else {
            &a.proj[..n * c]
        };
        let ffn_in = match &bl.ln2 {
            Some(norm) => {
                layernorm::forward(
                    &mut a.ln2[..n * c],
                    &mut a.ln2_mean[..n],
                    &mut a.ln2_rstd[..n],
                    mid,
                    view(p, &norm.weight),
                    view(p, &norm.bias),
                    c,
                );
                &a.ln2[..n * c]
            }
            None => mid,
        };
        matmul::forward(
            &mut a.fc[..n * f],
            ffn_in,
            view(p, &fc.weight),
            fc.bias.as_ref().map(|b| view(p, b)),
            c,
            f,
        );
        activation::forward(cfg.activation, &mut a.act[..n * f], &a.fc[..n * f]);
        match &bl.fc2 {
            Some(fc2) => {
                matmul::forward(
                    &mut a.fc2[..n * c],
                    &a.act[..n * f],
                    view(p, &fc2.weight),
                    fc2.bias.as_ref().map(|b| view(p, b)),
                    f,
                    c,
                );
                if let Some(seed) = drop(3) {
                    dropout::forward(
                        &mut a.fc2[..n * c],
                        &mut a.ffn_mask[..n * c],
                        dropout_p,
                        seed,
                    );
                }
            }
            None => {
                if let Some(seed) = drop(3) {
                    dropout::forward(
                        &mut a.act[..n * f],
                        &mut a.ffn_mask[..n * f],
                        dropout_p,
                        seed,
                    );
                }
            }
        }
        if cfg.residual {
            let mid = &a.r1[..n * c];
            let branch = if a.fc2.is_empty() { &a.act } else { &a.fc2 };
            residual::forward(&mut a.r2[..n * c], mid, &branch[..n * c]);
        }
    }

    /// Accumulates the gradient of the last forward pass's mean loss into `grads` (same layout as
    /// the parameters). The forward pass must have been given targets and training activations.
    pub fn backward(&self, acts: &mut Activations, grads: &mut [f32]) {
        assert!(
            acts.has_targets,
            "backward needs a forward pass with targets"
        );
        assert_eq!(grads.len(), self.layout.len);
        let cfg = &self.config;
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        let (batch, seq_len) = (acts.batch, acts.seq_len);
        let n = batch * seq_len;
        let lay = &self.layout;
        let p = &self.params;
        let has_dropout = acts.dropout_seed.is_some();
        let g = &mut acts.grad;
        assert!(
            g.d_logits.len() >= n * v,
            "backward needs training activations"
        );

        g.d_logits[..n * v].fill(0.0);
        cross_entropy::backward(
            &mut g.d_logits[..n * v],
            &acts.probs[..n * v],
            &acts.targets[..n],
            v,
        );
        if cfg.architecture == Architecture::Bigram {
            embedding::backward(
                &mut grads[lay.token_embedding.clone()],
                None,
                &g.d_logits[..n * v],
                &acts.tokens[..n],
                seq_len,
                v,
            );
            return;
        }

        // lm_head and the final LayerNorm; d_out ends up holding d(loss)/d(last block output).
        let x_last = match acts.blocks.last() {
            Some(last) => &last.output()[..n * c],
            None => &acts.encoded[..n * c],
        };
        let lm = lay.lm_head.as_ref().expect("transformer has an lm_head");
        let head_in = if lay.ln_f.is_some() {
            &acts.ln_f[..n * c]
        } else {
            x_last
        };
        g.d_norm[..n * c].fill(0.0);
        let (dw, db) = linear_grads(grads, lm);
        matmul::backward(
            Some(&mut g.d_norm[..n * c]),
            dw,
            db,
            &g.d_logits[..n * v],
            head_in,
            view(p, &lm.weight),
            c,
            v,
        );
        g.d_out[..n * c].fill(0.0);
        match &lay.ln_f {
            Some(norm) => {
                let (dw, db) = two_mut(grads, &norm.weight, &norm.bias);
                layernorm::backward(
                    &mut g.d_out[..n * c],
                    dw,
                    db,
                    &g.d_norm[..n * c],
                    x_last,
                    view(p, &norm.weight),
                    &acts.ln_f_mean[..n],
                    &acts.ln_f_rstd[..n],
                    c,
                );
            }
            None => residual::backward(&mut g.d_out[..n * c], &g.d_norm[..n * c]),
        }

        let shape = attention::Shape {
            batch,
            seq_len,
            channels: c,
            n_head: cfg.n_head,
        };
        for l in (0..lay.blocks.len()).rev() {
            let x = if l == 0 {
                &acts.encoded[..n * c]
            } else {
                &acts.blocks[l - 1].output()[..n * c]
            };
            self.block_backward(
                &lay.blocks[l],
                x,
                &acts.blocks[l],
                g,
                grads,
                shape,
                has_dropout,
            );
            std::mem::swap(&mut g.d_out, &mut g.d_in);
        }

        let pos = lay
            .position_embedding
            .as_ref()
            .expect("transformer has positions");
        let (dwte, dwpe) = two_mut(grads, &lay.token_embedding, pos);
        embedding::backward(
            dwte,
            Some(dwpe),
            &g.d_out[..n * c],
            &acts.tokens[..n],
            seq_len,
            c,
        );
    }

    /// Backward through one block: reads `g.d_out` (gradient of the block output), writes
    /// `g.d_in` (gradient of its input `x`), accumulates parameter gradients.
    #[allow(clippy::too_many_arguments)]
    fn block_backward(
        &self,
        bl: &BlockLayout,
        x: &[f32],
        a: &BlockActivations,
        g: &mut GradScratch,
        grads: &mut [f32],
        shape: attention::Shape,
        has_dropout: bool,
    ) {
        let cfg = &self.config;
        let p = &self.params;
        let (c, f) = (cfg.n_embd, cfg.ffn_hidden());
        let n = shape.batch * shape.seq_len;
        let att_len = n * cfg.n_head * shape.seq_len;
        let dropout_p = cfg.dropout;

        // Feed-forward half: from d_out (gradient of the block output) to d_mid (gradient of the
        // stream after attention).
        let d_mid: &mut Vec<f32> = &mut g.d_mid;
        d_mid[..n * c].fill(0.0);
        if let Some(fc) = &bl.fc {
            if cfg.residual {
                residual::backward(&mut d_mid[..n * c], &g.d_out[..n * c]);
            }
            let mid = &a.after_attn()[..n * c];
            let ffn_in = if bl.ln2.is_some() {
                &a.ln2[..n * c]
            } else {
                mid
            };
            g.d_fc[..n * f].fill(0.0);
            match &bl.fc2 {
                Some(fc2) => {
                    let d_branch: &[f32] = if has_dropout {
                        g.d_branch[..n * c].fill(0.0);
                        dropout::backward(
                            &mut g.d_branch[..n * c],
                            &g.d_out[..n * c],
                            &a.ffn_mask[..n * c],
                            dropout_p,
                        );
                        &g.d_branch[..n * c]
                    } else {
                        &g.d_out[..n * c]
                    };
                    g.d_act[..n * f].fill(0.0);
                    let (dw, db) = linear_grads(grads, fc2);
                    matmul::backward(
                        Some(&mut g.d_act[..n * f]),
                        dw,
                        db,
                        d_branch,
                        &a.act[..n * f],
                        view(p, &fc2.weight),
                        f,
                        c,
                    );
                    activation::backward(
                        cfg.activation,
                        &mut g.d_fc[..n * f],
                        &g.d_act[..n * f],
                        &a.fc[..n * f],
                    );
                }
                None => {
                    let d_act: &[f32] = if has_dropout {
                        g.d_act[..n * f].fill(0.0);
                        dropout::backward(
                            &mut g.d_act[..n * f],
                            &g.d_out[..n * c],
                            &a.ffn_mask[..n * f],
                            dropout_p,
                        );
                        &g.d_act[..n * f]
                    } else {
                        &g.d_out[..n * c]
                    };
                    activation::backward(
                        cfg.activation,
                        &mut g.d_fc[..n * f],
                        d_act,
                        &a.fc[..n * f],
                    );
                }
            }
            g.d_norm[..n * c].fill(0.0);
            let (dw, db) = linear_grads(grads, fc);
            matmul::backward(
                Some(&mut g.d_norm[..n * c]),
                dw,
                db,
                &g.d_fc[..n * f],
                ffn_in,
                view(p, &fc.weight),
                c,
                f,
            );
            match &bl.ln2 {
                Some(norm) => {
                    let (dw, db) = two_mut(grads, &norm.weight, &norm.bias);
                    layernorm::backward(
                        &mut d_mid[..n * c],
                        dw,
                        db,
                        &g.d_norm[..n * c],
                        mid,
                        view(p, &norm.weight),
                        &a.ln2_mean[..n],
                        &a.ln2_rstd[..n],
                        c,
                    );
                }
                None => residual::backward(&mut d_mid[..n * c], &g.d_norm[..n * c]),
            }
        } else {
            residual::backward(&mut d_mid[..n * c], &g.d_out[..n * c]);
        }

        // Attention half: from d_mid to d_in.
        let d_in = &mut g.d_in;
        d_in[..n * c].fill(0.0);
        if cfg.residual {
            residual::backward(&mut d_in[..n * c], &d_mid[..n * c]);
        }
        let d_y: &[f32] = match &bl.proj {
            Some(proj) => {
                let d_branch: &[f32] = if has_dropout {
                    g.d_branch[..n * c].fill(0.0);
                    dropout::backward(
                        &mut g.d_branch[..n * c],
                        &d_mid[..n * c],
                        &a.proj_mask[..n * c],
                        dropout_p,
                    );
                    &g.d_branch[..n * c]
                } else {
                    &d_mid[..n * c]
                };
                g.d_attn_y[..n * c].fill(0.0);
                let (dw, db) = linear_grads(grads, proj);
                matmul::backward(
                    Some(&mut g.d_attn_y[..n * c]),
                    dw,
                    db,
                    d_branch,
                    &a.attn_y[..n * c],
                    view(p, &proj.weight),
                    c,
                    c,
                );
                &g.d_attn_y[..n * c]
            }
            None => &d_mid[..n * c],
        };
        g.d_qkv[..n * 3 * c].fill(0.0);
        attention::backward(
            &mut g.d_qkv[..n * 3 * c],
            &mut g.d_att_rows,
            d_y,
            &a.qkv[..n * 3 * c],
            &a.att[..att_len],
            has_dropout.then(|| (&a.att_mask[..att_len], dropout_p)),
            shape,
            cfg.attention_scale_factor(),
        );
        let attn_in = if bl.ln1.is_some() { &a.ln1[..n * c] } else { x };
        g.d_norm[..n * c].fill(0.0);
        matmul::backward(
            Some(&mut g.d_norm[..n * c]),
            &mut grads[bl.qkv.weight.clone()],
            None,
            &g.d_qkv[..n * 3 * c],
            attn_in,
            view(p, &bl.qkv.weight),
            c,
            3 * c,
        );
        match &bl.ln1 {
            Some(norm) => {
                let (dw, db) = two_mut(grads, &norm.weight, &norm.bias);
                layernorm::backward(
                    &mut d_in[..n * c],
                    dw,
                    db,
                    &g.d_norm[..n * c],
                    x,
                    view(p, &norm.weight),
                    &a.ln1_mean[..n],
                    &a.ln1_rstd[..n],
                    c,
                );
            }
            None => residual::backward(&mut d_in[..n * c], &g.d_norm[..n * c]),
        }
    }
}
