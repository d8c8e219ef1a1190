//! When and how the CPU backend goes parallel. Every op writes its output in disjoint chunks (rows,
//! row blocks, batch entries), so one helper covers them all: it hands each chunk, with its index
//! and a per-worker scratch value, to a closure, on rayon's pool when the op is big enough and on
//! the calling thread otherwise. Small tensors stay serial because a rayon dispatch costs a few
//! microseconds, more than a tiny op itself; the threshold is counted in elements touched.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Elements of work below which an op runs on the calling thread.
pub(crate) const PAR_MIN_WORK: usize = 1 << 15;

/// True when `work` elements are worth spreading over the pool.
pub(crate) fn worth_it(work: usize) -> bool {
    work >= PAR_MIN_WORK && rayon::current_num_threads() > 1
}

/// Runs `f` on a worker of the pool the ops spread over (rayon's global pool), the calling thread
/// waiting for it. For a step made of many short ops of which some go parallel (a decode step: a
/// few hundred ops, a handful per layer each spreading about a megabyte of weights over the
/// cores): called from outside the pool, every parallel op hands its tasks over and puts the
/// caller to sleep until the last task is done, so each one costs two thread wake-ups on the
/// step's critical path. Called from a worker, the worker takes part in its own op's tasks and
/// only the idle workers need waking, often still spinning from the op before. Results and bits
/// are the same on either thread.
pub fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Calls `f(scratch, i, chunk)` for the `i`-th `chunk`-sized piece of `out` (the last may be
/// shorter), in parallel when `parallel`. `init` makes one scratch value per worker, so per-row
/// buffers are allocated once per thread, not once per row.
pub(crate) fn for_each_chunk<T, S, I, F>(out: &mut [T], chunk: usize, parallel: bool, init: I, f: F)
where
    T: Send,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [T]) + Sync + Send,
{
    if out.is_empty() || chunk == 0 {
        return;
    }
    if parallel {
        out.par_chunks_mut(chunk).enumerate().for_each_init(&init, |s, (i, c)| f(s, i, c));
    } else {
        let mut s = init();
        for (i, c) in out.chunks_mut(chunk).enumerate() {
            f(&mut s, i, c);
        }
    }
}

/// `for_each_chunk` without scratch.
pub(crate) fn chunks<T, F>(out: &mut [T], chunk: usize, parallel: bool, f: F)
where
    T: Send,
    F: Fn(usize, &mut [T]) + Sync + Send,
{
    for_each_chunk(out, chunk, parallel, || (), |_, i, c| f(i, c));
}

/// A chunk length for splitting `len` elements of a flat map: big enough to amortise a task,
/// small enough to balance.
pub(crate) const FLAT_CHUNK: usize = 1 << 13;

/// `for_each_chunk` over two outputs split in step: the `i`-th `chunk_a`-sized piece of `a` and the
/// `i`-th `chunk_b`-sized piece of `b` go to one call (both must split into the same count).
pub(crate) fn for_each_chunk2<A, B, S, I, F>(a: &mut [A], chunk_a: usize, b: &mut [B], chunk_b: usize, parallel: bool, init: I, f: F)
where
    A: Send,
    B: Send,
    I: Fn() -> S + Sync + Send,
    F: Fn(&mut S, usize, &mut [A], &mut [B]) + Sync + Send,
{
    if a.is_empty() || chunk_a == 0 || chunk_b == 0 {
        return;
    }
    debug_assert_eq!(a.len().div_ceil(chunk_a), b.len().div_ceil(chunk_b), "outputs split into different counts");
    if parallel {
        a.par_chunks_mut(chunk_a).zip(b.par_chunks_mut(chunk_b)).enumerate().for_each_init(&init, |s, (i, (ca, cb))| f(s, i, ca, cb));
    } else {
        let mut s = init();
        for (i, (ca, cb)) in a.chunks_mut(chunk_a).zip(b.chunks_mut(chunk_b)).enumerate() {
            f(&mut s, i, ca, cb);
        }
    }
}

/// A vector of `len` elements that `fill` writes through the uninitialised slice it is given, with
/// no zeroing first: the pool would zero a reused block on the calling thread, a serial pass as
/// long as the op's own parallel one.
///
/// # Safety
/// `fill` must write every element of the slice.
pub(crate) unsafe fn filled<T>(len: usize, fill: impl FnOnce(&mut [MaybeUninit<T>])) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: the caller's `fill` wrote all `len` elements, within the capacity reserved above.
    unsafe { out.set_len(len) };
    out
}

/// Copies `src` into the (possibly uninitialised) `dst` of the same length.
pub(crate) fn copy_into<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len(), "copy between slices of different lengths");
    dst.iter_mut().zip(src).for_each(|(d, &s)| {
        d.write(s);
    });
}
