//! The `chargpt` binary as a user meets it: every kind of bad input gets a one-line error that
//! says what to do, a non-zero exit and no panic, and a failed run never costs the last good
//! checkpoint. Models here are tiny and trained on a few kilobytes, so each test takes well under
//! a second.

use predicates::str::contains;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;

mod common;

use common::{chargpt, fails, workspace, BIN};

/// A tiny transformer that trains in milliseconds.
const TINY: &[&str] = &[
    "--preset",
    "layernorm",
    "--set",
    "n_layer=1",
    "--set",
    "n_embd=16",
    "--set",
    "steps=10",
    "--set",
    "eval_iters=2",
    "--set",
    "eval_interval=5",
    "--threads",
    "1",
];

/// Trains the tiny model on `small.txt` into `dir/name`.
fn train_tiny(dir: &Path, name: &str) -> PathBuf {
    let args = train_args(&["--data", "small.txt", "--out", name]);
    chargpt(dir).args(&args).assert().success();
    dir.join(name)
}

fn train_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    args
}

#[test]
fn help_and_version() {
    let dir = workspace();
    chargpt(dir.path())
        .arg("--version")
        .assert()
        .success()
        .stdout(contains(env!("CARGO_PKG_VERSION")));
    for cmd in ["train", "sample", "eval", "presets"] {
        chargpt(dir.path())
            .args([cmd, "--help"])
            .assert()
            .success()
            .stdout(contains("Usage: chargpt"));
    }
}

#[test]
fn presets_lists_every_preset_with_its_parameter_count() {
    let dir = workspace();
    let out = chargpt(dir.path()).arg("presets").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for name in [
        "bigram",
        "single-head",
        "multi-head",
        "feed-forward",
        "residual",
        "layernorm",
        "lecture",
        "nanogpt-cpu",
        "lecture-5m",
        "default",
        "fast",
        "best-1h",
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(name)),
            "{name} missing:\n{table}"
        );
    }
    assert!(table.contains("10,788,929"), "{table}");
    assert!(table.contains("4,225"), "{table}");
    // fast and best-1h: 6 x 256 with tied embeddings and no biases (the block adds no
    // parameters under RoPE).
    for name in ["fast ", "best-1h "] {
        let row = table.lines().find(|l| l.starts_with(name));
        assert!(
            row.is_some_and(|l| l.contains("4,738,944")),
            "{name}:\n{table}"
        );
    }
}

