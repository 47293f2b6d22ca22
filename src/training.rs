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

use crate::config::{OptimizerKind, Precision, TrainConfig};
use crate::data::{fill_windows, sample_batch, window_count, Dataset, Split};
use crate::distributed::{DistributedError, Group};
use crate::engine::Engine;
use crate::kernels::sequentially;
use crate::memory::{zeroed, OutOfMemory};
use crate::model::{Activations, Model};
use crate::optimizer::{add_assign, clip_scale, learning_rate, sum_squares, AdamW};
use crate::rng::{DropoutSeed, Rng};
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

/// The rows a shard's fast-engine buffers hold: the reference engine allocates per pass, so its
/// shards need none.
fn rows_held(engine: Engine, rows: usize) -> usize {
    if engine == Engine::Fast {
        rows
    } else {
        0
    }
}

/// The fast engine's buffers and a gradient buffer (but for the first) for each shard's rows.
fn build_shards(
    model: &Model,
    engine: Engine,
    rows: &[Range<usize>],
) -> Result<Vec<Shard>, OutOfMemory> {
    let t = model.config.block_size;
    rows.iter()
        .enumerate()
        .map(|(i, rows)| {
            Ok(Shard {
                acts: Activations::try_new(&model.config, rows_held(engine, rows.len()), t, true)?,
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

/// The forward pass of shard `s`'s rows of the batch (B, T) `inputs`, `targets`, and with
/// `backward` its gradient, scaled by its share of the batch, into its buffer.
#[allow(clippy::too_many_arguments)]
fn shard_pass(
    model: &Model,
    engine: Engine,
    s: &mut Shard,
    inputs: &[TokenId],
    targets: &[TokenId],
    dropout_seed: Option<u64>,
    t: usize,
    batch: usize,
    backward: bool,
) {
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
                model.weights(),
                inputs,
                Some(targets),
                s.rows.len(),
                t,
                seed,
            );
            s.loss = pass.loss.expect("targets given");
            if backward {
                crate::reference::backward(model.weights(), &pass, &mut s.grads, share);
            }
        }
    }
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

    /// This trainer with each batch split into `shards` parts instead (the page in a browser
    /// tab: one shard per worker), its parameters, moments, batch stream and step kept.
    pub fn with_shard_count(self, shards: usize) -> Result<Self, OutOfMemory> {
        let Trainer {
            model,
            config,
            optimizer,
            data_rng,
            step,
            engine,
            ..
        } = self;
        let mut trainer = Self::try_with_shards_on(model, config, shards, engine)?;
        trainer.optimizer = optimizer;
        trainer.data_rng = data_rng;
        trainer.step = step;
        Ok(trainer)
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
        self.engine = engine;
        self.remake_buffers().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Every shard's fast-engine buffers again, for the model's config and engine as they are
    /// now (between steps: the engine or the dropout changed).
    fn remake_buffers(&mut self) -> Result<(), OutOfMemory> {
        let t = self.model.config.block_size;
        for s in &mut self.shards {
            let rows = rows_held(self.engine, s.rows.len());
            s.acts = Activations::try_new(&self.model.config, rows, t, true)?;
        }
        Ok(())
    }

    /// Trains the following steps with dropout `p` (a time budget that buys many passes over the
    /// text turns it on: [`crate::config::TrainConfig::budget_dropout`]). Between steps: the
    /// fast engine's buffers are made again, with the dropout masks.
    pub fn set_dropout(&mut self, p: f32) -> Result<(), OutOfMemory> {
        self.model.config.dropout = p;
        self.remake_buffers()
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
            shard_pass(
                model,
                engine,
                s,
                inputs,
                targets,
                dropout_seed,
                t,
                batch,
                backward,
            )
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
            self.sum_shards();
        }
        self.batch_loss()
    }

    /// The shards' gradients summed into shard 0's in one pass over memory, with the squares of
    /// the sum (for the clipping norm) taken while it is in registers; during a pass shard 0's
    /// gradient is the trainer's `grads`, lent to the shard, and this gives it back.
    fn sum_shards(&mut self) {
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

    /// The batch's mean loss: the rows-weighted mean of the shard means, in shard order (with
    /// several ranks, gathered from all of them).
    fn batch_loss(&mut self) -> f32 {
        let batch = self.batch_shards.last().map_or(0, |r| r.end);
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

    // ---- A step whose shards run elsewhere: the page's Web Workers, one shard each ----
    //
    // Every worker of a run holds a trainer with the same shards and the same state. Each draws
    // the step's batch, runs its own shard's pass ([`Trainer::shard_pass`]) and sends the
    // gradient to the first, which takes the others' ([`Trainer::set_shard`]) and ends the step
    // ([`Trainer::finish_step`]): the sum in shard order, the norm, clipping and the optimizer,
    // exactly as one trainer with these shards on one thread; the others apply the same sum
    // ([`Trainer::apply_sum`]), so every replica takes the same step, bit for bit.

    /// Draws the batch of the next step (every worker draws the same, from the same generator).
    pub fn draw_batch(&mut self, data: &[TokenId]) {
        let t = self.model.config.block_size;
        sample_batch(
            data,
            t,
            &mut self.data_rng,
            &mut self.inputs,
            &mut self.targets,
        );
    }

    /// The forward and backward pass of shard `k` of the drawn batch alone, on this thread, into
    /// that shard's gradient; returns its mean loss.
    pub fn shard_pass(&mut self, k: usize) -> f32 {
        let (t, step) = (self.model.config.block_size, self.step);
        let batch = self.batch_shards.last().map_or(0, |r| r.end);
        let seed = crate::rng::mix(self.config.seed ^ crate::rng::mix(step as u64 + 1));
        if k == 0 {
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        }
        let (model, engine) = (&self.model, self.engine);
        let (inputs, targets) = (&self.inputs, &self.targets);
        let shard = &mut self.shards[k];
        sequentially(|| {
            shard_pass(
                model,
                engine,
                shard,
                inputs,
                targets,
                Some(seed),
                t,
                batch,
                true,
            )
        });
        if k == 0 {
            std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        }
        self.shards[k].loss
    }

    /// Shard `k`'s gradient, as [`Trainer::shard_pass`] left it.
    pub fn shard_gradient(&self, k: usize) -> &[f32] {
        if k == 0 {
            &self.grads
        } else {
            &self.shards[k].grads
        }
    }

    /// Shard `k`'s gradient and mean loss, computed by another worker.
    pub fn set_shard(&mut self, k: usize, grads: &[f32], loss: f32) {
        let buffer = if k == 0 {
            &mut self.grads
        } else {
            &mut self.shards[k].grads
        };
        buffer.copy_from_slice(grads);
        self.shards[k].loss = loss;
    }

    /// Ends the step once every shard's gradient is in (see above); `gradient` then holds the
    /// sum the other workers apply, and the stats' loss is the batch's.
    pub fn finish_step(&mut self) -> Result<StepStats, TrainError> {
        std::mem::swap(&mut self.grads, &mut self.shards[0].grads);
        self.sum_shards();
        let loss = self.batch_loss();
        self.update(loss)
    }

    /// The step [`Trainer::finish_step`] took elsewhere: its summed gradient and the batch's
    /// loss, applied here the same way.
    pub fn apply_sum(&mut self, sum: &[f32], loss: f32) -> Result<StepStats, TrainError> {
        self.grads.copy_from_slice(sum);
        for (g, squares) in self.grads.chunks(GRAD_CHUNK).zip(&mut self.chunk_squares) {
            *squares = sum_squares(g);
        }
        self.update(loss)
    }

    /// The gradient of the last step (the batch's, after [`Trainer::finish_step`]).
    pub fn gradient(&self) -> &[f32] {
        &self.grads
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
        self.update(loss)
    }

    /// The rest of a step once `grads` holds the batch's gradient and `chunk_squares` its
    /// squares: the norm, the learning rate, clipping, the optimizer; `loss` is the batch's.
    fn update(&mut self, loss: f32) -> Result<StepStats, TrainError> {
        let step = self.step;
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
        if self.engine == Engine::Reference && self.config.optimizer == OptimizerKind::Adamw {
            // The reference engine's AdamW in plain loops. (Muon's Newton-Schulz in plain loops
            // would take seconds a matrix: both engines run the fast one, which is tested
            // against `reference::optimizer::muon_matrix`.)
            self.optimizer.step += 1;
            crate::reference::optimizer::adamw(
                &mut self.model.params,
                &self.grads,
                &mut self.optimizer.m,
                &mut self.optimizer.v,
                self.optimizer.step,
                &self.model.layout,
                &self.config,
                lr,
                scale,
            );
        } else {
            self.optimizer.update(
                &mut self.model.params,
                &self.grads,
                &self.model.layout,
                &self.config,
                lr,
                scale,
                bf16,
            );
        }
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
                        crate::reference::forward(model.weights(), x, Some(y), r.len(), t, None)
                            .losses
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::preset;

    /// Three replicas each running one shard (the page's workers) take the same steps, bit for
    /// bit, as one trainer running the three shards itself: every loss, every parameter.
    #[test]
    fn shards_run_elsewhere_take_the_same_steps_bit_for_bit() {
        let test = || {
            let mut model_cfg = preset("layernorm").unwrap().model;
            model_cfg.vocab_size = 20;
            model_cfg.dropout = 0.1;
            let mut cfg = preset("layernorm").unwrap().train;
            cfg.batch_size = 6;
            let data: Vec<TokenId> = (0..2000)
                .map(|i| ((i * 7 + i / 13) % 20) as TokenId)
                .collect();
            let n = 3;
            let make = || Trainer::with_shards(Model::new(model_cfg.clone(), 3), cfg.clone(), n);
            let mut one = make();
            let mut workers: Vec<Trainer> = (0..n).map(|_| make()).collect();
            for _ in 0..4 {
                let want = one.train_step(&data).unwrap();
                let mut losses = Vec::new();
                let mut grads = Vec::new();
                for (k, w) in workers.iter_mut().enumerate() {
                    w.draw_batch(&data);
                    losses.push(w.shard_pass(k));
                    grads.push(w.shard_gradient(k).to_vec());
                }
                let (leader, others) = workers.split_first_mut().unwrap();
                for k in 1..n {
                    leader.set_shard(k, &grads[k], losses[k]);
                }
                let got = leader.finish_step().unwrap();
                assert_eq!(got, want);
                let sum = leader.gradient().to_vec();
                for w in others.iter_mut() {
                    assert_eq!(w.apply_sum(&sum, got.loss).unwrap(), want);
                }
                for w in &workers {
                    assert!(w.model.params == one.model.params, "parameters differ");
                }
            }
        };
        // One thread, as each of the tab's workers has (WebAssembly here has no others).
        #[cfg(target_arch = "wasm32")]
        test();
        #[cfg(not(target_arch = "wasm32"))]
        crate::runtime::thread_pool(Some(1)).unwrap().install(test);
    }
}
