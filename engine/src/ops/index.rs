//! Indexing: row gather / scatter-add (embeddings, token permutation), last-axis gather /
//! scatter-add (picking targets, routing weights) and top-k. Indices are u32 tensors.

use super::{check_float, check_index, check_index_bounds, check_same_device, dispatch2};
use crate::backend::BackendStorage;
use crate::{DType, Error, Result, Shape, Tensor};

/// Rows of `src` (axis 0) picked by `idx` (rank 1): output `[idx.len(), src.dims()[1..]]`.
pub fn index_select(src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "index_select";
    check_same_device(OP, src, idx)?;
    check_index(OP, idx)?;
    if src.rank() == 0 || idx.rank() != 1 {
        return Err(Error::shape(OP, format!("needs src of rank >= 1 and idx of rank 1, got {:?} and {:?}", src.shape(), idx.shape())));
    }
    check_index_bounds(OP, idx, src.dims()[0])?;
    index_select_unchecked(src, idx)
}

/// `index_select` for indices known to be in range (built on the device by routing kernels).
pub fn index_select_unchecked(src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    let row_len: usize = src.dims()[1..].iter().product();
    let n = idx.elem_count();
    let s = dispatch2!(src, idx, |x, i| x.index_select(i, n, row_len));
    let mut dims = src.dims().to_vec();
    dims[0] = n;
    Ok(Tensor::from_storage(s, Shape::new(dims), src.dtype()))
}

/// `out[idx[i]] += src[i]` into `out_rows` zeroed rows: the gradient of `index_select`.
pub fn scatter_add_rows(src: &Tensor, idx: &Tensor, out_rows: usize) -> Result<Tensor> {
    const OP: &str = "scatter_add_rows";
    check_same_device(OP, src, idx)?;
    check_index(OP, idx)?;
    check_float(OP, src)?;
    if src.rank() == 0 || idx.rank() != 1 || idx.elem_count() != src.dims()[0] {
        return Err(Error::shape(OP, format!("needs idx of rank 1 with one index per row of src, got {:?} and {:?}", src.shape(), idx.shape())));
    }
    check_index_bounds(OP, idx, out_rows)?;
    let row_len: usize = src.dims()[1..].iter().product();
    let n = idx.elem_count();
    let s = dispatch2!(src, idx, |x, i| x.scatter_add_rows(i, n, row_len, out_rows));
    let mut dims = src.dims().to_vec();
    dims[0] = out_rows;
    Ok(Tensor::from_storage(s, Shape::new(dims), src.dtype()))
}

/// `out[..., j] = src[..., idx[..., j]]`: `src` is `[..., n]`, `idx` is `[..., k]` with the same leading axes.
pub fn gather_last(src: &Tensor, idx: &Tensor) -> Result<Tensor> {
    const OP: &str = "gather_last";
    check_same_device(OP, src, idx)?;
    check_index(OP, idx)?;
    check_leading(OP, src, idx)?;
    let (rows, n, k) = (src.shape().rows(), src.shape().last(), idx.shape().last());
    check_index_bounds(OP, idx, n)?;
    let s = dispatch2!(src, idx, |x, i| x.gather_last(i, rows, n, k));
    Ok(Tensor::from_storage(s, idx.shape().clone(), src.dtype()))
}

/// `out[..., idx[..., j]] += src[..., j]` into a zeroed `[..., n]`: the gradient of `gather_last`.
pub fn scatter_add_last(src: &Tensor, idx: &Tensor, n: usize) -> Result<Tensor> {
    const OP: &str = "scatter_add_last";
    check_same_device(OP, src, idx)?;
    check_index(OP, idx)?;
    check_float(OP, src)?;
    if src.shape() != idx.shape() {
        return Err(Error::shape(OP, format!("src {:?} and idx {:?} must have one shape", src.shape(), idx.shape())));
    }
    check_index_bounds(OP, idx, n)?;
    let (rows, k) = (src.shape().rows(), src.shape().last());
    let s = dispatch2!(src, idx, |x, i| x.scatter_add_last(i, rows, k, n));
    let mut dims = src.dims().to_vec();
    *dims.last_mut().expect("rank checked") = n;
    Ok(Tensor::from_storage(s, Shape::new(dims), src.dtype()))
}

/// The `k` largest entries of each last-axis row, descending, ties to the lower index:
/// (values in x's dtype, u32 indices), both `[..., k]`.
pub fn topk(x: &Tensor, k: usize) -> Result<(Tensor, Tensor)> {
    const OP: &str = "topk";
    check_float(OP, x)?;
    if x.rank() == 0 || k == 0 || k > x.shape().last() {
        return Err(Error::shape(OP, format!("k = {k} must be in 1..={} for shape {:?}", x.shape().last(), x.shape())));
    }
    let (rows, n) = (x.shape().rows(), x.shape().last());
    let (v, i) = match x.storage() {
        crate::Storage::Cpu(s) => {
            let (v, i) = s.topk(rows, n, k)?;
            (crate::Storage::Cpu(v), crate::Storage::Cpu(i))
        }
        crate::Storage::Cuda(s) => {
            let (v, i) = s.topk(rows, n, k)?;
            (crate::Storage::Cuda(v), crate::Storage::Cuda(i))
        }
    };
    let mut dims = x.dims().to_vec();
    *dims.last_mut().expect("rank checked") = k;
    Ok((Tensor::from_storage(v, Shape::new(dims.clone()), x.dtype()), Tensor::from_storage(i, Shape::new(dims), DType::U32)))
}

fn check_leading(op: &'static str, src: &Tensor, idx: &Tensor) -> Result<()> {
    let (s, i) = (src.dims(), idx.dims());
    if s.is_empty() || s.len() != i.len() || s[..s.len() - 1] != i[..i.len() - 1] {
        return Err(Error::shape(op, format!("src {:?} and idx {:?} must share every axis but the last", src.shape(), idx.shape())));
    }
    Ok(())
}
