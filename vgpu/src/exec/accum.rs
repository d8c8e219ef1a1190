//! The async hazard of wgmma accumulators: `wgmma.mma_async` writes its accumulator registers
//! asynchronously, and the PTX ISA makes touching them (reading or writing, by anything but
//! another wgmma, which may chain on the same accumulator) undefined until the
//! `wgmma.wait_group` that retires its group. The emulator completes a wgmma at issue, so such a
//! read would see the right values here and garbage on a GPU: this module makes it an error.
//!
//! Each warp keeps the register slots of the wgmmas issued since its last `commit_group` (the open
//! group) and of each committed group not yet retired; `wait_group N` retires all but the N most
//! recent. While any slot is pending, each instruction's operands are checked against them.

use crate::ir::{AddrBase, Operand};

#[derive(Default)]
pub struct Accumulators {
    open: Vec<u32>,
    groups: Vec<Vec<u32>>,
    /// Bit set over register slots: the union of `open` and `groups`.
    pending: Vec<u64>,
}

impl Accumulators {
    /// Whether any accumulator is in flight (the fast check before each instruction).
    #[inline]
    pub fn any(&self) -> bool {
        !self.pending.is_empty()
    }

    /// A wgmma issued with these accumulator slots.
    pub fn issue(&mut self, slots: impl Iterator<Item = u32>) {
        self.open.extend(slots);
        self.rebuild();
    }

    /// `wgmma.commit_group`: the open wgmmas form a group.
    pub fn commit(&mut self) {
        if !self.open.is_empty() {
            self.groups.push(std::mem::take(&mut self.open));
        }
    }

    /// `wgmma.wait_group n`: all but the `n` most recent committed groups complete. (The open
    /// wgmmas, never committed, stay in flight.)
    pub fn wait(&mut self, n: usize) {
        if self.groups.len() > n {
            self.groups.drain(..self.groups.len() - n);
            self.rebuild();
        }
    }

    fn rebuild(&mut self) {
        self.pending.clear();
        for &s in self.open.iter().chain(self.groups.iter().flatten()) {
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
        a.issue([3, 4].into_iter());
        a.commit();
        a.issue([70].into_iter());
        a.commit();
        a.issue([9].into_iter());
        assert_eq!(a.touched(&[Operand::Reg(4)]), Some(4));
        a.wait(1);
        assert_eq!(a.touched(&[Operand::Reg(4)]), None, "the oldest group retired");
        assert_eq!(a.touched(&[Operand::Vec(vec![Operand::Reg(1), Operand::Reg(70)].into())]), Some(70));
        a.wait(0);
        assert_eq!(a.touched(&[Operand::Reg(70)]), None);
        assert_eq!(a.touched(&[Operand::Reg(9)]), Some(9), "an uncommitted wgmma is not retired by a wait");
        a.commit();
        a.wait(0);
        assert!(!a.any());
    }
}
