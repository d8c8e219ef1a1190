//! CPU buffers on transparent huge pages, for memory that is streamed end to end: inference
//! weights (the model asks for them at load), and the bandwidth probe's buffer (bandwidth.rs).
//! A batch-1 decode step streams every weight once, about 2 GB
//! at the 1B shapes: with 4 KiB pages that is half a million TLB misses per token (each a page
//! walk, nested under a hypervisor), and the L2 streamer stops at every 4 KiB boundary too. With
//! 2 MiB pages a walk covers 512 times more weights.
//!
//! Linux hands out huge pages to anonymous memory at the first touch, and, in the common
//! `madvise` setting of /sys/kernel/mm/transparent_hugepage/enabled, only to ranges the process
//! has marked with `madvise(MADV_HUGEPAGE)`. A range touched before the advice keeps its small
//! pages (khugepaged merges them much later, if ever), so each large CPU weight is copied once, at
//! load, into a fresh buffer that is advised before anything is written to it. The advice is a
//! hint: where huge pages are off or none are free, the kernel keeps small pages, and the weights
//! are the same either way. Smaller tensors, and tensors on a GPU, are left as they are.

use crate::{CpuStorage, Storage, Tensor};

/// The huge page size on x86-64 and aarch64 Linux.
const HUGE_PAGE: usize = 2 << 20;

/// `t` in a buffer advised for huge pages, when it is a CPU tensor spanning at least two of them.
pub fn on_huge_pages(t: Tensor) -> Tensor {
    let Storage::Cpu(cpu) = t.storage() else { return t };
    if t.size_in_bytes() < 2 * HUGE_PAGE {
        return t;
    }
    let copy = match cpu {
        CpuStorage::F32(v) => CpuStorage::F32(advised_copy(v)),
        CpuStorage::BF16(v) => CpuStorage::BF16(advised_copy(v)),
        CpuStorage::F16(v) => CpuStorage::F16(advised_copy(v)),
        _ => return t,
    };
    Tensor::from_cpu(copy, t.dims().to_vec())
}

/// A copy of `v` in a new buffer whose whole huge pages were advised before the first write.
fn advised_copy<T: Copy>(v: &[T]) -> Vec<T> {
    let mut out = advised_capacity(v.len());
    out.extend_from_slice(v);
    out
}

/// `len` copies of `value` in a new buffer whose whole huge pages were advised before the first write.
pub fn filled_on_huge_pages<T: Copy>(len: usize, value: T) -> Vec<T> {
    let mut out = advised_capacity(len);
    out.resize(len, value);
    out
}

/// An empty vector with room for `len` elements, its whole huge pages advised (nothing written yet).
fn advised_capacity<T>(len: usize) -> Vec<T> {
    let out: Vec<T> = Vec::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        let start = out.as_ptr() as usize;
        let first = start.next_multiple_of(HUGE_PAGE);
        let end = (start + len * std::mem::size_of::<T>()) / HUGE_PAGE * HUGE_PAGE;
        if end > first {
            // SAFETY: [first, end) lies inside the allocation just made (rounded inwards to whole
            // huge pages); MADV_HUGEPAGE changes only how the kernel backs it, never its contents
            // or validity, and its failure (huge pages compiled out) is harmless, so the result is
            // ignored.
            unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE) };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{filled_on_huge_pages, on_huge_pages};
    use crate::{CpuStorage, Tensor};

    #[test]
    fn a_large_tensor_moves_with_its_values_and_a_small_one_stays() {
        let values: Vec<f32> = (0..3 << 20).map(|i| i as f32).collect();
        let large = Tensor::from_cpu(CpuStorage::F32(values.clone()), vec![3 << 10, 1 << 10]);
        let moved = on_huge_pages(large.clone());
        assert!(!moved.same_storage(&large), "a 12 MiB tensor is copied into an advised buffer");
        assert_eq!(moved.dims(), large.dims());
        assert_eq!(moved.to_vec::<f32>().unwrap(), values);
        let small = Tensor::from_cpu(CpuStorage::F32(vec![1.0; 16]), vec![16]);
        assert!(on_huge_pages(small.clone()).same_storage(&small), "a tensor under two huge pages is left as it is");
    }

    #[test]
    fn a_filled_buffer_holds_its_value() {
        let v = filled_on_huge_pages(5 << 20, 7u16);
        assert_eq!(v.len(), 5 << 20);
        assert!(v.iter().all(|&x| x == 7));
    }
}
