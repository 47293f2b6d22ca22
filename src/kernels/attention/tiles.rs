//! The per-head products of attention as register-tiled AVX2 + FMA loops, for heads whose size
//! and sequence length are multiples of 8.
//!
//! One head's products are small (64 x 64 x 32 at nanoGPT's CPU shape): through `gemm` each call
//! spends about as long deciding, packing and dispatching as multiplying, and the causal mask
//! can only be exploited in blocks of rows. These two kernels read their operands in place,
//! keep every partial sum in registers, and skip the masked triangle in steps of 8 columns:
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

use std::arch::x86_64::*;

/// Which part of the (T, T) weight matrix can be non-zero for row i: `Lower` is `j <= i` (a
/// query's weights over keys), `Upper` is `j >= i` (a key's weights over the queries after it,
/// i.e. the transpose).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Triangle {
    Lower,
    Upper,
}

/// `dst[d * t_n + t] = src[t * ld_src + d]` for t < t_n, d < hs: one head's keys or values as
/// (hs, T), so that 8 consecutive positions are one vector load. In 8 x 8 blocks, each
/// transposed in registers.
///
/// # Safety
/// The CPU has AVX2 and FMA; `t_n` and `hs` are multiples of 8; `src` rows t < t_n are readable
/// for hs floats; `dst` holds hs * t_n floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn transpose(
    dst: &mut [f32],
    src: *const f32,
    ld_src: usize,
    t_n: usize,
    hs: usize,
) {
    assert!(dst.len() >= hs * t_n);
    let out = dst.as_mut_ptr();
    for t0 in (0..t_n).step_by(8) {
        for d0 in (0..hs).step_by(8) {
            let mut r = [_mm256_setzero_ps(); 8];
            for (i, r) in r.iter_mut().enumerate() {
                *r = _mm256_loadu_ps(src.add((t0 + i) * ld_src + d0));
            }
            // Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
            let a = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
                _mm256_unpacklo_ps(r[6], r[7]),
                _mm256_unpackhi_ps(r[6], r[7]),
            ];
            let b = [
                _mm256_shuffle_ps::<0x44>(a[0], a[2]),
                _mm256_shuffle_ps::<0xEE>(a[0], a[2]),
                _mm256_shuffle_ps::<0x44>(a[1], a[3]),
                _mm256_shuffle_ps::<0xEE>(a[1], a[3]),
                _mm256_shuffle_ps::<0x44>(a[4], a[6]),
                _mm256_shuffle_ps::<0xEE>(a[4], a[6]),
                _mm256_shuffle_ps::<0x44>(a[5], a[7]),
                _mm256_shuffle_ps::<0xEE>(a[5], a[7]),
            ];
            let c = [
                _mm256_permute2f128_ps::<0x20>(b[0], b[4]),
                _mm256_permute2f128_ps::<0x20>(b[1], b[5]),
                _mm256_permute2f128_ps::<0x20>(b[2], b[6]),
                _mm256_permute2f128_ps::<0x20>(b[3], b[7]),
                _mm256_permute2f128_ps::<0x31>(b[0], b[4]),
                _mm256_permute2f128_ps::<0x31>(b[1], b[5]),
                _mm256_permute2f128_ps::<0x31>(b[2], b[6]),
                _mm256_permute2f128_ps::<0x31>(b[3], b[7]),
            ];
            for (i, &c) in c.iter().enumerate() {
                _mm256_storeu_ps(out.add((d0 + i) * t_n + t0), c);
            }
        }
    }
}

