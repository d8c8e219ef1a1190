//! One warp: its lanes' registers (slot-major, 32 lanes per slot), program counters and the
//! scheduling state of its lane groups.
//!
//! Lanes keep independent PCs. The warp runs one group at a time: the lanes at the lowest PC
//! among those that can run (not exited, not blocked). Straight-line code keeps the group whole;
//! a divergent branch splits it and the lower-PC side runs first, so the sides meet again at the
//! first PC both reach (the reconvergence a stackless Volta+ scheduler gives). `cur_pc`/`cur_mask`
//! are the running group; `pcs` holds every other lane's PC and is written when groups change.

use crate::ir::{Operand, Sreg};

pub const FULL: u32 = u32::MAX;

/// Why a lane cannot run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    None,
    /// Blocked in `bar.sync id` (resumes after it).
    Bar(u32),
    /// Waiting for the rest of its warpgroup at a wgmma instruction (resumes after it).
    Warpgroup,
    /// In `mbarrier.try_wait` on the barrier at this shared offset until the phase it names
    /// completes (then re-runs the instruction).
    Mbar { addr: u32, phase: MbarPhase },
    /// In `setmaxnreg.inc` to this many registers until other warps free enough (re-runs it).
    Regs(u32),
}

/// The phase an mbarrier wait names: by parity (`.parity` forms) or by the state token an
/// `mbarrier.arrive` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MbarPhase {
    Parity(u32),
    Token(u64),
}

impl MbarPhase {
    /// Whether the phase has completed on the barrier word `word`.
    pub fn completed(self, word: u64) -> Result<bool, crate::mbarrier::MbarrierError> {
        match self {
            MbarPhase::Parity(p) => crate::mbarrier::test_wait_parity(word, p),
            MbarPhase::Token(t) => crate::mbarrier::test_wait(word, t),
        }
    }
}

impl std::fmt::Display for MbarPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MbarPhase::Parity(p) => write!(f, "mbarrier.try_wait.parity for parity {p}"),
            MbarPhase::Token(t) => write!(f, "mbarrier.try_wait for the phase of state token {t:#018x}"),
        }
    }
}

pub struct Warp {
    /// Index of the warp in its CTA.
    pub id: u32,
    pub regs: Vec<[u64; 32]>,
    pub pcs: [u32; 32],
    /// Lanes that exist (the last warp of a block may be partial) and have not exited.
    pub live: u32,
    /// Lanes blocked at a barrier (`wait` says which, per lane).
    pub blocked: u32,
    pub wait: [Wait; 32],
    pub cur_pc: u32,
    pub cur_mask: u32,
    /// Lowest PC among runnable lanes outside the running group (u32::MAX if none).
    pub other_pc: u32,
    /// Thread coordinates of each lane.
    pub tid: [[u32; 3]; 32],
    /// Registers per thread held by this warp (`setmaxnreg`).
    pub regs_per_thread: u32,
    /// cp.async groups: committed groups not yet waited for, oldest first, each a list of
    /// pending shared ranges (offset, len); `open` collects the copies not yet committed.
    pub cp_groups: Vec<Vec<(u32, u32)>>,
    pub cp_open: Vec<(u32, u32)>,
    /// wgmma accumulators in flight (accum.rs).
    pub acc: super::accum::Accumulators,
}

impl Warp {
    /// A warp at the start of the kernel. `regs` is a register file to reuse (from an earlier CTA
    /// on this worker): registers start with whatever it holds, like a GPU's, since zeroing
    /// thousands of virtual registers per warp would cost more than many kernels' whole run.
    pub fn new(id: u32, mut regs: Vec<[u64; 32]>, slots: u32, block: [u32; 3], threads: u32, regs_per_thread: u32) -> Warp {
        let mut tid = [[0u32; 3]; 32];
        let mut live = 0u32;
        for (lane, t) in tid.iter_mut().enumerate() {
            let linear = id * 32 + lane as u32;
            if linear < threads {
                live |= 1 << lane;
            }
            *t = [linear % block[0], (linear / block[0]) % block[1], linear / (block[0] * block[1])];
        }
        Warp {
            id,
            regs: {
                regs.resize(slots.max(1) as usize, [0; 32]);
                regs
            },
            pcs: [0; 32],
            live,
            blocked: 0,
            wait: [Wait::None; 32],
            cur_pc: 0,
            cur_mask: live,
            other_pc: u32::MAX,
            tid,
            regs_per_thread,
            cp_groups: Vec::new(),
            cp_open: Vec::new(),
            acc: Default::default(),
        }
    }

