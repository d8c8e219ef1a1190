//! What the model crate's integration tests share: scratch directories and error-message checks.
// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use engine::{DType, Device};
use model::config::presets;
use model::run::{open_corpus, TrainingRun};
use model::Config;

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

/// The tiny DS-MoE shrunk to a few steps a second: 2 layers of width 32, checkpoints every 3 steps.
pub fn tiny_config(steps: u64) -> Config {
    let mut c = presets::load("ds-moe-tiny").unwrap();
    c.model.d_model = 32;
    c.model.n_layers = 2;
    c.model.attention.head_dim = 8;
    c.model.mlp.expert_width = 16;
    c.train.batch_size = 4;
    c.train.seq_len = 32;
    c.model.max_seq_len = 32;
    c.train.steps = steps;
    c.train.warmup_steps = 2;
    c.train.eval_interval = 2;
    c.train.eval_windows = 4;
    c.train.checkpoint_interval = 3;
    c
}

/// A fresh run of `config` in `dir` on the bundled corpus, trained to its last step; returned while
/// it still holds its directory.
pub fn run_to_end(config: Config, dir: &Path, dtype: DType) -> TrainingRun {
    let mut run = TrainingRun::start(config, open_corpus(None).unwrap(), dir, &Device::Cpu, dtype).unwrap();
    while !run.is_done() {
        run.step().unwrap();
    }
    run
}