#[test]
fn a_tiny_run_writes_every_file_and_samples_and_evaluates() {
    let dir = workspace();
    let out = train_tiny(dir.path(), "run");
    for file in [
        "model.safetensors",
        "config.json",
        "optimizer.safetensors",
        "metrics.csv",
        "loss.png",
        "samples.txt",
        "steps.csv",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    // Every step's loss, one row each.
    let per_step = std::fs::read_to_string(out.join("steps.csv")).unwrap();
    let rows: Vec<&str> = per_step.lines().collect();
    assert_eq!(rows[0], "step,loss,lr,grad_norm,elapsed_s");
    assert_eq!(rows.len(), 11, "{per_step}");
    assert!(rows[10].starts_with("10,"), "{per_step}");
    let metrics = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let steps: Vec<&str> = metrics
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(steps, ["0", "5", "10"]);
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["step"], 10);
    assert!(config["best_val_loss"].as_f64().unwrap() < 4.0);
    assert!(config["final_val_loss"].as_f64().unwrap() < 4.0);
    assert_eq!(
        config["data"]["source"],
        dir.path()
            .canonicalize()
            .unwrap()
            .join("small.txt")
            .display()
            .to_string()
    );

    // Same seed, same text; the prompt is echoed first.
    let sample = |seed: &str| {
        let out = chargpt(dir.path())
            .args([
                "sample", "--model", "run", "--prompt", "the ", "--tokens", "40", "--seed", seed,
            ])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let a = sample("7");
    assert!(a.starts_with("the "));
    assert_eq!(a.trim_end_matches('\n').chars().count(), 44);
    assert_eq!(a, sample("7"));
    assert_ne!(a, sample("8"));

    // Several samples, top-k and temperature.
    chargpt(dir.path())
        .args([
            "sample",
            "--model",
            "run",
            "--num-samples",
            "3",
            "--tokens",
            "10",
            "--top-k",
            "3",
            "--temperature",
            "0.8",
        ])
        .assert()
        .success()
        .stdout(contains("---------------").count(2));

    // eval defaults to the text the model was trained on.
    let out = chargpt(dir.path())
        .args(["eval", "--model", "run", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["split"], "val");
    // 3,050 characters: the last 305 are val, in (305 - 1) / 8 = 38 windows of 8.
    assert_eq!(json["windows"], 38);
    assert_eq!(json["tokens"], 38 * 8);
    let exact = config["final_val_loss"].as_f64().unwrap();
    assert!((json["loss"].as_f64().unwrap() - exact).abs() < 1e-9);
    chargpt(dir.path())
        .args(["eval", "--model", "run", "--split", "train"])
        .assert()
        .success()
        .stdout(contains("train loss"));
}

#[test]
fn config_files_apply_between_preset_and_set() {
    let dir = workspace();
    std::fs::write(
        dir.path().join("c.toml"),
        "preset = \"layernorm\"\nn_layer = 1\nn_embd = 16\nsteps = 4\neval_iters = 2\nlearning_rate = 3e-3\n",
    )
    .unwrap();
    chargpt(dir.path())
        .args([
            "train",
            "--config",
            "c.toml",
            "--set",
            "steps=6",
            "--data",
            "small.txt",
            "--out",
            "c",
            "--seed",
            "5",
        ])
        .assert()
        .success();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("c/config.json")).unwrap()).unwrap();
    assert_eq!(config["model"]["n_layer"], 1);
    assert_eq!(config["model"]["n_embd"], 16);
    assert_eq!(config["train"]["steps"], 6);
    assert_eq!(config["train"]["seed"], 5);
    assert!((config["train"]["learning_rate"].as_f64().unwrap() - 3e-3).abs() < 1e-9);
}

#[test]
fn bad_data_files() {
    let dir = workspace();
    let d = dir.path();
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("binary.txt"), b"ab\xff\xfecd").unwrap();
    std::fs::write(d.join("short.txt"), "abcdefghijklmnopqrstuvwxyz").unwrap();
    fails(
        d,
        &train_args(&["--data", "missing.txt", "--out", "o"]),
        "cannot read missing.txt",
    );
    fails(
        d,
        &train_args(&["--data", "empty.txt", "--out", "o"]),
        "empty.txt is empty",
    );
    fails(
        d,
        &train_args(&["--data", "binary.txt", "--out", "o"]),
        "not UTF-8 text (invalid byte at offset 2); save it as UTF-8",
    );
    // 26 characters: 23 train, 3 val; block_size 8 needs 9 per split.
    fails(
        d,
        &train_args(&["--data", "short.txt", "--out", "o"]),
        "the val split has 3 tokens but a block of 8 needs at least 9; use more text or a smaller block_size",
    );
    assert!(!d.join("o").join("config.json").exists());
}

