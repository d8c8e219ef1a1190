//! The gated (SwiGLU) sparse MoE MLP: the CPU reference on a token-by-token evaluation, and the
//! CUDA kernels against it.
//!
//! CPU (always run): `moe_sparse_swiglu` against plain ops per token in every routing mode, with a
//! capacity limit; error paths (w3's shape, saved activations of the other expert kind).
//! CUDA (one `skipped:` line without a GPU): forward on both paths (grouped with the wide, narrow
//! and exact products; the decode GEMVs, also with an expert named twice per token, past their 16
//! rows per pass) and backward (dx, dw1, dw3, dw2, dweights) in f32, bf16 and f16 at ragged sizes,
//! routing computed on the device (no host read), outputs poisoned (NaN) before the kernels run,
//! errors relative by norm: f32 < 1e-5, bf16 / f16 < 1e-2.

mod gpu_support;

use engine::ops::{self, MoePath, RouteMode};
use engine::{DType, Device, Error, Rng, Tensor, UnaryOp};
use gpu_support::{gpu, normal, rel_err};

fn probs(t: usize, n: usize, dtype: DType, rng: &mut Rng) -> Tensor {
    ops::cast(&ops::softmax(&normal(&[t, n], DType::F32, rng)).unwrap(), dtype).unwrap()
}

fn tol(dtype: DType) -> f64 {
    if dtype == DType::F32 {
        1e-5
    } else {
        1e-2
    }
}

struct Layer {
    x: Tensor,
    w1: Tensor,
    w3: Tensor,
    w2: Tensor,
    p: Tensor,
}

fn layer(t: usize, d: usize, n: usize, f: usize, dtype: DType, rng: &mut Rng) -> Layer {
    let s = 1.0 / (d as f64).sqrt();
    let mut w = || Tensor::randn(vec![n * f, d], 0.0, s, dtype, &Device::Cpu, rng).unwrap();
    let (w1, w3, w2) = (w(), w(), w());
    Layer { x: normal(&[t, d], dtype, rng), w1, w3, w2, p: probs(t, n, dtype, rng) }
}

/// y[t] = Σ_j w[t,j]·W2_eᵀ·(silu(W1_e·x[t]) ⊙ W3_e·x[t]) over the kept slots (`slot_pos`), token
/// by token with plain ops.
fn token_reference(l: &Layer, r: &ops::Routes, perm: &ops::Permutation, f: usize) -> Tensor {
    let (t, d) = (l.x.dims()[0], l.x.dims()[1]);
    let k = r.experts.dims()[1];
    let experts = r.experts.to_vec::<u32>().unwrap();
    let weights = r.weights.to_f64_vec().unwrap();
    let kept = perm.slot_pos.to_vec::<u32>().unwrap();
    let rows = |w: &Tensor, e: usize| ops::narrow(w, 0, e * f, f).unwrap();
    let mut out = Vec::new();
    for tok in 0..t {
        let xt = ops::narrow(&l.x, 0, tok, 1).unwrap();
        let mut acc = Tensor::zeros([1, d], DType::F64, &Device::Cpu).unwrap();
        for s in (tok * k..(tok + 1) * k).filter(|&s| kept[s] != ops::moe_sparse::DROPPED) {
            let e = experts[s] as usize;
            let gate = ops::unary(&ops::matmul_t(&xt, &rows(&l.w1, e), false, true).unwrap(), UnaryOp::Silu).unwrap();
            let h = ops::mul(&gate, &ops::matmul_t(&xt, &rows(&l.w3, e), false, true).unwrap()).unwrap();
            let y = ops::matmul(&h, &rows(&l.w2, e)).unwrap();
            acc = ops::add(&acc, &ops::mul_scalar(&y, weights[s]).unwrap()).unwrap();
        }
        out.push(acc);
    }
    ops::concat(&out.iter().collect::<Vec<_>>(), 0).unwrap()
}

#[test]
fn cpu_swiglu_matches_a_token_by_token_evaluation() {
    let mut rng = Rng::new(41);
    let (t, d, n, f) = (9, 6, 5, 4);
    let l = layer(t, d, n, f, DType::F64, &mut rng);
    let modes = [(RouteMode::TopK(2), None), (RouteMode::TopK(3), Some(3)), (RouteMode::Threshold { eps: 0.9, k_max: 4 }, None), (RouteMode::ThresholdK { eps: 0.9, k_max: 4 }, None)];
    for (mode, cap) in modes {
        let r = ops::moe_route(&l.p, mode, false).unwrap();
        let perm = ops::moe_permute(&r, n, cap).unwrap();
        if cap.is_some() {
            assert!(perm.dropped.to_vec::<u32>().unwrap()[0] > 0, "the capacity case must drop pairs");
        }
        let (y, saved) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Auto, true).unwrap();
        let e = rel_err(&y, &token_reference(&l, &r, &perm, f));
        assert!(e < 1e-12, "{mode:?} cap {cap:?}: {e}");
        assert!(saved.unwrap().v.is_some(), "gated experts keep V");
    }
}

