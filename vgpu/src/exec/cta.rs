//! One CTA: its warps, shared memory, barriers, and the cooperative scheduler.
//!
//! The scheduler runs each warp for a slice of instructions in turn (round robin, on one host
//! thread). A warp stops when all its lanes are blocked: in `bar.sync` (released when the
//! barrier's thread count arrives), at a wgmma (released when its warpgroup's four warps are
//! there; the last one runs the collective), or in `mbarrier.try_wait` (polled each round: the
//! lanes re-run the instruction once the phase has completed). A round in which no warp ran an
//! instruction while some thread is still live is a deadlock, reported with where each warp waits.

use std::collections::HashMap;

use super::shared::{SharedMem, MAX_WARPS};
use super::warp::{SregCtx, Wait, Warp, FULL};
use crate::memory::Allocations;
use crate::{Arch, Error, Kernel, Site};

/// Instructions a warp runs before the next warp's turn.
const SLICE: u32 = 256;

/// What a step asks the scheduler to do besides moving on.
pub enum Event {
    Next,
    /// Lanes arrived at `bar.sync id[, count]` (already blocked) or, `arrive`, at `bar.arrive id,
    /// count` (not waiting: they release their shared-memory writes to the waiters, acquire nothing).
    Bar { id: u32, count: Option<u32>, lanes: u32, arrive: bool },
    /// The warp blocked at a wgmma; see whether its warpgroup is complete.
    Warpgroup,
    /// Lanes exited: bar.sync without a count now needs fewer threads.
    Exit,
}

#[derive(Default, Clone, Copy)]
pub struct Bar {
    pub arrived: u32,
    pub count: Option<u32>,
    /// Warps with lanes waiting at the barrier (bar.sync).
    pub members: u32,
    /// Warps whose lanes only arrived (bar.arrive).
    pub arrivers: u32,
}

pub struct CtaState<'a> {
    pub kernel: &'a Kernel,
    pub ctx: SregCtx,
    pub shared: SharedMem,
    pub params: &'a [u8],
    pub view: &'a Allocations,
    /// The last allocations global accesses hit, (start, end), most recent first.
    pub hints: [(u64, u64); 4],
    pub arch: Arch,
    pub instructions: u64,
    pub bars: [Bar; 16],
    /// Vector clocks of mbarriers (race checker), by shared offset.
    pub mbar_clock: HashMap<u32, [u32; MAX_WARPS]>,
    /// TMA destinations pending on an mbarrier, by its shared offset.
    pub tma_pending: HashMap<u32, Vec<(u32, u32)>>,
    /// The register file the CTA holds (threads x registers at launch), for setmaxnreg.
    pub regs_budget: u32,
    /// Every thread's local frame, `kernel.local_bytes` each, thread-major (zeroed at launch).
    pub local: Vec<u8>,
}

pub struct Cta<'a> {
    pub warps: Vec<Warp>,
    pub st: CtaState<'a>,
}

impl CtaState<'_> {
    pub fn site(&self, w: &Warp, lane: usize, line: u32) -> Site {
        Site { kernel: self.kernel.name.clone(), block: self.ctx.ctaid, thread: w.tid[lane], line }
    }

    pub fn live_threads(warps: &[Warp]) -> u32 {
        warps.iter().map(|w| w.live.count_ones()).sum()
    }
}

