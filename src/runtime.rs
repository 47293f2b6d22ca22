//! The worker threads every computation runs on.
//!
//! One rayon pool, sized by `--threads` (default: all cores). Each of its threads is set to flush
//! subnormal floats to zero (x86's FTZ and DAZ bits, ARM64's FZ bit): gradients of a trained model are full of
//! values around 1e-40, and arithmetic on subnormals costs x86 CPUs up to a hundred times more.
//! Measured on the 10.8M model: 16.1 s per step without, 9.3 s with. Flushing values below
//! ~1.2e-38 to zero changes nothing a model learns (PyTorch offers the same switch,
//! `torch.set_flush_denormal`).

/// Sets flush-to-zero and denormals-are-zero on the calling thread (nothing on WebAssembly,
/// whose floats have no such switch).
pub fn flush_subnormals() {
    #[cfg(target_arch = "x86_64")]
    {
        let mut csr: u32 = 0;
        // SAFETY: stmxcsr/ldmxcsr read and write the SSE control register of this thread only;
        // bits 15 (FTZ) and 6 (DAZ) change how subnormal results and inputs are treated.
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
            csr |= (1 << 15) | (1 << 6);
            std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // SAFETY: FPCR is this thread's floating-point control register; bit 24 (FZ) flushes
        // subnormal inputs and results to zero.
        unsafe {
            let mut fpcr: u64;
            std::arch::asm!("mrs {}, fpcr", out(reg) fpcr, options(nomem, nostack));
            fpcr |= 1 << 24;
            std::arch::asm!("msr fpcr, {}", in(reg) fpcr, options(nomem, nostack));
        }
    }
}

/// A rayon pool of `threads` workers (all cores if `None`) that flush subnormals. Run the work
/// inside it with `pool.install(|| ...)`, so that kernels fork and join among its workers.
pub fn thread_pool(
    threads: Option<usize>,
) -> Result<rayon::ThreadPool, rayon::ThreadPoolBuildError> {
    let mut builder = rayon::ThreadPoolBuilder::new().start_handler(|_| flush_subnormals());
    if let Some(n) = threads {
        builder = builder.num_threads(n);
    }
    builder.build()
}

/// Whether this CPU runs bf16 dot products in hardware (AVX512_BF16, with the AVX-512 subsets the
/// bf16 kernels use), checked once.
pub fn has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512bf16")
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX512F with AVX512DQ (64-bit lane products: the dropout masks' hash),
/// checked once.
pub fn has_avx512_dq() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512dq")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The environment variable that lets `precision=bf16` run on a CPU without AVX512_BF16, with the
/// portable bf16 kernels: the same rounding, at well below fp32 speed. For checking what bf16
/// does to training on a machine that lacks the instruction; not for speed.
pub const BF16_EMULATE_ENV: &str = "CHARGPT_BF16_EMULATE";

static EMULATION: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Allows bf16 without AVX512_BF16 for the rest of the process, as [`BF16_EMULATE_ENV`] does
/// (for tests, which cannot safely set environment variables while other threads run).
pub fn allow_bf16_emulation() {
    EMULATION.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether [`BF16_EMULATE_ENV`] is 1 or [`allow_bf16_emulation`] was called.
pub fn bf16_emulation_allowed() -> bool {
    use std::sync::OnceLock;
    static ENV: OnceLock<bool> = OnceLock::new();
    EMULATION.load(std::sync::atomic::Ordering::Relaxed)
        || *ENV.get_or_init(|| std::env::var(BF16_EMULATE_ENV).is_ok_and(|v| v == "1"))
}

/// Whether `precision=bf16` can run here: in hardware, or emulated on request.
pub fn bf16_available() -> bool {
    has_avx512_bf16() || bf16_emulation_allowed()
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg_attr(
        target_arch = "wasm32",
        ignore = "WebAssembly's floats have no flush-to-zero switch"
    )]
    fn subnormals_flush_to_zero_inside_the_pool() {
        let pool = super::thread_pool(Some(1)).unwrap();
        let tiny = std::hint::black_box(1e-30f32);
        let (inside, outside) = (
            pool.install(|| std::hint::black_box(tiny) * std::hint::black_box(1e-10f32)),
            std::hint::black_box(tiny) * std::hint::black_box(1e-10f32),
        );
        assert_eq!(inside, 0.0);
        assert!(outside > 0.0);
    }
}
