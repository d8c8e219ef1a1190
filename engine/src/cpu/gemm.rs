//! The CPU reference of the GEMM family: a fused-epilogue GEMM and the grouped GEMM (see
//! `GemmLayout` / `GroupedLayout` in backend.rs). Inputs are widened to f64, every dot product is
//! summed in f64 in index order and the result is rounded once to the output dtype, so it is the
//! yardstick the tensor-core kernels (f32 accumulation) are measured against. Straight loops: these
//! serve tests and small shapes, not speed.

use super::elem::indices;
use super::elementwise::gelu_tanh;
use crate::backend::{BackendStorage, GemmForm, GemmLayout, GroupedLayout};
use crate::{CpuStorage, Error, Result};

fn f64s(op: &'static str, s: &CpuStorage) -> Result<Vec<f64>> {
    match s.cast(crate::DType::F64)? {
        CpuStorage::F64(v) => Ok(v),
        other => Err(Error::DType { op, dtype: other.dtype(), detail: ": cast to f64 failed".into() }),
    }
}

/// Element (i, j) of op(a)·op(b) for an m x n x k product in `form`, a and b row-major.
fn dot(a: &[f64], b: &[f64], form: GemmForm, m: usize, n: usize, k: usize, i: usize, j: usize) -> f64 {
    let mut acc = 0.0;
    for p in 0..k {
        let av = if form == GemmForm::TN { a[p * m + i] } else { a[i * k + p] };
        let bv = if form == GemmForm::NT { b[j * k + p] } else { b[p * n + j] };
        acc += av * bv;
    }
    acc
}

fn check_len(op: &'static str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape(op, format!("{what} holds {got} elements, expected {want}")));
    }
    Ok(())
}

pub(super) fn gemm(a: &CpuStorage, b: &CpuStorage, bias: Option<&CpuStorage>, residual: Option<&CpuStorage>, l: &GemmLayout) -> Result<CpuStorage> {
    const OP: &str = "gemm";
    let (m, n, k) = (l.m, l.n, l.k);
    check_len(OP, "a", a.len(), m * k)?;
    check_len(OP, "b", b.len(), k * n)?;
    let (a, b) = (f64s(OP, a)?, f64s(OP, b)?);
    let bias = bias.map(|s| f64s(OP, s)).transpose()?;
    let residual = residual.map(|s| f64s(OP, s)).transpose()?;
    if let Some(v) = &bias {
        check_len(OP, "bias", v.len(), n)?;
    }
    if let Some(v) = &residual {
        check_len(OP, "residual", v.len(), m * n)?;
    }
    let mut out = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut v = l.alpha as f64 * dot(&a, &b, l.form, m, n, k, i, j);
            if let Some(bias) = &bias {
                v += bias[j];
            }
            if l.gelu {
                v = gelu_tanh(v);
            }
            if let Some(r) = &residual {
                v += r[i * n + j];
            }
            out[i * n + j] = v;
        }
    }
    CpuStorage::F64(out).cast(l.out_dtype)
}

/// Start offsets of each group along the grouped extent, checking the counts cover it exactly.
fn group_starts(op: &'static str, counts: &[u32], extent: usize) -> Result<Vec<usize>> {
    let mut starts = Vec::with_capacity(counts.len() + 1);
    let mut at = 0usize;
    for &c in counts {
        starts.push(at);
        at += c as usize;
    }
    if at != extent {
        return Err(Error::shape(op, format!("group counts sum to {at}, but the grouped extent is {extent}")));
    }
    starts.push(at);
    Ok(starts)
}

