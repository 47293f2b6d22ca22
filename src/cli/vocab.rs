//! `chargpt vocab`: a model's characters, and which characters of a text it lacks.

use super::format::thousands;
use super::load_text;
use anyhow::Result;
use chargpt::checkpoint;
use chargpt::data::char_counts;
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct VocabArgs {
    /// Checkpoint directory.
    #[arg(long, default_value = "runs/default", value_name = "DIR")]
    model: PathBuf,
    /// A text to check against the vocabulary: which of its characters the model lacks, and how
    /// often each occurs.
    #[arg(long, value_name = "FILE")]
    data: Option<PathBuf>,
}

/// Characters per line of the listing.
const PER_LINE: usize = 8;

pub fn run(args: VocabArgs) -> Result<()> {
    let ckpt = checkpoint::load(&args.model)?;
    let chars = ckpt.tokenizer.chars();
    say!(
        "{} has {} characters (id: character; invisible ones escaped):",
        args.model.display(),
        chars.len()
    );
    // `{:?}` quotes a character and escapes what cannot be seen: '\n', '\t', '\u{a0}'.
    let cells: Vec<String> = chars
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i:>3}: {c:?}"))
        .collect();
    let width = cells.iter().map(|c| c.chars().count()).max().unwrap_or(0);
    for line in cells.chunks(PER_LINE) {
        let padded: Vec<String> = line.iter().map(|c| format!("{c:<width$}")).collect();
        say!("  {}", padded.join("  ").trim_end());
    }
    let Some(path) = &args.data else {
        return Ok(());
    };
    let (text, _) = load_text(Some(path))?;
    let total = text.chars().count();
    let missing = ckpt.tokenizer.unknown_chars(&text);
    let shown = path.display();
    if missing.is_empty() {
        say!(
            "{shown}: {} characters, every one in the vocabulary",
            thousands(total)
        );
        return Ok(());
    }
    let mut counts = char_counts(&text, &missing);
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let lacking: usize = counts.iter().map(|(_, n)| n).sum();
    say!(
        "{shown}: {} characters; {} kind{} ({} characters, {:.1}%) not in the vocabulary, most frequent first:",
        thousands(total),
        counts.len(),
        if counts.len() == 1 { "" } else { "s" },
        thousands(lacking),
        100.0 * lacking as f64 / total.max(1) as f64
    );
    let cells: Vec<String> = counts.iter().map(|(c, n)| format!("{c:?} {n}")).collect();
    for line in cells.chunks(PER_LINE) {
        say!("  {}", line.join(", "));
    }
    say!(
        "fine-tune on it with --unknown-chars extend (add them to the vocabulary) or --unknown-chars drop (remove them from the text)"
    );
    Ok(())
}
