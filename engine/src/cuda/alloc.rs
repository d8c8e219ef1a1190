//! The caching device allocator: `cuMemAlloc` once, reuse forever.
//!
//! Training allocates the same sizes every step, and `cuMemAlloc` / `cuMemFree` are slow and
//! synchronising, so freed blocks go to per-size free lists instead of back to the driver. Requests
//! are rounded to size classes, so that nearly equal sizes share blocks: multiples of 512 B up to
//! 1 MiB, multiples of 2 MiB above. A request takes a free block of exactly its class, or a new
//! one from the driver. After the first step the steady state makes no driver allocation at all.
//!
//! Reuse needs no event: all work of a device runs on its one stream (see device.rs), so a kernel
//! that writes a recycled block is queued after every kernel that read the block's previous
//! contents. Blocks go back to the driver only on `empty_cache()` or when an allocation fails:
//! then the stream is synchronised, every cached block freed, and the allocation tried once more;
//! if it still fails the error says how much was asked for, in use and reserved.
//!
//! `set_poison(true)` fills every block handed out with 0xFF bytes (NaN in every float type,
//! u32::MAX as an index) so tests can see an output element a kernel forgot to write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use cudarc::driver::{result, sys};

use super::device::{device, CudaDevice};
use super::error::DriverContext;
use crate::{Device, Error, Result};

const SMALL_ROUND: usize = 512;
const SMALL_LIMIT: usize = 1 << 20;
const LARGE_ROUND: usize = 2 << 20;

static POISON: AtomicBool = AtomicBool::new(false);

/// Counters of one device's allocator, in bytes (of size classes, i.e. after rounding).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Held by live buffers.
    pub in_use: usize,
    /// The largest `in_use` seen (since the start, or the last `reset_peak`).
    pub peak_in_use: usize,
    /// Obtained from the driver and not yet returned: in use plus cached.
    pub reserved: usize,
    /// Calls to `cuMemAlloc` (steady-state training should stop increasing this).
    pub driver_allocations: u64,
    /// Requests served from the cache.
    pub cache_hits: u64,
}

#[derive(Default)]
struct Pool {
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    stats: MemoryStats,
}

pub(crate) struct Allocator {
    pool: Mutex<Pool>,
}

/// The size class a request of `bytes` is served from.
pub(crate) fn size_class(bytes: usize) -> usize {
    if bytes <= SMALL_LIMIT {
        bytes.max(1).div_ceil(SMALL_ROUND) * SMALL_ROUND
    } else {
        bytes.div_ceil(LARGE_ROUND) * LARGE_ROUND
    }
}

/// A device allocation; returns to its device's cache when dropped. Zero-byte buffers hold no
/// allocation (pointer 0) and are never handed to a kernel that reads them.
pub(crate) struct DeviceBuffer {
    dev: &'static CudaDevice,
    ptr: sys::CUdeviceptr,
    class: usize,
}

impl DeviceBuffer {
    pub(crate) fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    pub(crate) fn device(&self) -> &'static CudaDevice {
        self.dev
    }

    /// Queues a fill of the first `bytes` bytes with `value` on the device's stream.
    pub(crate) fn fill_bytes(&self, value: u8, bytes: usize) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        self.dev.bind()?;
        // SAFETY: `bytes` is at most the requested size (callers pass the tensor's byte size), the
        // block is live, and the memset is ordered on the stream with every use of the block.
        unsafe { result::memset_d8_async(self.ptr, value, bytes, self.dev.stream()) }.ctx("cuMemsetD8Async")
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if self.class > 0 {
            self.dev.alloc.give_back(self.ptr, self.class);
        }
    }
}

