//! Training data: a token sequence split into training and validation parts, random training
//! windows, and contiguous validation windows.
//!
//! Two sources, told apart by their first bytes: a token file (`token_file`, magic `DSMOETOK`) or
//! anything else, read as text with one token per byte (vocabulary 256, so a loss per token is a loss
//! per byte). Both are memory-mapped: opening costs nothing and a batch reads only its windows.
//!
//! The split is contiguous: the last 10 % is validation. Random splits of overlapping windows would
//! let the model see validation text in training; a contiguous tail keeps whole works apart.
//! The default corpus is `data/shakespeare.txt` of this workspace (see `data/README.md`); it is
//! checked against its published size and sha256 on open, so a damaged copy (a line-ending
//! conversion on checkout, say) is reported instead of silently shifting every number.

mod baselines;
pub mod bpe;
mod token_file;

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use engine::Rng;
use memmap2::Mmap;
use sha2::{Digest, Sha256};

pub use baselines::Baselines;
pub use bpe::BpeTokenizer;
pub use token_file::{write_token_file, TokenFile, HEADER_LEN, MAGIC, VERSION};

use crate::files::open_regular;
use crate::{Error, Result};

/// Size and sha256 of `data/shakespeare.txt` (see `data/README.md`).
pub const DEFAULT_CORPUS_BYTES: u64 = 5_057_198;
pub const DEFAULT_CORPUS_SHA256: &str = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387";

/// The bundled corpus, found through this crate's source location (the workspace's `data/`).
pub fn default_corpus_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("data").join("shakespeare.txt")
}

/// Length of the training part of a sequence of `len` tokens: the first 90 %, rounded down, computed
/// without overflow for any `len`. The validation part is the rest.
pub fn train_len(len: usize) -> usize {
    len / 10 * 9 + len % 10 * 9 / 10
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Validation,
}

enum Source {
    /// Text: token = byte.
    Bytes(Mmap),
    Tokens(TokenFile),
}

pub struct Corpus {
    path: PathBuf,
    source: Source,
    len: usize,
    /// Tokens `0..train_len` train, the rest validate.
    train_len: usize,
}

impl Corpus {
    /// Opens a token file or a text file (byte tokens).
    pub fn open(path: &Path) -> Result<Corpus> {
        let origin = path.display().to_string();
        let mut file = open_regular(path, "data file")?;
        let mut magic = [0u8; 8];
        let is_token_file = file.read_exact(&mut magic).is_ok() && &magic == MAGIC;
        let source = if is_token_file {
            Source::Tokens(TokenFile::open(path)?)
        } else {
            // SAFETY: a read-only private map of a file this process does not write; as for any mmap
            // reader, another process truncating the file while it is mapped is not defended against.
            Source::Bytes(unsafe { Mmap::map(&file) }.map_err(|e| Error::data(&origin, format!("cannot map: {e}")))?)
        };
        let len = match &source {
            Source::Bytes(m) => m.len(),
            Source::Tokens(t) => t.len(),
        };
        // Both parts need at least one (input, target) pair.
        let train_len = train_len(len);
        if train_len < 2 || len - train_len < 2 {
            return Err(Error::data(&origin, format!("{len} tokens are too few to split 90/10 into training and validation")));
        }
        Ok(Corpus { path: path.to_path_buf(), source, len, train_len })
    }

    /// Opens the bundled corpus and checks that it is the published file.
    pub fn open_default() -> Result<Corpus> {
        Corpus::open_verified(&default_corpus_path(), DEFAULT_CORPUS_BYTES, DEFAULT_CORPUS_SHA256).map_err(|e| match e {
            Error::Data { path, msg } => Error::data(path, format!("{msg} (the bundled corpus: rebuild it with data/make_shakespeare.sh, or pass a data file)")),
            e => e,
        })
    }

