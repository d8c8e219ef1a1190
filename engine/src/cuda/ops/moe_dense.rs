//! The dense-training MoE MLP (moe_dense.cu): the two products of width h = E·f run fused with the
//! router gating and GeLU (bf16 / f16 on shapes the fused kernels take), or as the engine's matmul
//! followed by the same gating as a separate pass (f32 and other shapes); the other four products
//! are the engine's matmul. The kernel file's header has the algorithm and the traffic count.

use kernels_cuda::MOE_DENSE;

use super::matmul::matmul;
use super::{float_suffix, nbytes};
use crate::backend::{MatmulLayout, MoeDenseDims};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Error, Result};

const OP: &str = "moe_dense_mlp";

/// Columns summed into one dp partial: moe_dense.cu's DP_TILE (the fused tile's width).
const DP_TILE: usize = 128;
/// Rows of the fused kernels' output tile (their grid is ceil(T / TILE_M)·ceil(h / DP_TILE) blocks).
const TILE_M: usize = 128;
/// Threads of a fused block (2 x 2 warps).
const FUSED_THREADS: u32 = 128;

/// dp partials per token: one per 128-column tile plus one per expert, so `tile + e` names every
/// (tile, expert) pair that overlap without a collision (see `tests::partial_slots_are_distinct`).
fn dp_slots(dims: &MoeDenseDims) -> usize {
    dims.hidden().div_ceil(DP_TILE) + dims.experts
}

/// Whether the fused kernels run here: compute capability 8.0 or newer (mma.sync.m16n8k16, cp.async),
/// 16-bit inputs, rows of whole 16-byte chunks (cp.async), h a multiple of 8 (the mainloop's N),
/// f even (a column pair is one expert's), and sizes that fit the kernels' u32 arithmetic and the
/// grid.
fn fused(cc_major: u32, dtype: DType, dims: &MoeDenseDims) -> bool {
    let fits = |n: usize| n <= u32::MAX as usize;
    let tiles = dims.tokens.div_ceil(TILE_M) * dims.hidden().div_ceil(DP_TILE);
    cc_major >= 8
        && matches!(dtype, DType::BF16 | DType::F16)
        && dims.d % 8 == 0
        && dims.hidden() % 8 == 0
        && dims.width % 2 == 0
        && fits(dims.tokens)
        && fits(dims.hidden())
        && fits(dims.d)
        && tiles <= i32::MAX as usize
}

/// The fused kernels' grid: one block per 128 x 128 output tile.
fn fused_grid(dims: &MoeDenseDims) -> Grid {
    let tiles = dims.tokens.div_ceil(TILE_M) * dims.hidden().div_ceil(DP_TILE);
    Grid { grid: (tiles as u32, 1, 1), block: (FUSED_THREADS, 1, 1) }
}