#[test]
fn bad_settings() {
    let dir = workspace();
    let d = dir.path();
    let with = |extra: &[&'static str]| {
        let mut args = train_args(&["--data", "small.txt", "--out", "o"]);
        args.extend_from_slice(extra);
        args
    };
    fails(
        d,
        &["train", "--preset", "gpt5"],
        "unknown preset \"gpt5\"; run `chargpt presets`",
    );
    fails(
        d,
        &with(&["--set", "n_embed=32"]),
        "unknown setting \"n_embed\"; known settings: ",
    );
    fails(d, &with(&["--set", "n_layer"]), "write --set KEY=VALUE");
    fails(
        d,
        &with(&["--set", "n_layer=0"]),
        "n_embd, n_head and n_layer must be at least 1",
    );
    fails(
        d,
        &with(&["--set", "batch_size=0"]),
        "batch_size must be at least 1",
    );
    fails(d, &with(&["--set", "steps=0"]), "steps must be at least 1");
    fails(
        d,
        &with(&["--set", "n_embd=-16"]),
        "expected a whole number",
    );
    fails(
        d,
        &with(&["--set", "n_head=3"]),
        "n_embd (16) must be divisible by n_head (3)",
    );
    fails(
        d,
        &with(&["--set", "dropout=1"]),
        "dropout must lie in [0, 1)",
    );
    fails(
        d,
        &with(&["--set", "dropout=-0.1"]),
        "dropout must lie in [0, 1)",
    );
    fails(
        d,
        &with(&["--set", "learning_rate=fast"]),
        "expected a number",
    );
    fails(
        d,
        &with(&["--set", "activation=tanh"]),
        "expected one of `relu`, `gelu`, `relu2`",
    );
    // Settings out of their range are refused by name; settings in range whose buffers could
    // never be allocated are refused before anything is allocated.
    fails(
        d,
        &with(&["--set", "n_embd=4000000000000", "--set", "n_head=1"]),
        "n_embd must lie between 0 and 16,384",
    );
    fails(
        d,
        &with(&[
            "--set",
            "n_embd=16384",
            "--set",
            "n_layer=256",
            "--set",
            "n_head=1",
        ]),
        "GiB of memory and this machine has",
    );
    fails(d, &["train", "--bogus"], "see `chargpt train --help`");
    fails(
        d,
        &["train", "--threads", "0"],
        "--threads must be at least 1",
    );
    fails(
        d,
        &["train", "--resume", "--init-from", "x"],
        "cannot be used with",
    );

    std::fs::write(d.join("typo.toml"), "n_layer = 1\nlearnig_rate = 1e-3\n").unwrap();
    fails(
        d,
        &with(&["--config", "typo.toml"]),
        "typo.toml: unknown setting \"learnig_rate\"; known settings: ",
    );
    std::fs::write(d.join("broken.toml"), "n_layer = 1\nn_embd = = 2\n").unwrap();
    fails(
        d,
        &with(&["--config", "broken.toml"]),
        "broken.toml line 2: ",
    );
    fails(
        d,
        &with(&["--config", "none.toml"]),
        "cannot read none.toml",
    );
    assert!(!d.join("o").exists());
}

#[test]
fn bad_sampling_options() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "m");
    fails(
        d,
        &["sample", "--model", "m", "--prompt", "The Fox ÉTÉ"],
        "the prompt has 3 characters that the model's vocabulary lacks: 'T', 'F', 'É'; use only characters of the text it was trained on",
    );
    fails(
        d,
        &["sample", "--model", "m", "--temperature", "1000"],
        "--temperature must lie between 0 and 100",
    );
    fails(
        d,
        &["sample", "--model", "m", "--temperature", "-1"],
        "--temperature must lie between 0 and 100",
    );
    fails(
        d,
        &["sample", "--model", "m", "--top-k", "0"],
        "--top-k must be at least 1",
    );
    fails(
        d,
        &["sample", "--model", "m", "--tokens", "100000000000"],
        "--tokens must be at most",
    );
    fails(
        d,
        &["sample", "--model", "m", "--prompt-file", "missing.txt"],
        "cannot read missing.txt",
    );
    fails(
        d,
        &["eval", "--model", "m", "--split", "test"],
        "possible values: val, train",
    );
    fails(
        d,
        &["sample", "--model", "nowhere"],
        "no checkpoint in nowhere: config.json is missing; train one with `chargpt train --out nowhere`",
    );
}

