//! Every backend op on CUDA against the CPU reference, in f32, bf16 and f16 (and u32 where the op
//! takes indices), plus the device runtime itself (transfers, allocator, events).
//!
//! Method, for each op: draw fresh seeded random inputs in the dtype under test with ragged sizes
//! (never multiples of a tile or a warp), run the op on CUDA, and run it on the CPU on the same values
//! cast to f64. The CUDA result, widened to f64, must be within the dtype's relative error by norm,
//! ‖gpu − ref‖ / ‖ref‖ < 1e-5 (f32), 2e-3 (f16), 1e-2 (bf16); NaN never passes. Index outputs must
//! match exactly. Every device allocation is poisoned with 0xFF bytes (NaN; u32::MAX), so an output
//! element a kernel forgot to write fails the comparison.
//!
//! Without a GPU every test prints `skipped: no CUDA device (<reason>)` and passes. GPU tests hold
//! one lock, so the allocator counters one test reads are not moved by another.

mod gpu_support;

use engine::backend::{AdamW, BinaryOp, ReduceOp, ScalarOp, UnaryOp};
use engine::cuda::{self, CudaStorage};
use engine::{bf16, f16, ops, CpuStorage, DType, Device, Error, Rng, Tensor};
use gpu_support::{assert_close, gpu, indices, normal, uniform};

const FLOATS: [DType; 3] = [DType::F32, DType::BF16, DType::F16];

// ---- comparison -----------------------------------------------------------------------------------

fn assert_same_indices(what: &str, gpu: &Tensor, reference: &Tensor) {
    assert_eq!(gpu.dtype(), DType::U32, "{what}: indices must be u32");
    assert_eq!(gpu.shape(), reference.shape(), "{what}: shapes differ");
    let (g, r) = (gpu.to_vec::<u32>().unwrap(), reference.to_vec::<u32>().unwrap());
    if let Some(i) = (0..g.len()).find(|&i| g[i] != r[i]) {
        panic!("{what}: index {i} differs: gpu {} vs cpu {}", g[i], r[i]);
    }
}

/// The reference copy of an input: floats widened to f64 (exact), indices as they are.
fn reference_input(t: &Tensor) -> Tensor {
    if t.dtype().is_float() {
        ops::cast(t, DType::F64).unwrap()
    } else {
        t.clone()
    }
}

/// Runs `f` on CUDA copies of `inputs` and on their f64 CPU copies, and compares: floats by norm
/// at the tolerance of `dtype`, u32 outputs exactly.
fn check(what: &str, dtype: DType, dev: &Device, inputs: &[&Tensor], f: impl Fn(&[Tensor]) -> engine::Result<Tensor>) {
    let on_gpu: Vec<Tensor> = inputs.iter().map(|t| t.to_device(dev).unwrap()).collect();
    let out = f(&on_gpu).unwrap_or_else(|e| panic!("{what} ({dtype}) on CUDA: {e}"));
    assert_eq!(out.device(), *dev, "{what}: output left the device");
    let on_cpu: Vec<Tensor> = inputs.iter().map(|t| reference_input(t)).collect();
    let reference = f(&on_cpu).unwrap_or_else(|e| panic!("{what} reference on the CPU (f64): {e}"));
    if out.dtype() == DType::U32 {
        assert_same_indices(what, &out, &reference);
    } else {
        assert_eq!(out.dtype(), dtype, "{what}: output dtype");
        assert_close(what, dtype, &out, &reference);
    }
}

// ---- element-wise ---------------------------------------------------------------------------------

#[test]
fn unary_ops_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    use UnaryOp::*;
    for dtype in FLOATS {
        let mut rng = Rng::new(1);
        // 16-byte packs plus a ragged tail, and a size past the grid cap (grid-stride loop).
        for shape in [[37usize, 29], [1, 1_000_003]] {
            let any = normal(&shape, dtype, &mut rng);
            let positive = uniform(&shape, 0.1, 3.0, dtype, &mut rng);
            for op in [Neg, Exp, Sqr, Abs, Tanh, Relu, Gelu, Silu, Sigmoid] {
                check(&format!("unary {op:?} {shape:?}"), dtype, &dev, &[&any], |t| ops::unary(&t[0], op));
            }
            for op in [Log, Sqrt, Recip] {
                check(&format!("unary {op:?} {shape:?}"), dtype, &dev, &[&positive], |t| ops::unary(&t[0], op));
            }
        }
    }
}

