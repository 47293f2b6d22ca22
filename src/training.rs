//! The training loop and the two ways of measuring loss.
//!
//! A step: sample a batch, forward with dropout, backward into the zeroed gradient buffer, clip
//! the global gradient norm, one AdamW update at the scheduled learning rate. All buffers are
//! allocated when the [`Trainer`] is built, so a step allocates nothing.
//!
//! Threads split the batch (data parallelism): with P worker threads the B sequences are cut
//! into P shards of consecutive rows, each thread runs the forward and backward pass of its shard
//! with its own activations and gradient buffer (its kernels on that thread alone), and the
//! shards' gradients are summed. Either engine ([`Engine`]) runs the shards: the fast one in the
//! activations allocated here, the reference one in buffers of its own. Shard s contributes `n_s / N` times the gradient of its own mean
//! loss, so the sum is exactly the gradient of the whole batch's mean. One fork-join per step
//! instead of one per kernel is what makes small models fast on several threads; the memory for
//! activations is the same (each shard holds its own rows), plus one gradient buffer per extra
//! thread.
//!
//! Processes split the batch the same way (`mpirun`, [`crate::distributed`]): the B rows are cut
//! into one shard per thread of every rank, as one process with that many threads would cut
//! them, each rank runs its own shards, and the shards' gradients are added in shard order across
//! the ranks, so the step is the single-process one bit for bit ([`Trainer::set_group`]).
//!
//! Loss is measured two ways:
//! - [`Trainer::estimate_loss`]: the lecture's `estimate_loss`, the mean loss over `eval_iters`
//!   random batches of a split, without dropout. Cheap and noisy; used during training.
//! - [`evaluate_exact`]: the mean loss over every target of a split, cut into consecutive
//!   non-overlapping windows of `block_size`. Deterministic; used to report results.

use crate::checkpoint::{
    save_checkpoint, write_atomic, Checkpoint, CheckpointConfig, CheckpointError, DataInfo,
    InitFrom, RunCounters,
};
use crate::config::{ConfigError, ModelConfig, Precision, TrainConfig};
use crate::data::{
    char_counts, fill_windows, fingerprint, sample_batch, window_count, DataError, Dataset, Split,
    FINE_TUNE_ADVICE,
};
use crate::distributed::{DistributedError, Group};
use crate::engine::Engine;
use crate::kernels::sequentially;
use crate::memory::{zeroed, OutOfMemory};
use crate::model::{Activations, Model};
use crate::optimizer::{add_assign, clip_scale, learning_rate, sum_squares, AdamW};
use crate::rng::{DropoutSeed, Rng};
use crate::tokenizer::{TokenId, Tokenizer};
use rayon::prelude::*;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

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
    /// Which engine computes the forward and backward passes.
    engine: Engine,
    shards: Vec<Shard>,
    inputs: Vec<TokenId>,
    targets: Vec<TokenId>,
    /// The sum of squares of each `GRAD_CHUNK` piece of the last step's gradient, kept per piece
    /// so that the norm adds them in a fixed order whatever the threads did.
    chunk_squares: Vec<f64>,
    /// The processes the batch is split over (this one alone unless started by mpirun).
    group: Group,
    /// The rows of every shard of the batch, on all ranks (`shards` are this rank's).
    batch_shards: Vec<Range<usize>>,
    /// Every shard's last mean loss, in shard order (gathered from the ranks).
    shard_losses: Vec<f32>,
    /// With several ranks: this rank's shards' losses, and how many shards each rank runs and
    /// where its losses start (for the gather).
    local_losses: Vec<f32>,
    rank_shards: Vec<i32>,
    rank_first_shard: Vec<i32>,
    /// With several ranks: the buffer the gradient sum arrives in (swapped with `grads`).
    reduce_scratch: Vec<f32>,
}

/// The gradient is summed over shards, and its norm taken, in pieces of this many floats.
const GRAD_CHUNK: usize = 1 << 14;

/// Consecutive batch rows and the buffers one thread needs to run them.
#[derive(Debug)]
struct Shard {
    rows: Range<usize>,
    /// The fast engine's buffers for these rows (empty on the reference engine).
    acts: Activations,
    /// This shard's gradient; empty for shard 0, which borrows the trainer's buffer.
    grads: Vec<f32>,
    /// The shard's last mean loss.
    loss: f32,
}

/// The fast engine's buffers and a gradient buffer (but for the first) for each shard's rows.
fn build_shards(
    model: &Model,
    engine: Engine,
    rows: &[Range<usize>],
) -> Result<Vec<Shard>, OutOfMemory> {
    let t = model.config.block_size;
    // The reference engine allocates per pass; its shards need no fast buffers.
    let rows_held = |rows: usize| if engine == Engine::Fast { rows } else { 0 };
    rows.iter()
        .enumerate()
        .map(|(i, rows)| {
            Ok(Shard {
                acts: Activations::try_new(&model.config, rows_held(rows.len()), t, true)?,
                grads: if i == 0 {
                    Vec::new()
                } else {
                    zeroed(model.num_params(), "a thread's gradients")?
                },
                rows: rows.clone(),
                loss: 0.0,
            })
        })
        .collect()
}