/// Copies checkpoint `from` to `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn damaged_checkpoints() {
    let dir = workspace();
    let d = dir.path();
    let good = train_tiny(d, "good");
    let damaged = |name: &str, damage: &dyn Fn(&Path)| {
        let copy = d.join(name);
        copy_dir(&good, &copy);
        damage(&copy);
    };
    damaged("truncated", &|p| {
        let bytes = std::fs::read(p.join("model.safetensors")).unwrap();
        std::fs::write(p.join("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    });
    damaged("garbage", &|p| {
        let noise: Vec<u8> = (0..4000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        std::fs::write(p.join("model.safetensors"), noise).unwrap();
    });
    damaged("reshaped", &|p| {
        let text = std::fs::read_to_string(p.join("config.json")).unwrap();
        let text = text.replace("\"n_embd\": 16", "\"n_embd\": 32");
        std::fs::write(p.join("config.json"), text).unwrap();
    });
    damaged("renamed", &|p| {
        let mut bytes = std::fs::read(p.join("model.safetensors")).unwrap();
        // Same length, so the header stays valid: only the name changes.
        let at = bytes
            .windows(14)
            .position(|w| w == b"lm_head.weight")
            .unwrap();
        bytes[at..at + 14].copy_from_slice(b"lm_head.weighs");
        std::fs::write(p.join("model.safetensors"), bytes).unwrap();
    });
    damaged("badjson", &|p| {
        std::fs::write(
            p.join("config.json"),
            "{\"format\": \"chargpt-1\", \"model\": ",
        )
        .unwrap();
    });
    damaged("nomodel", &|p| {
        std::fs::remove_file(p.join("model.safetensors")).unwrap();
    });
    for cmd in ["sample", "eval"] {
        fails(
            d,
            &[cmd, "--model", "truncated"],
            "model.safetensors is corrupt or truncated",
        );
        fails(
            d,
            &[cmd, "--model", "garbage"],
            "model.safetensors is corrupt or truncated",
        );
        fails(
            d,
            &[cmd, "--model", "reshaped"],
            "tensor token_embedding.weight has shape [30, 16], the config needs [30, 32]",
        );
        fails(
            d,
            &[cmd, "--model", "renamed"],
            "tensor lm_head.weight is missing",
        );
        fails(
            d,
            &[cmd, "--model", "badjson"],
            "config.json is corrupt or truncated",
        );
        fails(
            d,
            &[cmd, "--model", "nomodel"],
            "model.safetensors is missing",
        );
    }
    let resume = |name: &'static str| vec!["train", "--resume", "--out", name, "--set", "steps=20"];
    fails(d, &resume("truncated"), "corrupt or truncated");
    fails(
        d,
        &resume("renamed"),
        "retrain, or restore both from one run",
    );
    fails(
        d,
        &["train", "--resume", "--out", "nothing"],
        "nothing to resume: nothing holds no checkpoint",
    );
    fails(
        d,
        &["train", "--resume", "--out", "good"],
        "already finished its 10 steps; continue it with --set steps=N",
    );
    fails(
        d,
        &["train", "--resume", "--out", "good", "--set", "n_embd=32"],
        "cannot change n_embd (the checkpoint has 16) when resuming",
    );
    // The undamaged original still works.
    chargpt(d)
        .args(["eval", "--model", "good"])
        .assert()
        .success();
}

#[test]
fn an_existing_checkpoint_is_never_overwritten_by_a_new_run() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "m");
    let before = std::fs::read(d.join("m/model.safetensors")).unwrap();
    fails(
        d,
        &train_args(&["--data", "small.txt", "--out", "m"]),
        "m already holds a checkpoint (step 10); continue it with --resume",
    );
    assert_eq!(
        before,
        std::fs::read(d.join("m/model.safetensors")).unwrap()
    );
}

#[test]
fn an_unwritable_output_directory_fails_before_training() {
    let dir = workspace();
    let d = dir.path();
    // Tests may run as root, which ignores permission bits; a path under a regular file cannot
    // be created by anyone.
    std::fs::write(d.join("file"), "x").unwrap();
    fails(
        d,
        &train_args(&["--data", "small.txt", "--out", "file/run"]),
        "cannot write to the output directory file/run: ",
    );
}

#[test]
fn a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint() {
    let dir = workspace();
    let d = dir.path();
    // From scratch: nothing to keep, nothing written but the metrics so far.
    let err = fails(
        d,
        &train_args(&[
            "--data",
            "small.txt",
            "--out",
            "blowup",
            "--set",
            "learning_rate=1e6",
        ]),
        "nothing was saved yet (try a lower learning_rate",
    );
    assert!(err.contains("the loss became NaN in step "), "{err}");
    assert!(!d.join("blowup/model.safetensors").exists());

    // Continuing a good run with a learning rate that blows up: the good checkpoint survives.
    train_tiny(d, "good");
    let before = std::fs::read(d.join("good/model.safetensors")).unwrap();
    fails(
        d,
        &[
            "train",
            "--resume",
            "--out",
            "good",
            "--set",
            "steps=40",
            "--set",
            "learning_rate=1e6",
        ],
        "training stopped, the checkpoint of step 10 in good is kept",
    );
    assert_eq!(
        before,
        std::fs::read(d.join("good/model.safetensors")).unwrap()
    );
    chargpt(d)
        .args(["eval", "--model", "good"])
        .assert()
        .success()
        .stdout(contains("val loss"));
    // And it still resumes.
    chargpt(d)
        .args(["train", "--resume", "--out", "good", "--set", "steps=15"])
        .assert()
        .success()
        .stdout(contains("resuming"));
}

#[test]
fn fine_tuning_on_new_text() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "base");
    std::fs::write(
        d.join("mine.txt"),
        "a lazy dog rests by the brown fox, the quick one.\n".repeat(40),
    )
    .unwrap();
    std::fs::write(
        d.join("foreign.txt"),
        "Über den Fuß\tzum Café, the dog.\n".repeat(40),
    )
    .unwrap();
    fails(
        d,
        &[
            "train",
            "--init-from",
            "base",
            "--data",
            "foreign.txt",
            "--out",
            "ft",
        ],
        "foreign.txt has 6 characters that the model's vocabulary lacks: 'Ü', 'F', 'ß', '\\t', 'C', 'é'; add them to the vocabulary with --unknown-chars extend, or remove them from the text with --unknown-chars drop",
    );
    fails(
        d,
        &[
            "train",
            "--init-from",
            "base",
            "--data",
            "mine.txt",
            "--out",
            "ft",
            "--set",
            "n_layer=2",
        ],
        "cannot change n_layer (the checkpoint has 1) when fine-tuning",
    );
    fails(
        d,
        &[
            "train",
            "--init-from",
            "base",
            "--data",
            "mine.txt",
            "--out",
            "base",
        ],
        "fine-tuning would overwrite the model it starts from",
    );
    chargpt(d)
        .args([
            "train",
            "--init-from",
            "base",
            "--data",
            "mine.txt",
            "--out",
            "ft",
            "--set",
            "steps=6",
            "--set",
            "dropout=0.1",
        ])
        .assert()
        .success();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("ft/config.json")).unwrap()).unwrap();
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("base/config.json")).unwrap()).unwrap();
    assert_eq!(config["vocab"], base["vocab"]);
    assert_eq!(config["step"], 6);
    assert_eq!(config["model"]["dropout"], 0.1);
    // The text and the parent are recorded as absolute paths, so `eval` works from anywhere.
    let source = config["data"]["source"].as_str().unwrap();
    assert!(
        Path::new(source).is_absolute() && source.ends_with("mine.txt"),
        "{source}"
    );
    let parent = &config["init_from"];
    assert_eq!(parent["step"], base["step"]);
    assert!(
        Path::new(parent["dir"].as_str().unwrap()).is_absolute(),
        "{parent}"
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let model = d.join("ft");
    common::succeeds(
        elsewhere.path(),
        &["eval", "--model", model.to_str().unwrap()],
    );
}

