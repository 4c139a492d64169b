//! `PJRT_Client`: creation with options, devices, compile, host-to-device, deserialize.

use std::ffi::c_char;
use std::sync::Arc;

use super::api::{api_fn, Api};
use super::buffer::{BorrowedBuffer, Buffer, Event, StagingBuffer};
use super::executable::LoadedExecutable;
use super::ffi;
use super::inner::ClientInner;
use super::options::CompileOptions;
use super::{buffer_type, PjrtError};
use crate::signature::DType;

/// A value of a client create option.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum OptionValue {
    /// A string.
    Str(String),
    /// An int64.
    Int(i64),
    /// A list of int64.
    IntList(Vec<i64>),
    /// A float.
    Float(f32),
    /// A bool.
    Bool(bool),
}

/// Options for `PJRT_Client_Create`: named, typed values the plugin checks.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClientOptions {
    values: Vec<(String, OptionValue)>,
}

impl ClientOptions {
    /// No options: the plugin's defaults.
    pub fn new() -> ClientOptions {
        ClientOptions::default()
    }

    /// The defaults xlaguard uses on the CPU plugin: one device, synchronous execution
    /// (2.5 µs per tiny execute instead of ~35 µs with the asynchronous default).
    pub fn cpu() -> ClientOptions {
        let mut o = ClientOptions::new();
        o.set("cpu_device_count", OptionValue::Int(1));
        o.set("asynchronous", OptionValue::Bool(false));
        o
    }

    /// Options for the CUDA plugin. `memory_fraction` caps what the client preallocates
    /// (the plugin's default is 75% of GPU memory), `preallocate = false` allocates on demand,
    /// `visible_devices` restricts the GPUs used.
    pub fn gpu(
        memory_fraction: Option<f32>,
        preallocate: Option<bool>,
        visible_devices: Option<&[i64]>,
    ) -> ClientOptions {
        let mut o = ClientOptions::new();
        if let Some(f) = memory_fraction {
            o.set("memory_fraction", OptionValue::Float(f));
        }
        if let Some(p) = preallocate {
            o.set("preallocate", OptionValue::Bool(p));
        }
        if let Some(v) = visible_devices {
            o.set("visible_devices", OptionValue::IntList(v.to_vec()));
        }
        o
    }

    /// Sets (or replaces) an option.
    pub fn set(&mut self, name: &str, value: OptionValue) -> &mut Self {
        self.values.retain(|(n, _)| n != name);
        self.values.push((name.to_string(), value));
        self
    }

    /// The options, in the order set.
    pub fn values(&self) -> &[(String, OptionValue)] {
        &self.values
    }
}

/// A PJRT client on one plugin. Thread-safe; cloning shares it. Executables and buffers keep
/// it alive.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<ClientInner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("platform", &self.inner.platform)
            .field("devices", &self.inner.devices.len())
            .finish()
    }
}

