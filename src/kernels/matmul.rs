//! Linear layer: `out = inp @ weight^T + bias`.
//!
//! Shapes: `inp` (N, IC) with N = B*T rows; `weight` (OC, IC), PyTorch's `nn.Linear` layout;
//! `bias` (OC) or absent; `out` (N, OC).
//!
//! Backward:
//! - `dinp += dout @ weight`           (N, OC) x (OC, IC)
//! - `dweight += dout^T @ inp`         (OC, N) x (N, IC)
//! - `dbias += sum over rows of dout`
//!
//! In fp32 all three products go through the `gemm` crate, which picks the widest SIMD kernel the CPU has
//! at run time (AVX-512 with feature `x86-v4`) and splits large products over rayon's threads.
//! Transposes cost nothing: gemm takes row and column strides, so `weight^T` and `dout^T` are the
//! same memory read with swapped strides. A [`Weight`] that carries a bf16 copy
//! ([`super::matmul_bf16::PackedWeight`], the model's in `precision=bf16`) sends all three through
//! [`super::matmul_bf16`] instead (one-row products, generation's, stay fp32).

use super::matmul_bf16::{self, PackedWeight};
use gemm::Parallelism;
use rayon::prelude::*;

/// `dst (m, n) = [dst +] scale * lhs (m, k) @ rhs (k, n)`, every operand addressed by
/// `(row stride, column stride)` from the start of its slice; `accumulate` keeps `dst`'s old
/// value. `parallel` lets gemm split the product over the rayon pool; per-head products inside
/// an already parallel loop pass `false`.
///
/// # Safety
/// Every index `i * rs + j * cs` for i, j within the stated shape must lie inside the
/// corresponding slice; callers derive strides and extents from slice lengths they check.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_strided(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    scale: f32,
    parallel: bool,
) {
    gemm_ptr(
        m,
        n,
        k,
        dst.as_mut_ptr(),
        dst_strides,
        accumulate,
        lhs.as_ptr(),
        lhs_strides,
        rhs.as_ptr(),
        rhs_strides,
        scale,
        parallel,
    );
}

/// Products smaller than this (in multiply-adds) stay on one thread: waking a second one costs
/// more than it saves.
const PARALLEL_PRODUCT: usize = 128 * 128 * 128;

/// [`gemm_strided`] on raw pointers, for destinations that several threads write in disjoint,
/// interleaved parts (one attention head's columns of a (B, T, C) tensor), where a `&mut` slice
/// per thread would alias.
///
/// # Safety
/// As [`gemm_strided`], and no other thread may touch the elements of `dst` this writes.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_ptr(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_strides: (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    lhs_strides: (usize, usize),
    rhs: *const f32,
    rhs_strides: (usize, usize),
    scale: f32,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    // gemm itself keeps small products on one thread; below this size even asking costs more
    // than it saves.
    let parallelism = if parallel
        && !super::is_sequential()
        && rayon::current_num_threads() > 1
        && m * n * k >= PARALLEL_PRODUCT
    {
        Parallelism::Rayon(0)
    } else {
        Parallelism::None
    };
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_strides.1 as isize,
        dst_strides.0 as isize,
        accumulate,
        lhs,
        lhs_strides.1 as isize,
        lhs_strides.0 as isize,
        rhs,
        rhs_strides.1 as isize,
        rhs_strides.0 as isize,
        1.0,
        scale,
        false,
        false,
        false,
        parallelism,
    );
}

/// Rows a block of [`symmetric_product`] takes: small enough that the blocks skip most of the
/// upper triangle, large enough for gemm's kernels to run at speed.
const SYMMETRIC_BLOCK: usize = 64;

/// `dst (n, n) = [dst +] scale * lhs (n, k) @ rhs (k, n)` for a product known to be symmetric
/// (a Gram matrix `X X^T`, or `A A` with A symmetric), `dst` row-major. Each block of 64 rows is
/// computed up to its last column only, and the rest mirrored from below the diagonal: for n =
/// 256, 10 of 16 blocks of the work ((n/64 + 1) / (2 n/64) of it). Muon's Newton-Schulz in fp32
/// takes two such products of its three; on one thread each (one matrix per thread), so
/// `parallel` is off.
///
/// # Safety
/// As [`gemm_strided`], for the shapes stated; `dst` holds n * n values.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn symmetric_product(
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    lhs_strides: (usize, usize),
    rhs: &[f32],
    rhs_strides: (usize, usize),
    scale: f32,
) {
    assert!(dst.len() >= n * n);
    for r0 in (0..n).step_by(SYMMETRIC_BLOCK) {
        let r1 = (r0 + SYMMETRIC_BLOCK).min(n);
        gemm_ptr(
            r1 - r0,
            r1,
            k,
            dst.as_mut_ptr().add(r0 * n),
            (n, 1),
            accumulate,
            lhs.as_ptr().add(r0 * lhs_strides.0),
            lhs_strides,
            rhs.as_ptr(),
            rhs_strides,
            scale,
            false,
        );
    }
    matmul_bf16::mirror_lower(dst, n);
}

