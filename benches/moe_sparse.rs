//! The sparse MoE MLP layer on CUDA, bf16, at the DS-MoE-6B shape (d = 4096, 32 experts of width
//! 512), forward, for T in {1, 4, 16, 64, 512, 4096, 16384} tokens, top-K routing with K in
//! {1, 2, 4, 6, 8} and threshold routing (ε tuned per batch so that the mean K is about 4, at most
//! 8), each with uniform routing (i.i.d. logits) and skewed routing (expert e's logit lowered by
//! 1.5·ln(1 + e): a few experts take most tokens). Each case runs, in the same process:
//! - ours: the whole layer from router probabilities: `ops::moe_route`, `ops::moe_permute` and
//!   `ops::moe_sparse_mlp` (decode kernels up to 16 tokens, the grouped gather-GEMM-scatter above);
//! - `cublas_expert_loop`: a gather of the routed rows (`index_select`), then per expert with
//!   tokens one cuBLAS product x_e·W1_eᵀ, one GeLU over all rows, per expert H_e·W2_e. It gets the
//!   routing for free (sizes known on the host) and skips the weighting and the combine, so it is
//!   a lower bound on what the loop costs;
//! and, once per T (they do not depend on the routing):
//! - `cublas_dense_ffn`: the dense FFN of the same total width E·f = 16384, gelu(x·W1ᵀ)·W2 with
//!   cuBLAS for both products;
//! - `moe_dense_mlp`: our all-experts DS-MoE layer (`ops::moe_dense_mlp`, every expert on every
//!   token).
//!
//! Reported per case: time (criterion, CUDA events through `iter_custom`, and the median of 5
//! event-timed runs for the record), TFLOP/s on the active FLOPs (4·P·f·d for P routed (token,
//! expert) pairs), GB/s on the active weight bytes (2·f·d·2 bytes for every expert that receives a
//! token), and both as fractions of the device's measured ceilings (cuBLAS bf16 8192³ and a large
//! device copy, benches/support): the compute fraction is the one that matters for large T, the
//! bandwidth fraction for small T. Everything goes to the results file through `support::record`.
//!
//! Budget: 7 T x 2 routings x 6 K settings x 2 variants + 7 x 2 per-T baselines = 182 timed
//! functions. With criterion's default windows (3 s warm-up, 5 s measurement) that is about 25
//! minutes; the windows here are 0.2 s and 0.5 s (10 samples), which keeps one run near 3 minutes
//! of GPU time, and the routing-independent baselines run once per T instead of per case. Without a
//! GPU (or libcublas) it prints one `skipped:` line.

mod support;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::ops::moe_sparse::{MoePath, RouteMode};
use engine::{ops, CpuStorage, DType, Device, Rng, Storage, Tensor};
use support::{addr, Blas};

const D: usize = 4096;
const EXPERTS: usize = 32;
const WIDTH: usize = 512;
const TOKENS: [usize; 7] = [1, 4, 16, 64, 512, 4096, 16384];
const TOP_K: [usize; 5] = [1, 2, 4, 6, 8];
/// Threshold routing: the most experts a token may take, and the mean K ε is tuned for.
const THRESHOLD_K_MAX: usize = 8;
const THRESHOLD_MEAN_K: f64 = 4.0;

/// Expert weights shared by every case, and the dense FFN's view of them (E·f rows).
struct Weights {
    w1: Tensor,
    w2: Tensor,
}

/// One batch: activations, router probabilities, and the scratch the baselines write.
struct Batch {
    t: usize,
    x: Tensor,
    probs: Tensor,
    /// cuBLAS outputs of the dense FFN: x·W1ᵀ [T, E·f], y [T, d].
    dense_u: Tensor,
    dense_y: Tensor,
}

/// One routing of a batch, with what the expert loop needs on the host.
struct Routed {
    mode: RouteMode,
    /// Token of each list entry, in expert order (device), and each expert's entry count (host).
    tokens: Tensor,
    counts: Vec<usize>,
    /// The loop's outputs: x_e·W1_eᵀ [P, f] and H_e·W2_e [P, d].
    u: Tensor,
    y: Tensor,
}

fn bf16_zeros(dev: &Device, rows: usize, cols: usize) -> Tensor {
    Tensor::zeros([rows.max(1), cols], DType::BF16, dev).unwrap()
}

/// Router probabilities [t, E] (bf16): softmax of N(0, 1) logits, minus 1.5·ln(1 + e) when skewed.
fn router_probs(dev: &Device, t: usize, skewed: bool, rng: &mut Rng) -> Tensor {
    let logits = Tensor::randn(vec![t, EXPERTS], 0.0, 1.0, DType::F64, &Device::Cpu, rng).unwrap();
    let bias: Vec<f64> = (0..t * EXPERTS).map(|i| if skewed { -1.5 * ((1 + i % EXPERTS) as f64).ln() } else { 0.0 }).collect();
    let bias = Tensor::from_f64s(&bias, [t, EXPERTS], DType::F64, &Device::Cpu).unwrap();
    let p = ops::softmax(&ops::add(&logits, &bias).unwrap()).unwrap();
    ops::cast(&p, DType::BF16).unwrap().to_device(dev).unwrap()
}