    pub fn runnable(&self) -> u32 {
        self.live & !self.blocked
    }

    /// Stores the running group's PC into `pcs` and picks the lowest-PC runnable group.
    /// Returns false when no lane can run.
    pub fn reselect(&mut self) -> bool {
        let mut m = self.cur_mask;
        while m != 0 {
            let l = m.trailing_zeros() as usize;
            m &= m - 1;
            self.pcs[l] = self.cur_pc;
        }
        let run = self.runnable();
        if run == 0 {
            self.cur_mask = 0;
            return false;
        }
        let (mut lo, mut mask, mut next) = (u32::MAX, 0u32, u32::MAX);
        let mut m = run;
        while m != 0 {
            let l = m.trailing_zeros();
            m &= m - 1;
            let pc = self.pcs[l as usize];
            if pc < lo {
                next = lo;
                lo = pc;
                mask = 1 << l;
            } else if pc == lo {
                mask |= 1 << l;
            } else if pc < next {
                next = pc;
            }
        }
        self.cur_pc = lo;
        self.cur_mask = mask;
        self.other_pc = next;
        true
    }

    /// Moves the running group to `pc`; regroups if it meets or passes other lanes.
    #[inline]
    pub fn advance_to(&mut self, pc: u32) {
        self.cur_pc = pc;
        if pc >= self.other_pc {
            self.reselect();
        }
    }

    /// Sends the lanes of `taken` (a subset of the running group) to `target`, the rest to `pc+1`.
    pub fn branch(&mut self, taken: u32, target: u32) {
        if taken == self.cur_mask {
            self.cur_pc = target;
            if target >= self.other_pc {
                self.reselect();
            }
        } else if taken == 0 {
            self.advance_to(self.cur_pc + 1);
        } else {
            let next = self.cur_pc + 1;
            let mut m = self.cur_mask;
            while m != 0 {
                let l = m.trailing_zeros();
                m &= m - 1;
                self.pcs[l as usize] = if taken >> l & 1 == 1 { target } else { next };
            }
            self.cur_mask = 0;
            self.reselect();
        }
    }

    /// Blocks `lanes` of the running group; they resume at the current PC + `resume`.
    pub fn block(&mut self, lanes: u32, wait: Wait, resume: u32) {
        let pc = self.cur_pc + resume;
        let mut m = lanes;
        while m != 0 {
            let l = m.trailing_zeros();
            m &= m - 1;
            self.pcs[l as usize] = pc;
            self.wait[l as usize] = wait;
        }
        self.blocked |= lanes;
        // Lanes of the running group not blocked keep going from the next instruction.
        self.cur_pc += 1;
        self.cur_mask &= !lanes;
        self.reselect();
    }

    /// Releases blocked lanes (their PCs were set when they blocked).
    pub fn unblock(&mut self, lanes: u32) {
        self.blocked &= !lanes;
        let mut m = lanes;
        while m != 0 {
            let l = m.trailing_zeros();
            m &= m - 1;
            self.wait[l as usize] = Wait::None;
        }
        self.reselect();
    }

    /// The blocked lanes waiting for `wait`.
    pub fn waiting(&self, wait: Wait) -> u32 {
        let mut out = 0;
        let mut m = self.blocked;
        while m != 0 {
            let l = m.trailing_zeros();
            m &= m - 1;
            if self.wait[l as usize] == wait {
                out |= 1 << l;
            }
        }
        out
    }

    /// Ends the lanes of `lanes`.
    pub fn exit(&mut self, lanes: u32) {
        self.live &= !lanes;
        self.cur_mask &= !lanes;
        self.cur_pc += 1;
        self.reselect();
    }

    #[inline]
    pub fn reg(&self, r: u32) -> &[u64; 32] {
        &self.regs[r as usize]
    }

