//! `chargpt serve` survives any request: settings out of range are refused with the setting
//! named, an allocation the system refuses fails that run only, Stop ends a run inside a long
//! evaluation, clients that send a request too slowly are dropped while others are served, a
//! tiny temperature samples the most likely character, and answers name runs, not the server's
//! paths.

mod common;

use common::server::{Server, TOKEN};
use common::{workspace, BIN};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start(server: &Server, name: &str, preset: &str, settings: Value) -> common::server::Response {
    server.post(
        "/api/runs",
        json!({ "name": name, "preset": preset, "settings": settings }),
    )
}

fn state(server: &Server, name: &str) -> String {
    server.get(&format!("/api/runs/{name}")).json()["run"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn settings_out_of_range_are_refused_and_name_the_setting() {
    let dir = workspace();
    let server = Server::start(dir.path(), &[]);
    for (settings, field, hint) in [
        (
            json!({"eval_iters": 1_000_000_000_000u64, "steps": 5}),
            "eval_iters",
            "eval_iters must lie between 1 and 10,000",
        ),
        (
            json!({"steps": 100_000_000_000u64}),
            "steps",
            "steps must lie between 1 and 10,000,000",
        ),
        (
            json!({"block_size": 100_000}),
            "block_size",
            "block_size must lie between 1 and 8,192",
        ),
        (
            json!({"batch_size": 1_000_000}),
            "batch_size",
            "batch_size must lie between 1 and 4,096",
        ),
    ] {
        let r = start(&server, "x", "bigram", settings.clone());
        assert_eq!(r.status, 400, "{settings}: {}", r.text());
        assert!(r.error().contains(hint), "{settings}: {}", r.error());
        assert_eq!(r.json()["field"], field, "{settings}");
    }
    // The command line refuses the same, in the same words.
    common::fails(
        dir.path(),
        &[
            "train",
            "--preset",
            "bigram",
            "--set",
            "eval_iters=1000000000000",
        ],
        "eval_iters must lie between 1 and 10,000",
    );
}

#[test]
fn stop_ends_a_run_inside_a_long_evaluation_and_saves() {
    let dir = workspace();
    let server = Server::start(dir.path(), &[]);
    // 10,000 batches of 64 x 32 per split: minutes of evaluation at step 0.
    let settings = json!({
        "n_layer": 2, "n_embd": 64, "block_size": 32, "batch_size": 64, "steps": 50,
        "eval_iters": 10_000,
    });
    let r = start(&server, "slow", "layernorm", settings);
    assert_eq!(r.status, 201, "{}", r.text());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(state(&server, "slow"), "training");
    let asked = Instant::now();
    let r = server.post("/api/runs/slow/stop", json!({}));
    assert_eq!(r.status, 202, "{}", r.text());
    let events = server.events("slow");
    let took = asked.elapsed();
    let (name, last) = events.last().unwrap();
    assert_eq!(name, "finished", "{events:?}");
    assert_eq!(last["state"], "stopped");
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
    // No evaluation was recorded (it was cut short); the checkpoint was saved.
    assert!(!events.iter().any(|(n, _)| n == "eval"), "{events:?}");
    assert_eq!(state(&server, "slow"), "stopped");
    assert!(dir.path().join("runs/slow/model.safetensors").exists());
    let r = server.post("/api/runs/slow/delete", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_tiny_or_zero_temperature_samples_the_most_likely_character() {
    let dir = workspace();
    let server = Server::start(dir.path(), &[]);
    let r = start(&server, "b", "bigram", json!({"steps": 300}));
    assert_eq!(r.status, 201, "{}", r.text());
    server.events("b");
    let next = |temperature: f64| -> Value {
        let r = server.post(
            "/api/runs/b/inspect/next",
            json!({"prompt": "the ", "temperature": temperature}),
        );
        assert_eq!(r.status, 200, "{temperature}: {}", r.text());
        r.json()
    };
    let plain = next(1.0);
    let logits: Vec<f64> = plain["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let best = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap();
    for temperature in [0.0, 1e-45, 1e-38, 1e-20] {
        let probs = next(temperature)["probs"].clone();
        let probs: Vec<f64> = probs
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p.as_f64()
                    .unwrap_or_else(|| panic!("{temperature}: {probs}"))
            })
            .collect();
        assert_eq!(probs[best], 1.0, "{temperature}: {probs:?}");
        assert_eq!(probs.iter().sum::<f64>(), 1.0, "{temperature}");
    }
    // Sampling draws that character every time: the same text at 0 and at 1e-45.
    let sample = |temperature: f64| -> String {
        let r = server.post(
            "/api/runs/b/sample",
            json!({"prompt": "the", "temperature": temperature, "tokens": 40}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    };
    let greedy = sample(0.0);
    assert_eq!(greedy.chars().count(), 40);
    assert_eq!(sample(1e-45), greedy);
    assert_eq!(sample(1e-30), greedy);
    assert_ne!(sample(1.0), greedy);
}

#[test]
fn clients_that_send_too_slowly_are_dropped_and_others_are_served() {
    let dir = workspace();
    let server = Server::start(
        dir.path(),
        &["--header-timeout", "2", "--body-timeout", "2"],
    );
    // 300 connections that send half a request and wait: more than the server keeps open.
    let mut slow: Vec<TcpStream> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(server.host()).unwrap();
            s.write_all(b"GET /api/runs HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                .unwrap();
            s
        })
        .collect();
    let asked = Instant::now();
    let r = server.get("/api/runs");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "a normal request waited {:?}",
        asked.elapsed()
    );
    // Every slow connection is closed by the server (read gives the end of the stream).
    let started = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // To the end of the stream (after a 408, if the server says why), or a reset; a read
        // that times out is a connection the server kept.
        let mut rest = Vec::new();
        match s.read_to_end(&mut rest).map_err(|e| e.kind()) {
            Ok(_) | Err(std::io::ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("a slow connection stayed open: {e:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    // A body that never finishes arriving is refused once its time is up.
    let mut s = TcpStream::connect(server.host()).unwrap();
    let auth = format!("Bearer {TOKEN}");
    let head = format!(
        "POST /api/runs HTTP/1.1\r\nHost: {}\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":",
        server.host()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within 2 s"), "{answer}");
}

/// Linux: the server under an address-space limit (`ulimit -v`) that the memory estimate does
/// not know of, so that the allocation itself fails.
#[cfg(target_os = "linux")]
#[test]
fn an_allocation_the_system_refuses_fails_that_run_and_the_server_goes_on() {
    let dir = workspace();
    let mut command = std::process::Command::new("bash");
    command.current_dir(dir.path()).args([
        "-c",
        "ulimit -v 1500000 && exec \"$0\" \"$@\"",
        BIN,
        "serve",
        "--port",
        "0",
        "--token",
        TOKEN,
        "--runs",
        "runs",
        "--threads",
        "1",
    ]);
    let server = Server::spawn(command);
    // 100,000 distinct characters: nanogpt-cpu's logits alone are 300 MB a buffer.
    let text: String = (0x4e00..0x4e00 + 20_000)
        .chain(0x20000..0x20000 + 80_000)
        .filter_map(char::from_u32)
        .collect::<String>()
        .repeat(3);
    let r = server.call("POST", "/api/uploads?filename=big.txt", text.as_bytes());
    assert_eq!(r.status, 201, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let r = server.post(
        "/api/runs",
        json!({"name": "big", "preset": "nanogpt-cpu", "upload": id, "settings": {"steps": 5}}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().starts_with("cannot allocate "), "{}", r.error());
    // The server and its other runs go on.
    let r = start(&server, "small", "bigram", json!({"steps": 50}));
    assert_eq!(r.status, 201, "{}", r.text());
    let events = server.events("small");
    assert_eq!(events.last().unwrap().1["state"], "finished", "{events:?}");
}

#[test]
fn answers_name_runs_not_the_servers_paths() {
    let dir = workspace();
    let runs = dir.path().join("my runs");
    let mut command = std::process::Command::new(BIN);
    command
        .current_dir(dir.path())
        .args(["serve", "--port", "0", "--token", TOKEN]);
    command.arg("--runs").arg(&runs).args(["--threads", "1"]);
    let server = Server::spawn(command);
    let full = runs.canonicalize().unwrap().display().to_string();
    let r = start(&server, "b", "bigram", json!({"steps": 20}));
    assert_eq!(r.status, 201, "{}", r.text());
    server.events("b");
    let again = start(&server, "b", "bigram", json!({}));
    assert_eq!(again.status, 409);
    assert!(
        again
            .error()
            .starts_with("runs/b already holds a checkpoint"),
        "{}",
        again.error()
    );
    std::fs::create_dir_all(runs.join("empty")).unwrap();
    std::fs::write(runs.join("empty/metrics.csv"), "").unwrap();
    let nothing = server.post("/api/runs/empty/resume", json!({}));
    assert_eq!(nothing.status, 400, "{}", nothing.text());
    assert!(
        nothing
            .error()
            .starts_with("nothing to resume: runs/empty holds no checkpoint"),
        "{}",
        nothing.error()
    );
    for r in [again, nothing] {
        assert!(!r.text().contains(&full), "{}", r.text());
        assert!(
            !r.text().contains(dir.path().to_str().unwrap()),
            "{}",
            r.text()
        );
    }
}
