//! The model crate's error: engine failures plus what users get wrong in configs, data and
//! checkpoints. Each message names the file or field at fault.

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Engine(#[from] engine::Error),

    #[error("config {origin}: {msg}")]
    Config { origin: String, msg: String },

    #[error("data {path}: {msg}")]
    Data { path: String, msg: String },

    #[error("checkpoint {path}: {msg}")]
    Checkpoint { path: String, msg: String },

    #[error("{context}: {source}")]
    Io { context: String, #[source] source: std::io::Error },

    #[error("training diverged at step {step}: the loss is {loss} (not finite); the last checkpoint is untouched")]
    NonFiniteLoss { step: u64, loss: f64 },

    #[error("invalid {what} {value:?}: {msg}")]
    Invalid { what: &'static str, value: String, msg: String },
}

impl Error {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }
    pub fn config(origin: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Config { origin: origin.into(), msg: msg.into() }
    }
    pub fn data(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Data { path: path.into(), msg: msg.into() }
    }
    pub fn checkpoint(path: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), msg: msg.into() }
    }
}
