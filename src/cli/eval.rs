//! `chargpt eval`: the exact loss of a trained model over every target of a split.

use super::{load_recorded_text, load_text};
use anyhow::Result;
use chargpt::checkpoint;
use chargpt::data::{window_count, Dataset, Split};
use chargpt::training::evaluate_exact_with_progress;
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
enum SplitArg {
    Val,
    Train,
}

#[derive(Args)]
pub struct EvalArgs {
    /// Checkpoint directory.
    #[arg(long, default_value = "runs/default", value_name = "DIR")]
    model: PathBuf,
    /// Text to evaluate on (split 90/10 as in training) [default: the text the model was trained
    /// on, as its config.json records it].
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    /// Print one JSON object: {"split": ..., "loss": ..., "tokens": ..., "windows": ...}.
    #[arg(long)]
    json: bool,
    /// Which implementation of the model computes the loss.
    #[arg(long, value_enum, default_value_t)]
    engine: super::EngineArg,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let split = match args.split {
        SplitArg::Val => Split::Val,
        SplitArg::Train => Split::Train,
    };
    let ckpt = checkpoint::load(&args.model)?;
    let (text, info) = match &args.data {
        Some(path) => load_text(Some(path))?,
        None => load_recorded_text(ckpt.config.data.as_ref())?,
    };
    let advice = format!(
        "evaluate on a text of the model's characters only (`chargpt vocab --model {} --data FILE` lists what a text adds)",
        args.model.display()
    );
    let dataset = Dataset::with_vocabulary(&text, &ckpt.tokenizer, &info.source, &advice)?;
    dataset.check_evaluable(split, ckpt.model.config.block_size, &info.source)?;
    let batch = ckpt.config.train.batch_size;
    let bar = super::progress_bar(
        window_count(dataset.split(split).len(), ckpt.model.config.block_size),
        &format!("{} windows", split.name()),
    );
    let exact = evaluate_exact_with_progress(
        &ckpt.model,
        dataset.split(split),
        batch,
        args.engine.into(),
        &mut |done, _| bar.set_position(done as u64),
    );
    bar.finish_and_clear();
    if args.json {
        say!(
            "{{\"split\": \"{}\", \"loss\": {}, \"tokens\": {}, \"windows\": {}}}",
            split.name(),
            exact.loss,
            exact.tokens,
            exact.windows
        );
    } else {
        say!(
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
