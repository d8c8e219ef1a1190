//! The async hazard of wgmma registers: `wgmma.mma_async` writes its accumulator registers and
//! reads the registers of its A fragments (the register form) asynchronously, and the PTX ISA makes
//! touching either (reading or writing, by anything but another wgmma, which may chain on the same
//! accumulator) undefined until the `wgmma.wait_group` that retires its group. The emulator
//! completes a wgmma at issue, so such an access would see the finished values here (or, for A,
//! change nothing) and garbage on a GPU: this module makes it an error. A kernel that pipelines
//! wgmma groups (`wait_group 1`) and reads a result or refills a fragment one wait too early fails.
//!
//! The shared-memory operands are read at issue (the multiply is done then), and read again, for
//! the checks only, by each warp of the warpgroup at the `wait_group` that retires them: a GPU may
//! read them at any time until then, so a warp that hands their stage back to a producer before
//! that wait (an early mbarrier arrive) races with the producer's refill, and the race checker
//! sees it whichever runs first here.
//!
//! Each warp keeps the register slots and shared reads of the wgmmas issued since its last
//! `commit_group` (the open group) and of each committed group not yet retired; `wait_group N`
//! retires all but the N most recent. While any slot is pending, each instruction's operands are
//! checked against them.

use std::sync::Arc;

use crate::ir::{AddrBase, Operand};

#[derive(Default)]
pub struct Accumulators {
    open: Group,
    groups: Vec<Group>,
    /// Bit set over register slots: the union of the slots of `open` and `groups`.
    pending: Vec<u64>,
}

#[derive(Default)]
struct Group {
    slots: Vec<u32>,
    /// The 16-byte shared-memory chunks (offsets) its wgmmas read, one list per wgmma.
    reads: Vec<Arc<[u64]>>,
}

impl Accumulators {
    /// Whether any accumulator is in flight (the fast check before each instruction).
    #[inline]
    pub fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A wgmma issued with these register slots (accumulators, A fragments), reading these
    /// shared-memory chunks.
    pub fn issue(&mut self, slots: impl Iterator<Item = u32>, reads: Arc<[u64]>) {
        self.open.slots.extend(slots);
        self.open.reads.push(reads);
        self.rebuild();
    }

    /// `wgmma.commit_group`: the open wgmmas form a group.
    pub fn commit(&mut self) {
        if !self.open.reads.is_empty() {
            self.groups.push(std::mem::take(&mut self.open));
        }
    }

    /// `wgmma.wait_group n`: all but the `n` most recent committed groups complete. (The open
    /// wgmmas, never committed, stay in flight.) Returns the shared chunks the retired wgmmas read.
    pub fn wait(&mut self, n: usize) -> Vec<Arc<[u64]>> {
        if self.groups.len() <= n {
            return Vec::new();
        }
        let retired: Vec<Group> = self.groups.drain(..self.groups.len() - n).collect();
        self.rebuild();
        retired.into_iter().flat_map(|g| g.reads).collect()
    }

    fn rebuild(&mut self) {
        self.pending.clear();
        for &s in self.open.slots.iter().chain(self.groups.iter().flat_map(|g| &g.slots)) {
            let (word, bit) = (s as usize / 64, s % 64);
            if self.pending.len() <= word {
                self.pending.resize(word + 1, 0);
            }
            self.pending[word] |= 1 << bit;
        }
    }

    fn is_pending(&self, slot: u32) -> bool {
        self.pending.get(slot as usize / 64).is_some_and(|w| w >> (slot % 64) & 1 == 1)
    }

    /// The first pending slot an instruction's operands name, if any.
    pub fn touched(&self, args: &[Operand]) -> Option<u32> {
        args.iter().find_map(|o| match o {
            Operand::Reg(s) | Operand::NotReg(s) => self.is_pending(*s).then_some(*s),
            Operand::Addr { base: AddrBase::Reg(s), .. } => self.is_pending(*s).then_some(*s),
            Operand::Vec(e) => self.touched(e),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_retire_oldest_first_and_open_wgmmas_stay_pending() {
        let mut a = Accumulators::default();
        let reads = |c: &[u64]| -> Arc<[u64]> { c.into() };
        a.issue([3, 4].into_iter(), reads(&[0, 16]));
        a.commit();
        a.issue([70].into_iter(), reads(&[32]));
        a.commit();
        a.issue([9].into_iter(), reads(&[48]));
        assert_eq!(a.touched(&[Operand::Reg(4)]), Some(4));
        let retired = a.wait(1);
        assert_eq!(retired.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), [vec![0, 16]], "the oldest group's reads");
        assert_eq!(a.touched(&[Operand::Reg(4)]), None, "the oldest group retired");
        assert_eq!(a.touched(&[Operand::Vec(vec![Operand::Reg(1), Operand::Reg(70)].into())]), Some(70));
        assert!(a.wait(1).is_empty(), "nothing more retires at the same depth");
        a.wait(0);
        assert_eq!(a.touched(&[Operand::Reg(70)]), None);
        assert_eq!(a.touched(&[Operand::Reg(9)]), Some(9), "an uncommitted wgmma is not retired by a wait");
        a.commit();
        assert_eq!(a.wait(0).len(), 1);
        assert!(!a.any());
    }
}
