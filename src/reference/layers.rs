//! Every layer of the model as a `forward` and a `backward` function in plain loops.
//!
//! Conventions, as in llm.c's `train_gpt2.c` (and in [`crate::kernels`], whose fast kernels are
//! tested against these):
//! - a tensor is a flat `f32` slice in row-major order: `(B, T, C)` means `x[(b * T + t) * C + c]`;
//! - `forward` writes its outputs;
//! - `backward` **adds** into the gradient of every input and parameter (`dx += ...`), so a tensor
//!   used twice (the residual stream) receives both contributions; the caller zeroes gradients.
//!
//! B is the batch (sequences), T the sequence length, C the width of the residual stream, H the
//! number of attention heads of size hs = C / H, V the vocabulary, F the feed-forward width.

use crate::config::Activation;
pub use crate::layout::AttentionShape;
use crate::layout::NORM_EPS;
use crate::rng::SiteMasks;
use crate::tokenizer::TokenId;

// ---------------------------------------------------------------------------------------------
// Embedding

/// `out[b, t, :] = wte[tokens[b, t], :] + wpe[t, :]`: each character's learned vector plus its
/// position's. Without `wpe` (the bigram model, where C = V) the row of `wte` is the output.
///
/// Shapes: `tokens` (B, T); `wte` (V, C); `wpe` (T_max, C) with T <= T_max; `out` (B, T, C).
#[allow(clippy::too_many_arguments)]
pub fn embedding_forward(
    out: &mut [f32],
    tokens: &[TokenId],
    wte: &[f32],
    wpe: Option<&[f32]>,
    b_n: usize,
    t_n: usize,
    c_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let token = tokens[b * t_n + t] as usize;
            for c in 0..c_n {
                let mut x = wte[token * c_n + c];
                if let Some(wpe) = wpe {
                    x += wpe[t * c_n + c];
                }
                out[(b * t_n + t) * c_n + c] = x;
            }
        }
    }
}

/// A lookup sends each output gradient back to the row it was read from:
/// `dwte[tokens[b, t], :] += dout[b, t, :]` and `dwpe[t, :] += dout[b, t, :]`.
pub fn embedding_backward(
    dwte: &mut [f32],
    mut dwpe: Option<&mut [f32]>,
    dout: &[f32],
    tokens: &[TokenId],
    b_n: usize,
    t_n: usize,
    c_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let token = tokens[b * t_n + t] as usize;
            for c in 0..c_n {
                let d = dout[(b * t_n + t) * c_n + c];
                dwte[token * c_n + c] += d;
                if let Some(dwpe) = dwpe.as_deref_mut() {
                    dwpe[t * c_n + c] += d;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// LayerNorm

/// For each position's vector x (C numbers):
/// `mu = mean(x)`, `var = mean((x - mu)^2)`, `rstd = 1 / sqrt(var + eps)` (eps [`NORM_EPS`]),
/// `xhat = (x - mu) * rstd` (mean 0, variance 1), `out = xhat * weight + bias`.
///
/// Shapes: `inp`, `out` (B, T, C); `weight` (C); `bias` (C) or none (`bias = false`: no shift);
/// `mean`, `rstd` (B, T), kept for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn layernorm_forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    b_n: usize,
    t_n: usize,
    c_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let row = (b * t_n + t) * c_n;
            let x = &inp[row..row + c_n];
            let mut sum = 0.0f32;
            for c in 0..c_n {
                sum += x[c];
            }
            let mu = sum / c_n as f32;
            let mut squares = 0.0f32;
            for c in 0..c_n {
                squares += (x[c] - mu) * (x[c] - mu);
            }
            let var = squares / c_n as f32;
            let rs = 1.0 / (var + NORM_EPS).sqrt();
            for c in 0..c_n {
                let xhat = (x[c] - mu) * rs;
                out[row + c] = xhat * weight[c] + bias.map_or(0.0, |bias| bias[c]);
            }
            mean[b * t_n + t] = mu;
            rstd[b * t_n + t] = rs;
        }
    }
}

/// With `g = dout * weight` (the gradient of `xhat`):
/// `dbias += dout`, `dweight += dout * xhat` (summed over positions), and
/// `dinp += rstd * (g - mean(g) - xhat * mean(g * xhat))`: the two means take out of g the
/// parts that the normalisation cancels (a shift of x, and a scaling of x - mu).
#[allow(clippy::too_many_arguments)]
pub fn layernorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    b_n: usize,
    t_n: usize,
    c_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let row = (b * t_n + t) * c_n;
            let (mu, rs) = (mean[b * t_n + t], rstd[b * t_n + t]);
            let mut mean_g = 0.0f32;
            let mut mean_g_xhat = 0.0f32;
            for c in 0..c_n {
                let xhat = (inp[row + c] - mu) * rs;
                let g = dout[row + c] * weight[c];
                mean_g += g;
                mean_g_xhat += g * xhat;
            }
            mean_g /= c_n as f32;
            mean_g_xhat /= c_n as f32;
            for c in 0..c_n {
                let xhat = (inp[row + c] - mu) * rs;
                let g = dout[row + c] * weight[c];
                if let Some(dbias) = dbias.as_deref_mut() {
                    dbias[c] += dout[row + c];
                }
                dweight[c] += dout[row + c] * xhat;
                dinp[row + c] += rs * (g - mean_g - xhat * mean_g_xhat);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// For each position's vector x (C numbers): `rstd = 1 / sqrt(mean(x^2) + eps)`,
/// `out = x * rstd * weight`. LayerNorm without the mean and without the shift.
///
/// Shapes: `inp`, `out` (B, T, C); `weight` (C); `rstd` (B, T), kept for the backward pass.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward(
    out: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    b_n: usize,
    t_n: usize,
    c_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let row = (b * t_n + t) * c_n;
            rstd[b * t_n + t] = rms_row(&mut out[row..row + c_n], &inp[row..row + c_n], weight);
        }
    }
}

