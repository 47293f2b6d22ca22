//! Where the time goes: optional per-kernel wall-clock accounting.
//!
//! Every kernel entry point opens a [`scope`]; while profiling is off (the default) that costs one
//! relaxed atomic load. `chargpt bench --breakdown` switches it on and prints the share of each
//! kernel, which is how the kernels were chosen for optimisation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use web_time::Instant;

/// The kernels (and the optimizer) whose time is accounted separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Embedding,
    LayerNorm,
    Matmul,
    Attention,
    Activation,
    Residual,
    Dropout,
    CrossEntropy,
    Optimizer,
}

pub const KERNELS: [Kernel; 9] = [
    Kernel::Embedding,
    Kernel::LayerNorm,
    Kernel::Matmul,
    Kernel::Attention,
    Kernel::Activation,
    Kernel::Residual,
    Kernel::Dropout,
    Kernel::CrossEntropy,
    Kernel::Optimizer,
];

impl Kernel {
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Embedding => "embedding",
            Kernel::LayerNorm => "layernorm",
            Kernel::Matmul => "matmul",
            Kernel::Attention => "attention",
            Kernel::Activation => "activation",
            Kernel::Residual => "residual",
            Kernel::Dropout => "dropout",
            Kernel::CrossEntropy => "cross-entropy",
            Kernel::Optimizer => "optimizer",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
/// Nanoseconds per kernel, [forward, backward] (the optimizer counts as forward).
static NANOS: [[AtomicU64; 2]; 9] = [const { [const { AtomicU64::new(0) }; 2] }; 9];

pub fn enable(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

pub fn reset() {
    for k in &NANOS {
        for n in k {
            n.store(0, Ordering::Relaxed);
        }
    }
}

/// Seconds spent per kernel so far: (kernel, forward s, backward s).
pub fn totals() -> Vec<(Kernel, f64, f64)> {
    KERNELS
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let f = NANOS[i][0].load(Ordering::Relaxed) as f64 * 1e-9;
            let b = NANOS[i][1].load(Ordering::Relaxed) as f64 * 1e-9;
            (k, f, b)
        })
        .collect()
}

/// Adds the time until it is dropped to `kernel`'s total.
pub struct Scope {
    start: Option<(Instant, usize, usize)>,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if let Some((start, k, dir)) = self.start {
            NANOS[k][dir].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Starts timing `kernel` (`backward` selects the column) if profiling is on.
#[inline]
pub fn scope(kernel: Kernel, backward: bool) -> Scope {
    if !ENABLED.load(Ordering::Relaxed) {
        return Scope { start: None };
    }
    let k = KERNELS.iter().position(|&x| x == kernel).unwrap_or(0);
    Scope {
        start: Some((Instant::now(), k, backward as usize)),
    }
}
