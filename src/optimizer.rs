//! AdamW, the learning-rate schedule, and global-norm gradient clipping.
//!
//! AdamW (Loshchilov and Hutter), written as PyTorch computes it, for step t = 1, 2, ...:
//! ```text
//! p  <- p * (1 - lr * wd)                       decoupled weight decay
//! m  <- m + (1 - beta1) * (g - m)               first moment (running mean of g)
//! v  <- beta2 * v + (1 - beta2) * g^2           second moment (running mean of g^2)
//! p  <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//! The moments share the parameters' flat layout, so the whole update is one fused loop over the
//! buffer; the only per-tensor choice is whether weight decay applies (all tensors, or matrices).
//!
//! Muon (`optimizer = muon`; Keller Jordan's, from the modded-nanogpt speedrun) replaces AdamW on
//! the blocks' 2-D weights W (rows x cols). Per step, with momentum mu and the gradient g:
//! ```text
//! m  <- mu m + g                                  momentum (kept in AdamW's `m` slot)
//! u  <- g + mu m                                  Nesterov
//! X  <- u / (||u||_F + 1e-7), transposed if rows > cols (so X is a x b with a <= b)
//! 5 times: A = X X^T;  X <- 3.4445 X + (-4.7750 A + 2.0315 A A) X
//! W  <- W (1 - lr_mu wd_mu) - lr_mu max(1, rows/cols)^0.5 X (transposed back)
//! ```
//! The Newton-Schulz iteration drives every singular value of X towards 1 (to about 0.7-1.2 in
//! 5 steps) while keeping its singular vectors: the update is the gradient's "direction" with
//! every direction given the same step, so the small singular directions that AdamW would barely
//! move learn as fast as the large ones. `lr_mu` follows the schedule: `muon_lr * lr / learning_rate`.
//! Embeddings, `lm_head`, gains and biases stay on AdamW. The products go through `gemm`, or
//! under `precision = bf16` through the bf16 kernels (bf16 operands, fp32 sums, as the speedrun
//! runs this iteration in bf16), one matrix per thread, in per-thread scratch that grows in the
//! first step (no allocation after).

use crate::config::{DecayOn, LrSchedule, OptimizerKind, TrainConfig};
use crate::kernels::SharedMut;
use crate::memory::{zeroed, OutOfMemory};
use crate::model::ParamLayout;
use rayon::prelude::*;
use std::cell::RefCell;

/// The optimizer's state: both moments and the number of steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub m: Vec<f32>,
    pub v: Vec<f32>,
    pub step: u64,
}

const CHUNK: usize = 1 << 14;

impl AdamW {
    pub fn new(num_params: usize) -> Self {
        Self::try_new(num_params).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`AdamW::new`], or [`OutOfMemory`] if the system refuses the moments' buffers.
    pub fn try_new(num_params: usize) -> Result<Self, OutOfMemory> {
        Ok(AdamW {
            m: zeroed(num_params, "the optimizer's first moments")?,
            v: zeroed(num_params, "the optimizer's second moments")?,
            step: 0,
        })
    }

