//! A training run: the trainer, its tokenizer and data, and what has been recorded so far; made
//! new, fine-tuned from a checkpoint, or resumed exactly.

use super::error::RunError;
use super::records::{read_metrics, read_steps, MetricsRow, StepRow, METRICS_FILE, STEPS_FILE};
use crate::checkpoint::{Checkpoint, CheckpointError, DataInfo, InitFrom};
use crate::config::{ModelConfig, TrainConfig};
use crate::data::{
    char_counts, fill_windows, fingerprint, window_count, DataError, Dataset, FINE_TUNE_ADVICE,
};
use crate::engine::Engine;
use crate::model::{Activations, Model};
use crate::rng::Rng;
use crate::tokenizer::Tokenizer;
use crate::training::Trainer;
use std::path::Path;

/// A training run: the trainer, its data, and what has been recorded so far.
#[derive(Debug)]
pub struct Run {
    pub trainer: Trainer,
    pub tokenizer: Tokenizer,
    pub dataset: Dataset,
    pub data: DataInfo,
    /// The preset the run started from (recorded in `config.json`).
    pub preset: Option<String>,
    /// For a fine-tune: what it started from (recorded in `config.json`).
    pub init_from: Option<InitFrom>,
    /// The best val loss estimate and its step.
    pub best: Option<(f32, usize)>,
    /// Wall-clock seconds of the run's earlier sessions (a resumed run).
    pub elapsed_before_s: f64,
    pub metrics: Vec<MetricsRow>,
    /// Every training step so far (`steps.csv`).
    pub step_rows: Vec<StepRow>,
    /// The step of the checkpoint on disk, if any.
    pub saved_step: Option<usize>,
    /// With a time budget: the steps it buys at the pace its recipe was swept at (a preset's
    /// own `steps` for its own budget, scaled to another `--time`). A budget that buys under
    /// half of them here says so ([`RunEvent::BudgetSet`]). `None`: no recipe to compare with
    /// (steps given, a preset without a budget, a resume).
    ///
    /// [`RunEvent::BudgetSet`]: crate::runs::RunEvent::BudgetSet
    pub budget_guess: Option<usize>,
}

/// What a fine-tune does with characters of its text that the model's vocabulary lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownChars {
    /// Refuse the text, naming the characters (and the two other choices).
    #[default]
    Error,
    /// Remove them from the text.
    Drop,
    /// Add them to the vocabulary: new rows in the token embedding and `lm_head`.
    Extend,
}

/// How a fine-tune changed its text or the model's vocabulary: each character with its count
/// in the text, in sorted order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VocabChange {
    pub added: Vec<(char, usize)>,
    pub dropped: Vec<(char, usize)>,
}

impl VocabChange {
    /// What `--unknown-chars` did to the vocabulary or the text of `source`, a line each.
    pub fn describe(&self, source: &str) -> Vec<String> {
        let plural = |n: usize| if n == 1 { "" } else { "s" };
        let mut lines = Vec::new();
        if !self.added.is_empty() {
            lines.push(format!(
                "extending the vocabulary by {} character{} of {source} (each starts at its frequency in the text): {}",
                self.added.len(),
                plural(self.added.len()),
                counted(&self.added)
            ));
        }
        if !self.dropped.is_empty() {
            let total: usize = self.dropped.iter().map(|(_, n)| n).sum();
            lines.push(format!(
                "dropped {total} character{} of {} kind{} from {source} that the model's vocabulary lacks: {}",
                plural(total),
                self.dropped.len(),
                plural(self.dropped.len()),
                counted(&self.dropped)
            ));
        }
        lines
    }
}

