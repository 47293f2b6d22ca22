//! Speed measurement: training steps, a matrix-product peak probe, and generation.
//!
//! Training speed is reported as median milliseconds per step (forward, backward, AdamW; batch
//! sampling included) after warm-up, tokens per second (B*T per step), and achieved GFLOP/s by
//! [`Model::flops_per_step`]: `6 * params * tokens + 12 * n_layer * n_embd * block_size * tokens`.
//! The peaks are what the cores can do at all, measured in the same run on every thread at once
//! with register-only loops (no memory traffic, independent accumulators): fp32 fused
//! multiply-adds, and, where the CPU has AVX512_BF16, bf16 dot products (`VDPBF16PS`, twice the
//! flops per instruction). A run is compared with the peak of its own precision. Either engine
//! can be timed ([`Engine`]), and the fast engine with its batch in a chosen number of
//! data-parallel shards: what the engine and the sharding buy.

use crate::config::{ModelConfig, TrainConfig};
use crate::data::TINY_SHAKESPEARE;
use crate::engine::Engine;
use crate::model::Model;
use crate::profile;
use crate::rng::Rng;
use crate::sampling::{Generator, SampleSettings};
use crate::tokenizer::{TokenId, Tokenizer};
use crate::training::{TrainError, Trainer};
use web_time::Instant;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[derive(Debug, Clone)]
pub struct TrainBench {
    pub params: usize,
    /// The data-parallel shards each batch was cut into.
    pub shards: usize,
    pub ms_per_step: f64,
    pub tokens_per_s: f64,
    pub gflops: f64,
    /// Time per step in each kernel, summed over threads: (name, forward s, backward s).
    pub breakdown: Vec<(&'static str, f64, f64)>,
}

/// How [`bench_training`] runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrainBenchOptions {
    /// Untimed steps first (thread pools, caches and the allocator settle).
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Also time each kernel ([`profile`]).
    pub breakdown: bool,
    pub engine: Engine,
    /// Data-parallel shards per batch (None: the trainer's choice, one per thread where a step
    /// is large enough).
    pub shards: Option<usize>,
}

/// Times training steps on Tiny Shakespeare (vocabulary 65).
pub fn bench_training(
    model_cfg: &ModelConfig,
    train_cfg: &TrainConfig,
    options: TrainBenchOptions,
) -> Result<TrainBench, TrainError> {
    let TrainBenchOptions {
        warmup,
        steps,
        breakdown,
        engine,
        shards,
    } = options;
    let tokenizer = Tokenizer::from_text(TINY_SHAKESPEARE).expect("non-empty");
    let data = tokenizer.encode(TINY_SHAKESPEARE).expect("own vocabulary");
    let mut cfg = model_cfg.clone();
    cfg.vocab_size = tokenizer.vocab_size();
    let model = Model::new(cfg.clone(), train_cfg.seed);
    let params = model.num_params();
    let mut trainer = match shards {
        Some(n) => Trainer::with_shards_on(model, train_cfg.clone(), n, engine),
        None => Trainer::with_engine(model, train_cfg.clone(), engine),
    };
    for _ in 0..warmup {
        trainer.train_step(&data)?;
    }
    profile::reset();
    profile::enable(breakdown);
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t0 = Instant::now();
        trainer.train_step(&data)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    profile::enable(false);
    let per_step = median(&mut times);
    let tokens = (train_cfg.batch_size * cfg.block_size) as f64;
    let breakdown = if breakdown {
        profile::totals()
            .into_iter()
            .map(|(k, f, b)| (k.name(), f / steps as f64, b / steps as f64))
            .collect()
    } else {
        Vec::new()
    };
    Ok(TrainBench {
        params,
        shards: trainer.shard_count(),
        ms_per_step: per_step * 1e3,
        tokens_per_s: tokens / per_step,
        gflops: trainer.model.flops_per_step(train_cfg.batch_size) / per_step / 1e9,
        breakdown,
    })
}

/// Iterations of a peak probe's loop, and rounds (the best is kept).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const PROBE_ITERATIONS: u64 = 4_000_000;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const PROBE_ROUNDS: usize = 5;

