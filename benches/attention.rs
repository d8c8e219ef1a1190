//! Causal attention at the DS-MoE-1B / 3B / 6B head shapes (query heads, key/value heads, head dim:
//! 32/2/64, 32/4/96, 32/4/128), one sequence of T = 2,048, forward and forward + backward, the
//! fused op (`Var::causal_attention`) against the composite path the model used before (scores,
//! `[T, T]` mask, softmax, weighted values, keys and values repeated per query head), both through
//! `model::causal_heads` on the same inputs in the same run.
//!
//! CPU: f32, wall time by criterion. GPU (when there is one): bf16, GPU time from CUDA events
//! (benches/support), T = 2,048 and 8,192; without a GPU the GPU group prints one `skipped:` line.
//! A cuBLAS-only unfused baseline is not part of this bench yet.

mod support;

use std::time::Duration;

use autograd::{Tape, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engine::{DType, Device, Rng, Tensor};
use model::{causal_heads, AttentionPath};

/// (name, query heads, key/value heads, head dim)
const SHAPES: [(&str, usize, usize, usize); 3] = [("ds-moe-1b", 32, 2, 64), ("ds-moe-3b", 32, 4, 96), ("ds-moe-6b", 32, 4, 128)];

struct Problem {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d_out: Tensor,
}

impl Problem {
    fn new(dev: &Device, dtype: DType, t: usize, (hq, hkv, d): (usize, usize, usize), rng: &mut Rng) -> Problem {
        let randn = |rng: &mut Rng, h: usize| Tensor::randn(vec![1, t, h, d], 0.0, 1.0, dtype, dev, rng).unwrap();
        Problem { q: randn(rng, hq), k: randn(rng, hkv), v: randn(rng, hkv), d_out: randn(rng, hq) }
    }

    fn forward(&self, path: AttentionPath) -> Tensor {
        let (q, k, v) = (Var::constant(self.q.clone()), Var::constant(self.k.clone()), Var::constant(self.v.clone()));
        causal_heads(&q, &k, &v, path).unwrap().value().clone()
    }

    /// Forward and backward of `Σ out ⊙ d_out`, returning dq.
    fn forward_backward(&self, path: AttentionPath) -> Tensor {
        let tape = Tape::new();
        let ((q, qi), (k, _), (v, _)) = (tape.watch(self.q.clone()), tape.watch(self.k.clone()), tape.watch(self.v.clone()));
        let out = causal_heads(&q, &k, &v, path).unwrap();
        let loss = out.mul(&Var::constant(self.d_out.clone())).unwrap().sum_all().unwrap();
        tape.backward(&loss).unwrap().get(qi).unwrap().clone()
    }
}

const PATHS: [(&str, AttentionPath); 2] = [("fused", AttentionPath::Fused), ("composite", AttentionPath::Composite)];

fn cpu(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let mut group = c.benchmark_group("attention_cpu_t2048");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(10));
    for (name, hq, hkv, d) in SHAPES {
        let p = Problem::new(&Device::Cpu, DType::F32, 2048, (hq, hkv, d), &mut rng);
        for (label, path) in PATHS {
            group.bench_function(BenchmarkId::new(format!("forward/{label}"), name), |b| b.iter(|| p.forward(path)));
            group.bench_function(BenchmarkId::new(format!("forward_backward/{label}"), name), |b| b.iter(|| p.forward_backward(path)));
        }
    }
    group.finish();
}

fn gpu(c: &mut Criterion) {
    let Some(dev) = support::gpu() else { return };
    let mut rng = Rng::new(2);
    let mut group = c.benchmark_group("attention_gpu_bf16");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for t in [2048, 8192] {
        for (name, hq, hkv, d) in SHAPES {
            let p = Problem::new(&dev, DType::BF16, t, (hq, hkv, d), &mut rng);
            for (label, path) in PATHS {
                let id = |what: &str| BenchmarkId::new(format!("{what}/{label}/t{t}"), name);
                group.bench_function(id("forward"), |b| b.iter_custom(|iters| support::timed(iters, &mut || drop(p.forward(path)))));
                group.bench_function(id("forward_backward"), |b| b.iter_custom(|iters| support::timed(iters, &mut || drop(p.forward_backward(path)))));
            }
        }
    }
    group.finish();
}

criterion_group!(benches, cpu, gpu);
criterion_main!(benches);
