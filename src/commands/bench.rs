//! `dsmoe bench inference`: the paper's inference protocols on the inference engine, for a
//! checkpoint or random weights of any config, dense and each sparse mode:
//! - latency: a batch of long prompts generating a few tokens, seconds end to end (Table 5);
//! - input throughput: prompt tokens per second, one generated token each (Table 5);
//! - output throughput: decode tokens per second after a one-token prompt (Fig. 6b); at batch 1
//!   also the weight bytes read per second, against the machine's copy bandwidth and its read
//!   ceiling (engine's `cpu::bandwidth`), both measured in the same run;
//! - serving: requests of given input / output lengths under continuous batching and the cache
//!   budget, requests and tokens per second (Table 7).
//!
//! Rows are measured in alternation (every row once, then again, `--repeats` times) and the median
//! is reported, so a machine shared with other work slows every row alike. Speedups are over the
//! first row. Each measurement is appended to perf/results.jsonl (or `$DSMOE_RESULTS`).

use std::time::Instant;

use anyhow::{bail, Context, Result};
use engine::cpu::profile::process_cpu_time;
use engine::Rng;
use indicatif::{ProgressBar, ProgressStyle};
use model::config::presets;
use model::infer::{InferWeights, Request, SamplingParams};
use model::run::load_model;
use model::{Family, InferenceMode, Selection};

use super::runner::{infer_dtype, scheduler};
use super::{device, inference_mode};
use crate::cli::{BenchCommand, BenchInferenceArgs};

pub fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Inference(a) => inference(a),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Latency,
    Input,
    Output,
    Serving,
}

impl Protocol {
    fn parse(s: &str) -> Result<Protocol> {
        Ok(match s {
            "latency" => Protocol::Latency,
            "input" => Protocol::Input,
            "output" => Protocol::Output,
            "serving" => Protocol::Serving,
            _ => bail!("--protocols: unknown protocol {s:?} (expected latency, input, output or serving)"),
        })
    }

    /// (requests, prompt length, tokens generated) for this protocol.
    fn shape(self, a: &BenchInferenceArgs) -> (usize, usize, usize) {
        match self {
            Protocol::Latency => (a.latency_batch, a.latency_prompt, a.latency_tokens),
            Protocol::Input => (a.input_batch, a.input_prompt, 1),
            Protocol::Output => (a.output_batch, 1, a.output_tokens),
            Protocol::Serving => (a.serving_requests, a.serving_input, a.serving_output),
        }
    }
}

/// One model under test.
struct Subject {
    name: String,
    weights: InferWeights,
}

struct Row {
    subject: usize,
    mode: InferenceMode,
    label: String,
}

/// One timed run of a protocol.
#[derive(Debug, Clone, Copy)]
struct Sample {
    seconds: f64,
    prompt_tokens: usize,
    generated: usize,
    requests: usize,
    /// Active parameters per token (embedding excluded), from the routing that happened.
    active: f64,
    /// Process CPU time (all threads) over the run: against `seconds`, how many cores it had.
    cpu_seconds: f64,
}

