//! `chargpt attention`: what every head of a trained model attends to over a prompt, as a grid of
//! heatmaps (one per layer and head) and optionally as the raw weights in JSON.
//!
//! Head h of layer l turns each position t into a distribution over the positions u <= t it may
//! see: `a[t, u] = softmax_u(scale * q_t . k_u)`. Row t of a map is that distribution, so each row
//! sums to 1 and everything right of the diagonal is 0 (the causal mask). These are the weights
//! of an evaluation-mode forward pass (no dropout), from [`inspect::attention`].

use super::plot::{draw_heatmap_grid, Heatmap, HeatmapGrid};
use anyhow::{bail, Result};
use chargpt::checkpoint;
use chargpt::config::Architecture;
use chargpt::data;
use chargpt::inspect;
use clap::Args;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args)]
#[command(after_help = "\
The image is a grid of heatmaps: one row per layer, one column per head (both counted from 0, \
as in the parameter names blocks.{L} and the head's rows of qkv.weight). In each map, row t is \
the character attending (the query) and column u a character it attends to (a key); the colour \
is the weight a[t, u], from 0 (dark) to 1 (bright), each row summing to 1; grey squares are the \
causal mask (a character never sees the ones after it). Spaces show as ␣ and newlines as ⏎.

Prompts longer than the model's block_size keep their last block_size characters, the most the \
model sees at once. Every character is labelled on both axes up to 46 characters; beyond that \
every k-th one, so that labels stay about 9 pixels apart (every 2nd up to 84 characters, every \
3rd up to 140, every 5th beyond), and in red, wherever they are, the characters a head attends \
to strongly (at least two rows' worth of weight from the characters after them).

--json prints {\"model\", \"prompt\", \"dropped\", \"tokens\", \"n_layer\", \"n_head\", \
\"layers\"}: `prompt` is the text looked at, `dropped` the characters cut from its front, \
`tokens` its characters one by one, and layers[l][h][t][u] the weight of head h of layer l from \
query t to key u.")]
pub struct AttentionArgs {
    /// Checkpoint directory.
    #[arg(long, default_value = "runs/default", value_name = "DIR")]
    model: PathBuf,
    /// The text to look at, e.g. --prompt "ROMEO:".
    #[arg(
        long,
        conflicts_with = "prompt_file",
        allow_hyphen_values = true,
        value_name = "TEXT"
    )]
    prompt: Option<String>,
    /// Read the text to look at from a UTF-8 file.
    #[arg(long, value_name = "FILE")]
    prompt_file: Option<PathBuf>,
    /// Where to draw the heatmaps [default: attention.png in the model's directory; with --json,
    /// no image unless --out is given].
    #[arg(long, value_name = "FILE.png")]
    out: Option<PathBuf>,
    /// Print the weights as one JSON object (see below) instead of the summary.
    #[arg(long)]
    json: bool,
}

/// The weights of every head over one prompt.
#[derive(Debug, Serialize)]
struct AttentionMaps {
    model: String,
    /// The characters looked at (the prompt's last `block_size`).
    prompt: String,
    /// Characters cut from the front of the prompt.
    dropped: usize,
    tokens: Vec<String>,
    n_layer: usize,
    n_head: usize,
    /// `layers[l][h][t][u]`: weight of query t on key u in head h of layer l.
    layers: Vec<Vec<Vec<Vec<f32>>>>,
}

/// How a character is shown on an axis: whitespace as a visible symbol.
fn visible(c: char) -> String {
    match c {
        ' ' => "␣".into(),
        '\n' => "⏎".into(),
        '\t' => "⇥".into(),
        c if c.is_control() => "·".into(),
        c => c.to_string(),
    }
}