#[test]
fn scalar_ops_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(2);
        let x = normal(&[3, 5, 67], dtype, &mut rng);
        let positive = uniform(&[3, 5, 67], 0.2, 2.0, dtype, &mut rng);
        for (op, s) in [(ScalarOp::Add, 0.75), (ScalarOp::Mul, -1.5), (ScalarOp::Max, 0.1), (ScalarOp::Gt, 0.25)] {
            check(&format!("scalar {op:?}"), dtype, &dev, &[&x], |t| ops::scalar(&t[0], op, s));
        }
        check("scalar Pow", dtype, &dev, &[&positive], |t| ops::scalar(&t[0], ScalarOp::Pow, 1.7));
    }
}

#[test]
fn binary_ops_match_cpu_with_broadcasting() {
    let Some((dev, _g)) = gpu() else { return };
    use BinaryOp::*;
    // (a, b): same shape (contiguous path), bias add, both sides broadcast, scalar, rank 5.
    let shapes: [(&[usize], &[usize]); 6] = [
        (&[7, 33], &[7, 33]),
        (&[5, 9, 31], &[31]),
        (&[6, 1, 13], &[1, 5, 1]),
        (&[4, 1], &[1, 19]),
        (&[11, 17], &[1]),
        (&[2, 3, 1, 5, 7], &[3, 4, 1, 7]),
    ];
    for dtype in FLOATS {
        let mut rng = Rng::new(3);
        for (sa, sb) in shapes {
            let a = normal(sa, dtype, &mut rng);
            let b = normal(sb, dtype, &mut rng);
            let b_nonzero = uniform(sb, 0.5, 2.0, dtype, &mut rng);
            for op in [Add, Sub, Mul, Maximum, Minimum, GeluGrad, SiluGrad] {
                check(&format!("binary {op:?} {sa:?} {sb:?}"), dtype, &dev, &[&a, &b], |t| ops::binary(&t[0], &t[1], op));
            }
            check(&format!("binary Div {sa:?} {sb:?}"), dtype, &dev, &[&a, &b_nonzero], |t| ops::binary(&t[0], &t[1], Div));
        }
    }
}

#[test]
fn empty_tensors_pass_through() {
    let Some((dev, _g)) = gpu() else { return };
    let x = Tensor::zeros([0, 5], DType::F32, &dev).unwrap();
    let y = ops::unary(&x, UnaryOp::Exp).unwrap();
    assert_eq!(y.dims(), &[0, 5]);
    assert!(y.to_f64_vec().unwrap().is_empty());
    let s = ops::sum(&x, 0, false).unwrap();
    assert_eq!(s.to_f64_vec().unwrap(), vec![0.0; 5], "a sum over an empty axis is 0");
}

// ---- reductions, softmax, top-k ---------------------------------------------------------------------

#[test]
fn reductions_match_cpu_on_every_axis() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(4);
        // dims 0 / 1 use the strided-column kernel, the last dim the row kernel; 2500 takes the
        // block-per-row path.
        for shape in [vec![7usize, 301, 5], vec![3, 2500]] {
            let x = normal(&shape, dtype, &mut rng);
            for dim in 0..shape.len() as isize {
                for op in [ReduceOp::Sum, ReduceOp::Mean, ReduceOp::Max, ReduceOp::Min] {
                    check(&format!("reduce {op:?} dim {dim} of {shape:?}"), dtype, &dev, &[&x], |t| ops::reduce(&t[0], dim, op, false));
                }
                check(&format!("argmax dim {dim} of {shape:?}"), dtype, &dev, &[&x], |t| ops::argmax(&t[0], dim, true));
            }
        }
        // Many equal values: argmax must take the first, like the CPU.
        let ties = Tensor::from_f64s(&(0..6 * 70).map(|i| ((i * 7) % 5) as f64).collect::<Vec<_>>(), [6, 70], dtype, &Device::Cpu).unwrap();
        check("argmax with ties", dtype, &dev, &[&ties], |t| ops::argmax(&t[0], 1, false));
        check("argmax with ties, dim 0", dtype, &dev, &[&ties], |t| ops::argmax(&t[0], 0, false));
    }
}

