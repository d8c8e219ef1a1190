//! The tensor-core GEMM (engine::ops::gemm: gemm_sm90 on H100 / H200, gemm_sm80 on A100) against
//! cuBLAS in the same run, bf16 in and out, f32 accumulation.
//!
//! Cases:
//! - square 4096³ and 8192³ in each form (NN, NT, TN);
//! - the DS-MoE expert GEMMs at T = 16,384 tokens (paper-notes.md, Table 1: d = 2048 / 3072 / 4096,
//!   E·f = 32 x 256 / 384 / 512 = h). With W1 stored [h, d] and W2 [h, d], the up projection
//!   forward x·W1ᵀ and the down projection's dG = dY·W2ᵀ are NT (T x h x d); the down forward g·W2
//!   and the up projection's dX = dU·W1 are NN (T x d x h); both weight gradients (dUᵀ·x, gᵀ·dY)
//!   are TN (h x d x T). So three GEMMs cover forward and both backward products of both layers.
//!
//! Each case: criterion times ours and cuBLAS with CUDA events (`iter_custom`), then the median of
//! 10 event-timed calls of each goes to the results file as TFLOP/s and as the fraction of the
//! device's measured ceiling (cuBLAS bf16 8192³, measured once per run). Without a GPU or cuBLAS it
//! prints one `skipped:` line.

mod support;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::ops::{self, GemmEpilogue};
use engine::{DType, Device, GemmForm, Rng, Tensor};
use support::Blas;

struct Case {
    name: String,
    form: GemmForm,
    m: usize,
    n: usize,
    k: usize,
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for s in [4096, 8192] {
        for form in [GemmForm::NN, GemmForm::NT, GemmForm::TN] {
            out.push(Case { name: format!("square {s}^3 {form:?}"), form, m: s, n: s, k: s });
        }
    }
    const T: usize = 16384;
    for (model, d, f) in [("1b", 2048, 256), ("3b", 3072, 384), ("6b", 4096, 512)] {
        let h = 32 * f;
        out.push(Case { name: format!("ds-moe-{model} x·W1ᵀ, dY·W2ᵀ (NT {T}x{h}x{d})"), form: GemmForm::NT, m: T, n: h, k: d });
        out.push(Case { name: format!("ds-moe-{model} g·W2, dU·W1 (NN {T}x{d}x{h})"), form: GemmForm::NN, m: T, n: d, k: h });
        out.push(Case { name: format!("ds-moe-{model} weight grads (TN {h}x{d}x{T})"), form: GemmForm::TN, m: h, n: d, k: T });
    }
    out
}

fn operands(c: &Case, dev: &Device, rng: &mut Rng) -> (Tensor, Tensor, Tensor) {
    let a = if c.form == GemmForm::TN { [c.k, c.m] } else { [c.m, c.k] };
    let b = if c.form == GemmForm::NT { [c.n, c.k] } else { [c.k, c.n] };
    let out = Tensor::zeros([c.m, c.n], DType::BF16, dev).expect("zeros");
    (support::randn(&a, DType::BF16, dev, rng), support::randn(&b, DType::BF16, dev, rng), out)
}

fn bench(cr: &mut Criterion) {
    let Some(dev) = support::gpu() else { return };
    let Some(blas) = Blas::new() else { return };
    let ceiling = support::ceiling(&blas, &dev);
    let mut rng = Rng::new(0x6e);
    let mut group = cr.benchmark_group("gemm");
    group.sample_size(10);
    for c in cases() {
        let (a, b, out) = operands(&c, &dev, &mut rng);
        let flops = 2.0 * (c.m * c.n * c.k) as f64;
        let mut ours = || drop(ops::gemm(&a, &b, c.form, &GemmEpilogue::default()).expect("gemm"));
        let (ta, tb) = (c.form == GemmForm::TN, c.form == GemmForm::NT);
        let (pa, pb, pc) = (support::addr(&a, 0), support::addr(&b, 0), support::addr(&out, 0));
        let mut cublas = || blas.gemm(pa, pb, pc, c.m, c.n, c.k, ta, tb, 0.0);
        group.bench_function(format!("{}/ours", c.name), |bch| bch.iter_custom(|iters| support::timed(iters, &mut ours)));
        group.bench_function(format!("{}/cublas", c.name), |bch| bch.iter_custom(|iters| support::timed(iters, &mut cublas)));
        let (ours_tf, cublas_tf) = (support::tflops(flops, support::median_ms(10, &mut ours)), support::tflops(flops, support::median_ms(10, &mut cublas)));
        println!(
            "{:<48} ours {ours_tf:7.1} TFLOP/s ({:4.2} of peak), cuBLAS {cublas_tf:7.1} ({:4.2}), ours/cuBLAS {:4.2}",
            c.name,
            ours_tf / ceiling.bf16_tflops,
            cublas_tf / ceiling.bf16_tflops,
            ours_tf / cublas_tf
        );
        support::record("gemm", &c.name, "TFLOP/s", ours_tf, "cuBLAS", cublas_tf);
        support::record("gemm", &c.name, "fraction of peak", ours_tf / ceiling.bf16_tflops, "cuBLAS", cublas_tf / ceiling.bf16_tflops);
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
