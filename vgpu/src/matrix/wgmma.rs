//! `wgmma.mma_async.sync.aligned.m64nNk16.f32.{bf16.bf16,f16.f16}`: one warpgroup (128 threads)
//! computes D[64 x N] = A[64 x 16] · B[16 x N] (+ D), N = 8, 16, ..., 256.
//!
//! Operands: A from a shared-memory descriptor or from registers (4 per thread, the m16n8k16 A layout
//! per warp: [`super::fragment::a_m64k16`]); B always from a descriptor. `imm-trans-a/b` = 1 means
//! the operand is stored MN-major, 0 K-major ([`super::desc`] has the layouts). `scale-d` false
//! ignores the incoming accumulators (D = A·B); `imm-scale-a/b` = -1 negates that operand. D lives in
//! N/2 f32 registers per thread ([`super::fragment::d_m64`]).
//!
//! This is the multiply itself, done at once. The asynchronous part (wgmma.fence / commit_group /
//! wait_group, and the rule that the accumulators and shared operands may not be touched while the
//! group is in flight) is the interpreter's: it may call this at issue or at wait time. Arithmetic:
//! the model in the module docs, per k16 instruction.

use super::desc::{Major, MatrixDesc};
use super::fragment::{a_m64k16, d_m64, half_at};
use super::{AbType, MatrixError, Operand};

/// The instruction's static shape and modifiers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WgmmaOp {
    /// N of m64nNk16.
    pub n: u32,
    pub ty: AbType,
    /// imm-trans-a: A stored MN-major (descriptor form only).
    pub trans_a: bool,
    /// imm-trans-b: B stored MN-major.
    pub trans_b: bool,
    /// The scale-d predicate: false computes D = A·B, true D = A·B + D.
    pub scale_d: bool,
    /// imm-scale-a = -1.
    pub negate_a: bool,
    /// imm-scale-b = -1.
    pub negate_b: bool,
}

/// Where A comes from.
#[derive(Clone, Copy, Debug)]
pub enum WgmmaA<'a> {
    /// A 64-bit matrix descriptor (the register's value).
    Desc(u64),
    /// Each warpgroup thread's four A registers, in thread order 0..128.
    Regs(&'a [[u32; 4]; 128]),
}

const M: usize = 64;
const K: usize = 16;

/// Runs one wgmma. `smem` is the CTA's shared memory, indexed by shared address (descriptor addresses
/// are offsets into it). `acc` holds the 128 threads' accumulators thread-major:
/// `acc[thread * (n/2) + i]` is register d_i of warpgroup thread `thread`.
pub fn wgmma(op: &WgmmaOp, a: WgmmaA<'_>, b_desc: u64, smem: &[u8], acc: &mut [f32]) -> Result<(), MatrixError> {
    let n = op.n as usize;
    if op.n == 0 || op.n > 256 || !op.n.is_multiple_of(8) {
        return Err(MatrixError::WgmmaN { n: op.n });
    }
    if acc.len() != 128 * (n / 2) {
        return Err(MatrixError::Accumulators { n: op.n, got: acc.len() });
    }
    let sign = |neg: bool| if neg { -1.0f32 } else { 1.0 };
    // am[m][k], bm[n][k]: both with k contiguous, signs folded in (negation is exact).
    let mut am = match a {
        WgmmaA::Desc(raw) => read_operand(op, Operand::A, raw, M, smem)?,
        WgmmaA::Regs(regs) => {
            if op.trans_a {
                return Err(MatrixError::TransposedRegisterA);
            }
            let mut am = vec![0f32; M * K];
            for (thread, r) in regs.iter().enumerate() {
                for i in 0..8 {
                    let (row, k) = a_m64k16(thread, i);
                    am[row * K + k] = op.ty.to_f32(half_at(r, i));
                }
            }
            am
        }
    };
    am.iter_mut().for_each(|x| *x *= sign(op.negate_a));
    let mut bm = read_operand(op, Operand::B, b_desc, n, smem)?;
    bm.iter_mut().for_each(|x| *x *= sign(op.negate_b));

    // D row-major; each element still sums in the model's order (D, then k ascending), but a row's
    // N columns advance together, so the loop vectorises instead of waiting on one chain.
    let half_n = n / 2;
    let mut dm = vec![0f32; M * n];
    if op.scale_d {
        for (thread, regs) in acc.chunks_exact(half_n).enumerate() {
            for (i, &d) in regs.iter().enumerate() {
                let (row, col) = d_m64(thread, i);
                dm[row * n + col] = d;
            }
        }
    }
    let mut bt = vec![0f32; K * n];
    for (col, bk) in bm.chunks_exact(K).enumerate() {
        for (k, &b) in bk.iter().enumerate() {
            bt[k * n + col] = b;
        }
    }
    for (drow, arow) in dm.chunks_exact_mut(n).zip(am.chunks_exact(K)) {
        for (&a, brow) in arow.iter().zip(bt.chunks_exact(n)) {
            drow.iter_mut().zip(brow).for_each(|(d, &b)| *d += a * b);
        }
    }
    for (thread, regs) in acc.chunks_exact_mut(half_n).enumerate() {
        for (i, d) in regs.iter_mut().enumerate() {
            let (row, col) = d_m64(thread, i);
            *d = dm[row * n + col];
        }
    }
    Ok(())
}