#[test]
fn softmax_and_log_softmax_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(5);
        for shape in [[13usize, 5], [9, 1000], [3, 3001]] {
            let x = Tensor::randn(shape.to_vec(), 0.0, 3.0, dtype, &Device::Cpu, &mut rng).unwrap();
            check(&format!("softmax {shape:?}"), dtype, &dev, &[&x], |t| ops::softmax(&t[0]));
            check(&format!("log_softmax {shape:?}"), dtype, &dev, &[&x], |t| ops::log_softmax(&t[0]));
        }
    }
}

#[test]
fn cross_entropy_and_its_gradient_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(41);
        // Warp rows (short and long) and block rows, with ragged sizes.
        for [rows, vocab] in [[13usize, 5], [9, 1000], [3, 3001]] {
            let x = Tensor::randn(vec![rows, vocab], 0.0, 3.0, dtype, &Device::Cpu, &mut rng).unwrap();
            let t = indices(&[rows], vocab, &mut rng);
            let g = normal(&[rows], dtype, &mut rng);
            check(&format!("cross_entropy {rows}x{vocab}"), dtype, &dev, &[&x, &t], |v| ops::cross_entropy(&v[0], &v[1]));
            check(&format!("cross_entropy backward {rows}x{vocab}"), dtype, &dev, &[&x, &t, &g], |v| ops::cross_entropy_backward(&v[0], &v[1], &v[2]));
        }
    }
}

#[test]
fn rms_norm_with_residual_and_backward_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(42);
        // Warp rows, block rows, and many rows for the weight-gradient kernel's row stride.
        for [rows, cols] in [[13usize, 5], [9, 1000], [3, 3001], [301, 67]] {
            let x = normal(&[rows, cols], dtype, &mut rng);
            let r = normal(&[rows, cols], dtype, &mut rng);
            let w = normal(&[cols], dtype, &mut rng);
            let dy = normal(&[rows, cols], dtype, &mut rng);
            let what = |part: &str| format!("rms_norm {part} {rows}x{cols}");
            check(&what("y"), dtype, &dev, &[&x, &w], |v| Ok(ops::rms_norm(&v[0], None, &v[1], 1e-5)?.y));
            check(&what("y with residual"), dtype, &dev, &[&x, &r, &w], |v| Ok(ops::rms_norm(&v[0], Some(&v[1]), &v[2], 1e-5)?.y));
            check(&what("sum"), dtype, &dev, &[&x, &r, &w], |v| Ok(ops::rms_norm(&v[0], Some(&v[1]), &v[2], 1e-5)?.sum.expect("a sum")));
            check(&what("dh"), dtype, &dev, &[&dy, &x, &w], |v| Ok(ops::rms_norm_backward(&v[0], &v[1], &v[2], 1e-5)?.0));
            check(&what("dw"), dtype, &dev, &[&dy, &x, &w], |v| Ok(ops::rms_norm_backward(&v[0], &v[1], &v[2], 1e-5)?.1));
        }
    }
}

#[test]
fn topk_matches_cpu_including_ties() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(6);
        // Values on a coarse grid so that ties are common: the lower index must win.
        let coarse = |shape: [usize; 2], rng: &mut Rng| {
            let v: Vec<f64> = (0..shape[0] * shape[1]).map(|_| (rng.below(40) as f64 - 20.0) * 0.25).collect();
            Tensor::from_f64s(&v, shape.to_vec(), dtype, &Device::Cpu).unwrap()
        };
        for (shape, k) in [([11usize, 100], 7), ([5, 2000], 5), ([4, 64], 64), ([3, 9], 1)] {
            for x in [normal(&shape, dtype, &mut rng), coarse(shape, &mut rng)] {
                let (gv, gi) = ops::topk(&x.to_device(&dev).unwrap(), k).unwrap();
                let (rv, ri) = ops::topk(&reference_input(&x), k).unwrap();
                assert_same_indices(&format!("topk indices {shape:?} k={k}"), &gi, &ri);
                assert_close(&format!("topk values {shape:?} k={k}"), dtype, &gv, &rv);
            }
        }
    }
}

