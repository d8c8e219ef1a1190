//! Matrix products against a triple loop: every transpose combination, batched with a per-entry or
//! a shared operand, leading axes flattened into rows, and sizes that take the threaded paths.

use engine::backend::BackendStorage;
use engine::{ops, CpuStorage, DType, MatmulLayout, Rng, Tensor};

use super::support::{check, on_threads, randn, FLOATS};

/// `C[b] = op(A[b]) · op(B[b])` over plain storage, as `MatmulLayout` describes it.
fn reference(a: &[f64], b: &[f64], l: &MatmulLayout) -> Vec<f64> {
    let mut out = vec![0.0; l.batch * l.m * l.n];
    for bi in 0..l.batch {
        let (ao, bo) = (bi * l.a_batch_stride, bi * l.b_batch_stride);
        for i in 0..l.m {
            for j in 0..l.n {
                let mut s = 0.0;
                for p in 0..l.k {
                    let x = if l.trans_a { a[ao + p * l.m + i] } else { a[ao + i * l.k + p] };
                    let y = if l.trans_b { b[bo + j * l.k + p] } else { b[bo + p * l.n + j] };
                    s += x * y;
                }
                out[(bi * l.m + i) * l.n + j] = s;
            }
        }
    }
    out
}

/// Stored shape of an `r x c` operand, transposed when `t`, with optional batch axes in front.
fn stored(lead: &[usize], r: usize, c: usize, t: bool) -> Vec<usize> {
    let mut d = lead.to_vec();
    d.extend(if t { [c, r] } else { [r, c] });
    d
}

#[test]
fn all_transpose_combinations_match_reference() {
    let mut rng = Rng::new(10);
    // The second size is big enough for gemm's own threading; the rest have a few rows (the
    // skinny decode path), with column counts across its block edges, a multi-threaded one, and
    // one whose x·W form sums several slices of k over two blocks of columns, and one of a single
    // slice split over three blocks of columns (the last narrower).
    for (m, n, k) in [(7, 5, 13), (71, 67, 83), (1, 300, 19), (3, 257, 21), (4, 600, 400), (2, 2100, 600), (2, 1100, 200)] {
        for dtype in FLOATS {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let (a, av) = randn(&mut rng, &stored(&[], m, k, ta), 1.0, dtype);
                let (b, bv) = randn(&mut rng, &stored(&[], k, n, tb), 1.0, dtype);
                let l = MatmulLayout { batch: 1, m, n, k, trans_a: ta, trans_b: tb, a_batch_stride: 0, b_batch_stride: 0 };
                let out = ops::matmul_t(&a, &b, ta, tb).unwrap();
                check(&format!("{m}x{n}x{k} ta={ta} tb={tb}"), &out, &[m, n], &reference(&av, &bv, &l), dtype);
            }
        }
    }
}

#[test]
fn batched_products_match_reference() {
    let mut rng = Rng::new(11);
    // The last case is many small products, which run one per thread.
    for (batch, m, n, k) in [(3, 7, 5, 13), (64, 9, 11, 13)] {
        for dtype in FLOATS {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for shared_a in [false, true] {
                    let lead: &[usize] = if shared_a { &[] } else { &[batch] };
                    let (a, av) = randn(&mut rng, &stored(lead, m, k, ta), 1.0, dtype);
                    let (b, bv) = randn(&mut rng, &stored(&[batch], k, n, tb), 1.0, dtype);
                    let a_batch_stride = if shared_a { 0 } else { m * k };
                    let l = MatmulLayout { batch, m, n, k, trans_a: ta, trans_b: tb, a_batch_stride, b_batch_stride: k * n };
                    let out = ops::matmul_t(&a, &b, ta, tb).unwrap();
                    let what = format!("batch {batch} {m}x{n}x{k} ta={ta} tb={tb} shared_a={shared_a}");
                    check(&what, &out, &[batch, m, n], &reference(&av, &bv, &l), dtype);
                }
            }
        }
    }
}

