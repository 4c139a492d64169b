//! `PJRT_LoadedExecutable`: execute, introspect, serialize.

use std::sync::Arc;

use super::api::{api_fn, lossy};
use super::buffer::{await_event, Buffer};
use super::inner::ClientInner;
use super::{dtype_of, ffi, PjrtError};
use crate::signature::DType;

/// Bytes of a serialized executable (machine code; see [`super::Client::deserialize`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SerializedExecutable(pub Vec<u8>);

/// Memory figures the compiler reports for an executable, before it runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompiledMemoryStats {
    /// Generated code size.
    pub generated_code_bytes: i64,
    /// Argument bytes.
    pub argument_bytes: i64,
    /// Output bytes.
    pub output_bytes: i64,
    /// Bytes aliased between arguments and outputs.
    pub alias_bytes: i64,
    /// Temporary bytes.
    pub temp_bytes: i64,
    /// Peak memory, where the plugin reports it.
    pub peak_bytes: i64,
}

/// A compiled program loaded on a client, ready to execute.
pub struct LoadedExecutable {
    client: Arc<ClientInner>,
    raw: *mut ffi::PJRT_LoadedExecutable,
    exe: *mut ffi::PJRT_Executable,
    output_types: Vec<DType>,
    output_dims: Vec<Vec<i64>>,
}

// SAFETY: PJRT executables may be executed concurrently from several threads (JAX does).
unsafe impl Send for LoadedExecutable {}
// SAFETY: as above.
unsafe impl Sync for LoadedExecutable {}

impl std::fmt::Debug for LoadedExecutable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedExecutable")
            .field("output_types", &self.output_types)
            .field("output_dims", &self.output_dims)
            .finish()
    }
}

impl LoadedExecutable {
    pub(crate) fn from_raw(
        client: &Arc<ClientInner>,
        raw: *mut ffi::PJRT_LoadedExecutable,
        function: &'static str,
    ) -> Result<LoadedExecutable, PjrtError> {
        if raw.is_null() {
            return Err(PjrtError::Contract {
                function,
                detail: "returned no error and no executable".into(),
            });
        }
        let mut le = LoadedExecutable {
            client: client.clone(),
            raw,
            exe: std::ptr::null_mut(),
            output_types: Vec::new(),
            output_dims: Vec::new(),
        };
        let api = &client.api;
        let f = api_fn!(api, PJRT_LoadedExecutable_GetExecutable)?;
        let mut args = ffi::PJRT_LoadedExecutable_GetExecutable_Args::new();
        args.loaded_executable = raw;
        // SAFETY: live loaded executable; the returned executable is ours to destroy.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_LoadedExecutable_GetExecutable")?;
        if args.executable.is_null() {
            return Err(PjrtError::Contract {
                function: "PJRT_LoadedExecutable_GetExecutable",
                detail: "null executable".into(),
            });
        }
        le.exe = args.executable;
        le.output_types = le.query_output_types()?;
        le.output_dims = le.query_output_dims()?;
        if le.output_dims.len() != le.output_types.len() {
            return Err(PjrtError::Contract {
                function: "PJRT_Executable_OutputDimensions",
                detail: format!(
                    "{} output shapes for {} output types",
                    le.output_dims.len(),
                    le.output_types.len()
                ),
            });
        }
        Ok(le)
    }

