//! Loading a plugin: `dlopen`, `GetPjrtApi`, the version check, and error conversion.

use std::ffi::{c_char, CStr};
use std::fmt;
use std::mem::offset_of;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::ffi::{self, PJRT_Api};
use super::{LoadError, PjrtError};

/// `RTLD_NODELETE` (glibc and musl, Linux): keep the object mapped after `dlclose`.
const RTLD_NODELETE: std::ffi::c_int = 0x1000;

/// Calls a function of the table, or returns `PjrtError::Missing` if the plugin's table is too
/// short to hold it or the slot is null. Evaluates to the function pointer.
macro_rules! api_fn {
    ($api:expr, $name:ident) => {
        $api.function(
            ::std::mem::offset_of!($crate::pjrt::ffi::PJRT_Api, $name),
            stringify!($name),
            |t| t.$name,
        )
    };
}
pub(crate) use api_fn;

/// A loaded PJRT plugin: the library handle and its function table.
///
/// The library is never unloaded (see the `_lib` field).
pub struct Api {
    table: *const PJRT_Api,
    path: PathBuf,
    version: (i32, i32),
    table_size: usize,
    // Never unloaded: XLA registers thread-local destructors and atexit handlers in the
    // threads that call it, which would run into unmapped code after a dlclose (the process
    // crashed at exit once an engine had been dropped). JAX never unloads plugins either.
    _lib: std::mem::ManuallyDrop<libloading::Library>,
}

// SAFETY: the PJRT C API is thread-safe by contract (JAX calls it from many threads); the table
// itself is immutable after `GetPjrtApi` returns.
unsafe impl Send for Api {}
// SAFETY: as above; `&Api` only reads the immutable table.
unsafe impl Sync for Api {}

impl fmt::Debug for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Api")
            .field("path", &self.path)
            .field("version", &self.version)
            .finish()
    }
}

