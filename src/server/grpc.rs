//! The gRPC frontend: KServe's Open Inference Protocol over gRPC (`inference.GRPCInferenceService`:
//! ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata, ModelInfer), Triton's
//! RepositoryIndex, RepositoryModelLoad/Unload, ModelStatistics and ModelConfig on the same
//! service, and `grpc.health.v1` for Kubernetes probes. The other Triton RPCs (streaming,
//! shared memory, trace and log settings) answer `UNIMPLEMENTED`.
//!
//! Like the HTTP frontend it only parses, calls into the [serving core](super::serving), maps
//! errors and encodes. Inputs come as `raw_input_contents` (every datatype, little-endian, one
//! entry per input) or typed `contents` (every datatype but FP16 and BF16, which the protocol
//! sends raw only); outputs go back as `raw_output_contents`, as Triton sends them.
//!
//! Errors: invalid input → `INVALID_ARGUMENT` with the validation message verbatim; unknown
//! model or version → `NOT_FOUND`; not ready → `UNAVAILABLE`; queue full or a message over
//! the size limit → `RESOURCE_EXHAUSTED`; deadline passed (the model's timeout, or the client's
//! gRPC deadline when sooner) → `DEADLINE_EXCEEDED`. Messages up to
//! [`ServerConfig::max_body_bytes`](super::config::ServerConfig::max_body_bytes) are accepted
//! (tonic's default is 4 MiB).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::{Code, Request, Response, Status};

use crate::signature::{DType, Signature};
use crate::tensor::{byte_len, TensorRef};
use crate::validate::{self, InputError};

use super::batch::BatchConfig;
use super::fault::{CoreError, ErrorKind};
use super::serving::{Core, Picked, Slot};
use super::wire::{self, BadRequest, InferRequest, InputTensor, OutputChoice};

/// The messages and service trait generated from `proto/grpc_service.proto` (Triton's, which
/// holds KServe's `grpc_predict_v2.proto` with the same package, names and field numbers).
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation
)]
pub mod proto {
    tonic::include_proto!("inference");
}

use proto::grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer};
use proto::model_infer_request::InferInputTensor;
use proto::model_infer_response::InferOutputTensor;

/// The gRPC status code of each kind of core error.
pub fn grpc_code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidInput => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unprocessable | ErrorKind::NotAllowed => Code::FailedPrecondition,
        ErrorKind::Unavailable | ErrorKind::Overloaded => Code::Unavailable,
        ErrorKind::QueueFull | ErrorKind::TooLarge => Code::ResourceExhausted,
        ErrorKind::Deadline | ErrorKind::ExecutionTimeout => Code::DeadlineExceeded,
        ErrorKind::Internal => Code::Internal,
    }
}

fn status(e: CoreError) -> Status {
    Status::new(grpc_code(e.kind), e.message)
}

/// The `inference.GRPCInferenceService` implementation over the serving core.
#[derive(Debug, Clone)]
pub struct Service {
    core: Arc<Core>,
}

impl Service {
    /// The service over `core`, with its message size limit, as tonic serves it.
    pub fn server(core: Arc<Core>) -> GrpcInferenceServiceServer<Service> {
        let max = core.config.max_body_bytes;
        GrpcInferenceServiceServer::new(Service { core })
            .max_decoding_message_size(max)
            .max_encoding_message_size(usize::MAX)
    }
}

/// The client's deadline from the `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`).
fn client_deadline(arrived: Instant, md: &tonic::metadata::MetadataMap) -> Option<Instant> {
    let v = md.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let d = match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    };
    arrived.checked_add(d)
}

fn version_of(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not supported by xlaguard"))
}

fn bad(rule: &'static str, input: Option<&str>, message: String) -> CoreError {
    CoreError::from(BadRequest {
        rule,
        input: input.map(str::to_string),
        message,
    })
}

fn shape_text(shape: &[u64]) -> String {
    let d: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", d.join(","))
}

/// Which typed `contents` field a datatype's elements go in.
fn contents_field(d: DType) -> &'static str {
    match d {
        DType::Bool => "bool_contents",
        DType::I8 | DType::I16 | DType::I32 => "int_contents",
        DType::I64 => "int64_contents",
        DType::U8 | DType::U16 | DType::U32 => "uint_contents",
        DType::U64 => "uint64_contents",
        DType::F32 | DType::C64 => "fp32_contents",
        DType::F64 | DType::C128 => "fp64_contents",
        DType::F16 | DType::BF16 => "raw_input_contents",
    }
}

