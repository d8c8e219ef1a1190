//! Per-kernel GPU time, with `DSMOE_PROFILE=1`.
//!
//! Each launch is bracketed by two CUDA events (taken from a pool, so steady state creates none) and
//! remembered with the bytes and FLOPs its launch site declared. Nothing waits at launch time: the
//! times are read when a report is asked for (`report()`, which the CLI calls, or at process exit),
//! or when many launches are pending, so profiling adds two event records per launch and no host
//! synchronisation in the hot path. The table gives, per kernel: calls, total ms, mean µs, share of
//! all kernel time, and achieved GB/s and TFLOP/s where the launch declared its traffic and work.
//!
//! Without the variable, `begin` returns `None` and a launch pays one atomic load.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use super::device::CudaDevice;
use super::event::Event;
use crate::Result;

/// What a launch moves and computes: the minimum bytes of device memory traffic (each input read
/// once, each output written once) and the floating-point operations. Used for GB/s and TFLOP/s.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cost {
    pub bytes: u64,
    pub flops: u64,
}

/// Totals for one kernel entry point.
#[derive(Debug, Clone, Default)]
pub struct KernelStats {
    pub kernel: String,
    pub calls: u64,
    pub total_ms: f64,
    pub bytes: u64,
    pub flops: u64,
}

impl KernelStats {
    pub fn mean_us(&self) -> f64 {
        self.total_ms * 1e3 / self.calls.max(1) as f64
    }
    /// Achieved bandwidth, if the launches declared their bytes.
    pub fn gb_per_s(&self) -> Option<f64> {
        (self.bytes > 0 && self.total_ms > 0.0).then(|| self.bytes as f64 / (self.total_ms * 1e-3) / 1e9)
    }
    /// Achieved arithmetic rate, if the launches declared their FLOPs.
    pub fn tflop_per_s(&self) -> Option<f64> {
        self.flop_rate(1e12)
    }
    /// Achieved FLOP/s divided by `unit` (1e9: GFLOP/s), if the launches declared their FLOPs.
    pub fn flop_rate(&self, unit: f64) -> Option<f64> {
        (self.flops > 0 && self.total_ms > 0.0).then(|| self.flops as f64 / (self.total_ms * 1e-3) / unit)
    }
}

struct Pending {
    kernel: &'static str,
    start: Event,
    end: Event,
    cost: Cost,
}

#[derive(Default)]
struct State {
    pending: Vec<Pending>,
    totals: HashMap<&'static str, KernelStats>,
    spare: HashMap<usize, Vec<Event>>,
}

/// Launches waiting for their times; past this many, the oldest are resolved (one host wait).
const MAX_PENDING: usize = 8192;

fn state() -> Option<&'static Mutex<State>> {
    static STATE: OnceLock<Option<Mutex<State>>> = OnceLock::new();
    STATE
        .get_or_init(|| enabled_with_exit_report(report_at_exit).then(|| Mutex::new(State::default())))
        .as_ref()
}

