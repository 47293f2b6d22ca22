//! The layers of the model, each a pair of plain functions `forward` and `backward` on flat `f32`
//! slices in row-major order (the style of llm.c's `train_gpt2.c`).
//!
//! Conventions shared by every kernel:
//! - Shapes are given in the doc comments; `(B, T, C)` means `x[(b * T + t) * C + c]`.
//! - `forward` writes its outputs (and whatever it caches for the backward pass).
//! - `backward` **adds** into every gradient it produces, input and parameter gradients alike
//!   (`dinp += ...`, `dweight += ...`), so a tensor used twice (the residual stream) just receives
//!   both contributions; the caller zeroes gradients before a step. (One exception:
//!   `attention::backward` writes `dqkv`, whose only contribution it is.)
//! - No kernel allocates. Parallel kernels split work with rayon into pieces large enough to pay
//!   for the fork-join; small models therefore run their kernels on one thread.
//!
//! Every kernel has a finite-difference gradient test in its module, and a test against its
//! twin in [`crate::reference::layers`], the same layer in plain loops.

pub mod activation;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod embedding;
pub mod layernorm;
pub mod matmul;
pub mod matmul_bf16;
pub mod residual;
pub mod rmsnorm;
pub mod rope;
pub(crate) mod simd;

/// Rough number of floating-point operations below which a piece of parallel work is not split
/// further. Handing work to a sleeping thread costs tens of microseconds on a virtual machine
/// (the wake-up), worth about a million flops; smaller kernels run on the calling thread.
pub(crate) const GRAIN_FLOPS: usize = 1 << 20;

