//! A CTA's shared memory and its sanitizer shadow.
//!
//! Checks (when enabled), per byte:
//! - initialisation: a read of a byte no thread, cp.async or TMA has written;
//! - races: each byte remembers its last write and last read as an epoch (warp, clock). Warps
//!   carry vector clocks over the CTA's warps; `bar.sync` joins the participants' clocks,
//!   mbarrier arrive/complete_tx release into the barrier's clock and a successful wait acquires
//!   it. An access is ordered after an earlier one by another warp iff the accessor's clock for
//!   that warp has reached the earlier epoch's clock; a write unordered with the last write or
//!   read, or a read unordered with the last write, is a race (a single last-reader slot can miss
//!   races; it never reports one that is not there);
//! - races between lanes of one warp: with independent thread scheduling (Volta+) the lanes of a
//!   warp are not ordered unless they synchronise, so each access also records its lane and the
//!   instruction instance (the CTA's instruction count). Two lanes of one warp touching a byte in
//!   different instructions, at least one a write, race unless the warp synchronised in between:
//!   `bar.warp.sync` or a warp collective (shfl, vote, match, wgmma; `Shadow::warp_sync`), or
//!   anything that advanced the warp's clock (bar.sync, an mbarrier arrive). Lanes of one
//!   instruction never race with each other, and shared-memory atomics race with nothing;
//! - async-proxy hazards: bytes written by a cp.async or TMA stay pending until the issuing warp's
//!   `cp.async.wait_group` / the mbarrier wait that covers them; reading them earlier is an error.
//!
//! Bounds are always checked (static + dynamic size); the shadow costs 9 bytes per byte and is
//! allocated only with checks on.

pub const MAX_WARPS: usize = 32;

/// Who accesses shared memory: the warp, its lane, and the instruction instance.
#[derive(Clone, Copy)]
pub struct Accessor {
    pub warp: usize,
    pub lane: usize,
    /// The CTA's instruction count when the instruction ran: equal for the lanes of one execution.
    pub instance: u64,
    /// Atomics are not ordered with each other and do not race; they are neither checked nor
    /// recorded (a plain access racing with one can be missed).
    pub atomic: bool,
}

/// Bits of the instruction instance kept per access (it wraps; see `unsynced`).
const INSTANCE_BITS: u32 = 27;
const INSTANCE_MASK: u64 = (1 << INSTANCE_BITS) - 1;

/// Why an access failed; the caller adds the site.
pub enum SharedFault {
    Bounds(String),
    Uninit(String),
    Race(String),
    Async(String),
}

pub struct SharedMem {
    pub data: Vec<u8>,
    shadow: Option<Shadow>,
}

/// One recorded access: the epoch (warp, clock) in the low 32 bits, then the lane (5 bits) and the
/// instruction instance (27 bits, wrapping). 0 means none.
type Stamp = u64;

struct Shadow {
    write: Vec<Stamp>,
    read: Vec<Stamp>,
    /// 0: settled; 1: pending cp.async; 2: pending TMA.
    pending: Vec<u8>,
    /// vc[w][v]: what warp w knows of warp v's clock.
    vc: Vec<[u32; MAX_WARPS]>,
    /// The instruction instance of each warp's last intra-warp synchronisation.
    synced: [u64; MAX_WARPS],
}

impl Shadow {
    fn stamp(&self, a: &Accessor) -> Stamp {
        let e = epoch(a.warp, self.vc[a.warp][a.warp]) as u64;
        e | (a.lane as u64) << (32 + INSTANCE_BITS) | (a.instance & INSTANCE_MASK) << 32
    }

