//! Elementwise nonlinearities of the feed-forward layer, any shape.
//!
//! ReLU: `y = max(0, x)`, `dy/dx = [x > 0]`.
//!
//! GELU, tanh approximation (GPT-2, llm.c; PyTorch's `gelu(x, approximate="tanh")`):
//! `y = x/2 * (1 + tanh(u))` with `u = sqrt(2/pi) * (x + 0.044715 x^3)`.
//! Since `(1 + tanh u) / 2 = sigmoid(2u) = s`, this is `y = x s`, computed with one exponential, and
//! `dy/dx = s + x s (1 - s) * 2 du/dx` with `du/dx = sqrt(2/pi) * (1 + 3 * 0.044715 x^2)`.

use super::simd_fn;
use crate::config::Activation;
use rayon::prelude::*;

const CHUNK: usize = 1 << 13;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const GELU_CUBIC: f32 = 0.044_715;

/// `sigmoid(2u) = (1 + tanh u) / 2` for GELU's `u`.
#[inline(always)]
fn gelu_gate(x: f32) -> f32 {
    let u = SQRT_2_OVER_PI * (x + GELU_CUBIC * x * x * x);
    1.0 / (1.0 + super::exp(-2.0 * u))
}

#[inline(always)]
fn gelu(x: f32) -> f32 {
    x * gelu_gate(x)
}

#[inline(always)]
fn gelu_grad(x: f32) -> f32 {
    let s = gelu_gate(x);
    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
    s + x * s * (1.0 - s) * 2.0 * du
}

simd_fn! {
    fn forward_chunk(kind: Activation, out: &mut [f32], inp: &[f32]) {
        match kind {
            Activation::Relu => {
                for (o, &x) in out.iter_mut().zip(inp) {
                    *o = x.max(0.0);
                }
            }
            Activation::Gelu => {
                for (o, &x) in out.iter_mut().zip(inp) {
                    *o = gelu(x);
                }
            }
        }
    }
}

simd_fn! {
    fn backward_chunk(kind: Activation, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
        match kind {
            Activation::Relu => {
                for ((d, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
                    *d += if x > 0.0 { g } else { 0.0 };
                }
            }
            Activation::Gelu => {
                for ((d, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
                    *d += gelu_grad(x) * g;
                }
            }
        }
    }
}

simd_fn! {
    fn backward_in_place_chunk(kind: Activation, d: &mut [f32], inp: &[f32]) {
        match kind {
            Activation::Relu => {
                for (d, &x) in d.iter_mut().zip(inp) {
                    *d = if x > 0.0 { *d } else { 0.0 };
                }
            }
            Activation::Gelu => {
                for (d, &x) in d.iter_mut().zip(inp) {
                    *d *= gelu_grad(x);
                }
            }
        }
    }
}

simd_fn! {
    fn forward_with_grad_chunk(kind: Activation, out: &mut [f32], grad: &mut [f32], inp: &[f32]) {
        match kind {
            Activation::Relu => {
                for ((o, g), &x) in out.iter_mut().zip(grad.iter_mut()).zip(inp) {
                    *o = x.max(0.0);
                    *g = if x > 0.0 { 1.0 } else { 0.0 };
                }
            }
            Activation::Gelu => {
                for ((o, g), &x) in out.iter_mut().zip(grad.iter_mut()).zip(inp) {
                    // One exponential for both.
                    let s = gelu_gate(x);
                    let du = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_CUBIC * x * x);
                    *o = x * s;
                    *g = s + x * s * (1.0 - s) * 2.0 * du;
                }
            }
        }
    }
}

simd_fn! {
    fn scale_chunk(d: &mut [f32], by: &[f32]) {
        for (d, &b) in d.iter_mut().zip(by) {
            *d *= b;
        }
    }
}

/// `out = f(inp)` and `grad = f'(inp)` in one pass: the backward pass needs both the activation
/// (for the next layer's weight gradient) and its derivative, and for GELU they share the costly
/// exponential.
pub fn forward_with_grad(kind: Activation, out: &mut [f32], grad: &mut [f32], inp: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Activation, true);
    out.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks_mut(CHUNK).zip(inp.par_chunks(CHUNK)))
        .with_min_len(super::min_items(CHUNK * 40))
        .for_each(|(o, (g, x))| forward_with_grad_chunk(kind, o, g, x));
}