/// Shards worth running for `batch` sequences split over `ranks` processes: a step of a few
/// million flops is over before a second thread would wake up.
fn shards_worth(model: &Model, batch: usize, ranks: usize) -> usize {
    let worth = (model.flops_per_step(batch) / 20e6) as usize / ranks.max(1);
    rayon::current_num_threads().min(worth.max(1))
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
        Self::with_engine(model, config, Engine::Fast)
    }

    /// [`Trainer::new`] on the given engine; the reference engine splits the batch over the
    /// threads in the same way.
    pub fn with_engine(model: Model, config: TrainConfig, engine: Engine) -> Self {
        let shards = shards_worth(&model, config.batch_size, 1);
        Self::with_shards_on(model, config, shards, engine)
    }

    /// A trainer that splits each batch into `shards` parts (at most one per sequence), run in
    /// parallel on the current rayon pool. The model's products take `config.precision`.
    pub fn with_shards(model: Model, config: TrainConfig, shards: usize) -> Self {
        Self::with_shards_on(model, config, shards, Engine::Fast)
    }

    /// [`Trainer::with_shards`] on the given engine.
    pub fn with_shards_on(
        model: Model,
        config: TrainConfig,
        shards: usize,
        engine: Engine,
    ) -> Self {
        Self::try_with_shards_on(model, config, shards, engine).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Trainer::with_engine`], or [`OutOfMemory`] if the system refuses its buffers.
    pub fn try_with_engine(
        model: Model,
        config: TrainConfig,
        engine: Engine,
    ) -> Result<Self, OutOfMemory> {
        let shards = shards_worth(&model, config.batch_size, 1);
        Self::try_with_shards_on(model, config, shards, engine)
    }

    /// [`Trainer::with_shards_on`], or [`OutOfMemory`] if the system refuses its buffers (the
    /// gradients, the optimizer's moments, every shard's activations).
    pub fn try_with_shards_on(
        mut model: Model,
        config: TrainConfig,
        shards: usize,
        engine: Engine,
    ) -> Result<Self, OutOfMemory> {
        model.set_precision(config.precision);
        if model.config.architecture == crate::config::Architecture::Transformer {
            let (t, hs) = (model.config.block_size, model.config.head_size());
            rayon::broadcast(|_| crate::kernels::attention::reserve_scratch(t, hs));
        }
        let n = model.num_params();
        let (b, t) = (config.batch_size, model.config.block_size);
        let batch_shards = shard_rows(b, shards);
        let shards = build_shards(&model, engine, &batch_shards)?;
        let data_rng = Rng::derived(config.seed, 0xDA7A, 0, 0);
        Ok(Trainer {
            model,
            grads: zeroed(n, "the gradients")?,
            optimizer: AdamW::try_new(n)?,
            data_rng,
            step: 0,
            engine,
            shards,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            chunk_squares: vec![0.0; n.div_ceil(GRAD_CHUNK)],
            config,
            group: Group::SINGLE,
            shard_losses: vec![0.0; batch_shards.len()],
            batch_shards,
            local_losses: Vec::new(),
            rank_shards: Vec::new(),
            rank_first_shard: Vec::new(),
            reduce_scratch: Vec::new(),
        })
    }

    /// Splits every batch over the ranks of `group` as well as over this process's threads.
    /// A collective: every rank of the group calls it, once the run's state is the same on all.
    ///
    /// Each rank asks for one shard per thread (fewer for a small model); the batch is cut into
    /// as many shards as all ranks asked for together, exactly as one process with that many
    /// threads cuts it, and this rank takes its consecutive share. With 2 ranks of 1 thread a
    /// step is then the same, bit for bit, as one process with 2 threads.
    pub fn set_group(&mut self, group: Group) -> Result<(), DistributedError> {
        let (b, ranks) = (self.config.batch_size, group.size());
        if b < ranks {
            return Err(DistributedError::BatchTooSmall { batch: b, ranks });
        }
        let wanted = shards_worth(&self.model, b, ranks);
        let mut counts = group.all_gather(wanted);
        if counts.iter().sum::<usize>() > b {
            counts = vec![1; ranks];
        }
        let total: usize = counts.iter().sum();
        let first: usize = counts[..group.rank()].iter().sum();
        self.batch_shards = shard_rows(b, total);
        let mine = &self.batch_shards[first..first + counts[group.rank()]];
        self.shards = build_shards(&self.model, self.engine, mine)?;
        self.shard_losses = vec![0.0; total];
        self.local_losses = vec![0.0; self.shards.len()];
        self.rank_shards = counts.iter().map(|&c| c as i32).collect();
        self.rank_first_shard = counts
            .iter()
            .scan(0, |start, &c| {
                let this = *start;
                *start += c as i32;
                Some(this)
            })
            .collect();
        self.reduce_scratch = if ranks > 1 {
            zeroed(self.grads.len(), "the gradient sum")?
        } else {
            Vec::new()
        };
        self.group = group;
        Ok(())
    }

    /// The processes each batch is split over.
    pub fn group(&self) -> Group {
        self.group
    }

    /// The shards of every rank together: the thread count one process would need to take the
    /// same steps.
    pub fn total_shards(&self) -> usize {
        self.batch_shards.len()
    }

    /// The threads a step is split over.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Runs the following steps and loss estimates on `engine` (the state of the run is the
    /// same for both: parameters, optimizer, data order).
    pub fn set_engine(&mut self, engine: Engine) {
        if engine == self.engine {
            return;
        }
        let t = self.model.config.block_size;
        self.engine = engine;
        for s in &mut self.shards {
            let rows = if engine == Engine::Fast {
                s.rows.len()
            } else {
                0
            };
            s.acts = Activations::new(&self.model.config, rows, t, true);
        }
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
        let batch = self.batch_shards.last().map_or(0, |r| r.end);
        let model = &self.model;
        let engine = self.engine;
        let one = |s: &mut Shard| {
            let rows = s.rows.start * t..s.rows.end * t;
            let (inputs, targets) = (&inputs[rows.clone()], &targets[rows]);
            // The masks of this shard's rows of the batch: the same whatever the sharding.
            let seed = dropout_seed.map(|d| DropoutSeed::new(d).rows_from(s.rows.start));
            let share = s.rows.len() as f32 / batch as f32;
            match engine {
                Engine::Fast => {
                    s.loss = model
                        .forward(&mut s.acts, inputs, Some(targets), s.rows.len(), t, seed)
                        .expect("targets given");
                    if backward {
                        model.backward_scaled(&mut s.acts, &mut s.grads, share);
                    }
                }
                Engine::Reference => {
                    let pass = crate::reference::forward(
                        model,
                        inputs,
                        Some(targets),
                        s.rows.len(),
                        t,
                        seed,
                    );
                    s.loss = pass.loss.expect("targets given");
                    if backward {
                        crate::reference::backward(model, &pass, &mut s.grads, share);
                    }
                }
            }
        };
        if backward {
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        }
        if self.group.size() > 1 && self.shards.len() == 1 {
            // One shard of several: run as each shard of a many-shard step runs, on one thread
            // (kernels that split work over threads add partial sums in another order).
            sequentially(|| one(&mut self.shards[0]));
        } else if self.shards.len() == 1 {
            one(&mut self.shards[0]);
        } else {
            self.shards
                .par_iter_mut()
                .with_max_len(1)
                .for_each(|s| sequentially(|| one(s)));
        }
        if backward && self.group.size() > 1 {
            // The gradient of this rank's first shard back in `grads`, the sum over all ranks'
            // shards into it, then the squares of the sum.
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
            let rest = &self.shards[1..];
            let later = |k: usize| -> &[f32] { &rest[k].grads };
            self.group.sum_in_shard_order(
                &mut self.grads,
                &mut self.reduce_scratch,
                rest.len(),
                &later,
            );
            self.grads
                .par_chunks(GRAD_CHUNK)
                .zip(self.chunk_squares.par_iter_mut())
                .with_min_len(crate::kernels::min_items(GRAD_CHUNK))
                .for_each(|(g, squares)| *squares = sum_squares(g));
        } else if backward {
            // One pass over memory: the shards' gradients summed into shard 0's buffer, and
            // the squares of the sum (for the clipping norm) while it is in registers.
            let (first, rest) = self.shards.split_first_mut().expect("at least one shard");
            first
                .grads
                .par_chunks_mut(GRAD_CHUNK)
                .zip(self.chunk_squares.par_iter_mut())
                .enumerate()
                .with_min_len(crate::kernels::min_items(GRAD_CHUNK * (rest.len() + 1)))
                .for_each(|(i, (g, squares))| {
                    for other in rest.iter() {
                        let o = &other.grads[i * GRAD_CHUNK..i * GRAD_CHUNK + g.len()];
                        add_assign(g, o);
                    }
                    *squares = sum_squares(g);
                });
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        }
        // The batch mean is the rows-weighted mean of the shard means, in shard order.
        if self.group.size() > 1 {
            for (mine, s) in self.local_losses.iter_mut().zip(&self.shards) {
                *mine = s.loss;
            }
            self.group.all_gather_f32(
                &self.local_losses,
                &self.rank_shards,
                &self.rank_first_shard,
                &mut self.shard_losses,
            );
        } else {
            for (all, s) in self.shard_losses.iter_mut().zip(&self.shards) {
                *all = s.loss;
            }
        }
        self.shard_losses
            .iter()
            .zip(&self.batch_shards)
            .map(|(&loss, rows)| loss as f64 * rows.len() as f64)
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
        let norm = self.chunk_squares.iter().sum::<f64>().sqrt() as f32;
        if !norm.is_finite() {
            return Err(TrainError::NonFiniteLoss { step, loss: norm });
        }
        let lr = learning_rate(&self.config, step);
        let scale = clip_scale(norm, self.config.grad_clip);
        // Muon's Newton-Schulz products take the precision of the model's (the reference
        // engine's are fp32 whatever the setting).
        let bf16 = self.engine == Engine::Fast && self.model.precision() == Precision::Bf16;
        self.optimizer.update(
            &mut self.model.params,
            &self.grads,
            &self.model.layout,
            &self.config,
            lr,
            scale,
            bf16,
        );
        // bf16: the products of the next step read the new weights' bf16 copies.
        self.model.refresh_bf16();
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
        self.estimate_loss_unless(data, split, &|| false)
            .expect("never stopped")
    }

    /// [`Trainer::estimate_loss`], or `None` if `stop()` (asked before each batch, so at least
    /// every batch's time) says to stop first. With several ranks `stop` must answer the same
    /// on all of them (a collective such as [`Group::any`]).
    pub fn estimate_loss_unless(
        &mut self,
        data: &[TokenId],
        split: Split,
        stop: &dyn Fn() -> bool,
    ) -> Option<f32> {
        let t = self.model.config.block_size;
        let mut rng = Rng::derived(self.config.seed, 0xE7A1, self.step as u64, split as u64);
        let (mut inputs, mut targets) = (
            std::mem::take(&mut self.inputs),
            std::mem::take(&mut self.targets),
        );
        let mut total = Some(0.0f64);
        for _ in 0..self.config.eval_iters {
            if stop() {
                total = None;
                break;
            }
            sample_batch(data, t, &mut rng, &mut inputs, &mut targets);
            let loss = self.run_shards(&inputs, &targets, None, false) as f64;
            total = total.map(|sum| sum + loss);
        }
        self.inputs = inputs;
        self.targets = targets;
        total.map(|sum| (sum / self.config.eval_iters as f64) as f32)
    }

    /// [`evaluate_exact`] of this trainer's model on its engine and batch size, split over its
    /// group's ranks (a collective when there are several).
    pub fn exact_loss(&self, data: &[TokenId]) -> ExactLoss {
        self.exact_loss_unless(data, &|| false)
            .expect("never stopped")
    }

    /// [`Trainer::exact_loss`], or `None` if `stop()` (asked before each batch of windows) says
    /// to stop first; with several ranks, a collective answer as for
    /// [`Trainer::estimate_loss_unless`].
    pub fn exact_loss_unless(
        &self,
        data: &[TokenId],
        stop: &dyn Fn() -> bool,
    ) -> Option<ExactLoss> {
        exact_loss(
            &self.model,
            data,
            self.config.batch_size,
            self.engine,
            self.group,
            &mut |_, _| {},
            stop,
        )
    }

    /// `estimate_loss` on both splits: (train, val).
    pub fn estimate_losses(&mut self, dataset: &Dataset) -> (f32, f32) {
        (
            self.estimate_loss(&dataset.train, Split::Train),
            self.estimate_loss(&dataset.val, Split::Val),
        )
    }

    /// [`Trainer::estimate_losses`], or `None` if `stop()` says to stop before they are done.
    pub fn estimate_losses_unless(
        &mut self,
        dataset: &Dataset,
        stop: &dyn Fn() -> bool,
    ) -> Option<(f32, f32)> {
        let train = self.estimate_loss_unless(&dataset.train, Split::Train, stop)?;
        let val = self.estimate_loss_unless(&dataset.val, Split::Val, stop)?;
        Some((train, val))
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
/// time on `engine` (the reference engine splits each batch over the threads).
pub fn evaluate_exact(model: &Model, data: &[TokenId], batch: usize, engine: Engine) -> ExactLoss {
    evaluate_exact_with_progress(model, data, batch, engine, &mut |_, _| {})
}

/// [`evaluate_exact`], calling `progress(windows done, windows)` after each batch of windows.
pub fn evaluate_exact_with_progress(
    model: &Model,
    data: &[TokenId],
    batch: usize,
    engine: Engine,
    progress: &mut dyn FnMut(usize, usize),
) -> ExactLoss {
    exact_loss(model, data, batch, engine, Group::SINGLE, progress, &|| {
        false
    })
    .expect("never stopped")
}

/// [`evaluate_exact_with_progress`] with each batch of windows split over the ranks of `group`
/// (a collective): every rank scores its consecutive share of the batch's windows, and the
/// per-token losses are gathered and added in window order, as one process adds them.
fn exact_loss(
    model: &Model,
    data: &[TokenId],
    batch: usize,
    engine: Engine,
    group: Group,
    progress: &mut dyn FnMut(usize, usize),
    stop: &dyn Fn() -> bool,
) -> Option<ExactLoss> {
    let t = model.config.block_size;
    let windows = window_count(data.len(), t);
    let batch = batch.max(1).min(windows.max(1));
    let ranks = group.size();
    // Rank r's windows of a batch of `rows`.
    let share = |rows: usize, r: usize| (r * rows / ranks)..((r + 1) * rows / ranks);
    let most = batch.div_ceil(ranks);
    let capacity = if engine == Engine::Fast { most } else { 0 };
    let mut acts = Activations::new(&model.config, capacity, t, false);
    let (mut inputs, mut targets) = (vec![0; most * t], vec![0; most * t]);
    let mut gathered = vec![0.0f32; if ranks > 1 { batch * t } else { 0 }];
    let mut total = 0.0f64;
    let mut first = 0;
    while first < windows {
        if stop() {
            return None;
        }
        let rows = batch.min(windows - first);
        let mine = share(rows, group.rank());
        let n = mine.len() * t;
        fill_windows(
            data,
            t,
            first + mine.start,
            mine.len(),
            &mut inputs,
            &mut targets,
        );
        let (inputs, targets) = (&inputs[..n], &targets[..n]);
        let reference_losses: Vec<f32>;
        let losses: &[f32] = match engine {
            _ if n == 0 => &[],
            Engine::Fast => {
                model.forward(&mut acts, inputs, Some(targets), mine.len(), t, None);
                acts.losses()
            }
            Engine::Reference => {
                let parts = shard_rows(mine.len(), rayon::current_num_threads());
                let losses: Vec<Vec<f32>> = parts
                    .par_iter()
                    .map(|r| {
                        let w = r.start * t..r.end * t;
                        let (x, y) = (&inputs[w.clone()], &targets[w]);
                        crate::reference::forward(model, x, Some(y), r.len(), t, None).losses
                    })
                    .collect();
                reference_losses = losses.concat();
                &reference_losses
            }
        };
        if ranks == 1 {
            total += losses.iter().map(|&l| l as f64).sum::<f64>();
        } else {
            let counts: Vec<i32> = (0..ranks)
                .map(|r| (share(rows, r).len() * t) as i32)
                .collect();
            let offsets: Vec<i32> = (0..ranks)
                .map(|r| (share(rows, r).start * t) as i32)
                .collect();
            let all = &mut gathered[..rows * t];
            group.all_gather_f32(losses, &counts, &offsets, all);
            total += all.iter().map(|&l| l as f64).sum::<f64>();
        }
        first += rows;
        progress(first, windows);
    }
    let tokens = windows * t;
    Some(ExactLoss {
        loss: if tokens == 0 {
            f64::NAN
        } else {
            total / tokens as f64
        },
        tokens,
        windows,
    })
}

/// One row of `metrics.csv`: the loss estimates at an evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricsRow {
    /// Steps completed.
    pub step: usize,
    pub train_loss: f32,
    pub val_loss: f32,
    /// The learning rate of the last step taken (of the first step at step 0).
    pub lr: f32,
    /// Training throughput since the previous evaluation (0 at step 0).
    pub tokens_per_s: f64,
    /// Wall-clock seconds since the run started, all sessions of a resumed run together.
    pub elapsed_s: f64,
}

pub const METRICS_FILE: &str = "metrics.csv";
/// Every training step's loss, one row per step: `step,loss,lr,grad_norm,elapsed_s`.
pub const STEPS_FILE: &str = "steps.csv";
const STEPS_HEADER: &str = "step,loss,lr,grad_norm,elapsed_s";

/// One row of `steps.csv`: what one training step measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepRow {
    /// Steps completed, this one included (1 for the first step).
    pub step: usize,
    /// The mean loss of the step's batch (in training mode: with dropout, before the update).
    pub loss: f32,
    pub lr: f32,
    /// The gradient's global norm before clipping.
    pub grad_norm: f32,
    /// Wall-clock seconds since the run started, all sessions together.
    pub elapsed_s: f64,
}

impl StepRow {
    /// Writes one CSV line without allocating (a step's record is written in the training loop).
    pub fn write_csv(&self, out: &mut impl Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{},{},{},{},{:.3}",
            self.step, self.loss, self.lr, self.grad_norm, self.elapsed_s
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.trim().split(',');
        let row = StepRow {
            step: it.next()?.parse().ok()?,
            loss: it.next()?.parse().ok()?,
            lr: it.next()?.parse().ok()?,
            grad_norm: it.next()?.parse().ok()?,
            elapsed_s: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(row)
    }
}

/// The rows of a `steps.csv` (the header and unreadable lines skipped; a missing file has none).
pub fn read_steps(path: &Path) -> Vec<StepRow> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(StepRow::parse).collect())
        .unwrap_or_default()
}
const METRICS_HEADER: &str = "step,train_loss,val_loss,lr,tokens_per_s,elapsed_s";

impl MetricsRow {
    /// One CSV line. Losses and the learning rate use Rust's shortest round-trip formatting, so
    /// a resumed run's rows compare bit for bit with a straight run's.
    pub fn to_csv(&self) -> String {
        format!(
            "{},{},{},{},{:.0},{:.3}",
            self.step, self.train_loss, self.val_loss, self.lr, self.tokens_per_s, self.elapsed_s
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut it = line.trim().split(',');
        let row = MetricsRow {
            step: it.next()?.parse().ok()?,
            train_loss: it.next()?.parse().ok()?,
            val_loss: it.next()?.parse().ok()?,
            lr: it.next()?.parse().ok()?,
            tokens_per_s: it.next()?.parse().ok()?,
            elapsed_s: it.next()?.parse().ok()?,
        };
        it.next().is_none().then_some(row)
    }
}

/// The rows of a `metrics.csv` (the header and any unreadable line are skipped; a missing file has
/// none).
pub fn read_metrics(path: &Path) -> Vec<MetricsRow> {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter_map(MetricsRow::parse).collect())
        .unwrap_or_default()
}

fn metrics_text(rows: &[MetricsRow]) -> String {
    let mut text = String::from(METRICS_HEADER);
    text.push('\n');
    for row in rows {
        text.push_str(&row.to_csv());
        text.push('\n');
    }
    text
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("the {what} became {value} in step {step}; training stopped, {kept} (try a lower learning_rate, or grad_clip=1.0)")]
    NonFinite {
        what: &'static str,
        value: f32,
        /// 1-based: the step that failed.
        step: usize,
        /// Where the last good checkpoint is, in words.
        kept: String,
    },
    #[error("the run in {dir} already finished its {steps} steps; continue it with --set steps=N (N > {steps})")]
    AlreadyFinished { dir: String, steps: usize },
    #[error("cannot write {path}: {source}; check that the directory is writable")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    OutOfMemory(#[from] OutOfMemory),
}

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
                // A new character starts at a chosen constant logit: that needs lm_head rows of
                // its own (zero) and a bias to hold the constant.
                let cfg = &model.config;
                if cfg.tie_embeddings || !cfg.bias {
                    return Err(ConfigError::Invalid(format!(
                        "--unknown-chars extend needs an lm_head with its own weights and a bias, and this model has {}; use --unknown-chars drop",
                        if cfg.tie_embeddings { "tie_embeddings=true" } else { "bias=false" }
                    ))
                    .into());
                }
                change.added = char_counts(text, &missing);
                tokenizer = tokenizer.extended(&missing).map_err(DataError::from)?;
                let dataset = Dataset::new(text, &tokenizer)?;
                dataset.check_block_size(model.config.block_size)?;
                let logits = new_character_logits(&model, &dataset, text, &change.added);
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
        let counters = state.counters;
        if model_step != counters.step || checkpoint.config.step != counters.step {
            return Err(CheckpointError::Torn {
                dir: dir.display().to_string(),
                model_step,
                optimizer_step: counters.step,
            }
            .into());
        }
        if counters.step >= train.steps {
            return Err(RunError::AlreadyFinished {
                dir: dir.display().to_string(),
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
        let mut metrics = read_metrics(&dir.join(METRICS_FILE));
        // Rows after the checkpoint belong to steps that will be run again.
        metrics.retain(|r| r.step <= counters.step);
        let mut step_rows = read_steps(&dir.join(STEPS_FILE));
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
        })
    }
}

/// How [`run_training`] runs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Checkpoint directory (model, config, optimizer, metrics.csv); None keeps the run in memory.
    pub out: Option<PathBuf>,
    /// Set from elsewhere (a Ctrl-C handler) to stop after the current step; the state is saved.
    pub stop: Option<Arc<AtomicBool>>,
    /// Stop, as if interrupted, once this many steps are done.
    pub stop_at: Option<usize>,
    /// Score the final model on the whole val split (`evaluate_exact`).
    pub exact_eval: bool,
    /// A probe text (at most `block_size` ids, e.g. [`crate::inspect::default_probe`]): at every
    /// evaluation, what the model does on it goes into `probes.jsonl` in `out`
    /// ([`crate::inspect::probe_record`]), so that the page can replay the run.
    pub probe: Option<Vec<TokenId>>,
}

/// What [`run_training`] reports as it goes.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// A step finished. `tokens_per_s` is the training throughput of this session so far,
    /// `eta_s` the time left to the end of the run: steps and evaluations, each at its own
    /// measured pace.
    Step {
        stats: StepStats,
        steps: usize,
        tokens_per_s: f64,
        eta_s: f64,
    },
    /// The loss estimates at an evaluation (`metrics` ends with `row`).
    Eval {
        row: MetricsRow,
        improved: bool,
        saved: bool,
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        metrics: &'a [MetricsRow],
        /// Every training step so far.
        steps: &'a [StepRow],
    },
    /// The final model's exact val loss is being computed (it takes a moment).
    ExactEval { windows: usize },
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    pub steps_done: usize,
    /// Stopped early (Ctrl-C or `stop_at`) rather than finished.
    pub interrupted: bool,
    pub best: Option<(f32, usize)>,
    pub final_val: Option<ExactLoss>,
    /// The step of the checkpoint on disk at the end.
    pub saved_step: Option<usize>,
    /// Seconds spent in training steps, this session.
    pub train_time_s: f64,
    pub tokens_per_s: f64,
    /// Wall-clock seconds, all sessions together.
    pub elapsed_s: f64,
}

/// Trains `run` to its configured number of steps: evaluates (`estimate_losses`) at step 0 of a
/// new run, every [`TrainConfig::eval_every`] steps and at the last step; records a metrics row
/// at each and a `steps.csv` row at every step; saves a checkpoint (atomically) when the val
/// estimate improves, at the end and when stopped; never saves non-finite parameters: a NaN or
/// infinite loss stops the run with an error naming the step and the checkpoint that is kept.
pub fn run_training(
    run: &mut Run,
    options: &RunOptions,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunOutcome, RunError> {
    let start = Instant::now();
    let steps = run.trainer.config.steps;
    let eval_interval = run.trainer.config.eval_every();
    let tokens_per_step =
        (run.trainer.config.batch_size * run.trainer.model.config.block_size) as f64;
    if run.trainer.step >= steps {
        return Err(RunError::AlreadyFinished {
            dir: options
                .out
                .as_ref()
                .map(|d| d.display().to_string())
                .unwrap_or_default(),
            steps,
        });
    }
    let metrics_path = options.out.as_ref().map(|d| d.join(METRICS_FILE));
    let mut steps_file = None;
    if let (Some(path), Some(dir)) = (&metrics_path, &options.out) {
        std::fs::create_dir_all(dir).map_err(|source| RunError::Write {
            path: dir.display().to_string(),
            source,
        })?;
        write_atomic(path, metrics_text(&run.metrics).as_bytes())?;
        // Rows after the checkpoint (a resumed run) belong to steps that run again.
        let steps_path = dir.join(STEPS_FILE);
        let mut text = String::from(STEPS_HEADER);
        text.push('\n');
        for row in &run.step_rows {
            let mut line = Vec::new();
            let _ = row.write_csv(&mut line);
            text.push_str(&String::from_utf8_lossy(&line));
        }
        write_atomic(&steps_path, text.as_bytes())?;
        steps_file = Some(StepsWriter::open(&steps_path)?);
        // Likewise the probe records: those of the evaluations `metrics` still holds.
        if options.probe.is_some() {
            crate::inspect::keep_probes_through(
                &dir.join(crate::inspect::PROBES_FILE),
                run.metrics.last().map(|m| m.step),
            )?;
        }
    }
    // The rows up to the next evaluation fit without growing the vector inside a step.
    let rows_ahead = |done: usize| eval_interval.min(steps.saturating_sub(done)) + 1;
    run.step_rows.reserve(rows_ahead(run.trainer.step));
    // Asked between steps and between the batches of an evaluation. Several ranks stop at the
    // same point, whichever of them was asked.
    let group = run.trainer.group();
    let stop_flag = options.stop.clone();
    let stop = move || {
        group.any(
            stop_flag
                .as_ref()
                .is_some_and(|s| s.load(Ordering::Relaxed)),
        )
    };
    let mut clock = Clock::default();
    let first_step = run.trainer.step;
    let mut interrupted = false;
    if first_step == 0 {
        let lr = learning_rate(&run.trainer.config, 0);
        let t0 = Instant::now();
        interrupted = !evaluate(
            run,
            options,
            metrics_path.as_deref(),
            lr,
            0.0,
            start,
            &stop,
            on_event,
        )?;
        clock.eval(t0.elapsed().as_secs_f64());
    }
    let exact_share = exact_eval_share(run);
    let mut window = (0usize, 0.0f64); // steps and seconds since the last evaluation
    while run.trainer.step < steps && !interrupted {
        if stop() || options.stop_at.is_some_and(|n| run.trainer.step >= n) {
            interrupted = true;
            break;
        }
        let t0 = Instant::now();
        let stats = run.trainer.train_step(&run.dataset.train).map_err(
            |TrainError::NonFiniteLoss { step, loss }| {
                non_finite(run, options, "loss", loss, step + 1)
            },
        )?;
        let dt = t0.elapsed().as_secs_f64();
        clock.step(dt);
        window.0 += 1;
        window.1 += dt;
        let done = run.trainer.step;
        let row = StepRow {
            step: done,
            loss: stats.loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
        };
        run.step_rows.push(row);
        if let Some(file) = &mut steps_file {
            file.write(&row)?;
        }
        let evals_left = evaluations_after(done, steps, eval_interval);
        debug_assert!(evals_left >= usize::from(done == steps));
        on_event(RunEvent::Step {
            stats,
            steps,
            tokens_per_s: clock.tokens_per_s(tokens_per_step),
            eta_s: clock.eta_s(
                steps - done,
                evals_left,
                options.exact_eval.then_some(exact_share),
            ),
        });
        if done.is_multiple_of(eval_interval) || done == steps {
            if let Some(file) = &mut steps_file {
                file.flush()?;
            }
            let rate = window.0 as f64 * tokens_per_step / window.1.max(1e-9);
            window = (0, 0.0);
            let t0 = Instant::now();
            interrupted = !evaluate(
                run,
                options,
                metrics_path.as_deref(),
                stats.lr,
                rate,
                start,
                &stop,
                on_event,
            )?;
            clock.eval(t0.elapsed().as_secs_f64());
            run.step_rows.reserve(rows_ahead(done));
        }
    }
    if let Some(file) = &mut steps_file {
        file.flush()?;
    }
    let mut final_val = None;
    if !interrupted && options.exact_eval {
        let windows = window_count(run.dataset.val.len(), run.trainer.model.config.block_size);
        on_event(RunEvent::ExactEval { windows });
        final_val = run.trainer.exact_loss_unless(&run.dataset.val, &stop);
        interrupted = final_val.is_none();
    }
    if options.out.is_some() {
        save(run, options, final_val.map(|e| e.loss), start)?;
    }
    Ok(RunOutcome {
        steps_done: run.trainer.step,
        interrupted,
        best: run.best,
        final_val,
        saved_step: run.saved_step,
        train_time_s: clock.train_s,
        tokens_per_s: clock.tokens_per_s(tokens_per_step),
        elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
    })
}

/// Evaluations still to come once `done` of `steps` steps are done (the one due at `done`
/// included): one every `interval` steps, and one at the last step.
fn evaluations_after(done: usize, steps: usize, interval: usize) -> usize {
    let regular = steps / interval - done.saturating_sub(1) / interval;
    regular + usize::from(!steps.is_multiple_of(interval))
}

/// The cost of the final exact evaluation in units of one loss estimate: both are forward passes
/// only, over `windows` sequences against `2 * eval_iters * batch_size`.
fn exact_eval_share(run: &Run) -> f64 {
    let t = run.trainer.model.config.block_size;
    let windows = window_count(run.dataset.val.len(), t) as f64;
    let estimate = 2.0 * (run.trainer.config.eval_iters * run.trainer.config.batch_size) as f64;
    windows / estimate.max(1.0)
}

/// This session's time in training steps and in evaluations, for the throughput and the ETA.
#[derive(Debug, Default)]
struct Clock {
    steps: usize,
    train_s: f64,
    /// The first step of a session is slow (threads and caches warm up); the pace leaves it out
    /// once there are others.
    first_step_s: f64,
    /// The recent time per step: the mean of the steps so far up to [`PACE_STEPS`] of them, then
    /// an exponential average over about that many, so the ETA follows a machine that speeds
    /// up or slows down (other work starting or stopping).
    pace_s: f64,
    evals: usize,
    eval_s: f64,
}

/// Steps the pace averages over.
const PACE_STEPS: usize = 50;

impl Clock {
    fn step(&mut self, seconds: f64) {
        self.steps += 1;
        self.train_s += seconds;
        match self.steps {
            1 => {
                self.first_step_s = seconds;
                self.pace_s = seconds;
            }
            // The first steady step replaces the warm-up one.
            2 => self.pace_s = seconds,
            n => {
                let weight = 1.0 / (n - 1).min(PACE_STEPS) as f64;
                self.pace_s += weight * (seconds - self.pace_s);
            }
        }
    }

    fn eval(&mut self, seconds: f64) {
        self.evals += 1;
        self.eval_s += seconds;
    }

    /// Seconds per training step, measured on training steps only.
    fn step_s(&self) -> f64 {
        self.pace_s
    }

    /// This session's training throughput: its steps (but the warm-up one) over their time.
    fn tokens_per_s(&self, tokens_per_step: f64) -> f64 {
        let (steps, seconds) = match self.steps {
            0 => return 0.0,
            1 => (1, self.first_step_s),
            n => (n - 1, self.train_s - self.first_step_s),
        };
        if seconds > 0.0 {
            steps as f64 * tokens_per_step / seconds
        } else {
            0.0
        }
    }

    /// The time left: the remaining steps at the recent pace, plus the remaining evaluations
    /// (and the final exact one, `exact` estimates long) at the measured evaluation time, when
    /// one has been measured.
    fn eta_s(&self, steps_left: usize, evals_left: usize, exact: Option<f64>) -> f64 {
        let per_eval = if self.evals > 0 {
            self.eval_s / self.evals as f64
        } else {
            0.0
        };
        steps_left as f64 * self.step_s() + (evals_left as f64 + exact.unwrap_or(0.0)) * per_eval
    }
}

/// `steps.csv`, appended to as the run goes: buffered, and flushed at each evaluation, at the end
/// and at least every two seconds, so a reader (a web page) sees recent steps.
struct StepsWriter {
    path: PathBuf,
    out: std::io::BufWriter<std::fs::File>,
    flushed: Instant,
}

impl StepsWriter {
    fn open(path: &Path) -> Result<Self, RunError> {
        let file = std::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(|source| RunError::Write {
                path: path.display().to_string(),
                source,
            })?;
        Ok(StepsWriter {
            path: path.to_path_buf(),
            out: std::io::BufWriter::with_capacity(1 << 16, file),
            flushed: Instant::now(),
        })
    }

    fn write(&mut self, row: &StepRow) -> Result<(), RunError> {
        row.write_csv(&mut self.out).map_err(|e| self.error(e))?;
        if self.flushed.elapsed().as_secs_f64() >= 2.0 {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), RunError> {
        self.flushed = Instant::now();
        self.out.flush().map_err(|e| self.error(e))
    }

    fn error(&self, source: std::io::Error) -> RunError {
        RunError::Write {
            path: self.path.display().to_string(),
            source,
        }
    }
}

/// The loss estimates at the current step: a metrics row, and a save if val improved (not at
/// step 0, and not at the last step, where the final save follows). `Ok(false)` if `stop` cut
/// the estimates short (nothing is recorded then).
#[allow(clippy::too_many_arguments)]
fn evaluate(
    run: &mut Run,
    options: &RunOptions,
    metrics_path: Option<&Path>,
    lr: f32,
    tokens_per_s: f64,
    start: Instant,
    stop: &dyn Fn() -> bool,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<bool, RunError> {
    let Some((train_loss, val_loss)) = run.trainer.estimate_losses_unless(&run.dataset, stop)
    else {
        return Ok(false);
    };
    let step = run.trainer.step;
    for loss in [train_loss, val_loss] {
        if !loss.is_finite() {
            return Err(non_finite(run, options, "loss estimate", loss, step));
        }
    }
    let row = MetricsRow {
        step,
        train_loss,
        val_loss,
        lr,
        tokens_per_s,
        elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
    };
    run.metrics.push(row);
    if let Some(path) = metrics_path {
        append_line(path, &row.to_csv())?;
    }
    if let (Some(dir), Some(probe)) = (&options.out, &options.probe) {
        if !probe.is_empty() {
            let record = crate::inspect::probe_record(
                &run.trainer.model,
                &run.tokenizer,
                probe,
                step,
                val_loss,
            );
            let path = dir.join(crate::inspect::PROBES_FILE);
            crate::inspect::append_probe(&path, &record).map_err(|source| RunError::Write {
                path: path.display().to_string(),
                source,
            })?;
        }
    }
    let improved = run.best.is_none_or(|(best, _)| val_loss < best);
    if improved {
        run.best = Some((val_loss, step));
    }
    let saved = improved && step > 0 && step < run.trainer.config.steps && options.out.is_some();
    if saved {
        save(run, options, None, start)?;
    }
    on_event(RunEvent::Eval {
        row,
        improved,
        saved,
        model: &run.trainer.model,
        tokenizer: &run.tokenizer,
        metrics: &run.metrics,
        steps: &run.step_rows,
    });
    Ok(true)
}

fn append_line(path: &Path, line: &str) -> Result<(), RunError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(file, "{line}")
    };
    write().map_err(|source| RunError::Write {
        path: path.display().to_string(),
        source,
    })
}

fn non_finite(
    run: &Run,
    options: &RunOptions,
    what: &'static str,
    value: f32,
    step: usize,
) -> RunError {
    let kept = match (&options.out, run.saved_step) {
        (Some(dir), Some(s)) => format!("the checkpoint of step {s} in {} is kept", dir.display()),
        (Some(_), None) => "nothing was saved yet".to_string(),
        (None, _) => "nothing is saved in memory-only runs".to_string(),
    };
    RunError::NonFinite {
        what,
        value,
        step,
        kept,
    }
}

/// Writes the checkpoint of the current step into `options.out`, refusing non-finite parameters
/// (the previous checkpoint stays).
fn save(
    run: &mut Run,
    options: &RunOptions,
    final_val_loss: Option<f64>,
    start: Instant,
) -> Result<(), RunError> {
    let Some(dir) = &options.out else {
        return Ok(());
    };
    let step = run.trainer.step;
    if let Some(bad) = run.trainer.model.params.iter().find(|p| !p.is_finite()) {
        return Err(non_finite(run, options, "parameters", *bad, step));
    }
    let model = &run.trainer.model;
    let mut config = CheckpointConfig::new(&model.config, &run.tokenizer, &run.trainer.config);
    config.step = step;
    config.best_val_loss = run.best.map(|b| b.0);
    config.best_val_step = run.best.map(|b| b.1);
    config.final_val_loss = final_val_loss;
    config.data = Some(run.data.clone());
    config.preset = run.preset.clone();
    config.init_from = run.init_from.clone();
    let counters = RunCounters {
        step,
        data_rng_state: run.trainer.data_rng.state(),
        best_val_loss: config.best_val_loss,
        best_val_step: config.best_val_step,
        elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
    };
    save_checkpoint(dir, model, &config, &run.trainer.optimizer, &counters)?;
    run.saved_step = Some(step);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    #[test]
    fn evaluations_left_count_the_regular_ones_and_the_last() {
        // 200 steps, every 50: evaluations at 50, 100, 150, 200.
        assert_eq!(evaluations_after(1, 200, 50), 4);
        assert_eq!(evaluations_after(50, 200, 50), 4);
        assert_eq!(evaluations_after(51, 200, 50), 3);
        assert_eq!(evaluations_after(200, 200, 50), 1);
        // 210 steps: 50, 100, 150, 200 and the last, 210.
        assert_eq!(evaluations_after(201, 210, 50), 1);
        assert_eq!(evaluations_after(1, 210, 50), 5);
    }

    #[test]
    fn the_eta_counts_training_steps_and_evaluations_each_at_its_own_pace() {
        let mut clock = Clock::default();
        // The step-0 evaluation, a slow first step, then steady steps.
        clock.eval(3.0);
        clock.step(1.0);
        assert_eq!(clock.step_s(), 1.0);
        clock.step(0.1);
        clock.step(0.1);
        assert!(
            (clock.step_s() - 0.1).abs() < 1e-12,
            "the warm-up step is left out"
        );
        // 100 steps and 2 evaluations to go, and an exact evaluation as long as 5 estimates.
        let eta = clock.eta_s(100, 2, Some(5.0));
        assert!((eta - (10.0 + 7.0 * 3.0)).abs() < 1e-9, "{eta}");
        assert!((clock.tokens_per_s(1000.0) - 10_000.0).abs() < 1e-6);
        // The machine slows down to 0.3 s a step: within about 50 steps the pace follows.
        for _ in 0..150 {
            clock.step(0.3);
        }
        assert!((clock.step_s() - 0.3).abs() < 0.01, "{}", clock.step_s());
    }

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
