//! The inference engine, apart from training: weights held once in the inference dtype
//! (`weights`), a paged KV cache (`cache`), a forward over chunks of new tokens that serves prefill
//! and decode alike (`forward`), token sampling (`sampling`) and continuous batching
//! (`scheduler`). Nothing here records a tape or keeps activations for a backward.

pub mod cache;
pub mod forward;
pub mod sampling;
pub mod scheduler;
pub mod weights;

pub use cache::{BlockPool, KvCache};
pub use forward::{forward, Chunk, Tally};
pub use sampling::{Sampler, SamplingParams};
pub use scheduler::{Completion, Detokenizer, Finish, Request, Scheduler, SchedulerConfig, StepReport};
pub use weights::InferWeights;
