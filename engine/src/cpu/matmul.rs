//! Batched matrix products through the `gemm` crate (blocked, SIMD, optionally multi-threaded).
//!
//! `gemm` takes a row stride and a column stride per operand, so a transpose is only swapped
//! strides and no operand is ever copied for f32 / f64. bf16 and f16 widen both operands to f32,
//! multiply there and narrow the result, as a tensor-core kernel accumulates in f32.
//!
//! Threads: a product big enough on its own uses `gemm`'s rayon parallelism; a batch of small
//! products runs one product per task instead (gemm's own splitting does not pay below a few
//! hundred thousand multiply-adds); tiny work stays on the calling thread.

use gemm::Parallelism;

use super::elem::prelude::*;
use super::elem::{with_float, Acc, Elem, Float};
use super::par::{chunks, filled, worth_it};
use super::skinny;
use crate::backend::MatmulLayout;
use crate::{CpuStorage, Error, Result};

/// Multiply-adds in one product above which `gemm` splits it across threads.
const GEMM_PAR_MIN: usize = 1 << 18;

pub(super) fn matmul(a: &CpuStorage, b: &CpuStorage, l: &MatmulLayout) -> Result<CpuStorage> {
    with_float!("matmul", a, |a| {
        let b = Elem::view("matmul", b)?;
        check_extents(a.len(), b.len(), l)?;
        Ok(Elem::wrap(matmul_typed(a, b, l)))
    })
}

fn matmul_typed<T: Float>(a: &[T], b: &[T], l: &MatmulLayout) -> Vec<T> {
    if l.batch == 1 && !l.trans_a && l.m <= skinny::MAX_ROWS && l.m * l.n * l.k > 0 {
        // A few rows (decode): read b in place rather than widening and packing all of it.
        return T::narrow_vec(skinny::product(&T::widen_slice(&a[..l.m * l.k]), b, l.m, l.n, l.k, l.trans_b));
    }
    let (a, b) = (T::widen_slice(a), T::widen_slice(b));
    let per_product = l.m * l.n * l.k;
    if l.batch == 1 {
        return T::narrow_vec(product_vec(&a, &b, (l.m, l.n, l.k), (l.trans_a, l.trans_b)));
    }
    let mut out = vec![T::Acc::zero(); l.batch * l.m * l.n];
    if per_product == 0 {
        // k == 0 is an empty sum: the zeros are the answer; m or n == 0 is an empty output.
        return T::narrow_vec(out);
    }
    if per_product >= GEMM_PAR_MIN {
        for (i, c) in out.chunks_mut(l.m * l.n).enumerate() {
            gemm_one(c, &a[i * l.a_batch_stride..], &b[i * l.b_batch_stride..], l, Parallelism::Rayon(0));
        }
    } else {
        chunks(&mut out, l.m * l.n, worth_it(l.batch * per_product), |i, c| {
            gemm_one(c, &a[i * l.a_batch_stride..], &b[i * l.b_batch_stride..], l, Parallelism::None);
        });
    }
    T::narrow_vec(out)
}

/// `op(a)·op(b)` (m x n) for one product in an arithmetic type, in a new vector, threaded by the
/// same rule as `matmul`: for fused ops that run element-wise stages of their own between
/// products. The vector is not zeroed first:
/// `gemm` without `read_dst` writes every element of its output, and zeroing the tens of MiB of
/// the MoE layer's [tokens, E·f] products is a pass over memory as long as reading them.
pub(super) fn product_vec<F: Acc>(a: &[F], b: &[F], (m, n, k): (usize, usize, usize), trans: (bool, bool)) -> Vec<F> {
    let par = if m * n * k >= GEMM_PAR_MIN { Parallelism::Rayon(0) } else { Parallelism::None };
    product_vec_with(a, b, (m, n, k), trans, par)
}

/// `product_vec` on the calling thread only (see `product_serial`).
pub(super) fn product_serial_vec<F: Acc>(a: &[F], b: &[F], dims: (usize, usize, usize), trans: (bool, bool)) -> Vec<F> {
    product_vec_with(a, b, dims, trans, Parallelism::None)
}

