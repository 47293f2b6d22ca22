//! The per-head products of attention as register-tiled loops on 8 lanes
//! ([`crate::kernels::simd`]: AVX2, NEON or SIMD128), for heads whose size and sequence length
//! are multiples of 8.
//!
//! One head's products are small (64 x 64 x 32 at nanoGPT's CPU shape): through `gemm` each call
//! spends about as long deciding, packing and dispatching as multiplying, and the causal mask
//! can only be exploited in blocks of rows. These two kernels read their operands through
//! strides without packing them (the caller first gathers side by side the rows a weighted sum
//! reads again and again: see `weighted_gathered`), keep every partial sum in registers, and
//! skip the masked triangle in steps of 8 columns:
//!
//! - [`causal_scores`]: `S[t, u] = scale * X_t . Y_u` for `u` up to `t` (rounded up to 8), from
//!   `X` (T, hs) and `Y^T` (hs, T): the scores `Q K^T`, and in the backward pass `dY V^T`.
//!   Tiles of 4 rows x 16 columns: per step along hs, two loads of `Y^T`, four broadcasts of `X`
//!   and eight fused multiply-adds.
//! - [`weighted_rows`]: `O_i (+)= scale * sum_j W[i, j] Y_j`, `j` over the causal range, with `W`
//!   read through any two strides, so that `W^T` costs nothing: `A V`, and in the backward pass
//!   `dS K`, `dS^T Q` and `A'^T dY`. Tiles of 2 rows x 32 columns: per step along j, four loads
//!   of `Y_j`, two broadcasts of `W` and eight fused multiply-adds.
//!
//! Entries above the diagonal that the tiles compute anyway (up to 7 per row) are garbage the
//! softmax overwrites with zeros; the weights read above the diagonal are those zeros.

use crate::kernels::simd::Lanes;
use crate::kernels::simd_fn;

/// Which part of the (T, T) weight matrix can be non-zero for row i: `Lower` is `j <= i` (a
/// query's weights over keys), `Upper` is `j >= i` (a key's weights over the queries after it,
/// i.e. the transpose).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Triangle {
    Lower,
    Upper,
}

simd_fn! {
    lanes V;
    /// `dst[d * t_n + t] = src[t * ld_src + d]` for t < t_n, d < hs: one head's keys or values
    /// as (hs, T), so that 8 consecutive positions are one vector load. In 8 x 8 blocks, each
    /// transposed in registers.
    ///
    /// # Safety
    /// `t_n` and `hs` are multiples of 8; `src` rows t < t_n are readable for hs floats; `dst`
    /// holds hs * t_n floats.
    pub(super) unsafe fn transpose(dst: &mut [f32], src: *const f32, ld_src: usize, t_n: usize, hs: usize) {
        assert!(dst.len() >= hs * t_n);
        let out = dst.as_mut_ptr();
        for t0 in (0..t_n).step_by(8) {
            for d0 in (0..hs).step_by(8) {
                let mut rows = [V::zero(); 8];
                for (i, r) in rows.iter_mut().enumerate() {
                    *r = V::load(src.add((t0 + i) * ld_src + d0));
                }
                for (i, c) in V::transpose8(rows).into_iter().enumerate() {
                    c.store(out.add((d0 + i) * t_n + t0));
                }
            }
        }
    }
}

simd_fn! {
    lanes V;
    /// `s[t * t_n + u] = scale * sum_d x[t * ld_x + d] * yt[d * t_n + u]` for t < t_n and u
    /// below the end of t's tile of 4 rows, rounded up to 8.
    ///
    /// # Safety
    /// `t_n` and `hs` are multiples of 8; `s` holds t_n * t_n floats, `yt` hs * t_n, and `x` rows
    /// t < t_n are readable for hs floats.
    pub(super) unsafe fn causal_scores(s: *mut f32, x: *const f32, ld_x: usize, yt: *const f32, t_n: usize, hs: usize, scale: f32) {
        debug_assert!(t_n.is_multiple_of(8) && hs.is_multiple_of(8));
        for t0 in (0..t_n).step_by(4) {
            let end = (t0 + 4).next_multiple_of(8).min(t_n);
            let mut u0 = 0;
            while u0 + 16 <= end {
                scores_tile::<V, 2>(s, x, ld_x, yt, t_n, hs, scale, t0, u0);
                u0 += 16;
            }
            if u0 < end {
                scores_tile::<V, 1>(s, x, ld_x, yt, t_n, hs, scale, t0, u0);
            }
        }
    }
}

