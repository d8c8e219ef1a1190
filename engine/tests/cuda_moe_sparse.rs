//! Sparse MoE ops: the CPU references on known values, and every CUDA kernel against them.
//!
//! CPU (always run): routing order and ties, threshold counts, threshold-then-K, renormalisation;
//! the permutation's order, capacity dropping, the kept-slot mask, empty experts; the sparse MLP against a dense
//! per-token evaluation (also with several blocks per expert and slot rank); error paths.
//! CUDA (one `skipped:` line without a GPU): routing in all three modes with tied probabilities
//! (exact match), permutation (empty experts, all tokens on one expert, T = 1, capacity, first
//! choices before second choices; exact, the whole sorted_slots tensor, and the kept-slot mask in
//! every float dtype; experts out of range are an error on both devices),
//! the sparse layer forward in every mode on both paths (grouped and decode, also with an expert
//! named twice per token, which gives it more than the decode kernels' 16 rows), the backward (dx,
//! dw1, dw2, dweights), and K = N sparse against the dense all-experts evaluation. Inputs are fresh
//! seeded random values at ragged sizes, device outputs are poisoned (NaN) before the kernels
//! run, errors are relative by norm: f32 < 1e-5, bf16 < 1e-2.
//! SwiGLU experts (`moe_sparse_swiglu`, the gated form): the CPU against a token-by-token
//! evaluation with a capacity limit, error paths, and the CUDA forward (grouped and decode, with
//! and without saving for the backward, and an expert named twice per token) and backward (dx,
//! dw1, dw3, dw2, dweights) against the CPU in the same way.

mod gpu_support;

use engine::ops::{self, MoePath, RouteMode};
use engine::{CpuStorage, DType, Device, Error, Rng, Storage, Tensor};
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

fn u32s(t: &Tensor) -> Vec<u32> {
    t.to_vec::<u32>().unwrap()
}

// ---- CPU references on known values ---------------------------------------------------------------

#[test]
fn routing_orders_by_probability_and_breaks_ties_to_the_lower_expert() {
    let p = Tensor::from_f64s(&[0.1, 0.3, 0.3, 0.2, 0.1, 0.4, 0.1, 0.3, 0.2, 0.2, 0.2, 0.2], [3, 4], DType::F32, &Device::Cpu).unwrap();
    let r = ops::moe_route(&p, RouteMode::TopK(2), false).unwrap();
    assert_eq!(u32s(&r.experts), [1, 2, 1, 3, 0, 1]);
    assert_eq!(u32s(&r.counts), [2, 2, 2]);
    let rn = ops::moe_route(&p, RouteMode::TopK(2), true).unwrap();
    let w = rn.weights.to_f64_vec().unwrap();
    assert!((w[0] - 0.5).abs() < 1e-6 && (w[2] - 0.4 / 0.7).abs() < 1e-6, "{w:?}");
}

#[test]
fn routing_puts_nan_first_and_ties_signed_zeros_to_the_lower_expert() {
    let nan = f64::NAN;
    let p = Tensor::from_f64s(&[0.2, nan, 0.5, nan, -0.0, 0.0, /* */ 0.0, -0.0, -0.0, 0.0, -1.0, f64::NEG_INFINITY], [2, 6], DType::F32, &Device::Cpu).unwrap();
    let r = ops::moe_route(&p, RouteMode::TopK(5), false).unwrap();
    assert_eq!(u32s(&r.experts), [1, 3, 2, 0, 4, /* */ 0, 1, 2, 3, 10 % 6]);
    let r = ops::moe_route(&ops::cast(&p, DType::F64).unwrap(), RouteMode::TopK(6), false).unwrap();
    assert_eq!(u32s(&r.experts), [1, 3, 2, 0, 4, 5, /* */ 0, 1, 2, 3, 4, 5]);
}