    /// The 32 lane values of a source operand (registers, immediates, special registers).
    #[inline]
    pub fn load(&self, o: &Operand, ctx: &SregCtx) -> [u64; 32] {
        match *o {
            Operand::Reg(r) => self.regs[r as usize],
            Operand::NotReg(r) => {
                let mut v = self.regs[r as usize];
                for x in v.iter_mut() {
                    *x = (*x == 0) as u64;
                }
                v
            }
            Operand::Imm(v) => [v; 32],
            Operand::Sreg(s) => std::array::from_fn(|l| self.sreg(s, l, ctx)),
            _ => [0; 32],
        }
    }

    /// The 32 lane values of a source operand by reference: a register is borrowed in place,
    /// anything else is materialised in `tmp`.
    #[inline(always)]
    pub fn src<'s>(&'s self, o: &Operand, ctx: &SregCtx, tmp: &'s mut [u64; 32]) -> &'s [u64; 32] {
        match *o {
            Operand::Reg(r) => &self.regs[r as usize],
            _ => {
                *tmp = self.load(o, ctx);
                tmp
            }
        }
    }

    /// One lane's value of a source operand.
    #[inline]
    pub fn lane(&self, o: &Operand, l: usize, ctx: &SregCtx) -> u64 {
        match *o {
            Operand::Reg(r) => self.regs[r as usize][l],
            Operand::NotReg(r) => (self.regs[r as usize][l] == 0) as u64,
            Operand::Imm(v) => v,
            Operand::Sreg(s) => self.sreg(s, l, ctx),
            _ => 0,
        }
    }

    /// Writes `vals` into a destination register for the lanes of `mask`.
    #[inline]
    pub fn store(&mut self, o: &Operand, vals: &[u64; 32], mask: u32) {
        if let Operand::Reg(r) = *o {
            let dst = &mut self.regs[r as usize];
            if mask == FULL {
                *dst = *vals;
            } else {
                for l in 0..32 {
                    if mask >> l & 1 == 1 {
                        dst[l] = vals[l];
                    }
                }
            }
        }
    }

    #[inline]
    pub fn set_lane(&mut self, o: &Operand, l: usize, v: u64) {
        if let Operand::Reg(r) = *o {
            self.regs[r as usize][l] = v;
        }
    }

    fn sreg(&self, s: Sreg, l: usize, ctx: &SregCtx) -> u64 {
        (match s {
            Sreg::Tid(d) => self.tid[l][d as usize],
            Sreg::Ntid(d) => ctx.block[d as usize],
            Sreg::Ctaid(d) => ctx.ctaid[d as usize],
            Sreg::Nctaid(d) => ctx.grid[d as usize],
            Sreg::LaneId => l as u32,
            Sreg::WarpId => self.id,
            Sreg::NWarpId => ctx.warps,
            Sreg::SmId => ctx.sm,
            Sreg::NSmId => ctx.sms,
            Sreg::Clock | Sreg::Clock64 => return ctx.clock,
            Sreg::DynSmemSize => ctx.dyn_smem,
            Sreg::TotalSmemSize => ctx.total_smem,
            Sreg::LaneMaskLt => (1u32 << l) - 1,
            Sreg::LaneMaskLe => ((1u64 << (l + 1)) - 1) as u32,
            Sreg::LaneMaskEq => 1 << l,
            Sreg::LaneMaskGe => !((1u32 << l) - 1),
            Sreg::LaneMaskGt => ((!0u64) << (l + 1)) as u32,
        }) as u64
    }
}

/// What special registers read that is not per warp.
pub struct SregCtx {
    pub block: [u32; 3],
    pub grid: [u32; 3],
    pub ctaid: [u32; 3],
    pub warps: u32,
    pub sm: u32,
    pub sms: u32,
    pub dyn_smem: u32,
    pub total_smem: u32,
    pub clock: u64,
}

/// A context for reading operands known not to be special registers.
pub const NO_SREG: SregCtx = SregCtx { block: [0; 3], grid: [0; 3], ctaid: [0; 3], warps: 0, sm: 0, sms: 0, dyn_smem: 0, total_smem: 0, clock: 0 };