#[test]
fn fine_tuning_extends_or_drops_unknown_characters() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "base");
    let foreign = "Über den Fuß\tzum Café, the dog.\n".repeat(40);
    std::fs::write(d.join("foreign.txt"), &foreign).unwrap();
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("base/config.json")).unwrap()).unwrap();
    let base_vocab: Vec<String> = serde_json::from_value(base["vocab"].clone()).unwrap();

    // vocab lists the model's characters and what the text adds.
    let listed = common::succeeds(d, &["vocab", "--model", "base", "--data", "foreign.txt"]);
    assert!(
        listed.contains(&format!("base has {} characters", base_vocab.len())),
        "{listed}"
    );
    assert!(listed.contains("6 kinds (240 characters"), "{listed}");
    assert!(listed.contains("'\\t' 40"), "{listed}");

    // The choice belongs to fine-tuning; elsewhere the advice fits what the text is for.
    fails(
        d,
        &[
            "train",
            "--data",
            "foreign.txt",
            "--unknown-chars",
            "extend",
        ],
        "--init-from",
    );
    fails(
        d,
        &["eval", "--model", "base", "--data", "foreign.txt"],
        "evaluate on a text of the model's characters only (`chargpt vocab --model base",
    );

    let ft_from = |from: &str, policy: &str, out: &str| {
        let output = chargpt(d)
            .args([
                "train",
                "--init-from",
                from,
                "--data",
                "foreign.txt",
                "--out",
                out,
                "--unknown-chars",
                policy,
                "--set",
                "steps=4",
                "--threads",
                "1",
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{policy}: {stderr}");
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join(out).join("config.json")).unwrap())
                .unwrap();
        (stderr, config)
    };
    let ft = |policy: &str, out: &str| ft_from("base", policy, out);
    let (stderr, config) = ft("extend", "ext");
    assert!(
        stderr.contains("extending the vocabulary by 6 characters"),
        "{stderr}"
    );
    let vocab: Vec<String> = serde_json::from_value(config["vocab"].clone()).unwrap();
    // The old ids keep their characters; the new ones follow, sorted.
    assert_eq!(&vocab[..base_vocab.len()], &base_vocab[..]);
    assert_eq!(&vocab[base_vocab.len()..], ["\t", "C", "F", "Ü", "ß", "é"]);
    assert_eq!(config["model"]["vocab_size"], vocab.len());
    assert_eq!(
        config["init_from"]["added_chars"].as_array().unwrap().len(),
        6
    );
    // The extended model samples from and evaluates on the new characters.
    common::succeeds(
        d,
        &[
            "sample", "--model", "ext", "--prompt", "Café", "--tokens", "5",
        ],
    );
    common::succeeds(d, &["eval", "--model", "ext"]);

    let (stderr, config) = ft("drop", "drop");
    assert!(
        stderr.contains("dropped 240 characters of 6 kinds from"),
        "{stderr}"
    );
    assert_eq!(config["vocab"], base["vocab"]);
    assert_eq!(config["init_from"]["dropped_chars"], 240);

    // A tied model (the default's head) extends too: its new rows are the mean of the old ones.
    let args = train_args(&[
        "--data",
        "small.txt",
        "--out",
        "tied",
        "--set",
        "tie_embeddings=true",
    ]);
    chargpt(d).args(&args).assert().success();
    let tied: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("tied/config.json")).unwrap()).unwrap();
    let tied_vocab = tied["vocab"].as_array().unwrap().len();
    let (stderr, config) = ft_from("tied", "extend", "tied-ext");
    assert!(stderr.contains("extending the vocabulary by"), "{stderr}");
    assert!(config["vocab"].as_array().unwrap().len() > tied_vocab);
    common::succeeds(d, &["eval", "--model", "tied-ext"]);
}