#[test]
fn threshold_routing_counts_experts_above_eps_with_at_least_one() {
    // N·p rows: [0.4 1.2 1.2 1.2], [0.4 1.6 1.0 1.0], [1.0; 4]: with eps = 1 they keep 3, 1 and (at least) 1.
    let p = Tensor::from_f64s(&[0.1, 0.3, 0.3, 0.3, 0.1, 0.4, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25], [3, 4], DType::F32, &Device::Cpu).unwrap();
    let r = ops::moe_route(&p, RouteMode::Threshold { eps: 1.0, k_max: 4 }, false).unwrap();
    assert_eq!(u32s(&r.counts), [3, 1, 1]);
    assert_eq!(r.mask.to_f64_vec().unwrap()[..4], [1.0, 1.0, 1.0, 0.0]);
    assert_eq!(u32s(&r.experts)[4..8], [1, 1, 1, 1], "unused slots repeat the first expert");
    let capped = ops::moe_route(&p, RouteMode::Threshold { eps: 1.0, k_max: 2 }, false).unwrap();
    assert_eq!(u32s(&capped.counts), [2, 1, 1]);
    // Threshold-then-K: mean of (3, 1, 1) = 1.67 -> K = 2 for every token.
    let tk = ops::moe_route(&p, RouteMode::ThresholdK { eps: 1.0, k_max: 4 }, false).unwrap();
    assert_eq!(u32s(&tk.counts), [2, 2, 2]);
}

