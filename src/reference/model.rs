//! The model's forward and backward passes over the layers of [`super::layers`], top to bottom.
//!
//! ```text
//! tokens (B, T)
//!   -> x = wte[tokens] + wpe[t]                         (B, T, C)   (+ wpe: learned positions)
//!   -> for each block:
//!        a   = ln1(x)                 if layer_norm     (B, T, C)   LayerNorm or RMSNorm
//!        qkv = a Wqkv^T                                 (B, T, 3C)
//!        qkv = qk_norm(qkv)           if qk_norm        per-head RMSNorm of q and k
//!        qkv = rope(qkv)              if rope           q and k turned by their positions
//!        y   = attention(qkv)                           (B, T, C)
//!        y   = dropout(y Wproj^T + bproj)   if attention_projection
//!        m   = x + y (residual) or y
//!        f   = ln2(m)                 if layer_norm
//!        f   = act(f Wfc^T + bfc)                       (B, T, F), F = 4C (mlp) or C (linear)
//!        f   = f Wfc2^T + bfc2        if mlp            (B, T, C)
//!        f   = dropout(f)
//!        x   = m + f (residual) or f  (no feed-forward: x = m)
//!   -> ln_f(x)                        if layer_norm
//!   -> logits = x Wlm^T + blm                           (B, T, V)   Wlm = wte if tied
//!   -> loss = mean cross-entropy(logits, targets)
//! ```
//! The bigram model is `logits = wte[tokens]`, with `wte` (V, V).

use super::layers::{self, AttentionCache, AttentionShape};
use crate::config::{Architecture, NormKind, Position};
use crate::layout::{BlockLayout, Linear, Norm, Weights};
use crate::profile::{self, Kernel};
use crate::rng::{DropoutSeed, DropoutSite, SiteMasks};
use crate::tokenizer::TokenId;
use std::ops::Range;

/// Everything a forward pass computed that its backward pass reads.
#[derive(Debug, Clone)]
pub struct Pass {
    pub batch: usize,
    pub seq_len: usize,
    /// (B, T, V).
    pub logits: Vec<f32>,
    /// The mean loss, and each position's, (B, T), when targets were given.
    pub loss: Option<f32>,
    pub losses: Vec<f32>,
    tokens: Vec<TokenId>,
    targets: Vec<TokenId>,
    /// The dropout probability in effect (0 in evaluation).
    dropout_p: f32,
    /// The token + position embedding, (B, T, C).
    embedded: Vec<f32>,
    blocks: Vec<BlockPass>,
    /// The final LayerNorm.
    ln_f: Option<NormPass>,
    probs: Vec<f32>,
}

impl Pass {
    /// Softmax weights of block `layer`, (B, H, T, T), before dropout.
    pub fn attention_weights(&self, layer: usize) -> Option<&[f32]> {
        self.blocks.get(layer).map(|b| &b.attn.cache.att[..])
    }
}

/// A norm's output and the statistics its backward pass needs (RMSNorm: no mean).
#[derive(Debug, Clone)]
struct NormPass {
    out: Vec<f32>,
    mean: Vec<f32>,
    rstd: Vec<f32>,
}

/// QK-norm's input and statistics.
#[derive(Debug, Clone)]
struct QkNormPass {
    /// The product's output, before QK-norm, (B, T, 3C).
    raw: Vec<f32>,
    /// (B, T, 2H).
    rstd: Vec<f32>,
}

/// A dropout site's output and mask (no mask: dropout is off and the output is the input).
#[derive(Debug, Clone)]
struct DropoutPass {
    out: Vec<f32>,
    mask: Option<Vec<bool>>,
}

/// What one block computed.
#[derive(Debug, Clone)]
struct BlockPass {
    ln1: Option<NormPass>,
    attn: SelfAttentionPass,
    /// The stream after the attention half.
    mid: Vec<f32>,
    ffn: Option<FeedForwardPass>,
    /// The block's output.
    out: Vec<f32>,
}

