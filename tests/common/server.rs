//! A `chargpt serve` on an ephemeral port, and a small blocking HTTP/1.1 client for it (and for
//! ChromeDriver): enough to send a request, read a whole response (chunked or not), and read a
//! stream of server-sent events to its end.

use super::BIN;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

pub const TOKEN: &str = "test-token-0123456789";

/// A running server; killed when dropped.
pub struct Server {
    pub child: Child,
    pub port: u16,
    /// The first line of stdout, exactly as printed.
    pub first_line: String,
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `chargpt serve --port 0 --token TOKEN --runs RUNS --threads 1` in `dir`.
    pub fn start(dir: &Path, extra: &[&str]) -> Server {
        let mut command = Command::new(BIN);
        command.current_dir(dir);
        command.args(["serve", "--port", "0", "--token", TOKEN, "--runs", "runs"]);
        command.args(["--threads", "1"]).args(extra);
        Server::spawn(command)
    }

    /// Starts `command`, a `chargpt serve --port 0 --token TOKEN ...` (perhaps through a
    /// shell that sets limits first).
    pub fn spawn(mut command: Command) -> Server {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut first_line = String::new();
        stdout.read_line(&mut first_line).unwrap();
        let first_line = first_line.trim_end().to_string();
        let port = first_line
            .strip_prefix("chargpt serve: http://127.0.0.1:")
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?}"));
        Server {
            child,
            port,
            first_line,
            stdout,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A request with the token in the Authorization header.
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> Response {
        let auth = format!("Bearer {TOKEN}");
        request(
            &self.host(),
            method,
            path,
            &[("Authorization", &auth)],
            body,
        )
    }

    pub fn get(&self, path: &str) -> Response {
        self.call("GET", path, b"")
    }

    pub fn post(&self, path: &str, json: serde_json::Value) -> Response {
        self.call("POST", path, json.to_string().as_bytes())
    }

    /// The events of `/api/runs/NAME/events` up to the end of the stream.
    pub fn events(&self, name: &str) -> Vec<(String, serde_json::Value)> {
        let response = self.get(&format!("/api/runs/{name}/events"));
        assert_eq!(response.status, 200, "{}", response.text());
        parse_sse(&response.text())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `"error"` of a JSON refusal, checking that it is one line.
    pub fn error(&self) -> String {
        let message = self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {}", self.text()))
            .to_string();
        assert!(!message.contains('\n'), "{message}");
        message
    }
}

/// Sends one request (`Connection: close`) and reads the whole response.
pub fn request(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let raw = exchange(host, method, path, headers, body)
        .unwrap_or_else(|e| panic!("requesting {path} from {host}: {e}"));
    parse_response(&raw)
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(&raw)))
}

/// [`request`] to a server that may still be starting: `None` where it refuses the connection,
/// or accepts it and closes it without an answer (as chromedriver can while it starts).
pub fn try_request(host: &str, method: &str, path: &str) -> Option<Response> {
    parse_response(&exchange(host, method, path, &[], b"").ok()?)
}

/// Writes one request and reads the raw response.
fn exchange(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(host)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let has_host = headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host"));
    if has_host {
        head = head.replacen(&format!("Host: {host}\r\n"), "", 1);
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    // The server may answer (413) before reading a large body and close the connection.
    let _ = stream.write_all(body);
    Ok(read_response(&mut stream))
}

/// Reads one response: to the end of its body by Content-Length or the last chunk, or to the
/// end of the connection (servers may keep it open despite `Connection: close`).
fn read_response(stream: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 1 << 16];
    loop {
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let body = &raw[end + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => body.ends_with(b"0\r\n\r\n"),
                None => false,
            };
            if complete {
                return raw;
            }
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return raw,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
}

fn parse_response(raw: &[u8]) -> Option<Response> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[end + 4..];
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    let body = if chunked {
        unchunk(rest)
    } else {
        rest.to_vec()
    };
    Some(Response {
        status,
        headers,
        body,
    })
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&data[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 || data.len() < size {
            break;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[(size + 2).min(data.len())..];
    }
    out
}

/// `event: NAME` / `data: JSON` blocks, in order (comments and keep-alives skipped).
pub fn parse_sse(text: &str) -> Vec<(String, serde_json::Value)> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_string());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            Some((name?, serde_json::from_str(&data).unwrap()))
        })
        .collect()
}
