//! Compiles every kernel module with NVRTC for sm_80 (Ampere) and sm_90a (Hopper) through the
//! engine's own pipeline (`engine::cuda::nvrtc`), with no GPU: what CI can check about kernels on a
//! machine without one.
//!
//! - Every module must compile for both architectures, and every entry point it declares must be
//!   a symbol of the CUBIN (a renamed or missing `extern "C"` kernel fails here, not at launch).
//! - Compile logs (ptxas warnings about spills or local memory) are printed: run with
//!   `-- --nocapture` to read them.
//! - With `cuobjdump` on PATH (or `DSMOE_CUOBJDUMP` naming it; it needs `nvdisasm` on PATH), the
//!   sm_90a SASS of each module must show every entry point and every instruction the module's
//!   `expect_sass` lists (e.g. `HGMMA` for a wgmma GEMM).
//! - Every sm_90a `gemm90_*`, `attention_dq90_*` and `attention_dkdv90_*` entry uses exactly 168
//!   registers per thread (`cuobjdump -res-usage`): the register split of its warpgroups
//!   (`setmaxnreg.dec 40` for the producer, `.inc 232` for the two consumers) fits the pool
//!   allocated at launch only then, and otherwise `setmaxnreg.inc` waits forever. Every
//!   `attention_fwd90_*` entry fits in 168 without stack or local memory, and ptxas keeps its
//!   wgmmas asynchronous (no serialisation warning).
//! - The disk cache returns what was compiled, CUBIN and PTX.
//!
//! Without libnvrtc each test prints one `skipped:` line, unless `DSMOE_REQUIRE_NVRTC=1` (CI), which
//! turns a missing NVRTC into a failure; `DSMOE_REQUIRE_CUOBJDUMP=1` does the same for cuobjdump.

use std::path::PathBuf;
use std::sync::OnceLock;

use engine::cuda::{kernel_cache, nvrtc};
use kernels_cuda::{KernelSource, ALL};

const ARCHS: [&str; 2] = ["sm_80", "sm_90a"];

fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

fn nvrtc_or_skip() -> bool {
    match nvrtc::unavailable_reason() {
        None => true,
        Some(why) if required("DSMOE_REQUIRE_NVRTC") => panic!("DSMOE_REQUIRE_NVRTC=1 but NVRTC is unavailable: {why}"),
        Some(why) => {
            engine::cuda::report_skip(&format!("NVRTC not available ({why})"));
            false
        }
    }
}

struct Build {
    src: &'static KernelSource,
    arch: &'static str,
    result: Result<nvrtc::Compiled, String>,
}

/// Every module for every architecture, compiled once per test process on all cores.
fn builds() -> &'static [Build] {
    static BUILDS: OnceLock<Vec<Build>> = OnceLock::new();
    BUILDS.get_or_init(|| {
        let jobs: Vec<(&'static KernelSource, &'static str)> = ALL.iter().flat_map(|s| ARCHS.iter().map(move |a| (s, *a))).collect();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut out: Vec<Build> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(src, arch)) = jobs.get(i) else { break done };
                            done.push((i, Build { src, arch, result: nvrtc::compile(src, arch).map_err(|e| e.to_string()) }));
                        }
                    })
                })
                .collect();
            let mut all: Vec<(usize, Build)> = workers.into_iter().flat_map(|w| w.join().expect("compile worker panicked")).collect();
            all.sort_by_key(|(i, _)| *i);
            all.into_iter().map(|(_, b)| b).collect()
        });
        out.shrink_to_fit();
        out
    })
}

