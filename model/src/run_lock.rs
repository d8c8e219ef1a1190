//! One writer per run directory: an exclusive advisory lock (`flock` on Unix, through
//! `File::try_lock`) on `RUN/lock`, held for as long as a `TrainingRun` lives.
//!
//! The kernel drops the lock when the holding process exits, however it exits (a crash or `kill -9`
//! included), so a stale lock file never blocks a later run: only a live holder does. The holder
//! writes its process id, host name and start time into the file, so the second process's error
//! can say who holds the directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::files::{read_text_limited, METADATA_LIMIT};
use crate::{Error, Result};

pub const LOCK_FILE: &str = "lock";

/// A held lock on a run directory; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    _file: File,
}

impl RunLock {
    /// Locks `run_dir` (which must exist), or fails naming the process that holds it.
    pub fn acquire(run_dir: &Path) -> Result<RunLock> {
        let path = run_dir.join(LOCK_FILE);
        let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
        // No truncation before the lock is ours: the file names the current holder.
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| io("opening", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = read_text_limited(&path, METADATA_LIMIT, "lock file").map(|t| t.trim().to_string()).unwrap_or_default();
                let holder = if holder.is_empty() { "a process that has not yet written its name".to_string() } else { holder };
                return Err(Error::checkpoint(
                    run_dir.display().to_string(),
                    format!("the run directory is in use by another dsmoe process ({holder}); one run directory has one writer"),
                ));
            }
            Err(TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "this host".into());
        let line = format!("pid {} on {host}, since unix time {since}\n", std::process::id());
        file.set_len(0).and_then(|()| file.write_all(line.as_bytes())).and_then(|()| file.flush()).map_err(|e| io("writing", e))?;
        Ok(RunLock { path, _file: file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
