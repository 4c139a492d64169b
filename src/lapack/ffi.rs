//! The XLA FFI C ABI (`xla/ffi/api/c_api.h`, API 0.4 as shipped in jaxlib 0.11.2), and a
//! checked, safe view of one call frame.
//!
//! XLA calls a registered handler with an `XLA_FFI_CallFrame`: the stage, the operand and
//! result buffers (dtype, dims, data pointer) and the attributes (sorted by name). [`Frame`]
//! decodes it once, checking every struct size, and hands out typed slices only after checking
//! dtype, element count, alignment and that no result overlaps another result or an operand
//! read through a shared slice. Errors go back to XLA as `XLA_FFI_Error`s made with the
//! frame's own API table (XLA surfaces them as the execute error).
#![allow(
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    missing_docs
)]

use std::ffi::{c_char, c_void, CString};
use std::mem::{offset_of, size_of};

pub type XLA_FFI_DataType = i32;
pub const XLA_FFI_DataType_PRED: XLA_FFI_DataType = 1;
pub const XLA_FFI_DataType_S8: XLA_FFI_DataType = 2;
pub const XLA_FFI_DataType_S32: XLA_FFI_DataType = 4;
pub const XLA_FFI_DataType_S64: XLA_FFI_DataType = 5;
pub const XLA_FFI_DataType_U8: XLA_FFI_DataType = 6;
pub const XLA_FFI_DataType_F32: XLA_FFI_DataType = 11;
pub const XLA_FFI_DataType_F64: XLA_FFI_DataType = 12;
pub const XLA_FFI_DataType_C64: XLA_FFI_DataType = 15;
pub const XLA_FFI_DataType_C128: XLA_FFI_DataType = 18;

pub const XLA_FFI_Error_Code_INVALID_ARGUMENT: i32 = 3;
pub const XLA_FFI_Error_Code_FAILED_PRECONDITION: i32 = 9;
pub const XLA_FFI_Error_Code_UNIMPLEMENTED: i32 = 12;
pub const XLA_FFI_Error_Code_INTERNAL: i32 = 13;

pub const XLA_FFI_ExecutionStage_EXECUTE: i32 = 3;
pub const XLA_FFI_ArgType_BUFFER: i32 = 1;
pub const XLA_FFI_RetType_BUFFER: i32 = 1;
pub const XLA_FFI_AttrType_SCALAR: i32 = 3;
pub const XLA_FFI_AttrType_STRING: i32 = 4;
pub const XLA_FFI_Extension_Metadata: i32 = 1;

/// The FFI API version our handlers are written against (`XLA_FFI_API_MAJOR/MINOR`).
pub const XLA_FFI_API_MAJOR: i32 = 0;
pub const XLA_FFI_API_MINOR: i32 = 4;

#[repr(C)]
pub struct XLA_FFI_Error {
    _private: [u8; 0],
}

#[repr(C)]
pub struct XLA_FFI_InternalExtension {
    pub struct_size: usize,
    pub type_: i32,
    pub next: *mut XLA_FFI_InternalExtension,
}

#[repr(C)]
pub struct XLA_FFI_Api_Version {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub major_version: i32,
    pub minor_version: i32,
}

#[repr(C)]
pub struct XLA_FFI_Error_Create_Args {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub message: *const c_char,
    pub errc: i32,
}

/// The head of `XLA_FFI_Api`, up to `XLA_FFI_Error_Create` (the one function we call).
#[repr(C)]
pub struct XLA_FFI_Api {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub api_version: XLA_FFI_Api_Version,
    pub internal_api: *const c_void,
    pub XLA_FFI_Error_Create:
        Option<unsafe extern "C" fn(args: *mut XLA_FFI_Error_Create_Args) -> *mut XLA_FFI_Error>,
}

#[repr(C)]
pub struct XLA_FFI_Buffer {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub dtype: XLA_FFI_DataType,
    pub data: *mut c_void,
    pub rank: i64,
    pub dims: *mut i64,
}

#[repr(C)]
pub struct XLA_FFI_ByteSpan {
    pub ptr: *const c_char,
    pub len: usize,
}

