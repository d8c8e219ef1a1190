//! Top-k of each row: values in descending order with their u32 indices, ties to the lower index.
//!
//! Ordering by (value descending, index ascending) is a total order, because indices are unique;
//! so a quickselect (`select_nth_unstable_by`) followed by sorting the k winners is deterministic
//! despite being unstable, and costs O(n + k log k) per row rather than a full sort. NaN ranks above
//! every number (as in argmax), so a corrupted router shows up in the selection.

use std::cmp::Ordering;

use super::elem::{with_float, Acc, Elem, Float};
use super::par::{for_each_chunk, worth_it};
use crate::{CpuStorage, Error, Result};

pub(super) fn topk(x: &CpuStorage, rows: usize, n: usize, k: usize) -> Result<(CpuStorage, CpuStorage)> {
    if k > n || x.len() != rows * n {
        return Err(Error::shape("topk", format!("k = {k} of rows of {n} over {} elements ({rows} rows)", x.len())));
    }
    with_float!("topk", x, |x| {
        let (values, idx) = topk_typed(x, rows, n, k);
        Ok((Elem::wrap(values), CpuStorage::U32(idx)))
    })
}

fn topk_typed<T: Float>(x: &[T], rows: usize, n: usize, k: usize) -> (Vec<T>, Vec<u32>) {
    let mut idx = vec![0u32; rows * k];
    for_each_chunk(&mut idx, k, worth_it(rows * n), Vec::new, |order: &mut Vec<u32>, r, out| {
        let row = &x[r * n..][..n];
        let cmp = |a: &u32, b: &u32| descending(row[*a as usize].widen(), row[*b as usize].widen()).then(a.cmp(b));
        order.clear();
        order.extend(0..n as u32);
        if k < n {
            order.select_nth_unstable_by(k - 1, cmp);
        }
        let top = &mut order[..k];
        top.sort_unstable_by(cmp);
        out.copy_from_slice(top);
    });
    let values = idx.iter().enumerate().map(|(p, &i)| x[p / k * n + i as usize]).collect();
    (values, idx)
}

/// `Less` when `a` ranks before `b`: larger first, NaN before any number.
fn descending<A: Acc>(a: A, b: A) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        // Neither is NaN, so the comparison is defined.
        (false, false) => b.partial_cmp(&a).unwrap_or(Ordering::Equal),
    }
}
