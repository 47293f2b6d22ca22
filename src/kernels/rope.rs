//! Rotary position embedding (RoPE, Su et al. 2021), in place on the queries and keys.
//!
//! Each head's query and key (hs numbers) are cut into hs/2 pairs of neighbouring channels
//! `(x[2i], x[2i+1])`, and pair i of the vector at position p is turned by the angle
//! `p * theta_i`, `theta_i = 10000^(-2i/hs)` (fast turns for the first pairs, slow for the last):
//! ```text
//! y[2i]   = x[2i] cos(p theta_i) - x[2i+1] sin(p theta_i)
//! y[2i+1] = x[2i] sin(p theta_i) + x[2i+1] cos(p theta_i)
//! ```
//! A rotation keeps lengths, and the dot product of a query turned by `p theta` with a key turned
//! by `u theta` depends only on `p - u`: the scores see relative positions, so no position
//! embedding is learned, and a cached key stays valid when the context slides (generation keeps a
//! ring of the last `block_size` keys). The backward pass turns the gradient back, by `-p theta_i`
//! (the transpose of a rotation is its inverse). The values are not turned.
//!
//! Shapes: `qkv` (N, 3C) rows `[q | k | v]`, head h in columns `h*hs..(h+1)*hs` of each part.
//! The angles are computed in f64 and rounded to f32 once, the same way in both engines and in
//! `tools/chargpt_torch.py`, so that they agree to the last bit.

use super::simd_fn;
use crate::config::ROPE_BASE;
use rayon::prelude::*;

/// `(cos, sin)` of `position * theta_i` for pair `i` of a head of size `head_size`.
#[inline]
pub fn angle(position: usize, pair: usize, head_size: usize) -> (f32, f32) {
    let theta = ROPE_BASE.powf(-((2 * pair) as f64) / head_size as f64);
    let a = position as f64 * theta;
    (a.cos() as f32, a.sin() as f32)
}

/// The cosines and sines of positions `0..positions`, (positions, hs/2) each: what training
/// reads. Positions beyond it (generation past `block_size`) are computed when needed.
#[derive(Debug, Clone, PartialEq)]
pub struct RopeTable {
    head_size: usize,
    positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(positions: usize, head_size: usize) -> Self {
        let half = head_size / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(positions * half), Vec::new());
        sin.reserve(positions * half);
        for p in 0..positions {
            for i in 0..half {
                let (c, s) = angle(p, i, head_size);
                cos.push(c);
                sin.push(s);
            }
        }
        RopeTable {
            head_size,
            positions,
            cos,
            sin,
        }
    }
}

simd_fn! {
    /// Turns the hs/2 pairs of `x` by `(cos[i], ±sin[i])`.
    fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
        let sign = if inverse { -1.0 } else { 1.0 };
        for ((pair, &c), &s) in x.chunks_exact_mut(2).zip(cos).zip(sin) {
            let s = sign * s;
            let (x0, x1) = (pair[0], pair[1]);
            pair[0] = x0 * c - x1 * s;
            pair[1] = x0 * s + x1 * c;
        }
    }
}

