//! Ops that move elements without arithmetic: cast, concat, narrow, permute. All take any dtype.
//!
//! Cast goes through f64, which holds every f32, bf16, f16 and u32 value exactly, so each
//! conversion rounds once, straight to the target (floats to u32 truncate toward zero and
//! saturate; NaN becomes 0). Permute walks the collapsed layout (`Strided`): runs that stay
//! contiguous in the source (a head axis moved, `[b,t,h,d] -> [b,h,t,d]`) are plain copies, and a
//! true transpose is copied in square tiles so that each source cache line is used by several
//! output rows before it is evicted.

use super::elem::{with_any, Elem};
use std::mem::MaybeUninit;

use super::par::{chunks, copy_into, filled, worth_it, FLAT_CHUNK};
use super::strided::Strided;
use crate::{CpuStorage, DType, Error, Result};

/// Side of the square tiles a transposing permute copies.
const TILE: usize = 32;

pub(super) fn cast(x: &CpuStorage, dtype: DType) -> Result<CpuStorage> {
    Ok(with_any!(x, |v| match dtype {
        DType::F32 => CpuStorage::F32(convert(v)),
        DType::F64 => CpuStorage::F64(convert(v)),
        DType::BF16 => CpuStorage::BF16(convert(v)),
        DType::F16 => CpuStorage::F16(convert(v)),
        DType::U32 => CpuStorage::U32(convert(v)),
    }))
}

pub(super) fn concat(parts: &[&CpuStorage], outer: usize, block_lens: &[usize]) -> Result<CpuStorage> {
    const OP: &str = "concat";
    let first = *parts.first().ok_or_else(|| Error::invalid(OP, "no parts given"))?;
    if parts.len() != block_lens.len() {
        return Err(Error::invalid(OP, format!("{} parts but {} block lengths", parts.len(), block_lens.len())));
    }
    with_any!(first, |f| {
        let mut typed = vec![f];
        for p in &parts[1..] {
            typed.push(Elem::view(OP, p)?);
        }
        if let Some((p, len)) = typed.iter().zip(block_lens).find(|(p, &len)| p.len() != outer * len) {
            return Err(Error::shape(OP, format!("a part of {} elements is not {outer} blocks of {len}", p.len())));
        }
        Ok(Elem::wrap(concat_typed(&typed, outer, block_lens)))
    })
}

pub(super) fn narrow(x: &CpuStorage, outer: usize, block: usize, start: usize, len: usize) -> Result<CpuStorage> {
    if start + len > block || x.len() != outer * block {
        return Err(Error::shape(
            "narrow",
            format!("range {start}..{} of {outer} blocks of {block} over {} elements", start + len, x.len()),
        ));
    }
    Ok(with_any!(x, |v| Elem::wrap(narrow_typed(v, outer, block, start, len))))
}

pub(super) fn permute(x: &CpuStorage, dims: &[usize], perm: &[usize]) -> Result<CpuStorage> {
    let mut seen = vec![false; dims.len()];
    let is_perm = perm.len() == dims.len() && perm.iter().all(|&p| p < dims.len() && !std::mem::replace(&mut seen[p], true));
    if !is_perm || x.len() != dims.iter().product::<usize>() {
        return Err(Error::shape("permute", format!("{perm:?} is not a permutation of the axes of {dims:?} ({} elements)", x.len())));
    }
    let in_strides = crate::Shape::new(dims).strides();
    let out_dims: Vec<usize> = perm.iter().map(|&p| dims[p]).collect();
    let strides: Vec<usize> = perm.iter().map(|&p| in_strides[p]).collect();
    Ok(with_any!(x, |v| Elem::wrap(permute_typed(v, &out_dims, &strides))))
}

// The outputs below are written whole by their chunks, so they start uninitialised (`filled`).

fn convert<S: Elem, D: Elem>(src: &[S]) -> Vec<D> {
    let fill = |out: &mut [MaybeUninit<D>]| {
        chunks(out, FLAT_CHUNK, worth_it(src.len()), |i, o| {
            for (o, s) in o.iter_mut().zip(&src[i * FLAT_CHUNK..]) {
                o.write(D::from_f64(s.to_f64()));
            }
        })
    };
    // SAFETY: the flat chunks cover the output and every element gets its source's value.
    unsafe { filled(src.len(), fill) }
}

fn narrow_typed<T: Elem>(src: &[T], outer: usize, block: usize, start: usize, len: usize) -> Vec<T> {
    let fill = |out: &mut [MaybeUninit<T>]| {
        chunks(out, len, worth_it(outer * len), |o, dst| copy_into(dst, &src[o * block + start..][..len]))
    };
    // SAFETY: the chunks are the output's `outer` rows of `len`, each copied whole.
    unsafe { filled(outer * len, fill) }
}

fn concat_typed<T: Elem>(parts: &[&[T]], outer: usize, block_lens: &[usize]) -> Vec<T> {
    let total: usize = block_lens.iter().sum();
    let fill = |out: &mut [MaybeUninit<T>]| {
        chunks(out, total, worth_it(outer * total), |o, dst| {
            let mut at = 0;
            for (p, &len) in parts.iter().zip(block_lens) {
                copy_into(&mut dst[at..at + len], &p[o * len..][..len]);
                at += len;
            }
        })
    };
    // SAFETY: the chunks are the output's rows of `total`, and the blocks' lengths sum to `total`.
    unsafe { filled(outer * total, fill) }
}

/// Copies `src` read through `strides` (one per output axis) into a contiguous `out_dims` tensor.
fn permute_typed<T: Elem>(src: &[T], out_dims: &[usize], strides: &[usize]) -> Vec<T> {
    if src.is_empty() {
        return Vec::new();
    }
    let layout = Strided::new(out_dims, [strides]);
    let (inner, [step]) = (layout.inner, layout.inner_strides);
    // Tiles of TILE output rows: consecutive output rows are usually neighbours in the source.
    let fill = |out: &mut [MaybeUninit<T>]| {
        chunks(out, inner * TILE, worth_it(src.len()), |g, block| {
            let offsets: Vec<usize> = (0..block.len() / inner).map(|r| layout.offsets(g * TILE + r)[0]).collect();
            if step == 1 {
                for (row, &off) in block.chunks_mut(inner).zip(&offsets) {
                    copy_into(row, &src[off..][..inner]);
                }
                return;
            }
            for j0 in (0..inner).step_by(TILE) {
                let j1 = (j0 + TILE).min(inner);
                for (row, &off) in block.chunks_mut(inner).zip(&offsets) {
                    for (j, o) in (j0..j1).zip(&mut row[j0..j1]) {
                        o.write(src[off + j * step]);
                    }
                }
            }
        })
    };
    // SAFETY: the blocks are whole output rows of `inner`, and every column of every row is
    // written (one copy, or the column tiles j0 .. j1 that cover 0 .. inner).
    unsafe { filled(src.len(), fill) }
}
