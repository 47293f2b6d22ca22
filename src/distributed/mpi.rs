//! The MPI backend: rsmpi on the system's MPI (OpenMPI on Debian), and the watchdog that bounds
//! every wait on another rank.
//!
//! MPI is started with `MPI_THREAD_SERIALIZED`: the training runs on a rayon worker thread, not
//! on the thread that started MPI, and only one thread calls MPI at a time (the watchdog never
//! does). Every call that waits on another rank runs inside [`waiting`], which records when the
//! wait began and how long it may last: `CHARGPT_MPI_TIMEOUT` seconds (60 by default) plus four
//! times the longest stretch of work this rank has done between two waits (a step, or rank 0's
//! evaluation and save), so that a slow model does not trip it and a dead or frozen rank is
//! noticed in about a minute.
//!
//! What ends a job early, and what is printed:
//! - a rank killed or crashed: mpirun notices at once, says which rank ended, and sends the
//!   others SIGTERM; a rank that then waits on the dead one for half a second prints that the
//!   job is ending (rank 0 with where the last checkpoint is) and exits;
//! - a rank frozen, or a network that stops carrying packets: the ranks that wait on it reach
//!   their deadline, print so and exit, and mpirun ends the rest;
//! - Ctrl-C: mpirun sends SIGTERM to every rank (after `odls_base_sigkill_timeout`, 1 s by
//!   default, and SIGKILL as long again later); the ranks agree at the next step boundary, rank 0
//!   saves, and all exit with status 130. SIGUSR1 to mpirun is forwarded at once and does the
//!   same without the SIGKILL that follows, for models whose step takes longer than a second.
//!
//! Checkpoints are written atomically (a temporary file renamed over the old one), so whatever
//! ends a process, the last checkpoint on disk stays loadable.

use super::{add_shards, launched_size, DistributedError, Group};
use ::mpi::collective::SystemOperation;
use ::mpi::datatype::PartitionMut;
use ::mpi::environment::Universe;
use ::mpi::topology::SimpleCommunicator;
use ::mpi::traits::*;
use ::mpi::Threading;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use web_time::Instant;

/// MPI, started for this process when a launcher started several; finalized when dropped.
pub struct Session {
    universe: Option<Universe>,
    group: Group,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("group", &self.group)
            .finish()
    }
}

impl Session {
    /// Starts MPI if a launcher started several processes (one process alone does not touch
    /// MPI at all, so the binary behaves as a build without the feature), installs the stop
    /// signals and starts the watchdog.
    pub fn start() -> Result<Session, DistributedError> {
        if launched_size().unwrap_or(1) <= 1 {
            return Ok(Session {
                universe: None,
                group: Group::SINGLE,
            });
        }
        let (universe, threading) = ::mpi::initialize_with_threading(Threading::Serialized)
            .ok_or(DistributedError::Init)?;
        if !matches!(threading, Threading::Serialized | Threading::Multiple) {
            return Err(DistributedError::NoThreadSupport);
        }
        let world = universe.world();
        let group = Group {
            rank: world.rank() as usize,
            size: world.size() as usize,
        };
        // Read now, on this thread: the watchdog names the host in its messages and must not
        // call MPI itself.
        host();
        install_signal_handlers();
        start_watchdog(group);
        Ok(Session {
            universe: Some(universe),
            group,
        })
    }

    pub fn group(&self) -> Group {
        self.group
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(universe) = self.universe.take() {
            // MPI_Finalize waits for every rank to arrive.
            let _wait = waiting("the end of the job", true);
            drop(universe);
        }
    }
}

fn world() -> SimpleCommunicator {
    SimpleCommunicator::world()
}

pub(super) fn any(flag: bool) -> bool {
    let _wait = waiting("the agreement on stopping", true);
    let mut out = 0i32;
    world().all_reduce_into(&i32::from(flag), &mut out, SystemOperation::max());
    out != 0
}

pub(super) fn barrier() {
    let _wait = waiting("the other ranks' shards", true);
    world().barrier();
}

