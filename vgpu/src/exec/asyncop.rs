//! mbarrier instructions and TMA tile loads (`cp.async.bulk.tensor`), over the state machine in
//! `mbarrier.rs` and the tile loader in `tma/`.
//!
//! A TMA load is performed when it is issued: the box lands in shared memory at once, marked
//! pending (reading it before the mbarrier wait that covers it is an async-proxy hazard), and its
//! bytes are completed on the mbarrier right away. A `try_wait` whose phase has not completed
//! blocks its lanes; the scheduler polls the barrier and re-runs the instruction once it has.

use super::cta::CtaState;
use super::mem::{address, target, Target};
use super::shared::MAX_WARPS;
use super::warp::{MbarPhase, Wait, Warp};
use crate::ir::{Instr, Operand, Space};
use crate::tma::TensorMap;
use crate::Error;

fn bar_addr(w: &Warp, o: &Operand, l: usize) -> u32 {
    match target(Space::Shared, address(w, o, l)) {
        Target::Shared(off) => off as u32,
        _ => unreachable!("shared space"),
    }
}

fn word(st: &mut CtaState, w: &Warp, l: usize, line: u32, addr: u32) -> Result<u64, Error> {
    st.mbar_word(addr).map_err(|msg| Error::Memory { site: st.site(w, l, line), space: "shared", msg })
}

fn barrier_err(st: &CtaState, w: &Warp, l: usize, line: u32) -> impl Fn(crate::mbarrier::MbarrierError) -> Error {
    let site = st.site(w, l, line);
    move |e| Error::from(e).at(&site)
}

fn lanes(exec: u32) -> impl Iterator<Item = usize> {
    (0..32).filter(move |l| exec >> l & 1 == 1)
}

pub fn init(w: &mut Warp, st: &mut CtaState, i: &Instr, exec: u32) -> Result<(), Error> {
    for l in lanes(exec) {
        let addr = bar_addr(w, &i.args[0], l);
        let count = w.lane(&i.args[1], l, &st.ctx) as u32;
        let mut wd = word(st, w, l, i.line, addr)?;
        crate::mbarrier::init(&mut wd, count).map_err(barrier_err(st, w, l, i.line))?;
        st.set_mbar_word(addr, wd);
        st.mbar_clock.insert(addr, [0; MAX_WARPS]);
    }
    Ok(())
}

pub fn arrive(w: &mut Warp, st: &mut CtaState, i: &Instr, expect_tx: bool, exec: u32) -> Result<(), Error> {
    for l in lanes(exec) {
        let addr = bar_addr(w, &i.args[1], l);
        let mut wd = word(st, w, l, i.line, addr)?;
        let extra = i.args.get(2).map(|o| w.lane(o, l, &st.ctx) as u32);
        let token = if expect_tx {
            crate::mbarrier::arrive_expect_tx(&mut wd, extra.unwrap_or(0))
        } else {
            crate::mbarrier::arrive(&mut wd, extra.unwrap_or(1))
        }
        .map_err(barrier_err(st, w, l, i.line))?;
        st.set_mbar_word(addr, wd);
        let mut clock = st.mbar_clock.remove(&addr).unwrap_or([0; MAX_WARPS]);
        st.shared.release(w.id as usize, &mut clock);
        st.mbar_clock.insert(addr, clock);
        w.set_lane(&i.args[0], l, token);
    }
    Ok(())
}

pub fn expect_tx(w: &mut Warp, st: &mut CtaState, i: &Instr, exec: u32) -> Result<(), Error> {
    for l in lanes(exec) {
        let addr = bar_addr(w, &i.args[0], l);
        let mut wd = word(st, w, l, i.line, addr)?;
        let bytes = w.lane(&i.args[1], l, &st.ctx) as u32;
        crate::mbarrier::expect_tx(&mut wd, bytes).map_err(barrier_err(st, w, l, i.line))?;
        st.set_mbar_word(addr, wd);
    }
    Ok(())
}

