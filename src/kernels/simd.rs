//! Eight f32 lanes, on whatever vector instructions the CPU has: the kernels' explicit vector
//! code (dot products, softmax's `exp`, the attention tiles, GELU, LayerNorm's backward rows) is
//! written once against [`Lanes`] and compiled for each instruction set:
//!
//! - x86-64 with AVX2 and FMA ([`Avx2`], one 256-bit register), chosen at run time;
//! - ARM64 ([`Neon`], two 128-bit registers; NEON is part of every ARMv8-A CPU);
//! - WebAssembly with SIMD128 ([`Wasm`], two 128-bit registers), chosen when compiled;
//! - anything else, and x86-64 without AVX2 ([`Scalar`], eight floats the compiler may
//!   vectorise as it can).
//!
//! A kernel is a generic function `fn body<V: Lanes>(...)` wrapped by [`simd_fn!`](super::simd_fn)
//! (`lanes V;` form), which instantiates it once per instruction set and calls the one the CPU
//! runs. Each method is `#[inline(always)]`, so that inside the x86 wrapper (compiled with AVX2)
//! every intrinsic inlines; an `Avx2` value is only ever made inside that wrapper, after the
//! check. FMA: `mul_add` fuses where the instruction set has it (AVX2, NEON) and rounds twice
//! where it does not (SIMD128, scalar); every kernel is tested against its plain-loop twin with
//! a tolerance that covers both.

/// Eight f32 lanes and the operations the kernels use.
pub(crate) trait Lanes: Copy {
    /// Eight floats from `p`.
    ///
    /// # Safety
    /// `p..p+8` must be readable.
    unsafe fn load(p: *const f32) -> Self;
    /// # Safety
    /// `p..p+8` must be writable.
    unsafe fn store(self, p: *mut f32);
    fn splat(x: f32) -> Self;
    fn zero() -> Self {
        Self::splat(0.0)
    }
    fn add(self, b: Self) -> Self;
    fn sub(self, b: Self) -> Self;
    fn mul(self, b: Self) -> Self;
    fn div(self, b: Self) -> Self;
    /// `self * b + c`.
    fn mul_add(self, b: Self, c: Self) -> Self;
    /// `c - self * b`.
    fn neg_mul_add(self, b: Self, c: Self) -> Self;
    fn max(self, b: Self) -> Self;
    fn min(self, b: Self) -> Self;
    /// The lanes added up (in a fixed order).
    fn sum(self) -> f32;
    /// The largest lane.
    fn max_lane(self) -> f32;
    /// `e^x` in every lane: [`super::exp`]'s algorithm.
    #[inline(always)]
    fn exp(self) -> Self {
        use exp_constants::*;
        let x = self.max(Self::splat(LOW)).min(Self::splat(HIGH));
        let round = Self::splat(ROUND);
        let shifted = x.mul_add(Self::splat(LOG2E), round);
        let k = shifted.sub(round);
        let r = k.neg_mul_add(Self::splat(LN2_HI), x);
        let r = k.neg_mul_add(Self::splat(LN2_LO), r);
        let mut p = Self::splat(POLY[0]);
        for c in &POLY[1..] {
            p = p.mul_add(r, Self::splat(*c));
        }
        let er = p.mul_add(r.mul(r), r).add(Self::splat(1.0));
        er.mul(shifted.pow2_of_shifted())
    }
    /// `2^k` from `shifted = x log2(e) + 1.5 * 2^23`, whose low mantissa bits hold k: integer
    /// arithmetic on the lanes' bits (a float-to-int conversion would cost more).
    fn pow2_of_shifted(self) -> Self;
    /// The 8 x 8 block of `rows` transposed: lane j of output i is lane i of row j.
    fn transpose8(rows: [Self; 8]) -> [Self; 8] {
        let mut block = [[0.0f32; 8]; 8];
        for (row, r) in block.iter_mut().zip(rows) {
            // SAFETY: a row holds 8 floats.
            unsafe { r.store(row.as_mut_ptr()) };
        }
        let mut out = rows;
        for (i, o) in out.iter_mut().enumerate() {
            let column: [f32; 8] = std::array::from_fn(|j| block[j][i]);
            // SAFETY: `column` holds 8 floats.
            *o = unsafe { Self::load(column.as_ptr()) };
        }
        out
    }

