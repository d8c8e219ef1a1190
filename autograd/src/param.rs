//! Leaves of the graph. A `Param` is a named tensor that persists across steps (a weight); its
//! `LeafId` is how `Gradients` finds its gradient after backward.

use std::sync::atomic::{AtomicU64, Ordering};

use engine::Tensor;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeafId(u64);

impl LeafId {
    pub fn fresh() -> LeafId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        LeafId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    id: LeafId,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor) -> Param {
        Param { name: name.into(), value, id: LeafId::fresh() }
    }
    pub fn id(&self) -> LeafId {
        self.id
    }
}
