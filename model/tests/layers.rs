//! The model's layers on the CPU: a finite-difference gradient check of a whole tiny DS-MoE block
//! (MoA + MoE MLP + MI loss), the sparse path against the dense one, routing statistics, and the
//! sparse-MoE baseline's capacity limit, its gates renormalised after dropping and its
//! load-balancing loss's combination over layers.

use autograd::Tape;
use engine::{DType, Device, Rng, Tensor};
use model::config::{Activation, AttentionConfig, LossCombine, MlpConfig, RouterKind};
use model::{AttentionPath, Ctx, Family, InferenceMode, Model, ModelConfig, Selection};

fn micro(family: Family, router: RouterKind) -> ModelConfig {
    let moe = family == Family::DsMoe;
    ModelConfig {
        name: "micro".into(),
        family,
        description: String::new(),
        vocab_size: 11,
        d_model: 8,
        n_layers: 2,
        max_seq_len: 8,
        attention: AttentionConfig { n_experts: if moe { 2 } else { 1 }, heads_per_expert: 2, head_dim: 4, kv_heads: 2 },
        mlp: MlpConfig {
            n_experts: if family == Family::Dense { 1 } else { 4 },
            expert_width: 3,
            top_k: (family == Family::Smoe).then_some(2),
            capacity_factor: None,
            moe_every: 1,
            dense_width: None,
            first_dense_layers: 0,
            shared_experts: 0,
            activation: Activation::Gelu,
        },
        router,
        mi_alpha_att: if moe { 0.3 } else { 0.0 },
        mi_alpha_mlp: if moe { 0.5 } else { 0.0 },
        load_balance_alpha: if family == Family::Smoe { 0.1 } else { 0.0 },
        load_balance_combine: Default::default(),
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    }
}

