//! NVTX ranges around ops, so Nsight Systems shows `matmul`, `softmax`, ... above the kernels
//! they launched. Active only when the NVTX library (libnvToolsExt) loads; otherwise a range is a
//! no-op and nothing is loaded again (the check runs once). cudarc panics on a missing library, so
//! its presence is checked before the first call.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::sync::OnceLock;

use cudarc::nvtx::sys;

fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    // SAFETY: only tries to dlopen the library and drops the handle.
    *ON.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// An open range; closes on drop, on the thread that opened it (hence not Send).
pub(crate) struct Range(bool, PhantomData<*const ()>);

/// Opens a range named `name` on the calling thread.
pub(crate) fn range(name: &'static CStr) -> Range {
    if !enabled() {
        return Range(false, PhantomData);
    }
    // SAFETY: the library is present and `name` is a NUL-terminated static string.
    unsafe { sys::nvtxRangePushA(name.as_ptr()) };
    Range(true, PhantomData)
}

impl Drop for Range {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: pops the range this guard pushed on this thread (the guard cannot leave it).
            unsafe { sys::nvtxRangePop() };
        }
    }
}