/// Whether `name` is a NUL-terminated string in the image (ELF string tables hold symbol names so).
fn has_symbol(cubin: &[u8], name: &str) -> bool {
    let mut needle = Vec::with_capacity(name.len() + 2);
    needle.push(0);
    needle.extend_from_slice(name.as_bytes());
    needle.push(0);
    cubin.windows(needle.len()).any(|w| w == needle.as_slice())
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90a() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = nvrtc::version().expect("nvrtcVersion");
    println!("NVRTC {major}.{minor}");
    let mut failures = Vec::new();
    for b in builds() {
        match &b.result {
            Err(e) => failures.push(format!("{} ({}): {e}", b.src.name, b.arch)),
            Ok(c) => {
                if !c.log.is_empty() {
                    println!("compile log of {} ({}):\n{}", b.src.name, b.arch, c.log);
                }
                for entry in b.src.entry_points {
                    if !has_symbol(&c.cubin, entry) {
                        failures.push(format!("{} ({}): entry point {entry} is declared but not in the CUBIN", b.src.name, b.arch));
                    }
                }
                println!("{:<12} {:<7} {:>8} bytes, {} entry points", b.src.name, b.arch, c.cubin.len(), b.src.entry_points.len());
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn cuobjdump() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DSMOE_CUOBJDUMP").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join("cuobjdump")).find(|p| p.is_file())
}

/// cuobjdump over the CUBINs of `builds()`, written to a scratch directory removed on drop.
struct Disassembler {
    tool: PathBuf,
    dir: PathBuf,
}

impl Disassembler {
    /// None (after a `skipped:` line) without NVRTC or cuobjdump, unless they are required.
    fn or_skip(purpose: &str) -> Option<Disassembler> {
        if !nvrtc_or_skip() {
            return None;
        }
        let Some(tool) = cuobjdump() else {
            assert!(!required("DSMOE_REQUIRE_CUOBJDUMP"), "DSMOE_REQUIRE_CUOBJDUMP=1 but cuobjdump is neither on PATH nor in DSMOE_CUOBJDUMP");
            engine::cuda::report_skip("cuobjdump not found (put it on PATH or set DSMOE_CUOBJDUMP)");
            return None;
        };
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{purpose}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Some(Disassembler { tool, dir })
    }

    /// `cuobjdump <flag>` of the module's CUBIN, as text.
    fn run(&self, flag: &str, name: &str, cubin: &[u8]) -> String {
        let path = self.dir.join(format!("{name}.cubin"));
        std::fs::write(&path, cubin).expect("write cubin");
        let out = std::process::Command::new(&self.tool).arg(flag).arg(&path).output().expect("run cuobjdump");
        assert!(out.status.success(), "cuobjdump {flag} {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Disassembler {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn sm90a_sass_has_every_entry_point_and_expected_instructions() {
    let Some(objdump) = Disassembler::or_skip("sass") else { return };
    let mut failures = Vec::new();
    for b in builds().iter().filter(|b| b.arch == "sm_90a") {
        let Ok(c) = &b.result else { continue }; // reported by the compile test
        let sass = objdump.run("-sass", b.src.name, &c.cubin);
        for entry in b.src.entry_points {
            if !sass.contains(&format!("Function : {entry}\n")) {
                failures.push(format!("{}: no SASS for entry point {entry}", b.src.name));
            }
        }
        for insn in b.src.expect_sass {
            if !sass.contains(insn) {
                failures.push(format!("{}: sm_90a SASS lacks {insn} (expected by the module's expect_sass)", b.src.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Registers per thread the sm_90a GEMM must be compiled to: the launch allocates 384·R registers;
/// after the split the producer warpgroup holds 128·40 and the consumers 256·232, which needs
/// R >= 168, while `__launch_bounds__(384, 1)` caps R at 65536/384 rounded down to the allocation
/// granularity of 8, which is 168.
const GEMM90_REGS: u32 = (128 * 40 + 256 * 232) / 384;
const _: () = assert!(GEMM90_REGS == 168);

/// `REG:` of each function in `cuobjdump -res-usage` output, by name.
fn registers(res_usage: &str) -> Vec<(String, u32)> {
    resources(res_usage).into_iter().map(|(name, line)| (name, field(&line, "REG:").expect("REG:<count>"))).collect()
}

/// Each function's resource line in `cuobjdump -res-usage` output (`REG:.. STACK:.. SHARED:..
/// LOCAL:..`), by name.
fn resources(res_usage: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut function = None;
    for line in res_usage.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("Function ").and_then(|l| l.strip_suffix(':')) {
            function = Some(name.to_string());
        } else if let (Some(name), true) = (&function, line.starts_with("REG:")) {
            out.push((name.clone(), line.to_string()));
            function = None;
        }
    }
    out
}

/// The number after `key` (e.g. `STACK:`) in a resource line.
fn field(line: &str, key: &str) -> Option<u32> {
    line.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok())
}

/// Entry-name prefixes of the sm_90a kernels with the same 384-thread, 40/232 setmaxnreg split as
/// the GEMM (the attention backward's dq and dk/dv kernels too), and how many of each there are.
const SETMAXNREG_SPLIT: [(&str, usize); 3] = [("gemm90_", 12), ("attention_dq90_", 6), ("attention_dkdv90_", 6)];

#[test]
fn sm90a_setmaxnreg_kernels_use_the_registers_their_split_needs() {
    let Some(objdump) = Disassembler::or_skip("regs") else { return };
    let mut failures = Vec::new();
    for (prefix, expected) in SETMAXNREG_SPLIT {
        let mut checked = 0;
        for b in builds().iter().filter(|b| b.arch == "sm_90a" && b.src.entry_points.iter().any(|e| e.starts_with(prefix))) {
            let Ok(c) = &b.result else { continue }; // reported by the compile test
            let usage = objdump.run("-res-usage", b.src.name, &c.cubin);
            for (name, regs) in registers(&usage).into_iter().filter(|(n, _)| n.starts_with(prefix)) {
                checked += 1;
                if regs != GEMM90_REGS {
                    failures.push(format!("{name}: {regs} registers per thread, but its setmaxnreg 40/232 split needs exactly {GEMM90_REGS} (fewer: setmaxnreg.inc hangs)"));
                }
            }
        }
        assert!(checked >= expected, "found only {checked} {prefix}* functions in cuobjdump's resource usage");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The sm_90a attention forward (attention_fwd90_*, 288 threads, no setmaxnreg split) must fit
/// the 168 registers ptxas budgets for it (it counts whole warpgroups: 65536 / 384, rounded down
/// to the allocation granularity of 8) without spilling, and keep its wgmmas asynchronous: its
/// pipelining (the next tile's scores in flight during the softmax) is lost when ptxas
/// serialises them, which it reports as a `wgmma.mma_async instructions are serialized` warning.
#[test]
fn sm90a_attention_forward_fits_its_registers_and_keeps_wgmma_asynchronous() {
    let Some(objdump) = Disassembler::or_skip("fwd90") else { return };
    let mut failures = Vec::new();
    let mut checked = 0;
    for b in builds().iter().filter(|b| b.arch == "sm_90a" && b.src.entry_points.iter().any(|e| e.starts_with("attention_fwd90_"))) {
        let Ok(c) = &b.result else { continue }; // reported by the compile test
        if c.log.contains("serialized") {
            failures.push(format!("{}: ptxas serialised wgmma:\n{}", b.src.name, c.log));
        }
        let usage = objdump.run("-res-usage", b.src.name, &c.cubin);
        for (name, line) in resources(&usage).into_iter().filter(|(n, _)| n.starts_with("attention_fwd90_")) {
            checked += 1;
            println!("{name}: {line}");
            let (regs, stack, local) = (field(&line, "REG:"), field(&line, "STACK:"), field(&line, "LOCAL:"));
            if regs.is_none_or(|r| r > GEMM90_REGS) || stack != Some(0) || local.is_some_and(|l| l > 0) {
                failures.push(format!("{name}: {line} (wants at most {GEMM90_REGS} registers, no stack, no local memory)"));
            }
        }
    }
    assert!(checked >= 6, "found only {checked} attention_fwd90_* functions in cuobjdump's resource usage");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn res_usage_lines_are_read_per_function() {
    let text = "\nResource usage:\n Common:\n  GLOBAL:0\n Function gemm90_nn_bf16_bf16:\n  REG:168 STACK:0 SHARED:0\n Function k:\n  REG:10 STACK:0\n";
    assert_eq!(registers(text), [("gemm90_nn_bf16_bf16".to_string(), 168), ("k".to_string(), 10)]);
    assert_eq!(field(&resources(text)[1].1, "STACK:"), Some(0));
    assert_eq!(field(&resources(text)[1].1, "LOCAL:"), None);
}

#[test]
fn disk_cache_returns_what_was_compiled() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("kernel-cache-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let src = &kernels_cuda::ADAMW;
    let (first, cached) = kernel_cache::load_or_compile(Some(&dir), src, "sm_80").expect("compile");
    assert!(!cached, "a fresh cache directory cannot hit");
    let (second, cached) = kernel_cache::load_or_compile(Some(&dir), src, "sm_80").expect("load");
    assert!(cached, "the second lookup must come from the cache");
    assert_eq!(first.cubin, second.cubin);
    assert_eq!(first.ptx, second.ptx);
    assert!(first.ptx.contains(".target sm_80"), "the PTX of the same compile is kept");
    assert_eq!(first.log, second.log);
    let names: Vec<String> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| !n.contains(".tmp.")), "temporary files left behind: {names:?}");
    assert_ne!(kernel_cache::cache_key(src, "sm_80").unwrap(), kernel_cache::cache_key(src, "sm_90a").unwrap());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn arch_follows_compute_capability() {
    assert_eq!(nvrtc::arch_for((9, 0)), "sm_90a");
    assert_eq!(nvrtc::arch_for((8, 0)), "sm_80");
    assert_eq!(nvrtc::arch_for((8, 9)), "sm_89");
}

#[test]
fn a_compile_error_carries_the_nvrtc_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = KernelSource {
        name: "broken",
        source: "#include \"common.cuh\"\nextern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }\n",
        entry_points: &["broken"],
        expect_sass: &[],
    };
    match nvrtc::compile(&broken, "sm_80") {
        Err(engine::Error::Compile { kernel, arch, log }) => {
            assert_eq!((kernel.as_str(), arch.as_str()), ("broken", "sm_80"));
            assert!(log.contains("undefined_name"), "log should name the error: {log}");
        }
        other => panic!("expected a compile error, got {other:?}"),
    }
}
