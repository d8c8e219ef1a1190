//! The tape: an append-only list of recorded ops, and the reverse walk over it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use engine::{ops, Error, Tensor};

use crate::{LeafId, Param, Result, Var};

/// Computes the gradients of an op's inputs from the gradient of its output. `needs[i]` says
/// whether input i is tracked; a rule may return `None` for the others (and should skip the work).
pub(crate) type BackwardFn = Box<dyn Fn(&Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

pub(crate) enum NodeKind {
    Leaf(LeafId),
    Op { name: &'static str, inputs: Vec<Option<usize>>, backward: BackwardFn, saved_bytes: usize },
    /// An op whose rule has run and been dropped.
    Spent,
}

pub(crate) struct Node {
    pub kind: NodeKind,
}

pub(crate) struct TapeInner {
    pub nodes: Vec<Node>,
    /// Bumped whenever the tape is cleared, so a `Var` from before is recognised as stale.
    pub generation: u64,
    pub paused: u32,
}

/// A handle to one tape; clones share it. Not `Send`: a tape belongs to the thread that trains.
#[derive(Clone)]
pub struct Tape(pub(crate) Rc<RefCell<TapeInner>>);

impl Default for Tape {
    fn default() -> Self {
        Tape::new()
    }
}

impl Tape {
    pub fn new() -> Tape {
        Tape(Rc::new(RefCell::new(TapeInner { nodes: Vec::new(), generation: 0, paused: 0 })))
    }

    /// A tracked leaf for a parameter; its gradient is reported under `param.id()`. Calling this
    /// twice for one parameter gives two leaves whose gradients are summed.
    pub fn param(&self, param: &Param) -> Var {
        self.leaf_with_id(param.value.clone(), param.id())
    }

    /// A tracked leaf for any tensor (an input whose gradient is wanted), with a fresh id.
    pub fn watch(&self, value: Tensor) -> (Var, LeafId) {
        let id = LeafId::fresh();
        (self.leaf_with_id(value, id), id)
    }

    fn leaf_with_id(&self, value: Tensor, id: LeafId) -> Var {
        let mut inner = self.0.borrow_mut();
        if inner.paused > 0 {
            return Var::constant(value);
        }
        inner.nodes.push(Node { kind: NodeKind::Leaf(id) });
        let node = inner.nodes.len() - 1;
        Var::tracked(value, self.clone(), node, inner.generation)
    }

    /// Pauses recording until the guard is dropped: ops return constants (evaluation, updates).
    pub fn no_grad(&self) -> NoGradGuard {
        self.0.borrow_mut().paused += 1;
        NoGradGuard(self.clone())
    }

    pub fn is_recording(&self) -> bool {
        self.0.borrow().paused == 0
    }

    /// Number of recorded nodes (leaves and ops).
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of tensors the recorded backward rules hold on to (activations saved for backward).
    pub fn saved_bytes(&self) -> usize {
        self.0
            .borrow()
            .nodes
            .iter()
            .map(|n| match &n.kind {
                NodeKind::Op { saved_bytes, .. } => *saved_bytes,
                NodeKind::Leaf(_) | NodeKind::Spent => 0,
            })
            .sum()
    }

    /// Names of the recorded ops, in order (for inspection and tests).
    pub fn op_names(&self) -> Vec<&'static str> {
        self.0
            .borrow()
            .nodes
            .iter()
            .filter_map(|n| match &n.kind {
                NodeKind::Op { name, .. } => Some(*name),
                NodeKind::Leaf(_) | NodeKind::Spent => None,
            })
            .collect()
    }

    /// Drops every record; `Var`s made before become stale.
    pub fn clear(&self) {
        let mut inner = self.0.borrow_mut();
        inner.nodes.clear();
        inner.generation += 1;
    }

    /// Gradients of `loss` (seeded with ones of its shape) with respect to every leaf it depends
    /// on, then clears the tape. A loss that depends on no leaf gives empty gradients.
    pub fn backward(&self, loss: &Var) -> Result<Gradients> {
        self.backward_impl(loss, false)
    }

    /// Like `backward`, but keeps the tape (and every saved tensor) for inspection or a second call.
    pub fn backward_retain(&self, loss: &Var) -> Result<Gradients> {
        self.backward_impl(loss, true)
    }

    fn backward_impl(&self, loss: &Var, retain: bool) -> Result<Gradients> {
        let Some((tape, root, generation)) = loss.tracking() else {
            return Ok(Gradients::default());
        };
        if !Rc::ptr_eq(&tape.0, &self.0) {
            return Err(Error::invalid("backward", "the loss was recorded on another tape"));
        }
        // The nodes are taken out of the tape for the walk: rules only call engine ops, never the
        // tape, so nothing needs the RefCell meanwhile.
        let mut nodes = {
            let mut inner = self.0.borrow_mut();
            if inner.generation != generation || root >= inner.nodes.len() {
                return Err(Error::invalid(
                    "backward",
                    "the tape holding this loss was already cleared (backward runs once per recording; use backward_retain to run it again)",
                ));
            }
            std::mem::take(&mut inner.nodes)
        };
        let result = walk(&mut nodes, root, loss.value(), !retain);
        let mut inner = self.0.borrow_mut();
        if retain {
            inner.nodes = nodes;
        } else {
            inner.generation += 1;
        }
        result
    }
}

/// The reverse walk from `root`. With `consume`, each rule is dropped right after it runs, which
/// frees the tensors it saved.
fn walk(nodes: &mut [Node], root: usize, loss: &Tensor, consume: bool) -> Result<Gradients> {
    let mut grads: Vec<Option<Tensor>> = vec![None; root + 1];
    grads[root] = Some(Tensor::ones(loss.shape().clone(), loss.dtype(), &loss.device())?);
    let mut out = Gradients::default();
    for i in (0..=root).rev() {
        let Some(g) = grads[i].take() else { continue };
        match &nodes[i].kind {
            NodeKind::Leaf(id) => out.accumulate(*id, g)?,
            NodeKind::Spent => {
                return Err(Error::invalid("backward", "reached a record whose rule already ran (the tape was partly consumed)"));
            }
            NodeKind::Op { name, inputs, backward, .. } => {
                let needs: Vec<bool> = inputs.iter().map(Option::is_some).collect();
                let input_grads = backward(&g, &needs)?;
                if input_grads.len() != inputs.len() {
                    return Err(Error::invalid("backward", format!("rule of {name} returned {} gradients for {} inputs", input_grads.len(), inputs.len())));
                }
                for (input, ig) in inputs.iter().zip(input_grads) {
                    if let (Some(j), Some(ig)) = (input, ig) {
                        grads[*j] = Some(match grads[*j].take() {
                            Some(prev) => ops::add(&prev, &ig)?,
                            None => ig,
                        });
                    }
                }
            }
        }
        if consume {
            if let NodeKind::Op { .. } = nodes[i].kind {
                nodes[i].kind = NodeKind::Spent;
            }
        }
    }
    Ok(out)
}

/// Gradients of one backward pass, by leaf.
#[derive(Default)]
pub struct Gradients(HashMap<LeafId, Tensor>);

impl Gradients {
    pub fn get(&self, id: LeafId) -> Option<&Tensor> {
        self.0.get(&id)
    }
    pub fn remove(&mut self, id: LeafId) -> Option<Tensor> {
        self.0.remove(&id)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&LeafId, &Tensor)> {
        self.0.iter()
    }
    /// Adds every gradient of `other` into `self`.
    pub fn merge(&mut self, other: Gradients) -> Result<()> {
        for (id, g) in other.0 {
            self.accumulate(id, g)?;
        }
        Ok(())
    }
    /// Adds `g` to the gradient held for `id` (gradient accumulation over micro-batches).
    pub fn accumulate(&mut self, id: LeafId, g: Tensor) -> Result<()> {
        let summed = match self.0.remove(&id) {
            Some(prev) => ops::add(&prev, &g)?,
            None => g,
        };
        self.0.insert(id, summed);
        Ok(())
    }
}

/// Ends a `no_grad` region when dropped.
pub struct NoGradGuard(Tape);

impl Drop for NoGradGuard {
    fn drop(&mut self) {
        self.0 .0.borrow_mut().paused -= 1;
    }
}
