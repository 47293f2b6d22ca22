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
//! Loss is measured two ways:
//! - [`Trainer::estimate_loss`]: the lecture's `estimate_loss`, the mean loss over `eval_iters`
//!   random batches of a split, without dropout. Cheap and noisy; used during training.
//! - [`evaluate_exact`]: the mean loss over every target of a split, cut into consecutive
//!   non-overlapping windows of `block_size`. Deterministic; used to report results.

use crate::checkpoint::{
    save_checkpoint, write_atomic, Checkpoint, CheckpointConfig, CheckpointError, DataInfo,
    RunCounters,
};
use crate::config::{ConfigError, ModelConfig, TrainConfig};
use crate::data::{
    fill_windows, fingerprint, sample_batch, window_count, DataError, Dataset, Split,
};
use crate::engine::Engine;
use crate::kernels::sequentially;
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
        // A step of a few million flops is over before a second thread would wake up.
        let worth = (model.flops_per_step(config.batch_size) / 20e6) as usize;
        let shards = rayon::current_num_threads().min(worth.max(1));
        Self::with_shards_on(model, config, shards, engine)
    }

    /// A trainer that splits each batch into `shards` parts (at most one per sequence), run in
    /// parallel on the current rayon pool.
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
        let n = model.num_params();
        let (b, t) = (config.batch_size, model.config.block_size);
        // The reference engine allocates per pass; its shards need no fast buffers.
        let rows_held = |rows: usize| if engine == Engine::Fast { rows } else { 0 };
        let shards = shard_rows(b, shards)
            .into_iter()
            .enumerate()
            .map(|(i, rows)| Shard {
                acts: Activations::new(&model.config, rows_held(rows.len()), t, true),
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
            engine,
            shards,
            inputs: vec![0; b * t],
            targets: vec![0; b * t],
            chunk_squares: vec![0.0; n.div_ceil(GRAD_CHUNK)],
            config,
        }
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
        let batch = self.shards.last().map_or(0, |s| s.rows.end);
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
        if self.shards.len() == 1 {
            one(&mut self.shards[0]);
        } else {
            self.shards
                .par_iter_mut()
                .with_max_len(1)
                .for_each(|s| sequentially(|| one(s)));
        }
        if backward {
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
        let norm = self.chunk_squares.iter().sum::<f64>().sqrt() as f32;
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
/// time on `engine` (the reference engine splits each batch over the threads).
pub fn evaluate_exact(model: &Model, data: &[TokenId], batch: usize, engine: Engine) -> ExactLoss {
    let t = model.config.block_size;
    let windows = window_count(data.len(), t);
    let batch = batch.max(1).min(windows.max(1));
    let capacity = if engine == Engine::Fast { batch } else { 0 };
    let mut acts = Activations::new(&model.config, capacity, t, false);
    let (mut inputs, mut targets) = (vec![0; batch * t], vec![0; batch * t]);
    let mut total = 0.0f64;
    let mut first = 0;
    while first < windows {
        let rows = batch.min(windows - first);
        fill_windows(data, t, first, rows, &mut inputs, &mut targets);
        let n = rows * t;
        let (inputs, targets) = (&inputs[..n], &targets[..n]);
        match engine {
            Engine::Fast => {
                model.forward(&mut acts, inputs, Some(targets), rows, t, None);
                total += acts.losses().iter().map(|&l| l as f64).sum::<f64>();
            }
            Engine::Reference => {
                let parts = shard_rows(rows, rayon::current_num_threads());
                let losses: Vec<Vec<f32>> = parts
                    .par_iter()
                    .map(|r| {
                        let w = r.start * t..r.end * t;
                        let (x, y) = (&inputs[w.clone()], &targets[w]);
                        crate::reference::forward(model, x, Some(y), r.len(), t, None).losses
                    })
                    .collect();
                total += losses.iter().flatten().map(|&l| l as f64).sum::<f64>();
            }
        }
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

/// One row of `metrics.csv`: the loss estimates at an evaluation.
#[derive(Debug, Clone, Copy, PartialEq)]
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
    /// The best val loss estimate and its step.
    pub best: Option<(f32, usize)>,
    /// Wall-clock seconds of the run's earlier sessions (a resumed run).
    pub elapsed_before_s: f64,
    pub metrics: Vec<MetricsRow>,
    /// The step of the checkpoint on disk, if any.
    pub saved_step: Option<usize>,
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
        Ok(Run::fresh(
            Model::new(model, seed),
            tokenizer,
            dataset,
            train,
            data,
        ))
    }

    /// Fine-tuning: a trained model's parameters and vocabulary, a fresh optimizer, `text`
    /// encoded with the model's vocabulary (characters outside it are an error that lists them).
    pub fn fine_tune(
        checkpoint: Checkpoint,
        train: TrainConfig,
        text: &str,
        data: DataInfo,
    ) -> Result<Self, RunError> {
        checkpoint.model.config.validate()?;
        train.validate()?;
        let dataset = Dataset::with_vocabulary(text, &checkpoint.tokenizer, &data.source)?;
        dataset.check_block_size(checkpoint.model.config.block_size)?;
        Ok(Run::fresh(
            checkpoint.model,
            checkpoint.tokenizer,
            dataset,
            train,
            data,
        ))
    }

    fn fresh(
        model: Model,
        tokenizer: Tokenizer,
        dataset: Dataset,
        train: TrainConfig,
        data: DataInfo,
    ) -> Self {
        Run {
            trainer: Trainer::new(model, train),
            tokenizer,
            dataset,
            data,
            preset: None,
            best: None,
            elapsed_before_s: 0.0,
            metrics: Vec::new(),
            saved_step: None,
        }
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
        let dataset = Dataset::with_vocabulary(text, &checkpoint.tokenizer, &data.source)?;
        dataset.check_block_size(checkpoint.model.config.block_size)?;
        let mut trainer = Trainer::new(checkpoint.model, train);
        trainer.optimizer = state.adamw;
        trainer.data_rng = Rng::from_state(counters.data_rng_state);
        trainer.step = counters.step;
        let mut metrics = read_metrics(&dir.join(METRICS_FILE));
        // Rows after the checkpoint belong to steps that will be run again.
        metrics.retain(|r| r.step <= counters.step);
        Ok(Run {
            trainer,
            tokenizer: checkpoint.tokenizer,
            dataset,
            data,
            preset: checkpoint.config.preset,
            best: counters.best_val_loss.zip(counters.best_val_step),
            elapsed_before_s: counters.elapsed_s,
            metrics,
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
}

/// What [`run_training`] reports as it goes.
#[derive(Debug)]
pub enum RunEvent<'a> {
    /// A step finished. `tokens_per_s` is the training throughput of this session so far.
    Step {
        stats: StepStats,
        steps: usize,
        tokens_per_s: f64,
    },
    /// The loss estimates at an evaluation (`metrics` ends with `row`).
    Eval {
        row: MetricsRow,
        improved: bool,
        saved: bool,
        model: &'a Model,
        tokenizer: &'a Tokenizer,
        metrics: &'a [MetricsRow],
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
/// new run, every `eval_interval` steps and at the last step; records a metrics row at each;
/// saves a checkpoint (atomically) when the val estimate improves, at the end and when stopped;
/// never saves non-finite parameters: a NaN or infinite loss stops the run with an error naming
/// the step and the checkpoint that is kept.
pub fn run_training(
    run: &mut Run,
    options: &RunOptions,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<RunOutcome, RunError> {
    let start = Instant::now();
    let steps = run.trainer.config.steps;
    let eval_interval = run.trainer.config.eval_interval;
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
    if let Some(path) = &metrics_path {
        if let Some(dir) = &options.out {
            std::fs::create_dir_all(dir).map_err(|source| RunError::Write {
                path: dir.display().to_string(),
                source,
            })?;
        }
        write_atomic(path, metrics_text(&run.metrics).as_bytes())?;
    }
    let mut train_time = 0.0f64;
    let mut window = (0usize, 0.0f64); // steps and seconds since the last evaluation
    let session_rate = |train_time: f64, done: usize| {
        if train_time > 0.0 {
            done as f64 * tokens_per_step / train_time
        } else {
            0.0
        }
    };
    let first_step = run.trainer.step;
    if first_step == 0 {
        let lr = learning_rate(&run.trainer.config, 0);
        evaluate(
            run,
            options,
            metrics_path.as_deref(),
            lr,
            0.0,
            start,
            on_event,
        )?;
    }
    let mut interrupted = false;
    while run.trainer.step < steps {
        let stop_requested = options
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed));
        if stop_requested || options.stop_at.is_some_and(|n| run.trainer.step >= n) {
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
        train_time += dt;
        window.0 += 1;
        window.1 += dt;
        on_event(RunEvent::Step {
            stats,
            steps,
            tokens_per_s: session_rate(train_time, run.trainer.step - first_step),
        });
        let done = run.trainer.step;
        if done.is_multiple_of(eval_interval) || done == steps {
            let rate = window.0 as f64 * tokens_per_step / window.1.max(1e-9);
            window = (0, 0.0);
            evaluate(
                run,
                options,
                metrics_path.as_deref(),
                stats.lr,
                rate,
                start,
                on_event,
            )?;
        }
    }
    let mut final_val = None;
    if !interrupted && options.exact_eval {
        let windows = window_count(run.dataset.val.len(), run.trainer.model.config.block_size);
        on_event(RunEvent::ExactEval { windows });
        final_val = Some(evaluate_exact(
            &run.trainer.model,
            &run.dataset.val,
            run.trainer.config.batch_size,
            run.trainer.engine(),
        ));
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
        train_time_s: train_time,
        tokens_per_s: session_rate(train_time, run.trainer.step - first_step),
        elapsed_s: run.elapsed_before_s + start.elapsed().as_secs_f64(),
    })
}

/// The loss estimates at the current step: a metrics row, and a save if val improved (not at
/// step 0, and not at the last step, where the final save follows).
fn evaluate(
    run: &mut Run,
    options: &RunOptions,
    metrics_path: Option<&Path>,
    lr: f32,
    tokens_per_s: f64,
    start: Instant,
    on_event: &mut dyn FnMut(RunEvent<'_>),
) -> Result<(), RunError> {
    let (train_loss, val_loss) = run.trainer.estimate_losses(&run.dataset);
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
    });
    Ok(())
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
