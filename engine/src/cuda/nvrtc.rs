//! Compiling kernel sources to CUBIN (and the PTX it was made from) with NVRTC, for one GPU
//! architecture.
//!
//! This is the whole pipeline the engine and the compile check (`tests/kernels_compile.rs`) share:
//! the same options, the same in-memory headers, the same error handling. It needs only libnvrtc
//! (and its builtins library): no GPU, no driver, no toolkit headers. The disk cache around it is
//! in kernel_cache.rs.
//!
//! Choices:
//! - CUBIN, not PTX: PTX made by an NVRTC newer than the driver fails to load
//!   (`CUDA_ERROR_UNSUPPORTED_PTX_VERSION`); machine code does not, and it skips the driver's own
//!   JIT at load. The price is one build per architecture, which the disk cache absorbs.
//! - The PTX of the same compile is kept beside the CUBIN (NVRTC produces both in one run), for a
//!   driver that has no use for machine code: module.rs loads it when the driver refuses the CUBIN
//!   (the emulated device of the `vgpu` crate executes PTX).
//! - `sm_90a` on compute capability 9.0 (Hopper), so wgmma, setmaxnreg and TMA are available to
//!   the kernels that use them; `sm_XY` elsewhere.
//! - No `--use_fast_math`: the kernels here are reference-grade (tests hold f32 results to 1e-5
//!   relative error), and fast math's flush-to-zero and approximate exp / division would make CPU
//!   and GPU disagree in ways that look like bugs. Kernels that want an approximate intrinsic call
//!   it by name (`__expf`). FMA contraction stays on (the default): it is more accurate, not less.
//! - `-lineinfo` so Nsight Compute maps SASS back to source lines (it costs no speed).
//! - ptxas warns on register spills and local-memory use; NVRTC returns those warnings in the
//!   program log, which `Compiled::log` keeps (`DSMOE_KERNEL_LOG=1` prints them at load).

use std::ffi::{c_char, CString};
use std::sync::OnceLock;

use cudarc::nvrtc::sys;
use kernels_cuda::{KernelSource, HEADERS};

use super::error::DriverContext;
use crate::{Error, Result};

/// A compiled module: machine code, the PTX it was assembled from, and NVRTC's log (warnings;
/// empty when clean).
#[derive(Debug, Clone)]
pub struct Compiled {
    pub cubin: Vec<u8>,
    /// PTX text, without a trailing NUL.
    pub ptx: String,
    pub log: String,
}

/// Whether libnvrtc can be loaded (checked once).
pub fn is_available() -> bool {
    unavailable_reason().is_none()
}

/// Why NVRTC cannot be used, in one line; `None` when it can.
pub fn unavailable_reason() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            // SAFETY: only tries to dlopen the library and drops the handle.
            if unsafe { sys::is_culib_present() } {
                None
            } else {
                Some("libnvrtc.so not found (install the nvidia-cuda-nvrtc wheel or a CUDA toolkit and put its lib directory on LD_LIBRARY_PATH)".to_string())
            }
        })
        .clone()
}

fn require() -> Result<()> {
    match unavailable_reason() {
        None => Ok(()),
        Some(why) => Err(Error::Cuda { op: "nvrtc".into(), msg: why }),
    }
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32)> {
    require()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: writes two ints.
    unsafe { sys::nvrtcVersion(&mut major, &mut minor) }.result().ctx("nvrtcVersion")?;
    Ok((major, minor))
}

/// The architecture to compile for on a device of this compute capability.
pub fn arch_for(compute_capability: (u32, u32)) -> String {
    match compute_capability {
        (9, 0) => "sm_90a".to_string(),
        (major, minor) => format!("sm_{major}{minor}"),
    }
}

/// The NVRTC options for `arch` (e.g. "sm_90a"); part of the kernel cache key.
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "-default-device".into(),
        "-lineinfo".into(),
        "--ptxas-options=--warn-on-spills".into(),
        "--ptxas-options=--warn-on-local-memory-usage".into(),
    ]
}

/// Owns an nvrtcProgram and destroys it on every exit path.
struct Program(sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once.
        unsafe { sys::nvrtcDestroyProgram(&mut self.0) };
    }
}

