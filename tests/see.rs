//! "See inside" through the binary: `ladder`, `attention` and `sweep` do what they say on tiny
//! runs (a few steps, tiny models or few-kilobyte texts, well under a second each), and each bad
//! input gets one line that says what to do.

use serde_json::Value;
use std::path::Path;

mod common;

use common::{fails, succeeds, workspace};

fn is_png(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| b.starts_with(b"\x89PNG\r\n\x1a\n"))
}

/// Trains a 2-layer, 2-head model with block 8 on `small.txt` into `dir/name`.
fn train_tiny(dir: &Path, name: &str, preset: &str) {
    succeeds(
        dir,
        &[
            "train",
            "--preset",
            preset,
            "--data",
            "small.txt",
            "--out",
            name,
            "--set",
            "n_layer=2",
            "--set",
            "n_head=2",
            "--set",
            "n_embd=16",
            "--set",
            "steps=10",
            "--set",
            "eval_iters=2",
            "--threads",
            "1",
        ],
    );
}

#[test]
fn the_new_commands_have_help() {
    let dir = workspace();
    for cmd in ["ladder", "attention", "sweep"] {
        let out = succeeds(dir.path(), &[cmd, "--help"]);
        assert!(out.contains("Usage: chargpt"), "{out}");
    }
    let ladder = succeeds(dir.path(), &["ladder", "--help"]);
    assert!(ladder.contains("init=pytorch"), "{ladder}");
    assert!(ladder.contains("attention_scale=n-embd"), "{ladder}");
}

#[test]
fn a_short_ladder_reports_every_field_and_agrees_with_eval() {
    let dir = workspace();
    let out = succeeds(
        dir.path(),
        &[
            "ladder",
            "--rungs",
            "single-head,bigram",
            "--steps",
            "20",
            "--json",
            "--out",
            "lad",
            "--threads",
            "1",
        ],
    );
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 2, "{out}");
    // In the ladder's order, whatever the order asked for.
    let expected = [("bigram", 4_225, 2.49), ("single-head", 7_553, 2.5)];
    for (row, (rung, params, published)) in rows.iter().zip(expected) {
        assert_eq!(row["rung"], rung);
        assert_eq!(row["params"], params);
        assert_eq!(row["published"], published);
        assert_eq!(row["steps"], 20);
        let estimate = row["val_estimate"].as_f64().unwrap();
        let exact = row["val_exact"].as_f64().unwrap();
        // 20 steps leave the loss far above the published figure but well below the untrained
        // PyTorch-init models' 4.5 and more; the estimate (200 batches) is close to the exact
        // loss.
        assert!(exact > 2.5 && exact < 4.6, "{rung}: {exact}");
        assert!(
            (estimate - exact).abs() < 0.1,
            "{rung}: {estimate} vs {exact}"
        );
        let diff = row["diff"].as_f64().unwrap();
        assert!((diff - (estimate - published)).abs() < 1e-6);
        assert!(row["wall_s"].as_f64().unwrap() > 0.0);
    }
    let lad = dir.path().join("lad");
    let table = std::fs::read_to_string(lad.join("ladder.md")).unwrap();
    assert!(table.contains("| bigram | 4,225 |"), "{table}");
    assert!(table.contains("20 steps per rung"), "{table}");
    assert!(is_png(&lad.join("ladder.png")));
    // Each rung is a checkpoint whose exact val loss `chargpt eval` reproduces.
    let eval = succeeds(
        dir.path(),
        &[
            "eval",
            "--model",
            "lad/single-head",
            "--json",
            "--threads",
            "1",
        ],
    );
    let eval: Value = serde_json::from_str(&eval).unwrap();
    let exact = rows[1]["val_exact"].as_f64().unwrap();
    assert!((eval["loss"].as_f64().unwrap() - exact).abs() < 1e-9);
    // A ladder is never overwritten.
    fails(
        dir.path(),
        &[
            "ladder", "--rungs", "bigram", "--steps", "5", "--out", "lad",
        ],
        "already holds a ladder",
    );
}

#[test]
fn the_ladder_lists_its_rungs_and_the_big_one_only_on_request() {
    let dir = workspace();
    let plain = succeeds(dir.path(), &["ladder", "--list"]);
    assert_eq!(plain.lines().count(), 7, "{plain}");
    assert!(!plain.contains("lecture"), "{plain}");
    let layernorm = plain.lines().find(|l| l.starts_with("layernorm")).unwrap();
    assert!(
        layernorm.contains("init=pytorch attention_scale=n-embd"),
        "{layernorm}"
    );
    let big = succeeds(
        dir.path(),
        &["ladder", "--list", "--include-big", "--steps", "100"],
    );
    let lecture = big.lines().find(|l| l.starts_with("lecture")).unwrap();
    assert!(lecture.contains("10,788,929"), "{lecture}");
    assert!(lecture.contains("100 x 64 x 256"), "{lecture}");
    assert!(lecture.contains("1.48"), "{lecture}");
}