#[repr(C)]
pub struct XLA_FFI_Scalar {
    pub dtype: XLA_FFI_DataType,
    pub value: *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Args {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub size: i64,
    pub types: *mut i32,
    pub args: *mut *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Rets {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub size: i64,
    pub types: *mut i32,
    pub rets: *mut *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Attrs {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub size: i64,
    pub types: *mut i32,
    pub names: *mut *mut XLA_FFI_ByteSpan,
    pub attrs: *mut *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_CallFrame {
    pub struct_size: usize,
    pub extension_start: *mut XLA_FFI_InternalExtension,
    pub api: *const XLA_FFI_Api,
    pub ctx: *mut c_void,
    pub stage: i32,
    pub args: XLA_FFI_Args,
    pub rets: XLA_FFI_Rets,
    pub attrs: XLA_FFI_Attrs,
    pub future: *mut c_void,
}

#[repr(C)]
pub struct XLA_FFI_Metadata {
    pub struct_size: usize,
    pub api_version: XLA_FFI_Api_Version,
    pub traits: u32,
    pub state_type_id: i64,
}

#[repr(C)]
pub struct XLA_FFI_Metadata_Extension {
    pub extension_base: XLA_FFI_InternalExtension,
    pub metadata: *mut XLA_FFI_Metadata,
}

/// The C signature of a handler.
pub type XLA_FFI_Handler = unsafe extern "C" fn(*mut XLA_FFI_CallFrame) -> *mut XLA_FFI_Error;

/// Struct sizes as `XLA_FFI_DEFINE_STRUCT_TRAITS` defines them (offset of the last field plus
/// its size): what a caller at least provides.
const CALL_FRAME_SIZE: usize = offset_of!(XLA_FFI_CallFrame, attrs) + size_of::<XLA_FFI_Attrs>();
const BUFFER_SIZE: usize = offset_of!(XLA_FFI_Buffer, dims) + size_of::<usize>();
const API_SIZE: usize = offset_of!(XLA_FFI_Api, XLA_FFI_Error_Create) + size_of::<usize>();
const METADATA_SIZE: usize = offset_of!(XLA_FFI_Metadata, traits) + size_of::<u32>();
const METADATA_EXT_SIZE: usize =
    offset_of!(XLA_FFI_Metadata_Extension, metadata) + size_of::<usize>();

/// An error to hand back to XLA: a code and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FfiError {
    /// An `XLA_FFI_Error_Code`.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

impl FfiError {
    /// INVALID_ARGUMENT: an operand, result or attribute is not what the target takes.
    pub fn invalid(message: impl Into<String>) -> FfiError {
        FfiError {
            code: XLA_FFI_Error_Code_INVALID_ARGUMENT,
            message: message.into(),
        }
    }

    /// FAILED_PRECONDITION: e.g. no LAPACK library could be loaded.
    pub fn precondition(message: impl Into<String>) -> FfiError {
        FfiError {
            code: XLA_FFI_Error_Code_FAILED_PRECONDITION,
            message: message.into(),
        }
    }

    /// UNIMPLEMENTED: a mode jax does not emit and we do not handle.
    pub fn unimplemented(message: impl Into<String>) -> FfiError {
        FfiError {
            code: XLA_FFI_Error_Code_UNIMPLEMENTED,
            message: message.into(),
        }
    }

    /// INTERNAL.
    pub fn internal(message: impl Into<String>) -> FfiError {
        FfiError {
            code: XLA_FFI_Error_Code_INTERNAL,
            message: message.into(),
        }
    }
}

/// An element type a handler reads or writes: its FFI dtype.
///
/// # Safety
/// `DTYPE` must be the XLA dtype whose elements have exactly `Self`'s size and representation,
/// and every bit pattern must be a valid `Self`.
pub unsafe trait Element: Copy + 'static {
    /// The `XLA_FFI_DataType`.
    const DTYPE: XLA_FFI_DataType;
    /// The name in messages (`f32`, `c64`, `s32`).
    const NAME: &'static str;
}

/// A complex number laid out as XLA and LAPACK store it: real part, then imaginary part.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Complex<T> {
    /// Real part.
    pub re: T,
    /// Imaginary part.
    pub im: T,
}

// SAFETY: XLA F32/F64 are IEEE binary32/64, C64/C128 pairs of them (real, imaginary), S32 a
// two's-complement 32-bit integer; all bit patterns are valid for these Rust types.
unsafe impl Element for f32 {
    const DTYPE: XLA_FFI_DataType = XLA_FFI_DataType_F32;
    const NAME: &'static str = "f32";
}
// SAFETY: as above.
unsafe impl Element for f64 {
    const DTYPE: XLA_FFI_DataType = XLA_FFI_DataType_F64;
    const NAME: &'static str = "f64";
}
// SAFETY: as above.
unsafe impl Element for Complex<f32> {
    const DTYPE: XLA_FFI_DataType = XLA_FFI_DataType_C64;
    const NAME: &'static str = "c64";
}
// SAFETY: as above.
unsafe impl Element for Complex<f64> {
    const DTYPE: XLA_FFI_DataType = XLA_FFI_DataType_C128;
    const NAME: &'static str = "c128";
}
// SAFETY: as above.
unsafe impl Element for i32 {
    const DTYPE: XLA_FFI_DataType = XLA_FFI_DataType_S32;
    const NAME: &'static str = "s32";
}

/// The name of an XLA dtype, for messages.
pub fn dtype_name(dtype: XLA_FFI_DataType) -> String {
    match dtype {
        XLA_FFI_DataType_PRED => "pred".into(),
        XLA_FFI_DataType_S8 => "s8".into(),
        XLA_FFI_DataType_S32 => "s32".into(),
        XLA_FFI_DataType_S64 => "s64".into(),
        XLA_FFI_DataType_U8 => "u8".into(),
        XLA_FFI_DataType_F32 => "f32".into(),
        XLA_FFI_DataType_F64 => "f64".into(),
        XLA_FFI_DataType_C64 => "c64".into(),
        XLA_FFI_DataType_C128 => "c128".into(),
        d => format!("dtype {d}"),
    }
}

/// One operand or result buffer as XLA passed it.
#[derive(Clone, Debug)]
pub struct BufferInfo {
    /// `XLA_FFI_DataType`.
    pub dtype: XLA_FFI_DataType,
    /// Logical dimensions (the custom call's layouts make the last two column-major).
    pub dims: Vec<i64>,
    data: *mut c_void,
}

impl BufferInfo {
    /// Number of elements (product of dims); `None` if a dim is negative or it overflows.
    pub fn elements(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |acc, &d| {
            usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
        })
    }

    /// Byte range `[start, end)` of the data, when the dtype has a known size.
    fn byte_range(&self) -> Option<(usize, usize)> {
        let size = match self.dtype {
            XLA_FFI_DataType_PRED | XLA_FFI_DataType_S8 | XLA_FFI_DataType_U8 => 1,
            XLA_FFI_DataType_S32 | XLA_FFI_DataType_F32 => 4,
            XLA_FFI_DataType_S64 | XLA_FFI_DataType_F64 | XLA_FFI_DataType_C64 => 8,
            XLA_FFI_DataType_C128 => 16,
            _ => return None,
        };
        let len = self.elements()?.checked_mul(size)?;
        let start = self.data as usize;
        Some((start, start.checked_add(len)?))
    }
}

/// An attribute value (only the kinds LAPACK targets use are decoded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attr {
    /// A `ui8` scalar (jax's character enums: `uplo = 76 : ui8` is `'L'`).
    U8(u8),
    /// An `i32` scalar.
    I32(i32),
    /// An `i64` scalar.
    I64(i64),
    /// A `bool` scalar.
    Bool(bool),
    /// A string.
    Str(String),
    /// Anything else: its attribute type and, for scalars, dtype.
    Other(String),
}

