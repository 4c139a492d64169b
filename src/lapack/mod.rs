//! LAPACK custom-call handlers for XLA:CPU: what makes `jnp.linalg` exports run.
//!
//! jax lowers `jnp.linalg.solve`, `inv`, `det`, `cholesky`, `eigh`, `svd`, `lstsq`, `qr`,
//! `jax.scipy.linalg.solve_triangular`, `cho_factor`/`cho_solve` ... on CPU to
//! `stablehlo.custom_call @lapack_<t><routine>_ffi` (e.g. `lapack_sgetrf_ffi`). jaxlib registers
//! handlers for these with its CPU client; the PJRT plugin alone has none, so such a module
//! fails to compile ("No FFI handler registered"). [`register`] registers ours, through the
//! plugin's FFI extension (`PJRT_FFI_Extension`, platform `"Host"`), for every target in
//! [`TARGETS`].
//!
//! The handlers follow jaxlib 0.11.2's (`jaxlib/cpu/lapack_kernels.cc`): same routine, same
//! column-major layout and leading dimensions, same workspace sizes, `info` returned as a
//! result (jax's lowering turns a failure into NaNs). They call the LAPACK found by
//! [`crate::plugin::find_lapack`]: by default the OpenBLAS that scipy's wheels bundle, pinned in
//! `third_party/requirements-lapack.txt`, which is the very library jaxlib calls through
//! `scipy.linalg.cython_lapack`; so results are the same bits as JAX's (`docs/linalg.md`).
//!
//! Compiling needs only the registration (XLA checks that a handler exists); the library is
//! loaded at the first execute, so the compile worker never loads it. Every operand and result
//! is checked against what the target takes before any LAPACK call; a mismatch, or a missing
//! library, is an FFI error that XLA returns from execute, never a crash.
//!
//! This is an FFI layer: it imports nothing from `validate`, `server`, `compile` or `engine`.

pub mod ffi;
mod kernels;
pub mod sys;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::pjrt::{Api, PjrtError};
use ffi::{Complex, FfiError, Frame, XLA_FFI_CallFrame, XLA_FFI_Error};
pub use sys::Lapack;

/// The platform name XLA:CPU registers custom-call handlers under.
pub const PLATFORM: &str = "Host";

/// The environment variable naming a LAPACK library file.
pub const LAPACK_ENV: &str = "XLAGUARD_LAPACK";

