//! Driver and NVRTC status codes as engine errors. Every failure names the call that failed
//! (`cuMemAlloc`, `nvrtcCompileProgram`, ...) and carries the driver's own name and text for the
//! code, so a log line says both where and what.

use cudarc::driver::result::DriverError;
use cudarc::nvrtc::result::NvrtcError;

use crate::{Error, Result};

/// The driver's name and text for a status code, e.g. "CUDA_ERROR_NO_DEVICE: no CUDA-capable device is detected".
pub(crate) fn describe(e: DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{name}: {text}")
}

pub(crate) fn driver(op: &str, e: DriverError) -> Error {
    Error::Cuda { op: op.to_string(), msg: describe(e) }
}

pub(crate) fn nvrtc(op: &str, e: NvrtcError) -> Error {
    // SAFETY: nvrtcGetErrorString returns a pointer to a static NUL-terminated string for any code.
    let text = unsafe { std::ffi::CStr::from_ptr(cudarc::nvrtc::sys::nvrtcGetErrorString(e.0)) };
    Error::Cuda { op: op.to_string(), msg: text.to_string_lossy().into_owned() }
}

/// `.ctx("cuFoo")` on a driver result: converts the error and names the call.
pub(crate) trait DriverContext<T> {
    fn ctx(self, op: &str) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, DriverError> {
    fn ctx(self, op: &str) -> Result<T> {
        self.map_err(|e| driver(op, e))
    }
}

impl<T> DriverContext<T> for std::result::Result<T, NvrtcError> {
    fn ctx(self, op: &str) -> Result<T> {
        self.map_err(|e| nvrtc(op, e))
    }
}
