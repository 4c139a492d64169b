//! The library's error type.
//!
//! Messages are complete: a variant that wraps another error (an I/O error, the plugin's) puts
//! its text in the message and does not also return it from `source()`, so printing an error
//! with its chain of causes (`anyhow`'s `{:#}`) never repeats a file name or an OS error.

use crate::artifact::ArtifactError;
use crate::pjrt::{LoadError, PjrtError};
use crate::plugin::NotFound;
use crate::tensor::TensorError;
use crate::validate::InputError;
use crate::validate::{PolicyError, PolicyViolation, ValidationError};

/// Every error the library returns. One variant per kind a caller acts on; each maps to one
/// HTTP status in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input does not match the signature (400).
    #[error(transparent)]
    InvalidInput(#[from] InputError),
    /// An input's values break the model's value policy (400), e.g.
    /// `input 'pixels': 3 values above max 16.0; first at [0, 41] = 255.0`.
    #[error(transparent)]
    PolicyViolation(Box<PolicyViolation>),
    /// A policy file is unreadable or malformed, or a policy does not fit the model (422);
    /// the message names the file, line and key.
    #[error(transparent)]
    Policy(Box<PolicyError>),
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
    /// The plugin loaded but could not create a client (no device, a missing CUDA library,
    /// a rejected option) (503).
    #[error("{plugin}: cannot create a client: {error}{}", if libraries.is_empty() { String::new() } else { format!("; NVIDIA libraries: {libraries}") })]
    ClientCreate {
        /// The plugin file.
        plugin: std::path::PathBuf,
        /// The plugin's error (in the message; not also returned by `source()`).
        error: PjrtError,
        /// Where NVIDIA libraries were looked for and what failed (CUDA plugins only).
        libraries: String,
    },
    /// A params (weights) file is unreadable or malformed (422).
    #[error(transparent)]
    Params(#[from] crate::artifact::params::ParamsError),
    /// Params do not fit the model's inputs: a tensor is missing or has another dtype or
    /// shape (422). The report says which.
    #[error(transparent)]
    Bind(Box<BindError>),
    /// The plugin rejected the module at compile time (422).
    #[error("compile rejected: {0}")]
    CompileRejected(PjrtError),
    /// A PJRT call failed at run time (500).
    #[error(transparent)]
    Plugin(#[from] PjrtError),
    /// A CUDA call failed, or a device input met a policy rule it cannot follow (500).
    #[cfg(feature = "cuda")]
    #[error(transparent)]
    Cuda(crate::pjrt::cuda::CudaError),
    /// An I/O error on a named file.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error (in the message; not also returned by `source()`).
        error: std::io::Error,
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
    /// A model's execution ran past its deadline; its execution worker was killed (SIGKILL) and
    /// is replaced (504).
    #[error("execution deadline passed: {0}")]
    ExecutionTimeout(Box<crate::compile::WorkerFailure>),
    /// A model's execution worker died (signal, memory limit) or broke the protocol while it
    /// ran this request; it is replaced (500).
    #[error("execution failed: {0}")]
    ExecutionFailed(Box<crate::compile::WorkerFailure>),
    /// A model's execution needs more memory than its budget, by the plugin's compiled memory
    /// statistics: refused at load (413).
    #[error("the model's execution needs {need} bytes ({detail}), above its memory budget of {budget} bytes ({source_of_budget})")]
    MemoryBudget {
        /// Bytes one execution needs (arguments + outputs + temporaries + code − aliased).
        need: u64,
        /// The budget.
        budget: u64,
        /// The parts of `need`, in words.
        detail: String,
        /// Where the budget comes from (`max_execution_bytes`, half the host's memory).
        source_of_budget: String,
    },
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

impl From<ValidationError> for Error {
    fn from(e: ValidationError) -> Error {
        match e {
            ValidationError::InvalidInput(e) => Error::InvalidInput(e),
            ValidationError::PolicyViolation(v) => Error::PolicyViolation(v),
            ValidationError::Policy(p) => Error::Policy(p),
            ValidationError::Internal(s) => Error::Internal(s),
        }
    }
}

impl From<PolicyViolation> for Error {
    fn from(v: PolicyViolation) -> Error {
        Error::PolicyViolation(Box::new(v))
    }
}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Error {
        Error::Policy(Box::new(e))
    }
}

/// Params that do not fit a model ([`Error::Bind`]).
#[derive(Debug, thiserror::Error)]
#[error("params {source_name} do not fit the model: {report}")]
pub struct BindError {
    /// The params file (or the name given to in-memory tensors).
    pub source_name: String,
    /// What matched and what did not.
    pub report: crate::artifact::params::BindReport,
}
