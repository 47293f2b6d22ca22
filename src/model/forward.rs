//! The forward pass: embedding, blocks, final norm, `lm_head`, cross-entropy.

use super::activations::{Activations, BlockActivations, Transient};
use super::Model;
use crate::config::{Architecture, NormKind, Position};
use crate::kernels::{
    activation, attention, cross_entropy, dropout, embedding, layernorm, matmul, residual, rmsnorm,
    rope,
};
use crate::layout::{view, BlockLayout, Norm};
use crate::rng::{DropoutSeed, DropoutSite};
use crate::tokenizer::TokenId;

impl Model {
    /// Runs the forward pass over `inputs` (B, T). With `targets` it returns the mean
    /// cross-entropy loss. `dropout` switches dropout on (training) with the masks it names (for
    /// a shard of a batch, those of its rows, [`DropoutSeed::rows_from`]); `None` is evaluation
    /// mode. Panics if the shape exceeds the activations' capacity or a token is out of range.
    pub fn forward(
        &self,
        acts: &mut Activations,
        inputs: &[TokenId],
        targets: Option<&[TokenId]>,
        batch: usize,
        seq_len: usize,
        dropout: Option<DropoutSeed>,
    ) -> Option<f32> {
        let cfg = &self.config;
        let v = cfg.vocab_size;
        let n = batch * seq_len;
        self.set_inputs(acts, inputs, batch, seq_len);
        acts.has_targets = targets.is_some();
        if let Some(targets) = targets {
            assert_eq!(targets.len(), n);
            assert!(targets.iter().all(|&t| (t as usize) < v));
            acts.targets[..n].copy_from_slice(targets);
        }
        let dropout_p = if dropout.is_some() && cfg.dropout > 0.0 {
            assert!(
                acts.grad.d_logits.len() >= n * v,
                "dropout needs training activations"
            );
            cfg.dropout
        } else {
            0.0
        };
        acts.dropout_seed = dropout.filter(|_| dropout_p > 0.0);
        self.forward_rows(acts, Rows::WHOLE, dropout_p);
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

    /// Extends the forward pass of a single sequence (B = 1) to `inputs`, whose first `start`
    /// tokens were already computed by an earlier call on the same `acts` with the same prefix:
    /// only rows `start..` are computed, their attention reading the earlier rows' keys and values
    /// (a KV cache). `start = 0` computes everything. Evaluation mode; the logits of the new rows
    /// are in [`Activations::logits`].
    pub fn forward_from(&self, acts: &mut Activations, inputs: &[TokenId], start: usize) {
        assert!(start == 0 || (acts.batch == 1 && start <= acts.seq_len));
        debug_assert!(acts.tokens[..start] == inputs[..start]);
        self.set_inputs(acts, inputs, 1, inputs.len());
        acts.has_targets = false;
        acts.dropout_seed = None;
        let rows = match start {
            0 => Rows::WHOLE,
            _ => Rows {
                first: start,
                position: start,
                extend: Some(Extend::Causal),
            },
        };
        self.forward_rows(acts, rows, 0.0);
    }

    /// Generation with rotary positions (`position = rope`): computes the row of `token` at
    /// absolute `position` of one sequence whose earlier tokens went through this method (or
    /// [`Model::forward_from`], for positions below `block_size`), and returns its logits (V).
    ///
    /// The KV cache is a ring of the last `block_size` positions: the new key and value go into
    /// slot `position % block_size`, over the oldest ones once the ring is full, and the query
    /// attends over every cached slot, `min(position + 1, block_size)` of them. Scores under RoPE
    /// depend only on how far apart a query and a key are, so keys turned at their own absolute
    /// positions stay valid as the context slides past `block_size`: the model sees exactly the
    /// last `block_size` characters (as the lecture's crop would give it), at the cost of one row
    /// per character. `acts` holds (1, block_size) evaluation activations.
    pub fn forward_ring<'a>(
        &self,
        acts: &'a mut Activations,
        token: crate::tokenizer::TokenId,
        position: usize,
    ) -> &'a [f32] {
        let cfg = &self.config;
        assert_eq!(
            cfg.position,
            Position::Rope,
            "the ring needs rotary positions"
        );
        let block = cfg.block_size;
        assert!(acts.capacity_batch == 1 && acts.capacity_seq == block);
        assert!(
            (token as usize) < cfg.vocab_size,
            "token id outside the vocabulary"
        );
        let slot = position % block;
        acts.batch = 1;
        acts.seq_len = slot + 1;
        acts.tokens[slot] = token;
        acts.has_targets = false;
        acts.dropout_seed = None;
        let rows = Rows {
            first: slot,
            position,
            extend: Some(Extend::Ring {
                keys: (position + 1).min(block),
            }),
        };
        self.forward_rows(acts, rows, 0.0);
        let v = cfg.vocab_size;
        &acts.logits[slot * v..(slot + 1) * v]
    }

    fn set_inputs(&self, acts: &mut Activations, inputs: &[TokenId], batch: usize, seq_len: usize) {
        let cfg = &self.config;
        let n = batch * seq_len;
        assert!(batch <= acts.capacity_batch && seq_len <= acts.capacity_seq);
        assert!(seq_len <= cfg.block_size || cfg.architecture == Architecture::Bigram);
        assert_eq!(inputs.len(), n);
        assert!(
            inputs.iter().all(|&t| (t as usize) < cfg.vocab_size),
            "token id outside the vocabulary"
        );
        acts.batch = batch;
        acts.seq_len = seq_len;
        acts.tokens[..n].copy_from_slice(inputs);
    }

    /// The forward pass for rows `rows.first..B*T` of the (B, T) input set in `acts`
    /// (`first > 0` only with B = 1, the earlier rows already computed).
    fn forward_rows(&self, acts: &mut Activations, rows: Rows, dropout_p: f32) {
        let first = rows.first;
        let cfg = &self.config;
        let (c, v, h) = (cfg.n_embd, cfg.vocab_size, cfg.n_head);
        let (batch, seq_len) = (acts.batch, acts.seq_len);
        let n = batch * seq_len;
        let p = &self.params;
        let lay = &self.layout;
        let tokens = &acts.tokens[first..n];

        if cfg.architecture == Architecture::Bigram {
            embedding::forward(
                &mut acts.logits[first * v..n * v],
                tokens,
                view(p, &lay.token_embedding),
                None,
                seq_len,
                first,
                v,
            );
            return;
        }
        embedding::forward(
            &mut acts.encoded[first * c..n * c],
            tokens,
            view(p, &lay.token_embedding),
            lay.position_embedding.as_ref().map(|r| view(p, r)),
            seq_len,
            first,
            c,
        );
        let shape = attention::AttentionShape {
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
            let step = BlockStep {
                shape,
                rows,
                layer: l,
                seed: acts.dropout_seed,
                dropout_p,
            };
            self.block_forward(bl, x, &mut rest[0], &mut acts.transient, step);
        }
        let x = match acts.blocks.last() {
            Some(last) => &last.output()[first * c..n * c],
            None => &acts.encoded[first * c..n * c],
        };
        let head_in = match &lay.ln_f {
            Some(norm) => {
                let mean = match acts.ln_f_mean.is_empty() {
                    true => &mut [][..],
                    false => &mut acts.ln_f_mean[first..n],
                };
                self.norm_forward(
                    norm,
                    &mut acts.ln_f[first * c..n * c],
                    mean,
                    &mut acts.ln_f_rstd[first..n],
                    x,
                );
                &acts.ln_f[first * c..n * c]
            }
            None => x,
        };
        let lm = lay.lm_head.as_ref().expect("transformer has an lm_head");
        matmul::forward(
            &mut acts.logits[first * v..n * v],
            head_in,
            self.weight(&lm.weight),
            lm.bias.as_ref().map(|b| view(p, b)),
            c,
            v,
        );
    }

    /// A pre-norm of rows `x` (·, C) into `out`: LayerNorm (keeping `mean` and `rstd`) or RMSNorm
    /// (keeping `rstd`; `mean` is empty).
    pub(super) fn norm_forward(
        &self,
        norm: &Norm,
        out: &mut [f32],
        mean: &mut [f32],
        rstd: &mut [f32],
        x: &[f32],
    ) {
        let (p, c) = (&self.params, self.config.n_embd);
        let weight = view(p, &norm.weight);
        match self.config.norm {
            NormKind::Layer => {
                let bias = norm.bias.as_ref().map(|b| view(p, b));
                layernorm::forward(out, mean, rstd, x, weight, bias, c)
            }
            NormKind::Rms => rmsnorm::forward(out, rstd, x, weight, c),
        }
    }

    /// One block's forward pass for rows `first..B*T`; `x` is the whole (B, T, C) block input.
    fn block_forward(
        &self,
        bl: &BlockLayout,
        x: &[f32],
        a: &mut BlockActivations,
        tr: &mut Transient,
        step: BlockStep,
    ) {
        let cfg = &self.config;
        let p = &self.params;
        let (c, f) = (cfg.n_embd, cfg.ffn_hidden());
        let BlockStep {
            shape,
            rows,
            layer,
            seed,
            dropout_p,
        } = step;
        let first = rows.first;
        let n = shape.batch * shape.seq_len;
        let att_len = n * cfg.n_head * shape.seq_len;
        // Each dropout site has its own masks; dropout only runs on whole batches (first = 0).
        let drop = |site: DropoutSite| seed.map(|s| s.site(layer, site));
        // The rows being computed, for tensors of width C and F.
        let rc = first * c..n * c;
        let rf = first * f..n * f;
        let res = cfg.residual;

        // Attention half.
        let attn_in = match &bl.ln1 {
            Some(norm) => {
                let mean = match a.ln1_mean.is_empty() {
                    true => &mut [][..],
                    false => &mut a.ln1_mean[first..n],
                };
                self.norm_forward(
                    norm,
                    &mut tr.norm_out[rc.clone()],
                    mean,
                    &mut a.ln1_rstd[first..n],
                    &x[rc.clone()],
                );
                &tr.norm_out[rc.clone()]
            }
            None => &x[rc.clone()],
        };
        matmul::forward(
            &mut a.qkv[first * 3 * c..n * 3 * c],
            attn_in,
            self.weight(&bl.qkv.weight),
            None,
            c,
            3 * c,
        );
        // Queries and keys as the scores read them: normalised per head, then turned.
        let rows_qkv = first * 3 * c..n * 3 * c;
        if let Some(qk) = &bl.qk_norm {
            let h = cfg.n_head;
            let raw = match a.qk_raw.is_empty() {
                true => None,
                false => Some(&mut a.qk_raw[first * 2 * c..n * 2 * c]),
            };
            rmsnorm::qk_forward(
                &mut a.qkv[rows_qkv.clone()],
                raw,
                &mut a.qk_rstd[first * 2 * h..n * 2 * h],
                view(p, &qk.q),
                view(p, &qk.k),
                c,
                h,
            );
        }
        if let Some(table) = &self.rope {
            // A batch's rows are at positions t = row % T; rows that extend one sequence follow
            // its last position.
            let period = match rows.extend {
                None => shape.seq_len,
                Some(_) => usize::MAX,
            };
            rope::apply(
                &mut a.qkv[rows_qkv],
                table,
                rows.position,
                period,
                c,
                cfg.n_head,
                false,
            );
        }
        if !a.kv_keys.is_empty() {
            attention::cache_keys_values(
                &mut a.kv_keys,
                &mut a.kv_values,
                &a.qkv[..n * 3 * c],
                first..n,
                c,
                cfg.n_head,
            );
        }
        if rows.extend.is_none() {
            let att_dropout =
                drop(DropoutSite::AttentionWeights).map(|masks| attention::DropoutBuffers {
                    mask: &mut a.att_mask[..att_len],
                    dropout: attention::AttentionDropout {
                        p: dropout_p,
                        masks,
                    },
                });
            attention::forward(
                &mut a.attn_y[..n * c],
                &mut a.att[..att_len],
                att_dropout,
                &a.qkv[..n * 3 * c],
                shape,
                cfg.attention_scale_factor(),
                self.bf16.is_some(),
            );
        } else {
            // Extending one sequence: each new row attends over the cached keys and values of
            // all rows so far. The softmax weights are not kept (nothing reads them back).
            assert!(
                !a.kv_keys.is_empty(),
                "extending a sequence needs a KV cache"
            );
            for t in first..n {
                let keys = match rows.extend {
                    Some(Extend::Ring { keys }) => keys,
                    _ => t + 1,
                };
                attention::forward_row(
                    &mut a.attn_y[t * c..(t + 1) * c],
                    &mut a.att[..keys],
                    &a.qkv[t * 3 * c..t * 3 * c + c],
                    &a.kv_keys,
                    &a.kv_values,
                    keys,
                    cfg.n_head,
                    cfg.attention_scale_factor(),
                );
            }
        }
        if let Some(proj) = &bl.proj {
            let out = if res { &mut tr.branch } else { &mut a.proj };
            matmul::forward(
                &mut out[rc.clone()],
                &a.attn_y[rc.clone()],
                self.weight(&proj.weight),
                proj.bias.as_ref().map(|b| view(p, b)),
                c,
                c,
            );
            if let Some(masks) = drop(DropoutSite::AttentionOutput) {
                dropout::forward(
                    &mut out[..n * c],
                    &mut a.proj_mask[..n * c],
                    dropout_p,
                    masks,
                    shape.seq_len * c,
                );
            }
        }
        if res {
            let branch = if bl.proj.is_some() {
                &tr.branch
            } else {
                &a.attn_y
            };
            residual::forward(&mut a.r1[rc.clone()], &x[rc.clone()], &branch[rc.clone()]);
        }

        // Feed-forward half.
        let Some(fc) = &bl.fc else { return };
        let mid = if res {
            &a.r1[rc.clone()]
        } else if bl.proj.is_some() {
            &a.proj[rc.clone()]
        } else {
            &a.attn_y[rc.clone()]
        };
        let ffn_in = match &bl.ln2 {
            Some(norm) => {
                let mean = match a.ln2_mean.is_empty() {
                    true => &mut [][..],
                    false => &mut a.ln2_mean[first..n],
                };
                self.norm_forward(
                    norm,
                    &mut tr.norm_out[rc.clone()],
                    mean,
                    &mut a.ln2_rstd[first..n],
                    mid,
                );
                &tr.norm_out[rc.clone()]
            }
            None => mid,
        };
        matmul::forward(
            &mut a.fc[rf.clone()],
            ffn_in,
            self.weight(&fc.weight),
            fc.bias.as_ref().map(|b| view(p, b)),
            c,
            f,
        );
        let hidden = if a.act.is_empty() {
            &mut tr.hidden
        } else {
            &mut a.act
        };
        activation::forward(cfg.activation, &mut hidden[rf.clone()], &a.fc[rf.clone()]);
        let branch: &[f32] = match &bl.fc2 {
            Some(fc2) => {
                let out = if res { &mut tr.branch } else { &mut a.fc2 };
                matmul::forward(
                    &mut out[rc.clone()],
                    &hidden[rf.clone()],
                    self.weight(&fc2.weight),
                    fc2.bias.as_ref().map(|b| view(p, b)),
                    f,
                    c,
                );
                if let Some(masks) = drop(DropoutSite::FeedForwardOutput) {
                    dropout::forward(
                        &mut out[..n * c],
                        &mut a.ffn_mask[..n * c],
                        dropout_p,
                        masks,
                        shape.seq_len * c,
                    );
                }
                out
            }
            None => {
                if let Some(masks) = drop(DropoutSite::FeedForwardOutput) {
                    dropout::forward(
                        &mut hidden[..n * f],
                        &mut a.ffn_mask[..n * f],
                        dropout_p,
                        masks,
                        shape.seq_len * f,
                    );
                }
                hidden
            }
        };
        if res {
            residual::forward(&mut a.r2[rc.clone()], &a.r1[rc.clone()], &branch[rc]);
        }
    }
}

/// Which rows a forward pass computes.
#[derive(Debug, Clone, Copy)]
struct Rows {
    /// First row computed (B = 1 when > 0).
    first: usize,
    /// The sequence position of row `first` (0 for a whole batch, where row r is at r % T).
    position: usize,
    /// Rows that extend one sequence, reading the KV cache; `None`: whole sequences.
    extend: Option<Extend>,
}

impl Rows {
    /// Every row of the batch.
    const WHOLE: Rows = Rows {
        first: 0,
        position: 0,
        extend: None,
    };
}

/// How rows that extend a sequence attend over the KV cache.
#[derive(Debug, Clone, Copy)]
enum Extend {
    /// Row t attends over cache slots `0..=t` (positions `0..=t`).
    Causal,
    /// The one row attends over the first `keys` slots of the ring (RoPE generation).
    Ring { keys: usize },
}

/// What varies between calls of `block_forward`.
#[derive(Clone, Copy)]
struct BlockStep {
    shape: attention::AttentionShape,
    rows: Rows,
    /// The block's index.
    layer: usize,
    /// The step's dropout masks (None: no dropout).
    seed: Option<DropoutSeed>,
    dropout_p: f32,
}
