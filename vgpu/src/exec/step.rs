//! Instruction dispatch: one decoded instruction for the running lane group of one warp.

use super::alu::{self, Alu};
use super::cta::{Cta, Event};
use super::warp::Wait;
use super::{asyncop, collective, mem};
use crate::ir::{Instr, Op, Operand};
use crate::{Arch, Error};

fn unsupported(i: &Instr) -> Error {
    Error::Unsupported { line: i.line, form: format!("{:?}", i.op) }
}

impl Cta<'_> {
    pub fn step(&mut self, wi: usize) -> Result<Event, Error> {
        let Cta { warps, st } = self;
        let w = &mut warps[wi];
        let kernel = st.kernel;
        let pc = w.cur_pc;
        let Some(i) = kernel.body.get(pc as usize) else {
            // Falling off the end of the body is an implicit `ret`.
            let lanes = w.cur_mask;
            w.exit(lanes);
            return Ok(Event::Exit);
        };
        st.instructions += 1;
        let exec = match i.guard {
            None => w.cur_mask,
            Some((p, neg)) => {
                let v = w.reg(p);
                let mut e = 0u32;
                for (l, x) in v.iter().enumerate() {
                    e |= (((*x != 0) != neg) as u32) << l;
                }
                e & w.cur_mask
            }
        };
        if w.acc.any() && exec != 0 && !matches!(i.op, Op::Wgmma { .. } | Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait) {
            if let Some(slot) = w.acc.touched(&i.args) {
                let msg = format!("register slot {slot} is a wgmma accumulator or A fragment still in flight: touched before the wgmma.wait_group that completes its group");
                return Err(Error::Fault { site: st.site(w, exec.trailing_zeros() as usize, i.line), check: "async hazard", msg });
            }
        }
        match alu::exec(&i.op, &i.args, w, exec, &st.ctx) {
            Alu::Done => {
                w.advance_to(pc + 1);
                return Ok(Event::Next);
            }
            Alu::Unsupported => return Err(unsupported(i)),
            Alu::Other => {}
        }
        if st.arch == Arch::Sm80 && matches!(i.op, Op::Wgmma { .. } | Op::CpAsyncBulkTensor { .. } | Op::Setmaxnreg { .. } | Op::WgmmaFence | Op::WgmmaCommit | Op::WgmmaWait) {
            return Err(Error::Unsupported { line: i.line, form: format!("{:?} on sm_80 (an sm_90a instruction)", i.op) });
        }
        match i.op {
            Op::Bra => {
                let Operand::Label(t) = i.args[0] else { unreachable!("resolved by the parser") };
                w.branch(exec, t);
                return Ok(Event::Next);
            }
            Op::Ret | Op::Exit => {
                if exec != 0 {
                    w.exit(exec);
                    return Ok(Event::Exit);
                }
            }
            Op::Trap => {
                if exec != 0 {
                    let l = exec.trailing_zeros() as usize;
                    return Err(Error::Fault { site: st.site(w, l, i.line), check: "trap", msg: "the kernel executed `trap`".into() });
                }
            }
            Op::Ld { space, ty } => mem::ld(w, st, i, space, ty, exec)?,
            Op::St { space, ty } => mem::st(w, st, i, space, ty, exec)?,
            Op::Atom { space, op, ty } => mem::atom(w, st, i, space, op, ty, exec, true)?,
            Op::Red { space, op, ty } => mem::atom(w, st, i, space, op, ty, exec, false)?,
            Op::Cvta { space, to } => mem::cvta(w, st, i, space, to, exec),
            Op::Bar { arrive } => {
                if exec != 0 {
                    let l = exec.trailing_zeros() as usize;
                    let id = w.lane(&i.args[0], l, &st.ctx) as u32;
                    let count = i.args.get(1).map(|o| w.lane(o, l, &st.ctx) as u32);
                    let name = if arrive { "bar.arrive" } else { "bar.sync" };
                    if id >= 16 || count.is_some_and(|c| c == 0 || c % 32 != 0) || arrive && count.is_none() {
                        return Err(Error::Barrier {
                            site: st.site(w, l, i.line),
                            msg: format!("{name} {id}, {count:?}: the id must be below 16 and the thread count a non-zero multiple of 32 (required by bar.arrive)"),
                        });
                    }
                    if arrive {
                        // Arrives and goes on: counts toward the barrier, waits for nothing.
                        w.advance_to(pc + 1);
                    } else {
                        w.block(exec, Wait::Bar(id), 1);
                    }
                    return Ok(Event::Bar { id, count, lanes: exec, arrive });
                }
            }
            Op::BarWarpSync | Op::Shfl { .. } | Op::MatchAny { .. } | Op::Vote { .. } => {
                match i.op {
                    Op::BarWarpSync => collective::bar_warp_sync(w, st, i, exec)?,
                    Op::Shfl { mode } => collective::shfl(w, st, i, mode, exec)?,
                    Op::MatchAny { .. } => collective::match_any(w, st, i, exec)?,
                    Op::Vote { mode } => collective::vote(w, st, i, mode, exec)?,
                    _ => unreachable!("matched above"),
                }
                // The member lanes met here: their shared-memory accesses are ordered across it.
                st.shared.warp_sync(w.id as usize, st.instructions);
            }
            Op::Ldmatrix { num, trans } => collective::ldmatrix(w, st, i, num, trans, exec)?,
            Op::MmaM16n8k16 { ab } => collective::mma(w, st, i, ab, exec)?,
            Op::Wgmma { .. } => {
                if exec != w.live || w.live != super::warp::FULL {
                    return Err(Error::Barrier {
                        site: st.site(w, exec.trailing_zeros().min(31) as usize, i.line),
                        msg: format!("wgmma needs all 32 lanes of each warp of the warpgroup; lanes {exec:#010x} execute it"),
                    });
                }
                w.block(exec, Wait::Warpgroup, 1);
                return Ok(Event::Warpgroup);
            }
            Op::WgmmaCommit => w.acc.commit(),
            Op::WgmmaWait => {
                let n = w.lane(&i.args[0], 0, &st.ctx) as usize;
                // The retired wgmmas' shared operands, read again now (see exec/accum.rs).
                let a = st.accessor(w, 0, false);
                let mut buf = [0u8; 16];
                for chunks in w.acc.wait(n) {
                    for &c in chunks.iter() {
                        st.shared.read(c, &mut buf, &a).map_err(|f| st.shared_fault(w, 0, i.line, f))?;
                    }
                }
            }
            Op::WgmmaFence | Op::Fence { .. } | Op::Prefetch | Op::Nop => {}
            Op::CpAsync { bytes } => mem::cp_async(w, st, i, bytes, exec)?,
            Op::CpAsyncCommit => {
                let open = std::mem::take(&mut w.cp_open);
                w.cp_groups.push(open);
            }
            Op::CpAsyncWait { all } => {
                if all {
                    let open = std::mem::take(&mut w.cp_open);
                    w.cp_groups.push(open);
                }
                let keep = if all { 0 } else { w.lane(&i.args[0], 0, &st.ctx) as usize };
                mem::cp_async_wait(w, st, keep);
            }
            Op::CpAsyncBulkTensor { .. } => asyncop::tma_load(w, st, i, exec)?,
            Op::MbarInit => asyncop::init(w, st, i, exec)?,
            Op::MbarArrive { expect_tx } => asyncop::arrive(w, st, i, expect_tx, exec)?,
            Op::MbarExpectTx => asyncop::expect_tx(w, st, i, exec)?,
            Op::MbarTryWait { parity } => {
                if asyncop::wait(w, st, i, parity, true, exec)? {
                    return Ok(Event::Next);
                }
            }
            Op::MbarTestWait { parity } => {
                asyncop::wait(w, st, i, parity, false, exec)?;
            }
            Op::Setmaxnreg { inc } => {
                if exec != 0 {
                    let n = w.lane(&i.args[0], exec.trailing_zeros() as usize, &st.ctx) as u32;
                    let applied = self.setmaxnreg(wi, n, inc, i)?;
                    let w = &mut self.warps[wi];
                    if applied {
                        w.advance_to(pc + 1);
                    } else {
                        // .inc waits until other warps' .dec have freed the registers.
                        w.block(exec, Wait::Regs(n), 0);
                    }
                    return Ok(Event::Next);
                }
            }
            _ => return Err(unsupported(i)),
        }
        let w = &mut self.warps[wi];
        w.advance_to(pc + 1);
        Ok(Event::Next)
    }

    /// `setmaxnreg.{inc,dec}.sync.aligned.u32 n`: the warp now holds `n` registers per thread;
    /// the CTA's warps together may not exceed the register file it was launched with, so an
    /// `.inc` that does not fit yet is not applied (false: the warp waits for other warps' `.dec`).
    fn setmaxnreg(&mut self, wi: usize, n: u32, inc: bool, i: &Instr) -> Result<bool, Error> {
        let w = &self.warps[wi];
        let site = self.st.site(w, 0, i.line);
        if !(24..=256).contains(&n) || !n.is_multiple_of(8) {
            return Err(Error::Fault { site, check: "setmaxnreg", msg: format!("register count {n} is not a multiple of 8 in 24..=256") });
        }
        if inc && n < w.regs_per_thread || !inc && n > w.regs_per_thread {
            let dir = if inc { "inc" } else { "dec" };
            return Err(Error::Fault { site, check: "setmaxnreg", msg: format!("setmaxnreg.{dir} to {n} from {} registers per thread", w.regs_per_thread) });
        }
        if inc && self.regs_with(wi, n) > self.st.regs_budget {
            return Ok(false);
        }
        self.warps[wi].regs_per_thread = n;
        Ok(true)
    }

    /// Registers the CTA's warps would hold with warp `wi` at `n` per thread.
    pub fn regs_with(&self, wi: usize, n: u32) -> u32 {
        self.warps.iter().enumerate().map(|(k, w)| if k == wi { n } else { w.regs_per_thread } * 32).sum()
    }
}
