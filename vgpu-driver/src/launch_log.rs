//! The launch log: which kernel entries of which modules a process ran, for the entry-coverage
//! check of the emulated GPU suite (scripts/emu-tests.sh, engine/tests/emu_entry_coverage.rs).
//!
//! With `DSMOE_EMU_LAUNCH_LOG=<file>` set, every launch that completes appends the line
//! `<module> <entry>` to the file, once per pair and process (many processes append to one file, so
//! a test suite's union lands there). The module is named by the source file of the PTX's first
//! `.file` directive, without directory and extension: NVRTC writes the program name there, and
//! the engine names each program after its module (`elementwise.cu`), so `elementwise`. PTX without
//! line information is `<unnamed>`.
//!
//! The other half of the check, [`entries`], lists a module's entries from its PTX and says which
//! of them do anything on this architecture: an entry whose body is only `trap` (the engine's
//! sm_90a-only kernels compiled for another GPU) is not expected to launch.

use std::collections::{BTreeSet, HashSet};
use std::io::Write;
use std::sync::Mutex;

/// The variable naming the log file.
pub const VAR: &str = "DSMOE_EMU_LAUNCH_LOG";

/// The module name of a PTX text (see the module docs).
pub fn module_name(ptx: &str) -> String {
    let file = ptx.lines().map(str::trim_start).find_map(|l| l.strip_prefix(".file")).and_then(|rest| rest.split('"').nth(1));
    let Some(path) = file else { return "<unnamed>".to_string() };
    let base = path.rsplit(['/', '\\']).next().unwrap_or(path);
    base.rsplit_once('.').map_or(base, |(stem, _)| stem).to_string()
}

/// Appends `module entry` to the log named by [`VAR`], once per pair and process; nothing without
/// the variable. A log that cannot be written is reported on stderr once (the coverage check then
/// finds the entries missing and says so).
pub fn record(module: &str, entry: &str) {
    static SEEN: Mutex<Option<HashSet<(String, String)>>> = Mutex::new(None);
    let Some(path) = std::env::var_os(VAR) else { return };
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    let seen = seen.get_or_insert_with(HashSet::new);
    if !seen.insert((module.to_string(), entry.to_string())) {
        return;
    }
    // One write of one short line on an O_APPEND file: lines of concurrent processes never mix.
    let line = format!("{module} {entry}\n");
    let written = std::fs::OpenOptions::new().create(true).append(true).open(&path).and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("vgpu-driver: cannot append to {VAR}={}: {e}", path.to_string_lossy());
    }
}

/// The `(module, entry)` pairs of a launch log.
pub fn read(path: &std::path::Path) -> std::io::Result<BTreeSet<(String, String)>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text.lines().filter_map(|l| l.split_once(' ')).map(|(m, e)| (m.to_string(), e.to_string())).collect())
}

/// One `.entry` of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    /// False when the body only traps (a kernel this architecture does not have).
    pub runnable: bool,
}

/// Every entry of a PTX module, in order, as the emulator parses it.
pub fn entries(ptx: &str) -> Result<Vec<Entry>, vgpu::Error> {
    let module = vgpu::Module::parse(ptx)?;
    Ok(module.kernels().map(|k| Entry { name: k.name().to_string(), runnable: !k.only_traps() }).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names_come_from_the_first_file_directive() {
        let ptx = ".version 8.0\n.target sm_80\n\t.file\t1 \"/build/dir/moe_sparse.cu\"\n\t.file\t2 \"/build/dir/common.cuh\"\n";
        assert_eq!(module_name(ptx), "moe_sparse");
        assert_eq!(module_name(".version 8.0\n.target sm_80\n"), "<unnamed>");
    }

    #[test]
    fn trap_only_entries_are_not_runnable() {
        let ptx = ".version 8.0\n.target sm_80\n.address_size 64\n\
                   .visible .entry stub(.param .u64 p)\n{\n\ttrap;\n\tret;\n}\n\
                   .visible .entry real(.param .u64 p)\n{\n\t.reg .b64 %rd<2>;\n\tld.param.u64 %rd1, [p];\n\tret;\n}\n";
        let e = entries(ptx).unwrap();
        assert_eq!(e, vec![Entry { name: "stub".into(), runnable: false }, Entry { name: "real".into(), runnable: true }]);
    }
}
