//! The model's parts in order, with their shapes and parameter counts: what the page's diagram
//! draws (`GET /api/runs/NAME/inspect/model`). Built from the [`ParamLayout`], so that the diagram
//! counts exactly the parameters the model has.

use crate::config::{Activation, Architecture, ModelConfig, NormKind, Position};
use crate::layout::{BlockLayout, ParamLayout};
use serde::Serialize;

/// One named tensor of the model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub params: usize,
}

/// One stage of the forward pass over a sequence of `T` characters, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Part {
    /// What it is called in the README: "token embedding", "attention", "LayerNorm", ...
    pub name: String,
    /// What it does, for the drawing: `embedding`, `add`, `norm`, `attention`,
    /// `feed-forward`, `residual`, `linear`, `softmax`.
    pub kind: &'static str,
    /// The shape of what comes out for one sequence, e.g. `[T, C]` = `[128, 192]`, and the same
    /// in letters.
    pub output: Vec<usize>,
    pub dims: &'static str,
    /// One line on how it computes (heads and sizes, hidden width, ...).
    pub detail: String,
    /// The parameters it holds (none for adds and the softmax).
    pub tensors: Vec<TensorInfo>,
    pub params: usize,
}

/// The model as a diagram: the parts before the blocks, one block (every block has the same
/// parts and shapes), how many blocks, and the parts after them. Every parameter of the layout
/// belongs to exactly one part: `before + n_layer * block + after` counts them all.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelParts {
    pub before: Vec<Part>,
    /// Block 0's parts (tensor names `blocks.0.*`).
    pub block: Vec<Part>,
    pub n_layer: usize,
    pub block_params: usize,
    pub after: Vec<Part>,
    pub total_params: usize,
    /// Every tensor, in the layout's order (the checkpoint's names).
    pub tensors: Vec<TensorInfo>,
}

/// The parts of a model of configuration `cfg`, with the tensors of its [`ParamLayout`] grouped
/// by name (`token_embedding.*`, `blocks.0.attn.*`, ...).
pub fn model_parts(cfg: &ModelConfig) -> ModelParts {
    let layout = ParamLayout::new(cfg);
    let drawing = Drawing::new(cfg, &layout);
    let (before, block, after) = if cfg.architecture == Architecture::Bigram {
        (drawing.bigram(), Vec::new(), Vec::new())
    } else {
        let block = layout
            .blocks
            .first()
            .map_or_else(Vec::new, |b| drawing.block(b));
        (drawing.embeddings(&layout), block, drawing.output(&layout))
    };
    ModelParts {
        total_params: layout.len,
        block_params: block.iter().map(|p| p.params).sum(),
        n_layer: if block.is_empty() { 0 } else { cfg.n_layer },
        before,
        block,
        after,
        tensors: drawing.tensors,
    }
}

/// What every part is drawn from: the config and every tensor of its layout.
struct Drawing<'a> {
    cfg: &'a ModelConfig,
    tensors: Vec<TensorInfo>,
}

impl<'a> Drawing<'a> {
    fn new(cfg: &'a ModelConfig, layout: &ParamLayout) -> Self {
        let tensors = layout
            .specs
            .iter()
            .map(|s| TensorInfo {
                name: s.name.clone(),
                shape: s.shape.clone(),
                params: s.len(),
            })
            .collect();
        Drawing { cfg, tensors }
    }

    /// A part holding the tensors whose names start with `prefix` (none for "").
    fn part(
        &self,
        name: &str,
        kind: &'static str,
        output: [usize; 2],
        detail: String,
        prefix: &str,
    ) -> Part {
        let tensors: Vec<TensorInfo> = self
            .tensors
            .iter()
            .filter(|t| !prefix.is_empty() && t.name.starts_with(prefix))
            .cloned()
            .collect();
        let (t, c) = (self.cfg.block_size, self.cfg.n_embd);
        Part {
            name: name.to_string(),
            kind,
            dims: if output == [t, c] { "T × C" } else { "T × V" },
            output: output.to_vec(),
            detail,
            params: tensors.iter().map(|t| t.params).sum(),
            tensors,
        }
    }

