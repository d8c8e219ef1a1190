//! The driver's process-wide state: the one emulated device (its settings and memory), and the
//! tables behind the opaque handles the C API hands out.
//!
//! A handle (`CUmodule`, `CUfunction`, `CUstream`, `CUevent`) is a small non-zero number cast to
//! a pointer, looked up in a table on each use, never a pointer into this library: a stale or
//! foreign handle is then `CUDA_ERROR_INVALID_HANDLE`, not undefined behaviour. The context is the
//! one primary context of device 0, a fixed non-null value.

use std::collections::BTreeMap;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::status::{self, CuResult};

/// The emulated device. Its memory capacity is `DSMOE_EMU_MEM_GIB` GiB (default 16), taken from the
/// host only as allocations are made.
pub struct Device {
    pub config: vgpu::DeviceConfig,
    pub memory: vgpu::GlobalMemory,
    pub name: CString,
}

static INITIALISED: AtomicBool = AtomicBool::new(false);
static DEVICE: OnceLock<Result<Device, String>> = OnceLock::new();

fn open() -> Result<Device, String> {
    let config = vgpu::DeviceConfig::from_env().map_err(|e| e.to_string())?;
    let gib = match std::env::var("DSMOE_EMU_MEM_GIB") {
        Err(_) => 16,
        Ok(v) => v.trim().parse::<u64>().ok().filter(|g| (1..=1024).contains(g)).ok_or_else(|| format!("DSMOE_EMU_MEM_GIB={v:?}: expected a size in GiB in 1..=1024"))?,
    };
    let name = format!("dsmoe vgpu (emulated {}, {} SMs)", config.arch.name(), config.sm_count);
    Ok(Device { config, memory: vgpu::GlobalMemory::new(gib << 30), name: CString::new(name).expect("no NUL") })
}

/// `cuInit`: reads the settings; a bad setting fails here, with its report.
pub fn init() -> CuResult {
    match DEVICE.get_or_init(open) {
        Ok(_) => {
            INITIALISED.store(true, Ordering::SeqCst);
            status::SUCCESS
        }
        Err(why) => status::fail(status::NOT_INITIALIZED, why),
    }
}

/// The device, or `CUDA_ERROR_NOT_INITIALIZED` before a successful `cuInit`.
pub fn device() -> Result<&'static Device, CuResult> {
    if !INITIALISED.load(Ordering::SeqCst) {
        return Err(status::NOT_INITIALIZED);
    }
    match DEVICE.get() {
        Some(Ok(d)) => Ok(d),
        _ => Err(status::NOT_INITIALIZED),
    }
}

/// The primary context of device 0.
pub const CONTEXT: *mut c_void = 0x1c0 as *mut c_void;

/// A table of live objects behind one kind of handle.
pub struct Handles<T> {
    next: AtomicUsize,
    live: Mutex<BTreeMap<usize, Arc<T>>>,
}

impl<T> Handles<T> {
    pub const fn new() -> Self {
        Handles { next: AtomicUsize::new(1), live: Mutex::new(BTreeMap::new()) }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Arc<T>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, value: T) -> *mut c_void {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.table().insert(id, Arc::new(value));
        id as *mut c_void
    }

    pub fn get(&self, handle: *mut c_void) -> Result<Arc<T>, CuResult> {
        self.table().get(&(handle as usize)).cloned().ok_or(status::INVALID_HANDLE)
    }

    pub fn remove(&self, handle: *mut c_void) -> Result<(), CuResult> {
        self.table().remove(&(handle as usize)).map(|_| ()).ok_or(status::INVALID_HANDLE)
    }
}

/// `Ok(())` → SUCCESS, `Err(code)` → code: the exported functions end with this.
pub fn code(r: Result<(), CuResult>) -> CuResult {
    r.err().unwrap_or(status::SUCCESS)
}

/// Writes `value` through an out-pointer from C, or `CUDA_ERROR_INVALID_VALUE` when it is null.
///
/// # Safety
/// A non-null `out` must be valid for a write of `T`.
pub unsafe fn write<T>(out: *mut T, value: T) -> Result<(), CuResult> {
    if out.is_null() {
        return Err(status::INVALID_VALUE);
    }
    // SAFETY: non-null, and the caller vouches that it is writable.
    unsafe { out.write(value) };
    Ok(())
}
