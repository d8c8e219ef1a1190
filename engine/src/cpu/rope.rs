//! Rotary position embedding in the "rotate half" form (GPT-NeoX, Llama): in each head of `x`
//! (`[b, t, h, d]`), the pair (j, j + d/2) at position p turns by the angle with cosine `cos[p, j]`
//! and sine `sin[p, j]`. The inverse turns by the negative angle; as the rotation is orthogonal that
//! is also its backward. One task per (batch, position) row block, computed in the arithmetic type.

use std::mem::MaybeUninit;

use super::elem::prelude::*;
use super::elem::{with_float, Elem, Float};
use super::par::{chunks, filled, worth_it};
use super::simd::multiversion;
use crate::{CpuStorage, Error, Result};

pub(super) fn rope(
    x: &CpuStorage,
    cos: &CpuStorage,
    sin: &CpuStorage,
    (b, t, h, d): (usize, usize, usize, usize),
    inverse: bool,
) -> Result<CpuStorage> {
    const OP: &str = "rope";
    if !d.is_multiple_of(2) || x.len() != b * t * h * d || cos.len() != t * d / 2 || sin.len() != t * d / 2 {
        return Err(Error::shape(
            OP,
            format!("x of {} elements, cos of {} and sin of {} for [b, t, h, d] = [{b}, {t}, {h}, {d}]", x.len(), cos.len(), sin.len()),
        ));
    }
    with_float!(OP, x, |x| {
        let (cos, sin) = (Elem::view(OP, cos)?, Elem::view(OP, sin)?);
        Ok(Elem::wrap(rope_typed(x, cos, sin, t, h, d, inverse)))
    })
}

fn rope_typed<T: Float>(x: &[T], cos: &[T], sin: &[T], t: usize, h: usize, d: usize, inverse: bool) -> Vec<T> {
    let half = d / 2;
    // Chunk r is position r % t of batch entry r / t: all its heads share one row of cos / sin.
    let fill = |out: &mut [MaybeUninit<T>]| chunks(out, h * d, worth_it(x.len()), |r, o| {
        let p = r % t;
        rotate_heads(&x[r * h * d..][..h * d], &cos[p * half..][..half], &sin[p * half..][..half], inverse, o)
    });
    // SAFETY: the chunks are the output's (batch, position) rows, and each head's two halves are
    // written whole.
    unsafe { filled(x.len(), fill) }
}

/// The heads of one position: `x` and `out` are its heads back to back, each `2 · c.len()` wide.
#[inline(always)]
fn rotate_heads_body<T: Float>(x: &[T], c: &[T], s: &[T], inverse: bool, out: &mut [MaybeUninit<T>]) {
    let half = c.len();
    let sign = if inverse { -T::Acc::one() } else { T::Acc::one() };
    for (src, dst) in x.chunks_exact(2 * half).zip(out.chunks_exact_mut(2 * half)) {
        let (x1, x2) = src.split_at(half);
        let (o1, o2) = dst.split_at_mut(half);
        for ((o1, o2), ((&a, &b), (&cj, &sj))) in o1.iter_mut().zip(o2).zip(x1.iter().zip(x2).zip(c.iter().zip(s))) {
            let (cj, sj, a, b) = (cj.widen(), sign * sj.widen(), a.widen(), b.widen());
            o1.write(T::narrow(a * cj - b * sj));
            o2.write(T::narrow(b * cj + a * sj));
        }
    }
}

multiversion! {
    /// `rotate_heads_body` at the CPU's widest SIMD width.
    rotate_heads<T: Float>(x: &[T], c: &[T], s: &[T], inverse: bool, out: &mut [MaybeUninit<T>]) -> () = rotate_heads_body
}