fn inference(a: BenchInferenceArgs) -> Result<()> {
    let device = device(&a.device)?;
    let dtype = infer_dtype(&a.engine, &device)?;
    let protocols = a.protocols.iter().map(|p| Protocol::parse(p)).collect::<Result<Vec<_>>>()?;
    let sparse_modes = a.modes.iter().map(|m| inference_mode(m, &a.att_mode)).collect::<Result<Vec<_>>>()?;
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    // Each model once with the engine's attention option, and with `--compare-attention` also
    // with per-expert attention (as another subject, so both are measured in alternation).
    let options: &[bool] = if a.compare_attention && !a.engine.per_expert_attention { &[false, true] } else { &[a.engine.per_expert_attention] };
    let label = |name: &str, per_expert: bool| if per_expert && a.compare_attention { format!("{name} (per-expert att)") } else { name.to_string() };
    let mut subjects = Vec::new();
    match &a.checkpoint {
        Some(path) => {
            let loaded = load_model(path, &device)?;
            let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
            for &per_expert in attention_options(options, &loaded.model.config) {
                subjects.push(Subject { name: label(&name, per_expert), weights: InferWeights::from_model(&loaded.model, dtype, per_expert)? });
            }
        }
        None => {
            for name in &a.random_weights {
                let config = presets::load(name)?.model;
                eprintln!("drawing random {dtype} weights for {name} ...");
                for &per_expert in attention_options(options, &config) {
                    subjects.push(Subject { name: label(name, per_expert), weights: InferWeights::random(&config, dtype, &device, 0, per_expert)? });
                }
            }
        }
    }
    let mut rows = Vec::new();
    for (i, s) in subjects.iter().enumerate() {
        let cfg = &s.weights.config;
        for (j, &p) in protocols.iter().enumerate() {
            let (_, prompt, tokens) = p.shape(&a);
            if prompt + tokens > cfg.max_seq_len || prompt == 0 || tokens == 0 {
                bail!("{}: the {:?} protocol's {prompt} prompt + {tokens} generated tokens must be positive and fit the context of {} (protocol {})", s.name, p, cfg.max_seq_len, a.protocols[j]);
            }
        }
        rows.push(Row { subject: i, mode: InferenceMode::DENSE, label: "dense".into() });
        if cfg.family == Family::DsMoe {
            for (m, text) in sparse_modes.iter().zip(&a.modes) {
                let label = if m.attention == Selection::Dense { text.clone() } else { format!("{text}, attention {}", a.att_mode) };
                rows.push(Row { subject: i, mode: *m, label });
            }
        }
    }

    let copy_before = copy_bandwidth_gbs();
    let bar = ProgressBar::new((a.repeats * rows.len() * protocols.len()) as u64);
    bar.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}]").expect("a valid template"));
    let mut samples: Vec<Vec<Vec<Sample>>> = vec![vec![Vec::new(); protocols.len()]; rows.len()];
    for _ in 0..a.repeats {
        for (r, row) in rows.iter().enumerate() {
            for (p, &protocol) in protocols.iter().enumerate() {
                bar.set_message(format!("{} {} {:?}", subjects[row.subject].name, row.label, protocol));
                samples[r][p].push(measure(&subjects[row.subject].weights, row.mode, protocol, &a)?);
                bar.inc(1);
            }
        }
    }
    bar.finish_and_clear();
    let copy = copy_before.max(copy_bandwidth_gbs());
    let read = engine::cpu::bandwidth::read_gbs(std::thread::available_parallelism().map_or(1, |n| n.get()));
    let medians: Vec<Vec<Sample>> = samples.into_iter().map(|per_row| per_row.into_iter().map(median).collect()).collect();
    print_table(&a, &subjects, &rows, &protocols, &medians, (copy, read), dtype)?;
    if !a.no_record {
        record(&a, &subjects, &rows, &protocols, &medians, (copy, read), dtype)?;
    }
    Ok(())
}

fn measure(weights: &InferWeights, mode: InferenceMode, protocol: Protocol, a: &BenchInferenceArgs) -> Result<Sample> {
    let (count, prompt, tokens) = protocol.shape(a);
    let mut rng = Rng::new(17);
    let vocab = weights.config.vocab_size;
    let requests: Vec<Request> = (0..count)
        .map(|_| Request { prompt: (0..prompt).map(|_| rng.below(vocab) as u32).collect(), max_new_tokens: tokens, stop_tokens: vec![], stop_strings: vec![], sampling: SamplingParams::GREEDY })
        .collect();
    // The cache is allocated (and zeroed) before the clock starts.
    let mut engine = scheduler(weights, &a.engine, vec![mode; weights.config.n_layers])?;
    let (start, cpu_start) = (Instant::now(), process_cpu_time());
    let out = engine.run(&requests, None, |_| {})?;
    let seconds = start.elapsed().as_secs_f64();
    let cpu_seconds = (process_cpu_time() - cpu_start).as_secs_f64();
    let (att, mlp) = engine.tally.experts_per_token()?;
    Ok(Sample {
        seconds,
        prompt_tokens: count * prompt,
        generated: out.iter().map(|c| c.generated.len()).sum(),
        requests: count,
        active: weights.config.counts(att, mlp)?.active,
        cpu_seconds,
    })
}