    /// The first `n` (< 8) floats of `p`, zeros in the other lanes.
    ///
    /// # Safety
    /// `p..p+n` must be readable.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        let mut lanes = [0.0f32; 8];
        std::ptr::copy_nonoverlapping(p, lanes.as_mut_ptr(), n.min(8));
        Self::load(lanes.as_ptr())
    }

    /// The first `n` (< 8) lanes into `p`.
    ///
    /// # Safety
    /// `p..p+n` must be writable.
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        let mut lanes = [0.0f32; 8];
        self.store(lanes.as_mut_ptr());
        std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n.min(8));
    }
}

/// Constants of [`super::exp`], shared by every implementation of [`Lanes::exp`].
mod exp_constants {
    pub const LOW: f32 = -87.3;
    pub const HIGH: f32 = 88.7;
    pub const LOG2E: f32 = std::f32::consts::LOG2_E;
    pub const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    pub const LN2_HI: f32 = 0.693_359_4;
    pub const LN2_LO: f32 = -2.121_944_4e-4;
    pub const POLY: [f32; 6] = [
        1.987_569_1e-4,
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ];
    /// The bits of `ROUND`: `shifted`'s bits minus these are k.
    pub const ROUND_BITS: i32 = 0x4B40_0000;
}

/// Eight floats in an array: any CPU (x86-64 without AVX2, and the tests everywhere; ARM64 and
/// WebAssembly always have their vectors).
#[derive(Clone, Copy)]
#[cfg_attr(any(target_arch = "aarch64", target_arch = "wasm32"), allow(dead_code))]
pub(crate) struct Scalar([f32; 8]);