#[test]
fn eval_names_the_split_and_what_can_change() {
    let dir = workspace();
    let d = dir.path();
    train_tiny(d, "base");
    std::fs::write(d.join("three.txt"), "the").unwrap();
    fails(
        d,
        &["eval", "--model", "base", "--data", "three.txt"],
        "the val split of",
    );
    let err = fails(
        d,
        &[
            "eval",
            "--model",
            "base",
            "--data",
            "three.txt",
            "--split",
            "train",
        ],
        "the train split of",
    );
    assert!(
        err.contains("a trained model's block_size cannot change"),
        "{err}"
    );
}

/// Trains `layernorm` in `dir` (out `run`, one thread, an evaluation every 50 steps) with `extra`
/// arguments, interrupts it as a terminal's Ctrl-C would once step 100 is printed, and returns
/// the lines printed after that, having checked that it exited as interrupted (130).
fn interrupted_at_step_100(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["train", "--preset", "layernorm"];
    args.extend_from_slice(extra);
    args.extend([
        "--set",
        "eval_interval=50",
        "--set",
        "eval_iters=2",
        "--out",
        "run",
        "--threads",
        "1",
    ]);
    let mut child = std::process::Command::new(BIN)
        .current_dir(dir)
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 100:") {
            break;
        }
    }
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest:?}");
    rest
}