fn median(mut v: Vec<Sample>) -> Sample {
    v.sort_by(|x, y| x.seconds.total_cmp(&y.seconds));
    v[v.len() / 2]
}

/// The figure each protocol reports: (value, unit, higher is better).
fn figure(protocol: Protocol, s: &Sample) -> (f64, &'static str, bool) {
    match protocol {
        Protocol::Latency => (s.seconds, "s", false),
        Protocol::Input => (s.prompt_tokens as f64 / s.seconds, "tokens/s", true),
        Protocol::Output => (s.generated as f64 / s.seconds, "tokens/s", true),
        Protocol::Serving => ((s.prompt_tokens + s.generated) as f64 / s.seconds, "tokens/s", true),
    }
}

/// The attention options worth running for a config: per-expert attention only with attention experts.
fn attention_options<'a>(options: &'a [bool], config: &model::ModelConfig) -> &'a [bool] {
    if config.attention.n_experts > 1 { options } else { &options[..1] }
}

/// Weight bytes one decode token reads: the active parameters and the LM head (`vocab x d`).
fn weight_bytes_per_token(w: &InferWeights, active: f64) -> f64 {
    (active + (w.config.vocab_size * w.config.d_model) as f64) * w.dtype.size_in_bytes() as f64
}

/// `(copy, read)`: the copy bandwidth (bytes read plus written) and the read ceiling measured in
/// the run, GB/s.
fn print_table(a: &BenchInferenceArgs, subjects: &[Subject], rows: &[Row], protocols: &[Protocol], m: &[Vec<Sample>], (copy, read): (f64, f64), dtype: engine::DType) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("inference on the CPU ({threads} threads), {dtype} weights; median of {} alternating runs; speedups over the first row", a.repeats);
    let headers: Vec<String> = protocols
        .iter()
        .map(|&p| {
            let (n, prompt, tokens) = p.shape(a);
            match p {
                Protocol::Latency => format!("latency s ({n}x{prompt}+{tokens})"),
                Protocol::Input => format!("input tok/s ({n}x{prompt})"),
                Protocol::Output => format!("output tok/s ({n}x{tokens})"),
                Protocol::Serving => format!("serving req/s, tok/s ({n}x{prompt}+{tokens})"),
            }
        })
        .collect();
    print!("{:<30} {:<28} {:>16}", "model", "mode", "active params");
    for h in &headers {
        print!("  {h:>30}");
    }
    println!();
    for (r, row) in rows.iter().enumerate() {
        let s = &subjects[row.subject];
        let total = s.weights.config.counts(None, None)?.total as f64;
        let active = m[r][0].active;
        print!("{:<30} {:<28} {:>16}", s.name, row.label, format!("{} ({:.0}%)", human(active), 100.0 * active / total));
        for (p, &protocol) in protocols.iter().enumerate() {
            let (value, _, higher) = figure(protocol, &m[r][p]);
            let (base, _, _) = figure(protocol, &m[0][p]);
            let speedup = if higher { value / base } else { base / value };
            let cell = match protocol {
                Protocol::Serving => format!("{:.2}, {:.1} ({speedup:.2}x)", m[r][p].requests as f64 / m[r][p].seconds, value),
                Protocol::Latency => format!("{value:.3} ({speedup:.2}x)"),
                _ => format!("{value:.1} ({speedup:.2}x)"),
            };
            print!("  {cell:>30}");
        }
        println!();
    }
    if let Some(p) = protocols.iter().position(|&p| p == Protocol::Output).filter(|_| a.output_batch == 1) {
        println!("\nbatch-1 decode, weights read per second against the copy bandwidth ({copy:.1} GB/s, read + write, measured in this run)");
        println!("and against the read ceiling ({read:.1} GB/s: every core streaming a 1 GiB huge-page buffer, {}, measured after the rows);", engine::cpu::bandwidth::loop_name());
        println!("targets: >= 70 % of copy, and a speedup over the first row >= 0.9x its bytes ratio; a row that had under 90 % of");
        println!("the {threads} cores (process CPU time / wall time) ran on a shared machine, and its share of copy is not judged:");
        for (r, row) in rows.iter().enumerate() {
            let s = &subjects[row.subject];
            let bytes = weight_bytes_per_token(&s.weights, m[r][p].active);
            let rate = bytes * figure(Protocol::Output, &m[r][p]).0 / 1e9;
            let base_bytes = weight_bytes_per_token(&subjects[rows[0].subject].weights, m[0][p].active);
            let speedup = figure(Protocol::Output, &m[r][p]).0 / figure(Protocol::Output, &m[0][p]).0;
            let (fraction, ratio) = (rate / copy, base_bytes / bytes);
            let verdict = |met: bool| if met { "met" } else { "NOT met" };
            let busy = m[r][p].cpu_seconds / m[r][p].seconds;
            let share_verdict = if busy < 0.9 * threads as f64 { "not judged" } else { verdict(fraction >= 0.7) };
            let speed_verdict = if r == 0 { String::new() } else { format!(" (>= 0.9x: {})", verdict(speedup >= 0.9 * ratio)) };
            println!(
                "  {:<30} {:<28} {:>8.1} MB/token  {:>6.1} GB/s ({:>3.0}% of copy, >= 70%: {}; {:>3.0}% of the read ceiling; {busy:.2} cores busy)  speedup {speedup:.2}x vs bytes ratio {ratio:.2}x = {:.2}{speed_verdict}",
                s.name,
                row.label,
                bytes / 1e6,
                rate,
                100.0 * fraction,
                share_verdict,
                100.0 * rate / read,
                speedup / ratio,
            );
        }
    }
    Ok(())
}

