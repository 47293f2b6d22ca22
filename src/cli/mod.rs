//! Argument parsing and the subcommands.

use anyhow::{bail, Context, Result};
use chargpt::checkpoint;
use chargpt::config::{self, ModelConfig, TrainConfig};
use chargpt::data::{self, Dataset, Split};
use chargpt::model::Model;
use chargpt::rng::Rng;
use chargpt::sampling::{self, SampleSettings};
use chargpt::tokenizer::Tokenizer;
use chargpt::training::{evaluate_exact, Trainer};
use clap::{Args, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
#[command(
    name = "chargpt",
    version,
    about = "A character-level GPT you can train on a laptop CPU"
)]
struct Cli {
    /// Worker threads (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model (by default the `default` preset on the embedded Tiny Shakespeare).
    Train(TrainArgs),
    /// Generate text from a trained model.
    Sample(SampleArgs),
    /// The exact loss of a trained model over a whole split.
    Eval(EvalArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Preset to start from (`chargpt presets` lists them).
    #[arg(long, default_value = config::DEFAULT_PRESET)]
    preset: String,
    /// Output directory (default: runs/<preset>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed for initialisation, batches and dropout.
    #[arg(long)]
    seed: Option<u64>,
    /// Override a setting, e.g. --set n_layer=4 --set learning_rate=3e-4.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// Training text (UTF-8); default: the embedded Tiny Shakespeare.
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(Args)]
struct SampleArgs {
    /// Checkpoint directory.
    #[arg(long, default_value = "runs/default")]
    model: PathBuf,
    /// Text to continue (default: a newline).
    #[arg(long, default_value = "")]
    prompt: String,
    /// Characters to generate.
    #[arg(long, default_value_t = 500)]
    tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long)]
    top_k: Option<usize>,
    #[arg(long, default_value_t = 1337)]
    seed: u64,
}

#[derive(Args)]
struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long, default_value = "runs/default")]
    model: PathBuf,
    /// Text to evaluate on (default: the embedded Tiny Shakespeare).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "val")]
    split: String,
    /// Print one JSON object instead of a sentence.
    #[arg(long)]
    json: bool,
}

pub fn run() -> Result<()> {
    let cli = Cli::parse();
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        pool = pool.num_threads(n);
    }
    let pool = pool.build().context("cannot start the worker threads")?;
    // Everything runs inside the pool, so kernels fork and join without a hand-off from an
    // outside thread.
    pool.install(|| match cli.command {
        Command::Train(args) => train(args),
        Command::Sample(args) => sample(args),
        Command::Eval(args) => eval(args),
    })
}

fn load_text(path: Option<&Path>) -> Result<String> {
    Ok(match path {
        Some(p) => data::read_text(p)?,
        None => data::TINY_SHAKESPEARE.to_string(),
    })
}

fn train(args: TrainArgs) -> Result<()> {
    let preset = config::preset(&args.preset)?;
    let (mut model_cfg, mut train_cfg): (ModelConfig, TrainConfig) = (preset.model, preset.train);
    for o in &args.overrides {
        let (k, v) = config::parse_override(o)?;
        config::apply_to_configs(&mut model_cfg, &mut train_cfg, k, v)?;
    }
    if let Some(seed) = args.seed {
        train_cfg.seed = seed;
    }
    let text = load_text(args.data.as_deref())?;
    let tokenizer = Tokenizer::from_text(&text)?;
    model_cfg.vocab_size = tokenizer.vocab_size();
    model_cfg.validate()?;
    train_cfg.validate()?;
    let dataset = Dataset::new(&text, &tokenizer)?;
    dataset.check_block_size(model_cfg.block_size)?;
    let out = args
        .out
        .unwrap_or_else(|| PathBuf::from("runs").join(&args.preset));

    let model = Model::new(model_cfg, train_cfg.seed);
    println!(
        "training {} ({} parameters) for {} steps on {} characters; checkpoints in {}",
        args.preset,
        model.num_params(),
        train_cfg.steps,
        text.chars().count(),
        out.display()
    );
    let mut trainer = Trainer::new(model, train_cfg.clone());
    let mut best: Option<f32> = None;
    let start = Instant::now();
    let mut train_time = 0.0f64;
    for step in 0..train_cfg.steps {
        let t0 = Instant::now();
        trainer.train_step(&dataset.train)?;
        train_time += t0.elapsed().as_secs_f64();
        let done = step + 1;
        if done % train_cfg.eval_interval == 0 || done == train_cfg.steps {
            let (tr, va) = trainer.estimate_losses(&dataset);
            println!(
                "step {done}: train {tr:.4}, val {va:.4}  ({:.2} ms/step, {:.0} s)",
                1e3 * train_time / done as f64,
                start.elapsed().as_secs_f64()
            );
            if best.is_none_or(|b| va < b) {
                best = Some(va);
                checkpoint::save_model(&out, &trainer.model, &tokenizer, &train_cfg, done, best)?;
            }
        }
    }
    let exact = evaluate_exact(&trainer.model, &dataset.val, 64);
    println!(
        "done in {:.1} s ({:.2} ms/step); exact val loss of the final model {:.4} over {} tokens",
        start.elapsed().as_secs_f64(),
        1e3 * train_time / train_cfg.steps as f64,
        exact.loss,
        exact.tokens
    );
    Ok(())
}

fn sample(args: SampleArgs) -> Result<()> {
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        bail!(
            "--temperature must be a positive number, got {}",
            args.temperature
        );
    }
    if args.top_k == Some(0) {
        bail!("--top-k must be at least 1");
    }
    let ckpt = checkpoint::load(&args.model)?;
    let prompt = ckpt.tokenizer.encode(&args.prompt)?;
    let settings = SampleSettings {
        temperature: args.temperature,
        top_k: args.top_k,
    };
    let mut rng = Rng::new(args.seed);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write!(out, "{}", args.prompt)?;
    let tok = &ckpt.tokenizer;
    sampling::generate(
        &ckpt.model,
        &prompt,
        args.tokens,
        settings,
        &mut rng,
        |id| {
            if let Ok(c) = tok.decode_one(id) {
                let _ = write!(out, "{c}");
                let _ = out.flush();
            }
        },
    );
    writeln!(out)?;
    Ok(())
}

fn eval(args: EvalArgs) -> Result<()> {
    let split = match args.split.as_str() {
        "val" => Split::Val,
        "train" => Split::Train,
        other => bail!("--split must be val or train, got {other:?}"),
    };
    let ckpt = checkpoint::load(&args.model)?;
    let text = load_text(args.data.as_deref())?;
    let dataset = Dataset::new(&text, &ckpt.tokenizer)?;
    dataset.check_block_size(ckpt.model.config.block_size)?;
    let exact = evaluate_exact(&ckpt.model, dataset.split(split), 64);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "split": split.name(),
                "loss": exact.loss,
                "tokens": exact.tokens,
                "windows": exact.windows,
            })
        );
    } else {
        println!(
            "{} loss {:.4} over {} tokens ({} windows of {})",
            split.name(),
            exact.loss,
            exact.tokens,
            exact.windows,
            ckpt.model.config.block_size
        );
    }
    Ok(())
}