/// A linear layer's weight (OC, IC): the fp32 values, and the bf16 copy the products use instead
/// where the model runs in bf16.
#[derive(Clone, Copy)]
pub struct Weight<'a> {
    pub values: &'a [f32],
    pub bf16: Option<&'a PackedWeight>,
}

impl<'a> From<&'a [f32]> for Weight<'a> {
    fn from(values: &'a [f32]) -> Self {
        Weight { values, bf16: None }
    }
}

impl<'a> From<&'a Vec<f32>> for Weight<'a> {
    fn from(values: &'a Vec<f32>) -> Self {
        Weight { values, bf16: None }
    }
}

/// `out = inp @ weight^T + bias`.
pub fn forward<'w>(
    out: &mut [f32],
    inp: &[f32],
    weight: impl Into<Weight<'w>>,
    bias: Option<&[f32]>,
    in_channels: usize,
    out_channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Matmul, false);
    let Weight {
        values: weight,
        bf16,
    } = weight.into();
    let (ic, oc) = (in_channels, out_channels);
    let n = inp.len() / ic;
    assert!(inp.len() == n * ic && out.len() >= n * oc && weight.len() == oc * ic);
    let out = &mut out[..n * oc];
    if let Some(bias) = bias {
        assert_eq!(bias.len(), oc);
    }
    if n == 1 {
        // One row (generation): a matrix-vector product, bound by reading the weights once.
        // Threads split the output features.
        return matvec(out, inp, weight, bias);
    }
    if let Some(packed) = bf16 {
        assert_eq!(packed.shape(), (oc, ic));
        matmul_bf16::forward(out, inp, packed);
    } else {
        // SAFETY: out is (n, oc) row-major, inp (n, ic) row-major, and weight (oc, ic) read as its
        // transpose (ic, oc) with strides (1, ic); the asserts above check the lengths.
        unsafe {
            gemm_strided(
                n,
                oc,
                ic,
                out,
                (oc, 1),
                false,
                inp,
                (ic, 1),
                weight,
                (1, ic),
                1.0,
                true,
            );
        }
    }
    add_bias(out, bias);
}

fn add_bias(out: &mut [f32], bias: Option<&[f32]>) {
    // The bias is added after the product rather than written first for it to accumulate onto:
    // the output is usually cold (last touched a whole step ago), and a product that only writes
    // it misses once per line where one that reads a prefilled output misses twice. 128 -> 512
    // on 384 rows with a cold output: 87 GFLOP/s prefilled, 95 added after.
    if let Some(bias) = bias {
        let oc = bias.len();
        out.par_chunks_mut(oc)
            .with_min_len(super::min_items(oc * 64))
            .for_each(|row| add_row(row, bias));
    }
}

