//! Shape refinement: a shape-polymorphic StableHLO portable artifact in, a static one out.
//!
//! `jax.export` with symbolic dimensions writes a module whose `@main` takes `tensor<?x...>`
//! arguments; PJRT cannot compile it as it is. [`Refiner::refine`] runs StableHLO's own passes on
//! it for concrete argument types, through the StableHLO C API of a library loaded at run time
//! (the pinned `libTorchMLIRAggregateCAPI.so` of torch-mlir, fetched by
//! `scripts/fetch-plugin.sh --refiner-only` into `third_party/refiner/`):
//!
//! ```text
//! builtin.module(stablehlo-refine-arguments{types=...},stablehlo-refine-shapes,
//!                func.func(stablehlo-canonicalize-dynamism,stablehlo-check-shape-assertions))
//! ```
//!
//! then checks that nothing dynamic is left and serializes a portable artifact at the version the
//! PJRT plugin asks for. Every MLIR diagnostic is captured into the returned error; MLIR never
//! prints on its own. Each call uses its own MLIR context, created without a thread pool, and
//! destroys it (with the module and the pass manager) on every path.
//!
//! This is an LLVM + MLIR build running on untrusted modules: it is meant to run inside the
//! jailed compile worker. A bug in MLIR can still abort the process (`llvm::report_fatal_error`);
//! nothing here can turn that into an error.
//!
//! ```no_run
//! use xlaguard::refine::{mlir_type, Refiner};
//! # fn main() -> Result<(), xlaguard::refine::RefineError> {
//! let refiner =
//!     Refiner::load("third_party/refiner/libTorchMLIRAggregateCAPI.so".as_ref())?;
//! let module = std::fs::read("hlo/poly/model.mlirbc").unwrap();
//! let static_module = refiner.refine(&module, &[mlir_type("f32", &[3, 16])], "1.10.0")?;
//! # Ok(()) }
//! ```

mod error;
mod ffi;
mod scan;

use std::cell::RefCell;
use std::ffi::c_void;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

pub use error::RefineError;
use ffi::{Functions, MlirContext, MlirDiagnostic, MlirLogicalResult, MlirModule, MlirStringRef};

/// `RTLD_NODELETE` (glibc and musl, Linux): keep the object mapped after `dlclose`.
const RTLD_NODELETE: std::ffi::c_int = 0x1000;

/// A loaded StableHLO C API library: its resolved functions and its StableHLO version.
///
/// Loading is expensive (a 215 MB library); load once and refine many times. [`Refiner::refine`]
/// may be called from several threads at once: each call has its own MLIR context.
pub struct Refiner {
    fns: Functions,
    path: PathBuf,
    version: (u32, u32, u32),
    minimum: (u32, u32, u32),
    // Never unloaded: LLVM registers global destructors and pass registries in the library; a
    // dlclose under them would leave dangling pointers (and RTLD_NODELETE keeps it mapped anyway).
    _lib: std::mem::ManuallyDrop<libloading::Library>,
}

impl fmt::Debug for Refiner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refiner")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("minimum", &self.minimum)
            .finish()
    }
}