/// Whether the CPU has AVX2 and FMA, checked once.
#[inline]
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::atomic::{AtomicU8, Ordering};
        static LEVEL: AtomicU8 = AtomicU8::new(0);
        match LEVEL.load(Ordering::Relaxed) {
            1 => false,
            2 => true,
            _ => {
                let yes = std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma");
                LEVEL.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
                yes
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Defines a function whose body is compiled twice, for the baseline CPU and for AVX2 + FMA,
/// and picks the second at run time where the CPU has it. The compiler vectorises our loops
/// (written with independent accumulators) 8 floats wide instead of 4. Used for the per-row and
/// per-chunk bodies of the kernels; the matrix products have their own dispatch in `gemm`.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::kernels::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
    // The same for an `unsafe fn`: the caller upholds its contract for both versions.
    ($(#[$meta:meta])* $vis:vis unsafe fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline]
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if $crate::kernels::has_avx2_fma() {
                    return avx2($($arg),*);
                }
            }
            imp($($arg),*)
        }
    };
    // `lanes V;`: a body generic over `V: Lanes` (explicit vector code, [`simd`]), instantiated
    // for AVX2 (chosen at run time) and for the lanes the target always has.
    (lanes $V:ident; $(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp<$V: $crate::kernels::simd::Lanes>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[inline]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp::<$crate::kernels::simd::Avx2>($($arg),*)
                }
                if $crate::kernels::has_avx2_fma() {
                    // SAFETY: the CPU supports AVX2 and FMA (checked at run time).
                    return unsafe { avx2($($arg),*) };
                }
            }
            imp::<$crate::kernels::simd::Native>($($arg),*)
        }
    };
    (lanes $V:ident; $(#[$meta:meta])* $vis:vis unsafe fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        #[inline(always)]
        #[allow(clippy::too_many_arguments)]
        $vis unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            unsafe fn imp<$V: $crate::kernels::simd::Lanes>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[inline]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    imp::<$crate::kernels::simd::Avx2>($($arg),*)
                }
                if $crate::kernels::has_avx2_fma() {
                    return avx2($($arg),*);
                }
            }
            imp::<$crate::kernels::simd::Native>($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

/// The minimum number of items per rayon task when each item costs `flops_per_item`
/// (everything, on a thread that runs its kernels [`sequentially`]).
#[inline]
pub(crate) fn min_items(flops_per_item: usize) -> usize {
    if is_sequential() {
        return usize::MAX;
    }
    (GRAIN_FLOPS / flops_per_item.max(1)).max(1)
}

thread_local! {
    static SEQUENTIAL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether kernels called on this thread must not split their work.
#[inline]
pub(crate) fn is_sequential() -> bool {
    SEQUENTIAL.with(|s| s.get())
}

/// Runs `f` with every kernel it calls on the calling thread alone. Data-parallel training gives
/// each thread a part of the batch; splitting that part's kernels again would only add fork-join
/// overhead, since every thread is busy.
pub fn sequentially<R>(f: impl FnOnce() -> R) -> R {
    let before = SEQUENTIAL.with(|s| s.replace(true));
    let result = f();
    SEQUENTIAL.with(|s| s.set(before));
    result
}

/// Asks for the start of `x`, which a kernel will read soon: one cache line for each 16 floats
/// from `x[0]`, for up to 64 floats (an attention head's row; a row that does not start on a line
/// leaves its last line to the hardware). A hint that never faults and changes no result. x86-64
/// only (SSE's `PREFETCHT0`, in every x86-64 CPU); nothing elsewhere.
#[inline(always)]
pub(crate) fn prefetch(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for i in (0..x.len().min(64)).step_by(16) {
        // SAFETY: PREFETCHT0 is in SSE, which every x86-64 CPU has; the address is inside `x`.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(x.as_ptr().add(i) as *const i8)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// A raw pointer that may cross threads. Kernels that write disjoint, non-contiguous parts of one
/// buffer from several threads (e.g. one attention head's columns of a (B, T, C) tensor) use it;
/// each such use states why the writes are disjoint.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub *mut f32);
// SAFETY: only used for writes to disjoint elements, as argued at each use.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer. A method rather than field access, so that closures capture the whole
    /// `SharedMut` (which is `Sync`) and not the bare raw pointer (which is not).
    #[inline]
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

simd_fn! {
    lanes V;
    /// Dot product: four 8-lane accumulators of fused multiply-adds where the CPU has vectors
    /// (a single running sum would be a chain of dependent additions), the tail one by one.
    pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [V::zero(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats below n of both slices.
        unsafe {
            while i + 32 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let k = i + 8 * j;
                    *acc = V::load(pa.add(k)).mul_add(V::load(pb.add(k)), *acc);
                }
                i += 32;
            }
            while i + 8 <= n {
                acc[0] = V::load(pa.add(i)).mul_add(V::load(pb.add(i)), acc[0]);
                i += 8;
            }
        }
        let mut total = acc[0].add(acc[1]).add(acc[2].add(acc[3])).sum();
        for j in i..n {
            total += a[j] * b[j];
        }
        total
    }
}

simd_fn! {
    lanes V;
    /// `y += a * x`, with 8-lane fused multiply-adds where the CPU has them.
    pub(crate) fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
        let n = y.len().min(x.len());
        let (py, px) = (y.as_mut_ptr(), x.as_ptr());
        let va = V::splat(a);
        let mut i = 0;
        // SAFETY: every access is 8 floats below n of both slices.
        unsafe {
            while i + 8 <= n {
                va.mul_add(V::load(px.add(i)), V::load(py.add(i))).store(py.add(i));
                i += 8;
            }
        }
        for j in i..n {
            y[j] += a * x[j];
        }
    }
}

simd_fn! {
    lanes V;
    /// `out (+)= sum_u weights[u] * row_u`, where row u is the `out.len()` floats at
    /// `rows + u * stride`: a weighted sum of rows (attention's `sum_u a[t, u] v_u`). Unlike a
    /// loop of [`axpy`] into `out`, the sums stay in registers until the end: eight columns at a
    /// time, two accumulators alternating over the rows so that consecutive multiply-adds do not
    /// wait on each other.
    ///
    /// # Safety
    /// Row u must be readable for every u < weights.len().
    pub(crate) unsafe fn weighted_rows(
        out: &mut [f32],
        weights: &[f32],
        rows: *const f32,
        stride: usize,
        accumulate: bool,
    ) {
        let n = out.len();
        let po = out.as_mut_ptr();
        let mut c = 0;
        while c + 8 <= n {
            let mut acc = [V::zero(); 2];
            for (u, &w) in weights.iter().enumerate() {
                let x = V::load(rows.add(u * stride + c));
                acc[u & 1] = V::splat(w).mul_add(x, acc[u & 1]);
            }
            let mut sum = acc[0].add(acc[1]);
            if accumulate {
                sum = sum.add(V::load(po.add(c)));
            }
            sum.store(po.add(c));
            c += 8;
        }
        while c < n {
            let mut sum = if accumulate { *po.add(c) } else { 0.0 };
            for (u, &w) in weights.iter().enumerate() {
                sum += w * *rows.add(u * stride + c);
            }
            *po.add(c) = sum;
            c += 1;
        }
    }
}

/// `e^x` for f32, within 2 ulp of the exact value on the range the kernels use, written so that
/// loops over it vectorise (libm's `expf` is an opaque call, and GELU and softmax spend most of
/// their time in it).
///
/// Range reduction `x = k ln2 + r` with `|r| <= ln2 / 2`, then `e^x = 2^k e^r` with `e^r` from the
/// Cephes degree-6 polynomial. `k` is found by adding 1.5 * 2^23, which rounds `x / ln2` to an
/// integer held in the low mantissa bits; `2^k` is then built from those bits with integer
/// arithmetic only (a float-to-int conversion would not vectorise). Inputs below -87.3 give
/// ~1e-38 rather than 0 (no subnormals) and inputs above 88.7 saturate near f32::MAX.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23
    let x = x.clamp(-87.3, 88.7);
    let shifted = x * LOG2E + ROUND;
    let k = shifted - ROUND;
    let r = x - k * LN2_HI - k * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let er = p * r * r + r + 1.0;
    // shifted's bits are 0x4B40_0000 + k; 2^k's are (k + 127) << 23.
    let k_bits = shifted.to_bits().wrapping_sub(0x4B40_0000);
    let two_k = f32::from_bits(k_bits.wrapping_add(127) << 23);
    er * two_k
}

/// Sum with eight independent accumulators (see [`dot`]).
#[inline(always)]
pub(crate) fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for j in 0..8 {
            acc[j] += c[j];
        }
    }
    tail + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

