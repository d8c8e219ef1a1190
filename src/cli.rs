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
    /// Sample text from a checkpoint: one prompt, or a file of prompts run as one continuous batch
    /// over a paged KV cache.
    Generate(GenerateArgs),
    /// Benchmarks: `dsmoe bench inference`.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Print total and active parameters of a config (or of every preset).
    Info(InfoArgs),
    /// Train a byte-level BPE on the training split of a text file and write the text as a token
    /// file, with the tokenizer beside it (TOKENS.tokenizer.json).
    Tokenize(TokenizeArgs),
    /// Run the papers' experiments (DS-MoE Tables 3-4, Figs. 3-5; Artetxe et al.'s compute
    /// efficiency) and write results, tables, plots and OUT/report.md; an interrupted
    /// reproduction resumes where it stopped.
    Reproduce(ReproduceArgs),
}

/// How large the reproduction's models and training are.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Scale {
    /// A seconds-long miniature, for tests.
    Toy,
    /// The tiny configs for their own 600 steps (about 1.8 training tokens per parameter).
    Tiny,
    /// The tiny configs for 4x their steps, evaluated on 4x the windows.
    Small,
    /// The paper's 1B/3B/6B presets (a GPU job).
    Paper,
}

impl Scale {
    pub fn name(self) -> &'static str {
        match self {
            Scale::Toy => "toy",
            Scale::Tiny => "tiny",
            Scale::Small => "small",
            Scale::Paper => "paper",
        }
    }
}

