//! `ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16`: a warp loads one, two or four 8 x 8
//! matrices of 16-bit elements from shared memory and spreads them over its registers.
//!
//! Lanes 8i..8i+7 supply the addresses of the 8 rows (16 bytes each) of matrix i (PTX ISA, ldmatrix);
//! the addresses of the other lanes are ignored. Matrix i lands in destination register i of every
//! lane: without `.trans`, lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 (the mma A/B fragment
//! order); with `.trans` it receives the same positions of the transposed matrix, i.e. column l/4,
//! rows 2(l%4) and 2(l%4)+1. The lower-indexed element goes to the low half of the register.
//!
//! The interpreter reads the rows (each 16-byte aligned, inside shared memory: its checks) and passes
//! them in lane order; this function only redistributes.

use super::MatrixError;

/// One `ldmatrix`: `rows[8i + r]` is row r of matrix i, as addressed by lane 8i + r, for
/// `i < num` (`num` = 1, 2 or 4 from `.x1/.x2/.x4`). Returns each lane's destination registers; only
/// the first `num` of the four are defined (the rest are 0).
pub fn ldmatrix(rows: &[[u16; 8]], num: usize, trans: bool) -> Result<[[u32; 4]; 32], MatrixError> {
    if !matches!(num, 1 | 2 | 4) {
        return Err(MatrixError::LdmatrixCount { num });
    }
    if rows.len() != 8 * num {
        return Err(MatrixError::LdmatrixRows { num, got: rows.len() });
    }
    let mut out = [[0u32; 4]; 32];
    for (lane, regs) in out.iter_mut().enumerate() {
        let (g, t) = (lane / 4, lane % 4);
        for (m, reg) in regs.iter_mut().enumerate().take(num) {
            let matrix = &rows[8 * m..8 * m + 8];
            let (lo, hi) = if trans { (matrix[2 * t][g], matrix[2 * t + 1][g]) } else { (matrix[g][2 * t], matrix[g][2 * t + 1]) };
            *reg = lo as u32 | (hi as u32) << 16;
        }
    }
    Ok(out)
}