fn layout(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> MatmulLayout {
    MatmulLayout { batch: 1, m, n, k, trans_a, trans_b, a_batch_stride: 0, b_batch_stride: 0 }
}

/// Returns (y, u, g).
pub(crate) fn forward(x: &CudaStorage, w1: &CudaStorage, w2: &CudaStorage, p: &CudaStorage, dims: &MoeDenseDims) -> Result<(CudaStorage, CudaStorage, CudaStorage)> {
    let dtype = x.dtype();
    let sfx = float_suffix(OP, dtype)?;
    let dev = x.dev();
    let &MoeDenseDims { tokens, d, experts, width } = dims;
    let h = dims.hidden();
    let g = CudaStorage::uninit(dev, dtype, tokens * h)?;
    let u = if g.is_empty() {
        CudaStorage::uninit(dev, dtype, 0)?
    } else if fused(dev.info.compute_capability.0, dtype, dims) {
        let u = CudaStorage::uninit(dev, dtype, tokens * h)?;
        let (xp, wp, pp, up, gp) = (x.ptr(), w1.ptr(), p.ptr(), u.ptr(), g.ptr());
        let (t, hh, dd, f, e) = (tokens as u32, h as u32, d as u32, width as u32, experts as u32);
        let cost = Cost { bytes: nbytes(tokens * d + h * d + 2 * tokens * h + tokens * experts, dtype), flops: 2 * (tokens * h * d) as u64 };
        // SAFETY: moe_up_gate_<T>(const T* x, const T* w1, const T* p, T* u, T* g, u32 tokens,
        // u32 hidden, u32 d, u32 width, u32 experts); the op layer checked x [T, d], w1 [h, d],
        // p [T, E]; u and g hold T·h; `fused` checked the alignment and u32 ranges.
        unsafe { launch(dev, &MOE_DENSE, &format!("moe_up_gate_{sfx}"), fused_grid(dims), &mut kernel_args![&xp, &wp, &pp, &up, &gp, &t, &hh, &dd, &f, &e], cost)? };
        u
    } else {
        let u = matmul(x, w1, &layout(tokens, h, d, false, true))?;
        let (up, pp, gp) = (u.ptr(), p.ptr(), g.ptr());
        let (t, hh, f, e) = (tokens as u64, h as u64, width as u64, experts as u64);
        let cost = Cost { bytes: nbytes(2 * tokens * h + tokens * experts, dtype), flops: 0 };
        // SAFETY: moe_gate_fwd_<T>(const T* u, const T* p, T* g, u64 tokens, u64 hidden, u64 width,
        // u64 experts); u and g hold T·h, p holds T·E.
        unsafe { launch(dev, &MOE_DENSE, &format!("moe_gate_fwd_{sfx}"), Grid::linear(dev, t * hh), &mut kernel_args![&up, &pp, &gp, &t, &hh, &f, &e], cost)? };
        u
    };
    let y = matmul(&g, w2, &layout(tokens, d, h, false, false))?;
    Ok((y, u, g))
}

/// Returns (dx, dw1, dw2, dp).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    dy: &CudaStorage,
    x: &CudaStorage,
    w1: &CudaStorage,
    w2: &CudaStorage,
    p: &CudaStorage,
    u: &CudaStorage,
    g: &CudaStorage,
    dims: &MoeDenseDims,
) -> Result<(CudaStorage, CudaStorage, CudaStorage, CudaStorage)> {
    let dtype = dy.dtype();
    let sfx = float_suffix(OP, dtype)?;
    let dev = dy.dev();
    let &MoeDenseDims { tokens, d, experts, width } = dims;
    let h = dims.hidden();
    if u.len() != tokens * h || g.len() != tokens * h {
        return Err(Error::shape(OP, format!("saved u / g hold {} / {} elements, {dims:?} needs {}", u.len(), g.len(), tokens * h)));
    }
    let du = CudaStorage::uninit(dev, dtype, tokens * h)?;
    let dp = CudaStorage::uninit(dev, dtype, tokens * experts)?;
    if !du.is_empty() {
        let slots = dp_slots(dims);
        let partial = CudaStorage::uninit(dev, DType::F32, tokens * slots)?;
        let partial_bytes = nbytes(tokens * slots, DType::F32);
        if fused(dev.info.compute_capability.0, dtype, dims) {
            let (yp, wp, up, pp, dup, pap) = (dy.ptr(), w2.ptr(), u.ptr(), p.ptr(), du.ptr(), partial.ptr());
            let (t, hh, dd, f, e) = (tokens as u32, h as u32, d as u32, width as u32, experts as u32);
            let cost = Cost { bytes: nbytes(tokens * d + h * d + 2 * tokens * h + tokens * experts, dtype) + partial_bytes, flops: 2 * (tokens * h * d) as u64 };
            // SAFETY: moe_down_grad_<T>(const T* dy, const T* w2, const T* u, const T* p, T* du,
            // float* partial, u32 tokens, u32 hidden, u32 d, u32 width, u32 experts); dy [T, d],
            // w2 [h, d], u and du T·h, p T·E, partial T·dp_slots f32; `fused` checked alignment
            // and u32 ranges.
            unsafe {
                launch(dev, &MOE_DENSE, &format!("moe_down_grad_{sfx}"), fused_grid(dims), &mut kernel_args![&yp, &wp, &up, &pp, &dup, &pap, &t, &hh, &dd, &f, &e], cost)?
            };
        } else {
            let dg = matmul(dy, w2, &layout(tokens, h, d, false, true))?;
            let (gp, up, pp, dup, pap) = (dg.ptr(), u.ptr(), p.ptr(), du.ptr(), partial.ptr());
            let (t, hh, f, e) = (tokens as u64, h as u64, width as u64, experts as u64);
            let items = t * h.div_ceil(DP_TILE) as u64;
            let cost = Cost { bytes: nbytes(3 * tokens * h + tokens * experts, dtype) + partial_bytes, flops: 0 };
            // SAFETY: moe_gate_bwd_<T>(const T* dg, const T* u, const T* p, T* du, float* partial,
            // u64 tokens, u64 hidden, u64 width, u64 experts); dg, u, du hold T·h, p T·E, partial
            // T·dp_slots f32.
            unsafe { launch(dev, &MOE_DENSE, &format!("moe_gate_bwd_{sfx}"), Grid::linear(dev, items), &mut kernel_args![&gp, &up, &pp, &dup, &pap, &t, &hh, &f, &e], cost)? };
        }
        let (pap, dpp) = (partial.ptr(), dp.ptr());
        let (t, hh, f, e) = (tokens as u64, h as u64, width as u64, experts as u64);
        let cost = Cost { bytes: partial_bytes + nbytes(tokens * experts, dtype), flops: 0 };
        // SAFETY: moe_dp_reduce_<T>(const float* partial, T* dp, u64 tokens, u64 hidden, u64 width,
        // u64 experts); partial holds T·dp_slots f32 and every slot it reads was written above (the
        // same (tile, expert) pairs), dp holds T·E.
        unsafe { launch(dev, &MOE_DENSE, &format!("moe_dp_reduce_{sfx}"), Grid::linear(dev, t * e), &mut kernel_args![&pap, &dpp, &t, &hh, &f, &e], cost)? };
    }
    let dw2 = matmul(g, dy, &layout(h, d, tokens, true, false))?;
    let dw1 = matmul(&du, x, &layout(h, d, tokens, true, false))?;
    let dx = matmul(&du, w1, &layout(tokens, d, h, false, false))?;
    Ok((dx, dw1, dw2, dp))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The (tile, expert) pairs that overlap, as the kernels enumerate them: tile by tile, the
    /// experts whose columns meet it.
    fn overlapping_pairs(width: usize, experts: usize) -> Vec<(usize, usize)> {
        let h = width * experts;
        let mut pairs = Vec::new();
        for tile in 0..h.div_ceil(DP_TILE) {
            let (c0, c1) = (tile * DP_TILE, ((tile + 1) * DP_TILE).min(h));
            pairs.extend((c0 / width..=(c1 - 1) / width).map(|e| (tile, e)));
        }
        pairs
    }

    #[test]
    fn partial_slots_are_distinct_and_cover_every_column_once() {
        for (width, experts) in [(1, 300), (5, 3), (7, 40), (32, 3), (96, 5), (128, 4), (200, 3), (256, 32), (384, 32), (130, 9)] {
            let dims = MoeDenseDims { tokens: 1, d: 8, experts, width };
            let pairs = overlapping_pairs(width, experts);
            let mut used = vec![false; dp_slots(&dims)];
            for &(tile, e) in &pairs {
                assert!(!used[tile + e], "slot {} written twice (width {width}, experts {experts})", tile + e);
                used[tile + e] = true;
            }
            // dp_reduce's tile range for each expert reads exactly that expert's pairs.
            for e in 0..experts {
                let (first, last) = (e * width / DP_TILE, ((e + 1) * width - 1) / DP_TILE);
                let read: Vec<usize> = (first..=last).collect();
                let written: Vec<usize> = pairs.iter().filter(|p| p.1 == e).map(|p| p.0).collect();
                assert_eq!(read, written, "expert {e} (width {width}, experts {experts})");
            }
        }
    }

    #[test]
    fn fused_path_only_for_shapes_the_kernels_take() {
        let dims = MoeDenseDims { tokens: 1000, d: 2048, experts: 32, width: 256 };
        assert!(fused(8, DType::BF16, &dims) && fused(9, DType::F16, &dims));
        assert!(!fused(7, DType::BF16, &dims), "mma.sync.m16n8k16 needs sm_80");
        assert!(!fused(9, DType::F32, &dims));
        assert!(!fused(9, DType::BF16, &MoeDenseDims { d: 2044, ..dims }), "rows of x must be whole 16-byte chunks");
        assert!(!fused(9, DType::BF16, &MoeDenseDims { width: 5, experts: 3, ..dims }), "odd width splits a column pair");
        assert!(!fused(9, DType::BF16, &MoeDenseDims { width: 6, experts: 3, ..dims }), "h = 18 is not a multiple of 8");
        let g = fused_grid(&MoeDenseDims { tokens: 129, d: 64, experts: 3, width: 96 });
        assert_eq!(g.grid.0, 2 * 3);
    }
}
