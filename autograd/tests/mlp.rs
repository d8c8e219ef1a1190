//! End to end: a two-layer MLP trained with plain SGD on a synthetic regression task must drive
//! its loss down by at least 10x, on the CPU, in seconds.

use autograd::{Param, Tape, Var};
use engine::{ops, DType, Device, Rng, Tensor};

#[test]
fn two_layer_mlp_learns() {
    let dev = Device::Cpu;
    let mut rng = Rng::new(42);
    let (n, d_in, hidden) = (128, 4, 32);
    let x = Tensor::randn([n, d_in], 0.0, 1.0, DType::F32, &dev, &mut rng).unwrap();
    // Target: a smooth nonlinear function of the inputs.
    let xs = x.to_f64_vec().unwrap();
    let y: Vec<f64> = xs.chunks(d_in).map(|r| (r[0] * r[1]).sin() + 0.5 * r[2] - r[3] * r[3] * 0.3).collect();
    let y = Tensor::from_f64s(&y, [n, 1], DType::F32, &dev).unwrap();

    let mut params = vec![
        Param::new("w1", Tensor::randn([d_in, hidden], 0.0, 0.5, DType::F32, &dev, &mut rng).unwrap()),
        Param::new("b1", Tensor::zeros([hidden], DType::F32, &dev).unwrap()),
        Param::new("w2", Tensor::randn([hidden, 1], 0.0, 0.2, DType::F32, &dev, &mut rng).unwrap()),
        Param::new("b2", Tensor::zeros([1], DType::F32, &dev).unwrap()),
    ];
    let tape = Tape::new();
    let mut losses = Vec::new();
    for _ in 0..1500 {
        let p: Vec<Var> = params.iter().map(|p| tape.param(p)).collect();
        let pred = Var::constant(x.clone()).linear(&p[0], Some(&p[1])).unwrap().tanh().unwrap().linear(&p[2], Some(&p[3])).unwrap();
        let loss = pred.sub(&Var::constant(y.clone())).unwrap().sqr().unwrap().mean_all().unwrap();
        losses.push(loss.value().to_scalar().unwrap());
        let grads = tape.backward(&loss).unwrap();
        for p in params.iter_mut() {
            let g = grads.get(p.id()).expect("every parameter is used");
            p.value = ops::sub(&p.value, &ops::mul_scalar(g, 0.1).unwrap()).unwrap();
        }
    }
    let (first, last) = (losses[0], *losses.last().unwrap());
    assert!(last * 10.0 < first, "loss went from {first} to {last}");
}
