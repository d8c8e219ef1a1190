//! Modules, functions, function attributes and the launch.
//!
//! `cuModuleLoadData` takes PTX text only: an ELF image (a CUBIN) is refused with
//! `CUDA_ERROR_NO_BINARY_FOR_GPU`, as a real driver refuses a CUBIN for another GPU, and a program
//! that keeps the PTX (the engine does) loads that instead. PTX for a newer target than the device
//! (or arch-specific PTX such as `sm_90a` for any other device) is refused the same way. A parse
//! error is `CUDA_ERROR_INVALID_PTX` with the emulator's report (line and form).
//!
//! `cuLaunchKernel` runs the whole grid before it returns. The launch is checked as the real
//! driver checks it (dynamic shared memory against the function's `MAX_DYNAMIC_SHARED_SIZE_BYTES`,
//! which defaults to 48 KiB less the static size and is raised with `cuFuncSetAttribute`; block
//! and grid limits, registers and shared memory against the device in `vgpu::launch`). A fault the
//! emulator's checks find (memcheck, race, initialisation, async-proxy, mbarrier misuse, deadlock)
//! fails the launch with `CUDA_ERROR_LAUNCH_FAILED` and the full report on stderr and in
//! `cuGetErrorString`. Unlike on a GPU the error is not sticky: the next launch runs normally.
//! A completed launch is recorded in the launch log when one is asked for (launch_log.rs).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::launch_log;
use crate::state::{self, code, write, Handles};
use crate::status::{self, CuResult};
use crate::stream::check_stream;

struct Module {
    ptx: Arc<vgpu::Module>,
    /// For the launch log (launch_log.rs).
    name: Arc<str>,
}

struct Function {
    module: Arc<vgpu::Module>,
    module_name: Arc<str>,
    name: String,
    max_dynamic_smem: AtomicU32,
}

impl Function {
    fn kernel(&self) -> &vgpu::Kernel {
        self.module.kernel(&self.name).expect("a function is made only for a kernel of its module")
    }
}

static MODULES: Handles<Module> = Handles::new();
static FUNCTIONS: Handles<Function> = Handles::new();

/// Static shared memory a kernel may use without opting in (the default dynamic limit is this
/// less the static size).
const DEFAULT_SMEM: u32 = 48 * 1024;

/// Whether PTX written for `target` (its `.target`, e.g. "sm_90a") can run on `arch`.
fn target_runs_on(target: &str, arch: vgpu::Arch) -> bool {
    let (major, minor) = arch.compute_capability();
    let device = major * 10 + minor;
    let Some(num) = target.strip_prefix("sm_") else { return false };
    let (digits, specific) = match num.strip_suffix('a') {
        Some(d) => (d, true),
        None => (num, false),
    };
    match digits.parse::<u32>() {
        Ok(t) if specific => t == device,
        Ok(t) => t <= device,
        Err(_) => false,
    }
}

fn load(image: *const c_void) -> Result<Module, CuResult> {
    let dev = state::device()?;
    if image.is_null() {
        return Err(status::INVALID_VALUE);
    }
    // SAFETY: the caller passes either an ELF image (which starts with 4 magic bytes) or a
    // NUL-terminated PTX text; both have at least 4 readable bytes, or a NUL before them.
    let head = unsafe { CStr::from_ptr(image as *const c_char) }.to_bytes();
    if head.starts_with(b"\x7fELF") {
        // Expected of a program that tries machine code first (the engine does), so not printed.
        return Err(status::NO_BINARY_FOR_GPU);
    }
    let text = std::str::from_utf8(head).map_err(|_| status::fail(status::INVALID_PTX, "the module image is neither an ELF image nor UTF-8 PTX text"))?;
    let target = text.lines().map(str::trim).find_map(|l| l.strip_prefix(".target")).map(|t| t.split([',', ' ', '\t']).find(|s| !s.is_empty()).unwrap_or("").to_string());
    let Some(target) = target else {
        return Err(status::fail(status::INVALID_PTX, "the PTX has no .target directive"));
    };
    if !target_runs_on(&target, dev.config.arch) {
        return Err(status::fail(status::NO_BINARY_FOR_GPU, &format!("PTX for {target} cannot run on the emulated {}", dev.config.arch.name())));
    }
    let ptx = vgpu::Module::parse(text).map_err(|e| status::from_emulator(&e))?;
    Ok(Module { ptx: Arc::new(ptx), name: launch_log::module_name(text).into() })
}

