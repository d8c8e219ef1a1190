//! Memory instructions: `ld`/`st` per state space (scalar and `.v2`/`.v4`), atomics, `cvta`, and
//! `cp.async` with its commit/wait groups. Every access is checked: global ones against the live
//! allocations (the last hit cached per CTA), shared ones by [`SharedMem`](super::shared::SharedMem),
//! parameters against the parameter buffer; with checks on, misaligned accesses are errors too.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::alu::sext;
use super::cta::CtaState;
use super::shared::{Accessor, SharedFault};
use super::warp::Warp;
use crate::ir::{AddrBase, AtomOp, Instr, Operand, Space, Ty};
use crate::Error;

/// Generic addresses of the shared window: offset + this base (outside any host address).
pub const SHARED_GENERIC: u64 = 0xffff_0000_0000_0000;
/// Generic addresses of a thread's local window: offset + this base (below the shared window; the
/// same generic address names each thread's own frame).
pub const LOCAL_GENERIC: u64 = 0xfffe_0000_0000_0000;

/// Copies `n` bytes (an access size: 1, 2, 4, 8 or 16, else any) with fixed-size moves, so the
/// common sizes compile to plain loads and stores instead of a `memmove` call.
///
/// # Safety
/// `src` and `dst` must be valid for `n` bytes and not overlap.
#[inline(always)]
pub unsafe fn copy_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: the caller guarantees both ranges; unaligned reads/writes need no alignment.
    unsafe {
        match n {
            1 => *dst = *src,
            2 => (dst as *mut [u8; 2]).write_unaligned((src as *const [u8; 2]).read_unaligned()),
            4 => (dst as *mut [u8; 4]).write_unaligned((src as *const [u8; 4]).read_unaligned()),
            8 => (dst as *mut [u8; 8]).write_unaligned((src as *const [u8; 8]).read_unaligned()),
            16 => (dst as *mut [u8; 16]).write_unaligned((src as *const [u8; 16]).read_unaligned()),
            _ => std::ptr::copy_nonoverlapping(src, dst, n),
        }
    }
}

/// Where an address points once its state space is known.
#[derive(Clone, Copy)]
pub enum Target {
    Global(u64),
    Shared(u64),
    Param(u64),
    /// Byte offset in the accessing thread's local frame.
    Local(u64),
}

pub fn address(w: &Warp, o: &Operand, l: usize) -> u64 {
    match *o {
        Operand::Addr { base: AddrBase::Reg(r), offset } => w.regs[r as usize][l].wrapping_add(offset as u64),
        Operand::Addr { base: AddrBase::Abs, offset } => offset as u64,
        _ => 0,
    }
}

pub fn target(space: Space, addr: u64) -> Target {
    match space {
        Space::Shared => Target::Shared(addr & 0xffff_ffff),
        Space::Param => Target::Param(addr),
        Space::Local => Target::Local(addr),
        Space::Generic if addr >= SHARED_GENERIC => Target::Shared(addr - SHARED_GENERIC),
        Space::Generic if addr >= LOCAL_GENERIC => Target::Local(addr - LOCAL_GENERIC),
        _ => Target::Global(addr),
    }
}