/// One vector: `out = x * rstd * weight`; returns rstd.
fn rms_row(out: &mut [f32], x: &[f32], weight: &[f32]) -> f32 {
    let mut squares = 0.0f32;
    for c in 0..x.len() {
        squares += x[c] * x[c];
    }
    let rs = 1.0 / (squares / x.len() as f32 + NORM_EPS).sqrt();
    for c in 0..x.len() {
        out[c] = x[c] * rs * weight[c];
    }
    rs
}

/// With `g = dout * weight` and `xhat = x * rstd`: `dweight += dout * xhat` (summed over
/// positions) and `dinp += rstd * (g - xhat * mean(g * xhat))`: the mean takes out of g the part
/// that only rescales x, which the normalisation cancels.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    b_n: usize,
    t_n: usize,
    c_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let row = (b * t_n + t) * c_n;
            rms_row_backward(
                &mut dinp[row..row + c_n],
                dweight,
                &dout[row..row + c_n],
                &inp[row..row + c_n],
                weight,
                rstd[b * t_n + t],
            );
        }
    }
}

/// [`rmsnorm_backward`] of one vector.
fn rms_row_backward(
    dx: &mut [f32],
    dweight: &mut [f32],
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    rs: f32,
) {
    let n = x.len();
    let mut mean_g_xhat = 0.0f32;
    for c in 0..n {
        mean_g_xhat += dy[c] * weight[c] * x[c] * rs;
    }
    mean_g_xhat /= n as f32;
    for c in 0..n {
        let xhat = x[c] * rs;
        dweight[c] += dy[c] * xhat;
        dx[c] += rs * (dy[c] * weight[c] - xhat * mean_g_xhat);
    }
}

// ---------------------------------------------------------------------------------------------
// Linear

/// `out = inp @ weight^T + bias`: `out[b, t, o] = sum_i inp[b, t, i] * weight[o, i] + bias[o]`.
///
/// Shapes: `inp` (B, T, I); `weight` (O, I), PyTorch's `nn.Linear` layout; `bias` (O) or none;
/// `out` (B, T, O).
#[allow(clippy::too_many_arguments)]
pub fn linear_forward(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    b_n: usize,
    t_n: usize,
    i_n: usize,
    o_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let x = &inp[(b * t_n + t) * i_n..(b * t_n + t + 1) * i_n];
            for o in 0..o_n {
                let w = &weight[o * i_n..(o + 1) * i_n];
                let mut sum = 0.0f32;
                for i in 0..i_n {
                    sum += x[i] * w[i];
                }
                if let Some(bias) = bias {
                    sum += bias[o];
                }
                out[(b * t_n + t) * o_n + o] = sum;
            }
        }
    }
}

