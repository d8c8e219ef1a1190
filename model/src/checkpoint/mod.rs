//! Checkpoints: a run directory of step directories, each a complete, self-describing snapshot.
//!
//! ```text
//! RUN/latest                       "step-00001000": the checkpoint to resume from
//! RUN/step-00001000/model.safetensors      weights (any dtypes, any names the caller picks)
//!                  /optimizer.safetensors  optimizer state (AdamW moments)
//!                  /config.json            the config the weights belong to
//!                  /state.json             step, RNG state, data position...: written last
//! ```
//!
//! The API is content-agnostic: the training code decides which tensors and which JSON go in.
//!
//! Why a crash can never leave an unloadable checkpoint: every file is written atomically
//! (`write_atomic`: temp file, fsync, rename, fsync of the directory), a step's files are written into
//! their own directory, and `latest` is replaced only after all of them are durable. Until that last
//! rename, `latest` still names the previous complete step directory, which nothing has modified;
//! after it, it names a complete new one. Within a step directory `state.json` is written last, so a
//! directory that has it is complete even when opened directly, without `latest`. A leftover partial
//! directory from a crash is never pointed at; the next save removes it (or replaces it, if it is of
//! the same step).
//! Old step directories are removed only after the new `latest` is durable.

mod atomic;
mod tensors;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use engine::{Rng, Tensor};
use serde_json::Value;

pub use atomic::{remove_stale_temps, write_atomic, write_atomic_with};
pub use tensors::{save_tensors, TensorFile};

use crate::files::{read_text_limited, METADATA_LIMIT};
use crate::{Error, Result};

pub const MODEL_FILE: &str = "model.safetensors";
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const STATE_FILE: &str = "state.json";
pub const LATEST_FILE: &str = "latest";
/// Bumped when the layout or the envelope of `state.json` changes incompatibly.
pub const FORMAT_VERSION: u64 = 1;

/// What one save writes.
pub struct Snapshot<'a> {
    pub step: u64,
    pub model: &'a [(String, Tensor)],
    pub optimizer: &'a [(String, Tensor)],
    pub config: &'a Value,
    /// Whatever resuming exactly needs (RNG state, data position, ...), stored under `"state"`.
    pub state: &'a Value,
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

fn parse_step_dir_name(name: &str) -> Option<u64> {
    name.strip_prefix("step-")?.parse().ok()
}

fn io(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(context, e)
}

fn write_json(path: &Path, value: &Value) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value).map_err(|e| Error::checkpoint(path.display().to_string(), e.to_string()))?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Saves `snap` under `run_dir/step-N/`, points `run_dir/latest` at it, then removes all but the
/// `keep_last` newest step directories (at least the new one is always kept). Returns the step
/// directory.
pub fn save(run_dir: &Path, snap: &Snapshot, keep_last: usize) -> Result<PathBuf> {
    let name = step_dir_name(snap.step);
    let dir = run_dir.join(&name);
    fs::create_dir_all(run_dir).map_err(io(format!("creating {}", run_dir.display())))?;
    if dir.exists() {
        if read_latest(run_dir)?.as_deref() == Some(name.as_str()) {
            return Err(Error::checkpoint(dir.display().to_string(), format!("a checkpoint of step {} is already the latest; refusing to overwrite it in place", snap.step)));
        }
        // Not pointed at: a partial save interrupted by a crash, or a stale branch of the run.
        fs::remove_dir_all(&dir).map_err(io(format!("removing stale {}", dir.display())))?;
    }
    fs::create_dir(&dir).map_err(io(format!("creating {}", dir.display())))?;
    atomic::sync_dir(run_dir)?;

    let meta = HashMap::from([
        ("format".to_string(), "dsmoe".to_string()),
        ("format_version".to_string(), FORMAT_VERSION.to_string()),
        ("step".to_string(), snap.step.to_string()),
    ]);
    save_tensors(&dir.join(MODEL_FILE), snap.model, &meta)?;
    save_tensors(&dir.join(OPTIMIZER_FILE), snap.optimizer, &meta)?;
    write_json(&dir.join(CONFIG_FILE), snap.config)?;
    let envelope = serde_json::json!({ "format_version": FORMAT_VERSION, "step": snap.step, "state": snap.state });
    write_json(&dir.join(STATE_FILE), &envelope)?;
    write_atomic(&run_dir.join(LATEST_FILE), format!("{name}\n").as_bytes())?;
    prune(run_dir, snap.step, keep_last)?;
    Ok(dir)
}

/// The step directory `latest` names, if there is a `latest`.
fn read_latest(run_dir: &Path) -> Result<Option<String>> {
    let path = run_dir.join(LATEST_FILE);
    if fs::symlink_metadata(&path).is_err() {
        return Ok(None);
    }
    let text = read_text_limited(&path, METADATA_LIMIT, "checkpoint pointer")?;
    let name = text.trim();
    if parse_step_dir_name(name).is_none() {
        return Err(Error::checkpoint(path.display().to_string(), format!("expected a step directory name like step-00001000, found {name:?}")));
    }
    Ok(Some(name.to_string()))
}

