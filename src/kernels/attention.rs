//! Causal multi-head self-attention, fused: scores, scale, causal mask, softmax, dropout on the
//! weights, and the weighted sum of values, for every (batch row, head) in parallel.
//!
//! Shapes: `qkv` (B, T, 3C), each row `[q | k | v]` with head h in columns `h*hs .. (h+1)*hs` of
//! each part (hs = C / H); `att` (B, H, T, T), the softmax weights cached for the backward pass
//! (entries above the diagonal are 0); `out` (B, T, C), the heads concatenated.
//!
//! Per head, with `scale` = 1/sqrt(hs) (or 1/sqrt(C) as in the video):
//! `s[t, u] = scale * q_t . k_u` for u <= t (the causal mask: a position sees only its past),
//! `a[t, :] = softmax(s[t, :])`, optionally `a' = a * m / (1 - p)` (dropout),
//! `out_t = sum_u a'[t, u] v_u`.
//!
//! Backward, row by row: `da'[t, u] = dout_t . v_u`, `dv_u += a'[t, u] dout_t`,
//! `da = da' * m / (1 - p)`, softmax backward `ds[t, u] = a[t, u] (da[t, u] - sum_w a[t, w] da[t, w])`,
//! then `dq_t += scale * sum_u ds[t, u] k_u` and `dk_u += scale * ds[t, u] q_t`.
//!
//! Each (batch row, head) is an independent small problem, so threads take whole heads and the
//! products inside run single-threaded.

use super::{axpy, dot, SharedMut};
use crate::rng::Rng;
use rayon::prelude::*;

/// The shape of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub batch: usize,
    pub seq_len: usize,
    pub channels: usize,
    pub n_head: usize,
}

impl Shape {
    fn head_size(&self) -> usize {
        self.channels / self.n_head
    }
}

/// Dropout on the attention weights: probability and the seed of this call's mask.
#[derive(Debug, Clone, Copy)]
pub struct AttentionDropout {
    pub p: f32,
    pub seed: u64,
}

pub fn forward(
    out: &mut [f32],
    att: &mut [f32],
    mut dropout: Option<(&mut [u8], AttentionDropout)>,
    qkv: &[f32],
    shape: Shape,
    scale: f32,
) {
    let Shape {
        batch: b_n,
        seq_len: t_n,
        channels: c,
        n_head: h_n,
    } = shape;
    let hs = shape.head_size();
    assert!(qkv.len() >= b_n * t_n * 3 * c && out.len() >= b_n * t_n * c);
    let att = &mut att[..b_n * h_n * t_n * t_n];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let flops_per_head = 2 * t_n * t_n * hs;
    let (mask, p, seed) = match dropout.as_mut() {
        Some((mask, d)) => (Some(&mut mask[..b_n * h_n * t_n * t_n]), d.p, d.seed),
        None => (None, 0.0, 0),
    };
    let keep_scale = 1.0 / (1.0 - p);
    let run = |bh: usize, att_bh: &mut [f32], mut mask_bh: Option<&mut [u8]>| {
        let (b, h) = (bh / h_n, bh % h_n);
        let mut rng = Rng::derived(seed, b as u64, h as u64, 0);
        let row_of = |t: usize| &qkv[(b * t_n + t) * 3 * c..(b * t_n + t + 1) * 3 * c];
        for t in 0..t_n {
            let q = &row_of(t)[h * hs..(h + 1) * hs];
            let a = &mut att_bh[t * t_n..(t + 1) * t_n];
            let mut max = f32::NEG_INFINITY;
            for (u, a_u) in a[..=t].iter_mut().enumerate() {
                let k = &row_of(u)[c + h * hs..c + (h + 1) * hs];
                *a_u = scale * dot(q, k);
                max = max.max(*a_u);
            }
            let mut sum = 0.0;
            for a_u in a[..=t].iter_mut() {
                *a_u = super::exp(*a_u - max);
                sum += *a_u;
            }
            let inv = 1.0 / sum;
            for a_u in a[..=t].iter_mut() {
                *a_u *= inv;
            }
            a[t + 1..].fill(0.0);
            // SAFETY: task (b, h) alone writes columns h*hs..(h+1)*hs of rows b*T..(b+1)*T of out,
            // which lie inside out (length checked above).
            let o = unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add((b * t_n + t) * c + h * hs), hs)
            };
            o.fill(0.0);
            match mask_bh.as_deref_mut() {
                Some(mask) => {
                    let m = &mut mask[t * t_n..(t + 1) * t_n];
                    for u in 0..=t {
                        let keep = rng.uniform() >= p;
                        m[u] = keep as u8;
                        if keep {
                            axpy(
                                o,
                                a[u] * keep_scale,
                                &row_of(u)[2 * c + h * hs..2 * c + (h + 1) * hs],
                            );
                        }
                    }
                }
                None => {
                    for (u, &w) in a[..=t].iter().enumerate() {
                        axpy(o, w, &row_of(u)[2 * c + h * hs..2 * c + (h + 1) * hs]);
                    }
                }
            }
        }
    };
    let min_len = super::min_items(flops_per_head);
    match mask {
        Some(mask) => att
            .par_chunks_mut(t_n * t_n)
            .zip(mask.par_chunks_mut(t_n * t_n))
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(bh, (a, m))| run(bh, a, Some(m))),
        None => att
            .par_chunks_mut(t_n * t_n)
            .enumerate()
            .with_min_len(min_len)
            .for_each(|(bh, a)| run(bh, a, None)),
    }
}