fn human(n: f64) -> String {
    match n {
        n if n >= 1e9 => format!("{:.2}B", n / 1e9),
        n if n >= 1e6 => format!("{:.1}M", n / 1e6),
        n if n >= 1e3 => format!("{:.1}K", n / 1e3),
        n => format!("{n:.0}"),
    }
}

/// Host memory copy bandwidth in GB/s (bytes read plus bytes written), with every core copying
/// its share of a 256 MiB buffer; the best of five.
fn copy_bandwidth_gbs() -> f64 {
    const BYTES: usize = 256 << 20;
    let src = vec![1u64; BYTES / 8];
    let mut dst = vec![0u64; BYTES / 8];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = src.len().div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = Instant::now();
        std::thread::scope(|scope| {
            for (d, s) in dst.chunks_mut(share).zip(src.chunks(share)) {
                scope.spawn(move || d.copy_from_slice(s));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::hint::black_box(&dst);
    2.0 * BYTES as f64 / best / 1e9
}

fn record(a: &BenchInferenceArgs, subjects: &[Subject], rows: &[Row], protocols: &[Protocol], m: &[Vec<Sample>], (copy, read): (f64, f64), dtype: engine::DType) -> Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (commit, date) = (dsmoe::perf::commit(), dsmoe::perf::utc_now());
    let device = format!("cpu ({threads} threads, copy {copy:.1} GB/s, read ceiling {read:.1} GB/s)");
    let base = &rows[0];
    let base_name = format!("{} {}", subjects[base.subject].name, base.label);
    let mut lines = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        for (p, &protocol) in protocols.iter().enumerate() {
            let (n, prompt, tokens) = protocol.shape(a);
            let (ours, unit, _) = figure(protocol, &m[r][p]);
            lines.push(serde_json::json!({
                "bench": "inference",
                "case": format!("{} {} {:?} {n}x{prompt}+{tokens} {dtype}", subjects[row.subject].name, row.label, protocol).to_lowercase(),
                "device": device, "driver": "-", "commit": commit, "date": date,
                "unit": unit, "ours": ours, "baseline_name": base_name, "baseline": figure(protocol, &m[0][p]).0,
                "active_params": m[r][p].active,
                "copy_gbs": copy, "read_ceiling_gbs": read,
            }));
        }
    }
    let path = dsmoe::perf::append(&lines).with_context(|| format!("appending records to {}", dsmoe::perf::results_path().display()))?;
    eprintln!("records appended to {}", path.display());
    Ok(())
}
