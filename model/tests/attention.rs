//! The model's attention through the fused op against the composite path it replaced (scores,
//! `[T, T]` mask, softmax): the tiny DS-MoE's loss (MoA with router gating, GQA) and its gradients
//! agree, in training and evaluation, dense and with a sparse attention selection; and the
//! activations a training step saves grow linearly with the sequence length (no `[T, T]` tensor).

use autograd::Tape;
use engine::{DType, Device, Rng, Tensor};
use model::config::presets;
use model::{AttentionPath, Ctx, InferenceMode, Model, ModelConfig, Selection};

fn batch(rng: &mut Rng, n: usize, vocab: usize, device: &Device) -> (Tensor, Tensor) {
    let tokens: Vec<u32> = (0..n + 1).map(|_| rng.below(vocab) as u32).collect();
    (Tensor::from_slice(&tokens[..n], [n], device).unwrap(), Tensor::from_slice(&tokens[1..], [n], device).unwrap())
}

/// Loss (cross-entropy plus the auxiliary losses), the gradient of every parameter (training
/// only) and the bytes the tape saved for the backward.
fn run(model: &Model, path: AttentionPath, mode: InferenceMode, train: bool, (b, t): (usize, usize), data: &(Tensor, Tensor)) -> (f64, Vec<Vec<f64>>, usize) {
    let tape = Tape::new();
    let mut ctx = if train { Ctx::train(&tape, DType::F32) } else { Ctx::eval(DType::F32) };
    ctx.attention = path;
    let out = model.forward(&ctx, &data.0, b, t, mode).unwrap();
    let mut loss = out.logits.cross_entropy(&data.1).unwrap().mean_all().unwrap();
    if let Some(aux) = &out.aux_loss {
        loss = loss.add(aux).unwrap();
    }
    let saved = tape.saved_bytes();
    let value = loss.value().to_scalar().unwrap();
    if !train {
        return (value, Vec::new(), saved);
    }
    let grads = tape.backward(&loss).unwrap();
    let per_param = model.params.iter().map(|p| grads.get(p.id()).map(|g| g.to_f64_vec().unwrap()).unwrap_or_default()).collect();
    (value, per_param, saved)
}

fn tiny() -> ModelConfig {
    presets::load("ds-moe-tiny").unwrap().model
}

#[test]
fn fused_attention_leaves_the_tiny_models_loss_unchanged() {
    let config = tiny();
    let model = Model::new(&config, &Device::Cpu, 5).unwrap();
    let shape = (4, config.max_seq_len);
    let data = batch(&mut Rng::new(6), shape.0 * shape.1, config.vocab_size, &Device::Cpu);
    let sparse_attention = InferenceMode { attention: Selection::TopK(2), ..InferenceMode::DENSE };
    for (mode, train) in [(InferenceMode::DENSE, true), (InferenceMode::DENSE, false), (sparse_attention, false)] {
        let (fused, fused_grads, _) = run(&model, AttentionPath::Fused, mode, train, shape, &data);
        let (composite, composite_grads, _) = run(&model, AttentionPath::Composite, mode, train, shape, &data);
        let rel = (fused - composite).abs() / composite.abs();
        assert!(rel < 1e-5, "train={train}: loss {fused} fused vs {composite} composite (relative {rel:e})");
        for (p, (a, b)) in model.params.iter().zip(fused_grads.iter().zip(&composite_grads)) {
            let err = engine::relative_error(a, b);
            assert!(err < 1e-4, "gradient of {}: relative error {err:e}", p.name);
        }
    }
}

#[test]
fn training_activations_grow_linearly_with_sequence_length() {
    let mut config = tiny();
    config.max_seq_len = 2048;
    let model = Model::new(&config, &Device::Cpu, 5).unwrap();
    let mut rng = Rng::new(7);
    let mut saved = |path: AttentionPath, t: usize| {
        let data = batch(&mut rng, t, config.vocab_size, &Device::Cpu);
        let bytes = run(&model, path, InferenceMode::DENSE, true, (1, t), &data).2;
        println!("saved for backward, {path:?} attention, one sequence of T = {t}: {bytes} B ({:.1} KiB per token)", bytes as f64 / 1024.0 / t as f64);
        bytes
    };
    let fused: Vec<usize> = [512, 1024, 2048].into_iter().map(|t| saved(AttentionPath::Fused, t)).collect();
    let composite: Vec<usize> = [512, 1024].into_iter().map(|t| saved(AttentionPath::Composite, t)).collect();
    // Exactly linear doubles with T; the composite path's [B·H, T, T] tensors push it towards x4.
    for w in fused.windows(2) {
        assert!((w[1] as f64 / w[0] as f64) < 2.01, "fused attention: saved bytes {fused:?} at T = 512, 1024, 2048");
    }
    assert!(composite[1] as f64 / composite[0] as f64 > 2.5, "the counter should see the composite path's [T, T] tensors: {composite:?}");
}
