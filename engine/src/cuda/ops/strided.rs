//! Strided views for kernels that read operands through per-axis strides (broadcasting binary ops,
//! permutes): axis merging, and the `StridedLayout` struct passed to them by value.
//!
//! Merging first matters for speed, not correctness: the kernels pay a division per axis per
//! element, and most real layouts collapse to one to three axes (a contiguous tensor to one, a
//! bias add [rows, cols] + [cols] to two).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

static WIDE_INDICES: AtomicBool = AtomicBool::new(false);

/// Makes every strided kernel take its 64-bit index variant (`*64_*`) whatever the size, so tests
/// can check those kernels at sizes that fit in memory (they otherwise run only past 2^31
/// elements or offsets). Process-wide; off by default.
pub fn force_wide_indices(on: bool) {
    WIDE_INDICES.store(on, Ordering::Relaxed);
}

/// Axes a kernel can walk; mirrors MAX_DIMS in common.cuh.
pub(crate) const MAX_DIMS: usize = 6;

/// Mirrors `struct StridedLayout` in kernels-cuda/src/kernels/common.cuh; keep the two in step.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub(crate) struct StridedLayout {
    rank: u32,
    _pad: u32,
    dims: [u64; MAX_DIMS],
    sa: [u64; MAX_DIMS],
    sb: [u64; MAX_DIMS],
}

/// Drops axes of size 1 and merges each axis into its inner neighbour when that is contiguous in
/// every operand (`s[d] == s[d+1] * dims[d+1]` for all stride lists). Returns the merged dims and,
/// per operand, the merged strides.
pub(crate) fn coalesce(dims: &[usize], strides: &[&[usize]]) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut out_dims: Vec<usize> = Vec::new(); // innermost first while building
    let mut out_strides: Vec<Vec<usize>> = vec![Vec::new(); strides.len()];
    for d in (0..dims.len()).rev() {
        if dims[d] == 1 {
            continue;
        }
        let mergeable = !out_dims.is_empty()
            && strides.iter().zip(&out_strides).all(|(s, o)| s[d] == o.last().unwrap() * out_dims.last().unwrap());
        if mergeable {
            *out_dims.last_mut().unwrap() *= dims[d];
        } else {
            out_dims.push(dims[d]);
            for (s, o) in strides.iter().zip(out_strides.iter_mut()) {
                o.push(s[d]);
            }
        }
    }
    out_dims.reverse();
    for o in &mut out_strides {
        o.reverse();
    }
    (out_dims, out_strides)
}

impl StridedLayout {
    /// A layout over `dims` with strides `sa` (and `sb`, or zeros for one-operand kernels).
    pub(crate) fn new(op: &'static str, dims: &[usize], sa: &[usize], sb: Option<&[usize]>) -> Result<Self> {
        if dims.len() > MAX_DIMS {
            return Err(Error::invalid(op, format!("{} axes remain after merging ({dims:?}); CUDA kernels walk at most {MAX_DIMS}", dims.len())));
        }
        let mut l = StridedLayout { rank: dims.len() as u32, _pad: 0, dims: [1; MAX_DIMS], sa: [0; MAX_DIMS], sb: [0; MAX_DIMS] };
        for d in 0..dims.len() {
            l.dims[d] = dims[d] as u64;
            l.sa[d] = sa[d] as u64;
            l.sb[d] = sb.map_or(0, |s| s[d] as u64);
        }
        Ok(l)
    }

    /// Whether every index and offset stays below 2^31, so the kernels' 32-bit index variant is
    /// safe (the grid-stride increment is added before the bound check, hence the headroom);
    /// never under [`force_wide_indices`].
    pub(crate) fn fits_u32(&self, n: u64) -> bool {
        const LIMIT: u64 = 1 << 31;
        if WIDE_INDICES.load(Ordering::Relaxed) {
            return false;
        }
        let max_offset = |s: &[u64; MAX_DIMS]| (0..self.rank as usize).map(|d| (self.dims[d] - 1) * s[d]).sum::<u64>();
        n < LIMIT && max_offset(&self.sa) < LIMIT && max_offset(&self.sb) < LIMIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contiguous_collapses_to_one_axis() {
        let (d, s) = coalesce(&[2, 3, 4], &[&[12, 4, 1], &[12, 4, 1]]);
        assert_eq!(d, vec![24]);
        assert_eq!(s, vec![vec![1], vec![1]]);
    }

    #[test]
    fn bias_broadcast_keeps_two_axes() {
        let (d, s) = coalesce(&[5, 7, 3], &[&[21, 3, 1], &[0, 0, 1]]);
        assert_eq!(d, vec![35, 3]);
        assert_eq!(s, vec![vec![3, 1], vec![0, 1]]);
    }

    #[test]
    fn unit_axes_vanish_and_transposes_stay() {
        let (d, s) = coalesce(&[1, 4, 1, 6], &[&[0, 1, 0, 4]]);
        assert_eq!(d, vec![4, 6]);
        assert_eq!(s, vec![vec![1, 4]]);
    }
}