#[test]
fn permutation_is_stable_by_expert_and_gives_first_choices_priority() {
    // Tokens' (first, second) choices: (2, 0), (2, 1), (2, 0), (0, -): slots 0..8, slot 7 unused.
    let experts = Tensor::from_slice(&[2u32, 0, 2, 1, 2, 0, 0, 2], [4, 2], &Device::Cpu).unwrap();
    let counts = Tensor::from_slice(&[2u32, 2, 2, 1], [4], &Device::Cpu).unwrap();
    let routes = ops::Routes { experts: experts.clone(), weights: Tensor::zeros([4, 2], DType::F32, &Device::Cpu).unwrap(), mask: Tensor::zeros([4, 2], DType::F32, &Device::Cpu).unwrap(), counts };
    let p = ops::moe_permute(&routes, 4, None).unwrap();
    assert_eq!(u32s(&p.offsets), [0, 3, 1 + 3, 7, 7]);
    // Within an expert: the first choices in token order, then the second choices.
    assert_eq!(&u32s(&p.sorted_slots)[..7], [6, 1, 5, 3, 0, 2, 4]);
    assert_eq!(u32s(&p.slot_pos)[7], ops::moe_sparse::DROPPED, "slot 1 of token 3 is unused");
    assert_eq!(u32s(&p.expert_counts), [3, 1, 3, 0]);
    let capped = ops::moe_permute(&routes, 4, Some(2)).unwrap();
    assert_eq!(u32s(&capped.offsets), [0, 2, 3, 5, 5]);
    assert_eq!(u32s(&capped.dropped), [2]);
    let pos = u32s(&capped.slot_pos);
    assert_eq!(pos[6], 0, "token 3's first choice (expert 0) is kept although tokens 0 and 2 come earlier");
    assert_eq!(pos[1], 1, "token 0's second choice takes the last place of expert 0");
    assert_eq!(pos[5], ops::moe_sparse::DROPPED, "token 2's second choice is dropped before token 3's first choice");
    assert_eq!(pos[4], ops::moe_sparse::DROPPED, "expert 2 keeps its first two first choices");
    // The kept mask: used and within capacity (slot 7 is unused, 4 and 5 dropped).
    assert_eq!(ops::moe_kept(&capped, DType::F32).unwrap().to_f64_vec().unwrap(), [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]);
    assert_eq!(ops::moe_kept(&p, DType::BF16).unwrap().to_f64_vec().unwrap(), [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
    assert!(matches!(ops::moe_kept(&p, DType::U32), Err(Error::DType { op: "moe_kept", .. })));
}

/// y[t] = Σ_j w[t,j]·W2_eᵀ·gelu(W1_e·x[t]) evaluated token by token with plain ops.
fn dense_reference(x: &Tensor, w1: &Tensor, w2: &Tensor, r: &ops::Routes, f: usize) -> Tensor {
    let (t, d) = (x.dims()[0], x.dims()[1]);
    let k = r.experts.dims()[1];
    let (ex, w, c) = (u32s(&r.experts), r.weights.to_f64_vec().unwrap(), u32s(&r.counts));
    let mut rows = Vec::new();
    for tok in 0..t {
        let xt = ops::narrow(x, 0, tok, 1).unwrap();
        let mut acc = Tensor::zeros([1, d], DType::F64, &Device::Cpu).unwrap();
        for j in 0..c[tok] as usize {
            let e = ex[tok * k + j] as usize;
            let h = ops::unary(&ops::matmul_t(&xt, &ops::narrow(w1, 0, e * f, f).unwrap(), false, true).unwrap(), engine::UnaryOp::Gelu).unwrap();
            let y = ops::matmul(&h, &ops::narrow(w2, 0, e * f, f).unwrap()).unwrap();
            acc = ops::add(&acc, &ops::mul_scalar(&y, w[tok * k + j]).unwrap()).unwrap();
        }
        rows.push(acc);
    }
    let refs: Vec<&Tensor> = rows.iter().collect();
    ops::concat(&refs, 0).unwrap()
}

#[test]
fn cpu_sparse_mlp_matches_a_token_by_token_evaluation() {
    let mut rng = Rng::new(5);
    let (t, d, n, f) = (9, 6, 5, 4);
    let x = normal(&[t, d], DType::F64, &mut rng);
    let (w1, w2) = (normal(&[n * f, d], DType::F64, &mut rng), normal(&[n * f, d], DType::F64, &mut rng));
    for mode in [RouteMode::TopK(2), RouteMode::Threshold { eps: 0.9, k_max: 4 }, RouteMode::ThresholdK { eps: 0.9, k_max: 4 }] {
        let r = ops::moe_route(&probs(t, n, DType::F64, &mut rng), mode, false).unwrap();
        let perm = ops::moe_permute(&r, n, None).unwrap();
        let (y, _) = ops::moe_sparse_mlp(&x, &w1, &w2, &r.weights, &perm, MoePath::Auto, false).unwrap();
        let e = rel_err(&y, &dense_reference(&x, &w1, &w2, &r, f));
        assert!(e < 1e-12, "{mode:?}: {e}");
    }
}

/// Enough tokens that an expert's entries of one slot rank fill more than one block of the general
/// path (256 entries, with a ragged end), up to three slot ranks (which run one after another):
/// the forward, with and without saving the activations, matches the token-by-token evaluation;
/// SwiGLU experts too, with a capacity limit that drops pairs.
#[test]
fn cpu_sparse_mlp_over_several_blocks_per_expert_matches_a_token_by_token_evaluation() {
    let mut rng = Rng::new(6);
    let (t, d, n, f) = (1200, 5, 3, 3);
    let l = layer(t, d, n, f, DType::F64, &mut rng);
    for mode in [RouteMode::TopK(2), RouteMode::TopK(3), RouteMode::Threshold { eps: 0.9, k_max: 3 }] {
        let r = ops::moe_route(&l.p, mode, false).unwrap();
        let perm = ops::moe_permute(&r, n, None).unwrap();
        let want = dense_reference(&l.x, &l.w1, &l.w2, &r, f);
        for save in [false, true] {
            let (y, _) = ops::moe_sparse_mlp(&l.x, &l.w1, &l.w2, &r.weights, &perm, MoePath::Auto, save).unwrap();
            let e = rel_err(&y, &want);
            assert!(e < 1e-12, "{mode:?} save {save}: {e}");
        }
    }
    let r = ops::moe_route(&l.p, RouteMode::TopK(3), false).unwrap();
    let perm = ops::moe_permute(&r, n, Some(700)).unwrap();
    assert!(perm.dropped.to_vec::<u32>().unwrap()[0] > 0, "the capacity must drop pairs");
    let want = token_reference(&l, &r, &perm, f);
    for save in [false, true] {
        let (y, _) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Auto, save).unwrap();
        let e = rel_err(&y, &want);
        assert!(e < 1e-12, "swiglu save {save}: {e}");
    }
    // Every first choice on expert 0, second choices alternating between 1 and 2, capacity 500:
    // tokens 0..500 keep both slots, 500..1000 only their second (a sum whose first term is not
    // its first rank's), 1000..1200 none (a zero row).
    let skewed: Vec<f64> = (0..t).flat_map(|i| if i % 2 == 0 { [0.6, 0.3, 0.1] } else { [0.6, 0.1, 0.3] }).collect();
    let l = Layer { p: Tensor::from_slice(&skewed, [t, n], &Device::Cpu).unwrap(), ..l };
    let r = ops::moe_route(&l.p, RouteMode::TopK(2), false).unwrap();
    let perm = ops::moe_permute(&r, n, Some(500)).unwrap();
    let kept = perm.slot_pos.to_vec::<u32>().unwrap();
    let kept_slots = |tok: usize| (0..2).filter(|j| kept[tok * 2 + j] != ops::moe_sparse::DROPPED).collect::<Vec<_>>();
    assert_eq!((kept_slots(0), kept_slots(700), kept_slots(1100)), (vec![0, 1], vec![1], vec![]), "the capacity drops as intended");
    let want = token_reference(&l, &r, &perm, f);
    for save in [false, true] {
        let (y, _) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Auto, save).unwrap();
        let e = rel_err(&y, &want);
        assert!(e < 1e-12, "first choices dropped, save {save}: {e}");
    }
}