fn product_vec_with<F: Acc>(a: &[F], b: &[F], (m, n, k): (usize, usize, usize), (trans_a, trans_b): (bool, bool), par: Parallelism) -> Vec<F> {
    if m * n * k == 0 {
        // k == 0 is an empty sum: the zeros are the answer; m or n == 0 is an empty output.
        return vec![F::zero(); m * n];
    }
    let l = MatmulLayout { batch: 1, m, n, k, trans_a, trans_b, a_batch_stride: 0, b_batch_stride: 0 };
    // SAFETY: `gemm_into` writes all m·n elements (read_dst = false writes the whole output and
    // reads none of it).
    unsafe { filled(m * n, |dst| gemm_into(dst.as_mut_ptr().cast(), dst.len(), a, b, &l, par)) }
}

/// `dst (m x n) = op(a)·op(b)` on the calling thread only, for ops that already run one task per core over many small
/// products (the sparse MoE layer's blocks of an expert's rows, attention's tiles).
#[allow(clippy::too_many_arguments)]
pub(super) fn product_serial<F: Acc>(dst: &mut [F], a: &[F], b: &[F], m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) {
    product_with(dst, a, b, (m, n, k), (trans_a, trans_b), Parallelism::None);
}

fn product_with<F: Acc>(dst: &mut [F], a: &[F], b: &[F], (m, n, k): (usize, usize, usize), (trans_a, trans_b): (bool, bool), par: Parallelism) {
    if m * n * k == 0 {
        dst.iter_mut().for_each(|v| *v = F::zero());
        return;
    }
    let l = MatmulLayout { batch: 1, m, n, k, trans_a, trans_b, a_batch_stride: 0, b_batch_stride: 0 };
    gemm_one(dst, a, b, &l, par);
}

/// The backend is public, so the slice bounds the unsafe `gemm` call relies on are checked here
/// rather than trusted from the op layer.
fn check_extents(a_len: usize, b_len: usize, l: &MatmulLayout) -> Result<()> {
    let need = |stride: usize, size: usize| if l.batch == 0 || size == 0 { 0 } else { (l.batch - 1) * stride + size };
    let (need_a, need_b) = (need(l.a_batch_stride, l.m * l.k), need(l.b_batch_stride, l.k * l.n));
    if a_len < need_a || b_len < need_b {
        return Err(Error::shape(
            "matmul",
            format!("layout {l:?} needs {need_a} and {need_b} elements, operands hold {a_len} and {b_len}"),
        ));
    }
    Ok(())
}

/// `dst (m x n, row-major) = op(a) · op(b)` for one batch entry; `a` and `b` start at its matrices.
fn gemm_one<F: Acc>(dst: &mut [F], a: &[F], b: &[F], l: &MatmulLayout, par: Parallelism) {
    gemm_into(dst.as_mut_ptr(), dst.len(), a, b, l, par);
}

/// `gemm_one` into `dst_len` elements at `dst`, which may be uninitialised: they are only written.
fn gemm_into<F: Acc>(dst: *mut F, dst_len: usize, a: &[F], b: &[F], l: &MatmulLayout, par: Parallelism) {
    let (m, n, k) = (l.m, l.n, l.k);
    assert!(dst_len >= m * n && a.len() >= m * k && b.len() >= k * n, "matmul extents checked by check_extents");
    // (row stride, column stride) of op(A) (m x k) and op(B) (k x n) in the row-major storage.
    let (a_rs, a_cs) = if l.trans_a { (1, m) } else { (k, 1) };
    let (b_rs, b_cs) = if l.trans_b { (1, k) } else { (n, 1) };
    // SAFETY: `dst` points at m·n writable elements (asserted above; the callers hand over a
    // mutable slice or a vector's spare capacity) and is written as a row-major m x n matrix; `a`
    // holds m·k and `b` k·n elements, and the strides address exactly those elements for either
    // transpose flag. `read_dst = false`, so `dst` is only written, never read; it does not overlap
    // `a` or `b` because it comes from a mutable borrow. `gemm` supports f32 and f64, the only
    // `Acc` types.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            false,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            F::zero(),
            F::one(),
            false,
            false,
            false,
            par,
        );
    }
}
