//! Speed measurement: training steps, a matrix-product peak probe, and generation.
//!
//! Training speed is reported as median milliseconds per step (forward, backward, AdamW; batch
//! sampling included) after warm-up, tokens per second (B*T per step), and achieved GFLOP/s by
//! [`Model::flops_per_step`]: `6 * params * tokens + 12 * n_layer * n_embd * block_size * tokens`.
//! The peak is the best rate of large f32 products through the same `gemm` path the model uses,
//! measured in the same run. Either engine can be timed ([`Engine`]), and the fast engine with its
//! batch in a chosen number of data-parallel shards: what the engine and the sharding buy.

use crate::config::{ModelConfig, TrainConfig};
use crate::data::TINY_SHAKESPEARE;
use crate::engine::Engine;
use crate::model::Model;
use crate::profile;
use crate::rng::Rng;
use crate::sampling::{Generator, SampleSettings};
use crate::tokenizer::{TokenId, Tokenizer};
use crate::training::{TrainError, Trainer};
use std::time::Instant;

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

/// The best f32 matrix-product rate (GFLOP/s) of a few large products through the model's
/// matmul kernel on the current rayon pool.
pub fn matmul_peak() -> f64 {
    let mut best = 0.0f64;
    for (n, ic, oc) in [(4096, 768, 768), (2048, 1024, 1024)] {
        let mut rng = Rng::new(1);
        let inp: Vec<f32> = (0..n * ic).map(|_| rng.uniform()).collect();
        let w: Vec<f32> = (0..oc * ic).map(|_| rng.uniform()).collect();
        let mut out = vec![0.0f32; n * oc];
        let flops = 2.0 * (n * ic * oc) as f64;
        crate::kernels::matmul::forward(&mut out, &inp, &w, None, ic, oc);
        let mut times: Vec<f64> = (0..7)
            .map(|_| {
                let t0 = Instant::now();
                crate::kernels::matmul::forward(&mut out, &inp, &w, None, ic, oc);
                t0.elapsed().as_secs_f64()
            })
            .collect();
        best = best.max(flops / median(&mut times) / 1e9);
    }
    best
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
