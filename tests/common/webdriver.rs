//! Headless Chromium driven over WebDriver (ChromeDriver's W3C protocol, a few JSON requests),
//! with the small blocking HTTP client of `server.rs`. Debian's `chromium` and
//! `chromium-driver` packages provide the two programs.

use super::server::{request, try_request};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The flags that keep Chromium quiet on a closed network and in a container.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--window-size=1280,1500",
];

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Chromium and ChromeDriver, if both are installed.
pub fn find_browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|p| on_path(p))?;
    let driver = on_path("chromedriver")?;
    Some((chromium, driver))
}

/// A browser session; the browser and its driver stop when it is dropped.
pub struct Browser {
    driver: Child,
    host: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub fn start(chromium: &Path, driver: &Path) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let host = format!("127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            // Listening is not answering: while it starts, chromedriver may accept a connection
            // and close it without a response (seen under CI's load).
            let ready = try_request(&host, "GET", "/status")
                .is_some_and(|r| r.json()["value"]["ready"] == true);
            if ready {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM_FLAGS.iter().map(|s| s.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium.display().to_string(), "args": args },
        }}});
        let mut browser = Browser {
            driver: child,
            host,
            session: String::new(),
            _profile: profile,
        };
        let answer = browser.send("POST", "/session", capabilities);
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_string();
        browser
    }

    /// One WebDriver command; returns its `value`.
    fn send(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, value) = self.try_send(method, path, body);
        assert_eq!(status, 200, "{method} {path}: {value}");
        value
    }

    /// One WebDriver command: its status and `value`.
    fn try_send(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if method == "GET" {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let response = request(
            &self.host,
            method,
            path,
            &[("Content-Type", "application/json")],
            &body,
        );
        (response.status, response.json()["value"].clone())
    }

    fn command(&self, method: &str, path: &str, body: Value) -> Value {
        self.send(method, &format!("/session/{}{path}", self.session), body)
    }

    pub fn open(&self, url: &str) {
        self.command("POST", "/url", json!({ "url": url }));
    }

    /// A Chrome DevTools Protocol command (ChromeDriver's `goog/cdp/execute`), e.g. the
    /// profiler's; returns its result.
    #[allow(dead_code)]
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        self.command(
            "POST",
            "/goog/cdp/execute",
            json!({ "cmd": cmd, "params": params }),
        )
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn run(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            json!({ "script": script, "args": [] }),
        )
    }

    /// Waits up to `seconds` for the expression `condition` to be true in the page.
    pub fn wait_until(&self, what: &str, condition: &str, seconds: u64) {
        let started = Instant::now();
        let script =
            format!("try {{ return Boolean({condition}); }} catch (e) {{ return false; }}");
        while self.run(&script) != json!(true) {
            if started.elapsed() > Duration::from_secs(seconds) {
                // What the page says went wrong, if it says.
                let errors = self.run(
                    "return [...document.querySelectorAll('.error, .field-error')].map((e) => e.textContent).filter((t) => t).join(' | ')",
                );
                let shown = self.run(
                    "return [...document.querySelectorAll('.view')].filter((v) => !v.hidden).map((v) => v.innerText.slice(0, 400)).join()",
                );
                panic!("timed out waiting for {what} ({condition}); errors shown: {errors}; the view shows: {shown}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element `css` (waiting for it to appear).
    pub fn find(&self, css: &str) -> String {
        self.wait_until(css, &format!("document.querySelector({})", json!(css)), 20);
        let found = self.command(
            "POST",
            "/element",
            json!({ "using": "css selector", "value": css }),
        );
        found[ELEMENT].as_str().unwrap().to_string()
    }

    /// Runs `act` (which returns its path, and its status and value) on element `css`. A view
    /// may redraw the element between finding and acting on it (a run list refreshed, new bars,
    /// the attention view's text when a later answer for the same prompt arrives): the element
    /// found is then stale, and it is found again.
    fn on_element(&self, css: &str, act: impl Fn(&str) -> (String, (u16, Value))) {
        for _ in 0..20 {
            let id = self.find(css);
            let (path, (status, value)) = act(&id);
            if status == 200 {
                return;
            }
            assert_eq!(
                value["error"], "stale element reference",
                "POST {path}: {value}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{css} went stale 20 times in a row");
    }

    /// Clicks element `css` (found again if it goes stale).
    pub fn click(&self, css: &str) {
        self.on_element(css, |id| {
            let path = format!("/session/{}/element/{id}/click", self.session);
            let answer = self.try_send("POST", &path, json!({}));
            (path, answer)
        });
    }

    /// Replaces the text of input `css` by `text`, as typing would.
    pub fn type_into(&self, css: &str, text: &str) {
        let id = self.find(css);
        self.command("POST", &format!("/element/{id}/clear"), json!({}));
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": text }),
        );
    }

    /// Moves the mouse over the middle of element `css`, as a user pointing at it (found again
    /// if it goes stale).
    pub fn hover(&self, css: &str) {
        self.on_element(css, |id| {
            let path = format!("/session/{}/actions", self.session);
            let answer = self.try_send(
                "POST",
                &path,
                json!({ "actions": [{
                    "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
                    "actions": [{ "type": "pointerMove", "duration": 0, "x": 0, "y": 0,
                                  "origin": { ELEMENT: id } }],
                }]}),
            );
            (path, answer)
        });
    }

    /// Sends keys to element `css` (WebDriver key codes: "\u{E012}" is the left arrow,
    /// "\u{E011}" Home, "\u{E010}" End).
    pub fn keys(&self, css: &str, keys: &str) {
        let id = self.find(css);
        self.command(
            "POST",
            &format!("/element/{id}/value"),
            json!({ "text": keys }),
        );
    }

    /// Resizes the window (for a screenshot of a long view).
    pub fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            json!({ "width": width, "height": height }),
        );
    }

    pub fn screenshot(&self, path: &Path) {
        let encoded = self.command("GET", "/screenshot", json!({}));
        let bytes = base64_decode(encoded.as_str().unwrap());
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = request(
                &self.host,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                b"",
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let digits: Vec<u8> = text.bytes().filter_map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &d)| n | (d as u32) << (18 - 6 * i));
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
    }
    out
}
