//! Reading user-supplied paths safely: only regular files, and small metadata files only up to a
//! size limit.
//!
//! Opening a named pipe for reading blocks until a writer appears, and `/dev/zero` or a character
//! device reads forever; neither is ever a config, a checkpoint or a corpus. So every path that is
//! read whole or memory-mapped is first checked to be a regular file (after following links), and a
//! metadata file (`state.json`, `latest`, a config) is read through a limit far above any real one,
//! so a huge or endless file is an error naming it instead of a process that eats all memory.
//! `same_file` compares files by device and inode, so an output that is an input under another
//! name (a symbolic or hard link) is recognised.

use std::fs::{self, File};
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// Largest config, `state.json` or `latest` read: real ones are a few KiB.
pub const METADATA_LIMIT: u64 = 1 << 20;
/// Largest tokenizer file read: a 256K-token BPE is about 20 MiB of JSON.
pub const TOKENIZER_LIMIT: u64 = 256 << 20;

/// Fails unless `path` is (or links to) a regular file; `what` names the file in the message.
pub fn require_regular_file(path: &Path, what: &str) -> Result<()> {
    let meta = fs::metadata(path).map_err(|e| Error::io(format!("cannot open the {what} {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::Invalid {
            what: "input file",
            value: path.display().to_string(),
            msg: format!("the {what} must be a regular file, not a {}", kind(&meta)),
        });
    }
    Ok(())
}

/// Opens a regular file for reading, checked before opening (a pipe would block in `open`).
pub fn open_regular(path: &Path, what: &str) -> Result<File> {
    require_regular_file(path, what)?;
    File::open(path).map_err(|e| Error::io(format!("opening {what} {}", path.display()), e))
}

/// Reads a regular file of at most `limit` bytes whole.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let file = open_regular(path, what)?;
    let mut bytes = Vec::new();
    // Read one byte past the limit, so a file that grew after the check is still caught.
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| Error::io(format!("reading {what} {}", path.display()), e))?;
    if bytes.len() as u64 > limit {
        return Err(Error::Invalid { what: "input file", value: path.display().to_string(), msg: format!("the {what} is larger than {limit} bytes") });
    }
    Ok(bytes)
}

/// `read_limited` as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64, what: &str) -> Result<String> {
    String::from_utf8(read_limited(path, limit, what)?)
        .map_err(|e| Error::Invalid { what: "input file", value: path.display().to_string(), msg: format!("the {what} is not UTF-8 ({e})") })
}

/// True when `a` and `b` both exist and are the same file (same device and inode), under whatever
/// names or links.
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => same_inode(&a, &b),
        _ => false,
    }
}

#[cfg(unix)]
fn same_inode(a: &fs::Metadata, b: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_inode(_: &fs::Metadata, _: &fs::Metadata) -> bool {
    false
}

fn kind(meta: &fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "named pipe";
        }
        if t.is_char_device() || t.is_block_device() {
            return "device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if meta.is_dir() {
        "directory"
    } else {
        "special file"
    }
}