pub(super) fn all_gather(value: usize) -> Vec<usize> {
    let _wait = waiting("setting up", true);
    let world = world();
    let mut all = vec![0u64; world.size() as usize];
    world.all_gather_into(&(value as u64), &mut all[..]);
    all.into_iter().map(|v| v as usize).collect()
}

pub(super) fn all_gather_f32(mine: &[f32], counts: &[i32], offsets: &[i32], all: &mut [f32]) {
    let _wait = waiting("the shards' losses", true);
    let mut partition = PartitionMut::new(all, counts, offsets);
    world().all_gather_varcount_into(mine, &mut partition);
}

/// Pieces of a broadcast, under MPI's 2^31-element limit for one call.
const BROADCAST_PIECE: usize = 1 << 28;

pub(super) fn broadcast(bytes: &mut Vec<u8>) {
    let _wait = waiting("the run's state from rank 0", true);
    let world = world();
    let root = world.process_at_rank(0);
    let mut len = bytes.len() as u64;
    root.broadcast_into(&mut len);
    if world.rank() != 0 {
        bytes.clear();
        bytes.resize(len as usize, 0);
    }
    for piece in bytes.chunks_mut(BROADCAST_PIECE) {
        root.broadcast_into(piece);
    }
}

pub(super) fn broadcast_f32(values: &mut [f32]) {
    let _wait = waiting("the run's state from rank 0", true);
    let world = world();
    let root = world.process_at_rank(0);
    for piece in values.chunks_mut(BROADCAST_PIECE) {
        root.broadcast_into(piece);
    }
}

pub(super) fn broadcast_u32(values: &mut [u32]) {
    let _wait = waiting("the run's state from rank 0", true);
    let world = world();
    let root = world.process_at_rank(0);
    for piece in values.chunks_mut(BROADCAST_PIECE) {
        root.broadcast_into(piece);
    }
}

/// Floats per message of the gradient chain (256 KB): big enough that a message's fixed cost
/// (tens of microseconds over TCP) is small against its bytes (0.2 ms at 10 Gb/s), small enough
/// that filling the chain, `2 N` pieces' time, stays short against the gradient's own time on
/// the wire (32 ranks: 13 ms against 70 ms for the lecture model's 43 MB).
const PIECE: usize = 1 << 16;
const FORWARD: i32 = 11;
const BACK: i32 = 12;
const TO_ROOT: i32 = 21;

/// The pipelined chain of the module docs. Rank 0 adds its shards and sends each piece on;
/// a middle rank adds the piece that arrives and its own shards (in that order) and sends it
/// on, then passes the total back; the last rank's sum is the total, which it sends back.
pub(super) fn sum_in_shard_order<'a>(
    group: Group,
    total: &mut Vec<f32>,
    scratch: &mut Vec<f32>,
    count: usize,
    later: &(dyn Fn(usize) -> &'a [f32] + Sync),
) {
    let world = world();
    let (rank, size) = (group.rank, group.size);
    scratch.resize(total.len(), 0.0);
    let _wait = waiting("the gradient sum", true);
    if rank == 0 {
        let next = world.process_at_rank(1);
        ::mpi::request::scope(|scope| {
            let back: Vec<_> = scratch
                .chunks_mut(PIECE)
                .map(|piece| next.immediate_receive_into_with_tag(scope, piece, BACK))
                .collect();
            let mut sends = Vec::with_capacity(back.len());
            let mut offset = 0;
            for piece in total.chunks_mut(PIECE) {
                add_shards(piece, offset, None, count, later);
                offset += piece.len();
                let piece: &[f32] = piece;
                sends.push(next.immediate_send_with_tag(scope, piece, FORWARD));
            }
            for request in sends {
                request.wait_without_status();
            }
            for request in back {
                request.wait_without_status();
            }
        });
        std::mem::swap(total, scratch);
        return;
    }
    let previous = world.process_at_rank(rank as i32 - 1);
    let last = rank + 1 == size;
    ::mpi::request::scope(|scope| {
        let incoming: Vec<_> = scratch
            .chunks_mut(PIECE)
            .map(|piece| previous.immediate_receive_into_with_tag(scope, piece, FORWARD))
            .collect();
        let mut sends = Vec::with_capacity(incoming.len());
        let mut offset = 0;
        for (piece, request) in total.chunks_mut(PIECE).zip(incoming) {
            let running: &[f32] = request.wait_for_data();
            add_shards(piece, offset, Some(running), count, later);
            offset += piece.len();
            let piece: &[f32] = piece;
            sends.push(if last {
                previous.immediate_send_with_tag(scope, piece, BACK)
            } else {
                world
                    .process_at_rank(rank as i32 + 1)
                    .immediate_send_with_tag(scope, piece, FORWARD)
            });
        }
        for request in sends {
            request.wait_without_status();
        }
    });
    if last {
        return;
    }
    // The total comes back from the next rank; pass it on down the chain.
    let next = world.process_at_rank(rank as i32 + 1);
    ::mpi::request::scope(|scope| {
        let back: Vec<_> = scratch
            .chunks_mut(PIECE)
            .map(|piece| next.immediate_receive_into_with_tag(scope, piece, BACK))
            .collect();
        let mut sends = Vec::with_capacity(back.len());
        for request in back {
            let piece: &[f32] = request.wait_for_data();
            sends.push(previous.immediate_send_with_tag(scope, piece, BACK));
        }
        for request in sends {
            request.wait_without_status();
        }
    });
    std::mem::swap(total, scratch);
}

