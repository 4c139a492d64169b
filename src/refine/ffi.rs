//! Raw types of the MLIR C API (`mlir-c/IR.h`, `mlir-c/Diagnostics.h`, `mlir-c/Pass.h`) and the
//! StableHLO C API (`stablehlo/integrations/c/StablehloApi.h`), and the one table of function
//! pointers resolved from the library.
//!
//! Every handle is a struct holding one pointer, passed by value, exactly as in the headers.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::Path;

use super::error::RefineError;

/// `MlirStringRef`: a non-owning `(data, length)` string; not NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct MlirStringRef {
    pub data: *const c_char,
    pub length: usize,
}

impl MlirStringRef {
    /// Borrows `bytes` for the duration of one call.
    pub(crate) fn new(bytes: &[u8]) -> MlirStringRef {
        MlirStringRef {
            data: bytes.as_ptr().cast::<c_char>(),
            length: bytes.len(),
        }
    }

    /// The bytes this refers to (empty for a null pointer).
    ///
    /// # Safety
    /// `data` must be null or valid for `length` bytes for the returned lifetime.
    pub(crate) unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.data.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: guaranteed by the caller.
        unsafe { std::slice::from_raw_parts(self.data.cast::<u8>(), self.length) }
    }
}

/// `MlirLogicalResult`: `{ int8_t value; }`, non-zero on success.
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct MlirLogicalResult {
    pub value: i8,
}

impl MlirLogicalResult {
    pub(crate) fn succeeded(self) -> bool {
        self.value != 0
    }
}

macro_rules! handle {
    ($($name:ident),* $(,)?) => {$(
        #[doc = concat!("`", stringify!($name), "`: an opaque handle (`{ void *ptr; }`).")]
        #[repr(C)]
        #[derive(Clone, Copy)]
        pub(crate) struct $name {
            pub ptr: *mut c_void,
        }
        impl $name {
            #[allow(dead_code)]
            pub(crate) fn is_null(self) -> bool {
                self.ptr.is_null()
            }
        }
    )*};
}

handle!(
    MlirContext,
    MlirModule,
    MlirOperation,
    MlirPassManager,
    MlirOpPassManager,
    MlirDialectHandle,
    MlirDialect,
    MlirDiagnostic,
    MlirLocation,
    MlirOpPrintingFlags,
);

/// `MlirDiagnosticSeverity` (a C enum).
pub(crate) type MlirDiagnosticSeverity = c_int;
pub(crate) const SEVERITY_ERROR: MlirDiagnosticSeverity = 0;
pub(crate) const SEVERITY_WARNING: MlirDiagnosticSeverity = 1;
pub(crate) const SEVERITY_NOTE: MlirDiagnosticSeverity = 2;

/// `MlirStringCallback`: called with successive pieces of a printed string.
pub(crate) type MlirStringCallback = unsafe extern "C" fn(MlirStringRef, *mut c_void);
/// `MlirDiagnosticHandler`: returns success if it handled the diagnostic (then MLIR does not
/// print it itself).
pub(crate) type MlirDiagnosticHandler =
    unsafe extern "C" fn(MlirDiagnostic, *mut c_void) -> MlirLogicalResult;
/// `MlirDiagnosticHandlerID` (`uint64_t`).
pub(crate) type MlirDiagnosticHandlerId = u64;

/// Declares the function table: one field per C function, resolved by name at load.
macro_rules! functions {
    ($( $name:ident : fn($($arg:ty),*) $(-> $ret:ty)? ;)*) => {
        /// The resolved C functions of the refiner library.
        #[allow(non_snake_case)]
        pub(crate) struct Functions {
            $( pub $name: unsafe extern "C" fn($($arg),*) $(-> $ret)?, )*
        }

        impl Functions {
            /// Resolves every function, or names the first one missing.
            pub(crate) fn resolve(
                lib: &libloading::Library,
                path: &Path,
            ) -> Result<Functions, RefineError> {
                Ok(Functions {
                    $( $name: {
                        const NAME: &[u8] = concat!(stringify!($name), "\0").as_bytes();
                        // SAFETY: the field's type is the function's C signature as declared in
                        // the MLIR / StableHLO C API headers (see the module docs); the pointer
                        // stays valid because the library is never unloaded.
                        let sym = unsafe {
                            lib.get::<unsafe extern "C" fn($($arg),*) $(-> $ret)?>(NAME)
                        }
                        .map_err(|_| RefineError::MissingSymbol {
                            path: path.to_path_buf(),
                            symbol: symbol_name(NAME),
                        })?;
                        *sym
                    }, )*
                })
            }
        }
    };
}

