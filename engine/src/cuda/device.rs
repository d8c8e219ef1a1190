//! Finding CUDA devices, and the per-device state every op uses: the primary context, one stream,
//! the caching allocator and the loaded kernel modules.
//!
//! Discovery first loads the emulated driver when it was asked for (driver_lib.rs), then asks three
//! questions in order and caches the answer for the life of the process: does
//! the driver library load, does `cuInit` succeed, does the driver report any device? The first
//! "no" becomes the one-line reason `unavailable_reason()` gives. Nothing here panics: cudarc panics
//! when a library it loads lazily is missing, so its presence is checked first, and the driver
//! probe also runs under `catch_unwind` against a broken library that loads but lacks symbols.
//!
//! Each device is set up on first use, not at discovery, so counting devices costs no context
//! creation. It uses the device's *primary* context (the one the CUDA runtime and other libraries
//! share) and one non-blocking stream: every kernel, copy and memset of this engine goes onto that
//! stream, so stream order alone orders all work, and the caching allocator can hand a freed block
//! to the next request without any event. The context is made current on the calling thread before
//! each driver call (`bind`), which is a cheap thread-local set in the driver, so any thread can use
//! any device.

use std::sync::OnceLock;

use cudarc::driver::{result, sys};

use super::alloc::Allocator;
use super::error::{describe, DriverContext};
use super::module::Modules;
use crate::{Error, Result};

/// What the driver says about a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// (major, minor), e.g. (9, 0) for H100.
    pub compute_capability: (u32, u32),
    pub sm_count: u32,
    /// Driver API version as (major, minor), e.g. (13, 0).
    pub driver_version: (u32, u32),
    pub total_memory: usize,
}

pub(crate) struct CudaDevice {
    pub(crate) info: DeviceInfo,
    ctx: sys::CUcontext,
    stream: sys::CUstream,
    pub(crate) alloc: Allocator,
    pub(crate) modules: Modules,
}

// SAFETY: the context and stream handles are plain driver handles that are valid on any thread once
// the context is current there (`bind` does that before each use); the driver serialises its own
// state. The allocator and module cache guard their state with mutexes.
unsafe impl Send for CudaDevice {}
// SAFETY: as above; no `&self` method mutates unsynchronised state.
unsafe impl Sync for CudaDevice {}

struct Discovery {
    count: usize,
    reason: Option<String>,
    devices: Vec<OnceLock<std::result::Result<CudaDevice, (String, String)>>>,
}

fn discovery() -> &'static Discovery {
    static DISCOVERY: OnceLock<Discovery> = OnceLock::new();
    DISCOVERY.get_or_init(|| {
        let (count, reason) = match super::driver_lib::choose().map(|()| std::panic::catch_unwind(probe)) {
            Err(why) => (0, Some(why)),
            Ok(probed) => match probed {
            Ok(Ok(0)) => (0, Some("the CUDA driver reports zero devices".to_string())),
            Ok(Ok(n)) => (n, None),
            Ok(Err(why)) => (0, Some(why)),
            Err(_) => (0, Some("the CUDA driver library is missing symbols (a stub or broken libcuda)".to_string())),
            },
        };
        Discovery { count, reason, devices: (0..count).map(|_| OnceLock::new()).collect() }
    })
}

fn probe() -> std::result::Result<usize, String> {
    // SAFETY: only tries to dlopen the driver library and drops the handle.
    if !unsafe { sys::is_culib_present() } {
        return Err("libcuda.so not found (no NVIDIA driver on this machine)".to_string());
    }
    result::init().map_err(|e| format!("cuInit failed: {}", describe(e)))?;
    let n = result::device::get_count().map_err(|e| format!("cuDeviceGetCount failed: {}", describe(e)))?;
    Ok(n.max(0) as usize)
}

/// Number of usable CUDA devices (0 on a machine without a GPU or driver). Never panics.
pub fn device_count() -> usize {
    discovery().count
}

/// Why there is no CUDA device, in one line; `None` when at least one device exists.
pub fn unavailable_reason() -> Option<String> {
    discovery().reason.clone()
}