simd_fn! {
    lanes V;
    /// The largest of `x` (at least one float; NaNs are not expected).
    pub(crate) fn max(x: &[f32]) -> f32 {
        let n = x.len();
        let p = x.as_ptr();
        let mut m = V::splat(f32::NEG_INFINITY);
        let mut i = 0;
        // SAFETY: every load reads below n.
        unsafe {
            while i + 8 <= n {
                m = m.max(V::load(p.add(i)));
                i += 8;
            }
        }
        let mut best = m.max_lane();
        for &a in &x[i..] {
            if a > best {
                best = a;
            }
        }
        best
    }
}

simd_fn! {
    lanes V;
    /// `row[i] = e^(row[i] - shift)` for every i; returns the sum of the new values (the
    /// numerator and denominator of a softmax with `shift` its row maximum). `e^x` is a chain of
    /// about twenty dependent operations, so two vectors are kept in flight.
    pub(crate) fn exp_shifted_sum(row: &mut [f32], shift: f32) -> f32 {
        let n = row.len();
        let p = row.as_mut_ptr();
        let vs = V::splat(shift);
        let mut acc = [V::zero(); 2];
        let mut i = 0;
        // SAFETY: every access lies below n.
        unsafe {
            while i + 16 <= n {
                for (j, acc) in acc.iter_mut().enumerate() {
                    let e = V::load(p.add(i + 8 * j)).sub(vs).exp();
                    e.store(p.add(i + 8 * j));
                    *acc = acc.add(e);
                }
                i += 16;
            }
            if i + 8 <= n {
                let e = V::load(p.add(i)).sub(vs).exp();
                e.store(p.add(i));
                acc[0] = acc[0].add(e);
                i += 8;
            }
            if i < n {
                // The last 1-7 floats as one vector whose other lanes are not added.
                let r = n - i;
                let e = V::load_partial(p.add(i), r).sub(vs).exp();
                e.store_partial(p.add(i), r);
                let mut lanes = [0.0f32; 8];
                e.store(lanes.as_mut_ptr());
                lanes[r..].fill(0.0);
                acc[1] = acc[1].add(V::load(lanes.as_ptr()));
            }
        }
        acc[0].add(acc[1]).sum()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let want = (x as f64).exp();
            let got = super::exp(x) as f64;
            worst = worst.max((got - want).abs() / want);
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
        assert_eq!(super::exp(0.0), 1.0);
        assert!(super::exp(-1000.0) < 1e-37 && super::exp(1000.0) > 1e38);
    }

    #[test]
    fn exp_shifted_sum_matches_the_scalar_exp() {
        // Lengths that exercise the 16-wide, 8-wide and scalar parts.
        for n in [1usize, 7, 8, 15, 16, 23, 64, 65] {
            let row: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731).sin() * 30.0).collect();
            let shift = 3.0;
            let mut got = row.clone();
            let total = super::exp_shifted_sum(&mut got, shift);
            let mut want_total = 0.0f64;
            for (g, &x) in got.iter().zip(&row) {
                let want = ((x - shift) as f64).exp();
                want_total += want;
                assert!(((*g as f64) - want).abs() <= 3e-7 * want, "{g} vs {want}");
            }
            assert!((total as f64 - want_total).abs() <= 1e-6 * want_total);
        }
    }
}

