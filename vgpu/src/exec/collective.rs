//! Warp and warpgroup collectives: `shfl.sync`, `match.any.sync`, `vote.sync`, `bar.warp.sync`,
//! `ldmatrix`, `mma.sync` and `wgmma.mma_async`.
//!
//! A collective runs when the scheduler reaches it with the lanes at its PC; every live lane of its
//! member mask must be among them (the lowest-PC-first scheduler brings lagging lanes there first,
//! so a member elsewhere means the lanes really diverged around the collective: an error, not a
//! hang). The tensor-core instructions need the whole warp. wgmma is issued when all four warps of
//! the warpgroup reach it and runs at once; `wgmma.fence/commit_group/wait_group` then have nothing
//! left to order (results are complete before any later instruction runs).

use super::cta::CtaState;
use super::mem::{address, target};
use super::warp::{Warp, FULL};
use crate::ir::{AbType, Instr, Op, Operand, ShflMode, Space, VoteMode};
use crate::matrix::{self, WgmmaA, WgmmaOp};
use crate::Error;

fn not_converged(st: &CtaState, w: &Warp, i: &Instr, exec: u32, members: u32) -> Error {
    let lane = exec.trailing_zeros().min(31) as usize;
    Error::Barrier {
        site: st.site(w, lane, i.line),
        msg: format!(
            "warp collective with member mask {members:#010x}, but only lanes {exec:#010x} of the warp's live lanes {:#010x} execute it together",
            w.live
        ),
    }
}

/// The member mask operand (uniform across the executing lanes).
fn members(w: &Warp, st: &CtaState, o: &Operand, exec: u32) -> u32 {
    w.lane(o, exec.trailing_zeros().min(31) as usize, &st.ctx) as u32
}

fn check_members(st: &CtaState, w: &Warp, i: &Instr, exec: u32, members: u32) -> Result<(), Error> {
    if members & w.live & !exec != 0 {
        return Err(not_converged(st, w, i, exec, members));
    }
    Ok(())
}

pub fn shfl(w: &mut Warp, st: &CtaState, i: &Instr, mode: ShflMode, exec: u32) -> Result<(), Error> {
    let mm = members(w, st, &i.args[4], exec);
    check_members(st, w, i, exec, mm)?;
    let (a, b, c) = (w.load(&i.args[1], &st.ctx), w.load(&i.args[2], &st.ctx), w.load(&i.args[3], &st.ctx));
    let mut d = [0u64; 32];
    let mut p = [0u64; 32];
    for l in 0..32 {
        let lane = l as i32;
        let bval = (b[l] & 31) as i32;
        let cval = (c[l] & 31) as i32;
        let seg = ((c[l] >> 8) & 31) as i32;
        let max_lane = (lane & seg) | (cval & !seg);
        let min_lane = lane & seg;
        let (j, ok) = match mode {
            ShflMode::Up => (lane - bval, lane - bval >= max_lane),
            ShflMode::Down => (lane + bval, lane + bval <= max_lane),
            ShflMode::Bfly => (lane ^ bval, (lane ^ bval) <= max_lane),
            ShflMode::Idx => {
                let j = min_lane | (bval & !seg);
                (j, j <= max_lane)
            }
        };
        let src = if ok { j as usize } else { l };
        d[l] = a[src];
        p[l] = ok as u64;
    }
    match &i.args[0] {
        Operand::Vec(dp) => {
            w.store(&dp[0], &d, exec);
            w.store(&dp[1], &p, exec);
        }
        o => w.store(o, &d, exec),
    }
    Ok(())
}

pub fn match_any(w: &mut Warp, st: &CtaState, i: &Instr, exec: u32) -> Result<(), Error> {
    let mm = members(w, st, &i.args[2], exec);
    check_members(st, w, i, exec, mm)?;
    let a = w.load(&i.args[1], &st.ctx);
    let part = exec & mm;
    let d: [u64; 32] = std::array::from_fn(|l| {
        let mut out = 0u32;
        for k in 0..32 {
            if part >> k & 1 == 1 && a[k] & 0xffff_ffff == a[l] & 0xffff_ffff {
                out |= 1 << k;
            }
        }
        out as u64
    });
    w.store(&i.args[0], &d, exec);
    Ok(())
}