impl Program {
    fn log(&self) -> Result<String> {
        let mut size = 0usize;
        // SAFETY: the program is alive; writes one size_t.
        unsafe { sys::nvrtcGetProgramLogSize(self.0, &mut size) }.result().ctx("nvrtcGetProgramLogSize")?;
        let mut buf = vec![0u8; size.max(1)];
        // SAFETY: the buffer holds `size` bytes, as NVRTC asked.
        unsafe { sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char) }.result().ctx("nvrtcGetProgramLog")?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        Ok(String::from_utf8_lossy(&buf[..end]).trim().to_string())
    }

    fn cubin(&self) -> Result<Vec<u8>> {
        let mut size = 0usize;
        // SAFETY: the program compiled; writes one size_t.
        unsafe { sys::nvrtcGetCUBINSize(self.0, &mut size) }.result().ctx("nvrtcGetCUBINSize")?;
        let mut buf = vec![0u8; size];
        // SAFETY: the buffer holds `size` bytes, as NVRTC asked.
        unsafe { sys::nvrtcGetCUBIN(self.0, buf.as_mut_ptr() as *mut c_char) }.result().ctx("nvrtcGetCUBIN")?;
        Ok(buf)
    }

    fn ptx(&self) -> Result<String> {
        let mut size = 0usize;
        // SAFETY: the program compiled; writes one size_t.
        unsafe { sys::nvrtcGetPTXSize(self.0, &mut size) }.result().ctx("nvrtcGetPTXSize")?;
        let mut buf = vec![0u8; size.max(1)];
        // SAFETY: the buffer holds `size` bytes, as NVRTC asked.
        unsafe { sys::nvrtcGetPTX(self.0, buf.as_mut_ptr() as *mut c_char) }.result().ctx("nvrtcGetPTX")?;
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        buf.truncate(end);
        String::from_utf8(buf).map_err(|_| Error::Cuda { op: "nvrtcGetPTX".into(), msg: "NVRTC returned PTX that is not UTF-8".into() })
    }
}

fn cstring(what: &str, s: &str) -> Result<CString> {
    CString::new(s).map_err(|_| Error::invalid("nvrtc", format!("{what} contains a NUL byte")))
}

/// Compiles one kernel module for `arch` (no cache; see kernel_cache.rs for the cached path).
/// A compile error returns `Error::Compile` with NVRTC's full log.
pub fn compile(src: &KernelSource, arch: &str) -> Result<Compiled> {
    require()?;
    let source = cstring(src.name, src.source)?;
    let file_name = cstring(src.name, &format!("{}.cu", src.name))?;
    let header_sources = HEADERS.iter().map(|h| cstring(h.name, h.source)).collect::<Result<Vec<_>>>()?;
    let header_names = HEADERS.iter().map(|h| cstring(h.name, h.name)).collect::<Result<Vec<_>>>()?;
    let header_source_ptrs: Vec<*const c_char> = header_sources.iter().map(|s| s.as_ptr()).collect();
    let header_name_ptrs: Vec<*const c_char> = header_names.iter().map(|s| s.as_ptr()).collect();
    let opts = options(arch).iter().map(|o| cstring("option", o)).collect::<Result<Vec<_>>>()?;
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();

    let mut raw: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: every pointer refers to a NUL-terminated string that outlives the program (the
    // CStrings above live until the end of this function, after `Program` is dropped), and the two
    // header arrays have HEADERS.len() entries.
    unsafe {
        sys::nvrtcCreateProgram(
            &mut raw,
            source.as_ptr(),
            file_name.as_ptr(),
            HEADERS.len() as i32,
            header_source_ptrs.as_ptr(),
            header_name_ptrs.as_ptr(),
        )
    }
    .result()
    .ctx("nvrtcCreateProgram")?;
    let program = Program(raw);
    // SAFETY: the program is alive and `opt_ptrs` holds `opts.len()` valid C strings.
    let status = unsafe { sys::nvrtcCompileProgram(program.0, opt_ptrs.len() as i32, opt_ptrs.as_ptr()) };
    let log = program.log()?;
    if status != sys::nvrtcResult::NVRTC_SUCCESS {
        let log = if log.is_empty() { super::error::nvrtc("nvrtcCompileProgram", cudarc::nvrtc::result::NvrtcError(status)).to_string() } else { log };
        return Err(Error::Compile { kernel: src.name.to_string(), arch: arch.to_string(), log });
    }
    Ok(Compiled { cubin: program.cubin()?, ptx: program.ptx()?, log })
}
