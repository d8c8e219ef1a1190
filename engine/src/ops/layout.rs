//! Ops that move elements without arithmetic: cast, concat, split / narrow, transpose / permute.

use super::{dispatch, resolve_dim};
use crate::backend::BackendStorage;
use crate::{CpuStorage, DType, Error, Result, Shape, Storage, Tensor};

pub fn cast(x: &Tensor, dtype: DType) -> Result<Tensor> {
    if x.dtype() == dtype {
        return Ok(x.clone());
    }
    let s = dispatch!(x, |s| s.cast(dtype));
    Ok(Tensor::from_storage(s, x.shape().clone(), dtype))
}

/// Joins tensors along `dim`; every other axis, the dtype and the device must agree.
pub fn concat(parts: &[&Tensor], dim: isize) -> Result<Tensor> {
    const OP: &str = "concat";
    let first = *parts.first().ok_or_else(|| Error::invalid(OP, "no tensors given"))?;
    let d = resolve_dim(OP, dim, first.rank())?;
    for p in parts {
        super::check_same_device(OP, first, p)?;
        super::check_same_dtype(OP, first, p)?;
        let (a, b) = (first.dims(), p.dims());
        if a.len() != b.len() || a.iter().zip(b).enumerate().any(|(i, (x, y))| i != d && x != y) {
            return Err(Error::shape(OP, format!("{:?} and {:?} differ outside dim {d}", first.shape(), p.shape())));
        }
    }
    let (outer, _, inner) = first.shape().split_at_dim(d);
    let block_lens: Vec<usize> = parts.iter().map(|p| p.dims()[d] * inner).collect();
    let mut dims = first.dims().to_vec();
    dims[d] = parts.iter().map(|p| p.dims()[d]).sum();
    let storage = match first.storage() {
        Storage::Cpu(_) => {
            let v: Vec<&CpuStorage> = parts.iter().map(|p| match p.storage() {
                Storage::Cpu(s) => s,
                Storage::Cuda(_) => unreachable!("devices checked"),
            }).collect();
            Storage::Cpu(CpuStorage::concat(&v, outer, &block_lens)?)
        }
        Storage::Cuda(_) => {
            let v: Vec<&crate::cuda::CudaStorage> = parts.iter().map(|p| match p.storage() {
                Storage::Cuda(s) => s,
                Storage::Cpu(_) => unreachable!("devices checked"),
            }).collect();
            Storage::Cuda(crate::cuda::CudaStorage::concat(&v, outer, &block_lens)?)
        }
    };
    Ok(Tensor::from_storage(storage, Shape::new(dims), first.dtype()))
}

/// `len` entries of axis `dim` starting at `start`.
pub fn narrow(x: &Tensor, dim: isize, start: usize, len: usize) -> Result<Tensor> {
    const OP: &str = "narrow";
    let d = resolve_dim(OP, dim, x.rank())?;
    if start + len > x.dims()[d] {
        return Err(Error::shape(OP, format!("range {start}..{} out of bounds for dim {d} of {:?}", start + len, x.shape())));
    }
    let (outer, size, inner) = x.shape().split_at_dim(d);
    let s = dispatch!(x, |s| s.narrow(outer, size * inner, start * inner, len * inner));
    let mut dims = x.dims().to_vec();
    dims[d] = len;
    Ok(Tensor::from_storage(s, Shape::new(dims), x.dtype()))
}

/// Cuts axis `dim` into pieces of the given sizes, which must add up to its length.
pub fn split(x: &Tensor, sizes: &[usize], dim: isize) -> Result<Vec<Tensor>> {
    let d = resolve_dim("split", dim, x.rank())?;
    if sizes.iter().sum::<usize>() != x.dims()[d] {
        return Err(Error::shape("split", format!("sizes {sizes:?} do not add up to dim {d} of {:?}", x.shape())));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&len| {
            let piece = narrow(x, d as isize, start, len);
            start += len;
            piece
        })
        .collect()
}

/// Reorders axes: output axis i is input axis `perm[i]` (copies).
pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let mut seen = vec![false; x.rank()];
    if perm.len() != x.rank() || perm.iter().any(|&p| p >= x.rank() || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::shape("permute", format!("{perm:?} is not a permutation of the axes of {:?}", x.shape())));
    }
    let s = dispatch!(x, |s| s.permute(x.dims(), perm));
    let dims: Vec<usize> = perm.iter().map(|&p| x.dims()[p]).collect();
    Ok(Tensor::from_storage(s, Shape::new(dims), x.dtype()))
}

/// Swaps two axes (copies).
pub fn transpose(x: &Tensor, d0: isize, d1: isize) -> Result<Tensor> {
    let a = resolve_dim("transpose", d0, x.rank())?;
    let b = resolve_dim("transpose", d1, x.rank())?;
    let mut perm: Vec<usize> = (0..x.rank()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}