/// What a call asks of the handler.
pub enum Call<'a> {
    /// XLA asks for the handler's metadata (API version, traits) and nothing else.
    Metadata,
    /// A stage other than execute (instantiate, prepare, initialize): nothing to do.
    OtherStage(i32),
    /// Execute, with the decoded frame.
    Execute(Frame<'a>),
}

/// A decoded, checked execute-stage call frame. Slices it hands out live as long as the frame
/// (XLA keeps the buffers alive for the duration of the call).
pub struct Frame<'a> {
    args: Vec<BufferInfo>,
    rets: Vec<BufferInfo>,
    attrs: Vec<(String, Attr)>,
    taken: Vec<bool>,
    _life: std::marker::PhantomData<&'a mut ()>,
}

impl<'a> Frame<'a> {
    /// The operands.
    pub fn args(&self) -> &[BufferInfo] {
        &self.args
    }

    /// The results.
    pub fn rets(&self) -> &[BufferInfo] {
        &self.rets
    }

    /// An attribute by name.
    pub fn attr(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// All attribute names, for messages.
    pub fn attr_names(&self) -> Vec<&str> {
        self.attrs.iter().map(|(n, _)| n.as_str()).collect()
    }

    fn check_typed<T: Element>(b: &BufferInfo, what: &str) -> Result<usize, FfiError> {
        if b.dtype != T::DTYPE {
            return Err(FfiError::invalid(format!(
                "{what}: expected {} but got {}",
                T::NAME,
                dtype_name(b.dtype)
            )));
        }
        let n = b
            .elements()
            .ok_or_else(|| FfiError::invalid(format!("{what}: bad dims {:?}", b.dims)))?;
        if n > 0 {
            if b.data.is_null() {
                return Err(FfiError::invalid(format!("{what}: null data")));
            }
            if (b.data as usize) % std::mem::align_of::<T>() != 0 {
                return Err(FfiError::invalid(format!("{what}: misaligned data")));
            }
            if n.checked_mul(size_of::<T>())
                .is_none_or(|bytes| bytes > isize::MAX as usize)
            {
                return Err(FfiError::invalid(format!("{what}: too large")));
            }
        }
        Ok(n)
    }

    /// Operand `i` as a shared slice of `T`. Refused if its memory overlaps any result (an
    /// aliased operand is read through [`Frame::arg_into_ret`] instead).
    pub fn arg<T: Element>(&self, i: usize) -> Result<&'a [T], FfiError> {
        let what = format!("operand {i}");
        let b = self
            .args
            .get(i)
            .ok_or_else(|| FfiError::invalid(format!("{what} missing")))?;
        let n = Self::check_typed::<T>(b, &what)?;
        if n == 0 {
            return Ok(&[]);
        }
        let range = b.byte_range().ok_or_else(|| FfiError::invalid(&what))?;
        if self
            .rets
            .iter()
            .filter_map(BufferInfo::byte_range)
            .any(|r| overlaps(r, range))
        {
            return Err(FfiError::invalid(format!(
                "{what} shares memory with a result but the target reads it as input only"
            )));
        }
        // SAFETY: XLA keeps the operand alive and unchanged for the call; dtype, element count,
        // alignment and non-null were checked above, and no result (the only memory written
        // during the call) overlaps it.
        Ok(unsafe { std::slice::from_raw_parts(b.data.cast::<T>(), n) })
    }