/// What a block's attention half computed.
#[derive(Debug, Clone)]
struct SelfAttentionPass {
    /// (B, T, 3C), as attention reads it (after QK-norm and RoPE).
    qkv: Vec<f32>,
    qk_norm: Option<QkNormPass>,
    cache: AttentionCache,
    /// The heads concatenated, (B, T, C).
    heads: Vec<f32>,
    /// The attention projection's output after dropout.
    proj: Option<DropoutPass>,
}

impl SelfAttentionPass {
    /// What the half adds to the stream: the projection's output, or the heads without one.
    fn output(&self) -> &[f32] {
        self.proj.as_ref().map_or(&self.heads, |p| &p.out)
    }
}

/// What a block's feed-forward half computed.
#[derive(Debug, Clone)]
struct FeedForwardPass {
    ln2: Option<NormPass>,
    /// Before the activation, (B, T, F).
    pre_activation: Vec<f32>,
    /// After it, (B, T, F).
    hidden: Vec<f32>,
    /// The branch's output after dropout: of the second linear layer (mlp), of the activation
    /// (linear).
    branch: DropoutPass,
}

/// The sizes of one pass.
#[derive(Debug, Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    c: usize,
    /// The feed-forward width F.
    f: usize,
    v: usize,
    /// Attention limited to the last `window` positions (generation past `block_size` with
    /// RoPE, [`forward_sliding`]); `None`: the whole causal past.
    window: Option<usize>,
}

/// Runs `f` with its time counted as `kernel`'s (`chargpt bench --breakdown`).
fn timed<R>(kernel: Kernel, backward: bool, f: impl FnOnce() -> R) -> R {
    let _timer = profile::scope(kernel, backward);
    f()
}

/// Runs the model on `tokens` (B, T). With `targets` it computes the mean cross-entropy loss;
/// with `dropout` (and the config's `dropout` > 0) it is a training pass with those masks,
/// without, evaluation.
pub fn forward(
    w: Weights,
    tokens: &[TokenId],
    targets: Option<&[TokenId]>,
    batch: usize,
    seq_len: usize,
    dropout: Option<DropoutSeed>,
) -> Pass {
    let cfg = &w.config;
    assert!(seq_len <= cfg.block_size || cfg.architecture == Architecture::Bigram);
    forward_pass(w, tokens, targets, batch, seq_len, dropout, None)
}

/// The logits of one sequence of any length, for a model with rotary positions, each query
/// attending over the last `block_size` positions only (itself included): what generation with
/// a ring of the last `block_size` cached keys and values computes. (Each layer looks
/// `block_size` back, so the last position depends on up to `n_layer * (block_size - 1)` earlier
/// characters.) Evaluation mode.
pub fn forward_sliding(w: Weights, tokens: &[TokenId]) -> Pass {
    assert_eq!(w.config.position, Position::Rope);
    let window = w.config.block_size;
    forward_pass(w, tokens, None, 1, tokens.len(), None, Some(window))
}