    /// One update of `params` from `grads` (multiplied by `grad_scale`, the clipping factor) at
    /// learning rate `lr`; Muon's products in bf16 where `bf16_products` (the model's are).
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        params: &mut [f32],
        grads: &[f32],
        layout: &ParamLayout,
        cfg: &TrainConfig,
        lr: f32,
        grad_scale: f32,
        bf16_products: bool,
    ) {
        let _timer = crate::profile::scope(crate::profile::Kernel::Optimizer, false);
        assert!(params.len() == grads.len() && params.len() == self.m.len());
        self.step += 1;
        let t = self.step as i32;
        let bias1 = 1.0 - (cfg.beta1 as f64).powi(t);
        let bias2 = 1.0 - (cfg.beta2 as f64).powi(t);
        let hyper = Hyper {
            step_size: (lr as f64 / bias1) as f32,
            bias2_sqrt: bias2.sqrt() as f32,
            beta1: cfg.beta1,
            beta2: cfg.beta2,
            eps: cfg.eps,
            grad_scale,
        };
        let decay_factor = 1.0 - lr * cfg.weight_decay;
        let specs = &layout.specs;
        let muon = cfg.optimizer == OptimizerKind::Muon;
        // One pass over the flat buffer in fixed chunks; each chunk walks the tensors it overlaps
        // to know whether weight decay applies to them.
        let update_chunk = |(i, ((p, g), (m, v))): ChunkRefs| {
            let (c0, c1) = (i * CHUNK, i * CHUNK + p.len());
            let first = specs.partition_point(|s| s.offset + s.len() <= c0);
            for spec in specs[first..].iter().take_while(|s| s.offset < c1) {
                if muon && spec.is_hidden_matrix() {
                    continue;
                }
                let lo = spec.offset.max(c0) - c0;
                let hi = (spec.offset + spec.len()).min(c1) - c0;
                let decay = match cfg.decay_on {
                    DecayOn::All => true,
                    DecayOn::Matrices => spec.is_matrix(),
                };
                let keep = if decay { decay_factor } else { 1.0 };
                let (p, g, m, v) = (&mut p[lo..hi], &g[lo..hi], &mut m[lo..hi], &mut v[lo..hi]);
                adamw_chunk(p, g, m, v, keep, hyper);
            }
        };
        if params.len() < PARALLEL_PARAMS {
            // Memory-bound and over in a few tens of microseconds: another thread would spend
            // longer waking up than it saves.
            let m_v = self.m.chunks_mut(CHUNK).zip(self.v.chunks_mut(CHUNK));
            params
                .chunks_mut(CHUNK)
                .zip(grads.chunks(CHUNK))
                .zip(m_v)
                .enumerate()
                .for_each(update_chunk);
        } else {
            let m_v = self
                .m
                .par_chunks_mut(CHUNK)
                .zip(self.v.par_chunks_mut(CHUNK));
            params
                .par_chunks_mut(CHUNK)
                .zip(grads.par_chunks(CHUNK))
                .zip(m_v)
                .enumerate()
                .for_each(update_chunk);
        }
        if muon {
            let muon_lr = cfg.muon_lr * lr / cfg.learning_rate;
            let step = MuonStep {
                lr: muon_lr,
                momentum: cfg.muon_momentum,
                keep: 1.0 - muon_lr * cfg.muon_weight_decay,
                grad_scale,
                bf16: bf16_products,
            };
            muon_update(params, grads, &mut self.m, layout, step);
        }
    }
}

/// The per-step constants of a Muon update.
#[derive(Debug, Clone, Copy)]
pub struct MuonStep {
    /// This step's Muon learning rate.
    pub lr: f32,
    pub momentum: f32,
    /// `1 - lr * muon_weight_decay`.
    pub keep: f32,
    /// The clipping factor on the gradient.
    pub grad_scale: f32,
    /// Newton-Schulz's products in bf16 (as the linear layers', under `precision = bf16`).
    pub bf16: bool,
}

pub use crate::config::{NS_COEFFICIENTS, NS_STEPS};