    /// Result `i` as an exclusive slice of `T`; each result can be taken once.
    pub fn ret<T: Element>(&mut self, i: usize) -> Result<&'a mut [T], FfiError> {
        let what = format!("result {i}");
        let b = self
            .rets
            .get(i)
            .ok_or_else(|| FfiError::invalid(format!("{what} missing")))?;
        let n = Self::check_typed::<T>(b, &what)?;
        let taken = self
            .taken
            .get_mut(i)
            .ok_or_else(|| FfiError::invalid(&what))?;
        if *taken {
            return Err(FfiError::internal(format!("{what} taken twice")));
        }
        *taken = true;
        if n == 0 {
            return Ok(&mut []);
        }
        // SAFETY: checked as for `arg`; results were checked pairwise disjoint when the frame
        // was decoded, each is handed out once, and operands handed out as shared slices do not
        // overlap any result.
        Ok(unsafe { std::slice::from_raw_parts_mut(b.data.cast::<T>(), n) })
    }

    /// Result `ret` after copying operand `arg` into it (unless XLA aliased them, as jax asks
    /// with `output_operand_aliases`): the in-place input of a LAPACK routine. Both must have
    /// the same dtype and dims.
    pub fn arg_into_ret<T: Element>(
        &mut self,
        arg: usize,
        ret: usize,
    ) -> Result<&'a mut [T], FfiError> {
        let a = self
            .args
            .get(arg)
            .ok_or_else(|| FfiError::invalid(format!("operand {arg} missing")))?
            .clone();
        let n = Self::check_typed::<T>(&a, &format!("operand {arg}"))?;
        let r = self
            .rets
            .get(ret)
            .ok_or_else(|| FfiError::invalid(format!("result {ret} missing")))?;
        if r.dims != a.dims {
            return Err(FfiError::invalid(format!(
                "result {ret} has dims {:?}, operand {arg} {:?}: expected the same",
                r.dims, a.dims
            )));
        }
        let out = self.ret::<T>(ret)?;
        if n > 0 && a.data.cast::<T>() != out.as_mut_ptr() {
            // SAFETY: the operand holds `n` valid elements (checked), `out` has `n` too;
            // `copy` allows overlap.
            unsafe { std::ptr::copy(a.data.cast::<T>(), out.as_mut_ptr(), n) };
        }
        Ok(out)
    }
}

