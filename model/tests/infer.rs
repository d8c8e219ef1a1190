//! The inference engine against the training model's full-recompute forward: greedy tokens from
//! the paged KV cache with continuous batching must be exactly those of recomputing the whole
//! sequence for every token, for dense and sparse modes, across prefill chunk sizes and batch
//! mixes. Then the cache's block accounting over thousands of sequences, and bad inputs.
//!
//! Threshold-K takes part once resolved: its K per layer is the threshold rule's mean expert count
//! over an evaluated set (here random windows), fixed before either path runs, so neither the
//! recompute windows nor the engine's chunks and decode batches change it.

use engine::{ops, DType, Device, Rng};
use model::config::presets;
use model::infer::{InferWeights, KvCache, Request, SamplingParams, Scheduler, SchedulerConfig};
use model::eval::{resolve_threshold_k, KRounding};
use model::{InferenceMode, Model, ModelConfig, Selection};

/// A model with weights scaled up from the initialisation so its logits and routers are peaked:
/// at the tiny init scale every logit ties within rounding and argmax would compare noise.
fn peaked_model(config: &ModelConfig, seed: u64) -> Model {
    let mut model = Model::new(config, &Device::Cpu, seed).unwrap();
    for p in model.params.iter_mut() {
        if !p.name.ends_with("norm.weight") {
            let scale = if p.name.starts_with("embed") { 40.0 } else { 8.0 };
            p.value = ops::mul_scalar(&p.value, scale).unwrap();
        }
    }
    model
}

fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(4);
    [5usize, 17, 1, 33].iter().map(|&n| (0..n).map(|_| rng.below(vocab) as u32).collect()).collect()
}

const NEW_TOKENS: usize = 10;

fn greedy_request(prompt: &[u32]) -> Request {
    Request { prompt: prompt.to_vec(), max_new_tokens: NEW_TOKENS, stop_tokens: vec![], stop_strings: vec![], sampling: SamplingParams::GREEDY }
}

fn engine_outputs(weights: &InferWeights, modes: &[InferenceMode], prompts: &[Vec<u32>], chunk: usize, batch: usize) -> Vec<Vec<u32>> {
    let cache = KvCache::with_budget(&weights.config, DType::F32, &Device::Cpu, 1 << 22, 8).unwrap();
    let mut s = Scheduler::with_layer_modes(weights, cache, modes.to_vec(), SchedulerConfig { max_batch: batch, prefill_chunk: chunk }).unwrap();
    let requests: Vec<Request> = prompts.iter().map(|p| greedy_request(p)).collect();
    let out = s.run(&requests, None, |_| {}).unwrap();
    assert_eq!(s.cache.pool.free_blocks(), s.cache.pool.num_blocks(), "every block returned");
    out.into_iter().map(|c| c.generated).collect()
}

/// Random windows threshold-K's K is measured on.
fn calibration_windows(model: &Model) -> Vec<(Vec<u32>, Vec<u32>)> {
    let mut rng = Rng::new(11);
    let vocab = model.config.vocab_size;
    (0..5).map(|_| ((0..24).map(|_| rng.below(vocab) as u32).collect(), (0..24).map(|_| rng.below(vocab) as u32).collect())).collect()
}

fn check_matches_recompute(config: &ModelConfig, modes: &[(&str, &str)]) {
    let (model, name) = (peaked_model(config, 3), &config.name);
    let prompts = prompts(model.config.vocab_size);
    for &(mlp, att) in modes {
        let mode = InferenceMode::parse(mlp, att).unwrap();
        let modes = resolve_threshold_k(&model, &calibration_windows(&model), 3, mode, DType::F32, KRounding::Up).unwrap();
        let want: Vec<Vec<u32>> = prompts
            .iter()
            .map(|p| model::generate::generate_layers(&model, p, NEW_TOKENS, 0.0, &modes, DType::F32, &mut Rng::new(0)).unwrap()[p.len()..].to_vec())
            .collect();
        let per_expert_options: &[bool] = if model.config.attention.n_experts > 1 { &[false, true] } else { &[false] };
        for &per_expert in per_expert_options {
            let weights = InferWeights::from_model(&model, DType::F32, per_expert).unwrap();
            // (prefill chunk, batch): token by token alone; small chunks, mixed prefill and decode;
            // whole prompts, all at once.
            for (chunk, batch) in [(1, 1), (4, 3), (64, 4)] {
                let got = engine_outputs(&weights, &modes, &prompts, chunk, batch);
                assert_eq!(got, want, "{name} mlp {mlp} attention {att} per-expert {per_expert}: chunk {chunk}, batch {batch}");
            }
        }
    }
}