/// Runs `probe` (returning flops done) on every thread of the current pool at once and returns
/// the best round's total GFLOP/s.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn probe_all_threads(probe: fn(u64) -> f64) -> f64 {
    (0..PROBE_ROUNDS)
        .map(|_| {
            let t0 = Instant::now();
            let flops: f64 = rayon::broadcast(|_| probe(PROBE_ITERATIONS)).iter().sum();
            flops / t0.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

/// The fp32 peak (GFLOP/s) of the current pool: fused multiply-adds on twelve independent
/// registers, 512 bits wide where the CPU has AVX-512, else 256, or NEON's 128 on ARM64 (none
/// measured elsewhere, or on x86 without FMA: 0).
pub fn fp32_fma_peak() -> f64 {
    #[cfg(target_arch = "aarch64")]
    return probe_all_threads(peak_loops::fma_neon);
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX512F.
            return probe_all_threads(|n| unsafe { peak_loops::fma512(n) });
        }
        if crate::kernels::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return probe_all_threads(|n| unsafe { peak_loops::fma256(n) });
        }
    }
    #[cfg(not(target_arch = "aarch64"))]
    0.0
}

/// The bf16 peak (GFLOP/s) of the current pool, `VDPBF16PS` on twelve independent registers
/// (64 flops each); `None` without AVX512_BF16.
pub fn bf16_dot_peak() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if crate::runtime::has_avx512_bf16() {
        // SAFETY: the CPU has AVX512_BF16 and AVX512F.
        return Some(probe_all_threads(|n| unsafe { peak_loops::dpbf16(n) }));
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod peak_loops {
    //! Register-only loops: each iteration updates twelve accumulators that do not depend on
    //! each other, enough to cover the instruction's latency on every current x86 core.
    use std::arch::x86_64::*;
    use std::hint::black_box;

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(n: u64) -> f64 {
        let (x, y) = (
            _mm256_set1_ps(black_box(0.999)),
            _mm256_set1_ps(black_box(1e-3)),
        );
        let mut acc = [_mm256_setzero_ps(); 12];
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm256_fmadd_ps(*a, x, y);
            }
        }
        black_box(acc);
        (n * 12 * 8 * 2) as f64
    }

    /// # Safety
    /// The CPU must have AVX512F.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(n: u64) -> f64 {
        let (x, y) = (
            _mm512_set1_ps(black_box(0.999)),
            _mm512_set1_ps(black_box(1e-3)),
        );
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_fmadd_ps(*a, x, y);
            }
        }
        black_box(acc);
        (n * 12 * 16 * 2) as f64
    }

    /// # Safety
    /// The CPU must have AVX512_BF16 and AVX512F.
    #[target_feature(enable = "avx512bf16,avx512f,avx512bw,avx512vl")]
    pub unsafe fn dpbf16(n: u64) -> f64 {
        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(black_box(0x3F80_3F80)));
        let y: __m512bh = std::mem::transmute(_mm512_set1_epi32(black_box(0x3A80_3A80)));
        let mut acc = [_mm512_setzero_ps(); 12];
        for _ in 0..n {
            for a in acc.iter_mut() {
                *a = _mm512_dpbf16_ps(*a, x, y);
            }
        }
        black_box(acc);
        // 16 lanes, each two products and two additions.
        (n * 12 * 16 * 4) as f64
    }
}

#[cfg(target_arch = "aarch64")]
mod peak_loops {
    //! A register-only loop: each iteration updates sixteen accumulators (four fused
    //! multiply-add pipes of four cycles' latency on Apple's and Arm's big cores).
    use std::arch::aarch64::*;
    use std::hint::black_box;

    pub fn fma_neon(n: u64) -> f64 {
        // SAFETY: NEON is part of every ARMv8-A CPU.
        unsafe {
            let (x, y) = (vdupq_n_f32(black_box(0.999)), vdupq_n_f32(black_box(1e-3)));
            let mut acc = [vdupq_n_f32(0.0); 16];
            for _ in 0..n {
                for a in acc.iter_mut() {
                    *a = vfmaq_f32(y, *a, x);
                }
            }
            black_box(acc);
        }
        (n * 16 * 4 * 2) as f64
    }
}

/// Generation speed on `engine` in tokens per second with the context full (`block_size` tokens
/// of context for every new token): fills the context with a prompt, then times `n` tokens.
pub fn bench_generation(model: &Model, n: usize, engine: Engine) -> f64 {
    let block = model.config.block_size;
    let mut rng = Rng::new(7);
    let prompt: Vec<TokenId> = (0..block)
        .map(|_| rng.below(model.config.vocab_size) as TokenId)
        .collect();
    let mut generator = Generator::new(model, &prompt, SampleSettings::default()).on(engine);
    // The prompt already fills the context; every timed token sees `block_size` tokens.
    let _ = generator.next_token(&mut rng);
    let t0 = Instant::now();
    for _ in 0..n {
        let _ = generator.next_token(&mut rng);
    }
    n as f64 / t0.elapsed().as_secs_f64()
}
