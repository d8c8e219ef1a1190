//! Entry coverage of the emulated GPU suite: every kernel entry of every module, as NVRTC compiles
//! it for the emulated architecture, must have been launched by some GPU test.
//!
//! scripts/emu-tests.sh runs the GPU tests with `DSMOE_EMU_LAUNCH_LOG=<file>` (the emulated driver
//! appends `<module> <entry>` there for every completed launch; vgpu-driver/src/launch_log.rs), then
//! this test with `--ignored`. It compiles every module of `kernels_cuda::ALL` for `DSMOE_EMU_ARCH`
//! through the engine's own pipeline (the kernel cache makes that a lookup), lists the `.entry`
//! directives of the PTX (not the hand-kept `entry_points` lists, so a new kernel is covered as
//! soon as it exists) and fails with the names of the entries no test launched. Entries whose body
//! only traps on this architecture (the sm_90a GEMM compiled for sm_80) are not expected.
//!
//! It is `#[ignore]`d in plain `cargo test`: without a launch log there is nothing to check.

use std::collections::BTreeSet;
use std::path::PathBuf;

use engine::cuda::kernel_cache;
use kernels_cuda::ALL;
use vgpu_driver::launch_log;

#[test]
#[ignore = "run by scripts/emu-tests.sh after the GPU suite, with its launch log"]
fn every_entry_was_launched() {
    let log = std::env::var_os(launch_log::VAR).map(PathBuf::from).unwrap_or_else(|| panic!("{} must name the launch log of the GPU suite", launch_log::VAR));
    let arch = std::env::var("DSMOE_EMU_ARCH").unwrap_or_else(|_| "sm_90a".to_string());
    let launched = launch_log::read(&log).unwrap_or_else(|e| panic!("reading the launch log {}: {e}", log.display()));

    let mut expected = BTreeSet::new();
    let mut stubs = Vec::new();
    for src in ALL {
        let (compiled, _) = kernel_cache::load_or_compile(None, src, &arch).unwrap_or_else(|e| panic!("compiling {} for {arch}: {e}", src.name));
        let module = launch_log::module_name(&compiled.ptx);
        assert_eq!(module, src.name, "the PTX of {} names its source file {module}: the launch log could not be matched to it", src.name);
        let entries = launch_log::entries(&compiled.ptx).unwrap_or_else(|e| panic!("{} ({arch}): {e}", src.name));
        assert!(!entries.is_empty(), "{} ({arch}): the PTX has no .entry", src.name);
        for e in entries {
            if e.runnable {
                expected.insert((module.clone(), e.name));
            } else {
                stubs.push(format!("{module}::{}", e.name));
            }
        }
    }
    let missing: Vec<String> = expected.difference(&launched).map(|(m, e)| format!("{m}::{e}")).collect();
    let unknown: Vec<String> = launched.difference(&expected).map(|(m, e)| format!("{m}::{e}")).collect();
    eprintln!(
        "entry coverage on the emulated {arch}: {} of {} entries launched ({} trap-only entries not expected here)",
        expected.len() - missing.len(),
        expected.len(),
        stubs.len()
    );
    assert!(unknown.is_empty(), "the launch log names entries no module of kernels_cuda::ALL has for {arch}: {}", unknown.join(", "));
    assert!(missing.is_empty(), "{} kernel entries were never launched by the GPU tests on the emulated {arch}:\n  {}", missing.len(), missing.join("\n  "));
}
