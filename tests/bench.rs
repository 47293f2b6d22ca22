//! `chargpt bench` reports what the speed comparison needs; the figures themselves are measured
//! by hand (`tools/bench_compare.py`), never asserted in a test.

mod common;

use assert_cmd::Command;
use common::BIN;

#[test]
fn bench_json_has_every_field_with_sane_values() {
    let out = Command::new(BIN)
        .args([
            "--threads",
            "2",
            "bench",
            "--preset",
            "layernorm",
            "--steps",
            "5",
        ])
        .args(["--gen-tokens", "20", "--breakdown", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("one JSON object");
    for key in [
        "ms_per_step",
        "tokens_per_s",
        "gflops",
        "peak_gflops",
        "fp32_fma_peak_gflops",
        "gen_tokens_per_s",
    ] {
        let x = v[key]
            .as_f64()
            .unwrap_or_else(|| panic!("{key} missing in {v}"));
        assert!(x.is_finite() && x > 0.0, "{key} = {x}");
    }
    assert_eq!(v["threads"], 2);
    // An fp32 run is compared with the fp32 peak; the bf16 peak is probed where the CPU has it.
    assert_eq!(v["precision"], "fp32");
    assert_eq!(v["peak_gflops"], v["fp32_fma_peak_gflops"]);
    let percent = v["percent_of_peak"].as_f64().unwrap();
    let (gflops, peak) = (
        v["gflops"].as_f64().unwrap(),
        v["peak_gflops"].as_f64().unwrap(),
    );
    assert!((percent - 100.0 * gflops / peak).abs() < 1e-9 * percent);
    match v["bf16_dot_peak_gflops"].as_f64() {
        Some(bf16) => {
            assert!(chargpt::runtime::has_avx512_bf16());
            // VDPBF16PS does twice the flops of an fp32 FMA of the same width.
            assert!(bf16 > peak, "bf16 peak {bf16} vs fp32 {peak}");
        }
        None => {
            assert!(!chargpt::runtime::has_avx512_bf16());
            assert!(v["bf16_dot_peak_gflops"].is_null());
        }
    }
    assert_eq!(v["params"], 42369);
    // tokens per second is B*T per step over the step time.
    let tps = v["tokens_per_s"].as_f64().unwrap();
    let ms = v["ms_per_step"].as_f64().unwrap();
    assert!((tps * ms / 1e3 - 32.0 * 8.0).abs() < 1e-6 * tps);
    assert!(v["breakdown"]["matmul"]["forward_ms"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_times_the_reference_engine_and_a_chosen_sharding() {
    let run = |args: &[&str]| -> serde_json::Value {
        let out = Command::new(BIN)
            .args(["--threads", "2", "bench", "--preset", "layernorm", "--json"])
            .args(["--steps", "2", "--gen-tokens", "3"])
            .args(args)
            .assert()
            .success()
            .get_output()
            .stdout
            .clone();
        serde_json::from_slice(&out).expect("one JSON object")
    };
    let v = run(&["--engine", "reference", "--breakdown"]);
    assert_eq!(v["engine"], "reference");
    assert!(v["ms_per_step"].as_f64().unwrap() > 0.0);
    assert!(v["gen_tokens_per_s"].as_f64().unwrap() > 0.0);
    // The reference layers are timed under the same kernel names.
    assert!(v["breakdown"]["matmul"]["backward_ms"].as_f64().unwrap() > 0.0);
    assert!(v["breakdown"]["attention"]["forward_ms"].as_f64().unwrap() > 0.0);
    let v = run(&["--shards", "1", "--keep-subnormals"]);
    assert_eq!(v["engine"], "fast");
    assert_eq!(v["shards"], 1);
    assert_eq!(v["flush_subnormals"], false);
}

#[test]
fn bench_rejects_nonsense() {
    let dir = common::workspace();
    common::fails(
        dir.path(),
        &["bench", "--preset", "layernorm", "--steps", "0"],
        "--steps must be at least 1",
    );
    common::fails(
        dir.path(),
        &["bench", "--preset", "layernorm", "--shards", "0"],
        "--shards must be at least 1",
    );
}