impl CtaState<'_> {
    /// Lane `l` of warp `w` at the current instruction, for the shared-memory checks.
    pub fn accessor(&self, w: &Warp, l: usize, atomic: bool) -> Accessor {
        Accessor { warp: w.id as usize, lane: l, instance: self.instructions, atomic }
    }

    pub fn shared_fault(&self, w: &Warp, l: usize, line: u32, f: SharedFault) -> Error {
        let site = self.site(w, l, line);
        match f {
            SharedFault::Bounds(msg) => Error::Memory { site, space: "shared", msg },
            SharedFault::Race(msg) => Error::Race { site, msg },
            SharedFault::Uninit(msg) => Error::Fault { site, check: "uninitialised shared-memory read", msg },
            SharedFault::Async(msg) => Error::Fault { site, check: "async-proxy hazard", msg },
        }
    }

    /// Checks that `[addr, addr+len)` is inside one live allocation (or the module's globals / the
    /// parameter buffer), returning the report text otherwise.
    #[inline]
    fn check_global(&mut self, addr: u64, len: u64) -> Result<(), String> {
        let end = addr.wrapping_add(len);
        for k in 0..self.hints.len() {
            let (s, e) = self.hints[k];
            if addr >= s && end <= e && end >= addr {
                if k > 0 {
                    self.hints.swap(0, k);
                }
                return Ok(());
            }
        }
        let i = self.view.find(addr, len)?;
        self.hints.rotate_right(1);
        self.hints[0] = self.view.range(i);
        Ok(())
    }

    fn global_err(&self, w: &Warp, l: usize, line: u32, msg: String) -> Error {
        Error::Memory { site: self.site(w, l, line), space: "global", msg }
    }

    /// Reads `buf.len()` bytes at `t` for lane `l` of warp `w`.
    #[inline]
    pub fn read(&mut self, t: Target, buf: &mut [u8], w: &Warp, l: usize, line: u32) -> Result<(), Error> {
        match t {
            Target::Global(a) => {
                self.check_global(a, buf.len() as u64).map_err(|m| self.global_err(w, l, line, m))?;
                // SAFETY: the range lies inside a live allocation (or the module's globals / the
                // parameter buffer), all of which outlive the launch.
                unsafe { copy_small(a as *const u8, buf.as_mut_ptr(), buf.len()) };
                Ok(())
            }
            Target::Shared(off) => {
                let a = self.accessor(w, l, false);
                self.shared.read(off, buf, &a).map_err(|f| self.shared_fault(w, l, line, f))
            }
            Target::Param(off) => {
                let src = (off as usize).checked_add(buf.len()).and_then(|e| self.params.get(off as usize..e));
                let src = src.ok_or_else(|| Error::Memory {
                    site: self.site(w, l, line),
                    space: "param",
                    msg: format!("{} bytes at parameter offset {off} are outside the {}-byte parameter buffer", buf.len(), self.params.len()),
                })?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Target::Local(off) => {
                let at = self.local_range(off, buf.len(), w, l, line)?;
                buf.copy_from_slice(&self.local[at]);
                Ok(())
            }
        }
    }

    /// The bytes `[off, off+len)` of lane `l`'s local frame in `self.local`, or a report.
    fn local_range(&self, off: u64, len: usize, w: &Warp, l: usize, line: u32) -> Result<std::ops::Range<usize>, Error> {
        let frame = self.kernel.local_bytes as usize;
        if off.saturating_add(len as u64) > frame as u64 {
            return Err(Error::Memory { site: self.site(w, l, line), space: "local", msg: format!("{len} bytes at local offset {off} are outside the {frame}-byte local frame") });
        }
        let start = (w.id as usize * 32 + l) * frame + off as usize;
        Ok(start..start + len)
    }

    pub fn write(&mut self, t: Target, src: &[u8], w: &Warp, l: usize, line: u32) -> Result<(), Error> {
        match t {
            Target::Global(a) => {
                self.check_global(a, src.len() as u64).map_err(|m| self.global_err(w, l, line, m))?;
                // SAFETY: inside a live allocation (checked above); other CTAs touch other bytes unless
                // the kernel races, as it would on a GPU.
                unsafe { copy_small(src.as_ptr(), a as *mut u8, src.len()) };
                Ok(())
            }
            Target::Shared(off) => {
                let a = self.accessor(w, l, false);
                self.shared.write(off, src, &a, 0).map_err(|f| self.shared_fault(w, l, line, f))
            }
            Target::Param(_) => Err(Error::Memory { site: self.site(w, l, line), space: "param", msg: "store to the parameter space".into() }),
            Target::Local(off) => {
                let at = self.local_range(off, src.len(), w, l, line)?;
                self.local[at].copy_from_slice(src);
                Ok(())
            }
        }
    }

    fn misaligned(&self, w: &Warp, l: usize, line: u32, addr: u64, size: usize) -> Error {
        Error::Memory { site: self.site(w, l, line), space: "any", msg: format!("misaligned {size}-byte access at {addr:#x}") }
    }
}

fn elems(o: &Operand) -> &[Operand] {
    match o {
        Operand::Vec(e) => e,
        other => std::slice::from_ref(other),
    }
}

pub fn ld(w: &mut Warp, st: &mut CtaState, i: &Instr, space: Space, ty: Ty, exec: u32) -> Result<(), Error> {
    let dst = elems(&i.args[0]);
    let eb = ty.bytes() as usize;
    let total = eb * dst.len();
    let mut buf = [0u8; 32];
    let mut m = exec;
    while m != 0 {
        let l = m.trailing_zeros() as usize;
        m &= m - 1;
        let a = address(w, &i.args[1], l);
        if !a.is_multiple_of(total as u64) {
            return Err(st.misaligned(w, l, i.line, a, total));
        }
        st.read(target(space, a), &mut buf[..total], w, l, i.line)?;
        for (k, d) in dst.iter().enumerate() {
            let raw = match eb {
                1 => buf[k] as u64,
                2 => u16::from_le_bytes([buf[2 * k], buf[2 * k + 1]]) as u64,
                4 => u32::from_le_bytes(buf[4 * k..4 * k + 4].try_into().expect("4 bytes")) as u64,
                _ => u64::from_le_bytes(buf[8 * k..8 * k + 8].try_into().expect("8 bytes")),
            };
            w.set_lane(d, l, if ty.is_signed() { sext(raw, ty.bits()) as u64 } else { raw });
        }
    }
    Ok(())
}

