//! The optimizers in plain loops: AdamW, the twin of [`crate::optimizer::AdamW::update`] (one
//! fused loop over fixed chunks of the flat buffer, in threads), and Muon's update of one matrix,
//! the twin of [`crate::optimizer::muon_update`] (which runs the products through `gemm`, one
//! matrix per thread, in reused scratch).
//!
//! AdamW (PyTorch's `torch.optim.AdamW`), for each parameter p with gradient g at step t (from 1):
//! ```text
//! m <- beta1 m + (1 - beta1) g                            (the gradient's running mean)
//! v <- beta2 v + (1 - beta2) g^2                          (its running mean square)
//! m_hat = m / (1 - beta1^t);  v_hat = v / (1 - beta2^t)   (both started at 0: unbias them)
//! p <- p (1 - lr wd)                                      (decoupled weight decay)
//! p <- p - lr m_hat / (sqrt(v_hat) + eps)
//! ```
//!
//! Muon, for a weight W (rows x cols) with gradient g and momentum buffer m:
//! ```text
//! m <- mu m + g;  u <- g + mu m                           (Nesterov momentum)
//! X <- u^T if rows > cols else u                          (a x b, a <= b)
//! X <- X / (||X||_F + 1e-7)
//! 5 times:  A = X X^T;  B = c1 A + c2 A A;  X = c0 X + B X
//! W <- W (1 - lr wd) - lr max(1, rows/cols)^0.5 X         (X transposed back)
//! ```

use crate::config::{DecayOn, OptimizerKind, TrainConfig, NS_COEFFICIENTS, NS_STEPS};
use crate::layout::ParamLayout;

/// One AdamW step of every tensor of `layout` (but the blocks' matrices, which Muon updates,
/// with `optimizer = muon`) at learning rate `lr`: `params` from `grads` times `grad_scale` (the
/// clipping factor), with the moments `m` and `v`; `t` is the step, counted from 1. Weight
/// decay applies to every tensor or to the matrices only (`decay_on`).
#[allow(clippy::too_many_arguments)]
pub fn adamw(
    params: &mut [f32],
    grads: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    t: u64,
    layout: &ParamLayout,
    cfg: &TrainConfig,
    lr: f32,
    grad_scale: f32,
) {
    let (beta1, beta2) = (cfg.beta1 as f64, cfg.beta2 as f64);
    let unbias1 = 1.0 - beta1.powi(t as i32);
    let unbias2 = 1.0 - beta2.powi(t as i32);
    for spec in &layout.specs {
        if cfg.optimizer == OptimizerKind::Muon && spec.is_hidden_matrix() {
            continue;
        }
        let decays = match cfg.decay_on {
            DecayOn::All => true,
            DecayOn::Matrices => spec.is_matrix(),
        };
        for i in spec.range() {
            let g = (grads[i] * grad_scale) as f64;
            m[i] = (beta1 * m[i] as f64 + (1.0 - beta1) * g) as f32;
            v[i] = (beta2 * v[i] as f64 + (1.0 - beta2) * g * g) as f32;
            let m_hat = m[i] as f64 / unbias1;
            let v_hat = v[i] as f64 / unbias2;
            let mut p = params[i] as f64;
            if decays {
                p *= 1.0 - lr as f64 * cfg.weight_decay as f64;
            }
            p -= lr as f64 * m_hat / (v_hat.sqrt() + cfg.eps as f64);
            params[i] = p as f32;
        }
    }
}

/// `a (n x k) @ b (k x m)`, row-major.
fn matmul(a: &[f32], b: &[f32], n: usize, k: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            let mut sum = 0.0f32;
            for l in 0..k {
                sum += a[i * k + l] * b[l * m + j];
            }
            out[i * m + j] = sum;
        }
    }
    out
}

/// The transpose of `x` (n x m).
fn transpose(x: &[f32], n: usize, m: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * m];
    for i in 0..n {
        for j in 0..m {
            out[j * n + i] = x[i * m + j];
        }
    }
    out
}

/// The Newton-Schulz orthogonalisation of `u` (n x m): a matrix with u's singular vectors and
/// singular values near 1.
pub fn newton_schulz(u: &[f32], n: usize, m: usize) -> Vec<f32> {
    let transposed = n > m;
    let (a, b) = if transposed { (m, n) } else { (n, m) };
    let mut x = if transposed {
        transpose(u, n, m)
    } else {
        u.to_vec()
    };
    let mut squares = 0.0f64;
    for &v in &x {
        squares += v as f64 * v as f64;
    }
    let norm = squares.sqrt() as f32;
    for v in x.iter_mut() {
        *v /= norm + 1e-7;
    }
    let (c0, c1, c2) = NS_COEFFICIENTS;
    for _ in 0..NS_STEPS {
        let gram = matmul(&x, &transpose(&x, a, b), a, b, a);
        let gram2 = matmul(&gram, &gram, a, a, a);
        let mut poly = vec![0.0; a * a];
        for i in 0..a * a {
            poly[i] = c1 * gram[i] + c2 * gram2[i];
        }
        let px = matmul(&poly, &x, a, a, b);
        for i in 0..a * b {
            x[i] = c0 * x[i] + px[i];
        }
    }
    if transposed {
        transpose(&x, a, b)
    } else {
        x
    }
}

