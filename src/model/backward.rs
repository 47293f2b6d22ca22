//! The backward pass: the chain rule through the forward pass in reverse, one kernel backward
//! at a time. Parameter gradients go into a buffer with the parameters' layout.

use super::activations::{Activations, BlockActivations, GradScratch, Transient};
use super::Model;
use crate::config::{Architecture, NormKind};
use crate::kernels::matmul::Grad;
use crate::kernels::{
    activation, attention, cross_entropy, dropout, embedding, layernorm, matmul, residual, rmsnorm,
    rope,
};
use crate::layout::{linear_grads, norm_grads, two_mut, view, BlockLayout, Norm};

impl Model {
    /// Writes the gradient of the last forward pass's mean loss into `grads` (same layout as the
    /// parameters; whatever it held is overwritten). The forward pass must have been given
    /// targets and training activations.
    pub fn backward(&self, acts: &mut Activations, grads: &mut [f32]) {
        self.backward_scaled(acts, grads, 1.0);
    }

    /// [`Model::backward`] of `loss_scale` times the mean loss: a part of a batch computed on
    /// its own contributes its share of the whole batch's mean.
    pub fn backward_scaled(&self, acts: &mut Activations, grads: &mut [f32], loss_scale: f32) {
        assert!(
            acts.has_targets,
            "backward needs a forward pass with targets"
        );
        assert_eq!(grads.len(), self.layout.len);
        // The linear layers' weight gradients are each one product, written whole; everything
        // else (embeddings, norms, biases) is summed over rows, so starts from zero. Not
        // zeroing the weights saves a pass over nearly all of the buffer, and the products a
        // read of it. (A tied token embedding is lm_head's weight: the product writes it first,
        // then the embedding's backward adds its own use.)
        for spec in &self.layout.specs {
            if !self.layout.is_linear_weight(spec.range()) {
                grads[spec.range()].fill(0.0);
            }
        }
        let cfg = &self.config;
        let (c, v) = (cfg.n_embd, cfg.vocab_size);
        let (batch, seq_len) = (acts.batch, acts.seq_len);
        let n = batch * seq_len;
        let lay = &self.layout;
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
            loss_scale,
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
        let (dw, db) = linear_grads(grads, lm);
        matmul::backward(
            Grad::Write(&mut g.d_norm[..n * c]),
            Grad::Write(dw),
            db,
            &g.d_logits[..n * v],
            head_in,
            self.weight(&lm.weight),
            c,
            v,
        );
        g.d_out[..n * c].fill(0.0);
        match &lay.ln_f {
            Some(norm) => self.norm_backward(
                norm,
                &mut g.d_out[..n * c],
                grads,
                &g.d_norm[..n * c],
                x_last,
                head_stats(&acts.ln_f_mean, n),
                &acts.ln_f_rstd[..n],
            ),
            None => residual::backward(&mut g.d_out[..n * c], &g.d_norm[..n * c]),
        }

        let shape = attention::AttentionShape {
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
            let block = BlockRefs {
                layout: &lay.blocks[l],
                x,
                acts: &acts.blocks[l],
            };
            self.block_backward(block, &mut acts.transient, g, grads, shape, has_dropout);
            std::mem::swap(&mut g.d_out, &mut g.d_in);
        }

        let (dwte, dwpe) = match &lay.position_embedding {
            Some(pos) => {
                let (dwte, dwpe) = two_mut(grads, &lay.token_embedding, pos);
                (dwte, Some(dwpe))
            }
            // RoPE: positions have no parameters.
            None => (&mut grads[lay.token_embedding.clone()], None),
        };
        embedding::backward(dwte, dwpe, &g.d_out[..n * c], &acts.tokens[..n], seq_len, c);
    }

    /// A pre-norm's output again, into `out`, from the statistics its forward pass kept.
    fn norm_normalize(&self, norm: &Norm, out: &mut [f32], x: &[f32], mean: &[f32], rstd: &[f32]) {
        let (p, c) = (&self.params, self.config.n_embd);
        let weight = view(p, &norm.weight);
        match self.config.norm {
            NormKind::Layer => {
                let bias = norm.bias.as_ref().map(|b| view(p, b));
                layernorm::normalize(out, x, weight, bias, mean, rstd, c)
            }
            NormKind::Rms => rmsnorm::normalize(out, x, weight, rstd, c),
        }
    }