/// ε for threshold routing whose mean per-token count (at least 1, at most k_max) is about `mean_k`.
fn tune_eps(probs: &Tensor, mean_k: f64) -> f64 {
    let p = probs.to_f64_vec().unwrap();
    let n = EXPERTS as f64;
    let mean = |eps: f64| {
        let kept: usize = p.chunks(EXPERTS).map(|row| row.iter().filter(|&&v| n * v > eps).count().clamp(1, THRESHOLD_K_MAX)).sum();
        kept as f64 / (p.len() / EXPERTS) as f64
    };
    let (mut lo, mut hi) = (0.0, n);
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        if mean(mid) > mean_k {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

fn u32_tensor(values: Vec<u32>, dev: &Device) -> Tensor {
    let len = values.len();
    Tensor::from_storage(Storage::Cpu(CpuStorage::U32(values)), [len], DType::U32).to_device(dev).unwrap()
}

/// The routing of `b` in `mode`, with the loop baseline's host-side view of it.
fn route(dev: &Device, b: &Batch, mode: RouteMode) -> Routed {
    let r = ops::moe_route(&b.probs, mode, false).unwrap();
    let perm = ops::moe_permute(&r, EXPERTS, None).unwrap();
    let offsets = perm.offsets.to_vec::<u32>().unwrap();
    let sorted = perm.sorted_slots.to_vec::<u32>().unwrap();
    let p = offsets[EXPERTS] as usize;
    let tokens = u32_tensor(sorted[..p].iter().map(|&s| s / mode.k_max() as u32).collect(), dev);
    let counts = offsets.windows(2).map(|w| (w[1] - w[0]) as usize).collect();
    Routed { mode, tokens, counts, u: bf16_zeros(dev, p, WIDTH), y: bf16_zeros(dev, p, D) }
}

fn ours(b: &Batch, w: &Weights, mode: RouteMode) {
    let r = ops::moe_route(&b.probs, mode, false).unwrap();
    let perm = ops::moe_permute(&r, EXPERTS, None).unwrap();
    ops::moe_sparse_mlp(&b.x, &w.w1, &w.w2, &r.weights, &perm, MoePath::Auto, false).unwrap();
}

fn expert_loop(blas: &Blas, b: &Batch, w: &Weights, r: &Routed) {
    let xs = ops::index_select_unchecked(&b.x, &r.tokens).unwrap();
    let mut row = 0;
    for (e, &n) in r.counts.iter().enumerate().filter(|(_, &n)| n > 0) {
        blas.gemm(addr(&xs, row * D), addr(&w.w1, e * WIDTH * D), addr(&r.u, row * WIDTH), n, WIDTH, D, false, true, 0.0);
        row += n;
    }
    let h = ops::gelu(&r.u).unwrap();
    row = 0;
    for (e, &n) in r.counts.iter().enumerate().filter(|(_, &n)| n > 0) {
        blas.gemm(addr(&h, row * WIDTH), addr(&w.w2, e * WIDTH * D), addr(&r.y, row * D), n, D, WIDTH, false, false, 0.0);
        row += n;
    }
}

fn dense_ffn(blas: &Blas, b: &Batch, w: &Weights) {
    let h = EXPERTS * WIDTH;
    blas.gemm(addr(&b.x, 0), addr(&w.w1, 0), addr(&b.dense_u, 0), b.t, h, D, false, true, 0.0);
    let g = ops::gelu(&b.dense_u).unwrap();
    blas.gemm(addr(&g, 0), addr(&w.w2, 0), addr(&b.dense_y, 0), b.t, D, h, false, false, 0.0);
}

fn mode_name(mode: RouteMode) -> String {
    match mode {
        RouteMode::TopK(k) => format!("K={k}"),
        RouteMode::Threshold { eps, k_max } => format!("threshold eps={eps:.3} kmax={k_max}"),
        RouteMode::ThresholdK { eps, k_max } => format!("threshold-K eps={eps:.3} kmax={k_max}"),
    }
}

fn moe_sparse(c: &mut Criterion) {
    let Some(dev) = support::gpu() else { return };
    let mut rng = Rng::new(0x6d6f_7370);
    // A first transfer makes the device's context current on this thread before cuBLAS starts.
    Tensor::zeros([1], DType::BF16, &dev).unwrap();
    let Some(blas) = Blas::new() else { return };
    let ceiling = support::ceiling(&blas, &dev);
    let h = EXPERTS * WIDTH;
    let w = Weights {
        w1: Tensor::randn(vec![h, D], 0.0, (D as f64).powf(-0.5), DType::BF16, &dev, &mut rng).unwrap(),
        w2: Tensor::randn(vec![h, D], 0.0, (WIDTH as f64).powf(-0.5), DType::BF16, &dev, &mut rng).unwrap(),
    };
    let mut group = c.benchmark_group("moe_sparse");
    group.sample_size(10).warm_up_time(Duration::from_millis(200)).measurement_time(Duration::from_millis(500));
    for t in TOKENS {
        let probs = router_probs(&dev, t, false, &mut rng);
        let mut b = Batch { t, x: support::randn(&[t, D], DType::BF16, &dev, &mut rng), probs, dense_u: bf16_zeros(&dev, t, h), dense_y: bf16_zeros(&dev, t, D) };
        // Routing-independent baselines, once per T.
        let dense_flops = (4 * t * h * D) as f64;
        let mut per_t: [(&str, Box<dyn FnMut() + '_>); 2] = [
            ("cublas_dense_ffn", Box::new(|| dense_ffn(&blas, &b, &w))),
            ("moe_dense_mlp", Box::new(|| drop(ops::moe_dense_mlp(&b.x, &w.w1, &w.w2, &b.probs).unwrap()))),
        ];
        let mut per_t_ms = Vec::new();
        for (name, run) in per_t.iter_mut() {
            group.bench_function(format!("T={t} {name}"), |bn| bn.iter_custom(|iters| support::timed(iters, run)));
            let ms = support::median_ms(5, run);
            println!("T={t} {name}: {ms:.3} ms, {:.1} TFLOP/s on all experts", support::tflops(dense_flops, ms));
            per_t_ms.push((*name, ms));
        }
        drop(per_t);
        for skewed in [false, true] {
            b.probs = router_probs(&dev, t, skewed, &mut rng);
            let eps = tune_eps(&b.probs, THRESHOLD_MEAN_K);
            let modes = TOP_K.iter().map(|&k| RouteMode::TopK(k)).chain([RouteMode::Threshold { eps, k_max: THRESHOLD_K_MAX }]);
            for mode in modes {
                let r = route(&dev, &b, mode);
                let pairs: usize = r.counts.iter().sum();
                let active_experts = r.counts.iter().filter(|&&n| n > 0).count();
                let flops = (4 * pairs * WIDTH * D) as f64;
                let weight_bytes = (active_experts * 2 * WIDTH * D * 2) as f64;
                let case = format!("ds-moe-6b T={t} {} {}", if skewed { "skewed" } else { "uniform" }, mode_name(r.mode));
                let mut variants: [(&str, Box<dyn FnMut() + '_>); 2] =
                    [("ours", Box::new(|| ours(&b, &w, mode))), ("cublas_expert_loop", Box::new(|| expert_loop(&blas, &b, &w, &r)))];
                let mut ms = Vec::new();
                for (variant, run) in variants.iter_mut() {
                    group.bench_function(format!("{case} {variant}"), |bn| bn.iter_custom(|iters| support::timed(iters, run)));
                    ms.push(support::median_ms(5, run));
                }
                let (rate, gbs) = (support::tflops(flops, ms[0]), weight_bytes / (ms[0] * 1e-3) / 1e9);
                let (compute_frac, bw_frac) = (rate / ceiling.bf16_tflops, gbs / ceiling.copy_gbs);
                println!(
                    "{case}: {pairs} pairs on {active_experts} experts; ours {:.3} ms, {rate:.1} TFLOP/s ({:.1}% of compute), {gbs:.0} GB/s ({:.1}% of copy); loop {:.3} ms; dense FFN {:.3} ms; moe_dense_mlp {:.3} ms",
                    ms[0],
                    100.0 * compute_frac,
                    100.0 * bw_frac,
                    ms[1],
                    per_t_ms[0].1,
                    per_t_ms[1].1
                );
                support::record("moe_sparse", &case, "ms", ms[0], "cublas_expert_loop", ms[1]);
                for &(name, base_ms) in &per_t_ms {
                    support::record("moe_sparse", &case, "ms", ms[0], name, base_ms);
                }
                support::record("moe_sparse", &case, "TFLOP/s (active)", rate, "cublas_expert_loop", support::tflops(flops, ms[1]));
                support::record("moe_sparse", &case, "GB/s (active weights)", gbs, "cublas_expert_loop", weight_bytes / (ms[1] * 1e-3) / 1e9);
                support::record("moe_sparse", &case, "fraction of measured compute ceiling", compute_frac, "cublas_bf16_8192_ceiling", 1.0);
                support::record("moe_sparse", &case, "fraction of measured copy bandwidth", bw_frac, "device_copy_ceiling", 1.0);
            }
        }
    }
    group.finish();
}

criterion_group!(benches, moe_sparse);
criterion_main!(benches);
