//! `mma.sync.aligned.m16n8k16.row.col.f32.{bf16.bf16,f16.f16}.f32`: one warp computes
//! D[16 x 8] = A[16 x 16] · B[16 x 8] + C, every operand spread over the 32 lanes' registers in the
//! layouts of [`super::fragment`]. The arithmetic follows the model in the module docs.

use super::fragment::{a_m16k16, b_k16n8, c_m16n8, half_at};
use super::AbType;

/// One warp-wide m16n8k16 multiply-accumulate: `a[lane]` (4 registers), `b[lane]` (2), `c[lane]`
/// (4 f32) in, `d[lane]` (4 f32) out.
pub fn mma_m16n8k16(ty: AbType, a: &[[u32; 4]; 32], b: &[[u32; 2]; 32], c: &[[f32; 4]; 32]) -> [[f32; 4]; 32] {
    let mut am = [[0f32; 16]; 16];
    let mut bm = [[0f32; 8]; 16];
    let mut cm = [[0f32; 8]; 16];
    for lane in 0..32 {
        for i in 0..8 {
            let (row, k) = a_m16k16(lane, i);
            am[row][k] = ty.to_f32(half_at(&a[lane], i));
        }
        for (i, &cv) in c[lane].iter().enumerate() {
            let (k, n) = b_k16n8(lane, i);
            bm[k][n] = ty.to_f32(half_at(&b[lane], i));
            let (row, n) = c_m16n8(lane, i);
            cm[row][n] = cv;
        }
    }
    let mut d = [[0f32; 4]; 32];
    for (lane, regs) in d.iter_mut().enumerate() {
        for (i, out) in regs.iter_mut().enumerate() {
            let (row, n) = c_m16n8(lane, i);
            *out = (0..16).fold(cm[row][n], |acc, k| acc + am[row][k] * bm[k][n]);
        }
    }
    d
}
