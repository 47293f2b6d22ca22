//! Activations: every buffer the forward pass writes and the backward pass reads, allocated once
//! for at most (B, T) tokens, so that a training step allocates nothing.
//!
//! Only what the backward pass cannot cheaply recompute is kept per block: the LayerNorm
//! statistics (not the normalised outputs), the q/k/v rows, the attention weights, the
//! pre-activation of the feed-forward layer (not the activation), and the residual stream. The
//! normalised inputs and the activation are recomputed in the backward pass into shared scratch
//! buffers (a few elementwise operations, against ~10x less memory for them), and branch outputs
//! that are immediately added to the residual stream live in scratch too. Without residual
//! connections a branch output *is* the stream and is kept.

use crate::config::{Architecture, FeedForward, ModelConfig};
use crate::memory::{zeroed, OutOfMemory};
use crate::tokenizer::TokenId;

/// What one block keeps for the backward pass, each (B, T, ·) unless stated; empty where the
/// config has no such part.
#[derive(Debug, Default)]
pub(super) struct BlockActivations {
    /// LayerNorm's means (empty for RMSNorm) and the norm's `1/rms` or `1/std`, (B, T).
    pub ln1_mean: Vec<f32>,
    pub ln1_rstd: Vec<f32>,
    /// (B, T, 3C): as attention reads them, after QK-norm and RoPE.
    pub qkv: Vec<f32>,
    /// QK-norm: the queries and keys before it, (B, T, 2C) (training only), and its `1/rms` of
    /// every head's query and key, (B, T, 2H).
    pub qk_raw: Vec<f32>,
    pub qk_rstd: Vec<f32>,
    /// (B, H, T, T) softmax weights, before dropout.
    pub att: Vec<f32>,
    pub att_mask: Vec<u8>,
    /// Heads concatenated, before the projection.
    pub attn_y: Vec<f32>,
    /// Projection output after dropout, kept only without residual (then it is the stream).
    pub proj: Vec<f32>,
    pub proj_mask: Vec<u8>,
    /// `x + attention branch` (with residual).
    pub r1: Vec<f32>,
    pub ln2_mean: Vec<f32>,
    pub ln2_rstd: Vec<f32>,
    /// (B, T, F) before the activation.
    pub fc: Vec<f32>,
    /// (B, T, F) after the activation and dropout, kept only when it is the stream (the Linear
    /// feed-forward without residual).
    pub act: Vec<f32>,
    /// Second feed-forward linear's output after dropout, kept only without residual.
    pub fc2: Vec<f32>,
    pub ffn_mask: Vec<u8>,
    /// `r1 + feed-forward branch` (with residual).
    pub r2: Vec<f32>,
    /// Keys and values of every position so far, (H, T, hs) each: the cache generation reads
    /// (single-sequence evaluation activations only).
    pub kv_keys: Vec<f32>,
    pub kv_values: Vec<f32>,
}

impl BlockActivations {
    /// The stream after the attention half of the block.
    pub fn mid(&self) -> &[f32] {
        if !self.r1.is_empty() {
            &self.r1
        } else if !self.proj.is_empty() {
            &self.proj
        } else {
            &self.attn_y
        }
    }

    /// The block's output.
    pub fn output(&self) -> &[f32] {
        if !self.r2.is_empty() {
            &self.r2
        } else if !self.fc2.is_empty() {
            &self.fc2
        } else if !self.act.is_empty() {
            &self.act
        } else {
            self.mid()
        }
    }
}

/// Scratch shared by all blocks: outputs used once in the forward pass and recomputed in the
/// backward pass.
#[derive(Debug, Default)]
pub(super) struct Transient {
    /// A LayerNorm output, (B, T, C).
    pub norm_out: Vec<f32>,
    /// A branch output about to be added to the residual stream, (B, T, C).
    pub branch: Vec<f32>,
    /// The feed-forward activation, (B, T, F).
    pub hidden: Vec<f32>,
    /// Its derivative, recomputed with it in the backward pass (two-layer feed-forward only).
    pub hidden_grad: Vec<f32>,
}

/// Gradient buffers for the backward pass, reused by every block.
#[derive(Debug, Default)]
pub(super) struct GradScratch {
    /// Gradient of the current block's output, and of its input.
    pub d_out: Vec<f32>,
    pub d_in: Vec<f32>,
    /// Gradient of the stream after the attention half.
    pub d_mid: Vec<f32>,
    /// Gradient of a branch output before dropout.
    pub d_branch: Vec<f32>,
    /// Gradient of a LayerNorm output (or of the block input through the branch).
    pub d_norm: Vec<f32>,
    pub d_attn_y: Vec<f32>,
    pub d_qkv: Vec<f32>,
    /// Gradient of the feed-forward activation, then (in place) of its input.
    pub d_fc: Vec<f32>,
    pub d_logits: Vec<f32>,
}

