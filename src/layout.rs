//! Where every number lies, in the words both engines use: every parameter in the flat buffer
//! (names, shapes, offsets, and the views the forward and backward passes use; gradients and the
//! optimizer's moments share this layout), an attention call's shape and where its queries, keys,
//! values and scores lie, and the constants of the layers. The reference engine
//! ([`crate::reference`]) and the fast one ([`crate::model`], [`crate::kernels`]) both read
//! their parameters and shapes from here, and nothing else of each other.

use crate::config::{Architecture, FeedForward, ModelConfig, Position};
use std::ops::Range;

/// The `eps` of LayerNorm, RMSNorm and QK-norm, under the square root: PyTorch's default.
pub const NORM_EPS: f32 = 1e-5;

/// The shape of an attention call: B sequences (`batch`) of T positions (`seq_len`), C channels
/// in H heads (`n_head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttentionShape {
    pub batch: usize,
    pub seq_len: usize,
    pub channels: usize,
    pub n_head: usize,
}

impl AttentionShape {
    /// The size of one head, hs = C / H.
    pub fn head_size(&self) -> usize {
        self.channels / self.n_head
    }

    /// Where query (`part` 0), key (1) or value (2) element i of head h at position t of
    /// sequence b lies in `qkv` (B, T, 3C): each row is `[q | k | v]`, head h in columns
    /// `h*hs .. (h+1)*hs` of each part.
    pub fn qkv_index(&self, b: usize, t: usize, part: usize, h: usize, i: usize) -> usize {
        (b * self.seq_len + t) * 3 * self.channels + part * self.channels + h * self.head_size() + i
    }

    /// Where score (t, u) of head h of sequence b lies in a (B, H, T, T) tensor.
    pub fn score_index(&self, b: usize, h: usize, t: usize, u: usize) -> usize {
        ((b * self.n_head + h) * self.seq_len + t) * self.seq_len + u
    }
}

/// A model's parameters as both engines read them: its config, where each tensor lies, and the
/// flat buffer of values (the fast engine's [`crate::model::Model::weights`]).
#[derive(Debug, Clone, Copy)]
pub struct Weights<'a> {
    pub config: &'a ModelConfig,
    pub layout: &'a ParamLayout,
    pub params: &'a [f32],
}

impl<'a> Weights<'a> {
    /// The values of the tensor at `range` (a range of [`ParamLayout`]).
    pub fn tensor(&self, range: &Range<usize>) -> &'a [f32] {
        &self.params[range.clone()]
    }
}

/// One named tensor inside the flat parameter buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub offset: usize,
    pub(crate) role: Role,
    /// A block's 2-D weight (q/k/v, projection, feed-forward): what Muon updates.
    pub(crate) hidden: bool,
}

impl ParamSpec {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.len()
    }

    /// Weight matrices and embeddings: what nanoGPT applies weight decay to.
    pub fn is_matrix(&self) -> bool {
        self.shape.len() >= 2
    }

    /// A block's weight matrix (q/k/v, projection, feed-forward), not an embedding nor
    /// `lm_head`: the tensors `optimizer = muon` updates with Muon.
    pub fn is_hidden_matrix(&self) -> bool {
        self.hidden
    }
}

/// How a tensor is initialised.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Role {
    Embedding,
    LinearWeight { fan_in: usize },
    LinearBias { fan_in: usize },
    NormWeight,
    NormBias,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    pub weight: Range<usize>,
    pub bias: Option<Range<usize>>,
}

/// A LayerNorm or RMSNorm: its gain, and its shift (LayerNorm with biases only).
#[derive(Debug, Clone, PartialEq)]
pub struct Norm {
    pub weight: Range<usize>,
    pub bias: Option<Range<usize>>,
}

