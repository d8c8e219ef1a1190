//! What the command-line tests share: running the binary, and a config small enough to train a few
//! steps in a second.
// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn dsmoe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dsmoe")).args(args).env_remove("DSMOE_PROFILE").output().expect("the dsmoe binary runs")
}

/// Asserts a clean failure whose message contains every one of `needles`.
pub fn fails_with(args: &[&str], needles: &[&str]) {
    let o = dsmoe(args);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{args:?} succeeded:\n{out}");
    assert_eq!(o.status.code(), Some(1), "{args:?}: not a clean error exit\n{err}");
    assert!(!err.contains("panicked"), "{args:?} panicked:\n{err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: message lacks {n:?}:\n{err}");
    }
}

/// (stdout, stderr) as text.
pub fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

/// A fresh, empty directory under the system's temporary directory.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dsmoe-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The tiny DS-MoE shrunk to train in a blink, with vocabulary `vocab`, written to `dir/micro.json`.
pub fn micro_config(dir: &Path, vocab: usize) -> PathBuf {
    let mut c: serde_json::Value = serde_json::from_str(include_str!("../../configs/ds-moe-tiny.json")).unwrap();
    c["model"]["vocab_size"] = vocab.into();
    c["model"]["d_model"] = 32.into();
    c["model"]["n_layers"] = 1.into();
    c["model"]["max_seq_len"] = 32.into();
    c["model"]["attention"]["head_dim"] = 8.into();
    c["model"]["mlp"]["expert_width"] = 16.into();
    c["train"]["batch_size"] = 4.into();
    c["train"]["seq_len"] = 32.into();
    c["train"]["eval_interval"] = 2.into();
    c["train"]["eval_windows"] = 2.into();
    c["train"]["final_eval_windows"] = 4.into();
    let path = dir.join("micro.json");
    std::fs::write(&path, serde_json::to_string_pretty(&c).unwrap()).unwrap();
    path
}