/// One Muon step of the matrix `w` (rows x cols) with gradient `g` (times `grad_scale`) and
/// momentum `m`, at learning rate `lr`, momentum `mu`, weight decay `wd`.
#[allow(clippy::too_many_arguments)]
pub fn muon_matrix(
    w: &mut [f32],
    m: &mut [f32],
    g: &[f32],
    rows: usize,
    cols: usize,
    lr: f32,
    mu: f32,
    wd: f32,
    grad_scale: f32,
) {
    let mut u = vec![0.0; rows * cols];
    for i in 0..rows * cols {
        let grad = g[i] * grad_scale;
        m[i] = mu * m[i] + grad;
        u[i] = grad + mu * m[i];
    }
    let x = newton_schulz(&u, rows, cols);
    let scale = lr * (rows as f32 / cols as f32).max(1.0).sqrt();
    for i in 0..rows * cols {
        w[i] = w[i] * (1.0 - lr * wd) - scale * x[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// Five steps of the plain loops and of the fused, chunked, threaded AdamW agree to float
    /// rounding, with weight decay on the matrices only and on everything, and skip Muon's
    /// matrices as the fused one does.
    #[test]
    fn adamw_in_plain_loops_is_the_fused_one() {
        let mut model_cfg = crate::config::preset("fast").unwrap().model;
        model_cfg.vocab_size = 11;
        model_cfg.n_embd = 16;
        model_cfg.n_head = 2;
        model_cfg.n_layer = 2;
        let layout = ParamLayout::new(&model_cfg);
        let n = layout.len;
        let mut rng = Rng::new(5);
        for (decay_on, optimizer) in [
            (DecayOn::Matrices, OptimizerKind::Adamw),
            (DecayOn::All, OptimizerKind::Adamw),
            (DecayOn::Matrices, OptimizerKind::Muon),
        ] {
            let cfg = TrainConfig {
                decay_on,
                optimizer,
                weight_decay: 0.1,
                beta2: 0.99,
                ..crate::config::preset("nanogpt-cpu").unwrap().train
            };
            let start: Vec<f32> = (0..n).map(|_| rng.normal() * 0.1).collect();
            let mut fast = crate::optimizer::AdamW::new(n);
            let mut fast_p = start.clone();
            let (mut m, mut v, mut p) = (vec![0.0; n], vec![0.0; n], start.clone());
            for t in 1..=5u64 {
                let g: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
                let (lr, scale) = (1e-2 / t as f32, 0.7);
                fast.update(&mut fast_p, &g, &layout, &cfg, lr, scale, false);
                adamw(&mut p, &g, &mut m, &mut v, t, &layout, &cfg, lr, scale);
            }
            for spec in &layout.specs {
                let muon_matrix = optimizer == OptimizerKind::Muon && spec.is_hidden_matrix();
                for i in spec.range() {
                    if muon_matrix {
                        assert_eq!(p[i], start[i], "{}: Muon's, not AdamW's", spec.name);
                    } else {
                        let (a, b) = (p[i], fast_p[i]);
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                            "{}: {a} vs {b}",
                            spec.name
                        );
                    }
                }
            }
        }
    }

    /// After 5 steps every singular value of the result lies near 1 (the speedrun's
    /// coefficients give about 0.7 to 1.2): its Gram matrix X X^T has eigenvalues in about
    /// [0.45, 1.45], checked through its trace and its largest row sum.
    #[test]
    fn newton_schulz_makes_the_singular_values_near_one() {
        let mut rng = Rng::new(3);
        for (n, m) in [(6, 10), (12, 5)] {
            // Very different scales per row: singular values spread over a factor of 100.
            let u: Vec<f32> = (0..n * m)
                .map(|i| rng.normal() * 10f32.powi((i / m) as i32 % 3))
                .collect();
            let x = newton_schulz(&u, n, m);
            let (a, b) = (n.min(m), n.max(m));
            let xt = if n > m {
                transpose(&x, n, m)
            } else {
                x.clone()
            };
            let gram = matmul(&xt, &transpose(&xt, a, b), a, b, a);
            let trace: f32 = (0..a).map(|i| gram[i * a + i]).sum();
            assert!(
                (trace / a as f32 - 1.0).abs() < 0.35,
                "mean squared singular value {}",
                trace / a as f32
            );
            for i in 0..a {
                assert!(
                    gram[i * a + i] > 0.4 && gram[i * a + i] < 1.5,
                    "{}",
                    gram[i * a + i]
                );
            }
        }
    }
}