pub fn st(w: &mut Warp, st: &mut CtaState, i: &Instr, space: Space, ty: Ty, exec: u32) -> Result<(), Error> {
    let src = elems(&i.args[1]);
    let eb = ty.bytes() as usize;
    let total = eb * src.len();
    let mut buf = [0u8; 32];
    let mut m = exec;
    while m != 0 {
        let l = m.trailing_zeros() as usize;
        m &= m - 1;
        let a = address(w, &i.args[0], l);
        if !a.is_multiple_of(total as u64) {
            return Err(st.misaligned(w, l, i.line, a, total));
        }
        for (k, s) in src.iter().enumerate() {
            let v = w.lane(s, l, &st.ctx);
            buf[k * eb..(k + 1) * eb].copy_from_slice(&v.to_le_bytes()[..eb]);
        }
        st.write(target(space, a), &buf[..total], w, l, i.line)?;
    }
    Ok(())
}

fn atom_value(op: AtomOp, ty: Ty, old: u64, b: u64, c: u64) -> u64 {
    let bits = ty.bits();
    let m = ty.mask();
    match op {
        AtomOp::Add => match ty {
            Ty::F32 => (f32::from_bits(old as u32) + f32::from_bits(b as u32)).to_bits() as u64,
            Ty::F64 => (f64::from_bits(old) + f64::from_bits(b)).to_bits(),
            _ => old.wrapping_add(b) & m,
        },
        AtomOp::Min if ty.is_signed() => sext(old, bits).min(sext(b, bits)) as u64 & m,
        AtomOp::Max if ty.is_signed() => sext(old, bits).max(sext(b, bits)) as u64 & m,
        AtomOp::Min => (old & m).min(b & m),
        AtomOp::Max => (old & m).max(b & m),
        AtomOp::Exch => b & m,
        AtomOp::Cas => if old & m == b & m { c & m } else { old & m },
        AtomOp::And => old & b & m,
        AtomOp::Or => (old | b) & m,
        AtomOp::Xor => (old ^ b) & m,
        AtomOp::Inc => if old & m >= b & m { 0 } else { (old + 1) & m },
        AtomOp::Dec => if old & m == 0 || old & m > b & m { b & m } else { (old - 1) & m },
    }
}

/// `atom` (with a destination) and `red` (`has_dst` false). Global atomics are real host atomics
/// (CTAs run in parallel); shared ones are plain (a CTA runs on one thread).
pub fn atom(w: &mut Warp, st: &mut CtaState, i: &Instr, space: Space, op: AtomOp, ty: Ty, exec: u32, has_dst: bool) -> Result<(), Error> {
    let (addr_arg, first) = if has_dst { (1, 2) } else { (0, 1) };
    let size = ty.bytes() as usize;
    if size != 4 && size != 8 {
        return Err(Error::Unsupported { line: i.line, form: format!("{size}-byte atomic") });
    }
    let mut m = exec;
    while m != 0 {
        let l = m.trailing_zeros() as usize;
        m &= m - 1;
        let a = address(w, &i.args[addr_arg], l);
        if !a.is_multiple_of(size as u64) {
            return Err(st.misaligned(w, l, i.line, a, size));
        }
        let b = w.lane(&i.args[first], l, &st.ctx);
        let c = i.args.get(first + 1).map_or(0, |o| w.lane(o, l, &st.ctx));
        let old = match target(space, a) {
            Target::Global(g) => {
                st.check_global(g, size as u64).map_err(|msg| st.global_err(w, l, i.line, msg))?;
                if size == 4 {
                    // SAFETY: 4-byte aligned, inside a live allocation (checked); all concurrent
                    // accesses to it by atomics go through AtomicU32 as well.
                    let cell = unsafe { AtomicU32::from_ptr(g as *mut u32) };
                    let mut cur = cell.load(Ordering::Relaxed);
                    loop {
                        let new = atom_value(op, ty, cur as u64, b, c) as u32;
                        match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                            Ok(_) => break cur as u64,
                            Err(x) => cur = x,
                        }
                    }
                } else {
                    // SAFETY: as above, 8-byte aligned.
                    let cell = unsafe { AtomicU64::from_ptr(g as *mut u64) };
                    let mut cur = cell.load(Ordering::Relaxed);
                    loop {
                        let new = atom_value(op, ty, cur, b, c);
                        match cell.compare_exchange_weak(cur, new, Ordering::AcqRel, Ordering::Relaxed) {
                            Ok(_) => break cur,
                            Err(x) => cur = x,
                        }
                    }
                }
            }
            Target::Shared(off) => {
                // A CTA runs on one host thread: a read and a write make the atomic.
                let acc = st.accessor(w, l, true);
                let mut buf = [0u8; 8];
                st.shared.read(off, &mut buf[..size], &acc).map_err(|f| st.shared_fault(w, l, i.line, f))?;
                let old = u64::from_le_bytes(buf);
                let new = atom_value(op, ty, old, b, c);
                st.shared.write(off, &new.to_le_bytes()[..size], &acc, 0).map_err(|f| st.shared_fault(w, l, i.line, f))?;
                old
            }
            t => {
                let mut buf = [0u8; 8];
                st.read(t, &mut buf[..size], w, l, i.line)?;
                let old = u64::from_le_bytes(buf);
                let new = atom_value(op, ty, old, b, c);
                st.write(t, &new.to_le_bytes()[..size], w, l, i.line)?;
                old
            }
        };
        if has_dst {
            w.set_lane(&i.args[0], l, if ty.is_signed() { sext(old, ty.bits()) as u64 } else { old });
        }
    }
    Ok(())
}