type Kernel = fn(&Lapack, &mut Frame<'_>) -> Result<(), FfiError>;

macro_rules! handlers {
    ($($fname:ident = $target:literal => $kernel:ident::<$t:ty>;)*) => {
        $(
            /// An `XLA_FFI_Handler`.
            unsafe extern "C" fn $fname(frame: *mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error {
                // SAFETY: XLA calls a registered handler with its call frame (or, when it asks
                // for metadata, a frame carrying the metadata extension).
                unsafe { run(frame, kernels::$kernel::<$t>, $target) }
            }
        )*
        /// Every target we register, with its handler.
        const HANDLERS: &[(&str, ffi::XLA_FFI_Handler)] = &[$(($target, $fname)),*];
    };
}

handlers! {
    sgetrf = "lapack_sgetrf_ffi" => getrf::<f32>;
    dgetrf = "lapack_dgetrf_ffi" => getrf::<f64>;
    cgetrf = "lapack_cgetrf_ffi" => getrf::<Complex<f32>>;
    zgetrf = "lapack_zgetrf_ffi" => getrf::<Complex<f64>>;
    spotrf = "lapack_spotrf_ffi" => potrf::<f32>;
    dpotrf = "lapack_dpotrf_ffi" => potrf::<f64>;
    cpotrf = "lapack_cpotrf_ffi" => potrf::<Complex<f32>>;
    zpotrf = "lapack_zpotrf_ffi" => potrf::<Complex<f64>>;
    strsm = "lapack_strsm_ffi" => trsm::<f32>;
    dtrsm = "lapack_dtrsm_ffi" => trsm::<f64>;
    ctrsm = "lapack_ctrsm_ffi" => trsm::<Complex<f32>>;
    ztrsm = "lapack_ztrsm_ffi" => trsm::<Complex<f64>>;
    sgeqrf = "lapack_sgeqrf_ffi" => geqrf::<f32>;
    dgeqrf = "lapack_dgeqrf_ffi" => geqrf::<f64>;
    cgeqrf = "lapack_cgeqrf_ffi" => geqrf::<Complex<f32>>;
    zgeqrf = "lapack_zgeqrf_ffi" => geqrf::<Complex<f64>>;
    sorgqr = "lapack_sorgqr_ffi" => orgqr::<f32>;
    dorgqr = "lapack_dorgqr_ffi" => orgqr::<f64>;
    cungqr = "lapack_cungqr_ffi" => orgqr::<Complex<f32>>;
    zungqr = "lapack_zungqr_ffi" => orgqr::<Complex<f64>>;
    ssyevd = "lapack_ssyevd_ffi" => eigh::<f32>;
    dsyevd = "lapack_dsyevd_ffi" => eigh::<f64>;
    cheevd = "lapack_cheevd_ffi" => eigh::<Complex<f32>>;
    zheevd = "lapack_zheevd_ffi" => eigh::<Complex<f64>>;
    sgesdd = "lapack_sgesdd_ffi" => gesdd::<f32>;
    dgesdd = "lapack_dgesdd_ffi" => gesdd::<f64>;
    cgesdd = "lapack_cgesdd_ffi" => gesdd::<Complex<f32>>;
    zgesdd = "lapack_zgesdd_ffi" => gesdd::<Complex<f64>>;
}

/// The custom-call targets [`register`] registers.
pub fn targets() -> impl Iterator<Item = &'static str> {
    HANDLERS.iter().map(|(t, _)| *t)
}

/// # Safety
/// `frame` must be null or a call frame XLA passed to a registered handler.
unsafe fn run(frame: *mut XLA_FFI_CallFrame, kernel: Kernel, target: &str) -> *mut XLA_FFI_Error {
    // SAFETY: the caller's contract.
    unsafe {
        ffi::handle(
            frame,
            |f| {
                let lib = library().map_err(FfiError::precondition)?;
                kernel(lib, f)
            },
            target,
        )
    }
}

static LIBRARY: OnceLock<Result<Lapack, String>> = OnceLock::new();

/// The LAPACK the handlers call: the one chosen with [`use_library`], else the one
/// [`crate::plugin::find_lapack`] finds, loaded on first use.
///
/// # Errors
/// Why no library could be loaded (none found, or the file is not a usable LAPACK).
pub fn library() -> Result<&'static Lapack, &'static str> {
    LIBRARY
        .get_or_init(|| match crate::plugin::find_lapack(None) {
            Ok(p) => Lapack::open(&p),
            Err(e) => Err(e.to_string()),
        })
        .as_ref()
        .map_err(String::as_str)
}

/// Chooses the LAPACK library file (before the first LAPACK call of the process).
///
/// # Errors
/// [`LapackError::Load`] if it cannot be loaded; [`LapackError::AlreadyChosen`] if another
/// library is already in use (one per process).
pub fn use_library(path: &Path) -> Result<&'static Lapack, LapackError> {
    let mut err = None;
    let r = LIBRARY.get_or_init(|| Lapack::open(path).inspect_err(|e| err = Some(e.clone())));
    if let Some(e) = err {
        return Err(LapackError::Load(e));
    }
    match r {
        Ok(l) if l.path() == path => Ok(l),
        Ok(l) => Err(LapackError::AlreadyChosen {
            current: l.path().to_path_buf(),
            wanted: path.to_path_buf(),
        }),
        Err(e) => Err(LapackError::Load(e.clone())),
    }
}

/// Errors of this module.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LapackError {
    /// The plugin refused a registration (or has no FFI extension).
    #[error("registering LAPACK handler {target} with the PJRT plugin: {error}")]
    Register {
        /// The custom-call target.
        target: &'static str,
        /// The plugin's error.
        error: PjrtError,
    },
    /// The library could not be loaded.
    #[error("{0}")]
    Load(String),
    /// A library is already in use in this process.
    #[error("LAPACK library {} is already in use; cannot switch to {}", current.display(), wanted.display())]
    AlreadyChosen {
        /// The one in use.
        current: PathBuf,
        /// The one asked for.
        wanted: PathBuf,
    },
}

/// Plugins (by path) whose registry already holds our handlers: the registry is the plugin's
/// and process-wide, and one `dlopen`ed file is one registry.
static REGISTERED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Registers every handler of [`TARGETS`](targets) with a CPU plugin's FFI registry (platform
/// [`PLATFORM`]), once per plugin file and process. Loads no library. Returns how many targets
/// were registered by this call (0 when they already were).
///
/// # Errors
/// [`LapackError::Register`] with the plugin's error for the first target it refused.
pub fn register(api: &Api) -> Result<usize, LapackError> {
    let mut done = REGISTERED.lock().unwrap_or_else(|p| p.into_inner());
    if done.iter().any(|p| p == api.path()) {
        return Ok(0);
    }
    for &(target, handler) in HANDLERS {
        // SAFETY: `handler` is an `XLA_FFI_Handler` defined above: a static function valid for
        // the process, callable from any thread; it checks every frame before using it.
        unsafe { api.register_ffi_handler(target, PLATFORM, handler as *mut std::ffi::c_void) }
            .map_err(|error| LapackError::Register { target, error })?;
    }
    done.push(api.path().to_path_buf());
    Ok(HANDLERS.len())
}
