//! The model's layers on the CPU: a finite-difference gradient check of a whole tiny DS-MoE block
//! (MoA + MoE MLP + MI loss), the sparse path against the dense one, routing statistics, and the
//! sparse-MoE baseline's capacity limit.

use autograd::Tape;
use engine::{DType, Device, Rng, Tensor};
use model::config::{AttentionConfig, MlpConfig, RouterKind};
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
        },
        router,
        mi_alpha_att: if moe { 0.3 } else { 0.0 },
        mi_alpha_mlp: if moe { 0.5 } else { 0.0 },
        load_balance_alpha: if family == Family::Smoe { 0.1 } else { 0.0 },
        rope_theta: 10_000.0,
        norm_eps: 1e-5,
        tie_embeddings: true,
    }
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab) as u32).collect()
}

/// Cross-entropy plus the auxiliary loss, in f64.
fn loss(model: &Model, tape: Option<&Tape>, input: &Tensor, target: &Tensor, batch: usize, seq: usize) -> autograd::Var {
    let ctx = Ctx { tape, dtype: DType::F64, attention: AttentionPath::Fused, data_group: &model::parallel::SINGLE };
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
}

fn logits(model: &Model, input: &Tensor, batch: usize, seq: usize, mode: InferenceMode) -> (Vec<f64>, Vec<model::LayerStats>) {
    let out = model.forward(&Ctx::eval(DType::F64), input, batch, seq, mode).unwrap();
    (out.logits.value().to_f64_vec().unwrap(), out.layers)
}

#[test]
fn selecting_every_expert_is_the_dense_function() {
    let config = micro(Family::DsMoe, RouterKind::Linear);
    let model = Model::new(&config, &Device::Cpu, 1).unwrap();
    let input = Tensor::from_slice(&tokens(12, 11, 2), [12], &Device::Cpu).unwrap();
    let (dense, _) = logits(&model, &input, 2, 6, InferenceMode::DENSE);
    let all = InferenceMode { mlp: Selection::TopK(4), attention: Selection::TopK(2) };
    let (sparse, stats) = logits(&model, &input, 2, 6, all);
    assert!(autograd::relative_error(&sparse, &dense) < 1e-12);
    assert!(stats.iter().all(|s| s.mlp_experts_per_token == 4.0 && s.att_experts_per_token == 2.0));
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
    // Capacity ceil(0.25 · 16 · 2 / 4) = 2 per expert: at most 8 of the 32 token-expert pairs run.
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
