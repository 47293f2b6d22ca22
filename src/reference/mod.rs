//! The reference engine: the whole model in plain Rust a learner can read top to bottom, and the
//! yardstick the fast engine is tested against (llm.c keeps `train_gpt2.c` for the same reasons).
//!
//! Read [`layers`] first: every layer's forward and backward pass as loops over (b, t, c), with
//! the shapes and the math beside them; attention is spelled out step by step (scores, scale,
//! causal mask, softmax, dropout, weighted sum). Then [`forward`] and [`backward`] (in
//! `model.rs`) chain them into the model. Nothing here is tuned: no `unsafe` (forbidden below),
//! no SIMD intrinsics, no tiling, no scratch reuse, no threads; a pass allocates what it needs.
//! The callers split a batch over threads with a plain rayon loop over its rows
//! ([`crate::training::Trainer`], [`crate::training::evaluate_exact`]).
//!
//! The fast engine ([`crate::model::Model::forward`], [`crate::kernels`]) computes the same
//! functions. Both read the same flat parameters ([`crate::model::ParamLayout`]: same names,
//! offsets and shapes) and write gradients in that layout, so any checkpoint runs on either, and
//! `tests/engines.rs` checks that they agree (logits and every gradient tensor, every preset's
//! shape and every option of the config) while each fast kernel's test compares it with its twin
//! here. The reference itself is checked against PyTorch (`tests/parity.rs`) and against finite
//! differences.
//!
//! Dropout masks are the same on both engines. Each element of a mask is a pure function of
//! (the step's seed, block, site, batch row, index of the element in that row's tensor)
//! ([`crate::rng::DropoutSeed`]), rather than a draw from a generator that a kernel carries from
//! element to element. That makes a mask independent of how a batch is cut into data-parallel
//! shards and of the order threads visit it, so the reference, which computes the batch as it
//! likes, and the fast engine, which shards it by thread count and draws attention masks inside a
//! fused kernel, zero the same activations: a short run trains the same on both up to the order
//! of float sums. (The alternative, reproducing the fast engine's per-shard and per-chunk streams
//! here, would have made the reference depend on the fast engine's sharding.)
#![forbid(unsafe_code)]
// Loops over indices, as the math is written (`for c in 0..C`), rather than over iterators.
#![allow(clippy::needless_range_loop)]

pub mod layers;
mod model;
pub mod optimizer;

pub use model::{backward, forward, forward_sliding, Pass};
