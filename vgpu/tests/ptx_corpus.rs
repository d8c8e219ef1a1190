//! Every dsmoe kernel module, compiled by NVRTC to PTX for sm_80 and sm_90a, parses, and every
//! entry point is found with its parameters. Needs libnvrtc (LD_LIBRARY_PATH); without it the
//! test says so and passes nothing else. `VGPU_PTX_DUMP=dir` also writes the PTX files there.

use std::ffi::{c_char, CString};

use cudarc::nvrtc::sys;
use kernels_cuda::{KernelSource, ALL, HEADERS};

/// The engine's NVRTC options (engine/src/cuda/nvrtc.rs), minus the ptxas-only ones.
fn options(arch: &str) -> Vec<CString> {
    [format!("--gpu-architecture={arch}"), "--std=c++17".into(), "-default-device".into(), "-lineinfo".into()]
        .into_iter()
        .map(|o| CString::new(o).unwrap())
        .collect()
}

fn compile_ptx(src: &KernelSource, arch: &str) -> String {
    let source = CString::new(src.source).unwrap();
    let name = CString::new(format!("{}.cu", src.name)).unwrap();
    let hsrc: Vec<CString> = HEADERS.iter().map(|h| CString::new(h.source).unwrap()).collect();
    let hname: Vec<CString> = HEADERS.iter().map(|h| CString::new(h.name).unwrap()).collect();
    let hsrc_ptrs: Vec<*const c_char> = hsrc.iter().map(|s| s.as_ptr()).collect();
    let hname_ptrs: Vec<*const c_char> = hname.iter().map(|s| s.as_ptr()).collect();
    let opts = options(arch);
    let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let mut prog: sys::nvrtcProgram = std::ptr::null_mut();
    // SAFETY: all strings are NUL-terminated and outlive the program; the header arrays have equal lengths.
    unsafe {
        let rc = sys::nvrtcCreateProgram(&mut prog, source.as_ptr(), name.as_ptr(), HEADERS.len() as i32, hsrc_ptrs.as_ptr(), hname_ptrs.as_ptr());
        assert_eq!(rc, sys::nvrtcResult::NVRTC_SUCCESS, "nvrtcCreateProgram {}", src.name);
        let rc = sys::nvrtcCompileProgram(prog, opt_ptrs.len() as i32, opt_ptrs.as_ptr());
        assert_eq!(rc, sys::nvrtcResult::NVRTC_SUCCESS, "compiling {} for {arch}", src.name);
        let mut size = 0usize;
        sys::nvrtcGetPTXSize(prog, &mut size);
        let mut buf = vec![0u8; size];
        sys::nvrtcGetPTX(prog, buf.as_mut_ptr() as *mut c_char);
        sys::nvrtcDestroyProgram(&mut prog);
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8(buf[..end].to_vec()).unwrap()
    }
}

#[test]
fn every_module_parses_on_both_arches() {
    // SAFETY: only tries to dlopen libnvrtc.
    if !unsafe { sys::is_culib_present() } {
        eprintln!("skipped: libnvrtc not found (put its lib directory on LD_LIBRARY_PATH)");
        return;
    }
    let dump = std::env::var_os("VGPU_PTX_DUMP").map(std::path::PathBuf::from);
    // NVRTC compiles independent programs concurrently: one per worker.
    use rayon::prelude::*;
    let jobs: Vec<(&str, &KernelSource)> = ["sm_80", "sm_90a"].iter().flat_map(|&a| ALL.iter().map(move |s| (a, s))).collect();
    let corpus: Vec<(&str, &KernelSource, String)> = jobs.into_par_iter().map(|(arch, src)| (arch, src, compile_ptx(src, arch))).collect();
    if let Some(dir) = &dump {
        std::fs::create_dir_all(dir).unwrap();
        for (arch, src, ptx) in &corpus {
            std::fs::write(dir.join(format!("{}.{arch}.ptx", src.name)), ptx).unwrap();
        }
    }
    for (arch, src, ptx) in &corpus {
        {
            let module = vgpu::Module::parse(ptx).unwrap_or_else(|e| panic!("{} ({arch}): {e}", src.name));
            for entry in src.entry_points {
                let k = module.kernel(entry).unwrap_or_else(|| panic!("{} ({arch}): entry `{entry}` missing", src.name));
                assert!(!k.params().is_empty(), "{entry}: no parameters parsed");
            }
        }
    }
}

/// Parses every `*.ptx` file under `VGPU_PTX_DIR` (e.g. one written by `VGPU_PTX_DUMP`), so
/// parser work can iterate without recompiling the kernels.
#[test]
fn every_dumped_module_parses() {
    let Some(dir) = std::env::var_os("VGPU_PTX_DIR") else { return };
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "ptx")).collect();
    files.sort();
    let mut failures = Vec::new();
    for f in &files {
        let ptx = std::fs::read_to_string(f).unwrap();
        let t = std::time::Instant::now();
        match vgpu::Module::parse(&ptx) {
            Ok(m) => eprintln!("{}: {} kernels, {} lines, {:.1} ms", f.display(), m.kernels().count(), ptx.lines().count(), t.elapsed().as_secs_f64() * 1e3),
            Err(e) => failures.push(format!("{}: {e}", f.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