/// QK-norm's gains, (hs) each, shared by the heads of a block.
#[derive(Debug, Clone, PartialEq)]
pub struct QkNorm {
    pub q: Range<usize>,
    pub k: Range<usize>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BlockLayout {
    pub ln1: Option<Norm>,
    pub qkv: Linear,
    pub qk_norm: Option<QkNorm>,
    pub proj: Option<Linear>,
    pub ln2: Option<Norm>,
    pub fc: Option<Linear>,
    pub fc2: Option<Linear>,
}

/// Where every tensor lives in the flat buffer (parameters and gradients share it).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamLayout {
    pub specs: Vec<ParamSpec>,
    pub len: usize,
    pub token_embedding: Range<usize>,
    pub position_embedding: Option<Range<usize>>,
    pub blocks: Vec<BlockLayout>,
    pub ln_f: Option<Norm>,
    pub lm_head: Option<Linear>,
}

impl ParamLayout {
    /// Every linear layer's weight: its range, out and in channels.
    pub fn linear_weights(&self) -> impl Iterator<Item = (Range<usize>, usize, usize)> + '_ {
        let blocks = self
            .blocks
            .iter()
            .flat_map(|b| [Some(&b.qkv), b.proj.as_ref(), b.fc.as_ref(), b.fc2.as_ref()]);
        blocks.chain([self.lm_head.as_ref()]).flatten().map(|l| {
            let spec = self
                .specs
                .iter()
                .find(|s| s.range() == l.weight)
                .expect("every linear weight has a spec");
            (l.weight.clone(), spec.shape[0], spec.shape[1])
        })
    }

    /// Whether `range` is the weight of a linear layer (lm_head or a block's qkv, projection or
    /// feed-forward): the tensors whose gradient a single matrix product writes.
    pub fn is_linear_weight(&self, range: Range<usize>) -> bool {
        let blocks = self
            .blocks
            .iter()
            .flat_map(|b| [Some(&b.qkv), b.proj.as_ref(), b.fc.as_ref(), b.fc2.as_ref()]);
        blocks
            .chain([self.lm_head.as_ref()])
            .flatten()
            .any(|l| l.weight == range)
    }
}

struct LayoutBuilder {
    specs: Vec<ParamSpec>,
    len: usize,
}

impl LayoutBuilder {
    fn push(&mut self, name: String, shape: Vec<usize>, role: Role) -> Range<usize> {
        let hidden = matches!(role, Role::LinearWeight { .. }) && name.starts_with("blocks.");
        let spec = ParamSpec {
            name,
            shape,
            offset: self.len,
            role,
            hidden,
        };
        let range = spec.range();
        self.len = range.end;
        self.specs.push(spec);
        range
    }

    fn linear(&mut self, prefix: &str, out: usize, inp: usize, bias: bool) -> Linear {
        let weight = self.push(
            format!("{prefix}.weight"),
            vec![out, inp],
            Role::LinearWeight { fan_in: inp },
        );
        let bias = bias.then(|| {
            self.push(
                format!("{prefix}.bias"),
                vec![out],
                Role::LinearBias { fan_in: inp },
            )
        });
        Linear { weight, bias }
    }

    fn norm(&mut self, prefix: &str, c: usize, bias: bool) -> Norm {
        Norm {
            weight: self.push(format!("{prefix}.weight"), vec![c], Role::NormWeight),
            bias: bias.then(|| self.push(format!("{prefix}.bias"), vec![c], Role::NormBias)),
        }
    }
}

