//! The single-process twin of the MPI backend, for builds without the `mpi` feature: one rank,
//! and a clear refusal when a launcher started several copies of this binary.

use super::{launched_rank, launched_size, DistributedError, Group};

/// This process's place in the job: always alone here.
#[derive(Debug)]
pub struct Session {
    _private: (),
}

impl Session {
    /// Refuses to run as one of several processes started by mpirun (each would train alone
    /// and write the same files); otherwise a group of one.
    pub fn start() -> Result<Session, DistributedError> {
        let size = launched_size().unwrap_or(1);
        if size > 1 || launched_rank() > 0 {
            return Err(DistributedError::NotBuilt { size: size.max(2) });
        }
        Ok(Session { _private: () })
    }

    pub fn group(&self) -> Group {
        Group::SINGLE
    }
}

// A group of one never reaches these: every caller handles one rank itself.
const ALONE: &str = "a single-process build has one rank";

pub(super) fn any(_: bool) -> bool {
    unreachable!("{ALONE}")
}

pub(super) fn barrier() {
    unreachable!("{ALONE}")
}

pub(super) fn all_gather(_: usize) -> Vec<usize> {
    unreachable!("{ALONE}")
}

pub(super) fn all_gather_f32(_: &[f32], _: &[i32], _: &[i32], _: &mut [f32]) {
    unreachable!("{ALONE}")
}

pub(super) fn broadcast(_: &mut Vec<u8>) {
    unreachable!("{ALONE}")
}

pub(super) fn broadcast_f32(_: &mut [f32]) {
    unreachable!("{ALONE}")
}

pub(super) fn broadcast_u32(_: &mut [u32]) {
    unreachable!("{ALONE}")
}

pub(super) fn sum_in_shard_order<'a>(
    _: Group,
    _: &mut Vec<f32>,
    _: &mut Vec<f32>,
    _: usize,
    _: &(dyn Fn(usize) -> &'a [f32] + Sync),
) {
    unreachable!("{ALONE}")
}

pub(super) fn host() -> String {
    "this machine".into()
}

pub(super) fn set_fault_note(_: String) {}

pub(super) fn stop_on_signals(_: std::sync::Arc<std::sync::atomic::AtomicBool>) {}

pub(super) fn abort(code: i32) -> ! {
    std::process::exit(code)
}

pub(super) fn ranks_on_this_machine() -> usize {
    1
}

pub(super) fn send_to_root(_: &[u8]) {
    unreachable!("{ALONE}")
}

pub(super) fn receive_at_root(_: bool) -> Option<(usize, Vec<u8>)> {
    None
}
