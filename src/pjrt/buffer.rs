//! `PJRT_Buffer`: a device array, read back to the host; and event helpers.

use std::sync::Arc;

use super::api::{api_fn, Api};
use super::inner::ClientInner;
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

/// A PJRT event we own: destroyed in `Drop` (after waiting, if nobody waited).
pub(crate) struct Event {
    api: Arc<Api>,
    raw: *mut ffi::PJRT_Event,
}

// SAFETY: PJRT events may be awaited and destroyed from any thread.
unsafe impl Send for Event {}
// SAFETY: as above; `&Event` is never used to call anything.
unsafe impl Sync for Event {}

impl Event {
    pub(crate) fn from_raw(api: Arc<Api>, raw: *mut ffi::PJRT_Event) -> Option<Event> {
        (!raw.is_null()).then_some(Event { api, raw })
    }

    /// Waits for the event; its error becomes the result.
    pub(crate) fn wait(self) -> Result<(), PjrtError> {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: reading the fields out of a ManuallyDrop that is never used again, so the
        // event is destroyed exactly once, by `await_event`.
        let api = unsafe { std::ptr::read(&this.api) };
        await_event(&api, this.raw, "PJRT_Event_Await")
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = await_event(&self.api, self.raw, "PJRT_Event_Await");
    }
}

/// A device buffer that may alias borrowed host memory (see
/// [`super::Client::buffer_from_host_borrowed`]). Dropping it frees the buffer, then waits until
/// the plugin is done with the host memory, so the borrow cannot end early.
pub struct BorrowedBuffer<'a> {
    buffer: std::mem::ManuallyDrop<Buffer>,
    done: Option<Event>,
    _data: std::marker::PhantomData<&'a [u8]>,
}

impl BorrowedBuffer<'_> {
    pub(crate) fn new(buffer: Buffer, done: Option<Event>) -> Self {
        BorrowedBuffer {
            buffer: std::mem::ManuallyDrop::new(buffer),
            done,
            _data: std::marker::PhantomData,
        }
    }
}

impl std::ops::Deref for BorrowedBuffer<'_> {
    type Target = Buffer;
    fn deref(&self) -> &Buffer {
        &self.buffer
    }
}