#[derive(clap::Args)]
pub struct ReproduceArgs {
    /// Experiments to run (default: all): table3, fig4, table4, fig3, fig5, artetxe, speed, table7.
    pub experiments: Vec<String>,
    #[arg(long, value_enum, default_value = "tiny")]
    pub scale: Scale,
    /// Where runs, results and the report go; finished runs there are reused.
    #[arg(long, default_value = "runs/reproduce")]
    pub out: PathBuf,
    /// Training data (default: the bundled corpus).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// auto, cpu, cuda, cuda:N, or emu.
    #[arg(long, default_value = "auto")]
    pub device: String,
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
    /// Ranks per expert group when launched on several (expert parallelism of DS-MoE's dense
    /// training): each MoE layer's experts are split over N ranks, and the world is N x the
    /// data-parallel size. A resumed run may use another.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub expert_parallel: usize,
    /// Data parallel: all-reduce the gradients after the backward pass instead of starting each
    /// bucket's all-reduce during it (the default), for comparison; both give the same update.
    #[arg(long)]
    pub reduce_after_backward: bool,
    /// Data parallel: the most gradient MiB one all-reduce carries (smaller buckets start earlier
    /// in the backward pass and pay more collectives' latency).
    #[arg(long, default_value_t = 16.0, value_name = "MIB")]
    pub grad_bucket_mb: f64,
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// A checkpoint directory written by `dsmoe train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// MLP expert selection: dense, top-k:K, threshold:EPS or threshold-k:EPS.
    #[arg(long, default_value = "dense")]
    pub mode: String,
    /// Attention expert selection (same forms, or `same`: the --mode rule, as the paper's Threshold
    /// strategy selects both); dense by default, as in the paper's speed tests.
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
    #[arg(long, required_unless_present = "prompts", conflicts_with = "prompts")]
    pub prompt: Option<String>,
    /// A file of prompts, one per line, generated together in one continuous batch.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// Tokens to generate per prompt (fewer when the model's context fills up first).
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Only the k most probable tokens are sampled.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Only the most probable tokens whose probabilities reach p are sampled (nucleus).
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Stop a sequence when its output contains this text (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    #[command(flatten)]
    pub engine: EngineArgs,
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

/// How the inference engine runs (shared by `generate` and `bench inference`).
#[derive(clap::Args, Clone)]
pub struct EngineArgs {
    /// Weight and cache dtype: f32, bf16 or f16 (products accumulate in f32); default f32 on the
    /// CPU, bf16 on CUDA.
    #[arg(long)]
    pub dtype: Option<String>,
    /// KV-cache memory budget in MiB (the pool of blocks every sequence draws from).
    #[arg(long, default_value_t = 256)]
    pub kv_budget_mib: usize,
    /// Positions per KV-cache block.
    #[arg(long, default_value_t = 16)]
    pub block_size: usize,
    /// Most prompt tokens of one sequence per step (long prompts prefill in chunks).
    #[arg(long, default_value_t = 512)]
    pub prefill_chunk: usize,
    /// Most sequences decoded together.
    #[arg(long, default_value_t = 64)]
    pub max_batch: usize,
    /// Attention experts compute only their selected query heads and output rows (instead of the
    /// paper's dense attention with gated heads).
    #[arg(long)]
    pub per_expert_attention: bool,
}

#[derive(Subcommand)]
pub enum BenchCommand {
    /// The paper's inference protocols (latency, input, output and serving throughput) for dense
    /// and sparse modes, as a table; records appended to perf/results.jsonl.
    Inference(BenchInferenceArgs),
}

#[derive(clap::Args)]
pub struct BenchInferenceArgs {
    /// A checkpoint directory to bench.
    #[arg(long, required_unless_present = "random_weights", conflicts_with = "random_weights")]
    pub checkpoint: Option<PathBuf>,
    /// Random weights of these configs instead (presets or files, comma-separated; e.g.
    /// dense-1b,ds-moe-1b). Speedups are over the first row.
    #[arg(long, value_delimiter = ',')]
    pub random_weights: Vec<String>,
    /// Sparse MLP modes to run besides dense for DS-MoE models (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "top-k:2,threshold:1")]
    pub modes: Vec<String>,
    /// Attention expert selection for the sparse modes.
    #[arg(long, default_value = "dense")]
    pub att_mode: String,
    /// Protocols to run (comma-separated): latency, input, output, serving.
    #[arg(long, value_delimiter = ',', default_value = "latency,input,output,serving")]
    pub protocols: Vec<String>,
    /// Latency: batch, prompt length and tokens generated (the paper: 64 x 2000, 20). The
    /// defaults fit the tiny models' context of 128; scale them up for larger ones.
    #[arg(long, default_value_t = 4)]
    pub latency_batch: usize,
    #[arg(long, default_value_t = 64)]
    pub latency_prompt: usize,
    #[arg(long, default_value_t = 8)]
    pub latency_tokens: usize,
    /// Input throughput: batch and prompt length (the paper: the largest batch that fits, 256).
    #[arg(long, default_value_t = 8)]
    pub input_batch: usize,
    #[arg(long, default_value_t = 96)]
    pub input_prompt: usize,
    /// Output throughput: batch and decode tokens per sequence after a one-token prompt (the
    /// paper: 512).
    #[arg(long, default_value_t = 1)]
    pub output_batch: usize,
    #[arg(long, default_value_t = 64)]
    pub output_tokens: usize,
    /// Serving: requests, and input / output tokens of each (the paper: 1,000 + 1,000).
    #[arg(long, default_value_t = 16)]
    pub serving_requests: usize,
    #[arg(long, default_value_t = 32)]
    pub serving_input: usize,
    #[arg(long, default_value_t = 32)]
    pub serving_output: usize,
    /// Measurements per row and protocol, alternating between rows; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Also run each model with attention experts with per-expert attention, as rows of their
    /// own in the same alternation (when per-expert attention pays).
    #[arg(long)]
    pub compare_attention: bool,
    /// Do not append records to perf/results.jsonl.
    #[arg(long)]
    pub no_record: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub engine: EngineArgs,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// A preset name or config file; default: a table of every preset.
    #[arg(long)]
    pub config: Option<String>,
    /// The communication model of data- and expert-parallel training for --config (default
    /// ds-moe-6b): bytes per step per rank and their time at NVLink and InfiniBand speeds, beside
    /// the compute time.
    #[arg(long)]
    pub comm: bool,
    /// GPU counts for --comm.
    #[arg(long, value_delimiter = ',', default_values_t = [8, 64, 512])]
    pub gpus: Vec<usize>,
    /// Sustained TFLOP/s per GPU for --comm's compute time.
    #[arg(long, default_value_t = 400.0)]
    pub tflops: f64,
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
