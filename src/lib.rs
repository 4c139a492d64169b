//! xlaguard: a native, validating host for models exported from JAX.
//!
//! Load a `jax.export` artifact (or StableHLO text/bytecode, or an HLO proto), compile it through
//! a PJRT plugin, check every input against the module's signature before any device buffer
//! exists, and run it.
//!
//! ```no_run
//! use xlaguard::{Engine, Tensor};
//! # fn main() -> Result<(), xlaguard::Error> {
//! // Compiles run in a jailed child: this same executable, re-run in worker mode.
//! xlaguard::compile::worker_main_if_requested();
//! let engine = Engine::new(&xlaguard::EngineConfig::default())?;
//! let model = engine.load_file("hlo/tiny/model.jaxexport".as_ref())?;
//! let x = Tensor::from_slice(&[8, 16], &[1.0f32; 128]).unwrap();
//! let outputs = model.run(&[x.view(), x.view()])?;
//! assert_eq!(outputs[0].shape(), &[8, 16]);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub mod artifact;
pub mod compile;
pub mod dims;
mod engine;
mod error;
pub mod exec;
pub mod kernels;
#[cfg(feature = "lapack")]
pub mod lapack;
pub mod pjrt;
pub mod plugin;
pub mod refine;
#[cfg(feature = "server")]
pub mod server;
pub mod signature;
pub mod tensor;
pub mod validate;

pub use artifact::params::{BindReport, Mismatch, Params, ParamsError};
pub use engine::{BoundParams, Engine, EngineConfig, Model, ModelInfo};
pub use error::{BindError, Error};
pub use exec::{ExecConfig, ExecSnapshot, Execution};
pub use kernels::CpuKernels;
pub use signature::{DType, Dim, Signature, TensorSpec};
pub use tensor::{Tensor, TensorRef};
pub use validate::{Policy, PolicyObserver, PolicyViolation, RunReport};
