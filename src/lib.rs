//! xlaguard: a native, validating host for models exported from JAX.
#![deny(missing_docs)]

pub mod pjrt;
pub mod signature;