impl Refiner {
    /// Loads the library at `path` (`dlopen` with `RTLD_NODELETE`; it is never unloaded),
    /// resolves every function the refiner uses, reads its StableHLO version and registers the
    /// StableHLO passes (once per library per process).
    ///
    /// # Errors
    /// [`RefineError::Load`] if the file cannot be loaded as a shared library or reports no valid
    /// version; [`RefineError::MissingSymbol`] if it lacks a needed function.
    pub fn load(path: &Path) -> Result<Refiner, RefineError> {
        let load_err = |detail: String| RefineError::Load {
            path: path.to_path_buf(),
            detail,
        };
        if !path.is_file() {
            return Err(load_err("no such file".into()));
        }
        let flags =
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | RTLD_NODELETE;
        // SAFETY: loading a shared library runs its initializers. The caller chose this file as
        // the refiner library (a pinned, sha256-checked download); that trust is the premise.
        let lib: libloading::Library =
            unsafe { libloading::os::unix::Library::open(Some(path), flags) }
                .map_err(|e| load_err(e.to_string()))?
                .into();
        let fns = Functions::resolve(&lib, path)?;
        let current = {
            let mut out = Vec::new();
            // SAFETY: `stablehloGetCurrentVersion(callback, userData)`; `out` is the Vec the
            // callback appends to, alive and unborrowed for the call.
            unsafe {
                (fns.stablehloGetCurrentVersion)(ffi::append_to_vec, vec_ptr(&mut out));
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        let minimum = {
            let mut out = Vec::new();
            // SAFETY: as above, for `stablehloGetMinimumVersion`.
            unsafe {
                (fns.stablehloGetMinimumVersion)(ffi::append_to_vec, vec_ptr(&mut out));
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        let version = parse_version(&current).ok_or_else(|| {
            load_err(format!(
                "stablehloGetCurrentVersion returned {current:?}, not a version"
            ))
        })?;
        let minimum = parse_version(&minimum).ok_or_else(|| {
            load_err(format!(
                "stablehloGetMinimumVersion returned {minimum:?}, not a version"
            ))
        })?;
        register_passes_once(&fns);
        Ok(Refiner {
            fns,
            path: path.to_path_buf(),
            version,
            minimum,
            _lib: std::mem::ManuallyDrop::new(lib),
        })
    }

    /// The library's StableHLO version (`stablehloGetCurrentVersion`), e.g. `(1, 19, 0)`: the
    /// newest portable artifact it reads and the newest version it writes.
    pub fn version(&self) -> (u32, u32, u32) {
        self.version
    }

    /// The oldest StableHLO version the library writes (`stablehloGetMinimumVersion`).
    pub fn minimum_version(&self) -> (u32, u32, u32) {
        self.minimum
    }

    /// The library file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Refines `module` (portable artifact bytes) so that `@main` takes exactly `arg_types`,
    /// then serializes a portable artifact at `target_version` (e.g. `"1.10.0"`).
    ///
    /// `arg_types` holds one MLIR type per `@main` argument, in order, including a leading
    /// platform-index or effect-token argument if `@main` has one (see [`mlir_type`]). Runs
    /// `stablehlo-refine-arguments`, `stablehlo-refine-shapes`, then per function
    /// `stablehlo-canonicalize-dynamism` and `stablehlo-check-shape-assertions`, and refuses a
    /// result that still has dynamic types, shape-dynamic ops, or XLA-only dynamic custom calls.
    ///
    /// # Errors
    /// [`RefineError::TooOld`] if the module or `target_version` is newer than the library (or
    /// the target older than it can write); [`RefineError::InvalidArgument`] for a malformed
    /// target or type; [`RefineError::Deserialize`] for bytes it cannot read;
    /// [`RefineError::Unsupported`] for constructs it cannot make static;
    /// [`RefineError::ShapeAssertion`] when the module's own shape checks fail at these types
    /// (JAX's message); [`RefineError::Pipeline`] for other pass failures (e.g. types that do not
    /// fit `@main`); [`RefineError::Serialize`] if the result cannot be written at the target.
    pub fn refine(
        &self,
        module: &[u8],
        arg_types: &[String],
        target_version: &str,
    ) -> Result<Vec<u8>, RefineError> {
        let target = parse_version(target_version).ok_or_else(|| {
            RefineError::InvalidArgument(format!(
                "target version {target_version:?} is not of the form MAJOR.MINOR.PATCH"
            ))
        })?;
        if let Some(produced) = artifact_version(module) {
            if produced > self.version {
                return Err(RefineError::TooOld {
                    what: format!("the refiner {}", self.path.display()),
                    version: fmt_version(self.version),
                    needed: format!("{} (the module's producer)", fmt_version(produced)),
                });
            }
        }
        if target > self.version {
            return Err(RefineError::TooOld {
                what: format!("the refiner {}", self.path.display()),
                version: fmt_version(self.version),
                needed: format!("{target_version} (the target version)"),
            });
        }
        if target < self.minimum {
            return Err(RefineError::TooOld {
                what: "the target version".into(),
                version: target_version.into(),
                needed: format!(
                    "{} (the oldest version the refiner writes)",
                    fmt_version(self.minimum)
                ),
            });
        }
        for t in arg_types {
            check_type(t)?;
        }

        let session = Session::new(&self.fns);
        let module = session.deserialize(module)?;
        session
            .run(
                &module,
                &format!(
                "builtin.module(stablehlo-refine-arguments{{types={}}},stablehlo-refine-shapes,\
                 func.func(stablehlo-canonicalize-dynamism))",
                arg_types.join(",")
            ),
            )
            .map_err(RefineError::Pipeline)?;
        // The assertions run in their own pass manager so that a failure here is known to be a
        // failed assertion, not some other pass's complaint.
        session
            .run(
                &module,
                "builtin.module(func.func(stablehlo-check-shape-assertions))",
            )
            .map_err(|_| session.assertion_error())?;
        scan::check_static(&session.print(&module))?;
        session.serialize(&module, target_version)
    }
}

impl Refiner {
    /// The error messages of the module's `@shape_assertion` custom calls, as JAX wrote them
    /// (placeholders `{0}`, `{1}`, ... unfilled): the export's shape constraints and its
    /// "dimension variable >= 1" checks. Read from the module as deserialized, before any
    /// refinement, so they are known even when refinement fails before the assertions run
    /// (a constraint guarding a slice: the slice fails to refine first).
    ///
    /// # Errors
    /// [`RefineError::Deserialize`] / [`RefineError::Unsupported`] as [`Refiner::refine`].
    pub fn shape_assertions(&self, module: &[u8]) -> Result<Vec<String>, RefineError> {
        let session = Session::new(&self.fns);
        let module = session.deserialize(module)?;
        Ok(assertion_messages(&session.print(&module)))
    }

    /// The module as StableHLO text with its locations (`loc("x")` on the arguments JAX named)
    /// and large constants elided: what a caller reads argument names and shape assertions from.
    ///
    /// # Errors
    /// [`RefineError::Deserialize`] / [`RefineError::Unsupported`] as [`Refiner::refine`].
    pub fn print_with_locations(&self, module: &[u8]) -> Result<String, RefineError> {
        let session = Session::new(&self.fns);
        let module = session.deserialize(module)?;
        Ok(session.print_with(&module, true))
    }
}

/// The `error_message` of every `@shape_assertion` custom call in printed MLIR (as
/// [`Refiner::print_with_locations`] gives it), unescaped.
pub fn assertion_messages(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("@shape_assertion") {
        rest = rest.get(at.saturating_add(1)..).unwrap_or_default();
        let op_end = rest.find('\n').unwrap_or(rest.len());
        let line = rest.get(..op_end).unwrap_or_default();
        let Some(m) = line.find("error_message = \"") else {
            continue;
        };
        let body = line.get(m.saturating_add(17)..).unwrap_or_default();
        let mut msg = Vec::new();
        let b = body.as_bytes();
        let mut i = 0usize;
        while let Some(&c) = b.get(i) {
            match c {
                b'"' => break,
                // MLIR escapes a string as `\\`, `\"`, `\n`, `\t` or two hex digits.
                b'\\' => {
                    let hex = |j: usize| b.get(j).and_then(|&x| char::from(x).to_digit(16));
                    match (
                        b.get(i.saturating_add(1)),
                        hex(i.saturating_add(1)),
                        hex(i.saturating_add(2)),
                    ) {
                        (_, Some(h), Some(l)) => {
                            msg.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                            i = i.saturating_add(3);
                        }
                        (Some(&e), _, _) => {
                            msg.push(match e {
                                b'n' => b'\n',
                                b't' => b'\t',
                                other => other,
                            });
                            i = i.saturating_add(2);
                        }
                        (None, _, _) => break,
                    }
                }
                c => {
                    msg.push(c);
                    i = i.saturating_add(1);
                }
            }
        }
        let msg = String::from_utf8_lossy(&msg).into_owned();
        if !out.contains(&msg) {
            out.push(msg);
        }
    }
    out
}

/// Registers the StableHLO passes of a library once per process (registering twice is harmless
/// in release builds of MLIR but aborts in debug builds).
fn register_passes_once(fns: &Functions) {
    static DONE: OnceLock<Mutex<Vec<usize>>> = OnceLock::new();
    let key = fns.mlirRegisterAllStablehloPasses as usize;
    let mut done = DONE
        .get_or_init(|| Mutex::new(Vec::new()))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !done.contains(&key) {
        // SAFETY: `mlirRegisterAllStablehloPasses()` takes nothing; the mutex keeps it to one call
        // per library per process and orders it before any pipeline of this library is parsed.
        unsafe { (fns.mlirRegisterAllStablehloPasses)() };
        done.push(key);
    }
}

/// One diagnostic, copied out of MLIR.
#[derive(Debug, Clone)]
struct Diag {
    severity: ffi::MlirDiagnosticSeverity,
    message: String,
    location: String,
    notes: Vec<Diag>,
}

/// Where the diagnostic handler of a context writes; boxed so its address is stable.
struct DiagSink<'a> {
    fns: &'a Functions,
    entries: RefCell<Vec<Diag>>,
}

/// Most diagnostics kept per call; a pathological module could emit millions.
const MAX_DIAGS: usize = 200;
/// Longest message or location kept, in bytes.
const MAX_TEXT: usize = 8 * 1024;

impl DiagSink<'_> {
    /// Copies a diagnostic (and up to two levels of notes).
    ///
    /// # Safety
    /// `d` must be a diagnostic live for the duration of the call (MLIR's handler contract).
    unsafe fn read(&self, d: MlirDiagnostic, depth: usize) -> Diag {
        let mut message = Vec::new();
        let mut location = Vec::new();
        // SAFETY: live diagnostic; `message` is the Vec the callback appends to.
        let severity = unsafe {
            (self.fns.mlirDiagnosticPrint)(d, ffi::append_to_vec, vec_ptr(&mut message));
            (self.fns.mlirDiagnosticGetSeverity)(d)
        };
        // SAFETY: the location of a live diagnostic is owned by its context; `location` is the
        // Vec the callback appends to.
        unsafe {
            let loc = (self.fns.mlirDiagnosticGetLocation)(d);
            if !loc.is_null() {
                (self.fns.mlirLocationPrint)(loc, ffi::append_to_vec, vec_ptr(&mut location));
            }
        }
        let mut notes = Vec::new();
        if depth < 2 {
            // SAFETY: live diagnostic.
            let n = unsafe { (self.fns.mlirDiagnosticGetNumNotes)(d) };
            for i in 0..n.clamp(0, 16) {
                // SAFETY: `i` is below the diagnostic's note count; a note lives as long as its
                // parent.
                let note = unsafe { (self.fns.mlirDiagnosticGetNote)(d, i) };
                if !note.is_null() {
                    // SAFETY: as above.
                    notes.push(unsafe { self.read(note, depth + 1) });
                }
            }
        }
        Diag {
            severity,
            message: bounded(&message),
            location: bounded(&location),
            notes,
        }
    }
}

/// The diagnostic handler attached to every context: records the diagnostic and reports it
/// handled, so that MLIR does not print it to stderr.
///
/// # Safety
/// `user_data` must point to the live [`DiagSink`] attached with this handler.
unsafe extern "C" fn on_diagnostic(d: MlirDiagnostic, user_data: *mut c_void) -> MlirLogicalResult {
    if !user_data.is_null() {
        // SAFETY: `user_data` is the boxed sink of the session that owns this context; the box
        // outlives the context (see `Session`).
        let sink = unsafe { &*user_data.cast::<DiagSink<'_>>() };
        // SAFETY: MLIR passes a diagnostic live for the duration of the handler.
        let diag = unsafe { sink.read(d, 0) };
        if let Ok(mut entries) = sink.entries.try_borrow_mut() {
            if entries.len() < MAX_DIAGS {
                entries.push(diag);
            }
        }
    }
    MlirLogicalResult { value: 1 }
}

/// One refinement: an MLIR context with its diagnostic sink. Destroys the context on drop.
struct Session<'a> {
    fns: &'a Functions,
    ctx: MlirContext,
    // The handler's user data. `Drop for Session` destroys the context before the fields are
    // dropped, so the handler never outlives it.
    sink: Box<DiagSink<'a>>,
}

impl<'a> Session<'a> {
    fn new(fns: &'a Functions) -> Session<'a> {
        let sink = Box::new(DiagSink {
            fns,
            entries: RefCell::new(Vec::new()),
        });
        // SAFETY: `mlirContextCreateWithThreading(false)`: a context without a thread pool (this
        // runs inside a jail that allows no new threads).
        let ctx = unsafe { (fns.mlirContextCreateWithThreading)(false) };
        let session = Session { fns, ctx, sink };
        let user_data = std::ptr::from_ref::<DiagSink<'a>>(&*session.sink)
            .cast_mut()
            .cast::<c_void>();
        // SAFETY: live context; the handler reads the boxed sink, which lives until after the
        // context is destroyed (`Drop for Session`); no deleter is needed (we own the box).
        unsafe {
            (fns.mlirContextAttachDiagnosticHandler)(session.ctx, on_diagnostic, user_data, None);
        }
        for handle in [
            fns.mlirGetDialectHandle__func__,
            fns.mlirGetDialectHandle__stablehlo__,
        ] {
            // SAFETY: dialect handles are static descriptors of the library; loading one into a
            // live context is always allowed.
            unsafe {
                (fns.mlirDialectHandleLoadDialect)(handle(), session.ctx);
            }
        }
        session
    }

    /// Takes the diagnostics recorded so far.
    fn take(&self) -> Vec<Diag> {
        self.sink
            .entries
            .try_borrow_mut()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }

    /// The diagnostics recorded so far as text, or `fallback` if there are none.
    fn take_text(&self, fallback: &str) -> String {
        let diags = self.take();
        if diags.is_empty() {
            return fallback.to_string();
        }
        render(&diags)
    }

    fn deserialize(&self, bytes: &[u8]) -> Result<Module<'_>, RefineError> {
        // SAFETY: live context; `bytes` outlives the call (MLIR copies what it keeps).
        let raw = unsafe {
            (self.fns.stablehloDeserializePortableArtifactNoError)(
                MlirStringRef::new(bytes),
                self.ctx,
            )
        };
        if raw.is_null() {
            let diags = self.take();
            let text = if diags.is_empty() {
                "not a StableHLO portable artifact (no diagnostic)".to_string()
            } else {
                render(&diags)
            };
            if let Some(dialect) = diags.iter().find_map(|d| unsupported_dialect(&d.message)) {
                let construct = if dialect == "sdy" {
                    "Shardy (sdy) attributes".to_string()
                } else {
                    format!("the '{dialect}' dialect")
                };
                return Err(RefineError::Unsupported {
                    construct,
                    detail: text,
                });
            }
            return Err(RefineError::Deserialize(text));
        }
        self.take();
        Ok(Module { session: self, raw })
    }

    /// Parses and runs one pipeline on the module; on failure returns the diagnostics as text
    /// (and keeps them for [`Session::assertion_error`]).
    fn run(&self, module: &Module<'_>, pipeline: &str) -> Result<(), String> {
        // SAFETY: live context; the pass manager is destroyed (on drop) before it.
        let raw = unsafe { (self.fns.mlirPassManagerCreate)(self.ctx) };
        let pm = PassManager { fns: self.fns, raw };
        let mut parse_errors = Vec::new();
        // SAFETY: live pass manager; the pipeline text outlives the call; `parse_errors` is the
        // Vec the callback appends to.
        let parsed = unsafe {
            let op_pm = (self.fns.mlirPassManagerGetAsOpPassManager)(pm.raw);
            (self.fns.mlirParsePassPipeline)(
                op_pm,
                MlirStringRef::new(pipeline.as_bytes()),
                ffi::append_to_vec,
                vec_ptr(&mut parse_errors),
            )
        };
        if !parsed.succeeded() {
            let mut text = String::from_utf8_lossy(&parse_errors).into_owned();
            let diags = self.take_text("");
            if !diags.is_empty() {
                text = format!("{text}\n{diags}");
            }
            return Err(format!(
                "invalid pass pipeline {pipeline:?}: {}",
                text.trim()
            ));
        }
        // SAFETY: live pass manager and module, both of this context.
        let ok = unsafe {
            let op = (self.fns.mlirModuleGetOperation)(module.raw);
            (self.fns.mlirPassManagerRunOnOp)(pm.raw, op)
        };
        if ok.succeeded() {
            self.take();
            return Ok(());
        }
        let diags = self.sink.entries.borrow().clone();
        if diags.is_empty() {
            return Err(format!("{pipeline} failed without a diagnostic"));
        }
        Err(render(&diags))
    }

    /// The error for a failed `stablehlo-check-shape-assertions`: the first failed assertion's
    /// message, or `Unsupported` if an assertion could not be decided statically.
    fn assertion_error(&self) -> RefineError {
        let diags = self.take();
        let first = diags.iter().find(|d| d.severity == ffi::SEVERITY_ERROR);
        match first {
            Some(d) if scan::is_malformed_assertion(&d.message) => RefineError::Unsupported {
                construct: "stablehlo.custom_call @shape_assertion".into(),
                detail: render(&diags),
            },
            Some(d) => RefineError::ShapeAssertion {
                message: d.message.trim().to_string(),
            },
            None => RefineError::Pipeline(if diags.is_empty() {
                "stablehlo-check-shape-assertions failed without a diagnostic".into()
            } else {
                render(&diags)
            }),
        }
    }

    /// The module as text, with large constants elided (only types and op names matter here).
    fn print(&self, module: &Module<'_>) -> String {
        self.print_with(module, false)
    }

    /// [`Session::print`], with locations (`loc(...)`, as aliases) when `locations`.
    fn print_with(&self, module: &Module<'_>, locations: bool) -> String {
        let mut out = Vec::new();
        // SAFETY: live module; the flags are created and destroyed here; `out` is the Vec the
        // callback appends to.
        unsafe {
            let flags = (self.fns.mlirOpPrintingFlagsCreate)();
            (self.fns.mlirOpPrintingFlagsElideLargeElementsAttrs)(flags, 16);
            if locations {
                (self.fns.mlirOpPrintingFlagsEnableDebugInfo)(flags, true, false);
            }
            let op = (self.fns.mlirModuleGetOperation)(module.raw);
            (self.fns.mlirOperationPrintWithFlags)(
                op,
                flags,
                ffi::append_to_vec,
                vec_ptr(&mut out),
            );
            (self.fns.mlirOpPrintingFlagsDestroy)(flags);
        }
        self.take();
        String::from_utf8_lossy(&out).into_owned()
    }

    fn serialize(&self, module: &Module<'_>, target: &str) -> Result<Vec<u8>, RefineError> {
        let mut out = Vec::new();
        // SAFETY: live module; `target` outlives the call; `out` is the Vec the callback appends
        // to. `allowOtherDialects = false`: only StableHLO may be written.
        let ok = unsafe {
            (self.fns.stablehloSerializePortableArtifactFromModule)(
                module.raw,
                MlirStringRef::new(target.as_bytes()),
                ffi::append_to_vec,
                vec_ptr(&mut out),
                false,
            )
        };
        if !ok.succeeded() || out.is_empty() {
            return Err(RefineError::Serialize(
                self.take_text("stablehloSerializePortableArtifactFromModule failed"),
            ));
        }
        Ok(out)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        // SAFETY: the context is live and every module and pass manager of it has been dropped
        // (they borrow the session). The sink box is dropped only after this, so the handler
        // never sees a dangling pointer.
        unsafe { (self.fns.mlirContextDestroy)(self.ctx) };
    }
}

/// A module owned by a session; destroyed on drop.
struct Module<'s> {
    session: &'s Session<'s>,
    raw: MlirModule,
}

impl Drop for Module<'_> {
    fn drop(&mut self) {
        // SAFETY: a live module we own, destroyed exactly once, before its context.
        unsafe { (self.session.fns.mlirModuleDestroy)(self.raw) };
    }
}

