//! One module per subcommand, plus what they share: device and mode parsing, loss formatting.

mod bench;
mod runner;
mod eval;
mod generate;
mod info;
mod launch;
mod report;
mod reproduce;
mod tokenize;
mod train;

use anyhow::{bail, Context, Result};
use engine::{DType, Device};
use model::{InferenceMode, Selection};

use crate::cli::{Args, Command};

pub fn run(args: Args) -> Result<()> {
    match args.command {
        Command::Train(a) => train::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Generate(a) => generate::run(a),
        Command::Bench(c) => bench::run(c),
        Command::Info(a) => info::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Reproduce(a) => reproduce::run(a),
    }
}

/// `auto`, `cpu`, `cuda` or `cuda:N`; CUDA asked for where there is none is an error saying why.
fn device(s: &str) -> Result<Device> {
    Device::parse(s).with_context(|| format!("--device {s}"))
}

/// The compute dtype: given, or bf16 on CUDA (f32 master weights) and f32 on the CPU.
fn compute_dtype(given: Option<&str>, device: &Device) -> Result<DType> {
    let dtype = match given {
        Some(s) => model::run::parse_dtype(s)?,
        None if device.is_cuda() => DType::BF16,
        None => DType::F32,
    };
    check_dtype(dtype, device)?;
    Ok(dtype)
}

/// Fails up front for a dtype the device cannot compute in: the CPU backend has no f16 kernels.
fn check_dtype(dtype: DType, device: &Device) -> Result<()> {
    if dtype == DType::F16 && !device.is_cuda() {
        bail!("--dtype f16 needs a CUDA device; on {device} use f32, f64 or bf16");
    }
    Ok(())
}

/// `--mode` and `--att-mode` (where `same` repeats the MLP's rule).
fn inference_mode(mlp: &str, attention: &str) -> Result<InferenceMode> {
    Selection::parse(mlp).context("--mode")?;
    InferenceMode::parse(mlp, attention).context("--att-mode")
}
