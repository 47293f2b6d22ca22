//! Where a training step's time goes, per kernel, on one thread: the same program natively and
//! compiled to WebAssembly (run under Node's WASI), to see what the tab pays for.
//!     cargo run --release --example breakdown [PRESET]
//!     RUSTFLAGS="-C target-feature=+simd128" cargo build --release --example breakdown \
//!         --no-default-features --target wasm32-wasip1
//!     node tools/wasi-test.mjs target/wasm32-wasip1/release/examples/breakdown.wasm [PRESET]
use chargpt::bench::{bench_training, TrainBenchOptions};
use chargpt::config::preset;
use chargpt::engine::Engine;

fn main() {
    let name = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "nanogpt-cpu".into());
    let p = preset(&name).expect("a preset");
    let run = || {
        bench_training(
            &p.model,
            &p.train,
            TrainBenchOptions {
                warmup: 3,
                steps: 10,
                breakdown: true,
                engine: Engine::Fast,
                shards: Some(1),
            },
        )
        .expect("a step")
    };
    #[cfg(target_arch = "wasm32")]
    let b = run();
    #[cfg(not(target_arch = "wasm32"))]
    let b = chargpt::runtime::thread_pool(Some(1)).unwrap().install(run);
    println!(
        "{name}: {:.1} ms/step, {:.0} tokens/s on one thread",
        b.ms_per_step, b.tokens_per_s
    );
    for (kernel, forward, backward) in &b.breakdown {
        println!(
            "  {kernel:14} forward {:7.2} ms  backward {:7.2} ms",
            forward * 1e3,
            backward * 1e3
        );
    }
}
