//! The sparse MoE layer's forward, fused, on AVX-512: f32, nothing saved for a backward
//! (evaluation, and prefill of more tokens than the decode path takes), expert widths d and f
//! multiples of 64. Everything else takes moe_sparse.rs's general path.
//!
//! The general path runs per block of one expert's list entries: gather the tokens' x rows into a
//! buffer, `gemm` for U = X·W1ᵀ (which packs both operands again), GeLU over U in a second pass,
//! `gemm` for Y = H·W2, then a pass adding weight·Y into the token sums. At ds-moe-tiny's shape
//! (2,048 tokens of d 128, experts of 64) the products were half of the layer's CPU time and the
//! gather, the GeLU pass, the weighted add and the packing most of the other half: each walks
//! rows that the product before it has just pushed out of L1.
//!
//! Here a block (the same blocks and slot ranks, through `add_by_rank`) runs two register-tiled
//! loops over tiles of six tokens (`TILE`):
//! 1. H = gelu(X·W1ᵀ), one strip of 64 hidden units at a time: per tile 6 x 4 vector
//!    accumulators (24 of the 32 registers), for each k one row of the strip of W1ᵀ (four vectors)
//!    and each token's x[k] broadcast straight from its row of x, so no gathered copy; GeLU on the
//!    accumulators in registers; H's rows to a per-worker scratch (`ROW_BLOCK x f`);
//! 2. weight · H·W2, one strip of 64 output columns at a time, the same register blocking over
//!    W2's rows (W2 is `[f, d]`, hidden unit major, as the loop wants it); each accumulator scaled
//!    by its slot's weight and written (first slot rank: `0 + term`) or added into its token's row
//!    of the sum.
//! A strip of weights (d x 64 of W1ᵀ, f x 64 of W2) stays in L1 while every tile of the block
//! passes over it. Taking each tile through the whole expert at once instead (H never leaving
//! L1) reads both matrices, more than L1 holds, from L2 for every six tokens; at ds-moe-tiny's
//! widths the two measured alike within the build machine's noise, and at wider experts only the
//! strips fit.
//!
//! Measured at ds-moe-tiny's shape (2,048 tokens, top-2 of 8 experts; AVX-512 build machine, best
//! of three runs of 3,000 calls): one thread 1,543-1,561 us per call on the general path,
//! 1,199-1,208 us here; two threads 849-886 against 686-767 us.
//!
//! W1 is stored `[f, d]`; its transpose (`[d, f]`, so that a row of 64 hidden units is contiguous)
//! is built once per block with 16 x 16 in-register transposes, 1/rows of the block's work. Per
//! k step a tile does 24 fused multiply-adds against 4 vector loads and 6 broadcasts, the
//! proportion of `gemm`'s own 6 x 64 kernel. Sums over k run in order, one fused multiply-add
//! per term, so a token's result does not depend on the tile or thread it ran in; they are not
//! the general path's bits (its `gemm` blocks k differently), only equal to rounding.

use std::arch::x86_64::*;

use super::avx512_math::gelu;
use super::moe_sparse::{add_by_rank, Block, Lists, SumRows, ROW_BLOCK};
use super::par::worth_it;
use crate::backend::SparseDims;

/// Tokens per register tile.
const TILE: usize = 6;
/// Columns per register tile: four vectors of 16.
const COLS: usize = 64;

/// True when this path takes the layer: AVX-512F, and d and f whole multiples of `COLS`.
pub(super) fn applies(l: &Lists) -> bool {
    let SparseDims { d, f, .. } = l.dims;
    is_x86_feature_detected!("avx512f") && d > 0 && f > 0 && d.is_multiple_of(COLS) && f.is_multiple_of(COLS)
}

/// A worker's buffers: one expert's W1ᵀ (`[d, f]`) and a block's H (`ROW_BLOCK x f`).
struct Scratch {
    w1t: Vec<f32>,
    h: Vec<f32>,
}