fn forward_pass(
    w: Weights,
    tokens: &[TokenId],
    targets: Option<&[TokenId]>,
    batch: usize,
    seq_len: usize,
    dropout: Option<DropoutSeed>,
    window: Option<usize>,
) -> Pass {
    let cfg = &w.config;
    let lay = &w.layout;
    let n = batch * seq_len;
    assert_eq!(tokens.len(), n);
    assert!(tokens.iter().all(|&t| (t as usize) < cfg.vocab_size));
    let dims = Dims {
        b: batch,
        t: seq_len,
        c: cfg.n_embd,
        f: cfg.ffn_hidden(),
        v: cfg.vocab_size,
        window,
    };
    let dropout = dropout.filter(|_| cfg.dropout > 0.0);
    let mut pass = Pass {
        batch,
        seq_len,
        logits: vec![0.0; n * dims.v],
        loss: None,
        losses: Vec::new(),
        tokens: tokens.to_vec(),
        targets: Vec::new(),
        dropout_p: if dropout.is_some() { cfg.dropout } else { 0.0 },
        embedded: Vec::new(),
        blocks: Vec::new(),
        ln_f: None,
        probs: Vec::new(),
    };
    let wte = w.tensor(&lay.token_embedding);

    if cfg.architecture == Architecture::Bigram {
        // The logits are the table's row for the current character.
        timed(Kernel::Embedding, false, || {
            layers::embedding_forward(&mut pass.logits, tokens, wte, None, batch, seq_len, dims.v)
        });
    } else {
        let mut x = vec![0.0; n * dims.c];
        let wpe = lay.position_embedding.as_ref().map(|r| w.tensor(r));
        timed(Kernel::Embedding, false, || {
            layers::embedding_forward(&mut x, tokens, wte, wpe, batch, seq_len, dims.c)
        });
        pass.embedded = x;
        for (l, bl) in lay.blocks.iter().enumerate() {
            let input = match pass.blocks.last() {
                Some(prev) => &prev.out,
                None => &pass.embedded,
            };
            let block = block_forward(w, bl, input, dims, dropout.map(|d| (l, d)));
            pass.blocks.push(block);
        }
        let x = match pass.blocks.last() {
            Some(last) => &last.out,
            None => &pass.embedded,
        };
        pass.ln_f = lay.ln_f.as_ref().map(|norm| norm_forward(w, norm, x, dims));
        let head_in = pass.ln_f.as_ref().map_or(x, |ln| &ln.out);
        let lm = lay.lm_head.as_ref().expect("a transformer has an lm_head");
        let logits = linear_forward(w, lm, head_in, dims, dims.c, dims.v);
        pass.logits = logits;
    }

    if let Some(targets) = targets {
        assert_eq!(targets.len(), n);
        assert!(targets.iter().all(|&t| (t as usize) < dims.v));
        pass.targets = targets.to_vec();
        pass.probs = vec![0.0; n * dims.v];
        pass.losses = vec![0.0; n];
        let loss = timed(Kernel::CrossEntropy, false, || {
            layers::cross_entropy_forward(
                &mut pass.probs,
                &mut pass.losses,
                &pass.logits,
                targets,
                n,
                dims.v,
            )
        });
        pass.loss = Some(loss);
    }
    pass
}

fn norm_forward(w: Weights, norm: &Norm, x: &[f32], d: Dims) -> NormPass {
    let rows = d.b * d.t;
    let mut ln = NormPass {
        out: vec![0.0; rows * d.c],
        mean: Vec::new(),
        rstd: vec![0.0; rows],
    };
    let weight = w.tensor(&norm.weight);
    timed(Kernel::LayerNorm, false, || match w.config.norm {
        NormKind::Layer => {
            ln.mean = vec![0.0; rows];
            layers::layernorm_forward(
                &mut ln.out,
                &mut ln.mean,
                &mut ln.rstd,
                x,
                weight,
                norm.bias.as_ref().map(|b| w.tensor(b)),
                d.b,
                d.t,
                d.c,
            )
        }
        NormKind::Rms => {
            layers::rmsnorm_forward(&mut ln.out, &mut ln.rstd, x, weight, d.b, d.t, d.c)
        }
    });
    ln
}

/// `x W^T + b` for a (B, T, `i_n`) input: the (B, T, `o_n`) output.
fn linear_forward(
    w: Weights,
    linear: &Linear,
    x: &[f32],
    d: Dims,
    i_n: usize,
    o_n: usize,
) -> Vec<f32> {
    let mut out = vec![0.0; d.b * d.t * o_n];
    let bias = linear.bias.as_ref().map(|r| w.tensor(r));
    timed(Kernel::Matmul, false, || {
        layers::linear_forward(
            &mut out,
            x,
            w.tensor(&linear.weight),
            bias,
            d.b,
            d.t,
            i_n,
            o_n,
        )
    });
    out
}

