//! Causal attention at the DS-MoE-1B / 3B / 6B head shapes (query heads, key/value heads, head dim:
//! 32/2/64, 32/4/96, 32/4/128), and decode attention over the paged KV cache.
//!
//! Prefill, one sequence of T tokens, forward and forward + backward, three paths in the same run
//! (four on Hopper):
//! - `fused`: the fused op (`Var::causal_attention`; on the GPU the tensor-core flash kernels: on
//!   compute capability 9.0 the wgmma + TMA forward and dK / dV, attention_sm90.cu and
//!   attention_bwd_sm90.cu, with dQ on mma.sync);
//! - `fused_sm80` (compute capability 9.0 only): the same op forced onto the mma.sync kernels
//!   (`DSMOE_ATTENTION_PATH=sm80`), so the Hopper kernels are measured against them;
//! - `composite`: the path the model used before (scores, `[T, T]` mask, softmax, weighted values,
//!   keys and values repeated per query head), through `model::causal_heads` on the same inputs;
//! - `cublas` (GPU only): the unfused sequence a cuBLAS user writes, per key/value head: one GEMM
//!   for the scores of all G query heads that share it (`[G·T, d]·[T, d]ᵀ`, queries pre-scaled),
//!   the engine's mask add and softmax, one GEMM for `P·V`; the backward keeps P from the forward
//!   and runs dP = dO·Vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)) by engine ops, then dQ = dS·K,
//!   dK = dSᵀ·Q and dV = Pᵀ·dO as three more GEMMs. Inputs are `[H, T, d]`, the layout that makes
//!   every product one contiguous GEMM.
//!
//! CPU: f32 at T = 2,048, wall time by criterion. GPU: bf16 at T = 2,048 and 8,192, GPU time from
//! CUDA events (benches/support); each case also prints and records (support::record) TFLOP/s and
//! the fraction of the device's measured bf16 ceiling (cuBLAS 8192³, measured in the same run).
//! FLOPs count the useful causal work for every path: forward 4·T²·d·Hq / 2 (two products over
//! the lower triangle), backward 2.5 times that (five products), as FlashAttention reports them.
//!
//! Decode (GPU only): `engine::ops::paged_attention` at batch 1, 16 and 64, every sequence at
//! context 1k to 32k, 16-position blocks scattered through the pool by a random block table. The
//! kernel is memory bound, so the figure of merit is the KV bytes it must read (each cached key
//! and value once) per second, as a fraction of the device's copy bandwidth measured in the same
//! run (a 1 GiB device-to-device copy, bytes read plus written).
//!
//! Without a GPU (or, for the GPU groups, without cuBLAS) each GPU group prints one `skipped:` line.

mod support;

use std::time::Duration;

use autograd::{Tape, Var};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use engine::{ops, DType, Device, Rng, Tensor};
use model::{causal_heads, AttentionPath};
use support::Blas;

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

/// The cuBLAS-based unfused attention of one sequence (module docs): `[H, T, d]` bf16 operands,
/// per key/value head j the G query heads `j·G ..` form one `[G·T, d]` matrix.
struct Unfused {
    t: usize,
    group: usize,
    kv_heads: usize,
    d: usize,
    /// Queries already multiplied by the softmax scale.
    q: Tensor,
    k: Tensor,
    v: Tensor,
    d_out: Tensor,
    /// `[T, T]`: 0 on and below the diagonal, −∞ above.
    mask: Tensor,
    /// Reused per key/value head: the scores, then dP, `[G·T, T]`.
    scores: Tensor,
    out: Tensor,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
}

impl Unfused {
    fn new(dev: &Device, t: usize, (hq, hkv, d): (usize, usize, usize), rng: &mut Rng) -> Unfused {
        let randn = |rng: &mut Rng, h: usize| support::randn(&[h, t, d], DType::BF16, dev, rng);
        let mask: Vec<f64> = (0..t * t).map(|e| if e % t > e / t { f64::NEG_INFINITY } else { 0.0 }).collect();
        let zeros = |dims: &[usize]| Tensor::zeros(dims.to_vec(), DType::BF16, dev).unwrap();
        Unfused {
            t,
            group: hq / hkv,
            kv_heads: hkv,
            d,
            q: ops::mul_scalar(&randn(rng, hq), 1.0 / (d as f64).sqrt()).unwrap(),
            k: randn(rng, hkv),
            v: randn(rng, hkv),
            d_out: randn(rng, hq),
            mask: Tensor::from_f64s(&mask, [t, t], DType::BF16, dev).unwrap(),
            scores: zeros(&[hq / hkv * t, t]),
            out: zeros(&[hq, t, d]),
            dq: zeros(&[hq, t, d]),
            dk: zeros(&[hkv, t, d]),
            dv: zeros(&[hkv, t, d]),
        }
    }

