//! The training log: one JSON object per line (`metrics.jsonl`), appended and flushed per record so
//! it can be followed with `tail -f` and survives a crash up to the last line written. Records hold
//! whatever fields the caller puts in; the plot (`plot`) reads `step`, `train_loss` and `val_loss`.
//!
//! A crash can tear the last line; opening the log cuts such a line off, so the next record starts on
//! a line of its own and the file stays valid JSON lines. A resumed run first drops the records
//! logged after the checkpoint it resumes from, so steps are not logged twice.

mod plot;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use plot::{loss_plot_svg, write_loss_plot, Curve};

use crate::checkpoint::write_atomic;
use crate::{Error, Result};

/// The field names the plot reads.
pub const STEP: &str = "step";
pub const TRAIN_LOSS: &str = "train_loss";
pub const VAL_LOSS: &str = "val_loss";

pub type Record = Map<String, Value>;

pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> Result<MetricsLog> {
        let (records, complete_len) = read_records(path)?;
        drop(records);
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let len = file.metadata().map_err(|e| Error::io(format!("opening {}", path.display()), e))?.len();
        if len != complete_len {
            file.set_len(complete_len).map_err(|e| Error::io(format!("cutting a torn last line of {}", path.display()), e))?;
        }
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    /// Opens the log of a run resumed from a checkpoint at `step`: records with a larger step are
    /// dropped first (they were logged after that checkpoint and will be logged again).
    pub fn open_resumed(path: &Path, step: u64) -> Result<MetricsLog> {
        let (records, _) = read_records(path)?;
        let mut text = String::new();
        for r in records.iter().filter(|r| r.get(STEP).and_then(Value::as_u64).is_none_or(|s| s <= step)) {
            text.push_str(&serde_json::to_string(r).map_err(|e| Error::data(path.display().to_string(), e.to_string()))?);
            text.push('\n');
        }
        write_atomic(path, text.as_bytes())?;
        MetricsLog::open(path)
    }

    pub fn path(&self) -> &Path {
        &self.path
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

/// Every complete record of a metrics log (a torn last line is ignored); an absent file has none.
pub fn read_metrics(path: &Path) -> Result<Vec<Record>> {
    Ok(read_records(path)?.0)
}

/// The records and the length of the file up to the end of its last complete line.
fn read_records(path: &Path) -> Result<(Vec<Record>, u64)> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(Error::io(format!("reading {}", path.display()), e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let mut records = Vec::new();
    for (i, line) in bytes[..complete].split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let record: Record = serde_json::from_slice(line).map_err(|e| Error::data(path.display().to_string(), format!("line {}: not a JSON object: {e}", i + 1)))?;
        records.push(record);
    }
    Ok((records, complete as u64))
}

/// The (step, value) points of `field` over the records that have both as finite numbers.
pub fn series(records: &[Record], field: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|r| Some((r.get(STEP)?.as_f64()?, r.get(field)?.as_f64()?)))
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect()
}
