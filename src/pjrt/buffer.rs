//! `PJRT_Buffer`: a device array, read back to the host; and event helpers.

use std::sync::Arc;

use super::api::{api_fn, Api};
use super::client::ClientInner;
use super::{dtype_of, ffi, PjrtError};
use crate::signature::DType;

/// Waits for an event, then destroys it; the event's error becomes the result.
pub(crate) fn await_event(
    api: &Api,
    event: *mut ffi::PJRT_Event,
    function: &'static str,
) -> Result<(), PjrtError> {
    let awaited = match api_fn!(api, PJRT_Event_Await) {
        Ok(f) => {
            let mut args = ffi::PJRT_Event_Await_Args::new();
            args.event = event;
            // SAFETY: `event` is a live event the plugin handed us.
            api.check(unsafe { f(&mut args) }, function)
        }
        Err(e) => Err(e),
    };
    if let Ok(f) = api_fn!(api, PJRT_Event_Destroy) {
        let mut args = ffi::PJRT_Event_Destroy_Args::new();
        args.event = event;
        // SAFETY: we own the event; destroyed once, after the await above returned.
        let err = unsafe { f(&mut args) };
        let _ = api.check(err, "PJRT_Event_Destroy");
    }
    awaited
}

/// An array on a device. Dropping it frees the device memory.
pub struct Buffer {
    client: Arc<ClientInner>,
    raw: *mut ffi::PJRT_Buffer,
}

// SAFETY: PJRT buffers may be used and destroyed from any thread.
unsafe impl Send for Buffer {}
// SAFETY: `&Buffer` only calls thread-safe read functions.
unsafe impl Sync for Buffer {}

impl std::fmt::Debug for Buffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Buffer")
            .field("dtype", &self.dtype().ok())
            .field("dims", &self.dims().ok())
            .finish()
    }
}

impl Buffer {
    pub(crate) fn from_raw(
        client: Arc<ClientInner>,
        raw: *mut ffi::PJRT_Buffer,
        function: &'static str,
    ) -> Result<Buffer, PjrtError> {
        if raw.is_null() {
            return Err(PjrtError::Contract {
                function,
                detail: "returned no error and no buffer".into(),
            });
        }
        Ok(Buffer { client, raw })
    }

    pub(crate) fn raw(&self) -> *mut ffi::PJRT_Buffer {
        self.raw
    }