/// `'é' 12, '"' 4, ...`: characters with their counts, the most frequent first.
fn counted(chars: &[(char, usize)]) -> String {
    let mut sorted = chars.to_vec();
    sorted.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let shown: Vec<String> = sorted
        .iter()
        .take(30)
        .map(|(c, n)| format!("{c:?} {n}"))
        .collect();
    let more = sorted.len().saturating_sub(30);
    if more > 0 {
        format!("{}, and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The starting logits of characters being added to a model's vocabulary, chosen so that before
/// any training each new character is predicted with its frequency `f_c` in the new text, and
/// the old characters share what is left in their trained proportions.
///
/// With the new rows of `lm_head.weight` at zero, a new character's logit is a constant `b_c`, so
/// at a position whose old logits have log-sum-exp `L`, `p_c = e^{b_c} / (e^L + sum_new e^b)`.
/// Asking `p_c = f_c` for every new c (their total `F = sum f_c`) gives
/// `b_c = ln f_c + L - ln(1 - F)`; `L` is averaged over up to 4096 positions of the new text's
/// train split. So the first loss is about what the old model scores on the old characters plus
/// `-ln f_c` per new one (the best a context-free guess can do), instead of `ln V` or worse.
pub fn new_character_logits(
    model: &Model,
    dataset: &Dataset,
    text: &str,
    added: &[(char, usize)],
) -> Vec<f32> {
    let total = text.chars().count().max(1) as f64;
    let freq: Vec<f64> = added
        .iter()
        .map(|&(_, n)| n.max(1) as f64 / total)
        .collect();
    let new_mass: f64 = freq.iter().sum::<f64>().min(0.999);
    // The model with the new characters at logit 0, to read the old logits on the new text.
    let probe = model.extend_vocabulary(&vec![0.0; added.len()]);
    let (v_old, v) = (model.config.vocab_size, probe.config.vocab_size);
    let t = probe.config.block_size;
    let windows = window_count(dataset.train.len(), t).clamp(1, 4096usize.div_ceil(t));
    let mut acts = Activations::new(&probe.config, windows, t, false);
    let (mut inputs, mut targets) = (vec![0; windows * t], vec![0; windows * t]);
    fill_windows(&dataset.train, t, 0, windows, &mut inputs, &mut targets);
    probe.forward(&mut acts, &inputs, None, windows, t, None);
    let positions = acts.logits().len() / v;
    let mean_lse = acts
        .logits()
        .chunks_exact(v)
        .map(|row| {
            let old = &row[..v_old];
            let max = old.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)) as f64;
            max + old
                .iter()
                .map(|&x| (x as f64 - max).exp())
                .sum::<f64>()
                .ln()
        })
        .sum::<f64>()
        / positions.max(1) as f64;
    freq.iter()
        .map(|f| (f.ln() + mean_lse - (1.0 - new_mass).ln()) as f32)
        .collect()
}

/// Where a run's text came from and what it was.
pub fn data_info(source: &str, text: &str) -> DataInfo {
    DataInfo {
        source: source.to_string(),
        characters: text.chars().count(),
        fingerprint: fingerprint(text),
    }
}

impl Run {
    /// A new model, initialised from `train.seed`, trained on `text` with the vocabulary of
    /// `text`.
    pub fn new(
        mut model: ModelConfig,
        train: TrainConfig,
        text: &str,
        data: DataInfo,
    ) -> Result<Self, RunError> {
        let tokenizer = Tokenizer::from_text(text).map_err(DataError::from)?;
        model.vocab_size = tokenizer.vocab_size();
        model.validate()?;
        train.validate()?;
        let dataset = Dataset::new(text, &tokenizer)?;
        dataset.check_block_size(model.block_size)?;
        let seed = train.seed;
        Run::fresh(
            Model::try_new(model, seed)?,
            tokenizer,
            dataset,
            train,
            data,
        )
    }

    /// Fine-tuning: a trained model's parameters and vocabulary, a fresh optimizer, `text`
    /// encoded with the model's vocabulary. Characters outside it are, by `unknown`: an error
    /// that lists them ([`UnknownChars::Error`]), removed from the text
    /// ([`UnknownChars::Drop`]), or added to the vocabulary ([`UnknownChars::Extend`], see
    /// [`new_character_logits`] for how the new rows start). The change is returned with the run.
    pub fn fine_tune(
        checkpoint: Checkpoint,
        train: TrainConfig,
        text: &str,
        data: DataInfo,
        unknown: UnknownChars,
    ) -> Result<(Self, VocabChange), RunError> {
        checkpoint.model.config.validate()?;
        train.validate()?;
        let Checkpoint {
            mut model,
            mut tokenizer,
            ..
        } = checkpoint;
        let mut missing = tokenizer.unknown_chars(text);
        missing.sort_unstable();
        let mut change = VocabChange::default();
        let dataset = match unknown {
            _ if missing.is_empty() => Dataset::new(text, &tokenizer)?,
            UnknownChars::Error => {
                Dataset::with_vocabulary(text, &tokenizer, &data.source, FINE_TUNE_ADVICE)?
            }
            UnknownChars::Drop => {
                change.dropped = char_counts(text, &missing);
                let kept: String = text
                    .chars()
                    .filter(|c| tokenizer.id(*c).is_some())
                    .collect();
                if kept.is_empty() {
                    return Err(DataError::Empty(format!(
                        "{} without the characters the model lacks",
                        data.source
                    ))
                    .into());
                }
                Dataset::new(&kept, &tokenizer)?
            }
            UnknownChars::Extend => {
                change.added = char_counts(text, &missing);
                tokenizer = tokenizer.extended(&missing).map_err(DataError::from)?;
                let dataset = Dataset::new(text, &tokenizer)?;
                dataset.check_block_size(model.config.block_size)?;
                // A head with rows and a bias of its own starts a new character at its
                // frequency; a tied or biasless one at the mean of the old logits.
                let logits = if model.sets_new_logits() {
                    new_character_logits(&model, &dataset, text, &change.added)
                } else {
                    vec![0.0; change.added.len()]
                };
                model = model.extend_vocabulary(&logits);
                dataset
            }
        };
        dataset.check_block_size(model.config.block_size)?;
        Ok((Run::fresh(model, tokenizer, dataset, train, data)?, change))
    }

    fn fresh(
        model: Model,
        tokenizer: Tokenizer,
        dataset: Dataset,
        train: TrainConfig,
        data: DataInfo,
    ) -> Result<Self, RunError> {
        Ok(Run {
            trainer: Trainer::try_with_engine(model, train, Engine::Fast)?,
            tokenizer,
            dataset,
            data,
            preset: None,
            init_from: None,
            best: None,
            elapsed_before_s: 0.0,
            metrics: Vec::new(),
            step_rows: Vec::new(),
            saved_step: None,
            budget_guess: None,
        })
    }

    /// Continues the run saved in `dir` with training settings `train` (the saved ones, or those
    /// with `steps` raised): parameters, AdamW moments and step, the batch generator's state, the
    /// best val loss and the metrics up to the saved step all come back, so the continuation is
    /// the same, bit for bit, as a run that never stopped.
    pub fn resume(
        dir: &Path,
        train: TrainConfig,
        text: &str,
        data: DataInfo,
    ) -> Result<Self, RunError> {
        let checkpoint = crate::checkpoint::load(dir)?;
        let state = crate::checkpoint::load_optimizer(dir, &checkpoint.model.layout)?;
        let model_step = crate::checkpoint::model_file_step(dir)?.unwrap_or(checkpoint.config.step);
        let saved = Saved {
            checkpoint,
            state,
            model_step,
            metrics: read_metrics(&dir.join(METRICS_FILE)),
            steps: read_steps(&dir.join(STEPS_FILE)),
        };
        Run::resume_from(saved, train, text, data, &dir.display().to_string())
    }

    /// [`Run::resume`] from a checkpoint read elsewhere (files or bytes); `shown` names where it
    /// came from in errors.
    pub fn resume_from(
        saved: Saved,
        train: TrainConfig,
        text: &str,
        data: DataInfo,
        shown: &str,
    ) -> Result<Self, RunError> {
        let Saved {
            checkpoint,
            state,
            model_step,
            mut metrics,
            steps: mut step_rows,
        } = saved;
        let counters = state.counters;
        if model_step != counters.step || checkpoint.config.step != counters.step {
            return Err(CheckpointError::Torn {
                dir: shown.to_string(),
                model_step,
                optimizer_step: counters.step,
            }
            .into());
        }
        if counters.step >= train.steps {
            return Err(RunError::AlreadyFinished {
                dir: shown.to_string(),
                steps: train.steps,
            });
        }
        train.validate()?;
        let dataset = Dataset::with_vocabulary(
            text,
            &checkpoint.tokenizer,
            &data.source,
            "resume on the run's own text, or fine-tune on this one with --init-from and --unknown-chars extend or drop",
        )?;
        dataset.check_block_size(checkpoint.model.config.block_size)?;
        let mut trainer = Trainer::try_with_engine(checkpoint.model, train, Engine::Fast)?;
        trainer.optimizer = state.adamw;
        trainer.data_rng = Rng::from_state(counters.data_rng_state);
        trainer.step = counters.step;
        // Rows after the checkpoint belong to steps that will be run again.
        metrics.retain(|r| r.step <= counters.step);
        step_rows.retain(|r| r.step <= counters.step);
        Ok(Run {
            trainer,
            tokenizer: checkpoint.tokenizer,
            dataset,
            data,
            preset: checkpoint.config.preset,
            init_from: checkpoint.config.init_from,
            best: counters.best_val_loss.zip(counters.best_val_step),
            elapsed_before_s: counters.elapsed_s,
            metrics,
            step_rows,
            saved_step: Some(counters.step),
            budget_guess: None,
        })
    }
}

/// A saved run, read: what [`Run::resume_from`] continues.
#[derive(Debug)]
pub struct Saved {
    pub checkpoint: Checkpoint,
    pub state: crate::checkpoint::OptimizerState,
    /// The step the model's file records (a torn save has another than the optimizer's).
    pub model_step: usize,
    pub metrics: Vec<MetricsRow>,
    pub steps: Vec<StepRow>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    #[test]
    fn new_characters_start_at_their_frequency_in_the_text() {
        let base_text = "the quick brown fox jumps over the lazy dog\n".repeat(20);
        let mut cfg = preset("layernorm").unwrap().model;
        let tokenizer = Tokenizer::from_text(&base_text).unwrap();
        cfg.vocab_size = tokenizer.vocab_size();
        let model = Model::new(cfg, 7);
        // 'é' is 1 character in 10 of the new text, '{' 1 in 20.
        let new_text = "the fox éats {} dogs\n".repeat(30);
        let mut missing = tokenizer.unknown_chars(&new_text);
        missing.sort_unstable();
        let extended = tokenizer.extended(&missing).unwrap();
        let dataset = Dataset::new(&new_text, &extended).unwrap();
        let added = char_counts(&new_text, &missing);
        let logits = new_character_logits(&model, &dataset, &new_text, &added);
        let grown = model.extend_vocabulary(&logits);
        let t = grown.config.block_size;
        let (v_old, v) = (model.config.vocab_size, grown.config.vocab_size);
        let mut acts = Activations::new(&grown.config, 1, t, false);
        grown.forward(&mut acts, &dataset.train[..t], None, 1, t, None);
        let total = new_text.chars().count() as f64;
        for (j, &(c, n)) in added.iter().enumerate() {
            let mean_p = acts
                .logits()
                .chunks_exact(v)
                .map(|row| {
                    let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    let z: f64 = row.iter().map(|&x| ((x - max) as f64).exp()).sum();
                    ((row[v_old + j] - max) as f64).exp() / z
                })
                .sum::<f64>()
                / t as f64;
            let f = n as f64 / total;
            assert!(
                (mean_p / f - 1.0).abs() < 0.1,
                "{c:?}: predicted {mean_p:.4}, frequency {f:.4}"
            );
        }
    }
}