impl Api {
    /// Loads the plugin at `path`, checks its API version and initializes it.
    ///
    /// # Errors
    /// [`LoadError`] if the file cannot be opened as a shared library, lacks `GetPjrtApi`,
    /// returns a null table, has another major version or an older minor than we need, or fails
    /// `PJRT_Plugin_Initialize`.
    pub fn load(path: &Path) -> Result<Arc<Api>, LoadError> {
        if !path.is_file() {
            return Err(LoadError::NotFound {
                path: path.to_path_buf(),
            });
        }
        // RTLD_NODELETE: a plugin is never unmapped, even after its last `Api` is dropped. XLA
        // plugins register process-exit handlers and thread-local destructors that point into
        // their code (JAX never unloads one either); unmapping it made a process that had also
        // used CUDA through cudarc crash after `main` returned (measured on an H200).
        let flags =
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | RTLD_NODELETE;
        // SAFETY: loading a shared library runs its initializers. The caller chose this file as
        // a PJRT plugin; that trust is the premise of the whole host (and the compile sandbox
        // exists because of it).
        let lib: libloading::Library =
            unsafe { libloading::os::unix::Library::open(Some(path), flags) }
                .map_err(|e| LoadError::Dlopen {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                })?
                .into();
        // SAFETY: `GetPjrtApi` has this signature in every PJRT plugin (pjrt_c_api.h).
        let get: libloading::Symbol<ffi::GetPjrtApiFn> = unsafe { lib.get(b"GetPjrtApi\0") }
            .map_err(|e| LoadError::MissingSymbol {
                path: path.to_path_buf(),
                detail: e.to_string(),
            })?;
        // SAFETY: calling the plugin's documented entry point; it takes no arguments.
        let table = unsafe { get() };
        if table.is_null() {
            return Err(LoadError::NullApi {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: non-null pointer returned by GetPjrtApi, valid for the library's lifetime.
        // The header fields (struct_size, version) exist in every PJRT version.
        let (table_size, major, minor) = unsafe {
            let t = &*table;
            (
                t.struct_size,
                t.pjrt_api_version.major_version,
                t.pjrt_api_version.minor_version,
            )
        };
        if major != ffi::PJRT_API_MAJOR || minor < ffi::PJRT_API_MINOR {
            return Err(LoadError::BadVersion {
                path: path.to_path_buf(),
                found: (major, minor),
                need: (ffi::PJRT_API_MAJOR, ffi::PJRT_API_MINOR),
            });
        }
        let min_size =
            offset_of!(PJRT_Api, pjrt_api_version) + std::mem::size_of::<ffi::PJRT_Api_Version>();
        if table_size < min_size {
            return Err(LoadError::BadVersion {
                path: path.to_path_buf(),
                found: (major, minor),
                need: (ffi::PJRT_API_MAJOR, ffi::PJRT_API_MINOR),
            });
        }
        let api = Api {
            table,
            path: path.to_path_buf(),
            version: (major, minor),
            table_size,
            _lib: std::mem::ManuallyDrop::new(lib),
        };
        let init = api_fn!(api, PJRT_Plugin_Initialize).map_err(|e| LoadError::Init {
            path: path.to_path_buf(),
            error: e,
        })?;
        let mut args = ffi::PJRT_Plugin_Initialize_Args::new();
        // SAFETY: valid args struct with struct_size set; the plugin requires this call first.
        let err = unsafe { init(&mut args) };
        api.check(err, "PJRT_Plugin_Initialize")
            .map_err(|e| LoadError::Init {
                path: path.to_path_buf(),
                error: e,
            })?;
        Ok(Arc::new(api))
    }

    /// The plugin file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The plugin's PJRT API version, `(major, minor)`.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// Returns a function pointer from the table, checking that the plugin's table is long
    /// enough to hold it and that the slot is set.
    pub(crate) fn function<F: Copy>(
        &self,
        offset: usize,
        name: &'static str,
        get: impl FnOnce(&PJRT_Api) -> Option<F>,
    ) -> Result<F, PjrtError> {
        if offset + std::mem::size_of::<usize>() > self.table_size {
            return Err(PjrtError::missing(name));
        }
        // SAFETY: the table is valid for the library's lifetime and `offset` lies within the
        // plugin's own struct_size, so the field exists in the plugin's table.
        let f = get(unsafe { &*self.table });
        f.ok_or_else(|| PjrtError::missing(name))
    }

    /// Converts a returned `PJRT_Error*` into a `Result`, reading its code and message and
    /// freeing it.
    pub(crate) fn check(
        &self,
        err: *mut ffi::PJRT_Error,
        function: &'static str,
    ) -> Result<(), PjrtError> {
        if err.is_null() {
            return Ok(());
        }
        let owned = OwnedError {
            api: self,
            ptr: err,
        };
        Err(owned.to_error(function))
    }

    /// The plugin's `PJRT_FFI_Extension`, found by walking the `extension_start` chain of its
    /// function table; `None` when the plugin has none (or a too short one).
    fn ffi_extension(&self) -> Option<&ffi::PJRT_FFI_Extension> {
        let start_end = offset_of!(PJRT_Api, extension_start) + std::mem::size_of::<usize>();
        if self.table_size < start_end {
            return None;
        }
        // SAFETY: the table is valid for the library's lifetime and holds `extension_start`.
        let mut next = unsafe { (*self.table).extension_start }.cast_const();
        // A chain longer than this is corrupt (a plugin has a handful of extensions).
        for _ in 0..64 {
            if next.is_null() {
                return None;
            }
            let base = next.cast::<ffi::PJRT_Extension_Base_Fields>();
            // SAFETY: every element of the chain starts with a PJRT_Extension_Base, owned by the
            // plugin for its lifetime.
            let fields = unsafe { *base };
            if fields.type_ == ffi::PJRT_Extension_Type_FFI {
                let want = offset_of!(ffi::PJRT_FFI_Extension, register_handler)
                    + std::mem::size_of::<usize>();
                if fields.struct_size < want {
                    return None;
                }
                // SAFETY: an extension of type FFI is a PJRT_FFI_Extension, and its struct_size
                // says it holds every field up to `register_handler`.
                return Some(unsafe { &*base.cast::<ffi::PJRT_FFI_Extension>() });
            }
            next = fields.next.cast_const();
        }
        None
    }

    /// Whether the plugin has the FFI extension (`PJRT_FFI_Extension` with `register_handler`).
    pub fn has_ffi_extension(&self) -> bool {
        self.ffi_extension()
            .is_some_and(|e| e.register_handler.is_some())
    }

    /// Registers an XLA FFI handler (no traits) for custom calls to `target` on
    /// `platform` (`"Host"` for XLA:CPU), through the plugin's FFI extension. The registry is
    /// the plugin's, process-wide: it outlives this `Api`.
    ///
    /// # Safety
    /// `handler` must be an `XLA_FFI_Handler` (`XLA_FFI_Error* (*)(XLA_FFI_CallFrame*)`, see
    /// `xla/ffi/api/c_api.h`) that stays valid for the life of the process and is safe to call
    /// from any thread with any call frame XLA builds.
    ///
    /// # Errors
    /// [`PjrtError::Missing`] without the extension; the plugin's error otherwise (e.g. a
    /// second registration of the same target with another handler).
    pub unsafe fn register_ffi_handler(
        &self,
        target: &str,
        platform: &str,
        handler: *mut std::ffi::c_void,
    ) -> Result<(), PjrtError> {
        const NAME: &str = "PJRT_FFI_Extension.register_handler";
        let f = self
            .ffi_extension()
            .and_then(|e| e.register_handler)
            .ok_or_else(|| PjrtError::missing(NAME))?;
        let mut args = ffi::PJRT_FFI_Register_Handler_Args {
            struct_size: std::mem::size_of::<ffi::PJRT_FFI_Register_Handler_Args>(),
            target_name: target.as_ptr().cast(),
            target_name_size: target.len(),
            handler,
            platform_name: platform.as_ptr().cast(),
            platform_name_size: platform.len(),
            traits: 0,
        };
        // SAFETY: the args struct is complete and its strings outlive the call (the plugin
        // copies them); the handler's validity is the caller's contract.
        let err = unsafe { f(&mut args) };
        self.check(err, NAME)
    }

    /// The plugin's attributes (`PJRT_Plugin_Attributes`), as `name = value` strings.
    ///
    /// # Errors
    /// A [`PjrtError`] if the plugin reports one.
    pub fn attributes(&self) -> Result<Vec<(String, String)>, PjrtError> {
        let f = api_fn!(self, PJRT_Plugin_Attributes)?;
        let mut args = ffi::PJRT_Plugin_Attributes_Args::new();
        // SAFETY: valid args; outputs have the lifetime of the process.
        let err = unsafe { f(&mut args) };
        self.check(err, "PJRT_Plugin_Attributes")?;
        let mut out = Vec::new();
        if args.attributes.is_null() {
            return Ok(out);
        }
        // SAFETY: the plugin returned `num_attributes` valid entries.
        let attrs = unsafe { std::slice::from_raw_parts(args.attributes, args.num_attributes) };
        for a in attrs {
            // SAFETY: name/name_size describe a valid string owned by the plugin.
            let name = unsafe { lossy(a.name, a.name_size) };
            // SAFETY: the union member read matches `type_` as documented in pjrt_c_api.h.
            let value = unsafe {
                match a.type_ {
                    ffi::PJRT_NamedValue_kString => lossy(a.value.string_value, a.value_size),
                    ffi::PJRT_NamedValue_kInt64 => a.value.int64_value.to_string(),
                    ffi::PJRT_NamedValue_kInt64List => {
                        let p = a.value.int64_array_value;
                        if p.is_null() {
                            "[]".to_string()
                        } else {
                            format!("{:?}", std::slice::from_raw_parts(p, a.value_size))
                        }
                    }
                    ffi::PJRT_NamedValue_kFloat => a.value.float_value.to_string(),
                    ffi::PJRT_NamedValue_kBool => a.value.bool_value.to_string(),
                    other => format!("<type {other}>"),
                }
            };
            out.push((name, value));
        }
        Ok(out)
    }
}

/// A `PJRT_Error*` we own; freed in `Drop`.
struct OwnedError<'a> {
    api: &'a Api,
    ptr: *mut ffi::PJRT_Error,
}

impl OwnedError<'_> {
    fn to_error(&self, function: &'static str) -> PjrtError {
        let mut code = 2; // UNKNOWN
        let mut message = String::from("(no message)");
        if let Ok(f) = api_fn!(self.api, PJRT_Error_GetCode) {
            let mut args = ffi::PJRT_Error_GetCode_Args::new();
            args.error = self.ptr;
            // SAFETY: `ptr` is a live error returned by the plugin.
            if unsafe { f(&mut args) }.is_null() {
                code = args.code;
            }
        }
        if let Ok(f) = api_fn!(self.api, PJRT_Error_Message) {
            let mut args = ffi::PJRT_Error_Message_Args::new();
            args.error = self.ptr;
            // SAFETY: `ptr` is live; the message lives as long as the error, and we copy it now.
            unsafe {
                f(&mut args);
                message = lossy(args.message, args.message_size);
            }
        }
        PjrtError::Call {
            function,
            code: super::ErrorCode::from_raw(code),
            message,
        }
    }
}

impl Drop for OwnedError<'_> {
    fn drop(&mut self) {
        if let Ok(f) = api_fn!(self.api, PJRT_Error_Destroy) {
            let mut args = ffi::PJRT_Error_Destroy_Args::new();
            args.error = self.ptr;
            // SAFETY: `ptr` is a live error we own; it is destroyed exactly once, here.
            unsafe { f(&mut args) };
        }
    }
}

/// Copies a (pointer, length) string from the plugin, replacing invalid UTF-8.
///
/// # Safety
/// `ptr` must be null or valid for `len` bytes.
pub(crate) unsafe fn lossy(ptr: *const c_char, len: usize) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) };
    String::from_utf8_lossy(bytes).into_owned()
}

/// Copies a NUL-terminated string.
///
/// # Safety
/// `ptr` must be null or a valid NUL-terminated string.
#[allow(dead_code)]
pub(crate) unsafe fn cstr(ptr: *const c_char) -> String {
    if ptr.is_null() {
        return String::new();
    }
    // SAFETY: guaranteed by the caller.
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}