#[test]
fn kv_cache_greedy_matches_full_recompute_ds_moe() {
    check_matches_recompute(
        &preset("ds-moe-tiny"),
        &[("dense", "dense"), ("top-k:2", "dense"), ("threshold:1", "dense"), ("top-k:4", "top-k:2"), ("threshold:0.5", "threshold:1"), ("threshold-k:1", "dense"), ("threshold-k:0.5", "same")],
    );
}

#[test]
fn kv_cache_greedy_matches_full_recompute_dense_and_smoe() {
    check_matches_recompute(&preset("dense-tiny"), &[("dense", "dense")]);
    check_matches_recompute(&preset("smoe-tiny"), &[("dense", "dense")]);
}

fn preset(name: &str) -> ModelConfig {
    presets::load(name).unwrap().model
}

/// A tiny config with the peers' MLP: SwiGLU experts, a dense first layer, two shared experts.
fn swiglu(name: &str) -> ModelConfig {
    let mut c = preset(name);
    c.mlp.activation = model::config::Activation::Swiglu;
    (c.mlp.first_dense_layers, c.mlp.dense_width, c.mlp.shared_experts) = (1, Some(96), 2);
    c
}

#[test]
fn kv_cache_greedy_matches_full_recompute_swiglu_and_shared_experts() {
    check_matches_recompute(&swiglu("ds-moe-tiny"), &[("dense", "dense"), ("top-k:2", "dense"), ("threshold:1", "top-k:2")]);
    check_matches_recompute(&swiglu("smoe-tiny"), &[("dense", "dense")]);
}

fn micro_config() -> ModelConfig {
    let mut c = presets::load("ds-moe-tiny").unwrap().model;
    c.vocab_size = 40;
    c.d_model = 16;
    c.n_layers = 1;
    c.max_seq_len = 24;
    c.attention.head_dim = 4;
    c.mlp.expert_width = 8;
    c
}

#[test]
fn blocks_are_all_returned_after_thousands_of_sequences() {
    let config = micro_config();
    let weights = InferWeights::random(&config, DType::F32, &Device::Cpu, 1, false).unwrap();
    // 12 blocks of 4 positions: at most a few sequences run at once, so admission waits on blocks.
    let per_block = KvCache::bytes_per_position(&config, DType::F32) * 4;
    let cache = KvCache::with_budget(&config, DType::F32, &Device::Cpu, 12 * per_block + per_block / 2, 4).unwrap();
    assert_eq!(cache.pool.num_blocks(), 12);
    let mut s = Scheduler::new(&weights, cache, InferenceMode { mlp: Selection::TopK(2), attention: Selection::Dense }, SchedulerConfig { max_batch: 6, prefill_chunk: 3 }).unwrap();
    let mut rng = Rng::new(9);
    let requests: Vec<Request> = (0..3000)
        .map(|i| Request {
            prompt: (0..1 + rng.below(12)).map(|_| rng.below(40) as u32).collect(),
            max_new_tokens: 1 + rng.below(6),
            stop_tokens: vec![rng.below(40) as u32],
            stop_strings: vec![],
            sampling: SamplingParams { temperature: 1.0, top_k: Some(8), top_p: Some(0.9), seed: i },
        })
        .collect();
    let mut most_running = 0;
    let out = s.run(&requests, None, |r| most_running = most_running.max(r.running)).unwrap();
    assert_eq!(out.len(), requests.len());
    for (r, c) in requests.iter().zip(&out) {
        assert!(!c.generated.is_empty() && c.generated.len() <= r.max_new_tokens);
    }
    assert!(most_running > 1, "sequences shared steps");
    assert_eq!(s.cache.pool.free_blocks(), 12, "no block leaked");
}

