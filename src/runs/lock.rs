//! One process at a time trains a run directory: its lock.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The lock file of a run directory: held (an OS file lock) while a process trains the run, with
/// that process's id in it.
pub const LOCK_FILE: &str = "train.lock";

#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock; its id as the lock file records it.
    Held {
        pid: String,
    },
    Io(std::io::Error),
}

/// The lock on a run directory: an exclusive OS file lock on [`LOCK_FILE`], held from before the
/// first check of the directory to the end of training. The operating system drops it when the
/// process ends in any way (`kill -9` included), so it never outlives its holder; the file stays,
/// with the last holder's id in it.
#[derive(Debug)]
pub struct RunLock {
    file: File,
}

impl RunLock {
    pub fn acquire(dir: &Path) -> Result<RunLock, LockError> {
        let path = dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(LockError::Io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    pid: read_pid(&mut file),
                })
            }
            Err(TryLockError::Error(e)) => return Err(LockError::Io(e)),
        }
        let write = |file: &mut File| -> std::io::Result<()> {
            file.set_len(0)?;
            file.seek(SeekFrom::Start(0))?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()
        };
        write(&mut file).map_err(LockError::Io)?;
        Ok(RunLock { file })
    }

    /// The id of the process that holds `dir`'s lock, if one does.
    pub fn holder(dir: &Path) -> Option<String> {
        let mut file = File::open(dir.join(LOCK_FILE)).ok()?;
        // A shared lock conflicts only with a trainer's exclusive one, so two processes that
        // look at the same time do not see each other as trainers.
        match file.try_lock_shared() {
            Ok(()) => {
                let _ = file.unlock();
                None
            }
            Err(TryLockError::WouldBlock) => Some(read_pid(&mut file)),
            Err(TryLockError::Error(_)) => None,
        }
    }

    /// Releases the lock (dropping it does the same).
    pub fn release(self) {
        let _ = self.file.unlock();
    }
}

fn read_pid(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.read_to_string(&mut text);
    let pid = text.trim();
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        "(unknown)".into()
    } else {
        pid.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(
        target_arch = "wasm32",
        ignore = "a file on disk: std's temp_dir has none on wasm32 (the tab keeps runs in IndexedDB)"
    )]
    fn a_held_lock_names_its_process_and_dies_with_its_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(RunLock::holder(dir.path()), None);
        let lock = RunLock::acquire(dir.path()).unwrap();
        let me = std::process::id().to_string();
        assert_eq!(RunLock::holder(dir.path()), Some(me.clone()));
        // A second lock on the same file fails, even in the same process (flock locks belong to
        // an open file, not to a process).
        match RunLock::acquire(dir.path()) {
            Err(LockError::Held { pid }) => assert_eq!(pid, me),
            other => panic!("{other:?}"),
        }
        drop(lock);
        assert_eq!(RunLock::holder(dir.path()), None);
        RunLock::acquire(dir.path()).unwrap().release();
    }
}
