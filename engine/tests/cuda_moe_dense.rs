//! The dense-training MoE MLP on CUDA (moe_dense.cu and the matmuls around it) against the CPU
//! reference in f64, forward (y and the saved u, g) and backward (dx, dw1, dw2, dp).
//!
//! Shapes cover both CUDA paths: the fused kernels (16-bit, d % 8 == 0, E·f % 8 == 0, f even) with
//! token counts and widths that are not multiples of the 128 x 128 tile, and the fallback (f32,
//! odd f, d not a multiple of 8). Inputs are fresh seeded random values in the dtype under test; the
//! reference runs on the same values widened to f64. Every device allocation is poisoned with NaN
//! bytes, so an element a kernel forgot to write fails. Relative error by norm below the dtype's
//! tolerance: f32 1e-5, f16 2e-3, bf16 1e-2. Without a GPU each test prints one `skipped:` line.

mod gpu_support;

use engine::ops::{self, MoeDenseSaved};
use engine::{DType, Device, Rng, Tensor};
use gpu_support::{assert_close_in_dtype, gpu};

/// (tokens, d, experts, width): fused-path shapes first, then fallback-only ones.
const SHAPES: [(usize, usize, usize, usize); 6] = [(203, 72, 3, 96), (130, 64, 5, 40), (1, 8, 2, 8), (300, 136, 4, 130), (37, 13, 3, 5), (66, 24, 7, 3)];

struct Inputs {
    x: Tensor,
    w1: Tensor,
    w2: Tensor,
    p: Tensor,
    dy: Tensor,
}

/// Values in `dtype` on the CPU: weights scaled so that u = x·W1ᵀ is O(1) (GeLU's curved part).
fn inputs(rng: &mut Rng, (tokens, d, experts, width): (usize, usize, usize, usize), dtype: DType) -> Inputs {
    let h = experts * width;
    let randn = |rng: &mut Rng, dims: &[usize], std: f64| Tensor::randn(dims.to_vec(), 0.0, std, dtype, &Device::Cpu, rng).unwrap();
    let logits = Tensor::randn(vec![tokens, experts], 0.0, 1.0, DType::F64, &Device::Cpu, rng).unwrap();
    let p = ops::cast(&ops::softmax(&logits).unwrap(), dtype).unwrap();
    Inputs {
        x: randn(rng, &[tokens, d], 1.0),
        w1: randn(rng, &[h, d], 1.0 / (d as f64).sqrt()),
        w2: randn(rng, &[h, d], 1.0 / (h as f64).sqrt()),
        p,
        dy: randn(rng, &[tokens, d], 1.0),
    }
}

fn on(dev: &Device, t: &Tensor) -> Tensor {
    t.to_device(dev).unwrap()
}

fn wide(t: &Tensor) -> Tensor {
    ops::cast(t, DType::F64).unwrap()
}

fn check_shape(dev: &Device, dtype: DType, shape: (usize, usize, usize, usize), rng: &mut Rng) {
    let what = |name: &str| format!("moe_dense_mlp {name}, (T, d, E, f) = {shape:?}");
    let i = inputs(rng, shape, dtype);
    let out = ops::moe_dense_mlp(&on(dev, &i.x), &on(dev, &i.w1), &on(dev, &i.w2), &on(dev, &i.p)).unwrap_or_else(|e| panic!("{}: {e}", what("forward")));
    let reference = ops::moe_dense_mlp(&wide(&i.x), &wide(&i.w1), &wide(&i.w2), &wide(&i.p)).unwrap();
    assert_eq!(out.y.device(), *dev, "output left the device");
    assert_close_in_dtype(&what("y"), dtype, &out.y, &reference.y);
    assert_close_in_dtype(&what("u"), dtype, &out.saved.u, &reference.saved.u);
    assert_close_in_dtype(&what("g"), dtype, &out.saved.g, &reference.saved.g);

    let grads = ops::moe_dense_mlp_backward(&on(dev, &i.dy), &on(dev, &i.x), &on(dev, &i.w1), &on(dev, &i.w2), &on(dev, &i.p), &out.saved)
        .unwrap_or_else(|e| panic!("{}: {e}", what("backward")));
    let reference = ops::moe_dense_mlp_backward(&wide(&i.dy), &wide(&i.x), &wide(&i.w1), &wide(&i.w2), &wide(&i.p), &reference.saved).unwrap();
    assert_close_in_dtype(&what("dx"), dtype, &grads.dx, &reference.dx);
    assert_close_in_dtype(&what("dw1"), dtype, &grads.dw1, &reference.dw1);
    assert_close_in_dtype(&what("dw2"), dtype, &grads.dw2, &reference.dw2);
    assert_close_in_dtype(&what("dp"), dtype, &grads.dp, &reference.dp);
}

#[test]
fn forward_and_backward_match_the_cpu() {
    let Some((dev, _guard)) = gpu() else { return };
    let mut rng = Rng::new(0x6d6f65);
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        for shape in SHAPES {
            check_shape(&dev, dtype, shape, &mut rng);
        }
    }
}

#[test]
fn the_router_gradient_is_bit_reproducible() {
    let Some((dev, _guard)) = gpu() else { return };
    let mut rng = Rng::new(0x646574);
    for (dtype, shape) in [(DType::BF16, (517, 64, 6, 96)), (DType::F32, (77, 24, 3, 40))] {
        let i = inputs(&mut rng, shape, dtype);
        let (x, w1, w2, p, dy) = (on(&dev, &i.x), on(&dev, &i.w1), on(&dev, &i.w2), on(&dev, &i.p), on(&dev, &i.dy));
        let saved: MoeDenseSaved = ops::moe_dense_mlp(&x, &w1, &w2, &p).unwrap().saved;
        let dp = |_| ops::moe_dense_mlp_backward(&dy, &x, &w1, &w2, &p, &saved).unwrap().dp.to_f64_vec().unwrap();
        let (first, second) = (dp(0), dp(1));
        assert!(first.iter().zip(&second).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype} {shape:?}: dp differs between two runs");
    }
}

#[test]
fn an_unsupported_dtype_on_cuda_is_an_error() {
    let Some((dev, _guard)) = gpu() else { return };
    let i = inputs(&mut Rng::new(3), (4, 8, 2, 4), DType::F64);
    let result = ops::moe_dense_mlp(&on(&dev, &i.x), &on(&dev, &i.w1), &on(&dev, &i.w2), &on(&dev, &i.p));
    assert!(result.is_err(), "f64 on CUDA must be refused with an error");
}