/// The layer's output `[tokens, d]`: Σ over each token's kept slots, in slot order, of the slot's
/// weight times its expert's GeLU MLP of the token's row of x. `x` is `[tokens, d]`, `w1` and
/// `w2` the stacked `[n·f, d]` weights, `w` the slot weights. Only when `applies(l)`.
pub(super) fn forward(x: &[f32], w1: &[f32], w2: &[f32], w: &[f32], l: &Lists) -> Vec<f32> {
    let SparseDims { tokens, d, f, n_experts, .. } = l.dims;
    assert!(applies(l), "the fused sparse layer needs AVX-512F and widths that are multiples of {COLS}");
    assert!(x.len() == tokens * d && w1.len() == n_experts * f * d && w2.len() == w1.len() && w.len() == l.dims.slots(), "fused sparse layer operand sizes");
    let blocks = l.ranked_blocks(ROW_BLOCK);
    let parallel = worth_it(l.total() * d * f);
    let scratch = || Scratch { w1t: vec![0.0; d * f], h: vec![0.0; ROW_BLOCK * f] };
    let tasks: Vec<_> = blocks.into_iter().map(|b| (b, ())).collect();
    add_by_rank(l, tasks, parallel, scratch, |s, b, (), out| {
        // SAFETY: `applies` checked AVX-512F, and the asserts above the operand sizes that
        // `block`'s reads rely on; `add_by_rank` hands the block its tokens' rows of d.
        unsafe { block(x, w1, w2, w, l, b, out, s) }
    })
}

/// Runs `$f::<R>(args)` with R the row count `$rows` (1 to `TILE`) as a constant.
macro_rules! with_rows {
    ($rows:expr, $f:ident($($arg:expr),*)) => {
        match $rows {
            6 => $f::<6>($($arg),*),
            5 => $f::<5>($($arg),*),
            4 => $f::<4>($($arg),*),
            3 => $f::<3>($($arg),*),
            2 => $f::<2>($($arg),*),
            _ => $f::<1>($($arg),*),
        }
    };
}

/// Block `b` (see the module comment): H = gelu(X·W1ᵀ) for all its tokens, one strip of 64
/// hidden units at a time, then weight · H·W2 into their sums, one strip of 64 output columns at a
/// time. Each strip's weights (`d x 64` of W1ᵀ, `f x 64` of W2: 32 and 16 KiB at ds-moe-tiny's
/// widths) stay in L1 while every tile of the block passes over them; a tile taken through the
/// whole expert at once read both matrices, more than L1 holds, from L2 for every six tokens.
///
/// # Safety
/// The CPU has AVX-512F; the operands have `forward`'s sizes; `out` holds `b.rows` rows of d.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f")]
unsafe fn block(x: &[f32], w1: &[f32], w2: &[f32], w: &[f32], l: &Lists, b: Block, out: &mut SumRows<f32>, s: &mut Scratch) {
    let SparseDims { d, f, .. } = l.dims;
    let len = f * d;
    transpose(&w1[b.expert * len..][..len], f, d, &mut s.w1t);
    let w2e = &w2[b.expert * len..][..len];
    // Output rows as pointers: the first rank's are not yet initialised, and are only written.
    let (outs, first): (Vec<*mut f32>, bool) = match out {
        SumRows::First(rows) => (rows.iter_mut().map(|o| o.as_mut_ptr().cast::<f32>()).collect(), true),
        SumRows::Later(rows) => (rows.iter_mut().map(|o| o.as_mut_ptr()).collect(), false),
    };
    assert!(outs.len() == b.rows && s.h.len() >= b.rows * f, "one output row and one row of H per list entry");
    let xs: Vec<*const f32> = (b.first..b.first + b.rows).map(|i| x[l.token(i) * d..][..d].as_ptr()).collect();
    let ws: Vec<f32> = (b.first..b.first + b.rows).map(|i| w[l.slot(i)]).collect();
    let tiles = || (0..b.rows).step_by(TILE).map(|t0| (t0, TILE.min(b.rows - t0)));
    for c0 in (0..f).step_by(COLS) {
        for (t0, rows) in tiles() {
            // SAFETY: x rows hold d elements; W1ᵀ's rows k < d hold columns c0 .. c0 + 64 <= f;
            // H's rows t0 .. t0 + rows < b.rows hold f.
            unsafe { with_rows!(rows, up(&xs[t0..], s.w1t.as_ptr().add(c0), f, d, s.h.as_mut_ptr().add(t0 * f + c0), f)) };
        }
    }
    let hs: Vec<*const f32> = (0..b.rows).map(|i| s.h[i * f..].as_ptr()).collect();
    for c0 in (0..d).step_by(COLS) {
        for (t0, rows) in tiles() {
            let t = Down { hs: &hs[t0..], ws: &ws[t0..], outs: &outs[t0..], c0, first };
            // SAFETY: H's rows hold f elements; W2's rows k < f hold columns c0 .. c0 + 64 <= d;
            // output rows hold d (`add_by_rank`).
            unsafe { with_rows!(rows, down(&t, w2e.as_ptr().add(c0), d, f)) };
        }
    }
}