    /// The element type.
    ///
    /// # Errors
    /// A [`PjrtError`] from the plugin, or an element type xlaguard does not support.
    pub fn dtype(&self) -> Result<DType, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Buffer_ElementType)?;
        let mut args = ffi::PJRT_Buffer_ElementType_Args::new();
        args.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Buffer_ElementType")?;
        dtype_of(args.type_)
    }

    /// The dimensions.
    ///
    /// # Errors
    /// A [`PjrtError`] from the plugin.
    pub fn dims(&self) -> Result<Vec<i64>, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Buffer_Dimensions)?;
        let mut args = ffi::PJRT_Buffer_Dimensions_Args::new();
        args.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Buffer_Dimensions")?;
        if args.num_dims == 0 {
            return Ok(Vec::new());
        }
        if args.dims.is_null() {
            return Err(PjrtError::Contract {
                function: "PJRT_Buffer_Dimensions",
                detail: "null dims".into(),
            });
        }
        // SAFETY: the plugin returns `num_dims` values owned by the buffer; copied now.
        Ok(unsafe { std::slice::from_raw_parts(args.dims, args.num_dims) }.to_vec())
    }

    /// On a CPU plugin, a buffer's memory is host memory: once the buffer is ready and its layout
    /// is plain row-major, copy it directly instead of through `PJRT_Buffer_ToHostBuffer`, whose
    /// asynchronous copy costs 10–40 µs of thread handoffs per call even for a few bytes (JAX
    /// reads CPU arrays the same way). Returns `Ok(false)` when this path does not apply.
    fn copy_from_cpu_memory(&self, dst: &mut [u8]) -> Result<bool, PjrtError> {
        let api = &self.client.api;
        let (Ok(on_cpu), Ok(ready_event), Ok(is_ready), Ok(pointer)) = (
            api_fn!(api, PJRT_Buffer_IsOnCpu),
            api_fn!(api, PJRT_Buffer_ReadyEvent),
            api_fn!(api, PJRT_Event_IsReady),
            api_fn!(api, PJRT_Buffer_UnsafePointer),
        ) else {
            return Ok(false);
        };
        // The layout only matters when two or more dimensions are longer than one; then it must
        // be plain row-major (minor_to_major = [n-1, ..., 0], no tiles).
        let dims = self.dims()?;
        if dims.iter().filter(|&&d| d > 1).count() > 1 && !self.is_row_major(dims.len())? {
            return Ok(false);
        }
        let mut a = ffi::PJRT_Buffer_IsOnCpu_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        api.check(unsafe { on_cpu(&mut a) }, "PJRT_Buffer_IsOnCpu")?;
        if !a.is_on_cpu {
            return Ok(false);
        }
        let mut e = ffi::PJRT_Buffer_ReadyEvent_Args::new();
        e.buffer = self.raw;
        // SAFETY: live buffer, valid args; the returned event is ours to destroy.
        api.check(unsafe { ready_event(&mut e) }, "PJRT_Buffer_ReadyEvent")?;
        if e.event.is_null() {
            return Ok(false);
        }
        let mut r = ffi::PJRT_Event_IsReady_Args::new();
        r.event = e.event;
        // SAFETY: live event.
        let ready = api.check(unsafe { is_ready(&mut r) }, "PJRT_Event_IsReady");
        let ready = match ready {
            Ok(()) if r.is_ready => {
                // Ready: the event also carries the buffer's error, if any.
                await_event(api, e.event, "PJRT_Buffer_ReadyEvent")
            }
            Ok(()) => await_event(api, e.event, "PJRT_Buffer_ReadyEvent"),
            Err(err) => {
                let _ = await_event(api, e.event, "PJRT_Buffer_ReadyEvent");
                Err(err)
            }
        };
        ready?;
        let mut p = ffi::PJRT_Buffer_UnsafePointer_Args::new();
        p.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        api.check(unsafe { pointer(&mut p) }, "PJRT_Buffer_UnsafePointer")?;
        if p.buffer_pointer == 0 {
            return Ok(false);
        }
        // SAFETY: on a CPU device the buffer's memory is host memory at `buffer_pointer`; the
        // buffer is ready (awaited above), not donated or deleted (we hold it), and holds
        // exactly `dst.len()` bytes (checked by the caller against the plugin's own size).
        let src = unsafe { std::slice::from_raw_parts(p.buffer_pointer as *const u8, dst.len()) };
        dst.copy_from_slice(src);
        Ok(true)
    }

    /// True when the buffer's memory layout is dense row-major without tiles.
    fn is_row_major(&self, rank: usize) -> Result<bool, PjrtError> {
        let api = &self.client.api;
        let Ok(f) = api_fn!(api, PJRT_Buffer_GetMemoryLayout) else {
            return Ok(false);
        };
        let mut a = ffi::PJRT_Buffer_GetMemoryLayout_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args; the layout written is owned by the buffer.
        let err = unsafe { f(&mut a) };
        if api.check(err, "PJRT_Buffer_GetMemoryLayout").is_err() {
            return Ok(false);
        }
        let t = &a.layout.tiled;
        if a.layout.type_ != ffi::PJRT_Buffer_MemoryLayout_Type_Tiled
            || t.num_tiles != 0
            || t.minor_to_major_size != rank
            || t.minor_to_major.is_null()
        {
            return Ok(false);
        }
        // SAFETY: the plugin gave `minor_to_major_size` values, alive as long as the buffer.
        let m2m = unsafe { std::slice::from_raw_parts(t.minor_to_major, rank) };
        Ok(m2m
            .iter()
            .enumerate()
            .all(|(i, &d)| usize::try_from(d).is_ok_and(|d| d + i + 1 == rank)))
    }

    /// Copies the buffer to `dst`, which must be exactly the buffer's size in bytes.
    ///
    /// # Errors
    /// [`PjrtError::Contract`] if `dst` has another size; the plugin's error otherwise.
    pub fn copy_to_host(&self, dst: &mut [u8]) -> Result<(), PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Buffer_ToHostBuffer)?;
        // First call with a null destination asks for the size.
        let mut q = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        q.src = self.raw;
        // SAFETY: live buffer; with dst null the plugin only writes `dst_size`.
        let err = unsafe { f(&mut q) };
        api.check(err, "PJRT_Buffer_ToHostBuffer")?;
        if q.dst_size != dst.len() {
            return Err(PjrtError::Contract {
                function: "PJRT_Buffer_ToHostBuffer",
                detail: format!(
                    "device buffer holds {} bytes, host buffer has {}",
                    q.dst_size,
                    dst.len()
                ),
            });
        }
        if self.copy_from_cpu_memory(dst)? {
            return Ok(());
        }
        let mut args = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        args.src = self.raw;
        args.dst = dst.as_mut_ptr().cast();
        args.dst_size = dst.len();
        // SAFETY: `dst` is valid for `dst_size` bytes (checked equal to the buffer's size) and
        // stays borrowed until the event below has completed.
        let err = unsafe { f(&mut args) };
        api.check(err, "PJRT_Buffer_ToHostBuffer")?;
        if !args.event.is_null() {
            await_event(api, args.event, "PJRT_Buffer_ToHostBuffer")?;
        }
        Ok(())
    }

    /// Size in bytes of the host copy.
    ///
    /// # Errors
    /// A [`PjrtError`] from the plugin.
    pub fn host_size(&self) -> Result<usize, PjrtError> {
        let api = &self.client.api;
        let f = api_fn!(api, PJRT_Buffer_ToHostBuffer)?;
        let mut q = ffi::PJRT_Buffer_ToHostBuffer_Args::new();
        q.src = self.raw;
        // SAFETY: live buffer; with dst null the plugin only writes `dst_size`.
        let err = unsafe { f(&mut q) };
        api.check(err, "PJRT_Buffer_ToHostBuffer")?;
        Ok(q.dst_size)
    }

    /// Copies the buffer into a new host vector.
    ///
    /// # Errors
    /// A [`PjrtError`] from the plugin.
    pub fn to_host(&self) -> Result<Vec<u8>, PjrtError> {
        let mut v = vec![0u8; self.host_size()?];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        let api = &self.client.api;
        if let Ok(f) = api_fn!(api, PJRT_Buffer_Destroy) {
            let mut args = ffi::PJRT_Buffer_Destroy_Args::new();
            args.buffer = self.raw;
            // SAFETY: we own the buffer; destroyed once; the client outlives it (Arc).
            let err = unsafe { f(&mut args) };
            let _ = api.check(err, "PJRT_Buffer_Destroy");
        }
    }
}
