//! `chargpt presets`: the presets with their shapes and parameter counts.

use super::format::thousands;
use anyhow::Result;
use chargpt::config::{self, Architecture, Preset, DEFAULT_PRESET};
use chargpt::model::ParamLayout;
use clap::Args;

#[derive(Args)]
pub struct PresetsArgs {
    /// Characters in the vocabulary, for the parameter counts [default: 65, Tiny Shakespeare's].
    #[arg(long, default_value_t = 65, value_name = "N")]
    vocab: usize,
}

/// The parameter count of a preset's model with a vocabulary of `vocab` characters.
pub fn parameter_count(preset: &Preset, vocab: usize) -> usize {
    let mut model = preset.model.clone();
    model.vocab_size = vocab;
    ParamLayout::new(&model).len
}

/// Columns of the table: the header and every row have exactly this many cells.
const HEADER_CELLS: usize = 8;

pub fn run(args: PresetsArgs) -> Result<()> {
    let rows: Vec<[String; HEADER_CELLS]> = config::presets()
        .iter()
        .map(|p| {
            let m = &p.model;
            let t = &p.train;
            let transformer = m.architecture == Architecture::Transformer;
            let shape = |v: usize| {
                if transformer {
                    v.to_string()
                } else {
                    "-".into()
                }
            };
            let name = if p.name == DEFAULT_PRESET {
                format!("{} *", p.name)
            } else {
                p.name.to_string()
            };
            [
                name,
                shape(m.n_layer),
                shape(m.n_head),
                shape(m.n_embd),
                m.block_size.to_string(),
                thousands(parameter_count(p, args.vocab)),
                format!("{}x{}", t.steps, t.batch_size),
                p.description.to_string(),
            ]
        })
        .collect();
    let header: [&str; HEADER_CELLS] = [
        "preset",
        "layers",
        "heads",
        "n_embd",
        "block",
        "params",
        "steps x B",
        "about",
    ];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[&str]| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            let numeric = (1..=6).contains(&i);
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else if numeric {
                out.push_str(&format!("{}{cell}  ", " ".repeat(pad)));
            } else {
                out.push_str(&format!("{cell}{}  ", " ".repeat(pad)));
            }
        }
        say!("{}", out.trim_end());
    };
    line(&header);
    for row in &rows {
        line(&row.iter().map(String::as_str).collect::<Vec<_>>());
    }
    say!(
        "\n* `chargpt train` uses `{DEFAULT_PRESET}` when no --preset is given. Parameter counts are \
         for a vocabulary of {} characters.",
        args.vocab
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_match_the_lecture_and_print_with_separators() {
        // The lecture's model has 10,788,929 parameters with Tiny Shakespeare's 65 characters.
        let lecture = config::preset("lecture").unwrap();
        assert_eq!(parameter_count(&lecture, 65), 10_788_929);
        let bigram = config::preset("bigram").unwrap();
        assert_eq!(parameter_count(&bigram, 65), 65 * 65);
        assert_eq!(thousands(10_788_929), "10,788,929");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
    }
}