/// The three gradients of `out = inp @ weight^T + bias`:
/// `dinp[b, t, i] += sum_o dout[b, t, o] * weight[o, i]`,
/// `dweight[o, i] += sum_(b, t) dout[b, t, o] * inp[b, t, i]`,
/// `dbias[o] += sum_(b, t) dout[b, t, o]`.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    b_n: usize,
    t_n: usize,
    i_n: usize,
    o_n: usize,
) {
    for b in 0..b_n {
        for t in 0..t_n {
            let row = b * t_n + t;
            for o in 0..o_n {
                let d = dout[row * o_n + o];
                for i in 0..i_n {
                    dinp[row * i_n + i] += d * weight[o * i_n + i];
                    dweight[o * i_n + i] += d * inp[row * i_n + i];
                }
                if let Some(dbias) = dbias.as_deref_mut() {
                    dbias[o] += d;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Causal multi-head self-attention, one step at a time

const QUERY: usize = 0;
const KEY: usize = 1;
const VALUE: usize = 2;

/// Step 1, how much query t matches key u: `scores[b, h, t, u] = q_t . k_u`, for every pair (the
/// lecture's `q @ k.transpose(-2, -1)`; the mask comes later).
///
/// Shapes: `qkv` (B, T, 3C); `scores` (B, H, T, T).
pub fn attention_scores(scores: &mut [f32], qkv: &[f32], s: AttentionShape) {
    for b in 0..s.batch {
        for h in 0..s.n_head {
            for t in 0..s.seq_len {
                for u in 0..s.seq_len {
                    let mut dot = 0.0f32;
                    for i in 0..s.head_size() {
                        dot +=
                            qkv[s.qkv_index(b, t, QUERY, h, i)] * qkv[s.qkv_index(b, u, KEY, h, i)];
                    }
                    scores[s.score_index(b, h, t, u)] = dot;
                }
            }
        }
    }
}

/// `dq_t += sum_u dscores[t, u] k_u` and `dk_u += sum_t dscores[t, u] q_t`, into the q and k
/// parts of `dqkv` (B, T, 3C).
pub fn attention_scores_backward(
    dqkv: &mut [f32],
    dscores: &[f32],
    qkv: &[f32],
    s: AttentionShape,
) {
    for b in 0..s.batch {
        for h in 0..s.n_head {
            for t in 0..s.seq_len {
                for u in 0..s.seq_len {
                    let d = dscores[s.score_index(b, h, t, u)];
                    for i in 0..s.head_size() {
                        let (q, k) = (s.qkv_index(b, t, QUERY, h, i), s.qkv_index(b, u, KEY, h, i));
                        dqkv[q] += d * qkv[k];
                        dqkv[k] += d * qkv[q];
                    }
                }
            }
        }
    }
}

/// Step 2: `x *= factor` (the scores by 1/sqrt(hs), so that they start with unit variance and
/// the softmax soft). Its backward is the same multiplication of the gradient.
pub fn scale(x: &mut [f32], factor: f32) {
    for v in x.iter_mut() {
        *v *= factor;
    }
}

/// Step 3, the causal mask: a position may look at itself and earlier positions only, so
/// `scores[b, h, t, u] = -inf` for u > t (softmax turns these into weights of exactly 0).
pub fn causal_mask(scores: &mut [f32], s: AttentionShape) {
    for b in 0..s.batch {
        for h in 0..s.n_head {
            for t in 0..s.seq_len {
                for u in t + 1..s.seq_len {
                    scores[s.score_index(b, h, t, u)] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// A masked score is a constant, not a function of q and k: its gradient goes nowhere. (The
/// softmax backward already gives it 0, since its weight is 0; this says so explicitly.)
pub fn causal_mask_backward(dscores: &mut [f32], s: AttentionShape) {
    for b in 0..s.batch {
        for h in 0..s.n_head {
            for t in 0..s.seq_len {
                for u in t + 1..s.seq_len {
                    dscores[s.score_index(b, h, t, u)] = 0.0;
                }
            }
        }
    }
}

/// Step 4 (also the first half of cross-entropy): the softmax of each row of `len` numbers,
/// `out[j] = exp(x[j] - max) / sum_k exp(x[k] - max)`. Subtracting the row's maximum changes
/// nothing mathematically and keeps `exp` from overflowing; `exp(-inf) = 0`.
///
/// Shapes: `inp`, `out` (rows, len).
pub fn softmax_forward(out: &mut [f32], inp: &[f32], rows: usize, len: usize) {
    for r in 0..rows {
        let x = &inp[r * len..(r + 1) * len];
        let mut max = f32::NEG_INFINITY;
        for j in 0..len {
            max = max.max(x[j]);
        }
        let mut sum = 0.0f32;
        for j in 0..len {
            let e = (x[j] - max).exp();
            out[r * len + j] = e;
            sum += e;
        }
        for j in 0..len {
            out[r * len + j] /= sum;
        }
    }
}

/// With `a` the softmax output of a row: `dinp[j] += a[j] * (dout[j] - sum_k a[k] dout[k])`
/// (the Jacobian `da[j]/dx[k] = a[j] ([j == k] - a[k])` applied to `dout`).
pub fn softmax_backward(dinp: &mut [f32], dout: &[f32], out: &[f32], rows: usize, len: usize) {
    for r in 0..rows {
        let row = r * len..(r + 1) * len;
        let (a, da) = (&out[row.clone()], &dout[row.clone()]);
        let mut weighted = 0.0f32;
        for k in 0..len {
            weighted += a[k] * da[k];
        }
        for j in 0..len {
            dinp[r * len + j] += a[j] * (da[j] - weighted);
        }
    }
}

/// Step 6 (after dropout, step 5): each position's output is the average of the values it
/// attends to, weighted by its attention: `out[b, t, h*hs + i] = sum_u att[b, h, t, u] v_u[i]`.
/// The heads' outputs side by side make the C channels of `out`.
///
/// Shapes: `att` (B, H, T, T); `qkv` (B, T, 3C); `out` (B, T, C).
pub fn attention_weighted_sum(out: &mut [f32], att: &[f32], qkv: &[f32], s: AttentionShape) {
    for b in 0..s.batch {
        for t in 0..s.seq_len {
            for h in 0..s.n_head {
                for i in 0..s.head_size() {
                    let mut sum = 0.0f32;
                    for u in 0..s.seq_len {
                        sum += att[s.score_index(b, h, t, u)] * qkv[s.qkv_index(b, u, VALUE, h, i)];
                    }
                    out[(b * s.seq_len + t) * s.channels + h * s.head_size() + i] = sum;
                }
            }
        }
    }
}

/// `datt[b, h, t, u] += dout_t . v_u` (head h's part of dout) and `dv_u += sum_t att[t, u] dout_t`
/// (into the v part of `dqkv`).
pub fn attention_weighted_sum_backward(
    datt: &mut [f32],
    dqkv: &mut [f32],
    dout: &[f32],
    att: &[f32],
    qkv: &[f32],
    s: AttentionShape,
) {
    for b in 0..s.batch {
        for t in 0..s.seq_len {
            for h in 0..s.n_head {
                for i in 0..s.head_size() {
                    let d = dout[(b * s.seq_len + t) * s.channels + h * s.head_size() + i];
                    for u in 0..s.seq_len {
                        let (a, v) = (s.score_index(b, h, t, u), s.qkv_index(b, u, VALUE, h, i));
                        datt[a] += d * qkv[v];
                        dqkv[v] += d * att[a];
                    }
                }
            }
        }
    }
}

/// QK-norm: RMSNorm of each head's query (with gain `q_weight`, hs numbers shared by the heads)
/// and of each head's key (`k_weight`), before the scores; the values are copied unchanged.
/// Writes `out` (B, T, 3C); returns the `rstd` of every (b, t, part, head), (B, T, 2H).
pub fn qk_norm_forward(
    out: &mut [f32],
    qkv: &[f32],
    q_weight: &[f32],
    k_weight: &[f32],
    s: AttentionShape,
) -> Vec<f32> {
    let hs = s.head_size();
    let mut rstd = vec![0.0; s.batch * s.seq_len * 2 * s.n_head];
    out.copy_from_slice(qkv);
    for b in 0..s.batch {
        for t in 0..s.seq_len {
            for part in [QUERY, KEY] {
                let weight = if part == QUERY { q_weight } else { k_weight };
                for h in 0..s.n_head {
                    let start = s.qkv_index(b, t, part, h, 0);
                    let x = &qkv[start..start + hs];
                    let rs = rms_row(&mut out[start..start + hs], x, weight);
                    rstd[(b * s.seq_len + t) * 2 * s.n_head + part * s.n_head + h] = rs;
                }
            }
        }
    }
    rstd
}

/// The backward pass of [`qk_norm_forward`]: adds into `dqkv` the gradient of its input (the
/// values' gradient passes through) and into the two gains'.
#[allow(clippy::too_many_arguments)]
pub fn qk_norm_backward(
    dqkv: &mut [f32],
    dq_weight: &mut [f32],
    dk_weight: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    q_weight: &[f32],
    k_weight: &[f32],
    rstd: &[f32],
    s: AttentionShape,
) {
    let hs = s.head_size();
    for b in 0..s.batch {
        for t in 0..s.seq_len {
            for part in [QUERY, KEY] {
                let (weight, dweight) = match part {
                    QUERY => (q_weight, &mut *dq_weight),
                    _ => (k_weight, &mut *dk_weight),
                };
                for h in 0..s.n_head {
                    let start = s.qkv_index(b, t, part, h, 0);
                    let rs = rstd[(b * s.seq_len + t) * 2 * s.n_head + part * s.n_head + h];
                    rms_row_backward(
                        &mut dqkv[start..start + hs],
                        dweight,
                        &dout[start..start + hs],
                        &qkv[start..start + hs],
                        weight,
                        rs,
                    );
                }
            }
            for h in 0..s.n_head {
                for i in 0..hs {
                    let v = s.qkv_index(b, t, VALUE, h, i);
                    dqkv[v] += dout[v];
                }
            }
        }
    }
}

/// RoPE's angle for pair i (channels 2i, 2i+1) of a head of size hs at `position`:
/// `position * 10000^(-2i/hs)`, as (cos, sin), computed in f64 and rounded once.
pub fn rope_angle(position: usize, i: usize, hs: usize) -> (f32, f32) {
    let theta = crate::config::ROPE_BASE.powf(-((2 * i) as f64) / hs as f64);
    let angle = position as f64 * theta;
    (angle.cos() as f32, angle.sin() as f32)
}

/// Rotary position embedding: every head's query and key at position t (`first_position + t`)
/// have each pair (x0, x1) = (x[2i], x[2i+1]) turned by its angle a:
/// `(x0 cos a - x1 sin a, x0 sin a + x1 cos a)`. The values are copied unchanged. A query turned
/// by p and a key turned by u have the dot product of the unturned pair turned by p - u: scores
/// depend on relative position only.
///
/// Shapes: `qkv`, `out` (B, T, 3C).
pub fn rope_forward(out: &mut [f32], qkv: &[f32], first_position: usize, s: AttentionShape) {
    rope_turn(out, qkv, first_position, s, 1.0);
}

/// A rotation's transpose is the rotation back: `dqkv += turn(dout, -a)` on the queries and
/// keys; the values' gradient passes.
pub fn rope_backward(dqkv: &mut [f32], dout: &[f32], first_position: usize, s: AttentionShape) {
    let mut back = vec![0.0; dout.len()];
    rope_turn(&mut back, dout, first_position, s, -1.0);
    for i in 0..dqkv.len() {
        dqkv[i] += back[i];
    }
}

/// `out = inp` with queries and keys turned by `direction` (1 or -1) times their angles.
fn rope_turn(
    out: &mut [f32],
    inp: &[f32],
    first_position: usize,
    s: AttentionShape,
    direction: f32,
) {
    let hs = s.head_size();
    out.copy_from_slice(inp);
    for b in 0..s.batch {
        for t in 0..s.seq_len {
            for part in [QUERY, KEY] {
                for h in 0..s.n_head {
                    for i in 0..hs / 2 {
                        let (cos, sin) = rope_angle(first_position + t, i, hs);
                        let sin = direction * sin;
                        let (j0, j1) = (
                            s.qkv_index(b, t, part, h, 2 * i),
                            s.qkv_index(b, t, part, h, 2 * i + 1),
                        );
                        let (x0, x1) = (inp[j0], inp[j1]);
                        out[j0] = x0 * cos - x1 * sin;
                        out[j1] = x0 * sin + x1 * cos;
                    }
                }
            }
        }
    }
}

/// What the attention forward pass keeps for its backward pass.
#[derive(Debug, Clone)]
pub struct AttentionCache {
    /// The softmax weights, (B, H, T, T), before dropout.
    pub att: Vec<f32>,
    /// The weights the values were summed with: `att` after dropout.
    pub dropped: Vec<f32>,
    /// The dropout mask of the weights (None without dropout).
    pub mask: Option<Vec<bool>>,
}

/// Causal self-attention from `qkv` (B, T, 3C) into `out` (B, T, C), the steps above in order:
/// scores, scale, causal mask, softmax, dropout on the weights (with `dropout` = (p, masks)),
/// weighted sum of the values.
pub fn attention_forward(
    out: &mut [f32],
    qkv: &[f32],
    scale_factor: f32,
    dropout: Option<(f32, SiteMasks)>,
    s: AttentionShape,
) -> AttentionCache {
    attention_forward_masked(out, qkv, scale_factor, dropout, None, s)
}

/// Step 3b, for generation past `block_size` with rotary positions: query t may also not look
/// further back than `window` positions, `scores[b, h, t, u] = -inf` for u <= t - window. This is
/// what a cache of the last `window` keys computes (the fast engine's ring).
pub fn window_mask(scores: &mut [f32], s: AttentionShape, window: usize) {
    for b in 0..s.batch {
        for h in 0..s.n_head {
            for t in window..s.seq_len {
                for u in 0..=t - window {
                    scores[s.score_index(b, h, t, u)] = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// [`attention_forward`] in evaluation mode with each query limited to the last `window`
/// positions ([`window_mask`]).
pub fn attention_forward_sliding(
    out: &mut [f32],
    qkv: &[f32],
    scale_factor: f32,
    window: usize,
    s: AttentionShape,
) -> AttentionCache {
    attention_forward_masked(out, qkv, scale_factor, None, Some(window), s)
}

fn attention_forward_masked(
    out: &mut [f32],
    qkv: &[f32],
    scale_factor: f32,
    dropout: Option<(f32, SiteMasks)>,
    window: Option<usize>,
    s: AttentionShape,
) -> AttentionCache {
    let squares = s.batch * s.n_head * s.seq_len * s.seq_len;
    let mut scores = vec![0.0; squares];
    attention_scores(&mut scores, qkv, s);
    scale(&mut scores, scale_factor);
    causal_mask(&mut scores, s);
    if let Some(window) = window {
        window_mask(&mut scores, s, window);
    }
    let mut att = vec![0.0; squares];
    softmax_forward(&mut att, &scores, s.batch * s.n_head * s.seq_len, s.seq_len);
    let (dropped, mask) = match dropout {
        Some((p, masks)) => {
            let (mut dropped, mut mask) = (vec![0.0; squares], vec![false; squares]);
            // Row b's mask covers its (H, T, T) weights.
            let row_len = s.n_head * s.seq_len * s.seq_len;
            dropout_forward(&mut dropped, &mut mask, &att, p, masks, s.batch, row_len);
            (dropped, Some(mask))
        }
        None => (att.clone(), None),
    };
    attention_weighted_sum(out, &dropped, qkv, s);
    AttentionCache { att, dropped, mask }
}

/// The backward pass of [`attention_forward`], its steps in reverse: adds the gradient of `qkv`
/// into `dqkv` (B, T, 3C) from `dout` (B, T, C). `p` is the dropout probability.
pub fn attention_backward(
    dqkv: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    cache: &AttentionCache,
    scale_factor: f32,
    p: f32,
    s: AttentionShape,
) {
    let squares = s.batch * s.n_head * s.seq_len * s.seq_len;
    let mut d_dropped = vec![0.0; squares];
    attention_weighted_sum_backward(&mut d_dropped, dqkv, dout, &cache.dropped, qkv, s);
    let d_att = match &cache.mask {
        Some(mask) => {
            let mut d_att = vec![0.0; squares];
            dropout_backward(&mut d_att, &d_dropped, mask, p);
            d_att
        }
        None => d_dropped,
    };
    let mut d_scores = vec![0.0; squares];
    softmax_backward(
        &mut d_scores,
        &d_att,
        &cache.att,
        s.batch * s.n_head * s.seq_len,
        s.seq_len,
    );
    causal_mask_backward(&mut d_scores, s);
    scale(&mut d_scores, scale_factor);
    attention_scores_backward(dqkv, &d_scores, qkv, s);
}

// ---------------------------------------------------------------------------------------------
// Activations

/// The constant sqrt(2 / pi) of GELU's tanh approximation.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// ReLU, `out = max(0, x)`; ReLU squared, `out = max(0, x)^2`; or the tanh approximation of
/// GELU (GPT-2's, PyTorch's `gelu(x, approximate="tanh")`): `out = x/2 * (1 + tanh(u))`,
/// `u = sqrt(2/pi) (x + 0.044715 x^3)`. Elementwise, any shape.
pub fn activation_forward(kind: Activation, out: &mut [f32], inp: &[f32]) {
    for (o, &x) in out.iter_mut().zip(inp) {
        *o = match kind {
            Activation::Relu => x.max(0.0),
            Activation::Relu2 => x.max(0.0) * x.max(0.0),
            Activation::Gelu => {
                let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
                0.5 * x * (1.0 + u.tanh())
            }
        };
    }
}

/// `dinp += f'(x) * dout`, with ReLU's `f'(x) = [x > 0]`, ReLU squared's `2 max(0, x)` and GELU's
/// `f'(x) = (1 + tanh u)/2 + x/2 * (1 - tanh(u)^2) * du/dx`, `du/dx = sqrt(2/pi) (1 + 3 * 0.044715 x^2)`.
pub fn activation_backward(kind: Activation, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    for ((d, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
        let slope = match kind {
            Activation::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Activation::Relu2 => 2.0 * x.max(0.0),
            Activation::Gelu => {
                let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
                let th = u.tanh();
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
                0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du
            }
        };
        *d += slope * g;
    }
}

// ---------------------------------------------------------------------------------------------
// Residual connection

/// `out = a + b`, elementwise: a block adds its branch to its input instead of replacing it.
pub fn residual_forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x + y;
    }
}

/// The sum passes its gradient unchanged to both terms: `da += dout`, `db += dout`. This is why
/// deep residual stacks train: the gradient reaches the first layers undiminished.
pub fn residual_backward(da: &mut [f32], db: &mut [f32], dout: &[f32]) {
    for ((x, y), &d) in da.iter_mut().zip(db.iter_mut()).zip(dout) {
        *x += d;
        *y += d;
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout

/// Inverted dropout: element i of batch row b is kept when `masks.row(b).keep(i, p)` (probability
/// 1 - p; the mask is defined in [`crate::rng::DropoutSeed`], the same for both engines) and then
/// scaled by `1 / (1 - p)`, else zeroed, so that its expected value is unchanged and evaluation
/// needs no correction.
///
/// Shapes: `inp`, `out`, `mask` (B, L): B rows of `row_len` elements.
#[allow(clippy::too_many_arguments)]
pub fn dropout_forward(
    out: &mut [f32],
    mask: &mut [bool],
    inp: &[f32],
    p: f32,
    masks: SiteMasks,
    b_n: usize,
    row_len: usize,
) {
    let scale = 1.0 / (1.0 - p);
    for b in 0..b_n {
        let row = masks.row(b);
        for i in 0..row_len {
            let keep = row.keep(i, p);
            mask[b * row_len + i] = keep;
            out[b * row_len + i] = if keep {
                inp[b * row_len + i] * scale
            } else {
                0.0
            };
        }
    }
}

/// `dinp += dout * mask / (1 - p)`: the kept elements pass their gradient, scaled the same way.
pub fn dropout_backward(dinp: &mut [f32], dout: &[f32], mask: &[bool], p: f32) {
    let scale = 1.0 / (1.0 - p);
    for ((d, &g), &keep) in dinp.iter_mut().zip(dout).zip(mask) {
        if keep {
            *d += g * scale;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// The loss of predicting `targets` from `logits`: `probs = softmax(logits)` per position, and
/// `losses[b, t] = -ln probs[b, t, target]`, computed as `ln(sum_v exp(z_v - max)) + max - z_target`
/// (the same number, without the logarithm of a probability that may round to 0). Returns the
/// mean loss over the B*T positions.
///
/// Shapes: `logits`, `probs` (B, T, V); `targets`, `losses` (B, T).
pub fn cross_entropy_forward(
    probs: &mut [f32],
    losses: &mut [f32],
    logits: &[f32],
    targets: &[TokenId],
    rows: usize,
    v_n: usize,
) -> f32 {
    softmax_forward(probs, logits, rows, v_n);
    let mut total = 0.0f64;
    for r in 0..rows {
        let z = &logits[r * v_n..(r + 1) * v_n];
        let mut max = f32::NEG_INFINITY;
        for v in 0..v_n {
            max = max.max(z[v]);
        }
        let mut sum = 0.0f32;
        for v in 0..v_n {
            sum += (z[v] - max).exp();
        }
        losses[r] = sum.ln() + max - z[targets[r] as usize];
        // In f64, so the mean of ~10^5 terms keeps its digits.
        total += losses[r] as f64;
    }
    (total / rows as f64) as f32
}

/// The gradient of `loss_scale` times the mean loss with respect to the logits:
/// `dlogits[n, v] += loss_scale * (probs[n, v] - [v == target_n]) / N`, softmax and negative
/// log-likelihood together.
pub fn cross_entropy_backward(
    dlogits: &mut [f32],
    probs: &[f32],
    targets: &[TokenId],
    rows: usize,
    v_n: usize,
    loss_scale: f32,
) {
    let scale = loss_scale / rows as f32;
    for r in 0..rows {
        for v in 0..v_n {
            let onehot = if v == targets[r] as usize { 1.0 } else { 0.0 };
            dlogits[r * v_n + v] += (probs[r * v_n + v] - onehot) * scale;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Each layer's backward pass against finite differences of its forward pass.
    use super::*;
    use crate::kernels::gradcheck::{check, random_vec, weighted_sum};
    use crate::rng::{DropoutSeed, DropoutSite, Rng};

    #[test]
    fn embedding_gradient_matches_finite_differences() {
        let mut rng = Rng::new(1);
        let (b, t, v, c) = (2, 4, 5, 6);
        let tokens: Vec<TokenId> = (0..b * t).map(|_| rng.below(v) as TokenId).collect();
        let (wte, wpe) = (
            random_vec(v * c, &mut rng, 1.0),
            random_vec(t * c, &mut rng, 1.0),
        );
        let w = random_vec(b * t * c, &mut rng, 1.0);
        let (mut dwte, mut dwpe) = (vec![0.0; v * c], vec![0.0; t * c]);
        embedding_backward(&mut dwte, Some(&mut dwpe), &w, &tokens, b, t, c);
        let f = |wte: &[f32], wpe: &[f32]| {
            let mut out = vec![0.0; b * t * c];
            embedding_forward(&mut out, &tokens, wte, Some(wpe), b, t, c);
            weighted_sum(&out, &w)
        };
        check("dwte", &wte, &dwte, |x| f(x, &wpe), 1e-3);
        check("dwpe", &wpe, &dwpe, |x| f(&wte, x), 1e-3);
    }

    #[test]
    fn layernorm_gradient_matches_finite_differences() {
        let mut rng = Rng::new(2);
        let (b, t, c) = (2, 3, 10);
        let x = random_vec(b * t * c, &mut rng, 1.0);
        let wt: Vec<f32> = random_vec(c, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let bs = random_vec(c, &mut rng, 0.5);
        let w = random_vec(b * t * c, &mut rng, 1.0);
        let run = |x: &[f32], wt: &[f32], bs: &[f32]| {
            let (mut y, mut m, mut r) = (vec![0.0; b * t * c], vec![0.0; b * t], vec![0.0; b * t]);
            layernorm_forward(&mut y, &mut m, &mut r, x, wt, Some(bs), b, t, c);
            (y, m, r)
        };
        let (_, m, r) = run(&x, &wt, &bs);
        let (mut dx, mut dw, mut db) = (vec![0.0; b * t * c], vec![0.0; c], vec![0.0; c]);
        layernorm_backward(
            &mut dx,
            &mut dw,
            Some(&mut db),
            &w,
            &x,
            &wt,
            &m,
            &r,
            b,
            t,
            c,
        );
        let f = |x: &[f32], wt: &[f32], bs: &[f32]| weighted_sum(&run(x, wt, bs).0, &w);
        check("dinp", &x, &dx, |v| f(v, &wt, &bs), 2e-3);
        check("dweight", &wt, &dw, |v| f(&x, v, &bs), 2e-3);
        check("dbias", &bs, &db, |v| f(&x, &wt, v), 2e-3);
    }

    #[test]
    fn rmsnorm_qk_norm_and_rope_gradients_match_finite_differences() {
        let mut rng = Rng::new(12);
        let (b, t, c) = (2, 3, 10);
        let x = random_vec(b * t * c, &mut rng, 1.0);
        let wt: Vec<f32> = random_vec(c, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let w = random_vec(b * t * c, &mut rng, 1.0);
        let run = |x: &[f32], wt: &[f32]| {
            let (mut y, mut r) = (vec![0.0; b * t * c], vec![0.0; b * t]);
            rmsnorm_forward(&mut y, &mut r, x, wt, b, t, c);
            (y, r)
        };
        let (_, r) = run(&x, &wt);
        let (mut dx, mut dw) = (vec![0.0; b * t * c], vec![0.0; c]);
        rmsnorm_backward(&mut dx, &mut dw, &w, &x, &wt, &r, b, t, c);
        check(
            "rms dinp",
            &x,
            &dx,
            |v| weighted_sum(&run(v, &wt).0, &w),
            2e-3,
        );
        check(
            "rms dweight",
            &wt,
            &dw,
            |v| weighted_sum(&run(&x, v).0, &w),
            2e-3,
        );

        let s = AttentionShape {
            batch: 2,
            seq_len: 4,
            channels: 12,
            n_head: 3,
        };
        let hs = s.head_size();
        let qkv = random_vec(s.batch * s.seq_len * 3 * s.channels, &mut rng, 1.0);
        let w = random_vec(qkv.len(), &mut rng, 1.0);
        let qw: Vec<f32> = random_vec(hs, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let kw: Vec<f32> = random_vec(hs, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let qk = |qkv: &[f32], qw: &[f32], kw: &[f32]| {
            let mut out = vec![0.0; qkv.len()];
            let rstd = qk_norm_forward(&mut out, qkv, qw, kw, s);
            (out, rstd)
        };
        let (_, rstd) = qk(&qkv, &qw, &kw);
        let (mut d, mut dqw, mut dkw) = (vec![0.0; qkv.len()], vec![0.0; hs], vec![0.0; hs]);
        qk_norm_backward(&mut d, &mut dqw, &mut dkw, &w, &qkv, &qw, &kw, &rstd, s);
        let f = |q: &[f32], a: &[f32], b: &[f32]| weighted_sum(&qk(q, a, b).0, &w);
        check("qk dqkv", &qkv, &d, |v| f(v, &qw, &kw), 2e-3);
        check("qk dq_weight", &qw, &dqw, |v| f(&qkv, v, &kw), 2e-3);
        check("qk dk_weight", &kw, &dkw, |v| f(&qkv, &qw, v), 2e-3);

        for first in [0, 9] {
            let turn = |qkv: &[f32]| {
                let mut out = vec![0.0; qkv.len()];
                rope_forward(&mut out, qkv, first, s);
                out
            };
            let mut d = vec![0.0; qkv.len()];
            rope_backward(&mut d, &w, first, s);
            check("rope dqkv", &qkv, &d, |v| weighted_sum(&turn(v), &w), 1e-3);
        }
    }

    #[test]
    fn linear_gradient_matches_finite_differences() {
        let mut rng = Rng::new(3);
        let (b, t, i_n, o_n) = (2, 3, 7, 5);
        let x = random_vec(b * t * i_n, &mut rng, 1.0);
        let wt = random_vec(o_n * i_n, &mut rng, 0.5);
        let bs = random_vec(o_n, &mut rng, 0.5);
        let w = random_vec(b * t * o_n, &mut rng, 1.0);
        let f = |x: &[f32], wt: &[f32], bs: &[f32]| {
            let mut out = vec![0.0; b * t * o_n];
            linear_forward(&mut out, x, wt, Some(bs), b, t, i_n, o_n);
            weighted_sum(&out, &w)
        };
        let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; wt.len()], vec![0.0; o_n]);
        linear_backward(&mut dx, &mut dw, Some(&mut db), &w, &x, &wt, b, t, i_n, o_n);
        check("dinp", &x, &dx, |v| f(v, &wt, &bs), 1e-3);
        check("dweight", &wt, &dw, |v| f(&x, v, &bs), 1e-3);
        check("dbias", &bs, &db, |v| f(&x, &wt, v), 1e-3);
    }

    #[test]
    fn attention_gradient_matches_finite_differences() {
        let mut rng = Rng::new(4);
        let s = AttentionShape {
            batch: 2,
            seq_len: 5,
            channels: 6,
            n_head: 2,
        };
        let qkv = random_vec(s.batch * s.seq_len * 3 * s.channels, &mut rng, 1.0);
        let w = random_vec(s.batch * s.seq_len * s.channels, &mut rng, 1.0);
        let masks = DropoutSeed::new(5).site(0, DropoutSite::AttentionWeights);
        for dropout in [None, Some((0.3, masks))] {
            let run = |qkv: &[f32]| {
                let mut out = vec![0.0; w.len()];
                let cache = attention_forward(&mut out, qkv, 0.4, dropout, s);
                (out, cache)
            };
            let (_, cache) = run(&qkv);
            // Each row of weights sums to 1 and is 0 above the diagonal.
            for (row, a) in cache.att.chunks(s.seq_len).enumerate() {
                let t = row % s.seq_len;
                assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-6);
                assert!(a[t + 1..].iter().all(|&x| x == 0.0));
            }
            let mut dqkv = vec![0.0; qkv.len()];
            attention_backward(&mut dqkv, &w, &qkv, &cache, 0.4, 0.3, s);
            let name = format!("dqkv, dropout {:?}", dropout.map(|d| d.0));
            check(&name, &qkv, &dqkv, |x| weighted_sum(&run(x).0, &w), 2e-3);
        }
    }

    #[test]
    fn activation_gradients_match_finite_differences() {
        let mut rng = Rng::new(5);
        let n = 40;
        // Away from ReLU's kink at 0.
        let x: Vec<f32> = random_vec(n, &mut rng, 2.0)
            .into_iter()
            .map(|v| if v.abs() < 0.1 { v + 0.3 } else { v })
            .collect();
        let w = random_vec(n, &mut rng, 1.0);
        for kind in [Activation::Relu, Activation::Gelu, Activation::Relu2] {
            let mut dx = vec![0.0; n];
            activation_backward(kind, &mut dx, &w, &x);
            let f = |x: &[f32]| {
                let mut y = vec![0.0; n];
                activation_forward(kind, &mut y, x);
                weighted_sum(&y, &w)
            };
            check(&format!("{kind:?}"), &x, &dx, f, 1e-3);
        }
        // torch.nn.functional.gelu(torch.tensor([1., -1.]), approximate="tanh")
        let mut y = [0.0; 2];
        activation_forward(Activation::Gelu, &mut y, &[1.0, -1.0]);
        assert!((y[0] - 0.841_192).abs() < 1e-5 && (y[1] + 0.158_808).abs() < 1e-5);
    }

    #[test]
    fn dropout_and_residual_gradients_match_finite_differences() {
        let mut rng = Rng::new(6);
        let (b, len) = (3, 50);
        let x = random_vec(b * len, &mut rng, 1.0);
        let w = random_vec(b * len, &mut rng, 1.0);
        let masks = DropoutSeed::new(9).site(1, DropoutSite::AttentionOutput);
        let run = |x: &[f32]| {
            let (mut y, mut m) = (vec![0.0; x.len()], vec![false; x.len()]);
            dropout_forward(&mut y, &mut m, x, 0.4, masks, b, len);
            (y, m)
        };
        let (y, mask) = run(&x);
        let kept = mask.iter().filter(|&&k| k).count();
        assert!(kept > 0 && kept < mask.len());
        assert!(y
            .iter()
            .zip(&x)
            .all(|(&y, &x)| y == 0.0 || (y - x / 0.6).abs() < 1e-5));
        let mut dx = vec![0.0; x.len()];
        dropout_backward(&mut dx, &w, &mask, 0.4);
        check("dropout", &x, &dx, |x| weighted_sum(&run(x).0, &w), 1e-3);
        let (mut da, mut db) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        residual_backward(&mut da, &mut db, &w);
        let sum = |a: &[f32], b: &[f32]| {
            let mut out = vec![0.0; a.len()];
            residual_forward(&mut out, a, b);
            weighted_sum(&out, &w)
        };
        check("da", &x, &da, |v| sum(v, &y), 1e-3);
        check("db", &y, &db, |v| sum(&x, v), 1e-3);
    }

    #[test]
    fn cross_entropy_gradient_matches_finite_differences() {
        let mut rng = Rng::new(7);
        let (n, v) = (6, 9);
        let z = random_vec(n * v, &mut rng, 2.0);
        let y: Vec<TokenId> = (0..n).map(|_| rng.below(v) as TokenId).collect();
        let loss = |z: &[f32]| {
            let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
            cross_entropy_forward(&mut p, &mut l, z, &y, n, v) as f64
        };
        let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
        cross_entropy_forward(&mut p, &mut l, &z, &y, n, v);
        let mut dz = vec![0.0; n * v];
        cross_entropy_backward(&mut dz, &p, &y, n, v, 1.0);
        check("dlogits", &z, &dz, loss, 2e-3);
        // Uniform logits: ln V.
        let uniform = vec![0.0; v];
        let (mut p, mut l) = (vec![0.0; v], vec![0.0; 1]);
        let loss = cross_entropy_forward(&mut p, &mut l, &uniform, &[3], 1, v);
        assert!((loss - (v as f32).ln()).abs() < 1e-6);
    }
}
