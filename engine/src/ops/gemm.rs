//! The GEMM family as engine ops: a GEMM with a fused epilogue, and the grouped GEMM that MoE
//! layers run their experts with. On CUDA they run the tensor-core kernels (gemm_sm80 / gemm_sm90,
//! bf16 or f16 inputs); on the CPU the f64 reference in cpu/gemm.rs.

use super::{check_float, check_index, check_same_device, check_same_dtype};
use crate::backend::{BackendStorage, GemmForm, GemmLayout, GroupedLayout};
use crate::{CpuStorage, DType, Error, Result, Shape, Storage, Tensor};

/// The fused epilogue of [`gemm`]: `out = residual + gelu?(alpha · product + bias)`.
#[derive(Debug, Clone, Copy)]
pub struct GemmEpilogue<'a> {
    pub alpha: f32,
    /// [n], in the output dtype.
    pub bias: Option<&'a Tensor>,
    pub gelu: bool,
    /// [m, n], in the output dtype.
    pub residual: Option<&'a Tensor>,
    /// The output dtype; None keeps the inputs' dtype. bf16 / f16 inputs may also write f32.
    pub out_dtype: Option<DType>,
}

impl Default for GemmEpilogue<'_> {
    fn default() -> Self {
        GemmEpilogue { alpha: 1.0, bias: None, gelu: false, residual: None, out_dtype: None }
    }
}

fn cpu<'a>(op: &'static str, t: &'a Tensor, like: &Tensor) -> Result<&'a CpuStorage> {
    match t.storage() {
        Storage::Cpu(s) => Ok(s),
        _ => Err(Error::DeviceMismatch { op, lhs: like.device(), rhs: t.device() }),
    }
}

fn cuda<'a>(op: &'static str, t: &'a Tensor, like: &Tensor) -> Result<&'a crate::cuda::CudaStorage> {
    match t.storage() {
        Storage::Cuda(s) => Ok(s),
        _ => Err(Error::DeviceMismatch { op, lhs: like.device(), rhs: t.device() }),
    }
}

fn rank2(op: &'static str, what: &str, t: &Tensor) -> Result<(usize, usize)> {
    match t.dims() {
        &[r, c] => Ok((r, c)),
        d => Err(Error::shape(op, format!("{what} must be rank 2, got {d:?}"))),
    }
}

/// `residual + gelu?(alpha · op(a)·op(b) + bias)` for the operand layout `form` (see
/// [`GemmForm`]): a [m, k] ([k, m] for TN), b [k, n] ([n, k] for NT); output [m, n].
pub fn gemm(a: &Tensor, b: &Tensor, form: GemmForm, ep: &GemmEpilogue) -> Result<Tensor> {
    const OP: &str = "gemm";
    check_same_device(OP, a, b)?;
    check_same_dtype(OP, a, b)?;
    check_float(OP, a)?;
    let (ar, ac) = rank2(OP, "a", a)?;
    let (br, bc) = rank2(OP, "b", b)?;
    let (m, k) = if form == GemmForm::TN { (ac, ar) } else { (ar, ac) };
    let (bk, n) = if form == GemmForm::NT { (bc, br) } else { (br, bc) };
    if k != bk {
        return Err(Error::shape(OP, format!("inner sizes differ: a {:?}, b {:?} in form {form:?}", a.dims(), b.dims())));
    }
    let out_dtype = ep.out_dtype.unwrap_or(a.dtype());
    if out_dtype != a.dtype() && !(out_dtype == DType::F32 && matches!(a.dtype(), DType::BF16 | DType::F16)) {
        return Err(Error::DType { op: OP, dtype: out_dtype, detail: format!(" output for {} inputs (the input dtype, or f32 for bf16 / f16)", a.dtype()) });
    }
    for (what, t, want) in [("bias", ep.bias, vec![n]), ("residual", ep.residual, vec![m, n])] {
        if let Some(t) = t {
            check_same_device(OP, a, t)?;
            if t.dims() != want.as_slice() || t.dtype() != out_dtype {
                return Err(Error::shape(OP, format!("{what} must be {want:?} of {out_dtype}, got {:?} of {}", t.dims(), t.dtype())));
            }
        }
    }
    let l = GemmLayout { m, n, k, form, alpha: ep.alpha, gelu: ep.gelu, out_dtype };
    let s = match a.storage() {
        Storage::Cpu(x) => {
            let bias = ep.bias.map(|t| cpu(OP, t, a)).transpose()?;
            let residual = ep.residual.map(|t| cpu(OP, t, a)).transpose()?;
            Storage::Cpu(x.gemm(cpu(OP, b, a)?, bias, residual, &l)?)
        }
        Storage::Cuda(x) => {
            let bias = ep.bias.map(|t| cuda(OP, t, a)).transpose()?;
            let residual = ep.residual.map(|t| cuda(OP, t, a)).transpose()?;
            Storage::Cuda(x.gemm(cuda(OP, b, a)?, bias, residual, &l)?)
        }
    };
    Ok(Tensor::from_storage(s, Shape::new(vec![m, n]), out_dtype))
}

/// A grouped GEMM over `counts.len()` groups (u32 counts on the tensors' device; see
/// [`GroupedLayout`] for the forms): NN / NT: a [m, k], b [g, k, n] / [g, n, k] -> [m, n];
/// TN: a [k, m], b [k, n] -> [g, m, n]. On CUDA the group table is built on the device: no sync.
pub fn grouped_matmul(a: &Tensor, b: &Tensor, counts: &Tensor, form: GemmForm) -> Result<Tensor> {
    const OP: &str = "grouped_matmul";
    check_same_device(OP, a, b)?;
    check_same_device(OP, a, counts)?;
    check_same_dtype(OP, a, b)?;
    check_float(OP, a)?;
    check_index(OP, counts)?;
    let groups = match counts.dims() {
        &[g] => g,
        d => return Err(Error::shape(OP, format!("counts must be rank 1, got {d:?}"))),
    };
    let (ar, ac) = rank2(OP, "a", a)?;
    let bad = || Error::shape(OP, format!("a {:?} and b {:?} do not fit form {form:?} with {groups} groups", a.dims(), b.dims()));
    let (l, out) = match (form, b.dims()) {
        (GemmForm::TN, &[bk, n]) if bk == ar => (GroupedLayout { groups, m: ac, n, k: ar, form }, vec![groups, ac, n]),
        (GemmForm::NN, &[g, bk, n]) | (GemmForm::NT, &[g, n, bk]) if g == groups && bk == ac => {
            (GroupedLayout { groups, m: ar, n, k: ac, form }, vec![ar, n])
        }
        _ => return Err(bad()),
    };
    let s = match a.storage() {
        Storage::Cpu(x) => Storage::Cpu(x.grouped_matmul(cpu(OP, b, a)?, cpu(OP, counts, a)?, &l)?),
        Storage::Cuda(x) => Storage::Cuda(x.grouped_matmul(cuda(OP, b, a)?, cuda(OP, counts, a)?, &l)?),
    };
    Ok(Tensor::from_storage(s, Shape::new(out), a.dtype()))
}
