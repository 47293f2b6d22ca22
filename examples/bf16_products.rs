//! The bf16 products of the lecture model's linear layers, one at a time on one thread, in
//! GFLOP/s, beside the micro-kernel alone on panels in L1 (the ceiling the products' packing and
//! blocking lose to). Needs a CPU with AVX512_BF16.
//!     cargo run --release --example bf16_products [ROWS]      # ROWS: tokens per product, 8192
//!     ONLY=f|g|h cargo run --release --example bf16_products  # forward, input or weight gradient
use chargpt::kernels::matmul_bf16::{self, PackedWeight};
use std::time::Instant;

/// The best of five runs after one untimed, in seconds.
fn time(f: &mut dyn FnMut()) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
}

/// Deterministic values in [-0.5, 0.5).
fn values(n: usize, mul: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (i * mul % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn kernel_alone() {
    use chargpt::kernels::matmul_bf16::{avx512, KC_PAIRS, MR, NR};
    let (a, b) = (values(KC_PAIRS * MR, 7), values(KC_PAIRS * NR, 13));
    let (a, b): (Vec<u32>, Vec<u32>) = (
        a.iter().map(|x| x.to_bits()).collect(),
        b.iter().map(|x| x.to_bits()).collect(),
    );
    let mut c = vec![0.0f32; MR * NR];
    let reps = 20_000;
    let t = Instant::now();
    for _ in 0..reps {
        // SAFETY: the caller checked AVX512_BF16; the panels hold KC_PAIRS pairs, C a full tile.
        unsafe {
            avx512::kernel(
                KC_PAIRS,
                a.as_ptr(),
                b.as_ptr(),
                c.as_mut_ptr(),
                NR,
                MR,
                NR,
                true,
            )
        };
    }
    let flops = (reps * KC_PAIRS * 2 * MR * NR * 2) as f64;
    println!(
        "micro-kernel alone (panels in L1): {:.1} GFLOP/s",
        flops / t.elapsed().as_secs_f64() / 1e9
    );
}

fn main() {
    if !chargpt::runtime::has_avx512_bf16() {
        eprintln!("this CPU has no AVX512_BF16: nothing to time");
        return;
    }
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(8192);
    let only = std::env::var("ONLY").unwrap_or_default();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .expect("a thread pool");
    pool.install(|| {
        #[cfg(target_arch = "x86_64")]
        kernel_alone();
        // (out, in) of the lecture's qkv, attention projection, feed-forward in and out, head.
        for (oc, ic) in [(1152, 384), (384, 384), (1536, 384), (384, 1536), (65, 384)] {
            let (inp, dout, w) = (values(n * ic, 7919), values(n * oc, 104_729), values(oc * ic, 31));
            let mut pw = PackedWeight::new(oc, ic);
            pw.pack(&w);
            let (mut out, mut dinp, mut dw) = (vec![0.0; n * oc], vec![0.0; n * ic], vec![0.0; oc * ic]);
            let rate = |s: f64| 2.0 * (n * oc * ic) as f64 / s / 1e9;
            let timed = |name: &str, f: &mut dyn FnMut()| match only.is_empty() || only == name {
                true => format!("{:6.1}", rate(time(f))),
                false => "     -".into(),
            };
            let f = timed("f", &mut || matmul_bf16::forward(&mut out, &inp, &pw));
            let g = timed("g", &mut || matmul_bf16::input_grad(&mut dinp, false, &dout, &pw));
            let h = timed("h", &mut || {
                matmul_bf16::weight_grad(&mut dw, false, &dout, &inp, ic)
            });
            let pack = time(&mut || pw.pack(&w));
            println!(
                "{oc:>5} x {ic:>5}, {n} rows: forward {f}  input grad {g}  weight grad {h} GFLOP/s;  \
                 packing the weight {:.3} ms",
                pack * 1e3
            );
        }
    });
}
