//! What the CUDA integration tests share: the GPU lock (tests in one binary run on threads of one
//! process, and the allocator counters one test reads must not be moved by another), seeded random
//! inputs on the CPU, and the relative-error-by-norm comparison against a CPU reference.
// Each test binary uses a different subset of these.
#![allow(dead_code)]

use std::sync::{Mutex, MutexGuard};

use engine::{cuda, DType, Device, Rng, Tensor};

static GPU: Mutex<()> = Mutex::new(());

/// The CUDA device and the GPU lock, with device allocations poisoned (NaN bytes), or `None` (after
/// the `skipped:` line) without a GPU.
pub fn gpu() -> Option<(Device, MutexGuard<'static, ()>)> {
    let dev = cuda::test_device()?;
    let guard = GPU.lock().unwrap_or_else(|p| p.into_inner());
    cuda::set_poison(true);
    Some((dev, guard))
}

// ---- inputs ---------------------------------------------------------------------------------------

/// Standard normal values of `dtype` on the CPU.
pub fn normal(shape: &[usize], dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::randn(shape.to_vec(), 0.0, 1.0, dtype, &Device::Cpu, rng).unwrap()
}

/// Uniform values in [lo, hi) of `dtype` on the CPU.
pub fn uniform(shape: &[usize], lo: f64, hi: f64, dtype: DType, rng: &mut Rng) -> Tensor {
    Tensor::rand_uniform(shape.to_vec(), lo, hi, dtype, &Device::Cpu, rng).unwrap()
}

/// Random u32 indices below `below` on the CPU.
pub fn indices(shape: &[usize], below: usize, rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<u32> = (0..n).map(|_| rng.below(below) as u32).collect();
    Tensor::from_slice(&v, shape.to_vec(), &Device::Cpu).unwrap()
}

// ---- comparison -----------------------------------------------------------------------------------

/// The relative error by norm (`engine::relative_error`) of two tensors read back as f64 from any
/// device.
pub fn rel_err(out: &Tensor, reference: &Tensor) -> f64 {
    engine::relative_error(&out.to_f64_vec().unwrap(), &reference.to_f64_vec().unwrap())
}

/// Asserts `gpu` has the reference's shape and is within `dtype`'s tolerance of it; `dtype` is the
/// one whose rounding bounds the error (the input dtype where the output is wider).
pub fn assert_close(what: &str, dtype: DType, gpu: &Tensor, reference: &Tensor) {
    assert_eq!(gpu.shape(), reference.shape(), "{what}: shapes differ");
    let err = rel_err(gpu, reference);
    let tol = dtype.tolerance();
    assert!(err < tol, "{what} ({dtype}): relative error {err:e} is not below {tol:e}");
}

/// `assert_close`, and `gpu` must also be of `dtype` (for ops that return their input dtype).
pub fn assert_close_in_dtype(what: &str, dtype: DType, gpu: &Tensor, reference: &Tensor) {
    assert_eq!(gpu.dtype(), dtype, "{what}: dtype");
    assert_close(what, dtype, gpu, reference);
}