#[test]
fn bad_ladder_options() {
    let dir = workspace();
    let d = dir.path();
    fails(
        d,
        &["ladder", "--rungs", "trigram"],
        "unknown rung \"trigram\"",
    );
    fails(d, &["ladder", "--rungs", "lecture"], "--include-big");
    fails(d, &["ladder", "--rungs", "bigram,bigram"], "named twice");
    fails(d, &["ladder", "--rungs", ","], "names no rung");
    fails(d, &["ladder", "--steps", "0"], "--steps must be at least 1");
    fails(d, &["ladder", "--steps", "x"], "invalid value 'x'");
    std::fs::write(d.join("afile"), "x").unwrap();
    fails(
        d,
        &["ladder", "--rungs", "bigram", "--out", "afile"],
        "cannot write to the output directory",
    );
}

#[test]
fn attention_weights_are_causal_distributions_over_the_last_block() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "tiny", "layernorm");
    // 19 characters; the model sees 8 at most.
    let out = succeeds(
        d,
        &[
            "attention",
            "--model",
            "tiny",
            "--prompt",
            "the quick brown fox",
            "--json",
        ],
    );
    let maps: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(maps["prompt"], "rown fox");
    assert_eq!(maps["dropped"], 11);
    let tokens: Vec<&str> = maps["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tokens, ["r", "o", "w", "n", " ", "f", "o", "x"]);
    assert_eq!(
        (maps["n_layer"].as_u64(), maps["n_head"].as_u64()),
        (Some(2), Some(2))
    );
    let layers = maps["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let mut distinct = Vec::new();
    for heads in layers {
        let heads = heads.as_array().unwrap();
        assert_eq!(heads.len(), 2);
        for map in heads {
            let rows = map.as_array().unwrap();
            assert_eq!(rows.len(), 8);
            for (q, row) in rows.iter().enumerate() {
                let row: Vec<f64> = row
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_f64().unwrap())
                    .collect();
                assert_eq!(row.len(), 8);
                // A distribution over the keys it may see, and nothing after it.
                let sum: f64 = row.iter().sum();
                assert!((sum - 1.0).abs() < 1e-5, "row {q} sums to {sum}");
                assert!(row.iter().all(|&w| (0.0..=1.0).contains(&w)));
                assert!(row[q + 1..].iter().all(|&w| w == 0.0), "row {q}: {row:?}");
            }
            distinct.push(map.to_string());
        }
    }
    // Four heads with their own weights, not one map copied four times.
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 4);
    // --json draws no image unless asked; without it the heatmaps go beside the model.
    assert!(!d.join("tiny/attention.png").exists());
    let text = succeeds(d, &["attention", "--model", "tiny", "--prompt", "the fox"]);
    assert!(text.contains("over 7 characters"), "{text}");
    assert!(text.contains("layer 1, head 1: looks back"), "{text}");
    assert!(is_png(&d.join("tiny/attention.png")));
    succeeds(
        d,
        &[
            "attention",
            "--model",
            "tiny",
            "--prompt",
            "dog",
            "--json",
            "--out",
            "a.png",
        ],
    );
    assert!(is_png(&d.join("a.png")));
}

#[test]
fn bad_attention_inputs() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "tiny", "layernorm");
    succeeds(
        d,
        &[
            "train",
            "--preset",
            "bigram",
            "--data",
            "small.txt",
            "--out",
            "bi",
            "--set",
            "steps=3",
            "--set",
            "eval_iters=2",
        ],
    );
    fails(
        d,
        &["attention", "--model", "bi", "--prompt", "the"],
        "bigram model, which has no attention",
    );
    fails(
        d,
        &["attention", "--model", "tiny", "--prompt", "The Fox"],
        "2 characters that the model's vocabulary lacks: 'T', 'F'",
    );
    fails(
        d,
        &["attention", "--model", "tiny", "--prompt", ""],
        "the prompt is empty",
    );
    fails(d, &["attention", "--model", "tiny"], "--prompt TEXT");
    fails(
        d,
        &[
            "attention",
            "--model",
            "tiny",
            "--prompt",
            "a",
            "--out",
            "a.jpg",
        ],
        "must name a .png file",
    );
    fails(
        d,
        &["attention", "--model", "nothing", "--prompt", "a"],
        "no checkpoint in nothing",
    );
    fails(
        d,
        &[
            "attention",
            "--model",
            "tiny",
            "--prompt-file",
            "missing.txt",
        ],
        "missing.txt",
    );
}

