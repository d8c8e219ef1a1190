//! Device (global) memory.
//!
//! A device address is the host address of a heap block this object owns, so a host<->device copy
//! in the driver is a plain `memcpy` and a kernel's `ld.global` is a plain load. Every allocation
//! is registered in an ordered map (start -> length) so each access can be checked against the live
//! allocations, and a bad one reported with the nearest allocation. Blocks are zeroed on
//! allocation: CUDA promises nothing, but zero keeps runs deterministic.
//!
//! Launches read a snapshot of the map ([`Allocations`]), so checks take no lock per access.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::collections::BTreeMap;
use std::sync::RwLock;

use crate::Error;

/// The alignment of every allocation (what cuMemAlloc guarantees).
pub const ALLOC_ALIGN: u64 = 256;

pub struct GlobalMemory {
    capacity: u64,
    blocks: RwLock<BTreeMap<u64, u64>>,
}

// SAFETY: the raw blocks are only reached through addresses; the map is behind a lock.
unsafe impl Send for GlobalMemory {}
// SAFETY: as above; concurrent kernel accesses to distinct bytes are the program's business, as on a GPU.
unsafe impl Sync for GlobalMemory {}

fn layout(bytes: u64) -> Layout {
    // A zero-byte request still gets a distinct 256-byte block, like cuMemAlloc's smallest unit.
    Layout::from_size_align(bytes.max(1).next_multiple_of(ALLOC_ALIGN) as usize, ALLOC_ALIGN as usize)
        .expect("allocation size checked against the capacity before building its layout")
}

impl GlobalMemory {
    pub fn new(capacity_bytes: u64) -> Self {
        GlobalMemory { capacity: capacity_bytes, blocks: RwLock::new(BTreeMap::new()) }
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Allocates `bytes` zeroed bytes, 256-byte aligned; returns the device address.
    pub fn alloc(&self, bytes: u64) -> Result<u64, Error> {
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let used: u64 = blocks.values().map(|&len| len.max(1).next_multiple_of(ALLOC_ALIGN)).sum();
        if bytes > self.capacity || used + bytes.max(1).next_multiple_of(ALLOC_ALIGN) > self.capacity {
            return Err(Error::Alloc { msg: format!("out of memory: {bytes} bytes requested, {used} of {} in use", self.capacity) });
        }
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(layout(bytes)) };
        if ptr.is_null() {
            return Err(Error::Alloc { msg: format!("host allocation of {bytes} bytes failed") });
        }
        blocks.insert(ptr as u64, bytes);
        Ok(ptr as u64)
    }

    /// Frees an allocation by the address `alloc` returned.
    pub fn free(&self, addr: u64) -> Result<(), Error> {
        let mut blocks = self.blocks.write().unwrap_or_else(|e| e.into_inner());
        let Some(len) = blocks.remove(&addr) else {
            return Err(Error::Alloc { msg: format!("free of {addr:#x}, which is not the start of a live allocation") });
        };
        // SAFETY: `addr` came from `alloc_zeroed` with this same layout and is freed once (removed above).
        unsafe { dealloc(addr as *mut u8, layout(len)) };
        Ok(())
    }

    /// Checks that `[addr, addr+len)` lies inside one live allocation (for host copies and memsets).
    pub fn check_range(&self, addr: u64, len: u64) -> Result<(), Error> {
        self.snapshot().check(addr, len).map_err(|msg| Error::Alloc { msg })
    }

    /// Copies host bytes to device memory (checked against the live allocations).
    pub fn write(&self, addr: u64, src: &[u8]) -> Result<(), Error> {
        self.check_range(addr, src.len() as u64)?;
        // SAFETY: the range lies inside one live allocation this object owns.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), addr as *mut u8, src.len()) };
        Ok(())
    }

    /// Copies device memory to host bytes (checked).
    pub fn read(&self, addr: u64, dst: &mut [u8]) -> Result<(), Error> {
        self.check_range(addr, dst.len() as u64)?;
        // SAFETY: as in `write`.
        unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    pub fn used_bytes(&self) -> u64 {
        self.blocks.read().unwrap_or_else(|e| e.into_inner()).values().sum()
    }

    /// The live allocations, sorted, for the checks of one launch.
    pub fn snapshot(&self) -> Allocations {
        let blocks = self.blocks.read().unwrap_or_else(|e| e.into_inner());
        Allocations { ranges: blocks.iter().map(|(&start, &len)| (start, start + len)).collect() }
    }
}

impl Drop for GlobalMemory {
    fn drop(&mut self) {
        let blocks = std::mem::take(self.blocks.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (addr, len) in blocks {
            // SAFETY: every block in the map came from `alloc_zeroed` with this layout and is freed once.
            unsafe { dealloc(addr as *mut u8, layout(len)) };
        }
    }
}

/// Sorted `[start, end)` ranges of the live allocations.
#[derive(Debug, Clone, Default)]
pub struct Allocations {
    ranges: Vec<(u64, u64)>,
}

impl Allocations {
    /// The index of the allocation containing `[addr, addr+len)`, or a message naming the nearest one.
    pub fn find(&self, addr: u64, len: u64) -> Result<usize, String> {
        let i = self.ranges.partition_point(|&(start, _)| start <= addr);
        if i > 0 {
            let (start, end) = self.ranges[i - 1];
            if addr >= start && addr.checked_add(len).is_some_and(|e| e <= end) {
                return Ok(i - 1);
            }
        }
        Err(self.describe_miss(addr, len, i))
    }

    /// Adds ranges that are not allocations but may be addressed (a module's `.global` data, a
    /// launch's parameter buffer).
    pub fn with_extra(mut self, extra: &[(u64, u64)]) -> Allocations {
        self.ranges.extend_from_slice(extra);
        self.ranges.sort_unstable();
        self
    }

    pub fn range(&self, i: usize) -> (u64, u64) {
        self.ranges[i]
    }

    pub fn check(&self, addr: u64, len: u64) -> Result<(), String> {
        self.find(addr, len).map(|_| ())
    }

    fn describe_miss(&self, addr: u64, len: u64, i: usize) -> String {
        let what = format!("{len} bytes at {addr:#x}");
        let below = i.checked_sub(1).map(|j| self.ranges[j]);
        let above = self.ranges.get(i).copied();
        let nearest = match (below, above) {
            (Some((s, e)), Some((s2, e2))) => {
                if addr.saturating_sub(e) <= s2.saturating_sub(addr) { Some((s, e)) } else { Some((s2, e2)) }
            }
            (b, a) => b.or(a),
        };
        match nearest {
            None => format!("{what}: no live allocation"),
            Some((s, e)) => {
                let rel = if addr >= e {
                    format!("{} bytes past the end of", addr - e)
                } else if addr < s {
                    format!("{} bytes before", s - addr)
                } else {
                    format!("overrunning by {} bytes the end of", addr + len - e)
                };
                format!("{what} is outside every live allocation; {rel} the nearest, [{s:#x}, {e:#x}) ({} bytes)", e - s)
            }
        }
    }
}
