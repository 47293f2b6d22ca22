//! Residual connection: `out = a + b` elementwise, any shape.
//!
//! Backward: the sum passes its gradient unchanged to both operands, `da += dout`, `db += dout`.
//! This is why residual networks train deep: the gradient reaches early layers undiminished.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `out = a + b`.
pub fn forward(out: &mut [f32], a: &[f32], b: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Residual, false);
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .with_min_len(2)
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                *o = a + b;
            }
        });
}

/// `dinp += dout`: the backward pass of each operand of the sum (also of an identity copy).
pub fn backward(dinp: &mut [f32], dout: &[f32]) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Residual, true);
    dinp.par_chunks_mut(CHUNK)
        .zip(dout.par_chunks(CHUNK))
        .with_min_len(2)
        .for_each(|(d, g)| {
            for (d, &g) in d.iter_mut().zip(g) {
                *d += g;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(1);
        let n = 40;
        let a = random_vec(n, &mut rng, 1.0);
        let b = random_vec(n, &mut rng, 1.0);
        let w = random_vec(n, &mut rng, 1.0);
        let mut out = vec![0.0; n];
        forward(&mut out, &a, &b);
        assert_eq!(out[3], a[3] + b[3]);
        let (mut da, mut db) = (vec![0.0; n], vec![0.0; n]);
        backward(&mut da, &w);
        backward(&mut db, &w);
        let f = |a: &[f32], b: &[f32]| {
            let mut o = vec![0.0; n];
            forward(&mut o, a, b);
            weighted_sum(&o, &w)
        };
        check("da", &a, &da, |x| f(x, &b), 1e-3);
        check("db", &b, &db, |x| f(&a, x), 1e-3);
    }

    #[test]
    fn matches_the_reference_residual() {
        let mut rng = Rng::new(23);
        let n = 50_000; // several chunks
        let (a, b, d) = (
            random_vec(n, &mut rng, 1.0),
            random_vec(n, &mut rng, 1.0),
            random_vec(n, &mut rng, 1.0),
        );
        let (mut out, mut want) = (vec![0.0; n], vec![0.0; n]);
        forward(&mut out, &a, &b);
        crate::reference::layers::residual_forward(&mut want, &a, &b);
        assert_eq!(out, want);
        let (mut da, mut db) = (vec![0.5; n], vec![0.5; n]);
        backward(&mut da, &d);
        backward(&mut db, &d);
        let (mut want_da, mut want_db) = (vec![0.5; n], vec![0.5; n]);
        crate::reference::layers::residual_backward(&mut want_da, &mut want_db, &d);
        assert_eq!((da, db), (want_da, want_db));
    }
}