impl Lanes for Scalar {
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Scalar(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
    #[inline(always)]
    fn splat(x: f32) -> Self {
        Scalar([x; 8])
    }
    #[inline(always)]
    fn add(self, b: Self) -> Self {
        Scalar(std::array::from_fn(|i| self.0[i] + b.0[i]))
    }
    #[inline(always)]
    fn sub(self, b: Self) -> Self {
        Scalar(std::array::from_fn(|i| self.0[i] - b.0[i]))
    }
    #[inline(always)]
    fn mul(self, b: Self) -> Self {
        Scalar(std::array::from_fn(|i| self.0[i] * b.0[i]))
    }
    #[inline(always)]
    fn div(self, b: Self) -> Self {
        Scalar(std::array::from_fn(|i| self.0[i] / b.0[i]))
    }
    #[inline(always)]
    fn mul_add(self, b: Self, c: Self) -> Self {
        Scalar(std::array::from_fn(|i| self.0[i] * b.0[i] + c.0[i]))
    }
    #[inline(always)]
    fn neg_mul_add(self, b: Self, c: Self) -> Self {
        Scalar(std::array::from_fn(|i| c.0[i] - self.0[i] * b.0[i]))
    }
    #[inline(always)]
    fn max(self, b: Self) -> Self {
        Scalar(std::array::from_fn(|i| {
            if b.0[i] > self.0[i] {
                b.0[i]
            } else {
                self.0[i]
            }
        }))
    }
    #[inline(always)]
    fn min(self, b: Self) -> Self {
        Scalar(std::array::from_fn(|i| {
            if b.0[i] < self.0[i] {
                b.0[i]
            } else {
                self.0[i]
            }
        }))
    }
    #[inline(always)]
    fn sum(self) -> f32 {
        let a = self.0;
        ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]))
    }
    #[inline(always)]
    fn max_lane(self) -> f32 {
        self.0
            .iter()
            .fold(f32::NEG_INFINITY, |m, &a| if a > m { a } else { m })
    }
    #[inline(always)]
    fn exp(self) -> Self {
        Scalar(self.0.map(super::exp))
    }
    #[inline(always)]
    fn pow2_of_shifted(self) -> Self {
        Scalar(self.0.map(|s| {
            let k = (s.to_bits() as i32).wrapping_sub(exp_constants::ROUND_BITS);
            f32::from_bits((k.wrapping_add(127) << 23) as u32)
        }))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::Avx2;

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{exp_constants::ROUND_BITS, Lanes};
    use std::arch::x86_64::*;

    /// One AVX register. Made only inside code compiled for AVX2 and FMA and entered after the
    /// CPU was found to have them, which is what makes every intrinsic below sound to call.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2(__m256);

    // SAFETY (every `unsafe` block below): the CPU has AVX2 and FMA, since an `Avx2` exists.
    impl Lanes for Avx2 {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx2(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            Avx2(unsafe { _mm256_set1_ps(x) })
        }
        #[inline(always)]
        fn zero() -> Self {
            Avx2(unsafe { _mm256_setzero_ps() })
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_add_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn sub(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_sub_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_mul_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn div(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_div_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn neg_mul_add(self, b: Self, c: Self) -> Self {
            Avx2(unsafe { _mm256_fnmadd_ps(self.0, b.0, c.0) })
        }
        #[inline(always)]
        fn max(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_max_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn min(self, b: Self) -> Self {
            Avx2(unsafe { _mm256_min_ps(self.0, b.0) })
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            unsafe {
                let v = self.0;
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_movehdup_ps(s));
                _mm_cvtss_f32(s)
            }
        }
        #[inline(always)]
        fn max_lane(self) -> f32 {
            unsafe {
                let m = self.0;
                let h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                let h = _mm_max_ps(h, _mm_movehl_ps(h, h));
                let h = _mm_max_ss(h, _mm_movehdup_ps(h));
                _mm_cvtss_f32(h)
            }
        }
        #[inline(always)]
        fn pow2_of_shifted(self) -> Self {
            unsafe {
                let k =
                    _mm256_sub_epi32(_mm256_castps_si256(self.0), _mm256_set1_epi32(ROUND_BITS));
                let two_k = _mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23);
                Avx2(_mm256_castsi256_ps(two_k))
            }
        }
        /// Interleave pairs of rows, then pairs of pairs, then swap 128-bit halves.
        #[inline(always)]
        fn transpose8(r: [Self; 8]) -> [Self; 8] {
            unsafe {
                let r = [
                    r[0].0, r[1].0, r[2].0, r[3].0, r[4].0, r[5].0, r[6].0, r[7].0,
                ];
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
                [
                    Avx2(_mm256_permute2f128_ps::<0x20>(b[0], b[4])),
                    Avx2(_mm256_permute2f128_ps::<0x20>(b[1], b[5])),
                    Avx2(_mm256_permute2f128_ps::<0x20>(b[2], b[6])),
                    Avx2(_mm256_permute2f128_ps::<0x20>(b[3], b[7])),
                    Avx2(_mm256_permute2f128_ps::<0x31>(b[0], b[4])),
                    Avx2(_mm256_permute2f128_ps::<0x31>(b[1], b[5])),
                    Avx2(_mm256_permute2f128_ps::<0x31>(b[2], b[6])),
                    Avx2(_mm256_permute2f128_ps::<0x31>(b[3], b[7])),
                ]
            }
        }
        /// A masked load: no copy through the stack.
        #[inline(always)]
        unsafe fn load_partial(p: *const f32, n: usize) -> Self {
            Avx2(_mm256_maskload_ps(p, tail_mask(n)))
        }
        #[inline(always)]
        unsafe fn store_partial(self, p: *mut f32, n: usize) {
            _mm256_maskstore_ps(p, tail_mask(n), self.0)
        }
    }

    /// A mask selecting the first `n` (< 8) lanes.
    #[inline(always)]
    unsafe fn tail_mask(n: usize) -> __m256i {
        const ONES_THEN_ZEROS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];
        _mm256_loadu_si256(ONES_THEN_ZEROS.as_ptr().add(8 - n.min(8)) as *const __m256i)
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use arm::Neon;

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::{exp_constants::ROUND_BITS, Lanes};
    use std::arch::aarch64::*;

    /// [`Lanes::pow2_of_shifted`] of one register.
    #[inline(always)]
    unsafe fn pow2(s: float32x4_t) -> float32x4_t {
        let k = vsubq_s32(vreinterpretq_s32_f32(s), vdupq_n_s32(ROUND_BITS));
        vreinterpretq_f32_s32(vshlq_n_s32::<23>(vaddq_s32(k, vdupq_n_s32(127))))
    }

    /// Two NEON registers. NEON is part of every ARMv8-A CPU (Apple's M chips, the Cortex-A
    /// cores of phones and Raspberry Pis, AWS Graviton), so no check is needed.
    #[derive(Clone, Copy)]
    pub(crate) struct Neon([float32x4_t; 2]);

    // SAFETY (every `unsafe` block below): NEON is always present on aarch64.
    impl Lanes for Neon {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Neon([vld1q_f32(p), vld1q_f32(p.add(4))])
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            vst1q_f32(p, self.0[0]);
            vst1q_f32(p.add(4), self.0[1]);
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            let v = unsafe { vdupq_n_f32(x) };
            Neon([v, v])
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            unsafe { Neon([vaddq_f32(self.0[0], b.0[0]), vaddq_f32(self.0[1], b.0[1])]) }
        }
        #[inline(always)]
        fn sub(self, b: Self) -> Self {
            unsafe { Neon([vsubq_f32(self.0[0], b.0[0]), vsubq_f32(self.0[1], b.0[1])]) }
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            unsafe { Neon([vmulq_f32(self.0[0], b.0[0]), vmulq_f32(self.0[1], b.0[1])]) }
        }
        #[inline(always)]
        fn div(self, b: Self) -> Self {
            unsafe { Neon([vdivq_f32(self.0[0], b.0[0]), vdivq_f32(self.0[1], b.0[1])]) }
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            unsafe {
                Neon([
                    vfmaq_f32(c.0[0], self.0[0], b.0[0]),
                    vfmaq_f32(c.0[1], self.0[1], b.0[1]),
                ])
            }
        }
        #[inline(always)]
        fn neg_mul_add(self, b: Self, c: Self) -> Self {
            unsafe {
                Neon([
                    vfmsq_f32(c.0[0], self.0[0], b.0[0]),
                    vfmsq_f32(c.0[1], self.0[1], b.0[1]),
                ])
            }
        }
        #[inline(always)]
        fn max(self, b: Self) -> Self {
            unsafe { Neon([vmaxq_f32(self.0[0], b.0[0]), vmaxq_f32(self.0[1], b.0[1])]) }
        }
        #[inline(always)]
        fn min(self, b: Self) -> Self {
            unsafe { Neon([vminq_f32(self.0[0], b.0[0]), vminq_f32(self.0[1], b.0[1])]) }
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            unsafe { vaddvq_f32(vaddq_f32(self.0[0], self.0[1])) }
        }
        #[inline(always)]
        fn max_lane(self) -> f32 {
            unsafe { vmaxvq_f32(vmaxq_f32(self.0[0], self.0[1])) }
        }
        #[inline(always)]
        fn pow2_of_shifted(self) -> Self {
            unsafe { Neon([pow2(self.0[0]), pow2(self.0[1])]) }
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) use wasm::Wasm;

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod wasm {
    use super::{exp_constants::ROUND_BITS, Lanes};
    use std::arch::wasm32::*;

    /// [`Lanes::pow2_of_shifted`] of one register.
    #[inline(always)]
    fn pow2(s: v128) -> v128 {
        let k = i32x4_sub(s, i32x4_splat(ROUND_BITS));
        i32x4_shl(i32x4_add(k, i32x4_splat(127)), 23)
    }

    /// Two SIMD128 registers (WebAssembly's fixed-width SIMD, in every browser since 2021; the
    /// module is compiled with it, so no check is needed). SIMD128 has no fused multiply-add:
    /// `mul_add` rounds twice.
    #[derive(Clone, Copy)]
    pub(crate) struct Wasm([v128; 2]);

    impl Lanes for Wasm {
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Wasm([
                v128_load(p as *const v128),
                v128_load(p.add(4) as *const v128),
            ])
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            v128_store(p as *mut v128, self.0[0]);
            v128_store(p.add(4) as *mut v128, self.0[1]);
        }
        #[inline(always)]
        fn splat(x: f32) -> Self {
            Wasm([f32x4_splat(x); 2])
        }
        #[inline(always)]
        fn add(self, b: Self) -> Self {
            Wasm([f32x4_add(self.0[0], b.0[0]), f32x4_add(self.0[1], b.0[1])])
        }
        #[inline(always)]
        fn sub(self, b: Self) -> Self {
            Wasm([f32x4_sub(self.0[0], b.0[0]), f32x4_sub(self.0[1], b.0[1])])
        }
        #[inline(always)]
        fn mul(self, b: Self) -> Self {
            Wasm([f32x4_mul(self.0[0], b.0[0]), f32x4_mul(self.0[1], b.0[1])])
        }
        #[inline(always)]
        fn div(self, b: Self) -> Self {
            Wasm([f32x4_div(self.0[0], b.0[0]), f32x4_div(self.0[1], b.0[1])])
        }
        #[inline(always)]
        fn mul_add(self, b: Self, c: Self) -> Self {
            self.mul(b).add(c)
        }
        #[inline(always)]
        fn neg_mul_add(self, b: Self, c: Self) -> Self {
            c.sub(self.mul(b))
        }
        #[inline(always)]
        fn max(self, b: Self) -> Self {
            // pmax: `b > a ? b : a`, as the scalar code compares (no NaN rules).
            Wasm([f32x4_pmax(self.0[0], b.0[0]), f32x4_pmax(self.0[1], b.0[1])])
        }
        #[inline(always)]
        fn min(self, b: Self) -> Self {
            Wasm([f32x4_pmin(self.0[0], b.0[0]), f32x4_pmin(self.0[1], b.0[1])])
        }
        #[inline(always)]
        fn sum(self) -> f32 {
            let s = f32x4_add(self.0[0], self.0[1]);
            (f32x4_extract_lane::<0>(s) + f32x4_extract_lane::<2>(s))
                + (f32x4_extract_lane::<1>(s) + f32x4_extract_lane::<3>(s))
        }
        #[inline(always)]
        fn max_lane(self) -> f32 {
            let m = f32x4_pmax(self.0[0], self.0[1]);
            let (a, b) = (f32x4_extract_lane::<0>(m), f32x4_extract_lane::<1>(m));
            let (c, d) = (f32x4_extract_lane::<2>(m), f32x4_extract_lane::<3>(m));
            a.max(b).max(c.max(d))
        }
        #[inline(always)]
        fn pow2_of_shifted(self) -> Self {
            Wasm([pow2(self.0[0]), pow2(self.0[1])])
        }
    }
}

/// The lanes of the CPU the code runs on, when nothing is chosen at run time: NEON on ARM64,
/// SIMD128 on WebAssembly compiled with it, [`Scalar`] elsewhere (x86-64 picks [`Avx2`] at run
/// time where the CPU has it, in [`super::simd_fn`]).
#[cfg(target_arch = "aarch64")]
pub(crate) type Native = Neon;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub(crate) type Native = Wasm;
#[cfg(not(any(
    target_arch = "aarch64",
    all(target_arch = "wasm32", target_feature = "simd128")
)))]
pub(crate) type Native = Scalar;

