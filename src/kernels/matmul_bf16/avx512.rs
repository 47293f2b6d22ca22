//! The AVX512_BF16 inner loops of [`super`]: the register-blocked `VDPBF16PS` micro-kernel and the
//! two packing conversions (`VCVTNE2PS2BF16`). Written against `core::arch` alone, so that the
//! same file can be compiled on its own (an emulator check of these instructions on machines
//! without them).
//!
//! Packed layouts (every element a `u32` holding a k-pair of bf16: element `2p` of the reduced
//! dimension in the low 16 bits, `2p + 1` in the high 16 bits, as `VDPBF16PS` reads them):
//! - A panel: `[pair][MR]`: for each pair, the MR rows' pairs side by side (one is broadcast).
//! - B panel: `[pair][NR]`: for each pair, NR columns' pairs (two 16-lane vectors).

use core::arch::x86_64::*;

/// Rows of C per micro-kernel call (A rows broadcast one at a time).
pub const MR: usize = 12;
/// Columns of C per micro-kernel call (two 16-lane vectors).
pub const NR: usize = 32;

/// The first `n` (<= 16) lanes.
#[inline(always)]
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n.min(16)) - 1) as __mmask16
}

/// `C[rows, cols] (+)= A_panel (kp pairs) . B_panel (kp pairs)`, fp32 accumulation: 24
/// accumulators (MR rows x 2 vectors of 16 columns), each k-pair step two vector loads of B, MR
/// broadcasts of A and 2 MR `VDPBF16PS`. `accumulate` adds to C's old value; otherwise C is
/// written. Only `rows` x `cols` of the MR x NR tile are stored (masked stores for the tail).
///
/// # Safety
/// The CPU must have AVX512F, AVX512BW, AVX512VL and AVX512_BF16; `a` must hold `kp * MR` and `b`
/// `kp * NR` elements; `c` rows `0..rows` (stride `ldc`) must have `cols` writable floats;
/// rows <= MR, cols <= NR.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
#[allow(clippy::too_many_arguments)]
pub unsafe fn kernel(
    kp: usize,
    a: *const u32,
    b: *const u32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    accumulate: bool,
) {
    // C's tile, which this call writes or adds to after its kp pair steps: asked for now, so that
    // its lines arrive while the products run (they are often in memory: a fresh activation that
    // a store would first have to read, or a weight gradient's C, too large for L2).
    for r in 0..rows {
        let p = c.add(r * ldc);
        prefetch(p);
        prefetch(p.wrapping_add(16));
        prefetch(p.wrapping_add(cols.max(1) - 1));
    }
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let (mut a, mut b) = (a, b);
    for _ in 0..kp {
        let b0: __m512bh = core::mem::transmute(_mm512_loadu_si512(b as *const _));
        let b1: __m512bh = core::mem::transmute(_mm512_loadu_si512(b.add(16) as *const _));
        for (r, acc) in acc.iter_mut().enumerate() {
            let av: __m512bh = core::mem::transmute(_mm512_set1_epi32(*a.add(r) as i32));
            acc[0] = _mm512_dpbf16_ps(acc[0], av, b0);
            acc[1] = _mm512_dpbf16_ps(acc[1], av, b1);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    let (m0, m1) = (lanes(cols), lanes(cols.saturating_sub(16)));
    for (r, acc) in acc.iter().enumerate().take(rows) {
        let p = c.add(r * ldc);
        let (mut v0, mut v1) = (acc[0], acc[1]);
        if accumulate {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, p));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, p.add(16)));
        }
        _mm512_mask_storeu_ps(p, m0, v0);
        _mm512_mask_storeu_ps(p.add(16), m1, v1);
    }
}

/// How many k-pairs ahead [`pack_columns`] asks for its rows.
const PREFETCH_PAIRS: usize = 4;

/// Asks for the cache line holding `p` (into all levels). A hint: it never faults, so `p` may
/// lie past the end of the operand.
#[inline(always)]
unsafe fn prefetch(p: *const f32) {
    _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
}

/// Word 2j <- word j (the first source's bf16), word 2j + 1 <- word 16 + j (the second's): the
/// `VPERMW` that turns one `VCVTNE2PS2BF16` of two 16-float rows into 16 k-pairs.
static INTERLEAVE: [i16; 32] = {
    let mut idx = [0i16; 32];
    let mut j = 0;
    while j < 16 {
        idx[2 * j] = j as i16;
        idx[2 * j + 1] = 16 + j as i16;
        j += 1;
    }
    idx
};