/// True when `DSMOE_PROFILE=1`, and then `at_exit` is registered to print the report when the
/// process exits (shared with the CPU profile).
pub(crate) fn enabled_with_exit_report(at_exit: extern "C" fn()) -> bool {
    let on = std::env::var("DSMOE_PROFILE").is_ok_and(|v| v == "1");
    if on {
        extern "C" {
            fn atexit(f: extern "C" fn()) -> std::ffi::c_int;
        }
        // SAFETY: registers a plain function with the C runtime; it runs once at exit.
        unsafe { atexit(at_exit) };
    }
    on
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn report_at_exit() {
    // Unwinding out of an atexit handler would abort; a failed report is not worth that.
    let _ = std::panic::catch_unwind(report);
}

/// An open timing bracket for one launch.
pub(crate) struct Timing {
    kernel: &'static str,
    start: Event,
    end: Event,
}

fn take_event(state: &mut State, dev: &'static CudaDevice) -> Result<Event> {
    match state.spare.get_mut(&dev.ordinal()).and_then(Vec::pop) {
        Some(e) => Ok(e),
        None => Event::on(dev),
    }
}

/// Records the start event of a launch when profiling is on.
pub(crate) fn begin(dev: &'static CudaDevice, kernel: &'static str) -> Result<Option<Timing>> {
    let Some(m) = state() else { return Ok(None) };
    let mut s = lock(m);
    let start = take_event(&mut s, dev)?;
    let end = take_event(&mut s, dev)?;
    drop(s);
    start.record()?;
    Ok(Some(Timing { kernel, start, end }))
}

/// Records the end event of a launch opened by `begin`.
pub(crate) fn end(timing: Option<Timing>, cost: Cost) -> Result<()> {
    let (Some(t), Some(m)) = (timing, state()) else { return Ok(()) };
    t.end.record()?;
    let mut s = lock(m);
    s.pending.push(Pending { kernel: t.kernel, start: t.start, end: t.end, cost });
    if s.pending.len() >= MAX_PENDING {
        let older: Vec<Pending> = s.pending.drain(..MAX_PENDING / 2).collect();
        resolve(&mut s, older)?;
    }
    Ok(())
}

fn resolve(s: &mut State, batch: Vec<Pending>) -> Result<()> {
    for p in batch {
        // Cheap once the stream has passed the event; needed per record since records may come
        // from several devices.
        p.end.synchronize()?;
        let ms = p.start.elapsed_ms(&p.end)? as f64;
        let t = s.totals.entry(p.kernel).or_insert_with(|| KernelStats { kernel: p.kernel.to_string(), ..Default::default() });
        t.calls += 1;
        t.total_ms += ms;
        t.bytes += p.cost.bytes;
        t.flops += p.cost.flops;
        let ordinal = p.start.device_ordinal();
        s.spare.entry(ordinal).or_default().extend([p.start, p.end]);
    }
    Ok(())
}

/// Per-kernel totals so far, largest total time first (waits for pending launches). Empty when
/// profiling is off.
pub fn stats() -> Result<Vec<KernelStats>> {
    let Some(m) = state() else { return Ok(Vec::new()) };
    let mut s = lock(m);
    let pending = std::mem::take(&mut s.pending);
    resolve(&mut s, pending)?;
    let mut v: Vec<KernelStats> = s.totals.values().cloned().collect();
    v.sort_by(|a, b| b.total_ms.total_cmp(&a.total_ms).then_with(|| a.kernel.cmp(&b.kernel)));
    Ok(v)
}

/// Forgets the totals (e.g. after warm-up).
pub fn reset() -> Result<()> {
    if let Some(m) = state() {
        stats()?;
        lock(m).totals.clear();
    }
    Ok(())
}

/// The profile as a table, or `None` when profiling is off or nothing ran.
pub fn table() -> Result<Option<String>> {
    let stats = stats()?;
    if stats.is_empty() {
        return Ok(None);
    }
    Ok(Some(render(&stats, &RenderAs { title: "dsmoe CUDA profile", calls: "launches", time: "kernel time", name: "kernel", rate: ("TFLOP/s", 1e12) })))
}

/// How `render` labels a profile: the CUDA one counts kernel launches in TFLOP/s, the CPU one
/// (cpu/profile.rs) op calls in GFLOP/s.
pub(crate) struct RenderAs {
    pub title: &'static str,
    pub calls: &'static str,
    pub time: &'static str,
    pub name: &'static str,
    /// Column title and FLOP/s per unit.
    pub rate: (&'static str, f64),
}

/// Per-entry rows (calls, total ms, mean µs, share, GB/s, FLOP rate) under a one-line summary.
pub(crate) fn render(stats: &[KernelStats], how: &RenderAs) -> String {
    let total: f64 = stats.iter().map(|s| s.total_ms).sum();
    let calls: u64 = stats.iter().map(|s| s.calls).sum();
    let width = stats.iter().map(|s| s.kernel.len()).max().unwrap_or(6).max(how.name.len());
    let mut out = format!("{}: {calls} {}, {total:.3} ms of {}\n", how.title, how.calls, how.time);
    out += &format!("{:<width$}  {:>8}  {:>10}  {:>10}  {:>6}  {:>8}  {:>8}\n", how.name, "calls", "total ms", "mean µs", "share", "GB/s", how.rate.0);
    let opt = |v: Option<f64>, prec: usize| v.map_or("-".to_string(), |x| format!("{x:.prec$}"));
    for s in stats {
        out += &format!(
            "{:<width$}  {:>8}  {:>10.3}  {:>10.2}  {:>5.1}%  {:>8}  {:>8}\n",
            s.kernel,
            s.calls,
            s.total_ms,
            s.mean_us(),
            100.0 * s.total_ms / total.max(f64::MIN_POSITIVE),
            opt(s.gb_per_s(), 1),
            opt(s.flop_rate(how.rate.1), 2),
        );
    }
    out
}

/// Prints the profile table to stderr (if profiling is on and anything ran) and clears it.
pub fn report() {
    match table() {
        Ok(Some(t)) => eprint!("{t}"),
        Ok(None) => {}
        Err(e) => eprintln!("dsmoe: CUDA profile unavailable: {e}"),
    }
    let _ = reset();
}