/// Dropout of `x`, (B, L), with `masks` (None: off, the output is `x`).
fn dropout_forward(x: Vec<f32>, dropout: Option<(f32, SiteMasks)>, d: Dims) -> DropoutPass {
    match dropout {
        Some((p, masks)) => {
            let mut out = vec![0.0; x.len()];
            let mut mask = vec![false; x.len()];
            timed(Kernel::Dropout, false, || {
                layers::dropout_forward(&mut out, &mut mask, &x, p, masks, d.b, x.len() / d.b)
            });
            DropoutPass {
                out,
                mask: Some(mask),
            }
        }
        None => DropoutPass { out: x, mask: None },
    }
}

/// `a + b`.
fn residual_forward(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut out = vec![0.0; a.len()];
    timed(Kernel::Residual, false, || {
        layers::residual_forward(&mut out, a, b)
    });
    out
}

/// The dropout probability and masks of one site of a block, or `None` (dropout off).
type Site<'s> = &'s dyn Fn(DropoutSite) -> Option<(f32, SiteMasks)>;

/// One block on its input `x` (B, T, C), as the lecture's `Block`:
/// ```text
/// x = x + sa(ln1(x))
/// x = x + ffwd(ln2(x))
/// ```
/// (the `+` only with residual connections, the norms only with `layer_norm`); `dropout` is
/// (block index, the step's masks).
fn block_forward(
    w: Weights,
    bl: &BlockLayout,
    x: &[f32],
    d: Dims,
    dropout: Option<(usize, DropoutSeed)>,
) -> BlockPass {
    let cfg = w.config;
    let site = |s: DropoutSite| dropout.map(|(layer, seed)| (cfg.dropout, seed.site(layer, s)));
    let ln1 = bl.ln1.as_ref().map(|norm| norm_forward(w, norm, x, d));
    let attn = self_attention(w, bl, ln1.as_ref().map_or(x, |ln| &ln.out), d, &site);
    let mid = add_residual(cfg.residual, x, attn.output());
    let ffn = bl.fc.as_ref().map(|_| feed_forward(w, bl, &mid, d, &site));
    let out = match &ffn {
        Some(ffn) => add_residual(cfg.residual, &mid, &ffn.branch.out),
        None => mid.clone(),
    };
    BlockPass {
        ln1,
        attn,
        mid,
        ffn,
        out,
    }
}

/// `a + b` with residual connections, else `b` alone.
fn add_residual(residual: bool, a: &[f32], b: &[f32]) -> Vec<f32> {
    if residual {
        residual_forward(a, b)
    } else {
        b.to_vec()
    }
}

/// The lecture's `MultiHeadAttention` on `a` (B, T, C): queries, keys and values of every head
/// in one product, normed (QK-norm) and turned by their positions (RoPE) where the config says,
/// causal self-attention in every head, the heads concatenated and projected, dropout.
fn self_attention(
    w: Weights,
    bl: &BlockLayout,
    a: &[f32],
    d: Dims,
    site: Site,
) -> SelfAttentionPass {
    let cfg = w.config;
    let shape = AttentionShape {
        batch: d.b,
        seq_len: d.t,
        channels: d.c,
        n_head: cfg.n_head,
    };
    let mut qkv = linear_forward(w, &bl.qkv, a, d, d.c, 3 * d.c);
    let qk_norm = bl.qk_norm.as_ref().map(|qk| {
        let (normed, rstd) = qk_norm_forward(w.tensor(&qk.q), w.tensor(&qk.k), &qkv, shape);
        let raw = std::mem::replace(&mut qkv, normed);
        QkNormPass { raw, rstd }
    });
    if cfg.position == Position::Rope {
        qkv = rope_forward(&qkv, shape);
    }
    let mut heads = vec![0.0; d.b * d.t * d.c];
    let scale = cfg.attention_scale_factor();
    let cache = timed(Kernel::Attention, false, || match d.window {
        None => {
            let masks = site(DropoutSite::AttentionWeights);
            layers::attention_forward(&mut heads, &qkv, scale, masks, shape)
        }
        Some(window) => layers::attention_forward_sliding(&mut heads, &qkv, scale, window, shape),
    });
    let proj = bl.proj.as_ref().map(|proj| {
        let y = linear_forward(w, proj, &heads, d, d.c, d.c);
        dropout_forward(y, site(DropoutSite::AttentionOutput), d)
    });
    SelfAttentionPass {
        qkv,
        qk_norm,
        cache,
        heads,
        proj,
    }
}

