//! Helpers shared by the CPU op tests: random tensors with their stored values, the relative error
//! check, and NumPy-style index arithmetic for the naive references.

use engine::{DType, Device, Rng, Tensor};

/// Every float dtype the CPU computes in.
pub const FLOATS: [DType; 4] = [DType::F64, DType::F32, DType::BF16, DType::F16];

/// A tensor of `dtype` from f64 values, and the values as stored (rounded to `dtype`, widened
/// back): the reference must see exactly the inputs the op saw.
pub fn tensor(values: &[f64], dims: &[usize], dtype: DType) -> (Tensor, Vec<f64>) {
    let t = Tensor::from_f64s(values, dims, dtype, &Device::Cpu).expect("test tensor");
    let stored = t.to_f64_vec().expect("read back");
    (t, stored)
}

/// Normal(0, std) values.
pub fn randn(rng: &mut Rng, dims: &[usize], std: f64, dtype: DType) -> (Tensor, Vec<f64>) {
    let v: Vec<f64> = (0..dims.iter().product()).map(|_| std * rng.normal()).collect();
    tensor(&v, dims, dtype)
}

/// Uniform values in [lo, hi).
pub fn uniform(rng: &mut Rng, dims: &[usize], lo: f64, hi: f64, dtype: DType) -> (Tensor, Vec<f64>) {
    let v: Vec<f64> = (0..dims.iter().product()).map(|_| lo + (hi - lo) * rng.uniform()).collect();
    tensor(&v, dims, dtype)
}

/// A u32 index tensor.
pub fn indices(values: &[u32], dims: &[usize]) -> Tensor {
    Tensor::from_slice(values, dims, &Device::Cpu).expect("index tensor")
}

/// Random indices below `bound`.
pub fn random_indices(rng: &mut Rng, n: usize, bound: usize) -> Vec<u32> {
    (0..n).map(|_| rng.below(bound) as u32).collect()
}

pub use engine::relative_error as rel_err;

/// Asserts `out` has shape `dims` and is within `dtype`'s tolerance of `reference`.
pub fn check(what: &str, out: &Tensor, dims: &[usize], reference: &[f64], dtype: DType) {
    check_tol(what, out, dims, reference, dtype, dtype.tolerance());
}

/// `check` with an explicit tolerance (for ops whose f64 reference differs from a correctly rounded
/// result by more than one rounding, e.g. a long chain of f32 roundings).
pub fn check_tol(what: &str, out: &Tensor, dims: &[usize], reference: &[f64], dtype: DType, tol: f64) {
    assert_eq!(out.dims(), dims, "{what} ({dtype}): shape");
    assert_eq!(out.dtype(), dtype, "{what}: dtype");
    let err = rel_err(&out.to_f64_vec().expect("read back"), reference);
    assert!(err < tol, "{what} ({dtype}): relative error {err:e} >= {tol:e}");
}

/// Row-major strides of `dims`.
pub fn strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// The multi-index of flat position `flat` in `dims`.
pub fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; dims.len()];
    for i in (0..dims.len()).rev() {
        idx[i] = flat % dims[i];
        flat /= dims[i];
    }
    idx
}

/// Flat position in a tensor of `dims` (right-aligned against `idx`, size-1 axes broadcast) of the
/// output multi-index `idx`.
pub fn broadcast_flat(idx: &[usize], dims: &[usize]) -> usize {
    let pad = idx.len() - dims.len();
    let s = strides(dims);
    (0..dims.len()).map(|i| if dims[i] == 1 { 0 } else { idx[pad + i] * s[i] }).sum()
}

/// Runs `f` on a pool of `threads` workers.
pub fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(f)
}