impl ParamLayout {
    pub fn new(cfg: &ModelConfig) -> Self {
        let mut b = LayoutBuilder {
            specs: Vec::new(),
            len: 0,
        };
        let (v, c) = (cfg.vocab_size, cfg.n_embd);
        if cfg.architecture == Architecture::Bigram {
            let token_embedding =
                b.push("token_embedding.weight".into(), vec![v, v], Role::Embedding);
            return ParamLayout {
                specs: b.specs,
                len: b.len,
                token_embedding,
                position_embedding: None,
                blocks: Vec::new(),
                ln_f: None,
                lm_head: None,
            };
        }
        let token_embedding = b.push("token_embedding.weight".into(), vec![v, c], Role::Embedding);
        let position_embedding = (cfg.position == Position::Learned).then(|| {
            b.push(
                "position_embedding.weight".into(),
                vec![cfg.block_size, c],
                Role::Embedding,
            )
        });
        let f = cfg.ffn_hidden();
        let (bias, norm_bias) = (cfg.bias, cfg.norm_has_bias());
        let hs = cfg.head_size();
        let blocks = (0..cfg.n_layer)
            .map(|i| {
                let p = format!("blocks.{i}");
                let ln1 = cfg
                    .layer_norm
                    .then(|| b.norm(&format!("{p}.ln1"), c, norm_bias));
                let qkv = b.linear(&format!("{p}.attn.qkv"), 3 * c, c, false);
                let qk_norm = cfg.qk_norm.then(|| QkNorm {
                    q: b.push(
                        format!("{p}.attn.q_norm.weight"),
                        vec![hs],
                        Role::NormWeight,
                    ),
                    k: b.push(
                        format!("{p}.attn.k_norm.weight"),
                        vec![hs],
                        Role::NormWeight,
                    ),
                });
                let proj = cfg
                    .attention_projection
                    .then(|| b.linear(&format!("{p}.attn.proj"), c, c, bias));
                let has_ffn = cfg.feed_forward != FeedForward::None;
                let ln2 =
                    (cfg.layer_norm && has_ffn).then(|| b.norm(&format!("{p}.ln2"), c, norm_bias));
                let fc = has_ffn.then(|| b.linear(&format!("{p}.ffn.fc"), f, c, bias));
                let fc2 = (cfg.feed_forward == FeedForward::Mlp)
                    .then(|| b.linear(&format!("{p}.ffn.proj"), c, f, bias));
                BlockLayout {
                    ln1,
                    qkv,
                    qk_norm,
                    proj,
                    ln2,
                    fc,
                    fc2,
                }
            })
            .collect();
        let ln_f = cfg.layer_norm.then(|| b.norm("ln_f", c, norm_bias));
        // Tied: lm_head reads token_embedding.weight (V, C), already the (out, in) layout of a
        // linear weight; only its bias (if any) is a tensor of its own.
        let lm_head = Some(match cfg.tie_embeddings {
            true => Linear {
                weight: token_embedding.clone(),
                bias: bias.then(|| {
                    b.push(
                        "lm_head.bias".into(),
                        vec![v],
                        Role::LinearBias { fan_in: c },
                    )
                }),
            },
            false => b.linear("lm_head", v, c, bias),
        });
        ParamLayout {
            specs: b.specs,
            len: b.len,
            token_embedding,
            position_embedding,
            blocks,
            ln_f,
            lm_head,
        }
    }

    pub fn spec(&self, name: &str) -> Option<&ParamSpec> {
        self.specs.iter().find(|s| s.name == name)
    }
}

/// A view of `buf[range]`.
#[inline]
pub(crate) fn view<'a>(buf: &'a [f32], range: &Range<usize>) -> &'a [f32] {
    &buf[range.clone()]
}

/// Two disjoint mutable views of one buffer.
pub(crate) fn two_mut<'a>(
    buf: &'a mut [f32],
    a: &Range<usize>,
    b: &Range<usize>,
) -> (&'a mut [f32], &'a mut [f32]) {
    assert!(a.end <= b.start || b.end <= a.start, "overlapping views");
    if a.start < b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&mut lo[a.clone()], &mut hi[..b.len()])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        (&mut hi[..a.len()], &mut lo[b.clone()])
    }
}

/// Gradient views of a norm's gain and optional shift.
pub(crate) fn norm_grads<'a>(
    grads: &'a mut [f32],
    n: &Norm,
) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match &n.bias {
        Some(bias) => {
            let (w, b) = two_mut(grads, &n.weight, bias);
            (w, Some(b))
        }
        None => (&mut grads[n.weight.clone()], None),
    }
}

/// Gradient views of a linear layer's weight and optional bias.
pub(crate) fn linear_grads<'a>(
    grads: &'a mut [f32],
    l: &Linear,
) -> (&'a mut [f32], Option<&'a mut [f32]>) {
    match &l.bias {
        Some(bias) => {
            let (w, b) = two_mut(grads, &l.weight, bias);
            (w, Some(b))
        }
        None => (&mut grads[l.weight.clone()], None),
    }
}
