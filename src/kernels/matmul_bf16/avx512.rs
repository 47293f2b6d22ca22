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

/// `dst[j] = (bf16(r0[j]), bf16(r1[j]))` for j < n: two rows interleaved into k-pairs (a B panel
/// row, or an A panel row of a transposed operand, whose reduced dimension runs across rows).
/// `r1 = None` pairs with zeros (an odd k). 16 columns per `VCVTNE2PS2BF16` + `VPERMW`.
///
/// # Safety
/// As [`kernel`] for the CPU; `r0` (and `r1`) readable for `n` floats, `dst` writable for `n`.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub unsafe fn interleave_rows(dst: *mut u32, r0: *const f32, r1: Option<*const f32>, n: usize) {
    // Word 2j <- word j (row 0), word 2j + 1 <- word 16 + j (row 1).
    let mut idx = [0i16; 32];
    for j in 0..16 {
        idx[2 * j] = j as i16;
        idx[2 * j + 1] = 16 + j as i16;
    }
    let idx = _mm512_loadu_si512(idx.as_ptr() as *const _);
    let mut j = 0;
    while j < n {
        let m = lanes(n - j);
        let x0 = _mm512_maskz_loadu_ps(m, r0.add(j));
        let x1 = match r1 {
            Some(r1) => _mm512_maskz_loadu_ps(m, r1.add(j)),
            None => _mm512_setzero_ps(),
        };
        // Words 0..16 from x0, 16..32 from x1.
        let w: __m512i = core::mem::transmute(_mm512_cvtne2ps_pbh(x1, x0));
        let pairs = _mm512_permutexvar_epi16(idx, w);
        _mm512_mask_storeu_epi32(dst.add(j) as *mut i32, m, pairs);
        j += 16;
    }
}

/// One row whose reduced dimension is contiguous (`x[0..k]`) into k-pairs written `stride`
/// elements apart: `dst[p * stride] = (bf16(x[2p]), bf16(x[2p + 1]))` for p < ceil(k / 2), the
/// last pair's high half zero when k is odd. 32 floats per `VCVTNE2PS2BF16`, then a scatter.
///
/// # Safety
/// As [`kernel`] for the CPU; `x` readable for `k` floats, `dst + p * stride` writable for every
/// pair p; `stride * 16` must fit an i32.
#[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
pub unsafe fn pairs_of_row(dst: *mut u32, stride: usize, x: *const f32, k: usize) {
    let offsets = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride as i32),
    );
    let mut i = 0;
    while i < k {
        let rest = k - i;
        let lo = _mm512_maskz_loadu_ps(lanes(rest), x.add(i));
        let hi = _mm512_maskz_loadu_ps(lanes(rest.saturating_sub(16)), x.add(i + 16));
        // Words 0..32 are x[i..i + 32] in order: lane q holds the pair (x[i + 2q], x[i + 2q + 1]).
        let w: __m512i = core::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        let pairs = lanes(rest.div_ceil(2));
        _mm512_mask_i32scatter_epi32(dst.add((i / 2) * stride) as *mut i32, pairs, offsets, w, 4);
        i += 32;
    }
}
