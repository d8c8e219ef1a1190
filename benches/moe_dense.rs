//! The dense-training MoE MLP on CUDA, bf16, at the DS-MoE-1B / 3B / 6B expert shapes (d = 2048 /
//! 3072 / 4096, 32 experts of width 256 / 384 / 512) with T = 16384 tokens, forward and
//! forward + backward. Each case runs, in the same process and on the same inputs:
//! - ours: `engine::ops::moe_dense_mlp` (+ `moe_dense_mlp_backward`), gating and GeLU fused into
//!   the epilogues of the two products of width E·f;
//! - `cublas_unfused`: the sequence the autograd tape would run, with cuBLAS for every product and
//!   the engine's element-wise kernels in between (gelu, ·p, and for backward ·p, dG·gelu(u) summed
//!   per expert, gelu');
//! - `cublas_expert_loop`: the same per expert, E products of width f each way.
//!
//! GPU time comes from CUDA events on the engine's stream around `iters` back-to-back runs
//! (criterion's `iter_custom`, benches/support). Each case also takes the median of a few event-timed
//! runs for the record: TFLOP/s (forward 4·T·h·d, forward + backward 12·T·h·d FLOPs, h = E·f)
//! against each baseline, and the fraction of the device's measured bf16 ceiling (cuBLAS 8192³ in
//! the same run), appended to the results file. Without a GPU (or libcublas) it prints one
//! `skipped:` line.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::backend::BinaryOp;
use engine::{ops, DType, Device, Rng, Tensor};
use support::{addr, Blas};

const TOKENS: usize = 16384;
const EXPERTS: usize = 32;
/// (name, d, expert width)
const SHAPES: [(&str, usize, usize); 3] = [("ds-moe-1b", 2048, 256), ("ds-moe-3b", 3072, 384), ("ds-moe-6b", 4096, 512)];

// ---- the three implementations -------------------------------------------------------------------

struct Problem {
    d: usize,
    f: usize,
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    p: Tensor,
    dy: Tensor,
    /// p[:, e] as [T, 1] columns, for the per-expert loop.
    p_cols: Vec<Tensor>,
}

impl Problem {
    fn new(dev: &Device, d: usize, f: usize, rng: &mut Rng) -> Problem {
        let h = EXPERTS * f;
        let randn = |rng: &mut Rng, dims: [usize; 2], std: f64| Tensor::randn(dims.to_vec(), 0.0, std, DType::BF16, dev, rng).unwrap();
        let logits = Tensor::randn(vec![TOKENS, EXPERTS], 0.0, 1.0, DType::F32, dev, rng).unwrap();
        let p = ops::cast(&ops::softmax(&logits).unwrap(), DType::BF16).unwrap();
        let p_cols = (0..EXPERTS).map(|e| ops::narrow(&p, 1, e, 1).unwrap()).collect();
        let (x, dy) = (randn(rng, [TOKENS, d], 1.0), randn(rng, [TOKENS, d], 1.0));
        let (w1, w2) = (randn(rng, [h, d], (d as f64).powf(-0.5)), randn(rng, [h, d], (h as f64).powf(-0.5)));
        Problem { d, f, x, w1, w2, p, dy, p_cols }
    }

    fn h(&self) -> usize {
        EXPERTS * self.f
    }

    fn zeros(&self, rows: usize, cols: usize) -> Tensor {
        Tensor::zeros([rows, cols], DType::BF16, &self.x.device()).unwrap()
    }

    fn ours(&self, backward: bool) {
        let out = ops::moe_dense_mlp(&self.x, &self.w1, &self.w2, &self.p).unwrap();
        if backward {
            ops::moe_dense_mlp_backward(&self.dy, &self.x, &self.w1, &self.w2, &self.p, &out.saved).unwrap();
        }
    }

    /// cuBLAS for the products, the engine's element-wise kernels between them. `buf` holds the
    /// product outputs: u, y, dG, dW2, dW1, dx.
    fn unfused(&self, blas: &Blas, buf: &[Tensor; 6], backward: bool) {
        let (t, d, h) = (TOKENS, self.d, self.h());
        let [u, y, dg, dw2, dw1, dx] = buf;
        blas.gemm(addr(&self.x, 0), addr(&self.w1, 0), addr(u, 0), t, h, d, false, true, 0.0);
        let a = ops::gelu(u).unwrap();
        let p3 = self.p.reshape([t, EXPERTS, 1]).unwrap();
        let g = ops::mul(&a.reshape([t, EXPERTS, self.f]).unwrap(), &p3).unwrap();
        blas.gemm(addr(&g, 0), addr(&self.w2, 0), addr(y, 0), t, d, h, false, false, 0.0);
        if !backward {
            return;
        }
        blas.gemm(addr(&self.dy, 0), addr(&self.w2, 0), addr(dg, 0), t, h, d, false, true, 0.0);
        blas.gemm(addr(&g, 0), addr(&self.dy, 0), addr(dw2, 0), h, d, t, true, false, 0.0);
        let dg3 = dg.reshape([t, EXPERTS, self.f]).unwrap();
        let dh = ops::mul(&dg3, &p3).unwrap();
        let _dp = ops::sum(&ops::mul(&dg3, &a.reshape([t, EXPERTS, self.f]).unwrap()).unwrap(), -1, false).unwrap();
        let du = ops::binary(u, &dh.reshape([t, h]).unwrap(), BinaryOp::GeluGrad).unwrap();
        blas.gemm(addr(&du, 0), addr(&self.x, 0), addr(dw1, 0), h, d, t, true, false, 0.0);
        blas.gemm(addr(&du, 0), addr(&self.w1, 0), addr(dx, 0), t, d, h, false, false, 0.0);
    }