thread_local! {
    /// Per-thread scratch of the Newton-Schulz iteration: X and the next X (a x b each), A and
    /// B (a x a each). Grows to the largest matrix the thread has seen.
    static NEWTON_SCHULZ: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Muon on every hidden matrix of `layout` (see the module documentation), the momentum in
/// `momentum` (the parameters' layout). One matrix per task.
pub fn muon_update(
    params: &mut [f32],
    grads: &[f32],
    momentum: &mut [f32],
    layout: &ParamLayout,
    step: MuonStep,
) {
    assert!(
        params.len() == layout.len && momentum.len() == layout.len && grads.len() == layout.len
    );
    let hidden = layout.specs.iter().filter(|s| s.is_hidden_matrix());
    let tasks = hidden.clone().count();
    let (p_all, m_all) = (
        SharedMut(params.as_mut_ptr()),
        SharedMut(momentum.as_mut_ptr()),
    );
    let run = |i: usize| {
        let spec = hidden.clone().nth(i).expect("counted above");
        // SAFETY: the tensors of a layout are disjoint ranges inside the buffers (length checked
        // above), and each task takes one tensor.
        let (p, m) = unsafe {
            (
                std::slice::from_raw_parts_mut(p_all.get().add(spec.offset), spec.len()),
                std::slice::from_raw_parts_mut(m_all.get().add(spec.offset), spec.len()),
            )
        };
        muon_matrix(
            p,
            m,
            &grads[spec.range()],
            spec.shape[0],
            spec.shape[1],
            step,
        );
    };
    if rayon::current_num_threads() == 1 || crate::kernels::is_sequential() {
        (0..tasks).for_each(run);
    } else {
        (0..tasks).into_par_iter().with_max_len(1).for_each(run);
    }
}

/// One matrix `p` (rows x cols) with its momentum `m` and gradient `g`. The scratch holds the
/// update in `p`'s own row-major layout whichever way round X is; the products read it through
/// strides (fp32) or as the operand kind that fits (bf16), so nothing is transposed.
fn muon_matrix(p: &mut [f32], m: &mut [f32], g: &[f32], rows: usize, cols: usize, s: MuonStep) {
    let _timer = crate::profile::scope(crate::profile::Kernel::Optimizer, false);
    let (a, b) = (rows.min(cols), rows.max(cols));
    let transposed = rows > cols;
    NEWTON_SCHULZ.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let need = 2 * a * b + 2 * a * a;
        if scratch.len() < need {
            scratch.resize(need, 0.0);
        }
        let (x, rest) = scratch.split_at_mut(a * b);
        let (y, rest) = rest.split_at_mut(a * b);
        let (gram, rest) = rest.split_at_mut(a * a);
        let poly = &mut rest[..a * a];
        // Momentum, and the Nesterov update into the scratch.
        let mu = s.momentum;
        for ((xv, mv), &gv) in x.iter_mut().zip(m.iter_mut()).zip(g) {
            let grad = gv * s.grad_scale;
            *mv = mu * *mv + grad;
            *xv = grad + mu * *mv;
        }
        match s.bf16 {
            true => newton_schulz_bf16(x, y, gram, poly, a, transposed),
            false => newton_schulz(x, y, gram, poly, a, b, transposed),
        }
        let scale = s.lr * (rows as f32 / cols as f32).max(1.0).sqrt();
        for (pv, &xv) in p.iter_mut().zip(x.iter()) {
            *pv = *pv * s.keep - scale * xv;
        }
    });
}