/// `cuModuleLoadData`: a NUL-terminated PTX text.
///
/// # Safety
/// `image` must point at a NUL-terminated string or an ELF image; `module` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuModuleLoadData(module: *mut *mut c_void, image: *const c_void) -> CuResult {
    // SAFETY: forwarded from the caller.
    code(load(image).and_then(|m| unsafe { write(module, MODULES.insert(m)) }))
}

/// `cuModuleUnload`: functions already taken from the module stay usable (they share it).
#[no_mangle]
pub extern "C" fn cuModuleUnload(module: *mut c_void) -> CuResult {
    code(state::device().and_then(|_| MODULES.remove(module)))
}

/// `cuModuleGetFunction`.
///
/// # Safety
/// `name` must be a NUL-terminated string; `function` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuModuleGetFunction(function: *mut *mut c_void, module: *mut c_void, name: *const c_char) -> CuResult {
    code(state::device().and_then(|_| {
        let m = MODULES.get(module)?;
        if name.is_null() {
            return Err(status::INVALID_VALUE);
        }
        // SAFETY: the caller passes a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
        let kernel = m.ptx.kernel(&name).ok_or(status::NOT_FOUND)?;
        let max_dynamic_smem = AtomicU32::new(DEFAULT_SMEM.saturating_sub(kernel.static_smem_bytes()));
        let f = Function { module: m.ptx.clone(), module_name: m.name.clone(), name, max_dynamic_smem };
        // SAFETY: forwarded from the caller.
        unsafe { write(function, FUNCTIONS.insert(f)) }
    }))
}

const ATTR_MAX_THREADS_PER_BLOCK: c_int = 0;
const ATTR_SHARED_SIZE_BYTES: c_int = 1;
const ATTR_CONST_SIZE_BYTES: c_int = 2;
const ATTR_LOCAL_SIZE_BYTES: c_int = 3;
const ATTR_NUM_REGS: c_int = 4;
const ATTR_PTX_VERSION: c_int = 5;
const ATTR_BINARY_VERSION: c_int = 6;
const ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;

/// `cuFuncGetAttribute`.
///
/// # Safety
/// `value` must be writable.
#[no_mangle]
pub unsafe extern "C" fn cuFuncGetAttribute(value: *mut c_int, attr: c_int, function: *mut c_void) -> CuResult {
    code(state::device().and_then(|dev| {
        let f = FUNCTIONS.get(function)?;
        let k = f.kernel();
        let (major, minor) = dev.config.arch.compute_capability();
        let v = match attr {
            ATTR_MAX_THREADS_PER_BLOCK => k.max_threads().unwrap_or(dev.config.limits().max_threads_per_block),
            ATTR_SHARED_SIZE_BYTES => k.static_smem_bytes(),
            ATTR_CONST_SIZE_BYTES | ATTR_LOCAL_SIZE_BYTES => 0,
            ATTR_NUM_REGS => k.regs_per_thread(),
            ATTR_PTX_VERSION | ATTR_BINARY_VERSION => major * 10 + minor,
            ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES => f.max_dynamic_smem.load(Ordering::Relaxed),
            _ => return Err(status::INVALID_VALUE),
        };
        // SAFETY: forwarded from the caller.
        unsafe { write(value, v as c_int) }
    }))
}

