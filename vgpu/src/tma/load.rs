//! A tiled TMA load: `cp.async.bulk.tensor.Nd.shared::cluster.global.tile` of one box.
//!
//! Model. The box starts at the tensor coordinates the instruction gives (signed, in elements) and
//! takes `ceil(boxDim[i] / elementStrides[i])` elements along dimension i, element j at coordinate
//! `coord[i] + j·elementStrides[i]`. In shared memory the box is dense with dimension 0 fastest: a row
//! (the dimension-0 run) is padded to a multiple of 16 bytes (only ever needed with
//! elementStrides\[0\] above 1), rows follow each other, and the swizzle of the map permutes the
//! 16-byte chunks by their absolute shared address ([`crate::matrix::Swizzle`]), the same function wgmma reads through.
//! Elements outside the tensor (any coordinate < 0 or >= globalDim) read as zero, or as the canonical
//! NaN with `NAN_REQUEST_ZERO_FMA`. The whole box is written and counted for the mbarrier's
//! complete_tx, out-of-bounds bytes included (so a box hanging over the edge still completes).
//!
//! Requirements checked: coordinate count = rank, a 128-byte aligned destination (PTX ISA), the box
//! inside the CTA's shared memory. Interleaved maps are not supported (our kernels use none).

use super::map::{Interleave, OobFill, TensorMap, MAX_RANK};
use super::TmaError;
use crate::matrix::Swizzle;

/// The shape of a map's box in shared memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Elements per dimension (`ceil(boxDim / elementStrides)`), 1 past the rank.
    pub counts: [u32; MAX_RANK],
    /// Bytes per dimension-0 row (a multiple of 16).
    pub row_bytes: u32,
    /// Bytes of the whole box: what one load writes and counts for complete_tx (saturated at
    /// u32::MAX for boxes no shared memory could hold).
    pub bytes: u32,
    pub swizzle: Swizzle,
}

impl Tile {
    pub fn of(map: &TensorMap) -> Tile {
        let counts: [u32; MAX_RANK] =
            std::array::from_fn(|i| if i < map.rank as usize { map.box_dims[i].div_ceil(map.element_strides[i]) } else { 1 });
        let row_bytes = (counts[0] * map.data_type.size_bytes() as u32).next_multiple_of(16);
        let bytes = counts[1..].iter().fold(row_bytes as u64, |b, &c| b * c as u64);
        Tile { counts, row_bytes, bytes: bytes.min(u32::MAX as u64) as u32, swizzle: map.swizzle }
    }

    /// The shared address of each 16-byte chunk a load of this box to `dst` writes, in box order.
    /// They are the chunks of `[dst, dst + bytes)` permuted within their 128-byte lines, so the
    /// same range whenever `dst` and `bytes` are multiples of 128 or there is no swizzle; a box
    /// ending inside a line under a swizzle may put a chunk past `dst + bytes`.
    pub fn chunk_addrs(&self, dst: u32) -> impl Iterator<Item = u32> {
        let swizzle = self.swizzle;
        (0..self.bytes / 16).map(move |c| swizzle.apply(dst + 16 * c))
    }
}

/// Loads the box at `coords` into shared memory at `dst` (`smem` indexed by shared address) and
/// returns its byte count for complete_tx. `read_global(addr, buf)` fills `buf` from device memory;
/// it is called once per contiguous in-bounds run (the interpreter checks the range there), and its
/// error is returned as is. Writes exactly the chunks of [`Tile::chunk_addrs`].
pub fn load_tile<E: From<TmaError>>(
    map: &TensorMap,
    coords: &[i32],
    mut read_global: impl FnMut(u64, &mut [u8]) -> Result<(), E>,
    smem: &mut [u8],
    dst: u32,
) -> Result<u32, E> {
    if coords.len() != map.rank as usize {
        return Err(TmaError::Coords { got: coords.len(), rank: map.rank }.into());
    }
    if map.interleave != Interleave::None {
        return Err(TmaError::InterleaveLoad { interleave: map.interleave }.into());
    }
    if !dst.is_multiple_of(128) {
        return Err(TmaError::DstAlign { dst }.into());
    }
    let tile = Tile::of(map);
    let out_of_range = TmaError::SharedOutOfRange { dst, bytes: tile.bytes, smem_bytes: smem.len() };
    if dst as usize + tile.bytes as usize > smem.len() || tile.chunk_addrs(dst).any(|a| a as usize + 16 > smem.len()) {
        return Err(out_of_range.into());
    }
    let esize = map.data_type.size_bytes() as usize;
    let fill = match map.oob_fill {
        OobFill::Zero => vec![0u8; esize],
        OobFill::NanRequestZeroFma => map.data_type.nan_bytes().expect("validated: NaN fill only for float types"),
    };
    let mut boxed = vec![0u8; tile.bytes as usize];
    for (row_index, row) in boxed.chunks_exact_mut(tile.row_bytes as usize).enumerate() {
        // The row's coordinates in dimensions 1.., dimension 1 fastest.
        let mut rest = row_index as u32;
        let mut base = Some(map.global_address as i128);
        for (i, &coord) in coords.iter().enumerate().skip(1) {
            let j = rest % tile.counts[i];
            rest /= tile.counts[i];
            let c = coord as i64 + (j * map.element_strides[i]) as i64;
            let inside = c >= 0 && (c as u64) < map.global_dims[i];
            base = base.filter(|_| inside).map(|b| b + c as i128 * map.global_strides[i - 1] as i128);
        }
        let n0 = tile.counts[0] as usize;
        let step = map.element_strides[0] as i64;
        let inside0 = |j: usize| {
            let c = coords[0] as i64 + j as i64 * step;
            c >= 0 && (c as u64) < map.global_dims[0]
        };
        let elems = &mut row[..n0 * esize];
        elems.chunks_exact_mut(esize).for_each(|e| e.copy_from_slice(&fill));
        let Some(base) = base else { continue };
        let addr_of = |j: usize| (base + (coords[0] as i64 + j as i64 * step) as i128 * esize as i128) as u64;
        if step == 1 {
            // One contiguous read of the in-bounds run.
            let first = (0..n0).find(|&j| inside0(j));
            if let Some(first) = first {
                let end = (first..n0).find(|&j| !inside0(j)).unwrap_or(n0);
                read_global(addr_of(first), &mut elems[first * esize..end * esize])?;
            }
        } else {
            for j in (0..n0).filter(|&j| inside0(j)) {
                read_global(addr_of(j), &mut elems[j * esize..(j + 1) * esize])?;
            }
        }
    }
    for (chunk, at) in boxed.chunks_exact(16).zip(tile.chunk_addrs(dst)) {
        smem[at as usize..at as usize + 16].copy_from_slice(chunk);
    }
    Ok(tile.bytes)
}
