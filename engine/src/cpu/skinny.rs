//! Products with a few rows (decode: one to a few tokens per step) read straight from the stored
//! matrix, in its own dtype, converting each element to the arithmetic type as it is loaded. A
//! blocked GEMM would first pack (and for bf16 / f16 widen) the whole right-hand matrix, which for
//! one row costs more memory traffic than the product itself; here every weight byte is read
//! once per call and nothing the size of the weights is written. Decode is bound by how fast the
//! weights stream from memory, so both layouts are arranged to read b front to back in long
//! contiguous runs (the hardware prefetchers follow a run within a 4 KiB page and restart at each
//! jump), spread over the threads.
//!
//! - `b` stored `[n, k]` (x·Wᵀ): output j is a dot product of a's rows with row j of b, a
//!   contiguous run of k elements; 16 independent lane sums per dot let the compiler vectorise
//!   without reassociating. Threads split the output columns (`COLS` rows of b per task).
//! - `b` stored `[k, n]` (x·W): output row i is Σ_p a[i, p]·b[p, :], an axpy of whole rows of b.
//!   Splitting the output columns instead would read each row of b in short pieces with a stride
//!   of n between them, which the prefetchers do not follow (that layout ran about 3x slower than
//!   the `[n, k]` one). So the reduction over k is split: each task owns a slice of `K_SLICE`
//!   rows of b (and a block of `WIDTH` columns when n is wide), accumulates its partial sums of the
//!   output, and the partials are added slice by slice in a fixed order. A reduction of one slice
//!   (a routed expert's w2) has nothing to add up, so its tasks split the columns instead. The slices depend only on
//!   k, never on the thread count, so the result is bit-identical with one thread or many.
//!
//! The inner loops are compiled for AVX-512F, AVX2 + FMA and the baseline, picked at run time per
//! task (`simd_dispatch`), like the loops of simd.rs; bf16 weights on AVX-512 take the intrinsics
//! of skinny_bf16.rs, which give the same bits.

use super::elem::prelude::*;
use super::elem::Float;
use super::par::{chunks, worth_it};

/// Runs a kernel compiled for the widest SIMD the CPU has (the inner loops are `#[inline(always)]`
/// so each copy vectorises for its own target).
macro_rules! simd_dispatch {
    ($kernel:ident::<$t:ty>($($arg:expr),*)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: the CPU has AVX-512F, checked just above.
                unsafe { wide::avx512::$kernel::<$t>($($arg),*) }
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has AVX2 and FMA, checked just above.
                unsafe { wide::avx2::$kernel::<$t>($($arg),*) }
            } else {
                $kernel::<$t>($($arg),*)
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            $kernel::<$t>($($arg),*)
        }
    }};
}

/// Rows up to which products take this path.
pub(super) const MAX_ROWS: usize = crate::backend::CPU_DECODE_MAX_ROWS;

/// `[n, k]`: output columns (rows of b) per task. Narrow enough that a routed expert's slab (a few
/// hundred rows) still splits over the threads; a task's rows are still one contiguous run of b.
const COLS: usize = 64;

/// `[k, n]`: rows of b per slice of the reduction. A partial costs m·n accumulators written and
/// read back once per slice, against `K_SLICE`·n weights read: under 1 % of the traffic for bf16.
const K_SLICE: usize = 256;

/// `[k, n]`: output columns per task; a task's partial (m·`WIDTH` accumulators) stays in L1 and
/// its pieces of b's rows are whole 4 KiB pages of bf16.
const WIDTH: usize = 2048;

/// `[k, n]` with a single slice of k (a routed expert's w2: k is the expert's width): output columns
/// per task, narrower than `WIDTH` so the threads split one expert's product instead of one thread
/// taking it whole; each row piece is still 1 KiB (bf16) of contiguous weights.
const ONE_SLICE_WIDTH: usize = 512;

/// Lane sums per dot product.
pub(super) const LANES: usize = 16;

/// `a (m x k, arithmetic type) · op(b)` where b is `[n, k]` when `b_transposed`, else `[k, n]`;
/// returns the m x n result in the arithmetic type, row-major.
pub(super) fn product<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize, b_transposed: bool) -> Vec<T::Acc> {
    if b_transposed {
        by_columns::<T>(a, b, m, n, k)
    } else {
        by_k_slices::<T>(a, b, m, n, k)
    }
}

/// x·Wᵀ: tasks own blocks of output columns, computed block-major ([block][row][col]) so each
/// task writes one contiguous chunk, then transposed back to row-major when m > 1.
fn by_columns<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize) -> Vec<T::Acc> {
    let mut blocked = vec![T::Acc::zero(); m * n];
    chunks(&mut blocked, m * COLS, worth_it(m * n * k / 8), |blk, out| {
        let j0 = blk * COLS;
        let width = out.len() / m;
        simd_dispatch!(dots::<T>(a, &b[j0 * k..(j0 + width) * k], m, k, out));
    });
    unblock(blocked, m, n, COLS)
}

