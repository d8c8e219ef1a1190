//! Finite-difference gradient checking. The function under test is reduced to a scalar through a
//! fixed random projection (so no gradient can cancel by symmetry), differentiated by the tape, and
//! compared with central differences computed in f64 on the CPU, input element by input element.

use engine::{relative_error, DType, Device, Error, Rng, Tensor};

use crate::{Result, Tape, Var};

/// Relative error by norm, ‖analytic − numeric‖ / ‖numeric‖, for each input.
#[derive(Debug, Clone)]
pub struct GradCheck {
    pub per_input: Vec<f64>,
}

impl GradCheck {
    pub fn max_error(&self) -> f64 {
        self.per_input.iter().copied().fold(0.0, f64::max)
    }
}

/// Checks the gradients of `f` at `inputs` (f64 CPU tensors) with step `eps`.
pub fn check_gradients(f: impl Fn(&[Var]) -> Result<Var>, inputs: &[Tensor], eps: f64) -> Result<GradCheck> {
    for t in inputs {
        if t.dtype() != DType::F64 || t.device() != Device::Cpu {
            return Err(Error::invalid("check_gradients", format!("inputs must be f64 CPU tensors, got {t:?}")));
        }
    }
    let out_shape = f(&inputs.iter().cloned().map(Var::constant).collect::<Vec<_>>())?.shape().clone();
    let mut rng = Rng::new(0x6_7261_6463);
    let projection = Tensor::randn(out_shape, 0.0, 1.0, DType::F64, &Device::Cpu, &mut rng)?;
    let loss_of = |xs: &[Var]| -> Result<Var> { f(xs)?.mul(&Var::constant(projection.clone()))?.sum_all() };

    let tape = Tape::new();
    let (vars, ids): (Vec<Var>, Vec<_>) = inputs.iter().map(|t| tape.watch(t.clone())).unzip();
    let grads = tape.backward(&loss_of(&vars)?)?;

    let mut per_input = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let analytic = match grads.get(ids[i]) {
            Some(g) => g.to_f64_vec()?,
            None => vec![0.0; input.elem_count()],
        };
        let base = input.to_f64_vec()?;
        let mut numeric = vec![0.0; base.len()];
        for j in 0..base.len() {
            let eval = |delta: f64| -> Result<f64> {
                let mut x = base.clone();
                x[j] += delta;
                let mut xs: Vec<Var> = inputs.iter().cloned().map(Var::constant).collect();
                xs[i] = Var::constant(Tensor::from_f64s(&x, input.shape().clone(), DType::F64, &Device::Cpu)?);
                loss_of(&xs)?.value().to_scalar()
            };
            numeric[j] = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
        }
        per_input.push(relative_error(&analytic, &numeric));
    }
    Ok(GradCheck { per_input })
}
