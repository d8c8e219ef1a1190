//! One module per subcommand, plus what they share: device and mode parsing, loss formatting.

mod bench;
mod runner;
mod eval;
mod generate;
mod info;
mod report;
mod tokenize;
mod train;

use anyhow::{Context, Result};
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
    }
}

/// `auto`, `cpu`, `cuda` or `cuda:N`; CUDA asked for where there is none is an error saying why.
fn device(s: &str) -> Result<Device> {
    Device::parse(s).with_context(|| format!("--device {s}"))
}

/// The compute dtype: given, or bf16 on CUDA (f32 master weights) and f32 on the CPU.
fn compute_dtype(given: Option<&str>, device: &Device) -> Result<DType> {
    match given {
        Some(s) => Ok(model::run::parse_dtype(s)?),
        None if device.is_cuda() => Ok(DType::BF16),
        None => Ok(DType::F32),
    }
}

fn inference_mode(mlp: &str, attention: &str) -> Result<InferenceMode> {
    Ok(InferenceMode {
        mlp: Selection::parse(mlp).context("--mode")?,
        attention: Selection::parse(attention).context("--att-mode")?,
    })
}
