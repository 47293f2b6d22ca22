//! Trainings the server runs, and their live event streams.
//!
//! A training runs on its own thread, inside a worker pool of its own (as `chargpt train` runs
//! inside one), through the library's `runs::prepare_*` and `runs::run_training`. Its events go into
//! a [`LiveRun`]: an append-only log in memory plus a counter (`tokio::sync::watch`) that wakes
//! the readers. Publishing a step is a push under a mutex and a counter update: the training
//! thread never waits for a reader, however slow or many. Each event stream keeps its own
//! position in the log and sends what is new at most every [`COALESCE`] (one message with
//! every step since the last), so 50 open pages cost 50 small writes per tenth of a second, not
//! 50 per step.

use super::error::{one_line, ApiError, ApiResult};
use super::{lock, say, AppState};
use axum::http::StatusCode;
use axum::response::sse::Event;
use chargpt::runs::{self, NewRun, Prepared, ResumeRun, Setting, Wording};
use chargpt::runs::{run_training, RunEvent, RunOptions};
use futures_util::stream::{self, Stream, StreamExt};
use serde::Serialize;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The least time between two messages of one event stream.
pub const COALESCE: Duration = Duration::from_millis(100);

/// The "what to do" clauses of the library's refusals, in the page's words.
pub const PAGE: Wording = Wording {
    change_setting: "change it in the settings",
    keep_shape: "a resumed run keeps its model: change training settings only",
    another_out:
        "check that the runs directory is writable, or start chargpt serve with another --runs",
    existing: "resume it, or choose another name, or delete it first",
    nothing_to_resume: "start it as a new run",
    give_text: "put the text back there to resume the run",
};

pub use chargpt::page::live::{LiveEvent, Started, StepPoint};

/// The parameters of a training at its last evaluation, for the inspection views: a copy, so
/// that looking never waits for (or slows) a step.
pub struct Snapshot {
    pub model: chargpt::model::Model,
    pub tokenizer: chargpt::tokenizer::Tokenizer,
    pub step: usize,
    /// The text it trains on (its val split gives the surprise view its excerpts).
    pub data: chargpt::checkpoint::DataInfo,
    /// The embeddings view's answer for these parameters, once asked.
    pub embeddings: std::sync::OnceLock<Vec<u8>>,
}

/// A training of this server: its stop switch and the log of everything it reported.
pub struct LiveRun {
    pub name: String,
    pub stop: Arc<AtomicBool>,
    /// Its model at the last evaluation (none before the first).
    snapshot: Mutex<Option<Arc<Snapshot>>>,
    log: Mutex<Log>,
    /// How many events were ever logged; readers wait for it to change.
    count: watch::Sender<usize>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LiveRun {
    fn new(name: &str) -> Self {
        LiveRun {
            name: name.to_string(),
            stop: Arc::new(AtomicBool::new(false)),
            snapshot: Mutex::new(None),
            log: Mutex::new(Log::default()),
            count: watch::Sender::new(0),
            thread: Mutex::new(None),
        }
    }

    /// Appends an event and wakes the readers; never waits for them.
    fn push(&self, event: LiveEvent) {
        let n = lock(&self.log).push(event);
        self.count.send_replace(n);
    }

    /// The events from position `from` on, and the position after them.
    fn events_from(&self, from: usize) -> (Vec<LiveEvent>, usize) {
        lock(&self.log).since(from)
    }

    /// The session's first event (its start), once the training has begun.
    pub fn start_event(&self) -> Option<LiveEvent> {
        lock(&self.log).start.clone()
    }

    /// The last step reported, if any.
    pub fn last_step(&self) -> Option<StepPoint> {
        lock(&self.log).events.iter().rev().find_map(|e| match e {
            LiveEvent::Step(p) => Some(*p),
            _ => None,
        })
    }

    /// The model as it was at the last evaluation.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        lock(&self.snapshot).clone()
    }

    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The events a training reported, the oldest forgotten once there are many: a long run reports
/// a step hundreds of times a second, and a stream that joins late reads the history from the
/// run's files (`steps.csv`, `metrics.csv`) and only what follows from here.
#[derive(Default)]
struct Log {
    /// The first event (the start), kept for every reader.
    start: Option<LiveEvent>,
    /// The events from position `dropped` on.
    events: std::collections::VecDeque<LiveEvent>,
    dropped: usize,
}

/// Events a log keeps at least (a few megabytes).
const LOG_KEEP: usize = 50_000;

impl Log {
    /// Appends `event`; returns how many were ever logged.
    fn push(&mut self, event: LiveEvent) -> usize {
        if self.start.is_none() {
            self.start = Some(event.clone());
        }
        self.events.push_back(event);
        if self.events.len() > 2 * LOG_KEEP {
            self.events.drain(..LOG_KEEP);
            self.dropped += LOG_KEEP;
        }
        self.dropped + self.events.len()
    }

