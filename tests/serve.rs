//! `chargpt serve`'s API, through a real server on an ephemeral port: a run started, followed to
//! its end over server-sent events, stopped, resumed and sampled; every bad input refused with a
//! 4xx, a JSON `{"error": ...}` and the command line's words; Ctrl-C and kill -9 never cost a
//! checkpoint. Models are tiny, so the whole file takes a few seconds.

mod common;

use common::server::{request, Server, TOKEN};
use common::{chargpt, fails, workspace};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// A tiny transformer that trains in milliseconds.
fn tiny(steps: usize) -> Value {
    json!({
        "n_layer": 1, "n_embd": 16, "steps": steps, "eval_iters": 2, "eval_interval": 20,
        "batch_size": 8,
    })
}

/// A run that lasts until it is stopped (about a minute on one thread): wider and longer
/// sequences, so that a step takes a fraction of a millisecond rather than a few microseconds.
fn long() -> Value {
    json!({
        "n_layer": 1, "n_embd": 32, "block_size": 32, "batch_size": 32, "steps": 100_000,
        "eval_iters": 2, "eval_interval": 100,
    })
}

fn upload_small(server: &Server, dir: &Path) -> String {
    let text = std::fs::read(dir.join("small.txt")).unwrap();
    let r = server.call("POST", "/api/uploads?filename=small.txt", &text);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_string()
}

fn start(server: &Server, name: &str, settings: Value, upload: Option<&str>) -> Value {
    let mut body = json!({ "name": name, "preset": "layernorm", "settings": settings });
    if let Some(id) = upload {
        body["upload"] = id.into();
    }
    let r = server.post("/api/runs", body);
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn run_summary(server: &Server, name: &str) -> Value {
    let runs = server.get("/api/runs").json();
    runs["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("{name} not listed: {runs}"))
}

/// Waits until `check` holds, up to 30 s.
fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_run_streams_every_step_and_evaluation_to_its_end_then_samples_as_the_cli_does() {
    let dir = workspace();
    let d = dir.path();
    let server = Server::start(d, &[]);
    assert_eq!(
        server.first_line,
        format!(
            "chargpt serve: http://127.0.0.1:{}/?token={TOKEN}",
            server.port
        )
    );
    let upload = upload_small(&server, d);
    let started = start(&server, "tiny", tiny(60), Some(&upload));
    assert_eq!(
        (started["step"].as_u64(), started["steps"].as_u64()),
        (Some(0), Some(60))
    );
    let events = server.events("tiny");
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"start"));
    assert_eq!(names.last(), Some(&"finished"), "{names:?}");
    // Every step exactly once, in order, as steps.csv has them.
    let steps: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "step")
        .flat_map(|(_, d)| d.as_array().unwrap())
        .collect();
    let numbers: Vec<u64> = steps.iter().map(|s| s["step"].as_u64().unwrap()).collect();
    assert_eq!(numbers, (1..=60).collect::<Vec<_>>());
    let csv = chargpt::runs::read_steps(&d.join("runs/tiny/steps.csv"));
    for (event, row) in steps.iter().zip(&csv) {
        assert_eq!(event["loss"].as_f64().unwrap() as f32, row.loss);
    }
    // Evaluations at 0, 20, 40 and 60, each with its sample, as metrics.csv and samples.txt hold.
    let evals: Vec<&Value> = events
        .iter()
        .filter(|(n, _)| n == "eval")
        .map(|(_, d)| d)
        .collect();
    let eval_steps: Vec<u64> = evals.iter().map(|e| e["step"].as_u64().unwrap()).collect();
    assert_eq!(eval_steps, [0, 20, 40, 60]);
    let recorded = chargpt::runs::read_samples(&d.join("runs/tiny/samples.txt"));
    for (e, r) in evals.iter().zip(&recorded) {
        assert_eq!(e["sample"].as_str().unwrap(), r.text);
        assert_eq!(e["sample"].as_str().unwrap().chars().count(), 200);
    }
    assert!(
        names.contains(&"saved") && names.contains(&"exact"),
        "{names:?}"
    );
    let (_, finished) = events.last().unwrap();
    assert_eq!(finished["state"], "finished");
    assert_eq!(finished["step"], 60);
    assert!(finished["final_val_loss"].as_f64().unwrap() > 0.0);
    let summary = run_summary(&server, "tiny");
    assert_eq!(summary["state"], "finished");
    assert_eq!(
        (summary["step"].as_u64(), summary["steps"].as_u64()),
        (Some(60), Some(60))
    );
    assert_eq!(summary["preset"], "layernorm");
    // History from the files: the same rows the events carried.
    let history = server.get("/api/runs/tiny/metrics").json();
    assert_eq!(history["metrics"].as_array().unwrap().len(), 4);
    assert_eq!(history["steps"].as_array().unwrap().len(), 60);
    assert_eq!(history["samples"].as_array().unwrap().len(), 4);
    // A finished run's events: one `idle` with where it stands.
    let idle = server.events("tiny");
    assert_eq!(idle.len(), 1);
    assert_eq!(
        (idle[0].0.as_str(), &idle[0].1["state"]),
        ("idle", &json!("finished"))
    );
    // The sample streams the same characters `chargpt sample` prints for the same seed.
    let request =
        json!({ "prompt": "the ", "temperature": 0.8, "top_k": 10, "seed": 7, "tokens": 150 });
    let r = server.post("/api/runs/tiny/sample", request);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    let text = r.text();
    assert_eq!(text.chars().count(), 150);
    let cli = common::succeeds(
        d,
        &[
            "sample",
            "--model",
            "runs/tiny",
            "--prompt",
            "the ",
            "--temperature",
            "0.8",
            "--top-k",
            "10",
            "--seed",
            "7",
            "--tokens",
            "150",
        ],
    );
    assert_eq!(cli, format!("the {text}\n"));
    // The page's files come from the binary.
    let page = server.get("/");
    assert_eq!(page.status, 200);
    assert!(page
        .text()
        .contains("<script type=\"module\" src=\"app.js\">"));
    for asset in ["/app.js", "/views/training.js", "/vendor/uPlot.esm.js"] {
        let r = server.get(asset);
        assert_eq!(r.status, 200, "{asset}");
        assert!(r
            .header("content-type")
            .unwrap()
            .starts_with("text/javascript"));
    }
}

