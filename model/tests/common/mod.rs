//! What the model crate's integration tests share: scratch directories and error-message checks.
// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

/// A directory of its own under cargo's scratch space, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The error's message, checked to name `path`.
pub fn err_naming<T>(result: model::Result<T>, path: &Path) -> String {
    let msg = match result {
        Ok(_) => panic!("expected an error for {}", path.display()),
        Err(e) => e.to_string(),
    };
    assert!(msg.contains(&path.display().to_string()), "the error does not name {}: {msg}", path.display());
    msg
}