pub fn vote(w: &mut Warp, st: &CtaState, i: &Instr, mode: VoteMode, exec: u32) -> Result<(), Error> {
    let mm = members(w, st, &i.args[2], exec);
    check_members(st, w, i, exec, mm)?;
    let p = w.load(&i.args[1], &st.ctx);
    let part = exec & mm;
    let ballot = (0..32).filter(|&l| part >> l & 1 == 1 && p[l] != 0).fold(0u32, |acc, l| acc | 1 << l);
    let v = match mode {
        VoteMode::Ballot => ballot as u64,
        VoteMode::All => (ballot == part) as u64,
        VoteMode::Any => (ballot != 0) as u64,
        VoteMode::Uni => (ballot == 0 || ballot == part) as u64,
    };
    w.store(&i.args[0], &[v; 32], exec);
    Ok(())
}

pub fn bar_warp_sync(w: &Warp, st: &CtaState, i: &Instr, exec: u32) -> Result<(), Error> {
    let mm = members(w, st, &i.args[0], exec);
    check_members(st, w, i, exec, mm)
}

fn whole_warp(st: &CtaState, w: &Warp, i: &Instr, exec: u32) -> Result<(), Error> {
    if exec != FULL {
        return Err(not_converged(st, w, i, exec, FULL));
    }
    Ok(())
}

fn regs4(w: &Warp, o: &Operand, l: usize) -> [u32; 4] {
    match o {
        Operand::Vec(e) => std::array::from_fn(|k| e.get(k).map_or(0, |r| w.lane(r, l, &super::warp::NO_SREG) as u32)),
        _ => [0; 4],
    }
}

pub fn ldmatrix(w: &mut Warp, st: &mut CtaState, i: &Instr, num: u8, trans: bool, exec: u32) -> Result<(), Error> {
    whole_warp(st, w, i, exec)?;
    let rows_n = 8 * num as usize;
    let mut rows = vec![[0u16; 8]; rows_n];
    for (l, row) in rows.iter_mut().enumerate() {
        let a = address(w, &i.args[1], l);
        if !a.is_multiple_of(16) {
            return Err(Error::Memory { site: st.site(w, l, i.line), space: "shared", msg: format!("ldmatrix row address {a:#x} is not 16-byte aligned") });
        }
        let mut buf = [0u8; 16];
        st.read(target(Space::Shared, a), &mut buf, w, l, i.line)?;
        *row = std::array::from_fn(|k| u16::from_le_bytes([buf[2 * k], buf[2 * k + 1]]));
    }
    let out = matrix::ldmatrix(&rows, num as usize, trans).map_err(|e| Error::from(e).at(&st.site(w, 0, i.line)))?;
    let Operand::Vec(dst) = &i.args[0] else { unreachable!("checked by the parser") };
    for (k, d) in dst.iter().enumerate() {
        let v: [u64; 32] = std::array::from_fn(|l| out[l][k] as u64);
        w.store(d, &v, FULL);
    }
    Ok(())
}

pub fn mma(w: &mut Warp, st: &CtaState, i: &Instr, ab: AbType, exec: u32) -> Result<(), Error> {
    whole_warp(st, w, i, exec)?;
    let ty = match ab {
        AbType::Bf16 => matrix::AbType::Bf16,
        AbType::F16 => matrix::AbType::F16,
    };
    let a: [[u32; 4]; 32] = std::array::from_fn(|l| regs4(w, &i.args[1], l));
    let b: [[u32; 2]; 32] = std::array::from_fn(|l| {
        let r = regs4(w, &i.args[2], l);
        [r[0], r[1]]
    });
    let c: [[f32; 4]; 32] = std::array::from_fn(|l| regs4(w, &i.args[3], l).map(f32::from_bits));
    let d = matrix::mma_m16n8k16(ty, &a, &b, &c);
    let Operand::Vec(dst) = &i.args[0] else { unreachable!("checked by the parser") };
    for (k, r) in dst.iter().enumerate() {
        let v: [u64; 32] = std::array::from_fn(|l| d[l][k].to_bits() as u64);
        w.store(r, &v, FULL);
    }
    Ok(())
}

