//! The expert-parallel MoE MLPs against their unsplit layers, forward and backward, at whatever
//! size `mpirun` starts (`scripts/mpi-tests.sh`: 2 ranks). Every rank builds the same inputs from
//! one seed, computes the unsplit layer alone with all experts, then the split one with its share:
//!
//! - the dense DS-MoE MLP split like Megatron's MLP (`expert_parallel::dense_moe`);
//! - the all-to-all sparse MLP (`expert_dispatch::sparse_moe`) against the local sparse layer:
//!   top-2 without a capacity, with a capacity that drops pairs (dropping must be the
//!   single-process one, and so the gates renormalised over the kept pairs), and one token (a rank with no tokens of its own still takes part in
//!   every exchange).
//!
//! Built only with `--features mpi`; its own `main`, because MPI starts once per process.

use std::sync::Arc;

use autograd::{Tape, Var};
use engine::comm::{mpi, Communicator};
use engine::ops::{self, RouteMode};
use engine::{relative_error, DType, Device, Rng, Tensor};
use model::expert_dispatch::sparse_moe;
use model::expert_parallel::{dense_moe, local_experts};
use model::top2gate;

const EXPERTS: usize = 4;

fn main() {
    let world = mpi::init().expect("MPI starts");
    let group: Arc<dyn Communicator> = world.clone();
    compare(&group, "dense split", 10, |split, x, w1, w2, probs| {
        let y = if split { dense_moe(&group, x, probs, |x, p| Ok(x.moe_dense_mlp(w1, w2, p)?)) } else { Ok(x.moe_dense_mlp(w1, w2, probs).unwrap()) };
        (y.unwrap(), 0)
    });
    for (tokens, capacity) in [(10, None), (10, Some(3)), (1, None)] {
        let dropped = compare(&group, &format!("all-to-all top-2, {tokens} tokens, capacity {capacity:?}"), tokens, |split, x, w1, w2, probs| {
            let routes = ops::moe_route(probs.value(), RouteMode::TopK(2), false).unwrap();
            let perm = ops::moe_permute(&routes, EXPERTS, capacity).unwrap();
            let weights = top2gate::gate_weights(probs, &routes, &perm).unwrap();
            if split {
                let out = sparse_moe(&group, x, &weights, &perm, |x, unit, perm| Ok(x.moe_sparse_mlp(w1, w2, unit, perm)?)).unwrap();
                (out.y, out.dropped)
            } else {
                (x.moe_sparse_mlp(w1, w2, &weights, &perm).unwrap(), perm.dropped.to_vec::<u32>().unwrap()[0] as usize)
            }
        });
        assert!(capacity.is_none() || dropped > 0, "capacity {capacity:?} drops nothing, so dropping goes untested");
    }
    drop((group, world));
    mpi::finalize();
}

/// Runs `layer(split, x, w1, w2, router probabilities) -> (output, dropped pairs)` unsplit (all
/// experts) and split (this rank's rows of `w1` and `w2`) on the same random inputs, checks the
/// output, the dropped count and every gradient, and returns the dropped count.
fn compare(group: &Arc<dyn Communicator>, case: &str, tokens: usize, layer: impl Fn(bool, &Var, &Var, &Var, &Var) -> (Var, usize)) -> usize {
    let (d, f) = (16, 8);
    let mut rng = Rng::new(11);
    let cpu = Device::Cpu;
    let mut randn = |shape: &[usize]| Tensor::randn(shape.to_vec(), 0.0, 0.5, DType::F32, &cpu, &mut rng).unwrap();
    let (x, w1, w2, logits, upstream) = (randn(&[tokens, d]), randn(&[EXPERTS * f, d]), randn(&[EXPERTS * f, d]), randn(&[tokens, EXPERTS]), randn(&[tokens, d]));
    let (first, count) = local_experts(EXPERTS, group.rank(), group.size()).unwrap();

    // loss = Σ y ⊙ upstream, so the gradients are those of an arbitrary upstream gradient.
    let run = |w1: &Tensor, w2: &Tensor, split: bool| {
        let tape = Tape::new();
        let (xv, xi) = tape.watch(x.clone());
        let (w1v, w1i) = tape.watch(w1.clone());
        let (w2v, w2i) = tape.watch(w2.clone());
        let (lv, li) = tape.watch(logits.clone());
        let (y, dropped) = layer(split, &xv, &w1v, &w2v, &lv.softmax().unwrap());
        let loss = y.mul(&Var::constant(upstream.clone())).unwrap().sum_all().unwrap();
        let g = tape.backward(&loss).unwrap();
        let get = |id| g.get(id).cloned();
        (y.value().clone(), dropped, [get(xi), get(w1i), get(w2i), get(li)])
    };
    let rows = |t: &Tensor| ops::narrow(t, 0, first * f, count * f).unwrap();
    let (want_y, want_dropped, want) = run(&w1, &w2, false);
    let (got_y, got_dropped, got) = run(&rows(&w1), &rows(&w2), true);

    let rank = group.rank();
    assert_eq!(got_dropped, want_dropped, "rank {rank}: {case}: dropped pairs");
    let check = |what: &str, got: Option<&Tensor>, want: Option<&Tensor>| {
        // A weight no pair reached has no gradient on one side: zeros.
        let zeros = |t: &Tensor| Tensor::zeros(t.dims().to_vec(), t.dtype(), &Device::Cpu).unwrap();
        let (got, want) = match (got, want) {
            (Some(g), Some(w)) => (g.clone(), w.clone()),
            (Some(g), None) => (g.clone(), zeros(g)),
            (None, Some(w)) => (zeros(w), w.clone()),
            (None, None) => return,
        };
        assert_eq!(got.dims(), want.dims(), "rank {rank}: {case}: {what}: shape");
        let err = relative_error(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap());
        assert!(err < 1e-5, "rank {rank}: {case}: {what}: relative error {err:.2e}");
        println!("mpi_expert_parallel: rank {rank}: {case}: {what}: relative error {err:.1e}");
    };
    check("output", Some(&got_y), Some(&want_y));
    let want_rows = [want[0].clone(), want[1].as_ref().map(rows), want[2].as_ref().map(rows), want[3].clone()];
    for (what, (g, w)) in ["input gradient", "w1 gradient (this rank's experts)", "w2 gradient (this rank's experts)", "router logits gradient"].iter().zip(got.iter().zip(&want_rows)) {
        check(what, g.as_ref(), w.as_ref());
    }
    want_dropped
}
