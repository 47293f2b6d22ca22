//! Fused softmax and cross-entropy: the loss of predicting `target` from `logits`.
//!
//! Shapes: `logits`, `probs` (N, V) with N = B*T; `targets` (N); `losses` (N).
//! Forward: `p = softmax(z)` (computed as `exp(z - max z) / sum`, which cannot overflow),
//! `loss_n = -ln p[n, target_n]`, and the returned mean over the N positions.
//!
//! Backward of the mean loss: `dz[n, v] += (p[n, v] - [v == target_n]) / N`, the famously simple
//! gradient of softmax followed by negative log-likelihood.

use super::simd_fn;
use crate::tokenizer::TokenId;
use rayon::prelude::*;

simd_fn! {
    /// `p = softmax(z)`; returns `-ln p[y]`.
    fn softmax_row(p: &mut [f32], z: &[f32], y: usize) -> f32 {
        let max = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        p.copy_from_slice(z);
        let sum = super::exp_shifted_sum(p, max);
        let inv = 1.0 / sum;
        for p in p.iter_mut() {
            *p *= inv;
        }
        // ln p_y = z_y - max - ln(sum), exact even where p_y underflows to 0.
        (sum.ln() + max) - z[y]
    }
}

/// Writes `probs` and `losses`; returns the mean loss.
pub fn forward(
    probs: &mut [f32],
    losses: &mut [f32],
    logits: &[f32],
    targets: &[TokenId],
    vocab: usize,
) -> f32 {
    let _timer = crate::profile::scope(crate::profile::Kernel::CrossEntropy, false);
    let n = targets.len();
    probs[..n * vocab]
        .par_chunks_mut(vocab)
        .zip(logits.par_chunks(vocab))
        .zip(losses[..n].par_iter_mut().zip(targets.par_iter()))
        .with_min_len(super::min_items(4 * vocab))
        .for_each(|((p, z), (loss, &y))| *loss = softmax_row(p, z, y as usize));
    // Sum in f64 so the mean of ~10^5 terms does not lose digits.
    (losses[..n].iter().map(|&l| l as f64).sum::<f64>() / n as f64) as f32
}

/// Accumulates the gradient of `loss_scale` times the mean loss into `dlogits` (`loss_scale` is
/// the part of a larger batch these rows are, in data-parallel training; otherwise 1).
pub fn backward(
    dlogits: &mut [f32],
    probs: &[f32],
    targets: &[TokenId],
    vocab: usize,
    loss_scale: f32,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::CrossEntropy, true);
    let n = targets.len();
    let scale = loss_scale / n as f32;
    dlogits[..n * vocab]
        .par_chunks_mut(vocab)
        .zip(probs.par_chunks(vocab).zip(targets.par_iter()))
        .with_min_len(super::min_items(2 * vocab))
        .for_each(|(d, (p, &y))| {
            for (d, &p) in d.iter_mut().zip(p) {
                *d += p * scale;
            }
            d[y as usize] -= scale;
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(10);
        let (n, v) = (7, 11);
        let z = random_vec(n * v, &mut rng, 2.0);
        let y: Vec<TokenId> = (0..n).map(|_| rng.below(v) as TokenId).collect();
        let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
        forward(&mut p, &mut l, &z, &y, v);
        let mut dz = vec![0.0; n * v];
        backward(&mut dz, &p, &y, v, 1.0);
        check(
            "dlogits",
            &z,
            &dz,
            |z| {
                let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
                forward(&mut p, &mut l, z, &y, v) as f64
            },
            2e-3,
        );
    }

    #[test]
    fn uniform_logits_give_ln_vocab_and_extremes_stay_finite() {
        let (mut p, mut l) = (vec![0.0; 65], vec![0.0; 1]);
        let loss = forward(&mut p, &mut l, &[0.0; 65], &[3], 65);
        assert!((loss - 65f32.ln()).abs() < 1e-6);
        let mut z = [0.0f32; 4];
        z[0] = 1000.0;
        let (mut p, mut l) = (vec![0.0; 4], vec![0.0; 1]);
        let loss = forward(&mut p, &mut l, &z, &[1], 4);
        assert!((loss - 1000.0).abs() < 1e-3, "{loss}");
    }

    #[test]
    fn matches_the_reference_cross_entropy() {
        let mut rng = Rng::new(24);
        let (n, v) = (13, 65);
        let z = random_vec(n * v, &mut rng, 3.0);
        let y: Vec<TokenId> = (0..n).map(|_| rng.below(v) as TokenId).collect();
        let (mut p, mut l) = (vec![0.0; n * v], vec![0.0; n]);
        let loss = forward(&mut p, &mut l, &z, &y, v);
        let (mut want_p, mut want_l) = (vec![0.0; n * v], vec![0.0; n]);
        let want_loss =
            crate::reference::layers::cross_entropy_forward(&mut want_p, &mut want_l, &z, &y, n, v);
        assert!(
            ((loss - want_loss) / want_loss).abs() < 1e-6,
            "{loss} vs {want_loss}"
        );
        assert_close("probs", &p, &want_p, 1e-6);
        assert_close("losses", &l, &want_l, 1e-6);
        let (mut dz, mut want_dz) = (vec![0.0; n * v], vec![0.0; n * v]);
        backward(&mut dz, &p, &y, v, 0.5);
        crate::reference::layers::cross_entropy_backward(&mut want_dz, &want_p, &y, n, v, 0.5);
        assert_close("dlogits", &dz, &want_dz, 1e-6);
    }
}
