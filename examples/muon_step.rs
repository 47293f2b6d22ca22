//! Muon's update of the `fast` preset's hidden matrices (24 of them), on one thread and on all,
//! in ms per step: what `--breakdown` calls the optimizer, without the rest of a step around it.
//!     cargo run --release --example muon_step [PRESET]
use chargpt::config::preset;
use chargpt::model::ParamLayout;
use chargpt::optimizer::{muon_update, MuonStep};
use std::time::Instant;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "fast".into());
    let mut cfg = preset(&name).expect("a preset").model;
    cfg.vocab_size = 65;
    let layout = ParamLayout::new(&cfg);
    let vals = |m: usize| -> Vec<f32> {
        (0..layout.len)
            .map(|i| ((i * m) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    let (mut params, grads, mut momentum) = (vals(7), vals(13), vals(3));
    let step = MuonStep {
        lr: 0.02,
        momentum: 0.95,
        keep: 1.0,
        grad_scale: 1.0,
        bf16: true,
    };
    for threads in [1, 2] {
        let pool = chargpt::runtime::thread_pool(Some(threads)).unwrap();
        pool.install(|| {
            let mut best = f64::MAX;
            for _ in 0..10 {
                let t = Instant::now();
                muon_update(&mut params, &grads, &mut momentum, &layout, step);
                best = best.min(t.elapsed().as_secs_f64());
            }
            println!("{name}: Muon on {threads} thread(s): {:.1} ms", best * 1e3);
        });
    }
}
