//! The Open Inference Protocol (KServe v2) wire format: datatype names, inference requests in JSON
//! and with the binary tensor data extension, and inference responses.
//!
//! Everything here reads untrusted bytes. Nothing panics on any input; every refusal is a
//! [`BadRequest`] naming the input, what was expected and what was given.
//!
//! # Datatypes
//! `BOOL`, `UINT8`, `UINT16`, `UINT32`, `UINT64`, `INT8`, `INT16`, `INT32`, `INT64`, `FP16`,
//! `FP32`, `FP64` as in the protocol, and `BF16` (a Triton extension). In binary form every
//! datatype is its raw little-endian bytes (BF16: the upper two bytes of the float32, as Triton
//! and `ml_dtypes` lay it out; BOOL: one byte, 0 or 1). In JSON:
//! - BOOL takes `true`/`false` only; integer datatypes take integers in range only (`1.0` and
//!   `1e3` are refused);
//! - FP16, BF16, FP32, FP64 take any JSON number, rounded to nearest-even; a finite literal that
//!   overflows the datatype (`1e39` for FP32, `70000` for FP16) is refused; the strings `"NaN"`,
//!   `"Infinity"`, `"-Infinity"` (also `"nan"`, `"inf"`, `"-inf"`) give the non-finite values.
//!   BF16 in JSON is an xlaguard extension (Triton and its client send BF16 only as binary);
//! - in responses, non-finite floats are written as the bare tokens `NaN`, `Infinity` and
//!   `-Infinity`, which Python's `json`, `rapidjson` (and so `tritonclient`) read; ask for binary
//!   outputs where a strict JSON reader must parse them.
//!
//! `data` may be flat or nested in row-major order (as Triton, nesting is flattened; only the
//! element count is checked against the shape). `BYTES` is refused: these models take numbers.

use std::fmt::Write as _;

use bytes::Bytes;
use half::{bf16, f16};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::signature::{format_type, DType, Dim, Signature, TensorSpec};
use crate::tensor::{byte_len, Tensor, TensorRef};
use crate::validate::{self, InputError};

use super::datatype::push_element;
pub use super::datatype::{datatype_name, parse_datatype, DATATYPES};
use super::fastjson::{self, Data, InputFields, OutputFields, RequestFields};

/// The shape a tensor has on the wire: a complex tensor gains a trailing dimension of 2.
pub fn wire_shape(dtype: DType, shape: &[u64]) -> Vec<u64> {
    let mut s = shape.to_vec();
    if dtype.is_complex() {
        s.push(2);
    }
    s
}

/// A request refused before anything ran (HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadRequest {
    /// The rule that refused it, a short stable label for metrics (`dtype`, `shape`,
    /// `element_count`, `json`, ...).
    pub rule: &'static str,
    /// The model input it concerns, when it concerns one the model has.
    pub input: Option<String>,
    /// The message sent to the client.
    pub message: String,
}

impl BadRequest {
    fn new(rule: &'static str, message: impl Into<String>) -> BadRequest {
        BadRequest {
            rule,
            input: None,
            message: message.into(),
        }
    }

    fn input(rule: &'static str, input: &str, message: impl Into<String>) -> BadRequest {
        BadRequest {
            rule,
            input: Some(input.to_string()),
            message: message.into(),
        }
    }
}

/// The metrics label of a validation error and the input it names (when the model has it).
pub fn input_error_rule(e: &InputError) -> (&'static str, Option<&str>) {
    match e {
        InputError::Count { .. } => ("count", None),
        InputError::UnknownName { .. } => ("unknown_input", None),
        InputError::Duplicate { .. } => ("duplicate_input", None),
        InputError::Missing { name, .. } => ("missing_input", Some(name)),
        InputError::DType { name, .. } => ("dtype", Some(name)),
        InputError::Shape { name, .. } => ("shape", Some(name)),
        InputError::ByteLength { name, .. } => ("byte_length", Some(name)),
        InputError::Dimensions { name, .. } => ("dimensions", name.as_deref()),
        InputError::Constraint { .. } => ("constraint", None),
        #[allow(unreachable_patterns)]
        _ => ("other", None),
    }
}

impl From<InputError> for BadRequest {
    fn from(e: InputError) -> BadRequest {
        let (rule, input) = input_error_rule(&e);
        BadRequest {
            rule,
            input: input.map(str::to_string),
            message: e.to_string(),
        }
    }
}

/// Limits applied while parsing a request.
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// Deepest nesting of JSON arrays and objects accepted (checked before any parsing).
    pub max_json_depth: usize,
}

impl Default for ParseLimits {
    fn default() -> ParseLimits {
        ParseLimits { max_json_depth: 64 }
    }
}

/// One input of a parsed request: dtype, shape and little-endian bytes.
#[derive(Clone, Debug)]
pub struct InputTensor {
    /// The input's name.
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: Vec<u64>,
    /// Row-major little-endian bytes (a slice of the request body for binary data).
    pub data: Bytes,
}

impl InputTensor {
    /// A borrowed view for [`crate::Model::run`].
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }
}

/// One output to return, and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputChoice {
    /// Index into the signature's outputs.
    pub index: usize,
    /// Return the bytes after the JSON header instead of in `data`.
    pub binary: bool,
}

