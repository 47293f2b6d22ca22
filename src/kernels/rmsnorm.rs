//! RMSNorm over the last dimension, and QK-norm (RMSNorm of every head's queries and keys).
//!
//! For each row x of length C: `rstd = 1 / sqrt(mean(x^2) + eps)`, `xhat = x * rstd`,
//! `y = xhat * weight`: LayerNorm without the mean subtraction and without a shift (Zhang and
//! Sennrich 2019; Llama, the modded-nanogpt speedrun).
//!
//! Shapes: `inp`, `out` (N, C) with N = B*T rows; `weight` (C); `rstd` (N), cached for the
//! backward pass.
//!
//! Backward, with `g = dy * weight`: `dweight += sum_rows dy * xhat`,
//! `dx += rstd * (g - xhat * mean(g * xhat))` (one mean fewer than LayerNorm's: there is no
//! shift of x for the norm to cancel).
//!
//! QK-norm applies the same map to each head's query and key (hs numbers each) inside the
//! (N, 3C) q/k/v rows, in place, with a gain of hs shared by the heads (`q_norm.weight` for the
//! queries, `k_norm.weight` for the keys); the values pass untouched. Its forward keeps the raw
//! queries and keys, (N, 2C), and the 2H `rstd` of each row.

use super::simd_fn;
use crate::layout::NORM_EPS;
use rayon::prelude::*;

simd_fn! {
    /// One row: `y = x * rstd * weight`; returns rstd.
    fn forward_row(y: &mut [f32], x: &[f32], weight: &[f32]) -> f32 {
        let rs = 1.0 / (mean_square(x) + NORM_EPS).sqrt();
        normalize_row(y, x, weight, rs);
        rs
    }
}

/// `mean(x^2)` with eight independent accumulators.
#[inline(always)]
fn mean_square(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let mut sum: f32 = chunks.remainder().iter().map(|&v| v * v).sum();
    for ch in chunks {
        for j in 0..8 {
            acc[j] += ch[j] * ch[j];
        }
    }
    sum += acc.iter().sum::<f32>();
    sum / x.len() as f32
}

simd_fn! {
    fn normalize_row(y: &mut [f32], x: &[f32], weight: &[f32], rs: f32) {
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
            *y = x * rs * w;
        }
    }
}

simd_fn! {
    /// One row of the input gradient, `dx += rstd * (g - xhat * mean(g * xhat))`, and with `dweight`
    /// the row's share of the gain's gradient, `dweight += dy * xhat`.
    fn backward_row(dx: &mut [f32], dy: &[f32], x: &[f32], weight: &[f32], rs: f32, dweight: Option<&mut [f32]>) {
        let c = x.len() as f32;
        let mut acc = [0.0f32; 8];
        let n8 = x.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            for j in 0..8 {
                acc[j] += dy[i + j] * weight[i + j] * x[i + j] * rs;
            }
        }
        let mut sum_gx = acc.iter().sum::<f32>();
        for i in n8..x.len() {
            sum_gx += dy[i] * weight[i] * x[i] * rs;
        }
        let mean_gx = sum_gx / c;
        if let Some(dweight) = dweight {
            for ((dw, &dy), &x) in dweight.iter_mut().zip(dy).zip(x) {
                *dw += dy * x * rs;
            }
        }
        for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
            *dx += rs * (dy * w - x * rs * mean_gx);
        }
    }
}

/// `out = inp * rstd * weight` per row; `rstd` (N) is kept for the backward pass.
pub fn forward(out: &mut [f32], rstd: &mut [f32], inp: &[f32], weight: &[f32], channels: usize) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, false);
    let c = channels;
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(rstd.par_iter_mut())
        .with_min_len(super::min_items(6 * c))
        .for_each(|((y, x), r)| *r = forward_row(y, x, weight));
}

/// The forward output again from the kept `rstd`, bit for bit (the backward pass recomputes it
/// rather than keeping it).
pub fn normalize(out: &mut [f32], inp: &[f32], weight: &[f32], rstd: &[f32], channels: usize) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, true);
    let c = channels;
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(rstd.par_iter())
        .with_min_len(super::min_items(3 * c))
        .for_each(|((y, x), &rs)| normalize_row(y, x, weight, rs));
}

/// Columns per parallel task when summing the gain's gradient over rows.
const COLUMN_BLOCK: usize = 64;