/// `sweep` arguments for a fast grid on `small.txt`: one-layer models, 4 steps, 2-batch loss
/// estimates.
fn sweep_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "sweep",
        "--preset",
        "layernorm",
        "--data",
        "small.txt",
        "--steps",
        "4",
        "--set",
        "n_layer=1",
        "--set",
        "eval_iters=2",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn a_sweep_trains_every_combination_and_plots_them() {
    let dir = workspace();
    let d = dir.path();
    let args = sweep_args(&[
        "--set",
        "n_head=1,2",
        "--set",
        "n_embd=8,16",
        "--json",
        "--out",
        "sw",
    ]);
    let out = succeeds(d, &args);
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(rows.len(), 4, "{out}");
    let settings: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            let s = &r["settings"];
            (s["n_head"].as_u64().unwrap(), s["n_embd"].as_u64().unwrap())
        })
        .collect();
    // Every combination, the first swept setting varying fastest; the single-valued settings
    // hold for every run but are not part of the grid.
    assert_eq!(settings, [(1, 8), (2, 8), (1, 16), (2, 16)]);
    assert!(rows[0]["settings"].get("n_layer").is_some());
    for r in &rows {
        let loss = r["val_exact"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0, "{r}");
        assert!(r["val_estimate"].as_f64().unwrap().is_finite());
        assert!(r["wall_s"].as_f64().unwrap() > 0.0);
    }
    // Heads split the width without changing the parameter count; the width changes it.
    assert_eq!(rows[0]["params"], rows[1]["params"]);
    assert!(rows[2]["params"].as_u64() > rows[0]["params"].as_u64());
    let sw = d.join("sw");
    assert!(is_png(&sw.join("sweep.png")));
    let table = std::fs::read_to_string(sw.join("sweep.md")).unwrap();
    assert!(table.contains("| n_head | n_embd | params |"), "{table}");
    assert!(
        table.contains("Every run with `n_layer=1`, `eval_iters=2`."),
        "{table}"
    );
    assert!(sw.join("n_head=2,n_embd=16/model.safetensors").exists());
    // Each run's curves, as `chargpt train` draws them.
    assert!(is_png(&sw.join("n_head=1,n_embd=8/loss.png")));
    assert!(is_png(&sw.join("n_head=2,n_embd=16/loss.png")));
    // A sweep is never overwritten.
    fails(d, &args, "already holds a sweep");
}

#[test]
fn bad_sweeps_fail_before_training() {
    let dir = workspace();
    let d = dir.path();
    let err = fails(
        d,
        &sweep_args(&["--set", "n_embd=32,30", "--set", "n_head=4,8", "--out", "x"]),
        "the combination n_embd=30, n_head=4 (with n_layer=1, eval_iters=2) is invalid",
    );
    assert!(err.contains("divisible by n_head"), "{err}");
    assert!(
        !d.join("x").exists(),
        "an invalid sweep created its directory"
    );
    fails(
        d,
        &sweep_args(&["--set", "n_embd=32,30", "--set", "n_head=4"]),
        "the combination n_embd=30 (with n_layer=1, eval_iters=2, n_head=4) is invalid",
    );
    fails(
        d,
        &sweep_args(&["--set", "block_size=4000"]),
        "small.txt: the train split has 2745 tokens but a block of 4000 needs at least 4001",
    );
    fails(
        d,
        &sweep_args(&["--set", "n_embed=8,16"]),
        "unknown setting \"n_embed\"",
    );
    fails(
        d,
        &sweep_args(&["--set", "learning_rate=1e-3,fast"]),
        "--set learning_rate=fast: invalid value",
    );
    fails(
        d,
        &sweep_args(&["--set", "n_head"]),
        "expected KEY=V1,V2,...",
    );
    fails(d, &sweep_args(&["--set", "n_head=1,,2"]), "an empty value");
    fails(
        d,
        &sweep_args(&["--set", "n_layer=2"]),
        "n_layer is swept twice",
    );
    fails(
        d,
        &[
            "sweep",
            "--preset",
            "layernorm",
            "--set",
            "n_head=1,2",
            "--steps",
            "0",
        ],
        "--steps must be at least 1",
    );
    fails(
        d,
        &["sweep", "--preset", "nope", "--set", "n_head=1,2"],
        "unknown preset \"nope\"",
    );
    fails(d, &["sweep", "--preset", "layernorm"], "--set");
}