/// f32 without saved activations, at widths that are multiples of 64, takes the fused AVX-512 layer
/// (moe_sparse_fused.rs) where the CPU has it: it matches the general path run in f64 on the same
/// inputs to f32 rounding, with experts over several blocks, ragged last tiles, top-k and
/// threshold routing and a capacity that drops choices; the general path in f32 (taken when the
/// activations are saved) agrees as closely.
#[test]
fn cpu_sparse_mlp_in_f32_without_saved_activations_matches_the_general_path_in_f64() {
    let mut rng = Rng::new(8);
    let wide = |v: &Tensor| ops::cast(v, DType::F64).unwrap();
    for (t, d, n, f) in [(1100, 128, 4, 64), (301, 64, 3, 192)] {
        let l = layer(t, d, n, f, DType::F32, &mut rng);
        for (mode, cap) in [(RouteMode::TopK(2), None), (RouteMode::Threshold { eps: 0.9, k_max: 3 }, None), (RouteMode::TopK(2), Some(t / 3))] {
            let r = ops::moe_route(&l.p, mode, false).unwrap();
            let perm = ops::moe_permute(&r, n, cap).unwrap();
            if cap.is_some() {
                assert!(u32s(&perm.dropped)[0] > 0, "the capacity must drop pairs");
            }
            let want = ops::moe_sparse_mlp(&wide(&l.x), &wide(&l.w1), &wide(&l.w2), &wide(&r.weights), &perm, MoePath::Auto, false).unwrap().0;
            for save in [false, true] {
                let (y, _) = ops::moe_sparse_mlp(&l.x, &l.w1, &l.w2, &r.weights, &perm, MoePath::Auto, save).unwrap();
                let e = rel_err(&y, &want);
                assert!(e < 1e-6, "{t} x {d}, {n} experts of {f}, {mode:?}, capacity {cap:?}, save {save}: {e}");
            }
        }
    }
}

/// Decode-sized batches (at most four tokens per expert, nothing saved) take the CPU's hidden-slice
/// path: it matches the token-by-token evaluation in f64, with expert widths of one slice, of
/// several, and of a ragged last slice; and in bf16 it matches the general path (taken when the
/// activations are saved) to rounding.
#[test]
fn cpu_sparse_mlp_at_decode_size_matches_a_token_by_token_evaluation() {
    let mut rng = Rng::new(6);
    for (t, d, n, f) in [(1, 40, 8, 64), (2, 40, 8, 150), (3, 33, 6, 200)] {
        let x = normal(&[t, d], DType::F64, &mut rng);
        let (w1, w2) = (normal(&[n * f, d], DType::F64, &mut rng), normal(&[n * f, d], DType::F64, &mut rng));
        for mode in [RouteMode::TopK(2), RouteMode::Threshold { eps: 0.9, k_max: 4 }] {
            let r = ops::moe_route(&probs(t, n, DType::F64, &mut rng), mode, false).unwrap();
            let perm = ops::moe_permute(&r, n, None).unwrap();
            let (y, _) = ops::moe_sparse_mlp(&x, &w1, &w2, &r.weights, &perm, MoePath::Auto, false).unwrap();
            let e = rel_err(&y, &dense_reference(&x, &w1, &w2, &r, f));
            assert!(e < 1e-12, "{t}x{d}, {n} experts of {f}, {mode:?}: {e}");
            let cast = |v: &Tensor| ops::cast(v, DType::BF16).unwrap();
            let decode = ops::moe_sparse_mlp(&cast(&x), &cast(&w1), &cast(&w2), &cast(&r.weights), &perm, MoePath::Auto, false).unwrap().0;
            let general = ops::moe_sparse_mlp(&cast(&x), &cast(&w1), &cast(&w2), &cast(&r.weights), &perm, MoePath::Auto, true).unwrap().0;
            let e = rel_err(&decode, &general);
            assert!(e < 1e-2, "bf16 {t}x{d}, {n} experts of {f}, {mode:?}: {e}");
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let p = Tensor::zeros([3, 4], DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(ops::moe_route(&p, RouteMode::TopK(5), false), Err(Error::Invalid { .. })));
    assert!(matches!(ops::moe_route(&p, RouteMode::TopK(0), false), Err(Error::Invalid { .. })));
    let r = ops::moe_route(&p, RouteMode::TopK(2), false).unwrap();
    assert!(matches!(ops::moe_permute(&r, 4, Some(0)), Err(Error::Invalid { .. })));
    let perm = ops::moe_permute(&r, 4, None).unwrap();
    let x = Tensor::zeros([3, 6], DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros([10, 6], DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(ops::moe_sparse_mlp(&x, &w, &w, &r.weights, &perm, MoePath::Auto, false), Err(Error::Shape { .. })), "10 rows do not split into 4 experts");
    let w = Tensor::zeros([8, 5], DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(ops::moe_sparse_mlp(&x, &w, &w, &r.weights, &perm, MoePath::Auto, false), Err(Error::Shape { .. })));
    // Two list entries swapped: each still names a slot in range, but not the slot that names it.
    let w = Tensor::zeros([8, 6], DType::F32, &Device::Cpu).unwrap();
    let mut sorted = u32s(&perm.sorted_slots);
    sorted.swap(0, 1);
    let swapped = ops::Permutation { sorted_slots: Tensor::from_storage(Storage::Cpu(CpuStorage::U32(sorted.clone())), [sorted.len()], DType::U32), ..perm.clone() };
    let err = ops::moe_sparse_mlp(&x, &w, &w, &r.weights, &swapped, MoePath::Auto, false).unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }) && err.to_string().contains("inverse"), "{err}");
}