#[test]
fn ctrl_c_saves_and_the_run_resumes() {
    let dir = workspace();
    let d = dir.path();
    let rest = interrupted_at_step_100(d, &[]);
    let last = rest.last().unwrap();
    assert!(
        last.starts_with("stopped at step ") && last.contains("--resume --out run"),
        "{last}"
    );
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("run/config.json")).unwrap()).unwrap();
    let step = config["step"].as_u64().unwrap();
    assert!((100..5000).contains(&step), "{step}");
    // No temporary files are left, and the run continues from where it stopped.
    for entry in std::fs::read_dir(d.join("run")).unwrap() {
        let name = entry.unwrap().file_name();
        assert!(!name.to_string_lossy().contains(".tmp-"), "{name:?}");
    }
    let target = format!("steps={}", step + 10);
    chargpt(d)
        .args(["train", "--resume", "--out", "run", "--set", &target])
        .assert()
        .success()
        .stdout(contains(format!("resuming layernorm at step {step}")));
}

/// A budgeted run stopped by Ctrl-C says it was stopped, not that its budget ran out (which
/// told the learner the machine had slowed down). Its steps are set from the pace after its
/// warm-up (`calibration_steps`: 100 steps for `layernorm`), before step 100's evaluation line.
#[test]
fn ctrl_c_in_a_budgeted_run_is_not_reported_as_the_budget_running_out() {
    let dir = workspace();
    let rest = interrupted_at_step_100(dir.path(), &["--time", "10m"]);
    assert!(
        rest.iter().any(|l| l.starts_with("time budget 10m: ")),
        "{rest:?}"
    );
    assert!(
        !rest.iter().any(|l| l.contains("budget ran out")),
        "{rest:?}"
    );
    assert!(
        rest.last().unwrap().starts_with("stopped at step "),
        "{rest:?}"
    );
}

/// `precision=bf16` on a CPU without AVX512_BF16 is a one-line error naming the way out (on one
/// with it, the setting trains; tests/resume.rs covers bf16 runs on either).
#[test]
fn bf16_without_the_instruction_is_refused_in_one_line() {
    if chargpt::runtime::has_avx512_bf16() {
        return;
    }
    let dir = common::workspace();
    for args in [
        &["train", "--preset", "layernorm", "--set", "precision=bf16"][..],
        &["bench", "--preset", "layernorm", "--set", "precision=bf16"][..],
    ] {
        let shown = common::fails(dir.path(), args, "AVX512_BF16");
        assert!(shown.contains("precision=fp32"), "{shown}");
    }
}

/// `--engine reference` trains, evaluates and samples as the fast engine does: the same
/// checkpoint format, the same losses up to float rounding, the same greedy text.
#[test]
fn the_reference_engine_trains_evaluates_and_samples_like_the_fast_one() {
    let dir = workspace();
    let train = |engine: &str, out: &str| {
        let args = train_args(&[
            "--data",
            "small.txt",
            "--out",
            out,
            "--set",
            "dropout=0.1",
            "--engine",
            engine,
        ]);
        chargpt(dir.path()).args(&args).assert().success();
        let config: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join(out).join("config.json")).unwrap(),
        )
        .unwrap();
        config["final_val_loss"].as_f64().unwrap()
    };
    let (fast, reference) = (train("fast", "fast"), train("reference", "ref"));
    assert!(
        ((fast - reference) / fast).abs() < 1e-4,
        "final val loss {fast} (fast) vs {reference} (reference)"
    );
    let eval = |engine: &str| {
        let out = chargpt(dir.path())
            .args(["eval", "--model", "ref", "--json", "--engine", engine])
            .output()
            .unwrap();
        assert!(out.status.success());
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        json["loss"].as_f64().unwrap()
    };
    let (a, b) = (eval("fast"), eval("reference"));
    assert!(
        ((a - b) / b).abs() < 1e-5,
        "eval {a} (fast) vs {b} (reference)"
    );
    assert!(
        (b - reference).abs() < 1e-9,
        "eval {b} vs the run's own {reference}"
    );
    let sample = |engine: &str| {
        let out = chargpt(dir.path())
            .args([
                "sample", "--model", "ref", "--prompt", "the ", "--tokens", "30",
            ])
            .args(["--top-k", "1", "--engine", engine])
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(sample("fast"), sample("reference"));
    fails(
        dir.path(),
        &["eval", "--model", "ref", "--engine", "slow"],
        "invalid value 'slow'",
    );
}