/// The fields of `contents` that hold elements, with their element counts.
fn filled_fields(c: &proto::InferTensorContents) -> Vec<(&'static str, usize)> {
    [
        ("bool_contents", c.bool_contents.len()),
        ("int_contents", c.int_contents.len()),
        ("int64_contents", c.int64_contents.len()),
        ("uint_contents", c.uint_contents.len()),
        ("uint64_contents", c.uint64_contents.len()),
        ("fp32_contents", c.fp32_contents.len()),
        ("fp64_contents", c.fp64_contents.len()),
        ("bytes_contents", c.bytes_contents.len()),
    ]
    .into_iter()
    .filter(|(_, n)| *n > 0)
    .collect()
}

/// Narrows 32-bit contents to a smaller integer type, refusing values out of its range.
fn narrow<T, const N: usize>(
    vals: &[T],
    name: &str,
    dt: &str,
    to_bytes: impl Fn(&T) -> Option<[u8; N]>,
) -> Result<Vec<u8>, CoreError>
where
    T: std::fmt::Display,
{
    let mut out = Vec::with_capacity(vals.len() * N);
    for (k, v) in vals.iter().enumerate() {
        let b = to_bytes(v).ok_or_else(|| {
            bad(
                "value",
                Some(name),
                format!("input '{name}': element {k} is {v}, out of range for {dt}"),
            )
        })?;
        out.extend_from_slice(&b);
    }
    Ok(out)
}