    /// The events from position `from` on (from the oldest kept, after the start, for a reader
    /// that is further behind), and the position after them.
    fn since(&self, from: usize) -> (Vec<LiveEvent>, usize) {
        let mut out = Vec::new();
        if from < self.dropped && from == 0 {
            out.extend(self.start.clone());
        }
        out.extend(
            self.events
                .range(from.max(self.dropped) - self.dropped..)
                .cloned(),
        );
        (out, self.dropped + self.events.len())
    }
}

/// How a training starts.
pub enum Plan {
    New {
        preset: String,
        settings: Vec<Setting>,
        /// The training text; `None`: the built-in Tiny Shakespeare.
        data: Option<PathBuf>,
    },
    Resume {
        settings: Vec<Setting>,
    },
    /// A fine-tune of another run's checkpoint.
    FineTune {
        init_from: PathBuf,
        /// Training settings from this preset; `None`: the checkpoint's.
        preset: Option<String>,
        settings: Vec<Setting>,
        data: Option<PathBuf>,
        unknown: runs::UnknownChars,
    },
}

/// Starts training run `name` by `plan` on its own thread; answers once the run is prepared
/// (every check passed and its directory locked) or refused.
pub async fn start(state: Arc<AppState>, name: String, plan: Plan) -> ApiResult<Started> {
    let live = Arc::new(LiveRun::new(&name));
    {
        let mut trainings = lock(&state.live);
        if trainings.contains_key(&name) {
            return Err(ApiError::conflict(format!(
                "run {name} is already training; stop it first"
            )));
        }
        trainings.insert(name.clone(), live.clone());
    }
    let (ready, answer) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(format!("train {name}"))
        .spawn({
            let (state, live) = (state.clone(), live.clone());
            move || training_thread(state, live, plan, ready)
        });
    match spawned {
        Ok(handle) => *lock(&live.thread) = Some(handle),
        Err(e) => {
            forget(&state, &live);
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot start a training thread: {e}"),
            ));
        }
    }
    match answer.await {
        Ok(Ok(started)) => Ok(started),
        Ok(Err(e)) => {
            forget(&state, &live);
            Err(e)
        }
        Err(_) => {
            forget(&state, &live);
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the training stopped before it began; see the server's output",
            ))
        }
    }
}

/// Removes `live` from the server's trainings (if a newer one has not taken its name).
fn forget(state: &AppState, live: &Arc<LiveRun>) {
    let mut trainings = lock(&state.live);
    if trainings
        .get(&live.name)
        .is_some_and(|l| Arc::ptr_eq(l, live))
    {
        trainings.remove(&live.name);
    }
}

type Ready = tokio::sync::oneshot::Sender<ApiResult<Started>>;

fn training_thread(state: Arc<AppState>, live: Arc<LiveRun>, plan: Plan, ready: Ready) {
    let dir = state.runs_dir.join(&live.name);
    // A panic must not take the server down or leave the run marked as training: it becomes the
    // run's error event, and the lock goes with the unwound run.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let pool = match chargpt::runtime::thread_pool(state.threads) {
            Ok(pool) => pool,
            Err(e) => {
                let _ = ready.send(Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot start the worker threads: {e}"),
                )));
                return;
            }
        };
        pool.install(|| {
            let Some(prepared) = prepare(&dir, plan, ready, &live) else {
                return;
            };
            train(&state, &live, prepared);
        })
    }));
    if let Err(panic) = outcome {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        live.push(LiveEvent::Error {
            error: format!(
                "the training stopped unexpectedly ({what}); the last checkpoint is kept: resume it"
            ),
        });
    }
    forget(&state, &live);
    // The run's buffers are free now; give them back rather than grow with every training.
    chargpt::memory::release_free_memory();
}

