//! The refiner's error type (a leaf: the FFI layer and the refiner both return it).

use std::path::PathBuf;

/// Why a refinement (or loading the refiner) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RefineError {
    /// The file could not be loaded as a shared library (missing, corrupted, wrong
    /// architecture), or it is not the StableHLO C API library.
    #[error("cannot load {path} as the StableHLO refiner: {detail}")]
    Load {
        /// The library path.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// The library lacks a function the refiner needs.
    #[error("{path} is not a StableHLO C API library: it does not export {symbol}")]
    MissingSymbol {
        /// The library path.
        path: PathBuf,
        /// The missing symbol.
        symbol: String,
    },
    /// A StableHLO version does not fit: `what` (at `version`) is too old for `needed`.
    #[error("{what} (StableHLO {version}) is too old: {needed} is needed")]
    TooOld {
        /// Which side is too old, e.g. "the refiner" or "the target version".
        what: String,
        /// Its version.
        version: String,
        /// The version needed.
        needed: String,
    },
    /// An argument of the call is malformed (a target version that is not `X.Y.Z`, an argument
    /// type with characters no tensor type has).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The bytes are not a StableHLO portable artifact this library can read; holds MLIR's
    /// diagnostics.
    #[error("cannot deserialize the StableHLO portable artifact: {0}")]
    Deserialize(String),
    /// The module uses something refinement cannot turn into a static XLA program.
    #[error("unsupported: {construct}: {detail}")]
    Unsupported {
        /// What it is, e.g. "Shardy (sdy) attributes" or an op name.
        construct: String,
        /// MLIR's diagnostics or the offending line.
        detail: String,
    },
    /// A shape assertion of the module failed at these argument types: JAX's own message, with
    /// its placeholders filled in.
    #[error("{message}")]
    ShapeAssertion {
        /// The message, e.g. "Input shapes do not match the symbolic shape constraint s <= 8 ...".
        message: String,
    },
    /// The refinement pipeline failed (e.g. argument types that do not fit `@main`); holds
    /// MLIR's diagnostics.
    #[error("shape refinement failed: {0}")]
    Pipeline(String),
    /// The refined module could not be written at the target version; holds MLIR's diagnostics.
    #[error("cannot serialize the refined module: {0}")]
    Serialize(String),
}
