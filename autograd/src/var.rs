//! `Var`: a tensor value, and, when tracked, where it sits on a tape.

use engine::{DType, Device, Shape, Tensor};

use crate::tape::{BackwardFn, Node, NodeKind};
use crate::{Result, Tape};

#[derive(Clone)]
pub struct Var {
    value: Tensor,
    tracked: Option<Tracked>,
}

#[derive(Clone)]
struct Tracked {
    tape: Tape,
    node: usize,
    generation: u64,
}

impl Var {
    /// An untracked value: ops on constants record nothing.
    pub fn constant(value: Tensor) -> Var {
        Var { value, tracked: None }
    }

    pub(crate) fn tracked(value: Tensor, tape: Tape, node: usize, generation: u64) -> Var {
        Var { value, tracked: Some(Tracked { tape, node, generation }) }
    }

    pub fn value(&self) -> &Tensor {
        &self.value
    }
    pub fn into_value(self) -> Tensor {
        self.value
    }
    pub fn shape(&self) -> &Shape {
        self.value.shape()
    }
    pub fn dims(&self) -> &[usize] {
        self.value.dims()
    }
    pub fn rank(&self) -> usize {
        self.value.rank()
    }
    pub fn dtype(&self) -> DType {
        self.value.dtype()
    }
    pub fn device(&self) -> Device {
        self.value.device()
    }
    pub fn is_tracked(&self) -> bool {
        self.tracked.is_some()
    }

    /// The same value, cut off from the graph: no gradient flows through it.
    pub fn detach(&self) -> Var {
        Var::constant(self.value.clone())
    }

    pub(crate) fn tracking(&self) -> Option<(Tape, usize, u64)> {
        self.tracked.as_ref().map(|t| (t.tape.clone(), t.node, t.generation))
    }

    /// Records an op producing `value` from `inputs`. If no input is tracked (or the tape is
    /// paused), nothing is recorded, `backward` is dropped unused and a constant is returned.
    /// `saved_bytes` counts the tensors the rule keeps, for the memory report. This is also how a
    /// crate adds a differentiable op of its own (a fused kernel with its own backward).
    pub fn custom(
        name: &'static str,
        value: Tensor,
        inputs: &[&Var],
        saved_bytes: usize,
        backward: impl Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Result<Var> {
        let Some(tape) = inputs.iter().find_map(|v| v.tracked.as_ref().map(|t| t.tape.clone())) else {
            return Ok(Var::constant(value));
        };
        let mut inner = tape.0.borrow_mut();
        if inner.paused > 0 {
            drop(inner);
            return Ok(Var::constant(value));
        }
        let mut input_nodes = Vec::with_capacity(inputs.len());
        for v in inputs {
            input_nodes.push(match &v.tracked {
                None => None,
                Some(t) if std::rc::Rc::ptr_eq(&t.tape.0, &tape.0) && t.generation == inner.generation => Some(t.node),
                Some(_) => {
                    return Err(engine::Error::invalid(
                        name,
                        "an input belongs to another tape or to a recording that was already cleared",
                    ))
                }
            });
        }
        let backward: BackwardFn = Box::new(backward);
        inner.nodes.push(Node { kind: NodeKind::Op { name, inputs: input_nodes, backward, saved_bytes } });
        let node = inner.nodes.len() - 1;
        let generation = inner.generation;
        drop(inner);
        Ok(Var::tracked(value, tape, node, generation))
    }
}

impl std::fmt::Debug for Var {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Var({:?}{})", self.value, if self.is_tracked() { ", tracked" } else { "" })
    }
}
