//! Fused causal attention on CUDA (attention.cu) against the CPU op in f64: the forward (out and
//! the saved lse) and the backward (dq, dk, dv), for f32, f16 and bf16 inputs.
//!
//! Shapes are small enough for an emulated GPU but cover every form: ragged lengths that end
//! inside a key tile (32) or a query block, causal edges at those tile boundaries, every head-dim
//! variant (16 and 32 → the 32-wide kernels, 64, 96 → 128, 128), GQA groupings 1:1, 2:1, 4:1 and
//! MoA's 8:1 (four experts of two heads on one key/value head), packed sequences of different
//! lengths with an empty one, and one multi-tile shape (T = 150: five key tiles, two dk/dv blocks).
//! bf16 and f16 at head dims 64, 96 and 128 take the tensor-core forward (64-row query and key
//! tiles): T = 150 gives it three key tiles and five query tiles, [66, 9] at MoA's 8:1 a key tile of
//! two keys and query tiles of 8 positions x 8 heads, and G = 3 a tile with an idle row (21 x 3).
//! On compute capability 9.0 the forward is attention_sm90.cu (128-row query tiles, a three-stage
//! TMA ring of 64-key tiles, each tile's scores overlapped with the previous tile's P·V;
//! DSMOE_ATTENTION_PATH=sm80 selects the sm_80 forward instead): [200, 70] at 1:1 and d = 128
//! gives it two query tiles in the first sequence, four key tiles (the ring wraps), a first
//! warpgroup that skips the tile above its rows, key tiles that run into the next sequence and
//! past the end of the tensor; 130 at 3:1 and d = 96 two idle rows per tile (42 x 3) and the
//! 96-wide head (a half-used second column chunk); 450 at 1:1 and d = 64 eight key tiles in the
//! last query tile (every stage's barrier phases come back to parity 0).
//! The backward there is attention_sm90.cu's dq (the forward's tiles and ring, so the same cases
//! cover it) and attention_bwd_sm90.cu's dk/dv (128 keys per block, 64-row query tiles through a
//! two-stage TMA ring): [200, 70] gives it two key blocks in the first sequence, the
//! second ending inside its second warpgroup, four query tiles (the ring wraps twice), key and
//! query boxes that run into the next sequence and past the end of the tensor; 130 at 3:1 a
//! second block of two keys whose one query tile (21 positions x 3 heads) starts before them and
//! has an idle zero row; MoA's 8:1 at [66, 9] nine full tiles of 8 positions x 8 heads.
//! Every device allocation is poisoned with NaN bytes, so a row a kernel forgot fails. Relative
//! error by norm below the dtype's tolerance (f32 1e-5, f16 2e-3, bf16 1e-2). Without a GPU each
//! test prints one `skipped:` line.

mod gpu_support;

use engine::ops::{self, AttentionOut, Sequences};
use engine::{DType, Device, Rng, Tensor};
use gpu_support::{assert_close, assert_close_in_dtype, gpu, normal};

/// Query heads, key/value heads, head dim, sequence lengths (packed back to back).
struct Case {
    q_heads: usize,
    kv_heads: usize,
    d: usize,
    lens: &'static [usize],
}

const CASES: [Case; 14] = [
    Case { q_heads: 2, kv_heads: 2, d: 16, lens: &[33] },
    Case { q_heads: 4, kv_heads: 2, d: 32, lens: &[31, 0, 65] },
    Case { q_heads: 4, kv_heads: 1, d: 64, lens: &[40] },
    Case { q_heads: 8, kv_heads: 1, d: 16, lens: &[17, 3] },
    Case { q_heads: 2, kv_heads: 1, d: 96, lens: &[37] },
    Case { q_heads: 1, kv_heads: 1, d: 128, lens: &[35, 1] },
    Case { q_heads: 4, kv_heads: 2, d: 64, lens: &[150] },
    Case { q_heads: 8, kv_heads: 1, d: 128, lens: &[66, 9] },
    Case { q_heads: 6, kv_heads: 2, d: 64, lens: &[20] },
    Case { q_heads: 2, kv_heads: 2, d: 128, lens: &[200, 70] },
    Case { q_heads: 3, kv_heads: 1, d: 96, lens: &[130] },
    Case { q_heads: 1, kv_heads: 1, d: 64, lens: &[450] },
    // Head dims the tensor cores don't take (48, 80): the CUDA-core kernels' d64 and d128 widths
    // in every dtype.
    Case { q_heads: 2, kv_heads: 1, d: 48, lens: &[21] },
    Case { q_heads: 2, kv_heads: 1, d: 80, lens: &[19, 4] },
];