/// The little-endian bytes of typed contents for `dtype` (its part type for complex), which
/// must hold exactly `want` elements.
fn typed_bytes(
    c: &proto::InferTensorContents,
    part: DType,
    want: usize,
    name: &str,
    wire_dt: &str,
    wire_shape: &[u64],
) -> Result<Vec<u8>, CoreError> {
    let field = contents_field(part);
    if matches!(part, DType::F16 | DType::BF16) {
        return Err(bad(
            "contents",
            Some(name),
            format!(
                "input '{name}': {wire_dt} has no typed contents field; send it in \
                 raw_input_contents (little-endian)"
            ),
        ));
    }
    let filled = filled_fields(c);
    if let Some((other, _)) = filled.iter().find(|(f, _)| *f != field) {
        return Err(bad(
            "contents",
            Some(name),
            format!("input '{name}': {wire_dt} elements go in contents.{field}, got {other}"),
        ));
    }
    let got = filled.first().map_or(0, |(_, n)| *n);
    if got != want {
        return Err(bad(
            "element_count",
            Some(name),
            format!(
                "input '{name}': {wire_dt} {} needs {want} elements in contents.{field}, got {got}",
                shape_text(wire_shape)
            ),
        ));
    }
    let le = |v: Vec<u8>| Ok(v);
    match part {
        DType::Bool => le(c.bool_contents.iter().map(|&b| u8::from(b)).collect()),
        DType::I8 => narrow(&c.int_contents, name, wire_dt, |&v| {
            i8::try_from(v).ok().map(i8::to_le_bytes)
        }),
        DType::I16 => narrow(&c.int_contents, name, wire_dt, |&v| {
            i16::try_from(v).ok().map(i16::to_le_bytes)
        }),
        DType::I32 => le(c
            .int_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        DType::I64 => le(c
            .int64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        DType::U8 => narrow(&c.uint_contents, name, wire_dt, |&v| {
            u8::try_from(v).ok().map(u8::to_le_bytes)
        }),
        DType::U16 => narrow(&c.uint_contents, name, wire_dt, |&v| {
            u16::try_from(v).ok().map(u16::to_le_bytes)
        }),
        DType::U32 => le(c
            .uint_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        DType::U64 => le(c
            .uint64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        DType::F32 => le(c
            .fp32_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        DType::F64 => le(c
            .fp64_contents
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
        _ => Err(CoreError::internal(format!(
            "internal error: no typed contents for {part}"
        ))),
    }
}

fn decode_input(
    t: &InferInputTensor,
    raw: Option<&Bytes>,
    sig: &Signature,
) -> Result<InputTensor, CoreError> {
    let name = t.name.as_str();
    let Some(index) = sig.input_index(name) else {
        let names: Vec<String> = sig.inputs.iter().map(|s| format!("'{}'", s.name)).collect();
        return Err(CoreError::from(crate::Error::InvalidInput(
            InputError::UnknownName {
                name: name.chars().take(40).collect(),
                names: names.join(", "),
            },
        )));
    };
    let spec = sig
        .inputs
        .get(index)
        .ok_or_else(|| CoreError::internal("signature index out of range"))?;
    let dtype = match wire::parse_datatype(&t.datatype) {
        Some(d) => d,
        None => {
            let all: Vec<&str> = wire::DATATYPES.iter().map(|(n, _)| *n).collect();
            let what = if t.datatype == "BYTES" {
                "datatype BYTES is not supported".to_string()
            } else {
                format!(
                    "unknown datatype '{}'",
                    t.datatype.chars().take(40).collect::<String>()
                )
            };
            return Err(bad(
                "datatype",
                Some(name),
                format!(
                    "input '{name}': {what}; expected {} (datatypes: {})",
                    wire::datatype_name(spec.dtype),
                    all.join(", ")
                ),
            ));
        }
    };
    let mut shape = Vec::with_capacity(t.shape.len());
    for &d in &t.shape {
        shape.push(u64::try_from(d).map_err(|_| {
            bad(
                "shape",
                Some(name),
                format!(
                    "input '{name}': shape {:?} has a negative dimension; expected {}",
                    t.shape,
                    spec.type_string()
                ),
            )
        })?);
    }
    let wire_shape = shape.clone();
    let wire_dt = t.datatype.as_str();
    // A complex input arrives as its part type with a trailing dimension of 2.
    let complex = spec.dtype.complex_part() == Some(dtype) && shape.last() == Some(&2);
    let dtype = if complex {
        shape.pop();
        spec.dtype
    } else {
        dtype
    };
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
            let mut b = BadRequest::from(e);
            if b.rule == "dtype" {
                b.message.push_str(&format!(
                    " (datatype {wire_dt}, expected {})",
                    wire::datatype_name(spec.dtype)
                ));
            }
            return Err(b.into());
        }
    }
    if t.parameters.contains_key("shared_memory_region") {
        return Err(bad(
            "unsupported",
            Some(name),
            format!("input '{name}': the shared-memory extension is not supported"),
        ));
    }
    let want_bytes = byte_len(dtype, &shape).ok_or_else(|| {
        bad(
            "shape",
            Some(name),
            format!("input '{name}': shape {} is too large", shape_text(&shape)),
        )
    })?;
    let data = match raw {
        Some(raw) => {
            if t.contents
                .as_ref()
                .is_some_and(|c| !filled_fields(c).is_empty())
            {
                return Err(bad(
                    "contents",
                    Some(name),
                    format!(
                        "input '{name}' has both raw_input_contents and typed contents; send one"
                    ),
                ));
            }
            if raw.len() != want_bytes {
                return Err(bad(
                    "byte_length",
                    Some(name),
                    format!(
                        "input '{name}' ({index}): {wire_dt} {} needs {want_bytes} bytes, got \
                         {} bytes of raw_input_contents",
                        shape_text(&wire_shape),
                        raw.len()
                    ),
                ));
            }
            if dtype == DType::Bool {
                if let Some(at) = raw.iter().position(|&b| b > 1) {
                    return Err(bad(
                        "value",
                        Some(name),
                        format!(
                            "input '{name}': BOOL element {at} is byte {}; BOOL bytes must be 0 \
                             or 1",
                            raw.get(at).copied().unwrap_or_default()
                        ),
                    ));
                }
            }
            raw.clone()
        }
        None => {
            let part = dtype.complex_part().unwrap_or(dtype);
            let want = want_bytes / part.size();
            let empty = proto::InferTensorContents::default();
            let c = t.contents.as_ref().unwrap_or(&empty);
            Bytes::from(typed_bytes(c, part, want, name, wire_dt, &wire_shape)?)
        }
    };
    Ok(InputTensor {
        name: t.name.clone(),
        dtype,
        shape,
        data,
    })
}

/// Decodes a `ModelInferRequest` into typed inputs in signature order (on a blocking thread).
/// Public (hidden) for the `grpc_request` fuzz target.
///
/// # Errors
/// A [`CoreError`] of kind bad request naming what is wrong, expected and got.
#[doc(hidden)]
pub fn decode_request(
    req: &proto::ModelInferRequest,
    sig: &Signature,
) -> Result<InferRequest, CoreError> {
    let raw = &req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(bad(
            "raw_contents",
            None,
            format!(
                "raw_input_contents has {} entries for {} inputs: with raw contents every input \
                 has one, in the order of 'inputs'",
                raw.len(),
                req.inputs.len()
            ),
        ));
    }
    let mut named = Vec::with_capacity(req.inputs.len());
    for (k, t) in req.inputs.iter().enumerate() {
        let input = decode_input(t, raw.get(k), sig)?;
        named.push((t.name.clone(), input));
    }
    let inputs = validate::order_named(sig, named).map_err(BadRequest::from)?;
    let outputs = if req.outputs.is_empty() {
        (0..sig.outputs.len())
            .map(|index| OutputChoice {
                index,
                binary: true,
            })
            .collect()
    } else {
        let mut chosen: Vec<OutputChoice> = Vec::with_capacity(req.outputs.len());
        for o in &req.outputs {
            let index = sig
                .outputs
                .iter()
                .position(|s| s.name == o.name)
                .ok_or_else(|| {
                    let names: Vec<String> = sig
                        .outputs
                        .iter()
                        .map(|s| format!("'{}'", s.name))
                        .collect();
                    bad(
                        "unknown_output",
                        None,
                        format!(
                            "unknown output '{}'; the model returns {}",
                            o.name.chars().take(40).collect::<String>(),
                            names.join(", ")
                        ),
                    )
                })?;
            if chosen.iter().any(|c| c.index == index) {
                return Err(bad(
                    "duplicate_output",
                    None,
                    format!("output '{}' requested more than once", o.name),
                ));
            }
            for p in ["classification", "shared_memory_region"] {
                if o.parameters.contains_key(p) {
                    return Err(bad(
                        "unsupported",
                        None,
                        format!("output '{}': parameter '{p}' is not supported", o.name),
                    ));
                }
            }
            chosen.push(OutputChoice {
                index,
                binary: true,
            });
        }
        chosen
    };
    Ok(InferRequest {
        id: (!req.id.is_empty()).then(|| req.id.clone()),
        inputs,
        outputs,
    })
}

/// Encodes the chosen outputs as raw contents.
fn encode_response(p: Picked<'_>) -> proto::ModelInferResponse {
    let mut outputs = Vec::with_capacity(p.outputs.len());
    let mut raw = Vec::with_capacity(p.outputs.len());
    for o in &p.outputs {
        let dt = o.tensor.dtype();
        outputs.push(InferOutputTensor {
            name: o.spec.name.clone(),
            datatype: wire::datatype_name(dt).to_string(),
            shape: wire::wire_shape(dt, o.tensor.shape())
                .into_iter()
                .map(|d| i64::try_from(d).unwrap_or(i64::MAX))
                .collect(),
            parameters: Default::default(),
            contents: None,
        });
        raw.push(Bytes::copy_from_slice(o.tensor.bytes()));
    }
    proto::ModelInferResponse {
        model_name: p.model.to_string(),
        model_version: p.version.to_string(),
        id: p.id.unwrap_or_default().to_string(),
        parameters: Default::default(),
        outputs,
        raw_output_contents: raw,
    }
}

fn tensor_metadata(v: &[crate::TensorSpec]) -> Vec<proto::model_metadata_response::TensorMetadata> {
    v.iter()
        .map(|s| proto::model_metadata_response::TensorMetadata {
            name: s.name.clone(),
            datatype: wire::datatype_name(s.dtype).to_string(),
            shape: wire::metadata_shape(s),
        })
        .collect()
}

fn data_type(d: DType) -> i32 {
    proto::DataType::from_str_name(&format!("TYPE_{}", wire::datatype_name(d)))
        .unwrap_or(proto::DataType::TypeInvalid) as i32
}

/// Triton's model configuration, filled as the HTTP frontend fills it.
fn model_config(
    slot: &Slot,
    platform: &str,
    sig: &Signature,
    batched: Option<&BatchConfig>,
) -> proto::ModelConfig {
    let dims = |s: &crate::TensorSpec| {
        let mut d = wire::metadata_shape(s);
        if batched.is_some() && !d.is_empty() {
            d.remove(0);
        }
        d
    };
    proto::ModelConfig {
        name: slot.name.clone(),
        platform: platform.to_string(),
        backend: "xlaguard".into(),
        version_policy: Some(proto::ModelVersionPolicy {
            policy_choice: Some(proto::model_version_policy::PolicyChoice::Specific(
                proto::model_version_policy::Specific {
                    versions: slot.version.parse::<i64>().ok().into_iter().collect(),
                },
            )),
        }),
        max_batch_size: batched.map_or(0, |c| i32::try_from(c.max_size()).unwrap_or(i32::MAX)),
        input: sig
            .inputs
            .iter()
            .map(|s| proto::ModelInput {
                name: s.name.clone(),
                data_type: data_type(s.dtype),
                dims: dims(s),
                ..Default::default()
            })
            .collect(),
        output: sig
            .outputs
            .iter()
            .map(|s| proto::ModelOutput {
                name: s.name.clone(),
                data_type: data_type(s.dtype),
                dims: dims(s),
                ..Default::default()
            })
            .collect(),
        instance_group: vec![proto::ModelInstanceGroup {
            name: slot.name.clone(),
            kind: proto::model_instance_group::Kind::Cpu as i32,
            count: i32::try_from(slot.limits.workers).unwrap_or(i32::MAX),
            ..Default::default()
        }],
        scheduling_choice: batched.map(|c| {
            proto::model_config::SchedulingChoice::DynamicBatching(proto::ModelDynamicBatching {
                preferred_batch_size: c
                    .sizes
                    .iter()
                    .map(|&s| i32::try_from(s).unwrap_or(i32::MAX))
                    .collect(),
                max_queue_delay_microseconds: u64::try_from(c.max_queue_delay.as_micros())
                    .unwrap_or(u64::MAX),
                ..Default::default()
            })
        }),
        ..Default::default()
    }
}

fn duration(s: &super::serving::PhaseStat) -> Option<proto::StatisticDuration> {
    let (count, ns) = s.get();
    Some(proto::StatisticDuration { count, ns })
}

fn model_stats(slot: &Slot) -> proto::ModelStatistics {
    let st = &slot.stats;
    let (success, _) = st.success.get();
    proto::ModelStatistics {
        name: slot.name.clone(),
        version: slot.version.clone(),
        last_inference: st
            .last_inference_ms
            .load(std::sync::atomic::Ordering::Relaxed),
        inference_count: success,
        execution_count: success,
        inference_stats: Some(proto::InferStatistics {
            success: duration(&st.success),
            fail: duration(&st.fail),
            queue: duration(&st.queue),
            compute_input: duration(&st.compute_input),
            compute_infer: duration(&st.compute_infer),
            compute_output: duration(&st.compute_output),
            cache_hit: Some(proto::StatisticDuration::default()),
            cache_miss: Some(proto::StatisticDuration::default()),
        }),
        ..Default::default()
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for Service {
    async fn server_live(
        &self,
        _: Request<proto::ServerLiveRequest>,
    ) -> Answer<proto::ServerLiveResponse> {
        Ok(Response::new(proto::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<proto::ServerReadyRequest>,
    ) -> Answer<proto::ServerReadyResponse> {
        Ok(Response::new(proto::ServerReadyResponse {
            ready: self.core.server_ready().is_ok(),
        }))
    }

    async fn model_ready(
        &self,
        r: Request<proto::ModelReadyRequest>,
    ) -> Answer<proto::ModelReadyResponse> {
        let r = r.into_inner();
        let slot = self
            .core
            .slot(&r.name, version_of(&r.version))
            .map_err(status)?;
        Ok(Response::new(proto::ModelReadyResponse {
            ready: slot.ready().is_ok(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<proto::ServerMetadataRequest>,
    ) -> Answer<proto::ServerMetadataResponse> {
        Ok(Response::new(proto::ServerMetadataResponse {
            name: "xlaguard".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: super::serving::EXTENSIONS
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }))
    }

    async fn model_metadata(
        &self,
        r: Request<proto::ModelMetadataRequest>,
    ) -> Answer<proto::ModelMetadataResponse> {
        let r = r.into_inner();
        let slot = self
            .core
            .slot(&r.name, version_of(&r.version))
            .map_err(status)?;
        let loaded = slot.ready().map_err(status)?;
        let sig = loaded.signature();
        Ok(Response::new(proto::ModelMetadataResponse {
            name: slot.name.clone(),
            versions: vec![slot.version.clone()],
            platform: loaded.platform.to_string(),
            inputs: tensor_metadata(&sig.inputs),
            outputs: tensor_metadata(&sig.outputs),
        }))
    }

    async fn model_infer(
        &self,
        r: Request<proto::ModelInferRequest>,
    ) -> Answer<proto::ModelInferResponse> {
        let arrived = Instant::now();
        let client = client_deadline(arrived, r.metadata());
        let req = r.into_inner();
        let slot = self
            .core
            .slot(&req.model_name, version_of(&req.model_version))
            .map_err(status)?
            .clone();
        let result = async {
            let loaded = slot
                .ready()
                .inspect_err(|_| self.core.metrics.rejected("not_ready"))?;
            let decode = move |sig: &Signature| decode_request(&req, sig);
            let encode = |p: Picked<'_>| Ok(encode_response(p));
            self.core
                .infer(&slot, loaded, arrived, client, decode, encode)
                .await
        }
        .await;
        match result {
            Ok((resp, timings)) => {
                slot.record_success(arrived, &timings);
                Ok(Response::new(resp))
            }
            Err(e) => {
                let code = super::error::http_status(e.kind).as_u16();
                slot.record_failure(arrived, code, e.rejection.as_ref());
                Err(status(e))
            }
        }
    }

    type ModelStreamInferStream = std::pin::Pin<
        Box<
            dyn tonic::codegen::tokio_stream::Stream<
                    Item = Result<proto::ModelStreamInferResponse, Status>,
                > + Send,
        >,
    >;

    async fn model_stream_infer(
        &self,
        _: Request<tonic::Streaming<proto::ModelInferRequest>>,
    ) -> Answer<Self::ModelStreamInferStream> {
        Err(unimplemented("ModelStreamInfer (decoupled models)"))
    }

    async fn model_config(
        &self,
        r: Request<proto::ModelConfigRequest>,
    ) -> Answer<proto::ModelConfigResponse> {
        let r = r.into_inner();
        let slot = self
            .core
            .slot(&r.name, version_of(&r.version))
            .map_err(status)?;
        let loaded = slot.ready().map_err(status)?;
        let batched = loaded.batch_config().filter(|c| c.batch_dim == 0);
        Ok(Response::new(proto::ModelConfigResponse {
            config: Some(model_config(
                slot,
                loaded.platform,
                loaded.signature(),
                batched,
            )),
        }))
    }

    async fn model_statistics(
        &self,
        r: Request<proto::ModelStatisticsRequest>,
    ) -> Answer<proto::ModelStatisticsResponse> {
        let r = r.into_inner();
        let model_stats = if r.name.is_empty() {
            self.core.models.values().map(|s| model_stats(s)).collect()
        } else {
            let slot = self
                .core
                .slot(&r.name, version_of(&r.version))
                .map_err(status)?;
            vec![model_stats(slot)]
        };
        Ok(Response::new(proto::ModelStatisticsResponse {
            model_stats,
        }))
    }

    async fn repository_index(
        &self,
        r: Request<proto::RepositoryIndexRequest>,
    ) -> Answer<proto::RepositoryIndexResponse> {
        let r = r.into_inner();
        let models = self
            .core
            .index()
            .into_iter()
            .filter(|e| !r.ready || e.state == "READY")
            .map(|e| proto::repository_index_response::ModelIndex {
                name: e.name,
                version: e.version,
                state: e.state.to_string(),
                reason: e.reason.unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(proto::RepositoryIndexResponse { models }))
    }

    async fn repository_model_load(
        &self,
        r: Request<proto::RepositoryModelLoadRequest>,
    ) -> Answer<proto::RepositoryModelLoadResponse> {
        let r = r.into_inner();
        if !r.parameters.is_empty() {
            return Err(Status::invalid_argument(
                "load parameters (config overrides, files) are not supported",
            ));
        }
        self.core.load(&r.model_name).await.map_err(status)?;
        Ok(Response::new(proto::RepositoryModelLoadResponse {}))
    }

    async fn repository_model_unload(
        &self,
        r: Request<proto::RepositoryModelUnloadRequest>,
    ) -> Answer<proto::RepositoryModelUnloadResponse> {
        let r = r.into_inner();
        self.core.unload(&r.model_name).map_err(status)?;
        Ok(Response::new(proto::RepositoryModelUnloadResponse {}))
    }

    async fn system_shared_memory_status(
        &self,
        _: Request<proto::SystemSharedMemoryStatusRequest>,
    ) -> Answer<proto::SystemSharedMemoryStatusResponse> {
        Err(unimplemented("system shared memory"))
    }

    async fn system_shared_memory_register(
        &self,
        _: Request<proto::SystemSharedMemoryRegisterRequest>,
    ) -> Answer<proto::SystemSharedMemoryRegisterResponse> {
        Err(unimplemented("system shared memory"))
    }

    async fn system_shared_memory_unregister(
        &self,
        _: Request<proto::SystemSharedMemoryUnregisterRequest>,
    ) -> Answer<proto::SystemSharedMemoryUnregisterResponse> {
        Err(unimplemented("system shared memory"))
    }

    async fn cuda_shared_memory_status(
        &self,
        _: Request<proto::CudaSharedMemoryStatusRequest>,
    ) -> Answer<proto::CudaSharedMemoryStatusResponse> {
        Err(unimplemented("CUDA shared memory"))
    }

    async fn cuda_shared_memory_register(
        &self,
        _: Request<proto::CudaSharedMemoryRegisterRequest>,
    ) -> Answer<proto::CudaSharedMemoryRegisterResponse> {
        Err(unimplemented("CUDA shared memory"))
    }

    async fn cuda_shared_memory_unregister(
        &self,
        _: Request<proto::CudaSharedMemoryUnregisterRequest>,
    ) -> Answer<proto::CudaSharedMemoryUnregisterResponse> {
        Err(unimplemented("CUDA shared memory"))
    }

    async fn trace_setting(
        &self,
        _: Request<proto::TraceSettingRequest>,
    ) -> Answer<proto::TraceSettingResponse> {
        Err(unimplemented("trace settings"))
    }

    async fn log_settings(
        &self,
        _: Request<proto::LogSettingsRequest>,
    ) -> Answer<proto::LogSettingsResponse> {
        Err(unimplemented("log settings"))
    }
}

/// tonic answers a message over the size limit with `OUT_OF_RANGE`; gRPC's own implementations
/// (and so clients and the contract) use `RESOURCE_EXHAUSTED`. No RPC here answers
/// `OUT_OF_RANGE` itself, so every one is tonic's size check.
async fn too_large_is_resource_exhausted(
    mut r: axum::response::Response,
) -> axum::response::Response {
    let h = r.headers_mut();
    if h.get("grpc-status").is_some_and(|v| v.as_bytes() == b"11") {
        h.insert("grpc-status", axum::http::HeaderValue::from_static("8"));
    }
    r
}

/// The methods counted in `xlaguard_grpc_requests_total` (a fixed list, so a client cannot
/// make up label values): every RPC of Triton's service and of `grpc.health.v1`.
const METHODS: [&str; 22] = [
    "GRPCInferenceService/ServerLive",
    "GRPCInferenceService/ServerReady",
    "GRPCInferenceService/ModelReady",
    "GRPCInferenceService/ServerMetadata",
    "GRPCInferenceService/ModelMetadata",
    "GRPCInferenceService/ModelInfer",
    "GRPCInferenceService/ModelStreamInfer",
    "GRPCInferenceService/ModelConfig",
    "GRPCInferenceService/ModelStatistics",
    "GRPCInferenceService/RepositoryIndex",
    "GRPCInferenceService/RepositoryModelLoad",
    "GRPCInferenceService/RepositoryModelUnload",
    "GRPCInferenceService/SystemSharedMemoryStatus",
    "GRPCInferenceService/SystemSharedMemoryRegister",
    "GRPCInferenceService/SystemSharedMemoryUnregister",
    "GRPCInferenceService/CudaSharedMemoryStatus",
    "GRPCInferenceService/CudaSharedMemoryRegister",
    "GRPCInferenceService/CudaSharedMemoryUnregister",
    "GRPCInferenceService/TraceSetting",
    "GRPCInferenceService/LogSettings",
    "Health/Check",
    "Health/Watch",
];

/// The canonical name of a gRPC status code (as gRPC's own implementations write it).
fn code_name(code: &[u8]) -> &'static str {
    match code {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "other",
    }
}

/// Counts each call in `xlaguard_grpc_requests_total`: its method (`other` for a path not in
/// [`METHODS`]) and the status of its answer. An error is answered in the headers
/// (trailers-only, as tonic does for every failed unary call, its own size checks included);
/// an answer whose headers carry no status is a unary call's success, `OK`.
async fn count_call(
    axum::extract::State(core): axum::extract::State<Arc<Core>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let path = req.uri().path();
    let tail = path
        .strip_prefix("/inference.")
        .or_else(|| path.strip_prefix("/grpc.health.v1."));
    let method = tail
        .and_then(|t| METHODS.iter().find(|m| **m == t))
        .copied()
        .unwrap_or("other");
    let r = next.run(req).await;
    let code = r
        .headers()
        .get("grpc-status")
        .map_or("OK", |v| code_name(v.as_bytes()));
    core.metrics.grpc(method, code);
    r
}

/// Serves gRPC (HTTP/2) on `listener` until `shutdown` completes, then lets in-flight calls
/// finish (up to the drain timeout). `grpc.health.v1` reports `SERVING` for the empty service
/// name and `inference.GRPCInferenceService` once the server is ready, `NOT_SERVING` before.
pub async fn serve(
    listener: tokio::net::TcpListener,
    core: Arc<Core>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (health, health_service) = tonic_health::server::health_reporter();
    let service_name = "inference.GRPCInferenceService";
    let watch = {
        let core = core.clone();
        let health = health.clone();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let ready = core.server_ready().is_ok();
                if last != Some(ready) {
                    let s = if ready {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status("", s).await;
                    health.set_service_status(service_name, s).await;
                    last = Some(ready);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let routes = tonic::service::Routes::new(Service::server(core.clone()))
        .add_service(health_service)
        .prepare()
        .into_axum_router()
        .layer(axum::middleware::map_response(
            too_large_is_resource_exhausted,
        ))
        .layer(axum::middleware::from_fn_with_state(
            core.clone(),
            count_call,
        ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut http = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    http.timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(
            u32::try_from(core.config.max_concurrent_requests)
                .unwrap_or(u32::MAX)
                .max(1),
        );
    let connections = Arc::new(tokio::sync::Semaphore::new(
        core.config.max_connections.max(1),
    ));
    let clients = Arc::new(super::ClientCounts::default());
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        let (stream, peer): (_, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "gRPC accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            core.metrics.rejected("connections");
            drop(stream);
            continue;
        };
        // One client address may hold only its share of the connections, as over HTTP.
        let Some(per_client) = clients.admit(peer.ip(), core.config.max_connections_per_client)
        else {
            core.metrics.rejected("client_connections");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = hyper_util::rt::TokioIo::new(stream);
        let svc = hyper_util::service::TowerToHyperService::new(routes.clone());
        let conn = graceful.watch(http.serve_connection(io, svc));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "gRPC connection ended with an error");
            }
            drop(per_client);
            drop(permit);
        });
    }
    drop(listener);
    watch.abort();
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(core.config.drain_timeout) => tracing::warn!("gRPC drain timeout passed; closing remaining connections"),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_grpc_code() {
        assert_eq!(grpc_code(ErrorKind::InvalidInput), Code::InvalidArgument);
        assert_eq!(grpc_code(ErrorKind::NotFound), Code::NotFound);
        assert_eq!(grpc_code(ErrorKind::Unavailable), Code::Unavailable);
        assert_eq!(grpc_code(ErrorKind::QueueFull), Code::ResourceExhausted);
        assert_eq!(grpc_code(ErrorKind::Deadline), Code::DeadlineExceeded);
    }

    #[test]
    fn grpc_timeouts_parse() {
        let now = Instant::now();
        let md = |v: &str| {
            let mut m = tonic::metadata::MetadataMap::new();
            m.insert("grpc-timeout", v.parse().unwrap());
            m
        };
        assert_eq!(
            client_deadline(now, &md("250m")),
            Some(now + Duration::from_millis(250))
        );
        assert_eq!(
            client_deadline(now, &md("3S")),
            Some(now + Duration::from_secs(3))
        );
        assert_eq!(
            client_deadline(now, &md("7u")),
            Some(now + Duration::from_micros(7))
        );
        assert_eq!(
            client_deadline(now, &md("1H")),
            Some(now + Duration::from_secs(3600))
        );
        assert_eq!(client_deadline(now, &md("123456789m")), None);
        assert_eq!(client_deadline(now, &md("m")), None);
        assert_eq!(client_deadline(now, &md("10x")), None);
        assert_eq!(
            client_deadline(now, &tonic::metadata::MetadataMap::new()),
            None
        );
    }

    #[test]
    fn typed_contents_are_checked() {
        let c = proto::InferTensorContents {
            int_contents: vec![1, 300],
            ..Default::default()
        };
        let e = typed_bytes(&c, DType::I8, 2, "x", "INT8", &[2]).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert!(
            e.message.contains("300, out of range for INT8"),
            "{}",
            e.message
        );
        let ok = typed_bytes(&c, DType::I16, 2, "x", "INT16", &[2]).unwrap();
        assert_eq!(ok, vec![1, 0, 44, 1]);
        let e = typed_bytes(&c, DType::F32, 2, "x", "FP32", &[2]).unwrap_err();
        assert!(
            e.message
                .contains("go in contents.fp32_contents, got int_contents"),
            "{}",
            e.message
        );
        let e = typed_bytes(&c, DType::I32, 3, "x", "INT32", &[3]).unwrap_err();
        assert!(
            e.message
                .contains("needs 3 elements in contents.int_contents, got 2"),
            "{}",
            e.message
        );
        let e = typed_bytes(&c, DType::F16, 2, "x", "FP16", &[2]).unwrap_err();
        assert!(e.message.contains("raw_input_contents"), "{}", e.message);
    }
}