/// x·W: tasks own (slice of k, block of columns) pairs; see the module comment.
fn by_k_slices<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize) -> Vec<T::Acc> {
    let slices = k.div_ceil(K_SLICE);
    if slices == 1 {
        // Nothing to sum across tasks: they split the columns. Each column's sum runs over p in the
        // same order as in the sliced case, so the bits do not depend on the split.
        let mut blocked = vec![T::Acc::zero(); m * n];
        chunks(&mut blocked, m * ONE_SLICE_WIDTH, worth_it(m * n * k / 8), |blk, out| {
            let j0 = blk * ONE_SLICE_WIDTH;
            simd_dispatch!(axpys::<T>(a, b, m, n, k, 0..k, j0, out.len() / m, out));
        });
        return unblock(blocked, m, n, ONE_SLICE_WIDTH);
    }
    // [slice][block][row][col]: every task's partial is one contiguous chunk. The last block of
    // each slice is narrower when WIDTH does not divide n, so chunks are cut by hand.
    let mut partial = vec![T::Acc::zero(); slices * m * n];
    chunks(&mut partial, m * n, worth_it(m * n * k / 8), |s, part| {
        let rows = s * K_SLICE..((s + 1) * K_SLICE).min(k);
        for_blocks(part, m, n, |j0, width, out| simd_dispatch!(axpys::<T>(a, b, m, n, k, rows.clone(), j0, width, out)));
    });
    // The fixed-order sum of the slices, split over blocks of columns.
    let mut total = vec![T::Acc::zero(); m * n];
    chunks(&mut total, m * WIDTH, worth_it(slices * m * n), |blk, out| {
        let offset = blk * m * WIDTH;
        for s in 0..slices {
            let part = &partial[s * m * n + offset..][..out.len()];
            out.iter_mut().zip(part).for_each(|(o, &p)| *o += p);
        }
    });
    unblock(total, m, n, WIDTH)
}

/// `dots` on the calling thread, on the widest SIMD the CPU has: `out[i·w + jj] = a_i · rows[jj]`
/// for the `w = out.len() / m` rows of b (each k long) in `rows`. For callers that split the work
/// over the threads themselves (moe_sparse_decode.rs).
pub(super) fn dots_here<T: Float>(a: &[T::Acc], rows: &[T], m: usize, k: usize, out: &mut [T::Acc]) {
    simd_dispatch!(dots::<T>(a, rows, m, k, out));
}

/// `axpys` on the calling thread, on the widest SIMD the CPU has: `out[i·n + j] += Σ_p a[i, p]·b[p, j]`
/// for b `[k, n]`, all of it.
pub(super) fn axpys_here<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize, out: &mut [T::Acc]) {
    simd_dispatch!(axpys::<T>(a, b, m, n, k, 0..k, 0, n, out));
}

/// Calls `f(j0, width, chunk)` for each block of `WIDTH` columns of a block-major m x n buffer.
fn for_blocks<A>(buf: &mut [A], m: usize, n: usize, mut f: impl FnMut(usize, usize, &mut [A])) {
    let mut rest = buf;
    for j0 in (0..n).step_by(WIDTH) {
        let width = WIDTH.min(n - j0);
        let (head, tail) = rest.split_at_mut(m * width);
        f(j0, width, head);
        rest = tail;
    }
}

/// A block-major ([block][row][col], blocks of `width` columns) m x n buffer in row-major order.
fn unblock<A: Copy>(blocked: Vec<A>, m: usize, n: usize, width: usize) -> Vec<A> {
    if m == 1 || n <= width {
        return blocked;
    }
    let mut out = blocked.clone();
    for (blk, chunk) in blocked.chunks(m * width).enumerate() {
        let w = chunk.len() / m;
        for i in 0..m {
            out[i * n + blk * width..][..w].copy_from_slice(&chunk[i * w..(i + 1) * w]);
        }
    }
    out
}


/// The kernels again, inside functions compiled with wider SIMD enabled.
#[cfg(target_arch = "x86_64")]
mod wide {
    macro_rules! targeted {
        ($module:ident, $features:literal) => {
            pub(super) mod $module {
                use crate::cpu::elem::Float;

                #[target_feature(enable = $features)]
                pub(in super::super) fn dots<T: Float>(a: &[T::Acc], rows: &[T], m: usize, k: usize, out: &mut [T::Acc]) {
                    super::super::dots::<T>(a, rows, m, k, out)
                }

                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = $features)]
                pub(in super::super) fn axpys<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize, rows: std::ops::Range<usize>, j0: usize, width: usize, out: &mut [T::Acc]) {
                    super::super::axpys::<T>(a, b, m, n, k, rows, j0, width, out)
                }
            }
        };
    }
    targeted!(avx2, "avx2,fma");

    /// As `targeted!`, with bf16 weights taking the intrinsics of skinny_bf16.rs.
    pub(super) mod avx512 {
        use crate::cpu::elem::Float;
        use crate::cpu::skinny_bf16 as bf16;

        #[target_feature(enable = "avx512f")]
        pub(in super::super) fn dots<T: Float + 'static>(a: &[T::Acc], rows: &[T], m: usize, k: usize, out: &mut [T::Acc]) {
            match bf16::operands::<T>(a, rows, out) {
                // SAFETY: this function runs only where the CPU has AVX-512F (its dispatch checks).
                Some((a, rows, out)) => unsafe { bf16::dots(a, rows, m, k, out) },
                None => super::super::dots::<T>(a, rows, m, k, out),
            }
        }

        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f")]
        pub(in super::super) fn axpys<T: Float + 'static>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize, rows: std::ops::Range<usize>, j0: usize, width: usize, out: &mut [T::Acc]) {
            match bf16::operands::<T>(a, b, out) {
                // SAFETY: as in `dots`.
                Some((a, b, out)) => unsafe { bf16::axpys(a, b, m, n, k, rows, j0, width, out) },
                None => super::super::axpys::<T>(a, b, m, n, k, rows, j0, width, out),
            }
        }
    }
}