// ---- indexing ---------------------------------------------------------------------------------------

#[test]
fn gathers_and_scatters_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(7);
        // Row lengths that move as 2-, 4- and 16-byte words.
        for row in [37usize, 64, 6] {
            let src = normal(&[50, row], dtype, &mut rng);
            let idx = indices(&[23], 50, &mut rng);
            check(&format!("index_select row {row}"), dtype, &dev, &[&src, &idx], |t| ops::index_select(&t[0], &t[1]));
        }
        // Many rows hit the same output row; output rows 7 and 8 are hit by none (must be 0).
        let src = normal(&[40, 33], dtype, &mut rng);
        let idx = indices(&[40], 7, &mut rng);
        check("scatter_add_rows", dtype, &dev, &[&src, &idx], |t| ops::scatter_add_rows(&t[0], &t[1], 9));

        let src = normal(&[13, 50], dtype, &mut rng);
        let idx = indices(&[13, 4], 50, &mut rng);
        check("gather_last", dtype, &dev, &[&src, &idx], |t| ops::gather_last(&t[0], &t[1]));

        let src = normal(&[13, 6], dtype, &mut rng);
        let idx = indices(&[13, 6], 5, &mut rng);
        check("scatter_add_last", dtype, &dev, &[&src, &idx], |t| ops::scatter_add_last(&t[0], &t[1], 9));
    }
    // 8-byte elements move as 8-byte words.
    let mut rng = Rng::new(11);
    let src = normal(&[13, 50], DType::F64, &mut rng);
    let idx = indices(&[13, 4], 50, &mut rng);
    check("gather_last f64", DType::F64, &dev, &[&src, &idx], |t| ops::gather_last(&t[0], &t[1]));
    // Row moves are dtype-agnostic: u32 rows too.
    let mut rng = Rng::new(8);
    let src = indices(&[20, 11], 1000, &mut rng);
    let idx = indices(&[9], 20, &mut rng);
    check("index_select u32", DType::U32, &dev, &[&src, &idx], |t| ops::index_select(&t[0], &t[1]));
}

// ---- layout -----------------------------------------------------------------------------------------

#[test]
fn casts_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(9);
    let all = [DType::F32, DType::F64, DType::BF16, DType::F16, DType::U32];
    for from in all {
        // Non-negative, so float -> u32 truncation is defined; beyond f16's and bf16's exact integers.
        let x = uniform(&[17, 29], 0.0, 3000.0, from, &mut rng);
        for to in all.into_iter().filter(|&t| t != from) {
            let g = ops::cast(&x.to_device(&dev).unwrap(), to).unwrap();
            let r = ops::cast(&x, to).unwrap();
            assert_eq!(g.dtype(), to);
            if to == DType::U32 {
                assert_same_indices(&format!("cast {from} -> {to}"), &g, &r);
            } else {
                // Both round to nearest even; the norm check allows the f64 -> f32 -> 16-bit path.
                assert_close(&format!("cast {from} -> {to}"), to, &g, &r);
            }
        }
    }
}

#[test]
fn concat_narrow_permute_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in [DType::F32, DType::F64, DType::BF16, DType::F16, DType::U32] {
        let mut rng = Rng::new(10);
        let make = |shape: &[usize], rng: &mut Rng| if dtype == DType::U32 { indices(shape, 1 << 20, rng) } else { normal(shape, dtype, rng) };
        let (a, b, c) = (make(&[3, 5, 7], &mut rng), make(&[3, 2, 7], &mut rng), make(&[3, 8, 7], &mut rng));
        check("concat dim 1", dtype, &dev, &[&a, &b, &c], |t| ops::concat(&[&t[0], &t[1], &t[2]], 1));
        let (a, b) = (make(&[4, 6, 8], &mut rng), make(&[4, 6, 16], &mut rng));
        check("concat dim 2 (16-byte rows)", dtype, &dev, &[&a, &b], |t| ops::concat(&[&t[0], &t[1]], 2));
        check("concat dim 0", dtype, &dev, &[&a, &a], |t| ops::concat(&[&t[0], &t[1]], 0));

        let x = make(&[6, 10, 3], &mut rng);
        check("narrow dim 1", dtype, &dev, &[&x], |t| ops::narrow(&t[0], 1, 3, 5));
        check("narrow dim 2", dtype, &dev, &[&x], |t| ops::narrow(&t[0], 2, 1, 1));

        let x = make(&[3, 4, 5, 6], &mut rng);
        for perm in [[0usize, 2, 1, 3], [3, 2, 1, 0], [1, 0, 2, 3], [0, 1, 3, 2], [0, 1, 2, 3]] {
            check(&format!("permute {perm:?}"), dtype, &dev, &[&x], |t| ops::permute(&t[0], &perm));
        }
        let x = make(&[5, 1, 7], &mut rng);
        check("permute moving a unit axis", dtype, &dev, &[&x], |t| ops::permute(&t[0], &[1, 0, 2]));
    }
}

