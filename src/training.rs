//! The training loop and the two ways of measuring loss.
//!
//! A step: sample a batch, forward with dropout, backward into the zeroed gradient buffer, clip
//! the global gradient norm, one AdamW update at the scheduled learning rate. All buffers are
//! allocated when the [`Trainer`] is built, so a step allocates nothing.
//!
//! Threads split the batch (data parallelism): with P worker threads the B sequences are cut
//! into P shards of consecutive rows, each thread runs the forward and backward pass of its shard
//! with its own activations and gradient buffer (its kernels on that thread alone), and the
//! shards' gradients are summed. Shard s contributes `n_s / N` times the gradient of its own mean
//! loss, so the sum is exactly the gradient of the whole batch's mean. One fork-join per step
//! instead of one per kernel is what makes small models fast on several threads; the memory for
//! activations is the same (each shard holds its own rows), plus one gradient buffer per extra
//! thread.
//!
//! Loss is measured two ways:
//! - [`Trainer::estimate_loss`]: the lecture's `estimate_loss`, the mean loss over `eval_iters`
//!   random batches of a split, without dropout. Cheap and noisy; used during training.
//! - [`evaluate_exact`]: the mean loss over every target of a split, cut into consecutive
//!   non-overlapping windows of `block_size`. Deterministic; used to report results.

use crate::config::TrainConfig;
use crate::data::{fill_windows, sample_batch, window_count, Dataset, Split};
use crate::kernels::sequentially;
use crate::model::{Activations, Model};
use crate::optimizer::{clip_scale, grad_norm, learning_rate, AdamW};
use crate::rng::Rng;
use crate::tokenizer::TokenId;
use rayon::prelude::*;
use std::ops::Range;

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
    shards: Vec<Shard>,
    inputs: Vec<TokenId>,
    targets: Vec<TokenId>,
}

/// Consecutive batch rows and the buffers one thread needs to run them.
#[derive(Debug)]
struct Shard {
    rows: Range<usize>,
    acts: Activations,
    /// This shard's gradient; empty for shard 0, which borrows the trainer's buffer.
    grads: Vec<f32>,
    /// The shard's last mean loss.
    loss: f32,
}

/// `batch` rows cut into at most `parts` near-equal shards of consecutive rows.
fn shard_rows(batch: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, batch.max(1));
    (0..parts)
        .map(|i| (i * batch / parts)..((i + 1) * batch / parts))
        .collect()
}

impl Trainer {
    /// A trainer whose steps use every thread of the current rayon pool (build it inside
    /// `pool.install`); results are reproducible for a given thread count.
    pub fn new(model: Model, config: TrainConfig) -> Self {
        let n = model.num_params();
        let (b, t) = (config.batch_size, model.config.block_size);
        let shards = shard_rows(b, rayon::current_num_threads())
            .into_iter()
            .enumerate()
            .map(|(i, rows)| Shard {
                acts: Activations::new(&model.config, rows.len(), t, true),
                grads: if i == 0 { Vec::new() } else { vec![0.0; n] },
                rows,
                loss: 0.0,
            })
            .collect();
        let data_rng = Rng::derived(config.seed, 0xDA7A, 0, 0);
        Trainer {
            model,
            grads: vec![0.0; n],
            optimizer: AdamW::new(n),
            data_rng,
            step: 0,
            shards,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            config,
        }
    }

    /// The threads a step is split over.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The forward pass of the batch (B, T) on every shard, and with `backward` the gradient of
    /// the batch's mean loss into `self.grads`. Returns the batch's mean loss.
    fn run_shards(
        &mut self,
        inputs: &[TokenId],
        targets: &[TokenId],
        dropout_seed: Option<u64>,
        backward: bool,
    ) -> f32 {
        let t = self.model.config.block_size;
        let batch = self.shards.last().map_or(0, |s| s.rows.end);
        let model = &self.model;
        let one = |s: &mut Shard, index: usize| {
            let rows = s.rows.start * t..s.rows.end * t;
            let seed = dropout_seed.map(|d| crate::rng::mix(d ^ index as u64));
            s.loss = model
                .forward(
                    &mut s.acts,
                    &inputs[rows.clone()],
                    Some(&targets[rows]),
                    s.rows.len(),
                    t,
                    seed,
                )
                .expect("targets given");
            if backward {
                s.grads.fill(0.0);
                let share = s.rows.len() as f32 / batch as f32;
                model.backward_scaled(&mut s.acts, &mut s.grads, share);
            }
        };
        if backward {
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        }
        if self.shards.len() == 1 {
            one(&mut self.shards[0], 0);
        } else {
            self.shards
                .par_iter_mut()
                .enumerate()
                .with_max_len(1)
                .for_each(|(i, s)| sequentially(|| one(s, i)));
        }
        if backward {
            let (first, rest) = self.shards.split_first_mut().expect("at least one shard");
            if !rest.is_empty() {
                const CHUNK: usize = 1 << 14;
                first
                    .grads
                    .par_chunks_mut(CHUNK)
                    .enumerate()
                    .with_min_len(crate::kernels::min_items(CHUNK * rest.len()))
                    .for_each(|(i, g)| {
                        for other in rest.iter() {
                            let o = &other.grads[i * CHUNK..i * CHUNK + g.len()];
                            for (g, &o) in g.iter_mut().zip(o) {
                                *g += o;
                            }
                        }
                    });
            }
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        }
        // The batch mean is the rows-weighted mean of the shard means.
        self.shards
            .iter()
            .map(|s| s.loss as f64 * s.rows.len() as f64)
            .sum::<f64>() as f32
            / batch as f32
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
        let step = self.step;
        let seed = crate::rng::mix(self.config.seed ^ crate::rng::mix(step as u64 + 1));
        let loss = self.run_shards(inputs, targets, Some(seed), true);
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, loss });
        }
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
        let t = self.model.config.block_size;
        let mut rng = Rng::derived(self.config.seed, 0xE7A1, self.step as u64, split as u64);
        let (mut inputs, mut targets) = (
            std::mem::take(&mut self.inputs),
            std::mem::take(&mut self.targets),
        );
        let mut total = 0.0f64;
        for _ in 0..self.config.eval_iters {
            sample_batch(data, t, &mut rng, &mut inputs, &mut targets);
            total += self.run_shards(&inputs, &targets, None, false) as f64;
        }
        self.inputs = inputs;
        self.targets = targets;
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
