//! `CUresult` codes, their names and texts (`cuGetErrorName` / `cuGetErrorString`), and how an
//! emulator error becomes one.
//!
//! A code alone says little ("unspecified launch failure"), so every failure that has more to say
//! (a sanitizer report, a PTX parse error, a refused launch configuration) is printed to stderr in
//! full when it happens and kept as the *last report*: `cuGetErrorString` of that code returns the
//! code's text followed by the report. A caller that turns errors into messages the usual way (the
//! engine does: name + string) therefore shows the whole report, with kernel, block, thread, PTX
//! line and address.

use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;

/// `CUresult` (a C enum: an unsigned int).
pub type CuResult = u32;

pub const SUCCESS: CuResult = 0;
pub const INVALID_VALUE: CuResult = 1;
pub const OUT_OF_MEMORY: CuResult = 2;
pub const NOT_INITIALIZED: CuResult = 3;
pub const NO_DEVICE: CuResult = 100;
pub const INVALID_DEVICE: CuResult = 101;
pub const INVALID_IMAGE: CuResult = 200;
pub const INVALID_CONTEXT: CuResult = 201;
pub const NO_BINARY_FOR_GPU: CuResult = 209;
pub const INVALID_PTX: CuResult = 218;
pub const INVALID_HANDLE: CuResult = 400;
pub const NOT_FOUND: CuResult = 500;
pub const ILLEGAL_ADDRESS: CuResult = 700;
pub const LAUNCH_OUT_OF_RESOURCES: CuResult = 701;
pub const LAUNCH_FAILED: CuResult = 719;
pub const NOT_SUPPORTED: CuResult = 801;
pub const UNKNOWN: CuResult = 999;

const CODES: [(CuResult, &CStr, &CStr); 17] = [
    (SUCCESS, c"CUDA_SUCCESS", c"no error"),
    (INVALID_VALUE, c"CUDA_ERROR_INVALID_VALUE", c"invalid argument"),
    (OUT_OF_MEMORY, c"CUDA_ERROR_OUT_OF_MEMORY", c"out of memory"),
    (NOT_INITIALIZED, c"CUDA_ERROR_NOT_INITIALIZED", c"initialization error"),
    (NO_DEVICE, c"CUDA_ERROR_NO_DEVICE", c"no CUDA-capable device is detected"),
    (INVALID_DEVICE, c"CUDA_ERROR_INVALID_DEVICE", c"invalid device ordinal"),
    (INVALID_IMAGE, c"CUDA_ERROR_INVALID_IMAGE", c"device kernel image is invalid"),
    (INVALID_CONTEXT, c"CUDA_ERROR_INVALID_CONTEXT", c"invalid device context"),
    (NO_BINARY_FOR_GPU, c"CUDA_ERROR_NO_BINARY_FOR_GPU", c"no kernel image is available for execution on the device"),
    (INVALID_PTX, c"CUDA_ERROR_INVALID_PTX", c"a PTX JIT compilation failed"),
    (INVALID_HANDLE, c"CUDA_ERROR_INVALID_HANDLE", c"invalid resource handle"),
    (NOT_FOUND, c"CUDA_ERROR_NOT_FOUND", c"named symbol not found"),
    (ILLEGAL_ADDRESS, c"CUDA_ERROR_ILLEGAL_ADDRESS", c"an illegal memory access was encountered"),
    (LAUNCH_OUT_OF_RESOURCES, c"CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", c"too many resources requested for launch"),
    (LAUNCH_FAILED, c"CUDA_ERROR_LAUNCH_FAILED", c"unspecified launch failure"),
    (NOT_SUPPORTED, c"CUDA_ERROR_NOT_SUPPORTED", c"operation not supported"),
    (UNKNOWN, c"CUDA_ERROR_UNKNOWN", c"unknown error"),
];

pub fn name(code: CuResult) -> Option<&'static CStr> {
    CODES.iter().find(|c| c.0 == code).map(|c| c.1)
}

fn text(code: CuResult) -> Option<&'static CStr> {
    CODES.iter().find(|c| c.0 == code).map(|c| c.2)
}

/// The last report and the code it came with. Every string handed out stays allocated for the
/// life of the process (a caller may hold the pointer), so replaced ones are leaked: reports are
/// rare (failures), so this is bounded in practice.
static LAST: Mutex<Option<(CuResult, &'static CStr)>> = Mutex::new(None);

/// Prints `report` to stderr and keeps it for `cuGetErrorString(code)`; returns `code`.
pub fn fail(code: CuResult, report: &str) -> CuResult {
    eprintln!("vgpu: {}: {report}", name(code).map_or("CUDA error".into(), |n| n.to_string_lossy()));
    let full = format!("{}: {report}", text(code).map_or("error".into(), |t| t.to_string_lossy()));
    let full: &'static CStr = Box::leak(CString::new(full.replace('\0', " ")).expect("NULs replaced").into_boxed_c_str());
    *LAST.lock().unwrap_or_else(|p| p.into_inner()) = Some((code, full));
    code
}

/// The code for an emulator error, with the report printed and kept.
pub fn from_emulator(e: &vgpu::Error) -> CuResult {
    let code = match e {
        vgpu::Error::Parse { .. } | vgpu::Error::Unsupported { .. } => INVALID_PTX,
        vgpu::Error::Launch { .. } => LAUNCH_OUT_OF_RESOURCES,
        vgpu::Error::Alloc { .. } => INVALID_VALUE,
        vgpu::Error::Invalid { .. } | vgpu::Error::Config { .. } => INVALID_VALUE,
        vgpu::Error::Memory { .. } | vgpu::Error::Race { .. } | vgpu::Error::Deadlock { .. } | vgpu::Error::Barrier { .. } | vgpu::Error::Fault { .. } => LAUNCH_FAILED,
    };
    fail(code, &e.to_string())
}

/// `cuGetErrorName`.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorName(code: CuResult, out: *mut *const c_char) -> CuResult {
    let Some(n) = name(code) else { return INVALID_VALUE };
    if out.is_null() {
        return INVALID_VALUE;
    }
    // SAFETY: the caller passes a writable pointer (checked non-null).
    unsafe { *out = n.as_ptr() };
    SUCCESS
}

/// `cuGetErrorString`: the code's text, followed by the last report when it came with this code.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuGetErrorString(code: CuResult, out: *mut *const c_char) -> CuResult {
    let Some(t) = text(code) else { return INVALID_VALUE };
    if out.is_null() {
        return INVALID_VALUE;
    }
    let last = *LAST.lock().unwrap_or_else(|p| p.into_inner());
    let s = match last {
        Some((c, report)) if c == code => report,
        _ => t,
    };
    // SAFETY: the caller passes a writable pointer (checked non-null); the string is 'static.
    unsafe { *out = s.as_ptr() };
    SUCCESS
}
