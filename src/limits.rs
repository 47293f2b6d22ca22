//! The largest (and smallest) value of every number a user or a request controls, in one place:
//! the settings of a run (`--set`, a config file, the page's form, `POST /api/runs`), and what a
//! sample or an inspection asks for. The documentation's table is this list
//! ([`SETTINGS`] and [`SAMPLING`]); a test checks that it names every one.
//!
//! The bounds are far above anything a preset or a sensible run uses. They are there so that no
//! value, however absurd, can make a run that cannot be stopped (a loss estimate of 10^12
//! batches), a buffer sized from a number nobody meant (a reservation for 10^12 steps), or a
//! product that overflows. Whether a model fits in memory is checked apart, against what the
//! machine has free ([`crate::runs::check_memory`]).

/// One number's range, both ends included.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub key: &'static str,
    pub min: f64,
    pub max: f64,
    /// Why the bound is where it is, for the error and the documentation.
    pub why: &'static str,
}

/// The settings of a run (the fields of `ModelConfig` and `TrainConfig`). Settings in a range
/// that is open at an end (`dropout` below 1, `learning_rate` above 0) are checked by the
/// configs' own validation too, with their own words. Rates and decays have no upper bound: a
/// learning rate of 1e6 only makes the loss diverge, which stops the run with its own error.
pub const SETTINGS: &[Limit] = &[
    Limit {
        key: "block_size",
        min: 1.0,
        max: 8192.0,
        why: "attention keeps block_size x block_size weights per head",
    },
    Limit {
        key: "n_embd",
        min: 0.0,
        max: 16384.0,
        why: "wider than any model a CPU trains",
    },
    Limit {
        key: "n_head",
        min: 0.0,
        max: 1024.0,
        why: "n_embd must divide into the heads",
    },
    Limit {
        key: "n_layer",
        min: 0.0,
        max: 256.0,
        why: "deeper than any model a CPU trains",
    },
    Limit {
        key: "dropout",
        min: 0.0,
        max: 1.0,
        why: "a probability, below 1",
    },
    Limit {
        key: "batch_size",
        min: 1.0,
        max: 4096.0,
        why: "one step must end in reasonable time, so that Stop is prompt",
    },
    Limit {
        key: "steps",
        min: 1.0,
        max: 10_000_000.0,
        why: "steps.csv holds a row per step",
    },
    Limit {
        key: "warmup_steps",
        min: 0.0,
        max: 10_000_000.0,
        why: "at most the most steps",
    },
    Limit {
        key: "eval_interval",
        min: 0.0,
        max: 10_000_000.0,
        why: "at most the most steps (0: automatic)",
    },
    Limit {
        key: "eval_iters",
        min: 1.0,
        max: 10_000.0,
        why: "the estimate's batches; 200 is the lecture's",
    },
    Limit {
        key: "learning_rate",
        min: 0.0,
        max: f64::INFINITY,
        why: "above 0; 1e-3 is usual",
    },
    Limit {
        key: "min_lr",
        min: 0.0,
        max: f64::INFINITY,
        why: "the schedule's floor",
    },
    Limit {
        key: "muon_lr",
        min: 0.0,
        max: f64::INFINITY,
        why: "above 0; 0.02 is usual",
    },
    Limit {
        key: "beta1",
        min: 0.0,
        max: 1.0,
        why: "below 1",
    },
    Limit {
        key: "beta2",
        min: 0.0,
        max: 1.0,
        why: "below 1",
    },
    Limit {
        key: "muon_momentum",
        min: 0.0,
        max: 1.0,
        why: "below 1",
    },
    Limit {
        key: "eps",
        min: 0.0,
        max: 1.0,
        why: "above 0; 1e-8 is usual",
    },
    Limit {
        key: "weight_decay",
        min: 0.0,
        max: f64::INFINITY,
        why: "0.1 is usual",
    },
    Limit {
        key: "muon_weight_decay",
        min: 0.0,
        max: f64::INFINITY,
        why: "0.05 is best-1h's",
    },
    Limit {
        key: "budget_dropout",
        min: 0.0,
        max: 1.0,
        why: "a probability, below 1; 0.1 is default's",
    },
    Limit {
        key: "time_budget",
        min: 0.0,
        max: 604_800.0,
        why: "a week, in seconds (or 90s, 20m, 1h30m); a longer run resumes",
    },
    Limit {
        key: "grad_clip",
        min: 0.0,
        max: f64::INFINITY,
        why: "0 turns clipping off",
    },
    Limit {
        key: "decay_fraction",
        min: 0.0,
        max: 1.0,
        why: "a share of the run, above 0",
    },
];