impl Drop for BorrowedBuffer<'_> {
    fn drop(&mut self) {
        // SAFETY: `buffer` is dropped exactly once, here, and never used afterwards.
        unsafe { std::mem::ManuallyDrop::drop(&mut self.buffer) };
        if let Some(done) = self.done.take() {
            let _ = done.wait();
        }
    }
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

    /// Copies the buffer to `dst`, which must be exactly the buffer's size in bytes.
    ///
    /// On a CPU plugin a ready buffer with the default dense row-major layout is copied straight
    /// from its memory (~0.1 µs for small arrays, against ~20 µs for `PJRT_Buffer_ToHostBuffer`,
    /// whose completion hops through the plugin's thread pool); anything else goes through
    /// `PJRT_Buffer_ToHostBuffer`.
    ///
    /// # Errors
    /// [`PjrtError::Contract`] if `dst` has another size; the plugin's error otherwise.
    pub fn copy_to_host(&self, dst: &mut [u8]) -> Result<(), PjrtError> {
        if let Some(src) = self.cpu_dense_bytes(dst.len())? {
            dst.copy_from_slice(src);
            return Ok(());
        }
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

    /// On a CPU plugin: the buffer's own memory, when it is ready, `len` bytes long and laid out
    /// dense row-major (major-to-minor, untiled). `None` when any of that does not hold or the
    /// plugin lacks a function needed to tell.
    fn cpu_dense_bytes(&self, len: usize) -> Result<Option<&[u8]>, PjrtError> {
        let Some(p) = self.cpu_dense_ptr(len)? else {
            return Ok(None);
        };
        // SAFETY: `p` is the buffer's host memory, ready, `len` bytes, dense (checked by
        // `cpu_dense_ptr`); it lives as long as `self`, which the returned borrow is tied to, and
        // is only written through `cpu_host_memory_mut`, which needs `&mut self`.
        Ok(Some(unsafe { std::slice::from_raw_parts(p, len) }))
    }

    /// The pointer behind [`Buffer::cpu_dense_bytes`]: non-null (dangling for `len == 0`).
    fn cpu_dense_ptr(&self, len: usize) -> Result<Option<*mut u8>, PjrtError> {
        let api = &self.client.api;
        let (Ok(on_cpu), Ok(size), Ok(layout), Ok(ready_event), Ok(pointer)) = (
            api_fn!(api, PJRT_Buffer_IsOnCpu),
            api_fn!(api, PJRT_Buffer_OnDeviceSizeInBytes),
            api_fn!(api, PJRT_Buffer_GetMemoryLayout),
            api_fn!(api, PJRT_Buffer_ReadyEvent),
            api_fn!(api, PJRT_Buffer_UnsafePointer),
        ) else {
            return Ok(None);
        };
        let mut a = ffi::PJRT_Buffer_IsOnCpu_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        let err = unsafe { on_cpu(&mut a) };
        api.check(err, "PJRT_Buffer_IsOnCpu")?;
        if !a.is_on_cpu {
            return Ok(None);
        }
        let mut a = ffi::PJRT_Buffer_OnDeviceSizeInBytes_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        let err = unsafe { size(&mut a) };
        api.check(err, "PJRT_Buffer_OnDeviceSizeInBytes")?;
        if a.on_device_size_in_bytes != len {
            return Ok(None);
        }
        let mut a = ffi::PJRT_Buffer_GetMemoryLayout_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args; the layout's arrays are owned by the buffer.
        let err = unsafe { layout(&mut a) };
        api.check(err, "PJRT_Buffer_GetMemoryLayout")?;
        if a.layout.type_ != ffi::PJRT_Buffer_MemoryLayout_Type_Tiled {
            return Ok(None);
        }
        // SAFETY: `type_` says the union holds the tiled layout.
        let tiled = unsafe { a.layout.layout.tiled };
        if tiled.num_tiles != 0 {
            return Ok(None);
        }
        let m2m: &[i64] = if tiled.minor_to_major_size == 0 {
            &[]
        } else if tiled.minor_to_major.is_null() {
            return Ok(None);
        } else {
            // SAFETY: `minor_to_major_size` entries owned by the buffer, read now.
            unsafe { std::slice::from_raw_parts(tiled.minor_to_major, tiled.minor_to_major_size) }
        };
        // Dense row-major is minor_to_major = [rank-1, ..., 1, 0].
        let rank = m2m.len();
        if !m2m
            .iter()
            .enumerate()
            .all(|(i, &d)| usize::try_from(d).ok() == Some(rank - 1 - i))
        {
            return Ok(None);
        }
        let mut a = ffi::PJRT_Buffer_ReadyEvent_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args; the event is ours (wrapped below).
        let err = unsafe { ready_event(&mut a) };
        api.check(err, "PJRT_Buffer_ReadyEvent")?;
        if let Some(ev) = Event::from_raw(api.clone(), a.event) {
            // Waiting also surfaces an execution error instead of reading undefined data.
            ev.wait()?;
        }
        let mut a = ffi::PJRT_Buffer_UnsafePointer_Args::new();
        a.buffer = self.raw;
        // SAFETY: live buffer, valid args.
        let err = unsafe { pointer(&mut a) };
        api.check(err, "PJRT_Buffer_UnsafePointer")?;
        if a.buffer_pointer == 0 {
            return Ok((len == 0)
                .then(std::ptr::NonNull::<u8>::dangling)
                .map(|p| p.as_ptr()));
        }
        Ok(Some(a.buffer_pointer as *mut u8))
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

/// A resident input buffer on a CPU plugin, refilled in place for each call: one `memcpy`
/// instead of creating (and destroying) a PJRT buffer per input per call, which costs ~1.3 µs
/// each on the CPU plugin.
///
/// Refilling is sound because nothing else can be reading the memory when `fill` runs: it takes
/// `&mut self`, and every execution xlaguard starts ([`super::LoadedExecutable::execute`])
/// waits for its completion and never donates its arguments, so no computation that used this
/// buffer is still running or has consumed it.
pub struct StagingBuffer {
    buffer: Buffer,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the pointer is the buffer's own host memory, owned by `buffer`; access to it follows
// Rust's borrow rules through `&mut self` (`fill`) and `&self` (`buffer`).
unsafe impl Send for StagingBuffer {}
// SAFETY: `&StagingBuffer` only hands out `&Buffer`; writes need `&mut`.
unsafe impl Sync for StagingBuffer {}

impl StagingBuffer {
    /// Wraps `buffer` (of `len` bytes) when the plugin keeps it in host memory, dense row-major;
    /// `None` otherwise. [`StagingBuffer::new`] (beside the client) makes the buffer.
    pub(super) fn from_buffer(
        buffer: Buffer,
        len: usize,
    ) -> Result<Option<StagingBuffer>, PjrtError> {
        Ok(buffer
            .cpu_dense_ptr(len)?
            .map(|ptr| StagingBuffer { buffer, ptr, len }))
    }

    /// Copies `data` (exactly the buffer's size) into the buffer.
    ///
    /// # Errors
    /// [`PjrtError::Contract`] on a size mismatch.
    pub fn fill(&mut self, data: &[u8]) -> Result<(), PjrtError> {
        if data.len() != self.len {
            return Err(PjrtError::Contract {
                function: "StagingBuffer::fill",
                detail: format!("{} bytes for a {}-byte buffer", data.len(), self.len),
            });
        }
        // SAFETY: `ptr` is valid for `len` bytes of the buffer's host memory (checked when made),
        // `data` has `len` bytes and is a different allocation, and no one else reads or writes
        // the buffer now (see the type's documentation).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr, self.len) };
        Ok(())
    }

    /// The buffer, to pass to an execution.
    pub fn buffer(&self) -> &Buffer {
        &self.buffer
    }
}