super::simd_fn! {
    fn add_row(row: &mut [f32], bias: &[f32]) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// Output features per task of a matrix-vector product.
const MATVEC_BLOCK: usize = 32;

/// `out = weight @ x + bias` for one input row `x` (IC); `weight` (OC, IC), `out` (OC).
fn matvec(out: &mut [f32], x: &[f32], weight: &[f32], bias: Option<&[f32]>) {
    let ic = x.len();
    out.par_chunks_mut(MATVEC_BLOCK)
        .zip(weight.par_chunks(MATVEC_BLOCK * ic))
        .enumerate()
        .with_min_len(super::min_items(2 * MATVEC_BLOCK * ic))
        .for_each(|(blk, (o, w))| {
            let b = bias.map(|b| &b[blk * MATVEC_BLOCK..blk * MATVEC_BLOCK + o.len()]);
            matvec_block(o, x, w, b)
        });
}

super::simd_fn! {
    fn matvec_block(out: &mut [f32], x: &[f32], weight: &[f32], bias: Option<&[f32]>) {
        for (i, (o, w)) in out.iter_mut().zip(weight.chunks_exact(x.len())).enumerate() {
            *o = super::dot(w, x) + bias.map_or(0.0, |b| b[i]);
        }
    }
}

/// Where [`backward`] puts the gradient of its input or of its weight.
pub enum Grad<'a> {
    /// Not needed: the input is data.
    Skip,
    /// `d += product`, the kernels' usual convention.
    Add(&'a mut [f32]),
    /// `d = product`, for a gradient this is the only contribution to: the caller need not zero
    /// the buffer, nor the product re-read it (a buffer last touched long ago is cold, and
    /// reading it first costs a second miss per line).
    Write(&'a mut [f32]),
}

impl<'a> Grad<'a> {
    /// The buffer and whether the product adds to it.
    fn target(self) -> Option<(&'a mut [f32], bool)> {
        match self {
            Grad::Skip => None,
            Grad::Add(d) => Some((d, true)),
            Grad::Write(d) => Some((d, false)),
        }
    }
}

/// The gradients of `out = inp @ weight^T + bias`: the input's and the weight's as `dinp` and
/// `dweight` say; `dbias` is added to.
#[allow(clippy::too_many_arguments)]
pub fn backward<'w>(
    dinp: Grad,
    dweight: Grad,
    dbias: Option<&mut [f32]>,
    dout: &[f32],
    inp: &[f32],
    weight: impl Into<Weight<'w>>,
    in_channels: usize,
    out_channels: usize,
) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Matmul, true);
    let Weight {
        values: weight,
        bf16,
    } = weight.into();
    let (ic, oc) = (in_channels, out_channels);
    let n = inp.len() / ic;
    assert!(inp.len() == n * ic && dout.len() == n * oc && weight.len() == oc * ic);
    if let Some(packed) = bf16.filter(|_| n > 0) {
        assert_eq!(packed.shape(), (oc, ic));
        if let Some((dinp, accumulate)) = dinp.target() {
            assert_eq!(dinp.len(), n * ic);
            matmul_bf16::input_grad(dinp, accumulate, dout, packed);
        }
        if let Some((dweight, accumulate)) = dweight.target() {
            assert_eq!(dweight.len(), oc * ic);
            matmul_bf16::weight_grad(dweight, accumulate, dout, inp, ic);
        }
        return bias_grad(dbias, dout, oc);
    }
    if let Some((dinp, accumulate)) = dinp.target() {
        assert_eq!(dinp.len(), n * ic);
        // SAFETY: dinp (n, ic) (+)= dout (n, oc) @ weight (oc, ic), all row-major, lengths checked.
        unsafe {
            gemm_strided(
                n,
                ic,
                oc,
                dinp,
                (ic, 1),
                accumulate,
                dout,
                (oc, 1),
                weight,
                (ic, 1),
                1.0,
                true,
            );
        }
    }
    if let Some((dweight, accumulate)) = dweight.target() {
        assert_eq!(dweight.len(), oc * ic);
        // SAFETY: dweight (oc, ic) (+)= dout^T (oc, n) @ inp (n, ic); dout^T is dout read with
        // strides (1, oc). Lengths checked above.
        unsafe {
            gemm_strided(
                oc,
                ic,
                n,
                dweight,
                (ic, 1),
                accumulate,
                dout,
                (1, oc),
                inp,
                (ic, 1),
                1.0,
                true,
            );
        }
    }
    bias_grad(dbias, dout, oc);
}