impl Client {
    /// Creates a client.
    ///
    /// # Errors
    /// A [`PjrtError`] if the plugin rejects an option (unknown name, wrong type) or cannot
    /// create a client (no device), or reports no addressable device.
    pub fn new(api: Arc<Api>, options: &ClientOptions) -> Result<Client, PjrtError> {
        let create = api_fn!(api, PJRT_Client_Create)?;
        // Owned storage the named values point into; kept alive across the call.
        let names: Vec<&str> = options.values.iter().map(|(n, _)| n.as_str()).collect();
        let mut named = Vec::with_capacity(options.values.len());
        for ((_, value), name) in options.values.iter().zip(&names) {
            let (type_, val, size) = match value {
                OptionValue::Str(s) => (
                    ffi::PJRT_NamedValue_kString,
                    ffi::PJRT_NamedValue_Value {
                        string_value: s.as_ptr().cast::<c_char>(),
                    },
                    s.len(),
                ),
                OptionValue::Int(i) => (
                    ffi::PJRT_NamedValue_kInt64,
                    ffi::PJRT_NamedValue_Value { int64_value: *i },
                    1,
                ),
                OptionValue::IntList(l) => (
                    ffi::PJRT_NamedValue_kInt64List,
                    ffi::PJRT_NamedValue_Value {
                        int64_array_value: l.as_ptr(),
                    },
                    l.len(),
                ),
                OptionValue::Float(x) => (
                    ffi::PJRT_NamedValue_kFloat,
                    ffi::PJRT_NamedValue_Value { float_value: *x },
                    1,
                ),
                OptionValue::Bool(b) => (
                    ffi::PJRT_NamedValue_kBool,
                    ffi::PJRT_NamedValue_Value { bool_value: *b },
                    1,
                ),
            };
            named.push(ffi::PJRT_NamedValue {
                struct_size: std::mem::size_of::<ffi::PJRT_NamedValue>(),
                extension_start: std::ptr::null_mut(),
                name: name.as_ptr().cast::<c_char>(),
                name_size: name.len(),
                type_,
                value: val,
                value_size: size,
            });
        }
        let mut args = ffi::PJRT_Client_Create_Args::new();
        args.create_options = named.as_ptr();
        args.num_options = named.len();
        // SAFETY: args valid; every pointer in `named` borrows `options`, alive for the call.
        let err = unsafe { create(&mut args) };
        api.check(err, "PJRT_Client_Create")?;
        if args.client.is_null() {
            return Err(PjrtError::Contract {
                function: "PJRT_Client_Create",
                detail: "returned no error and no client".into(),
            });
        }
        let mut client = ClientInner {
            api,
            raw: args.client,
            devices: Vec::new(),
            platform: String::new(),
            platform_version: String::new(),
        };
        client.devices = client.query_devices()?;
        if client.devices.is_empty() {
            return Err(PjrtError::Contract {
                function: "PJRT_Client_AddressableDevices",
                detail: "the client has no addressable device".into(),
            });
        }
        client.platform = client.query_platform()?;
        client.platform_version = client.query_platform_version().unwrap_or_default();
        Ok(Client {
            inner: Arc::new(client),
        })
    }
}

impl Client {
    /// The plugin this client runs on.
    pub fn api(&self) -> &Arc<Api> {
        &self.inner.api
    }

    /// Platform name as the plugin reports it (`cpu`, `cuda`, `tpu`, ...).
    pub fn platform(&self) -> &str {
        &self.inner.platform
    }

    /// Platform version string (e.g. the CUDA version), possibly empty.
    pub fn platform_version(&self) -> &str {
        &self.inner.platform_version
    }

    /// Number of addressable devices.
    pub fn device_count(&self) -> usize {
        self.inner.devices.len()
    }

    /// Compiles a program. `format` is `"mlir"` (StableHLO text or bytecode) or `"hlo"`
    /// (a serialized `HloModuleProto`).
    ///
    /// # Errors
    /// The plugin's compile error (parse failure, unsupported op, missing custom-call handler).
    pub fn compile(
        &self,
        program: &[u8],
        format: &'static str,
        options: &CompileOptions,
    ) -> Result<LoadedExecutable, PjrtError> {
        // The options always hold both counts (see options.rs), which the plugin requires.
        self.compile_encoded(program, format, &options.encode())
    }