/// Prepares the run and answers the request that started it; `None` if it was refused.
fn prepare(dir: &std::path::Path, plan: Plan, ready: Ready, live: &LiveRun) -> Option<Prepared> {
    let mut warnings = Vec::new();
    let prepared = match &plan {
        Plan::New {
            preset,
            settings,
            data,
        } => runs::prepare_new(
            &NewRun {
                preset,
                settings,
                out: dir,
                data: data.as_deref(),
            },
            &PAGE,
        ),
        Plan::FineTune {
            init_from,
            preset,
            settings,
            data,
            unknown,
        } => runs::prepare_fine_tune(
            &runs::FineTune {
                init_from,
                preset: preset.as_deref(),
                settings,
                out: dir,
                data: data.as_deref(),
                unknown: *unknown,
            },
            &PAGE,
        ),
        Plan::Resume { settings } => runs::prepare_resume(
            &ResumeRun {
                out: dir,
                settings,
                data: None,
            },
            &PAGE,
            &mut |line| warnings.push(line.trim_start_matches("warning: ").to_string()),
        ),
    };
    let prepared = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = ready.send(Err(ApiError::from_prepare(e)));
            return None;
        }
    };
    let run = &prepared.run;
    warnings.extend(chargpt::config::setting_warnings(&run.trainer.config));
    live.push(LiveEvent::Start {
        step: run.trainer.step,
        steps: run.trainer.config.steps,
        resumed: prepared.resumed,
        preset: run.preset.clone(),
        params: run.trainer.model.num_params(),
    });
    let _ = ready.send(Ok(Started {
        name: live.name.clone(),
        step: run.trainer.step,
        steps: run.trainer.config.steps,
        resumed: prepared.resumed,
        notes: prepared.notes.clone(),
        warnings,
    }));
    Some(prepared)
}

/// Trains the prepared run to its end (or a stop), publishing every event.
fn train(state: &AppState, live: &Arc<LiveRun>, prepared: Prepared) {
    let options = RunOptions::recorded(&prepared, live.stop.clone());
    let Prepared {
        mut run,
        lock: run_lock,
        ..
    } = prepared;
    let data = run.data.clone();
    let result = run_training(&mut run, &options, &mut |event| {
        if let RunEvent::Eval {
            row,
            model,
            tokenizer,
            ..
        } = &event
        {
            // Before the event goes out, so that a page refreshing on it sees these parameters.
            *lock(&live.snapshot) = Some(Arc::new(Snapshot {
                model: (*model).clone(),
                tokenizer: (*tokenizer).clone(),
                step: row.step,
                data: data.clone(),
                embeddings: std::sync::OnceLock::new(),
            }));
        }
        for e in LiveEvent::from_run(&event) {
            live.push(e);
        }
    });
    let last = match result {
        Ok(outcome) => LiveEvent::ended(outcome, run.trainer.config.steps),
        Err(e) => vec![LiveEvent::Error {
            error: super::error::redact(&one_line(&e)),
        }],
    };
    // The lock and the server's record of the training go before the last event, so that a page
    // (or a client) acting on it sees the run as no longer training: a start or resume sent on
    // `finished` was refused as "already training" when the thread had not yet forgotten it.
    drop(run);
    drop(run_lock);
    forget(state, live);
    for event in last {
        live.push(event);
    }
}

/// The server-sent events of a training from its start: every event of the log, steps `<=
/// after` left out (the page read them from `steps.csv`), consecutive steps sent as one `step`
/// message holding an array. Ends after the training's last event.
pub fn events(
    live: Arc<LiveRun>,
    after: Option<usize>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Reader {
        live: Arc<LiveRun>,
        changes: watch::Receiver<usize>,
        position: usize,
        sent_at: Option<Instant>,
        ended: bool,
    }
    let reader = Reader {
        changes: live.count.subscribe(),
        live,
        position: 0,
        sent_at: None,
        ended: false,
    };
    stream::unfold(reader, move |mut r| async move {
        if r.ended {
            return None;
        }
        loop {
            let count = *r.changes.borrow_and_update();
            if count > r.position {
                if let Some(wait) = r.sent_at.map(|t| COALESCE.saturating_sub(t.elapsed())) {
                    tokio::time::sleep(wait).await;
                }
                let (new, next) = r.live.events_from(r.position);
                r.position = next;
                r.ended = new.last().is_some_and(LiveEvent::is_last);
                r.sent_at = Some(Instant::now());
                let messages = messages(&new, after);
                return Some((stream::iter(messages), r));
            }
            if r.changes.changed().await.is_err() {
                return None;
            }
        }
    })
    .flatten()
}