#[cfg(test)]
pub(crate) mod gradcheck {
    //! Finite-difference gradient checking shared by the kernel tests.
    //!
    //! For a scalar function `L(x)` built from a kernel's forward pass and a fixed random weighting
    //! of its outputs, the analytic gradient from the backward pass must match the central
    //! difference `(L(x + h e_i) - L(x - h e_i)) / 2h`, computed in f64 on the f32 kernel.

    use crate::rng::Rng;

    pub fn random_vec(n: usize, rng: &mut Rng, scale: f32) -> Vec<f32> {
        (0..n).map(|_| rng.normal() * scale).collect()
    }

    /// Compares `analytic` with central differences of `loss` around `x`, for at most `max_checks`
    /// evenly spread coordinates. Fails if the relative error (against the gradient's scale)
    /// exceeds `tol`.
    pub fn check(
        name: &str,
        x: &[f32],
        analytic: &[f32],
        mut loss: impl FnMut(&[f32]) -> f64,
        tol: f64,
    ) {
        assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
        let scale = analytic
            .iter()
            .map(|g| g.abs() as f64)
            .fold(0.0, f64::max)
            .max(1e-3);
        let step = (x.len() / 64).max(1);
        let mut probe = x.to_vec();
        let mut worst = 0.0f64;
        for i in (0..x.len()).step_by(step) {
            let h = 1e-2 * (x[i].abs().max(0.1)) as f64;
            probe[i] = (x[i] as f64 + h) as f32;
            let up = loss(&probe);
            probe[i] = (x[i] as f64 - h) as f32;
            let down = loss(&probe);
            probe[i] = x[i];
            let real_h =
                (((x[i] as f64 + h) as f32) as f64 - ((x[i] as f64 - h) as f32) as f64) / 2.0;
            let numeric = (up - down) / (2.0 * real_h);
            let err = (numeric - analytic[i] as f64).abs() / scale;
            worst = worst.max(err);
            assert!(
                err < tol,
                "{name}[{i}]: analytic {} vs numeric {numeric} (relative error {err:.2e})",
                analytic[i]
            );
        }
        assert!(worst.is_finite());
    }

    /// `sum_i w_i * y_i` in f64: a scalar loss whose gradient with respect to `y` is `w`.
    pub fn weighted_sum(y: &[f32], w: &[f32]) -> f64 {
        y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    /// Fails unless `got` matches `want` (a fast kernel's output and its reference twin's) to
    /// within `tol` of `want`'s largest magnitude; returns that relative difference.
    pub fn assert_close(name: &str, got: &[f32], want: &[f32], tol: f64) -> f64 {
        assert_eq!(got.len(), want.len(), "{name}: length");
        let scale = want
            .iter()
            .map(|x| x.abs() as f64)
            .fold(0.0, f64::max)
            .max(1e-12);
        let worst = got
            .iter()
            .zip(want)
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .fold(0.0, f64::max)
            / scale;
        assert!(
            worst < tol,
            "{name}: differs from the reference by {worst:.2e} of its scale"
        );
        worst
    }
}
