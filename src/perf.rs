//! Where performance records go and what identifies them, shared by the criterion benches and
//! `dsmoe bench`: one JSON object per line appended to `$DSMOE_RESULTS`, else perf/results.jsonl
//! in the repository; the commit is `$DSMOE_COMMIT` when set (a GPU machine without a git
//! checkout), else `git rev-parse --short HEAD`; dates are UTC.

use std::io::Write;
use std::path::{Path, PathBuf};

pub fn results_path() -> PathBuf {
    std::env::var_os("DSMOE_RESULTS").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("perf/results.jsonl"))
}

pub fn commit() -> String {
    if let Ok(c) = std::env::var("DSMOE_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn utc_now() -> String {
    std::process::Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

/// Appends `lines` (JSON objects) to the results file, creating its folder if needed.
pub fn append(lines: &[serde_json::Value]) -> std::io::Result<PathBuf> {
    let path = results_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
    for line in lines {
        writeln!(file, "{line}")?;
    }
    Ok(path)
}