/// Turns the queries and keys of every row of `qkv` (R, 3C) by their positions, or with `inverse`
/// back (the backward pass, on the gradient). Row r is at position
/// `first_position + r % seq_len`: a batch of sequences starts at `first_position = 0` with
/// `seq_len = T`; rows that extend one sequence pass their first position and `usize::MAX`.
pub fn apply(
    qkv: &mut [f32],
    table: &RopeTable,
    first_position: usize,
    seq_len: usize,
    channels: usize,
    n_head: usize,
    inverse: bool,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Attention, inverse);
    let (c, hs) = (channels, table.head_size);
    assert_eq!(c / n_head, hs);
    let half = hs / 2;
    qkv.par_chunks_mut(3 * c)
        .enumerate()
        .with_min_len(super::min_items(6 * 2 * c))
        .for_each(|(r, row)| {
            let p = first_position + r % seq_len;
            if p < table.positions {
                let (cos, sin) = (
                    &table.cos[p * half..(p + 1) * half],
                    &table.sin[p * half..(p + 1) * half],
                );
                for head in row[..2 * c].chunks_exact_mut(hs) {
                    rotate(head, cos, sin, inverse);
                }
            } else {
                // Beyond the table (generation only: one row at a time).
                for i in 0..half {
                    let (cos, sin) = angle(p, i, hs);
                    for head in row[..2 * c].chunks_exact_mut(hs) {
                        rotate(&mut head[2 * i..2 * i + 2], &[cos], &[sin], inverse);
                    }
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences_and_inverse_undoes_it() {
        let mut rng = Rng::new(41);
        let (b, t, c, h) = (2, 6, 16, 2);
        let table = RopeTable::new(t, c / h);
        let qkv = random_vec(b * t * 3 * c, &mut rng, 1.0);
        let w = random_vec(qkv.len(), &mut rng, 1.0);
        let f = |x: &[f32]| {
            let mut y = x.to_vec();
            apply(&mut y, &table, 0, t, c, h, false);
            weighted_sum(&y, &w)
        };
        let mut d = w.clone();
        apply(&mut d, &table, 0, t, c, h, true);
        check("dqkv", &qkv, &d, f, 1e-3);
        let mut y = qkv.clone();
        apply(&mut y, &table, 0, t, c, h, false);
        // Position 0 is not turned, values never are, lengths are kept.
        assert_eq!(&y[..3 * c], &qkv[..3 * c]);
        assert_eq!(&y[3 * c + 2 * c..6 * c], &qkv[3 * c + 2 * c..6 * c]);
        apply(&mut y, &table, 0, t, c, h, true);
        assert_close("inverse", &y, &qkv, 1e-6);
    }

    /// Scores depend on relative positions only: the query at p and the key at u, both turned,
    /// have the same dot product as at p + 1000 and u + 1000 (the generation ring relies on this);
    /// and positions past the table agree with a longer table.
    #[test]
    fn scores_depend_on_relative_positions_only() {
        let mut rng = Rng::new(42);
        let (c, h) = (16, 1);
        let short = RopeTable::new(4, c);
        let long = RopeTable::new(2000, c);
        let row = random_vec(3 * c, &mut rng, 1.0);
        let at = |p: usize, table: &RopeTable| {
            let mut y = row.clone();
            apply(&mut y, table, p, usize::MAX, c, h, false);
            y
        };
        for p in [5, 1500] {
            assert_eq!(at(p, &short), at(p, &long), "position {p}");
        }
        let dot = |q: &[f32], k: &[f32]| q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>();
        let (q3, k1) = (at(3, &long), at(1, &long));
        let (q3b, k1b) = (at(1003, &long), at(1001, &long));
        let (s, sb) = (dot(&q3[..c], &k1[c..2 * c]), dot(&q3b[..c], &k1b[c..2 * c]));
        assert!((s - sb).abs() < 1e-4 * (1.0 + s.abs()), "{s} vs {sb}");
    }

    #[test]
    fn matches_the_reference_rope() {
        let mut rng = Rng::new(43);
        let (b, t, c, h) = (2, 7, 24, 3);
        let s = crate::reference::layers::AttentionShape {
            batch: b,
            seq_len: t,
            channels: c,
            n_head: h,
        };
        let qkv = random_vec(b * t * 3 * c, &mut rng, 1.0);
        let table = RopeTable::new(t, c / h);
        let mut y = qkv.clone();
        apply(&mut y, &table, 0, t, c, h, false);
        let mut want = vec![0.0; qkv.len()];
        crate::reference::layers::rope_forward(&mut want, &qkv, 0, s);
        assert_close("forward", &y, &want, 1e-6);
        let mut d = qkv.clone();
        apply(&mut d, &table, 0, t, c, h, true);
        let mut want_d = vec![0.0; qkv.len()];
        crate::reference::layers::rope_backward(&mut want_d, &qkv, 0, s);
        assert_close("backward", &d, &want_d, 1e-6);
    }
}
