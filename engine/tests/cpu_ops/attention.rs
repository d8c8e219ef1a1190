//! Fused causal attention (forward and backward) against the textbook formulas written out in f64:
//! scores, masked softmax, weighted values, and the softmax backward. Shapes cover ragged lengths
//! across the 64-position tile edges, several head dims, GQA groupings (MoA's included) and packed
//! sequences of different lengths (an empty one too).

use engine::ops::{self, Sequences};
use engine::{DType, Rng};

use super::support::{check_tol, on_threads, randn, FLOATS};

/// Sizes of one case: heads, head dim, and the sequence lengths (packed back to back).
struct Case {
    q_heads: usize,
    kv_heads: usize,
    d: usize,
    lens: Vec<usize>,
}

impl Case {
    fn tokens(&self) -> usize {
        self.lens.iter().sum()
    }
    fn offsets(&self) -> Vec<usize> {
        std::iter::once(0)
            .chain(
                self.lens
                    .iter()
                    .scan(0, |s, &l| Some(*s + l).inspect(|&n| *s = n)),
            )
            .collect()
    }
}

/// Reference forward and backward: (out, lse, dq, dk, dv), all in the packed layout.
fn reference(
    c: &Case,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    d_out: &[f64],
    scale: f64,
) -> [Vec<f64>; 5] {
    let (hq, hkv, d) = (c.q_heads, c.kv_heads, c.d);
    let n = c.tokens();
    let (mut out, mut lse) = (vec![0.0; n * hq * d], vec![0.0; n * hq]);
    let (mut dq, mut dk, mut dv) = (
        vec![0.0; n * hq * d],
        vec![0.0; n * hkv * d],
        vec![0.0; n * hkv * d],
    );
    let offsets = c.offsets();
    for w in offsets.windows(2) {
        let (s0, len) = (w[0], w[1] - w[0]);
        for h in 0..hq {
            let kh = h / (hq / hkv);
            let qi = |i: usize, x: usize| ((s0 + i) * hq + h) * d + x;
            let ki = |j: usize, x: usize| ((s0 + j) * hkv + kh) * d + x;
            for i in 0..len {
                let scores: Vec<f64> = (0..=i)
                    .map(|j| scale * (0..d).map(|x| q[qi(i, x)] * k[ki(j, x)]).sum::<f64>())
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
                lse[(s0 + i) * hq + h] = max + sum.ln();
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp() / sum).collect();
                for x in 0..d {
                    out[qi(i, x)] = (0..=i).map(|j| p[j] * v[ki(j, x)]).sum();
                }
                // dP_j = dO·v_j; dS_j = P_j (dP_j − Σ_l P_l dP_l).
                let dp: Vec<f64> = (0..=i)
                    .map(|j| (0..d).map(|x| d_out[qi(i, x)] * v[ki(j, x)]).sum())
                    .collect();
                let dot: f64 = (0..=i).map(|j| p[j] * dp[j]).sum();
                for j in 0..=i {
                    let ds = p[j] * (dp[j] - dot);
                    for x in 0..d {
                        dq[qi(i, x)] += scale * ds * k[ki(j, x)];
                        dk[ki(j, x)] += scale * ds * q[qi(i, x)];
                        dv[ki(j, x)] += p[j] * d_out[qi(i, x)];
                    }
                }
            }
        }
    }
    [out, lse, dq, dk, dv]
}

