//! The library's error type.

use crate::artifact::ArtifactError;
use crate::pjrt::{LoadError, PjrtError};
use crate::plugin::NotFound;
use crate::tensor::TensorError;
use crate::validate::InputError;

/// Every error the library returns. One variant per kind a caller acts on; each maps to one
/// HTTP status in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input does not match the signature (400).
    #[error(transparent)]
    InvalidInput(#[from] InputError),
    /// A tensor or `.npy` file is malformed (400).
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// The artifact is malformed or uses something not supported (422).
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    /// No plugin was found (503).
    #[error(transparent)]
    PluginNotFound(#[from] NotFound),
    /// The plugin could not be loaded (503).
    #[error(transparent)]
    PluginLoad(#[from] LoadError),
    /// The plugin rejected the module at compile time (422).
    #[error("compile rejected: {0}")]
    CompileRejected(PjrtError),
    /// A PJRT call failed at run time (500).
    #[error(transparent)]
    Plugin(#[from] PjrtError),
    /// An I/O error on a named file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The compile queue is full: retry later (503).
    #[error("compile queue full ({running} compiles running, {queued} waiting)")]
    Busy {
        /// Compiles running.
        running: usize,
        /// Compiles waiting.
        queued: usize,
    },
    /// A compile ran past its deadline or CPU limit; its worker was killed (504).
    #[error("compile timed out: {0}")]
    Timeout(Box<crate::compile::WorkerFailure>),
    /// The compile worker crashed (abort, fault, memory limit), or broke the protocol (500).
    #[error("compile failed: {0}")]
    WorkerCrashed(Box<crate::compile::WorkerFailure>),
    /// The compile worker made a system call its sandbox forbids and was killed (500).
    #[error("sandbox violation: {0}")]
    SandboxViolation(Box<crate::compile::WorkerFailure>),
    /// Something is larger than its configured limit (413).
    #[error("{what} of {actual} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        actual: u64,
        /// The limit.
        limit: u64,
    },
    /// The configuration is invalid (e.g. an unknown flag in `XLA_FLAGS`) (500).
    #[error("configuration: {0}")]
    Config(String),
    /// The compiled module disagrees with the artifact's own signature (a broken artifact, or a
    /// bug): refused rather than run.
    #[error("internal: {0}")]
    Internal(String),
}