pub fn run(args: AttentionArgs) -> Result<()> {
    if let Some(out) = &args.out {
        if out.extension().and_then(|e| e.to_str()) != Some("png") {
            bail!(
                "--out {} must name a .png file, e.g. --out attention.png",
                out.display()
            );
        }
    }
    let text = match (&args.prompt, &args.prompt_file) {
        (_, Some(path)) => data::read_text(path)?,
        (Some(p), None) => p.clone(),
        (None, None) => bail!(
            "give the text to look at with --prompt TEXT (or --prompt-file FILE), e.g. --prompt \"ROMEO:\""
        ),
    };
    if text.is_empty() {
        bail!("the prompt is empty; give at least one character, e.g. --prompt \"ROMEO:\"");
    }
    let ckpt = checkpoint::load(&args.model)?;
    let cfg = &ckpt.model.config;
    if cfg.architecture == Architecture::Bigram {
        bail!(
            "{} holds a bigram model, which has no attention (each prediction depends on the current character only); look at a model with attention, e.g. one trained with --preset single-head",
            args.model.display()
        );
    }
    let ids = super::encode_prompt(&ckpt.tokenizer, &text)?;
    let weights = inspect::attention(&ckpt.model, &ids)?;
    let dropped = inspect::visible(&ckpt.model, &ids);
    let chars: Vec<char> = text.chars().skip(dropped).collect();
    let prompt: String = chars.iter().collect();
    let t = weights.len;
    let (l_n, h_n) = (weights.n_layer, weights.n_head);
    let layers = (0..l_n)
        .map(|l| {
            (0..h_n)
                .map(|h| {
                    weights
                        .map(l, h)
                        .chunks_exact(t)
                        .map(<[f32]>::to_vec)
                        .collect()
                })
                .collect()
        })
        .collect();
    let maps = AttentionMaps {
        model: args.model.display().to_string(),
        prompt,
        dropped,
        tokens: chars.iter().map(char::to_string).collect(),
        n_layer: l_n,
        n_head: h_n,
        layers,
    };
    let image = match (&args.out, args.json) {
        (Some(out), _) => Some(out.clone()),
        (None, false) => Some(args.model.join("attention.png")),
        (None, true) => None,
    };
    if let Some(path) = &image {
        let name = match &ckpt.config.preset {
            Some(preset) => format!("the {preset} model in {}", args.model.display()),
            None => args.model.display().to_string(),
        };
        draw(path, &maps, &name)?;
    }
    if args.json {
        say!("{}", serde_json::to_string(&maps)?);
        return Ok(());
    }
    let kept = if dropped > 0 {
        format!(" (its last {t}; {dropped} cut from the front)")
    } else {
        String::new()
    };
    say!(
        "attention of {} layer{} x {} head{} over {t} characters{kept}: {:?}",
        l_n,
        if l_n == 1 { "" } else { "s" },
        h_n,
        if h_n == 1 { "" } else { "s" },
        maps.prompt
    );
    for l in 0..l_n {
        for h in 0..h_n {
            let s = weights.summary(l, h);
            say!(
                "layer {l}, head {h}: looks back {:.1} characters on average; {:.0}% of its weight on the character itself, {:.0}% on the one before",
                s.look_back,
                100.0 * s.itself,
                100.0 * s.previous
            );
        }
    }
    if let Some(path) = &image {
        say!("heatmaps in {}", path.display());
    }
    Ok(())
}

fn draw(path: &Path, maps: &AttentionMaps, name: &str) -> Result<()> {
    let labels: Vec<String> = maps.prompt.chars().map(visible).collect();
    let heatmaps: Vec<Heatmap> = maps
        .layers
        .iter()
        .enumerate()
        .flat_map(|(l, heads)| {
            heads.iter().enumerate().map(move |(h, map)| Heatmap {
                title: format!("layer {l}, head {h}"),
                weights: map.concat(),
            })
        })
        .collect();
    let title = format!(
        "attention weights of {name} over {} characters",
        labels.len()
    );
    draw_heatmap_grid(
        path,
        &HeatmapGrid {
            title: &title,
            labels: &labels,
            rows: maps.n_layer,
            cols: maps.n_head,
            maps: &heatmaps,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whitespace_is_visible_on_the_axes() {
        assert_eq!(visible(' '), "␣");
        assert_eq!(visible('\n'), "⏎");
        assert_eq!(visible('a'), "a");
        assert_eq!(visible('\u{7}'), "·");
    }
}