    fn num_outputs(&self) -> Result<usize, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_NumOutputs)?;
        let mut args = ffi::PJRT_Executable_NumOutputs_Args::new();
        args.executable = self.exe;
        // SAFETY: live executable, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_NumOutputs")?;
        Ok(args.num_outputs)
    }

    fn query_output_types(&self) -> Result<Vec<DType>, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_OutputElementTypes)?;
        let mut args = ffi::PJRT_Executable_OutputElementTypes_Args::new();
        args.executable = self.exe;
        // SAFETY: live executable, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_OutputElementTypes")?;
        if args.num_output_types == 0 {
            return Ok(Vec::new());
        }
        if args.output_types.is_null() {
            return Err(PjrtError::Contract {
                function: "PJRT_Executable_OutputElementTypes",
                detail: "null types".into(),
            });
        }
        // SAFETY: `num_output_types` entries owned by the executable; copied now.
        let raw = unsafe { std::slice::from_raw_parts(args.output_types, args.num_output_types) };
        raw.iter().map(|&t| dtype_of(t)).collect()
    }

    fn query_output_dims(&self) -> Result<Vec<Vec<i64>>, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_OutputDimensions)?;
        let mut args = ffi::PJRT_Executable_OutputDimensions_Args::new();
        args.executable = self.exe;
        // SAFETY: live executable, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_OutputDimensions")?;
        let n = args.num_outputs;
        if n == 0 {
            return Ok(Vec::new());
        }
        if args.dim_sizes.is_null() {
            return Err(PjrtError::Contract {
                function: "PJRT_Executable_OutputDimensions",
                detail: "null dim_sizes".into(),
            });
        }
        // SAFETY: `num_outputs` ranks owned by the executable.
        let sizes = unsafe { std::slice::from_raw_parts(args.dim_sizes, n) };
        let total = sizes
            .iter()
            .try_fold(0usize, |a, &s| a.checked_add(s))
            .ok_or(PjrtError::Contract {
                function: "PJRT_Executable_OutputDimensions",
                detail: "rank overflow".into(),
            })?;
        let dims: &[i64] = if total == 0 {
            &[]
        } else if args.dims.is_null() {
            return Err(PjrtError::Contract {
                function: "PJRT_Executable_OutputDimensions",
                detail: "null dims".into(),
            });
        } else {
            // SAFETY: the concatenated dims of all outputs, `total` values.
            unsafe { std::slice::from_raw_parts(args.dims, total) }
        };
        let mut out = Vec::with_capacity(n);
        let mut at = 0;
        for &s in sizes {
            out.push(dims[at..at + s].to_vec());
            at += s;
        }
        Ok(out)
    }

    /// Output element types, in order.
    pub fn output_types(&self) -> &[DType] {
        &self.output_types
    }

    /// Output dimensions, in order.
    pub fn output_dims(&self) -> &[Vec<i64>] {
        &self.output_dims
    }

    /// Runs the executable on device 0 with `args` (already on the device) and returns the
    /// outputs, ready.
    ///
    /// # Errors
    /// The plugin's error, e.g. INVALID_ARGUMENT for a buffer of the wrong shape.
    pub fn execute(&self, args: &[&Buffer]) -> Result<Vec<Buffer>, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_LoadedExecutable_Execute)?;
        let n_out = self.output_types.len();
        let arg_ptrs: Vec<*mut ffi::PJRT_Buffer> = args.iter().map(|b| b.raw()).collect();
        let arg_lists: [*const *mut ffi::PJRT_Buffer; 1] = [arg_ptrs.as_ptr()];
        let mut outs: Vec<*mut ffi::PJRT_Buffer> = vec![std::ptr::null_mut(); n_out.max(1)];
        let out_lists: [*mut *mut ffi::PJRT_Buffer; 1] = [outs.as_mut_ptr()];
        let mut events: [*mut ffi::PJRT_Event; 1] = [std::ptr::null_mut()];
        // Never donate arguments: a donated buffer is consumed by the call, and callers (and
        // resident staging buffers) expect their buffers to survive it.
        let no_donation: Vec<i64> = (0..arg_ptrs.len() as i64).collect();
        let mut opts = ffi::PJRT_ExecuteOptions::new();
        opts.non_donatable_input_indices = no_donation.as_ptr();
        opts.num_non_donatable_input_indices = no_donation.len();
        let mut a = ffi::PJRT_LoadedExecutable_Execute_Args::new();
        a.executable = self.raw;
        a.options = &mut opts;
        a.argument_lists = arg_lists.as_ptr();
        a.num_devices = 1;
        a.num_args = arg_ptrs.len();
        a.output_lists = out_lists.as_ptr();
        a.device_complete_events = events.as_mut_ptr();
        // SAFETY: live executable and buffers; one device; `outs` has room for every output
        // (NumOutputs); all arrays outlive the call.
        let err = unsafe { f(&mut a) };
        let r = api.check(err, "PJRT_LoadedExecutable_Execute");
        // Take ownership of whatever outputs were produced, so they are freed on any error.
        let mut buffers = Vec::with_capacity(n_out);
        for &p in outs.iter().take(n_out) {
            if !p.is_null() {
                buffers.push(Buffer::from_raw(
                    self.client.clone(),
                    p,
                    "PJRT_LoadedExecutable_Execute",
                )?);
            }
        }
        let done = if events[0].is_null() {
            Ok(())
        } else {
            await_event(api, events[0], "PJRT_LoadedExecutable_Execute")
        };
        r?;
        done?;
        if buffers.len() != n_out {
            return Err(PjrtError::Contract {
                function: "PJRT_LoadedExecutable_Execute",
                detail: format!("{} outputs returned, {} expected", buffers.len(), n_out),
            });
        }
        Ok(buffers)
    }

    /// Serializes the compiled executable (`PJRT_Executable_Serialize`).
    ///
    /// # Errors
    /// The plugin's error.
    pub fn serialize(&self) -> Result<SerializedExecutable, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_Serialize)?;
        let mut args = ffi::PJRT_Executable_Serialize_Args::new();
        args.executable = self.exe;
        // SAFETY: live executable; the returned bytes are backed by `serialized_executable`,
        // which we free with the deleter after copying.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_Serialize")?;
        let bytes = if args.serialized_bytes.is_null() {
            Vec::new()
        } else {
            // SAFETY: valid for `serialized_bytes_size` bytes until the deleter runs.
            unsafe {
                std::slice::from_raw_parts(
                    args.serialized_bytes.cast::<u8>(),
                    args.serialized_bytes_size,
                )
            }
            .to_vec()
        };
        if let Some(del) = args.serialized_executable_deleter {
            // SAFETY: the plugin's deleter for the object it returned; called once.
            unsafe { del(args.serialized_executable) };
        }
        if bytes.is_empty() {
            return Err(PjrtError::Contract {
                function: "PJRT_Executable_Serialize",
                detail: "empty serialization".into(),
            });
        }
        Ok(SerializedExecutable(bytes))
    }

    /// The optimized program (`hlo_with_config` on XLA plugins): field 1 is the HloModuleProto.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn optimized_program(&self) -> Result<(String, Vec<u8>), PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_OptimizedProgram)?;
        let mut prog = ffi::PJRT_Program {
            struct_size: std::mem::size_of::<ffi::PJRT_Program>(),
            extension_start: std::ptr::null_mut(),
            code: std::ptr::null_mut(),
            code_size: 0,
            format: std::ptr::null(),
            format_size: 0,
        };
        let mut args = ffi::PJRT_Executable_OptimizedProgram_Args::new();
        args.executable = self.exe;
        args.program = &mut prog;
        // SAFETY: first call with code null: the plugin writes the needed size.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_OptimizedProgram")?;
        let mut code = vec![0u8; prog.code_size];
        prog.code = code.as_mut_ptr().cast();
        // SAFETY: second call: `code` has exactly the size the plugin asked for.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_OptimizedProgram")?;
        // SAFETY: the format string is owned by the plugin (static).
        let format = unsafe { lossy(prog.format, prog.format_size) };
        Ok((format, code))
    }

    /// The executable's fingerprint, where the plugin provides one.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn fingerprint(&self) -> Result<String, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_Fingerprint)?;
        let mut args = ffi::PJRT_Executable_Fingerprint_Args::new();
        args.executable = self.exe;
        // SAFETY: live executable, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_Fingerprint")?;
        // SAFETY: owned by the executable; copied now.
        Ok(unsafe {
            lossy(
                args.executable_fingerprint,
                args.executable_fingerprint_size,
            )
        })
    }

    /// Memory the compiled program needs, as the compiler reports it.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn memory_stats(&self) -> Result<CompiledMemoryStats, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Executable_GetCompiledMemoryStats)?;
        let mut args = ffi::PJRT_Executable_GetCompiledMemoryStats_Args::new();
        args.executable = self.exe;
        // SAFETY: live executable, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Executable_GetCompiledMemoryStats")?;
        Ok(CompiledMemoryStats {
            generated_code_bytes: args.generated_code_size_in_bytes,
            argument_bytes: args.argument_size_in_bytes,
            output_bytes: args.output_size_in_bytes,
            alias_bytes: args.alias_size_in_bytes,
            temp_bytes: args.temp_size_in_bytes,
            peak_bytes: args.peak_memory_in_bytes,
        })
    }

    /// The number of outputs the plugin reports (equals `output_types().len()`).
    ///
    /// # Errors
    /// The plugin's error.
    pub fn plugin_num_outputs(&self) -> Result<usize, PjrtError> {
        self.num_outputs()
    }
}

impl Drop for LoadedExecutable {
    fn drop(&mut self) {
        let api = &self.client.api;
        if !self.exe.is_null() {
            if let Ok(f) = api_fn!(api, PJRT_Executable_Destroy) {
                let mut args = ffi::PJRT_Executable_Destroy_Args::new();
                args.executable = self.exe;
                // SAFETY: the executable from GetExecutable is ours; destroyed once.
                let err = unsafe { f(&mut args) };
                let _ = api.check(err, "PJRT_Executable_Destroy");
            }
        }
        if let Ok(f) = api_fn!(api, PJRT_LoadedExecutable_Destroy) {
            let mut args = ffi::PJRT_LoadedExecutable_Destroy_Args::new();
            args.executable = self.raw;
            // SAFETY: we own the loaded executable; destroyed once; the client outlives it.
            let err = unsafe { f(&mut args) };
            let _ = api.check(err, "PJRT_LoadedExecutable_Destroy");
        }
    }
}
