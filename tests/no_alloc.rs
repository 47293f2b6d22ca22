//! A training step allocates nothing: every buffer is made when the trainer is built.
//!
//! This test binary replaces the global allocator with one that counts allocations, runs a few
//! warm-up steps (thread pools and per-thread caches start lazily), then requires that further
//! steps allocate zero times. Only the threads of the pool under test (and the one driving it)
//! are counted: the threads of the previous case's pool may still be shutting down, and what
//! they allocate is not a step's.

use chargpt::config::preset;
use chargpt::data::{Dataset, TINY_SHAKESPEARE};
use chargpt::model::Model;
use chargpt::tokenizer::Tokenizer;
use chargpt::training::Trainer;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);
/// The case being measured; a thread's allocations count when it is tagged with it.
static CASE: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static TAG: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn count() {
    // `try_with`: a thread being torn down has no thread-locals left, and is not counted.
    if TAG.try_with(Cell::get) == Ok(CASE.load(Ordering::Relaxed)) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations in 5 training steps after warm-up: in the first of up to 8 windows of 5 steps that
/// allocates nothing, else in the last.
fn allocations_per_step(preset_name: &str, threads: usize, overrides: &[(&str, &str)]) -> usize {
    let text = &TINY_SHAKESPEARE[..200_000];
    let tokenizer = Tokenizer::from_text(text).unwrap();
    let data = Dataset::new(text, &tokenizer).unwrap();
    let p = preset(preset_name).unwrap();
    let (mut m, mut t) = (p.model, p.train);
    m.vocab_size = tokenizer.vocab_size();
    for (k, v) in overrides {
        chargpt::config::apply_to_configs(&mut m, &mut t, k, v).unwrap();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    // A pool's threads start in the background and allocate their job queues when they first
    // run: make sure every one has, so that a thread starting late is not counted as a step's;
    // then tag them (and this thread) as the case's.
    let case = CASE.fetch_add(1, Ordering::SeqCst) + 1;
    pool.broadcast(|_| ());
    pool.broadcast(|_| TAG.with(|t| t.set(case)));
    TAG.with(|t| t.set(case));
    pool.install(|| {
        let mut trainer = Trainer::new(Model::new(m, 1), t);
        let mut step = || {
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            trainer.train_step(&data.train).unwrap();
            ALLOCATIONS.load(Ordering::SeqCst) - before
        };
        // gemm's per-thread packing buffers (and Muon's Newton-Schulz scratch) are made the
        // first time a thread runs a product (attention's scratch and the bf16 packing buffers
        // are reserved on every thread when the trainer is built), and which thread runs what
        // depends on work stealing: on a busy machine a thread may first take part many steps
        // in, and make its buffers then, once. So after 10 warm-up steps, count windows of 5
        // steps until one allocates nothing, 8 windows at most. An allocation made by every
        // step, or every few steps, is in every window and still fails; a thread's one-off
        // first use is not counted against the steps after it. The result is the last window's.
        for _ in 0..10 {
            step();
        }
        let mut allocations = 0;
        for _ in 0..8 {
            allocations = (0..5).map(|_| step()).sum();
            if allocations == 0 {
                break;
            }
        }
        allocations
    })
}

#[test]
fn training_steps_do_not_allocate() {
    // bf16 runs with the portable kernels where the CPU lacks AVX512_BF16: the same buffers.
    chargpt::runtime::allow_bf16_emulation();
    // Tests in one binary run concurrently and would count each other's allocations.
    for threads in [1, 2] {
        for (name, overrides) in [
            ("bigram", &[][..]),
            ("feed-forward", &[][..]),
            ("layernorm", &[][..]),
            // Wide enough that the products and attention split over threads, with dropout on.
            ("nanogpt-cpu", &[("dropout", "0.1"), ("n_layer", "2")][..]),
            // bf16 products: packing buffers and the weights' bf16 copies are made once.
            ("layernorm", &[("precision", "bf16")][..]),
            (
                "nanogpt-cpu",
                &[("dropout", "0.1"), ("n_layer", "2"), ("precision", "bf16")][..],
            ),
            // bf16 attention (heads of 64): its products share the linear layers' packing buffers.
            (
                "nanogpt-cpu",
                &[
                    ("dropout", "0.1"),
                    ("n_layer", "1"),
                    ("n_head", "2"),
                    ("block_size", "128"),
                    ("precision", "bf16"),
                ][..],
            ),
            // Every modern setting and Muon: Newton-Schulz scratch is made in the first step.
            (
                "nanogpt-cpu",
                &[
                    ("dropout", "0.1"),
                    ("n_layer", "2"),
                    ("position", "rope"),
                    ("norm", "rms"),
                    ("activation", "relu2"),
                    ("qk_norm", "true"),
                    ("tie_embeddings", "true"),
                    ("bias", "false"),
                    ("optimizer", "muon"),
                    ("lr_schedule", "wsd"),
                ][..],
            ),
            (
                "layernorm",
                &[("optimizer", "muon"), ("qk_norm", "true")][..],
            ),
            // Muon's Newton-Schulz products in bf16 share the linear layers' packing buffers.
            (
                "nanogpt-cpu",
                &[
                    ("n_layer", "2"),
                    ("optimizer", "muon"),
                    ("precision", "bf16"),
                ][..],
            ),
        ] {
            let n = allocations_per_step(name, threads, overrides);
            assert_eq!(
                n, 0,
                "{name} with {threads} threads: {n} allocations in 5 steps after warm-up"
            );
        }
    }
}
