//! The all-to-all expert-parallel sparse MoE MLP against the local sparse layer, forward and
//! backward, at whatever size `mpirun` starts (`scripts/mpi-tests.sh`: 2 ranks). Every rank builds
//! the same inputs from one seed, computes the local layer alone with all experts, then the
//! dispatched one with its share of the experts. Cases: top-2 without a capacity, top-2 with a
//! capacity that drops pairs (dropping must be the single-process one), and one token (a rank
//! with no tokens of its own still takes part in every exchange).
//! Built only with `--features mpi`; its own `main`, because MPI starts once per process.

use std::sync::Arc;

use autograd::{Tape, Var};
use engine::comm::{mpi, Communicator};
use engine::ops::{self, RouteMode};
use engine::{relative_error, DType, Device, Rng, Tensor};
use model::expert_dispatch::sparse_moe;
use model::expert_parallel::local_experts;

fn main() {
    let world = mpi::init().expect("MPI starts");
    let group: Arc<dyn Communicator> = world.clone();
    for (tokens, capacity) in [(10, None), (10, Some(3)), (1, None)] {
        check(&group, tokens, capacity);
    }
    drop((group, world));
    mpi::finalize();
}

fn check(group: &Arc<dyn Communicator>, tokens: usize, capacity: Option<usize>) {
    let (d, f, experts, k) = (16, 8, 4, 2);
    let mut rng = Rng::new(12);
    let cpu = Device::Cpu;
    let mut randn = |shape: &[usize]| Tensor::randn(shape.to_vec(), 0.0, 0.5, DType::F32, &cpu, &mut rng).unwrap();
    let (x, w1, w2, logits, upstream) = (randn(&[tokens, d]), randn(&[experts * f, d]), randn(&[experts * f, d]), randn(&[tokens, experts]), randn(&[tokens, d]));
    let (first, count) = local_experts(experts, group.rank(), group.size()).unwrap();

    // loss = Σ y ⊙ upstream, so the gradients are those of an arbitrary upstream gradient.
    let run = |w1: &Tensor, w2: &Tensor, split: bool| {
        let tape = Tape::new();
        let (xv, xi) = tape.watch(x.clone());
        let (w1v, w1i) = tape.watch(w1.clone());
        let (w2v, w2i) = tape.watch(w2.clone());
        let (lv, li) = tape.watch(logits.clone());
        let probs = lv.softmax().unwrap();
        let routes = ops::moe_route(probs.value(), RouteMode::TopK(k), false).unwrap();
        let kept = probs.gather_last(&routes.experts).unwrap();
        let weights = kept.div(&kept.sum(-1, true).unwrap()).unwrap();
        let (y, dropped) = if split {
            let out = sparse_moe(group, &xv, &weights, &routes, experts, capacity, |x, unit, perm| Ok(x.moe_sparse_mlp(&w1v, &w2v, unit, perm)?)).unwrap();
            (out.y, out.dropped)
        } else {
            let perm = ops::moe_permute(&routes, experts, capacity).unwrap();
            (xv.moe_sparse_mlp(&w1v, &w2v, &weights, &perm).unwrap(), perm.dropped.to_vec::<u32>().unwrap()[0] as usize)
        };
        let loss = y.mul(&Var::constant(upstream.clone())).unwrap().sum_all().unwrap();
        let g = tape.backward(&loss).unwrap();
        let get = |id| g.get(id).map(Tensor::clone);
        (y.value().clone(), dropped, get(xi), get(w1i), get(w2i), get(li))
    };
    let full = run(&w1, &w2, false);
    let rows = |t: &Tensor| ops::narrow(t, 0, first * f, count * f).unwrap();
    let split = run(&rows(&w1), &rows(&w2), true);

    let (rank, case) = (group.rank(), format!("{tokens} tokens, capacity {capacity:?}"));
    if capacity.is_some() {
        assert!(full.1 > 0, "{case}: the capacity drops nothing, so dropping goes untested");
    }
    assert_eq!(split.1, full.1, "rank {rank}: {case}: dropped pairs");
    let check = |what: &str, got: Option<&Tensor>, want: Option<&Tensor>| {
        let zeros = |t: &Tensor| Tensor::zeros(t.dims().to_vec(), t.dtype(), &Device::Cpu).unwrap();
        // A weight no pair reached has no gradient on one side: zeros.
        let (got, want) = match (got, want) {
            (Some(g), Some(w)) => (g.clone(), w.clone()),
            (Some(g), None) => (g.clone(), zeros(g)),
            (None, Some(w)) => (zeros(w), w.clone()),
            (None, None) => return,
        };
        assert_eq!(got.dims(), want.dims(), "rank {rank}: {case}: {what}: shape");
        let err = relative_error(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap());
        assert!(err < 1e-5, "rank {rank}: {case}: {what}: relative error {err:.2e}");
        println!("mpi_expert_dispatch: rank {rank}: {case}: {what}: relative error {err:.1e}");
    };
    check("output", Some(&split.0), Some(&full.0));
    check("input gradient", split.2.as_ref(), full.2.as_ref());
    check("w1 gradient (this rank's experts)", split.3.as_ref(), full.3.as_ref().map(rows).as_ref());
    check("w2 gradient (this rank's experts)", split.4.as_ref(), full.4.as_ref().map(rows).as_ref());
    check("router logits gradient", split.5.as_ref(), full.5.as_ref());
}
