//! `chargpt serve`: a web page to start runs, watch them learn, compare them and sample from them.
//!
//! One process: an HTTP server (axum on a current-thread tokio runtime, so that it never takes a
//! core from training) and a thread per running training, whose steps run on a worker pool like
//! `chargpt train`'s (one pool per training: two trainings share the cores, where in one pool
//! the second would run inside the first's fork-join and stop it until it finished). A training publishes every step and evaluation into its
//! [`live::LiveRun`], an in-memory log that costs the training thread a push per step and never
//! waits for a reader; each event stream (server-sent events) reads that log at its own pace.
//! History comes from the run's files (`metrics.csv`, `steps.csv`, `samples.txt`).
//!
//! The modules: [`security`] (token, Host and Origin checks), [`connections`] (timeouts and the
//! cap on open connections), [`request`] (what every handler does with a request first), [`api`]
//! (the JSON endpoints and the router), [`inspect`] (looking inside a run's model), [`live`]
//! (trainings and their event streams), [`assets`] (the page, embedded in the binary).
//! The library does the work (preparing, training, listing, sampling); this module never calls
//! the command line's.

mod api;
mod assets;
mod connections;
mod error;
mod inspect;
mod live;
mod request;
mod security;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// The port `chargpt serve` listens on unless `--port` says otherwise.
pub const DEFAULT_PORT: u16 = 8765;

#[derive(Args)]
#[command(after_help = "\
Open the URL on the first line of output: it carries the token that every request needs (the \
page keeps it in a cookie). The runs are the directories under --runs; runs started from the page \
are written there exactly as `chargpt train --out DIR` writes them, and either can resume the \
other's runs.")]
pub struct ServeArgs {
    /// The directory of runs to list, start and resume.
    #[arg(long, default_value = "runs", value_name = "DIR")]
    runs: PathBuf,
    /// Port to listen on (0: any free port).
    #[arg(long, default_value_t = DEFAULT_PORT, value_name = "N")]
    port: u16,
    /// Address to listen on. Anything but 127.0.0.1 lets other machines reach the page (the
    /// token still guards it).
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    host: String,
    /// The access token [default: $CHARGPT_TOKEN, else a random one per start].
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Seconds a client may take to send a request's headers before its connection is closed.
    #[arg(long, default_value_t = 10, value_name = "S", hide = true)]
    header_timeout: u64,
    /// Seconds a client may take to send a request's body before the request is refused.
    #[arg(long, default_value_t = 60, value_name = "S", hide = true)]
    body_timeout: u64,
}

/// What every handler shares.
pub struct AppState {
    /// The runs directory; nothing outside it is read or written.
    pub runs_dir: PathBuf,
    pub token: String,
    pub port: u16,
    /// Worker threads per training (`--threads`; all cores if `None`).
    pub threads: Option<usize>,
    /// The trainings this server runs, by run name.
    pub live: Mutex<HashMap<String, Arc<live::LiveRun>>>,
    /// The inspections' queue and the checkpoints they last loaded.
    pub inspector: inspect::Inspector,
}

impl AppState {
    pub fn live_run(&self, name: &str) -> Option<Arc<live::LiveRun>> {
        lock(&self.live).get(name).cloned()
    }
}

/// A mutex's contents even if a thread panicked while holding it: every value kept behind one
/// here is valid at every moment, so a panic elsewhere must not stop the server.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A line on stdout, ignoring a closed stdout.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn random_token() -> Result<String> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("cannot draw a random token: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn run(args: ServeArgs, threads: Option<usize>) -> Result<ExitCode> {
    let token = match args.token.or_else(|| std::env::var("CHARGPT_TOKEN").ok()) {
        Some(t) if t.is_empty() => {
            bail!("the token must not be empty; leave --token out for a random one")
        }
        Some(t) if !t.bytes().all(|b| b.is_ascii_graphic()) => {
            bail!("the token must be printable ASCII without spaces")
        }
        Some(t) => t,
        None => random_token()?,
    };
    std::fs::create_dir_all(&args.runs).with_context(|| {
        format!(
            "cannot create the runs directory {}; choose another --runs",
            args.runs.display()
        )
    })?;
    error::set_runs_dir(&args.runs);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async move {
        let ip: std::net::IpAddr = args.host.parse().with_context(|| {
            format!(
                "--host {} is not an IP address; use 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)",
                args.host
            )
        })?;
        let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, args.port))
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}:{}; choose another --port (0 picks a free one)",
                    args.host, args.port
                )
            })?;
        let port = listener.local_addr()?.port();
        let shown = if ip.is_ipv6() {
            format!("[{ip}]")
        } else {
            ip.to_string()
        };
        say(&format!("chargpt serve: http://{shown}:{port}/?token={token}"));
        if !ip.is_loopback() {
            say(&format!(
                "warning: listening on {ip}, not only this machine: anyone who can reach port {port} and has the token can train and write files under {}",
                args.runs.display()
            ));
        }
        say(&format!("runs in {}; Ctrl-C saves every training and quits", args.runs.display()));
        let state = Arc::new(AppState {
            runs_dir: args.runs,
            token,
            port,
            threads,
            live: Mutex::new(HashMap::new()),
            inspector: inspect::Inspector::default(),
        });
        tokio::spawn(live::save_all_on_signal(state.clone()));
        let app = api::router(state);
        let timeouts = connections::Timeouts {
            header: std::time::Duration::from_secs(args.header_timeout.max(1)),
            body: std::time::Duration::from_secs(args.body_timeout.max(1)),
        };
        connections::serve(listener, app, timeouts).await;
        Ok(ExitCode::SUCCESS)
    })
}