/// `mbarrier.{try,test}_wait.parity p, [addr], parity` (`parity`) or `mbarrier.{try,test}_wait p,
/// [addr], state` with the token of an arrive. Returns true when lanes were blocked (try_wait on
/// an incomplete phase).
pub fn wait(w: &mut Warp, st: &mut CtaState, i: &Instr, parity: bool, blocking: bool, exec: u32) -> Result<bool, Error> {
    let mut not_done = 0u32;
    let mut results = [0u64; 32];
    for l in lanes(exec) {
        let addr = bar_addr(w, &i.args[1], l);
        let named = w.lane(&i.args[2], l, &st.ctx);
        let phase = if parity { MbarPhase::Parity(named as u32) } else { MbarPhase::Token(named) };
        let wd = word(st, w, l, i.line, addr)?;
        let done = phase.completed(wd).map_err(barrier_err(st, w, l, i.line))?;
        if done {
            results[l] = 1;
            if let Some(clock) = st.mbar_clock.get(&addr).copied() {
                st.shared.acquire(w.id as usize, &clock);
            }
            if let Some(ranges) = st.tma_pending.remove(&addr) {
                for (off, len) in ranges {
                    st.shared.settle(off, len);
                }
            }
        } else if blocking {
            not_done |= 1 << l;
            w.wait[l] = Wait::Mbar { addr, phase };
        }
    }
    if not_done != 0 {
        let first = not_done.trailing_zeros() as usize;
        let wait = w.wait[first];
        w.block(exec, wait, 0);
        return Ok(true);
    }
    w.store(&i.args[0], &results, exec);
    Ok(false)
}

/// `cp.async.bulk.tensor.Nd.shared::cluster.global.mbarrier::complete_tx::bytes [dst], [map, {c..}], [mbar]`.
pub fn tma_load(w: &mut Warp, st: &mut CtaState, i: &Instr, exec: u32) -> Result<(), Error> {
    let Operand::Vec(tensor) = &i.args[1] else { unreachable!("checked by the parser") };
    let Operand::Vec(coords) = &tensor[1] else { unreachable!("checked by the parser") };
    for l in lanes(exec) {
        let dst = bar_addr(w, &i.args[0], l);
        let mbar = bar_addr(w, &i.args[2], l);
        let map_addr = w.lane(&tensor[0], l, &st.ctx);
        let mut raw = [0u8; 128];
        st.read(target(Space::Generic, map_addr), &mut raw, w, l, i.line)?;
        let site = st.site(w, l, i.line);
        let map = TensorMap::decode(&raw).map_err(|e| Error::from(e).at(&site))?;
        let c: Vec<i32> = coords.iter().map(|o| w.lane(o, l, &st.ctx) as i32).collect();
        let tile = crate::tma::Tile::of(&map);
        // Race/initialisation bookkeeping for the chunks the box lands in, then the copy itself.
        let chunks: Vec<u32> = if dst % 128 == 0 { tile.chunk_addrs(dst).collect() } else { Vec::new() };
        for &c in &chunks {
            let acc = st.accessor(w, l, false);
            st.shared.write_shadow(c as u64, 16, &acc, 2).map_err(|f| st.shared_fault(w, l, i.line, f))?;
        }
        let view = st.view;
        let read_global = |addr: u64, buf: &mut [u8]| -> Result<(), Error> {
            view.check(addr, buf.len() as u64).map_err(|msg| Error::Memory { site: site.clone(), space: "global (TMA)", msg })?;
            // SAFETY: the range lies inside a live allocation (checked above).
            unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, buf.as_mut_ptr(), buf.len()) };
            Ok(())
        };
        let done = crate::tma::load_tile(&map, &c, read_global, &mut st.shared.data, dst).map_err(|e: Error| e.at(&site))?;
        let mut wd = word(st, w, l, i.line, mbar)?;
        crate::mbarrier::complete_tx(&mut wd, done).map_err(barrier_err(st, w, l, i.line))?;
        st.set_mbar_word(mbar, wd);
        let mut clock = st.mbar_clock.remove(&mbar).unwrap_or([0; MAX_WARPS]);
        st.shared.release(w.id as usize, &mut clock);
        st.mbar_clock.insert(mbar, clock);
        st.tma_pending.entry(mbar).or_default().extend(chunks.iter().map(|&c| (c, 16)));
    }
    Ok(())
}