impl Allocator {
    pub(crate) fn new() -> Self {
        Allocator { pool: Mutex::new(Pool::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding the lock cannot leave the pool inconsistent (updates are single
        // statements), so a poisoned lock is still usable.
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn give_back(&self, ptr: sys::CUdeviceptr, class: usize) {
        let mut pool = self.lock();
        pool.stats.in_use -= class;
        pool.free.entry(class).or_default().push(ptr);
    }

    /// Returns every cached block to the driver. Synchronises the stream first: a cached block may
    /// still be read by queued work.
    fn release_cached(&self, dev: &CudaDevice, pool: &mut Pool) -> Result<()> {
        dev.synchronize()?;
        for (class, ptrs) in pool.free.drain() {
            for ptr in ptrs {
                // SAFETY: the block came from cuMemAlloc, is in no live buffer, and the stream is idle.
                unsafe { result::free_sync(ptr) }.ctx("cuMemFree")?;
                pool.stats.reserved -= class;
            }
        }
        Ok(())
    }
}

/// A buffer of at least `bytes` bytes on `dev`, from the cache when possible.
pub(crate) fn alloc(dev: &'static CudaDevice, bytes: usize) -> Result<DeviceBuffer> {
    if bytes == 0 {
        return Ok(DeviceBuffer { dev, ptr: 0, class: 0 });
    }
    let class = size_class(bytes);
    let mut pool = dev.alloc.lock();
    let ptr = match pool.free.get_mut(&class).and_then(Vec::pop) {
        Some(ptr) => {
            pool.stats.cache_hits += 1;
            ptr
        }
        None => {
            dev.bind()?;
            let ptr = match driver_alloc(class) {
                Ok(ptr) => ptr,
                Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                    dev.alloc.release_cached(dev, &mut pool)?;
                    driver_alloc(class).map_err(|e| match e.0 {
                        sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => Error::OutOfMemory {
                            device: Device::Cuda(dev.ordinal()),
                            requested: bytes,
                            in_use: pool.stats.in_use,
                            reserved: pool.stats.reserved,
                        },
                        _ => super::error::driver("cuMemAlloc", e),
                    })?
                }
                Err(e) => return Err(super::error::driver("cuMemAlloc", e)),
            };
            pool.stats.driver_allocations += 1;
            pool.stats.reserved += class;
            ptr
        }
    };
    pool.stats.in_use += class;
    pool.stats.peak_in_use = pool.stats.peak_in_use.max(pool.stats.in_use);
    drop(pool);
    let buf = DeviceBuffer { dev, ptr, class };
    if POISON.load(Ordering::Relaxed) {
        buf.fill_bytes(0xff, bytes)?;
    }
    Ok(buf)
}

fn driver_alloc(bytes: usize) -> std::result::Result<sys::CUdeviceptr, result::DriverError> {
    // SAFETY: the caller made the device's context current; the memory is uninitialised, and every
    // kernel that reads a block writes it first or reads only what an earlier op wrote.
    unsafe { result::malloc_sync(bytes) }
}

/// The allocator counters of a device.
pub fn memory_stats(ordinal: usize) -> Result<MemoryStats> {
    Ok(device(ordinal)?.alloc.lock().stats)
}

/// Sets the peak counter to the current use, to measure the peak of one phase.
pub fn reset_peak(ordinal: usize) -> Result<()> {
    let mut pool = device(ordinal)?.alloc.lock();
    pool.stats.peak_in_use = pool.stats.in_use;
    Ok(())
}

/// Returns every cached (free) block of a device to the driver.
pub fn empty_cache(ordinal: usize) -> Result<()> {
    let dev = device(ordinal)?;
    let mut pool = dev.alloc.lock();
    dev.alloc.release_cached(dev, &mut pool)
}

/// Fill every new allocation with 0xFF bytes (for tests: makes unwritten outputs NaN).
pub fn set_poison(on: bool) {
    POISON.store(on, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_round_up_and_never_shrink() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 1024);
        assert_eq!(size_class(SMALL_LIMIT), SMALL_LIMIT);
        assert_eq!(size_class(SMALL_LIMIT + 1), LARGE_ROUND);
        assert_eq!(size_class(LARGE_ROUND + 1), 2 * LARGE_ROUND);
        for bytes in [3usize, 777, 4096, 1_000_000, 3_000_001, 123_456_789] {
            let c = size_class(bytes);
            assert!(c >= bytes && size_class(c) == c, "{bytes} -> {c}");
        }
    }
}
