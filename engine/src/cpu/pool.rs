//! The caching host allocator: the CPU's counterpart of the CUDA caching allocator (cuda/alloc.rs).
//!
//! Every CPU op writes a fresh output vector, and a training step makes the same few hundred
//! vectors of the same sizes every step. glibc serves blocks above its mmap threshold with `mmap`
//! and returns them with `munmap`, so each step faulted its working set in again, page by page, and
//! smaller blocks churned the heap top with trims. `HostPool` keeps freed blocks instead: requests
//! of at least `POOL_MIN` bytes (alignment at most `BLOCK_ALIGN`) are rounded up to a size class
//! and served from that class's free list, or from the system allocator when the list is empty;
//! freed blocks go back on their class's list and stay there. After the first step of a fixed-shape
//! loop every large request is a list hit and nothing reaches the OS. Smaller requests go straight
//! to the system allocator, whose per-thread caches serve them without system calls.
//!
//! Size classes are quarter octaves (5 KiB, 6 KiB, 7 KiB, 8 KiB, 10 KiB, 12 KiB, ...), so rounding
//! wastes at most 25 % of a block and nearly equal sizes share one list. A free list is intrusive:
//! a free block's first word points to the next free block, so the allocator never allocates to
//! keep its own books. One mutex guards all lists (the critical section is a few pointer moves;
//! with 2 to 16 threads it is rarely contended) and the counters are relaxed atomics.
//!
//! It becomes the process allocator by `#[global_allocator] static A: HostPool = HostPool;` in a
//! binary (the `dsmoe` CLI, the benches, the allocation test); a library cannot choose for its
//! users. Cached blocks go back to the system only through `trim()`, or when the system allocator
//! fails: then every cached block is released and the request tried once more.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// The smallest request served from the pool (just over 4 KiB).
const POOL_MIN: usize = 4097;
/// log2 of the power of two just below `POOL_MIN`: class 0 is 4 KiB + 1 .. 5 KiB.
const MIN_OCTAVE: u32 = 12;
/// Requests above this go to the system allocator uncached (2^47 bytes: beyond any real tensor).
const MAX_OCTAVE: u32 = 46;
const CLASSES: usize = ((MAX_OCTAVE - MIN_OCTAVE + 1) * 4) as usize;
/// Alignment of every pooled block: a cache line, also enough for AVX-512 loads.
const BLOCK_ALIGN: usize = 64;

/// The process allocator with per-size-class free lists for blocks of more than 4 KiB.
pub struct HostPool;

/// The pool's counters since the start of the process (bytes are of size classes, after rounding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostPoolStats {
    /// Pooled-size requests served from a free list.
    pub pool_hits: u64,
    /// Pooled-size requests that went to the system allocator (steady state: none).
    pub os_allocations: u64,
    /// Bytes in blocks handed out and not yet freed.
    pub in_use: u64,
    /// Bytes obtained from the system and held: in use plus cached.
    pub held: u64,
}

struct FreeLists([*mut u8; CLASSES]);
// SAFETY: the pointers are owned, unaliased free blocks; moving the table between threads (behind
// the mutex) moves ownership of those blocks with it.
unsafe impl Send for FreeLists {}

static FREE: Mutex<FreeLists> = Mutex::new(FreeLists([ptr::null_mut(); CLASSES]));
static HITS: AtomicU64 = AtomicU64::new(0);
static OS_ALLOCS: AtomicU64 = AtomicU64::new(0);
static IN_USE: AtomicU64 = AtomicU64::new(0);
static HELD: AtomicU64 = AtomicU64::new(0);

fn lists() -> std::sync::MutexGuard<'static, FreeLists> {
    // Nothing can panic while the lock is held (pointer moves only), so poison carries no meaning.
    FREE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The class serving a request of `size` bytes, or `None` when the system allocator serves it.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if size < POOL_MIN || layout.align() > BLOCK_ALIGN {
        return None;
    }
    let s = size - 1;
    let octave = usize::BITS - 1 - s.leading_zeros();
    if octave > MAX_OCTAVE {
        return None;
    }
    // The two bits below the leading one pick the quarter.
    let quarter = (s >> (octave - 2)) & 3;
    Some(((octave - MIN_OCTAVE) * 4) as usize + quarter)
}

/// The block size of class `c`: the upper end of its quarter octave.
fn class_size(c: usize) -> usize {
    let octave = MIN_OCTAVE + (c / 4) as u32;
    (5 + c % 4) << (octave - 2)
}

fn block_layout(c: usize) -> Layout {
    // SAFETY: BLOCK_ALIGN is a power of two and class sizes stay far below isize::MAX.
    unsafe { Layout::from_size_align_unchecked(class_size(c), BLOCK_ALIGN) }
}

/// Pops a cached block of class `c`.
fn pop(c: usize) -> Option<*mut u8> {
    let mut l = lists();
    let head = l.0[c];
    if head.is_null() {
        return None;
    }
    // SAFETY: `head` is a free block of at least POOL_MIN bytes, 64-aligned, whose first word was
    // written by `push` with the next free block.
    l.0[c] = unsafe { head.cast::<*mut u8>().read() };
    Some(head)
}

/// Caches the free block `p` of class `c`.
fn push(c: usize, p: *mut u8) {
    let mut l = lists();
    // SAFETY: `p` is a block of class `c` that its owner just gave up; it is 64-aligned and large
    // enough for one pointer, which links it into the list.
    unsafe { p.cast::<*mut u8>().write(l.0[c]) };
    l.0[c] = p;
}