/// The 64-bit index variants of the strided kernels (binary_bcast64_*, copy_strided64_*), which the
/// engine picks past 2^31 elements or offsets, forced at small sizes: same results as the CPU.
#[test]
fn wide_index_kernels_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    struct Narrow;
    impl Drop for Narrow {
        fn drop(&mut self) {
            engine::cuda::force_wide_indices(false);
        }
    }
    engine::cuda::force_wide_indices(true);
    let _narrow_again = Narrow;
    let mut rng = Rng::new(12);
    for dtype in FLOATS {
        for (sa, sb) in [(&[5usize, 9, 31][..], &[31usize][..]), (&[6, 1, 13], &[1, 5, 1])] {
            let (a, b) = (normal(sa, dtype, &mut rng), normal(sb, dtype, &mut rng));
            check(&format!("binary Add (64-bit indices) {sa:?} {sb:?}"), dtype, &dev, &[&a, &b], |t| ops::binary(&t[0], &t[1], BinaryOp::Add));
        }
    }
    // 2-, 4- and 8-byte words.
    for dtype in [DType::BF16, DType::F32, DType::F64] {
        let x = normal(&[3, 4, 5, 6], dtype, &mut rng);
        for perm in [[0usize, 2, 1, 3], [3, 2, 1, 0]] {
            check(&format!("permute {perm:?} (64-bit indices)"), dtype, &dev, &[&x], |t| ops::permute(&t[0], &perm));
        }
    }
}

// ---- model ops ----------------------------------------------------------------------------------------

#[test]
fn rope_matches_cpu_both_directions() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(11);
        let (b, t, h, d) = (2, 7, 3, 10);
        let x = normal(&[b, t, h, d], dtype, &mut rng);
        let angles: Vec<f64> = (0..t * d / 2).map(|_| rng.uniform() * 6.0).collect();
        let cos = Tensor::from_f64s(&angles.iter().map(|a| a.cos()).collect::<Vec<_>>(), [t, d / 2], dtype, &Device::Cpu).unwrap();
        let sin = Tensor::from_f64s(&angles.iter().map(|a| a.sin()).collect::<Vec<_>>(), [t, d / 2], dtype, &Device::Cpu).unwrap();
        for inverse in [false, true] {
            check(&format!("rope inverse={inverse}"), dtype, &dev, &[&x, &cos, &sin], |v| ops::rope(&v[0], &v[1], &v[2], inverse));
        }
    }
}

#[test]
fn paged_attention_and_cache_write_match_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(13);
        // 3 sequences of ragged lengths over shuffled blocks of 5 positions; GQA group 3.
        let (q_heads, kv_heads, dh, bs, blocks) = (6, 2, 12, 5, 11);
        let table: Vec<u32> = vec![4, 9, 1, 0, 7, 2, 10, 3, 5, 6, 8, 0];
        let table = Tensor::from_slice(&table, [3, 4], &Device::Cpu).unwrap();
        let lens = Tensor::from_slice(&[17u32, 1, 20], [3], &Device::Cpu).unwrap();
        let q = normal(&[3, q_heads, dh], dtype, &mut rng);
        let k = normal(&[blocks, bs, kv_heads, dh], dtype, &mut rng);
        let v = normal(&[blocks, bs, kv_heads, dh], dtype, &mut rng);
        check("paged_attention", dtype, &dev, &[&q, &k, &v, &table, &lens], |t| ops::paged_attention(&t[0], &t[1], &t[2], &t[3], &t[4], 0.3));
        let rows = normal(&[4, kv_heads, dh], dtype, &mut rng);
        let slots = Tensor::from_slice(&[54u32, 0, 13, 31], [4], &Device::Cpu).unwrap();
        check("write_rows", dtype, &dev, &[&k, &rows, &slots], |t| {
            let mut cache = t[0].clone();
            ops::write_rows(&mut cache, &t[1], &t[2])?;
            Ok(cache)
        });
    }
}

