//! Atomic file replacement: every file a checkpoint, a token file or a plot writes goes through here,
//! so a crash or a failed write never leaves a half-written file under the final name.
//!
//! The recipe is the POSIX one: write a temporary file in the *same directory* (rename is atomic only
//! within one file system), fsync it (so the rename cannot reach the disk before the data), rename it
//! over the target, then fsync the directory (so the rename itself survives a power cut). Readers see
//! either the old file or the new one, never a mixture. On any error the temporary file is removed and
//! the old file is left as it was.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Result};

/// Replaces `path` with `bytes` atomically.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(bytes).map_err(|e| Error::io(format!("writing {}", path.display()), e)))
}

/// Replaces `path` atomically with what `fill` writes. `fill` gets a buffered writer over the
/// temporary file (it may seek, e.g. to patch a header once a count is known); if it fails, the
/// temporary file is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path);
    let tmp = temp_path(path)?;
    let result = (|| {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| Error::io(format!("writing {}", tmp.display()), e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(format!("syncing {}", tmp.display()), e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io(format!("renaming {} to {}", tmp.display(), path.display()), e))
    })();
    if result.is_err() {
        // Best effort: the error being returned matters more than a failure to clean up.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    sync_dir(&dir)
}

/// Makes a completed rename (or file creation) in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    // Directories can be opened and fsynced on Unix only; elsewhere the rename is as durable as the
    // platform makes it.
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(format!("syncing directory {}", dir.display()), e))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A name beside `path` that no other writer uses: the process id keeps concurrent processes apart,
/// the counter concurrent threads. The leading dot and `.tmp` suffix mark it as disposable.
fn temp_path(path: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::io(format!("writing {}", path.display()), std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(parent_dir(path).join(format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id())))
}

/// Removes the temporary files (`temp_path`'s `.NAME.PID-N.tmp`) a killed writer left in `dir`.
/// Only a process that is the directory's one writer (it holds the run lock) may call this: another
/// live writer's temporary file would look the same. Returns how many were removed.
pub fn remove_stale_temps(dir: &Path) -> Result<usize> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    let mut removed = 0;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let is_temp = name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp"));
        if is_temp && entry.file_type().is_ok_and(|t| t.is_file()) {
            fs::remove_file(entry.path()).map_err(|e| Error::io(format!("removing stale temporary file {}", entry.path().display()), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}