    /// A pre-norm's backward: `d_in += ...` from the gradient of its output, and its gain's (and
    /// shift's) gradient added into `grads`.
    #[allow(clippy::too_many_arguments)]
    fn norm_backward(
        &self,
        norm: &Norm,
        d_in: &mut [f32],
        grads: &mut [f32],
        d_out: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
    ) {
        let (p, c) = (&self.params, self.config.n_embd);
        let weight = view(p, &norm.weight);
        let (dw, db) = norm_grads(grads, norm);
        match self.config.norm {
            NormKind::Layer => layernorm::backward(d_in, dw, db, d_out, x, weight, mean, rstd, c),
            NormKind::Rms => rmsnorm::backward(d_in, dw, d_out, x, weight, rstd, c),
        }
    }

    /// Backward through one block: reads `g.d_out` (gradient of the block output), writes
    /// `g.d_in` (gradient of its input `x`), accumulates parameter gradients. LayerNorm outputs
    /// and the feed-forward activation are recomputed into `tr` from what the forward pass kept.
    fn block_backward(
        &self,
        block: BlockRefs,
        tr: &mut Transient,
        g: &mut GradScratch,
        grads: &mut [f32],
        shape: attention::AttentionShape,
        has_dropout: bool,
    ) {
        let BlockRefs {
            layout: bl,
            x,
            acts: a,
        } = block;
        let cfg = &self.config;
        let p = &self.params;
        let (c, f) = (cfg.n_embd, cfg.ffn_hidden());
        let n = shape.batch * shape.seq_len;
        let att_len = n * cfg.n_head * shape.seq_len;
        let (rc, rf) = (0..n * c, 0..n * f);
        let dropout_p = cfg.dropout;
        let res = cfg.residual;

        // Feed-forward half: from d_out (gradient of the block output) to d_mid (gradient of the
        // stream after attention).
        let d_mid = &mut g.d_mid[rc.clone()];
        if let Some(fc) = &bl.fc {
            // The residual path passes the gradient through unchanged; the branch adds to it.
            match res {
                true => d_mid.copy_from_slice(&g.d_out[rc.clone()]),
                false => d_mid.fill(0.0),
            }
            let mid = &a.mid()[rc.clone()];
            let ffn_in = match &bl.ln2 {
                Some(norm) => {
                    self.norm_normalize(
                        norm,
                        &mut tr.norm_out[rc.clone()],
                        mid,
                        head_stats(&a.ln2_mean, n),
                        &a.ln2_rstd[..n],
                    );
                    &tr.norm_out[rc.clone()]
                }
                None => mid,
            };
            let d_fc = &mut g.d_fc[rf.clone()];
            match &bl.fc2 {
                Some(fc2) => {
                    let d_branch: &[f32] = if has_dropout {
                        g.d_branch[rc.clone()].fill(0.0);
                        dropout::backward(
                            &mut g.d_branch[rc.clone()],
                            &g.d_out[rc.clone()],
                            &a.ffn_mask[rc.clone()],
                            dropout_p,
                        );
                        &g.d_branch[rc.clone()]
                    } else {
                        &g.d_out[rc.clone()]
                    };
                    let hidden = &mut tr.hidden[rf.clone()];
                    let hidden_grad = &mut tr.hidden_grad[rf.clone()];
                    activation::forward_with_grad(
                        cfg.activation,
                        hidden,
                        hidden_grad,
                        &a.fc[rf.clone()],
                    );
                    let (dw, db) = linear_grads(grads, fc2);
                    matmul::backward(
                        Grad::Write(&mut *d_fc),
                        Grad::Write(dw),
                        db,
                        d_branch,
                        hidden,
                        self.weight(&fc2.weight),
                        f,
                        c,
                    );
                    // d_fc held the gradient of the activation's output; now that of its input.
                    activation::apply_grad(d_fc, hidden_grad);
                }
                None => {
                    d_fc.fill(0.0);
                    match has_dropout {
                        true => dropout::backward(
                            d_fc,
                            &g.d_out[rc.clone()],
                            &a.ffn_mask[rf.clone()],
                            dropout_p,
                        ),
                        false => residual::backward(d_fc, &g.d_out[rc.clone()]),
                    }
                    activation::backward_in_place(cfg.activation, d_fc, &a.fc[rf.clone()]);
                }
            }
            let (dw, db) = linear_grads(grads, fc);
            matmul::backward(
                Grad::Write(&mut g.d_norm[rc.clone()]),
                Grad::Write(dw),
                db,
                d_fc,
                ffn_in,
                self.weight(&fc.weight),
                c,
                f,
            );
            match &bl.ln2 {
                Some(norm) => self.norm_backward(
                    norm,
                    d_mid,
                    grads,
                    &g.d_norm[rc.clone()],
                    mid,
                    head_stats(&a.ln2_mean, n),
                    &a.ln2_rstd[..n],
                ),
                None => residual::backward(d_mid, &g.d_norm[rc.clone()]),
            }
        } else {
            d_mid.copy_from_slice(&g.d_out[rc.clone()]);
        }
        let d_mid = &g.d_mid[rc.clone()];

        // Attention half: from d_mid to d_in.
        let d_in = &mut g.d_in[rc.clone()];
        match res {
            true => d_in.copy_from_slice(d_mid),
            false => d_in.fill(0.0),
        }
        let d_y: &[f32] = match &bl.proj {
            Some(proj) => {
                let d_branch: &[f32] = if has_dropout {
                    g.d_branch[rc.clone()].fill(0.0);
                    dropout::backward(
                        &mut g.d_branch[rc.clone()],
                        d_mid,
                        &a.proj_mask[rc.clone()],
                        dropout_p,
                    );
                    &g.d_branch[rc.clone()]
                } else {
                    d_mid
                };
                let (dw, db) = linear_grads(grads, proj);
                matmul::backward(
                    Grad::Write(&mut g.d_attn_y[rc.clone()]),
                    Grad::Write(dw),
                    db,
                    d_branch,
                    &a.attn_y[rc.clone()],
                    self.weight(&proj.weight),
                    c,
                    c,
                );
                &g.d_attn_y[rc.clone()]
            }
            None => d_mid,
        };
        attention::backward(
            &mut g.d_qkv[..n * 3 * c],
            d_y,
            &a.qkv[..n * 3 * c],
            &a.att[..att_len],
            has_dropout.then(|| (&a.att_mask[..att_len], dropout_p)),
            shape,
            cfg.attention_scale_factor(),
            self.bf16.is_some(),
        );
        // Back through RoPE (turning the gradient back) and QK-norm, in place: d_qkv becomes
        // the gradient of the product's output.
        if let Some(table) = &self.rope {
            rope::apply(
                &mut g.d_qkv[..n * 3 * c],
                table,
                0,
                shape.seq_len,
                c,
                cfg.n_head,
                true,
            );
        }
        if let Some(qk) = &bl.qk_norm {
            let (dq, dk) = two_mut(grads, &qk.q, &qk.k);
            rmsnorm::qk_backward(
                &mut g.d_qkv[..n * 3 * c],
                dq,
                dk,
                &a.qk_raw[..n * 2 * c],
                &a.qk_rstd[..n * 2 * cfg.n_head],
                view(p, &qk.q),
                view(p, &qk.k),
                c,
                cfg.n_head,
            );
        }
        let attn_in = match &bl.ln1 {
            Some(norm) => {
                self.norm_normalize(
                    norm,
                    &mut tr.norm_out[rc.clone()],
                    x,
                    head_stats(&a.ln1_mean, n),
                    &a.ln1_rstd[..n],
                );
                &tr.norm_out[rc.clone()]
            }
            None => x,
        };
        matmul::backward(
            Grad::Write(&mut g.d_norm[rc.clone()]),
            Grad::Write(&mut grads[bl.qkv.weight.clone()]),
            None,
            &g.d_qkv[..n * 3 * c],
            attn_in,
            self.weight(&bl.qkv.weight),
            c,
            3 * c,
        );
        match &bl.ln1 {
            Some(norm) => self.norm_backward(
                norm,
                d_in,
                grads,
                &g.d_norm[rc.clone()],
                x,
                head_stats(&a.ln1_mean, n),
                &a.ln1_rstd[..n],
            ),
            None => residual::backward(d_in, &g.d_norm[rc]),
        }
    }
}

/// The first `n` of a LayerNorm's kept means (RMSNorm keeps none: empty).
fn head_stats(mean: &[f32], n: usize) -> &[f32] {
    &mean[..n.min(mean.len())]
}

/// One block's parameters, input and kept activations.
struct BlockRefs<'a> {
    layout: &'a BlockLayout,
    x: &'a [f32],
    acts: &'a BlockActivations,
}
