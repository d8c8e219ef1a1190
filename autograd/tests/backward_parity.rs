//! CPU-vs-CUDA backward parity: every gradient-check case, run in f32 on both devices, must give
//! the same gradients. The loss is the output's sum under a fixed random projection, as in the
//! gradient check: a plain sum would make some true gradients zero (softmax's, for one), and
//! comparing rounding noise with rounding noise says nothing. Skips, saying so in one line, on a
//! machine without a CUDA device.

mod common;

use autograd::{relative_error, Tape, Var};
use engine::{ops, DType, Device, Rng, Tensor};

/// Gradients of the case's projected-sum loss with respect to each input, on `device`.
fn gradients(case: &common::Case, device: &Device) -> autograd::Result<Vec<Vec<f64>>> {
    let tape = Tape::new();
    let (vars, ids): (Vec<_>, Vec<_>) = case
        .inputs
        .iter()
        .map(|t| -> autograd::Result<_> { Ok(tape.watch(ops::cast(t, DType::F32)?.to_device(device)?)) })
        .collect::<autograd::Result<Vec<_>>>()?
        .into_iter()
        .unzip();
    let out = (case.f)(&vars)?;
    let projection = Tensor::randn(out.value().shape().clone(), 0.0, 1.0, DType::F32, &Device::Cpu, &mut Rng::new(0x9a7))?.to_device(device)?;
    let loss = out.mul(&Var::constant(projection))?.sum_all()?;
    let grads = tape.backward(&loss)?;
    ids.iter()
        .zip(&case.inputs)
        .map(|(id, input)| match grads.get(*id) {
            Some(g) => g.to_f64_vec(),
            None => Ok(vec![0.0; input.elem_count()]),
        })
        .collect()
}

#[test]
fn backward_matches_between_cpu_and_cuda() {
    let Some(gpu) = engine::cuda::test_device() else { return };
    let mut failures = Vec::new();
    for case in common::all_cases() {
        let (cpu, cuda) = match (gradients(&case, &Device::Cpu), gradients(&case, &gpu)) {
            (Ok(c), Ok(g)) => (c, g),
            (c, g) => {
                failures.push(format!("{}: cpu {:?} / cuda {:?}", case.name, c.err(), g.err()));
                continue;
            }
        };
        for (i, (c, g)) in cpu.iter().zip(&cuda).enumerate() {
            let err = relative_error(g, c);
            if err >= 1e-4 {
                failures.push(format!("{} input {i}: relative error {err:e}", case.name));
            }
        }
    }
    assert!(failures.is_empty(), "CPU and CUDA gradients differ:\n{}", failures.join("\n"));
}
