//! The tape: an append-only list of recorded ops, and the reverse walk over it.
//!
//! The walk visits nodes from the loss back to the first record. A node's gradient is complete
//! when the walk reaches it (every consumer was recorded later, so was visited before), which is
//! what lets `backward_with_hook` hand each leaf's gradient to a caller the moment it is final:
//! a parameter registered as several leaves (`param` called once per use) is final at the
//! earliest-recorded of them, so the hook counts a leaf id's records before the walk and reports
//! the id when the walk has passed its last one. Data parallelism uses this to start a gradient
//! bucket's all-reduce while the walk goes on. Without a hook the walk does no counting.

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
        self.backward_impl(loss, false, None)
    }

    /// Like `backward`, but keeps the tape (and every saved tensor) for inspection or a second call.
    pub fn backward_retain(&self, loss: &Var) -> Result<Gradients> {
        self.backward_impl(loss, true, None)
    }

    /// Like `backward`, and hands every leaf recorded before the loss to `on_ready` once, the
    /// moment its gradient is final: `Some` of the gradient `backward` would return for it, or
    /// `None` for a leaf the loss does not reach. Leaves come in the walk's order (the reverse of
    /// their last use, roughly). An error from `on_ready` ends the walk with that error. A loss
    /// that depends on no leaf reports nothing.
    pub fn backward_with_hook(&self, loss: &Var, on_ready: &mut dyn FnMut(LeafId, Option<&Tensor>) -> Result<()>) -> Result<Gradients> {
        self.backward_impl(loss, false, Some(on_ready))
    }

    fn backward_impl(&self, loss: &Var, retain: bool, on_ready: Option<&mut dyn FnMut(LeafId, Option<&Tensor>) -> Result<()>>) -> Result<Gradients> {
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
        let hook = on_ready.map(|f| ReadyHook::new(&nodes, root, f));
        let result = walk(&mut nodes, root, loss.value(), !retain, hook);
        let mut inner = self.0.borrow_mut();
        if retain {
            inner.nodes = nodes;
        } else {
            inner.generation += 1;
        }
        result
    }
}

/// `backward_with_hook`'s callback and, per leaf id, how many of its records the walk has yet to
/// pass.
struct ReadyHook<'a> {
    on_ready: &'a mut dyn FnMut(LeafId, Option<&Tensor>) -> Result<()>,
    records_left: HashMap<LeafId, usize>,
}

impl<'a> ReadyHook<'a> {
    fn new(nodes: &[Node], root: usize, on_ready: &'a mut dyn FnMut(LeafId, Option<&Tensor>) -> Result<()>) -> ReadyHook<'a> {
        let mut records_left = HashMap::new();
        for node in &nodes[..=root] {
            if let NodeKind::Leaf(id) = node.kind {
                *records_left.entry(id).or_insert(0) += 1;
            }
        }
        ReadyHook { on_ready, records_left }
    }

    /// The walk passed one record of leaf `id`; reports it if that was its last.
    fn passed(&mut self, id: LeafId, out: &Gradients) -> Result<()> {
        let left = self.records_left.get_mut(&id).expect("every leaf record was counted");
        *left -= 1;
        if *left == 0 {
            (self.on_ready)(id, out.get(id))?;
        }
        Ok(())
    }
}

/// The reverse walk from `root`. With `consume`, each rule is dropped right after it runs, which
/// frees the tensors it saved.
fn walk(nodes: &mut [Node], root: usize, loss: &Tensor, consume: bool, mut hook: Option<ReadyHook>) -> Result<Gradients> {
    let mut grads: Vec<Option<Tensor>> = vec![None; root + 1];
    grads[root] = Some(Tensor::ones(loss.shape().clone(), loss.dtype(), &loss.device())?);
    let mut out = Gradients::default();
    for i in (0..=root).rev() {
        if let (Some(hook), NodeKind::Leaf(id)) = (hook.as_mut(), &nodes[i].kind) {
            if let Some(g) = grads[i].take() {
                out.accumulate(*id, g)?;
            }
            hook.passed(*id, &out)?;
            continue;
        }
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
