//! `dsmoe train --device emu`: a few steps of the tiny DS-MoE (shrunk as in the other command-line
//! tests) end to end on the emulated GPU, every kernel executed by the `vgpu` emulator through the
//! CUDA driver API, against the same run on the CPU. Every logged training loss agrees within the
//! GPU tests' f32 loss tolerance (model/tests/gpu_step.rs).
//!
//! Runs in the emulated suite (`DSMOE_DEVICE=emu`, scripts/emu-tests.sh), where NVRTC and the
//! emulated driver are there; elsewhere it prints one `skipped:` line, like the other GPU tests.

mod common;

use common::{dsmoe, micro_config, scratch, text};

/// Relative tolerance on the loss in f32, as in gpu_step.rs (there for one step; the few AdamW
/// steps here start from identical weights and see identical batches).
const LOSS_TOL: f64 = 1e-5;

fn train_losses(device: &str, config: &std::path::Path, out: &std::path::Path) -> Vec<(u64, f64)> {
    let o = dsmoe(&["train", "--config", config.to_str().unwrap(), "--steps", "3", "--device", device, "--dtype", "f32", "--seed", "7", "--no-final-eval", "--out", out.to_str().unwrap()]);
    let (stdout, stderr) = text(&o);
    assert!(o.status.success(), "train --device {device} failed:\n{stdout}\n{stderr}");
    let log = std::fs::read_to_string(out.join("metrics.jsonl")).expect("metrics.jsonl");
    let losses: Vec<(u64, f64)> = log
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            Some((v.get("step")?.as_u64()?, v.get("train_loss")?.as_f64()?))
        })
        .collect();
    assert!(!losses.is_empty(), "no train_loss in {log}");
    losses
}

#[test]
fn train_on_the_emulated_gpu_matches_the_cpu() {
    if !engine::cuda::emulator_requested().unwrap_or(false) {
        engine::cuda::report_skip("the emulated training run needs DSMOE_DEVICE=emu (scripts/emu-tests.sh)");
        return;
    }
    let dir = scratch("emulated-train");
    let config = micro_config(&dir, 256);
    let cpu = train_losses("cpu", &config, &dir.join("cpu"));
    let emu = train_losses("emu", &config, &dir.join("emu"));
    assert_eq!(cpu.len(), emu.len(), "logged steps differ: {cpu:?} vs {emu:?}");
    for ((step, c), (step_e, e)) in cpu.iter().zip(&emu) {
        assert_eq!(step, step_e);
        assert!((c - e).abs() / c.abs() < LOSS_TOL, "step {step}: loss {e} on the emulated GPU, {c} on the CPU");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
