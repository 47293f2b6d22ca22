//! Dropout (inverted): in training, each element is kept with probability `1 - p` and scaled by
//! `1 / (1 - p)`, so its expectation is unchanged and evaluation needs no rescaling:
//! `y = x * m / (1 - p)` with `m ~ Bernoulli(1 - p)`. Backward: `dx += dy * m / (1 - p)`.
//!
//! The mask is kept (one byte per element) for the backward pass. Which elements it keeps is
//! defined in [`crate::rng::DropoutSeed`]: element i of batch row b is a pure function of the
//! step's seed, the site, b and i, the same on both engines and whatever the threads. The
//! reference twin is [`crate::reference::layers::dropout_forward`].

use crate::rng::SiteMasks;
use rayon::prelude::*;

/// Applies dropout to `x` in place and records the mask: `x *= m / (1 - p)`, `mask = m`.
/// Shapes: `x` and `mask` (B, L): B batch rows of `row_len` elements each, row b's mask drawn
/// from `masks.row(b)`.
pub fn forward(x: &mut [f32], mask: &mut [u8], p: f32, masks: SiteMasks, row_len: usize) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Dropout, false);
    assert_eq!(x.len(), mask.len());
    assert!(row_len > 0 && x.len().is_multiple_of(row_len));
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(row_len)
        .zip(mask.par_chunks_mut(row_len))
        .enumerate()
        .with_min_len(super::min_items(row_len * 8))
        .for_each(|(b, (x, m))| {
            masks.row(b).fill(m, 0, p);
            for (x, &m) in x.iter_mut().zip(m.iter()) {
                *x = if m != 0 { *x * scale } else { 0.0 };
            }
        });
}

const CHUNK: usize = 1 << 12;

/// `dx += dy * m / (1 - p)`.
pub fn backward(dx: &mut [f32], dy: &[f32], mask: &[u8], p: f32) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Dropout, true);
    let scale = 1.0 / (1.0 - p);
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK).zip(mask.par_chunks(CHUNK)))
        .with_min_len(4)
        .for_each(|(dx, (dy, m))| {
            for ((dx, &dy), &m) in dx.iter_mut().zip(dy).zip(m) {
                *dx += dy * (m as f32 * scale);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::rng::{DropoutSeed, DropoutSite, Rng};

    fn masks(seed: u64) -> SiteMasks {
        DropoutSeed::new(seed).site(0, DropoutSite::AttentionOutput)
    }

    #[test]
    fn gradient_matches_finite_differences_for_a_fixed_mask() {
        let mut rng = Rng::new(3);
        let n = 5000;
        let x = random_vec(n, &mut rng, 1.0);
        let w = random_vec(n, &mut rng, 1.0);
        let mut y = x.clone();
        let mut mask = vec![0u8; n];
        forward(&mut y, &mut mask, 0.3, masks(42), 1000);
        let mut dx = vec![0.0; n];
        backward(&mut dx, &w, &mask, 0.3);
        // Same seed, same mask: the function is linear in x.
        check(
            "dropout",
            &x,
            &dx,
            |x| {
                let mut y = x.to_vec();
                let mut m = vec![0u8; n];
                forward(&mut y, &mut m, 0.3, masks(42), 1000);
                weighted_sum(&y, &w)
            },
            1e-3,
        );
    }

    #[test]
    fn keeps_the_expected_fraction_and_scales() {
        let n = 100_000;
        let mut x = vec![1.0f32; n];
        let mut mask = vec![0u8; n];
        forward(&mut x, &mut mask, 0.2, masks(7), 10_000);
        let kept = mask.iter().filter(|&&m| m == 1).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.01, "kept {kept}");
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert!(x.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
        // A different seed gives a different mask.
        let mut other = vec![0u8; n];
        forward(&mut vec![1.0; n], &mut other, 0.2, masks(8), 10_000);
        assert_ne!(mask, other);
    }

    /// The kernel and its reference twin zero the same elements and scale the rest the same,
    /// also for a shard that starts inside the batch; the backward passes agree too.
    #[test]
    fn matches_the_reference_dropout() {
        let mut rng = Rng::new(13);
        let (b_n, row_len, p) = (3, 700, 0.25);
        let x = random_vec(b_n * row_len, &mut rng, 1.0);
        let dy = random_vec(b_n * row_len, &mut rng, 1.0);
        let site = DropoutSeed::new(21)
            .rows_from(2)
            .site(1, DropoutSite::FeedForwardOutput);
        let (mut y, mut mask) = (x.clone(), vec![0u8; x.len()]);
        forward(&mut y, &mut mask, p, site, row_len);
        let (mut want, mut want_mask) = (vec![0.0; x.len()], vec![false; x.len()]);
        crate::reference::layers::dropout_forward(
            &mut want,
            &mut want_mask,
            &x,
            p,
            site,
            b_n,
            row_len,
        );
        assert_eq!(y, want);
        let bools: Vec<bool> = mask.iter().map(|&m| m == 1).collect();
        assert_eq!(bools, want_mask);
        let mut dx = vec![0.5; x.len()];
        backward(&mut dx, &dy, &mask, p);
        let mut want_dx = vec![0.5; x.len()];
        crate::reference::layers::dropout_backward(&mut want_dx, &dy, &want_mask, p);
        assert_eq!(dx, want_dx);
    }
}