/// Takes a block of class `c`: a cached one, else a new one from the system (zeroed when asked,
/// which the system does for free on fresh pages).
fn take(c: usize, zeroed: bool) -> *mut u8 {
    let bytes = class_size(c) as u64;
    if let Some(p) = pop(c) {
        HITS.fetch_add(1, Relaxed);
        IN_USE.fetch_add(bytes, Relaxed);
        if zeroed {
            // SAFETY: `p` is a block of `class_size(c)` bytes owned by the caller from now on.
            unsafe { ptr::write_bytes(p, 0, class_size(c)) };
        }
        return p;
    }
    let system = |layout| {
        // SAFETY: `layout` has a non-zero size.
        unsafe {
            if zeroed {
                System.alloc_zeroed(layout)
            } else {
                System.alloc(layout)
            }
        }
    };
    let mut p = system(block_layout(c));
    if p.is_null() {
        trim();
        p = system(block_layout(c));
        if p.is_null() {
            return p;
        }
    }
    OS_ALLOCS.fetch_add(1, Relaxed);
    IN_USE.fetch_add(bytes, Relaxed);
    HELD.fetch_add(bytes, Relaxed);
    p
}

fn give_back(c: usize, p: *mut u8) {
    IN_USE.fetch_sub(class_size(c) as u64, Relaxed);
    push(c, p);
}

// SAFETY: pooled blocks are class-sized (at least the request) and 64-aligned (at least the
// request's alignment, which `class_of` checks); a block is in at most one place at a time (handed
// out, or on one free list); everything else is the system allocator's contract, passed through.
unsafe impl GlobalAlloc for HostPool {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(c) => take(c, false),
            // SAFETY: the caller's layout, passed through unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match class_of(layout) {
            Some(c) => take(c, true),
            // SAFETY: as in `alloc`.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        match class_of(layout) {
            Some(c) => give_back(c, p),
            // SAFETY: a block of this layout came from `System` (class_of is a function of the layout).
            None => unsafe { System.dealloc(p, layout) },
        }
    }

    unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees new_size, rounded to the alignment, fits in isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (Some(a), Some(b)) if a == b => p,
            // SAFETY: both the old and the new block are the system allocator's.
            (None, None) => unsafe { System.realloc(p, layout, new_size) },
            _ => {
                // SAFETY: `p` holds `layout.size()` bytes; the new block at least `new_size`; they
                // are distinct blocks, and `p` is given back only after the copy.
                unsafe {
                    let q = self.alloc(new_layout);
                    if !q.is_null() {
                        ptr::copy_nonoverlapping(p, q, layout.size().min(new_size));
                        self.dealloc(p, layout);
                    }
                    q
                }
            }
        }
    }
}

/// The counters so far (all zero when `HostPool` is not the process allocator).
pub fn stats() -> HostPoolStats {
    HostPoolStats { pool_hits: HITS.load(Relaxed), os_allocations: OS_ALLOCS.load(Relaxed), in_use: IN_USE.load(Relaxed), held: HELD.load(Relaxed) }
}

/// Returns every cached block to the system (e.g. between phases of very different shapes).
pub fn trim() {
    let mut l = lists();
    for (c, head) in l.0.iter_mut().enumerate() {
        while !head.is_null() {
            let p = *head;
            // SAFETY: `p` is a free block of class `c` from `System` with `block_layout(c)`; its
            // first word links to the next one, read before the block is freed.
            unsafe {
                *head = p.cast::<*mut u8>().read();
                System.dealloc(p, block_layout(c));
            }
            HELD.fetch_sub(class_size(c) as u64, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_quarter_octaves_that_cover_their_requests() {
        let sizes = [4097usize, 5120, 5121, 6144, 7168, 7169, 8192, 8193, 1 << 20, (1 << 20) + 1, 3 << 30];
        for s in sizes {
            let c = class_of(Layout::from_size_align(s, 4).unwrap()).unwrap();
            let size = class_size(c);
            assert!(size >= s && size * 4 <= s * 5, "{s} bytes -> class {c} of {size}");
            if c > 0 {
                assert!(class_size(c - 1) < s, "{s} bytes would fit class {}", c - 1);
            }
        }
        assert_eq!(class_size(0), 5 << 10);
        assert_eq!(class_of(Layout::from_size_align(4096, 4).unwrap()), None, "4 KiB and less go to the system");
        assert_eq!(class_of(Layout::from_size_align(1 << 20, 128).unwrap()), None, "over-aligned requests go to the system");
    }

    #[test]
    fn freed_blocks_are_reused_by_their_class() {
        // Not the process allocator in this test binary: drive the lists directly.
        let c = class_of(Layout::from_size_align(100_000, 8).unwrap()).unwrap();
        let before = stats();
        let a = take(c, false);
        give_back(c, a);
        let b = take(c, true);
        assert_eq!(a, b, "the freed block comes back for the same class");
        // SAFETY: `b` is a zeroed block of class_size(c) bytes.
        assert!(unsafe { std::slice::from_raw_parts(b, class_size(c)) }.iter().all(|&x| x == 0));
        give_back(c, b);
        let after = stats();
        assert!(after.pool_hits > before.pool_hits && after.os_allocations > before.os_allocations);
        trim();
    }
}