// ---- CUDA against the CPU -------------------------------------------------------------------------

#[test]
fn cuda_routing_matches_cpu_in_every_mode_with_ties() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(21);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for (t, n) in [(1, 3), (37, 8), (301, 32), (5, 70)] {
            // Quantised probabilities make ties common.
            let p = Tensor::from_f64s(&probs(t, n, DType::F64, &mut rng).to_f64_vec().unwrap().iter().map(|v| (v * 16.0).round() / 16.0).collect::<Vec<_>>(), [t, n], dtype, &Device::Cpu).unwrap();
            let k = n.min(4);
            for mode in [RouteMode::TopK(k), RouteMode::Threshold { eps: 1.0, k_max: k }, RouteMode::ThresholdK { eps: 1.0, k_max: k }] {
                for renorm in [false, true] {
                    let c = ops::moe_route(&p, mode, renorm).unwrap();
                    let g = ops::moe_route(&p.to_device(&dev).unwrap(), mode, renorm).unwrap();
                    assert_eq!(u32s(&g.experts), u32s(&c.experts), "{dtype:?} {t}x{n} {mode:?}");
                    assert_eq!(u32s(&g.counts), u32s(&c.counts));
                    assert_eq!(g.mask.to_f64_vec().unwrap(), c.mask.to_f64_vec().unwrap());
                    assert!(rel_err(&g.weights, &c.weights) < tol(dtype), "{dtype:?} {mode:?} renorm {renorm}");
                }
            }
        }
    }
}

#[test]
fn cuda_permutation_matches_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(22);
    // (tokens, experts, k, skew): skew 1.0 sends everything to expert 0's neighbourhood.
    for (t, n, k, all_on_one) in [(1, 4, 1, false), (1, 32, 8, false), (300, 16, 2, false), (2000, 32, 4, false), (513, 8, 1, true)] {
        let mut p = probs(t, n, DType::F32, &mut rng);
        if all_on_one {
            let mut v = p.to_f64_vec().unwrap();
            v.chunks_mut(n).for_each(|row| row[3] = 10.0);
            p = Tensor::from_f64s(&v, [t, n], DType::F32, &Device::Cpu).unwrap();
        }
        let r = ops::moe_route(&p, RouteMode::TopK(k), false).unwrap();
        let rg = ops::moe_route(&p.to_device(&dev).unwrap(), RouteMode::TopK(k), false).unwrap();
        same_permutations(&r, &rg, n, &[None, Some(1), Some((t * k).div_ceil(n))], &format!("{t} tokens, {n} experts, k {k}"));
    }
    // The CPU test's hand-built routes, where first choices outrank earlier tokens' second choices.
    let (experts, counts) = ([2u32, 0, 2, 1, 2, 0, 0, 2], [2u32, 2, 2, 1]);
    let (r, rg) = (hand_routes(&experts, &counts, 2, DType::F32, &Device::Cpu), hand_routes(&experts, &counts, 2, DType::F32, &dev));
    same_permutations(&r, &rg, 4, &[None, Some(1), Some(2)], "first-choice priority");
}

