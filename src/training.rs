//! The training loop and the two ways of measuring loss.
//!
//! A step: sample a batch, forward with dropout, backward into the zeroed gradient buffer, clip
//! the global gradient norm, one AdamW update at the scheduled learning rate. All buffers are
//! allocated when the [`Trainer`] is built, so a step allocates nothing.
//!
//! Loss is measured two ways:
//! - [`Trainer::estimate_loss`]: the lecture's `estimate_loss`, the mean loss over `eval_iters`
//!   random batches of a split, without dropout. Cheap and noisy; used during training.
//! - [`evaluate_exact`]: the mean loss over every target of a split, cut into consecutive
//!   non-overlapping windows of `block_size`. Deterministic; used to report results.

use crate::config::TrainConfig;
use crate::data::{fill_windows, sample_batch, window_count, Dataset, Split};
use crate::model::{Activations, Model};
use crate::optimizer::{clip_scale, grad_norm, learning_rate, AdamW};
use crate::rng::Rng;
use crate::tokenizer::TokenId;

/// What one training step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step's index (0-based).
    pub step: usize,
    pub loss: f32,
    pub lr: f32,
    pub grad_norm: f32,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("the loss became {loss} at step {step}; training stopped (try a lower learning_rate or grad_clip=1.0)")]
    NonFiniteLoss { step: usize, loss: f32 },
}

/// The whole state of a training run: everything needed to continue it exactly.
#[derive(Debug)]
pub struct Trainer {
    pub model: Model,
    pub config: TrainConfig,
    pub grads: Vec<f32>,
    pub optimizer: AdamW,
    /// The stream batches are drawn from.
    pub data_rng: Rng,
    /// Steps completed so far.
    pub step: usize,
    acts: Activations,
    eval_acts: Activations,
    inputs: Vec<TokenId>,
    targets: Vec<TokenId>,
}

impl Trainer {
    pub fn new(model: Model, config: TrainConfig) -> Self {
        let n = model.num_params();
        let (b, t) = (config.batch_size, model.config.block_size);
        let acts = Activations::new(&model.config, b, t, true);
        let eval_acts = Activations::new(&model.config, b, t, false);
        let data_rng = Rng::derived(config.seed, 0xDA7A, 0, 0);
        Trainer {
            model,
            grads: vec![0.0; n],
            optimizer: AdamW::new(n),
            data_rng,
            step: 0,
            acts,
            eval_acts,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            config,
        }
    }

    /// One optimizer step on a random batch of `data`.
    pub fn train_step(&mut self, data: &[TokenId]) -> Result<StepStats, TrainError> {
        let t = self.model.config.block_size;
        // Moving the buffers out and back costs nothing (no allocation) and lets the batch be
        // borrowed while the trainer is mutated.
        let (mut inputs, mut targets) = (
            std::mem::take(&mut self.inputs),
            std::mem::take(&mut self.targets),
        );
        sample_batch(data, t, &mut self.data_rng, &mut inputs, &mut targets);
        let result = self.step_on_batch(&inputs, &targets);
        self.inputs = inputs;
        self.targets = targets;
        result
    }

    /// One optimizer step on the given batch (B, T): forward with dropout, backward, clip, AdamW.
    pub fn step_on_batch(
        &mut self,
        inputs: &[TokenId],
        targets: &[TokenId],
    ) -> Result<StepStats, TrainError> {
        let (b, t) = (self.config.batch_size, self.model.config.block_size);
        let step = self.step;
        let seed = crate::rng::mix(self.config.seed ^ crate::rng::mix(step as u64 + 1));
        let loss = self
            .model
            .forward(&mut self.acts, inputs, Some(targets), b, t, Some(seed))
            .expect("targets given");
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, loss });
        }
        self.grads.fill(0.0);
        self.model.backward(&mut self.acts, &mut self.grads);
        let norm = grad_norm(&self.grads);
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, loss: norm });
        }
        let lr = learning_rate(&self.config, step);
        let scale = clip_scale(norm, self.config.grad_clip);
        self.optimizer.update(
            &mut self.model.params,
            &self.grads,
            &self.model.layout,
            &self.config,
            lr,
            scale,
        );
        self.step += 1;
        Ok(StepStats {
            step,
            loss,
            lr,
            grad_norm: norm,
        })
    }

    /// The lecture's `estimate_loss` for one split: mean loss of `eval_iters` random batches in
    /// evaluation mode. The batches depend only on the seed, the step and the split, so the
    /// estimate does not disturb the training stream.
    pub fn estimate_loss(&mut self, data: &[TokenId], split: Split) -> f32 {
        let (b, t) = (self.config.batch_size, self.model.config.block_size);
        let mut rng = Rng::derived(self.config.seed, 0xE7A1, self.step as u64, split as u64);
        let mut total = 0.0f64;
        for _ in 0..self.config.eval_iters {
            sample_batch(data, t, &mut rng, &mut self.inputs, &mut self.targets);
            let loss = self
                .model
                .forward(
                    &mut self.eval_acts,
                    &self.inputs,
                    Some(&self.targets),
                    b,
                    t,
                    None,
                )
                .expect("targets given");
            total += loss as f64;
        }
        (total / self.config.eval_iters as f64) as f32
    }

    /// `estimate_loss` on both splits: (train, val).
    pub fn estimate_losses(&mut self, dataset: &Dataset) -> (f32, f32) {
        (
            self.estimate_loss(&dataset.train, Split::Train),
            self.estimate_loss(&dataset.val, Split::Val),
        )
    }
}

/// The exact loss of a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExactLoss {
    pub loss: f64,
    /// Targets scored (windows x block_size).
    pub tokens: usize,
    pub windows: usize,
}

/// The mean loss over every target of `data`, cut into consecutive non-overlapping windows of
/// `block_size` inputs (+1 target); the last partial window is dropped. Runs `batch` windows at a
/// time.
pub fn evaluate_exact(model: &Model, data: &[TokenId], batch: usize) -> ExactLoss {
    let t = model.config.block_size;
    let windows = window_count(data.len(), t);
    let batch = batch.max(1).min(windows.max(1));
    let mut acts = Activations::new(&model.config, batch, t, false);
    let (mut inputs, mut targets) = (vec![0; batch * t], vec![0; batch * t]);
    let mut total = 0.0f64;
    let mut first = 0;
    while first < windows {
        let rows = batch.min(windows - first);
        fill_windows(data, t, first, rows, &mut inputs, &mut targets);
        let n = rows * t;
        model.forward(&mut acts, &inputs[..n], Some(&targets[..n]), rows, t, None);
        total += acts.losses().iter().map(|&l| l as f64).sum::<f64>();
        first += rows;
    }
    let tokens = windows * t;
    ExactLoss {
        loss: if tokens == 0 {
            f64::NAN
        } else {
            total / tokens as f64
        },
        tokens,
        windows,
    }
}