/// H's tile: `h[r·ldh ..][..64] = gelu(x_r · W1ᵀ[.., 64 columns at w1t])` for the first R rows `xs`.
///
/// # Safety
/// AVX-512F; each x row holds `d` elements; `w1t` rows k < d of 64 at stride `ldw`; `h` R rows of
/// 64 at stride `ldh`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn up<const R: usize>(xs: &[*const f32], w1t: *const f32, ldw: usize, d: usize, h: *mut f32, ldh: usize) {
    let xs: [*const f32; R] = std::array::from_fn(|r| xs[r]);
    // SAFETY: the caller's bounds.
    let acc = unsafe { products::<R>(&xs, w1t, ldw, d) };
    for (r, acc) in acc.iter().enumerate() {
        for (q, v) in acc.iter().enumerate() {
            // SAFETY: row r < R of the tile, columns 16q .. 16q + 16 <= 64.
            unsafe { _mm512_storeu_ps(h.add(r * ldh + 16 * q), gelu(*v)) };
        }
    }
}

/// One tile of the second product: the first R rows of H (`hs`), their slot weights and output
/// rows, and the tile's first output column `c0`.
struct Down<'a> {
    hs: &'a [*const f32],
    ws: &'a [f32],
    outs: &'a [*mut f32],
    c0: usize,
    first: bool,
}

/// Columns `c0 .. c0 + 64` of each of the R tokens' `weight · H·W2` written (first slot rank) or
/// added into its output row.
///
/// # Safety
/// AVX-512F; R rows in each of `t`'s slices; H rows hold `f` elements, output rows `c0 + 64`;
/// `w2` rows k < f of 64 at stride `ldw`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn down<const R: usize>(t: &Down, w2: *const f32, ldw: usize, f: usize) {
    let hs: [*const f32; R] = std::array::from_fn(|r| t.hs[r]);
    // SAFETY: the caller's bounds.
    let acc = unsafe { products::<R>(&hs, w2, ldw, f) };
    for (r, acc) in acc.iter().enumerate() {
        let weight = _mm512_set1_ps(t.ws[r]);
        for (q, v) in acc.iter().enumerate() {
            // SAFETY: token r's output row, columns c0 + 16q .. + 16 (the caller's bounds).
            let o = unsafe { t.outs[r].add(t.c0 + 16 * q) };
            let term = _mm512_mul_ps(*v, weight);
            // `0 + term` for the first rank: the value of a zero-started sum after its first
            // term (-0 becomes +0), as the general path's `add_weighted`.
            let base = if t.first { _mm512_setzero_ps() } else { unsafe { _mm512_loadu_ps(o) } };
            unsafe { _mm512_storeu_ps(o, _mm512_add_ps(base, term)) };
        }
    }
}

