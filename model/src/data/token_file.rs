//! Token files: pre-tokenized data as a flat array of little-endian ids behind a small header, the
//! layout of nanoGPT's `train.bin` and llm.c's shards, memory-mapped so a corpus of any size costs no
//! RAM beyond the pages a batch touches.
//!
//! Format, version 1 (all integers little-endian; the header is 64 bytes so the ids start aligned):
//!
//! | offset | size | field                                                               |
//! |-------:|-----:|---------------------------------------------------------------------|
//! |      0 |    8 | magic `DSMOETOK`                                                    |
//! |      8 |    4 | u32 format version (1)                                              |
//! |     12 |    4 | u32 id width in bytes: 2 (vocabulary ≤ 65,536) or 4                 |
//! |     16 |    4 | u32 vocabulary size: every id is below it                           |
//! |     20 |    4 | reserved, 0                                                         |
//! |     24 |    8 | u64 token count                                                     |
//! |     32 |    8 | u64 bytes of text the tokens encode, 0 if unknown (for bits/byte)   |
//! |     40 |   24 | reserved, 0                                                         |
//! |     64 |  n·w | the ids                                                             |
//!
//! Opening checks everything that costs nothing (magic, version, width, file length against
//! count × width, so a file of the wrong width or a truncated one is caught at once); ids are checked
//! against the vocabulary as they are read, which is cheap and covers every token a run actually uses.

use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::checkpoint::write_atomic_with;
use crate::files::open_regular;
use crate::{Error, Result};

pub const MAGIC: &[u8; 8] = b"DSMOETOK";
pub const VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

/// An open, mapped token file.
pub struct TokenFile {
    path: PathBuf,
    map: Mmap,
    width: usize,
    vocab: u32,
    len: usize,
    text_bytes: Option<u64>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl TokenFile {
    pub fn open(path: &Path) -> Result<TokenFile> {
        let origin = path.display().to_string();
        let err = |msg: String| Error::data(&origin, msg);
        let file = open_regular(path, "token file")?;
        let file_len = file.metadata().map_err(|e| err(format!("cannot stat: {e}")))?.len();
        if file_len < HEADER_LEN as u64 {
            return Err(err(format!("{file_len} bytes is shorter than the {HEADER_LEN}-byte token-file header")));
        }
        // SAFETY: a read-only private map. Token files are written by rename (`write_token_file`), never
        // in place; another process truncating the file while it is mapped is outside what any mmap
        // reader can defend against.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| err(format!("cannot map: {e}")))?;
        let h = &map[..HEADER_LEN];
        if &h[..8] != MAGIC {
            return Err(err(format!("bad magic {:?}, expected {:?}: not a dsmoe token file", String::from_utf8_lossy(&h[..8]), "DSMOETOK")));
        }
        let version = u32_at(h, 8);
        if version != VERSION {
            return Err(err(format!("token-file version {version}, this build reads version {VERSION}")));
        }
        let width = u32_at(h, 12) as usize;
        if width != 2 && width != 4 {
            return Err(err(format!("id width {width} bytes; must be 2 or 4")));
        }
        let vocab = u32_at(h, 16);
        if vocab == 0 || (width == 2 && vocab > 1 << 16) {
            return Err(err(format!("vocabulary size {vocab} does not fit {width}-byte ids")));
        }
        let count = u64_at(h, 24);
        let expected = count.checked_mul(width as u64).and_then(|n| n.checked_add(HEADER_LEN as u64));
        if expected != Some(file_len) {
            return Err(err(format!(
                "the header says {count} tokens of {width} bytes, i.e. {} bytes with the header, but the file has {file_len} bytes (truncated, or written with another id width?)",
                expected.map_or("more than 2^64".to_string(), |n| n.to_string())
            )));
        }
        let text_bytes = Some(u64_at(h, 32)).filter(|&n| n > 0);
        Ok(TokenFile { path: path.to_path_buf(), map, width, vocab, len: count as usize, text_bytes })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn vocab(&self) -> u32 {
        self.vocab
    }

    pub fn width(&self) -> usize {
        self.width
    }

    /// Average bytes of text per token, when the header records the text size.
    pub fn bytes_per_token(&self) -> Option<f64> {
        self.text_bytes.filter(|_| self.len > 0).map(|b| b as f64 / self.len as f64)
    }

    /// Checks every id against the vocabulary, a chunk at a time.
    pub fn check_ids(&self) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        let mut ids = Vec::with_capacity(CHUNK.min(self.len));
        for start in (0..self.len).step_by(CHUNK) {
            ids.clear();
            self.read_into(start, CHUNK.min(self.len - start), &mut ids)?;
        }
        Ok(())
    }

    /// Appends ids `start..start + n` to `out`, checking each against the vocabulary.
    pub(crate) fn read_into(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        let bytes = &self.map[HEADER_LEN + start * self.width..HEADER_LEN + (start + n) * self.width];
        let first = out.len();
        match self.width {
            2 => out.extend(bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32)),
            _ => out.extend(bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        }
        if let Some(i) = out[first..].iter().position(|&id| id >= self.vocab) {
            return Err(Error::data(
                self.path.display().to_string(),
                format!("token {} has id {}, not below the vocabulary size {}", start + i, out[first + i], self.vocab),
            ));
        }
        Ok(())
    }
}

/// Writes `ids` as a token file at `path`, atomically; 2-byte ids when `vocab` ≤ 65,536, else 4.
/// `text_bytes` is the size of the text the ids encode, if known. Returns the token count.
pub fn write_token_file(path: &Path, vocab: u32, text_bytes: Option<u64>, ids: impl IntoIterator<Item = u32>) -> Result<u64> {
    let origin = path.display().to_string();
    if vocab == 0 {
        return Err(Error::data(&origin, "vocabulary size 0"));
    }
    let width: u32 = if vocab <= 1 << 16 { 2 } else { 4 };
    let mut count = 0u64;
    write_atomic_with(path, |w| {
        let ioerr = |e| Error::io(format!("writing {origin}"), e);
        // The count is patched in once known, so `ids` can stream from anywhere.
        w.write_all(&header(width, vocab, 0, text_bytes.unwrap_or(0))).map_err(ioerr)?;
        for id in ids {
            if id >= vocab {
                return Err(Error::data(&origin, format!("token {count} has id {id}, not below the vocabulary size {vocab}")));
            }
            let le = id.to_le_bytes();
            w.write_all(&le[..width as usize]).map_err(ioerr)?;
            count += 1;
        }
        w.seek(SeekFrom::Start(0)).map_err(ioerr)?;
        w.write_all(&header(width, vocab, count, text_bytes.unwrap_or(0))).map_err(ioerr)
    })?;
    Ok(count)
}

fn header(width: u32, vocab: u32, count: u64, text_bytes: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&width.to_le_bytes());
    h[16..20].copy_from_slice(&vocab.to_le_bytes());
    h[24..32].copy_from_slice(&count.to_le_bytes());
    h[32..40].copy_from_slice(&text_bytes.to_le_bytes());
    h
}
