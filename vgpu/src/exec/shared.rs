//! A CTA's shared memory and its sanitizer shadow.
//!
//! Checks (when enabled), per byte:
//! - initialisation: a read of a byte no thread, cp.async or TMA has written;
//! - races: each byte remembers its last write and last read as an epoch (warp, clock). Warps
//!   carry vector clocks over the CTA's warps; `bar.sync` joins the participants' clocks,
//!   mbarrier arrive/complete_tx release into the barrier's clock and a successful wait acquires
//!   it. An access is ordered after an earlier one by another warp iff the accessor's clock for
//!   that warp has reached the earlier epoch's clock; a write unordered with the last write or
//!   read, or a read unordered with the last write, is a race. Lanes of one warp count as ordered
//!   (a single last-reader slot can miss races; it never reports one that is not there);
//! - async-proxy hazards: bytes written by a cp.async or TMA stay pending until the issuing warp's
//!   `cp.async.wait_group` / the mbarrier wait that covers them; reading them earlier is an error.
//!
//! Bounds are always checked (static + dynamic size); the shadow costs 9 bytes per byte and is
//! allocated only with checks on.

pub const MAX_WARPS: usize = 32;

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

struct Shadow {
    write: Vec<u32>,
    read: Vec<u32>,
    /// 0: settled; 1: pending cp.async; 2: pending TMA.
    pending: Vec<u8>,
    /// vc[w][v]: what warp w knows of warp v's clock.
    vc: Vec<[u32; MAX_WARPS]>,
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
        let s = self.shadow.get_or_insert_with(|| Shadow { write: Vec::new(), read: Vec::new(), pending: Vec::new(), vc: Vec::new() });
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

    /// A read by warp `w`, checked.
    pub fn read(&mut self, off: u64, out: &mut [u8], w: usize) -> Result<(), SharedFault> {
        let o = self.bounds(off, out.len())?;
        if let Some(s) = &mut self.shadow {
            let me = epoch(w, s.vc[w][w]);
            for b in o..o + out.len() {
                let wr = s.write[b];
                if wr == 0 {
                    return Err(SharedFault::Uninit(format!("read of shared byte {b:#x}, which nothing has written")));
                }
                if s.pending[b] != 0 {
                    let what = if s.pending[b] == 1 { "cp.async (before its cp.async.wait_group)" } else { "TMA (before the mbarrier wait that completes it)" };
                    return Err(SharedFault::Async(format!("read of shared byte {b:#x} while a {what} write to it is pending")));
                }
                let (ww, wc) = split(wr);
                if ww != w && s.vc[w][ww] < wc {
                    return Err(SharedFault::Race(format!(
                        "read of shared byte {b:#x} by warp {w} races with a write by warp {ww}: no barrier, mbarrier or fence orders them"
                    )));
                }
                s.read[b] = me;
            }
        }
        // SAFETY: `o..o+len` is inside `data` (bounds above); `out` is a distinct buffer.
        unsafe { super::mem::copy_small(self.data.as_ptr().add(o), out.as_mut_ptr(), out.len()) };
        Ok(())
    }

    /// A write by warp `w`, checked. `pending`: 0 for a plain store, 1 cp.async, 2 TMA.
    pub fn write(&mut self, off: u64, src: &[u8], w: usize, pending: u8) -> Result<(), SharedFault> {
        let o = self.write_shadow(off, src.len(), w, pending)?;
        // SAFETY: as in `read`.
        unsafe { super::mem::copy_small(src.as_ptr(), self.data.as_mut_ptr().add(o), src.len()) };
        Ok(())
    }

    /// The checks and shadow update of a write of `len` bytes (the data is the caller's).
    pub fn write_shadow(&mut self, off: u64, len: usize, w: usize, pending: u8) -> Result<usize, SharedFault> {
        let o = self.bounds(off, len)?;
        if let Some(s) = &mut self.shadow {
            let me = epoch(w, s.vc[w][w]);
            for b in o..o + len {
                for (prev, what) in [(s.write[b], "write"), (s.read[b], "read")] {
                    if prev == 0 {
                        continue;
                    }
                    let (pw, pc) = split(prev);
                    if pw != w && s.vc[w][pw] < pc {
                        return Err(SharedFault::Race(format!(
                            "write of shared byte {b:#x} by warp {w} races with a {what} by warp {pw}: no barrier, mbarrier or fence orders them"
                        )));
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

    /// `bar.sync` completed for the warps in `members`: join their clocks, then tick each.
    pub fn barrier(&mut self, members: &[usize]) {
        if let Some(s) = &mut self.shadow {
            let mut j = [0u32; MAX_WARPS];
            for &m in members {
                for v in 0..MAX_WARPS {
                    j[v] = j[v].max(s.vc[m][v]);
                }
            }
            for &m in members {
                s.vc[m] = j;
                s.vc[m][m] += 1;
            }
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