    fn sizes(&self) -> (usize, usize, usize) {
        (self.cfg.block_size, self.cfg.n_embd, self.cfg.vocab_size)
    }

    fn softmax(&self) -> Part {
        let (t, _, v) = self.sizes();
        let detail = "the probability of each character coming next, at every position";
        self.part("softmax", "softmax", [t, v], detail.into(), "")
    }

    /// A bigram: the table's row, then the softmax.
    fn bigram(&self) -> Vec<Part> {
        let (t, _, v) = self.sizes();
        let detail =
            format!("row of the current character = the logits of the next one ({v} × {v})");
        vec![
            self.part(
                "bigram table",
                "embedding",
                [t, v],
                detail,
                "token_embedding.",
            ),
            self.softmax(),
        ]
    }

    /// The token embedding, and the position embedding where positions are learned.
    fn embeddings(&self, layout: &ParamLayout) -> Vec<Part> {
        let (t, c, v) = self.sizes();
        let tied = if self.cfg.tie_embeddings {
            " (lm_head's too: tied)"
        } else {
            ""
        };
        let detail = format!("each character's row of a {v} × {c} table{tied}");
        let mut parts = vec![self.part(
            "token embedding",
            "embedding",
            [t, c],
            detail,
            "token_embedding.",
        )];
        if layout.position_embedding.is_some() {
            let detail = format!("each position's row of a {t} × {c} table, added to the token's");
            parts.push(self.part(
                "position embedding",
                "embedding",
                [t, c],
                detail,
                "position_embedding.",
            ));
        }
        parts
    }

    /// A pre-norm as the config has it: LayerNorm (with or without its shift) or RMSNorm.
    fn norm(&self, prefix: &str) -> Part {
        let (t, c, _) = self.sizes();
        let (name, detail) = match (self.cfg.norm, self.cfg.norm_has_bias()) {
            (NormKind::Rms, _) => (
                "RMSNorm",
                "each position's vector divided by its root mean square, then × weight (no mean, no bias)",
            ),
            (NormKind::Layer, true) => (
                "LayerNorm",
                "each position's vector to mean 0, variance 1, then × weight + bias",
            ),
            (NormKind::Layer, false) => (
                "LayerNorm",
                "each position's vector to mean 0, variance 1, then × weight (no bias)",
            ),
        };
        self.part(name, "norm", [t, c], detail.into(), prefix)
    }

    fn residual(&self, what: &str) -> Part {
        let (t, c, _) = self.sizes();
        self.part(
            "residual add",
            "residual",
            [t, c],
            format!("x = x + {what}(x)"),
            "",
        )
    }

    /// Block 0's parts: norm, attention, residual add, norm, feed-forward, residual add (each
    /// where the config has it).
    fn block(&self, b: &BlockLayout) -> Vec<Part> {
        let mut parts = Vec::new();
        if b.ln1.is_some() {
            parts.push(self.norm("blocks.0.ln1."));
        }
        parts.push(self.attention(b));
        if self.cfg.residual {
            parts.push(self.residual("attention"));
        }
        if b.fc.is_some() {
            if b.ln2.is_some() {
                parts.push(self.norm("blocks.0.ln2."));
            }
            parts.push(self.feed_forward(b));
            if self.cfg.residual {
                parts.push(self.residual("feed-forward"));
            }
        }
        parts
    }