    /// Opens a text corpus that must be exactly `bytes` long with the given sha256 (lowercase hex),
    /// so a damaged copy (a line-ending conversion on checkout, say) is an error naming the file.
    pub fn open_verified(path: &Path, bytes: u64, sha256: &str) -> Result<Corpus> {
        let corpus = Corpus::open(path)?;
        let Source::Bytes(text) = &corpus.source else {
            return Err(Error::data(path.display().to_string(), "expected a text file, found a token file"));
        };
        let digest: String = Sha256::digest(&text[..]).iter().map(|b| format!("{b:02x}")).collect();
        if text.len() as u64 != bytes || digest != sha256 {
            return Err(Error::data(
                path.display().to_string(),
                format!("damaged: {} bytes with sha256 {digest}, expected {bytes} bytes with sha256 {sha256}", text.len()),
            ));
        }
        Ok(corpus)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Token count of the whole corpus.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn vocab_size(&self) -> usize {
        match &self.source {
            Source::Bytes(_) => 256,
            Source::Tokens(t) => t.vocab() as usize,
        }
    }

    /// Bytes of text per token: 1 for byte tokens; for a token file, what its header records.
    pub fn bytes_per_token(&self) -> Option<f64> {
        match &self.source {
            Source::Bytes(_) => Some(1.0),
            Source::Tokens(t) => t.bytes_per_token(),
        }
    }

    /// Checks every id against the vocabulary (byte tokens always fit), so a damaged token file is
    /// found before training rather than at the window that holds the bad id.
    pub fn check_ids(&self) -> Result<()> {
        match &self.source {
            Source::Bytes(_) => Ok(()),
            Source::Tokens(t) => t.check_ids(),
        }
    }

    pub fn range(&self, split: Split) -> Range<usize> {
        match split {
            Split::Train => 0..self.train_len,
            Split::Validation => self.train_len..self.len,
        }
    }

    pub fn split_len(&self, split: Split) -> usize {
        self.range(split).len()
    }

    /// Appends tokens `start..start + n` to `out`; ids are checked against the vocabulary.
    fn read_into(&self, start: usize, n: usize, out: &mut Vec<u32>) -> Result<()> {
        match &self.source {
            Source::Bytes(m) => {
                out.extend(m[start..start + n].iter().map(|&b| b as u32));
                Ok(())
            }
            Source::Tokens(t) => t.read_into(start, n, out),
        }
    }

    /// `batch` windows of `seq` tokens at random positions of the training split, flattened
    /// row-major, and their targets (each input token's successor). The same `rng` state gives the
    /// same batch.
    pub fn sample_batch(&self, rng: &mut Rng, batch: usize, seq: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        if batch == 0 || seq == 0 {
            return Err(Error::Invalid { what: "batch shape", value: format!("{batch} x {seq}"), msg: "batch size and sequence length must be positive".into() });
        }
        let train = self.split_len(Split::Train);
        if train < seq + 1 {
            return Err(self.too_short(Split::Train, seq));
        }
        let (mut inputs, mut targets) = (Vec::with_capacity(batch * seq), Vec::with_capacity(batch * seq));
        let mut window = Vec::with_capacity(seq + 1);
        for _ in 0..batch {
            let start = rng.below(train - seq);
            window.clear();
            self.read_into(start, seq + 1, &mut window)?;
            inputs.extend_from_slice(&window[..seq]);
            targets.extend_from_slice(&window[1..]);
        }
        Ok((inputs, targets))
    }

    /// The validation split as contiguous, non-overlapping windows of `seq` inputs (the last target
    /// of a window is the first input of the next, so every token but the first is predicted exactly
    /// once). With `limit`, at most that many windows, spread evenly over the split so a short
    /// evaluation still samples all of it.
    pub fn val_windows(&self, seq: usize, limit: Option<usize>) -> Result<ValWindows<'_>> {
        if seq == 0 || limit == Some(0) {
            return Err(Error::Invalid { what: "validation windows", value: format!("seq {seq}, limit {limit:?}"), msg: "the sequence length and the limit must be positive".into() });
        }
        let available = (self.split_len(Split::Validation) - 1) / seq;
        if available == 0 {
            return Err(self.too_short(Split::Validation, seq));
        }
        let count = limit.map_or(available, |l| l.min(available));
        Ok(ValWindows { corpus: self, seq, available, count, next: 0 })
    }

    fn too_short(&self, split: Split, seq: usize) -> Error {
        Error::data(
            self.path.display().to_string(),
            format!("the {split:?} split has {} tokens, fewer than one window of {seq} + 1", self.split_len(split)),
        )
    }
}

impl crate::train::BatchSource for Corpus {
    fn sample_batch(&self, rng: &mut Rng, batch: usize, seq: usize) -> Result<(Vec<u32>, Vec<u32>)> {
        Corpus::sample_batch(self, rng, batch, seq)
    }
}

impl std::fmt::Display for Corpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.source {
            Source::Bytes(_) => "byte tokens".to_string(),
            Source::Tokens(t) => format!("tokens of {} bytes", t.width()),
        };
        write!(
            f,
            "{}: {} {kind}, vocabulary {}, {} training / {} validation",
            self.path.display(),
            self.len,
            self.vocab_size(),
            self.split_len(Split::Train),
            self.split_len(Split::Validation)
        )
    }
}

/// Validation windows as (inputs, targets); see `Corpus::val_windows`.
pub struct ValWindows<'a> {
    corpus: &'a Corpus,
    seq: usize,
    /// Windows that fit in the split.
    available: usize,
    /// Windows this iterator yields.
    count: usize,
    next: usize,
}

impl Iterator for ValWindows<'_> {
    type Item = Result<(Vec<u32>, Vec<u32>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next == self.count {
            return None;
        }
        // Evenly spaced and strictly increasing because count <= available.
        let index = self.next * self.available / self.count;
        self.next += 1;
        let start = self.corpus.train_len + index * self.seq;
        let mut window = Vec::with_capacity(self.seq + 1);
        Some(self.corpus.read_into(start, self.seq + 1, &mut window).map(|()| {
            let targets = window[1..].to_vec();
            window.truncate(self.seq);
            (window, targets)
        }))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.count - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for ValWindows<'_> {}