pub(super) fn grouped_matmul(a: &CpuStorage, b: &CpuStorage, counts: &CpuStorage, l: &GroupedLayout) -> Result<CpuStorage> {
    const OP: &str = "grouped_matmul";
    let counts = indices(OP, counts)?;
    check_len(OP, "counts", counts.len(), l.groups)?;
    let (m, n, k, g) = (l.m, l.n, l.k, l.groups);
    check_len(OP, "a", a.len(), m * k)?;
    let dtype = a.dtype();
    let (a, b) = (f64s(OP, a)?, f64s(OP, b)?);
    let out = match l.form {
        GemmForm::NN | GemmForm::NT => {
            check_len(OP, "b", b.len(), g * k * n)?;
            let starts = group_starts(OP, counts, m)?;
            let mut out = vec![0.0f64; m * n];
            for e in 0..g {
                let rows = starts[e + 1] - starts[e];
                let ae = &a[starts[e] * k..starts[e + 1] * k];
                let be = &b[e * k * n..(e + 1) * k * n];
                for i in 0..rows {
                    for j in 0..n {
                        out[(starts[e] + i) * n + j] = dot(ae, be, l.form, rows, n, k, i, j);
                    }
                }
            }
            out
        }
        GemmForm::TN => {
            check_len(OP, "b", b.len(), k * n)?;
            let starts = group_starts(OP, counts, k)?;
            let mut out = vec![0.0f64; g * m * n];
            for e in 0..g {
                let ks = starts[e + 1] - starts[e];
                let ae = &a[starts[e] * m..starts[e + 1] * m];
                let be = &b[starts[e] * n..starts[e + 1] * n];
                for i in 0..m {
                    for j in 0..n {
                        out[(e * m + i) * n + j] = dot(ae, be, GemmForm::TN, m, n, ks, i, j);
                    }
                }
            }
            out
        }
    };
    CpuStorage::F64(out).cast(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DType;

    fn f32s(s: &CpuStorage) -> Vec<f32> {
        match s.cast(DType::F32).unwrap() {
            CpuStorage::F32(v) => v,
            _ => unreachable!(),
        }
    }

    #[test]
    fn grouped_rows_use_each_groups_matrix_and_skip_empty_groups() {
        // Three groups of 1, 0 and 2 rows; k = 2, n = 2; b[g] = (g + 1) · identity.
        let a = CpuStorage::F32(vec![1., 2., 3., 4., 5., 6.]);
        let b = CpuStorage::F32(vec![1., 0., 0., 1., 2., 0., 0., 2., 3., 0., 0., 3.]);
        let counts = CpuStorage::U32(vec![1, 0, 2]);
        let l = GroupedLayout { groups: 3, m: 3, n: 2, k: 2, form: GemmForm::NN };
        let out = grouped_matmul(&a, &b, &counts, &l).unwrap();
        assert_eq!(f32s(&out), vec![1., 2., 9., 12., 15., 18.]);
        // NT with the same (symmetric) matrices gives the same answer.
        let out = grouped_matmul(&a, &b, &counts, &GroupedLayout { form: GemmForm::NT, ..l }).unwrap();
        assert_eq!(f32s(&out), vec![1., 2., 9., 12., 15., 18.]);
    }

    #[test]
    fn grouped_reduction_sums_each_groups_rows_and_zeroes_empty_groups() {
        // a [k=3, m=1] = [1, 2, 3], b [3, n=2]; groups of 2, 0, 1 rows of k.
        let a = CpuStorage::F32(vec![1., 2., 3.]);
        let b = CpuStorage::F32(vec![1., 10., 2., 20., 3., 30.]);
        let counts = CpuStorage::U32(vec![2, 0, 1]);
        let l = GroupedLayout { groups: 3, m: 1, n: 2, k: 3, form: GemmForm::TN };
        let out = grouped_matmul(&a, &b, &counts, &l).unwrap();
        assert_eq!(f32s(&out), vec![5., 50., 0., 0., 9., 90.]);
    }

    #[test]
    fn grouped_counts_must_cover_the_extent() {
        let a = CpuStorage::F32(vec![0.; 4]);
        let b = CpuStorage::F32(vec![0.; 8]);
        let l = GroupedLayout { groups: 2, m: 2, n: 2, k: 2, form: GemmForm::NN };
        assert!(grouped_matmul(&a, &b, &CpuStorage::U32(vec![1, 2]), &l).is_err());
        assert!(grouped_matmul(&a, &b, &CpuStorage::U32(vec![1]), &l).is_err());
    }

    #[test]
    fn fused_epilogue_applies_scale_bias_gelu_residual_in_order() {
        // [1 x 2] · [2 x 1] = 3; alpha 2 -> 6; + bias 1 -> 7; gelu(7) ~ 7; + residual 0.5.
        let a = CpuStorage::F32(vec![1., 1.]);
        let b = CpuStorage::F32(vec![1., 2.]);
        let l = GemmLayout { m: 1, n: 1, k: 2, form: GemmForm::NN, alpha: 2.0, gelu: true, out_dtype: DType::F64 };
        let out = gemm(&a, &b, Some(&CpuStorage::F32(vec![1.])), Some(&CpuStorage::F32(vec![0.5])), &l).unwrap();
        let CpuStorage::F64(v) = out else { panic!("f64 output requested") };
        assert!((v[0] - (gelu_tanh(7.0) + 0.5)).abs() < 1e-12);
        // Forms: a [k=2, m=1] transposed and b [n=1, k=2] transposed give the same product.
        for form in [GemmForm::TN, GemmForm::NT] {
            let l = GemmLayout { form, alpha: 1.0, gelu: false, ..l };
            let CpuStorage::F64(v) = gemm(&a, &b, None, None, &l).unwrap() else { panic!() };
            assert_eq!(v, vec![3.0]);
        }
        // gelu(-3) is small and negative, (0.5·x·(1 + tanh(...))).
        assert!(gelu_tanh(-3.0) < 0.0 && gelu_tanh(-3.0) > -0.01);
    }
}