/// The most characters one sample request of `chargpt serve` draws.
pub const MAX_SAMPLE_TOKENS: usize = 20_000;
/// The most characters of a prompt (the model sees its last `block_size` of them).
pub const MAX_PROMPT_CHARS: usize = 10_000;
/// The highest sampling temperature; 0 is the lowest and means the most likely character.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// What a sample or an inspection asks for.
pub const SAMPLING: &[Limit] = &[
    Limit {
        key: "temperature",
        min: 0.0,
        max: MAX_TEMPERATURE as f64,
        why: "0 always takes the most likely character; above 10 the text is noise",
    },
    Limit {
        key: "top_k",
        min: 1.0,
        max: f64::INFINITY,
        why: "more than the vocabulary means all of it",
    },
    Limit {
        key: "tokens",
        min: 0.0,
        max: MAX_SAMPLE_TOKENS as f64,
        why: "per request of the page; draw several for more",
    },
    Limit {
        key: "prompt",
        min: 0.0,
        max: MAX_PROMPT_CHARS as f64,
        why: "characters; the model sees the last block_size of them",
    },
];

/// The limit of `key`, if it has one.
pub fn limit(key: &str) -> Option<&'static Limit> {
    SETTINGS.iter().chain(SAMPLING).find(|l| l.key == key)
}

impl Limit {
    /// `value` checked against the range, in words that say what to do.
    pub fn check(&self, value: f64) -> Result<(), String> {
        if value.is_nan() || value < self.min || value > self.max {
            return Err(format!(
                "{} must lie between {} and {} ({}), got {}",
                self.key,
                number(self.min),
                number(self.max),
                self.why,
                number(value)
            ));
        }
        Ok(())
    }
}

/// A bound as a person writes it: 10000000 as 10,000,000, 1e6 as 1,000,000, 0.5 as 0.5.
pub fn number(x: f64) -> String {
    if x.is_infinite() {
        return if x > 0.0 { "no limit" } else { "-no limit" }.into();
    }
    if x.fract() != 0.0 || x.abs() >= 1e15 {
        return format!("{x}");
    }
    let digits = format!("{}", x.abs() as u64);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Checks every bounded field of a config (any struct that serialises to a JSON object of
/// numbers, booleans and strings): the first value out of its range, as its key and the words
/// of [`Limit::check`].
pub fn check_fields<T: serde::Serialize>(config: &T) -> Result<(), (&'static str, String)> {
    let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(config) else {
        return Ok(());
    };
    for limit in SETTINGS {
        if let Some(value) = fields.get(limit.key).and_then(serde_json::Value::as_f64) {
            limit.check(value).map_err(|e| (limit.key, e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_with_a_number_has_a_limit_and_every_limit_a_setting() {
        let preset = crate::config::preset("fast").unwrap();
        let mut numbers = Vec::new();
        for value in [
            serde_json::to_value(&preset.model).unwrap(),
            serde_json::to_value(&preset.train).unwrap(),
        ] {
            for (key, v) in value.as_object().unwrap() {
                if v.is_number() && key != "vocab_size" && key != "seed" {
                    numbers.push(key.clone());
                }
            }
        }
        for key in &numbers {
            assert!(limit(key).is_some(), "{key} has no limit");
        }
        for l in SETTINGS {
            assert!(
                numbers.iter().any(|k| k == l.key),
                "{} is no setting",
                l.key
            );
        }
    }

    #[test]
    fn values_outside_a_range_are_refused_in_words() {
        let l = limit("eval_iters").unwrap();
        assert!(l.check(200.0).is_ok());
        let e = l.check(1e12).unwrap_err();
        assert!(
            e.contains("eval_iters must lie between 1 and 10,000"),
            "{e}"
        );
        assert!(e.contains("got 1,000,000,000,000"), "{e}");
        assert!(l.check(0.0).is_err());
        assert!(l.check(f64::NAN).is_err());
        assert_eq!(number(10_000_000.0), "10,000,000");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(100.0), "100");
    }

    #[test]
    fn the_documentation_states_every_limit_as_it_is() {
        let docs = include_str!("../docs/training.md");
        for l in SETTINGS.iter().chain(SAMPLING) {
            let row = format!(
                "| `{}` | {} to {} | {} |",
                l.key,
                number(l.min),
                number(l.max),
                l.why
            );
            assert!(docs.contains(&row), "docs/training.md lacks {row}");
        }
    }

    #[test]
    fn every_preset_lies_inside_the_limits() {
        for p in crate::config::presets() {
            check_fields(&p.model).unwrap();
            check_fields(&p.train).unwrap();
        }
    }
}
