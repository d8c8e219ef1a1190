//! Tensor-core and matrix-load semantics: `ldmatrix`, `mma.sync.m16n8k16` and `wgmma.mma_async`, with
//! the shared-memory matrix descriptors and swizzles they read through.
//!
//! Everything here is a plain function over plain data, so the interpreter gathers the operands of a
//! warp (or warpgroup) collective, calls one function and scatters the result back:
//! - [`ldmatrix`]: the 16-byte rows the lanes addressed -> each lane's registers.
//! - [`mma_m16n8k16`]: the 32 lanes' A, B, C fragments -> their D fragments.
//! - [`wgmma`]: the 128 threads' accumulators (and A fragments, in the register form), the two
//!   descriptors and the CTA's shared memory -> updated accumulators.
//!
//! Fragment layouts follow the PTX ISA figures ("Matrix Fragments for mma.m16n8k16 with floating point
//! type", "Matrix Fragments for wgmma.mma_async.m64nNk16"), written once in [`fragment`]; shared-memory
//! layouts follow "Shared Memory Matrix Layout" / "Matrix Descriptor Format" (see [`desc`]).
//!
//! Arithmetic model (the ISA leaves the tensor cores' internal order unspecified): every element of D
//! is `acc = C` (or `+0.0` when wgmma's scale-d is false), then for k = 0, 1, ..., 15 in increasing
//! order `acc = acc + a[m][k] * b[k][n]`, in f32 with round-to-nearest-even. The product of two 16-bit
//! floats has at most 22 significant bits, so it is exact in f32 (and the step equals an f32 fused
//! multiply-add) except when a bf16 product falls below f32's normal range (|p| < 2^-126), where it is
//! rounded once more. Subnormal inputs and results are kept (no flush to zero). Hardware may differ
//! from this in the last bits of a sum; it never differs in which elements meet.
//!
//! Not modelled (each is an error, never a silent guess): a non-zero descriptor base offset under a
//! swizzle; element types other than bf16/f16 (tf32, fp8, integer); wgmma shapes other than
//! m64nNk16. The LBO of a swizzled K-major descriptor is ignored, as the ISA says ("assumed 1").
//!
//! For the interpreter's checks: [`wgmma_read_chunks`] lists the shared 16-byte chunks an operand
//! reads (to test them for initialisation and pending async writes); ldmatrix rows must be 16-byte
//! aligned (checked by the caller, which reads them).

pub mod desc;
pub mod fragment;
mod ldmatrix;
mod mma;
pub mod swizzle;
mod wgmma;

#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod wgmma_tests;

pub use desc::{Major, MatrixDesc};
pub use ldmatrix::ldmatrix;
pub use mma::mma_m16n8k16;
pub use swizzle::Swizzle;
pub use wgmma::{wgmma, wgmma_read_chunks, WgmmaA, WgmmaOp};

/// The element type of the A and B operands (`.bf16` or `.f16`); accumulators are always f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbType {
    Bf16,
    F16,
}

impl AbType {
    /// The value of one 16-bit element.
    pub fn to_f32(self, bits: u16) -> f32 {
        match self {
            AbType::Bf16 => half::bf16::from_bits(bits).to_f32(),
            AbType::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
}

/// Which multiplicand a wgmma check is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    A,
    B,
}

impl std::fmt::Display for Operand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Operand::A => "A",
            Operand::B => "B",
        })
    }
}

/// What went wrong inside a matrix instruction. It converts into [`crate::Error`] (so `?` works in
/// the interpreter), which [`crate::Error::at`] turns into a report with the site.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatrixError {
    #[error("ldmatrix: .x{num} is not a matrix count (1, 2 or 4)")]
    LdmatrixCount { num: usize },
    #[error("ldmatrix .x{num}: expected {} row addresses (8 per matrix), got {got}", 8 * num)]
    LdmatrixRows { num: usize, got: usize },
    #[error("wgmma: N = {n} is not a multiple of 8 in 8..=256")]
    WgmmaN { n: u32 },
    #[error("wgmma: the accumulator holds {got} f32, m64n{n} needs {} (128 threads x {})", 64 * n, n / 2)]
    Accumulators { n: u32, got: usize },
    #[error("wgmma: imm-trans-a is only allowed when A comes from a shared-memory descriptor")]
    TransposedRegisterA,
    #[error(
        "wgmma: descriptor of {operand} has base offset {base_offset}; only tiles whose swizzle pattern starts \
         on its repeat boundary (base offset 0) are modelled"
    )]
    BaseOffset { operand: Operand, base_offset: u8 },
    #[error(
        "wgmma: operand {operand} reads shared bytes {addr:#x}..{:#x} (16-byte chunk), outside the CTA's {smem_bytes} bytes \
         of shared memory (descriptor {desc:#018x})",
        addr + 16
    )]
    SharedOutOfRange { operand: Operand, addr: u32, smem_bytes: usize, desc: u64 },
}