    /// Element offsets of key/value head j's query rows and key/value rows.
    fn offsets(&self, j: usize) -> (usize, usize) {
        (j * self.group * self.t * self.d, j * self.t * self.d)
    }

    /// The forward; returns P `[G, T, T]` per key/value head (the backward's input).
    fn forward(&self, blas: &Blas) -> Vec<Tensor> {
        let (gt, t, d, s) = (self.group * self.t, self.t, self.d, support::addr(&self.scores, 0));
        (0..self.kv_heads)
            .map(|j| {
                let (qo, ko) = self.offsets(j);
                blas.gemm(support::addr(&self.q, qo), support::addr(&self.k, ko), s, gt, t, d, false, true, 0.0);
                let masked = ops::add(&self.scores.reshape([self.group, t, t]).unwrap(), &self.mask).unwrap();
                let p = ops::softmax(&masked).unwrap();
                blas.gemm(support::addr(&p, 0), support::addr(&self.v, ko), support::addr(&self.out, qo), gt, d, t, false, false, 0.0);
                p
            })
            .collect()
    }

    fn forward_backward(&self, blas: &Blas) {
        let probs = self.forward(blas);
        let (gt, t, d, dp_addr) = (self.group * self.t, self.t, self.d, support::addr(&self.scores, 0));
        for (j, p) in probs.iter().enumerate() {
            let (qo, ko) = self.offsets(j);
            blas.gemm(support::addr(&self.d_out, qo), support::addr(&self.v, ko), dp_addr, gt, t, d, false, true, 0.0);
            let dp = self.scores.reshape([self.group, t, t]).unwrap();
            let row_dot = ops::sum(&ops::mul(&dp, p).unwrap(), -1, true).unwrap();
            let ds = ops::mul(p, &ops::sub(&dp, &row_dot).unwrap()).unwrap();
            let ds_addr = support::addr(&ds, 0);
            blas.gemm(ds_addr, support::addr(&self.k, ko), support::addr(&self.dq, qo), gt, d, t, false, false, 0.0);
            blas.gemm(ds_addr, support::addr(&self.q, qo), support::addr(&self.dk, ko), t, d, gt, true, false, 0.0);
            blas.gemm(support::addr(p, 0), support::addr(&self.d_out, qo), support::addr(&self.dv, ko), t, d, gt, true, false, 0.0);
        }
    }
}

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
    let Some(blas) = Blas::new() else { return };
    let peak = support::ceiling(&blas, &dev).bf16_tflops;
    let hopper = support::facts().compute_capability == (9, 0);
    let mut rng = Rng::new(2);
    let mut group = c.benchmark_group("attention_gpu_bf16");
    group.sample_size(10).warm_up_time(Duration::from_secs(1));
    for t in [2048, 8192] {
        for (name, hq, hkv, d) in SHAPES {
            let p = Problem::new(&dev, DType::BF16, t, (hq, hkv, d), &mut rng);
            let unfused = Unfused::new(&dev, t, (hq, hkv, d), &mut rng);
            let forward_flops = 2.0 * (t * t * d * hq) as f64;
            for (what, flops) in [("forward", forward_flops), ("forward_backward", 3.5 * forward_flops)] {
                let backward = what == "forward_backward";
                let mut paths: Vec<(&str, Box<dyn FnMut() + '_>)> = Vec::new();
                for (label, path) in PATHS {
                    let p = &p;
                    paths.push((label, if backward { Box::new(move || drop(p.forward_backward(path))) } else { Box::new(move || drop(p.forward(path))) }));
                }
                if hopper {
                    let p = &p;
                    paths.push(("fused_sm80", Box::new(move || on_sm80_kernels(|| if backward { drop(p.forward_backward(AttentionPath::Fused)) } else { drop(p.forward(AttentionPath::Fused)) }))));
                }
                let (u, b) = (&unfused, &blas);
                paths.push(("cublas", if backward { Box::new(move || u.forward_backward(b)) } else { Box::new(move || drop(u.forward(b))) }));
                let mut rates = Vec::new();
                for (label, f) in &mut paths {
                    group.bench_function(BenchmarkId::new(format!("{what}/{label}/t{t}"), name), |bch| bch.iter_custom(|iters| support::timed(iters, &mut **f)));
                    rates.push((*label, support::tflops(flops, support::median_ms(5, &mut **f))));
                }
                let line: Vec<String> = rates.iter().map(|(l, r)| format!("{l} {r:6.1} TFLOP/s ({:4.2} of peak)", r / peak)).collect();
                println!("{what:<16} {name} T={t:<5} {}", line.join(", "));
                let case = format!("{what} {name} T={t}");
                for (label, rate) in &rates[1..] {
                    support::record("attention", &format!("{case} vs {label}"), "TFLOP/s", rates[0].1, label, *rate);
                    support::record("attention", &format!("{case} vs {label}"), "fraction of peak", rates[0].1 / peak, label, rate / peak);
                }
            }
        }
    }
    group.finish();
}