fn symbol_name(nul_terminated: &[u8]) -> String {
    CStr::from_bytes_with_nul(nul_terminated)
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default()
}

functions! {
    // StableHLO C API.
    stablehloGetCurrentVersion: fn(MlirStringCallback, *mut c_void);
    stablehloGetMinimumVersion: fn(MlirStringCallback, *mut c_void);
    stablehloDeserializePortableArtifactNoError: fn(MlirStringRef, MlirContext) -> MlirModule;
    stablehloSerializePortableArtifactFromModule:
        fn(MlirModule, MlirStringRef, MlirStringCallback, *mut c_void, bool) -> MlirLogicalResult;
    mlirRegisterAllStablehloPasses: fn();
    mlirGetDialectHandle__stablehlo__: fn() -> MlirDialectHandle;
    // MLIR IR.
    mlirContextCreateWithThreading: fn(bool) -> MlirContext;
    mlirContextDestroy: fn(MlirContext);
    mlirGetDialectHandle__func__: fn() -> MlirDialectHandle;
    mlirDialectHandleLoadDialect: fn(MlirDialectHandle, MlirContext) -> MlirDialect;
    mlirModuleGetOperation: fn(MlirModule) -> MlirOperation;
    mlirModuleDestroy: fn(MlirModule);
    mlirOpPrintingFlagsCreate: fn() -> MlirOpPrintingFlags;
    mlirOpPrintingFlagsDestroy: fn(MlirOpPrintingFlags);
    mlirOpPrintingFlagsElideLargeElementsAttrs: fn(MlirOpPrintingFlags, isize);
    mlirOpPrintingFlagsEnableDebugInfo: fn(MlirOpPrintingFlags, bool, bool);
    mlirOperationPrintWithFlags:
        fn(MlirOperation, MlirOpPrintingFlags, MlirStringCallback, *mut c_void);
    mlirLocationPrint: fn(MlirLocation, MlirStringCallback, *mut c_void);
    // MLIR diagnostics.
    mlirContextAttachDiagnosticHandler: fn(
        MlirContext,
        MlirDiagnosticHandler,
        *mut c_void,
        Option<unsafe extern "C" fn(*mut c_void)>
    ) -> MlirDiagnosticHandlerId;
    mlirDiagnosticPrint: fn(MlirDiagnostic, MlirStringCallback, *mut c_void);
    mlirDiagnosticGetSeverity: fn(MlirDiagnostic) -> MlirDiagnosticSeverity;
    mlirDiagnosticGetLocation: fn(MlirDiagnostic) -> MlirLocation;
    mlirDiagnosticGetNumNotes: fn(MlirDiagnostic) -> isize;
    mlirDiagnosticGetNote: fn(MlirDiagnostic, isize) -> MlirDiagnostic;
    // MLIR passes.
    mlirPassManagerCreate: fn(MlirContext) -> MlirPassManager;
    mlirPassManagerDestroy: fn(MlirPassManager);
    mlirPassManagerGetAsOpPassManager: fn(MlirPassManager) -> MlirOpPassManager;
    mlirParsePassPipeline:
        fn(MlirOpPassManager, MlirStringRef, MlirStringCallback, *mut c_void) -> MlirLogicalResult;
    mlirPassManagerRunOnOp: fn(MlirPassManager, MlirOperation) -> MlirLogicalResult;
}

/// An [`MlirStringCallback`] appending each piece to the `Vec<u8>` that `user_data` points to.
///
/// # Safety
/// `user_data` must point to a live `Vec<u8>` not otherwise borrowed during the call, and `s`
/// must be valid for the call (MLIR guarantees this).
pub(crate) unsafe extern "C" fn append_to_vec(s: MlirStringRef, user_data: *mut c_void) {
    if user_data.is_null() {
        return;
    }
    // SAFETY: guaranteed by the caller (we only ever pass `&mut Vec<u8>` as `user_data`).
    let out = unsafe { &mut *user_data.cast::<Vec<u8>>() };
    // SAFETY: MLIR passes a valid string for the duration of the callback.
    out.extend_from_slice(unsafe { s.bytes() });
}