/// `cvta[.to].space`: generic <-> state-space addresses.
pub fn cvta(w: &mut Warp, st: &CtaState, i: &Instr, space: Space, to: bool, exec: u32) {
    let x = w.load(&i.args[1], &st.ctx);
    let params = st.params.as_ptr() as u64;
    let d: [u64; 32] = std::array::from_fn(|l| match (space, to) {
        (Space::Shared, false) => x[l].wrapping_add(SHARED_GENERIC),
        (Space::Shared, true) => x[l].wrapping_sub(SHARED_GENERIC),
        (Space::Param, false) => x[l].wrapping_add(params),
        (Space::Param, true) => x[l].wrapping_sub(params),
        (Space::Local, false) => x[l].wrapping_add(LOCAL_GENERIC),
        (Space::Local, true) => x[l].wrapping_sub(LOCAL_GENERIC),
        _ => x[l],
    });
    w.store(&i.args[0], &d, exec);
}

/// `cp.async.{ca,cg}.shared.global [dst], [src], cp-size[, src-size]`: copies src-size bytes
/// (default cp-size) and zero-fills the rest; a src-size of 0 reads nothing. The destination is
/// pending until a `cp.async.wait_group` retires its group.
pub fn cp_async(w: &mut Warp, st: &mut CtaState, i: &Instr, bytes: u32, exec: u32) -> Result<(), Error> {
    let mut m = exec;
    while m != 0 {
        let l = m.trailing_zeros() as usize;
        m &= m - 1;
        let dst = address(w, &i.args[0], l) & 0xffff_ffff;
        let src = address(w, &i.args[1], l);
        let n = i.args.get(3).map_or(bytes as u64, |o| w.lane(o, l, &st.ctx) & 0xffff_ffff).min(bytes as u64) as usize;
        if !dst.is_multiple_of(bytes as u64) || (n > 0 && !src.is_multiple_of(bytes as u64)) {
            return Err(st.misaligned(w, l, i.line, if !dst.is_multiple_of(bytes as u64) { dst } else { src }, bytes as usize));
        }
        let mut buf = [0u8; 16];
        if n > 0 {
            st.read(Target::Global(src), &mut buf[..n], w, l, i.line)?;
        }
        let acc = st.accessor(w, l, false);
        st.shared.write(dst, &buf[..bytes as usize], &acc, 1).map_err(|f| st.shared_fault(w, l, i.line, f))?;
        w.cp_open.push((dst as u32, bytes));
    }
    Ok(())
}

/// `cp.async.wait_group n` (or `wait_all`): retires all but the `n` most recent groups.
pub fn cp_async_wait(w: &mut Warp, st: &mut CtaState, keep: usize) {
    while w.cp_groups.len() > keep {
        for (off, len) in w.cp_groups.remove(0) {
            st.shared.settle(off, len);
        }
    }
}
