//! Training across processes and machines: `mpirun -np N chargpt train ...` starts N processes
//! (ranks), each with its own threads, that train one model together.
//!
//! The decomposition is the one threads already use, one level up. A batch of B sequences is cut
//! into `G = L_0 + ... + L_{N-1}` shards of consecutive rows exactly as one process with G
//! threads cuts it (`shard_rows(B, G)`), where `L_r` is rank r's thread count; rank r runs the
//! shards `L_0 + ... + L_{r-1}` onwards on its threads. Every rank draws the whole batch from
//! the same seeded generator (drawing is cheap), so no data moves, and dropout masks are derived
//! from the global row, so they do not depend on the split. Shard s holds `n_s` rows and adds
//! `n_s / B` times the gradient of its own mean loss, so the sum over all shards is exactly the
//! gradient of the batch's mean loss.
//!
//! The sum runs in the order of the shards, so that it is the same, bit for bit, as one process
//! adding its shards one after the other: `((g_0 + g_1) + g_2) + ...` (float addition is not
//! associative; it is commutative, which the chain below relies on). It is a pipelined chain:
//! rank 0 adds its own shards and sends the partial sum to rank 1 in pieces; rank r adds its
//! shards, in order, onto each piece as it arrives and sends it on; the last rank holds the total
//! and sends it back down the chain. Each link carries the gradient once each way (`2 x 4 P`
//! bytes per rank for P parameters, as a ring all-reduce), and pieces overlap, so its time is
//! about `2 x 4 P / bandwidth + 2 N x piece / bandwidth`.
//!
//! Every rank then holds the same gradient and applies the same AdamW step, so the parameters
//! never diverge. The shards' losses are gathered and added in shard order too, so every rank
//! sees the loss one process would. Rank 0 alone prints, evaluates into files and writes
//! checkpoints; the loss estimates are split over the ranks like training batches.
//!
//! Every wait on another rank is bounded: a watchdog thread ends a process that has waited
//! longer than its deadline, with a message; `mpirun` then ends the others (see [`Session`]).
//! Without the `mpi` feature this module is a single-process twin: one group of one rank, and
//! [`Session::start`] refuses to run under `mpirun`.

// The MPI build reacts to mpirun's signals with sigaction (mpi.rs) and links OpenMPI or MPICH:
// Linux and macOS. On Windows, train without it (threads on one machine need no MPI).
#[cfg(all(feature = "mpi", not(unix)))]
compile_error!(
    "the mpi feature is for Linux and macOS (OpenMPI or MPICH); build without it on Windows"
);

#[cfg(feature = "mpi")]
mod mpi;
#[cfg(feature = "mpi")]
use self::mpi as backend;
#[cfg(not(feature = "mpi"))]
mod single;
#[cfg(not(feature = "mpi"))]
use self::single as backend;

pub use backend::Session;

use crate::optimizer::add_assign;
use rayon::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};