/// Scales `x` to unit Frobenius norm (`X / (||X||_F + 1e-7)`).
fn normalise(x: &mut [f32]) {
    let norm = sum_squares(x).sqrt() as f32;
    let inv = 1.0 / (norm + 1e-7);
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// Orthogonalises X (a x b, a <= b) in place: `X / (||X||_F + 1e-7)`, then [`NS_STEPS`] of
/// `A = X X^T, X = c0 X + (c1 A + c2 A A) X`. `x` holds X row-major, or X^T (b x a) row-major
/// where `transposed`; `y` (a x b, the same layout), `gram` and `poly` (a x a) are scratch.
fn newton_schulz(
    x: &mut [f32],
    y: &mut [f32],
    gram: &mut [f32],
    poly: &mut [f32],
    a: usize,
    b: usize,
    transposed: bool,
) {
    use crate::kernels::matmul::{gemm_strided, symmetric_product};
    normalise(x);
    // X's (row, column) strides, and X^T's.
    let xs = if transposed { (1, a) } else { (b, 1) };
    let xts = (xs.1, xs.0);
    let (c0, c1, c2) = NS_COEFFICIENTS;
    for _ in 0..NS_STEPS {
        // SAFETY: every operand's extent follows from the slice lengths a*b and a*a.
        unsafe {
            // A = X X^T, symmetric: its lower blocks, mirrored.
            symmetric_product(a, b, gram, false, x, xs, x, xts, 1.0);
            // B = c1 A + c2 A A (A A symmetric too)
            for (q, &g) in poly.iter_mut().zip(gram.iter()) {
                *q = c1 * g;
            }
            symmetric_product(a, a, poly, true, gram, (a, 1), gram, (a, 1), c2);
            // Y = c0 X + B X
            for (yv, &xv) in y.iter_mut().zip(x.iter()) {
                *yv = c0 * xv;
            }
            gemm_strided(a, b, a, y, xs, true, poly, (a, 1), x, xs, 1.0, false);
        }
        x.copy_from_slice(y);
    }
}

/// [`newton_schulz`] with bf16 operands (fp32 sums), about twice the fp32 rate; the speedrun's
/// own precision for this iteration, whose result only sets a direction and is not meant to
/// converge exactly. Row-major X (a x b) gives `A = X X^T` as the Gram matrix of its rows and
/// `Y = c0 X + B X`; stored as Z = X^T (b x a, `transposed`), `A = Z^T Z` is the Gram matrix of
/// Z's columns and, A (and so B) being symmetric, `Y^T = c0 Z + Z B`. A and A A are symmetric,
/// so their products compute the tiles on and below the diagonal and mirror the rest: a sixth
/// less work for `fast`'s matrices (16% less optimizer time a step on 2 Zen 4 cores), the same
/// numbers bit for bit.
fn newton_schulz_bf16(
    x: &mut [f32],
    y: &mut [f32],
    gram: &mut [f32],
    poly: &mut [f32],
    a: usize,
    transposed: bool,
) {
    use crate::kernels::matmul_bf16::{
        gram_of_columns, gram_of_rows, matmul_row_major, square_of_symmetric,
    };
    normalise(x);
    let b = x.len() / a;
    let (c0, c1, c2) = NS_COEFFICIENTS;
    for _ in 0..NS_STEPS {
        match transposed {
            true => gram_of_columns(gram, x, a),
            false => gram_of_rows(gram, x, b),
        }
        // B = c1 A + c2 A A
        square_of_symmetric(poly, gram, a);
        for (q, &g) in poly.iter_mut().zip(gram.iter()) {
            *q = c1 * g + c2 * *q;
        }
        for (yv, &xv) in y.iter_mut().zip(x.iter()) {
            *yv = c0 * xv;
        }
        match transposed {
            true => matmul_row_major(y, true, x, poly, a),
            false => matmul_row_major(y, true, poly, x, a),
        }
        x.copy_from_slice(y);
    }
}

/// One chunk of each of the four buffers, with its index.
type ChunkRefs<'a> = (
    usize,
    ((&'a mut [f32], &'a [f32]), (&'a mut [f32], &'a mut [f32])),
);

/// Models with fewer parameters than this update them on one thread. At nanoGPT's CPU shape
/// (0.8M parameters) two threads take 0.32 ms against 0.51 for one, wake-up included.
const PARALLEL_PARAMS: usize = 1 << 18;

/// The per-step constants of the update.
#[derive(Clone, Copy)]
struct Hyper {
    step_size: f32,
    bias2_sqrt: f32,
    beta1: f32,
    beta2: f32,
    eps: f32,
    grad_scale: f32,
}

crate::kernels::simd_fn! {
    /// The fused AdamW update of one contiguous piece of one tensor.
    fn adamw_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], keep: f32, h: Hyper) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * h.grad_scale;
            *p *= keep;
            *m += (1.0 - h.beta1) * (g - *m);
            *v = h.beta2 * *v + (1.0 - h.beta2) * g * g;
            *p -= h.step_size * *m / (v.sqrt() / h.bias2_sqrt + h.eps);
        }
    }
}

crate::kernels::simd_fn! {
    /// `sum x^2` in f64, with eight independent accumulators: a single running sum would be a
    /// chain of dependent additions, several times slower than the memory it reads.
    pub fn sum_squares(x: &[f32]) -> f64 {
        let mut acc = [0.0f64; 8];
        let chunks = x.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| v as f64 * v as f64).sum();
        for c in chunks {
            for j in 0..8 {
                acc[j] += c[j] as f64 * c[j] as f64;
            }
        }
        tail + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
    }
}

crate::kernels::simd_fn! {
    /// `total += x`.
    pub fn add_assign(total: &mut [f32], x: &[f32]) {
        for (t, &v) in total.iter_mut().zip(x) {
            *t += v;
        }
    }
}

