//! Dropout (inverted): in training, each element is kept with probability `1 - p` and scaled by
//! `1 / (1 - p)`, so its expectation is unchanged and evaluation needs no rescaling:
//! `y = x * m / (1 - p)` with `m ~ Bernoulli(1 - p)`. Backward: `dx += dy * m / (1 - p)`.
//!
//! The mask is drawn from a seeded generator and kept (one byte per element) for the backward
//! pass. Each chunk of `CHUNK` elements draws from its own stream derived from `(seed, chunk)`,
//! so the mask does not depend on how many threads ran the kernel.

use crate::rng::Rng;
use rayon::prelude::*;

pub(crate) const CHUNK: usize = 1 << 12;

/// Applies dropout to `x` in place and records the mask: `x *= m / (1 - p)`, `mask = m`.
/// Shapes: `x` and `mask` any shape, same length.
pub fn forward(x: &mut [f32], mask: &mut [u8], p: f32, seed: u64) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Dropout, false);
    let scale = 1.0 / (1.0 - p);
    x.par_chunks_mut(CHUNK)
        .zip(mask.par_chunks_mut(CHUNK))
        .enumerate()
        .with_min_len(super::min_items(CHUNK * 8))
        .for_each(|(chunk, (x, m))| {
            let mut rng = Rng::derived(seed, chunk as u64, 0, 0);
            for (x, m) in x.iter_mut().zip(m.iter_mut()) {
                let keep = rng.uniform() >= p;
                *m = keep as u8;
                *x = if keep { *x * scale } else { 0.0 };
            }
        });
}

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

    #[test]
    fn gradient_matches_finite_differences_for_a_fixed_mask() {
        let mut rng = Rng::new(3);
        let n = 5000;
        let x = random_vec(n, &mut rng, 1.0);
        let w = random_vec(n, &mut rng, 1.0);
        let mut y = x.clone();
        let mut mask = vec![0u8; n];
        forward(&mut y, &mut mask, 0.3, 42);
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
                forward(&mut y, &mut m, 0.3, 42);
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
        forward(&mut x, &mut mask, 0.2, 7);
        let kept = mask.iter().filter(|&&m| m == 1).count() as f64 / n as f64;
        assert!((kept - 0.8).abs() < 0.01, "kept {kept}");
        let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        assert!((mean - 1.0).abs() < 0.02, "mean {mean}");
        assert!(x.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
        // A different seed gives a different mask.
        let mut other = vec![0u8; n];
        forward(&mut vec![1.0; n], &mut other, 0.2, 8);
        assert_ne!(mask, other);
    }
}