    /// E products of width f each way. `buf` holds y, dx, dW1, dW2 and, per expert, u_e and dG_e.
    fn expert_loop(&self, blas: &Blas, buf: &LoopBuffers, backward: bool) {
        let (t, d, f) = (TOKENS, self.d, self.f);
        let mut saved = Vec::with_capacity(EXPERTS);
        for e in 0..EXPERTS {
            let (w_off, u) = (e * f * d, &buf.u[e]);
            blas.gemm(addr(&self.x, 0), addr(&self.w1, w_off), addr(u, 0), t, f, d, false, true, 0.0);
            let a = ops::gelu(u).unwrap();
            let g = ops::mul(&a, &self.p_cols[e]).unwrap();
            blas.gemm(addr(&g, 0), addr(&self.w2, w_off), addr(&buf.y, 0), t, d, f, false, false, if e == 0 { 0.0 } else { 1.0 });
            if backward {
                saved.push((a, g));
            }
        }
        for (e, (a, g)) in saved.iter().enumerate() {
            let (w_off, u, dg) = (e * f * d, &buf.u[e], &buf.dg[e]);
            blas.gemm(addr(&self.dy, 0), addr(&self.w2, w_off), addr(dg, 0), t, f, d, false, true, 0.0);
            blas.gemm(addr(g, 0), addr(&self.dy, 0), addr(&buf.dw2, w_off), f, d, t, true, false, 0.0);
            let _dp = ops::sum(&ops::mul(dg, a).unwrap(), -1, false).unwrap();
            let du = ops::binary(u, &ops::mul(dg, &self.p_cols[e]).unwrap(), BinaryOp::GeluGrad).unwrap();
            blas.gemm(addr(&du, 0), addr(&self.x, 0), addr(&buf.dw1, w_off), f, d, t, true, false, 0.0);
            blas.gemm(addr(&du, 0), addr(&self.w1, w_off), addr(&buf.dx, 0), t, d, f, false, false, if e == 0 { 0.0 } else { 1.0 });
        }
    }
}

struct LoopBuffers {
    y: Tensor,
    dx: Tensor,
    dw1: Tensor,
    dw2: Tensor,
    u: Vec<Tensor>,
    dg: Vec<Tensor>,
}

// ---- the bench ----------------------------------------------------------------------------------------

fn moe_dense(c: &mut Criterion) {
    let Some(dev) = support::gpu() else { return };
    let mut rng = Rng::new(0x6d6f_6564);
    // A first transfer makes the device's context current on this thread before cuBLAS starts.
    Tensor::zeros([1], DType::BF16, &dev).unwrap();
    let Some(blas) = Blas::new() else { return };
    let peak = support::ceiling(&blas, &dev).bf16_tflops;
    let mut group = c.benchmark_group("moe_dense");
    group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for (name, d, f) in SHAPES {
        let prob = Problem::new(&dev, d, f, &mut rng);
        let (h, t) = (prob.h(), TOKENS);
        let unfused_buf = [prob.zeros(t, h), prob.zeros(t, d), prob.zeros(t, h), prob.zeros(h, d), prob.zeros(h, d), prob.zeros(t, d)];
        let loop_buf = LoopBuffers {
            y: prob.zeros(t, d),
            dx: prob.zeros(t, d),
            dw1: prob.zeros(h, d),
            dw2: prob.zeros(h, d),
            u: (0..EXPERTS).map(|_| prob.zeros(t, f)).collect(),
            dg: (0..EXPERTS).map(|_| prob.zeros(t, f)).collect(),
        };
        for backward in [false, true] {
            let case = format!("{name} T={t} {}", if backward { "fwd+bwd" } else { "fwd" });
            let flops = (if backward { 12 } else { 4 } * t * h * d) as f64;
            let mut variants: [(&str, Box<dyn FnMut() + '_>); 3] = [
                ("ours", Box::new(|| prob.ours(backward))),
                ("cublas_unfused", Box::new(|| prob.unfused(&blas, &unfused_buf, backward))),
                ("cublas_expert_loop", Box::new(|| prob.expert_loop(&blas, &loop_buf, backward))),
            ];
            let mut rates = Vec::new();
            for (variant, run) in variants.iter_mut() {
                group.bench_function(format!("{case} {variant}"), |b| b.iter_custom(|iters| support::timed(iters, run)));
                let rate = support::tflops(flops, support::median_ms(5, run));
                println!("{case} {variant}: {rate:.1} TFLOP/s, {:.1}% of the measured ceiling", 100.0 * rate / peak);
                rates.push((*variant, rate));
            }
            for &(baseline, rate) in &rates[1..] {
                support::record("moe_dense", &case, "TFLOP/s", rates[0].1, baseline, rate);
            }
            support::record("moe_dense", &case, "fraction of measured peak", rates[0].1 / peak, "cublas_bf16_8192_ceiling", 1.0);
        }
    }
    group.finish();
}

criterion_group!(benches, moe_dense);
criterion_main!(benches);
