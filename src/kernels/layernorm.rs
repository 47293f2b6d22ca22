//! LayerNorm over the last dimension: for each row x of length C,
//! `mu = mean(x)`, `sigma^2 = mean((x - mu)^2)`, `rstd = 1 / sqrt(sigma^2 + eps)`,
//! `xhat = (x - mu) * rstd`, `y = xhat * weight + bias`.
//!
//! Shapes: `inp`, `out` (N, C) with N = B*T rows; `weight` (C); `bias` (C), or absent (`bias =
//! false`: no shift); `mean`, `rstd` (N), cached for the backward pass.
//!
//! Backward, with `g = dy * weight`:
//! `dbias += sum_rows dy`, `dweight += sum_rows dy * xhat`,
//! `dx += rstd * (g - mean(g) - xhat * mean(g * xhat))`
//! (the two means remove the components of g that the normalisation itself cancels).

use super::simd_fn;
use crate::kernels::simd::Lanes;
use crate::layout::NORM_EPS;
use rayon::prelude::*;

/// Columns per parallel task when reducing the parameter gradients over rows.
const COLUMN_BLOCK: usize = 64;

simd_fn! {
    /// One row: normalise, scale, shift; returns (mean, rstd).
    fn forward_row(y: &mut [f32], x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> (f32, f32) {
        let c = x.len() as f32;
        let mu = super::sum(x) / c;
        let mut acc = [0.0f32; 8];
        let chunks = x.chunks_exact(8);
        let mut var: f32 = chunks.remainder().iter().map(|&v| (v - mu) * (v - mu)).sum();
        for ch in chunks {
            for j in 0..8 {
                acc[j] += (ch[j] - mu) * (ch[j] - mu);
            }
        }
        var += acc.iter().sum::<f32>();
        let rs = 1.0 / (var / c + NORM_EPS).sqrt();
        normalize_row(y, x, weight, bias, mu, rs);
        (mu, rs)
    }
}

/// The parameter gradients a row adds to: `dweight`, and `dbias` where the norm has a bias.
type ParamGrads<'a> = (&'a mut [f32], Option<&'a mut [f32]>);

simd_fn! {
    lanes V;
    /// One row of the input gradient, `dx += rstd * (g - mean(g) - xhat * mean(g * xhat))` with
    /// `g = dy * weight`, and with `params` the row's share of the parameter gradients
    /// (`dweight += dy * xhat`, `dbias += dy`), on 8 lanes at a time: one pass for the two means
    /// and the parameter gradients, one for the input gradient.
    fn backward_row(dx: &mut [f32], dy: &[f32], x: &[f32], weight: &[f32], mu: f32, rs: f32, params: Option<ParamGrads>) {
        backward_row_with::<V>(dx, dy, x, weight, mu, rs, params)
    }
}

/// [`backward_row`] on the lanes `V`.
#[inline(always)]
fn backward_row_with<V: Lanes>(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    weight: &[f32],
    mu: f32,
    rs: f32,
    mut params: Option<ParamGrads>,
) {
    let c = x.len();
    assert!(dx.len() == c && dy.len() == c && weight.len() == c);
    if let Some((dw, db)) = params.as_ref() {
        assert!(dw.len() == c && db.as_ref().is_none_or(|db| db.len() == c));
    }
    let c8 = c / 8 * 8;
    let (px, pdy, pw, pdx) = (x.as_ptr(), dy.as_ptr(), weight.as_ptr(), dx.as_mut_ptr());
    let (vmu, vrs) = (V::splat(mu), V::splat(rs));
    let (mut acc_g, mut acc_gx) = (V::zero(), V::zero());
    // SAFETY: every access is 8 floats below c of slices of length c (checked above).
    unsafe {
        let mut i = 0;
        while i < c8 {
            let d = V::load(pdy.add(i));
            let xhat = V::load(px.add(i)).sub(vmu).mul(vrs);
            let g = d.mul(V::load(pw.add(i)));
            acc_g = acc_g.add(g);
            acc_gx = g.mul_add(xhat, acc_gx);
            if let Some((dw, db)) = params.as_mut() {
                let pdw = dw.as_mut_ptr().add(i);
                d.mul_add(xhat, V::load(pdw)).store(pdw);
                if let Some(db) = db {
                    let pdb = db.as_mut_ptr().add(i);
                    d.add(V::load(pdb)).store(pdb);
                }
            }
            i += 8;
        }
    }
    let (mut sum_g, mut sum_gx) = (acc_g.sum(), acc_gx.sum());
    for i in c8..c {
        let xhat = (x[i] - mu) * rs;
        let g = dy[i] * weight[i];
        sum_g += g;
        sum_gx += g * xhat;
        if let Some((dw, db)) = params.as_mut() {
            dw[i] += dy[i] * xhat;
            if let Some(db) = db {
                db[i] += dy[i];
            }
        }
    }
    let (mean_g, mean_gx) = (sum_g / c as f32, sum_gx / c as f32);
    let (vmg, vmgx) = (V::splat(mean_g), V::splat(mean_gx));
    // SAFETY: as above.
    unsafe {
        let mut i = 0;
        while i < c8 {
            let xhat = V::load(px.add(i)).sub(vmu).mul(vrs);
            let g = V::load(pdy.add(i)).mul(V::load(pw.add(i)));
            // g - mean_g - xhat * mean_gx
            let t = xhat.neg_mul_add(vmgx, g.sub(vmg));
            vrs.mul_add(t, V::load(pdx.add(i))).store(pdx.add(i));
            i += 8;
        }
    }
    for i in c8..c {
        let xhat = (x[i] - mu) * rs;
        dx[i] += rs * (dy[i] * weight[i] - mean_g - xhat * mean_gx);
    }
}

/// The whole backward pass on one thread, row by row.
#[allow(clippy::too_many_arguments)]
fn backward_fused(
    dinp: &mut [f32],
    dweight: &mut [f32],
    mut dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
) {
    let c = weight.len();
    for (((dx, dy), x), (&mu, &rs)) in dinp
        .chunks_exact_mut(c)
        .zip(dout.chunks_exact(c))
        .zip(inp.chunks_exact(c))
        .zip(mean.iter().zip(rstd))
    {
        backward_row(
            dx,
            dy,
            x,
            weight,
            mu,
            rs,
            Some((&mut *dweight, dbias.as_deref_mut())),
        );
    }
}

simd_fn! {
    /// Parameter gradients of a block of columns, summed over all rows.
    fn param_grad_columns(dw: &mut [f32], db: Option<&mut [f32]>, dout: &[f32], inp: &[f32], mean: &[f32], rstd: &[f32], c: usize, c0: usize) {
        let mut db = db;
        let width = dw.len();
        for row in 0..mean.len() {
            let (mu, rs) = (mean[row], rstd[row]);
            let dy = &dout[row * c + c0..row * c + c0 + width];
            let x = &inp[row * c + c0..row * c + c0 + width];
            for ((dw, &dy), &x) in dw.iter_mut().zip(dy).zip(x) {
                *dw += dy * (x - mu) * rs;
            }
            if let Some(db) = db.as_deref_mut() {
                for (db, &dy) in db.iter_mut().zip(dy) {
                    *db += dy;
                }
            }
        }
    }
}

pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, false);
    let c = channels;
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(super::min_items(8 * c))
        .for_each(|((y, x), (m, r))| {
            (*m, *r) = forward_row(y, x, weight, bias);
        });
}

