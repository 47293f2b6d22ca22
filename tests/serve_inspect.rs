//! `chargpt serve`'s inspection endpoints, through a real server: the numbers on the wire are
//! the model's own (the same as `chargpt attention --json`, `chargpt eval --json` and the
//! library's functions on the same checkpoint), the diagram counts every parameter of every
//! preset, each evaluation's probe record is there for the replay, and every bad input is a 4xx
//! with a clear message. The library's tests (src/inspect/) cover the maths; these cover the
//! endpoints. Tiny models: the whole file takes a few seconds.

mod common;

use chargpt::checkpoint;
use chargpt::inspect;
use chargpt::sampling::SampleSettings;
use common::server::{request, Server, TOKEN};
use common::{chargpt, succeeds, workspace};
use serde_json::{json, Value};
use std::path::Path;

/// Trains a 2-layer, 4-head model with block 16 on `small.txt` into `runs/NAME` (its probe
/// records too, at steps 0, 10, 20 and 30).
fn train(dir: &Path, name: &str, preset: &str) {
    train_with(dir, name, preset, &[]);
}

/// [`train`] with more `--set KEY=VALUE` settings.
fn train_with(dir: &Path, name: &str, preset: &str, settings: &[&str]) {
    let out = format!("runs/{name}");
    let mut args = vec![
        "train",
        "--preset",
        preset,
        "--data",
        "small.txt",
        "--out",
        out.as_str(),
        "--set",
        "n_layer=2",
        "--set",
        "n_head=4",
        "--set",
        "n_embd=16",
        "--set",
        "block_size=16",
        "--set",
        "steps=30",
        "--set",
        "eval_interval=10",
        "--set",
        "eval_iters=2",
        "--threads",
        "1",
    ];
    for setting in settings {
        args.extend(["--set", *setting]);
    }
    succeeds(dir, &args);
}

