//! When and how the CPU backend goes parallel. Every op writes its output in disjoint chunks (rows,
//! row blocks, batch entries), so one helper covers them all: it hands each chunk, with its index
//! and a per-worker scratch value, to a closure, on rayon's pool when the op is big enough and on
//! the calling thread otherwise. Small tensors stay serial because a rayon dispatch costs a few
//! microseconds, more than a tiny op itself; the threshold is counted in elements touched.

use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicBool, Ordering};

use rayon::prelude::*;

/// Elements of work below which an op runs on the calling thread.
pub(crate) const PAR_MIN_WORK: usize = 1 << 15;

/// True when `work` elements are worth spreading over the pool.
pub(crate) fn worth_it(work: usize) -> bool {
    work >= PAR_MIN_WORK && rayon::current_num_threads() > 1
}

/// Runs `f` on a worker of the pool the ops spread over (rayon's global pool), the calling thread
/// waiting for it, with the other workers kept awake until `f` returns. Called from outside the
/// pool, every parallel op would hand its tasks over and put the caller to sleep until the last
/// task is done, two thread wake-ups per op; on a worker, the worker takes part in its own op's
/// tasks. For a step made of many short ops of which some go parallel (a decode step: a few
/// hundred ops, a handful per layer each spreading about a megabyte of weights over the cores):
///
/// - an idle rayon worker spins only some tens of microseconds before it sleeps, about as long as
///   the serial ops between two parallel ones (norms, routing, the cache write), so the other
///   cores often sleep through that gap and the next parallel op starts on one core while they
///   wake (a futex wake and, in a virtual machine, an inter-processor interrupt). So every other
///   worker runs a `keep_awake` job for the length of `f`: it polls for tasks of the pool
///   (`rayon::yield_now`, which runs the one it finds) and yields its core to the OS between
///   polls, as rayon's own idle loop does before it sleeps, only without the sleep. The cost is
///   those cores' time while `f` runs serial code, unless another thread wants them.
/// - Measured on the quiet 2-core machine, batch-1 bf16 decode of the 1B shapes, alternated with
///   the same run on a worker without pollers: the cores busy rose from about 1.8 to 1.9-1.96
///   and top-k:2's speedup over dense from 0.87-0.90 to 0.92-1.01 of its bytes ratio. On a busy
///   machine, where the polling core is wanted by others, it cost 3-10 %.
/// - Evaluation batches (model/src/eval.rs) and single-process training steps (model/src/train.rs)
///   use it too: once the attention rows took a third less time (attention_rows_avx512.rs), the
///   gaps between ops weighed more. On the quiet machine ds-moe-tiny's evaluation ran 6-18 %
///   (dense) and 8-15 % (top-k:2) faster with it, four alternated rounds of the CPU peer bench
///   (before the faster rows, no gain was measurable), and the main job trained in 51-57 s
///   instead of 66-73 s.
///
/// Only one step at a time keeps the pool awake (`KEPT_AWAKE`): a poller waits for its own step,
/// so two steps run at once (tests on several threads) could each have a poller stacked on top of
/// the other step's thread, each waiting for the step beneath the other. A step that finds the
/// pool kept awake already runs without pollers.
pub fn on_pool_kept_awake<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    /// Ends the step's polling when dropped, so that the pollers stop even if `f` panics.
    struct Finish<'a> {
        done: &'a AtomicBool,
        kept_awake: bool,
    }
    impl Drop for Finish<'_> {
        fn drop(&mut self) {
            self.done.store(true, Ordering::Release);
            if self.kept_awake {
                KEPT_AWAKE.store(false, Ordering::Release);
            }
        }
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        let kept_awake = KEPT_AWAKE.compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire).is_ok();
        let _finish = Finish { done: &done, kept_awake };
        if kept_awake {
            let (home, done) = (rayon::current_thread_index(), &done);
            for _ in 1..rayon::current_num_threads() {
                s.spawn(move |_| keep_awake(home, done));
            }
        }
        f()
    })
}

/// Set while a step of `on_pool_kept_awake` has pollers out.
static KEPT_AWAKE: AtomicBool = AtomicBool::new(false);

/// Polls the pool for tasks until `done`, on a worker other than `home` (the one running the
/// step). Taken by `home` itself, e.g. popped while it waits inside a parallel op of the step,
/// it returns at once: spinning there would block the step it waits for.
fn keep_awake(home: Option<usize>, done: &AtomicBool) {
    if rayon::current_thread_index() == home {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            // Not a busy spin: on a shared machine the step's own thread may be waiting for this
            // core, and a spin would hold it for the whole time slice. On an idle core the
            // yield returns at once.
            std::thread::yield_now();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A parallel sum inside `on_pool_kept_awake` (its tasks taken by the polling workers) is the serial one.
    #[test]
    fn kept_awake_pool_runs_parallel_work_and_returns_its_result() {
        let v: Vec<u64> = (0..1_000_000).collect();
        let sum = on_pool_kept_awake(|| v.par_chunks(1000).map(|c| c.iter().sum::<u64>()).sum::<u64>());
        assert_eq!(sum, v.iter().sum::<u64>());
    }

    /// Steps started from several threads at once all finish (one keeps the pool awake, the
    /// others run without pollers), and a panicking step releases its pollers.
    #[test]
    fn concurrent_and_panicking_steps_finish() {
        std::thread::scope(|t| {
            for i in 0..4u64 {
                t.spawn(move || {
                    for _ in 0..50 {
                        let got = on_pool_kept_awake(|| (0..10_000u64).into_par_iter().map(|x| x * i).sum::<u64>());
                        assert_eq!(got, i * 10_000 * 9_999 / 2);
                    }
                });
            }
        });
        let caught = std::panic::catch_unwind(|| on_pool_kept_awake(|| panic!("a step that fails")));
        assert!(caught.is_err());
        assert_eq!(on_pool_kept_awake(|| 7), 7);
    }
}