#[test]
fn sampling_is_seeded_per_request_whatever_the_batch() {
    let config = micro_config();
    let weights = InferWeights::random(&config, DType::F32, &Device::Cpu, 2, false).unwrap();
    let requests: Vec<Request> = (0..5)
        .map(|i| Request { prompt: vec![i as u32 + 1, 3], max_new_tokens: 8, stop_tokens: vec![], stop_strings: vec![], sampling: SamplingParams { temperature: 0.8, top_k: Some(20), top_p: Some(0.95), seed: 77 + i } })
        .collect();
    let run = |batch: usize| {
        let cache = KvCache::with_budget(&config, DType::F32, &Device::Cpu, 1 << 20, 4).unwrap();
        let mut s = Scheduler::new(&weights, cache, InferenceMode::DENSE, SchedulerConfig { max_batch: batch, prefill_chunk: 2 }).unwrap();
        s.run(&requests, None, |_| {}).unwrap().into_iter().map(|c| c.generated).collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(5));
}

#[test]
fn stop_tokens_and_strings_end_generation() {
    let config = micro_config();
    let weights = InferWeights::random(&config, DType::F32, &Device::Cpu, 3, false).unwrap();
    let cache = KvCache::with_budget(&config, DType::F32, &Device::Cpu, 1 << 20, 4).unwrap();
    let mut s = Scheduler::new(&weights, cache, InferenceMode::DENSE, SchedulerConfig { max_batch: 2, prefill_chunk: 8 }).unwrap();
    let free = s.run(&[greedy_request(&[1, 2, 3])], None, |_| {}).unwrap().remove(0).generated;
    let first = free[0];
    // Tokens as letters, so the first generated token spells a stop string.
    let detok = |t: &[u32]| t.iter().map(|&x| char::from(b'a' + (x % 26) as u8)).collect::<String>();
    let stop_string = detok(&[first]);
    let mut by_token = greedy_request(&[1, 2, 3]);
    by_token.stop_tokens = vec![first];
    let mut by_string = greedy_request(&[1, 2, 3]);
    by_string.stop_strings = vec![stop_string];
    let out = s.run(&[by_token, by_string], Some(&detok), |_| {}).unwrap();
    assert_eq!(out[0].generated, vec![first]);
    assert_eq!(out[0].finish, model::infer::Finish::StopToken);
    assert_eq!(out[1].generated, vec![first]);
    assert_eq!(out[1].finish, model::infer::Finish::StopString);
}

#[test]
fn bad_requests_and_budgets_are_clear_errors() {
    let config = micro_config();
    let weights = InferWeights::random(&config, DType::F32, &Device::Cpu, 4, false).unwrap();
    let err = KvCache::with_budget(&config, DType::F32, &Device::Cpu, 100, 4).err().unwrap().to_string();
    assert!(err.contains("KV-cache budget") && err.contains("too small"), "{err}");
    let per_block = KvCache::bytes_per_position(&config, DType::F32) * 4;
    let run = |request: Request| {
        let cache = KvCache::with_budget(&config, DType::F32, &Device::Cpu, 3 * per_block, 4).unwrap();
        let mut s = Scheduler::new(&weights, cache, InferenceMode::DENSE, SchedulerConfig { max_batch: 2, prefill_chunk: 8 }).unwrap();
        s.run(&[greedy_request(&[1]), request], None, |_| {}).err().expect("refused").to_string()
    };
    let err = run(greedy_request(&[]));
    assert!(err.contains("#1") && err.contains("empty"), "{err}");
    let err = run(greedy_request(&[1; 24]));
    assert!(err.contains("context of 24"), "{err}");
    // 6 prompt + 10 new = 16 positions = 4 blocks; the cache has 3.
    let err = run(greedy_request(&[1; 6]));
    assert!(err.contains("4 cache blocks") && err.contains("has 3"), "{err}");
    let mut bad = greedy_request(&[1]);
    bad.sampling.top_p = Some(1.5);
    assert!(run(bad).contains("top-p"));
    let err = run(greedy_request(&[99]));
    assert!(err.contains("vocabulary"), "{err}");
}
