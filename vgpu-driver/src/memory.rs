//! Device memory: allocation, memset and memcpy in every direction.
//!
//! A device address is a host address of a block `vgpu::GlobalMemory` owns, so a copy is a plain
//! `memcpy` once the device side is checked to lie inside one live allocation (an out-of-range
//! copy is `CUDA_ERROR_INVALID_VALUE` with a report naming the nearest allocation, where a real
//! driver might corrupt memory silently). The host side is the caller's promise, as with CUDA.
//! Work runs when issued, so the `Async` forms complete before they return and stream order holds
//! trivially.

use std::ffi::{c_uint, c_void};

use crate::state::{self, code, write};
use crate::status::{self, CuResult};
use crate::stream::check_stream;

fn check(addr: u64, len: usize) -> Result<(), CuResult> {
    if len == 0 {
        return Ok(());
    }
    state::device()?.memory.check_range(addr, len as u64).map_err(|e| status::fail(status::INVALID_VALUE, &e.to_string()))
}

/// `cuMemAlloc_v2`: 256-byte aligned, zero-filled (CUDA promises no contents).
///
/// # Safety
/// `dptr` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuMemAlloc_v2(dptr: *mut u64, bytes: usize) -> CuResult {
    code(state::device().and_then(|dev| {
        if bytes == 0 {
            return Err(status::INVALID_VALUE);
        }
        let addr = dev.memory.alloc(bytes as u64).map_err(|e| status::fail(status::OUT_OF_MEMORY, &e.to_string()))?;
        // SAFETY: forwarded from the caller.
        unsafe { write(dptr, addr) }
    }))
}

/// `cuMemFree_v2`.
#[no_mangle]
pub extern "C" fn cuMemFree_v2(dptr: u64) -> CuResult {
    code(state::device().and_then(|dev| dev.memory.free(dptr).map_err(|e| status::fail(status::INVALID_VALUE, &e.to_string()))))
}

fn memset<T: Copy>(dst: u64, value: T, count: usize) -> Result<(), CuResult> {
    let bytes = count.checked_mul(std::mem::size_of::<T>()).ok_or(status::INVALID_VALUE)?;
    if dst % std::mem::align_of::<T>() as u64 != 0 {
        return Err(status::INVALID_VALUE);
    }
    check(dst, bytes)?;
    let dst = dst as *mut T;
    for i in 0..count {
        // SAFETY: [dst, dst + bytes) lies in one live allocation (checked) and is aligned for T.
        unsafe { dst.add(i).write(value) };
    }
    Ok(())
}

/// `cuMemsetD8_v2`.
#[no_mangle]
pub extern "C" fn cuMemsetD8_v2(dst: u64, value: u8, count: usize) -> CuResult {
    code(memset(dst, value, count))
}

/// `cuMemsetD8Async`.
#[no_mangle]
pub extern "C" fn cuMemsetD8Async(dst: u64, value: u8, count: usize, stream: *mut c_void) -> CuResult {
    code(check_stream(stream).and_then(|()| memset(dst, value, count)))
}

/// `cuMemsetD32_v2`.
#[no_mangle]
pub extern "C" fn cuMemsetD32_v2(dst: u64, value: c_uint, count: usize) -> CuResult {
    code(memset(dst, value, count))
}

/// `cuMemsetD32Async`.
#[no_mangle]
pub extern "C" fn cuMemsetD32Async(dst: u64, value: c_uint, count: usize, stream: *mut c_void) -> CuResult {
    code(check_stream(stream).and_then(|()| memset(dst, value, count)))
}

/// Copies `len` bytes; the device ends are checked by the caller.
///
/// # Safety
/// `src` readable and `dst` writable for `len` bytes.
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) -> Result<(), CuResult> {
    if len > 0 && (dst.is_null() || src.is_null()) {
        return Err(status::INVALID_VALUE);
    }
    // SAFETY: the caller's promise; `copy` (memmove) allows overlap, as cuMemcpyDtoD's does not
    // forbid it either.
    unsafe { std::ptr::copy(src, dst, len) };
    Ok(())
}

/// # Safety
/// `src` readable for `len` bytes.
unsafe fn htod(dst: u64, src: *const c_void, len: usize) -> Result<(), CuResult> {
    check(dst, len)?;
    // SAFETY: the device range is inside a live allocation; the host range is the caller's.
    unsafe { copy(dst as *mut u8, src as *const u8, len) }
}

/// # Safety
/// `dst` writable for `len` bytes.
unsafe fn dtoh(dst: *mut c_void, src: u64, len: usize) -> Result<(), CuResult> {
    check(src, len)?;
    // SAFETY: as in htod.
    unsafe { copy(dst as *mut u8, src as *const u8, len) }
}

fn dtod(dst: u64, src: u64, len: usize) -> Result<(), CuResult> {
    check(dst, len)?;
    check(src, len)?;
    // SAFETY: both ranges are inside live allocations.
    unsafe { copy(dst as *mut u8, src as *const u8, len) }
}

/// `cuMemcpyHtoD_v2`.
///
/// # Safety
/// The host pointer must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoD_v2(dst: u64, src: *const c_void, len: usize) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(unsafe { htod(dst, src, len) })
}

/// `cuMemcpyHtoDAsync_v2`.
///
/// # Safety
/// The host pointer must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyHtoDAsync_v2(dst: u64, src: *const c_void, len: usize, stream: *mut c_void) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(check_stream(stream).and_then(|()| unsafe { htod(dst, src, len) }))
}

/// `cuMemcpyDtoH_v2`.
///
/// # Safety
/// The host pointer must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoH_v2(dst: *mut c_void, src: u64, len: usize) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(unsafe { dtoh(dst, src, len) })
}

/// `cuMemcpyDtoHAsync_v2`.
///
/// # Safety
/// The host pointer must be valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: u64, len: usize, stream: *mut c_void) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(check_stream(stream).and_then(|()| unsafe { dtoh(dst, src, len) }))
}

/// `cuMemcpyDtoD_v2`.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoD_v2(dst: u64, src: u64, len: usize) -> CuResult {
    code(dtod(dst, src, len))
}

/// `cuMemcpyDtoDAsync_v2`.
#[no_mangle]
pub extern "C" fn cuMemcpyDtoDAsync_v2(dst: u64, src: u64, len: usize, stream: *mut c_void) -> CuResult {
    code(check_stream(stream).and_then(|()| dtod(dst, src, len)))
}
