//! Casts, concat, narrow and permute (layout.cu): element moves with no arithmetic. Concat and
//! narrow are 2-D block copies; permute is a strided copy, or a plain device copy when the
//! permutation moves no data (only size-1 axes change places).

use kernels_cuda::LAYOUT;

use super::strided::{coalesce, StridedLayout};
use super::{nbytes, widest_word, word_suffix};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Result};

pub(crate) fn cast(x: &CudaStorage, dtype: DType) -> Result<CudaStorage> {
    if x.dtype() == dtype {
        return x.try_clone();
    }
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, dtype, x.len())?;
    if x.is_empty() {
        return Ok(out);
    }
    let (xp, yp, n) = (x.ptr(), out.ptr(), x.len() as u64);
    let grid = Grid::linear(dev, n);
    let cost = Cost { bytes: nbytes(x.len(), x.dtype()) + nbytes(x.len(), dtype), flops: 0 };
    // SAFETY: cast_<S>_<D>(const S* x, D* y, u64 n); x holds n elements of S, y n elements of D.
    unsafe { launch(dev, &LAYOUT, &format!("cast_{}_{}", x.dtype().name(), dtype.name()), grid, &mut kernel_args![&xp, &yp, &n], cost)? };
    Ok(out)
}

/// One rectangle of a 2-D copy, in elements: `rows` rows of `cols` elements, from `src` starting at
/// element `src_off` with row stride `src_stride`, to `dst` at `dst_off` with row stride `dst_stride`.
struct Block2d {
    rows: usize,
    cols: usize,
    src_off: usize,
    src_stride: usize,
    dst_off: usize,
    dst_stride: usize,
}

fn copy2d(src: &CudaStorage, dst: &CudaStorage, b: Block2d) -> Result<()> {
    if b.rows * b.cols == 0 {
        return Ok(());
    }
    let e = src.dtype().size_in_bytes();
    let word = widest_word(e, &[b.cols * e, b.src_off * e, b.src_stride * e, b.dst_off * e, b.dst_stride * e], 16);
    let in_words = |elems: usize| (elems * e / word) as u64;
    let sp = src.ptr() + (b.src_off * e) as u64;
    let dp = dst.ptr() + (b.dst_off * e) as u64;
    let (rows, cols, ss, ds) = (b.rows as u64, in_words(b.cols), in_words(b.src_stride), in_words(b.dst_stride));
    let dev = src.dev();
    let grid = Grid::rows_by_cols(dev, rows, cols);
    let cost = Cost { bytes: 2 * nbytes(b.rows * b.cols, src.dtype()), flops: 0 };
    // SAFETY: copy2d_<w>(const W* src, W* dst, u64 rows, u64 cols, u64 src_stride, u64 dst_stride);
    // the word divides every offset and stride (so both pointers are word-aligned: buffers are
    // 512-byte aligned), and the callers keep every row inside both buffers.
    unsafe { launch(dev, &LAYOUT, &format!("copy2d_{}", word_suffix(word)), grid, &mut kernel_args![&sp, &dp, &rows, &cols, &ss, &ds], cost) }
}

pub(crate) fn concat(parts: &[&CudaStorage], outer: usize, block_lens: &[usize]) -> Result<CudaStorage> {
    let first = parts[0];
    let total: usize = block_lens.iter().sum();
    let out = CudaStorage::uninit(first.dev(), first.dtype(), outer * total)?;
    let mut off = 0;
    for (part, &len) in parts.iter().zip(block_lens) {
        copy2d(part, &out, Block2d { rows: outer, cols: len, src_off: 0, src_stride: len, dst_off: off, dst_stride: total })?;
        off += len;
    }
    Ok(out)
}

pub(crate) fn narrow(x: &CudaStorage, outer: usize, block: usize, start: usize, len: usize) -> Result<CudaStorage> {
    let out = CudaStorage::uninit(x.dev(), x.dtype(), outer * len)?;
    copy2d(x, &out, Block2d { rows: outer, cols: len, src_off: start, src_stride: block, dst_off: 0, dst_stride: len })?;
    Ok(out)
}

pub(crate) fn permute(x: &CudaStorage, dims: &[usize], perm: &[usize]) -> Result<CudaStorage> {
    const OP: &str = "permute";
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, x.dtype(), x.len())?;
    if x.is_empty() {
        return Ok(out);
    }
    let in_strides = crate::Shape::new(dims.to_vec()).strides();
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let src_strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    let (cdims, cstrides) = coalesce(&out_dims, &[&src_strides]);
    if cdims.len() <= 1 && cstrides[0].iter().all(|&s| s == 1) {
        out.copy_from(x)?;
        return Ok(out);
    }
    let layout = StridedLayout::new(OP, &cdims, &cstrides[0], None)?;
    let (xp, yp) = (x.ptr(), out.ptr());
    let n = x.len() as u64;
    let grid = Grid::linear(dev, n);
    let cost = Cost { bytes: 2 * nbytes(x.len(), x.dtype()), flops: 0 };
    let w = word_suffix(x.dtype().size_in_bytes());
    if layout.fits_u32(n) {
        let n = n as u32;
        // SAFETY: copy_strided_<w>(const W* src, W* dst, u32 n, StridedLayout l); the layout is a
        // permutation of x's own row-major strides, so every offset is inside x; out holds n.
        unsafe { launch(dev, &LAYOUT, &format!("copy_strided_{w}"), grid, &mut kernel_args![&xp, &yp, &n, &layout], cost)? };
    } else {
        // SAFETY: as above, with copy_strided64_<w>(..., u64 n, StridedLayout l).
        unsafe { launch(dev, &LAYOUT, &format!("copy_strided64_{w}"), grid, &mut kernel_args![&xp, &yp, &n, &layout], cost)? };
    }
    Ok(out)
}