#[test]
fn adamw_matches_cpu() {
    let Some((dev, _g)) = gpu() else { return };
    let mut rng = Rng::new(12);
    let shape = [37usize, 41]; // 1517: packs of 4 plus a tail
    let p = normal(&shape, DType::F32, &mut rng);
    let g = normal(&shape, DType::F32, &mut rng);
    let m = Tensor::randn(shape.to_vec(), 0.0, 0.1, DType::F32, &Device::Cpu, &mut rng).unwrap();
    let v = uniform(&shape, 0.0, 0.05, DType::F32, &mut rng);
    let hp = AdamW { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, step: 7 };
    let run = |device: &Device| {
        let (mut p, g, mut m, mut v) = (p.to_device(device).unwrap(), g.to_device(device).unwrap(), m.to_device(device).unwrap(), v.to_device(device).unwrap());
        ops::adamw_step(&mut p, &g, &mut m, &mut v, &hp).unwrap_or_else(|e| panic!("adamw on {device}: {e}"));
        [p, m, v]
    };
    let (gpu_out, cpu_out) = (run(&dev), run(&Device::Cpu));
    for (name, (a, b)) in ["param", "m", "v"].iter().zip(gpu_out.iter().zip(&cpu_out)) {
        assert_close(&format!("adamw {name}"), DType::F32, a, b);
    }
}

#[test]
fn matmul_matches_cpu_for_every_layout() {
    let Some((dev, _g)) = gpu() else { return };
    for dtype in FLOATS {
        let mut rng = Rng::new(13);
        for (m, n, k) in [(65usize, 70usize, 33usize), (1, 129, 200), (130, 1, 7), (3, 5, 1)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a = normal(&if ta { [k, m] } else { [m, k] }, dtype, &mut rng);
                let b = normal(&if tb { [n, k] } else { [k, n] }, dtype, &mut rng);
                check(&format!("matmul {m}x{n}x{k} ta={ta} tb={tb}"), dtype, &dev, &[&a, &b], |t| ops::matmul_t(&t[0], &t[1], ta, tb));
            }
        }
        // Batched: per-batch A, and a shared A (batch stride 0); a rank-3 A against a rank-2 B.
        let (batch, m, n, k) = (3, 19, 23, 71);
        let a3 = normal(&[batch, m, k], dtype, &mut rng);
        let a2 = normal(&[m, k], dtype, &mut rng);
        let b3 = normal(&[batch, n, k], dtype, &mut rng);
        let b2 = normal(&[k, n], dtype, &mut rng);
        check("batched matmul", dtype, &dev, &[&a3, &b3], |t| ops::matmul_t(&t[0], &t[1], false, true));
        check("batched matmul, shared a", dtype, &dev, &[&a2, &b3], |t| ops::matmul_t(&t[0], &t[1], false, true));
        check("rank-3 a times rank-2 b", dtype, &dev, &[&a3, &b2], |t| ops::matmul(&t[0], &t[1]));
    }
}

// ---- runtime ------------------------------------------------------------------------------------------

#[test]
fn host_round_trip_preserves_every_dtype() {
    let Some((dev, _g)) = gpu() else { return };
    let Device::Cuda(ordinal) = dev else { unreachable!() };
    let host = [
        CpuStorage::F32(vec![1.5, -2.25, f32::MAX]),
        CpuStorage::F64(vec![std::f64::consts::PI, -0.0]),
        CpuStorage::BF16(vec![bf16::from_f32(0.3), bf16::NEG_INFINITY]),
        CpuStorage::F16(vec![f16::from_f32(-7.5)]),
        CpuStorage::U32(vec![0, 7, u32::MAX]),
    ];
    for h in &host {
        let d = CudaStorage::from_host(ordinal, h).unwrap();
        assert_eq!(d.to_host().unwrap().as_bytes(), h.as_bytes(), "{:?}", h.dtype());
        assert_eq!(d.try_clone().unwrap().to_host().unwrap().as_bytes(), h.as_bytes(), "clone of {:?}", h.dtype());
    }
}

