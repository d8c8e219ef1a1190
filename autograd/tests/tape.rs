//! The tape's contract: accumulation, clearing, `no_grad`, `detach`, memory accounting, and clear
//! errors instead of panics.

use autograd::{Param, Tape, Var};
use engine::{DType, Device, Tensor};

fn t(v: &[f64], dims: &[usize]) -> Tensor {
    Tensor::from_f64s(v, dims.to_vec(), DType::F64, &Device::Cpu).unwrap()
}

#[test]
fn loss_without_the_parameter_gives_no_gradient() {
    let tape = Tape::new();
    let w = Param::new("w", t(&[1.0, 2.0], &[2]));
    let unused = Param::new("unused", t(&[3.0], &[1]));
    let (wv, _) = (tape.param(&w), tape.param(&unused));
    let grads = tape.backward(&wv.sqr().unwrap().sum_all().unwrap()).unwrap();
    assert!(grads.get(unused.id()).is_none());
    assert_eq!(grads.get(w.id()).unwrap().to_f64_vec().unwrap(), vec![2.0, 4.0]);
    // A loss built from constants only: empty gradients, no panic.
    let c = Var::constant(t(&[1.0], &[1]));
    assert!(tape.backward(&c.exp().unwrap()).unwrap().is_empty());
}

#[test]
fn backward_twice_on_a_cleared_tape_is_an_error() {
    let tape = Tape::new();
    let w = Param::new("w", t(&[1.5], &[1]));
    let loss = tape.param(&w).sqr().unwrap();
    tape.backward(&loss).unwrap();
    let err = tape.backward(&loss).err().expect("second backward must fail");
    assert!(err.to_string().contains("already cleared"), "{err}");
    // backward_retain keeps the records, so it can run twice.
    let loss = tape.param(&w).sqr().unwrap();
    let first = tape.backward_retain(&loss).unwrap();
    let second = tape.backward(&loss).unwrap();
    assert_eq!(first.get(w.id()).unwrap().to_f64_vec().unwrap(), second.get(w.id()).unwrap().to_f64_vec().unwrap());
}

#[test]
fn a_parameter_used_twice_gets_the_sum() {
    let tape = Tape::new();
    let w = Param::new("w", t(&[3.0], &[1]));
    let (a, b) = (tape.param(&w), tape.param(&w));
    let grads = tape.backward(&a.mul(&b).unwrap().add(&a).unwrap()).unwrap();
    assert_eq!(grads.get(w.id()).unwrap().to_f64_vec().unwrap(), vec![7.0]); // d(w² + w) = 2w + 1
}

#[test]
fn no_grad_and_detach_record_nothing() {
    let tape = Tape::new();
    let w = Param::new("w", t(&[2.0], &[1]));
    {
        let _guard = tape.no_grad();
        let y = tape.param(&w).exp().unwrap();
        assert!(!y.is_tracked());
    }
    assert!(tape.is_empty());
    let x = tape.param(&w);
    let y = x.detach().mul(&x).unwrap();
    let grads = tape.backward(&y).unwrap();
    assert_eq!(grads.get(w.id()).unwrap().to_f64_vec().unwrap(), vec![2.0]); // only the tracked factor
}

#[test]
fn saved_tensors_are_counted_and_freed() {
    let tape = Tape::new();
    let w = Param::new("w", t(&[0.5; 64], &[8, 8]));
    let x = tape.param(&w);
    let loss = x.matmul(&x).unwrap().exp().unwrap().sum_all().unwrap();
    assert!(tape.saved_bytes() >= 3 * 64 * 8, "matmul saves two operands and exp its output");
    assert!(tape.op_names().contains(&"matmul"));
    tape.backward(&loss).unwrap();
    assert_eq!(tape.saved_bytes(), 0);
    assert!(tape.is_empty());
}

#[test]
fn mixing_tapes_is_an_error() {
    let (t1, t2) = (Tape::new(), Tape::new());
    let w = Param::new("w", t(&[1.0], &[1]));
    let a = t1.param(&w);
    let b = t2.param(&w);
    assert!(a.add(&b).is_err());
    assert!(t2.backward(&a).is_err());
}