/// `dbias += sum over rows of dout`.
fn bias_grad(dbias: Option<&mut [f32]>, dout: &[f32], oc: usize) {
    let n = dout.len() / oc;
    if let Some(dbias) = dbias {
        assert_eq!(dbias.len(), oc);
        const COLUMN_BLOCK: usize = 64;
        dbias
            .par_chunks_mut(COLUMN_BLOCK)
            .enumerate()
            .with_min_len(super::min_items(n * COLUMN_BLOCK))
            .for_each(|(blk, db)| {
                let c0 = blk * COLUMN_BLOCK;
                for row in dout.chunks_exact(oc) {
                    super::axpy(db, 1.0, &row[c0..c0 + db.len()]);
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gradcheck::*;
    use crate::reference::layers as reference;
    use crate::rng::Rng;

    fn naive(inp: &[f32], w: &[f32], b: &[f32], ic: usize, oc: usize) -> Vec<f32> {
        let n = inp.len() / ic;
        let mut out = vec![0.0; n * oc];
        for r in 0..n {
            for o in 0..oc {
                let mut s = b[o] as f64;
                for i in 0..ic {
                    s += inp[r * ic + i] as f64 * w[o * ic + i] as f64;
                }
                out[r * oc + o] = s as f32;
            }
        }
        out
    }

    #[test]
    fn forward_matches_naive_product_small_and_large() {
        let mut rng = Rng::new(6);
        for (n, ic, oc) in [(5, 3, 4), (130, 96, 200)] {
            let inp = random_vec(n * ic, &mut rng, 1.0);
            let w = random_vec(oc * ic, &mut rng, 1.0);
            let b = random_vec(oc, &mut rng, 1.0);
            let mut out = vec![0.0; n * oc];
            forward(&mut out, &inp, &w, Some(&b), ic, oc);
            let want = naive(&inp, &w, &b, ic, oc);
            for (x, y) in out.iter().zip(&want) {
                assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
            }
        }
    }

    /// The symmetric products of Newton-Schulz: a Gram matrix `X X^T` (X read row-major and
    /// through a transpose's strides) and `c A A` added to what `dst` holds, at sizes that are
    /// one block, several, and not a multiple of it: the naive sums, and exactly symmetric.
    #[test]
    fn symmetric_products_compute_the_lower_blocks_and_mirror_them() {
        let mut rng = Rng::new(64);
        for (n, k) in [(5, 9), (64, 70), (130, 200), (256, 96)] {
            let x = random_vec(n * k, &mut rng, 1.0);
            let mut gram = vec![f32::NAN; n * n];
            // X (n, k) row-major; then the same X stored as X^T (k, n).
            unsafe { symmetric_product(n, k, &mut gram, false, &x, (k, 1), &x, (1, k), 1.0) };
            let xt: Vec<f32> = (0..k * n).map(|i| x[(i % n) * k + i / n]).collect();
            let mut gram_t = vec![0.0; n * n];
            unsafe { symmetric_product(n, k, &mut gram_t, false, &xt, (1, n), &xt, (n, 1), 1.0) };
            let start = random_vec(n * n, &mut rng, 1.0);
            let mut start_sym = start.clone();
            crate::kernels::matmul_bf16::mirror_lower(&mut start_sym, n);
            let mut square = start_sym.clone();
            unsafe {
                symmetric_product(n, n, &mut square, true, &gram, (n, 1), &gram, (n, 1), 0.5)
            };
            for i in 0..n {
                for j in 0..n {
                    let g: f64 = (0..k)
                        .map(|t| x[i * k + t] as f64 * x[j * k + t] as f64)
                        .sum();
                    let tol = 1e-4 * (1.0 + g.abs());
                    assert!(
                        (gram[i * n + j] as f64 - g).abs() < tol,
                        "({i}, {j}) of {n}"
                    );
                    assert!(
                        (gram_t[i * n + j] as f64 - g).abs() < tol,
                        "({i}, {j}) of {n}"
                    );
                    assert_eq!(gram[i * n + j], gram[j * n + i]);
                    assert_eq!(square[i * n + j], square[j * n + i]);
                    // (Scaled by the sum of the terms' sizes: the sum itself may cancel.)
                    let terms = (0..n).map(|t| gram[i * n + t] as f64 * gram[t * n + j] as f64);
                    let size: f64 = terms.clone().map(f64::abs).sum();
                    let want = start_sym[i * n + j] as f64 + 0.5 * terms.sum::<f64>();
                    let tol = 1e-5 * (1.0 + size);
                    assert!((square[i * n + j] as f64 - want).abs() < tol, "({i}, {j})");
                }
            }
        }
    }

    /// Shapes that make gemm pack operands which are contiguous along k with a large row stride
    /// (the vendored packing patch), including k not a multiple of its 16-float tile and panels
    /// narrower than the kernel.
    #[test]
    fn forward_and_backward_match_naive_products_where_operands_are_packed() {
        let mut rng = Rng::new(26);
        for (n, ic, oc) in [(384, 512, 128), (131, 37, 65), (200, 515, 70)] {
            let inp = random_vec(n * ic, &mut rng, 1.0);
            let w = random_vec(oc * ic, &mut rng, 1.0);
            let b = vec![0.0; oc];
            let mut out = vec![0.0; n * oc];
            forward(&mut out, &inp, &w, Some(&b), ic, oc);
            let close = |x: f32, y: f64, scale: f64| (x as f64 - y).abs() < 1e-4 * scale;
            let want = naive(&inp, &w, &b, ic, oc);
            let scale = (ic as f64).sqrt();
            for (x, y) in out.iter().zip(&want) {
                assert!(close(*x, *y as f64, scale), "{n}x{ic}->{oc}: {x} vs {y}");
            }
            // dinp = dout @ weight, dweight = dout^T @ inp.
            let dout = random_vec(n * oc, &mut rng, 1.0);
            // Written, not added: the NaNs must all be replaced.
            let (mut dinp, mut dw) = (vec![f32::NAN; n * ic], vec![f32::NAN; oc * ic]);
            backward(
                Grad::Write(&mut dinp),
                Grad::Write(&mut dw),
                None,
                &dout,
                &inp,
                &w,
                ic,
                oc,
            );
            for r in (0..n).step_by(7) {
                for i in 0..ic {
                    let y: f64 = (0..oc)
                        .map(|o| dout[r * oc + o] as f64 * w[o * ic + i] as f64)
                        .sum();
                    assert!(
                        close(dinp[r * ic + i], y, (oc as f64).sqrt()),
                        "dinp {r},{i}"
                    );
                }
            }
            for o in 0..oc {
                for i in (0..ic).step_by(5) {
                    let y: f64 = (0..n)
                        .map(|r| dout[r * oc + o] as f64 * inp[r * ic + i] as f64)
                        .sum();
                    assert!(
                        close(dw[o * ic + i], y, (n as f64).sqrt()),
                        "dweight {o},{i}"
                    );
                }
            }
        }
    }

    #[test]
    fn one_row_matches_naive_product() {
        let mut rng = Rng::new(16);
        let (ic, oc) = (70, 100);
        let inp = random_vec(ic, &mut rng, 1.0);
        let w = random_vec(oc * ic, &mut rng, 1.0);
        let b = random_vec(oc, &mut rng, 1.0);
        let mut out = vec![0.0; oc];
        forward(&mut out, &inp, &w, Some(&b), ic, oc);
        for (x, y) in out.iter().zip(&naive(&inp, &w, &b, ic, oc)) {
            assert!((x - y).abs() < 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = Rng::new(7);
        let (n, ic, oc) = (9, 70, 66);
        let inp = random_vec(n * ic, &mut rng, 1.0);
        let wt = random_vec(oc * ic, &mut rng, 0.3);
        let bs = random_vec(oc, &mut rng, 0.3);
        let g = random_vec(n * oc, &mut rng, 1.0);
        let f = |inp: &[f32], wt: &[f32], bs: &[f32]| {
            let mut out = vec![0.0; n * oc];
            forward(&mut out, inp, wt, Some(bs), ic, oc);
            weighted_sum(&out, &g)
        };
        let (mut dinp, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
        backward(
            Grad::Add(&mut dinp),
            Grad::Add(&mut dw),
            Some(&mut db),
            &g,
            &inp,
            &wt,
            ic,
            oc,
        );
        check("dinp", &inp, &dinp, |x| f(x, &wt, &bs), 1e-3);
        check("dweight", &wt, &dw, |x| f(&inp, x, &bs), 1e-3);
        check("dbias", &bs, &db, |x| f(&inp, &wt, x), 1e-3);
    }

    /// Against the plain triple loop of the reference engine, for a small product and one that
    /// gemm splits over threads.
    #[test]
    fn matches_the_reference_linear_layer() {
        let mut rng = Rng::new(27);
        for (b, t, ic, oc) in [(2, 3, 5, 7), (4, 40, 96, 150)] {
            let n = b * t;
            let inp = random_vec(n * ic, &mut rng, 1.0);
            let w = random_vec(oc * ic, &mut rng, 0.3);
            let bias = random_vec(oc, &mut rng, 0.3);
            let dout = random_vec(n * oc, &mut rng, 1.0);
            let (mut out, mut want) = (vec![0.0; n * oc], vec![0.0; n * oc]);
            forward(&mut out, &inp, &w, Some(&bias), ic, oc);
            reference::linear_forward(&mut want, &inp, &w, Some(&bias), b, t, ic, oc);
            assert_close("out", &out, &want, 1e-5);
            let (mut dinp, mut dw, mut db) = (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
            backward(
                Grad::Add(&mut dinp),
                Grad::Add(&mut dw),
                Some(&mut db),
                &dout,
                &inp,
                &w,
                ic,
                oc,
            );
            let (mut want_dinp, mut want_dw, mut want_db) =
                (vec![0.0; n * ic], vec![0.0; oc * ic], vec![0.0; oc]);
            reference::linear_backward(
                &mut want_dinp,
                &mut want_dw,
                Some(&mut want_db),
                &dout,
                &inp,
                &w,
                b,
                t,
                ic,
                oc,
            );
            assert_close("dinp", &dinp, &want_dinp, 1e-5);
            assert_close("dweight", &dw, &want_dw, 1e-5);
            assert_close("dbias", &db, &want_db, 1e-5);
        }
    }
}