/// `s[t * t_n + u] = scale * sum_d x[t * ld_x + d] * yt[d * t_n + u]` for t < t_n and u below
/// the end of t's tile of 4 rows, rounded up to 8.
///
/// # Safety
/// The CPU has AVX2 and FMA; `t_n` and `hs` are multiples of 8; `s` holds t_n * t_n floats,
/// `yt` hs * t_n, and `x` rows t < t_n are readable for hs floats.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn causal_scores(
    s: *mut f32,
    x: *const f32,
    ld_x: usize,
    yt: *const f32,
    t_n: usize,
    hs: usize,
    scale: f32,
) {
    debug_assert!(t_n.is_multiple_of(8) && hs.is_multiple_of(8));
    for t0 in (0..t_n).step_by(4) {
        let end = (t0 + 4).next_multiple_of(8).min(t_n);
        let mut u0 = 0;
        while u0 + 16 <= end {
            scores_tile::<2>(s, x, ld_x, yt, t_n, hs, scale, t0, u0);
            u0 += 16;
        }
        if u0 < end {
            scores_tile::<1>(s, x, ld_x, yt, t_n, hs, scale, t0, u0);
        }
    }
}

/// Rows t0..t0+4, columns u0..u0+8*NU of [`causal_scores`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_tile<const NU: usize>(
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
    let mut acc = [[_mm256_setzero_ps(); NU]; 4];
    for d in 0..hs {
        let mut y = [_mm256_setzero_ps(); NU];
        for (v, y) in y.iter_mut().enumerate() {
            *y = _mm256_loadu_ps(yt.add(d * t_n + u0 + 8 * v));
        }
        for (i, acc) in acc.iter_mut().enumerate() {
            let xi = _mm256_broadcast_ss(&*x.add((t0 + i) * ld_x + d));
            for (a, &y) in acc.iter_mut().zip(&y) {
                *a = _mm256_fmadd_ps(xi, y, *a);
            }
        }
    }
    let scale = _mm256_set1_ps(scale);
    for (i, acc) in acc.iter().enumerate() {
        for (v, &a) in acc.iter().enumerate() {
            _mm256_storeu_ps(s.add((t0 + i) * t_n + u0 + 8 * v), _mm256_mul_ps(scale, a));
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

/// `out[i * ld_out + c] (+)= scale * sum_j w[i * ws.row + j * ws.col] * y[j * ld_y + c]` for
/// i < t_n, c < hs, and j over `triangle` of the pair of rows i belongs to.
///
/// # Safety
/// The CPU has AVX2 and FMA; `t_n` and `hs` are multiples of 8; every index stated lies inside
/// its buffer; the weights outside `triangle` (j > i for `Lower`, j < i for `Upper`) are zero.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn weighted_rows(
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
            tile.run::<4>(c0);
            c0 += 32;
        }
        match (hs - c0) / 8 {
            3 => tile.run::<3>(c0),
            2 => tile.run::<2>(c0),
            1 => tile.run::<1>(c0),
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
    unsafe fn run<const NC: usize>(&self, c0: usize) {
        let mut acc = [[_mm256_setzero_ps(); NC]; 2];
        let (w0, w1) = (
            self.w.add(self.i0 * self.ws.row),
            self.w.add((self.i0 + 1) * self.ws.row),
        );
        for j in self.j0..self.j1 {
            let a = _mm256_broadcast_ss(&*w0.add(j * self.ws.col));
            let b = _mm256_broadcast_ss(&*w1.add(j * self.ws.col));
            let yj = self.y.add(j * self.ld_y + c0);
            let [acc0, acc1] = &mut acc;
            for (v, (s0, s1)) in acc0.iter_mut().zip(acc1.iter_mut()).enumerate() {
                let y = _mm256_loadu_ps(yj.add(8 * v));
                *s0 = _mm256_fmadd_ps(a, y, *s0);
                *s1 = _mm256_fmadd_ps(b, y, *s1);
            }
        }
        let scale = _mm256_set1_ps(self.scale);
        for (r, acc) in acc.iter().enumerate() {
            let o = self.out.add((self.i0 + r) * self.ld_out + c0);
            for (v, &a) in acc.iter().enumerate() {
                let mut sum = _mm256_mul_ps(scale, a);
                if self.accumulate {
                    sum = _mm256_add_ps(sum, _mm256_loadu_ps(o.add(8 * v)));
                }
                _mm256_storeu_ps(o.add(8 * v), sum);
            }
        }
    }
}