pub(super) fn host() -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| ::mpi::environment::processor_name().unwrap_or_else(|_| "?".into()))
        .clone()
}

pub(super) fn abort(code: i32) -> ! {
    let _ = std::io::stderr().flush();
    world().abort(code)
}

pub(super) fn ranks_on_this_machine() -> usize {
    if launched_size().unwrap_or(1) <= 1 {
        return 1;
    }
    let _wait = waiting("setting up", true);
    world().split_shared(0).size() as usize
}

pub(super) fn send_to_root(bytes: &[u8]) {
    let _wait = waiting("sending results to rank 0", true);
    world().process_at_rank(0).send_with_tag(bytes, TO_ROOT);
}

pub(super) fn receive_at_root(wait: bool) -> Option<(usize, Vec<u8>)> {
    let world = world();
    // The other ranks are training their share: a wait without deadline (mpirun ends the job
    // if one of them dies), that still ends when mpirun ends the job.
    let _wait = wait.then(|| waiting("the other ranks' runs", false));
    loop {
        if let Some(status) = world.any_process().immediate_probe_with_tag(TO_ROOT) {
            let from = status.source_rank();
            let (bytes, _) = world
                .process_at_rank(from)
                .receive_vec_with_tag::<u8>(TO_ROOT);
            return Some((from as usize, bytes));
        }
        if !wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- The watchdog -------------------------------------------------------------------------

/// Milliseconds since the watchdog's clock started, from 1 (0 means "not waiting").
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

static WAIT_SINCE: AtomicU64 = AtomicU64::new(0);
static WAIT_LIMIT: AtomicU64 = AtomicU64::new(u64::MAX);
static WAIT_WHAT: Mutex<&str> = Mutex::new("");
static LAST_WAIT_END: AtomicU64 = AtomicU64::new(0);
static LONGEST_WORK: AtomicU64 = AtomicU64::new(0);
static NOTE: Mutex<String> = Mutex::new(String::new());
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static STOP_FLAGS: Mutex<Vec<Arc<AtomicBool>>> = Mutex::new(Vec::new());

/// The variable that sets the base deadline of a wait, in seconds.
pub const TIMEOUT_ENV: &str = "CHARGPT_MPI_TIMEOUT";

fn base_timeout_ms() -> u64 {
    static BASE: OnceLock<u64> = OnceLock::new();
    *BASE.get_or_init(|| {
        std::env::var(TIMEOUT_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0)
            .map_or(60_000, |s| (s * 1000.0) as u64)
    })
}

/// A wait on other ranks, from creation to drop.
struct Waiting;

fn waiting(what: &'static str, bounded: bool) -> Waiting {
    let now = now_ms();
    let last = LAST_WAIT_END.load(Ordering::Relaxed);
    if last > 0 {
        LONGEST_WORK.fetch_max(now - last, Ordering::Relaxed);
    }
    let limit = if bounded {
        base_timeout_ms() + 4 * LONGEST_WORK.load(Ordering::Relaxed)
    } else {
        u64::MAX
    };
    if let Ok(mut w) = WAIT_WHAT.lock() {
        *w = what;
    }
    WAIT_LIMIT.store(limit, Ordering::Relaxed);
    WAIT_SINCE.store(now, Ordering::Release);
    Waiting
}

impl Drop for Waiting {
    fn drop(&mut self) {
        WAIT_SINCE.store(0, Ordering::Release);
        LAST_WAIT_END.store(now_ms(), Ordering::Relaxed);
    }
}

pub(super) fn set_fault_note(note: String) {
    if let Ok(mut n) = NOTE.lock() {
        *n = note;
    }
}

pub(super) fn stop_on_signals(flag: Arc<AtomicBool>) {
    if SIGNAL.load(Ordering::SeqCst) != 0 {
        flag.store(true, Ordering::SeqCst);
    }
    if let Ok(mut flags) = STOP_FLAGS.lock() {
        flags.push(flag);
    }
}

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: all a signal handler may safely do. The watchdog acts on it.
    SIGNAL.store(signal, Ordering::SeqCst);
}

fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGUSR1] {
        // SAFETY: a zeroed sigaction with an empty mask and a handler that only stores to an
        // atomic is a valid, async-signal-safe disposition.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

fn start_watchdog(group: Group) {
    now_ms();
    let _ = std::thread::Builder::new()
        .name("chargpt-mpi-watchdog".into())
        .spawn(move || {
            let mut signalled_at = None;
            loop {
                std::thread::sleep(Duration::from_millis(50));
                watch(group, &mut signalled_at);
            }
        });
}

/// Milliseconds a rank asked to stop may still wait on the others before it concludes that the job
/// is ending under it (a rank died and mpirun is stopping the rest).
const WAIT_AFTER_STOP_MS: u64 = 500;

fn watch(group: Group, signalled_at: &mut Option<u64>) {
    let now = now_ms();
    let signal = SIGNAL.load(Ordering::SeqCst);
    if signal != 0 && signalled_at.is_none() {
        *signalled_at = Some(now);
        if let Ok(flags) = STOP_FLAGS.lock() {
            for flag in flags.iter() {
                flag.store(true, Ordering::SeqCst);
            }
        }
        if group.is_root() {
            let name = match signal {
                libc::SIGINT => "SIGINT",
                libc::SIGTERM => "SIGTERM (mpirun's Ctrl-C)",
                _ => "SIGUSR1",
            };
            let _ = writeln!(
                std::io::stderr(),
                "\n{name}: stopping every rank after this step to save"
            );
        }
    }
    let since = WAIT_SINCE.load(Ordering::Acquire);
    if since == 0 {
        return;
    }
    let what = WAIT_WHAT.lock().map(|w| *w).unwrap_or("");
    if let Some(at) = *signalled_at {
        if now.saturating_sub(since.max(at)) > WAIT_AFTER_STOP_MS {
            if group.is_root() {
                fault(
                    group,
                    &format!("the job is ending (Ctrl-C, or another rank ended: see mpirun's message) while waiting for {what}"),
                );
            }
            // SAFETY: _exit ends the process at once, without running destructors that could
            // wait on the other ranks.
            unsafe { libc::_exit(143) }
        }
    }
    let limit = WAIT_LIMIT.load(Ordering::Relaxed);
    let waited = now.saturating_sub(since);
    if waited > limit {
        fault(
            group,
            &format!(
                "no answer from the other ranks for {:.0} s while waiting for {what} (a rank died, hung, or lost its network; {TIMEOUT_ENV}=SECONDS sets the base deadline)",
                waited as f64 / 1000.0
            ),
        );
        // SAFETY: as above.
        unsafe { libc::_exit(1) }
    }
}

fn fault(group: Group, message: &str) {
    let note = NOTE.lock().map(|n| n.clone()).unwrap_or_default();
    let note = if note.is_empty() {
        String::new()
    } else {
        format!("; {note}")
    };
    let _ = writeln!(
        std::io::stderr(),
        "error: {}: {message}{note}",
        group.describe()
    );
}
