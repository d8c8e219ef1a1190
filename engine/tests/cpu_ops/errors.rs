//! Bad arguments through the op layer come back as `Err` naming the op, never as a panic.

use engine::backend::BackendStorage;
use engine::{ops, AdamW, CpuStorage, DType, Device, Error, Tensor};

use super::support::indices;

fn zeros(dims: &[usize], dtype: DType) -> Tensor {
    Tensor::zeros(dims, dtype, &Device::Cpu).unwrap()
}

fn assert_err<T: std::fmt::Debug>(what: &str, r: engine::Result<T>) -> Error {
    match r {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => {
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn mismatched_matmul_shapes_are_errors() {
    let a = zeros(&[3, 4], DType::F32);
    assert_err("k differs", ops::matmul(&a, &zeros(&[5, 2], DType::F32)));
    assert_err("k differs transposed", ops::matmul_t(&a, &zeros(&[4, 2], DType::F32), true, false));
    assert_err("b of rank 1", ops::matmul(&a, &zeros(&[4], DType::F32)));
    assert_err("batches differ", ops::matmul(&zeros(&[2, 3, 4], DType::F32), &zeros(&[3, 4, 5], DType::F32)));
    assert_err("u32 operands", ops::matmul(&zeros(&[3, 4], DType::U32), &zeros(&[4, 2], DType::U32)));
    let e = assert_err("dtype mismatch", ops::matmul(&a, &zeros(&[4, 2], DType::BF16)));
    assert!(matches!(e, Error::DTypeMismatch { .. }), "{e}");
}

#[test]
fn out_of_range_indices_are_errors() {
    let src = zeros(&[5, 3], DType::F32);
    let bad = indices(&[0, 5], &[2]);
    let e = assert_err("index_select", ops::index_select(&src, &bad));
    assert!(matches!(e, Error::IndexOutOfRange { index: 5, size: 5, .. }), "{e}");
    // The unchecked variant skips the op-layer check; the backend still refuses.
    assert_err("index_select_unchecked", ops::index_select_unchecked(&src, &bad));
    assert_err("scatter_add_rows", ops::scatter_add_rows(&zeros(&[2, 3], DType::F32), &bad, 5));
    assert_err("gather_last", ops::gather_last(&src, &indices(&[0, 3, 1, 1, 2, 0, 0, 0, 0, 0], &[5, 2])));
    assert_err("scatter_add_last", ops::scatter_add_last(&zeros(&[5, 2], DType::F32), &indices(&[9; 10], &[5, 2]), 3));
    assert_err("float indices", ops::index_select(&src, &zeros(&[2], DType::F32)));
}

#[test]
fn bad_dims_are_errors() {
    let x = zeros(&[4, 6, 3], DType::F32);
    assert_err("reduce dim 3", ops::sum(&x, 3, false));
    assert_err("reduce dim -4", ops::max(&x, -4, false));
    assert_err("argmax dim 5", ops::argmax(&x, 5, false));
    assert_err("narrow past the end", ops::narrow(&x, 1, 4, 3));
    assert_err("split sizes", ops::split(&x, &[2, 2], 1));
    assert_err("permute repeats an axis", ops::permute(&x, &[0, 0, 1]));
    assert_err("permute too short", ops::permute(&x, &[1, 0]));
    assert_err("concat shapes", ops::concat(&[&x, &zeros(&[4, 5, 3], DType::F32)], 0));
    assert_err("concat nothing", ops::concat(&[], 0));
    assert_err("topk k > n", ops::topk(&x, 4));
    assert_err("topk k = 0", ops::topk(&x, 0));
    assert_err("sum_to a shape it was not broadcast from", ops::sum_to(&x, &engine::Shape::new([4, 2, 3])));
    assert_err("broadcast", ops::add(&x, &zeros(&[6, 4], DType::F32)));
    assert_err("rope odd head", ops::rope(&zeros(&[1, 2, 1, 3], DType::F32), &zeros(&[2, 1], DType::F32), &zeros(&[2, 1], DType::F32), false));
    assert_err("rope table", ops::rope(&zeros(&[1, 2, 1, 4], DType::F32), &zeros(&[3, 2], DType::F32), &zeros(&[3, 2], DType::F32), false));
    let (rows, w) = (zeros(&[4, 3], DType::F32), zeros(&[3], DType::F32));
    assert_err("rms_norm weight", ops::rms_norm(&rows, None, &zeros(&[4], DType::F32), 1e-5));
    assert_err("rms_norm residual", ops::rms_norm(&rows, Some(&zeros(&[3, 4], DType::F32)), &w, 1e-5));
    assert_err("rms_norm eps", ops::rms_norm(&rows, None, &w, f64::NAN));
    assert_err("rms_norm scalar", ops::rms_norm(&zeros(&[], DType::F32), None, &zeros(&[1], DType::F32), 1e-5));
    assert_err("rms_norm_backward dy", ops::rms_norm_backward(&zeros(&[3, 3], DType::F32), &rows, &w, 1e-5));
    let e = assert_err("cross_entropy target", ops::cross_entropy(&rows, &indices(&[0, 1, 3, 2], &[4])));
    assert!(matches!(e, Error::IndexOutOfRange { index: 3, size: 3, .. }), "{e}");
    assert_err("cross_entropy targets shape", ops::cross_entropy(&rows, &indices(&[0, 1, 2], &[3])));
    assert_err("cross_entropy float targets", ops::cross_entropy(&rows, &zeros(&[4], DType::F32)));
    assert_err("cross_entropy_backward g", ops::cross_entropy_backward(&rows, &indices(&[0, 1, 2, 2], &[4]), &zeros(&[3], DType::F32)));
}

#[test]
fn dtype_mismatches_and_unsupported_dtypes_are_errors() {
    let f = zeros(&[2, 3], DType::F32);
    let b = zeros(&[2, 3], DType::BF16);
    let u = zeros(&[2, 3], DType::U32);
    assert!(matches!(assert_err("add", ops::add(&f, &b)), Error::DTypeMismatch { .. }));
    assert!(matches!(assert_err("exp of u32", ops::exp(&u)), Error::DType { .. }));
    assert!(matches!(assert_err("softmax of u32", ops::softmax(&u)), Error::DType { .. }));
    assert_err("sum of u32", ops::sum(&u, 0, false));
    assert_err("concat dtypes", ops::concat(&[&f, &b], 0));
    let hp = AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0, step: 1 };
    let (mut p, mut m, mut v) = (b.clone(), f.clone(), f.clone());
    assert!(matches!(assert_err("adamw bf16", ops::adamw_step(&mut p, &f, &mut m, &mut v, &hp)), Error::DType { .. }));
    let mut p = f.clone();
    assert_err("adamw step 0", ops::adamw_step(&mut p, &f, &mut m, &mut v, &AdamW { step: 0, ..hp }));
}

/// The backend itself, called with inconsistent arguments, answers with errors too.
#[test]
fn backend_reports_inconsistent_arguments() {
    let x = CpuStorage::F32(vec![1.0; 6]);
    let idx = CpuStorage::U32(vec![0, 7]);
    assert_err("index_select", x.index_select(&idx, 2, 3));
    assert_err("index length", x.index_select(&idx, 3, 3));
    assert_err("topk", x.topk(2, 3, 4));
    assert_err("narrow", x.narrow(2, 3, 2, 2));
    assert_err("permute", x.permute(&[2, 3], &[1, 1]));
    assert_err("rope", x.rope(&x, &x, 1, 1, 1, 5, false));
    assert_err("rms_norm", x.rms_norm(None, &x, 2, 3, 1e-5));
    assert_err("rms_norm_backward", x.rms_norm_backward(&x, &x, 3, 2, 1e-5));
    assert_err("cross_entropy", x.cross_entropy(&idx, 2, 3));
    assert_err("cross_entropy_backward", x.cross_entropy_backward(&idx, &x, 2, 3));
    assert_err("concat", CpuStorage::concat(&[&x, &idx], 1, &[6, 2]));
    assert_err("argmax", x.argmax(6, 0, 1));
    assert_err("binary reach", x.binary(&[3, 1], &x, &[0, 1], &[3, 3], engine::BinaryOp::Add));
    assert_err("binary rank", x.binary(&[1], &x, &[0, 1], &[2, 3], engine::BinaryOp::Add));
}