/// The processes that train one model together: this one's rank and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Group {
    rank: usize,
    size: usize,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DistributedError {
    #[error("mpirun started {size} processes, but this chargpt was built without MPI, so each would train alone; rebuild it with `cargo build --release --features mpi` (Debian needs libopenmpi-dev openmpi-bin libclang-dev)")]
    NotBuilt { size: usize },
    #[error("the MPI library offers no thread support for calls from worker threads (MPI_THREAD_SERIALIZED); use an MPI built with thread support, such as Debian's OpenMPI")]
    NoThreadSupport,
    #[error("MPI could not be started; run chargpt under mpirun, or without it")]
    Init,
    #[error("batch_size ({batch}) is smaller than the number of ranks ({ranks}); every rank needs at least one sequence of the batch: raise batch_size or start fewer ranks")]
    BatchTooSmall { batch: usize, ranks: usize },
    #[error("rank {rank} could not read what rank 0 sent: {what}")]
    Garbled { rank: usize, what: String },
    #[error(transparent)]
    OutOfMemory(#[from] crate::memory::OutOfMemory),
}

impl Group {
    /// One process alone.
    pub const SINGLE: Group = Group { rank: 0, size: 1 };

    pub fn rank(self) -> usize {
        self.rank
    }

    pub fn size(self) -> usize {
        self.size
    }

    /// Rank 0: the one that prints and writes files.
    pub fn is_root(self) -> bool {
        self.rank == 0
    }

    /// Whether any rank's `flag` is set (every rank gets the same answer).
    pub fn any(self, flag: bool) -> bool {
        if self.size == 1 {
            return flag;
        }
        backend::any(flag)
    }

    /// Every rank's `value`, in rank order.
    pub fn all_gather(self, value: usize) -> Vec<usize> {
        if self.size == 1 {
            return vec![value];
        }
        backend::all_gather(value)
    }

    /// Gathers every rank's `mine` (rank r gives `counts[r]` values) into `all`, in rank order.
    pub fn all_gather_f32(self, mine: &[f32], counts: &[i32], offsets: &[i32], all: &mut [f32]) {
        if self.size == 1 {
            all[..mine.len()].copy_from_slice(mine);
            return;
        }
        backend::all_gather_f32(mine, counts, offsets, all);
    }

    /// Rank 0's bytes on every rank: `bytes` is read on rank 0 and replaced on the others.
    pub fn broadcast_bytes(self, bytes: &mut Vec<u8>) {
        if self.size > 1 {
            backend::broadcast(bytes);
        }
    }

    /// Rank 0's values on every rank, in place (the lengths must agree).
    pub fn broadcast_f32(self, values: &mut [f32]) {
        if self.size > 1 {
            backend::broadcast_f32(values);
        }
    }

    /// [`Group::broadcast_f32`] for token ids.
    pub fn broadcast_u32(self, values: &mut [u32]) {
        if self.size > 1 {
            backend::broadcast_u32(values);
        }
    }

    /// The sum of every global shard's gradient, in shard order, into `total` on every rank.
    ///
    /// On entry `total` holds this rank's first shard's gradient and `later(k)` (k < `count`)
    /// its following ones; `scratch` is a buffer of the same length. On return `total` holds
    /// `g_0 + g_1 + ... + g_{G-1}` added left to right, the same bits on every rank and as one
    /// process adding the same shards. With one rank this is the local sum.
    pub fn sum_in_shard_order<'a>(
        self,
        total: &mut Vec<f32>,
        scratch: &mut Vec<f32>,
        count: usize,
        later: &(dyn Fn(usize) -> &'a [f32] + Sync),
    ) {
        if self.size == 1 {
            add_shards(total, 0, None, count, later);
            return;
        }
        if *SYNCED_TIMING {
            // Every rank starts the sum together, so that its time is the sum's own (the bytes
            // and the additions), not the wait for a slower rank's shards.
            backend::barrier();
        }
        let start = web_time::Instant::now();
        backend::sum_in_shard_order(self, total, scratch, count, later);
        GRADIENT_SUM_MICROS.fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
        GRADIENT_SUMS.fetch_add(1, Ordering::Relaxed);
    }

    /// The mean time one gradient sum across ranks took on each rank, in seconds, in rank order
    /// (a collective). A rank's time includes waiting for the slower ranks to finish their
    /// shards (unless `CHARGPT_MPI_SYNC_TIMING=1`), so the least of them is close to the sum's
    /// own cost: the bytes on the wire and the additions. `None` when no sum ran.
    pub fn gradient_sum_seconds(self) -> Option<Vec<f64>> {
        let sums = GRADIENT_SUMS.load(Ordering::Relaxed);
        let micros = GRADIENT_SUM_MICROS.load(Ordering::Relaxed);
        let mean = micros.checked_div(sums).unwrap_or(0);
        let all = self.all_gather(mean as usize);
        (sums > 0).then(|| all.into_iter().map(|us| us as f64 * 1e-6).collect())
    }

    /// A short description for messages: `rank 1 of 4 (host)`.
    pub fn describe(self) -> String {
        format!("rank {} of {} ({})", self.rank, self.size, backend::host())
    }
}

/// Time spent in gradient sums across ranks, and how many ran (for the summary).
static GRADIENT_SUM_MICROS: AtomicU64 = AtomicU64::new(0);
static GRADIENT_SUMS: AtomicU64 = AtomicU64::new(0);

/// The variable that makes each gradient sum start with a barrier, so that the time reported is
/// the sum's own (for measurements; it costs a round trip per step).
pub const SYNCED_TIMING_ENV: &str = "CHARGPT_MPI_SYNC_TIMING";

static SYNCED_TIMING: std::sync::LazyLock<bool> =
    std::sync::LazyLock::new(|| std::env::var(SYNCED_TIMING_ENV).is_ok_and(|v| v == "1"));

/// Floats per task when shards are added on several threads.
const ADD_PIECE: usize = 1 << 14;

/// `total += incoming` (when given), then `total += later(k)[offset..]` for each k in order:
/// the elements of `total` are those of the whole gradient from `offset` on.
fn add_shards<'a>(
    total: &mut [f32],
    offset: usize,
    incoming: Option<&[f32]>,
    count: usize,
    later: &(dyn Fn(usize) -> &'a [f32] + Sync),
) {
    let adds = count + usize::from(incoming.is_some());
    if adds == 0 {
        return;
    }
    total
        .par_chunks_mut(ADD_PIECE)
        .enumerate()
        .with_min_len(crate::kernels::min_items(ADD_PIECE * adds))
        .for_each(|(i, piece)| {
            let start = i * ADD_PIECE;
            if let Some(acc) = incoming {
                // piece + acc is acc + piece bit for bit: the running sum comes first in the
                // order, this rank's shard second.
                add_assign(piece, &acc[start..start + piece.len()]);
            }
            for k in 0..count {
                let from = offset + start;
                add_assign(piece, &later(k)[from..from + piece.len()]);
            }
        });
}

/// How many processes a launcher (mpirun, mpiexec, srun with PMI) started, read from the
/// variables it sets; `None` outside one.
pub fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// This process's rank as the launcher numbers it (0 outside one).
pub fn launched_rank() -> usize {
    [
        "OMPI_COMM_WORLD_RANK",
        "PMI_RANK",
        "PMIX_RANK",
        "MV2_COMM_WORLD_RANK",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
    .unwrap_or(0)
}

/// Records what a fault message should say about the state on disk (for example "the
/// checkpoint of step 50 in runs/x is intact"); rank 0's watchdog prints it when the job ends
/// early.
pub fn set_fault_note(note: String) {
    backend::set_fault_note(note);
}

/// Sets `flag` when this process is asked to stop (SIGINT, SIGTERM, which mpirun sends on
/// Ctrl-C, or SIGUSR1, which it forwards at once); the ranks agree on it at the next step.
/// Outside MPI the command line handles Ctrl-C itself, and this does nothing.
pub fn stop_on_signals(flag: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    backend::stop_on_signals(flag);
}

/// Ends every rank of the job at once (after an error on one rank while the others wait).
pub fn abort(code: i32) -> ! {
    backend::abort(code)
}

/// Ranks of the job on this machine (1 outside MPI): the default thread count is the machine's
/// cores shared among them.
pub fn ranks_on_this_machine() -> usize {
    backend::ranks_on_this_machine()
}

/// A message from rank 0 to the others or back, for work divided over ranks (sweeps): tagged
/// bytes, small.
pub fn send_to_root(bytes: &[u8]) {
    backend::send_to_root(bytes);
}

/// On rank 0: the next message another rank sent with [`send_to_root`], with its rank; `wait`
/// blocks until one comes (while the other ranks train: no deadline, but stops when mpirun
/// ends the job).
pub fn receive_at_root(wait: bool) -> Option<(usize, Vec<u8>)> {
    backend::receive_at_root(wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rank_sums_its_shards_in_order() {
        let shards: Vec<Vec<f32>> = (0..3)
            .map(|k| {
                (0..40_000)
                    .map(|i| ((i * 7 + k) % 13) as f32 * 0.1)
                    .collect()
            })
            .collect();
        let mut total = shards[0].clone();
        let mut scratch = Vec::new();
        let later = |k: usize| -> &[f32] { &shards[k + 1] };
        Group::SINGLE.sum_in_shard_order(&mut total, &mut scratch, 2, &later);
        for i in 0..total.len() {
            assert_eq!(
                total[i].to_bits(),
                ((shards[0][i] + shards[1][i]) + shards[2][i]).to_bits()
            );
        }
    }
}