fn overlaps(a: (usize, usize), b: (usize, usize)) -> bool {
    a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
}

/// Decodes a call frame.
///
/// # Safety
/// `frame` must be null or a call frame XLA passed to a registered handler, valid for `'a`.
pub unsafe fn decode<'a>(frame: *mut XLA_FFI_CallFrame) -> Result<Call<'a>, FfiError> {
    if frame.is_null() {
        return Err(FfiError::invalid("null call frame"));
    }
    // SAFETY: the caller's contract; struct_size is the first field of every version.
    let size = unsafe { (*frame).struct_size };
    if size < CALL_FRAME_SIZE {
        return Err(FfiError::invalid(format!(
            "call frame of {size} bytes, need {CALL_FRAME_SIZE} (XLA FFI API too old)"
        )));
    }
    // SAFETY: the frame holds every field up to `attrs` (size checked).
    let f = unsafe { &*frame };
    if !f.extension_start.is_null() {
        // SAFETY: a non-null extension_start points to an XLA_FFI_InternalExtension.
        let ext = unsafe { &*f.extension_start };
        if ext.type_ == XLA_FFI_Extension_Metadata {
            // SAFETY: an extension of type Metadata is an XLA_FFI_Metadata_Extension.
            unsafe { fill_metadata(f.extension_start.cast())? };
            return Ok(Call::Metadata);
        }
    }
    if f.stage != XLA_FFI_ExecutionStage_EXECUTE {
        return Ok(Call::OtherStage(f.stage));
    }
    // SAFETY: the frame's args/rets arrays hold `size` entries each, valid for the call.
    let args = unsafe { buffers(f.args.size, f.args.types, f.args.args, "operand")? };
    // SAFETY: as above.
    let rets = unsafe { buffers(f.rets.size, f.rets.types, f.rets.rets, "result")? };
    for (i, a) in rets.iter().enumerate() {
        for (j, b) in rets.iter().enumerate().skip(i + 1) {
            if let (Some(x), Some(y)) = (a.byte_range(), b.byte_range()) {
                if overlaps(x, y) {
                    return Err(FfiError::invalid(format!(
                        "results {i} and {j} share memory"
                    )));
                }
            }
        }
    }
    // SAFETY: the attrs arrays hold `size` entries, valid for the call.
    let attrs = unsafe { attributes(&f.attrs)? };
    let taken = vec![false; rets.len()];
    Ok(Call::Execute(Frame {
        args,
        rets,
        attrs,
        taken,
        _life: std::marker::PhantomData,
    }))
}

/// # Safety
/// `ext` must point to a live `XLA_FFI_Metadata_Extension` of at least its base's size.
unsafe fn fill_metadata(ext: *mut XLA_FFI_Metadata_Extension) -> Result<(), FfiError> {
    // SAFETY: the caller's contract: the base is readable.
    let base_size = unsafe { (*ext).extension_base.struct_size };
    if base_size < METADATA_EXT_SIZE {
        return Err(FfiError::invalid("metadata extension too small"));
    }
    // SAFETY: the extension holds `metadata` (size checked).
    let md = unsafe { (*ext).metadata };
    if md.is_null() {
        return Err(FfiError::invalid("metadata extension without metadata"));
    }
    // SAFETY: XLA passes a live XLA_FFI_Metadata for us to fill; struct_size first.
    let md_size = unsafe { (*md).struct_size };
    if md_size < METADATA_SIZE {
        return Err(FfiError::invalid("metadata struct too small"));
    }
    // SAFETY: the struct holds api_version and traits (size checked); we write only those and
    // state_type_id when it is there too.
    unsafe {
        (*md).api_version = XLA_FFI_Api_Version {
            struct_size: size_of::<XLA_FFI_Api_Version>(),
            extension_start: std::ptr::null_mut(),
            major_version: XLA_FFI_API_MAJOR,
            minor_version: XLA_FFI_API_MINOR,
        };
        (*md).traits = 0;
        if md_size >= size_of::<XLA_FFI_Metadata>() {
            (*md).state_type_id = 0;
        }
    }
    Ok(())
}