/// `moe_permute` of the CPU routes `r` and the device routes `rg` (the same values) agree exactly
/// at every capacity of `caps`.
fn same_permutations(r: &ops::Routes, rg: &ops::Routes, n: usize, caps: &[Option<usize>], case: &str) {
    for &cap in caps {
        let c = ops::moe_permute(r, n, cap).unwrap();
        let g = ops::moe_permute(rg, n, cap).unwrap();
        assert_eq!(u32s(&g.offsets), u32s(&c.offsets), "{case}, cap {cap:?}");
        // The whole tensor: past the kept entries both devices hold DROPPED.
        assert_eq!(u32s(&g.sorted_slots), u32s(&c.sorted_slots), "{case}, cap {cap:?}");
        assert_eq!(u32s(&g.slot_pos), u32s(&c.slot_pos), "{case}, cap {cap:?}");
        assert_eq!(u32s(&g.expert_counts), u32s(&c.expert_counts), "{case}, cap {cap:?}");
        assert_eq!(u32s(&g.dropped), u32s(&c.dropped), "{case}, cap {cap:?}");
        for dtype in [DType::F32, DType::BF16, DType::F16] {
            let (kc, kg) = (ops::moe_kept(&c, dtype).unwrap(), ops::moe_kept(&g, dtype).unwrap());
            assert_eq!(kg.dims(), kc.dims(), "{case}, cap {cap:?}, {dtype:?}");
            assert_eq!(kg.to_f64_vec().unwrap(), kc.to_f64_vec().unwrap(), "{case}, cap {cap:?}, {dtype:?}: kept mask");
        }
    }
}

/// Hand-built routes on `dev`: `experts` is [T, k_max], `counts` [T].
fn hand_routes(experts: &[u32], counts: &[u32], k_max: usize, dtype: DType, dev: &Device) -> ops::Routes {
    let t = counts.len();
    let slots = t * k_max;
    let used: Vec<f64> = (0..slots).map(|s| if ((s % k_max) as u32) < counts[s / k_max] { 1.0 } else { 0.0 }).collect();
    let weights: Vec<f64> = used.iter().enumerate().map(|(s, u)| u * (0.25 + 0.5 * (s % 3) as f64)).collect();
    ops::Routes {
        experts: Tensor::from_slice(experts, [t, k_max], dev).unwrap(),
        weights: Tensor::from_f64s(&weights, [t, k_max], dtype, dev).unwrap(),
        mask: Tensor::from_f64s(&used, [t, k_max], dtype, dev).unwrap(),
        counts: Tensor::from_slice(counts, [t], dev).unwrap(),
    }
}

#[test]
fn cuda_permutation_rejects_experts_out_of_range_like_the_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    // One used slot names expert 5 of 4; the second token's unused slot (9) is never looked at.
    let (experts, counts) = ([0u32, 1, 2, 5, 3, 9], [2u32, 2, 1]);
    for device in [Device::Cpu, dev] {
        let r = hand_routes(&experts, &counts, 2, DType::F32, &device);
        match ops::moe_permute(&r, 4, None) {
            Err(Error::IndexOutOfRange { op: "moe_permute", index: 5, size: 4 }) => {}
            other => panic!("{device:?}: expected expert 5 of 4 to be out of range, got {other:?}"),
        }
        // The same routes with the bad slot unused are fine.
        let ok = hand_routes(&experts, &[2, 1, 1], 2, DType::F32, &device);
        assert_eq!(u32s(&ops::moe_permute(&ok, 4, None).unwrap().offsets), [0, 1, 2, 3, 4], "{device:?}");
    }
}

#[test]
fn cuda_decode_with_an_expert_named_twice_per_token_matches_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(25);
    // Every one of 16 tokens names expert 0 in both slots: 32 entries for one expert, past the
    // decode kernels' 16 rows per pass.
    let (t, d, n, f) = (16, 8, 2, 8);
    let l = layer(t, d, n, f, DType::F32, &mut rng);
    let (experts, counts) = (vec![0u32; 2 * t], vec![2u32; t]);
    let on = |x: &Tensor| x.to_device(&dev).unwrap();
    let r = hand_routes(&experts, &counts, 2, DType::F32, &Device::Cpu);
    let perm = ops::moe_permute(&r, n, None).unwrap();
    let (y, _) = ops::moe_sparse_mlp(&l.x, &l.w1, &l.w2, &r.weights, &perm, MoePath::Grouped, false).unwrap();
    let rg = hand_routes(&experts, &counts, 2, DType::F32, &dev);
    let pg = ops::moe_permute(&rg, n, None).unwrap();
    for path in [MoePath::Decode, MoePath::Auto] {
        let (yg, _) = ops::moe_sparse_mlp(&on(&l.x), &on(&l.w1), &on(&l.w2), &rg.weights, &pg, path, false).unwrap();
        let e = rel_err(&yg, &y);
        assert!(e < tol(DType::F32), "{path:?}: {e}");
    }
}

