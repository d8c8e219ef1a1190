//! Per-op CPU time, with `DSMOE_PROFILE=1` (the CLI's `--profile`): the CPU backend's counterpart
//! of cuda/profile.rs, printed in the same table at process exit.
//!
//! Every backend call on CPU storage is timed on the calling thread with the monotonic clock, from
//! entry to return, so an op's time includes the rayon workers it fans out to and the share column
//! is a share of the wall time spent inside ops. Ops that call other backend ops (the reference
//! GEMM casts its operands) are timed once, as the outer op: a thread-local depth counter skips the
//! inner brackets. Each call declares the bytes it must move at least (inputs read once, output
//! written once) and the FLOPs it performs, for the GB/s and GFLOP/s columns.
//!
//! Below the table: how busy the process kept the cores (user + system CPU time of all threads over
//! the wall time since the first op, from `getrusage`), and the host pool's counters (pool.rs):
//! requests served from the pool and from the OS, bytes in use and held.
//!
//! Without the variable, `timed` costs one atomic load.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::pool;
use crate::cuda::profile::{enabled_with_exit_report, render, KernelStats, RenderAs};

/// What one op call moves and computes (see the module comment).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    pub bytes: u64,
    pub flops: u64,
}

impl Cost {
    /// An op that reads `read` and writes `written` elements of `elem` bytes each, with
    /// `flops_per_out` operations per written element.
    pub fn streaming(read: usize, written: usize, elem: usize, flops_per_out: usize) -> Cost {
        Cost { bytes: ((read + written) * elem) as u64, flops: (written * flops_per_out) as u64 }
    }
}

struct State {
    totals: HashMap<String, KernelStats>,
    wall_start: Instant,
    cpu_start: Duration,
}

thread_local! {
    /// Open brackets on this thread: only the outermost op is timed.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

fn state() -> Option<&'static Mutex<State>> {
    static STATE: OnceLock<Option<Mutex<State>>> = OnceLock::new();
    STATE
        .get_or_init(|| {
            let on = enabled_with_exit_report(report_at_exit);
            on.then(|| Mutex::new(State { totals: HashMap::new(), wall_start: Instant::now(), cpu_start: process_cpu_time() }))
        })
        .as_ref()
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn report_at_exit() {
    // Unwinding out of an atexit handler would abort; a failed report is not worth that.
    let _ = std::panic::catch_unwind(report);
}

/// User plus system CPU time of every thread of the process so far.
/// User + system CPU time of the whole process so far (every thread).
pub fn process_cpu_time() -> Duration {
    // SAFETY: `getrusage` fills the zeroed struct it is given and reads nothing else.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Runs `f`, timing it under the name `name()` with cost `cost()` when profiling is on (both are
/// only evaluated then).
pub(crate) fn timed<R>(name: impl FnOnce() -> String, cost: impl FnOnce() -> Cost, f: impl FnOnce() -> R) -> R {
    let Some(m) = state() else { return f() };
    if DEPTH.get() > 0 {
        return f();
    }
    DEPTH.set(1);
    let start = Instant::now();
    let r = f();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    DEPTH.set(0);
    let (name, cost) = (name(), cost());
    let mut s = lock(m);
    let t = s.totals.entry(name).or_insert_with_key(|k| KernelStats { kernel: k.clone(), ..Default::default() });
    t.calls += 1;
    t.total_ms += ms;
    t.bytes += cost.bytes;
    t.flops += cost.flops;
    r
}

/// Per-op totals so far, largest total time first. Empty when profiling is off.
pub fn stats() -> Vec<KernelStats> {
    let Some(m) = state() else { return Vec::new() };
    let mut v: Vec<KernelStats> = lock(m).totals.values().cloned().collect();
    v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.kernel.cmp(&b.kernel)));
    v
}

/// The profile as a table with the utilisation and host pool lines, or `None` when profiling is
/// off or no CPU op ran.
pub fn table() -> Option<String> {
    let stats = stats();
    let m = state()?;
    if stats.is_empty() {
        return None;
    }
    let mut out = render(&stats, &RenderAs { title: "dsmoe CPU profile", calls: "op calls", time: "op time", name: "op", rate: ("GFLOP/s", 1e9) });
    let s = lock(m);
    let wall = s.wall_start.elapsed().as_secs_f64();
    let cpu = (process_cpu_time().saturating_sub(s.cpu_start)).as_secs_f64();
    out += &format!(
        "cores busy: {:.2} of {} ({cpu:.2} s CPU time over {wall:.2} s since the first op)\n",
        cpu / wall.max(f64::MIN_POSITIVE),
        rayon::current_num_threads()
    );
    let p = pool::stats();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    out += &format!(
        "host pool: {} blocks from the pool, {} from the OS; {:.1} MiB in use, {:.1} MiB held{}\n",
        p.pool_hits,
        p.os_allocations,
        mib(p.in_use),
        mib(p.held),
        if p.pool_hits + p.os_allocations == 0 { " (not the process allocator)" } else { "" }
    );
    Some(out)
}

/// Forgets the totals and restarts the clocks (e.g. after warm-up).
pub fn reset() {
    if let Some(m) = state() {
        let mut s = lock(m);
        s.totals.clear();
        s.wall_start = Instant::now();
        s.cpu_start = process_cpu_time();
    }
}

/// Prints the profile table to stderr (if profiling is on and any CPU op ran) and clears it.
pub fn report() {
    if let Some(t) = table() {
        eprint!("{t}");
    }
    reset();
}