const PROMPT: &str = "the quick fox";

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn ok(r: common::server::Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn the_numbers_on_the_wire_are_the_models_own() {
    let dir = workspace();
    let d = dir.path();
    train(d, "tiny", "layernorm");
    let server = Server::start(d, &[]);
    let ckpt = checkpoint::load(&d.join("runs/tiny")).unwrap();
    let ids = ckpt.tokenizer.encode(PROMPT).unwrap();

    // Attention: exactly what `chargpt attention --json` prints for the same model and prompt.
    let r = server.post(
        "/api/runs/tiny/inspect/attention",
        json!({ "prompt": PROMPT }),
    );
    assert!(r
        .header("server-timing")
        .unwrap()
        .starts_with("inspect;dur="));
    let att = ok(r);
    assert_eq!(
        (att["step"].as_u64(), att["live"].as_bool()),
        (Some(30), Some(false))
    );
    let cli: Value = serde_json::from_str(&succeeds(
        d,
        &[
            "attention",
            "--model",
            "runs/tiny",
            "--prompt",
            PROMPT,
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(att["tokens"], cli["tokens"]);
    let (layers, heads) = (
        cli["n_layer"].as_u64().unwrap(),
        cli["n_head"].as_u64().unwrap(),
    );
    assert_eq!((layers, heads), (2, 4));
    let t_n = PROMPT.len();
    for l in 0..layers as usize {
        for h in 0..heads as usize {
            for t in 0..t_n {
                let wire = floats(&att["weights"][l][h][t]);
                let printed = floats(&cli["layers"][l][h][t]);
                assert_eq!(wire.len(), t + 1, "the row holds keys 0..=t");
                assert_eq!(&wire[..], &printed[..=t], "layer {l} head {h} row {t}");
                assert!(
                    printed[t + 1..].iter().all(|&w| w == 0.0),
                    "the causal mask"
                );
            }
        }
    }
    let summary = &att["heads"][1][2];
    let expected = inspect::attention(&ckpt.model, &ids).unwrap().summary(1, 2);
    assert!((summary["look_back"].as_f64().unwrap() - expected.look_back).abs() < 1e-9);

    // Next character: inspect::next_char_probs' last row, at the settings asked, summing to 1;
    // and the logits the page reshapes.
    for (temperature, top_k) in [(1.0f32, None), (0.7, Some(5usize))] {
        let next = ok(server.post(
            "/api/runs/tiny/inspect/next",
            json!({ "prompt": PROMPT, "temperature": temperature, "top_k": top_k }),
        ));
        let probs = floats(&next["probs"]);
        let settings = SampleSettings { temperature, top_k };
        let library = inspect::next_char_probs(&ckpt.model, &ids, settings).unwrap();
        let v = ckpt.tokenizer.vocab_size();
        assert_eq!(&probs[..], &library[(t_n - 1) * v..]);
        let sum: f64 = probs.iter().map(|&p| p as f64).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
        if let Some(k) = top_k {
            assert_eq!(probs.iter().filter(|&&p| p > 0.0).count(), k);
        }
        let logits = inspect::next_char_logits(&ckpt.model, &ids).unwrap();
        assert_eq!(floats(&next["logits"]), &logits[(t_n - 1) * v..]);
        assert_eq!(next["vocab"].as_array().unwrap().len(), v);
    }

    // Surprise: the mean over the val split of small.txt is `chargpt eval`'s loss on it.
    let text = std::fs::read_to_string(d.join("small.txt")).unwrap();
    let n = (0.9 * text.chars().count() as f64) as usize;
    let val: String = text.chars().skip(n).collect();
    let scored = ok(server.post("/api/runs/tiny/inspect/surprise", json!({ "text": val })));
    let eval: Value = serde_json::from_str(&succeeds(
        d,
        &[
            "eval",
            "--model",
            "runs/tiny",
            "--data",
            "small.txt",
            "--json",
        ],
    ))
    .unwrap();
    let mean = scored["mean"].as_f64().unwrap();
    assert!(
        (mean - eval["loss"].as_f64().unwrap()).abs() < 1e-5,
        "surprise {mean} vs eval {}",
        eval["loss"]
    );
    assert_eq!(
        scored["losses"].as_array().unwrap().len() as u64,
        eval["tokens"].as_u64().unwrap()
    );
    assert_eq!(scored["windows"], eval["windows"]);
    let losses = floats(&scored["losses"]);
    let average = losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64;
    assert!(
        (average - mean).abs() < 1e-6,
        "the mean is the losses' mean"
    );
    // ...and an excerpt of the run's own val split (small.txt, as its config records it).
    let excerpt = ok(server.post(
        "/api/runs/tiny/inspect/surprise",
        json!({ "offset": 10, "windows": 3 }),
    ));
    assert_eq!(excerpt["source"], "val");
    assert_eq!(
        excerpt["text"].as_str().unwrap().chars().count(),
        3 * 16 + 1
    );
    assert_eq!(excerpt["text"].as_str().unwrap(), &val[10..10 + 49]);

    // One head, step by step: its softmax and output are the forward pass's slice.
    let (layer, head, position) = (1, 2, 7);
    let trace = ok(server.post(
        "/api/runs/tiny/inspect/head",
        json!({ "prompt": PROMPT, "layer": layer, "head": head, "position": position }),
    ));
    let step = |id: &str| -> &Value {
        trace["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no step {id} in {}", trace["steps"]))
    };
    let ids_of: Vec<&str> = trace["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids_of,
        [
            "input",
            "layernorm",
            "q",
            "k",
            "v",
            "dots",
            "scale",
            "mask",
            "softmax",
            "output"
        ]
    );
    let (weights, output) =
        inspect::forward_head_slices(&ckpt.model, &ids, position, layer, head).unwrap();
    for (a, b) in floats(&step("softmax")["values"]).iter().zip(&weights) {
        assert!((a - b).abs() < 1e-6, "weights {a} vs {b}");
    }
    for (a, b) in floats(&step("output")["values"]).iter().zip(&output) {
        assert!((a - b).abs() < 1e-5, "output {a} vs {b}");
    }
    assert_eq!(floats(&trace["forward"]["weights"]), weights);
    assert!(trace["forward"]["weights_diff"].as_f64().unwrap() < 1e-6);
    let library = inspect::head_trace(&ckpt.model, &ids, position, layer, head).unwrap();
    assert_eq!(floats(&step("q")["values"]), library.q);
    assert_eq!(step("k")["shape"], json!([position + 1, 4]));
    let mask = step("mask")["values"].as_array().unwrap();
    assert_eq!(mask.len(), t_n);
    assert!(mask[..=position].iter().all(Value::is_number));
    assert!(
        mask[position + 1..].iter().all(Value::is_null),
        "minus infinity"
    );
    assert_eq!(trace["scale_by"], "head_size");
    assert!(
        (trace["scale"].as_f64().unwrap() - 0.5).abs() < 1e-7,
        "1/sqrt(4)"
    );

    // Embeddings: the library's projection and cosines.
    let emb = ok(server.get("/api/runs/tiny/inspect/embeddings"));
    let map = inspect::embeddings(&ckpt.model);
    let points: Vec<[f32; 2]> = emb["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32])
        .collect();
    assert_eq!(points, map.tokens);
    let cos = floats(&emb["position_cosine"]);
    assert_eq!(cos.len(), 16 * 16);
    for (a, b) in cos.iter().zip(map.position_cosine.as_ref().unwrap()) {
        assert!((a - b).abs() <= 5e-5, "{a} vs {b}");
    }
    // A second request is answered from the first (the same bytes).
    assert_eq!(
        server.get("/api/runs/tiny/inspect/embeddings").body,
        server.get("/api/runs/tiny/inspect/embeddings").body
    );

    // The model's diagram counts every parameter.
    let diagram = ok(server.get("/api/runs/tiny/inspect/model"));
    assert_eq!(
        diagram["parts"]["total_params"].as_u64().unwrap() as usize,
        ckpt.model.num_params()
    );

    // The replay: one probe record per evaluation, as metrics.csv has them.
    let probes = ok(server.get("/api/runs/tiny/probes"));
    let steps: Vec<u64> = probes["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 10, 20, 30]);
    let last = &probes["records"][3];
    assert_eq!(
        last["probe"].as_str().unwrap(),
        &text[..16],
        "no Tiny Shakespeare characters: the val split's first line"
    );
    let later = ok(server.get("/api/runs/tiny/probes?after=10"));
    assert_eq!(later["records"].as_array().unwrap().len(), 2);
    assert_eq!(
        probes["vocab"].as_array().unwrap().len(),
        ckpt.tokenizer.vocab_size()
    );
}

/// Parts before the blocks, one block times n_layer, and the parts after: every parameter.
fn check_parts(parts: &Value) -> u64 {
    let sum = |key: &str| -> u64 {
        parts[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["params"].as_u64().unwrap())
            .sum()
    };
    let total = parts["total_params"].as_u64().unwrap();
    assert_eq!(
        sum("before") + parts["n_layer"].as_u64().unwrap() * sum("block") + sum("after"),
        total,
        "{parts}"
    );
    let tensors: u64 = parts["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["params"].as_u64().unwrap())
        .sum();
    assert_eq!(tensors, total);
    total
}

#[test]
fn every_preset_draws_with_all_its_parameters() {
    let dir = workspace();
    let server = Server::start(dir.path(), &[]);
    let presets = ok(server.get("/api/presets"));
    for p in presets["presets"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let diagram = ok(server.get(&format!("/api/presets/{name}/model")));
        let parts = &diagram["parts"];
        assert_eq!(check_parts(parts), p["params"].as_u64().unwrap(), "{name}");
        let kinds = |key: &str| -> Vec<String> {
            parts[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["kind"].as_str().unwrap().to_string())
                .collect()
        };
        match name {
            "bigram" => {
                assert_eq!(kinds("before"), ["embedding", "softmax"]);
                assert_eq!(parts["n_layer"], 0);
            }
            "single-head" => {
                assert_eq!(kinds("block"), ["attention"]);
                assert_eq!(parts["block"][0]["name"], "self-attention");
                assert_eq!(kinds("after"), ["linear", "softmax"]);
            }
            "layernorm" | "lecture" => {
                assert_eq!(
                    kinds("block"),
                    [
                        "norm",
                        "attention",
                        "residual",
                        "norm",
                        "feed-forward",
                        "residual"
                    ]
                );
                assert_eq!(kinds("after"), ["norm", "linear", "softmax"]);
            }
            _ => {}
        }
    }
    let lecture = ok(server.get("/api/presets/lecture/model"));
    assert_eq!(lecture["parts"]["n_layer"], 6);
    assert_eq!(lecture["parts"]["total_params"], 10_788_929);
    let r = server.get("/api/presets/gpt5/model");
    assert_eq!(r.status, 404);
    assert!(
        r.error().starts_with("unknown preset \"gpt5\""),
        "{}",
        r.error()
    );
}

#[test]
fn bad_inspections_are_refused_with_a_clear_message() {
    let dir = workspace();
    let d = dir.path();
    train(d, "tiny", "layernorm");
    train(d, "pairs", "bigram");
    std::fs::create_dir_all(d.join("runs/empty")).unwrap();
    let server = Server::start(d, &[]);
    // The command line's words for characters the model lacks.
    let cli = chargpt(d)
        .args(["attention", "--model", "runs/tiny", "--prompt", "ROMEO"])
        .output()
        .unwrap();
    let cli_error = String::from_utf8_lossy(&cli.stderr)
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    assert!(cli_error.contains("lacks"), "{cli_error}");
    let long_text = "the quick brown fox. ".repeat(400);
    let cases: Vec<(&str, &str, Value, u16, &str)> = vec![
        ("POST", "/api/runs/tiny/inspect/next", json!({ "prompt": "" }), 400, "the prompt is empty; give at least one character"),
        ("POST", "/api/runs/tiny/inspect/attention", json!({}), 400, "the prompt is empty"),
        ("POST", "/api/runs/tiny/inspect/next", json!({ "prompt": "ROMEO" }), 400, &cli_error),
        ("POST", "/api/runs/tiny/inspect/head", json!({ "prompt": "ROMEO" }), 400, &cli_error),
        ("POST", "/api/runs/tiny/inspect/next", json!({ "prompt": "the", "temperature": -0.5 }), 400, "temperature must lie between 0 and 100 (0 always takes the most likely character; above 10 the text is noise), got -0.5"),
        ("POST", "/api/runs/tiny/inspect/next", json!({ "prompt": "the", "top_k": 0 }), 400, "top_k must be at least 1"),
        ("POST", "/api/runs/pairs/inspect/attention", json!({ "prompt": "the" }), 400, "a bigram model has no attention (each prediction depends on the current character only)"),
        ("POST", "/api/runs/pairs/inspect/head", json!({ "prompt": "the" }), 400, "a bigram model has no attention"),
        ("POST", "/api/runs/tiny/inspect/head", json!({ "prompt": "the", "layer": 2 }), 400, "layer 2 does not exist: the model has 2 (0 to 1)"),
        ("POST", "/api/runs/tiny/inspect/head", json!({ "prompt": "the", "head": 4 }), 400, "head 4 does not exist: each layer has 4 (0 to 3)"),
        ("POST", "/api/runs/tiny/inspect/head", json!({ "prompt": "the", "position": 3 }), 400, "position 3 is outside the text of 3 characters (0 to 2)"),
        ("POST", "/api/runs/tiny/inspect/head", json!({ "prompt": "the", "layer": -1 }), 400, "malformed JSON in the request body: invalid value: integer `-1`"),
        ("POST", "/api/runs/tiny/inspect/attention", json!({ "prompt": "the", "colour": 1 }), 400, "unknown field `colour`"),
        ("POST", "/api/runs/tiny/inspect/surprise", json!({ "text": "the quick" }), 400, "the text has 9 characters; scoring needs at least 17 (a window of block_size 16 and the character after it)"),
        ("POST", "/api/runs/tiny/inspect/surprise", json!({ "text": "THE QUICK" }), 400, "the text has 8 characters that the model's vocabulary lacks: 'T', 'H', 'E', 'Q', 'U', 'I', 'C', 'K'; use only characters of the text it was trained on"),
        ("POST", "/api/runs/tiny/inspect/surprise", json!({ "text": long_text }), 400, "the text has 8400 characters; the surprise view scores at most 4097 at once (256 windows of 16); paste a shorter text"),
        ("POST", "/api/runs/tiny/inspect/surprise", json!({ "windows": 0 }), 400, "windows must be at least 1"),
        ("POST", "/api/runs/tiny/inspect/surprise", json!({ "offset": 100000 }), 400, "offset 100000 leaves too little of the val split"),
        ("POST", "/api/runs/none/inspect/next", json!({ "prompt": "the" }), 404, "no run none: the runs directory has no such run"),
        ("GET", "/api/runs/none/inspect/embeddings", json!(null), 404, "no run none"),
        ("GET", "/api/runs/none/inspect/model", json!(null), 404, "no run none"),
        ("GET", "/api/runs/none/probes", json!(null), 404, "no run none"),
        ("POST", "/api/runs/empty/inspect/next", json!({ "prompt": "the" }), 409, "run empty has no checkpoint yet"),
        ("GET", "/api/runs/..%2Fetc/inspect/embeddings", json!(null), 400, "invalid run name \"../etc\""),
        ("GET", "/api/runs/tiny/inspect/attention", json!(null), 405, "method not allowed"),
    ];
    for (method, path, body, status, message) in cases {
        let r = if method == "GET" {
            server.get(path)
        } else {
            server.post(path, body.clone())
        };
        assert_eq!(r.status, status, "{method} {path} {body}: {}", r.text());
        let error = r.error();
        assert!(
            error.contains(message),
            "{method} {path} {body}:\n  got      {error}\n  expected {message}"
        );
    }
    // The field a refusal is about, for the page to show it beside.
    let r = server.post(
        "/api/runs/tiny/inspect/head",
        json!({ "prompt": "the", "head": 9 }),
    );
    assert_eq!(r.json()["field"], "head");
    // The same guard as the rest of the API: the token, this server's Origin, the size limit.
    let host = server.host();
    let body = json!({ "prompt": "the" }).to_string();
    let r = request(
        &host,
        "POST",
        "/api/runs/tiny/inspect/next",
        &[],
        body.as_bytes(),
    );
    assert_eq!(r.status, 401);
    let cookie = format!("chargpt-token-{}={TOKEN}", server.port);
    let r = request(
        &host,
        "POST",
        "/api/runs/tiny/inspect/next",
        &[("Cookie", &cookie), ("Origin", "http://evil.example")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 403, "{}", r.text());
    let huge = json!({ "prompt": "a".repeat(70 * 1024) });
    let r = server.post("/api/runs/tiny/inspect/next", huge);
    assert_eq!(r.status, 413);
    // A prompt longer than block_size keeps its last block_size characters, as the CLI does.
    let long = "the quick brown fox jumps";
    let r = ok(server.post(
        "/api/runs/tiny/inspect/attention",
        json!({ "prompt": long }),
    ));
    assert_eq!(r["dropped"].as_u64(), Some(long.len() as u64 - 16));
    assert_eq!(r["len"], 16);
}

/// A model with every setting beyond the lecture (RoPE, RMSNorm, QK-norm, tied embeddings, no
/// biases): the head's steps show the query before and after QK-norm and rotation and still
/// equal the forward pass, the attention is `chargpt attention --json`'s, the embeddings say
/// there is no position table, and the diagram counts the shared table once.
#[test]
fn a_modern_model_is_looked_inside_as_it_computes() {
    let dir = workspace();
    let d = dir.path();
    let modern = [
        "position=rope",
        "norm=rms",
        "qk_norm=true",
        "tie_embeddings=true",
        "bias=false",
        "activation=relu2",
    ];
    train_with(d, "modern", "layernorm", &modern);
    let server = Server::start(d, &[]);
    let ckpt = checkpoint::load(&d.join("runs/modern")).unwrap();
    let ids = ckpt.tokenizer.encode(PROMPT).unwrap();

    let (layer, head, position) = (1, 3, 9);
    let trace = ok(server.post(
        "/api/runs/modern/inspect/head",
        json!({ "prompt": PROMPT, "layer": layer, "head": head, "position": position }),
    ));
    let steps = trace["steps"].as_array().unwrap();
    let ids_of: Vec<&str> = steps.iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids_of,
        [
            "input", "rmsnorm", "q_linear", "q", "k", "v", "dots", "scale", "mask", "softmax",
            "output"
        ]
    );
    assert_eq!(
        (&trace["qk_norm"], &trace["rope"], &trace["norm_bias"]),
        (&json!(true), &json!(true), &json!(false))
    );
    let library = inspect::head_trace(&ckpt.model, &ids, position, layer, head).unwrap();
    assert_eq!(floats(&steps[2]["values"]), library.q_linear);
    assert_eq!(floats(&steps[3]["values"]), library.q);
    assert_ne!(library.q_linear, library.q, "normed and turned");
    let (weights, output) =
        inspect::forward_head_slices(&ckpt.model, &ids, position, layer, head).unwrap();
    for (a, b) in floats(&steps[9]["values"]).iter().zip(&weights) {
        assert!((a - b).abs() < 1e-6, "weights {a} vs {b}");
    }
    for (a, b) in floats(&steps[10]["values"]).iter().zip(&output) {
        assert!((a - b).abs() < 1e-5, "output {a} vs {b}");
    }

    let att = ok(server.post(
        "/api/runs/modern/inspect/attention",
        json!({ "prompt": PROMPT }),
    ));
    let cli: Value = serde_json::from_str(&succeeds(
        d,
        &[
            "attention",
            "--model",
            "runs/modern",
            "--prompt",
            PROMPT,
            "--json",
        ],
    ))
    .unwrap();
    for t in 0..PROMPT.len() {
        let wire = floats(&att["weights"][1][2][t]);
        assert_eq!(&wire[..], &floats(&cli["layers"][1][2][t])[..=t]);
    }

    let emb = ok(server.get("/api/runs/modern/inspect/embeddings"));
    assert_eq!(emb["positions"], "rope");
    assert_eq!(emb["tied"], true);
    assert!(emb["position_cosine"].is_null());
    assert_eq!(
        emb["points"].as_array().unwrap().len(),
        ckpt.tokenizer.vocab_size()
    );

    let diagram = ok(server.get("/api/runs/modern/inspect/model"));
    let parts = &diagram["parts"];
    assert_eq!(check_parts(parts) as usize, ckpt.model.num_params());
    assert_eq!(parts["block"][0]["name"], "RMSNorm");
    assert_eq!(
        parts["before"].as_array().unwrap().len(),
        1,
        "no position table"
    );

    let next = ok(server.post("/api/runs/modern/inspect/next", json!({ "prompt": PROMPT })));
    let sum: f64 = floats(&next["probs"]).iter().map(|&p| p as f64).sum();
    assert!((sum - 1.0).abs() < 1e-5);
    let probes = ok(server.get("/api/runs/modern/probes"));
    let records = probes["records"].as_array().unwrap();
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r["position_cosine"].is_null()));
}
