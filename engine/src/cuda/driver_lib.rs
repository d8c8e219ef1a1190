//! Which CUDA driver library the engine talks to: the machine's `libcuda.so`, or the emulated
//! device of the `vgpu` crate (`libvgpu_driver.so`, built from `vgpu-driver/`).
//!
//! cudarc finds the driver by `dlopen("libcuda.so")` (then other spellings) on its first call. The
//! emulated driver is built with the SONAME `libcuda.so`, and glibc answers a `dlopen` by name with
//! an already loaded object of that SONAME before it searches the disk. So selecting the emulator is
//! one `dlopen` of `libvgpu_driver.so` by absolute path before cudarc's first call: every later
//! driver call of the process, the engine's and cudarc's, then goes to the emulator, and nothing
//! else in the engine knows which driver it has. Without a request nothing is preloaded, and the
//! system's libcuda is used exactly as before.
//!
//! The emulator is requested by `DSMOE_DEVICE=emu` (for tests: `engine::cuda::test_device()` then
//! returns the emulated device) or by [`select_emulator`] (the command line's `--device emu`).
//! The library is looked for at `$DSMOE_EMU_LIB`, else next to the running executable, in its
//! `deps/` folder or one folder up (cargo puts test binaries in `target/<profile>/deps`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// File name of the emulated driver library.
pub const EMULATOR_LIB: &str = "libvgpu_driver.so";

static SELECTED: AtomicBool = AtomicBool::new(false);
static DRIVER_CHOSEN: AtomicBool = AtomicBool::new(false);

/// Asks for the emulated device. It must happen before the first CUDA call of the process (device
/// discovery); later it is an error, because the driver library is then already chosen.
pub fn select_emulator() -> Result<(), String> {
    SELECTED.store(true, Ordering::SeqCst);
    if DRIVER_CHOSEN.load(Ordering::SeqCst) && !emulator_loaded() {
        return Err("the emulated device was asked for after the CUDA driver was already loaded; select it before any CUDA use (DSMOE_DEVICE=emu or --device emu)".into());
    }
    Ok(())
}

/// Whether the emulator was asked for, by [`select_emulator`] or `DSMOE_DEVICE=emu`.
pub fn emulator_requested() -> Result<bool, String> {
    if SELECTED.load(Ordering::SeqCst) {
        return Ok(true);
    }
    match std::env::var("DSMOE_DEVICE") {
        Err(_) => Ok(false),
        Ok(v) if v.is_empty() => Ok(false),
        Ok(v) if v == "emu" => Ok(true),
        Ok(v) => Err(format!("DSMOE_DEVICE={v:?} is not understood (the one value is `emu`, the emulated GPU)")),
    }
}

static LOADED: AtomicBool = AtomicBool::new(false);

fn emulator_loaded() -> bool {
    LOADED.load(Ordering::SeqCst)
}

/// Called once by device discovery, before cudarc's first call: loads the emulated driver when it
/// was asked for. The error says why it could not be.
pub(crate) fn choose() -> Result<(), String> {
    DRIVER_CHOSEN.store(true, Ordering::SeqCst);
    if !emulator_requested()? {
        return Ok(());
    }
    let path = find_library()?;
    // SAFETY: loading the emulated driver runs no initialisers with preconditions (a Rust cdylib);
    // the handle is leaked on purpose, so the library stays loaded for the life of the process
    // (cudarc resolves its symbols through its own handle to the same object).
    let lib = unsafe { libloading::os::unix::Library::open(Some(&path), libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL) }
        .map_err(|e| format!("cannot load the emulated CUDA driver {}: {e}", path.display()))?;
    std::mem::forget(lib);
    LOADED.store(true, Ordering::SeqCst);
    Ok(())
}

fn find_library() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DSMOE_EMU_LIB").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return if p.is_file() { Ok(p) } else { Err(format!("DSMOE_EMU_LIB={} is not a file", p.display())) };
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the running executable to look for {EMULATOR_LIB} beside it: {e}"))?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let candidates = [dir.join(EMULATOR_LIB), dir.join("deps").join(EMULATOR_LIB), dir.join("..").join(EMULATOR_LIB)];
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        format!(
            "the emulated CUDA driver {EMULATOR_LIB} is not beside {} (nor in deps/ or ..); build it with `cargo build --release -p vgpu-driver` or name it in DSMOE_EMU_LIB",
            exe.display()
        )
    })
}