/// `micro` with the peers' MLP: SwiGLU, a dense first layer, and a shared expert in the MoE layer.
fn micro_swiglu(family: Family) -> ModelConfig {
    let mut c = micro(family, RouterKind::Linear);
    c.mlp.activation = Activation::Swiglu;
    c.mlp.first_dense_layers = 1;
    c.mlp.dense_width = Some(5);
    c.mlp.shared_experts = 1;
    c
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Cross-entropy plus the auxiliary loss, in f64.
fn loss(model: &Model, tape: Option<&Tape>, input: &Tensor, target: &Tensor, batch: usize, seq: usize) -> autograd::Var {
    let ctx = Ctx { tape, dtype: DType::F64, attention: AttentionPath::Fused, data_group: &model::parallel::SINGLE, aux_losses: true };
    let out = model.forward(&ctx, input, batch, seq, InferenceMode::DENSE).unwrap();
    let ce = out.logits.cross_entropy(target).unwrap().mean_all().unwrap();
    match out.aux_loss {
        Some(aux) => ce.add(&aux).unwrap(),
        None => ce,
    }
}

fn gradient_check(config: ModelConfig) {
    let (batch, seq) = (2, 5);
    let dev = Device::Cpu;
    let mut model = Model::new(&config, &dev, 7).unwrap();
    // Larger weights than the default init, so every path (routers, MI terms) carries gradient.
    let mut rng = Rng::new(3);
    for p in model.params.iter_mut() {
        p.value = Tensor::randn(p.value.shape().clone(), 0.0, 0.4, DType::F32, &dev, &mut rng).unwrap();
    }
    let ids = tokens(batch * seq + 1, config.vocab_size, 5);
    let input = Tensor::from_slice(&ids[..batch * seq], [batch * seq], &dev).unwrap();
    let target = Tensor::from_slice(&ids[1..], [batch * seq], &dev).unwrap();

    let tape = Tape::new();
    let grads = tape.backward(&loss(&model, Some(&tape), &input, &target, batch, seq)).unwrap();
    let names: Vec<String> = model.params.iter().map(|p| p.name.clone()).collect();
    let mut worst = (0.0f64, String::new());
    for (i, name) in names.iter().enumerate() {
        let param = model.params.iter().nth(i).unwrap().clone();
        let analytic = grads.get(param.id()).map(|g| g.to_f64_vec().unwrap()).unwrap_or_else(|| vec![0.0; param.value.elem_count()]);
        let base = param.value.to_f32_vec().unwrap();
        let mut numeric = vec![0.0; base.len()];
        for j in 0..base.len() {
            let mut eval = |delta: f32| -> (f64, f64) {
                let mut v = base.clone();
                v[j] += delta;
                let actual = v[j] as f64;
                model.params.iter_mut().nth(i).unwrap().value = Tensor::from_slice(&v, param.value.shape().clone(), &dev).unwrap();
                (loss(&model, None, &input, &target, batch, seq).value().to_scalar().unwrap(), actual)
            };
            let ((hi, xh), (lo, xl)) = (eval(1e-3), eval(-1e-3));
            numeric[j] = (hi - lo) / (xh - xl);
        }
        model.params.iter_mut().nth(i).unwrap().value = param.value.clone();
        let err = autograd::relative_error(&analytic, &numeric);
        if err > worst.0 {
            worst = (err, name.clone());
        }
    }
    // Central differences with a step of 1e-3 carry O(step²) truncation error, and the step is small
    // enough not to flip a top-2 selection here; a wrong rule is off by O(1).
    assert!(worst.0 < 2e-3, "{:?} block: worst relative gradient error {:e} in {}", config.family, worst.0, worst.1);
}

#[test]
fn ds_moe_block_gradients_match_finite_differences() {
    gradient_check(micro(Family::DsMoe, RouterKind::Linear));
    gradient_check(micro(Family::DsMoe, RouterKind::Mlp { hidden: 5 }));
}

#[test]
fn smoe_and_dense_gradients_match_finite_differences() {
    gradient_check(micro(Family::Smoe, RouterKind::Linear));
    gradient_check(micro(Family::Dense, RouterKind::Linear));
    // With a capacity that drops pairs, the gates renormalised over the kept ones (Top2Gate).
    let mut capped = micro(Family::Smoe, RouterKind::Linear);
    capped.mlp.capacity_factor = Some(0.5);
    gradient_check(capped);
}

/// The load-balancing loss combines over the MoE layers as fairseq's
/// `--moe-gate-loss-combine-method`: the sum is the average times the number of MoE layers, and
/// the average divides by the MoE layers, not by all layers.
#[test]
fn load_balance_loss_averages_or_sums_over_the_moe_layers() {
    let aux = |moe_every: usize, combine: LossCombine| -> f64 {
        let mut cfg = micro(Family::Smoe, RouterKind::Linear);
        (cfg.mlp.moe_every, cfg.mlp.dense_width, cfg.load_balance_combine) = (moe_every, Some(5), combine);
        let model = Model::new(&cfg, &Device::Cpu, 7).unwrap();
        let input = Tensor::from_slice(&tokens(10, cfg.vocab_size, 5), [10], &Device::Cpu).unwrap();
        let ctx = Ctx { tape: None, dtype: DType::F64, attention: AttentionPath::Fused, data_group: &model::parallel::SINGLE, aux_losses: true };
        model.forward(&ctx, &input, 2, 5, InferenceMode::DENSE).unwrap().aux_loss.unwrap().value().to_scalar().unwrap()
    };
    let (avg, sum) = (aux(1, LossCombine::Average), aux(1, LossCombine::Sum));
    assert!(avg > 1e-3 && (sum - 2.0 * avg).abs() < 1e-12, "two MoE layers: average {avg}, sum {sum}");
    // One MoE layer of two (moe_every 2): average and sum agree.
    let (avg, sum) = (aux(2, LossCombine::Average), aux(2, LossCombine::Sum));
    assert!(avg > 1e-3 && (sum - avg).abs() < 1e-12, "one MoE layer: average {avg}, sum {sum}");
}

#[test]
fn swiglu_and_shared_expert_gradients_match_finite_differences() {
    gradient_check(micro_swiglu(Family::DsMoe));
    gradient_check(micro_swiglu(Family::Smoe));
    let mut dense = micro(Family::Dense, RouterKind::Linear);
    dense.mlp.activation = Activation::Swiglu;
    gradient_check(dense);
}

fn logits(model: &Model, input: &Tensor, batch: usize, seq: usize, mode: InferenceMode) -> (Vec<f64>, Vec<model::LayerStats>) {
    let out = model.forward(&Ctx::eval(DType::F64), input, batch, seq, mode).unwrap();
    (out.logits.value().to_f64_vec().unwrap(), out.layers)
}

#[test]
fn selecting_every_expert_is_the_dense_function() {
    for config in [micro(Family::DsMoe, RouterKind::Linear), micro_swiglu(Family::DsMoe)] {
        every_expert_is_dense(&config);
    }
}

fn every_expert_is_dense(config: &ModelConfig) {
    let model = Model::new(config, &Device::Cpu, 1).unwrap();
    let input = Tensor::from_slice(&tokens(12, 11, 2), [12], &Device::Cpu).unwrap();
    let (dense, _) = logits(&model, &input, 2, 6, InferenceMode::DENSE);
    let all = InferenceMode { mlp: Selection::TopK(4), attention: Selection::TopK(2) };
    let (sparse, stats) = logits(&model, &input, 2, 6, all);
    assert!(autograd::relative_error(&sparse, &dense) < 1e-12);
    let routed = |i: usize| if config.is_moe_layer(i) { 4.0 } else { 1.0 };
    assert!(stats.iter().enumerate().all(|(i, s)| s.mlp_experts_per_token == routed(i) && s.att_experts_per_token == 2.0), "{stats:?}");
    // A threshold of 0 keeps every expert too.
    let (thresh, _) = logits(&model, &input, 2, 6, InferenceMode { mlp: Selection::Threshold(0.0), attention: Selection::Dense });
    assert!(autograd::relative_error(&thresh, &dense) < 1e-12);
}

#[test]
fn sparse_modes_use_fewer_experts_and_count_them() {
    let config = micro(Family::DsMoe, RouterKind::Linear);
    let model = Model::new(&config, &Device::Cpu, 1).unwrap();
    let input = Tensor::from_slice(&tokens(16, 11, 4), [16], &Device::Cpu).unwrap();
    let (_, top1) = logits(&model, &input, 2, 8, InferenceMode { mlp: Selection::TopK(1), attention: Selection::Dense });
    assert!(top1.iter().all(|s| s.mlp_experts_per_token == 1.0));
    let (_, th) = logits(&model, &input, 2, 8, InferenceMode { mlp: Selection::Threshold(1.0), attention: Selection::Threshold(1.0) });
    for s in &th {
        assert!((1.0..=4.0).contains(&s.mlp_experts_per_token), "{s:?}");
        assert!((1.0..=2.0).contains(&s.att_experts_per_token), "{s:?}");
    }
    let counts = model.param_counts(Some(&top1));
    assert!((counts.mlp_expert_fraction() - 0.25).abs() < 1e-12, "{counts:?}");
    assert!(counts.active < counts.total as f64);
    let full = model.param_counts(None);
    assert_eq!(full.active, full.total as f64);
}

#[test]
fn capacity_factor_drops_overflow_tokens() {
    let mut config = micro(Family::Smoe, RouterKind::Linear);
    config.mlp.capacity_factor = Some(0.25);
    let model = Model::new(&config, &Device::Cpu, 1).unwrap();
    let input = Tensor::from_slice(&tokens(16, 11, 6), [16], &Device::Cpu).unwrap();
    let (_, stats) = logits(&model, &input, 2, 8, InferenceMode::DENSE);
    // Capacity 2·ceil(0.25 · 16 / 4) = 2 per expert: at most 8 of the 32 token-expert pairs run.
    for s in &stats {
        assert!(s.dropped_tokens >= 24, "{s:?}");
        assert!(s.mlp_experts_per_token <= 0.5 + 1e-12, "{s:?}");
    }
}

#[test]
fn bad_batches_are_errors() {
    let model = Model::new(&micro(Family::DsMoe, RouterKind::Linear), &Device::Cpu, 1).unwrap();
    let input = Tensor::from_slice(&tokens(10, 11, 1), [10], &Device::Cpu).unwrap();
    let ctx = Ctx::eval(DType::F32);
    assert!(model.forward(&ctx, &input, 1, 10, InferenceMode::DENSE).is_err(), "longer than max_seq_len");
    assert!(model.forward(&ctx, &input, 3, 4, InferenceMode::DENSE).is_err(), "wrong token count");
    let out_of_vocab = Tensor::from_slice(&[3u32, 99], [2], &Device::Cpu).unwrap();
    assert!(model.forward(&ctx, &out_of_vocab, 1, 2, InferenceMode::DENSE).is_err());
}

#[test]
fn a_tiny_swiglu_model_with_shared_experts_trains() {
    for base in ["ds-moe-tiny", "smoe-tiny"] {
        let mut config = model::config::presets::load(base).unwrap();
        let m = &mut config.model;
        (m.d_model, m.n_layers, m.attention.head_dim, m.mlp.expert_width) = (32, 2, 8, 16);
        (m.mlp.activation, m.mlp.first_dense_layers, m.mlp.dense_width, m.mlp.shared_experts) = (Activation::Swiglu, 1, Some(24), 2);
        (config.train.batch_size, config.train.seq_len, config.train.warmup_steps) = (4, 32, 0);
        let mut trainer = model::train::Trainer::new(config, &Device::Cpu, DType::F32).unwrap();
        let corpus = model::data::Corpus::open_default().unwrap();
        let losses: Vec<f64> = (0..6).map(|_| trainer.step(&corpus).unwrap().loss).collect();
        // From uniform over 256 bytes (5.5 nats) the first steps learn the byte frequencies.
        assert!(losses.iter().all(|l| l.is_finite()) && losses[5] < losses[0] - 0.2, "{base}: losses {losses:?}");
    }
}

/// The MI loss is summed over layers (ModuleFormer's definition), not averaged: with every block's
/// residual outputs zeroed, each layer's routers see the same normalised input, so an L-layer
/// model whose routers are copies of a one-layer model's has exactly L times its auxiliary loss.
#[test]
fn mutual_information_loss_is_summed_over_layers() {
    let dev = Device::Cpu;
    let aux_of = |n_layers: usize, source: Option<&Model>| -> (f64, Model) {
        let mut cfg = micro(Family::DsMoe, RouterKind::Linear);
        cfg.n_layers = n_layers;
        let mut model = Model::new(&cfg, &dev, 7).unwrap();
        let mut rng = Rng::new(3);
        for p in model.params.iter_mut() {
            let zero = p.name.ends_with(".wo") || p.name.ends_with(".mlp.w2");
            let std = if zero { 0.0 } else { 0.4 };
            p.value = Tensor::randn(p.value.shape().clone(), 0.0, std, DType::F32, &dev, &mut rng).unwrap();
            // Routers and norms of every layer copied from the source's layer 0.
            if let Some(src) = source {
                let layer0 = p.name.splitn(3, '.').collect::<Vec<_>>();
                if layer0.len() == 3 && layer0[0] == "layers" {
                    let name = format!("layers.0.{}", layer0[2]);
                    if let Some(s) = src.params.iter().find(|q| q.name == name) {
                        p.value = s.value.clone();
                    }
                } else if let Some(s) = src.params.iter().find(|q| q.name == p.name) {
                    p.value = s.value.clone();
                }
            }
        }
        let (batch, seq) = (2, 5);
        let ids = tokens(batch * seq, cfg.vocab_size, 5);
        let input = Tensor::from_slice(&ids, [batch * seq], &dev).unwrap();
        let ctx = Ctx { tape: None, dtype: DType::F64, attention: AttentionPath::Fused, data_group: &model::parallel::SINGLE, aux_losses: true };
        let aux = model.forward(&ctx, &input, batch, seq, InferenceMode::DENSE).unwrap().aux_loss.unwrap().value().to_scalar().unwrap();
        (aux, model)
    };
    let (one, source) = aux_of(1, None);
    let (three, _) = aux_of(3, Some(&source));
    assert!(one.abs() > 1e-3, "the one-layer MI loss {one} should be non-trivial");
    assert!((three - 3.0 * one).abs() < 1e-9 * one.abs().max(1.0), "three layers: {three}, one layer: {one}; summed over layers means 3x");
}

/// Threshold-K's K per layer is the threshold rule's mean expert count over the evaluated set, so
/// evaluating the same windows one at a time or all together gives the same K and the same loss;
/// rounding up and to nearest differ as their names say; and a forward given threshold-K
/// unresolved is an error rather than a batch-dependent K.
#[test]
fn threshold_k_is_independent_of_batching() {
    use model::eval::{evaluate, resolve_threshold_k, KRounding};
    let config = micro(Family::DsMoe, RouterKind::Linear);
    let mut model = Model::new(&config, &Device::Cpu, 1).unwrap();
    let mut rng = Rng::new(8);
    for p in model.params.iter_mut().filter(|p| p.name.contains("router")) {
        p.value = Tensor::randn(p.value.shape().clone(), 0.0, 1.0, DType::F32, &Device::Cpu, &mut rng).unwrap();
    }
    let windows: Vec<(Vec<u32>, Vec<u32>)> = (0..5).map(|i| (tokens(8, 11, 10 + i), tokens(8, 11, 20 + i))).collect();
    let mode = InferenceMode { mlp: Selection::ThresholdK(1.0), attention: Selection::ThresholdK(1.0) };
    let one = evaluate(&model, &windows, 1, mode, DType::F64, None).unwrap();
    let all = evaluate(&model, &windows, 5, mode, DType::F64, None).unwrap();
    // The same K per layer; the loss alike up to the f32 sum of per-token losses `evaluate` does.
    for (a, b) in one.layers.iter().zip(&all.layers) {
        assert_eq!((a.mlp_experts_per_token, a.att_experts_per_token), (b.mlp_experts_per_token, b.att_experts_per_token));
    }
    assert!((one.loss - all.loss).abs() < 1e-6, "batch 1: {}, batch 5: {}", one.loss, all.loss);
    let threshold = InferenceMode { mlp: Selection::Threshold(1.0), attention: Selection::Threshold(1.0) };
    let means = evaluate(&model, &windows, 2, threshold, DType::F64, None).unwrap().layers;
    for rounding in [KRounding::Up, KRounding::Nearest] {
        let modes = resolve_threshold_k(&model, &windows, 3, mode, DType::F64, rounding).unwrap();
        for (m, l) in modes.iter().zip(&means) {
            let want = |mean: f64| if rounding == KRounding::Up { mean.ceil() } else { mean.round() }.max(1.0) as usize;
            assert_eq!(m.mlp, Selection::TopK(want(l.mlp_experts_per_token)), "{rounding:?} {l:?}");
            assert_eq!(m.attention, Selection::TopK(want(l.att_experts_per_token)), "{rounding:?} {l:?}");
        }
    }
    for (l, r) in one.layers.iter().zip(&means) {
        assert_eq!(l.mlp_experts_per_token, r.mlp_experts_per_token.ceil(), "threshold-K runs K = ceil(mean) experts per token");
    }
    let input = Tensor::from_slice(&tokens(8, 11, 3), [8], &Device::Cpu).unwrap();
    let err = model.forward(&Ctx::eval(DType::F64), &input, 1, 8, mode).err().expect("unresolved threshold-k is refused").to_string();
    assert!(err.contains("resolve"), "{err}");
}
