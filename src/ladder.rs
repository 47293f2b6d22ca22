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
//!
//! The modern ladder ([`MODERN_RUNGS`]) continues past the lecture: from nanoGPT's CPU shape,
//! each rung adds one idea of the years since (rotary positions, RMSNorm, ReLU squared,
//! QK-norm, tied embeddings, no biases, the wsd schedule, Muon) to all the rungs before, at the
//! same budget of steps, trained with several seeds so that a gain can be told from noise
//! ([`Spread`], [`paired_difference`]).

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
    #[error("unknown modern rung {0:?}; the modern rungs are {names}", names = modern_rung_names())]
    UnknownModernRung(String),
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
/// also evaluates at step 0 and at its last step). An automatic interval (0) stays automatic:
/// it already follows the steps.
pub fn with_steps(train: &TrainConfig, steps: usize) -> TrainConfig {
    let factor = steps as f64 / train.steps.max(1) as f64;
    let interval = (train.eval_interval as f64 * factor).round() as usize;
    TrainConfig {
        steps,
        eval_interval: if train.eval_interval == 0 {
            0
        } else {
            interval.clamp(1, steps.max(1))
        },
        // Steps asked for decide the length: no time budget.
        time_budget: 0.0,
        budget_fixed_at: None,
        decay_plan: Vec::new(),
        ..train.clone()
    }
}

/// The preset the modern ladder climbs from: nanoGPT's CPU shape (4 layers, 4 heads, 128 wide,
/// block 64, batch 12, GELU, AdamW at 1e-3 with warm-up and cosine decay, 2000 steps), the
/// lecture's architecture at a size a CPU trains in about a minute.
pub const MODERN_BASE: &str = "nanogpt-cpu";

/// Seeds per rung of the modern ladder unless `--seeds` says otherwise: enough for a mean and
/// a spread.
pub const MODERN_SEEDS: usize = 3;

/// One rung of the modern ladder: one idea from after the lecture, added to every rung before.
#[derive(Debug, Clone, PartialEq)]
pub struct ModernRung {
    /// The rung's name (`--rungs` takes these with `--modern`).
    pub name: &'static str,
    /// What the rung adds, in words.
    pub idea: &'static str,
    /// The settings it adds (`KEY`, `VALUE`), on top of the base and the rungs before.
    pub adds: &'static [(&'static str, &'static str)],
}

/// The modern rungs in the order they are climbed. The first is the base itself.
pub const MODERN_RUNGS: &[ModernRung] = &[
    ModernRung {
        name: "base",
        idea: "nanoGPT's CPU run as the lecture builds it: learned positions, LayerNorm, GELU, biases, AdamW, cosine schedule",
        adds: &[],
    },
    ModernRung {
        name: "rope",
        idea: "rotary position embedding on queries and keys instead of a learned position table",
        adds: &[("position", "rope")],
    },
    ModernRung {
        name: "rmsnorm",
        idea: "RMSNorm instead of LayerNorm: no mean subtraction, no shift",
        adds: &[("norm", "rms")],
    },
    ModernRung {
        name: "relu2",
        idea: "ReLU squared in the feed-forward layer instead of GELU",
        adds: &[("activation", "relu2")],
    },
    ModernRung {
        name: "qk-norm",
        idea: "RMSNorm of every head's queries and keys before the scores",
        adds: &[("qk_norm", "true")],
    },
    ModernRung {
        name: "tied",
        idea: "lm_head shares the token embedding's weight",
        adds: &[("tie_embeddings", "true")],
    },
    ModernRung {
        name: "no-bias",
        idea: "no biases in the linear layers and norms",
        adds: &[("bias", "false")],
    },
    ModernRung {
        name: "wsd",
        idea: "warm-up, stable, then linear decay over the last 20% (instead of cosine)",
        adds: &[("lr_schedule", "wsd")],
    },
    ModernRung {
        name: "muon",
        idea: "Muon (orthogonalised momentum) on the blocks' matrices, AdamW on the rest",
        adds: &[("optimizer", "muon")],
    },
];