#[test]
fn a_second_trainer_of_the_same_directory_is_refused_and_the_lock_dies_with_the_first() {
    let dir = workspace();
    let d = dir.path();
    let mut first = std::process::Command::new(BIN)
        .current_dir(d)
        .args([
            "train",
            "--preset",
            "layernorm",
            "--set",
            "eval_interval=50",
            "--set",
            "eval_iters=2",
            "--out",
            "run",
            "--threads",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    // By step 50 the first run holds the lock and has saved a checkpoint.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("step 50:") {
            break;
        }
    }
    let message = format!("run is being trained by process {}", first.id());
    fails(
        d,
        &train_args(&["--data", "small.txt", "--out", "run"]),
        &message,
    );
    fails(d, &["train", "--resume", "--out", "run"], &message);
    // kill -9: the operating system releases the lock, and the run resumes from its checkpoint.
    first.kill().unwrap();
    first.wait().unwrap();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.join("run/config.json")).unwrap()).unwrap();
    let step = config["step"].as_u64().unwrap();
    let target = format!("steps={}", step + 5);
    chargpt(d)
        .args(["train", "--resume", "--out", "run", "--set", &target])
        .assert()
        .success()
        .stdout(contains(format!("resuming layernorm at step {step}")));
}

/// A build without the `mpi` feature started by mpirun (which sets OMPI_COMM_WORLD_SIZE and a
/// rank in every process) refuses in one line instead of training the same run N times over.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_the_mpi_feature_mpirun_gets_a_one_line_refusal() {
    let dir = workspace();
    let d = dir.path();
    let output = chargpt(d)
        .args(train_args(&["--data", "small.txt", "--out", "run"]))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--features mpi"), "{stderr}");
    assert!(!d.join("run").exists());
    // The other ranks say nothing: one line for the whole job.
    let output = chargpt(d)
        .args(train_args(&["--data", "small.txt", "--out", "run"]))
        .env("PMI_SIZE", "2")
        .env("PMI_RANK", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stderr.is_empty());
}

/// `--time` trains for a duration: the steps are set from the pace after the first few, the run
/// ends inside the budget (its final exact evaluation included), and config.json records the
/// budget and the steps; a duration that is not one is a one-line error.
#[test]
fn train_for_a_time_budget() {
    let dir = workspace();
    let t0 = std::time::Instant::now();
    let args = train_args(&["--data", "small.txt", "--out", "timed", "--time", "3s"]);
    let out = chargpt(dir.path()).args(&args).assert().success();
    let seconds = t0.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.get_output().stdout).to_string();
    assert!(stdout.contains("time budget 3s: "), "{stdout}");
    // (The process's start and the final sample are outside the run's own clock; a slack for a
    // machine busy with other tests.)
    assert!(seconds < 3.0 + 3.0, "{seconds} s for --time 3s");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("timed/config.json")).unwrap())
            .unwrap();
    let train = &config["train"];
    assert_eq!(train["time_budget"], 3.0, "{train}");
    // The layernorm rung has no warm-up: its steps are set after 3 timed steps.
    assert_eq!(train["budget_fixed_at"], 3, "{train}");
    assert!(
        train["steps"].as_u64().unwrap() > 10,
        "--time wins over --set steps=10: {train}"
    );
    // (At most: a machine that slows after the steps are set ends the run early.)
    assert!(
        config["step"].as_u64() <= train["steps"].as_u64(),
        "{config}"
    );
    let shown = common::fails(
        dir.path(),
        &["train", "--time", "soon", "--out", "never"],
        "write e.g. 90s, 20m, 1h or 1h30m",
    );
    assert!(shown.starts_with("error: --time soon: "), "{shown}");
}
