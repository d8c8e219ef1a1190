//! wgmma shared-memory matrix descriptors and the canonical layouts they describe.
//!
//! Descriptor bits (PTX ISA "Matrix Descriptor Format"; CUTLASS `GmmaDescriptor`), with
//! encode(x) = (x & 0x3FFFF) >> 4:
//!   0-13 encode(start address), 16-29 encode(leading dimension byte offset, LBO),
//!   32-45 encode(stride dimension byte offset, SBO), 49-51 base offset, 62-63 swizzle
//!   (0 none/interleave, 1 128B, 2 64B, 3 32B). Other bits are ignored.
//!
//! Canonical layouts (PTX ISA "Canonical Layouts", CUTLASS `make_gmma_desc`), for 16-bit elements
//! (T = 8 elements = 16 bytes), as CuTe layouts in elements composed with `Swizzle<B,4,3>` on bytes:
//!
//! | major | swizzle | layout ((MN modes),(K modes)) : strides                |
//! |-------|---------|--------------------------------------------------------|
//! | K     | none    | ((8,m),(T,2k)) : ((1T,SBO),(1,LBO))                    |
//! | K     | 32/64/128B (S bytes) | ((8,m),(T,2k)) : ((S/2,SBO),(1,T))        |
//! | MN    | none    | ((T,1,m),(8,k)) : ((1,T,SBO),(1T,LBO))                 |
//! | MN    | 32/64/128B | ((T,S/16,m),(8,k)) : ((1,T,LBO),(S/2,SBO))          |
//!
//! In words: K-major tiles are 8-row groups SBO bytes apart; a row of a swizzled tile is S bytes
//! (its k elements contiguous), an unswizzled core matrix is 8 rows of 16 bytes with the next 8 k at
//! LBO. MN-major swizzled tiles are S/2-element MN runs (blocks LBO apart) in k rows S bytes apart,
//! 8-k groups SBO apart; unswizzled ones are 8-element MN runs (SBO apart) in k rows 16 bytes apart,
//! 8-k groups LBO apart. LBO of a swizzled K-major tile is unused (one k16 slice never leaves the
//! S-byte row). The swizzle is applied to the absolute shared address of each element.
//!
//! Base offset: the ISA asks for `(pattern start >> 7) & 7` when a swizzled tile's pattern does not
//! start on its repeat boundary, but does not define the address arithmetic with a non-zero value
//! precisely enough to emulate; such descriptors are an error (our kernels align tiles to 1024 bytes).

use super::swizzle::Swizzle;

/// Which dimension of a multiplicand is contiguous: K (the ISA's "K-major", no transpose) or M/N
/// ("MN-major", wgmma's imm-trans bit set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Major {
    K,
    Mn,
}

/// A decoded matrix descriptor; byte quantities are in bytes (already shifted back).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatrixDesc {
    pub start: u32,
    pub lbo: u32,
    pub sbo: u32,
    pub base_offset: u8,
    pub swizzle: Swizzle,
}

const FIELD: u64 = 0x3FFF;

impl MatrixDesc {
    pub fn decode(raw: u64) -> MatrixDesc {
        MatrixDesc {
            start: ((raw & FIELD) << 4) as u32,
            lbo: (((raw >> 16) & FIELD) << 4) as u32,
            sbo: (((raw >> 32) & FIELD) << 4) as u32,
            base_offset: ((raw >> 49) & 7) as u8,
            swizzle: Swizzle::from_desc_bits(raw >> 62),
        }
    }

    /// The descriptor as a kernel builds it (addresses and offsets truncated as encode() does).
    pub fn encode(&self) -> u64 {
        let enc = |x: u32| ((x as u64) & 0x3FFFF) >> 4;
        enc(self.start) | enc(self.lbo) << 16 | enc(self.sbo) << 32 | ((self.base_offset as u64) & 7) << 49 | self.swizzle.desc_bits() << 62
    }

    /// Shared byte address holding 16-bit element (`mn`, `k`) of the tile, swizzle applied; `k` < 16
    /// (one k16 slice).
    pub fn element_addr(&self, major: Major, mn: u32, k: u32) -> u32 {
        self.swizzle.apply(self.start + self.element_offset(major, mn, k))
    }

    /// Byte offset of element (`mn`, `k`) from the start address, before the swizzle.
    fn element_offset(&self, major: Major, mn: u32, k: u32) -> u32 {
        let span = self.swizzle.span_bytes();
        match (major, self.swizzle) {
            (Major::K, Swizzle::None) => (mn % 8) * 16 + (mn / 8) * self.sbo + (k % 8) * 2 + (k / 8) * self.lbo,
            (Major::K, _) => (mn % 8) * span + (mn / 8) * self.sbo + k * 2,
            (Major::Mn, Swizzle::None) => (mn % 8) * 2 + (mn / 8) * self.sbo + (k % 8) * 16 + (k / 8) * self.lbo,
            (Major::Mn, _) => {
                let run = span / 2;
                (mn % run) * 2 + (mn / run) * self.lbo + (k % 8) * span + (k / 8) * self.sbo
            }
        }
    }
}