struct Layer {
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    p: Tensor,
    /// The up projection of SwiGLU experts (GeLU experts ignore it).
    w3: Tensor,
}

fn layer(t: usize, d: usize, n: usize, f: usize, dtype: DType, rng: &mut Rng) -> Layer {
    let s = 1.0 / (d as f64).sqrt();
    let w = |rng: &mut Rng| Tensor::randn(vec![n * f, d], 0.0, s, dtype, &Device::Cpu, rng).unwrap();
    let (x, w1, w2, p) = (normal(&[t, d], dtype, rng), w(rng), w(rng), probs(t, n, dtype, rng));
    Layer { x, w1, w2, p, w3: w(rng) }
}

#[test]
fn cuda_sparse_layer_forward_and_backward_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(23);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        // The last shape routes T·K >= 128·E pairs, so its list products take the wide tile; the
        // others the narrow one (moe_sparse.cu); every shape is ragged against both. (11, 70, 4,
        // 38): d and f not multiples of 8, so bf16 / f16 take the exact (element-wise) products.
        for (t, d, n, f) in [(1, 72, 4, 40), (13, 136, 8, 72), (203, 200, 8, 136), (16, 264, 32, 24), (300, 136, 4, 72), (11, 70, 4, 38)] {
            let l = layer(t, d, n, f, dtype, &mut rng);
            let on = |x: &Tensor| x.to_device(&dev).unwrap();
            for (mode, cap) in [(RouteMode::TopK(2), None), (RouteMode::TopK(2), Some(t.div_ceil(n).max(1))), (RouteMode::Threshold { eps: 1.0, k_max: 4 }, None), (RouteMode::ThresholdK { eps: 1.0, k_max: 4 }, None)] {
                let r = ops::moe_route(&l.p, mode, false).unwrap();
                let perm = ops::moe_permute(&r, n, cap).unwrap();
                let (y, saved) = ops::moe_sparse_mlp(&l.x, &l.w1, &l.w2, &r.weights, &perm, MoePath::Grouped, true).unwrap();
                let saved = saved.unwrap();
                let rg = ops::moe_route(&on(&l.p), mode, false).unwrap();
                let pg = ops::moe_permute(&rg, n, cap).unwrap();
                let paths: &[MoePath] = if t <= ops::moe_sparse::DECODE_MAX_TOKENS { &[MoePath::Grouped, MoePath::Decode] } else { &[MoePath::Grouped] };
                for &path in paths {
                    let (yg, _) = ops::moe_sparse_mlp(&on(&l.x), &on(&l.w1), &on(&l.w2), &rg.weights, &pg, path, false).unwrap();
                    let e = rel_err(&yg, &y);
                    assert!(e < tol(dtype), "forward {dtype:?} {t}x{d}, {n}x{f}, {mode:?} cap {cap:?} {path:?}: {e}");
                }
                let dy = normal(&[t, d], dtype, &mut rng);
                let gc = ops::moe_sparse_mlp_backward(&dy, &l.x, &l.w1, &l.w2, &r.weights, &perm, &saved).unwrap();
                let (_, sg) = ops::moe_sparse_mlp(&on(&l.x), &on(&l.w1), &on(&l.w2), &rg.weights, &pg, MoePath::Grouped, true).unwrap();
                let gg = ops::moe_sparse_mlp_backward(&on(&dy), &on(&l.x), &on(&l.w1), &on(&l.w2), &rg.weights, &pg, &sg.unwrap()).unwrap();
                for (name, a, b) in [("dx", &gg.dx, &gc.dx), ("dw1", &gg.dw1, &gc.dw1), ("dw2", &gg.dw2, &gc.dw2), ("dweights", &gg.dweights, &gc.dweights)] {
                    let e = rel_err(a, b);
                    assert!(e < tol(dtype), "{name} {dtype:?} {t}x{d}, {n}x{f}, {mode:?} cap {cap:?}: {e}");
                }
            }
        }
    }
}