impl Cta<'_> {
    pub fn run(&mut self) -> Result<(), Error> {
        loop {
            let mut progress = false;
            let mut live = false;
            for wi in 0..self.warps.len() {
                if self.warps[wi].blocked != 0 {
                    self.poll_waits(wi)?;
                }
                if self.warps[wi].live == 0 {
                    continue;
                }
                live = true;
                let mut n = 0;
                while self.warps[wi].cur_mask != 0 && n < SLICE {
                    n += 1;
                    match self.step(wi)? {
                        Event::Next => {}
                        Event::Bar { id, count, lanes, arrive } => self.arrive(wi, id, count, lanes, arrive)?,
                        Event::Warpgroup => self.warpgroup(wi)?,
                        Event::Exit => self.recheck_bars()?,
                    }
                }
                progress |= n > 0;
            }
            if !live {
                return Ok(());
            }
            if !progress {
                return Err(self.deadlock());
            }
        }
    }

    fn arrive(&mut self, wi: usize, id: u32, count: Option<u32>, lanes: u32, only_arrive: bool) -> Result<(), Error> {
        let bar = self.st.bars[id as usize];
        if bar.arrived > 0 && bar.count != count {
            let w = &self.warps[wi];
            // bar.arrive lanes have moved past it: the running group's PC or, after a reselect, their own.
            let l = lanes.trailing_zeros() as usize;
            let pc = if only_arrive && w.cur_mask >> l & 1 == 1 { w.cur_pc } else { w.pcs[l] };
            let line = self.st.kernel.body[pc as usize - 1].line;
            return Err(Error::Barrier {
                site: self.st.site(w, lanes.trailing_zeros() as usize, line),
                msg: format!("bar.sync {id} with thread count {count:?} while earlier arrivals used {:?}", bar.count),
            });
        }
        let bar = &mut self.st.bars[id as usize];
        bar.count = count;
        bar.arrived += lanes.count_ones();
        if only_arrive {
            bar.arrivers |= 1 << wi;
        } else {
            bar.members |= 1 << wi;
        }
        self.complete_bar(id)
    }

    fn complete_bar(&mut self, id: u32) -> Result<(), Error> {
        let bar = self.st.bars[id as usize];
        if bar.arrived == 0 {
            return Ok(());
        }
        let expected = bar.count.unwrap_or_else(|| CtaState::live_threads(&self.warps));
        if bar.arrived < expected {
            return Ok(());
        }
        if bar.arrived > expected {
            let wi = (bar.members | bar.arrivers).trailing_zeros() as usize;
            let w = &self.warps[wi];
            let lane = w.waiting(Wait::Bar(id)).trailing_zeros() as usize;
            let line = self.st.kernel.body[w.pcs[lane.min(31)] as usize - 1].line;
            return Err(Error::Barrier {
                site: self.st.site(w, lane.min(31), line),
                msg: format!("{} threads arrived at bar.sync {id}, which expects {expected}", bar.arrived),
            });
        }
        let mut m = bar.members;
        while m != 0 {
            let wi = m.trailing_zeros() as usize;
            m &= m - 1;
            let lanes = self.warps[wi].waiting(Wait::Bar(id));
            self.warps[wi].unblock(lanes);
        }
        self.st.shared.barrier(bar.members, bar.arrivers & !bar.members);
        self.st.bars[id as usize] = Bar::default();
        Ok(())
    }

    fn recheck_bars(&mut self) -> Result<(), Error> {
        for id in 0..16 {
            if self.st.bars[id].count.is_none() {
                self.complete_bar(id as u32)?;
            }
        }
        Ok(())
    }

    /// Releases lanes whose mbarrier phase has completed or whose setmaxnreg.inc now fits (they
    /// re-run the instruction).
    fn poll_waits(&mut self, wi: usize) -> Result<(), Error> {
        let w = &self.warps[wi];
        let mut ready = 0u32;
        let mut m = w.blocked;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            if let Wait::Mbar { addr, phase } = w.wait[l] {
                let word = self.st.mbar_word(addr).map_err(|msg| Error::Barrier { site: self.st.site(w, l, 0), msg })?;
                if phase.completed(word).map_err(|e| Error::from(e).at(&self.st.site(w, l, 0)))? {
                    ready |= 1 << l;
                }
            }
            if let Wait::Regs(n) = w.wait[l] {
                if self.regs_with(wi, n) <= self.st.regs_budget {
                    ready |= 1 << l;
                }
            }
        }
        if ready != 0 {
            self.warps[wi].unblock(ready);
        }
        Ok(())
    }

    /// Runs a wgmma once all four warps of the warpgroup wait at it.
    fn warpgroup(&mut self, wi: usize) -> Result<(), Error> {
        let g = wi / 4 * 4;
        if g + 4 > self.warps.len() {
            let w = &self.warps[wi];
            let line = self.st.kernel.body[w.pcs[0] as usize - 1].line;
            return Err(Error::Barrier { site: self.st.site(w, 0, line), msg: "wgmma in a CTA without a complete warpgroup of 4 warps".into() });
        }
        let pc = self.warps[wi].pcs[0];
        for w in &self.warps[g..g + 4] {
            if w.waiting(Wait::Warpgroup) != FULL || w.pcs[0] != pc {
                return Ok(());
            }
        }
        let instr = &self.st.kernel.body[pc as usize - 1];
        super::collective::wgmma(&mut self.warps[g..g + 4], &mut self.st, instr)?;
        for w in &mut self.warps[g..g + 4] {
            w.unblock(FULL);
        }
        Ok(())
    }

    fn deadlock(&self) -> Error {
        let mut waits = String::new();
        for w in &self.warps {
            if w.live == 0 {
                continue;
            }
            let mut m = w.live;
            let mut seen: Vec<(Wait, u32)> = Vec::new();
            while m != 0 {
                let l = m.trailing_zeros() as usize;
                m &= m - 1;
                let key = (w.wait[l], w.pcs[l]);
                if !seen.contains(&key) {
                    seen.push(key);
                }
            }
            for (wait, pc) in seen {
                let resume = matches!(wait, Wait::Bar(_) | Wait::Warpgroup) as u32;
                let line = self.st.kernel.body.get((pc - resume.min(pc)) as usize).map_or(0, |i| i.line);
                let what = match wait {
                    Wait::None => "runnable".to_string(),
                    Wait::Bar(id) => {
                        let b = self.st.bars[id as usize];
                        format!("in bar.sync {id} ({} of {} threads arrived)", b.arrived, b.count.unwrap_or_else(|| CtaState::live_threads(&self.warps)))
                    }
                    Wait::Warpgroup => "at wgmma, waiting for the rest of its warpgroup".to_string(),
                    Wait::Mbar { addr, phase } => format!("in {phase} on shared {addr:#x}"),
                    Wait::Regs(n) => format!(
                        "in setmaxnreg.inc to {n} registers per thread: the CTA's warps hold {} of the {} registers it was launched with",
                        self.warps.iter().map(|w| w.regs_per_thread * 32).sum::<u32>(),
                        self.st.regs_budget
                    ),
                };
                waits.push_str(&format!("  warp {} ({} live lanes): {what}, PTX line {line}\n", w.id, w.live.count_ones()));
            }
        }
        Error::Deadlock { kernel: self.st.kernel.name.clone(), block: self.st.ctx.ctaid, waits }
    }
}

impl CtaState<'_> {
    /// The 8-byte mbarrier word at a shared offset.
    pub fn mbar_word(&mut self, addr: u32) -> Result<u64, String> {
        if !addr.is_multiple_of(8) {
            return Err(format!("mbarrier at shared offset {addr:#x} is not 8-byte aligned"));
        }
        let b = self.shared.raw(addr as u64, 8).map_err(|_| format!("mbarrier at shared offset {addr:#x} is outside shared memory"))?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn set_mbar_word(&mut self, addr: u32, word: u64) {
        if let Ok(b) = self.shared.raw(addr as u64, 8) {
            b.copy_from_slice(&word.to_le_bytes());
        }
    }
}
