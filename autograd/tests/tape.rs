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

/// One recording for the hook tests: `early` is a leaf twice (first and last op), `shared` one
/// leaf read by two ops, `unused` a leaf the loss does not reach, `after` a leaf recorded after
/// the loss, and `x` a watched input.
fn hook_graph(tape: &Tape, p: &[Param; 4]) -> (Var, autograd::LeafId) {
    let [early, shared, unused, after] = p;
    let (x, x_id) = tape.watch(t(&[0.5, -1.0], &[2]));
    let e1 = tape.param(early);
    let h = e1.mul(&x).unwrap().tanh().unwrap();
    let s = tape.param(shared);
    let h = h.mul(&s).unwrap().add(&s.sqr().unwrap()).unwrap();
    let _ = tape.param(unused).exp().unwrap();
    let e2 = tape.param(early);
    let loss = h.mul(&e2).unwrap().sum_all().unwrap();
    let _ = tape.param(after);
    (loss, x_id)
}

#[test]
fn the_ready_hook_reports_every_leaf_once_with_its_final_gradient() {
    let p = [
        Param::new("early", t(&[0.3, -0.7], &[2])),
        Param::new("shared", t(&[1.1, 0.4], &[2])),
        Param::new("unused", t(&[2.0], &[1])),
        Param::new("after", t(&[5.0], &[1])),
    ];
    let tape = Tape::new();
    let (loss, x_id) = hook_graph(&tape, &p);
    let want = tape.backward(&loss).unwrap();
    let (loss, hooked_x) = hook_graph(&tape, &p);
    let mut seen: Vec<(autograd::LeafId, Option<Vec<f64>>)> = Vec::new();
    let got = tape.backward_with_hook(&loss, &mut |id, g| {
        seen.push((id, g.map(|g| g.to_f64_vec().unwrap())));
        Ok(())
    })
    .unwrap();
    let ids: Vec<_> = seen.iter().map(|(id, _)| *id).collect();
    let (early, shared, unused, after) = (p[0].id(), p[1].id(), p[2].id(), p[3].id());
    // Once each, in the walk's order: `unused` (its record is the latest before the loss's
    // second `early`, and the walk passes it first), then `shared`, then `early` at its first
    // record, and the watched input last of all; `after` never.
    assert_eq!(ids, vec![unused, shared, early, hooked_x], "order of reports");
    assert!(!ids.contains(&after));
    for (id, g) in &seen {
        let returned = got.get(*id).map(|t| t.to_f64_vec().unwrap());
        assert_eq!(g, &returned, "the hook's gradient equals the returned one");
        let reference = if *id == hooked_x { want.get(x_id) } else { want.get(*id) };
        assert_eq!(g, &reference.map(|t| t.to_f64_vec().unwrap()), "and plain backward's");
    }
    assert!(seen[0].1.is_none(), "a leaf the loss does not reach is reported without a gradient");
    assert_eq!(got.len(), 3, "the hook changes nothing in the returned set");
    // An error from the hook ends the walk with it.
    let (loss, _) = hook_graph(&tape, &p);
    let err = tape.backward_with_hook(&loss, &mut |_, _| Err(engine::Error::invalid("hook", "refused"))).err().expect("the hook's error");
    assert!(err.to_string().contains("refused"), "{err}");
}