simd_fn! {
    /// The gain's gradient for columns `c0..c0 + dw.len()`, summed over all rows.
    fn weight_grad_columns(dw: &mut [f32], dout: &[f32], inp: &[f32], rstd: &[f32], c: usize, c0: usize) {
        let width = dw.len();
        for (row, &rs) in rstd.iter().enumerate() {
            let dy = &dout[row * c + c0..row * c + c0 + width];
            let x = &inp[row * c + c0..row * c + c0 + width];
            for ((dw, &dy), &x) in dw.iter_mut().zip(dy).zip(x) {
                *dw += dy * x * rs;
            }
        }
    }
}

/// `dinp += ...`, `dweight += ...` (see the module documentation).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    rstd: &[f32],
    channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, true);
    let c = channels;
    if super::is_sequential() {
        for (((dx, dy), x), &rs) in dinp
            .chunks_exact_mut(c)
            .zip(dout.chunks_exact(c))
            .zip(inp.chunks_exact(c))
            .zip(rstd)
        {
            backward_row(dx, dy, x, weight, rs, Some(&mut *dweight));
        }
        return;
    }
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(rstd.par_iter())
        .with_min_len(super::min_items(8 * c))
        .for_each(|((dx, (dy, x)), &rs)| backward_row(dx, dy, x, weight, rs, None));
    let rows = rstd.len();
    dweight
        .par_chunks_mut(COLUMN_BLOCK)
        .enumerate()
        .with_min_len(super::min_items(3 * rows * COLUMN_BLOCK))
        .for_each(|(blk, dw)| weight_grad_columns(dw, dout, inp, rstd, c, blk * COLUMN_BLOCK));
}

/// QK-norm's forward, in place on the q and k parts of `qkv` (N, 3C): each head's query gets
/// `q * rstd * q_weight`, each key `k * rstd * k_weight`. The raw queries and keys are copied to
/// `raw` (N, 2C) when given (training: the backward pass reads them), and `rstd` (N, 2H) gets
/// the row's H query and H key factors.
pub fn qk_forward(
    qkv: &mut [f32],
    raw: Option<&mut [f32]>,
    rstd: &mut [f32],
    q_weight: &[f32],
    k_weight: &[f32],
    channels: usize,
    n_head: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, false);
    let (c, h) = (channels, n_head);
    let hs = c / h;
    let rows = rstd.len() / (2 * h);
    let qkv = &mut qkv[..rows * 3 * c];
    let one = |row: &mut [f32], raw: Option<&mut [f32]>, rs: &mut [f32]| {
        if let Some(raw) = raw {
            raw.copy_from_slice(&row[..2 * c]);
        }
        for (j, r) in rs.iter_mut().enumerate() {
            let w = if j < h { q_weight } else { k_weight };
            let x = &mut row[j * hs..(j + 1) * hs];
            *r = 1.0 / (mean_square(x) + NORM_EPS).sqrt();
            for (x, &w) in x.iter_mut().zip(w) {
                *x *= *r * w;
            }
        }
    };
    let min_len = super::min_items(6 * 2 * c);
    match raw {
        Some(raw) => qkv
            .par_chunks_mut(3 * c)
            .zip(raw[..rows * 2 * c].par_chunks_mut(2 * c))
            .zip(rstd.par_chunks_mut(2 * h))
            .with_min_len(min_len)
            .for_each(|((row, raw), rs)| one(row, Some(raw), rs)),
        None => qkv
            .par_chunks_mut(3 * c)
            .zip(rstd.par_chunks_mut(2 * h))
            .with_min_len(min_len)
            .for_each(|(row, rs)| one(row, None, rs)),
    }
}