/// Runs `f` with the fused attention forced onto the mma.sync kernels (the engine reads
/// `DSMOE_ATTENTION_PATH` at each launch).
fn on_sm80_kernels(f: impl FnOnce()) {
    std::env::set_var("DSMOE_ATTENTION_PATH", "sm80");
    f();
    std::env::remove_var("DSMOE_ATTENTION_PATH");
}

/// One decode step's inputs over a pool holding exactly the batch's blocks, in random order.
struct Decode {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    table: Tensor,
    lens: Tensor,
    /// Cached key and value bytes the step must read.
    kv_bytes: f64,
}

impl Decode {
    const BLOCK: usize = 16;

    fn new(dev: &Device, batch: usize, context: usize, (hq, hkv, d): (usize, usize, usize), rng: &mut Rng) -> Decode {
        let per_row = context.div_ceil(Self::BLOCK);
        let num_blocks = batch * per_row;
        let mut table: Vec<u32> = (0..num_blocks as u32).collect();
        for i in (1..table.len()).rev() {
            table.swap(i, rng.below(i + 1));
        }
        // Random rows drawn on the host for a few blocks only, repeated through the pool on the
        // device (values do not change the bytes read; drawing gigabytes on the host would).
        const DRAWN: usize = 256;
        let pool = |rng: &mut Rng| {
            let drawn = support::randn(&[DRAWN, Self::BLOCK, hkv, d], DType::BF16, dev, rng);
            let idx: Vec<u32> = (0..num_blocks).map(|b| (b % DRAWN) as u32).collect();
            ops::index_select(&drawn, &Tensor::from_slice(&idx, [num_blocks], dev).unwrap()).unwrap()
        };
        Decode {
            q: support::randn(&[batch, hq, d], DType::BF16, dev, rng),
            k: pool(rng),
            v: pool(rng),
            table: Tensor::from_slice(&table, [batch, per_row], dev).unwrap(),
            lens: Tensor::from_slice(&vec![context as u32; batch], [batch], dev).unwrap(),
            kv_bytes: (2 * batch * context * hkv * d * DType::BF16.size_in_bytes()) as f64,
        }
    }

    fn step(&self, scale: f64) -> Tensor {
        ops::paged_attention(&self.q, &self.k, &self.v, &self.table, &self.lens, scale).unwrap()
    }
}

fn decode(c: &mut Criterion) {
    let Some(dev) = support::gpu() else { return };
    let Some(blas) = Blas::new() else { return };
    let copy_gbs = support::ceiling(&blas, &dev).copy_gbs;
    let mut rng = Rng::new(3);
    let mut group = c.benchmark_group("decode_attention_gpu_bf16");
    group.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (name, hq, hkv, d) in SHAPES {
        let scale = 1.0 / (d as f64).sqrt();
        for batch in [1, 16, 64] {
            for context in [1024, 2048, 4096, 8192, 16384, 32768] {
                let step = Decode::new(&dev, batch, context, (hq, hkv, d), &mut rng);
                let mut f = || drop(step.step(scale));
                group.bench_function(BenchmarkId::new(format!("b{batch}/ctx{context}"), name), |bch| bch.iter_custom(|iters| support::timed(iters, &mut f)));
                let gbs = step.kv_bytes / (support::median_ms(10, &mut f) * 1e-3) / 1e9;
                println!("decode {name} batch {batch:>2} context {context:>5}: {gbs:7.0} GB/s of KV bytes, {:4.2} of copy bandwidth", gbs / copy_gbs);
                let case = format!("decode {name} batch {batch} context {context}");
                support::record("decode_attention", &case, "KV GB/s", gbs, "device copy", copy_gbs);
                support::record("decode_attention", &case, "fraction of copy bandwidth", gbs / copy_gbs, "device copy", 1.0);
            }
        }
    }
    group.finish();
}

criterion_group!(benches, cpu, gpu, decode);
criterion_main!(benches);