/// Reads a `rows` x 16 operand through its descriptor into a row-major [rows][16] f32 matrix.
fn read_operand(op: &WgmmaOp, operand: Operand, raw: u64, rows: usize, smem: &[u8]) -> Result<Vec<f32>, MatrixError> {
    let (desc, major) = checked_desc(op, operand, raw)?;
    let mut out = vec![0f32; rows * K];
    for (addr, mn, k) in chunks(desc, major, rows as u32) {
        let at = addr as usize;
        let bytes = smem.get(at..at + 16).ok_or(MatrixError::SharedOutOfRange { operand, addr, smem_bytes: smem.len(), desc: raw })?;
        for (e, pair) in bytes.chunks_exact(2).enumerate() {
            let (mn, k) = if major == Major::K { (mn as usize, k as usize + e) } else { (mn as usize + e, k as usize) };
            out[mn * K + k] = op.ty.to_f32(u16::from_le_bytes([pair[0], pair[1]]));
        }
    }
    Ok(out)
}

fn checked_desc(op: &WgmmaOp, operand: Operand, raw: u64) -> Result<(MatrixDesc, Major), MatrixError> {
    let desc = MatrixDesc::decode(raw);
    if desc.base_offset != 0 && desc.swizzle != super::Swizzle::None {
        return Err(MatrixError::BaseOffset { operand, base_offset: desc.base_offset });
    }
    let trans = if operand == Operand::A { op.trans_a } else { op.trans_b };
    Ok((desc, if trans { Major::Mn } else { Major::K }))
}

/// The 16-byte chunks of a `rows` x 16 operand as (shared address, first mn, first k): every
/// layout keeps 8 elements contiguous along the major dimension (k for K-major, mn for MN-major),
/// and swizzles move whole 16-byte chunks, so each chunk holds 8 consecutive elements.
fn chunks(desc: MatrixDesc, major: Major, rows: u32) -> impl Iterator<Item = (u32, u32, u32)> {
    (0..2 * rows).map(move |c| {
        let (mn, k) = if major == Major::K { (c / 2, 8 * (c % 2)) } else { (8 * (c / 16), c % 16) };
        (desc.element_addr(major, mn, k), mn, k)
    })
}

/// The 16-byte shared-memory chunks one operand of a wgmma reads, for the interpreter's checks
/// (initialised memory, async-proxy ordering). `rows` is 64 for A and N for B. An operand the
/// instruction would reject gives its error here too.
pub fn wgmma_read_chunks(op: &WgmmaOp, operand: Operand, raw: u64, rows: u32) -> Result<Vec<u32>, MatrixError> {
    let (desc, major) = checked_desc(op, operand, raw)?;
    Ok(chunks(desc, major, rows).map(|(addr, _, _)| addr).collect())
}