    fn attention(&self, b: &BlockLayout) -> Part {
        let cfg = self.cfg;
        let (t, c, _) = self.sizes();
        let (h, hs) = (cfg.n_head, cfg.head_size());
        let scale = if (cfg.attention_scale_factor() - 1.0 / (hs as f32).sqrt()).abs() < 1e-7 {
            format!("1/√{hs}")
        } else {
            format!("1/√{c}")
        };
        let projection = if b.proj.is_some() {
            ", concatenated, projected C → C"
        } else {
            ", concatenated"
        };
        // What happens to q and k between the linear map and the scores.
        let qk = match (b.qk_norm.is_some(), cfg.position == Position::Rope) {
            (true, true) => "q, k RMS-normed per head and rotated by position (RoPE); ",
            (true, false) => "q, k RMS-normed per head; ",
            (false, true) => "q, k rotated by position (RoPE); ",
            (false, false) => "",
        };
        let (name, heads) = if h == 1 {
            ("self-attention", "")
        } else {
            ("multi-head attention", "s")
        };
        let detail =
            format!("{h} head{heads} of {hs}: {qk}softmax(q·k × {scale}, causal) · v{projection}");
        self.part(name, "attention", [t, c], detail, "blocks.0.attn.")
    }

    fn feed_forward(&self, b: &BlockLayout) -> Part {
        let cfg = self.cfg;
        let (t, c, _) = self.sizes();
        let f = cfg.ffn_hidden();
        let act = match cfg.activation {
            Activation::Relu => "ReLU",
            Activation::Gelu => "GELU",
            Activation::Relu2 => "ReLU²",
        };
        let bias = |b: &'static str| if cfg.bias { b } else { "" };
        let detail = if b.fc2.is_some() {
            let (b1, b2) = (bias(" + b1"), bias(" + b2"));
            format!("each position alone: {act}(x W1{b1}) W2{b2}, {c} → {f} → {c}")
        } else {
            format!("each position alone: {act}(x W{}), {c} → {f}", bias(" + b"))
        };
        self.part(
            "feed-forward",
            "feed-forward",
            [t, c],
            detail,
            "blocks.0.ffn.",
        )
    }

    /// The final norm, `lm_head` and the softmax.
    fn output(&self, layout: &ParamLayout) -> Vec<Part> {
        let cfg = self.cfg;
        let (t, c, v) = self.sizes();
        let mut parts = Vec::new();
        if layout.ln_f.is_some() {
            let name = if cfg.norm == NormKind::Rms {
                "final RMSNorm"
            } else {
                "final LayerNorm"
            };
            let detail = "once more before the output layer";
            parts.push(self.part(name, "norm", [t, c], detail.into(), "ln_f."));
        }
        // Tied: lm_head multiplies by the token embedding's own table (counted there, once).
        let b = if cfg.bias { " + b" } else { "" };
        let detail = if cfg.tie_embeddings {
            format!("a score (logit) for each of the {v} characters: x Wteᵀ{b}, {c} → {v}, with the token embedding's table (tied)")
        } else {
            format!("a score (logit) for each of the {v} characters: x W{b}, {c} → {v}")
        };
        parts.push(self.part("lm_head", "linear", [t, v], detail, "lm_head."));
        parts.push(self.softmax());
        parts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parts_of_every_preset_hold_every_parameter() {
        // The presets, and the rungs of `ladder --modern` (each adds a setting beyond them).
        let rungs = crate::ladder::MODERN_RUNGS
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name, crate::ladder::modern_configs(i).unwrap().0));
        let all = crate::config::presets();
        let presets = all.iter().map(|p| (p.name, p.model.clone()));
        for (name, model) in presets.chain(rungs) {
            let mut cfg = model;
            cfg.vocab_size = 65;
            let parts = model_parts(&cfg);
            let sum = |ps: &[Part]| ps.iter().map(|p| p.params).sum::<usize>();
            assert_eq!(parts.total_params, ParamLayout::new(&cfg).len, "{}", name);
            assert_eq!(
                sum(&parts.before) + parts.n_layer * sum(&parts.block) + sum(&parts.after),
                parts.total_params,
                "{}",
                name
            );
            assert_eq!(parts.block_params, sum(&parts.block));
            for part in parts.before.iter().chain(&parts.block).chain(&parts.after) {
                assert!(
                    part.tensors
                        .iter()
                        .all(|t| !t.name.starts_with("blocks.") || t.name.starts_with("blocks.0.")),
                    "{}: the block's parts are block 0's",
                    name
                );
            }
        }
    }
}
