//! Unary maps, ops with a scalar and broadcasting binary ops (elementwise.cu, binary.cu).

use kernels_cuda::{BINARY, ELEMENTWISE};

use super::strided::{coalesce, StridedLayout};
use super::{float_suffix, nbytes};
use crate::backend::{BinaryOp, ScalarOp, UnaryOp};
use crate::cuda::launch::{kernel_args, launch, Grid};
use crate::cuda::profile::Cost;
use crate::cuda::CudaStorage;
use crate::Result;

// The integer codes mirror the enums at the top of elementwise.cu and binary.cu.
fn unary_code(op: UnaryOp) -> i32 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Exp => 1,
        UnaryOp::Log => 2,
        UnaryOp::Sqrt => 3,
        UnaryOp::Recip => 4,
        UnaryOp::Sqr => 5,
        UnaryOp::Abs => 6,
        UnaryOp::Tanh => 7,
        UnaryOp::Relu => 8,
        UnaryOp::Gelu => 9,
        UnaryOp::Silu => 10,
        UnaryOp::Sigmoid => 11,
    }
}

fn scalar_code(op: ScalarOp) -> i32 {
    match op {
        ScalarOp::Add => 0,
        ScalarOp::Mul => 1,
        ScalarOp::Pow => 2,
        ScalarOp::Max => 3,
        ScalarOp::Gt => 4,
    }
}

fn binary_code(op: BinaryOp) -> i32 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Maximum => 4,
        BinaryOp::Minimum => 5,
        BinaryOp::GeluGrad => 6,
        BinaryOp::SiluGrad => 7,
    }
}

/// Threads needed to cover `n` elements in 16-byte packs (elementwise.cu's `map_packed`).
fn pack_threads(n: u64, elem_size: usize) -> u64 {
    n.div_ceil((16 / elem_size) as u64)
}

pub(crate) fn unary(x: &CudaStorage, op: UnaryOp) -> Result<CudaStorage> {
    let sfx = float_suffix("unary", x.dtype())?;
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, x.dtype(), x.len())?;
    let (n, code) = (x.len() as u64, unary_code(op));
    if n == 0 {
        return Ok(out);
    }
    let (xp, yp) = (x.ptr(), out.ptr());
    let grid = Grid::linear(dev, pack_threads(n, x.dtype().size_in_bytes()));
    let cost = Cost { bytes: 2 * nbytes(x.len(), x.dtype()), flops: n };
    // SAFETY: unary_<T>(const T* x, T* y, u64 n, int op); x and y hold n elements of T.
    unsafe { launch(dev, &ELEMENTWISE, &format!("unary_{sfx}"), grid, &mut kernel_args![&xp, &yp, &n, &code], cost)? };
    Ok(out)
}

pub(crate) fn scalar(x: &CudaStorage, op: ScalarOp, s: f64) -> Result<CudaStorage> {
    let sfx = float_suffix("scalar", x.dtype())?;
    let dev = x.dev();
    let out = CudaStorage::uninit(dev, x.dtype(), x.len())?;
    let (n, code, s) = (x.len() as u64, scalar_code(op), s as f32);
    if n == 0 {
        return Ok(out);
    }
    let (xp, yp) = (x.ptr(), out.ptr());
    let grid = Grid::linear(dev, pack_threads(n, x.dtype().size_in_bytes()));
    let cost = Cost { bytes: 2 * nbytes(x.len(), x.dtype()), flops: n };
    // SAFETY: scalar_<T>(const T* x, T* y, u64 n, int op, float s); x and y hold n elements of T.
    unsafe { launch(dev, &ELEMENTWISE, &format!("scalar_{sfx}"), grid, &mut kernel_args![&xp, &yp, &n, &code, &s], cost)? };
    Ok(out)
}

pub(crate) fn binary(
    a: &CudaStorage,
    a_strides: &[usize],
    b: &CudaStorage,
    b_strides: &[usize],
    out_dims: &[usize],
    op: BinaryOp,
) -> Result<CudaStorage> {
    const OP: &str = "binary";
    let sfx = float_suffix(OP, a.dtype())?;
    let dev = a.dev();
    let n: usize = out_dims.iter().product();
    let out = CudaStorage::uninit(dev, a.dtype(), n)?;
    if n == 0 {
        return Ok(out);
    }
    let code = binary_code(op);
    let (ap, bp, yp) = (a.ptr(), b.ptr(), out.ptr());
    let cost = Cost { bytes: nbytes(a.len() + b.len() + n, a.dtype()), flops: n as u64 };
    let (dims, strides) = coalesce(out_dims, &[a_strides, b_strides]);
    let contiguous = dims.len() <= 1 && strides.iter().all(|s| s.iter().all(|&x| x == 1));
    if contiguous {
        let n = n as u64;
        let grid = Grid::linear(dev, pack_threads(n, a.dtype().size_in_bytes()));
        // SAFETY: binary_<T>(const T* a, const T* b, T* y, u64 n, int op); all three hold n elements.
        unsafe { launch(dev, &BINARY, &format!("binary_{sfx}"), grid, &mut kernel_args![&ap, &bp, &yp, &n, &code], cost)? };
        return Ok(out);
    }
    let layout = StridedLayout::new(OP, &dims, &strides[0], Some(&strides[1]))?;
    let grid = Grid::linear(dev, n as u64);
    if layout.fits_u32(n as u64) {
        let n = n as u32;
        // SAFETY: binary_bcast_<T>(const T* a, const T* b, T* y, u32 n, StridedLayout l, int op);
        // y holds n elements, and the strides (from the op layer's broadcast of a and b to the
        // output shape) keep every offset inside a and b.
        unsafe { launch(dev, &BINARY, &format!("binary_bcast_{sfx}"), grid, &mut kernel_args![&ap, &bp, &yp, &n, &layout, &code], cost)? };
    } else {
        let n = n as u64;
        // SAFETY: as above, with binary_bcast64_<T>(..., u64 n, StridedLayout l, int op).
        unsafe { launch(dev, &BINARY, &format!("binary_bcast64_{sfx}"), grid, &mut kernel_args![&ap, &bp, &yp, &n, &layout, &code], cost)? };
    }
    Ok(out)
}