/// The modern rungs' names, comma-separated.
pub fn modern_rung_names() -> String {
    MODERN_RUNGS
        .iter()
        .map(|r| r.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The indices of the modern rungs to train: those of `list` (in the ladder's order whatever
/// order they are given in), or all. A rung always includes every rung before it in
/// [`MODERN_RUNGS`], trained or not.
pub fn select_modern(list: Option<&str>) -> Result<Vec<usize>, LadderError> {
    let Some(list) = list else {
        return Ok((0..MODERN_RUNGS.len()).collect());
    };
    let mut chosen = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let i = MODERN_RUNGS
            .iter()
            .position(|r| r.name == name)
            .ok_or_else(|| LadderError::UnknownModernRung(name.to_string()))?;
        if chosen.contains(&i) {
            return Err(LadderError::Repeated(name.to_string()));
        }
        chosen.push(i);
    }
    if chosen.is_empty() {
        return Err(LadderError::Empty);
    }
    chosen.sort_unstable();
    Ok(chosen)
}

/// The model and training settings of modern rung `index`: [`MODERN_BASE`] with the settings
/// of rungs `0..=index`.
pub fn modern_configs(index: usize) -> Result<(ModelConfig, TrainConfig), ConfigError> {
    let preset = config::preset(MODERN_BASE)?;
    let (mut model, mut train) = (preset.model, preset.train);
    for rung in &MODERN_RUNGS[..=index] {
        for (key, value) in rung.adds {
            apply_to_configs(&mut model, &mut train, key, value)?;
        }
    }
    Ok((model, train))
}

/// Mean, sample standard deviation (0 for one value), minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub mean: f64,
    pub sd: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Spread {
    pub fn of(values: &[f64]) -> Spread {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Spread {
            mean,
            sd: var.sqrt(),
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            n,
        }
    }

    /// The standard error of the mean, `sd / sqrt(n)`.
    pub fn standard_error(&self) -> f64 {
        self.sd / (self.n.max(1) as f64).sqrt()
    }
}

/// What a rung buys against the rung before it, seed by seed (the same seeds draw the same
/// batches, so the paired differences cancel much of the noise of the data order): the
/// spread of `after[i] - before[i]`, and whether its mean is more than twice its standard
/// error away from 0 (a gain, or a loss, that the seeds agree on).
pub fn paired_difference(before: &[f64], after: &[f64]) -> (Spread, bool) {
    let diffs: Vec<f64> = after.iter().zip(before).map(|(a, b)| a - b).collect();
    let spread = Spread::of(&diffs);
    let clear = spread.n > 1 && spread.mean.abs() > 2.0 * spread.standard_error();
    (spread, clear)
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
    fn modern_rungs_add_one_idea_each_on_the_nanogpt_shape() {
        let (base_model, base_train) = modern_configs(0).unwrap();
        let preset = config::preset(MODERN_BASE).unwrap();
        assert_eq!((&base_model, &base_train), (&preset.model, &preset.train));
        for (i, rung) in MODERN_RUNGS.iter().enumerate().skip(1) {
            let (before, before_train) = modern_configs(i - 1).unwrap();
            let (after, after_train) = modern_configs(i).unwrap();
            let model_changes = usize::from(before != after);
            let train_changes = usize::from(before_train != after_train);
            assert_eq!(
                model_changes + train_changes,
                1,
                "{} changes one thing",
                rung.name
            );
            let mut m = after.clone();
            m.vocab_size = 65;
            m.validate().unwrap();
            after_train.validate().unwrap();
            // The budget stays the base's.
            assert_eq!(
                (after_train.steps, after_train.batch_size, after.block_size),
                (2000, 12, 64)
            );
        }
        let (top, top_train) = modern_configs(MODERN_RUNGS.len() - 1).unwrap();
        assert!(top.qk_norm && top.tie_embeddings && !top.bias);
        assert_eq!(top_train.optimizer, crate::config::OptimizerKind::Muon);
        assert_eq!(select_modern(Some("muon, rope")).unwrap(), [1, 8]);
        assert_eq!(select_modern(None).unwrap().len(), MODERN_RUNGS.len());
        let err = select_modern(Some("swiglu")).unwrap_err().to_string();
        assert!(err.contains("swiglu") && err.contains("qk-norm"), "{err}");
    }

    #[test]
    fn spreads_and_paired_differences() {
        let s = Spread::of(&[1.0, 2.0, 3.0]);
        assert_eq!((s.mean, s.sd, s.min, s.max, s.n), (2.0, 1.0, 1.0, 3.0, 3));
        // The same shift on every seed is clear, however noisy the seeds are.
        let (d, clear) = paired_difference(&[1.50, 1.60, 1.55], &[1.49, 1.59, 1.54]);
        assert!((d.mean + 0.01).abs() < 1e-9 && clear);
        let (_, clear) = paired_difference(&[1.50, 1.60, 1.55], &[1.52, 1.57, 1.55]);
        assert!(!clear);
        assert_eq!(Spread::of(&[2.0]).sd, 0.0);
    }

    /// The README says `default`, `fast` and `best-1h` use every idea of `ladder --modern`: adding every
    /// modern rung's settings to them must change nothing. `config::modern` restates the rungs'
    /// model settings (config sits below the ladder), so a rung added to the ladder, or a preset
    /// edited, cannot leave the two apart.
    #[test]
    fn the_modern_presets_have_every_modern_rung() {
        for name in [config::DEFAULT_PRESET, "fast", "best-1h"] {
            let preset = config::preset(name).unwrap();
            let (mut model, mut train) = (preset.model.clone(), preset.train.clone());
            for rung in MODERN_RUNGS {
                for (key, value) in rung.adds {
                    apply_to_configs(&mut model, &mut train, key, value).unwrap();
                }
            }
            assert_eq!(preset.model, model, "{name}");
            assert_eq!(preset.train, train, "{name}");
        }
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
        // An automatic interval (lecture-5m's) must not become "every step".
        let auto = config::preset("lecture-5m").unwrap().train;
        assert_eq!(auto.eval_interval, 0);
        assert_eq!(with_steps(&auto, 1200).eval_interval, 0);
    }
}