/// The factor that brings the gradient norm down to `max_norm` (PyTorch's `clip_grad_norm_`:
/// `max_norm / (norm + 1e-6)`, capped at 1). `max_norm == 0` means no clipping.
pub fn clip_scale(norm: f32, max_norm: f32) -> f32 {
    if max_norm <= 0.0 {
        return 1.0;
    }
    (max_norm / (norm + 1e-6)).min(1.0)
}

/// The learning rate at step `step` (0-based): constant, or nanoGPT's linear warm-up
/// `lr * (step + 1) / (warmup + 1)` followed by cosine decay from `lr` to `min_lr` at the last
/// step, or (wsd) by `lr` held constant and then a linear decay to `min_lr` over the last
/// `decay_fraction` of the steps ([`wsd_decay`]), in the pieces of `decay_plan` where a time
/// budget set the steps again inside it ([`wsd_decayed`]).
pub fn learning_rate(cfg: &TrainConfig, step: usize) -> f32 {
    match cfg.lr_schedule {
        LrSchedule::Constant => cfg.learning_rate,
        LrSchedule::Wsd => {
            let (warmup, total) = (cfg.warmup_steps, cfg.steps);
            if step < warmup {
                return cfg.learning_rate * (step + 1) as f32 / (warmup + 1) as f32;
            }
            let (start, _) = wsd_decay(cfg);
            if step < start {
                return cfg.learning_rate;
            }
            if step >= total {
                return cfg.min_lr;
            }
            wsd_decayed(cfg, start, step)
        }
        LrSchedule::Cosine => {
            let (warmup, total) = (cfg.warmup_steps, cfg.steps);
            if step < warmup {
                return cfg.learning_rate * (step + 1) as f32 / (warmup + 1) as f32;
            }
            if step > total || total <= warmup {
                return cfg.min_lr;
            }
            let ratio = (step - warmup) as f64 / (total - warmup) as f64;
            let coeff = 0.5 * (1.0 + (std::f64::consts::PI * ratio).cos());
            (cfg.min_lr as f64 + coeff * (cfg.learning_rate - cfg.min_lr) as f64) as f32
        }
    }
}

/// The wsd decay's learning rate at `step` (from `start` on, before `steps`): a line from the
/// peak at `start` to `min_lr` at `steps`; or, with `decay_plan`, from each piece's start, at the
/// value the piece before reached there, to `min_lr` at the piece's `to`. Each value is computed
/// the same way whether the plan has pieces after it or not, so that a budget setting the steps
/// again changes no step taken, bit for bit.
fn wsd_decayed(cfg: &TrainConfig, start: usize, step: usize) -> f32 {
    let line = |from: usize, at: f32, to: usize, s: usize| {
        let ratio = s.saturating_sub(from) as f64 / to.saturating_sub(from).max(1) as f64;
        (at as f64 + ratio * (cfg.min_lr - at) as f64) as f32
    };
    let (mut from, mut at, mut to) = (start, cfg.learning_rate, cfg.steps);
    let begun = cfg.decay_plan.iter().take_while(|&&(f, _)| f <= step);
    for (i, &(piece_from, piece_to)) in begun.enumerate() {
        if i > 0 {
            at = line(from, at, to, piece_from);
        }
        (from, to) = (piece_from, piece_to);
    }
    if cfg.decay_plan.last().is_none_or(|&(last, _)| last == from) {
        // The piece in force is the last: it ends where the run's steps end.
        to = cfg.steps;
    }
    line(from, at, to, step)
}