/// Removes step directories beyond the `keep_last` newest complete ones, and every incomplete one
/// (no `state.json`: debris of an interrupted save, which nothing points at). Debris must not count
/// as a kept checkpoint, or it would push a loadable one out.
fn prune(run_dir: &Path, newest: u64, keep_last: usize) -> Result<()> {
    let entries = fs::read_dir(run_dir).map_err(io(format!("listing {}", run_dir.display())))?;
    let (mut complete, mut debris): (Vec<(u64, PathBuf)>, Vec<PathBuf>) = (Vec::new(), Vec::new());
    for entry in entries {
        let entry = entry.map_err(io(format!("listing {}", run_dir.display())))?;
        if let Some(step) = entry.file_name().to_str().and_then(parse_step_dir_name) {
            let path = entry.path();
            if step == newest || !path.is_dir() {
                continue;
            }
            if path.join(STATE_FILE).is_file() {
                complete.push((step, path));
            } else {
                debris.push(path);
            }
        }
    }
    complete.sort_by(|a, b| b.0.cmp(&a.0));
    for path in complete.into_iter().skip(keep_last.saturating_sub(1)).map(|(_, p)| p).chain(debris) {
        fs::remove_dir_all(&path).map_err(io(format!("removing old checkpoint {}", path.display())))?;
    }
    Ok(())
}

/// An opened checkpoint: one complete step directory.
pub struct Checkpoint {
    dir: PathBuf,
    step: u64,
    state: Value,
}

impl Checkpoint {
    /// Opens a run directory (following `latest`) or a step directory.
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let dir = match read_latest(path)? {
            Some(name) => path.join(name),
            None => path.to_path_buf(),
        };
        let state_path = dir.join(STATE_FILE);
        if !state_path.exists() {
            return Err(Error::checkpoint(
                path.display().to_string(),
                format!("no complete checkpoint: there is no {}; expected a run directory with `{LATEST_FILE}` or a step directory", state_path.display()),
            ));
        }
        let text = read_text_limited(&state_path, METADATA_LIMIT, "checkpoint state")?;
        let origin = state_path.display().to_string();
        let envelope: Value = serde_json::from_str(&text).map_err(|e| Error::checkpoint(&origin, format!("invalid JSON: {e}")))?;
        let version = envelope.get("format_version").and_then(Value::as_u64);
        if version != Some(FORMAT_VERSION) {
            return Err(Error::checkpoint(&origin, format!("format_version is {version:?}, this build reads {FORMAT_VERSION}")));
        }
        let step = envelope.get("step").and_then(Value::as_u64).ok_or_else(|| Error::checkpoint(&origin, "no integer `step`"))?;
        let state = envelope.get("state").cloned().ok_or_else(|| Error::checkpoint(&origin, "no `state`"))?;
        if let Some(named) = dir.file_name().and_then(|n| n.to_str()).and_then(parse_step_dir_name) {
            if named != step {
                return Err(Error::checkpoint(&origin, format!("says step {step}, but it lies in the directory of step {named}")));
            }
        }
        Ok(Checkpoint { dir, step, state })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn step(&self) -> u64 {
        self.step
    }

    /// The `state` the training code saved.
    pub fn state(&self) -> &Value {
        &self.state
    }

    pub fn config(&self) -> Result<Value> {
        let path = self.dir.join(CONFIG_FILE);
        let text = read_text_limited(&path, METADATA_LIMIT, "checkpoint config")?;
        serde_json::from_str(&text).map_err(|e| Error::checkpoint(path.display().to_string(), format!("invalid JSON: {e}")))
    }

    pub fn model(&self) -> Result<TensorFile> {
        TensorFile::open(&self.dir.join(MODEL_FILE))
    }

    pub fn optimizer(&self) -> Result<TensorFile> {
        TensorFile::open(&self.dir.join(OPTIMIZER_FILE))
    }
}

/// An RNG's full state as hex, for `state.json`.
pub fn rng_to_hex(rng: &Rng) -> String {
    rng.state().iter().map(|b| format!("{b:02x}")).collect()
}

/// The inverse of `rng_to_hex`.
pub fn rng_from_hex(hex: &str) -> Result<Rng> {
    let invalid = || Error::Invalid { what: "RNG state", value: hex.to_string(), msg: "expected 96 hex digits".into() };
    // Hex digits only: `from_str_radix` alone would also take a sign ("+f").
    if hex.len() != 96 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid());
    }
    let mut state = [0u8; 48];
    for (i, b) in state.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(Rng::from_state(&state))
}
