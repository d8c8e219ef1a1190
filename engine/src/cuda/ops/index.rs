//! Row and last-axis gathers and scatter-adds by u32 index (index.cu).

use kernels_cuda::INDEX;

use super::{float_suffix, nbytes, widest_word, word_suffix};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::{DType, Result};

/// `out[i, :] = src[idx[i], :]`.
pub(crate) fn index_select(src: &CudaStorage, idx: &CudaStorage, n_idx: usize, row_len: usize) -> Result<CudaStorage> {
    let dev = src.dev();
    let dtype = src.dtype();
    let out = CudaStorage::uninit(dev, dtype, n_idx * row_len)?;
    if n_idx * row_len == 0 {
        return Ok(out);
    }
    let row_bytes = row_len * dtype.size_in_bytes();
    let word = widest_word(dtype.size_in_bytes(), &[row_bytes], 16);
    let (sp, ip, op, n, words) = (src.ptr(), idx.ptr(), out.ptr(), n_idx as u64, (row_bytes / word) as u64);
    let grid = Grid::rows_by_cols(dev, n, words);
    let cost = Cost { bytes: 2 * nbytes(n_idx * row_len, dtype) + nbytes(n_idx, DType::U32), flops: 0 };
    // SAFETY: index_select_<w>(const W* src, const u32* idx, W* out, u64 n_idx, u64 row_words);
    // every index is < src_rows (op layer), src holds src_rows rows of `words` words, out n_idx rows.
    unsafe {
        launch(dev, &INDEX, &format!("index_select_{}", word_suffix(word)), grid, &mut kernel_args![&sp, &ip, &op, &n, &words], cost)?
    };
    Ok(out)
}

/// `out[idx[i], :] += src[i, :]` into zeros, accumulated in f32 with atomics.
pub(crate) fn scatter_add_rows(src: &CudaStorage, idx: &CudaStorage, n_idx: usize, row_len: usize, out_rows: usize) -> Result<CudaStorage> {
    let sfx = float_suffix("scatter_add_rows", src.dtype())?;
    let dev = src.dev();
    let acc = CudaStorage::zeros(dev, DType::F32, out_rows * row_len)?;
    if n_idx * row_len > 0 {
        let (sp, ip, ap, n, len) = (src.ptr(), idx.ptr(), acc.ptr(), n_idx as u64, row_len as u64);
        let grid = Grid::rows_by_cols(dev, n, len);
        let cost = Cost {
            bytes: nbytes(n_idx * row_len, src.dtype()) + nbytes(n_idx * row_len, DType::F32) + nbytes(n_idx, DType::U32),
            flops: (n_idx * row_len) as u64,
        };
        // SAFETY: scatter_add_rows_<T>(const T* src, const u32* idx, float* acc, u64 n_idx, u64 row_len);
        // src holds n_idx rows, acc out_rows rows, and every index is < out_rows (op layer).
        unsafe { launch(dev, &INDEX, &format!("scatter_add_rows_{sfx}"), grid, &mut kernel_args![&sp, &ip, &ap, &n, &len], cost)? };
    }
    if src.dtype() == DType::F32 {
        Ok(acc)
    } else {
        super::layout::cast(&acc, src.dtype())
    }
}

/// `out[r, j] = src[r, idx[r, j]]`.
pub(crate) fn gather_last(src: &CudaStorage, idx: &CudaStorage, rows: usize, n: usize, k: usize) -> Result<CudaStorage> {
    let dev = src.dev();
    let dtype = src.dtype();
    let out = CudaStorage::uninit(dev, dtype, rows * k)?;
    if rows * k == 0 {
        return Ok(out);
    }
    let (sp, ip, op, r, nn, kk) = (src.ptr(), idx.ptr(), out.ptr(), rows as u64, n as u64, k as u64);
    let grid = Grid::linear(dev, r * kk);
    let cost = Cost { bytes: 2 * nbytes(rows * k, dtype) + nbytes(rows * k, DType::U32), flops: 0 };
    // SAFETY: gather_last_<w>(const E* src, const u32* idx, E* out, u64 rows, u64 n, u64 k) with E
    // the element's width; src holds rows·n elements, idx and out rows·k, every index < n (op layer).
    unsafe {
        launch(dev, &INDEX, &format!("gather_last_{}", word_suffix(dtype.size_in_bytes())), grid, &mut kernel_args![&sp, &ip, &op, &r, &nn, &kk], cost)?
    };
    Ok(out)
}

/// `out[r, idx[r, j]] += src[r, j]` into zeros, deterministic (summed in j order, in f32).
pub(crate) fn scatter_add_last(src: &CudaStorage, idx: &CudaStorage, rows: usize, k: usize, n: usize) -> Result<CudaStorage> {
    let sfx = float_suffix("scatter_add_last", src.dtype())?;
    let dev = src.dev();
    let out = CudaStorage::zeros(dev, src.dtype(), rows * n)?;
    if rows * k == 0 {
        return Ok(out);
    }
    let (sp, ip, op, r, kk, nn) = (src.ptr(), idx.ptr(), out.ptr(), rows as u64, k as u64, n as u64);
    let grid = Grid::linear(dev, r * kk);
    let cost = Cost { bytes: nbytes(rows * k, src.dtype()) + nbytes(rows * k, DType::U32) + nbytes(rows * n, src.dtype()), flops: (rows * k) as u64 };
    // SAFETY: scatter_add_last_<T>(const T* src, const u32* idx, T* out, u64 rows, u64 k, u64 n);
    // src and idx hold rows·k elements, out rows·n, every index < n (op layer).
    unsafe { launch(dev, &INDEX, &format!("scatter_add_last_{sfx}"), grid, &mut kernel_args![&sp, &ip, &op, &r, &kk, &nn], cost)? };
    Ok(out)
}