#[test]
fn stop_resume_and_extend_continue_the_run_and_one_trainer_holds_a_directory() {
    let dir = workspace();
    let d = dir.path();
    let server = Server::start(d, &[]);
    start(&server, "long", long(), None);
    // While it trains: a second start is refused, and so is the command line.
    wait_for("a checkpoint", || d.join("runs/long/config.json").exists());
    let again = server.post(
        "/api/runs",
        json!({ "name": "long", "preset": "layernorm" }),
    );
    assert_eq!(again.status, 409);
    assert!(
        again.error().contains("run long is already training"),
        "{}",
        again.error()
    );
    let pid = server.child.id();
    fails(
        d,
        &["train", "--resume", "--out", "runs/long"],
        &format!("runs/long is being trained by process {pid}"),
    );
    let deleting = server.post("/api/runs/long/delete", json!({}));
    assert_eq!(deleting.status, 409);
    assert_eq!(run_summary(&server, "long")["state"], "training");
    // Stop: it saves and ends its event stream.
    let r = server.post("/api/runs/long/stop", json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    let events = server.events("long");
    let (name, last) = events.last().unwrap();
    assert_eq!(
        (name.as_str(), &last["state"]),
        ("finished", &json!("stopped"))
    );
    let stopped_at = last["step"].as_u64().unwrap();
    let config = chargpt::checkpoint::load_config(&d.join("runs/long")).unwrap();
    assert_eq!(config.step as u64, stopped_at);
    assert_eq!(run_summary(&server, "long")["state"], "stopped");
    // Resume with fewer steps than it would have run: it continues from its checkpoint.
    let target = stopped_at + 40;
    let r = server.post(
        "/api/runs/long/resume",
        json!({ "settings": { "steps": target } }),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["step"].as_u64(), Some(stopped_at));
    let events = server.events("long");
    assert_eq!(events[0].1["resumed"], true);
    let first_step = events
        .iter()
        .find(|(n, _)| n == "step")
        .map(|(_, d)| d[0]["step"].as_u64().unwrap());
    assert_eq!(first_step, Some(stopped_at + 1));
    let (_, last) = events.last().unwrap();
    assert_eq!(
        (&last["state"], last["step"].as_u64()),
        (&json!("finished"), Some(target))
    );
    // Extending a finished run, and the command line resuming a run the page trained.
    let r = server.post(
        "/api/runs/long/resume",
        json!({ "settings": { "steps": target + 20 } }),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    server.events("long");
    let more = format!("steps={}", target + 30);
    chargpt(d)
        .args(["train", "--resume", "--out", "runs/long", "--set", &more])
        .assert()
        .success();
    assert_eq!(
        run_summary(&server, "long")["step"].as_u64(),
        Some(target + 30)
    );
    // Delete.
    let r = server.post("/api/runs/long/delete", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!d.join("runs/long").exists());
}

/// Asserts that `response` is a JSON refusal with `status` and a message containing `hint`.
fn refused(what: &str, response: common::server::Response, status: u16, hint: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let message = response.error();
    assert!(
        message.contains(hint),
        "{what}: expected {hint:?} in {message:?}"
    );
}

#[test]
fn every_bad_request_is_a_4xx_with_a_one_line_json_error() {
    let dir = workspace();
    let d = dir.path();
    let server = Server::start(d, &[]);
    let host = server.host();
    let ours = format!("http://{host}");
    let cookie = format!("chargpt-token-{}={TOKEN}", server.port);
    // The guard: token, Host, Origin.
    refused(
        "no token",
        request(&host, "GET", "/api/runs", &[], b""),
        401,
        "missing or wrong token",
    );
    refused(
        "wrong token",
        request(&host, "GET", "/api/runs?token=nope", &[], b""),
        401,
        "missing or wrong token",
    );
    refused(
        "no token for the page either",
        request(&host, "GET", "/", &[], b""),
        401,
        "open the URL that `chargpt serve` printed",
    );
    let rebound = format!("evil.example:{}", server.port);
    let bearer = format!("Bearer {TOKEN}");
    refused(
        "a foreign Host (DNS rebinding)",
        request(
            &host,
            "GET",
            "/api/runs",
            &[("Host", &rebound), ("Authorization", &bearer)],
            b"",
        ),
        403,
        "does not name this server",
    );
    let start_body = json!({"name": "x", "preset": "layernorm"}).to_string();
    refused(
        "a POST from another site's page",
        request(
            &host,
            "POST",
            "/api/runs",
            &[("Cookie", &cookie), ("Origin", "http://evil.example")],
            start_body.as_bytes(),
        ),
        403,
        "cross-origin request refused",
    );
    refused(
        "a cookie POST without Origin",
        request(
            &host,
            "POST",
            "/api/runs",
            &[("Cookie", &cookie)],
            start_body.as_bytes(),
        ),
        403,
        "cross-origin request refused",
    );
    // The page: ?token= sets the cookie and leaves the address bar; the cookie then suffices,
    // and the page's own POSTs pass.
    let opened = request(&host, "GET", "/?token=test-token-0123456789", &[], b"");
    assert_eq!(opened.status, 303);
    assert!(opened
        .header("set-cookie")
        .unwrap()
        .contains("HttpOnly; SameSite=Strict"));
    assert_eq!(
        request(&host, "GET", "/", &[("Cookie", &cookie)], b"").status,
        200
    );
    let own = request(
        &host,
        "POST",
        "/api/runs/none/stop",
        &[("Cookie", &cookie), ("Origin", &ours)],
        b"",
    );
    refused("stop of a run that does not exist", own, 404, "no run none");
    // Requests.
    let post_raw = |path: &str, body: &str| server.call("POST", path, body.as_bytes());
    refused(
        "malformed JSON",
        post_raw("/api/runs", "{\"name\": "),
        400,
        "malformed JSON",
    );
    refused(
        "an unknown field",
        server.post("/api/runs", json!({"name": "x", "colour": "red"})),
        400,
        "unknown field `colour`",
    );
    let bad_setting = server.post(
        "/api/runs",
        json!({"name": "x", "preset": "layernorm", "settings": {"n_embed": 64}}),
    );
    assert_eq!(bad_setting.json()["field"], "n_embed");
    refused(
        "an unknown setting",
        bad_setting,
        400,
        "n_embed=64: unknown setting \"n_embed\"; known settings: activation, architecture",
    );
    refused(
        "a value of the wrong kind",
        server.post(
            "/api/runs",
            json!({"name": "x", "preset": "layernorm", "settings": {"n_layer": "two"}}),
        ),
        400,
        "n_layer=two: invalid value \"two\" for n_layer: invalid type: string \"two\", expected a whole number",
    );
    refused(
        "an invalid combination",
        server.post(
            "/api/runs",
            json!({"name": "x", "preset": "layernorm", "settings": {"n_embd": 30}}),
        ),
        400,
        "n_embd (30) must be divisible by n_head (4); change it in the settings",
    );
    refused(
        "an unknown preset",
        server.post("/api/runs", json!({"name": "x", "preset": "gpt5"})),
        400,
        "unknown preset \"gpt5\"",
    );
    for name in ["../x", "a/b", "..", ".hidden", "", &"x".repeat(65)] {
        refused(
            &format!("run name {name:?}"),
            server.post("/api/runs", json!({"name": name, "preset": "layernorm"})),
            400,
            "invalid run name",
        );
    }
    refused(
        "a path name ..",
        server.get("/api/runs/../metrics"),
        400,
        "invalid run name",
    );
    refused(
        "an escaped path name",
        server.get("/api/runs/..%2Fetc/metrics"),
        400,
        "invalid run name",
    );
    for (method, path) in [
        ("GET", "/api/runs/none/metrics"),
        ("GET", "/api/runs/none/events"),
        ("GET", "/api/runs/none"),
        ("POST", "/api/runs/none/resume"),
        ("POST", "/api/runs/none/delete"),
        ("POST", "/api/runs/none/sample"),
    ] {
        refused(
            &format!("{method} {path}"),
            server.call(method, path, b""),
            404,
            "no run none",
        );
    }
    refused(
        "an unknown upload",
        server.post(
            "/api/runs",
            json!({"name": "x", "upload": "0123456789abcdef"}),
        ),
        400,
        "no upload \"0123456789abcdef\"",
    );
    refused(
        "a JSON body over the limit",
        post_raw(
            "/api/runs",
            &format!("{{\"name\": \"{}\"}}", "x".repeat(70_000)),
        ),
        413,
        "larger than 64 KiB",
    );
    refused(
        "GET on a POST route",
        server.get("/api/runs/x/stop"),
        405,
        "method not allowed",
    );
    refused(
        "an unknown path",
        server.get("/nothing.js"),
        404,
        "no such page or API route",
    );
    // Uploads.
    refused(
        "an upload that is not UTF-8",
        server.call("POST", "/api/uploads?filename=binary.txt", b"abc\xff\xfe"),
        400,
        "binary.txt is not UTF-8 text (invalid byte at offset 3); save it as UTF-8",
    );
    refused(
        "an empty upload",
        server.call("POST", "/api/uploads?filename=empty.txt", b""),
        400,
        "empty.txt is empty",
    );
    refused(
        "an upload over the limit",
        server.call(
            "POST",
            "/api/uploads?filename=big.txt",
            &vec![b'a'; (32 << 20) + 1],
        ),
        413,
        "big.txt is larger than 32 MiB",
    );
    let short = server.call(
        "POST",
        "/api/uploads?filename=short.txt",
        b"abcdefghijklmnopqrstuvwxyz",
    );
    let short_id = short.json()["id"].as_str().unwrap().to_string();
    refused(
        "a text too short for the block",
        server.post(
            "/api/runs",
            json!({"name": "x", "preset": "layernorm", "upload": short_id}),
        ),
        400,
        "the val split has 3 tokens but a block of 8 needs at least 9",
    );
    // Runs that exist.
    start(&server, "done", tiny(20), None);
    server.events("done");
    refused(
        "a new run over a checkpoint",
        server.post("/api/runs", json!({"name": "done", "preset": "layernorm"})),
        409,
        "runs/done already holds a checkpoint (step 20); resume it, or choose another name, or delete it first",
    );
    refused(
        "a resume of a finished run",
        server.post("/api/runs/done/resume", json!({})),
        400,
        "already finished its 20 steps; extend it: set steps above 20",
    );
    refused(
        "a resume that changes the model",
        server.post("/api/runs/done/resume", json!({"settings": {"n_embd": 32, "steps": 40}})),
        400,
        "cannot change n_embd (the checkpoint has 16) when resuming: the model keeps the checkpoint's shape; a resumed run keeps its model",
    );
    refused(
        "a stop of a run that is not training",
        server.post("/api/runs/done/stop", json!({})),
        409,
        "run done is not training",
    );
    let sample = |body: Value| server.post("/api/runs/done/sample", body);
    refused(
        "temperature -1",
        sample(json!({"temperature": -1})),
        400,
        "temperature must lie between 0 and 100",
    );
    refused(
        "temperature 1000",
        sample(json!({"temperature": 1000})),
        400,
        "temperature must lie between 0 and 100",
    );
    refused(
        "top_k 0",
        sample(json!({"top_k": 0})),
        400,
        "top_k must be at least 1",
    );
    refused(
        "too many characters",
        sample(json!({"tokens": 1_000_000})),
        400,
        "tokens must be at most 20000",
    );
    refused(
        "a prompt with unknown characters",
        sample(json!({"prompt": "ÉÉ€"})),
        400,
        "the prompt has 2 characters that the model's vocabulary lacks: 'É', '€'",
    );
}

#[test]
fn ctrl_c_saves_every_training_and_kill_9_leaves_a_resumable_checkpoint() {
    let dir = workspace();
    let d = dir.path();
    // Ctrl-C: both trainings save, then the server exits.
    let mut server = Server::start(d, &[]);
    start(&server, "a", long(), None);
    start(&server, "b", long(), None);
    wait_for("two checkpoints", || {
        d.join("runs/a/config.json").exists() && d.join("runs/b/config.json").exists()
    });
    let interrupted = std::process::Command::new("kill")
        .args(["-INT", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: String = std::io::Read::bytes(&mut server.stdout)
        .map(|b| b.unwrap() as char)
        .collect();
    for name in ["a", "b"] {
        let config = chargpt::checkpoint::load_config(&d.join("runs").join(name)).unwrap();
        assert!(
            rest.contains(&format!("saved {name} at step {}", config.step)),
            "{rest}"
        );
    }
    // kill -9 mid-training: the last checkpoint loads, the lock is gone, and the run resumes
    // from the page as from the command line.
    let server = Server::start(d, &[]);
    start(&server, "c", long(), None);
    wait_for("a checkpoint", || d.join("runs/c/config.json").exists());
    std::thread::sleep(Duration::from_millis(300));
    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let saved = chargpt::checkpoint::load(&d.join("runs/c")).unwrap();
    let step = saved.config.step;
    let server = Server::start(d, &[]);
    assert_eq!(run_summary(&server, "c")["state"], "stopped");
    let r = server.post(
        "/api/runs/c/resume",
        json!({ "settings": { "steps": step + 10 } }),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let events = server.events("c");
    assert_eq!(
        events.last().unwrap().1["step"].as_u64(),
        Some(step as u64 + 10)
    );
    drop(server);
    let more = format!("steps={}", step + 20);
    chargpt(d)
        .args(["train", "--resume", "--out", "runs/c", "--set", &more])
        .assert()
        .success();
}

#[test]
fn a_host_other_than_loopback_warns() {
    let dir = workspace();
    let mut child = std::process::Command::new(common::BIN)
        .current_dir(dir.path())
        .args([
            "serve", "--port", "0", "--host", "0.0.0.0", "--token", TOKEN,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        lines.push(line);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        lines[0].starts_with("chargpt serve: http://0.0.0.0:"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("warning: listening on 0.0.0.0"),
        "{lines:?}"
    );
    fails(
        dir.path(),
        &["serve", "--host", "localhost"],
        "--host localhost is not an IP address",
    );
}

/// `init_from` fine-tunes a run of the runs directory on another text, as `train --init-from`
/// does: characters the model lacks are refused by default (beside the `unknown_chars` field),
/// and `extend` gives them new embeddings.
#[test]
fn a_run_fine_tunes_another_runs_model_on_an_upload() {
    let dir = workspace();
    let d = dir.path();
    let server = Server::start(d, &[]);
    start(&server, "base", tiny(20), None);
    wait_for("the base run finished", || {
        run_summary(&server, "base")["state"] == "finished"
    });
    // The base model knows Tiny Shakespeare's 65 characters...
    let text = "Ünïcode fables: the fox, the crow and the cheese.\n".repeat(100);
    let r = server.call("POST", "/api/uploads?filename=fables.txt", text.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let body = |unknown: Option<&str>| {
        let mut b = json!({ "name": "ft", "preset": "layernorm", "settings": tiny(20),
            "upload": id, "init_from": "base" });
        if let Some(u) = unknown {
            b["unknown_chars"] = u.into();
        }
        b
    };
    // ... this one has Ü and ï, which Tiny Shakespeare has not.
    let refused = server.post("/api/runs", body(None));
    assert_eq!(refused.status, 400, "{}", refused.text());
    assert_eq!(
        refused.json()["field"],
        "unknown_chars",
        "{}",
        refused.text()
    );
    let missing = server.post(
        "/api/runs",
        json!({ "name": "ft", "preset": "layernorm", "init_from": "nothing" }),
    );
    assert_eq!(missing.json()["field"], "init_from", "{}", missing.text());
    let r = server.post("/api/runs", body(Some("extend")));
    assert_eq!(r.status, 201, "{}", r.text());
    wait_for("the fine-tune finished", || {
        run_summary(&server, "ft")["state"] == "finished"
    });
    let ft = run_summary(&server, "ft");
    assert_eq!(
        ft["vocab_size"],
        run_summary(&server, "base")["vocab_size"].as_u64().unwrap() + 2
    );
    assert_eq!(ft["text"]["name"], "fables.txt");
}