/// Whether the kernels run on vector lanes here (AVX2, NEON, SIMD128) rather than on
/// [`Scalar`]: the register-tiled attention products only pay off on real vectors.
pub(crate) fn vectors() -> bool {
    cfg!(any(
        target_arch = "aarch64",
        all(target_arch = "wasm32", target_feature = "simd128")
    )) || super::has_avx2_fma()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every implementation here against the plain arithmetic, on the same numbers.
    fn check<V: Lanes>(name: &str) {
        let a: [f32; 8] = [1.5, -2.0, 3.25, 0.0, -7.5, 10.0, 0.125, -0.5];
        let b: [f32; 8] = [2.0, 4.0, -1.0, 3.0, 0.5, -2.5, 8.0, 1.0];
        let c: [f32; 8] = [0.25, 1.0, 2.0, -3.0, 4.0, 5.0, -6.0, 7.0];
        let ld = |x: &[f32; 8]| unsafe { V::load(x.as_ptr()) };
        let get = |v: V| {
            let mut out = [0.0f32; 8];
            unsafe { v.store(out.as_mut_ptr()) };
            out
        };
        let (va, vb, vc) = (ld(&a), ld(&b), ld(&c));
        for i in 0..8 {
            assert_eq!(get(va.add(vb))[i], a[i] + b[i], "{name} add");
            assert_eq!(get(va.sub(vb))[i], a[i] - b[i], "{name} sub");
            assert_eq!(get(va.mul(vb))[i], a[i] * b[i], "{name} mul");
            assert_eq!(get(va.div(vb))[i], a[i] / b[i], "{name} div");
            assert!((get(va.mul_add(vb, vc))[i] - (a[i] * b[i] + c[i])).abs() < 1e-6);
            assert!((get(va.neg_mul_add(vb, vc))[i] - (c[i] - a[i] * b[i])).abs() < 1e-6);
            assert_eq!(get(va.max(vb))[i], a[i].max(b[i]), "{name} max");
            assert_eq!(get(va.min(vb))[i], a[i].min(b[i]), "{name} min");
            assert_eq!(get(V::splat(a[i]))[0], a[i]);
            let e = get(va.exp())[i] as f64;
            let want = (a[i] as f64).exp();
            assert!(
                (e - want).abs() <= 3e-7 * want,
                "{name} exp({}) = {e}",
                a[i]
            );
        }
        assert_eq!(va.sum(), a.iter().sum::<f32>(), "{name} sum");
        assert_eq!(va.max_lane(), 10.0, "{name} max_lane");
        let rows: [V; 8] = std::array::from_fn(|r| {
            let row: [f32; 8] = std::array::from_fn(|c| (r * 8 + c) as f32);
            ld(&row)
        });
        let t = V::transpose8(rows).map(get);
        for (i, row) in t.iter().enumerate() {
            for (j, &x) in row.iter().enumerate() {
                assert_eq!(x, (j * 8 + i) as f32, "{name} transpose");
            }
        }
        let mut buf = [9.0f32; 8];
        unsafe { V::load_partial(a.as_ptr(), 3).store_partial(buf.as_mut_ptr(), 5) };
        assert_eq!(
            buf,
            [1.5, -2.0, 3.25, 0.0, 0.0, 9.0, 9.0, 9.0],
            "{name} partial"
        );
    }

    #[test]
    fn every_instruction_set_computes_the_same_lanes() {
        check::<Scalar>("scalar");
        check::<Native>("native");
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::has_avx2_fma() {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2() {
                check::<Avx2>("avx2")
            }
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { avx2() }
        }
    }
}
