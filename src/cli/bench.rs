//! `chargpt bench`: how fast this machine trains and generates, next to what it could do.

use anyhow::{bail, Result};
use chargpt::bench::{self, TrainBench};
use chargpt::config;
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
    /// Training steps to time after warm-up [default: about 10 seconds' worth, at least 3].
    #[arg(long, value_name = "N")]
    steps: Option<usize>,
    /// Characters to generate for the generation timing (0 skips it).
    #[arg(long, default_value_t = 300, value_name = "N")]
    gen_tokens: usize,
    /// Also print the time per step of each kernel, forward and backward.
    #[arg(long)]
    breakdown: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// The process's peak resident memory in MB (Linux; None elsewhere).
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: BenchArgs) -> Result<()> {
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
    let flops = Model::new(model_cfg.clone(), 0).flops_per_step(train_cfg.batch_size);
    // About ten seconds at ~100 GFLOP/s, but at least 3 and at most 1000 steps.
    let steps = args
        .steps
        .unwrap_or_else(|| ((1e12 / flops) as usize).clamp(3, 1000));
    let warmup = (steps / 10).clamp(1, 20);
    let threads = rayon::current_num_threads();
    note!(
        "timing {warmup} warm-up and {steps} training steps of {} (about {:.0} GFLOP each)...",
        args.preset,
        flops / 1e9
    );
    let train: TrainBench =
        bench::bench_training(&model_cfg, &train_cfg, warmup, steps, args.breakdown)?;
    note!("measuring this machine's arithmetic peaks...");
    let precision = train_cfg.precision;
    let fp32_peak = bench::fp32_fma_peak();
    let bf16_peak = bench::bf16_dot_peak();
    // The run is compared with the peak of the arithmetic its products use.
    let (peak, peak_name) = match (precision, bf16_peak) {
        (config::Precision::Bf16, Some(p)) => (p, "bf16 dot-product"),
        _ => (fp32_peak, "fp32 fused multiply-add"),
    };
    let gen = (args.gen_tokens > 0 && model_cfg.architecture == config::Architecture::Transformer)
        .then(|| {
            note!("timing the generation of {} characters...", args.gen_tokens);
            let model = Model::new(model_cfg.clone(), 1);
            bench::bench_generation(&model, args.gen_tokens)
        });
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
                "precision": precision,
                "threads": threads,
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
        "{}: {} parameters, B{} T{}, {threads} thread{}, {} products",
        args.preset,
        super::presets::thousands(train.params),
        train_cfg.batch_size,
        model_cfg.block_size,
        if threads == 1 { "" } else { "s" },
        match precision {
            config::Precision::Fp32 => "fp32",
            config::Precision::Bf16 => "bf16",
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
    if let Some(r) = rss {
        say!("peak memory: {r:.0} MB");
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