#[test]
fn bad_swiglu_arguments_are_errors() {
    let mut rng = Rng::new(42);
    let (t, d, n, f) = (3, 6, 4, 2);
    let l = layer(t, d, n, f, DType::F32, &mut rng);
    let r = ops::moe_route(&l.p, RouteMode::TopK(2), false).unwrap();
    let perm = ops::moe_permute(&r, n, None).unwrap();
    let narrow_w3 = Tensor::zeros([n * f, d - 1], DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(ops::moe_sparse_swiglu(&l.x, &l.w1, &narrow_w3, &l.w2, &r.weights, &perm, MoePath::Auto, false), Err(Error::Shape { .. })));
    // Saved activations of GeLU experts do not feed the gated backward, nor the other way round.
    let (_, gelu_saved) = ops::moe_sparse_mlp(&l.x, &l.w1, &l.w2, &r.weights, &perm, MoePath::Auto, true).unwrap();
    let (_, gated_saved) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Auto, true).unwrap();
    let dy = normal(&[t, d], DType::F32, &mut rng);
    assert!(matches!(ops::moe_sparse_swiglu_backward(&dy, &l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, &gelu_saved.unwrap()), Err(Error::Invalid { .. })));
    assert!(matches!(ops::moe_sparse_mlp_backward(&dy, &l.x, &l.w1, &l.w2, &r.weights, &perm, &gated_saved.unwrap()), Err(Error::Invalid { .. })));
}

// ---- CUDA against the CPU -------------------------------------------------------------------------

#[test]
fn cuda_swiglu_forward_and_backward_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(43);
    let on = |x: &Tensor| x.to_device(&dev).unwrap();
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        // (13, 136, 8, 72): narrow-tile products (T·K < 128·E), several column tiles of d and f;
        // (300, 136, 4, 72): the wide tile; (11, 70, 4, 38): d and f not multiples of 8, the exact
        // products in every dtype; T <= 16 also runs the decode GEMVs.
        for (t, d, n, f) in [(1, 72, 4, 40), (13, 136, 8, 72), (300, 136, 4, 72), (11, 70, 4, 38)] {
            let l = layer(t, d, n, f, dtype, &mut rng);
            for (mode, cap) in [(RouteMode::TopK(2), None), (RouteMode::TopK(2), Some(t.div_ceil(n).max(1))), (RouteMode::Threshold { eps: 1.0, k_max: 4 }, None)] {
                let what = format!("{dtype:?} {t}x{d}, {n}x{f}, {mode:?} cap {cap:?}");
                let r = ops::moe_route(&l.p, mode, false).unwrap();
                let perm = ops::moe_permute(&r, n, cap).unwrap();
                let (y, saved) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Grouped, true).unwrap();
                let rg = ops::moe_route(&on(&l.p), mode, false).unwrap();
                let pg = ops::moe_permute(&rg, n, cap).unwrap();
                let (xg, w1g, w3g, w2g) = (on(&l.x), on(&l.w1), on(&l.w3), on(&l.w2));
                let paths: &[MoePath] = if t <= ops::moe_sparse::DECODE_MAX_TOKENS { &[MoePath::Grouped, MoePath::Decode] } else { &[MoePath::Grouped] };
                for &path in paths {
                    for save in [false, true] {
                        let (yg, _) = ops::moe_sparse_swiglu(&xg, &w1g, &w3g, &w2g, &rg.weights, &pg, path, save).unwrap();
                        let e = rel_err(&yg, &y);
                        assert!(e < tol(dtype), "forward {what} {path:?} save {save}: {e}");
                    }
                }
                let dy = normal(&[t, d], dtype, &mut rng);
                let gc = ops::moe_sparse_swiglu_backward(&dy, &l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, &saved.unwrap()).unwrap();
                for path in paths {
                    let (_, sg) = ops::moe_sparse_swiglu(&xg, &w1g, &w3g, &w2g, &rg.weights, &pg, *path, true).unwrap();
                    let gg = ops::moe_sparse_swiglu_backward(&on(&dy), &xg, &w1g, &w3g, &w2g, &rg.weights, &pg, &sg.unwrap()).unwrap();
                    let (dw3g, dw3c) = (gg.dw3.unwrap(), gc.dw3.clone().unwrap());
                    for (name, a, b) in [("dx", &gg.dx, &gc.dx), ("dw1", &gg.dw1, &gc.dw1), ("dw3", &dw3g, &dw3c), ("dw2", &gg.dw2, &gc.dw2), ("dweights", &gg.dweights, &gc.dweights)] {
                        let e = rel_err(a, b);
                        assert!(e < tol(dtype), "{name} {what}, saved by {path:?}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn cuda_swiglu_decode_with_an_expert_named_twice_per_token_matches_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(44);
    // Every one of 16 tokens names expert 1 in both slots: 32 entries for one expert, two passes
    // of the decode kernels' 16 rows.
    let (t, d, n, f) = (16, 16, 2, 8);
    let l = layer(t, d, n, f, DType::F32, &mut rng);
    let on = |x: &Tensor| x.to_device(&dev).unwrap();
    let routes = |device: &Device| ops::Routes {
        experts: Tensor::from_slice(&vec![1u32; 2 * t], [t, 2], device).unwrap(),
        weights: Tensor::from_f64s(&(0..2 * t).map(|s| 0.25 + 0.5 * (s % 3) as f64).collect::<Vec<_>>(), [t, 2], DType::F32, device).unwrap(),
        mask: Tensor::full(1.0, [t, 2], DType::F32, device).unwrap(),
        counts: Tensor::from_slice(&vec![2u32; t], [t], device).unwrap(),
    };
    let (r, rg) = (routes(&Device::Cpu), routes(&dev));
    let (perm, pg) = (ops::moe_permute(&r, n, None).unwrap(), ops::moe_permute(&rg, n, None).unwrap());
    let (y, _) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Grouped, false).unwrap();
    for save in [false, true] {
        let (yg, _) = ops::moe_sparse_swiglu(&on(&l.x), &on(&l.w1), &on(&l.w3), &on(&l.w2), &rg.weights, &pg, MoePath::Decode, save).unwrap();
        let e = rel_err(&yg, &y);
        assert!(e < tol(DType::F32), "save {save}: {e}");
    }
}