    /// Compiles with raw `CompileOptionsProto` bytes. Test builds only: empty or incomplete
    /// options make the plugin abort the process (which is what the worker tests need).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn compile_with_raw_options(
        &self,
        program: &[u8],
        format: &'static str,
        options: &[u8],
    ) -> Result<LoadedExecutable, PjrtError> {
        self.compile_encoded(program, format, options)
    }

    fn compile_encoded(
        &self,
        program: &[u8],
        format: &'static str,
        opts: &[u8],
    ) -> Result<LoadedExecutable, PjrtError> {
        let f = api_fn!(self.inner.api, PJRT_Client_Compile)?;
        let prog = ffi::PJRT_Program::new(program, format);
        let mut args = ffi::PJRT_Client_Compile_Args::new();
        args.client = self.inner.raw;
        args.program = &prog;
        args.compile_options = opts.as_ptr().cast::<c_char>();
        args.compile_options_size = opts.len();
        // SAFETY: live client; `prog` borrows `program` and `opts`, alive for the call.
        let err = unsafe { f(&mut args) };
        self.inner.api.check(err, "PJRT_Client_Compile")?;
        LoadedExecutable::from_raw(&self.inner, args.executable, "PJRT_Client_Compile")
    }

    /// Loads a serialized executable produced by [`LoadedExecutable::serialize`].
    ///
    /// # Safety
    /// A serialized executable is machine code: loading it is as dangerous as running it. The
    /// bytes must come from a trusted source (our own compile worker, or a cache entry whose
    /// integrity was verified).
    pub unsafe fn deserialize(&self, bytes: &[u8]) -> Result<LoadedExecutable, PjrtError> {
        let f = api_fn!(self.inner.api, PJRT_Executable_DeserializeAndLoad)?;
        let mut args = ffi::PJRT_Executable_DeserializeAndLoad_Args::new();
        args.client = self.inner.raw;
        args.serialized_executable = bytes.as_ptr().cast::<c_char>();
        args.serialized_executable_size = bytes.len();
        // SAFETY: live client; `bytes` alive for the call; trust established by the caller.
        let err = unsafe { f(&mut args) };
        self.inner
            .api
            .check(err, "PJRT_Executable_DeserializeAndLoad")?;
        LoadedExecutable::from_raw(
            &self.inner,
            args.loaded_executable,
            "PJRT_Executable_DeserializeAndLoad",
        )
    }

    /// Copies a host array to device 0. `data` must hold exactly `product(dims) * dtype.size()`
    /// bytes in row-major order; this is checked.
    ///
    /// # Errors
    /// [`PjrtError::Contract`] on a size mismatch (checked before the call), or the plugin's
    /// error.
    pub fn buffer_from_host(
        &self,
        data: &[u8],
        dtype: DType,
        dims: &[i64],
    ) -> Result<Buffer, PjrtError> {
        let (buffer, done) = self.host_to_device(
            data,
            dtype,
            dims,
            ffi::PJRT_HostBufferSemantics_kImmutableOnlyDuringCall,
        )?;
        if let Some(done) = done {
            done.wait()?;
        }
        Ok(buffer)
    }

    /// Makes a device buffer that may alias `data` instead of copying it (PJRT's zero-copy
    /// semantics; the CPU plugin aliases suitably aligned host memory, other plugins copy).
    /// The borrow keeps `data` alive and unchanged for as long as the buffer exists.
    ///
    /// # Errors
    /// As [`Client::buffer_from_host`].
    pub fn buffer_from_host_borrowed<'a>(
        &self,
        data: &'a [u8],
        dtype: DType,
        dims: &[i64],
    ) -> Result<BorrowedBuffer<'a>, PjrtError> {
        let (buffer, done) = self.host_to_device(
            data,
            dtype,
            dims,
            ffi::PJRT_HostBufferSemantics_kImmutableZeroCopy,
        )?;
        Ok(BorrowedBuffer::new(buffer, done))
    }

    /// Wraps memory that already lives on device 0 (e.g. a CUDA allocation) as a PJRT buffer,
    /// without a copy (`PJRT_Client_CreateViewOfDeviceBuffer`).
    ///
    /// # Safety
    /// `ptr` must point to device memory of device 0 holding exactly the bytes `dtype` and
    /// `dims` describe, dense row-major, and stay valid and unmodified until the returned
    /// buffer and everything computed from it have been dropped or waited on.
    ///
    /// # Errors
    /// The plugin's error (e.g. UNIMPLEMENTED on a plugin without device views).
    pub unsafe fn buffer_from_device_ptr(
        &self,
        ptr: *mut std::ffi::c_void,
        dtype: DType,
        dims: &[i64],
    ) -> Result<Buffer, PjrtError> {
        let f = api_fn!(self.inner.api, PJRT_Client_CreateViewOfDeviceBuffer)?;
        let mut args = ffi::PJRT_Client_CreateViewOfDeviceBuffer_Args::new();
        args.client = self.inner.raw;
        args.device_buffer_ptr = ptr;
        args.dims = dims.as_ptr();
        args.num_dims = dims.len();
        args.element_type = buffer_type(dtype);
        args.device = self.inner.devices[0];
        // The GPU plugin calls the deleter unconditionally when the view is freed (a null one
        // aborts the process with std::bad_function_call); the memory is the caller's to free.
        args.on_delete_callback = Some(keep_device_memory);
        // SAFETY: live client and device; the pointer's validity for the buffer's lifetime is
        // the caller's contract; `dims` outlives the call.
        let err = unsafe { f(&mut args) };
        self.inner
            .api
            .check(err, "PJRT_Client_CreateViewOfDeviceBuffer")?;
        Buffer::from_raw(
            self.inner.clone(),
            args.buffer,
            "PJRT_Client_CreateViewOfDeviceBuffer",
        )
    }

    fn host_to_device(
        &self,
        data: &[u8],
        dtype: DType,
        dims: &[i64],
        semantics: ffi::PJRT_HostBufferSemantics,
    ) -> Result<(Buffer, Option<Event>), PjrtError> {
        let want = dims.iter().try_fold(dtype.size(), |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        });
        if want != Some(data.len()) {
            return Err(PjrtError::Contract {
                function: "PJRT_Client_BufferFromHostBuffer",
                detail: format!(
                    "{} bytes for {}{:?}, expected {:?}",
                    data.len(),
                    dtype,
                    dims,
                    want
                ),
            });
        }
        let f = api_fn!(self.inner.api, PJRT_Client_BufferFromHostBuffer)?;
        let mut args = ffi::PJRT_Client_BufferFromHostBuffer_Args::new();
        args.client = self.inner.raw;
        args.data = data.as_ptr().cast();
        args.type_ = buffer_type(dtype);
        args.dims = dims.as_ptr();
        args.num_dims = dims.len();
        args.host_buffer_semantics = semantics;
        args.device = self.inner.devices[0];
        // SAFETY: live client and device; `data` holds exactly the bytes the dims describe
        // (checked above) and outlives the call. Whether the plugin may keep using it after the
        // call depends on `semantics`: the callers either wait for `done_with_host_buffer`
        // before returning, or tie the buffer to `data`'s borrow (BorrowedBuffer).
        let err = unsafe { f(&mut args) };
        let done = Event::from_raw(self.inner.api.clone(), args.done_with_host_buffer);
        self.inner
            .api
            .check(err, "PJRT_Client_BufferFromHostBuffer")?;
        let buffer = Buffer::from_raw(
            self.inner.clone(),
            args.buffer,
            "PJRT_Client_BufferFromHostBuffer",
        )?;
        Ok((buffer, done))
    }
}

