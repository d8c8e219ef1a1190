//! What a run directory guarantees against misuse and damage: one writer at a time, a metrics log
//! that resumes by appending and reads back exactly, optimizer state and weights checked on load and
//! before every save, settings a resume cannot silently change, data and sizes checked before
//! anything is allocated or trained, and tiny sampling temperatures that behave like greedy.

mod common;

use std::fs;
use std::path::Path;

use engine::{DType, Device, Rng, Tensor};
use model::checkpoint::{self, save_tensors, TensorFile};
use model::data::write_token_file;
use model::metrics::{read_metrics, MetricsLog, STEP};
use model::run::{open_corpus, TrainingRun};
use model::{InferenceMode, Model};
use serde_json::{json, Value};

use common::{run_to_end, tiny_config, Scratch};

fn resume(dir: &Path) -> model::Result<TrainingRun> {
    TrainingRun::resume(dir, None, None, &Device::Cpu, None)
}

fn latest_dir(run: &Path) -> std::path::PathBuf {
    run.join(fs::read_to_string(run.join(checkpoint::LATEST_FILE)).unwrap().trim())
}

#[test]
fn a_run_directory_has_one_writer() {
    let scratch = Scratch::new("hardening-lock");
    let dir = &scratch.0;
    let run = TrainingRun::start(tiny_config(3), open_corpus(None).unwrap(), dir, &Device::Cpu, DType::F32).unwrap();
    let err = TrainingRun::start(tiny_config(3), open_corpus(None).unwrap(), dir, &Device::Cpu, DType::F32).err().expect("a second writer must be refused");
    let msg = err.to_string();
    assert!(msg.contains("in use by another dsmoe process") && msg.contains(&format!("pid {}", std::process::id())), "{msg}");
    drop(run);
    // Released with its holder: the directory is usable again.
    let _run = run_to_end(tiny_config(3), dir, DType::F32);
    let err = resume(dir).map(|_| ()).expect_err("a resume while the run is live must be refused");
    assert!(err.to_string().contains("in use"), "{err}");
}

#[test]
fn resuming_appends_to_the_metrics_log_and_keeps_earlier_lines_byte_for_byte() {
    let scratch = Scratch::new("hardening-metrics");
    let path = scratch.path("metrics.jsonl");
    // Spacing serde_json would not write, a number with more digits than f64 holds, a damaged line.
    let head = "{ \"step\": 1, \"train_loss\": 2.7182818284590452353602874713527 }\nnot json at all\n{\"step\":2,\"train_loss\":0.1}\n";
    fs::write(&path, format!("{head}{{\"step\":3,\"train_loss\":9}}\n{{\"step\":4")).unwrap();
    let mut log = MetricsLog::open_resumed(&path, 2).unwrap();
    assert_eq!(log.skipped_lines(), [2], "the damaged line is reported");
    assert_eq!(fs::read_to_string(&path).unwrap(), head, "lines up to the checkpoint are kept as written; later ones cut");
    log.append(&json!({ "step": 3, "train_loss": 0.5 })).unwrap();
    let steps: Vec<u64> = read_metrics(&path).unwrap().iter().map(|r| r[STEP].as_u64().unwrap()).collect();
    assert_eq!(steps, [1, 2, 3], "the damaged line is skipped by readers");

    // Every f64 reads back exactly as written.
    let mut rng = Rng::new(7);
    let values: Vec<f64> = (0..4000).map(|_| f64::from_bits(rng.next_u64() >> 2) * if rng.uniform() < 0.5 { -1.0 } else { 1.0 }).filter(|v| v.is_finite()).collect();
    let exact = scratch.path("exact.jsonl");
    let mut log = MetricsLog::open(&exact).unwrap();
    for (i, v) in values.iter().enumerate() {
        log.append(&json!({ "step": i, "value": v })).unwrap();
    }
    let read: Vec<f64> = read_metrics(&exact).unwrap().iter().map(|r| r["value"].as_f64().unwrap()).collect();
    assert_eq!(read.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), values.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
}