    /// Whether the earlier access `prev` is unordered with `a`: by another warp whose clock `a`'s
    /// warp has not reached, or by another lane of the same warp in another instruction since the
    /// warp last synchronised (and within the same clock epoch of the warp). Instances are compared
    /// as 27-bit distances, exact while a warp's clock advances at least every 2^27 instructions
    /// of its CTA.
    fn unsynced(&self, prev: Stamp, a: &Accessor) -> Option<Conflict> {
        let (pw, pc) = split(prev as u32);
        if pw != a.warp {
            return (self.vc[a.warp][pw] < pc).then_some(Conflict::Warp(pw));
        }
        let lane = (prev >> (32 + INSTANCE_BITS)) as usize;
        if lane == a.lane || pc != self.vc[a.warp][a.warp] {
            return None;
        }
        let then = (prev >> 32) & INSTANCE_MASK;
        let now = a.instance & INSTANCE_MASK;
        let since_access = now.wrapping_sub(then) & INSTANCE_MASK;
        let since_sync = now.wrapping_sub(self.synced[a.warp] & INSTANCE_MASK) & INSTANCE_MASK;
        (since_access != 0 && since_access < since_sync).then_some(Conflict::Lane(lane))
    }
}

/// The other side of a race.
enum Conflict {
    Warp(usize),
    Lane(usize),
}

impl Conflict {
    fn describe(&self, what: &str, by: &str, b: usize, a: &Accessor) -> String {
        match self {
            Conflict::Warp(pw) => {
                format!("{by} of shared byte {b:#x} by warp {} races with a {what} by warp {pw}: no barrier, mbarrier or fence orders them", a.warp)
            }
            Conflict::Lane(pl) => format!(
                "{by} of shared byte {b:#x} by lane {} of warp {} races with a {what} by lane {pl} of the same warp in an earlier instruction: \
                 lanes of a warp are unordered (independent thread scheduling) unless __syncwarp (bar.warp.sync), a warp collective or a barrier orders them",
                a.lane, a.warp
            ),
        }
    }
}

fn epoch(w: usize, clock: u32) -> u32 {
    (clock << 5) | w as u32
}

fn split(e: u32) -> (usize, u32) {
    ((e & 31) as usize, e >> 5)
}

impl SharedMem {
    pub fn new(bytes: usize, warps: usize, checks: bool) -> SharedMem {
        let mut s = SharedMem { data: Vec::new(), shadow: None };
        s.reset(bytes, warps, checks);
        s
    }

    /// Makes this the fresh shared memory of a new CTA, reusing the buffers (a CTA's shadow is
    /// up to 2 MB: allocating it per CTA costs more in page faults than clearing it).
    pub fn reset(&mut self, bytes: usize, warps: usize, checks: bool) {
        fn fill<T: Copy>(v: &mut Vec<T>, n: usize, x: T) {
            v.clear();
            v.resize(n, x);
        }
        fill(&mut self.data, bytes, 0);
        if !checks {
            self.shadow = None;
            return;
        }
        let s = self.shadow.get_or_insert_with(|| Shadow { write: Vec::new(), read: Vec::new(), pending: Vec::new(), vc: Vec::new(), synced: [0; MAX_WARPS] });
        s.synced = [0; MAX_WARPS];
        fill(&mut s.write, bytes, 0);
        fill(&mut s.read, bytes, 0);
        fill(&mut s.pending, bytes, 0);
        s.vc.clear();
        s.vc.extend((0..warps).map(|w| {
            let mut v = [0u32; MAX_WARPS];
            v[w] = 1;
            v
        }));
    }

