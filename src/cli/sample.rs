//! `chargpt sample`: generate text from a trained model, writing each character as it is drawn.

use anyhow::{bail, Result};
use chargpt::checkpoint;
use chargpt::data;
use chargpt::rng::Rng;
use chargpt::sampling::{Generator, SampleSettings};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// More characters than a person reads; the generator keeps every one in memory.
const MAX_TOKENS: usize = 10_000_000;

#[derive(Args)]
pub struct SampleArgs {
    /// Checkpoint directory.
    #[arg(long, default_value = "runs/default", value_name = "DIR")]
    model: PathBuf,
    /// Text to continue [default: a newline, the first character of the vocabulary].
    #[arg(long, conflicts_with = "prompt_file", allow_hyphen_values = true)]
    prompt: Option<String>,
    /// Read the text to continue from a UTF-8 file.
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Characters to generate per sample.
    #[arg(long, default_value_t = 500, value_name = "N")]
    tokens: usize,
    /// Divides the logits: below 1 is more conservative, above 1 more adventurous; 0 always takes
    /// the most likely character.
    #[arg(
        long,
        default_value_t = 1.0,
        allow_negative_numbers = true,
        value_name = "T"
    )]
    temperature: f32,
    /// Draw only from the K most likely characters [default: all].
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,
    /// Independent samples, separated by a line of dashes.
    #[arg(long, default_value_t = 1, value_name = "N")]
    num_samples: usize,
    /// The same seed (with the same model and options) gives the same text.
    #[arg(long, default_value_t = 1337, value_name = "S")]
    seed: u64,
    /// Which implementation of the model computes the logits (the reference one recomputes the
    /// whole context for every character).
    #[arg(long, value_enum, default_value_t)]
    engine: super::EngineArg,
}

pub fn run(args: SampleArgs) -> Result<()> {
    let settings = SampleSettings {
        temperature: args.temperature,
        top_k: args.top_k,
    };
    if let Err(e) = settings.check() {
        bail!("--{}", e.replacen("top_k", "top-k", 1));
    }
    if args.tokens > MAX_TOKENS {
        bail!("--tokens must be at most {MAX_TOKENS}; run several samples for more");
    }
    if args.num_samples == 0 {
        bail!("--num-samples must be at least 1");
    }
    let prompt_text = match (&args.prompt, &args.prompt_file) {
        (_, Some(path)) => data::read_text(path)?,
        (Some(p), None) => p.clone(),
        (None, None) => String::new(),
    };
    let ckpt = checkpoint::load(&args.model)?;
    let prompt = super::encode_prompt(&ckpt.tokenizer, &prompt_text)?;
    let mut rng = Rng::new(args.seed);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let tok = &ckpt.tokenizer;
    let mut write_error = None;
    for i in 0..args.num_samples {
        if i > 0 {
            let _ = writeln!(out, "\n---------------");
        }
        let _ = write!(out, "{prompt_text}");
        let mut generator = Generator::new(&ckpt.model, &prompt, settings).on(args.engine.into());
        for _ in 0..args.tokens {
            if write_error.is_some() {
                // The reader has gone (`| head`): nothing more to draw for.
                break;
            }
            let id = generator.next_token(&mut rng);
            if let Ok(c) = tok.decode_one(id) {
                if let Err(e) = write!(out, "{c}").and_then(|()| out.flush()) {
                    write_error = Some(e);
                }
            }
        }
    }
    let end = writeln!(out).and_then(|()| out.flush());
    match write_error.map_or(end, Err) {
        // A reader that stops early (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