/// Everything the forward pass computes and the backward pass reads, sized for at most
/// `batch` x `seq_len` tokens. Allocated once; a training step allocates nothing.
#[derive(Debug)]
pub struct Activations {
    pub(super) capacity_batch: usize,
    pub(super) capacity_seq: usize,
    pub(super) vocab: usize,
    pub(super) n_head: usize,
    pub(super) batch: usize,
    pub(super) seq_len: usize,
    pub(super) has_targets: bool,
    pub(super) dropout_seed: Option<crate::rng::DropoutSeed>,
    pub(super) tokens: Vec<TokenId>,
    pub(super) targets: Vec<TokenId>,
    pub(super) encoded: Vec<f32>,
    pub(super) blocks: Vec<BlockActivations>,
    pub(super) transient: Transient,
    pub(super) ln_f: Vec<f32>,
    pub(super) ln_f_mean: Vec<f32>,
    pub(super) ln_f_rstd: Vec<f32>,
    pub(super) logits: Vec<f32>,
    pub(super) probs: Vec<f32>,
    pub(super) losses: Vec<f32>,
    pub(super) grad: GradScratch,
}

impl Activations {
    /// Buffers for up to `batch` sequences of up to `seq_len` tokens. `training` adds the
    /// gradient scratch and the dropout masks.
    pub fn new(cfg: &ModelConfig, batch: usize, seq_len: usize, training: bool) -> Self {
        Self::try_new(cfg, batch, seq_len, training).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Activations::new`], or [`OutOfMemory`] if the system refuses the buffers.
    pub fn try_new(
        cfg: &ModelConfig,
        batch: usize,
        seq_len: usize,
        training: bool,
    ) -> Result<Self, OutOfMemory> {
        let n = batch * seq_len;
        let (c, v, h, f) = (cfg.n_embd, cfg.vocab_size, cfg.n_head, cfg.ffn_hidden());
        let buf = |on: bool, len: usize| {
            if on {
                zeroed::<f32>(len, "the activations")
            } else {
                Ok(Vec::new())
            }
        };
        let mask = |on: bool, len: usize| {
            if on {
                zeroed::<u8>(len, "the dropout masks")
            } else {
                Ok(Vec::new())
            }
        };
        let dropout = training && cfg.dropout > 0.0;
        let transformer = cfg.architecture == Architecture::Transformer;
        let (ln, res, proj) = (cfg.layer_norm, cfg.residual, cfg.attention_projection);
        // LayerNorm keeps means; RMSNorm has none.
        let ln_mean = ln && cfg.norm == crate::config::NormKind::Layer;
        let qk = cfg.qk_norm;
        let ffn = cfg.feed_forward != FeedForward::None;
        let mlp = cfg.feed_forward == FeedForward::Mlp;
        let act_is_stream = cfg.feed_forward == FeedForward::Linear && !res;
        // Generation extends one sequence a token at a time.
        let kv_cache = !training && batch == 1;
        let blocks = (0..if transformer { cfg.n_layer } else { 0 })
            .map(|_| -> Result<BlockActivations, OutOfMemory> {
                Ok(BlockActivations {
                    ln1_mean: buf(ln_mean, n)?,
                    ln1_rstd: buf(ln, n)?,
                    qkv: buf(true, n * 3 * c)?,
                    qk_raw: buf(qk && training, n * 2 * c)?,
                    qk_rstd: buf(qk, n * 2 * h)?,
                    att: buf(true, n * h * seq_len)?,
                    att_mask: mask(dropout, n * h * seq_len)?,
                    attn_y: buf(true, n * c)?,
                    proj: buf(proj && !res, n * c)?,
                    proj_mask: mask(dropout && proj, n * c)?,
                    r1: buf(res, n * c)?,
                    ln2_mean: buf(ln_mean && ffn, n)?,
                    ln2_rstd: buf(ln && ffn, n)?,
                    fc: buf(ffn, n * f)?,
                    act: buf(act_is_stream, n * f)?,
                    fc2: buf(mlp && !res, n * c)?,
                    ffn_mask: mask(dropout && ffn, if mlp { n * c } else { n * f })?,
                    r2: buf(res && ffn, n * c)?,
                    kv_keys: buf(kv_cache, n * c)?,
                    kv_values: buf(kv_cache, n * c)?,
                })
            })
            .collect::<Result<_, _>>()?;
        let transient = Transient {
            norm_out: buf(transformer && ln, n * c)?,
            branch: buf(transformer && res && (proj || mlp), n * c)?,
            hidden: buf(transformer && ffn && !act_is_stream, n * f)?,
            hidden_grad: buf(training && transformer && mlp, n * f)?,
        };
        let g = |on: bool, len: usize| buf(training && on, len);
        let grad = GradScratch {
            d_out: g(transformer, n * c)?,
            d_in: g(transformer, n * c)?,
            d_mid: g(transformer, n * c)?,
            d_branch: g(transformer, n * c)?,
            d_norm: g(transformer, n * c)?,
            d_attn_y: g(transformer, n * c)?,
            d_qkv: g(transformer, n * 3 * c)?,
            d_fc: g(transformer && ffn, n * f)?,
            d_logits: g(true, n * v)?,
        };
        Ok(Activations {
            capacity_batch: batch,
            capacity_seq: seq_len,
            vocab: v,
            n_head: h,
            batch: 0,
            seq_len: 0,
            has_targets: false,
            dropout_seed: None,
            tokens: zeroed(n, "the batch")?,
            targets: zeroed(n, "the batch")?,
            encoded: buf(transformer, n * c)?,
            blocks,
            transient,
            ln_f: buf(transformer && ln, n * c)?,
            ln_f_mean: buf(transformer && ln_mean, n)?,
            ln_f_rstd: buf(transformer && ln, n)?,
            logits: buf(true, n * v)?,
            probs: buf(true, n * v)?,
            losses: buf(true, n)?,
            grad,
        })
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

    /// Softmax weights of block `layer` from the last [`crate::model::Model::forward`],
    /// (B, H, T, T), before dropout.
    pub fn attention_weights(&self, layer: usize) -> Option<&[f32]> {
        let blk = self.blocks.get(layer)?;
        Some(&blk.att[..self.batch * self.n_head * self.seq_len * self.seq_len])
    }

    /// The input of block `layer` in the last forward pass, (B, T, C): the embedding for block
    /// 0, the previous block's output after.
    pub fn block_input(&self, layer: usize) -> Option<&[f32]> {
        let n = self.batch * self.seq_len;
        let c = self.encoded.len() / self.capacity_batch.max(1) / self.capacity_seq.max(1);
        if layer >= self.blocks.len() {
            return None;
        }
        Some(match layer {
            0 => &self.encoded[..n * c],
            l => &self.blocks[l - 1].output()[..n * c],
        })
    }

    /// The `[q; k; v]` rows of block `layer` in the last forward pass, (B, T, 3C).
    pub fn qkv(&self, layer: usize) -> Option<&[f32]> {
        let blk = self.blocks.get(layer)?;
        let n = self.batch * self.seq_len;
        let c3 = blk.qkv.len() / self.capacity_batch.max(1) / self.capacity_seq.max(1);
        Some(&blk.qkv[..n * c3])
    }

    /// Block `layer`'s heads' outputs, concatenated, in the last forward pass, (B, T, C).
    pub fn heads_output(&self, layer: usize) -> Option<&[f32]> {
        let blk = self.blocks.get(layer)?;
        let n = self.batch * self.seq_len;
        let c = blk.attn_y.len() / self.capacity_batch.max(1) / self.capacity_seq.max(1);
        Some(&blk.attn_y[..n * c])
    }

    /// Bytes held by all buffers.
    pub fn bytes(&self) -> usize {
        let f = |v: &Vec<f32>| v.len() * 4;
        let blocks: usize = self
            .blocks
            .iter()
            .map(|b| {
                f(&b.ln1_mean)
                    + f(&b.ln1_rstd)
                    + f(&b.qkv)
                    + f(&b.qk_raw)
                    + f(&b.qk_rstd)
                    + f(&b.att)
                    + b.att_mask.len()
                    + f(&b.attn_y)
                    + f(&b.proj)
                    + b.proj_mask.len()
                    + f(&b.r1)
                    + f(&b.ln2_mean)
                    + f(&b.ln2_rstd)
                    + f(&b.fc)
                    + f(&b.act)
                    + f(&b.fc2)
                    + b.ffn_mask.len()
                    + f(&b.r2)
                    + f(&b.kv_keys)
                    + f(&b.kv_values)
            })
            .sum();
        let t = &self.transient;
        let g = &self.grad;
        blocks
            + f(&t.norm_out)
            + f(&t.branch)
            + f(&t.hidden)
            + f(&g.d_out)
            + f(&g.d_in)
            + f(&g.d_mid)
            + f(&g.d_branch)
            + f(&g.d_norm)
            + f(&g.d_attn_y)
            + f(&g.d_qkv)
            + f(&g.d_fc)
            + f(&g.d_logits)
            + f(&self.encoded)
            + f(&self.ln_f)
            + f(&self.logits)
            + f(&self.probs)
            + f(&self.losses)
            + 8 * self.tokens.len()
    }
}