/// `cuFuncSetAttribute`: only the dynamic shared-memory limit, up to the device's opt-in maximum
/// less the static size.
#[no_mangle]
pub extern "C" fn cuFuncSetAttribute(function: *mut c_void, attr: c_int, value: c_int) -> CuResult {
    code(state::device().and_then(|dev| {
        let f = FUNCTIONS.get(function)?;
        if attr != ATTR_MAX_DYNAMIC_SHARED_SIZE_BYTES {
            return Err(status::fail(status::NOT_SUPPORTED, &format!("cuFuncSetAttribute: attribute {attr} is not modelled by the emulator")));
        }
        let limit = dev.config.limits().max_dyn_smem_per_block.saturating_sub(f.kernel().static_smem_bytes());
        match u32::try_from(value) {
            Ok(v) if v <= limit => {
                f.max_dynamic_smem.store(v, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(status::fail(status::INVALID_VALUE, &format!("cuFuncSetAttribute({}): {value} bytes of dynamic shared memory exceed the {limit} the device allows", f.name))),
        }
    }))
}

/// The argument bytes of each parameter, read through `kernelParams`.
///
/// # Safety
/// `params` must hold one valid pointer per kernel parameter, each to at least that parameter's
/// size in bytes.
unsafe fn arguments<'a>(kernel: &vgpu::Kernel, params: *mut *mut c_void) -> Result<Vec<&'a [u8]>, CuResult> {
    let infos = kernel.params();
    if infos.is_empty() {
        return Ok(Vec::new());
    }
    if params.is_null() {
        return Err(status::fail(status::INVALID_VALUE, &format!("cuLaunchKernel({}): kernelParams is null but the kernel takes {} parameters", kernel.name(), infos.len())));
    }
    infos
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // SAFETY: the caller's promise: one pointer per parameter.
            let ptr = unsafe { *params.add(i) } as *const u8;
            if ptr.is_null() {
                return Err(status::fail(status::INVALID_VALUE, &format!("cuLaunchKernel({}): kernelParams[{i}] is null", kernel.name())));
            }
            // SAFETY: the caller's promise: the pointer covers the parameter's size.
            Ok(unsafe { std::slice::from_raw_parts(ptr, p.size) })
        })
        .collect()
}

/// `cuLaunchKernel`: runs the grid to completion.
///
/// # Safety
/// `params` must hold one pointer per kernel parameter, each to a value of that parameter's size;
/// the device memory the kernel reaches through them is checked by the emulator.
#[no_mangle]
pub unsafe extern "C" fn cuLaunchKernel(
    function: *mut c_void,
    grid_x: c_uint,
    grid_y: c_uint,
    grid_z: c_uint,
    block_x: c_uint,
    block_y: c_uint,
    block_z: c_uint,
    shared_bytes: c_uint,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    code(check_stream(stream).and_then(|()| {
        let dev = state::device()?;
        let f = FUNCTIONS.get(function)?;
        let kernel = f.kernel();
        if !extra.is_null() {
            return Err(status::fail(status::NOT_SUPPORTED, "cuLaunchKernel: the `extra` argument form is not supported by the emulator (pass kernelParams)"));
        }
        let allowed = f.max_dynamic_smem.load(Ordering::Relaxed);
        if shared_bytes > allowed {
            return Err(status::fail(
                status::INVALID_VALUE,
                &format!("cuLaunchKernel({}): {shared_bytes} bytes of dynamic shared memory exceed the function's limit of {allowed} (raise CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)", f.name),
            ));
        }
        // SAFETY: forwarded from the caller.
        let args = unsafe { arguments(kernel, params) }?;
        let cfg = vgpu::LaunchConfig { grid: [grid_x, grid_y, grid_z], block: [block_x, block_y, block_z], dynamic_smem: shared_bytes };
        vgpu::launch(&dev.config, &dev.memory, kernel, &cfg, &args).map_err(|e| status::from_emulator(&e))?;
        launch_log::record(&f.module_name, &f.name);
        Ok(())
    }))
}

#[cfg(test)]
mod tests {
    use super::target_runs_on;
    use vgpu::Arch;

    #[test]
    fn ptx_targets_follow_the_driver_rules() {
        assert!(target_runs_on("sm_80", Arch::Sm80));
        assert!(target_runs_on("sm_80", Arch::Sm90a));
        assert!(target_runs_on("sm_90a", Arch::Sm90a));
        assert!(!target_runs_on("sm_90a", Arch::Sm80));
        assert!(!target_runs_on("sm_86", Arch::Sm80));
        assert!(!target_runs_on("compute_80", Arch::Sm80));
    }
}
