//! CPU throughput of training and evaluation at the three shapes of the PyTorch comparison: the
//! dsmoe side of `scripts/cpu_peer.py`, which runs this and `scripts/torch_peer.py` alternately and
//! writes the ratios to `perf/cpu-peer.md`.
//!
//! Shapes (all DS-MoE, byte vocabulary, the tiny preset's attention experts with the head width
//! scaled so that the query heads span d):
//! - `tiny`: ds-moe-tiny as the README's main job trains it (d128, 4 layers, 8 experts of 64,
//!   B16 x T128);
//! - `d256`: d256, 6 layers, 16 experts of 64, B16 x T128;
//! - `d512`: d512, 8 layers, 16 experts of 256, B8 x T256.
//!
//! Measured, in tokens per second of wall time after warm-up: training steps (forward, backward,
//! clipping, AdamW: `TrainingRun::step` with evaluation and checkpoints pushed past the run), and
//! evaluation of the validation windows densely and with top-k:2 MLP routing (the sparse path),
//! the two alternated in turns.
//! Each also in tokens per second of process CPU time (user + system, all threads; the `_cpu`
//! keys): on a machine shared with other work, wall time counts their time too, CPU time mostly
//! does not, so ratios of CPU-time throughputs are the steadier comparison there.
//!
//! Usage: `cargo bench --bench cpu_peer -- SHAPE [--config-out PATH] [--train-steps N]
//! [--eval-batches N]`; prints one JSON line. `--config-out` writes the shape's config, which the
//! PyTorch peer reads, so both sides build the same model.

use std::time::{Duration, Instant};

use engine::cpu::profile::process_cpu_time;
use engine::{DType, Device};
use model::config::presets;
use model::run::{open_corpus, TrainingRun};
use model::{Config, InferenceMode, Selection};

#[global_allocator]
static ALLOC: engine::cpu::pool::HostPool = engine::cpu::pool::HostPool;

fn shape(name: &str) -> Config {
    let mut c = presets::load("ds-moe-tiny").expect("the bundled preset");
    let (d, layers, experts, width, batch, seq) = match name {
        "tiny" => (128, 4, 8, 64, 16, 128),
        "d256" => (256, 6, 16, 64, 16, 128),
        "d512" => (512, 8, 16, 256, 8, 256),
        other => panic!("unknown shape {other}: expected tiny, d256 or d512"),
    };
    let m = &mut c.model;
    m.name = format!("cpu-peer-{name}");
    m.d_model = d;
    m.n_layers = layers;
    m.mlp.n_experts = experts;
    m.mlp.expert_width = width;
    m.max_seq_len = seq;
    m.attention.head_dim = d / (m.attention.n_experts * m.attention.heads_per_expert);
    let t = &mut c.train;
    t.batch_size = batch;
    t.seq_len = seq;
    t.steps = 1_000_000;
    t.eval_interval = 0;
    t.checkpoint_interval = 0;
    c
}

/// Tokens per second of wall time and of process CPU time.
struct Throughput {
    wall: f64,
    cpu: f64,
}

impl Throughput {
    /// `tokens` processed since the wall instant `t0` and the process CPU time `c0`.
    fn since(tokens: f64, t0: Instant, c0: Duration) -> Throughput {
        Throughput { wall: tokens / t0.elapsed().as_secs_f64(), cpu: tokens / (process_cpu_time() - c0).as_secs_f64() }
    }
}

/// Turns of dense and top-k:2 evaluation, alternated.
const ALTERNATIONS: usize = 4;

const VALUE_FLAGS: [&str; 3] = ["--config-out", "--train-steps", "--eval-batches"];

fn arg(args: &[String], flag: &str) -> Option<String> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1).cloned())
}

/// The first argument that is neither a flag nor a flag's value (`cargo bench` adds `--bench`).
fn shape_name(args: &[String]) -> Option<String> {
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            f if VALUE_FLAGS.contains(&f) => i += 2,
            f if f.starts_with("--") => i += 1,
            name => return Some(name.to_string()),
        }
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = shape_name(&args) else {
        eprintln!("usage: cargo bench --bench cpu_peer -- tiny|d256|d512 [--config-out PATH] [--train-steps N] [--eval-batches N]");
        std::process::exit(2);
    };
    let config = shape(&name);
    if let Some(path) = arg(&args, "--config-out") {
        std::fs::write(&path, config.to_json()).expect("writing the config");
    }
    let train_steps: usize = arg(&args, "--train-steps").map_or(6, |s| s.parse().expect("--train-steps N"));
    let eval_batches: usize = arg(&args, "--eval-batches").map_or(4, |s| s.parse().expect("--eval-batches N"));
    let (batch, seq) = (config.train.batch_size, config.train.seq_len);

    let dir = std::env::temp_dir().join(format!("dsmoe-cpu-peer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let corpus = open_corpus(None).expect("the bundled corpus");
    let mut run = TrainingRun::start(config.clone(), corpus, &dir, &Device::Cpu, DType::F32).expect("starting the run");
    // Two warm-up steps size every buffer and fill the host pool.
    for _ in 0..2 {
        run.step().expect("a training step");
    }
    let (t0, c0) = (Instant::now(), process_cpu_time());
    for _ in 0..train_steps {
        run.step().expect("a training step");
    }
    let train = Throughput::since((train_steps * batch * seq) as f64, t0, c0);

    // The model as trained so far (its routers have started to specialise). Dense and top-k:2
    // evaluation alternate in `ALTERNATIONS` turns of a share of the batches each, so that a slow
    // stretch of a shared machine lands on both modes rather than on one: their ratio is the
    // figure a target is set on.
    let modes = [InferenceMode::DENSE, InferenceMode { mlp: Selection::TopK(2), attention: Selection::Dense }];
    let mut spent = [(0.0, Duration::ZERO, Duration::ZERO); 2];
    for mode in modes {
        run.evaluate(mode, batch).expect("warm-up evaluation");
    }
    for _ in 0..ALTERNATIONS {
        for (mode, (tokens, wall, cpu)) in modes.into_iter().zip(&mut spent) {
            let (t0, c0) = (Instant::now(), process_cpu_time());
            let r = run.evaluate(mode, eval_batches.div_ceil(ALTERNATIONS) * batch).expect("evaluation");
            *wall += t0.elapsed();
            *cpu += process_cpu_time() - c0;
            *tokens += r.tokens as f64;
        }
    }
    let [dense, sparse] = spent.map(|(tokens, wall, cpu)| Throughput { wall: tokens / wall.as_secs_f64(), cpu: tokens / cpu.as_secs_f64() });
    let _ = std::fs::remove_dir_all(&dir);
    let pool = engine::cpu::pool::stats();
    println!(
        "{}",
        serde_json::json!({
            "impl": "dsmoe",
            "shape": name,
            "threads": std::env::var("RAYON_NUM_THREADS").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            "train_tok_s": train.wall,
            "eval_dense_tok_s": dense.wall,
            "eval_topk2_tok_s": sparse.wall,
            "train_cpu_tok_s": train.cpu,
            "eval_dense_cpu_tok_s": dense.cpu,
            "eval_topk2_cpu_tok_s": sparse.cpu,
            "pool_os_allocations": pool.os_allocations,
            "pool_hits": pool.pool_hits,
        })
    );
}