/// `out = (inp - mean) * rstd * weight + bias` with the statistics a forward pass computed:
/// recomputes the forward output bit for bit, so the backward pass need not keep it.
pub fn normalize(
    out: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    mean: &[f32],
    rstd: &[f32],
    channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, true);
    let c = channels;
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(super::min_items(4 * c))
        .for_each(|((y, x), (&mu, &rs))| normalize_row(y, x, weight, bias, mu, rs));
}

simd_fn! {
    fn normalize_row(y: &mut [f32], x: &[f32], weight: &[f32], bias: Option<&[f32]>, mu: f32, rs: f32) {
        match bias {
            Some(bias) => {
                for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                    *y = (x - mu) * rs * w + b;
                }
            }
            None => {
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(weight) {
                    *y = (x - mu) * rs * w;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::LayerNorm, true);
    let c = channels;
    let rows = mean.len();
    if super::is_sequential() {
        // One thread: input and parameter gradients in a single pass over the rows.
        return backward_fused(dinp, dweight, dbias, dout, inp, weight, mean, rstd);
    }
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(super::min_items(10 * c))
        .for_each(|((dx, (dy, x)), (&mu, &rs))| backward_row(dx, dy, x, weight, mu, rs, None));
    // Parameter gradients sum over rows; each task owns a block of columns.
    let min_len = super::min_items(4 * rows * COLUMN_BLOCK);
    let columns = dweight.par_chunks_mut(COLUMN_BLOCK).enumerate();
    match dbias {
        Some(dbias) => columns
            .zip(dbias.par_chunks_mut(COLUMN_BLOCK))
            .with_min_len(min_len)
            .for_each(|((blk, dw), db)| {
                param_grad_columns(dw, Some(db), dout, inp, mean, rstd, c, blk * COLUMN_BLOCK)
            }),
        None => columns.with_min_len(min_len).for_each(|(blk, dw)| {
            param_grad_columns(dw, None, dout, inp, mean, rstd, c, blk * COLUMN_BLOCK)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::reference::layers as reference;
    use crate::rng::Rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(5);
        let (n, c) = (6, 80);
        let x: Vec<f32> = random_vec(n * c, &mut rng, 1.0)
            .iter()
            .map(|v| v + 0.5)
            .collect();
        let wt: Vec<f32> = random_vec(c, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let bs = random_vec(c, &mut rng, 0.5);
        let w = random_vec(n * c, &mut rng, 1.0);
        let f = |x: &[f32], wt: &[f32], bs: &[f32]| {
            let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            forward(&mut y, &mut m, &mut r, x, wt, Some(bs), c);
            weighted_sum(&y, &w)
        };
        let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        forward(&mut y, &mut m, &mut r, &x, &wt, Some(&bs), c);
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        backward(&mut dx, &mut dw, Some(&mut db), &w, &x, &wt, &m, &r, c);
        check("dx", &x, &dx, |v| f(v, &wt, &bs), 2e-3);
        check("dweight", &wt, &dw, |v| f(&x, v, &bs), 2e-3);
        check("dbias", &bs, &db, |v| f(&x, &wt, v), 2e-3);
        // The single-pass version used inside data-parallel shards gives the same gradients.
        let (mut dx1, mut dw1, mut db1) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        crate::kernels::sequentially(|| {
            backward(&mut dx1, &mut dw1, Some(&mut db1), &w, &x, &wt, &m, &r, c)
        });
        for (a, b) in dx1
            .iter()
            .chain(&dw1)
            .chain(&db1)
            .zip(dx.iter().chain(&dw).chain(&db))
        {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// Without a bias (`bias = false`): the shift is absent, the gradients of the input and the
    /// gain still match finite differences, on one thread and on several.
    #[test]
    fn gradient_without_bias_matches_finite_differences() {
        let mut rng = Rng::new(25);
        let (n, c) = (5, 72);
        let x = random_vec(n * c, &mut rng, 1.0);
        let wt: Vec<f32> = random_vec(c, &mut rng, 0.5)
            .iter()
            .map(|v| v + 1.0)
            .collect();
        let w = random_vec(n * c, &mut rng, 1.0);
        let f = |x: &[f32], wt: &[f32]| {
            let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
            forward(&mut y, &mut m, &mut r, x, wt, None, c);
            weighted_sum(&y, &w)
        };
        let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        forward(&mut y, &mut m, &mut r, &x, &wt, None, c);
        for fused in [false, true] {
            let (mut dx, mut dw) = (vec![0.0; n * c], vec![0.0; c]);
            let mut run = || backward(&mut dx, &mut dw, None, &w, &x, &wt, &m, &r, c);
            match fused {
                true => crate::kernels::sequentially(run),
                false => run(),
            }
            check("dx", &x, &dx, |v| f(v, &wt), 2e-3);
            check("dweight", &wt, &dw, |v| f(&x, v), 2e-3);
        }
    }

    /// The row on this CPU's lanes (AVX2, NEON) and on plain arrays agree, on a width with a
    /// tail that is not a multiple of 8.
    #[test]
    fn vector_and_portable_rows_agree() {
        let mut rng = Rng::new(15);
        for c in [37, 64] {
            let x = random_vec(c, &mut rng, 1.0);
            let dy = random_vec(c, &mut rng, 1.0);
            let w = random_vec(c, &mut rng, 1.0);
            let (mu, rs) = (0.1, 1.3);
            let run = |portable: bool| {
                let (mut dx, mut dw, mut db) = (vec![0.5; c], vec![0.25; c], vec![-0.5; c]);
                let params = Some((&mut dw[..], Some(&mut db[..])));
                match portable {
                    true => backward_row_with::<crate::kernels::simd::Scalar>(
                        &mut dx, &dy, &x, &w, mu, rs, params,
                    ),
                    false => backward_row(&mut dx, &dy, &x, &w, mu, rs, params),
                }
                [dx, dw, db].concat()
            };
            for (a, b) in run(false).iter().zip(&run(true)) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "width {c}: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn normalize_reproduces_the_forward_output_exactly() {
        let mut rng = Rng::new(6);
        let (n, c) = (5, 37);
        let x = random_vec(n * c, &mut rng, 2.0);
        let w = random_vec(c, &mut rng, 1.0);
        let b = random_vec(c, &mut rng, 1.0);
        let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        forward(&mut y, &mut m, &mut r, &x, &w, Some(&b), c);
        let mut again = vec![0.0; n * c];
        normalize(&mut again, &x, &w, Some(&b), &m, &r, c);
        assert_eq!(y, again);
    }

    #[test]
    fn output_rows_are_normalised() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 3.0 - 7.0).collect();
        let (mut y, mut m, mut r) = (vec![0.0; 16], vec![0.0; 2], vec![0.0; 2]);
        forward(&mut y, &mut m, &mut r, &x, &[1.0; 8], None, 8);
        for row in y.chunks(8) {
            let mean: f32 = row.iter().sum::<f32>() / 8.0;
            let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 8.0;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
    }

    #[test]
    fn matches_the_reference_layernorm() {
        let mut rng = Rng::new(16);
        let (b, t, c) = (3, 5, 37);
        let x = random_vec(b * t * c, &mut rng, 2.0);
        let w = random_vec(c, &mut rng, 1.0);
        let bias = random_vec(c, &mut rng, 1.0);
        let dy = random_vec(b * t * c, &mut rng, 1.0);
        let n = b * t;
        let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        forward(&mut y, &mut m, &mut r, &x, &w, Some(&bias), c);
        let (mut want_y, mut want_m, mut want_r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        reference::layernorm_forward(
            &mut want_y,
            &mut want_m,
            &mut want_r,
            &x,
            &w,
            Some(&bias),
            b,
            t,
            c,
        );
        assert_close("out", &y, &want_y, 1e-6);
        assert_close("mean", &m, &want_m, 1e-6);
        assert_close("rstd", &r, &want_r, 1e-6);
        let grads = |fast: bool| {
            let (mut dx, mut dw, mut db) = (vec![0.5; n * c], vec![0.25; c], vec![-0.5; c]);
            match fast {
                true => backward(&mut dx, &mut dw, Some(&mut db), &dy, &x, &w, &m, &r, c),
                false => reference::layernorm_backward(
                    &mut dx,
                    &mut dw,
                    Some(&mut db),
                    &dy,
                    &x,
                    &w,
                    &m,
                    &r,
                    b,
                    t,
                    c,
                ),
            }
            (dx, dw, db)
        };
        let ((dx, dw, db), (want_dx, want_dw, want_db)) = (grads(true), grads(false));
        assert_close("dinp", &dx, &want_dx, 1e-5);
        assert_close("dweight", &dw, &want_dw, 1e-5);
        assert_close("dbias", &db, &want_db, 1e-5);
    }
}
