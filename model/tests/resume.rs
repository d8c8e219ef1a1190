//! Resuming a run from its checkpoint continues exactly: the same losses, bit for bit, and the same
//! final weights as a run that never stopped. Also: a fresh run refuses to overwrite another run's
//! checkpoints, and a diverging loss stops training with an error instead of writing a checkpoint.

mod common;

use std::path::Path;

use engine::{DType, Device};
use model::metrics::{read_metrics, series, TRAIN_LOSS};
use model::run::{load_model, open_corpus, TrainingRun};

use common::{run_to_end, tiny_config, Scratch};

fn weights(run_dir: &Path) -> Vec<(String, Vec<f64>)> {
    let loaded = load_model(run_dir, &Device::Cpu).unwrap();
    loaded.model.params.iter().map(|p| (p.name.clone(), p.value.to_f64_vec().unwrap())).collect()
}

#[test]
fn a_resumed_run_matches_an_uninterrupted_one_bit_for_bit() {
    let steps = 7;
    let whole_dir = Scratch::new("resume-whole");
    let whole = &whole_dir.0;
    drop(run_to_end(tiny_config(steps), whole, DType::F32));

    // Stop after the checkpoint at step 3, plus one step that the resumed run must redo.
    let split_dir = Scratch::new("resume-split");
    let split = &split_dir.0;
    let mut run = TrainingRun::start(tiny_config(steps), open_corpus(None).unwrap(), split, &Device::Cpu, DType::F32).unwrap();
    for _ in 0..4 {
        run.step().unwrap();
    }
    drop(run);
    let mut run = TrainingRun::resume(split, None, None, &Device::Cpu, None).unwrap();
    assert_eq!(run.step_count(), 3);
    while !run.is_done() {
        run.step().unwrap();
    }

    let curve = |dir: &Path| series(&read_metrics(&dir.join(model::run::METRICS_FILE)).unwrap(), TRAIN_LOSS);
    let (a, b) = (curve(whole), curve(split));
    assert_eq!(a.len(), steps as usize);
    assert_eq!(a, b, "loss curves differ");
    assert!(a.windows(2).any(|w| w[0].1 != w[1].1), "the loss never changed: the test would pass vacuously");
    assert_eq!(weights(whole), weights(split));
    assert!(whole.join(model::run::PLOT_FILE).exists());
}

#[test]
fn a_fresh_run_never_overwrites_checkpoints() {
    let scratch = Scratch::new("resume-overwrite");
    let dir = &scratch.0;
    let _run = run_to_end(tiny_config(3), dir, DType::F32);
    let err = TrainingRun::start(tiny_config(3), open_corpus(None).unwrap(), dir, &Device::Cpu, DType::F32).err().expect("must refuse");
    assert!(err.to_string().contains("already holds"), "{err}");
}

#[test]
fn a_diverging_loss_is_an_error_and_writes_no_checkpoint() {
    let scratch = Scratch::new("resume-diverge");
    let dir = &scratch.0;
    let mut config = tiny_config(6);
    config.train.lr = 1e30;
    config.train.warmup_steps = 0;
    config.train.grad_clip = 1e30;
    let mut run = TrainingRun::start(config, open_corpus(None).unwrap(), dir, &Device::Cpu, DType::F32).unwrap();
    let err = (0..6).find_map(|_| run.step().err()).expect("a learning rate of 1e30 must diverge");
    assert!(err.to_string().contains("not finite"), "{err}");
    assert!(!dir.join(model::checkpoint::LATEST_FILE).exists());
}
