//! The training log: one JSON object per line (`metrics.jsonl`), appended and flushed per record so
//! it can be followed with `tail -f` and survives a crash up to the last line written. Records hold
//! whatever fields the caller puts in; the plot (`plot`) reads `step`, `train_loss` and `val_loss`.
//!
//! A crash can tear the last line; opening the log cuts such a line off, so the next record starts on
//! a line of its own and the file stays valid JSON lines. A resumed run cuts the file before the
//! first record logged after the checkpoint it resumes from, so steps are not logged twice, and
//! never rewrites the lines before it: they stay byte for byte as written. Numbers are written in
//! the shortest form that reads back to the same f64, and read exactly (serde_json's
//! `float_roundtrip`), so a value survives any number of resumes. A damaged line (not a JSON object)
//! is passed over by readers, and reported, rather than blocking a resume.

mod plot;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use plot::{chart_svg, loss_plot_svg, write_loss_plot, Chart, Curve};

use crate::files::require_regular_file;
use crate::{Error, Result};

/// The field names the plot reads.
pub const STEP: &str = "step";
pub const TRAIN_LOSS: &str = "train_loss";
pub const VAL_LOSS: &str = "val_loss";

pub type Record = Map<String, Value>;

pub struct MetricsLog {
    path: PathBuf,
    file: File,
    /// Line numbers (from 1) of complete lines that are not JSON objects, kept but not read.
    skipped: Vec<usize>,
}

impl MetricsLog {
    /// Opens `path` for appending, creating it if needed; a torn last line is cut off.
    pub fn open(path: &Path) -> Result<MetricsLog> {
        MetricsLog::open_cut(path, None)
    }

    /// Opens the log of a run resumed from a checkpoint at `step`: the file is cut before the first
    /// record with a larger step (logged after that checkpoint, so logged again), and everything
    /// before it is left byte for byte as it was; new records are appended.
    pub fn open_resumed(path: &Path, step: u64) -> Result<MetricsLog> {
        MetricsLog::open_cut(path, Some(step))
    }

    fn open_cut(path: &Path, after_step: Option<u64>) -> Result<MetricsLog> {
        let log = read_log(path)?;
        let cut = after_step
            .and_then(|step| log.lines.iter().find(|l| l.record.as_ref().and_then(|r| r.get(STEP)).and_then(Value::as_u64).is_some_and(|s| s > step)))
            .map_or(log.complete_len, |l| l.start);
        let skipped = log.lines.iter().filter(|l| l.start < cut && l.record.is_none()).map(|l| l.number).collect();
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::io(format!("opening {}", path.display()), e))?.len();
        if len != cut {
            file.set_len(cut).map_err(|e| Error::io(format!("cutting {} to its last record before the checkpoint", path.display()), e))?;
        }
        Ok(MetricsLog { path: path.to_path_buf(), file, skipped })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Line numbers (from 1) of lines that are not JSON objects: left in place, read by nobody.
    pub fn skipped_lines(&self) -> &[usize] {
        &self.skipped
    }

    /// Appends one record (a JSON object) as one line and flushes it.
    pub fn append(&mut self, record: &Value) -> Result<()> {
        let origin = || self.path.display().to_string();
        if !record.is_object() {
            return Err(Error::data(origin(), format!("a metrics record must be a JSON object, got {record}")));
        }
        let mut line = serde_json::to_string(record).map_err(|e| Error::data(origin(), e.to_string()))?;
        line.push('\n');
        // One write of the whole line: with O_APPEND it lands after everything written before.
        self.file.write_all(line.as_bytes()).and_then(|()| self.file.flush()).map_err(|e| Error::io(format!("appending to {}", origin()), e))
    }
}

/// Every complete record of a metrics log; a torn last line and lines that are not JSON objects
/// (a damaged log) are passed over. An absent file has none.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    Ok(read_log(path)?.lines.into_iter().filter_map(|l| l.record).collect())
}

/// One complete line of the log.
struct Line {
    /// Byte offset of its first byte.
    start: u64,
    /// 1-based line number.
    number: usize,
    /// None when the line is not a JSON object.
    record: Option<Record>,
}

struct Log {
    lines: Vec<Line>,
    /// Length of the file up to the end of its last complete line.
    complete_len: u64,
}

fn read_log(path: &Path) -> Result<Log> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(Log { lines: Vec::new(), complete_len: 0 });
    }
    require_regular_file(path, "metrics log")?;
    let bytes = fs::read(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut lines = Vec::new();
    let mut start = 0;
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        let line_start = start;
        start += line.len() + 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record = serde_json::from_slice::<Record>(line).ok();
        lines.push(Line { start: line_start as u64, number: i + 1, record });
    }
    Ok(Log { lines, complete_len: complete as u64 })
}

/// The (step, value) points of `field` over the records that have both as finite numbers.
pub fn series(records: &[Record], field: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.get(STEP)?.as_f64()?, r.get(field)?.as_f64()?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}