fn run_case(rng: &mut Rng, c: &Case, dtype: DType) {
    let n = c.tokens();
    let (qdims, kdims) = ([n, c.q_heads, c.d], [n, c.kv_heads, c.d]);
    let (q, qv) = randn(rng, &qdims, 1.0, dtype);
    let (k, kv) = randn(rng, &kdims, 1.0, dtype);
    let (v, vv) = randn(rng, &kdims, 1.0, dtype);
    let (g, gv) = randn(rng, &qdims, 1.0, dtype);
    let scale = 1.0 / (c.d as f64).sqrt();
    let offsets = c.offsets();
    let seqs = Sequences::Packed(&offsets);
    let fwd = ops::causal_attention(&q, &k, &v, seqs, scale).unwrap();
    let grads = ops::causal_attention_backward(&g, &q, &k, &v, &fwd, seqs, scale).unwrap();
    let [out, lse, dq, dk, dv] = reference(c, &qv, &kv, &vv, &gv, scale);
    let what = |name: &str| {
        format!(
            "attention {name}: heads {}/{}, d {}, lens {:?}",
            c.q_heads, c.kv_heads, c.d, c.lens
        )
    };
    let tol = dtype.tolerance();
    check_tol(&what("out"), &fwd.out, &qdims, &out, dtype, tol);
    check_tol(
        &what("lse"),
        &fwd.lse,
        &[n, c.q_heads],
        &lse,
        ops::stats_dtype(dtype),
        tol,
    );
    // The gradients sum over up to T terms of products, each rounded once more than the output.
    check_tol(&what("dq"), &grads.dq, &qdims, &dq, dtype, 2.0 * tol);
    check_tol(&what("dk"), &grads.dk, &kdims, &dk, dtype, 2.0 * tol);
    check_tol(&what("dv"), &grads.dv, &kdims, &dv, dtype, 2.0 * tol);
}

#[test]
fn attention_matches_reference_across_shapes_and_dtypes() {
    let mut rng = Rng::new(12);
    let cases = [
        // Plain multi-head, ragged length inside one tile.
        Case {
            q_heads: 3,
            kv_heads: 3,
            d: 10,
            lens: vec![7],
        },
        // GQA 4:1 (MoA: 4 experts sharing one key/value head), two tiles with a ragged tail.
        Case {
            q_heads: 4,
            kv_heads: 1,
            d: 16,
            lens: vec![70],
        },
        // Packed sequences of different lengths, an empty one, tile edges at 64 and 128.
        Case {
            q_heads: 4,
            kv_heads: 2,
            d: 8,
            lens: vec![64, 0, 1, 129, 65],
        },
        // Three query heads per key/value head: the whole-row path's blocks of eight rows span
        // three positions (each row its own number of keys), and 45 · 3 rows leave a remainder.
        Case {
            q_heads: 6,
            kv_heads: 2,
            d: 16,
            lens: vec![45],
        },
        // Head dims at the whole-row path's limit (32) and just past it (33, the tile path).
        Case {
            q_heads: 2,
            kv_heads: 1,
            d: 32,
            lens: vec![100],
        },
        Case {
            q_heads: 2,
            kv_heads: 1,
            d: 33,
            lens: vec![100],
        },
        // Longer than the 1,024 keys a whole row may read: the sequence's first tiles take the
        // row path, its last ones the tile path.
        Case {
            q_heads: 2,
            kv_heads: 1,
            d: 4,
            lens: vec![1100],
        },
    ];
    for c in &cases {
        for dtype in FLOATS {
            run_case(&mut rng, c, dtype);
        }
    }
}

#[test]
fn attention_handles_the_papers_head_dims() {
    let mut rng = Rng::new(13);
    for d in [64, 96, 128] {
        run_case(
            &mut rng,
            &Case {
                q_heads: 2,
                kv_heads: 1,
                d,
                lens: vec![67, 5],
            },
            DType::F32,
        );
    }
}

/// The backward splits one head's key tiles over several tasks when sequences times heads are few
/// (here one sequence, one key/value head, five tiles); the split and the order partial dQ are
/// added in depend on the shape only, so any thread count gives the same bits.
#[test]
fn attention_backward_is_the_same_on_one_and_on_several_threads() {
    let mut rng = Rng::new(15);
    let (n, hq, hkv, d) = (300, 4, 1, 16);
    let (q, _) = randn(&mut rng, &[n, hq, d], 1.0, DType::F32);
    let (k, _) = randn(&mut rng, &[n, hkv, d], 1.0, DType::F32);
    let (v, _) = randn(&mut rng, &[n, hkv, d], 1.0, DType::F32);
    let (g, _) = randn(&mut rng, &[n, hq, d], 1.0, DType::F32);
    let offsets = [0, n];
    let run = || {
        let seqs = Sequences::Packed(&offsets);
        let fwd = ops::causal_attention(&q, &k, &v, seqs, 0.25).unwrap();
        let grads = ops::causal_attention_backward(&g, &q, &k, &v, &fwd, seqs, 0.25).unwrap();
        [&fwd.out, &fwd.lse, &grads.dq, &grads.dk, &grads.dv].map(|t| t.to_f64_vec().unwrap())
    };
    let one = on_threads(1, run);
    for threads in [2, 3] {
        assert!(on_threads(threads, run) == one, "{threads} threads differ from one");
    }
}