/// The SSE messages for `events` (see [`chargpt::page::live::messages`]).
fn messages(events: &[LiveEvent], after: Option<usize>) -> Vec<Result<Event, Infallible>> {
    chargpt::page::live::messages(events, after)
        .into_iter()
        .map(|(name, data)| Ok(Event::default().event(name).data(data)))
        .collect()
}

pub fn sse(name: &str, data: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(data).unwrap_or_else(|_| "null".into()))
}

/// Waits for Ctrl-C (or SIGTERM), then stops every training, waits for each to save, and exits.
/// A second Ctrl-C quits at once (the atomic writes keep the last checkpoint intact).
pub async fn save_all_on_signal(state: Arc<AppState>) {
    wait_for_signal().await;
    let trainings: Vec<Arc<LiveRun>> = lock(&state.live).values().cloned().collect();
    if trainings.is_empty() {
        say("chargpt serve: stopped");
        std::process::exit(0);
    }
    say(&format!(
        "chargpt serve: saving {} training{} before quitting (Ctrl-C again to quit without saving)",
        trainings.len(),
        if trainings.len() == 1 { "" } else { "s" }
    ));
    for t in &trainings {
        t.request_stop();
    }
    tokio::spawn(async {
        wait_for_signal().await;
        say("chargpt serve: quitting without saving");
        std::process::exit(130);
    });
    let _ = tokio::task::spawn_blocking(move || {
        for t in trainings {
            let handle = lock(&t.thread).take();
            if let Some(h) = handle {
                let _ = h.join();
            }
            let last = lock(&t.log).events.back().cloned();
            match last {
                Some(LiveEvent::Finished { step, .. }) => {
                    say(&format!("saved {} at step {step}", t.name))
                }
                Some(LiveEvent::Error { error }) => say(&format!("{}: {error}", t.name)),
                _ => {}
            }
        }
    })
    .await;
    say("chargpt serve: stopped");
    std::process::exit(0);
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(n: usize) -> LiveEvent {
        LiveEvent::Step(StepPoint {
            step: n,
            steps: 1 << 30,
            loss: 1.0,
            lr: 1e-3,
            grad_norm: 1.0,
            tokens_per_s: 0.0,
            eta_s: 0.0,
            at_ms: 0.0,
        })
    }

    fn steps_of(events: &[LiveEvent]) -> Vec<usize> {
        events
            .iter()
            .filter_map(|e| match e {
                LiveEvent::Step(p) => Some(p.step),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_long_runs_log_keeps_its_start_and_recent_events_only() {
        let mut log = Log::default();
        let start = LiveEvent::Start {
            step: 0,
            steps: 1 << 30,
            resumed: false,
            preset: None,
            params: 1,
        };
        log.push(start);
        let mut reader = 0;
        let (first, next) = log.since(reader);
        assert_eq!(first.len(), 1);
        reader = next;
        for n in 1..=5 * LOG_KEEP {
            assert_eq!(log.push(step(n)), n + 1);
            // A reader that keeps up sees every step once, in order.
            if n % 7_919 == 0 {
                let (new, next) = log.since(reader);
                assert_eq!(steps_of(&new), ((reader)..=n).collect::<Vec<_>>());
                reader = next;
            }
        }
        assert!(log.events.len() <= 2 * LOG_KEEP, "{}", log.events.len());
        // A reader that joins now gets the start and the recent steps, ending at the last.
        let (late, next) = log.since(0);
        assert!(matches!(late[0], LiveEvent::Start { .. }));
        let steps = steps_of(&late);
        assert_eq!(*steps.last().unwrap(), 5 * LOG_KEEP);
        assert!(steps.len() >= LOG_KEEP && steps.len() <= 2 * LOG_KEEP);
        assert_eq!(next, 5 * LOG_KEEP + 1);
        assert!(log.since(next).0.is_empty());
    }
}