/// Every head's queries and keys of `qkv` RMS-normed, with gains `wq` and `wk`: the normed
/// tensor and the statistics.
fn qk_norm_forward(
    wq: &[f32],
    wk: &[f32],
    qkv: &[f32],
    shape: AttentionShape,
) -> (Vec<f32>, Vec<f32>) {
    let mut normed = vec![0.0; qkv.len()];
    let rstd = timed(Kernel::LayerNorm, false, || {
        layers::qk_norm_forward(&mut normed, qkv, wq, wk, shape)
    });
    (normed, rstd)
}

/// Every head's queries and keys of `qkv` turned by their positions (RoPE).
fn rope_forward(qkv: &[f32], shape: AttentionShape) -> Vec<f32> {
    let mut turned = vec![0.0; qkv.len()];
    timed(Kernel::Attention, false, || {
        layers::rope_forward(&mut turned, qkv, 0, shape)
    });
    turned
}

/// The lecture's `FeedForward` on the stream `m` (B, T, C), after the block's second norm:
/// `dropout(fc2(act(fc(ln2(m)))))`, or `dropout(act(fc(ln2(m))))` without a second layer.
fn feed_forward(w: Weights, bl: &BlockLayout, m: &[f32], d: Dims, site: Site) -> FeedForwardPass {
    let fc = bl.fc.as_ref().expect("a block with a feed-forward");
    let ln2 = bl.ln2.as_ref().map(|norm| norm_forward(w, norm, m, d));
    let ffn_in = ln2.as_ref().map_or(m, |ln| &ln.out);
    let pre_activation = linear_forward(w, fc, ffn_in, d, d.c, d.f);
    let mut hidden = vec![0.0; pre_activation.len()];
    timed(Kernel::Activation, false, || {
        layers::activation_forward(w.config.activation, &mut hidden, &pre_activation)
    });
    let branch = match &bl.fc2 {
        Some(fc2) => linear_forward(w, fc2, &hidden, d, d.f, d.c),
        None => hidden.clone(),
    };
    FeedForwardPass {
        ln2,
        pre_activation,
        hidden,
        branch: dropout_forward(branch, site(DropoutSite::FeedForwardOutput), d),
    }
}

