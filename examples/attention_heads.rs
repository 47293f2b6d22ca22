//! Attention's forward and backward passes on one thread, without dropout, for 8 batch rows of
//! the lecture's heads (T 256, hs 64) or of `fast`'s (T 256, hs 32): ms per head and GFLOP/s of
//! the causal work (half of 4 T^2 hs forward, twice that backward); the best of REPS runs (6).
//!     cargo run --release --example attention_heads [bf16|fp32] [lecture|fast]
//! bf16 takes the bf16 heads where the CPU has AVX512_BF16 and the head is 64 or more wide;
//! otherwise the fp32 tiles.
use chargpt::kernels::attention::{self, AttentionShape};
use std::time::Instant;

fn main() {
    let bf16 = std::env::args().nth(1).is_none_or(|a| a == "bf16");
    // The lecture's heads (hs 64), or with `fast` those of the `fast` preset (hs 32, fp32 tiles).
    let fast = std::env::args().nth(2).is_some_and(|a| a == "fast");
    let (channels, n_head) = if fast { (256, 8) } else { (384, 6) };
    let shape = AttentionShape {
        batch: 8,
        seq_len: 256,
        channels,
        n_head,
    };
    let (b, t, c, h) = (shape.batch, shape.seq_len, shape.channels, shape.n_head);
    let vals = |n: usize, m: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * m) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    };
    let qkv = vals(b * t * 3 * c, 7);
    let dout = vals(b * t * c, 13);
    let mut out = vec![0.0; b * t * c];
    let mut att = vec![0.0; b * h * t * t];
    let mut dqkv = vec![0.0; b * t * 3 * c];
    let scale = 1.0 / ((c / h) as f32).sqrt();
    let pool = chargpt::runtime::thread_pool(Some(1)).unwrap();
    pool.install(|| {
        let (mut fwd, mut bwd) = (f64::MAX, f64::MAX);
        for _ in 0..std::env::var("REPS").map_or(6, |r| r.parse().unwrap()) {
            let s = Instant::now();
            attention::forward(&mut out, &mut att, None, &qkv, shape, scale, bf16);
            fwd = fwd.min(s.elapsed().as_secs_f64());
            let s = Instant::now();
            attention::backward(&mut dqkv, &dout, &qkv, &att, None, shape, scale, bf16);
            bwd = bwd.min(s.elapsed().as_secs_f64());
        }
        let flops = (b * h) as f64 * 2.0 * (t * t) as f64 * (c / h) as f64; // causal: half of 4 T^2 hs
        println!(
            "forward {:.2} ms/head {:.1} GFLOP/s; backward {:.2} ms/head {:.1} GFLOP/s",
            fwd / (b * h) as f64 * 1e3,
            flops / fwd / 1e9,
            bwd / (b * h) as f64 * 1e3,
            2.0 * flops / bwd / 1e9
        );
    });
}