    fn bounds(&self, off: u64, len: usize) -> Result<usize, SharedFault> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.data.len() as u64 => Ok(off as usize),
            _ => Err(SharedFault::Bounds(format!(
                "{len} bytes at shared offset {off:#x} are outside the CTA's {} bytes of shared memory (static + dynamic)",
                self.data.len()
            ))),
        }
    }

    /// A read, checked.
    pub fn read(&mut self, off: u64, out: &mut [u8], a: &Accessor) -> Result<(), SharedFault> {
        let o = self.bounds(off, out.len())?;
        if let Some(s) = &mut self.shadow {
            let me = s.stamp(a);
            for b in o..o + out.len() {
                let wr = s.write[b];
                if wr == 0 {
                    return Err(SharedFault::Uninit(format!("read of shared byte {b:#x}, which nothing has written")));
                }
                if s.pending[b] != 0 {
                    let what = if s.pending[b] == 1 { "cp.async (before its cp.async.wait_group)" } else { "TMA (before the mbarrier wait that completes it)" };
                    return Err(SharedFault::Async(format!("read of shared byte {b:#x} while a {what} write to it is pending")));
                }
                if a.atomic {
                    continue;
                }
                if let Some(c) = s.unsynced(wr, a) {
                    return Err(SharedFault::Race(c.describe("write", "read", b, a)));
                }
                s.read[b] = me;
            }
        }
        // SAFETY: `o..o+len` is inside `data` (bounds above); `out` is a distinct buffer.
        unsafe { super::mem::copy_small(self.data.as_ptr().add(o), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// A write, checked. `pending`: 0 for a plain store, 1 cp.async, 2 TMA.
    pub fn write(&mut self, off: u64, src: &[u8], a: &Accessor, pending: u8) -> Result<(), SharedFault> {
        let o = self.write_shadow(off, src.len(), a, pending)?;
        // SAFETY: as in `read`.
        unsafe { super::mem::copy_small(src.as_ptr(), self.data.as_mut_ptr().add(o), src.len()) };
        Ok(())
    }

    /// The checks and shadow update of a write of `len` bytes (the data is the caller's).
    pub fn write_shadow(&mut self, off: u64, len: usize, a: &Accessor, pending: u8) -> Result<usize, SharedFault> {
        let o = self.bounds(off, len)?;
        if let Some(s) = &mut self.shadow {
            let me = s.stamp(a);
            for b in o..o + len {
                if a.atomic {
                    if s.write[b] == 0 {
                        s.write[b] = me;
                    }
                    continue;
                }
                for (prev, what) in [(s.write[b], "write"), (s.read[b], "read")] {
                    if prev == 0 {
                        continue;
                    }
                    if let Some(c) = s.unsynced(prev, a) {
                        return Err(SharedFault::Race(c.describe(what, "write", b, a)));
                    }
                }
                s.write[b] = me;
                s.pending[b] = pending;
            }
        }
        Ok(o)
    }

    /// Raw access for synchronisation words (mbarrier state) and tensor-core reads: bounds only.
    pub fn raw(&mut self, off: u64, len: usize) -> Result<&mut [u8], SharedFault> {
        let o = self.bounds(off, len)?;
        Ok(&mut self.data[o..o + len])
    }

    /// Ends the pending state of an async write range.
    pub fn settle(&mut self, off: u32, len: u32) {
        if let Some(s) = &mut self.shadow {
            let (a, b) = (off as usize, (off + len) as usize);
            if b <= s.pending.len() {
                s.pending[a..b].fill(0);
            }
        }
    }

    /// A barrier completed: the warps in the bit set `waiters` (bar.sync) get the join of their
    /// clocks and those of `arrivers` (bar.arrive: they release, acquire nothing); each ticks.
    pub fn barrier(&mut self, waiters: u32, arrivers: u32) {
        if let Some(s) = &mut self.shadow {
            let warps = |set: u32| (0..MAX_WARPS).filter(move |w| set >> w & 1 == 1);
            let mut j = [0u32; MAX_WARPS];
            for m in warps(waiters | arrivers) {
                for (x, y) in j.iter_mut().zip(&s.vc[m]) {
                    *x = (*x).max(*y);
                }
            }
            for m in warps(waiters) {
                s.vc[m] = j;
            }
            for m in warps(waiters | arrivers) {
                s.vc[m][m] += 1;
            }
        }
    }

    /// The lanes of warp `w` synchronised at instruction `instance` (bar.warp.sync, a collective):
    /// their earlier accesses are ordered before their later ones.
    pub fn warp_sync(&mut self, w: usize, instance: u64) {
        if let Some(s) = &mut self.shadow {
            s.synced[w] = instance;
        }
    }

    /// Release by warp `w` into a synchronisation object's clock.
    pub fn release(&mut self, w: usize, into: &mut [u32; MAX_WARPS]) {
        if let Some(s) = &mut self.shadow {
            for v in 0..MAX_WARPS {
                into[v] = into[v].max(s.vc[w][v]);
            }
            s.vc[w][w] += 1;
        }
    }

    /// Acquire by warp `w` of a synchronisation object's clock.
    pub fn acquire(&mut self, w: usize, from: &[u32; MAX_WARPS]) {
        if let Some(s) = &mut self.shadow {
            for v in 0..MAX_WARPS {
                s.vc[w][v] = s.vc[w][v].max(from[v]);
            }
        }
    }
}