/// A pass manager; destroyed on drop.
struct PassManager<'a> {
    fns: &'a Functions,
    raw: ffi::MlirPassManager,
}

impl Drop for PassManager<'_> {
    fn drop(&mut self) {
        // SAFETY: a live pass manager we own, destroyed exactly once, before its context.
        unsafe { (self.fns.mlirPassManagerDestroy)(self.raw) };
    }
}

fn vec_ptr(v: &mut Vec<u8>) -> *mut c_void {
    std::ptr::from_mut(v).cast::<c_void>()
}

fn bounded(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TEXT)]).into_owned();
    if bytes.len() > MAX_TEXT {
        format!("{s}... ({} bytes)", bytes.len())
    } else {
        s
    }
}

/// Diagnostics as text: `error: MESSAGE` (`at LOCATION` on the next line), notes indented.
fn render(diags: &[Diag]) -> String {
    fn one(d: &Diag, indent: &str, out: &mut String) {
        let label = match d.severity {
            ffi::SEVERITY_ERROR => "error",
            ffi::SEVERITY_WARNING => "warning",
            ffi::SEVERITY_NOTE => "note",
            _ => "remark",
        };
        out.push_str(&format!("{indent}{label}: {}", d.message.trim()));
        if !d.location.is_empty() && d.location != "loc(unknown)" {
            out.push_str(&format!("\n{indent}  at {}", d.location));
        }
        for n in &d.notes {
            out.push('\n');
            one(n, &format!("{indent}  "), out);
        }
    }
    let mut out = String::new();
    for (i, d) in diags.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        one(d, "", &mut out);
    }
    out
}