/// A parsed, checked inference request. Inputs are in signature order.
#[derive(Clone, Debug)]
pub struct InferRequest {
    /// The request's `id`, echoed in the response.
    pub id: Option<String>,
    /// Inputs in signature order, each already checked for dtype, shape and length.
    pub inputs: Vec<InputTensor>,
    /// Outputs to return, in response order.
    pub outputs: Vec<OutputChoice>,
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<RequestParams>,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize, Default)]
struct RequestParams {
    #[serde(default)]
    binary_data_output: Option<bool>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<InputParams>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct InputParams {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    shared_memory_region: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParams>,
}

#[derive(Deserialize, Default)]
struct OutputParams {
    #[serde(default)]
    binary_data: Option<bool>,
    #[serde(default)]
    classification: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    shared_memory_region: Option<serde::de::IgnoredAny>,
}

/// Refuses JSON nested deeper than `max` arrays/objects, in one pass over the bytes without
/// recursion or allocation, so that a hostile body (50,000 `[`) never reaches a recursive
/// parser. Strings are skipped, escapes included.
///
/// # Errors
/// [`BadRequest`] with rule `json_depth`.
pub fn check_json_depth(json: &[u8], max: usize) -> Result<(), BadRequest> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for (at, &c) in json.iter().enumerate() {
        if in_string {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_string = false;
            }
            continue;
        }
        match c {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return Err(BadRequest::new(
                        "json_depth",
                        format!(
                            "request JSON is nested more than {max} levels deep (at byte {at}); \
                             tensor data is a flat or nested array of at most the tensor's rank"
                        ),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn shape_string(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn spec_shape_string(spec: &TensorSpec) -> String {
    let dims: Vec<String> = spec.shape.iter().map(Dim::to_string).collect();
    format!("[{}]", dims.join(","))
}

fn names(specs: &[TensorSpec]) -> String {
    specs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn shorten(token: &str) -> String {
    const MAX: usize = 40;
    if token.len() <= MAX {
        return token.to_string();
    }
    let mut end = MAX;
    while !token.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", token.get(..end).unwrap_or_default())
}

/// Parses and checks an inference request against a model's signature.
///
/// `header_len` is the `Inference-Header-Content-Length` header: the JSON is the first
/// `header_len` bytes of `body` and binary tensor data follows it; without it, the whole body is
/// JSON. Each input is checked for name, datatype, shape and data length before its data is
/// decoded, with the library's own messages (`input 'pixels' (0): expected float32[1,64], got
/// float32[1,63]`).
///
/// # Errors
/// A [`BadRequest`] naming what is wrong, expected and got.
pub fn parse_request(
    body: &Bytes,
    header_len: Option<usize>,
    sig: &Signature,
    limits: &ParseLimits,
) -> Result<InferRequest, BadRequest> {
    let json_len = match header_len {
        Some(n) if n > body.len() => {
            return Err(BadRequest::new(
                "binary_header",
                format!(
                    "Inference-Header-Content-Length is {n} but the body has only {} bytes",
                    body.len()
                ),
            ))
        }
        Some(n) => n,
        None => body.len(),
    };
    let json = body.get(..json_len).unwrap_or_default();
    // One pass over the JSON for the requests it takes for certain; the serde reader (and its
    // messages) for everything else, malformed requests included.
    if let Some(fields) = fastjson::read_request(json, limits.max_json_depth) {
        return finish_request(fields, body, header_len.is_some(), json_len, sig);
    }
    parse_request_serde(body, header_len.is_some(), json_len, sig, limits)
}

/// The serde-based reader: the judge of every request the one-pass reader does not take.
fn parse_request_serde(
    body: &Bytes,
    has_binary: bool,
    json_len: usize,
    sig: &Signature,
    limits: &ParseLimits,
) -> Result<InferRequest, BadRequest> {
    let json = body.get(..json_len).unwrap_or_default();
    check_json_depth(json, limits.max_json_depth)?;
    let raw: RawRequest<'_> = serde_json::from_slice(json).map_err(|e| {
        BadRequest::new(
            "json",
            format!("malformed inference request JSON: {e}{}", json_hint(&e)),
        )
    })?;
    let fields = RequestFields {
        id: raw.id,
        binary_data_output: raw.parameters.as_ref().and_then(|p| p.binary_data_output),
        inputs: raw
            .inputs
            .iter()
            .map(|i| {
                let p = i.parameters.as_ref();
                InputFields {
                    name: &i.name,
                    shape: i.shape.clone(),
                    datatype: &i.datatype,
                    binary_data_size: p.and_then(|p| p.binary_data_size),
                    shared_memory: p.is_some_and(|p| p.shared_memory_region.is_some()),
                    data: i.data.map(|d| Data::Raw(d.get())),
                }
            })
            .collect(),
        outputs: raw.outputs.as_ref().map(|list| {
            list.iter()
                .map(|o| {
                    let p = o.parameters.as_ref();
                    OutputFields {
                        name: &o.name,
                        binary_data: p.and_then(|p| p.binary_data),
                        classification: p.is_some_and(|p| p.classification.is_some()),
                        shared_memory: p.is_some_and(|p| p.shared_memory_region.is_some()),
                    }
                })
                .collect()
        }),
    };
    finish_request(fields, body, has_binary, json_len, sig)
}

/// Checks a request's fields (from either reader) against the signature, in one order, with one
/// set of messages.
fn finish_request(
    raw: RequestFields<'_>,
    body: &Bytes,
    has_binary: bool,
    json_len: usize,
    sig: &Signature,
) -> Result<InferRequest, BadRequest> {
    let binary_default = raw.binary_data_output.unwrap_or(false);
    let mut binary_at = json_len;
    let mut named = Vec::with_capacity(raw.inputs.len());
    for input in raw.inputs {
        let name = input.name.to_string();
        let t = parse_input(input, body, has_binary, &mut binary_at, sig)?;
        named.push((name, t));
    }
    if binary_at < body.len() {
        return Err(BadRequest::new(
            "binary_size",
            format!(
                "{} bytes of binary data follow the inputs' binary_data_size total",
                body.len() - binary_at
            ),
        ));
    }
    let inputs = validate::order_named(sig, named)?;

    let outputs = match raw.outputs {
        None => (0..sig.outputs.len())
            .map(|index| OutputChoice {
                index,
                binary: binary_default,
            })
            .collect(),
        Some(list) => {
            let mut chosen: Vec<OutputChoice> = Vec::with_capacity(list.len());
            for o in list {
                let index = sig
                    .outputs
                    .iter()
                    .position(|s| s.name == o.name)
                    .ok_or_else(|| {
                        BadRequest::new(
                            "unknown_output",
                            format!(
                                "unknown output '{}'; the model returns {}",
                                shorten(o.name),
                                names(&sig.outputs)
                            ),
                        )
                    })?;
                if chosen.iter().any(|c| c.index == index) {
                    return Err(BadRequest::new(
                        "duplicate_output",
                        format!("output '{}' requested more than once", o.name),
                    ));
                }
                if o.classification {
                    return Err(BadRequest::new(
                        "unsupported",
                        format!(
                            "output '{}': the classification extension is not supported",
                            o.name
                        ),
                    ));
                }
                if o.shared_memory {
                    return Err(BadRequest::new(
                        "unsupported",
                        format!(
                            "output '{}': the shared-memory extension is not supported",
                            o.name
                        ),
                    ));
                }
                let binary = o.binary_data.unwrap_or(binary_default);
                chosen.push(OutputChoice { index, binary });
            }
            chosen
        }
    };
    Ok(InferRequest {
        id: raw.id,
        inputs,
        outputs,
    })
}

fn json_hint(e: &serde_json::Error) -> &'static str {
    let m = e.to_string();
    if m.contains("recursion limit") {
        "; the JSON is nested too deeply"
    } else if m.starts_with("expected value") {
        "; non-finite floats are written \"NaN\", \"Infinity\", \"-Infinity\" (strings) in requests"
    } else {
        ""
    }
}

fn parse_input(
    input: InputFields<'_>,
    body: &Bytes,
    has_binary: bool,
    binary_at: &mut usize,
    sig: &Signature,
) -> Result<InputTensor, BadRequest> {
    let name = input.name;
    let Some(index) = sig.input_index(name) else {
        return Err(InputError::UnknownName {
            name: shorten(name),
            names: names(&sig.inputs),
        }
        .into());
    };
    let spec = sig
        .inputs
        .get(index)
        .ok_or_else(|| BadRequest::new("internal", "signature index out of range".to_string()))?;
    let dtype = match parse_datatype(input.datatype) {
        Some(d) => d,
        None if input.datatype == "BYTES" => {
            return Err(BadRequest::input(
                "datatype",
                name,
                format!(
                    "input '{name}': datatype BYTES is not supported; expected {} {}",
                    datatype_name(spec.dtype),
                    spec_shape_string(spec)
                ),
            ))
        }
        None => {
            let all: Vec<&str> = DATATYPES.iter().map(|(n, _)| *n).collect();
            return Err(BadRequest::input(
                "datatype",
                name,
                format!(
                    "input '{name}': unknown datatype '{}'; expected {} (datatypes: {})",
                    shorten(input.datatype),
                    datatype_name(spec.dtype),
                    all.join(", ")
                ),
            ));
        }
    };
    let mut shape = Vec::with_capacity(input.shape.len() + 1);
    for &d in &input.shape {
        let d = u64::try_from(d).map_err(|_| {
            BadRequest::input(
                "shape",
                name,
                format!(
                    "input '{name}': shape {:?} has a negative dimension; expected {}",
                    input.shape,
                    spec_shape_string(spec)
                ),
            )
        })?;
        shape.push(d);
    }
    // A complex input arrives as its part type with a trailing dimension of 2.
    let complex = spec.dtype.complex_part() == Some(dtype) && shape.last() == Some(&2);
    let (dtype, shape) = if complex {
        shape.pop();
        (spec.dtype, shape)
    } else {
        (dtype, shape)
    };
    // Datatype and shape against the signature, with the library's messages. Data is not
    // there yet: a length mismatch here only says the data is absent.
    match validate::check_input(
        spec,
        index,
        &TensorRef {
            dtype,
            shape: &shape,
            data: &[],
        },
    ) {
        Ok(()) | Err(InputError::ByteLength { .. }) => {}
        Err(e) => {
            // Name the datatype as the protocol does as well as numpy's name.
            let mut b = BadRequest::from(e);
            if b.rule == "dtype" {
                let _ = write!(
                    b.message,
                    " (datatype {}, expected {})",
                    datatype_name(dtype),
                    datatype_name(spec.dtype)
                );
            }
            if spec.dtype.is_complex() {
                let _ = write!(
                    b.message,
                    "; {} is sent as {} with a trailing dimension of 2 (real, imag)",
                    spec.dtype,
                    datatype_name(spec.dtype)
                );
            }
            return Err(b);
        }
    }
    let want_bytes = byte_len(dtype, &shape).ok_or_else(|| {
        BadRequest::input(
            "shape",
            name,
            format!(
                "input '{name}': shape {} is too large",
                shape_string(&shape)
            ),
        )
    })?;
    if input.shared_memory {
        return Err(BadRequest::input(
            "unsupported",
            name,
            format!("input '{name}': the shared-memory extension is not supported"),
        ));
    }
    let data = match (input.binary_data_size, input.data) {
        (Some(_), Some(_)) => {
            return Err(BadRequest::input(
                "data",
                name,
                format!("input '{name}' has both 'data' and parameters.binary_data_size"),
            ))
        }
        (None, None) => {
            return Err(BadRequest::input(
                "data",
                name,
                format!("input '{name}' has neither 'data' nor parameters.binary_data_size"),
            ))
        }
        (Some(size), None) => {
            if !has_binary {
                return Err(BadRequest::input(
                    "binary_header",
                    name,
                    format!(
                        "input '{name}' has binary_data_size {size} but the request has no \
                         Inference-Header-Content-Length header"
                    ),
                ));
            }
            let left = body.len().saturating_sub(*binary_at);
            let size_ok = usize::try_from(size).ok().filter(|&s| s <= left);
            let Some(size) = size_ok else {
                return Err(BadRequest::input(
                    "binary_size",
                    name,
                    format!(
                        "input '{name}': binary_data_size {size} runs past the end of the body \
                         ({left} bytes of binary data left)"
                    ),
                ));
            };
            if size != want_bytes {
                return Err(BadRequest::input(
                    "byte_length",
                    name,
                    format!(
                        "input '{name}' ({index}): {} {} needs {want_bytes} bytes, got \
                         binary_data_size {size}",
                        datatype_name(dtype),
                        shape_string(&shape)
                    ),
                ));
            }
            let data = body.slice(*binary_at..*binary_at + size);
            *binary_at += size;
            if dtype == DType::Bool {
                if let Some(at) = data.iter().position(|&b| b > 1) {
                    return Err(BadRequest::input(
                        "value",
                        name,
                        format!(
                            "input '{name}': BOOL element {at} is byte {}; BOOL bytes must be \
                             0 or 1",
                            data.get(at).copied().unwrap_or_default()
                        ),
                    ));
                }
            }
            data
        }
        // Decoded by the one-pass reader as the datatype and shape the request names, which
        // are (checked above) the signature's: the same bytes as decoding them here.
        (None, Some(Data::Decoded(bytes))) => Bytes::from(bytes),
        (None, Some(Data::Raw(text))) => {
            let part = dtype.complex_part().unwrap_or(dtype);
            let wire = wire_shape(dtype, &shape);
            match fastjson::decode_data(text, part, &wire) {
                Some(bytes) => Bytes::from(bytes),
                None => {
                    let want = want_bytes / part.size();
                    Bytes::from(decode_json_data(text, part, want, name, &wire)?)
                }
            }
        }
    };
    Ok(InputTensor {
        name: input.name.to_string(),
        dtype,
        shape,
        data,
    })
}

/// Decodes the text of a `data` value (already valid JSON) into `want` little-endian elements.
/// Nesting is flattened; one pass, no recursion, stops as soon as there are too many elements.
fn decode_json_data(
    text: &str,
    dtype: DType,
    want: usize,
    name: &str,
    shape: &[u64],
) -> Result<Vec<u8>, BadRequest> {
    let b = text.as_bytes();
    // Every element takes at least two bytes of text ("1,"), so this never over-reserves more
    // than the tensor (bounded by the body) needs.
    let cap = want.min(b.len() / 2 + 1).saturating_mul(dtype.size());
    let mut out = Vec::with_capacity(cap);
    let mut count = 0usize;
    let mut i = 0usize;
    let count_error = |got: String| {
        BadRequest::input(
            "element_count",
            name,
            format!(
                "input '{name}': {} {} needs {want} elements in 'data', got {got}",
                datatype_name(dtype),
                shape_string(shape)
            ),
        )
    };
    // Nesting: flat (every element at depth 1) or exactly the shape (every element at depth
    // rank, every array at depth k holding shape[k-1] entries). Anything else is ragged.
    let rank = shape.len().max(1);
    let mut open: Vec<u64> = Vec::new(); // entries of each open array
    let mut leaf_depth: Option<usize> = None;
    let nesting_error = |detail: String| {
        BadRequest::input(
            "data_shape",
            name,
            format!(
                "input '{name}': 'data' must be a flat list or nested as {}: {detail}",
                shape_string(shape)
            ),
        )
    };
    while let Some(&c) = b.get(i) {
        match c {
            b'[' => {
                if let Some(top) = open.last_mut() {
                    *top += 1;
                }
                open.push(0);
                i += 1;
                continue;
            }
            b']' => {
                let depth = open.len();
                let n = open.pop().unwrap_or(0);
                if leaf_depth == Some(rank) && rank > 1 {
                    let want_n = shape.get(depth.saturating_sub(1)).copied().unwrap_or(0);
                    if n != want_n {
                        return Err(nesting_error(format!(
                            "an array at depth {depth} has {n} entries, expected {want_n}"
                        )));
                    }
                }
                i += 1;
                continue;
            }
            b',' | b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let depth = open.len();
        match leaf_depth {
            None if depth == 1 || depth == rank || (depth == 0 && want == 1) => {
                leaf_depth = Some(depth);
            }
            Some(d) if d == depth => {}
            _ => {
                return Err(nesting_error(format!(
                    "element {count} is at depth {depth}, {}",
                    match leaf_depth {
                        Some(d) => format!("others at depth {d}"),
                        None => format!("expected 1 or {rank}"),
                    }
                )))
            }
        }
        if let Some(top) = open.last_mut() {
            *top += 1;
        }
        // One element: a string, or a run of bytes up to a delimiter.
        let (token, is_string, next) = if c == b'"' {
            let end = b
                .get(i + 1..)
                .and_then(|rest| rest.iter().position(|&x| x == b'"' || x == b'\\'))
                .map(|p| i + 1 + p);
            match end {
                Some(e) if b.get(e) == Some(&b'"') => (text.get(i + 1..e), true, e + 1),
                _ => (None, true, b.len()),
            }
        } else {
            let end = b
                .get(i..)
                .and_then(|rest| {
                    rest.iter()
                        .position(|x| matches!(x, b',' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                })
                .map_or(b.len(), |p| i + p);
            (text.get(i..end), false, end)
        };
        if count >= want {
            return Err(count_error(format!("more than {want}")));
        }
        let token = token.unwrap_or("\"...");
        push_element(token, is_string, dtype, &mut out).map_err(|detail| {
            BadRequest::input(
                "value",
                name,
                format!(
                    "input '{name}': element {count} of 'data' is {}: {detail}",
                    if is_string {
                        format!("\"{}\"", shorten(token))
                    } else {
                        shorten(token)
                    }
                ),
            )
        })?;
        count += 1;
        i = next;
    }
    if count != want {
        return Err(count_error(count.to_string()));
    }
    Ok(out)
}

/// One output of a response.
#[derive(Clone, Copy, Debug)]
pub struct OutputRef<'a> {
    /// The output's spec (name, dtype).
    pub spec: &'a TensorSpec,
    /// Its value.
    pub tensor: &'a Tensor,
    /// Send the bytes after the JSON header.
    pub binary: bool,
}

/// An encoded response body, and the JSON header's length when binary data follows it.
#[derive(Clone, Debug)]
pub struct EncodedResponse {
    /// The whole body.
    pub body: Vec<u8>,
    /// `Inference-Header-Content-Length` (the JSON's byte length) when any output is binary.
    pub header_len: Option<usize>,
}

fn json_string(out: &mut String, s: &str) {
    // serde_json's escaping; a &str always serializes.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// Encodes an inference response (Triton's layout: `model_name`, `model_version`, `id` when the
/// request had one, `outputs` with `name`, `datatype`, `shape` and `data` or
/// `parameters.binary_data_size`).
pub fn encode_response(
    model: &str,
    version: &str,
    id: Option<&str>,
    outputs: &[OutputRef<'_>],
) -> EncodedResponse {
    let json_estimate: usize = outputs
        .iter()
        .map(|o| {
            if o.binary {
                96
            } else {
                96 + o.tensor.len() * 16
            }
        })
        .sum();
    let mut s = String::with_capacity(128 + json_estimate);
    s.push_str("{\"model_name\":");
    json_string(&mut s, model);
    s.push_str(",\"model_version\":");
    json_string(&mut s, version);
    if let Some(id) = id {
        s.push_str(",\"id\":");
        json_string(&mut s, id);
    }
    s.push_str(",\"outputs\":[");
    let mut binary_len = 0usize;
    for (k, o) in outputs.iter().enumerate() {
        if k > 0 {
            s.push(',');
        }
        s.push_str("{\"name\":");
        json_string(&mut s, &o.spec.name);
        let _ = write!(
            s,
            ",\"datatype\":\"{}\",\"shape\":{}",
            datatype_name(o.tensor.dtype()),
            shape_string(&wire_shape(o.tensor.dtype(), o.tensor.shape()))
        );
        if o.binary {
            let n = o.tensor.bytes().len();
            binary_len += n;
            let _ = write!(s, ",\"parameters\":{{\"binary_data_size\":{n}}}}}");
        } else {
            s.push_str(",\"data\":[");
            write_json_data(&mut s, o.tensor);
            s.push_str("]}");
        }
    }
    s.push_str("]}");
    let any_binary = outputs.iter().any(|o| o.binary);
    if !any_binary {
        return EncodedResponse {
            body: s.into_bytes(),
            header_len: None,
        };
    }
    let header_len = s.len();
    let mut body = s.into_bytes();
    body.reserve_exact(binary_len);
    for o in outputs.iter().filter(|o| o.binary) {
        body.extend_from_slice(o.tensor.bytes());
    }
    EncodedResponse {
        body,
        header_len: Some(header_len),
    }
}

fn write_f64(s: &mut String, v: f64) {
    if v.is_nan() {
        s.push_str("NaN");
    } else if v.is_infinite() {
        s.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        s.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// Shortest text that reads back as the same `f32` (and so the same f16/bf16 it came from).
fn write_f32(s: &mut String, v: f32) {
    if v.is_nan() {
        s.push_str("NaN");
    } else if v.is_infinite() {
        s.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        s.push_str(ryu::Buffer::new().format_finite(v));
    }
}

/// Writes a tensor's elements as a flat comma-separated list of JSON numbers.
fn write_json_data(s: &mut String, t: &Tensor) {
    let bytes = t.bytes();
    // Complex elements are written as their parts (the wire shape has the trailing 2).
    let dtype = t.dtype().complex_part().unwrap_or(t.dtype());
    let size = dtype.size();
    for (k, c) in bytes.chunks_exact(size).enumerate() {
        if k > 0 {
            s.push(',');
        }
        let mut a2 = [0u8; 2];
        let mut a4 = [0u8; 4];
        let mut a8 = [0u8; 8];
        match size {
            2 => a2.copy_from_slice(c),
            4 => a4.copy_from_slice(c),
            8 => a8.copy_from_slice(c),
            _ => {}
        }
        let first = c.first().copied().unwrap_or_default();
        let _ = match dtype {
            DType::Bool => {
                s.push_str(if first != 0 { "true" } else { "false" });
                Ok(())
            }
            DType::I8 => write!(s, "{}", i8::from_le_bytes([first])),
            DType::U8 => write!(s, "{first}"),
            DType::I16 => write!(s, "{}", i16::from_le_bytes(a2)),
            DType::U16 => write!(s, "{}", u16::from_le_bytes(a2)),
            DType::I32 => write!(s, "{}", i32::from_le_bytes(a4)),
            DType::U32 => write!(s, "{}", u32::from_le_bytes(a4)),
            DType::I64 => write!(s, "{}", i64::from_le_bytes(a8)),
            DType::U64 => write!(s, "{}", u64::from_le_bytes(a8)),
            DType::F16 => {
                write_f32(s, f16::from_le_bytes(a2).to_f32());
                Ok(())
            }
            DType::BF16 => {
                write_f32(s, bf16::from_le_bytes(a2).to_f32());
                Ok(())
            }
            DType::F32 => {
                write_f32(s, f32::from_le_bytes(a4));
                Ok(())
            }
            DType::F64 => {
                write_f64(s, f64::from_le_bytes(a8));
                Ok(())
            }
            DType::C64 | DType::C128 => Ok(()), // written as parts above
        };
    }
}

/// The `shape` of a spec as the protocol writes it: symbolic dimensions are `-1`.
/// Complex specs gain the trailing dimension of 2 of their wire form.
pub fn metadata_shape(spec: &TensorSpec) -> Vec<i64> {
    let mut s: Vec<i64> = spec
        .shape
        .iter()
        .map(|d| match d {
            Dim::Static(n) => i64::try_from(*n).unwrap_or(-1),
            Dim::Symbolic(_) => -1,
        })
        .collect();
    if spec.dtype.is_complex() {
        s.push(2);
    }
    s
}

/// `FP32[1,64]`, for messages.
pub fn protocol_type(dtype: DType, shape: &[u64]) -> String {
    format!("{}{}", datatype_name(dtype), shape_string(shape))
}

/// The numpy-style type of a spec (`float32[1,64]`), for messages.
pub fn numpy_type(spec: &TensorSpec) -> String {
    format_type(spec.dtype, spec.shape.iter())
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec::new("x", DType::F32, &[2, 2]),
                TensorSpec::new("ids", DType::I8, &[3]),
            ],
            outputs: vec![
                TensorSpec::new("y", DType::F32, &[2]),
                TensorSpec::new("flag", DType::Bool, &[]),
            ],
        }
    }

    fn parse(json: &str) -> Result<InferRequest, BadRequest> {
        parse_request(
            &Bytes::from(json.to_string()),
            None,
            &sig(),
            &ParseLimits::default(),
        )
    }

    fn decode(text: &str, dtype: DType, n: usize) -> Result<Vec<u8>, String> {
        decode_json_data(text, dtype, n, "t", &[n as u64]).map_err(|e| e.message)
    }

    #[test]
    fn datatype_names_round_trip() {
        for d in DType::ALL {
            // Complex tensors travel as their part type (and a trailing dimension of 2).
            let expected = d.complex_part().unwrap_or(d);
            assert_eq!(parse_datatype(datatype_name(d)), Some(expected));
        }
        assert_eq!(parse_datatype("fp32"), None);
        assert_eq!(parse_datatype("BYTES"), None);
    }

    #[test]
    fn depth_scan() {
        let nest = |d: usize| format!("{}{}", "[".repeat(d), "]".repeat(d));
        assert!(check_json_depth(nest(64).as_bytes(), 64).is_ok());
        let e = check_json_depth(nest(65).as_bytes(), 64).unwrap_err();
        assert_eq!(e.rule, "json_depth");
        assert!(e.message.contains("(at byte 64)"), "{}", e.message);
        assert!(check_json_depth(nest(1_000_000).as_bytes(), 64).is_err());
        // Brackets in strings, escaped quotes included, do not count.
        let s = format!("{{\"a\": \"\\\"{}\"}}", "[".repeat(100));
        assert!(check_json_depth(s.as_bytes(), 2).is_ok());
        assert!(check_json_depth(b"{\"a\": {\"b\": [1]}}", 2).is_err());
    }

    #[test]
    fn ragged_or_over_nested_data_is_refused() {
        let d = |text: &str, shape: &[u64]| {
            let want = shape.iter().product::<u64>() as usize;
            decode_json_data(text, DType::F32, want, "x", shape)
        };
        assert!(d("[1, 2, 3, 4]", &[2, 2]).is_ok());
        assert!(d("[[1, 2], [3, 4]]", &[2, 2]).is_ok());
        assert!(d("[[[1], [2]], [[3], [4]]]", &[2, 2, 1]).is_ok());
        assert!(d("[7]", &[]).is_ok());
        for (text, shape, detail) in [
            (
                "[[1, 2, 3], [4]]",
                &[2u64, 2][..],
                "an array at depth 2 has 3 entries, expected 2",
            ),
            (
                "[[1, 2, 3, 4]]",
                &[2, 2],
                "an array at depth 2 has 4 entries, expected 2",
            ),
            (
                "[[[1, 2]], [[3, 4]]]",
                &[2, 2],
                "element 0 is at depth 3, expected 1 or 2",
            ),
            (
                "[1, [2, 3], 4]",
                &[2, 2],
                "element 1 is at depth 2, others at depth 1",
            ),
            ("[[1, 2]]", &[2], "element 0 is at depth 2, expected 1 or 1"),
        ] {
            let e = d(text, shape).unwrap_err();
            assert_eq!(e.rule, "data_shape", "{text}");
            assert!(e.to_string().contains(detail), "{text}: {e}");
        }
    }

    #[test]
    fn decodes_every_dtype_flat_or_nested() {
        assert_eq!(
            decode("[true, false, true]", DType::Bool, 3).unwrap(),
            [1, 0, 1]
        );
        assert_eq!(decode("[-128, 127]", DType::I8, 2).unwrap(), [0x80, 0x7f]);
        assert_eq!(
            decode("[18446744073709551615]", DType::U64, 1).unwrap(),
            u64::MAX.to_le_bytes()
        );
        assert_eq!(
            decode("[-9223372036854775808]", DType::I64, 1).unwrap(),
            i64::MIN.to_le_bytes()
        );
        assert_eq!(
            decode("[65535]", DType::U16, 1).unwrap(),
            65535u16.to_le_bytes()
        );
        // f32 parsed from the text: correct rounding, no detour through f64.
        assert_eq!(
            decode("[0.1]", DType::F32, 1).unwrap(),
            0.1f32.to_le_bytes()
        );
        assert_eq!(
            decode("[16777217]", DType::F32, 1).unwrap(),
            16_777_216f32.to_le_bytes()
        );
        assert_eq!(
            decode("[1e-50]", DType::F32, 1).unwrap(),
            0f32.to_le_bytes()
        );
        assert_eq!(
            decode("[0.1]", DType::F64, 1).unwrap(),
            0.1f64.to_le_bytes()
        );
        assert_eq!(
            decode("[65504]", DType::F16, 1).unwrap(),
            f16::MAX.to_le_bytes()
        );
        assert_eq!(
            decode("[1.5, \"-Infinity\"]", DType::BF16, 2).unwrap(),
            [
                bf16::from_f32(1.5).to_le_bytes(),
                bf16::NEG_INFINITY.to_le_bytes()
            ]
            .concat()
        );
        let nan = decode("[\"NaN\"]", DType::F32, 1).unwrap();
        assert!(f32::from_le_bytes(nan.try_into().unwrap()).is_nan());
        // An empty tensor.
        assert_eq!(decode("[]", DType::F32, 0).unwrap(), Vec::<u8>::new());
        assert_eq!(decode("[[], []]", DType::I32, 0).unwrap(), Vec::<u8>::new());
        // A scalar may come bare or in a list.
        assert_eq!(decode("7", DType::I32, 1).unwrap(), 7i32.to_le_bytes());
    }

    #[test]
    fn refuses_values_the_dtype_cannot_hold() {
        for (text, dtype, want) in [
            (
                "[-129]",
                DType::I8,
                "element 0 of 'data' is -129: out of range for INT8",
            ),
            ("[256]", DType::U8, "out of range for UINT8"),
            ("[-1]", DType::U64, "out of range for UINT64"),
            (
                "[18446744073709551616]",
                DType::U64,
                "out of range for UINT64",
            ),
            (
                "[9223372036854775808]",
                DType::I64,
                "out of range for INT64",
            ),
            (
                "[1.0]",
                DType::I32,
                "element 0 of 'data' is 1.0: expected an integer (INT32)",
            ),
            ("[1e2]", DType::I32, "expected an integer (INT32)"),
            (
                "[\"1\"]",
                DType::I32,
                "element 0 of 'data' is \"1\": expected an integer (INT32)",
            ),
            ("[\"NaN\"]", DType::I32, "expected an integer (INT32)"),
            ("[65520]", DType::F16, "out of range for FP16"),
            ("[1e39]", DType::F32, "out of range for FP32"),
            ("[1e309]", DType::F64, "out of range for FP64"),
            ("[\"x\"]", DType::F64, "the only strings taken are"),
            ("[\"N\\u0061N\"]", DType::F64, "expected a number (FP64)"),
            ("[1]", DType::Bool, "BOOL takes true or false"),
            ("[null]", DType::F32, "expected a number (FP32)"),
            ("[{\"a\": [1, 2]}]", DType::F32, "got an object"),
        ] {
            let e = decode(text, dtype, 1).unwrap_err();
            assert!(e.contains(want), "{text} as {dtype}: {e}");
        }
        let e = decode("[1, 2]", DType::I32, 3).unwrap_err();
        assert_eq!(e, "input 't': INT32 [3] needs 3 elements in 'data', got 2");
        let e = decode("[1, 2, 3, 4]", DType::I32, 3).unwrap_err();
        assert_eq!(
            e,
            "input 't': INT32 [3] needs 3 elements in 'data', got more than 3"
        );
    }

    #[test]
    fn requests_are_checked_against_the_signature() {
        let ok = parse(
            r#"{"id": "a", "inputs": [
                {"name": "ids", "datatype": "INT8", "shape": [3], "data": [1, 2, 3]},
                {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
                "outputs": [{"name": "flag", "parameters": {"binary_data": true}}]}"#,
        )
        .unwrap();
        assert_eq!(ok.id.as_deref(), Some("a"));
        assert_eq!(ok.inputs[0].name, "x");
        assert_eq!(ok.inputs[1].data.as_ref(), [1, 2, 3]);
        assert_eq!(
            ok.outputs,
            [OutputChoice {
                index: 1,
                binary: true
            }]
        );
        let e = parse(r#"{"inputs": [{"name": "x", "datatype": "FP64", "shape": [2, 2], "data": [1, 2, 3, 4]}]}"#)
            .unwrap_err();
        assert_eq!(e.rule, "dtype");
        assert_eq!(e.input.as_deref(), Some("x"));
        assert_eq!(
            e.message,
            "input 'x' (0): expected float32[2,2], got float64[2,2] (datatype FP64, expected FP32)"
        );
        let e = parse(r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [1, 2, 3, 4]}]}"#)
            .unwrap_err();
        assert_eq!(e.rule, "shape");
        let e = parse(r#"{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [1, 2, 3, 4]}]}"#)
            .unwrap_err();
        assert_eq!(e.rule, "missing_input");
        assert_eq!(e.message, "input 'ids' (1) is missing: expected int8[3]");
        // A shape whose byte size overflows is refused before anything is allocated.
        let e = parse(&format!(
            r#"{{"inputs": [{{"name": "x", "datatype": "FP32", "shape": [{}, {}], "data": [1]}}]}}"#,
            i64::MAX,
            i64::MAX
        ))
        .unwrap_err();
        assert_eq!(e.rule, "shape");
    }

    #[test]
    fn binary_inputs_are_slices_of_the_body() {
        let header = r#"{"inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "parameters": {"binary_data_size": 16}},
            {"name": "ids", "datatype": "INT8", "shape": [3], "parameters": {"binary_data_size": 3}}]}"#;
        let mut body = header.as_bytes().to_vec();
        let x: Vec<u8> = [1f32, 2., 3., 4.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        body.extend_from_slice(&x);
        body.extend_from_slice(&[7, 8, 9]);
        let body = Bytes::from(body);
        let r = parse_request(&body, Some(header.len()), &sig(), &ParseLimits::default()).unwrap();
        assert_eq!(r.inputs[0].data.as_ref(), x.as_slice());
        assert_eq!(r.inputs[1].data.as_ref(), [7, 8, 9]);
        // The JSON part ends where the header says, even when the binary part looks like JSON.
        let e = parse_request(
            &body,
            Some(header.len() - 1),
            &sig(),
            &ParseLimits::default(),
        )
        .unwrap_err();
        assert_eq!(e.rule, "json");
    }

    #[test]
    fn mangled_requests_never_panic() {
        let good = br#"{"id": "q", "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [2, 2], "data": [[1.5, -2], [3e1, "NaN"]]},
            {"name": "ids", "datatype": "INT8", "shape": [3], "parameters": {"binary_data_size": 3}}],
            "parameters": {"binary_data_output": true}, "outputs": [{"name": "y"}]}"#;
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut oks = 0;
        for _ in 0..20_000 {
            let mut b = good.to_vec();
            b.extend_from_slice(&[1, 2, 3]);
            for _ in 0..(next() % 4 + 1) {
                let i = (next() % b.len() as u64) as usize;
                match next() % 3 {
                    0 => b[i] = (next() % 256) as u8,
                    1 => {
                        b.remove(i);
                    }
                    _ => b.insert(i, b"[]{},\":-1eE.0\\"[(next() % 14) as usize]),
                }
            }
            let hl = (next() % (b.len() as u64 + 2)) as usize;
            let body = Bytes::from(b);
            for h in [Some(hl), Some(good.len()), None] {
                if parse_request(&body, h, &sig(), &ParseLimits::default()).is_ok() {
                    oks += 1;
                }
            }
        }
        // Some mutations are harmless (a changed digit): the parser did accept some.
        assert!(oks > 0);
    }

    #[test]
    fn responses_json_and_binary() {
        let s = sig();
        let y = Tensor::from_slice(&[2], &[0.1f32, f32::INFINITY]).unwrap();
        let flag = Tensor::from_slice::<bool>(&[], &[true]).unwrap();
        let r = encode_response(
            "m",
            "1",
            Some("q\"1"),
            &[
                OutputRef {
                    spec: &s.outputs[0],
                    tensor: &y,
                    binary: false,
                },
                OutputRef {
                    spec: &s.outputs[1],
                    tensor: &flag,
                    binary: false,
                },
            ],
        );
        assert_eq!(r.header_len, None);
        assert_eq!(
            String::from_utf8(r.body).unwrap(),
            r#"{"model_name":"m","model_version":"1","id":"q\"1","outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[0.1,Infinity]},{"name":"flag","datatype":"BOOL","shape":[],"data":[true]}]}"#
        );
        let r = encode_response(
            "m",
            "1",
            None,
            &[OutputRef {
                spec: &s.outputs[0],
                tensor: &y,
                binary: true,
            }],
        );
        let n = r.header_len.unwrap();
        assert_eq!(
            std::str::from_utf8(&r.body[..n]).unwrap(),
            r#"{"model_name":"m","model_version":"1","outputs":[{"name":"y","datatype":"FP32","shape":[2],"parameters":{"binary_data_size":8}}]}"#
        );
        assert_eq!(&r.body[n..], y.bytes());
        // bf16 and f16 in JSON: the shortest text that reads back as the same value.
        let b = Tensor::from_slice(&[3], &[bf16::from_f32(0.1), bf16::MAX, bf16::NAN]).unwrap();
        let mut out = String::new();
        write_json_data(&mut out, &b);
        assert_eq!(out, "0.100097656,3.3895314e38,NaN");
        let h = Tensor::from_slice(&[2], &[f16::from_f32(0.1), f16::MIN]).unwrap();
        let mut out = String::new();
        write_json_data(&mut out, &h);
        assert_eq!(out, "0.099975586,-65504.0");
    }

    /// The test's own deterministic random stream (xorshift).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len() as u64) as usize]
        }
    }

    fn wide_sig() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec::new("x", DType::F32, &[2, 2]),
                TensorSpec::new("ids", DType::I8, &[3]),
                TensorSpec::new("mask", DType::Bool, &[2]),
                TensorSpec::new("w", DType::F64, &[]),
                TensorSpec::new("h", DType::F16, &[2]),
                TensorSpec::new("u", DType::U64, &[1]),
                TensorSpec::new("z", DType::C64, &[2]),
            ],
            outputs: vec![
                TensorSpec::new("y", DType::F32, &[2]),
                TensorSpec::new("flag", DType::Bool, &[]),
            ],
        }
    }

    /// One random element: mostly valid for the datatype, sometimes not.
    fn element(r: &mut Rng, datatype: &str, noisy: bool) -> String {
        let odd = [
            "\"NaN\"",
            "\"-Infinity\"",
            "\"x\"",
            "null",
            "true",
            "1e39",
            "1.",
            "-0",
            "01",
            "{}",
            "[]",
            "128",
            "-1",
            "1.5",
            "\"a\\\"b\"",
            "18446744073709551616",
            "7e2",
        ];
        if noisy && r.below(12) == 0 {
            return r.pick(&odd).to_string();
        }
        match datatype {
            "BOOL" => r.pick(&["true", "false"]).to_string(),
            "INT8" => format!("{}", r.below(256) as i64 - 128),
            "UINT64" => format!("{}", r.next() >> r.below(64)),
            _ => {
                let x = f32::from_bits(r.next() as u32 & 0xBFFF_FFFF);
                match r.below(4) {
                    0 => format!("{:?}", f64::from(x)),
                    1 => format!("{x:?}"),
                    2 => format!("{}", r.below(1000)),
                    _ => format!("{:e}", f64::from(x)),
                }
            }
        }
    }

    fn data(r: &mut Rng, datatype: &str, shape: &[u64], noisy: bool) -> String {
        let n: u64 = shape.iter().product();
        let n = match r.below(if noisy { 10 } else { 1 }) {
            0 if noisy => n + 1,
            1 => n.saturating_sub(1),
            _ => n,
        };
        let items: Vec<String> = (0..n).map(|_| element(r, datatype, noisy)).collect();
        let sep = r.pick(&[",", ", ", " ,\n"]);
        if shape.len() == 2 && items.len() == 4 && r.below(2) == 0 {
            format!(
                "[[{}{sep}{}]{sep}[{}{sep}{}]]",
                items[0], items[1], items[2], items[3]
            )
        } else if shape.is_empty() && items.len() == 1 && r.below(2) == 0 {
            items[0].clone()
        } else {
            format!("[{}]", items.join(sep))
        }
    }

    /// A random request against [`wide_sig`]: key orders, whitespace, unknown keys, nulls,
    /// bad values, missing and duplicate keys, all at random.
    fn random_request(r: &mut Rng) -> String {
        // Half the requests are clean (as clients write them, in any order and spacing), half
        // have mistakes of every kind.
        let noisy = r.below(2) == 0;
        let n = |k: u64| if noisy { k } else { u64::MAX };
        let inputs = [
            ("x", "FP32", vec![2u64, 2]),
            ("ids", "INT8", vec![3]),
            ("mask", "BOOL", vec![2]),
            ("w", "FP64", vec![]),
            ("h", "FP16", vec![2]),
            ("u", "UINT64", vec![1]),
            ("z", "FP32", vec![2, 2]),
        ];
        let mut objs = Vec::new();
        for (name, dt, shape) in inputs {
            if r.below(n(15)) == 0 {
                continue; // a missing input
            }
            let dt = if r.below(n(20)) == 0 {
                r.pick(&["FP64", "BYTES", "INT32", "fp32"])
            } else {
                dt
            };
            let shape_text = if r.below(n(20)) == 0 {
                r.pick(&["[-1]", "[2, 3]", "[]", "[1.0]", "null", "[-0]"])
                    .to_string()
            } else {
                format!("{shape:?}")
            };
            let mut fields = vec![
                format!("\"name\": \"{name}\""),
                format!("\"datatype\": \"{dt}\""),
                format!("\"shape\": {shape_text}"),
                format!("\"data\": {}", data(r, dt, &shape, noisy)),
            ];
            match r.below(if noisy { 8 } else { 4 }) {
                0 => fields.push("\"parameters\": {\"tag\": [1, {\"a\": null}]}".into()),
                1 => fields.push("\"parameters\": null".into()),
                3 => fields.push("\"extra\": {\"k\": [true, false, -1.5e3, \"s\"]}".into()),
                2 => fields.push("\"parameters\": {\"shared_memory_region\": \"r\"}".into()),
                4 => fields.push(format!("\"name\": \"{name}\"")), // a duplicate key
                5 => fields.push("\"data\": null".into()),
                6 => {
                    fields.remove(r.below(fields.len() as u64) as usize);
                }
                _ => {}
            }
            // Shuffle: data first sometimes (decoded after the object), else in client order.
            for i in (1..fields.len()).rev() {
                if r.below(4) == 0 {
                    fields.swap(i, r.below(i as u64 + 1) as usize);
                }
            }
            let ws = r.pick(&["", " ", "\n  ", "\t"]);
            objs.push(format!("{{{ws}{}{ws}}}", fields.join(&format!(",{ws}"))));
        }
        let mut top = vec![format!("\"inputs\": [{}]", objs.join(", "))];
        match r.below(if noisy { 6 } else { 2 }) {
            0 => top.push("\"id\": \"req-7\"".into()),
            1 => top.push("\"id\": null".into()),
            2 => top.push("\"id\": \"a\\u0041\"".into()),
            3 => top.push("\"id\": 5".into()),
            _ => {}
        }
        match r.below(if noisy { 6 } else { 2 }) {
            0 => top.push("\"parameters\": {\"binary_data_output\": true}".into()),
            1 => top.push("\"parameters\": {\"binary_data_output\": null, \"x\": 1}".into()),
            2 => top.push("\"parameters\": {\"binary_data_output\": 1}".into()),
            _ => {}
        }
        match r.below(if noisy { 7 } else { 2 }) {
            0 => top.push("\"outputs\": [{\"name\": \"flag\"}, {\"name\": \"y\", \"parameters\": {\"binary_data\": true}}]".into()),
            1 => top.push("\"outputs\": null".into()),
            2 => top.push("\"outputs\": [{\"name\": \"nope\"}]".into()),
            3 => top.push("\"outputs\": [{\"name\": \"y\"}, {\"name\": \"y\"}]".into()),
            4 => top.push("\"outputs\": [{\"name\": \"y\", \"parameters\": {\"classification\": 2}}]".into()),
            _ => {}
        }
        if r.below(2) == 0 {
            top.reverse();
        }
        let tail = if noisy {
            r.pick(&["", "", "", " \n", " x", ",", "}"])
        } else {
            r.pick(&["", " \n"])
        };
        format!("{{{}}}{tail}", top.join(", "))
    }

    /// Whenever the one-pass reader takes a request, the serde reader gives the same result:
    /// the same tensors, or the same refusal with the same message.
    #[test]
    fn one_pass_reader_agrees_with_the_serde_reader() {
        let sig = wide_sig();
        let limits = ParseLimits::default();
        let mut r = Rng(0x5EED_1234_ABCD_0001);
        let (mut taken, mut ok) = (0usize, 0usize);
        let cases = 20_000;
        for _ in 0..cases {
            let text = random_request(&mut r);
            let body = Bytes::from(text.clone());
            let slow = parse_request_serde(&body, false, body.len(), &sig, &limits);
            if let Some(fields) = fastjson::read_request(&body, limits.max_json_depth) {
                taken += 1;
                let fast = finish_request(fields, &body, false, body.len(), &sig);
                assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}");
            }
            ok += usize::from(slow.is_ok());
        }
        // The fast path is the common path: it takes most requests, and the valid ones.
        assert!(
            taken > cases * 2 / 5,
            "one-pass reader took {taken} of {cases}"
        );
        assert!(
            ok > cases / 20,
            "only {ok} of {cases} random requests were valid"
        );
    }

    #[test]
    fn one_pass_reader_takes_compact_and_spaced_requests() {
        for n in [1usize, 7, 1000] {
            for (dt, dtype, tok) in [("BOOL", DType::Bool, "true"), ("FP32", DType::F32, "-0.25")] {
                let sig = Signature {
                    inputs: vec![TensorSpec::new("x", dtype, &[n as u64])],
                    outputs: vec![TensorSpec::new("y", dtype, &[1])],
                };
                for sep in [",", ", "] {
                    let data = vec![tok; n].join(sep);
                    let text = format!(
                        "{{\"inputs\":[{{\"name\":\"x\",\"shape\":[{n}],\"datatype\":\"{dt}\",\"data\":[{data}]}}]}}"
                    );
                    let body = Bytes::from(text);
                    let fields = fastjson::read_request(&body, 64);
                    assert!(fields.is_some(), "{:?}", body.slice(..body.len().min(300)));
                    let r = finish_request(fields.unwrap(), &body, false, body.len(), &sig);
                    assert_eq!(r.unwrap().inputs[0].data.len(), n * dtype.size());
                }
            }
        }
    }

    #[test]
    fn one_pass_reader_takes_what_clients_send() {
        let sig = wide_sig();
        let text = r#"{"id": "1", "inputs": [
            {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[0.1, -2.5], [3e-3, 4]]},
            {"name": "ids", "shape": [3], "datatype": "INT8", "data": [1, -2, 127]},
            {"name": "mask", "shape": [2], "datatype": "BOOL", "data": [true, false]},
            {"name": "w", "shape": [], "datatype": "FP64", "data": 0.30000000000000004},
            {"name": "h", "shape": [2], "datatype": "FP16", "data": ["NaN", 65504]},
            {"name": "u", "shape": [1], "datatype": "UINT64", "data": [18446744073709551615]},
            {"data": [1, 2, 3, 4], "name": "z", "shape": [2, 2], "datatype": "FP32"}
        ], "outputs": [{"name": "y", "parameters": {"binary_data": true}}]}"#;
        let fields = fastjson::read_request(text.as_bytes(), 64).unwrap();
        let body = Bytes::from(text);
        let fast = finish_request(fields, &body, false, body.len(), &sig).unwrap();
        let slow =
            parse_request_serde(&body, false, body.len(), &sig, &ParseLimits::default()).unwrap();
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"));
        let x: Vec<f32> = fast.inputs[0]
            .data
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(x, [0.1, -2.5, 3e-3, 4.0]);
        assert_eq!(fast.inputs[6].dtype, DType::C64);
        assert_eq!(&fast.inputs[5].data[..], &u64::MAX.to_le_bytes());
    }
}