/// QK-norm's backward, in place on the q and k parts of `dqkv` (N, 3C): on entry the gradient of
/// the normalised queries and keys, on return that of the raw ones (the v part is untouched).
/// Adds the gains' gradients into `dq_weight` and `dk_weight` (hs each).
#[allow(clippy::too_many_arguments)]
pub fn qk_backward(
    dqkv: &mut [f32],
    dq_weight: &mut [f32],
    dk_weight: &mut [f32],
    raw: &[f32],
    rstd: &[f32],
    q_weight: &[f32],
    k_weight: &[f32],
    channels: usize,
    n_head: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, true);
    let (c, h) = (channels, n_head);
    let hs = c / h;
    let rows = rstd.len() / (2 * h);
    let dqkv = &mut dqkv[..rows * 3 * c];
    // The gains first, while dqkv still holds the gradient of the outputs: dw += dy * xhat,
    // summed over rows and heads (queries into dq_weight, keys into dk_weight).
    let gain = |dw: &mut [f32], part: usize| {
        for row in 0..rows {
            for head in 0..h {
                let j = part * h + head;
                let rs = rstd[row * 2 * h + j];
                let dy = &dqkv[row * 3 * c + j * hs..row * 3 * c + (j + 1) * hs];
                let x = &raw[row * 2 * c + j * hs..row * 2 * c + (j + 1) * hs];
                for ((dw, &dy), &x) in dw.iter_mut().zip(dy).zip(x) {
                    *dw += dy * x * rs;
                }
            }
        }
    };
    if rows * c >= super::GRAIN_FLOPS / 4 && !super::is_sequential() {
        rayon::join(|| gain(dq_weight, 0), || gain(dk_weight, 1));
    } else {
        gain(dq_weight, 0);
        gain(dk_weight, 1);
    }
    dqkv.par_chunks_mut(3 * c)
        .zip(raw[..rows * 2 * c].par_chunks(2 * c))
        .zip(rstd.par_chunks(2 * h))
        .with_min_len(super::min_items(8 * 2 * c))
        .for_each(|((row, raw), rs)| {
            for (j, &rs) in rs.iter().enumerate() {
                let w = if j < h { q_weight } else { k_weight };
                let d = &mut row[j * hs..(j + 1) * hs];
                let x = &raw[j * hs..(j + 1) * hs];
                // dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * w, written over dy.
                let mut sum_gx = 0.0f32;
                for ((&dy, &x), &w) in d.iter().zip(x).zip(w) {
                    sum_gx += dy * w * x * rs;
                }
                let mean_gx = sum_gx / hs as f32;
                for ((d, &x), &w) in d.iter_mut().zip(x).zip(w) {
                    *d = rs * (*d * w - x * rs * mean_gx);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::reference::layers as reference;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences_on_one_thread_and_several() {
        let mut rng = Rng::new(31);
        let (n, c) = (6, 80);
        let x: Vec<f32> = random_vec(n * c, &mut rng, 1.0)
            .iter()
            .map(|v| v + 0.3)
            .collect();
        let wt: Vec<f32> = random_vec(c, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let w = random_vec(n * c, &mut rng, 1.0);
        let f = |x: &[f32], wt: &[f32]| {
            let (mut y, mut r) = (vec![0.0; n * c], vec![0.0; n]);
            forward(&mut y, &mut r, x, wt, c);
            weighted_sum(&y, &w)
        };
        let (mut y, mut r) = (vec![0.0; n * c], vec![0.0; n]);
        forward(&mut y, &mut r, &x, &wt, c);
        let mut again = vec![0.0; n * c];
        normalize(&mut again, &x, &wt, &r, c);
        assert_eq!(y, again, "normalize reproduces the forward output");
        for sequential in [false, true] {
            let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
            let mut run = || backward(&mut dx, &mut dw, &w, &x, &wt, &r, c);
            match sequential {
                true => crate::kernels::sequentially(run),
                false => run(),
            }
            check("dx", &x, &dx, |v| f(v, &wt), 2e-3);
            check("dweight", &wt, &dw, |v| f(&x, v), 2e-3);
        }
        // Rows have unit root mean square before the gain.
        let (mut y, mut r) = (vec![0.0; n * c], vec![0.0; n]);
        forward(&mut y, &mut r, &x, &vec![1.0; c], c);
        for row in y.chunks(c) {
            let ms = row.iter().map(|v| v * v).sum::<f32>() / c as f32;
            assert!((ms - 1.0).abs() < 1e-3, "{ms}");
        }
    }

    /// QK-norm (queries and keys normalised per head, values untouched) against finite
    /// differences, for the q/k/v input and both gains.
    #[test]
    fn qk_norm_gradient_matches_finite_differences() {
        let mut rng = Rng::new(32);
        let (n, c, h) = (5, 24, 3);
        let hs = c / h;
        let qkv = random_vec(n * 3 * c, &mut rng, 1.0);
        let qw: Vec<f32> = random_vec(hs, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let kw: Vec<f32> = random_vec(hs, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let w = random_vec(n * 3 * c, &mut rng, 1.0);
        let run = |qkv: &[f32], qw: &[f32], kw: &[f32]| {
            let mut out = qkv.to_vec();
            let (mut raw, mut rs) = (vec![0.0; n * 2 * c], vec![0.0; n * 2 * h]);
            qk_forward(&mut out, Some(&mut raw), &mut rs, qw, kw, c, h);
            (out, raw, rs)
        };
        let (out, raw, rs) = run(&qkv, &qw, &kw);
        assert_eq!(&raw[..2 * c], &qkv[..2 * c], "raw keeps the inputs");
        assert_eq!(&out[2 * c..3 * c], &qkv[2 * c..3 * c], "values pass");
        let mut d = w.clone();
        let (mut dqw, mut dkw) = (vec![0.0; hs], vec![0.0; hs]);
        qk_backward(&mut d, &mut dqw, &mut dkw, &raw, &rs, &qw, &kw, c, h);
        // The values' gradient is the output gradient, untouched.
        for row in 0..n {
            let v = row * 3 * c + 2 * c..(row + 1) * 3 * c;
            assert_eq!(&d[v.clone()], &w[v]);
        }
        let f = |q: &[f32], a: &[f32], b: &[f32]| weighted_sum(&run(q, a, b).0, &w);
        check("dqkv", &qkv, &d, |v| f(v, &qw, &kw), 2e-3);
        check("dq_weight", &qw, &dqw, |v| f(&qkv, v, &kw), 2e-3);
        check("dk_weight", &kw, &dkw, |v| f(&qkv, &qw, v), 2e-3);
    }

    #[test]
    fn matches_the_reference_rmsnorm_and_qk_norm() {
        let mut rng = Rng::new(33);
        let (b, t, c) = (2, 5, 37);
        let n = b * t;
        let x = random_vec(n * c, &mut rng, 2.0);
        let w = random_vec(c, &mut rng, 1.0);
        let dy = random_vec(n * c, &mut rng, 1.0);
        let (mut y, mut r) = (vec![0.0; n * c], vec![0.0; n]);
        forward(&mut y, &mut r, &x, &w, c);
        let (mut want_y, mut want_r) = (vec![0.0; n * c], vec![0.0; n]);
        reference::rmsnorm_forward(&mut want_y, &mut want_r, &x, &w, b, t, c);
        assert_close("out", &y, &want_y, 1e-6);
        assert_close("rstd", &r, &want_r, 1e-6);
        let (mut dx, mut dw) = (vec![0.5; n * c], vec![0.25; c]);
        backward(&mut dx, &mut dw, &dy, &x, &w, &r, c);
        let (mut want_dx, mut want_dw) = (vec![0.5; n * c], vec![0.25; c]);
        reference::rmsnorm_backward(&mut want_dx, &mut want_dw, &dy, &x, &w, &want_r, b, t, c);
        assert_close("dinp", &dx, &want_dx, 1e-5);
        assert_close("dweight", &dw, &want_dw, 1e-5);

        let (c, h) = (32, 4);
        let hs = c / h;
        let s = reference::AttentionShape {
            batch: b,
            seq_len: t,
            channels: c,
            n_head: h,
        };
        let qkv = random_vec(n * 3 * c, &mut rng, 1.0);
        let (qw, kw) = (random_vec(hs, &mut rng, 1.0), random_vec(hs, &mut rng, 1.0));
        let dout = random_vec(n * 3 * c, &mut rng, 1.0);
        let mut out = qkv.clone();
        let (mut raw, mut rs) = (vec![0.0; n * 2 * c], vec![0.0; n * 2 * h]);
        qk_forward(&mut out, Some(&mut raw), &mut rs, &qw, &kw, c, h);
        let mut want = vec![0.0; n * 3 * c];
        let want_rs = reference::qk_norm_forward(&mut want, &qkv, &qw, &kw, s);
        assert_close("qk out", &out, &want, 1e-6);
        let mut d = dout.clone();
        let (mut dqw, mut dkw) = (vec![0.0; hs], vec![0.0; hs]);
        qk_backward(&mut d, &mut dqw, &mut dkw, &raw, &rs, &qw, &kw, c, h);
        let mut want_d = vec![0.0; n * 3 * c];
        let (mut want_dqw, mut want_dkw) = (vec![0.0; hs], vec![0.0; hs]);
        reference::qk_norm_backward(
            &mut want_d,
            &mut want_dqw,
            &mut want_dkw,
            &dout,
            &qkv,
            &qw,
            &kw,
            &want_rs,
            s,
        );
        assert_close("qk dqkv", &d, &want_d, 1e-5);
        assert_close("dq_weight", &dqw, &want_dqw, 1e-5);
        assert_close("dk_weight", &dkw, &want_dkw, 1e-5);
    }
}
