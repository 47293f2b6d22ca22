//! chargpt: a character-level GPT built from its parts, with an explicit forward and backward
//! pass for every layer (no autograd), trained with AdamW on a CPU.
//!
//! The modules follow the order a learner meets the ideas:
//! [`tokenizer`] (characters to ids), [`data`] (splits and batches), [`config`] (model shapes and
//! presets), [`kernels`] (one file per layer, forward and backward), [`model`] (the network and
//! its parameter layout), [`optimizer`] (AdamW, schedule, clipping), [`training`] (the loop and
//! loss estimates), [`sampling`] (generation), [`checkpoint`] (safetensors + JSON); [`runs`] (run
//! directories as the front ends see them: preparing, locking, listing); [`inspect`] (the numbers
//! behind each idea for a model and a text); [`ladder`] lists the lecture's sequence of models with
//! the losses it published.
//!
//! [`distributed`] splits training over processes and machines (`mpirun`).
//!
//! [`mod@reference`] is the same model in plain loops, the version to read first; [`engine`] chooses
//! which of the two computes a pass.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod distributed;
pub mod engine;
pub mod inspect;
pub mod kernels;
pub mod ladder;
pub mod layout;
pub mod limits;
pub mod memory;
pub mod model;
pub mod optimizer;
pub mod page;
pub mod profile;
pub mod reference;
pub mod rng;
pub mod runs;
pub mod runtime;
pub mod sampling;
pub mod tokenizer;
pub mod training;