/// The dialect a deserialize diagnostic says the library lacks: `dialect 'X' is unknown` (not
/// in this build) or `dialect 'X' does not implement the bytecode interface` → `X`.
fn unsupported_dialect(message: &str) -> Option<&str> {
    let rest = message.split("dialect '").nth(1)?;
    let (name, tail) = rest.split_once('\'')?;
    (tail.starts_with(" is unknown")
        || tail.starts_with(" does not implement the bytecode interface"))
    .then_some(name)
}

/// Refuses argument types that could break out of the pipeline's option syntax: a tensor type
/// here is letters, digits and `<>_.!` only (`tensor<3x16xf32>`, `tensor<2xcomplex<f32>>`,
/// `!stablehlo.token`).
fn check_type(t: &str) -> Result<(), RefineError> {
    let ok = !t.is_empty()
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"<>_.!".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(RefineError::InvalidArgument(format!(
            "argument type {t:?} is not a static MLIR tensor type like \"tensor<3x16xf32>\""
        )))
    }
}

/// `"1.19.0"` → `(1, 19, 0)`; exactly three decimal numbers.
fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut parts = s.trim().split('.');
    let mut next = || -> Option<u32> {
        let p = parts.next()?;
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        p.parse().ok()
    };
    let v = (next()?, next()?, next()?);
    parts.next().is_none().then_some(v)
}