/// `on_delete_callback` for device views: the memory belongs to the caller, nothing to do.
unsafe extern "C" fn keep_device_memory(_ptr: *mut std::ffi::c_void, _arg: *mut std::ffi::c_void) {}

impl StagingBuffer {
    /// A zero-filled `dtype[dims]` buffer on device 0, when the plugin keeps it in host memory,
    /// dense row-major (the CPU plugin); `None` otherwise.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn new(
        client: &Client,
        dtype: DType,
        dims: &[i64],
    ) -> Result<Option<StagingBuffer>, PjrtError> {
        let len = dims
            .iter()
            .try_fold(dtype.size(), |acc, &d| {
                usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
            })
            .ok_or_else(|| PjrtError::Contract {
                function: "PJRT_Client_BufferFromHostBuffer",
                detail: format!("{dtype}{dims:?} overflows"),
            })?;
        let buffer = client.buffer_from_host(&vec![0u8; len], dtype, dims)?;
        StagingBuffer::from_buffer(buffer, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_options_name_only_what_is_set() {
        let o = ClientOptions::gpu(Some(0.5), Some(false), Some(&[0, 1]));
        assert_eq!(
            o.values(),
            &[
                ("memory_fraction".to_string(), OptionValue::Float(0.5)),
                ("preallocate".to_string(), OptionValue::Bool(false)),
                (
                    "visible_devices".to_string(),
                    OptionValue::IntList(vec![0, 1])
                ),
            ]
        );
        assert!(ClientOptions::gpu(None, None, None).values().is_empty());
    }

    #[test]
    fn cpu_defaults_and_replacement() {
        let mut o = ClientOptions::cpu();
        assert_eq!(
            o.values(),
            &[
                ("cpu_device_count".to_string(), OptionValue::Int(1)),
                ("asynchronous".to_string(), OptionValue::Bool(false)),
            ]
        );
        o.set("cpu_device_count", OptionValue::Int(4));
        assert_eq!(o.values().len(), 2);
        assert!(o
            .values()
            .contains(&("cpu_device_count".to_string(), OptionValue::Int(4))));
    }
}
