//! Elementwise nonlinearities of the feed-forward layer, any shape.
//!
//! ReLU: `y = max(0, x)`, `dy/dx = [x > 0]`.
//!
//! ReLU squared (Primer, So et al. 2021; the modded-nanogpt speedrun): `y = max(0, x)^2`,
//! `dy/dx = 2 max(0, x)`.
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
            Activation::Relu2 => {
                for (o, &x) in out.iter_mut().zip(inp) {
                    let r = x.max(0.0);
                    *o = r * r;
                }
            }
            Activation::Gelu => {
                let done = vector::gelu_forward(out, inp, None);
                for (o, &x) in out[done..].iter_mut().zip(&inp[done..]) {
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
            Activation::Relu2 => {
                for ((d, &g), &x) in dinp.iter_mut().zip(dout).zip(inp) {
                    *d += 2.0 * x.max(0.0) * g;
                }
            }
            Activation::Gelu => {
                let done = vector::gelu_backward(dinp, Some(dout), inp);
                for ((d, &g), &x) in dinp[done..].iter_mut().zip(&dout[done..]).zip(&inp[done..]) {
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
            Activation::Relu2 => {
                for (d, &x) in d.iter_mut().zip(inp) {
                    *d *= 2.0 * x.max(0.0);
                }
            }
            Activation::Gelu => {
                let done = vector::gelu_backward(d, None, inp);
                for (d, &x) in d[done..].iter_mut().zip(&inp[done..]) {
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
            Activation::Relu2 => {
                for ((o, g), &x) in out.iter_mut().zip(grad.iter_mut()).zip(inp) {
                    let r = x.max(0.0);
                    *o = r * r;
                    *g = 2.0 * r;
                }
            }
            Activation::Gelu => {
                let done = vector::gelu_forward(out, inp, Some(&mut *grad));
                let (out, grad, inp) = (&mut out[done..], &mut grad[done..], &inp[done..]);
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

/// GELU on eight lanes at a time ([`crate::kernels::simd`]: AVX2, NEON or SIMD128). Each
/// function handles a prefix of its slices (whole groups of eight) and returns its length; the
/// scalar code above finishes the rest.
mod vector {
    use super::{GELU_CUBIC, SQRT_2_OVER_PI};
    use crate::kernels::simd::Lanes;
    use crate::kernels::simd_fn;

    /// Vectors handled per loop turn: the exponential is a long dependent chain, and four
    /// independent ones keep the floating-point units busy. (Plain loops, not a closure per
    /// vector: a closure is a function of its own, compiled without the caller's AVX2.)
    const UNROLL: usize = 4;

    /// `s = sigmoid(2u) = 1 / (1 + e^(-2u))` with `-2u = x (-2c - 2c a x^2)`.
    #[inline(always)]
    fn gate<V: Lanes>(x: V) -> V {
        let x2 = x.mul(x);
        let minus_2u = x.mul(x2.mul_add(
            V::splat(-2.0 * SQRT_2_OVER_PI * GELU_CUBIC),
            V::splat(-2.0 * SQRT_2_OVER_PI),
        ));
        let one = V::splat(1.0);
        one.div(one.add(minus_2u.exp()))
    }

    /// `gelu'(x) = s + x s (1 - s) 2 du/dx = s (1 + (1 - s) x (2c + 6c a x^2))`.
    #[inline(always)]
    fn slope<V: Lanes>(x: V, s: V) -> V {
        let x2 = x.mul(x);
        let t = x.mul(x2.mul_add(
            V::splat(6.0 * SQRT_2_OVER_PI * GELU_CUBIC),
            V::splat(2.0 * SQRT_2_OVER_PI),
        ));
        let one = V::splat(1.0);
        s.mul(one.sub(s).mul_add(t, one))
    }

    simd_fn! {
        lanes V;
        /// `out = gelu(inp)`, and with `grad` also `grad = gelu'(inp)`.
        pub fn gelu_forward(out: &mut [f32], inp: &[f32], grad: Option<&mut [f32]>) -> usize {
            let mut n = out.len().min(inp.len());
            let g = match grad {
                Some(g) => {
                    n = n.min(g.len());
                    g.as_mut_ptr()
                }
                None => std::ptr::null_mut(),
            };
            let (po, pi) = (out.as_mut_ptr(), inp.as_ptr());
            let mut i = 0;
            while i + 8 <= n {
                let group = if i + 8 * UNROLL <= n { UNROLL } else { 1 };
                for j in 0..group {
                    let at = i + 8 * j;
                    // SAFETY: every access is 8 floats below n of the slices it touches.
                    unsafe {
                        let x = V::load(pi.add(at));
                        let s = gate(x);
                        x.mul(s).store(po.add(at));
                        if !g.is_null() {
                            slope(x, s).store(g.add(at));
                        }
                    }
                }
                i += 8 * group;
            }
            i
        }
    }

    simd_fn! {
        lanes V;
        /// With `dout`, `d += gelu'(inp) * dout`; without, `d *= gelu'(inp)`.
        pub fn gelu_backward(d: &mut [f32], dout: Option<&[f32]>, inp: &[f32]) -> usize {
            let mut n = d.len().min(inp.len());
            let pg = match dout {
                Some(g) => {
                    n = n.min(g.len());
                    g.as_ptr()
                }
                None => std::ptr::null(),
            };
            let (pd, pi) = (d.as_mut_ptr(), inp.as_ptr());
            let mut i = 0;
            while i + 8 <= n {
                let group = if i + 8 * UNROLL <= n { UNROLL } else { 1 };
                for j in 0..group {
                    let at = i + 8 * j;
                    // SAFETY: every access is 8 floats below n of the slices it touches.
                    unsafe {
                        let x = V::load(pi.add(at));
                        let k = slope(x, gate(x));
                        let dv = V::load(pd.add(at));
                        let v = if pg.is_null() {
                            dv.mul(k)
                        } else {
                            k.mul_add(V::load(pg.add(at)), dv)
                        };
                        v.store(pd.add(at));
                    }
                }
                i += 8 * group;
            }
            i
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
        for kind in [Activation::Relu, Activation::Gelu, Activation::Relu2] {
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
        forward(Activation::Relu2, &mut y, &[-2.0, 0.5, 3.0]);
        assert_eq!(y, [0.0, 0.25, 9.0]);
    }

    #[test]
    fn matches_the_reference_activations() {
        let mut rng = Rng::new(22);
        // Long enough for the 8-wide vector loops and a scalar tail.
        let n = 8 * 33 + 5;
        let x = random_vec(n, &mut rng, 3.0);
        let dy = random_vec(n, &mut rng, 1.0);
        for kind in [Activation::Relu, Activation::Gelu, Activation::Relu2] {
            let (mut y, mut want) = (vec![0.0; n], vec![0.0; n]);
            forward(kind, &mut y, &x);
            crate::reference::layers::activation_forward(kind, &mut want, &x);
            assert_close(&format!("{kind:?}"), &y, &want, 1e-6);
            let (mut dx, mut want_dx) = (vec![0.5; n], vec![0.5; n]);
            backward(kind, &mut dx, &dy, &x);
            crate::reference::layers::activation_backward(kind, &mut want_dx, &dy, &x);
            assert_close(&format!("{kind:?} backward"), &dx, &want_dx, 1e-5);
        }
    }
}
