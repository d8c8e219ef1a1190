//! Expert-parallel DS-MoE MLP against the unsplit layer, forward and backward, at whatever size
//! `mpirun` starts (`scripts/mpi-tests.sh`: 2 ranks). Every rank builds the same inputs from one
//! seed, computes the unsplit layer alone, then the split one with its share of the experts.
//! Built only with `--features mpi`; its own `main`, because MPI starts once per process.

use std::sync::Arc;

use autograd::{Tape, Var};
use engine::comm::{mpi, Communicator};
use engine::{ops, relative_error, DType, Device, Rng, Tensor};
use model::expert_parallel::{dense_moe, local_experts};

fn main() {
    let world = mpi::init().expect("MPI starts");
    let group: Arc<dyn Communicator> = world.clone();
    let (tokens, d, f, experts) = (10, 16, 8, 4);
    let mut rng = Rng::new(11);
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
        let y = if split {
            dense_moe(&group, &xv, &probs, |x, p| Ok(x.moe_dense_mlp(&w1v, &w2v, p)?)).unwrap()
        } else {
            xv.moe_dense_mlp(&w1v, &w2v, &probs).unwrap()
        };
        let loss = y.mul(&Var::constant(upstream.clone())).unwrap().sum_all().unwrap();
        let g = tape.backward(&loss).unwrap();
        let get = |id| g.get(id).unwrap().clone();
        (y.value().clone(), get(xi), get(w1i), get(w2i), get(li))
    };
    let full = run(&w1, &w2, false);
    let rows = |t: &Tensor| ops::narrow(t, 0, first * f, count * f).unwrap();
    let split = run(&rows(&w1), &rows(&w2), true);

    let rank = group.rank();
    let check = |what: &str, got: &Tensor, want: &Tensor| {
        assert_eq!(got.dims(), want.dims(), "rank {rank}: {what}: shape");
        let err = relative_error(&got.to_f64_vec().unwrap(), &want.to_f64_vec().unwrap());
        assert!(err < 1e-5, "rank {rank}: {what}: relative error {err:.2e}");
        println!("mpi_expert_parallel: rank {rank}: {what}: relative error {err:.1e}");
    };
    check("output", &split.0, &full.0);
    check("input gradient", &split.1, &full.1);
    check("w1 gradient (this rank's experts)", &split.2, &rows(&full.2));
    check("w2 gradient (this rank's experts)", &split.3, &rows(&full.3));
    check("router logits gradient", &split.4, &full.4);
    drop((group, world));
    mpi::finalize();
}