/// Writes into `grads` (the parameters' layout; whatever it held is overwritten) the gradient of
/// `loss_scale` times the mean loss of `pass`, which must have had targets. (`loss_scale` is the
/// share of a larger batch these rows are, when a batch is split; otherwise 1.)
pub fn backward(w: Weights, pass: &Pass, grads: &mut [f32], loss_scale: f32) {
    let cfg = &w.config;
    let lay = &w.layout;
    assert!(
        pass.loss.is_some(),
        "backward needs a forward pass with targets"
    );
    assert_eq!(grads.len(), lay.len);
    grads.fill(0.0);
    let (b, t) = (pass.batch, pass.seq_len);
    let n = b * t;
    let d = Dims {
        b,
        t,
        c: cfg.n_embd,
        f: cfg.ffn_hidden(),
        v: cfg.vocab_size,
        window: None,
    };

    let mut d_logits = vec![0.0; n * d.v];
    timed(Kernel::CrossEntropy, true, || {
        layers::cross_entropy_backward(
            &mut d_logits,
            &pass.probs,
            &pass.targets,
            n,
            d.v,
            loss_scale,
        )
    });
    if cfg.architecture == Architecture::Bigram {
        let dwte = &mut grads[lay.token_embedding.clone()];
        timed(Kernel::Embedding, true, || {
            layers::embedding_backward(dwte, None, &d_logits, &pass.tokens, b, t, d.v)
        });
        return;
    }

    // lm_head, then the final LayerNorm: d_x becomes the gradient of the last block's output.
    let x_last = match pass.blocks.last() {
        Some(last) => &last.out,
        None => &pass.embedded,
    };
    let head_in = pass.ln_f.as_ref().map_or(x_last, |ln| &ln.out);
    let lm = lay.lm_head.as_ref().expect("a transformer has an lm_head");
    let d_head_in = linear_backward(w, lm, grads, &d_logits, head_in, d, d.c, d.v);
    let mut d_x = match (&lay.ln_f, &pass.ln_f) {
        (Some(norm), Some(ln)) => norm_backward(w, norm, ln, grads, &d_head_in, x_last, d),
        _ => d_head_in,
    };

    for l in (0..lay.blocks.len()).rev() {
        let x = match l {
            0 => &pass.embedded,
            _ => &pass.blocks[l - 1].out,
        };
        d_x = block_backward(w, &lay.blocks[l], &pass.blocks[l], x, &d_x, grads, pass, d);
    }

    // With tied embeddings lm_head's gradient is already in dwte: this adds the lookup's.
    let (dwte, dwpe) = match &lay.position_embedding {
        Some(pos) => {
            let (dwte, dwpe) = two_grads(grads, &lay.token_embedding, pos);
            (dwte, Some(dwpe))
        }
        None => (&mut grads[lay.token_embedding.clone()], None),
    };
    timed(Kernel::Embedding, true, || {
        layers::embedding_backward(dwte, dwpe, &d_x, &pass.tokens, b, t, d.c)
    });
}

/// Two disjoint gradient tensors of the flat buffer, both writable.
fn two_grads<'a>(
    grads: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(a.end <= b.start, "tensors are laid out in order");
    let (lo, hi) = grads.split_at_mut(b.start);
    (&mut lo[a.clone()], &mut hi[..b.len()])
}

/// The gradients of a linear layer: its weight's and bias's into `grads`; returns its input's.
#[allow(clippy::too_many_arguments)]
fn linear_backward(
    w: Weights,
    linear: &Linear,
    grads: &mut [f32],
    d_out: &[f32],
    x: &[f32],
    d: Dims,
    i_n: usize,
    o_n: usize,
) -> Vec<f32> {
    let mut d_x = vec![0.0; d.b * d.t * i_n];
    let (dweight, dbias) = match &linear.bias {
        Some(bias) => {
            let (w, b) = two_grads(grads, &linear.weight, bias);
            (w, Some(b))
        }
        None => (&mut grads[linear.weight.clone()], None),
    };
    timed(Kernel::Matmul, true, || {
        layers::linear_backward(
            &mut d_x,
            dweight,
            dbias,
            d_out,
            x,
            w.tensor(&linear.weight),
            d.b,
            d.t,
            i_n,
            o_n,
        )
    });
    d_x
}

/// The gradients of a LayerNorm: its weight's and bias's into `grads`; returns its input's.
fn norm_backward(
    w: Weights,
    norm: &Norm,
    ln: &NormPass,
    grads: &mut [f32],
    d_out: &[f32],
    x: &[f32],
    d: Dims,
) -> Vec<f32> {
    let mut d_x = vec![0.0; x.len()];
    let (dweight, dbias) = match &norm.bias {
        Some(bias) => {
            let (w, b) = two_grads(grads, &norm.weight, bias);
            (w, Some(b))
        }
        None => (&mut grads[norm.weight.clone()], None),
    };
    let weight = w.tensor(&norm.weight);
    timed(Kernel::LayerNorm, true, || match w.config.norm {
        NormKind::Layer => layers::layernorm_backward(
            &mut d_x, dweight, dbias, d_out, x, weight, &ln.mean, &ln.rstd, d.b, d.t, d.c,
        ),
        NormKind::Rms => {
            layers::rmsnorm_backward(&mut d_x, dweight, d_out, x, weight, &ln.rstd, d.b, d.t, d.c)
        }
    });
    d_x
}

