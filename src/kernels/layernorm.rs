//! LayerNorm over the last dimension: for each row x of length C,
//! `mu = mean(x)`, `sigma^2 = mean((x - mu)^2)`, `rstd = 1 / sqrt(sigma^2 + eps)`,
//! `xhat = (x - mu) * rstd`, `y = xhat * weight + bias`.
//!
//! Shapes: `inp`, `out` (N, C) with N = B*T rows; `weight`, `bias` (C); `mean`, `rstd` (N), cached
//! for the backward pass.
//!
//! Backward, with `g = dy * weight`:
//! `dbias += sum_rows dy`, `dweight += sum_rows dy * xhat`,
//! `dx += rstd * (g - mean(g) - xhat * mean(g * xhat))`
//! (the two means remove the components of g that the normalisation itself cancels).

use rayon::prelude::*;

pub const EPS: f32 = 1e-5;

/// Columns per parallel task when reducing the parameter gradients over rows.
const COLUMN_BLOCK: usize = 64;

pub fn forward(
    out: &mut [f32],
    mean: &mut [f32],
    rstd: &mut [f32],
    inp: &[f32],
    weight: &[f32],
    bias: &[f32],
    channels: usize,
) {
    let c = channels;
    out.par_chunks_mut(c)
        .zip(inp.par_chunks(c))
        .zip(mean.par_iter_mut().zip(rstd.par_iter_mut()))
        .with_min_len(super::min_items(8 * c))
        .for_each(|((y, x), (m, r))| {
            let mu = x.iter().sum::<f32>() / c as f32;
            let var = x.iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>() / c as f32;
            let rs = 1.0 / (var + EPS).sqrt();
            for (((y, &x), &w), &b) in y.iter_mut().zip(x).zip(weight).zip(bias) {
                *y = (x - mu) * rs * w + b;
            }
            *m = mu;
            *r = rs;
        });
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    dinp: &mut [f32],
    dweight: &mut [f32],
    dbias: &mut [f32],
    dout: &[f32],
    inp: &[f32],
    weight: &[f32],
    mean: &[f32],
    rstd: &[f32],
    channels: usize,
) {
    let c = channels;
    let rows = mean.len();
    dinp.par_chunks_mut(c)
        .zip(dout.par_chunks(c).zip(inp.par_chunks(c)))
        .zip(mean.par_iter().zip(rstd.par_iter()))
        .with_min_len(super::min_items(10 * c))
        .for_each(|((dx, (dy, x)), (&mu, &rs))| {
            let (mut mean_g, mut mean_gx) = (0.0f32, 0.0f32);
            for ((&dy, &x), &w) in dy.iter().zip(x).zip(weight) {
                let g = dy * w;
                mean_g += g;
                mean_gx += g * (x - mu) * rs;
            }
            mean_g /= c as f32;
            mean_gx /= c as f32;
            for (((dx, &dy), &x), &w) in dx.iter_mut().zip(dy).zip(x).zip(weight) {
                let xhat = (x - mu) * rs;
                *dx += rs * (dy * w - mean_g - xhat * mean_gx);
            }
        });
    // Parameter gradients sum over rows; each task owns a block of columns.
    dweight
        .par_chunks_mut(COLUMN_BLOCK)
        .zip(dbias.par_chunks_mut(COLUMN_BLOCK))
        .enumerate()
        .with_min_len(super::min_items(3 * rows * COLUMN_BLOCK))
        .for_each(|(blk, (dw, db))| {
            let c0 = blk * COLUMN_BLOCK;
            for row in 0..rows {
                let (mu, rs) = (mean[row], rstd[row]);
                let dy = &dout[row * c + c0..row * c + c0 + dw.len()];
                let x = &inp[row * c + c0..row * c + c0 + dw.len()];
                for (((dw, db), &dy), &x) in dw.iter_mut().zip(db.iter_mut()).zip(dy).zip(x) {
                    *dw += dy * (x - mu) * rs;
                    *db += dy;
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
            forward(&mut y, &mut m, &mut r, x, wt, bs, c);
            weighted_sum(&y, &w)
        };
        let (mut y, mut m, mut r) = (vec![0.0; n * c], vec![0.0; n], vec![0.0; n]);
        forward(&mut y, &mut m, &mut r, &x, &wt, &bs, c);
        let (mut dx, mut dw, mut db) = (vec![0.0; n * c], vec![0.0; c], vec![0.0; c]);
        backward(&mut dx, &mut dw, &mut db, &w, &x, &wt, &m, &r, c);
        check("dx", &x, &dx, |v| f(v, &wt, &bs), 2e-3);
        check("dweight", &wt, &dw, |v| f(&x, v, &bs), 2e-3);
        check("dbias", &bs, &db, |v| f(&x, &wt, v), 2e-3);
    }

    #[test]
    fn output_rows_are_normalised() {
        let x: Vec<f32> = (0..16).map(|i| i as f32 * 3.0 - 7.0).collect();
        let (mut y, mut m, mut r) = (vec![0.0; 16], vec![0.0; 2], vec![0.0; 2]);
        forward(&mut y, &mut m, &mut r, &x, &[1.0; 8], &[0.0; 8], 8);
        for row in y.chunks(8) {
            let mean: f32 = row.iter().sum::<f32>() / 8.0;
            let var: f32 = row.iter().map(|v| v * v).sum::<f32>() / 8.0;
            assert!(
                mean.abs() < 1e-5 && (var - 1.0).abs() < 1e-3,
                "{mean} {var}"
            );
        }
    }
}