/// The wsd schedule's decay: (first step of the decay, its length), the last
/// `decay_fraction` of the steps after the warm-up (at least one step), or from the first
/// piece of `decay_plan` to the last step.
pub fn wsd_decay(cfg: &TrainConfig) -> (usize, usize) {
    let (warmup, total) = (cfg.warmup_steps, cfg.steps);
    if let Some(&(start, _)) = cfg.decay_plan.first() {
        return (start, total.saturating_sub(start).max(1));
    }
    let decay = ((cfg.decay_fraction as f64 * total as f64).round() as usize)
        .clamp(1, total.saturating_sub(warmup).max(1));
    (total.saturating_sub(decay), decay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{preset, ModelConfig, OptimizerKind};

    fn tiny_layout() -> (ModelConfig, ParamLayout) {
        let mut cfg = preset("layernorm").unwrap().model;
        cfg.vocab_size = 5;
        cfg.n_embd = 4;
        cfg.n_head = 2;
        cfg.n_layer = 1;
        let layout = ParamLayout::new(&cfg);
        (cfg, layout)
    }

    #[test]
    fn first_step_moves_each_parameter_by_lr_against_its_gradient_sign() {
        // With m and v starting at 0, the bias-corrected first step is lr * g / (|g| + eps).
        let (_, layout) = tiny_layout();
        let n = layout.len;
        let mut cfg = TrainConfig::lecture(1, 1, 0.1);
        cfg.weight_decay = 0.0;
        let mut params = vec![1.0; n];
        let grads: Vec<f32> = (0..n)
            .map(|i| if i % 2 == 0 { 0.5 } else { -2.0 })
            .collect();
        let mut opt = AdamW::new(n);
        opt.update(&mut params, &grads, &layout, &cfg, 0.1, 1.0, false);
        for (i, p) in params.iter().enumerate() {
            let want = if i % 2 == 0 { 0.9 } else { 1.1 };
            assert!((p - want).abs() < 1e-5, "{i}: {p}");
        }
    }

    #[test]
    fn weight_decay_on_matrices_spares_vectors() {
        let (_, layout) = tiny_layout();
        let n = layout.len;
        let mut cfg = TrainConfig::lecture(1, 1, 0.1);
        cfg.weight_decay = 0.5;
        cfg.decay_on = DecayOn::Matrices;
        let mut params = vec![1.0; n];
        let mut opt = AdamW::new(n);
        opt.update(&mut params, &vec![0.0; n], &layout, &cfg, 0.1, 1.0, false);
        for spec in &layout.specs {
            let want = if spec.is_matrix() { 0.95 } else { 1.0 };
            assert!(
                params[spec.range()]
                    .iter()
                    .all(|&p| (p - want).abs() < 1e-6),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn cosine_schedule_warms_up_then_decays_to_min() {
        let mut cfg = TrainConfig::lecture(1, 1000, 1e-3);
        cfg.lr_schedule = LrSchedule::Cosine;
        cfg.warmup_steps = 100;
        cfg.min_lr = 1e-4;
        assert!((learning_rate(&cfg, 0) - 1e-3 / 101.0).abs() < 1e-9);
        assert!((learning_rate(&cfg, 99) - 1e-3 * 100.0 / 101.0).abs() < 1e-9);
        assert!((learning_rate(&cfg, 100) - 1e-3).abs() < 1e-9);
        assert!((learning_rate(&cfg, 550) - 5.5e-4).abs() < 1e-7);
        assert!((learning_rate(&cfg, 1000) - 1e-4).abs() < 1e-9);
        cfg.lr_schedule = LrSchedule::Constant;
        assert_eq!(learning_rate(&cfg, 5), 1e-3);
    }

    /// 1000 steps of wsd from 1e-3 to 1e-4: 100 of warm-up, the last 200 decaying.
    fn wsd_1000_steps() -> TrainConfig {
        let mut cfg = TrainConfig::lecture(1, 1000, 1e-3);
        cfg.lr_schedule = LrSchedule::Wsd;
        cfg.warmup_steps = 100;
        cfg.min_lr = 1e-4;
        cfg.decay_fraction = 0.2;
        cfg
    }

    #[test]
    fn wsd_warms_up_holds_then_decays_linearly_over_its_fraction() {
        let mut cfg = wsd_1000_steps();
        assert_eq!(wsd_decay(&cfg), (800, 200));
        assert!((learning_rate(&cfg, 0) - 1e-3 / 101.0).abs() < 1e-9);
        assert_eq!(learning_rate(&cfg, 100), 1e-3);
        assert_eq!(learning_rate(&cfg, 799), 1e-3);
        assert_eq!(learning_rate(&cfg, 800), 1e-3);
        assert!((learning_rate(&cfg, 900) - 5.5e-4).abs() < 1e-7);
        assert!((learning_rate(&cfg, 999) - (1e-4 + 0.9e-3 / 200.0)).abs() < 1e-7);
        assert_eq!(learning_rate(&cfg, 1000), 1e-4);
        // A fraction longer than what the warm-up leaves decays right after it.
        cfg.decay_fraction = 1.0;
        assert_eq!(wsd_decay(&cfg), (100, 900));
        cfg.steps = 3;
        cfg.warmup_steps = 0;
        cfg.decay_fraction = 0.01;
        assert_eq!(wsd_decay(&cfg), (2, 1), "at least one step of decay");
    }

    #[test]
    fn a_wsd_decay_set_again_in_pieces_changes_no_step_taken_and_ends_at_the_floor() {
        let planned = wsd_1000_steps();
        // Set again at step 900 (halfway down: 5.5e-4) to end at 1100, then at 1000 to 1050.
        let mut longer = planned.clone();
        longer.steps = 1100;
        longer.decay_plan = vec![(800, 1000), (900, 1100)];
        let mut shorter = longer.clone();
        shorter.steps = 1050;
        shorter.decay_plan.push((1000, 1050));
        assert_eq!(wsd_decay(&shorter), (800, 250));
        for s in 0..900 {
            let lr = learning_rate(&planned, s);
            assert_eq!(
                lr.to_bits(),
                learning_rate(&longer, s).to_bits(),
                "step {s}"
            );
            assert_eq!(
                lr.to_bits(),
                learning_rate(&shorter, s).to_bits(),
                "step {s}"
            );
        }
        for s in 900..1000 {
            let lr = learning_rate(&longer, s);
            assert_eq!(
                lr.to_bits(),
                learning_rate(&shorter, s).to_bits(),
                "step {s}"
            );
        }
        // From 5.5e-4 at 900 to 1e-4 at 1100: 2.25e-6 a step; from 3.25e-4 at 1000 to 1e-4 at
        // 1050: 4.5e-6 a step.
        assert!((learning_rate(&longer, 900) - 5.5e-4).abs() < 1e-7);
        assert!((learning_rate(&longer, 1000) - 3.25e-4).abs() < 1e-7);
        assert!((learning_rate(&shorter, 1000) - 3.25e-4).abs() < 1e-7);
        assert!((learning_rate(&shorter, 1025) - 2.125e-4).abs() < 1e-7);
        assert!((learning_rate(&shorter, 1049) - (1e-4 + 4.5e-6)).abs() < 1e-7);
        assert_eq!(learning_rate(&shorter, 1050), 1e-4);
        let lrs: Vec<f32> = (0..=1050).map(|s| learning_rate(&shorter, s)).collect();
        assert!(lrs[100..].windows(2).all(|w| w[1] <= w[0]), "never rises");
        // The last piece ends at the run's steps, whatever it recorded.
        let mut cut = shorter.clone();
        cut.steps = 1030;
        assert_eq!(learning_rate(&cut, 1030), 1e-4);
        assert!((learning_rate(&cut, 1015) - 2.125e-4).abs() < 1e-7);
    }

    /// Muon moves the hidden matrices as the plain-loop twin does (two steps: the momentum is
    /// used), and AdamW everything else exactly as `optimizer = adamw` would.
    #[test]
    #[cfg_attr(target_arch = "wasm32", ignore = "threads: none in WebAssembly here")]
    fn muon_matches_its_reference_and_leaves_the_rest_to_adamw() {
        let mut mcfg = preset("layernorm").unwrap().model;
        mcfg.vocab_size = 7;
        mcfg.n_embd = 12;
        mcfg.n_head = 3;
        mcfg.n_layer = 2;
        let layout = ParamLayout::new(&mcfg);
        let n = layout.len;
        let mut rng = crate::rng::Rng::new(4);
        let start: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal()).collect();
        let grads: Vec<Vec<f32>> = (0..2)
            .map(|_| (0..n).map(|_| rng.normal()).collect())
            .collect();
        let mut cfg = TrainConfig::lecture(1, 10, 1e-3);
        cfg.optimizer = OptimizerKind::Muon;
        cfg.muon_lr = 0.05;
        cfg.muon_weight_decay = 0.1;
        let (lr, scale) = (5e-4, 0.7);
        let mut params = start.clone();
        let mut opt = AdamW::new(n);
        let mut adam_params = start.clone();
        let mut adam = AdamW::new(n);
        let adam_cfg = TrainConfig {
            optimizer: OptimizerKind::Adamw,
            ..cfg.clone()
        };
        let mut want = start.clone();
        let mut momentum = vec![0.0; n];
        let pool = crate::runtime::thread_pool(Some(2)).unwrap();
        for g in &grads {
            pool.install(|| opt.update(&mut params, g, &layout, &cfg, lr, scale, false));
            adam.update(&mut adam_params, g, &layout, &adam_cfg, lr, scale, false);
            for spec in layout.specs.iter().filter(|s| s.is_hidden_matrix()) {
                let r = spec.range();
                crate::reference::optimizer::muon_matrix(
                    &mut want[r.clone()],
                    &mut momentum[r.clone()],
                    &g[r],
                    spec.shape[0],
                    spec.shape[1],
                    0.05 * lr / 1e-3,
                    cfg.muon_momentum,
                    0.1,
                    scale,
                );
            }
        }
        let hidden: Vec<_> = layout
            .specs
            .iter()
            .filter(|s| s.is_hidden_matrix())
            .collect();
        assert_eq!(hidden.len(), 2 * 4, "qkv, proj, fc, fc2 per block");
        for spec in &layout.specs {
            let r = spec.range();
            let (got, want) = match spec.is_hidden_matrix() {
                true => (&params[r.clone()], &want[r]),
                false => (&params[r.clone()], &adam_params[r]),
            };
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() < 1e-5, "{}: {a} vs {b}", spec.name);
            }
            assert!(got != &start[spec.range()], "{} moved", spec.name);
        }
    }

    /// With bf16 products, Newton-Schulz gives the fp32 iteration's update to within bf16's
    /// rounding (3 significant digits, compounded over the 5 steps), in both orientations.
    #[test]
    fn muon_in_bf16_moves_matrices_as_fp32_does() {
        let mut rng = crate::rng::Rng::new(6);
        for (rows, cols) in [(48, 130), (130, 48), (64, 64)] {
            let n = rows * cols;
            let start: Vec<f32> = (0..n).map(|_| 0.1 * rng.normal()).collect();
            let g: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
            let step = |bf16: bool| {
                let (mut p, mut m) = (start.clone(), vec![0.0; n]);
                let s = MuonStep {
                    lr: 0.02,
                    momentum: 0.95,
                    keep: 1.0,
                    grad_scale: 1.0,
                    bf16,
                };
                muon_matrix(&mut p, &mut m, &g, rows, cols, s);
                let delta: Vec<f64> = p.iter().zip(&start).map(|(a, b)| (a - b) as f64).collect();
                (delta, m)
            };
            let ((fp32, m32), (bf16, m16)) = (step(false), step(true));
            assert_eq!(m32, m16, "the momentum is fp32 either way");
            let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let diff: Vec<f64> = fp32.iter().zip(&bf16).map(|(a, b)| a - b).collect();
            let relative = norm(&diff) / norm(&fp32);
            // Measured 0.020-0.030: the iteration amplifies the rounding of the small singular
            // directions; a wrong orientation would differ by about 1.
            assert!(relative < 0.05, "{rows}x{cols}: bf16 differs by {relative}");
            assert!(relative > 0.0, "{rows}x{cols}: the bf16 products ran");
        }
    }

    #[test]
    fn clipping_scales_down_only_large_gradients() {
        assert_eq!(sum_squares(&[3.0, 4.0]), 25.0);
        // Nineteen values exercise the eight accumulators and the tail.
        let g: Vec<f32> = (1..=19).map(|i| i as f32).collect();
        assert_eq!(
            sum_squares(&g),
            (1..=19).map(|i| (i * i) as f64).sum::<f64>()
        );
        assert!((clip_scale(5.0, 1.0) - 0.2).abs() < 1e-6);
        assert_eq!(clip_scale(0.5, 1.0), 1.0);
        assert_eq!(clip_scale(50.0, 0.0), 1.0);
    }
}
