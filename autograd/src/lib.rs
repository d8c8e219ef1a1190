//! Tape-based reverse-mode differentiation over the engine's ops.
//!
//! A [`Tape`] records each op applied to tracked values ([`Var`]s): its inputs and a backward rule,
//! a closure that owns exactly the tensors it needs. [`Tape::backward`] walks the records in
//! reverse, feeds each rule the gradient of its output, and sums the gradients of every leaf (a
//! parameter or a watched input) into [`Gradients`]. Each rule is dropped as soon as it has run, so
//! the tensors it saved are freed while the rest of backward proceeds.
//!
//! Values that are not tracked cost nothing: an op whose inputs are all constants (or that runs
//! while the tape is paused with [`Tape::no_grad`]) records nothing and returns a constant.

mod gradcheck;
mod nn;
mod param;
mod rules;
mod tape;
mod var;

pub use engine::relative_error;
pub use gradcheck::{check_gradients, GradCheck};
pub use param::{LeafId, Param};
pub use tape::{Gradients, NoGradGuard, Tape};
pub use var::Var;

pub type Result<T> = engine::Result<T>;