#[test]
fn cuda_sparse_with_every_expert_equals_the_dense_layer() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(24);
    let (t, d, n, f) = (77, 96, 6, 40);
    let l = layer(t, d, n, f, DType::BF16, &mut rng);
    let on = |x: &Tensor| x.to_device(&dev).unwrap();
    let r = ops::moe_route(&on(&l.p), RouteMode::TopK(n), false).unwrap();
    let perm = ops::moe_permute(&r, n, None).unwrap();
    let (y, _) = ops::moe_sparse_mlp(&on(&l.x), &on(&l.w1), &on(&l.w2), &r.weights, &perm, MoePath::Auto, false).unwrap();
    // Dense: Σ_e p_e·gelu(x·W1_eᵀ)·W2_e with every expert on every token, in f64 on the CPU.
    let c = |x: &Tensor| ops::cast(x, DType::F64).unwrap();
    let h = ops::unary(&ops::matmul_t(&c(&l.x), &c(&l.w1), false, true).unwrap(), engine::UnaryOp::Gelu).unwrap();
    let gated = ops::mul(&h.reshape([t, n, f]).unwrap(), &c(&l.p).reshape([t, n, 1]).unwrap()).unwrap().reshape([t, n * f]).unwrap();
    let dense = ops::matmul(&gated, &c(&l.w2)).unwrap();
    let e = rel_err(&y, &dense);
    assert!(e < 1e-2, "K = N sparse vs dense: {e}");
}

// ---- SwiGLU experts ----------------------------------------------------------------------------------

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
            let gate = ops::unary(&ops::matmul_t(&xt, &rows(&l.w1, e), false, true).unwrap(), engine::UnaryOp::Silu).unwrap();
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

/// Decode-sized batches take the hidden-slice path for SwiGLU experts too (gate and up slices in
/// one task): it matches the token-by-token evaluation in f64 with expert widths of one slice, of
/// several and of a ragged last slice, and in bf16 the general path (taken when the activations
/// are saved) to rounding.
#[test]
fn cpu_swiglu_at_decode_size_matches_a_token_by_token_evaluation() {
    let mut rng = Rng::new(42);
    for (t, d, n, f) in [(1, 40, 8, 64), (2, 40, 8, 150), (3, 33, 6, 200)] {
        let l = layer(t, d, n, f, DType::F64, &mut rng);
        for mode in [RouteMode::TopK(2), RouteMode::Threshold { eps: 0.9, k_max: 4 }] {
            let r = ops::moe_route(&l.p, mode, false).unwrap();
            let perm = ops::moe_permute(&r, n, None).unwrap();
            let (y, saved) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Auto, false).unwrap();
            assert!(saved.is_none(), "nothing is saved when not asked");
            let e = rel_err(&y, &token_reference(&l, &r, &perm, f));
            assert!(e < 1e-12, "{t}x{d}, {n} experts of {f}, {mode:?}: {e}");
            let cast = |v: &Tensor| ops::cast(v, DType::BF16).unwrap();
            let run = |save| ops::moe_sparse_swiglu(&cast(&l.x), &cast(&l.w1), &cast(&l.w3), &cast(&l.w2), &cast(&r.weights), &perm, MoePath::Auto, save).unwrap().0;
            let e = rel_err(&run(false), &run(true));
            assert!(e < 1e-2, "bf16 {t}x{d}, {n} experts of {f}, {mode:?}: {e}");
        }
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
    let (experts, counts) = (vec![1u32; 2 * t], vec![2u32; t]);
    let routes = |device: &Device| hand_routes(&experts, &counts, 2, DType::F32, device);
    let (r, rg) = (routes(&Device::Cpu), routes(&dev));
    let (perm, pg) = (ops::moe_permute(&r, n, None).unwrap(), ops::moe_permute(&rg, n, None).unwrap());
    let (y, _) = ops::moe_sparse_swiglu(&l.x, &l.w1, &l.w3, &l.w2, &r.weights, &perm, MoePath::Grouped, false).unwrap();
    for save in [false, true] {
        let (yg, _) = ops::moe_sparse_swiglu(&on(&l.x), &on(&l.w1), &on(&l.w3), &on(&l.w2), &rg.weights, &pg, MoePath::Decode, save).unwrap();
        let e = rel_err(&yg, &y);
        assert!(e < tol(DType::F32), "save {save}: {e}");
    }
}