/// The gradient of a dropout site's input from that of its output.
fn dropout_backward(site: &DropoutPass, d_out: &[f32], p: f32) -> Vec<f32> {
    match &site.mask {
        Some(mask) => {
            let mut d_in = vec![0.0; d_out.len()];
            timed(Kernel::Dropout, true, || {
                layers::dropout_backward(&mut d_in, d_out, mask, p)
            });
            d_in
        }
        None => d_out.to_vec(),
    }
}

/// `s = a + b` used as `s = skip + branch` with `skip` the block's stream: the gradient of both
/// terms is `d_s`. Returns (d_skip, d_branch); without a residual connection there is no skip
/// term and the branch receives `d_s` alone.
fn residual_backward(d_s: &[f32], residual: bool) -> (Vec<f32>, Vec<f32>) {
    let (mut d_skip, mut d_branch) = (vec![0.0; d_s.len()], vec![0.0; d_s.len()]);
    if residual {
        timed(Kernel::Residual, true, || {
            layers::residual_backward(&mut d_skip, &mut d_branch, d_s)
        });
    } else {
        d_branch.copy_from_slice(d_s);
    }
    (d_skip, d_branch)
}

/// Adds `b` into `a` (the two contributions to the gradient of one tensor).
fn add_into(a: &mut [f32], b: &[f32]) {
    for (x, &y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

/// One block's backward pass: from the gradient of its output `d_out` to that of its input `x`
/// (returned), adding its parameters' gradients into `grads`.
#[allow(clippy::too_many_arguments)]
fn block_backward(
    w: Weights,
    bl: &BlockLayout,
    blk: &BlockPass,
    x: &[f32],
    d_out: &[f32],
    grads: &mut [f32],
    pass: &Pass,
    d: Dims,
) -> Vec<f32> {
    let cfg = &w.config;
    let p = pass.dropout_p;

    // Feed-forward half: from d_out to d_mid, the gradient of the stream after attention.
    let d_mid = match (&blk.ffn, bl.fc.as_ref()) {
        (Some(ffn), Some(fc)) => {
            let (mut d_mid, d_branch) = residual_backward(d_out, cfg.residual);
            let d_branch = dropout_backward(&ffn.branch, &d_branch, p);
            let d_hidden = match &bl.fc2 {
                Some(fc2) => linear_backward(w, fc2, grads, &d_branch, &ffn.hidden, d, d.f, d.c),
                None => d_branch,
            };
            let mut d_pre = vec![0.0; d_hidden.len()];
            timed(Kernel::Activation, true, || {
                layers::activation_backward(
                    cfg.activation,
                    &mut d_pre,
                    &d_hidden,
                    &ffn.pre_activation,
                )
            });
            let ffn_in = ffn.ln2.as_ref().map_or(&blk.mid, |ln| &ln.out);
            let d_ffn_in = linear_backward(w, fc, grads, &d_pre, ffn_in, d, d.c, d.f);
            let d_via_branch = match (&bl.ln2, &ffn.ln2) {
                (Some(norm), Some(ln)) => norm_backward(w, norm, ln, grads, &d_ffn_in, &blk.mid, d),
                _ => d_ffn_in,
            };
            add_into(&mut d_mid, &d_via_branch);
            d_mid
        }
        _ => d_out.to_vec(),
    };

    // Attention half: from d_mid to d_x.
    let (mut d_x, d_branch) = residual_backward(&d_mid, cfg.residual);
    let d_heads = match (&bl.proj, &blk.attn.proj) {
        (Some(proj), Some(site)) => {
            let d_proj = dropout_backward(site, &d_branch, p);
            linear_backward(w, proj, grads, &d_proj, &blk.attn.heads, d, d.c, d.c)
        }
        _ => d_branch,
    };
    let mut d_qkv = vec![0.0; d.b * d.t * 3 * d.c];
    let shape = AttentionShape {
        batch: d.b,
        seq_len: d.t,
        channels: d.c,
        n_head: cfg.n_head,
    };
    timed(Kernel::Attention, true, || {
        layers::attention_backward(
            &mut d_qkv,
            &d_heads,
            &blk.attn.qkv,
            &blk.attn.cache,
            cfg.attention_scale_factor(),
            p,
            shape,
        )
    });
    if cfg.position == Position::Rope {
        let mut d_turned = vec![0.0; d_qkv.len()];
        timed(Kernel::Attention, true, || {
            layers::rope_backward(&mut d_turned, &d_qkv, 0, shape)
        });
        d_qkv = d_turned;
    }
    if let (Some(qk), Some(qk_pass)) = (&bl.qk_norm, &blk.attn.qk_norm) {
        let mut d_raw = vec![0.0; d_qkv.len()];
        let (dq, dk) = two_grads(grads, &qk.q, &qk.k);
        timed(Kernel::LayerNorm, true, || {
            layers::qk_norm_backward(
                &mut d_raw,
                dq,
                dk,
                &d_qkv,
                &qk_pass.raw,
                w.tensor(&qk.q),
                w.tensor(&qk.k),
                &qk_pass.rstd,
                shape,
            )
        });
        d_qkv = d_raw;
    }
    let attn_in = blk.ln1.as_ref().map_or(x, |ln| &ln.out);
    let d_attn_in = linear_backward(w, &bl.qkv, grads, &d_qkv, attn_in, d, d.c, 3 * d.c);
    let d_via_branch = match (&bl.ln1, &blk.ln1) {
        (Some(norm), Some(ln)) => norm_backward(w, norm, ln, grads, &d_attn_in, x, d),
        _ => d_attn_in,
    };
    add_into(&mut d_x, &d_via_branch);
    d_x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{preset, Activation, AttentionScale, FeedForward, Init, ModelConfig};
    use crate::config::{NormKind, Position};
    use crate::kernels::gradcheck::check;
    // The parameters' initialisation; the passes read only their weights.
    use crate::model::Model;
    use crate::rng::Rng;

    /// The whole model's gradient against finite differences of its loss, with dropout on (the
    /// same masks every time, so the loss is a function of the parameters), for configs that
    /// take each path through a block, and for the bigram model.
    #[test]
    fn whole_model_gradient_matches_finite_differences() {
        let base = ModelConfig {
            vocab_size: 7,
            n_embd: 8,
            n_head: 2,
            n_layer: 2,
            block_size: 5,
            dropout: 0.3,
            init: Init::Pytorch,
            ..preset("layernorm").unwrap().model
        };
        let mut bigram = preset("bigram").unwrap().model;
        bigram.vocab_size = 7;
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
            ("bigram", bigram),
        ];
        let mut rng = Rng::new(12);
        let masks = Some(DropoutSeed::new(99));
        for (name, cfg) in variants {
            let model = Model::new(cfg.clone(), 5);
            let (b, t) = (3, 5);
            let x: Vec<TokenId> = (0..b * t).map(|_| rng.below(7) as TokenId).collect();
            let y: Vec<TokenId> = (0..b * t).map(|_| rng.below(7) as TokenId).collect();
            let pass = forward(model.weights(), &x, Some(&y), b, t, masks);
            // NaN to start with: backward overwrites the whole gradient.
            let mut grads = vec![f32::NAN; model.num_params()];
            backward(model.weights(), &pass, &mut grads, 1.0);
            let mut probe = model.clone();
            check(
                name,
                &model.params,
                &grads,
                |p| {
                    probe.params.copy_from_slice(p);
                    forward(probe.weights(), &x, Some(&y), b, t, masks)
                        .loss
                        .unwrap() as f64
                },
                5e-3,
            );
        }
    }
}