/// One wgmma over the four warps of a warpgroup (all at the instruction).
pub fn wgmma(warps: &mut [Warp], st: &mut CtaState, i: &Instr) -> Result<(), Error> {
    let Op::Wgmma { n, ab, a_regs } = i.op else { unreachable!("called for wgmma only") };
    let args = &i.args;
    let w0 = &warps[0];
    let imm = |k: usize| w0.lane(&args[k], 0, &st.ctx) as i64;
    let scale_d = w0.lane(&args[3], 0, &st.ctx) != 0;
    let (trans_a, trans_b) = if a_regs { (false, args.get(6).is_some_and(|_| imm(6) != 0)) } else { (args.len() > 6 && imm(6) != 0, args.len() > 7 && imm(7) != 0) };
    let op = WgmmaOp {
        n,
        ty: match ab {
            AbType::Bf16 => matrix::AbType::Bf16,
            AbType::F16 => matrix::AbType::F16,
        },
        trans_a,
        trans_b,
        scale_d,
        negate_a: imm(4) == -1,
        negate_b: imm(5) == -1,
    };
    let b_desc = w0.lane(&args[2], 0, &st.ctx);
    let half = n as usize / 2;
    let Operand::Vec(dregs) = &args[0] else { unreachable!("checked by the parser") };
    let mut acc = vec![0f32; 128 * half];
    for (k, w) in warps.iter().enumerate() {
        for l in 0..32 {
            for (r, d) in dregs.iter().enumerate() {
                acc[(k * 32 + l) * half + r] = f32::from_bits(w.lane(d, l, &st.ctx) as u32);
            }
        }
    }
    let a_regs_buf: Box<[[u32; 4]; 128]>;
    let a = if a_regs {
        a_regs_buf = Box::new(std::array::from_fn(|t| regs4(&warps[t / 32], &args[1], t % 32)));
        WgmmaA::Regs(&a_regs_buf)
    } else {
        WgmmaA::Desc(w0.lane(&args[1], 0, &st.ctx))
    };
    let site = st.site(&warps[0], 0, i.line);
    // The shared operands go through the checks as reads by the warpgroup's first warp (each warp
    // of it waited for the data): initialised, not pending an async copy, ordered after its writes.
    let mut operands = vec![(matrix::Operand::B, b_desc, n)];
    if let WgmmaA::Desc(a_desc) = a {
        operands.push((matrix::Operand::A, a_desc, 64));
    }
    // The warpgroup meets at the instruction: its lanes are synchronised.
    for w in warps.iter() {
        st.shared.warp_sync(w.id as usize, st.instructions);
    }
    let acc0 = st.accessor(&warps[0], 0, false);
    let mut reads = Vec::new();
    for (which, desc, rows) in operands {
        let chunks = matrix::wgmma_read_chunks(&op, which, desc, rows).map_err(|e| Error::from(e).at(&site))?;
        let mut buf = [0u8; 16];
        for c in chunks {
            st.shared.read(c as u64, &mut buf, &acc0).map_err(|f| st.shared_fault(&warps[0], 0, i.line, f))?;
            reads.push(c as u64);
        }
    }
    let reads: std::sync::Arc<[u64]> = reads.into();
    matrix::wgmma(&op, a, b_desc, &st.shared.data, &mut acc).map_err(|e| Error::from(e).at(&site))?;
    for (k, w) in warps.iter_mut().enumerate() {
        for (r, d) in dregs.iter().enumerate() {
            let v: [u64; 32] = std::array::from_fn(|l| acc[(k * 32 + l) * half + r].to_bits() as u64);
            w.store(d, &v, FULL);
        }
        // In flight until the wait: the accumulators and, in the register form, A's fragments.
        let a_frags: &[Operand] = match (&args[1], a_regs) {
            (Operand::Vec(a), true) => a,
            _ => &[],
        };
        w.acc.issue(dregs.iter().chain(a_frags).filter_map(|d| if let Operand::Reg(s) = d { Some(*s) } else { None }), reads.clone());
    }
    Ok(())
}
