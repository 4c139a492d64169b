//! The serving core's errors: a kind per way a request can fail, which each frontend maps to
//! its own status codes (HTTP in [`super::error`], gRPC in [`super::grpc`]).

use crate::error::Error;

use super::wire::BadRequest;

/// What went wrong, independent of any protocol. Each frontend maps a kind to one status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request does not match the model (HTTP 400, gRPC `INVALID_ARGUMENT`).
    InvalidInput,
    /// No such model or version (404, `NOT_FOUND`).
    NotFound,
    /// The model cannot be run as given (422, `FAILED_PRECONDITION`).
    Unprocessable,
    /// Not ready: loading, failed to load, unloaded, shutting down, no device (503,
    /// `UNAVAILABLE`).
    Unavailable,
    /// The server is at a global limit (503, `UNAVAILABLE`).
    Overloaded,
    /// The model's queue is full (429, `RESOURCE_EXHAUSTED`).
    QueueFull,
    /// The request's deadline passed before it was answered (503, `DEADLINE_EXCEEDED`).
    Deadline,
    /// An execution ran past its time limit and was stopped (504, `DEADLINE_EXCEEDED`).
    ExecutionTimeout,
    /// A size limit (413, `RESOURCE_EXHAUSTED`).
    TooLarge,
    /// The operation is switched off (repository load/unload without `--model-control
    /// explicit`) (403, `FAILED_PRECONDITION`).
    NotAllowed,
    /// A fault on the server's side (500, `INTERNAL`).
    Internal,
}

/// An error of the serving core: its kind, the message for the client, and what metrics need.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct CoreError {
    /// What went wrong.
    pub kind: ErrorKind,
    /// The message sent to the client (validation messages verbatim).
    pub message: String,
    /// The client may retry soon (overload and not-ready answers).
    pub retry_after: bool,
    /// For validation refusals: the rule and the model input, for metrics.
    pub rejection: Option<(&'static str, String)>,
}

impl CoreError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> CoreError {
        CoreError {
            kind,
            message: message.into(),
            retry_after: false,
            rejection: None,
        }
    }

    /// An error the client may retry soon.
    pub fn retry(kind: ErrorKind, message: impl Into<String>) -> CoreError {
        CoreError {
            retry_after: true,
            ..CoreError::new(kind, message)
        }
    }

    /// A model (or version) the server does not have.
    pub fn unknown_model(name: &str, version: Option<&str>) -> CoreError {
        let cut = |s: &str| -> String {
            if s.chars().count() > 128 {
                format!("{}...", s.chars().take(128).collect::<String>())
            } else {
                s.to_string()
            }
        };
        let (name, version) = (cut(name), version.map(cut));
        let what = match version {
            Some(v) => format!("unknown model '{name}' version '{v}'"),
            None => format!("unknown model '{name}'"),
        };
        CoreError::new(ErrorKind::NotFound, what)
    }

    /// A server-side fault.
    pub fn internal(message: impl Into<String>) -> CoreError {
        CoreError::new(ErrorKind::Internal, message)
    }
}

/// The kind of each library error. The one place that decides it: a new [`Error`] variant
/// fails to compile here until it is given a kind.
pub fn kind_for(e: &Error) -> ErrorKind {
    match e {
        // The caller's input does not match the model, or breaks its value policy.
        Error::InvalidInput(_) | Error::Tensor(_) | Error::PolicyViolation(_) => {
            ErrorKind::InvalidInput
        }
        // The model (or its policy file) cannot be run as given.
        Error::Artifact(_)
        | Error::CompileRejected(_)
        | Error::Policy(_)
        | Error::Params(_)
        | Error::Bind(_) => ErrorKind::Unprocessable,
        // No device to run on; the compiler is saturated.
        Error::PluginNotFound(_)
        | Error::PluginLoad(_)
        | Error::ClientCreate { .. }
        | Error::Busy { .. } => ErrorKind::Unavailable,
        // A compile or an execution ran out of time.
        Error::Timeout(_) | Error::ExecutionTimeout(_) => ErrorKind::ExecutionTimeout,
        Error::MemoryBudget { .. } | Error::TooLarge { .. } => ErrorKind::TooLarge,
        // Failures on our side.
        Error::Plugin(_)
        | Error::Io { .. }
        | Error::Internal(_)
        | Error::WorkerCrashed(_)
        | Error::ExecutionFailed(_)
        | Error::SandboxViolation(_)
        | Error::Config(_) => ErrorKind::Internal,
        #[cfg(feature = "cuda")]
        Error::Cuda(_) => ErrorKind::Internal,
    }
}

impl From<BadRequest> for CoreError {
    fn from(b: BadRequest) -> CoreError {
        CoreError {
            kind: ErrorKind::InvalidInput,
            message: b.message,
            retry_after: false,
            rejection: Some((b.rule, b.input.unwrap_or_default())),
        }
    }
}

impl From<Error> for CoreError {
    fn from(e: Error) -> CoreError {
        let kind = kind_for(&e);
        let rejection = match &e {
            Error::InvalidInput(i) => {
                let (rule, input) = super::wire::input_error_rule(i);
                Some((rule, input.unwrap_or_default().to_string()))
            }
            Error::Tensor(_) => Some(("tensor", String::new())),
            Error::PolicyViolation(v) => Some((v.rule.key(), v.input.clone().unwrap_or_default())),
            _ => None,
        };
        CoreError {
            kind,
            message: e.to_string(),
            retry_after: false,
            rejection,
        }
    }
}
