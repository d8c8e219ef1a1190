//! Initialisation, the device and its attributes, the primary context.
//!
//! There is exactly one device (ordinal 0). Its attributes are those of the emulated architecture
//! as an A100 (sm_80) or H100 (sm_90a) reports them, except the SM count, which is a setting
//! (`DSMOE_EMU_SMS`, default 4: few SMs make persistent kernels walk several tiles per block at
//! test sizes). Attributes a program has no business relying on for correctness (clock rates, bus
//! widths) report plausible values; unknown attributes are `CUDA_ERROR_INVALID_VALUE`.

use std::ffi::{c_char, c_int, c_uint, c_void};

use crate::state::{self, code, write};
use crate::status::{self, CuResult};

/// The CUDA version the API corresponds to (13.0), as `cuDriverGetVersion` encodes it.
const DRIVER_VERSION: c_int = 13000;

/// `cuInit`.
#[no_mangle]
pub extern "C" fn cuInit(flags: c_uint) -> CuResult {
    if flags != 0 {
        return status::INVALID_VALUE;
    }
    state::init()
}

/// `cuDriverGetVersion` (valid before `cuInit`, as on a real driver).
///
/// # Safety
/// `version` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuDriverGetVersion(version: *mut c_int) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(unsafe { write(version, DRIVER_VERSION) })
}

/// `cuDeviceGetCount`.
///
/// # Safety
/// `count` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut c_int) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(state::device().and_then(|_| unsafe { write(count, 1) }))
}

fn check_ordinal(ordinal: c_int) -> Result<&'static state::Device, CuResult> {
    let dev = state::device()?;
    if ordinal != 0 {
        return Err(status::INVALID_DEVICE);
    }
    Ok(dev)
}

/// `cuDeviceGet`.
///
/// # Safety
/// `device` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGet(device: *mut c_int, ordinal: c_int) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(check_ordinal(ordinal).and_then(|_| unsafe { write(device, 0) }))
}

/// `cuDeviceGetName`: e.g. "dsmoe vgpu (emulated sm_90a, 4 SMs)", cut to `len - 1` bytes.
///
/// # Safety
/// `name` must be writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: c_int, device: c_int) -> CuResult {
    code(check_ordinal(device).and_then(|dev| {
        if name.is_null() || len <= 0 {
            return Err(status::INVALID_VALUE);
        }
        let bytes = dev.name.as_bytes();
        let n = bytes.len().min(len as usize - 1);
        // SAFETY: `name` holds `len` bytes (the caller's promise); n + 1 <= len.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), name as *mut u8, n);
            *name.add(n) = 0;
        }
        Ok(())
    }))
}

/// `cuDeviceTotalMem_v2`: the emulated memory's capacity.
///
/// # Safety
/// `bytes` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, device: c_int) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(check_ordinal(device).and_then(|dev| unsafe { write(bytes, dev.memory.capacity() as usize) }))
}

/// `cuMemGetInfo_v2`: free and total bytes of the emulated memory.
///
/// # Safety
/// Both pointers must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) -> CuResult {
    code(state::device().and_then(|dev| {
        let cap = dev.memory.capacity();
        // SAFETY: forwarded from the caller.
        unsafe {
            write(free, cap.saturating_sub(dev.memory.used_bytes()) as usize)?;
            write(total, cap as usize)
        }
    }))
}

/// The value of attribute `attr` (a `CUdevice_attribute`), or `None` for one not modelled.
fn attribute(dev: &state::Device, attr: c_int) -> Option<c_int> {
    let l = dev.config.limits();
    let (major, minor) = dev.config.arch.compute_capability();
    let i = |v: u32| Some(v.min(i32::MAX as u32) as c_int);
    match attr {
        1 => i(l.max_threads_per_block),
        2..=4 => i(l.max_block_dim[(attr - 2) as usize]),
        5..=7 => i(l.max_grid_dim[(attr - 5) as usize]),
        8 => i(l.max_static_smem_per_block),
        9 => i(64 * 1024),
        10 => i(l.warp_size),
        11 => i(i32::MAX as u32),
        12 => i(l.regs_per_block),
        13 => i(1_755_000),
        14 => i(512),
        15 | 18 | 17 | 20 | 32 | 35 | 84 => i(0),
        16 => i(dev.config.sm_count),
        19 | 31 | 41 | 78 | 79 | 80 | 83 | 89 | 95 => i(1),
        33 | 34 | 50 => i(0),
        36 => i(2_619_000),
        37 => i(5120),
        38 => i(50 * 1024 * 1024),
        39 => i(l.max_threads_per_sm),
        40 => i(2),
        75 => i(major),
        76 => i(minor),
        81 => i(l.smem_per_sm),
        82 => i(l.regs_per_sm),
        97 => i(l.max_dyn_smem_per_block),
        106 => i(32),
        111 => i(1024),
        120 => i(u32::from(major >= 9)),
        _ => None,
    }
}

/// `cuDeviceGetAttribute`.
///
/// # Safety
/// `value` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuDeviceGetAttribute(value: *mut c_int, attr: c_int, device: c_int) -> CuResult {
    code(check_ordinal(device).and_then(|dev| {
        let v = attribute(dev, attr).ok_or(status::INVALID_VALUE)?;
        // SAFETY: forwarded from the caller.
        unsafe { write(value, v) }
    }))
}

/// `cuDevicePrimaryCtxRetain`: the one context.
///
/// # Safety
/// `ctx` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuDevicePrimaryCtxRetain(ctx: *mut *mut c_void, device: c_int) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(check_ordinal(device).and_then(|_| unsafe { write(ctx, state::CONTEXT) }))
}

/// `cuDevicePrimaryCtxRelease_v2`: the context lives as long as the process.
#[no_mangle]
pub extern "C" fn cuDevicePrimaryCtxRelease_v2(device: c_int) -> CuResult {
    code(check_ordinal(device).map(|_| ()))
}

/// `cuCtxSetCurrent`: the only context there is (or none).
#[no_mangle]
pub extern "C" fn cuCtxSetCurrent(ctx: *mut c_void) -> CuResult {
    code(state::device().and_then(|_| if ctx.is_null() || ctx == state::CONTEXT { Ok(()) } else { Err(status::INVALID_CONTEXT) }))
}

/// `cuCtxGetCurrent`.
///
/// # Safety
/// `ctx` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuCtxGetCurrent(ctx: *mut *mut c_void) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(state::device().and_then(|_| unsafe { write(ctx, state::CONTEXT) }))
}

/// `cuCtxSynchronize`: work runs when it is issued, so there is never anything to wait for.
#[no_mangle]
pub extern "C" fn cuCtxSynchronize() -> CuResult {
    code(state::device().map(|_| ()))
}
