//! The lecture's ladder: the sequence of models "Let's build GPT" climbs, one idea per rung, with
//! the settings each rung was trained at and the val loss the lecture published for it.
//!
//! Every rung but the last is a preset of [`crate::config`] at n_embd 32, block 8, batch 32,
//! AdamW at 1e-3 for 5000 steps (the bigram: 1e-2 for 3000), PyTorch's default init and scores
//! scaled by `1/sqrt(n_embd)`, as in the video. The `layernorm` preset is the lecture's current
//! `gpt.py` at n_embd 32 (N(0, 0.02) init, scores scaled by `1/sqrt(head_size)`); at the commit
//! that added LayerNorm the lecture still used PyTorch's init and n_embd scaling, so the rung
//! applies both on top of the preset. The last rung, `lecture`, is the 10.8M-parameter model;
//! it takes hours on a CPU and is trained only when asked for.

use crate::config::{self, apply_to_configs, ConfigError, ModelConfig, TrainConfig};

/// One rung of the ladder.
#[derive(Debug, Clone, PartialEq)]
pub struct Rung {
    /// The rung's name (`--rungs` takes these).
    pub name: &'static str,
    /// The preset it starts from.
    pub preset: &'static str,
    /// Settings applied on top of the preset (`KEY`, `VALUE`), to match what the lecture ran at
    /// this rung.
    pub overrides: &'static [(&'static str, &'static str)],
    /// The val loss the lecture published for this rung (its `estimate_loss`: 200 random
    /// batches).
    pub published: f64,
    /// Where the published figure comes from.
    pub source: &'static str,
    /// Too slow for a CPU ladder: trained only on request.
    pub big: bool,
}

/// The rungs in the order the lecture adds them.
pub const RUNGS: &[Rung] = &[
    Rung {
        name: "bigram",
        preset: "bigram",
        overrides: &[],
        published: 2.49,
        source: "lecture (about 2.49; the count-based floor is 2.48-2.49)",
        big: false,
    },
    Rung {
        name: "single-head",
        preset: "single-head",
        overrides: &[],
        published: 2.5,
        source: "lecture commit message",
        big: false,
    },
    Rung {
        name: "multi-head",
        preset: "multi-head",
        overrides: &[],
        published: 2.28,
        source: "lecture commit message",
        big: false,
    },
    Rung {
        name: "feed-forward",
        preset: "feed-forward",
        overrides: &[],
        published: 2.24,
        source: "lecture commit message",
        big: false,
    },
    Rung {
        name: "residual",
        preset: "residual",
        overrides: &[],
        published: 2.09,
        source: "about 2.09, third-party runs (no commit figure)",
        big: false,
    },
    Rung {
        name: "layernorm",
        preset: "layernorm",
        overrides: &[("init", "pytorch"), ("attention_scale", "n-embd")],
        published: 2.06,
        source: "lecture commit message",
        big: false,
    },
    Rung {
        name: "lecture",
        preset: "lecture",
        overrides: &[],
        published: 1.48,
        source: "lecture video (about 1.48)",
        big: true,
    },
];

/// How far from the published figure a rung may land and still count as reproduced.
pub const TOLERANCE: f64 = 0.05;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LadderError {
    #[error("unknown rung {0:?}; the rungs are {names}", names = rung_names())]
    UnknownRung(String),
    #[error("the rung {0:?} is named twice in --rungs")]
    Repeated(String),
    #[error("the rung {0:?} is the 10.8M-parameter model, which takes hours on a CPU; add --include-big to train it")]
    NeedsIncludeBig(String),
    #[error("--rungs names no rung; give a comma-separated list such as bigram,single-head")]
    Empty,
}

/// The rungs' names, comma-separated.
pub fn rung_names() -> String {
    RUNGS.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")
}

/// The rung called `name`.
pub fn rung(name: &str) -> Result<&'static Rung, LadderError> {
    RUNGS
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| LadderError::UnknownRung(name.to_string()))
}

/// The rungs to train: those of `list` (comma-separated names, in the ladder's order whatever
/// order they are given in), or every rung but the big one; `include_big` adds the big one (and
/// allows naming it).
pub fn select(list: Option<&str>, include_big: bool) -> Result<Vec<&'static Rung>, LadderError> {
    let Some(list) = list else {
        return Ok(RUNGS.iter().filter(|r| include_big || !r.big).collect());
    };
    let mut chosen: Vec<&'static Rung> = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let r = rung(name)?;
        if chosen.contains(&r) {
            return Err(LadderError::Repeated(name.to_string()));
        }
        if r.big && !include_big {
            return Err(LadderError::NeedsIncludeBig(name.to_string()));
        }
        chosen.push(r);
    }
    if include_big && !chosen.iter().any(|r| r.big) {
        chosen.extend(RUNGS.iter().filter(|r| r.big));
    }
    if chosen.is_empty() {
        return Err(LadderError::Empty);
    }
    chosen.sort_by_key(|r| RUNGS.iter().position(|x| x == *r));
    Ok(chosen)
}

impl Rung {
    /// The model and training settings of this rung: its preset with the rung's overrides.
    pub fn configs(&self) -> Result<(ModelConfig, TrainConfig), ConfigError> {
        let preset = config::preset(self.preset)?;
        let (mut model, mut train) = (preset.model, preset.train);
        for (key, value) in self.overrides {
            apply_to_configs(&mut model, &mut train, key, value)?;
        }
        Ok((model, train))
    }
}

