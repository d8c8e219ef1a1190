//! The parameter store: every weight of a model, in a fixed order, by name. The names are the
//! checkpoint's tensor names (`layers.3.mlp.w1`, ...).

use std::collections::HashMap;

use autograd::Param;
use engine::{DType, Device, Rng, Tensor};

use crate::{Error, Result};

/// A handle to one parameter in a `Params`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamId(usize);

impl ParamId {
    /// The parameter's position in its `Params`' order.
    pub fn index(self) -> usize {
        self.0
    }
}

#[derive(Default)]
pub struct Params {
    list: Vec<Param>,
    by_name: HashMap<String, usize>,
}

/// How a fresh parameter is drawn.
#[derive(Debug, Clone, Copy)]
pub enum Init {
    Normal(f64),
    Ones,
}

impl Params {
    pub fn add(&mut self, name: String, dims: &[usize], init: Init, device: &Device, rng: &mut Rng) -> Result<ParamId> {
        let t = match init {
            Init::Normal(std) => Tensor::randn(dims.to_vec(), 0.0, std, DType::F32, device, rng)?,
            Init::Ones => Tensor::ones(dims.to_vec(), DType::F32, device)?,
        };
        self.by_name.insert(name.clone(), self.list.len());
        self.list.push(Param::new(name, t));
        Ok(ParamId(self.list.len() - 1))
    }

    pub fn get(&self, id: ParamId) -> &Param {
        &self.list[id.0]
    }

    pub fn get_mut(&mut self, id: ParamId) -> &mut Param {
        &mut self.list[id.0]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Param> {
        self.list.iter_mut()
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn count(&self) -> usize {
        self.list.iter().map(|p| p.value.elem_count()).sum()
    }

    /// Replaces every value with the tensor of the same name from `loaded`, checking shapes, dtypes and
    /// that every value is finite.
    pub fn load(&mut self, loaded: &mut HashMap<String, Tensor>, origin: &str) -> Result<()> {
        for p in &mut self.list {
            let t = loaded.remove(&p.name).ok_or_else(|| Error::checkpoint(origin, format!("missing tensor {}", p.name)))?;
            if t.shape() != p.value.shape() {
                return Err(Error::checkpoint(origin, format!("tensor {} has shape {:?}, the config needs {:?}", p.name, t.shape(), p.value.shape())));
            }
            if t.dtype() != p.value.dtype() {
                return Err(Error::checkpoint(origin, format!("tensor {} has dtype {}, the model's weights are {}", p.name, t.dtype(), p.value.dtype())));
            }
            if !all_finite(&t)? {
                return Err(Error::checkpoint(origin, format!("tensor {} holds NaN or infinite values: the weights are damaged and unusable", p.name)));
            }
            p.value = t.to_device(&p.value.device())?;
        }
        if let Some(extra) = loaded.keys().next() {
            return Err(Error::checkpoint(origin, format!("unexpected tensor {extra} (is the config the one this checkpoint was trained with?)")));
        }
        Ok(())
    }
}

/// True when no element of a float tensor is NaN or infinite: both propagate into the sum. (A sum
/// of finite values beyond the dtype's range would read as infinite too; weights are nowhere near.)
pub(crate) fn all_finite(t: &Tensor) -> Result<bool> {
    Ok(engine::ops::sum_all(t)?.to_scalar()?.is_finite())
}