fn offsets(lens: &[usize]) -> Vec<usize> {
    let mut o = vec![0];
    for l in lens {
        o.push(o.last().unwrap() + l);
    }
    o
}

fn on(dev: &Device, t: &Tensor) -> Tensor {
    t.to_device(dev).unwrap()
}

fn wide(t: &Tensor) -> Tensor {
    ops::cast(t, DType::F64).unwrap()
}

fn check_case(dev: &Device, dtype: DType, c: &Case, rng: &mut Rng) {
    let what = |name: &str| format!("causal_attention {name}: heads {}/{}, d {}, lens {:?}", c.q_heads, c.kv_heads, c.d, c.lens);
    let n: usize = c.lens.iter().sum();
    let (q, k, v, g) = (normal(&[n, c.q_heads, c.d], dtype, rng), normal(&[n, c.kv_heads, c.d], dtype, rng), normal(&[n, c.kv_heads, c.d], dtype, rng), normal(&[n, c.q_heads, c.d], dtype, rng));
    let offs = offsets(c.lens);
    let seqs = Sequences::Packed(&offs);
    let scale = 1.0 / (c.d as f64).sqrt();
    let fwd = ops::causal_attention(&on(dev, &q), &on(dev, &k), &on(dev, &v), seqs, scale).unwrap_or_else(|e| panic!("{}: {e}", what("forward")));
    let reference = ops::causal_attention(&wide(&q), &wide(&k), &wide(&v), seqs, scale).unwrap();
    assert_eq!(fwd.out.device(), *dev, "output left the device");
    assert_close_in_dtype(&what("out"), dtype, &fwd.out, &reference.out);
    assert_eq!(fwd.lse.dtype(), DType::F32, "lse is f32 statistics");
    assert_close(&what("lse"), dtype, &fwd.lse, &reference.lse);
    let grads = ops::causal_attention_backward(&on(dev, &g), &on(dev, &q), &on(dev, &k), &on(dev, &v), &fwd, seqs, scale).unwrap_or_else(|e| panic!("{}: {e}", what("backward")));
    // The reference backward reads the GPU's own forward output and lse, widened, so the check
    // isolates the backward kernels.
    let saved = AttentionOut { out: wide(&fwd.out.to_device(&Device::Cpu).unwrap()), lse: wide(&fwd.lse.to_device(&Device::Cpu).unwrap()) };
    let ref_grads = ops::causal_attention_backward(&wide(&g), &wide(&q), &wide(&k), &wide(&v), &saved, seqs, scale).unwrap();
    assert_close_in_dtype(&what("dq"), dtype, &grads.dq, &ref_grads.dq);
    assert_close_in_dtype(&what("dk"), dtype, &grads.dk, &ref_grads.dk);
    assert_close_in_dtype(&what("dv"), dtype, &grads.dv, &ref_grads.dv);
}

#[test]
fn attention_matches_the_cpu_for_every_form_and_dtype() {
    let Some((dev, _gpu)) = gpu() else { return };
    let mut rng = Rng::new(120);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        for c in &CASES {
            check_case(&dev, dtype, c, &mut rng);
        }
    }
}

#[test]
fn attention_backward_is_deterministic() {
    let Some((dev, _gpu)) = gpu() else { return };
    let mut rng = Rng::new(121);
    let c = &CASES[6];
    let n: usize = c.lens.iter().sum();
    let t = |h: usize, rng: &mut Rng| on(&dev, &normal(&[n, h, c.d], DType::BF16, rng));
    let (q, k, v, g) = (t(c.q_heads, &mut rng), t(c.kv_heads, &mut rng), t(c.kv_heads, &mut rng), t(c.q_heads, &mut rng));
    let seqs = Sequences::Batched;
    let (q, k, v, g) = (q.reshape([1, n, c.q_heads, c.d]).unwrap(), k.reshape([1, n, c.kv_heads, c.d]).unwrap(), v.reshape([1, n, c.kv_heads, c.d]).unwrap(), g.reshape([1, n, c.q_heads, c.d]).unwrap());
    let fwd = ops::causal_attention(&q, &k, &v, seqs, 0.125).unwrap();
    let bits = |x: &Tensor| x.to_f64_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    let first = ops::causal_attention_backward(&g, &q, &k, &v, &fwd, seqs, 0.125).unwrap();
    let second = ops::causal_attention_backward(&g, &q, &k, &v, &fwd, seqs, 0.125).unwrap();
    for (a, b) in [(&first.dq, &second.dq), (&first.dk, &second.dk), (&first.dv, &second.dv)] {
        assert_eq!(bits(a), bits(b), "two backward runs differ");
    }
}