#[test]
fn allocator_reuses_blocks_and_counts() {
    let Some((dev, _g)) = gpu() else { return };
    let Device::Cuda(ordinal) = dev else { unreachable!() };
    cuda::empty_cache(ordinal).unwrap();
    let before = cuda::memory_stats(ordinal).unwrap();
    assert_eq!(before.reserved, before.in_use, "an emptied cache holds only live buffers");

    let a = CudaStorage::zeros_on(ordinal, DType::F32, 1000).unwrap(); // 4000 B -> the 4096 B class
    let during = cuda::memory_stats(ordinal).unwrap();
    assert_eq!(during.in_use, before.in_use + 4096);
    assert_eq!(during.driver_allocations, before.driver_allocations + 1);
    assert!(during.peak_in_use >= during.in_use);
    drop(a);
    let after_drop = cuda::memory_stats(ordinal).unwrap();
    assert_eq!(after_drop.in_use, before.in_use, "a dropped buffer is no longer in use");
    assert_eq!(after_drop.reserved, during.reserved, "but stays reserved in the cache");

    // Same size class (3999 B rounds to 4096 B): served from the cache, no driver call.
    let b = CudaStorage::zeros_on(ordinal, DType::U32, 999).unwrap();
    let reuse = cuda::memory_stats(ordinal).unwrap();
    assert_eq!(reuse.driver_allocations, during.driver_allocations, "the freed block must be reused");
    assert_eq!(reuse.cache_hits, during.cache_hits + 1);
    assert_eq!(b.to_host().unwrap().as_bytes(), vec![0u8; 3996], "zeros_on zeroes a recycled block");
    drop(b);

    cuda::empty_cache(ordinal).unwrap();
    let emptied = cuda::memory_stats(ordinal).unwrap();
    assert_eq!(emptied.reserved, emptied.in_use);
}

#[test]
fn out_of_memory_is_an_error_with_the_numbers() {
    let Some((dev, _g)) = gpu() else { return };
    let Device::Cuda(ordinal) = dev else { unreachable!() };
    match CudaStorage::zeros_on(ordinal, DType::F32, 1 << 50) {
        Err(Error::OutOfMemory { requested, .. }) => assert_eq!(requested, 4 << 50),
        other => panic!("expected OutOfMemory for a 4 PiB request, got {other:?}"),
    }
    // The device still works afterwards.
    let x = Tensor::ones([3], DType::F32, &dev).unwrap();
    assert_eq!(x.to_f64_vec().unwrap(), vec![1.0; 3]);
}

#[test]
fn events_time_queued_work() {
    let Some((dev, _g)) = gpu() else { return };
    let Device::Cuda(ordinal) = dev else { unreachable!() };
    let x = Tensor::ones([1 << 20], DType::F32, &dev).unwrap();
    let (start, end) = (cuda::Event::new(ordinal).unwrap(), cuda::Event::new(ordinal).unwrap());
    start.record().unwrap();
    let y = ops::unary(&x, UnaryOp::Exp).unwrap();
    end.record().unwrap();
    end.synchronize().unwrap();
    let ms = start.elapsed_ms(&end).unwrap();
    assert!(ms.is_finite() && ms >= 0.0, "elapsed {ms} ms");
    let (sum, expected) = (ops::sum_all(&y).unwrap().to_scalar().unwrap(), (1 << 20) as f64 * std::f64::consts::E);
    assert!(((sum - expected) / expected).abs() < 1e-5, "sum of exp(1) over 2^20 elements: {sum} vs {expected}");
    let info = cuda::device_info(ordinal).unwrap();
    assert!(info.sm_count > 0 && info.compute_capability.0 >= 7, "{info:?}");
}
