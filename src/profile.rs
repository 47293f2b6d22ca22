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

thread_local! {
    /// Scopes open on this thread. Only the outermost counts: a kernel that calls another (the
    /// optimizer's update around Muon's matrices) would otherwise count the inner time twice.
    static OPEN: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Adds the time until it is dropped to `kernel`'s total, unless another scope was already open
/// on this thread (whose total then holds this time).
pub struct Scope {
    start: Option<(Instant, usize, usize)>,
    open: bool,
}

impl Drop for Scope {
    fn drop(&mut self) {
        if self.open {
            OPEN.with(|n| n.set(n.get() - 1));
        }
        if let Some((start, k, dir)) = self.start {
            NANOS[k][dir].fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
    }
}

/// Starts timing `kernel` (`backward` selects the column) if profiling is on.
///
/// "Thread time": each thread's outermost scopes are summed, so a kernel whose call spreads work
/// over the pool counts the caller's wall time plus the time of the scopes the other threads
/// open inside it (Muon opens one per matrix), and never the same thread's time twice.
#[inline]
pub fn scope(kernel: Kernel, backward: bool) -> Scope {
    if !ENABLED.load(Ordering::Relaxed) {
        return Scope {
            start: None,
            open: false,
        };
    }
    let outermost = OPEN.with(|n| {
        n.set(n.get() + 1);
        n.get() == 1
    });
    let k = KERNELS.iter().position(|&x| x == kernel).unwrap_or(0);
    Scope {
        start: outermost.then(|| (Instant::now(), k, backward as usize)),
        open: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scope opened inside another on the same thread adds nothing of its own: the outer one
    /// already holds its time. (No other unit test switches profiling on.)
    #[test]
    #[cfg_attr(target_arch = "wasm32", ignore = "threads: none in WebAssembly here")]
    fn nested_scopes_count_their_time_once() {
        let pause = std::time::Duration::from_millis(50);
        let optimizer = || totals()[8].1;
        assert_eq!(KERNELS[8], Kernel::Optimizer);
        enable(true);
        let before = optimizer();
        {
            let _outer = scope(Kernel::Optimizer, false);
            std::thread::sleep(pause);
            let _inner = scope(Kernel::Optimizer, false);
            std::thread::sleep(pause);
        }
        let nested = optimizer() - before;
        // Another thread's scope is its own outermost and counts.
        std::thread::spawn(move || {
            let _s = scope(Kernel::Optimizer, false);
            std::thread::sleep(pause);
        })
        .join()
        .unwrap();
        let other = optimizer() - before - nested;
        enable(false);
        // Counted twice, the nested time would be 0.15 s.
        assert!(
            (0.099..0.140).contains(&nested),
            "nested: {nested} s, want about 0.1"
        );
        assert!(
            (0.049..0.090).contains(&other),
            "other thread: {other} s, want about 0.05"
        );
    }
}