/// `acc[r][q] = Σ_{k < depth} a_r[k] · b[k·ldb + 16q ..][..16]`: R rows `a` against 64 columns
/// of `b`, one fused multiply-add per term in order of k.
///
/// # Safety
/// AVX-512F; each `a[r]` holds `depth` elements; `b` holds rows k < depth of 64 elements at stride
/// `ldb`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn products<const R: usize>(a: &[*const f32; R], b: *const f32, ldb: usize, depth: usize) -> [[__m512; 4]; R] {
    let mut acc = [[_mm512_setzero_ps(); 4]; R];
    for k in 0..depth {
        // SAFETY: the caller's bounds.
        let bk = unsafe { b.add(k * ldb) };
        let bv = unsafe { [_mm512_loadu_ps(bk), _mm512_loadu_ps(bk.add(16)), _mm512_loadu_ps(bk.add(32)), _mm512_loadu_ps(bk.add(48))] };
        for (r, acc) in acc.iter_mut().enumerate() {
            let ak = _mm512_set1_ps(unsafe { *a[r].add(k) });
            for (q, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(ak, bv[q], *acc);
            }
        }
    }
    acc
}

/// `dst` (`[cols, rows]`) = the transpose of `src` (`[rows, cols]`), both multiples of 16, in
/// 16 x 16 blocks through the registers.
#[target_feature(enable = "avx512f")]
fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    assert!(rows.is_multiple_of(16) && cols.is_multiple_of(16) && src.len() == rows * cols && dst.len() == rows * cols, "transpose of whole 16 x 16 blocks");
    for i in (0..rows).step_by(16) {
        for j in (0..cols).step_by(16) {
            // SAFETY: rows i .. i + 16 and columns j .. j + 16 lie inside src (rows x cols), and
            // the block's transpose inside dst (cols x rows), by the assert.
            unsafe { transpose16(src.as_ptr().add(i * cols + j), cols, dst.as_mut_ptr().add(j * rows + i), rows) };
        }
    }
}

/// One 16 x 16 block: `dst[c·ldd + r] = src[r·lds + c]`. Three shuffle stages: pairs of rows
/// interleaved (unpack of singles), then of pairs (unpack of doubles), so that 128-bit lane L of
/// `u[4i + m]` holds rows 4i .. 4i + 4 of column 4L + m; then output row 4L + m gathers lane L of
/// u[m], u[4 + m], u[8 + m] and u[12 + m] with two 128-bit lane shuffles.
///
/// # Safety
/// AVX-512F; 16 rows of 16 elements at stride `lds` readable from `src`, and at `ldd` writable at
/// `dst`.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, r) in r.iter_mut().enumerate() {
        // SAFETY: the caller's bounds.
        *r = unsafe { _mm512_loadu_ps(src.add(i * lds)) };
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    let pd = _mm512_castps_pd;
    let mut u = [_mm512_setzero_ps(); 16];
    for i in 0..4 {
        u[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        u[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * i]), pd(t[4 * i + 2])));
        u[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
        u[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * i + 1]), pd(t[4 * i + 3])));
    }
    for m in 0..4 {
        let (x01, x23) = (_mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]), _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]));
        let (y01, y23) = (_mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]), _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]));
        let rows = [
            _mm512_shuffle_f32x4::<0x88>(x01, y01),
            _mm512_shuffle_f32x4::<0xDD>(x01, y01),
            _mm512_shuffle_f32x4::<0x88>(x23, y23),
            _mm512_shuffle_f32x4::<0xDD>(x23, y23),
        ];
        for (lane, row) in rows.into_iter().enumerate() {
            // SAFETY: output row 4·lane + m < 16 (the caller's bounds).
            unsafe { _mm512_storeu_ps(dst.add((4 * lane + m) * ldd), row) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_of_blocks_is_the_transpose() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        for (rows, cols) in [(16, 16), (64, 128), (48, 32)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![f32::NAN; rows * cols];
            // SAFETY: AVX-512F checked above.
            unsafe { transpose(&src, rows, cols, &mut dst) };
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(dst[c * rows + r], src[r * cols + c], "{rows} x {cols}: ({r}, {c})");
                }
            }
        }
    }
}