#[test]
fn attention_batched_form_equals_packed_form() {
    let mut rng = Rng::new(14);
    let (b, t, hq, hkv, d) = (3, 37, 4, 2, 8);
    let (q, _) = randn(&mut rng, &[b, t, hq, d], 1.0, DType::F64);
    let (k, _) = randn(&mut rng, &[b, t, hkv, d], 1.0, DType::F64);
    let (v, _) = randn(&mut rng, &[b, t, hkv, d], 1.0, DType::F64);
    let batched = ops::causal_attention(&q, &k, &v, Sequences::Batched, 0.3).unwrap();
    let offsets: Vec<usize> = (0..=b).map(|i| i * t).collect();
    let flat = |x: &engine::Tensor, h: usize| x.reshape([b * t, h, d]).unwrap();
    let packed = ops::causal_attention(
        &flat(&q, hq),
        &flat(&k, hkv),
        &flat(&v, hkv),
        Sequences::Packed(&offsets),
        0.3,
    )
    .unwrap();
    assert_eq!(batched.out.dims(), &[b, t, hq, d]);
    assert_eq!(batched.lse.dims(), &[b, t, hq]);
    assert_eq!(
        batched.out.to_f64_vec().unwrap(),
        packed.out.to_f64_vec().unwrap()
    );
    assert_eq!(
        batched.lse.to_f64_vec().unwrap(),
        packed.lse.to_f64_vec().unwrap()
    );
}

#[test]
fn attention_rejects_bad_arguments() {
    let mut rng = Rng::new(15);
    let (q, _) = randn(&mut rng, &[6, 4, 8], 1.0, DType::F32);
    let (k, _) = randn(&mut rng, &[6, 3, 8], 1.0, DType::F32);
    let (k2, _) = randn(&mut rng, &[6, 2, 8], 1.0, DType::F32);
    let (k64, _) = randn(&mut rng, &[6, 2, 8], 1.0, DType::F64);
    let ok = [0, 2, 6];
    // Query heads not a multiple of the key/value heads.
    assert!(ops::causal_attention(&q, &k, &k, Sequences::Packed(&ok), 1.0).is_err());
    // Mixed dtypes.
    assert!(ops::causal_attention(&q, &k2, &k64, Sequences::Packed(&ok), 1.0).is_err());
    // Offsets that do not end at the token count, decrease, or do not start at 0.
    for bad in [&[0, 2, 5][..], &[0, 4, 2, 6], &[1, 6], &[]] {
        assert!(
            ops::causal_attention(&q, &k2, &k2, Sequences::Packed(bad), 1.0).is_err(),
            "offsets {bad:?}"
        );
    }
    // Packed tensors given as batched, and a non-finite scale.
    assert!(ops::causal_attention(&q, &k2, &k2, Sequences::Batched, 1.0).is_err());
    assert!(ops::causal_attention(&q, &k2, &k2, Sequences::Packed(&ok), f64::NAN).is_err());
    // A backward whose lse does not belong to the inputs.
    let fwd = ops::causal_attention(&q, &k2, &k2, Sequences::Packed(&ok), 1.0).unwrap();
    let short = ops::AttentionOut {
        out: fwd.out.clone(),
        lse: fwd.lse.reshape([24]).unwrap(),
    };
    assert!(
        ops::causal_attention_backward(&q, &q, &k2, &k2, &short, Sequences::Packed(&ok), 1.0)
            .is_err()
    );
}