/// Rewrites one tensor file of the latest checkpoint with `edit` applied to every tensor.
fn edit_tensors(run: &Path, file: &str, edit: impl Fn(&str, Vec<f32>) -> Vec<f32>) {
    let path = latest_dir(run).join(file);
    let loaded = TensorFile::open(&path).unwrap();
    let meta = loaded.metadata();
    let tensors: Vec<(String, Tensor)> = loaded
        .names()
        .into_iter()
        .map(|n| {
            let t = loaded.tensor(&n, &Device::Cpu).unwrap();
            let values = edit(&n, t.to_vec::<f32>().unwrap());
            let edited = Tensor::from_slice(&values, t.dims().to_vec(), &Device::Cpu).unwrap();
            (n, edited)
        })
        .collect();
    drop(loaded);
    save_tensors(&path, &tensors, &meta).unwrap();
}

#[test]
fn damaged_optimizer_state_is_refused_and_non_finite_weights_are_never_saved() {
    let scratch = Scratch::new("hardening-optimizer");
    let dir = &scratch.0;
    run_to_end(tiny_config(3), dir, DType::F32);
    edit_tensors(dir, checkpoint::OPTIMIZER_FILE, |n, v| if n.starts_with("v.") { v.iter().map(|x| -x - 1.0).collect() } else { v });
    let err = resume(dir).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("negative second moments") && err.contains(checkpoint::OPTIMIZER_FILE), "{err}");
    edit_tensors(dir, checkpoint::OPTIMIZER_FILE, |n, v| if n.starts_with("m.") { vec![f32::NAN; v.len()] } else { v.iter().map(|x| x.abs()).collect() });
    let err = resume(dir).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("NaN or infinite") && err.contains("m."), "{err}");

    // A weight gone NaN: the save is refused and `latest` still names the last good checkpoint.
    let other = Scratch::new("hardening-nan-save");
    run_to_end(tiny_config(3), &other.0, DType::F32);
    let before = fs::read_to_string(other.path(checkpoint::LATEST_FILE)).unwrap();
    let mut run = resume(&other.0).unwrap();
    let p = run.trainer.model.params.iter_mut().next().unwrap();
    p.value = Tensor::full(f64::NAN, p.value.dims().to_vec(), DType::F32, &Device::Cpu).unwrap();
    run.trainer.optimizer.step += 1;
    let err = run.save().unwrap_err().to_string();
    assert!(err.contains("NaN or infinite") && err.contains("step 4"), "{err}");
    drop(run);
    assert_eq!(fs::read_to_string(other.path(checkpoint::LATEST_FILE)).unwrap(), before);
    assert!(!other.path("step-00000004").exists());
}

/// Replaces `state.json` of the latest checkpoint with `edit` applied to its JSON.
fn edit_state(run: &Path, edit: impl Fn(&mut Value)) {
    let path = latest_dir(run).join(checkpoint::STATE_FILE);
    let mut v: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut v);
    fs::write(&path, v.to_string()).unwrap();
}

#[test]
fn a_resume_keeps_the_runs_settings_and_validates_its_state() {
    let scratch = Scratch::new("hardening-settings");
    let dir = &scratch.0;
    drop(run_to_end(tiny_config(3), dir, DType::F64));
    assert_eq!(resume(dir).unwrap().trainer.dtype, DType::F64, "the run's own dtype, not a default");
    let err = TrainingRun::resume(dir, None, None, &Device::Cpu, Some(DType::F32)).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("f64") && err.contains("conflicts"), "{err}");

    // Resuming from a step directory would nest a new run inside a checkpoint.
    let err = resume(&latest_dir(dir)).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("not a run directory") && err.contains(&dir.display().to_string()), "{err}");

    edit_state(dir, |v| v["state"]["dtype"] = "f128".into());
    let err = resume(dir).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("f128") && err.contains("state.json"), "{err}");
    edit_state(dir, |v| {
        v["state"]["dtype"] = "f64".into();
        v["step"] = 2.into();
    });
    let err = resume(dir).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("says step 2") && err.contains("step 3"), "{err}");
}

