//! What a forward pass runs under: a tape when training (None when evaluating, so nothing is
//! recorded), and the compute dtype. Parameters are f32 master weights; when the compute dtype is
//! narrower (bf16 on a GPU) each is cast on use, and the cast's backward brings the gradient back
//! to f32.

use autograd::{Param, Tape, Var};
use engine::comm::Communicator;
use engine::DType;

use crate::attention::AttentionPath;
use crate::parallel::SINGLE;
use crate::Result;

pub struct Ctx<'a> {
    pub tape: Option<&'a Tape>,
    pub dtype: DType,
    /// Fused attention, or the composite reference path.
    pub attention: AttentionPath,
    /// The data-parallel group whose ranks hold the other slices of the batch (equal slices): batch
    /// statistics and loss means are taken over all of them (`parallel.rs`). The group of one alone.
    pub data_group: &'a dyn Communicator,
    /// Whether the forward computes the auxiliary router losses (`Forward::aux_loss`). Only a loss
    /// that is optimised or reported needs them; evaluation and generation read the logits alone,
    /// and the mutual-information terms cost a log-softmax and reductions per router.
    pub aux_losses: bool,
}

impl<'a> Ctx<'a> {
    pub fn train(tape: &'a Tape, dtype: DType) -> Ctx<'a> {
        Ctx { tape: Some(tape), dtype, attention: AttentionPath::Fused, data_group: &SINGLE, aux_losses: true }
    }

    pub fn eval(dtype: DType) -> Ctx<'static> {
        Ctx { tape: None, dtype, attention: AttentionPath::Fused, data_group: &SINGLE, aux_losses: true }
    }

    /// The same context without the auxiliary losses: for a forward whose logits alone are read.
    pub fn without_aux_losses(self) -> Ctx<'a> {
        Ctx { aux_losses: false, ..self }
    }

    /// The same context with batch statistics taken over `group`'s ranks.
    pub fn with_data_group(self, group: &'a dyn Communicator) -> Ctx<'a> {
        Ctx { data_group: group, ..self }
    }

    /// The parameter as a value in the compute dtype, tracked when training.
    pub fn p(&self, param: &Param) -> Result<Var> {
        let v = match self.tape {
            Some(t) => t.param(param),
            None => Var::constant(param.value.clone()),
        };
        Ok(if v.dtype() == self.dtype { v } else { v.cast(self.dtype)? })
    }
}