/// # Safety
/// `types` and `ptrs` must be null or hold `n` entries; each buffer entry points to a live
/// `XLA_FFI_Buffer`.
unsafe fn buffers(
    n: i64,
    types: *const i32,
    ptrs: *const *mut c_void,
    what: &str,
) -> Result<Vec<BufferInfo>, FfiError> {
    let n = usize::try_from(n).map_err(|_| FfiError::invalid(format!("{what} count {n}")))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if types.is_null() || ptrs.is_null() {
        return Err(FfiError::invalid(format!("null {what} arrays")));
    }
    // SAFETY: the caller's contract.
    let (types, ptrs) = unsafe {
        (
            std::slice::from_raw_parts(types, n),
            std::slice::from_raw_parts(ptrs, n),
        )
    };
    let mut out = Vec::with_capacity(n);
    for (i, (&t, &p)) in types.iter().zip(ptrs).enumerate() {
        if t != XLA_FFI_ArgType_BUFFER || p.is_null() {
            return Err(FfiError::invalid(format!(
                "{what} {i} is not a buffer (type {t})"
            )));
        }
        let b = p.cast::<XLA_FFI_Buffer>();
        // SAFETY: a buffer entry points to a live XLA_FFI_Buffer; struct_size first.
        let size = unsafe { (*b).struct_size };
        if size < BUFFER_SIZE {
            return Err(FfiError::invalid(format!(
                "{what} {i}: buffer struct too small"
            )));
        }
        // SAFETY: size checked; the fields are plain values.
        let (dtype, data, rank, dims) = unsafe { ((*b).dtype, (*b).data, (*b).rank, (*b).dims) };
        let rank =
            usize::try_from(rank).map_err(|_| FfiError::invalid(format!("{what} {i}: rank")))?;
        let dims = if rank == 0 {
            Vec::new()
        } else if dims.is_null() {
            return Err(FfiError::invalid(format!("{what} {i}: null dims")));
        } else {
            // SAFETY: `dims` holds `rank` entries.
            unsafe { std::slice::from_raw_parts(dims, rank) }.to_vec()
        };
        out.push(BufferInfo { dtype, dims, data });
    }
    Ok(out)
}

/// # Safety
/// `a` must be a live `XLA_FFI_Attrs` whose arrays hold `size` entries.
unsafe fn attributes(a: &XLA_FFI_Attrs) -> Result<Vec<(String, Attr)>, FfiError> {
    let n = usize::try_from(a.size).map_err(|_| FfiError::invalid("attribute count"))?;
    if n == 0 {
        return Ok(Vec::new());
    }
    if a.types.is_null() || a.names.is_null() || a.attrs.is_null() {
        return Err(FfiError::invalid("null attribute arrays"));
    }
    // SAFETY: the caller's contract.
    let (types, names, values) = unsafe {
        (
            std::slice::from_raw_parts(a.types, n),
            std::slice::from_raw_parts(a.names, n),
            std::slice::from_raw_parts(a.attrs, n),
        )
    };
    let mut out = Vec::with_capacity(n);
    for ((&t, &name), &value) in types.iter().zip(names).zip(values) {
        if name.is_null() {
            return Err(FfiError::invalid("null attribute name"));
        }
        // SAFETY: a non-null name is a live byte span.
        let span = unsafe { &*name };
        let name = if span.ptr.is_null() || span.len == 0 {
            String::new()
        } else {
            // SAFETY: the span describes `len` readable bytes.
            let bytes = unsafe { std::slice::from_raw_parts(span.ptr.cast::<u8>(), span.len) };
            String::from_utf8_lossy(bytes).into_owned()
        };
        let attr = if value.is_null() {
            Attr::Other(format!("attribute type {t} (null)"))
        } else if t == XLA_FFI_AttrType_SCALAR {
            // SAFETY: a scalar attribute points to an XLA_FFI_Scalar whose value points to one
            // element of its dtype.
            unsafe {
                let s = &*value.cast::<XLA_FFI_Scalar>();
                if s.value.is_null() {
                    Attr::Other("scalar (null)".into())
                } else {
                    match s.dtype {
                        XLA_FFI_DataType_U8 => Attr::U8(*s.value.cast::<u8>()),
                        XLA_FFI_DataType_S32 => Attr::I32(s.value.cast::<i32>().read_unaligned()),
                        XLA_FFI_DataType_S64 => Attr::I64(s.value.cast::<i64>().read_unaligned()),
                        XLA_FFI_DataType_PRED => Attr::Bool(*s.value.cast::<u8>() != 0),
                        d => Attr::Other(format!("{} scalar", dtype_name(d))),
                    }
                }
            }
        } else if t == XLA_FFI_AttrType_STRING {
            // SAFETY: a string attribute points to an XLA_FFI_ByteSpan.
            let s = unsafe { &*value.cast::<XLA_FFI_ByteSpan>() };
            if s.ptr.is_null() {
                Attr::Str(String::new())
            } else {
                // SAFETY: the span describes `len` readable bytes.
                let bytes = unsafe { std::slice::from_raw_parts(s.ptr.cast::<u8>(), s.len) };
                Attr::Str(String::from_utf8_lossy(bytes).into_owned())
            }
        } else {
            Attr::Other(format!("attribute type {t}"))
        };
        out.push((name, attr));
    }
    Ok(out)
}

