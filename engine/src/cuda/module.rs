//! Kernel modules per device: compiled (or taken from the disk cache) and loaded on first use of
//! any of their entry points, then kept for the life of the process; each function is looked up
//! once and memoised, so a launch costs one hash lookup.
//!
//! The CUBIN is loaded first; a driver that refuses it gets the PTX of the same compile instead (a
//! real driver JIT-compiles PTX; the emulated device of the `vgpu` crate has no use for machine code
//! and executes the PTX). Which one loaded is the driver's answer, not a property of the device.
//! A cached build that the driver refuses in both forms (a truncated file, say) is deleted and
//! rebuilt once. Set
//! `DSMOE_KERNEL_LOG=1` to print each module's compile warnings when it loads; `kernel_logs()`
//! returns them either way.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::Mutex;

use cudarc::driver::{result, sys};
use kernels_cuda::KernelSource;

use super::device::{device, CudaDevice};
use super::error::DriverContext;
use super::{kernel_cache, nvrtc};
use crate::{Error, Result};

#[derive(Default)]
struct Loaded {
    modules: HashMap<&'static str, sys::CUmodule>,
    functions: HashMap<&'static str, sys::CUfunction>,
    logs: Vec<(String, String)>,
}

pub(crate) struct Modules {
    inner: Mutex<Loaded>,
}

impl Modules {
    pub(crate) fn new() -> Self {
        Modules { inner: Mutex::new(Loaded::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Loaded> {
        // Inserts are single statements, so a poisoned lock still holds consistent maps.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The function `entry` of module `src` on `dev`, loading the module if needed, with the entry's
/// static name (for the profiler).
pub(crate) fn function(dev: &CudaDevice, src: &'static KernelSource, entry: &str) -> Result<(sys::CUfunction, &'static str)> {
    let entry: &'static str = src.entry_points.iter().copied().find(|e| *e == entry).ok_or_else(|| Error::Cuda {
        op: "kernel lookup".into(),
        msg: format!("{entry} is not an entry point of module {} (see kernels-cuda/src/lib.rs)", src.name),
    })?;
    let mut loaded = dev.modules.lock();
    if let Some(&f) = loaded.functions.get(entry) {
        return Ok((f, entry));
    }
    let module = match loaded.modules.get(src.name) {
        Some(&m) => m,
        None => {
            let (m, log) = load(dev, src)?;
            loaded.modules.insert(src.name, m);
            if !log.is_empty() {
                loaded.logs.push((src.name.to_string(), log));
            }
            m
        }
    };
    dev.bind()?;
    let name = CString::new(entry).expect("entry points contain no NUL");
    // SAFETY: the module is loaded in this device's context, which is current.
    let f = unsafe { result::module::get_function(module, name) }.ctx("cuModuleGetFunction")?;
    loaded.functions.insert(entry, f);
    Ok((f, entry))
}

fn load(dev: &CudaDevice, src: &'static KernelSource) -> Result<(sys::CUmodule, String)> {
    let arch = nvrtc::arch_for(dev.info.compute_capability);
    let (compiled, cached) = kernel_cache::load_or_compile(None, src, &arch)?;
    dev.bind()?;
    let module = match load_compiled(&compiled) {
        Ok(m) => m,
        Err(_) if cached => {
            kernel_cache::forget(None, src, &arch)?;
            let fresh = nvrtc::compile(src, &arch)?;
            load_compiled(&fresh).ctx("cuModuleLoadData")?
        }
        Err(e) => return Err(super::error::driver("cuModuleLoadData", e)),
    };
    if !compiled.log.is_empty() && std::env::var("DSMOE_KERNEL_LOG").is_ok_and(|v| v == "1") {
        eprintln!("dsmoe: compile log of kernel module {} ({arch}):\n{}", src.name, compiled.log);
    }
    Ok((module, compiled.log))
}

/// The CUBIN, or else the PTX; the error is the PTX's when both are refused (the CUBIN's
/// refusal is expected on a driver that only takes PTX, so it says less).
fn load_compiled(compiled: &nvrtc::Compiled) -> std::result::Result<sys::CUmodule, result::DriverError> {
    // SAFETY: `cubin` is an ELF image produced by nvrtcGetCUBIN (or read back from the cache, which
    // the driver validates); the driver copies it during the call.
    let cubin = unsafe { result::module::load_data(compiled.cubin.as_ptr() as *const std::ffi::c_void) };
    cubin.or_else(|_| {
        let ptx = CString::new(compiled.ptx.as_str()).map_err(|_| result::DriverError(sys::CUresult::CUDA_ERROR_INVALID_PTX))?;
        // SAFETY: a NUL-terminated PTX text, which the driver reads (and copies) during the call.
        unsafe { result::module::load_data(ptx.as_ptr() as *const std::ffi::c_void) }
    })
}

/// Compiles (or loads from the disk cache) and loads every kernel module on a device, so the first
/// timed or latency-sensitive call does not pay for it.
pub fn warm_up(ordinal: usize) -> Result<()> {
    let dev = device(ordinal)?;
    for src in kernels_cuda::ALL {
        function(dev, src, src.entry_points[0])?;
    }
    Ok(())
}

/// (module, compile log) for every loaded module of a device whose log is not empty: ptxas
/// warnings about spills and local memory show up here.
pub fn kernel_logs(ordinal: usize) -> Result<Vec<(String, String)>> {
    Ok(device(ordinal)?.modules.lock().logs.clone())
}