/// The decode products (a few rows) split the sum over k across threads; the split must not
/// depend on the thread count.
#[test]
fn skinny_products_give_the_same_bits_on_any_thread_count() {
    let mut rng = Rng::new(14);
    for dtype in [DType::F32, DType::BF16] {
        // k = 1100 sums several slices; k = 200 is one slice, split over columns.
        for (m, k, tb) in [(1, 1100, false), (3, 1100, false), (2, 200, false), (1, 1100, true), (4, 1100, true)] {
            let (a, _) = randn(&mut rng, &[m, k], 1.0, dtype);
            let (b, _) = randn(&mut rng, &stored(&[], k, 2300, tb), 1.0, dtype);
            let run = || ops::matmul_t(&a, &b, false, tb).unwrap().to_f64_vec().unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            let one = on_threads(1, run);
            for threads in [2, 3] {
                assert!(on_threads(threads, run) == one, "{m}x{k} tb={tb} {dtype}: {threads} threads differ from one");
            }
        }
    }
}

/// `[2, 3, 7, 13] · [13, 5]` is a `[42, 13] · [13, 5]` product reshaped to `[2, 3, 7, 5]`.
#[test]
fn leading_axes_flatten_into_rows() {
    let mut rng = Rng::new(12);
    for dtype in FLOATS {
        for tb in [false, true] {
            let (a, av) = randn(&mut rng, &[2, 3, 7, 13], 1.0, dtype);
            let (b, bv) = randn(&mut rng, &stored(&[], 13, 5, tb), 1.0, dtype);
            let l = MatmulLayout { batch: 1, m: 42, n: 5, k: 13, trans_a: false, trans_b: tb, a_batch_stride: 0, b_batch_stride: 0 };
            let out = ops::matmul_t(&a, &b, false, tb).unwrap();
            check(&format!("flattened tb={tb}"), &out, &[2, 3, 7, 5], &reference(&av, &bv, &l), dtype);
        }
    }
}

/// The op layer never shares `B` across a batch, but the backend contract allows it (stride 0).
#[test]
fn backend_honours_a_shared_b_operand() {
    let mut rng = Rng::new(13);
    for dtype in FLOATS {
        let (batch, m, n, k) = (4, 6, 5, 9);
        let (a, av) = randn(&mut rng, &[batch, k, m], 1.0, dtype);
        let (b, bv) = randn(&mut rng, &[k, n], 1.0, dtype);
        let l = MatmulLayout { batch, m, n, k, trans_a: true, trans_b: false, a_batch_stride: m * k, b_batch_stride: 0 };
        let out = a.to_cpu_storage().unwrap().matmul(&b.to_cpu_storage().unwrap(), &l).unwrap();
        let out = Tensor::from_cpu(out, [batch, m, n]);
        check("shared B", &out, &[batch, m, n], &reference(&av, &bv, &l), dtype);
    }
}

/// An empty inner dimension is an empty sum: zeros, not garbage.
#[test]
fn empty_inner_dimension_gives_zeros() {
    let a = Tensor::zeros([3, 0], DType::F32, &engine::Device::Cpu).unwrap();
    let b = Tensor::zeros([0, 4], DType::F32, &engine::Device::Cpu).unwrap();
    let out = ops::matmul(&a, &b).unwrap();
    assert_eq!(out.dims(), [3, 4]);
    assert!(out.to_f64_vec().unwrap().iter().all(|&v| v == 0.0));
}

/// The backend refuses a layout its operands are too small for, instead of reading past them.
#[test]
fn backend_rejects_a_layout_larger_than_its_operands() {
    let a = CpuStorage::F32(vec![1.0; 6]);
    let b = CpuStorage::F32(vec![1.0; 6]);
    let l = MatmulLayout { batch: 2, m: 2, n: 3, k: 3, trans_a: false, trans_b: false, a_batch_stride: 6, b_batch_stride: 0 };
    assert!(a.matmul(&b, &l).is_err());
}