/// `train` shortened (or lengthened) to `steps`, with the evaluation interval scaled by the same
/// factor, so that the run keeps about as many evaluations (at least one before the end: the run
/// also evaluates at step 0 and at its last step).
pub fn with_steps(train: &TrainConfig, steps: usize) -> TrainConfig {
    let factor = steps as f64 / train.steps.max(1) as f64;
    let interval = (train.eval_interval as f64 * factor).round() as usize;
    TrainConfig {
        steps,
        eval_interval: interval.clamp(1, steps.max(1)),
        ..train.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Architecture, AttentionScale, FeedForward, Init};
    use crate::model::ParamLayout;

    fn params(model: &ModelConfig) -> usize {
        let mut m = model.clone();
        m.vocab_size = 65;
        ParamLayout::new(&m).len
    }

    #[test]
    fn rungs_are_the_lectures_models_with_its_figures() {
        let expected = [
            ("bigram", 4_225, 2.49),
            ("single-head", 7_553, 2.5),
            ("multi-head", 7_553, 2.28),
            ("feed-forward", 8_609, 2.24),
            ("residual", 41_921, 2.09),
            ("layernorm", 42_369, 2.06),
            ("lecture", 10_788_929, 1.48),
        ];
        assert_eq!(RUNGS.len(), expected.len());
        for (r, (name, count, published)) in RUNGS.iter().zip(expected) {
            assert_eq!(r.name, name);
            assert_eq!(r.published, published, "{name}");
            let (model, train) = r.configs().unwrap();
            assert_eq!(params(&model), count, "{name}");
            assert_eq!(r.big, name == "lecture");
            if r.big {
                assert_eq!((train.batch_size, model.block_size), (64, 256));
                assert_eq!(train.learning_rate, 3e-4);
                assert_eq!(model.dropout, 0.2);
                assert_eq!(model.init, Init::Lecture);
                continue;
            }
            // Every small rung: the lecture's B32 T8, PyTorch init, n_embd scaling, 200-batch
            // loss estimate, no dropout.
            assert_eq!((train.batch_size, model.block_size), (32, 8), "{name}");
            assert_eq!(model.init, Init::Pytorch, "{name}");
            assert_eq!(train.eval_iters, 200, "{name}");
            assert_eq!(model.dropout, 0.0, "{name}");
            if model.architecture == Architecture::Transformer {
                assert_eq!(model.attention_scale, AttentionScale::NEmbd, "{name}");
                assert_eq!(model.n_embd, 32, "{name}");
                assert_eq!((train.steps, train.learning_rate), (5000, 1e-3), "{name}");
            } else {
                assert_eq!((train.steps, train.learning_rate), (3000, 1e-2));
            }
        }
    }

    #[test]
    fn the_layernorm_rung_is_the_preset_with_the_videos_init_and_scaling() {
        let preset = config::preset("layernorm").unwrap();
        assert_eq!(preset.model.init, Init::Lecture);
        assert_eq!(preset.model.attention_scale, AttentionScale::HeadSize);
        let (model, train) = rung("layernorm").unwrap().configs().unwrap();
        assert_eq!(model.init, Init::Pytorch);
        assert_eq!(model.attention_scale, AttentionScale::NEmbd);
        // Nothing else changes.
        let rest = ModelConfig {
            init: Init::Lecture,
            attention_scale: AttentionScale::HeadSize,
            ..model
        };
        assert_eq!(rest, preset.model);
        assert_eq!(train, preset.train);
        assert!(rest.layer_norm && rest.residual && rest.feed_forward == FeedForward::Mlp);
    }

    #[test]
    fn selection_keeps_the_ladders_order_and_guards_the_big_model() {
        let names = |v: Vec<&Rung>| v.iter().map(|r| r.name).collect::<Vec<_>>();
        let default = names(select(None, false).unwrap());
        assert_eq!(default.len(), 6);
        assert!(!default.contains(&"lecture"));
        assert_eq!(names(select(None, true).unwrap()).last(), Some(&"lecture"));
        assert_eq!(
            names(select(Some("residual, bigram"), false).unwrap()),
            ["bigram", "residual"]
        );
        assert_eq!(
            names(select(Some("bigram"), true).unwrap()),
            ["bigram", "lecture"]
        );
        assert_eq!(
            select(Some("lecture"), false),
            Err(LadderError::NeedsIncludeBig("lecture".into()))
        );
        assert_eq!(
            select(Some("bigram,bigram"), false),
            Err(LadderError::Repeated("bigram".into()))
        );
        assert_eq!(select(Some(" , "), false), Err(LadderError::Empty));
        let err = select(Some("trigram"), false).unwrap_err().to_string();
        assert!(
            err.contains("trigram") && err.contains("layernorm"),
            "{err}"
        );
    }

    #[test]
    fn shortened_runs_keep_their_evaluations() {
        let (_, train) = rung("single-head").unwrap().configs().unwrap();
        let short = with_steps(&train, 20);
        assert_eq!((short.steps, short.eval_interval), (20, 2));
        assert_eq!(with_steps(&train, 3).eval_interval, 1);
        let long = with_steps(&train, 10_000);
        assert_eq!((long.steps, long.eval_interval), (10_000, 1000));
        assert_eq!(long.learning_rate, train.learning_rate);
    }
}