/// `out[i·w + jj] = a_i · rows[jj]` for the `w = out.len() / m` rows of b in `rows`.
#[inline(always)]
fn dots<T: Float>(a: &[T::Acc], rows: &[T], m: usize, k: usize, out: &mut [T::Acc]) {
    let width = out.len() / m;
    for (jj, row) in rows.chunks_exact(k).enumerate() {
        for i in 0..m {
            out[i * width + jj] = dot::<T>(&a[i * k..(i + 1) * k], row);
        }
    }
}

/// `out[i·width + jj] += Σ_{p ∈ rows} a[i, p]·b[p, j0 + jj]`, row p of b read once for all m rows.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn axpys<T: Float>(a: &[T::Acc], b: &[T], m: usize, n: usize, k: usize, rows: std::ops::Range<usize>, j0: usize, width: usize, out: &mut [T::Acc]) {
    for p in rows {
        let row = &b[p * n + j0..p * n + j0 + width];
        for i in 0..m {
            let ai = a[i * k + p];
            for (o, v) in out[i * width..(i + 1) * width].iter_mut().zip(row) {
                *o += ai * v.widen();
            }
        }
    }
}

#[inline(always)]
fn dot<T: Float>(a: &[T::Acc], b: &[T]) -> T::Acc {
    let mut lanes = [T::Acc::zero(); LANES];
    let (ac, bc) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (at, bt) = (ac.remainder(), bc.remainder());
    for (x, y) in ac.zip(bc) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l].widen();
        }
    }
    finish_dot::<T>(lanes, at, bt)
}

/// The end of a dot product: the lane sums reduced pairwise in a fixed order, then the tail
/// `Σ a·b` added in order. skinny_bf16.rs ends its dots here too, so both paths give the same bits.
#[inline(always)]
pub(super) fn finish_dot<T: Float>(mut lanes: [T::Acc; LANES], a_tail: &[T::Acc], b_tail: &[T]) -> T::Acc {
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            lanes[l] = lanes[l] + lanes[l + width];
        }
        width /= 2;
    }
    let mut s = lanes[0];
    for (x, y) in a_tail.iter().zip(b_tail) {
        s += *x * y.widen();
    }
    s
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use half::bf16;

    /// The AVX-512 loops of skinny_bf16.rs promise the generic loops' bits: the same products at
    /// shapes with row and column tails (rows not a multiple of the rows added together, widths
    /// with a half line and scalars left over), on both layouts.
    #[test]
    fn bf16_intrinsics_give_the_generic_bits() {
        if !is_x86_feature_detected!("avx512f") {
            eprintln!("no AVX-512F on this CPU: the bf16 intrinsics path does not run here");
            return;
        }
        let mut rng = crate::Rng::new(21);
        let mut draw = |len: usize| (0..len).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        for (m, n, k) in [(1, 2100, 23), (3, 53, 258), (2, 512, 9), (4, 19, 1)] {
            let a = draw(m * k);
            let b: Vec<bf16> = draw(k * n).into_iter().map(bf16::from_f32).collect();
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            // [k, n]: the axpys over all of k at once, columns 0..n.
            let (mut generic, mut wide) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
            super::axpys::<bf16>(&a, &b, m, n, k, 0..k, 0, n, &mut generic);
            // SAFETY: the CPU has AVX-512F, checked above.
            unsafe { super::wide::avx512::axpys::<bf16>(&a, &b, m, n, k, 0..k, 0, n, &mut wide) };
            assert_eq!(bits(generic), bits(wide), "axpys {m}x{n}x{k}");
            // [n, k]: the same b read as n' = k rows of length k' = n.
            let (mut generic, mut wide) = (vec![0f32; m * k], vec![0f32; m * k]);
            let a = draw(m * n);
            super::dots::<bf16>(&a, &b, m, n, &mut generic);
            // SAFETY: as above.
            unsafe { super::wide::avx512::dots::<bf16>(&a, &b, m, n, &mut wide) };
            assert_eq!(bits(generic), bits(wide), "dots {m}x{k}x{n}");
        }
    }
}
