//! `chargpt bench`: how fast this machine trains and generates, next to what it could do.

use anyhow::{bail, Result};
use chargpt::bench::{self, TrainBench};
use chargpt::config;
use chargpt::engine::Engine;
use chargpt::model::Model;
use clap::Args;

#[derive(Args)]
pub struct BenchArgs {
    /// Preset to time (`chargpt presets` lists them).
    #[arg(long, default_value = config::DEFAULT_PRESET)]
    preset: String,
    /// Override a setting of the preset, e.g. --set batch_size=32.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Training steps to time after warm-up [default: about 10 seconds' worth, at least 3 (2 on
    /// the reference engine)].
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Untimed training steps first [default: a tenth of --steps, 1 to 20].
    #[arg(long, value_name = "N")]
    warmup: Option<usize>,
    /// Characters to generate for the generation timing, 0 skips it [default: 300; 10 on the
    /// reference engine, which recomputes the whole context for each].
    #[arg(long, value_name = "N")]
    gen_tokens: Option<usize>,
    /// Which implementation of the model to time.
    #[arg(long, value_enum, default_value_t)]
    engine: super::EngineArg,
    /// Cut each batch into N data-parallel shards [default: one per thread where a step is
    /// large enough]; --shards 1 leaves the threads to split each kernel instead.
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Run on threads that keep subnormal floats (slow on x86) instead of flushing them to zero:
    /// what flushing buys.
    #[arg(long)]
    keep_subnormals: bool,
    /// Also print the time per step of each kernel, forward and backward.
    #[arg(long)]
    breakdown: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The process's peak resident memory in MB, where the system says.
fn peak_rss_mb() -> Option<f64> {
    chargpt::memory::peak_resident().map(|b| b as f64 / (1u64 << 20) as f64)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if args.keep_subnormals {
        // The same number of threads, started without the flush-to-zero switch.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .build()?;
        return pool.install(|| bench(args));
    }
    bench(args)
}

fn bench(args: BenchArgs) -> Result<()> {
    let engine: Engine = args.engine.into();
    let preset = config::preset(&args.preset)?;
    let (mut model_cfg, mut train_cfg) = (preset.model, preset.train);
    for o in &args.overrides {
        let (k, v) = config::parse_override(o)?;
        config::apply_to_configs(&mut model_cfg, &mut train_cfg, k, v)?;
    }
    model_cfg.vocab_size = 65;
    model_cfg.validate()?;
    train_cfg.validate()?;
    super::train::check_memory(&model_cfg, &train_cfg)?;
    if args.steps == Some(0) {
        bail!("--steps must be at least 1");
    }
    if args.shards == Some(0) {
        bail!("--shards must be at least 1");
    }
    let flops = Model::new(model_cfg.clone(), 0).flops_per_step(train_cfg.batch_size);
    // About ten seconds at ~100 GFLOP/s (the reference engine: ~2), but at least 3 (2) and at
    // most 1000 steps.
    let steps = args.steps.unwrap_or_else(|| match engine {
        Engine::Fast => ((1e12 / flops) as usize).clamp(3, 1000),
        Engine::Reference => ((2e10 / flops) as usize).clamp(2, 1000),
    });
    let warmup = args.warmup.unwrap_or((steps / 10).clamp(1, 20));
    let gen_tokens = args.gen_tokens.unwrap_or(match engine {
        Engine::Fast => 300,
        Engine::Reference => 10,
    });
    let threads = rayon::current_num_threads();
    note!(
        "timing {warmup} warm-up and {steps} training steps of {} on the {engine} engine (about {:.0} GFLOP each)...",
        args.preset,
        flops / 1e9
    );
    let options = bench::TrainBenchOptions {
        warmup,
        steps,
        breakdown: args.breakdown,
        engine,
        shards: args.shards,
    };
    let train: TrainBench = bench::bench_training(&model_cfg, &train_cfg, options)?;
    note!("measuring this machine's arithmetic peaks...");
    let precision = train_cfg.precision.resolve();
    let fp32_peak = bench::fp32_fma_peak();
    let bf16_peak = bench::bf16_dot_peak();
    // The run is compared with the peak of the arithmetic its products use.
    let (peak, peak_name) = match (precision, bf16_peak) {
        (config::Precision::Bf16, Some(p)) => (p, "bf16 dot-product"),
        _ => (fp32_peak, "fp32 fused multiply-add"),
    };
    let gen = (gen_tokens > 0 && model_cfg.architecture == config::Architecture::Transformer).then(
        || {
            note!("timing the generation of {gen_tokens} characters...");
            let model = Model::new(model_cfg.clone(), 1);
            bench::bench_generation(&model, gen_tokens, engine)
        },
    );
    let rss = peak_rss_mb();
    if args.json {
        let breakdown: serde_json::Map<String, serde_json::Value> = train
            .breakdown
            .iter()
            .map(|(k, f, b)| {
                (
                    k.to_string(),
                    serde_json::json!({"forward_ms": f * 1e3, "backward_ms": b * 1e3}),
                )
            })
            .collect();
        say!(
            "{}",
            serde_json::json!({
                "preset": args.preset,
                "engine": engine.name(),
                "precision": precision,
                "threads": threads,
                "shards": train.shards,
                "flush_subnormals": !args.keep_subnormals,
                "params": train.params,
                "batch_size": train_cfg.batch_size,
                "block_size": model_cfg.block_size,
                "steps": steps,
                "ms_per_step": train.ms_per_step,
                "tokens_per_s": train.tokens_per_s,
                "gflops": train.gflops,
                "peak_gflops": peak,
                "percent_of_peak": 100.0 * train.gflops / peak,
                "fp32_fma_peak_gflops": fp32_peak,
                "bf16_dot_peak_gflops": bf16_peak,
                "gen_tokens_per_s": gen,
                "peak_rss_mb": rss,
                "breakdown": breakdown,
            })
        );
        return Ok(());
    }
    say!(
        "{}: {} parameters, B{} T{}, {engine} engine, {} products, {threads} thread{}, {} shard{}{}",
        args.preset,
        super::format::thousands(train.params),
        train_cfg.batch_size,
        model_cfg.block_size,
        match precision {
            config::Precision::Fp32 | config::Precision::Auto => "fp32",
            config::Precision::Bf16 => "bf16",
        },
        if threads == 1 { "" } else { "s" },
        train.shards,
        if train.shards == 1 { "" } else { "s" },
        if args.keep_subnormals {
            ", subnormals kept"
        } else {
            ""
        }
    );
    say!(
        "training: {:.3} ms/step (median of {steps} after {warmup} warm-up), {:.0} tokens/s",
        train.ms_per_step,
        train.tokens_per_s
    );
    say!(
        "          {:.1} GFLOP/s = {:.0}% of this machine's {:.0} GFLOP/s {peak_name} peak",
        train.gflops,
        100.0 * train.gflops / peak,
        peak
    );
    say!(
        "          (peaks on {threads} thread{}: fp32 {fp32_peak:.0} GFLOP/s, bf16 {})",
        if threads == 1 { "" } else { "s" },
        bf16_peak.map_or("none: no AVX512_BF16".to_string(), |p| format!(
            "{p:.0} GFLOP/s"
        ))
    );
    say!("          (GFLOP/s = (6 x params + 12 x n_layer x n_embd x block_size) x tokens per step / step time)");
    if let Some(g) = gen {
        say!(
            "generation: {g:.0} tokens/s with a full context of {} characters",
            model_cfg.block_size
        );
    }
    match rss {
        Some(r) => say!("peak memory: {r:.0} MB"),
        None => say!("peak memory: unknown on this system"),
    }
    if args.breakdown {
        say!("per step, by kernel (thread time, summed over threads):");
        let total: f64 = train.breakdown.iter().map(|(_, f, b)| f + b).sum();
        for (k, f, b) in &train.breakdown {
            if f + b > 0.0 {
                say!(
                    "  {k:14} forward {:9.3} ms  backward {:9.3} ms  {:5.1}%",
                    f * 1e3,
                    b * 1e3,
                    100.0 * (f + b) / total
                );
            }
        }
    }
    Ok(())
}