/// Accumulates `dqkv` (B, T, 3C) from `dout` (B, T, C). `scratch` holds at least B*H*T floats.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    dqkv: &mut [f32],
    scratch: &mut [f32],
    dout: &[f32],
    qkv: &[f32],
    att: &[f32],
    dropout: Option<(&[u8], f32)>,
    shape: Shape,
    scale: f32,
) {
    let Shape {
        batch: b_n,
        seq_len: t_n,
        channels: c,
        n_head: h_n,
    } = shape;
    let hs = shape.head_size();
    assert!(dqkv.len() >= b_n * t_n * 3 * c && dout.len() >= b_n * t_n * c);
    assert!(att.len() >= b_n * h_n * t_n * t_n && scratch.len() >= b_n * h_n * t_n);
    let dqkv_ptr = SharedMut(dqkv.as_mut_ptr());
    let (mask, keep_scale) = match dropout {
        Some((m, p)) => (Some(m), 1.0 / (1.0 - p)),
        None => (None, 1.0),
    };
    scratch[..b_n * h_n * t_n]
        .par_chunks_mut(t_n)
        .enumerate()
        .with_min_len(super::min_items(4 * t_n * t_n * hs))
        .for_each(|(bh, dp)| {
            let (b, h) = (bh / h_n, bh % h_n);
            let att_bh = &att[bh * t_n * t_n..(bh + 1) * t_n * t_n];
            let mask_bh = mask.map(|m| &m[bh * t_n * t_n..(bh + 1) * t_n * t_n]);
            let row_of = |t: usize| &qkv[(b * t_n + t) * 3 * c..(b * t_n + t + 1) * 3 * c];
            // SAFETY: task (b, h) alone touches head h's columns (q, k and v parts) of rows
            // b*T..(b+1)*T of dqkv; the ranges lie inside dqkv (length checked above).
            let grad = |t: usize, part: usize| unsafe {
                std::slice::from_raw_parts_mut(
                    dqkv_ptr
                        .get()
                        .add((b * t_n + t) * 3 * c + part * c + h * hs),
                    hs,
                )
            };
            for t in 0..t_n {
                let a = &att_bh[t * t_n..(t + 1) * t_n];
                let d_o = &dout[(b * t_n + t) * c + h * hs..(b * t_n + t) * c + (h + 1) * hs];
                // dp[u] = d(loss)/d(a[t, u]) through the weighted sum (and dropout).
                for u in 0..=t {
                    let v = &row_of(u)[2 * c + h * hs..2 * c + (h + 1) * hs];
                    let m = match mask_bh {
                        Some(mask) => mask[t * t_n + u] as f32 * keep_scale,
                        None => 1.0,
                    };
                    axpy(grad(u, 2), a[u] * m, d_o);
                    dp[u] = dot(d_o, v) * m;
                }
                let weighted: f32 = a[..=t].iter().zip(&dp[..=t]).map(|(a, d)| a * d).sum();
                let q = &row_of(t)[h * hs..(h + 1) * hs];
                let dq = grad(t, 0);
                for u in 0..=t {
                    let ds = a[u] * (dp[u] - weighted) * scale;
                    let k = &row_of(u)[c + h * hs..c + (h + 1) * hs];
                    axpy(dq, ds, k);
                    axpy(grad(u, 1), ds, q);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;

    fn run_forward(
        qkv: &[f32],
        shape: Shape,
        scale: f32,
        drop: Option<AttentionDropout>,
    ) -> (Vec<f32>, Vec<f32>, Vec<u8>) {
        let Shape {
            batch: b,
            seq_len: t,
            channels: c,
            n_head: h,
        } = shape;
        let mut out = vec![0.0; b * t * c];
        let mut att = vec![0.0; b * h * t * t];
        let mut mask = vec![0u8; b * h * t * t];
        forward(
            &mut out,
            &mut att,
            drop.map(|d| (&mut mask[..], d)),
            qkv,
            shape,
            scale,
        );
        (out, att, mask)
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(8);
        let shape = Shape {
            batch: 2,
            seq_len: 5,
            channels: 12,
            n_head: 3,
        };
        let n = 2 * 5 * 12;
        let qkv = random_vec(3 * n, &mut rng, 1.0);
        let w = random_vec(n, &mut rng, 1.0);
        for drop in [None, Some(AttentionDropout { p: 0.25, seed: 9 })] {
            let (_, att, mask) = run_forward(&qkv, shape, 0.5, drop);
            let mut dqkv = vec![0.0; 3 * n];
            let mut scratch = vec![0.0; 2 * 3 * 5];
            backward(
                &mut dqkv,
                &mut scratch,
                &w,
                &qkv,
                &att,
                drop.map(|d| (&mask[..], d.p)),
                shape,
                0.5,
            );
            check(
                "dqkv",
                &qkv,
                &dqkv,
                |x| weighted_sum(&run_forward(x, shape, 0.5, drop).0, &w),
                2e-3,
            );
        }
    }

    #[test]
    fn weights_are_causal_and_normalised() {
        let mut rng = Rng::new(9);
        let shape = Shape {
            batch: 1,
            seq_len: 6,
            channels: 8,
            n_head: 2,
        };
        let qkv = random_vec(6 * 24, &mut rng, 1.0);
        let (out, att, _) = run_forward(&qkv, shape, 0.5, None);
        for row in 0..12 {
            let t = row % 6;
            let r = &att[row * 6..(row + 1) * 6];
            assert!((r.iter().sum::<f32>() - 1.0).abs() < 1e-5);
            assert!(r[t + 1..].iter().all(|&x| x == 0.0));
        }
        // The first position attends only to itself: its output is its own value vector.
        assert_eq!(&out[0..4], &qkv[16..20]);
        assert_eq!(&out[4..8], &qkv[20..24]);
    }
}
