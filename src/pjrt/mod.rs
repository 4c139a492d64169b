//! The PJRT plugin layer: the only place with `unsafe` FFI.
//!
//! Three layers, as in cudarc: [`ffi`] is the raw C ABI, [`api`] turns every C error into a
//! `Result`, and [`Client`], [`LoadedExecutable`] and [`Buffer`] are RAII handles.

pub mod api;
mod buffer;
mod client;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod deps;
mod executable;
pub mod ffi;
mod inner;
pub mod options;

use std::path::PathBuf;

pub use api::Api;
pub use buffer::{BorrowedBuffer, Buffer, StagingBuffer};
pub use client::{Client, ClientOptions, OptionValue};
pub use executable::{CompiledMemoryStats, LoadedExecutable, SerializedExecutable};
pub use options::{CompileOptions, XlaFlagError};

use crate::signature::DType;

/// A PJRT status code (absl status codes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorCode {
    /// CANCELLED (1).
    Cancelled,
    /// UNKNOWN (2).
    Unknown,
    /// INVALID_ARGUMENT (3).
    InvalidArgument,
    /// DEADLINE_EXCEEDED (4).
    DeadlineExceeded,
    /// NOT_FOUND (5).
    NotFound,
    /// ALREADY_EXISTS (6).
    AlreadyExists,
    /// PERMISSION_DENIED (7).
    PermissionDenied,
    /// RESOURCE_EXHAUSTED (8).
    ResourceExhausted,
    /// FAILED_PRECONDITION (9).
    FailedPrecondition,
    /// ABORTED (10).
    Aborted,
    /// OUT_OF_RANGE (11).
    OutOfRange,
    /// UNIMPLEMENTED (12).
    Unimplemented,
    /// INTERNAL (13).
    Internal,
    /// UNAVAILABLE (14).
    Unavailable,
    /// DATA_LOSS (15).
    DataLoss,
    /// UNAUTHENTICATED (16).
    Unauthenticated,
    /// A code this version does not know.
    Other(i32),
}

impl ErrorCode {
    /// The raw C enum value.
    pub fn raw(self) -> i32 {
        use ErrorCode::*;
        match self {
            Cancelled => 1,
            Unknown => 2,
            InvalidArgument => 3,
            DeadlineExceeded => 4,
            NotFound => 5,
            AlreadyExists => 6,
            PermissionDenied => 7,
            ResourceExhausted => 8,
            FailedPrecondition => 9,
            Aborted => 10,
            OutOfRange => 11,
            Unimplemented => 12,
            Internal => 13,
            Unavailable => 14,
            DataLoss => 15,
            Unauthenticated => 16,
            Other(n) => n,
        }
    }

    /// Maps the raw C enum value.
    pub fn from_raw(code: i32) -> ErrorCode {
        use ErrorCode::*;
        match code {
            1 => Cancelled,
            2 => Unknown,
            3 => InvalidArgument,
            4 => DeadlineExceeded,
            5 => NotFound,
            6 => AlreadyExists,
            7 => PermissionDenied,
            8 => ResourceExhausted,
            9 => FailedPrecondition,
            10 => Aborted,
            11 => OutOfRange,
            12 => Unimplemented,
            13 => Internal,
            14 => Unavailable,
            15 => DataLoss,
            16 => Unauthenticated,
            n => Other(n),
        }
    }
}

/// An error from a PJRT call.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum PjrtError {
    /// The plugin returned an error.
    #[error("{function} failed ({code:?}): {message}")]
    Call {
        /// The C function that failed.
        function: &'static str,
        /// The PJRT status code.
        code: ErrorCode,
        /// The plugin's message.
        message: String,
    },
    /// The plugin's function table lacks a function we need (an older or partial plugin).
    #[error("the plugin does not provide {0}")]
    Missing(&'static str),
    /// The plugin returned something the API contract rules out.
    #[error("plugin broke the API contract in {function}: {detail}")]
    Contract {
        /// The C function.
        function: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// A buffer or executable has an element type xlaguard does not handle.
    #[error("unsupported element type {0} (PJRT_Buffer_Type)")]
    UnsupportedType(i32),
}

impl PjrtError {
    fn missing(name: &'static str) -> PjrtError {
        PjrtError::Missing(name)
    }

    /// The PJRT status code, when the plugin returned one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            PjrtError::Call { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// No file at the path.
    #[error("no PJRT plugin at {path}")]
    NotFound {
        /// The path tried.
        path: PathBuf,
    },
    /// `dlopen` failed: not a shared library, wrong architecture, missing dependency.
    #[error("cannot load {path} as a PJRT plugin: {detail}")]
    Dlopen {
        /// The path.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// The library does not export `GetPjrtApi`.
    #[error("{path} is a shared library but not a PJRT plugin (no GetPjrtApi symbol): {detail}")]
    MissingSymbol {
        /// The path.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// `GetPjrtApi` returned null.
    #[error("{path}: GetPjrtApi returned a null table")]
    NullApi {
        /// The path.
        path: PathBuf,
    },
    /// The plugin speaks a PJRT API version we cannot use.
    #[error("{path}: PJRT API {}.{} is not supported (need major {}, minor >= {})", found.0, found.1, need.0, need.1)]
    BadVersion {
        /// The path.
        path: PathBuf,
        /// The plugin's (major, minor).
        found: (i32, i32),
        /// What we need: same major, at least this minor.
        need: (i32, i32),
    },
    /// `PJRT_Plugin_Initialize` failed.
    #[error("{path}: plugin initialization failed: {error}")]
    Init {
        /// The path.
        path: PathBuf,
        /// The plugin's error (in the message; not also returned by `source()`).
        error: PjrtError,
    },
}

/// Maps our dtype to the PJRT buffer type.
pub fn buffer_type(dtype: DType) -> ffi::PJRT_Buffer_Type {
    match dtype {
        DType::Bool => ffi::PJRT_Buffer_Type_PRED,
        DType::I8 => ffi::PJRT_Buffer_Type_S8,
        DType::I16 => ffi::PJRT_Buffer_Type_S16,
        DType::I32 => ffi::PJRT_Buffer_Type_S32,
        DType::I64 => ffi::PJRT_Buffer_Type_S64,
        DType::U8 => ffi::PJRT_Buffer_Type_U8,
        DType::U16 => ffi::PJRT_Buffer_Type_U16,
        DType::U32 => ffi::PJRT_Buffer_Type_U32,
        DType::U64 => ffi::PJRT_Buffer_Type_U64,
        DType::F16 => ffi::PJRT_Buffer_Type_F16,
        DType::BF16 => ffi::PJRT_Buffer_Type_BF16,
        DType::F32 => ffi::PJRT_Buffer_Type_F32,
        DType::F64 => ffi::PJRT_Buffer_Type_F64,
        DType::C64 => ffi::PJRT_Buffer_Type_C64,
        DType::C128 => ffi::PJRT_Buffer_Type_C128,
    }
}

/// Maps a PJRT buffer type to our dtype.
pub fn dtype_of(ty: ffi::PJRT_Buffer_Type) -> Result<DType, PjrtError> {
    DType::ALL
        .into_iter()
        .find(|&d| buffer_type(d) == ty)
        .ok_or(PjrtError::UnsupportedType(ty))
}