/// Rows t0..t0+4, columns u0..u0+8*NU of [`causal_scores`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_tile<V: Lanes, const NU: usize>(
    s: *mut f32,
    x: *const f32,
    ld_x: usize,
    yt: *const f32,
    t_n: usize,
    hs: usize,
    scale: f32,
    t0: usize,
    u0: usize,
) {
    let mut acc = [[V::zero(); NU]; 4];
    for d in 0..hs {
        let mut y = [V::zero(); NU];
        for (v, y) in y.iter_mut().enumerate() {
            *y = V::load(yt.add(d * t_n + u0 + 8 * v));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let xi = V::splat(*x.add((t0 + i) * ld_x + d));
            for (a, &y) in acc.iter_mut().zip(&y) {
                *a = xi.mul_add(y, *a);
            }
        }
    }
    let scale = V::splat(scale);
    for (i, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            scale.mul(a).store(s.add((t0 + i) * t_n + u0 + 8 * v));
        }
    }
}

/// The strides of a (T, T) weight matrix as [`weighted_rows`] reads it: weight (i, j) is at
/// `i * row + j * col`.
#[derive(Clone, Copy)]
pub(super) struct Strides {
    pub row: usize,
    pub col: usize,
}

simd_fn! {
    lanes V;
    /// `out[i * ld_out + c] (+)= scale * sum_j w[i * ws.row + j * ws.col] * y[j * ld_y + c]`
    /// for i < t_n, c < hs, and j over `triangle` of the pair of rows i belongs to.
    ///
    /// # Safety
    /// `t_n` and `hs` are multiples of 8; every index stated lies inside its buffer; the
    /// weights outside `triangle` (j > i for `Lower`, j < i for `Upper`) are zero.
    pub(super) unsafe fn weighted_rows(out: *mut f32, ld_out: usize, w: *const f32, ws: Strides, y: *const f32, ld_y: usize, t_n: usize, hs: usize, triangle: Triangle, accumulate: bool, scale: f32) {
        weighted_rows_with::<V>(out, ld_out, w, ws, y, ld_y, t_n, hs, triangle, accumulate, scale)
    }
}

/// [`weighted_rows`] on the lanes `V`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weighted_rows_with<V: Lanes>(
    out: *mut f32,
    ld_out: usize,
    w: *const f32,
    ws: Strides,
    y: *const f32,
    ld_y: usize,
    t_n: usize,
    hs: usize,
    triangle: Triangle,
    accumulate: bool,
    scale: f32,
) {
    debug_assert!(t_n.is_multiple_of(8) && hs.is_multiple_of(8));
    for i0 in (0..t_n).step_by(2) {
        let (j0, j1) = match triangle {
            Triangle::Lower => (0, i0 + 2),
            Triangle::Upper => (i0, t_n),
        };
        let tile = Tile {
            out,
            ld_out,
            w,
            ws,
            y,
            ld_y,
            i0,
            j0,
            j1,
            accumulate,
            scale,
        };
        let mut c0 = 0;
        while c0 + 32 <= hs {
            tile.run::<V, 4>(c0);
            c0 += 32;
        }
        match (hs - c0) / 8 {
            3 => tile.run::<V, 3>(c0),
            2 => tile.run::<V, 2>(c0),
            1 => tile.run::<V, 1>(c0),
            _ => {}
        }
    }
}

/// Rows i0, i0+1 of [`weighted_rows`], summed over j0..j1.
struct Tile {
    out: *mut f32,
    ld_out: usize,
    w: *const f32,
    ws: Strides,
    y: *const f32,
    ld_y: usize,
    i0: usize,
    j0: usize,
    j1: usize,
    accumulate: bool,
    scale: f32,
}

impl Tile {
    /// Columns c0..c0+8*NC.
    #[inline(always)]
    unsafe fn run<V: Lanes, const NC: usize>(&self, c0: usize) {
        let mut acc = [[V::zero(); NC]; 2];
        let (w0, w1) = (
            self.w.add(self.i0 * self.ws.row),
            self.w.add((self.i0 + 1) * self.ws.row),
        );
        for j in self.j0..self.j1 {
            let a = V::splat(*w0.add(j * self.ws.col));
            let b = V::splat(*w1.add(j * self.ws.col));
            let yj = self.y.add(j * self.ld_y + c0);
            let [acc0, acc1] = &mut acc;
            for (v, (s0, s1)) in acc0.iter_mut().zip(acc1.iter_mut()).enumerate() {
                let y = V::load(yj.add(8 * v));
                *s0 = a.mul_add(y, *s0);
                *s1 = b.mul_add(y, *s1);
            }
        }
        let scale = V::splat(self.scale);
        for (r, acc) in acc.iter().enumerate() {
            let o = self.out.add((self.i0 + r) * self.ld_out + c0);
            for (v, &a) in acc.iter().enumerate() {
                let mut sum = scale.mul(a);
                if self.accumulate {
                    sum = sum.add(V::load(o.add(8 * v)));
                }
                sum.store(o.add(8 * v));
            }
        }
    }
}