#[test]
fn temp_files_are_removed_and_damaged_metrics_lines_skipped_on_the_next_start() {
    let scratch = Scratch::new("hardening-temps");
    let dir = &scratch.0;
    run_to_end(tiny_config(3), dir, DType::F32);
    for name in [".metrics.jsonl.4242-0.tmp", ".loss.svg.4242-1.tmp"] {
        fs::write(scratch.path(name), "partial").unwrap();
    }
    // And a damaged metrics line, which must not block the resume of an intact checkpoint.
    let metrics = scratch.path(model::run::METRICS_FILE);
    fs::write(&metrics, format!("{{\"step\": garbage\n{}", fs::read_to_string(&metrics).unwrap())).unwrap();
    let run = resume(dir).unwrap();
    let warned = |needle: &str| run.warnings().iter().any(|w| w.contains(needle));
    assert!(warned("removed 2 temporary files") && warned("line 1 is not a JSON record"), "{:?}", run.warnings());
    let left: Vec<String> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".tmp")).collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn data_is_checked_before_the_first_step() {
    let scratch = Scratch::new("hardening-data");
    // An id outside the file's vocabulary in the validation tail, where only an evaluation reads.
    let tokens = scratch.path("bad.tok");
    let n = 5000u32;
    let ids: Vec<u32> = (0..n).map(|i| i % 200).collect();
    write_token_file(&tokens, 256, None, ids.iter().copied()).unwrap();
    let mut bytes = fs::read(&tokens).unwrap();
    let last = bytes.len() - 2;
    bytes[last..].copy_from_slice(&300u16.to_le_bytes());
    fs::write(&tokens, &bytes).unwrap();
    let corpus = model::data::Corpus::open(&tokens).unwrap();
    let err = TrainingRun::start(tiny_config(3), corpus, &scratch.path("run"), &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("has id 300") && err.contains("bad.tok"), "{err}");
    assert!(!scratch.path("run").exists(), "nothing is written for a run that cannot start");

    // A validation split shorter than one window (30 bytes for windows of 32 + 1).
    let short = scratch.path("short.txt");
    fs::write(&short, "a".repeat(300)).unwrap();
    let corpus = model::data::Corpus::open(&short).unwrap();
    let err = TrainingRun::start(tiny_config(3), corpus, &scratch.path("run"), &Device::Cpu, DType::F32).err().unwrap().to_string();
    assert!(err.contains("Validation split has 30 tokens"), "{err}");
}

#[test]
fn sizes_are_checked_against_overflow_and_the_devices_memory_before_allocating() {
    let mut c = tiny_config(3);
    c.model.d_model = 1 << 20;
    c.model.mlp.expert_width = 1 << 20;
    c.model.attention.head_dim = 1 << 16;
    let err = model::train::Trainer::new(c.clone(), &Device::Cpu, DType::F32).err().expect("terabytes of weights cannot fit").to_string();
    assert!(err.contains("needs at least") && err.contains("GiB available"), "{err}");

    c.model.vocab_size = 1 << 62;
    c.model.mlp.expert_width = 1 << 61;
    let err = c.validate("huge").unwrap_err().to_string();
    assert!(err.contains("vocab_size") || err.contains("overflows"), "{err}");
    c.model.vocab_size = 256;
    let err = c.validate("huge").unwrap_err().to_string();
    assert!(err.contains("overflows"), "{err}");
    let mut c = tiny_config(3);
    c.train.batch_size = 1 << 62;
    c.train.seq_len = 4;
    assert!(c.validate("batch").unwrap_err().to_string().contains("overflow"));
}

#[test]
fn config_fields_that_would_diverge_are_rejected_by_name() {
    for (field, value) in [("norm_eps", -1.0), ("norm_eps", f64::NAN), ("rope_theta", 0.0), ("rope_theta", -10.0)] {
        let mut c = tiny_config(3);
        match field {
            "norm_eps" => c.model.norm_eps = value,
            _ => c.model.rope_theta = value,
        }
        let err = c.validate("cfg").unwrap_err().to_string();
        assert!(err.contains(field), "{field} = {value}: {err}");
    }
}

#[test]
fn tiny_temperatures_sample_like_greedy() {
    let c = tiny_config(1).model;
    let m = Model::new(&c, &Device::Cpu, 3).unwrap();
    let prompt: Vec<u32> = b"ROMEO:".iter().map(|&b| u32::from(b)).collect();
    let run = |t: f64| model::generate::generate(&m, &prompt, 12, t, InferenceMode::DENSE, DType::F32, &mut Rng::new(1)).unwrap();
    let greedy = run(0.0);
    for t in [1e-40, 1e-300, 5e-324] {
        assert_eq!(run(t), greedy, "temperature {t}");
    }
    assert_ne!(run(50.0), greedy, "a high temperature samples: the comparison is not vacuous");
}