/// Turns an error into an `XLA_FFI_Error*` made by the frame's API (null if the API cannot make
/// one: then XLA sees success, so this is only reached with a frame XLA built).
///
/// # Safety
/// `frame` must be null or a live call frame from XLA.
pub unsafe fn to_xla(frame: *mut XLA_FFI_CallFrame, e: &FfiError) -> *mut XLA_FFI_Error {
    if frame.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: the caller's contract.
    let api = unsafe { (*frame).api };
    if api.is_null() {
        return std::ptr::null_mut();
    }
    // SAFETY: a live XLA_FFI_Api; struct_size first.
    if unsafe { (*api).struct_size } < API_SIZE {
        return std::ptr::null_mut();
    }
    // SAFETY: the table holds XLA_FFI_Error_Create (size checked).
    let Some(create) = (unsafe { (*api).XLA_FFI_Error_Create }) else {
        return std::ptr::null_mut();
    };
    let msg = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
    let mut args = XLA_FFI_Error_Create_Args {
        struct_size: size_of::<XLA_FFI_Error_Create_Args>(),
        extension_start: std::ptr::null_mut(),
        message: msg.as_ptr(),
        errc: e.code,
    };
    // SAFETY: valid args; XLA copies the message before returning.
    unsafe { create(&mut args) }
}

/// Runs `kernel` for one call: decodes the frame, answers metadata queries and non-execute
/// stages, turns errors and panics into `XLA_FFI_Error`s. The body of every handler.
///
/// # Safety
/// `frame` must be null or a call frame XLA passed to a registered handler.
pub unsafe fn handle(
    frame: *mut XLA_FFI_CallFrame,
    kernel: impl FnOnce(&mut Frame<'_>) -> Result<(), FfiError>,
    target: &str,
) -> *mut XLA_FFI_Error {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // SAFETY: the caller's contract.
        match unsafe { decode(frame) }? {
            Call::Metadata | Call::OtherStage(_) => Ok(()),
            Call::Execute(mut f) => kernel(&mut f),
        }
    }));
    let mut e = match r {
        Ok(Ok(())) => return std::ptr::null_mut(),
        Ok(Err(e)) => e,
        Err(p) => FfiError::internal(format!(
            "LAPACK handler panicked: {}",
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        )),
    };
    if !e.message.starts_with(target) {
        e.message = format!("{target}: {}", e.message);
    }
    // SAFETY: the caller's contract.
    unsafe { to_xla(frame, &e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_c_header() {
        // Offsets of xla/ffi/api/c_api.h on LP64.
        assert_eq!(offset_of!(XLA_FFI_CallFrame, api), 16);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, stage), 32);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, args), 40);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, rets), 80);
        assert_eq!(offset_of!(XLA_FFI_CallFrame, attrs), 120);
        assert_eq!(CALL_FRAME_SIZE, 168);
        assert_eq!(offset_of!(XLA_FFI_Buffer, dims), 40);
        assert_eq!(offset_of!(XLA_FFI_Api, XLA_FFI_Error_Create), 48);
        assert_eq!(offset_of!(XLA_FFI_Metadata, traits), 32);
        assert_eq!(offset_of!(XLA_FFI_Metadata, state_type_id), 40);
        assert_eq!(size_of::<XLA_FFI_Error_Create_Args>(), 32);
    }

    #[test]
    fn overlap() {
        assert!(overlaps((0, 8), (4, 12)));
        assert!(!overlaps((0, 8), (8, 12)));
        assert!(!overlaps((0, 0), (0, 12)));
    }
}
