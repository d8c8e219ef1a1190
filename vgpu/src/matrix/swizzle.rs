//! The shared-memory swizzles that TMA writes and wgmma reads through.
//!
//! A swizzle permutes the 16-byte chunks inside each 128-byte line of shared memory: with span S
//! (32, 64 or 128 bytes), the log2(S/16) low bits of the chunk index (address bits 4..) are XORed with
//! the same number of bits taken from address bit 7 up, i.e. CuTe's `Swizzle<B, 4, 3>` with
//! B = 1, 2, 3 applied to byte addresses. The pattern repeats every 256, 512 or 1024 bytes.
//!
//! Both TMA and wgmma apply it to the absolute shared-memory address, which is why a tile written by
//! one and read by the other must start on the pattern's repeat boundary (or the descriptor must carry
//! a base offset) for both to agree on where row r's chunks are. XOR is an involution, so the same
//! function maps a logical address to its stored place and back.

/// A swizzle mode. The enum is the emulator's own; [`Swizzle::from_desc_bits`] and
/// [`Swizzle::from_tensor_map`] decode the two hardware encodings, which differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Swizzle {
    /// No permutation (a wgmma descriptor calls this "interleave" / no-swizzle).
    None,
    B32,
    B64,
    B128,
}

impl Swizzle {
    /// Number of chunk-index bits XORed (CuTe's B in `Swizzle<B, 4, 3>`).
    fn bits(self) -> u32 {
        match self {
            Swizzle::None => 0,
            Swizzle::B32 => 1,
            Swizzle::B64 => 2,
            Swizzle::B128 => 3,
        }
    }

    /// The swizzle span in bytes: the width of one swizzled row (16 for no swizzle, the core-matrix row).
    pub fn span_bytes(self) -> u32 {
        16 << self.bits()
    }

    /// The period of the pattern in bytes (256, 512, 1024; 128 for no swizzle).
    pub fn repeat_bytes(self) -> u32 {
        128 << self.bits()
    }

    /// Where the byte at logical shared address `addr` is stored (and, XOR being an involution, the
    /// logical address of the byte stored at `addr`).
    pub fn apply(self, addr: u32) -> u32 {
        let mask = (1u32 << self.bits()) - 1;
        addr ^ (((addr >> 7) & mask) << 4)
    }

    /// Decodes bits 62-63 of a wgmma matrix descriptor: 0 none, 1 128B, 2 64B, 3 32B.
    pub fn from_desc_bits(bits: u64) -> Swizzle {
        match bits & 3 {
            0 => Swizzle::None,
            1 => Swizzle::B128,
            2 => Swizzle::B64,
            _ => Swizzle::B32,
        }
    }

    /// The descriptor encoding of this mode (inverse of [`Swizzle::from_desc_bits`]).
    pub fn desc_bits(self) -> u64 {
        match self {
            Swizzle::None => 0,
            Swizzle::B128 => 1,
            Swizzle::B64 => 2,
            Swizzle::B32 => 3,
        }
    }

    /// Decodes `CUtensorMapSwizzle` (0 NONE, 1 32B, 2 64B, 3 128B); `None` for values this emulator
    /// does not know (the 128B-atom variants of newer drivers).
    pub fn from_tensor_map(value: u32) -> Option<Swizzle> {
        match value {
            0 => Some(Swizzle::None),
            1 => Some(Swizzle::B32),
            2 => Some(Swizzle::B64),
            3 => Some(Swizzle::B128),
            _ => None,
        }
    }

    /// The `CUtensorMapSwizzle` value of this mode.
    pub fn tensor_map_value(self) -> u32 {
        self.bits()
    }
}
