//! Command-line arguments.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "dsmoe", version, about = "Dense training, sparse inference for Mixture-of-Experts language models")]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
    /// Time every CUDA kernel launch with events, or every CPU op, and print a per-kernel / per-op
    /// table at exit (the same as DSMOE_PROFILE=1).
    #[arg(long, global = true)]
    pub profile: bool,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model (default: the tiny DS-MoE on the bundled corpus), then evaluate it densely
    /// and sparsely and print a sample.
    Train(TrainArgs),
    /// Evaluate a checkpoint on the validation split under an inference mode.
    Eval(EvalArgs),
    /// Sample text from a checkpoint.
    Generate(GenerateArgs),
    /// Print total and active parameters of a config (or of every preset).
    Info(InfoArgs),
    /// Train a byte-level BPE on the training split of a text file and write the text as a token
    /// file, with the tokenizer beside it (TOKENS.tokenizer.json).
    Tokenize(TokenizeArgs),
}

#[derive(clap::Args)]
pub struct TrainArgs {
    /// A preset name (see `dsmoe info`) or a config file.
    #[arg(long, default_value = "ds-moe-tiny")]
    pub config: String,
    /// Training data: a text file (byte tokens) or a token file; default: the bundled corpus.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Optimizer steps (overrides the config).
    #[arg(long)]
    pub steps: Option<u64>,
    /// auto, cpu, cuda, cuda:N, or emu (the emulated GPU: every CUDA kernel runs on the CPU, with
    /// sanitizer checks; the same as DSMOE_DEVICE=emu).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Seed for initialisation and data order (overrides the config; a resumed run keeps its own,
    /// and a different one is an error).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory for checkpoints, metrics and the loss plot (default: runs/CONFIG, or
    /// runs/CONFIG.2, .3, ... when that holds an earlier run, which is never overwritten).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue from the latest checkpoint in --out (default runs/CONFIG), exactly where it stopped.
    #[arg(long)]
    pub resume: bool,
    /// Compute dtype: f32, f64, or bf16 (the default on CUDA; master weights stay f32); f16 on CUDA
    /// only. A resumed run keeps its own, and a different one is an error.
    #[arg(long)]
    pub dtype: Option<String>,
    /// Skip the final sparse evaluation and sample.
    #[arg(long)]
    pub no_final_eval: bool,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint directory written by `dsmoe train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// MLP expert selection: dense, top-k:K, threshold:EPS or threshold-k:EPS.
    #[arg(long, default_value = "dense")]
    pub mode: String,
    /// Attention expert selection (same forms); dense by default, as in the paper's speed tests.
    #[arg(long, default_value = "dense")]
    pub att_mode: String,
    /// Validation data (default: the data the checkpoint was trained on, else the bundled corpus).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation windows to evaluate (0 = the whole split).
    #[arg(long, default_value_t = 0)]
    pub windows: usize,
    /// auto, cpu, cuda, cuda:N, or emu (the emulated GPU: every CUDA kernel runs on the CPU, with
    /// sanitizer checks; the same as DSMOE_DEVICE=emu).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct GenerateArgs {
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[arg(long)]
    pub prompt: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    #[arg(long, default_value = "dense")]
    pub mode: String,
    #[arg(long, default_value = "dense")]
    pub att_mode: String,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// auto, cpu, cuda, cuda:N, or emu (the emulated GPU: every CUDA kernel runs on the CPU, with
    /// sanitizer checks; the same as DSMOE_DEVICE=emu).
    #[arg(long, default_value = "auto")]
    pub device: String,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// A preset name or config file; default: a table of every preset.
    #[arg(long)]
    pub config: Option<String>,
}

#[derive(clap::Args)]
pub struct TokenizeArgs {
    /// A UTF-8 text file; the tokenizer learns from its first 90 % (the training split) only.
    #[arg(long)]
    pub data: PathBuf,
    /// Vocabulary size, at least 256 (the byte tokens); fewer when the text offers fewer merges.
    #[arg(long)]
    pub vocab: usize,
    /// The token file to write, for `dsmoe train --data`.
    #[arg(long)]
    pub out: PathBuf,
}
