//! The on-disk cache of compiled kernels, so NVRTC runs once per kernel version and machine, not
//! once per process (a full compile of every module takes tens of seconds).
//!
//! An entry is keyed by sha256 of everything that determines the machine code: the module's source,
//! every header, the NVRTC options, the architecture and NVRTC's version. Editing a kernel, changing
//! an option or upgrading NVRTC therefore misses the cache; nothing ever needs invalidating by hand.
//! Entries are `<module>-<arch>-<key>.cubin`, the `.ptx` it was made from, and a `.log` with the
//! compile warnings, under
//! `$DSMOE_KERNEL_CACHE`, else `$XDG_CACHE_HOME/dsmoe/kernels`, else `~/.cache/dsmoe/kernels`.
//! Files are written to a temporary name and renamed, so a reader (another process compiling the
//! same module) never sees half a file. The cache is an optimisation: when it cannot be read or
//! written the kernel is compiled anyway.

use std::path::{Path, PathBuf};

use kernels_cuda::{KernelSource, HEADERS};
use sha2::{Digest, Sha256};

use super::nvrtc::{self, Compiled};
use crate::Result;

/// Where compiled kernels are cached, if a location can be determined.
pub fn cache_dir() -> Option<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    env("DSMOE_KERNEL_CACHE")
        .or_else(|| env("XDG_CACHE_HOME").map(|d| d.join("dsmoe").join("kernels")))
        .or_else(|| env("HOME").map(|d| d.join(".cache").join("dsmoe").join("kernels")))
}

/// The cache key (hex sha256) of `src` compiled for `arch` by this NVRTC.
pub fn cache_key(src: &KernelSource, arch: &str) -> Result<String> {
    let (major, minor) = nvrtc::version()?;
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(b"dsmoe-kernel-cache-v1");
    field(src.name.as_bytes());
    field(src.source.as_bytes());
    for header in HEADERS {
        field(header.name.as_bytes());
        field(header.source.as_bytes());
    }
    for opt in nvrtc::options(arch) {
        field(opt.as_bytes());
    }
    field(arch.as_bytes());
    field(format!("nvrtc {major}.{minor}").as_bytes());
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A cached build of `src` for `arch`, or a fresh one (then stored). `dir = None` uses
/// [`cache_dir`]. The flag says whether it came from the cache.
pub fn load_or_compile(dir: Option<&Path>, src: &KernelSource, arch: &str) -> Result<(Compiled, bool)> {
    let dir = dir.map(Path::to_path_buf).or_else(cache_dir);
    let Some(dir) = dir else {
        return Ok((nvrtc::compile(src, arch)?, false));
    };
    let stem = format!("{}-{}-{}", src.name, arch, cache_key(src, arch)?);
    let cubin_path = dir.join(format!("{stem}.cubin"));
    let ptx_path = dir.join(format!("{stem}.ptx"));
    let log_path = dir.join(format!("{stem}.log"));
    // The CUBIN is written last, so its presence means the PTX and log before it are complete.
    if let (Ok(cubin), Ok(ptx)) = (std::fs::read(&cubin_path), std::fs::read_to_string(&ptx_path)) {
        if !cubin.is_empty() && !ptx.is_empty() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Ok((Compiled { cubin, ptx, log }, true));
        }
    }
    let compiled = nvrtc::compile(src, arch)?;
    // Best effort: a read-only or full disk costs a recompile next time, nothing more.
    let _ = std::fs::create_dir_all(&dir)
        .and_then(|_| write_atomic(&log_path, compiled.log.as_bytes()))
        .and_then(|_| write_atomic(&ptx_path, compiled.ptx.as_bytes()))
        .and_then(|_| write_atomic(&cubin_path, &compiled.cubin));
    Ok((compiled, false))
}

/// Removes the cached build of `src` for `arch` (used when a cached image fails to load).
pub fn forget(dir: Option<&Path>, src: &KernelSource, arch: &str) -> Result<()> {
    if let Some(dir) = dir.map(Path::to_path_buf).or_else(cache_dir) {
        let stem = format!("{}-{}-{}", src.name, arch, cache_key(src, arch)?);
        let _ = std::fs::remove_file(dir.join(format!("{stem}.cubin")));
        let _ = std::fs::remove_file(dir.join(format!("{stem}.ptx")));
    }
    Ok(())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let tmp = path.with_extension(format!("tmp.{}.{nanos}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}