/// Panels `[pair][stride]` (panel q at `dst + q * panel_len`) from `width` columns whose reduced
/// dimension runs down the rows of `x` (row stride `ld`): column j goes to lane j % stride of
/// panel j / stride, `(bf16(x[2p][j]), bf16(x[2p + 1][j]))` at pair p < ceil(k / 2), the high
/// half zero past an odd k, and the last panel's lanes past `width` zero. Two rows interleaved,
/// 16 columns per `VCVTNE2PS2BF16` + `VPERMW`: B panels read from k-major rows, or A panels of a
/// transposed operand. Pairs go outermost, so each pair of rows is read once, left to right, for
/// all the panels (a panel at a time would revisit every row, and its page, once per panel).
///
/// # Safety
/// As [`kernel`] for the CPU; `stride <= 32`; rows `0..k` of `x` readable for `width` floats at
/// stride `ld`; `dst` writable for `ceil(width / stride) - 1` panels of `panel_len` elements
/// plus `ceil(k / 2) * stride`.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub unsafe fn pack_columns(
    dst: *mut u32,
    stride: usize,
    panel_len: usize,
    x: *const f32,
    ld: usize,
    width: usize,
    k: usize,
) {
    debug_assert!(stride <= 32);
    let idx = _mm512_loadu_si512(INTERLEAVE.as_ptr() as *const _);
    for p in 0..k.div_ceil(2) {
        let r0 = x.add(2 * p * ld);
        let second = 2 * p + 1 < k;
        for q in 0..width.div_ceil(stride) {
            for j in (0..stride).step_by(16) {
                let col = q * stride + j;
                let load = lanes(width.saturating_sub(col).min(stride - j));
                let x0 = _mm512_maskz_loadu_ps(load, r0.add(col));
                // The rows PREFETCH_PAIRS pairs on: a block's rows are far apart (a product's
                // whole k-major operand, often in memory), and the hardware does not follow.
                prefetch(r0.wrapping_add(2 * PREFETCH_PAIRS * ld + col));
                let x1 = if second {
                    prefetch(r0.wrapping_add((2 * PREFETCH_PAIRS + 1) * ld + col));
                    _mm512_maskz_loadu_ps(load, r0.add(ld + col))
                } else {
                    _mm512_setzero_ps()
                };
                // Words 0..16 from x0, 16..32 from x1.
                let w: __m512i = core::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
                let pairs = _mm512_permutexvar_epi16(idx, w);
                let out = dst.add(q * panel_len + p * stride + j) as *mut i32;
                _mm512_mask_storeu_epi32(out, lanes(stride - j), pairs);
            }
        }
    }
}

/// `rows[i]` lane j -> `rows[j]` lane i: a 16 x 16 transpose of 32-bit lanes (within 128-bit
/// lanes by unpacking 32- then 64-bit halves, then across them by shuffling 128-bit blocks).
#[inline(always)]
unsafe fn transpose16(r: &mut [__m512i; 16]) {
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + c]: in 128-bit block b, element 4b + c of rows 4g..4g + 4.
    let mut u = [_mm512_setzero_si512(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // Element 4b + c of all 16 rows: block b of u[c], u[4 + c], u[8 + c], u[12 + c].
    for c in 0..4 {
        let v0 = _mm512_shuffle_i32x4::<0x44>(u[c], u[4 + c]);
        let v1 = _mm512_shuffle_i32x4::<0xEE>(u[c], u[4 + c]);
        let w0 = _mm512_shuffle_i32x4::<0x44>(u[8 + c], u[12 + c]);
        let w1 = _mm512_shuffle_i32x4::<0xEE>(u[8 + c], u[12 + c]);
        r[c] = _mm512_shuffle_i32x4::<0x88>(v0, w0);
        r[4 + c] = _mm512_shuffle_i32x4::<0xDD>(v0, w0);
        r[8 + c] = _mm512_shuffle_i32x4::<0x88>(v1, w1);
        r[12 + c] = _mm512_shuffle_i32x4::<0xDD>(v1, w1);
    }
}

/// A panel `[pair][stride]` from `nrows` (<= stride <= 32) rows whose reduced dimension is
/// contiguous (`x[r * ld + 0..k]`): `dst[p * stride + r] = (bf16(x[r][2p]), bf16(x[r][2p + 1]))`
/// for p < ceil(k / 2), the high half zero past an odd k, and lanes `nrows..stride` zero. For
/// each 32 floats of 16 rows: one `VCVTNE2PS2BF16` per row gives its 16 pairs, and a 16 x 16
/// transpose turns rows of pairs into the panel's rows of rows (an A panel of a row-major
/// operand, or W^T's panels).
///
/// # Safety
/// As [`kernel`] for the CPU; rows `0..nrows` of `x` readable for `k` floats at stride `ld`;
/// `dst` writable for `ceil(k / 2) * stride` elements.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub unsafe fn pack_rows(
    dst: *mut u32,
    stride: usize,
    x: *const f32,
    ld: usize,
    nrows: usize,
    k: usize,
) {
    debug_assert!(nrows <= stride && stride <= 32);
    let pairs = k.div_ceil(2);
    let mut i = 0;
    while i < k {
        let rest = k - i;
        let (lo, hi) = (lanes(rest), lanes(rest.saturating_sub(16)));
        let count = rest.div_ceil(2).min(16);
        for g in 0..stride.div_ceil(16) {
            let r0 = 16 * g;
            let mut v = [_mm512_setzero_si512(); 16];
            for (r, v) in v
                .iter_mut()
                .enumerate()
                .take(nrows.saturating_sub(r0).min(16))
            {
                let row = x.add((r0 + r) * ld + i);
                // The same 32 floats of the row `stride` rows on, which the next panel packs.
                let ahead = row.wrapping_add(stride * ld);
                prefetch(ahead);
                prefetch(ahead.wrapping_add(16));
                let a = _mm512_maskz_loadu_ps(lo, row);
                let b = _mm512_maskz_loadu_ps(hi, row.add(16));
                // Words 0..32 are row[i..i + 32] in order: lane q the pair (2q, 2q + 1).
                *v = core::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(b, a));
            }
            transpose16(&mut v);
            let store = lanes(stride - r0);
            for (q, v) in v.iter().enumerate().take(count) {
                let out = dst.add((i / 2 + q) * stride + r0) as *mut i32;
                _mm512_mask_storeu_epi32(out, store, *v);
            }
        }
        i += 32;
    }
    debug_assert!(i / 2 >= pairs);
}