/// `d *= grad`: the chain rule through an activation whose derivative [`forward_with_grad`]
/// computed.
pub fn apply_grad(d: &mut [f32], grad: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Activation, true);
    d.par_chunks_mut(CHUNK)
        .zip(grad.par_chunks(CHUNK))
        .with_min_len(super::min_items(CHUNK * 2))
        .for_each(|(d, g)| scale_chunk(d, g));
}

/// `out = f(inp)`.
pub fn forward(kind: Activation, out: &mut [f32], inp: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Activation, false);
    out.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .with_min_len(super::min_items(CHUNK * 20))
        .for_each(|(o, x)| forward_chunk(kind, o, x));
}

/// `dinp += f'(inp) * dout`.
pub fn backward(kind: Activation, dinp: &mut [f32], dout: &[f32], inp: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Activation, true);
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK).zip(inp.par_chunks(CHUNK)))
        .with_min_len(super::min_items(CHUNK * 30))
        .for_each(|(d, (g, x))| backward_chunk(kind, d, g, x));
}

/// `d = f'(inp) * d`: turns the gradient of the output into that of the input, in place (the
/// backward pass keeps one buffer for both).
pub fn backward_in_place(kind: Activation, d: &mut [f32], inp: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Activation, true);
    d.par_chunks_mut(CHUNK)
        .zip(inp.par_chunks(CHUNK))
        .with_min_len(super::min_items(CHUNK * 30))
        .for_each(|(d, x)| backward_in_place_chunk(kind, d, x));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(2);
        for kind in [Activation::Relu, Activation::Gelu] {
            let n = 64;
            // Keep ReLU inputs away from the kink at 0, where the derivative is undefined.
            let x: Vec<f32> = random_vec(n, &mut rng, 2.0)
                .into_iter()
                .map(|v| if v.abs() < 0.1 { v + 0.3 } else { v })
                .collect();
            let w = random_vec(n, &mut rng, 1.0);
            let mut dx = vec![0.0; n];
            backward(kind, &mut dx, &w, &x);
            let mut in_place = w.clone();
            backward_in_place(kind, &mut in_place, &x);
            assert_eq!(dx, in_place);
            // The fused forward gives the same activation and a derivative that, applied to the
            // output gradient, gives the same input gradient.
            let (mut y, mut y2, mut g) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            forward(kind, &mut y, &x);
            forward_with_grad(kind, &mut y2, &mut g, &x);
            assert_eq!(y, y2);
            let mut applied = w.clone();
            apply_grad(&mut applied, &g);
            for (a, b) in applied.iter().zip(&dx) {
                assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
            }
            check(
                &format!("{kind:?}"),
                &x,
                &dx,
                |x| {
                    let mut y = vec![0.0; n];
                    forward(kind, &mut y, x);
                    weighted_sum(&y, &w)
                },
                1e-3,
            );
        }
    }

    #[test]
    fn known_values() {
        let mut y = [0.0; 3];
        forward(Activation::Gelu, &mut y, &[0.0, 1.0, -1.0]);
        // torch.nn.functional.gelu(torch.tensor([0., 1., -1.]), approximate="tanh")
        assert!((y[0]).abs() < 1e-7);
        assert!((y[1] - 0.841_192).abs() < 1e-5, "{}", y[1]);
        assert!((y[2] + 0.158_808).abs() < 1e-5, "{}", y[2]);
        forward(Activation::Relu, &mut y, &[-2.0, 0.5, 0.0]);
        assert_eq!(y, [0.0, 0.5, 0.0]);
    }
}