/// The device with this ordinal, set up on first use.
pub(crate) fn device(ordinal: usize) -> Result<&'static CudaDevice> {
    let d = discovery();
    let slot = d.devices.get(ordinal).ok_or_else(|| {
        Error::NoCuda(match &d.reason {
            Some(why) => why.clone(),
            None => format!("asked for cuda:{ordinal} but {} CUDA device(s) are present", d.count),
        })
    })?;
    match slot.get_or_init(|| CudaDevice::open(ordinal).map_err(|e| match e {
        Error::Cuda { op, msg } => (op, msg),
        other => ("device setup".to_string(), other.to_string()),
    })) {
        Ok(dev) => Ok(dev),
        Err((op, msg)) => Err(Error::Cuda { op: op.clone(), msg: format!("cuda:{ordinal}: {msg}") }),
    }
}

/// Facts about a device (name, compute capability, SM count, driver version, memory).
pub fn device_info(ordinal: usize) -> Result<DeviceInfo> {
    Ok(device(ordinal)?.info.clone())
}

/// The stream all of device `ordinal`'s work goes onto (its context is the device's primary
/// context), for another CUDA library (cuBLAS in the benches) to queue work in order with the
/// engine's kernels.
pub fn stream_handle(ordinal: usize) -> Result<sys::CUstream> {
    Ok(device(ordinal)?.stream())
}

/// Waits until all work queued on the device's stream has finished, and reports any error a kernel
/// raised since the last synchronisation.
pub fn synchronize(ordinal: usize) -> Result<()> {
    device(ordinal)?.synchronize()
}

impl CudaDevice {
    fn open(ordinal: usize) -> Result<CudaDevice> {
        let cu = result::device::get(ordinal as i32).ctx("cuDeviceGet")?;
        // SAFETY: `cu` is a valid device handle; the primary context is retained for the life of the
        // process (never released: devices live in a static).
        let ctx = unsafe { result::primary_ctx::retain(cu) }.ctx("cuDevicePrimaryCtxRetain")?;
        // SAFETY: ctx was just retained.
        unsafe { result::ctx::set_current(ctx) }.ctx("cuCtxSetCurrent")?;
        let stream = result::stream::create(result::stream::StreamKind::NonBlocking).ctx("cuStreamCreate")?;
        let attr = |a: sys::CUdevice_attribute| -> Result<u32> {
            // SAFETY: `cu` is a valid device handle and `a` a valid attribute.
            Ok(unsafe { result::device::get_attribute(cu, a) }.ctx("cuDeviceGetAttribute")?.max(0) as u32)
        };
        let major = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let sm_count = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
        let mut version = 0i32;
        // SAFETY: writes one int.
        unsafe { sys::cuDriverGetVersion(&mut version) }.result().ctx("cuDriverGetVersion")?;
        // SAFETY: `cu` is a valid device handle.
        let total_memory = unsafe { result::device::total_mem(cu) }.ctx("cuDeviceTotalMem")?;
        let info = DeviceInfo {
            ordinal,
            name: result::device::get_name(cu).ctx("cuDeviceGetName")?,
            compute_capability: (major, minor),
            sm_count,
            driver_version: ((version / 1000) as u32, ((version % 1000) / 10) as u32),
            total_memory,
        };
        Ok(CudaDevice { info, ctx, stream, alloc: Allocator::new(), modules: Modules::new() })
    }

    /// Makes this device's context current on the calling thread. Call before any driver call.
    pub(crate) fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for the life of the process.
        unsafe { result::ctx::set_current(self.ctx) }.ctx("cuCtxSetCurrent")
    }

    pub(crate) fn stream(&self) -> sys::CUstream {
        self.stream
    }

    pub(crate) fn ordinal(&self) -> usize {
        self.info.ordinal
    }

    pub(crate) fn synchronize(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the stream belongs to this context and is never destroyed.
        unsafe { result::stream::synchronize(self.stream) }.ctx("cuStreamSynchronize")
    }
}