fn fmt_version(v: (u32, u32, u32)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// The StableHLO version in a portable artifact's producer string (`StableHLO_v1.18.0` →
/// `(1, 18, 0)`), read from the MLIR bytecode header; `None` if the bytes are not MLIR bytecode
/// or the producer is not StableHLO.
pub fn artifact_version(module: &[u8]) -> Option<(u32, u32, u32)> {
    let rest = module.strip_prefix(b"ML\xefR")?;
    // The bytecode version is an MLIR varint: the first byte's trailing zeros count the bytes
    // that follow it (a zero byte: eight).
    let first = *rest.first()?;
    let extra = if first == 0 {
        8
    } else {
        first.trailing_zeros() as usize
    };
    let rest = rest.get(1 + extra..)?;
    let end = rest.iter().take(256).position(|&b| b == 0)?;
    let producer = std::str::from_utf8(&rest[..end]).ok()?;
    parse_version(producer.strip_prefix("StableHLO_v")?)
}

/// The MLIR tensor type for an element type and static dimensions: `("f32", [3, 16])` →
/// `"tensor<3x16xf32>"`; `("f32", [])` → `"tensor<f32>"`.
pub fn mlir_type(dtype_mlir: &str, dims: &[u64]) -> String {
    let mut s = String::from("tensor<");
    for d in dims {
        s.push_str(&d.to_string());
        s.push('x');
    }
    s.push_str(dtype_mlir);
    s.push('>');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assertion_messages_are_read_and_unescaped() {
        let text = r#"  stablehlo.custom_call @shape_assertion(%1, %2) {error_message = "constraint s <= 8. Expected '- s + 8' to be greater or equal to 0, but found {0}. \22q\22 a\\b", has_side_effect = true} : (tensor<i1>, tensor<i32>) -> ()
  stablehlo.custom_call @other() {error_message = "not this"} : () -> ()
"#;
        assert_eq!(
            assertion_messages(text),
            ["constraint s <= 8. Expected '- s + 8' to be greater or equal to 0, but found {0}. \"q\" a\\b"]
        );
    }

    #[test]
    fn versions() {
        assert_eq!(parse_version("1.19.0"), Some((1, 19, 0)));
        assert_eq!(parse_version("1.19"), None);
        assert_eq!(parse_version("1.19.0.1"), None);
        assert_eq!(parse_version("1.+1.0"), None);
        assert_eq!(parse_version("v1.1.0"), None);
        let mut bc = b"ML\xefR\x0dStableHLO_v1.18.0\0rest".to_vec();
        assert_eq!(artifact_version(&bc), Some((1, 18, 0)));
        bc[4] = 0x02; // a two-byte varint: one more byte before the producer
        assert_eq!(artifact_version(&bc), None);
        assert_eq!(artifact_version(b"ML\xefR\x0dMLIR21.0.0git\0"), None);
        assert_eq!(artifact_version(b"module {}"), None);
        assert_eq!(artifact_version(b"ML\xefR\x0dStableHLO_v1.18.0"), None);
    }

    #[test]
    fn types() {
        assert_eq!(mlir_type("f32", &[3, 16]), "tensor<3x16xf32>");
        assert_eq!(mlir_type("i1", &[]), "tensor<i1>");
        assert_eq!(mlir_type("f32", &[0]), "tensor<0xf32>");
        assert!(check_type("tensor<2xcomplex<f32>>").is_ok());
        assert!(check_type("!stablehlo.token").is_ok());
        for bad in [
            "",
            "tensor<3xf32>},canonicalize{",
            "tensor<3xf32>,tensor<2xi32>",
            "a b",
        ] {
            assert!(
                matches!(check_type(bad), Err(RefineError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn dialect_name() {
        assert_eq!(
            unsupported_dialect("dialect 'sdy' does not implement the bytecode interface"),
            Some("sdy")
        );
        assert_eq!(
            unsupported_dialect("dialect 'sdy' is unknown. If this is intended, ..."),
            Some("sdy")
        );
        assert_eq!(unsupported_dialect("dialect 'sdy' has an invalid op"), None);
    }
}
