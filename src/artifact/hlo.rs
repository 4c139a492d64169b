//! `xla.HloModuleProto`: the entry computation's program shape.
//!
//! Only the fields needed are declared (prost skips the rest): `HloModuleProto.computations`
//! (3), `host_program_shape` (4), `entry_computation_id` (6); `HloComputationProto.name` (1),
//! `program_shape` (4), `id` (5); `ProgramShapeProto.parameters` (1), `result` (2),
//! `parameter_names` (3); `ShapeProto.element_type` (2), `dimensions` (3), `tuple_shapes` (4),
//! `is_dynamic_dimension` (6).

use prost::Message;

use super::{Artifact, ArtifactError, ArtifactKind, ProgramFormat};
use crate::signature::{DType, Dim, Signature, TensorSpec};

const WHAT: &str = "HLO module proto";

/// The most tensors accepted on one side of a program shape.
const MAX_LEAVES: usize = 1 << 20;

#[derive(Clone, PartialEq, Message)]
struct HloModuleProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "3")]
    computations: Vec<HloComputationProto>,
    #[prost(message, optional, tag = "4")]
    host_program_shape: Option<ProgramShapeProto>,
    #[prost(int64, tag = "6")]
    entry_computation_id: i64,
}

#[derive(Clone, PartialEq, Message)]
struct HloComputationProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, repeated, tag = "2")]
    instructions: Vec<HloInstructionProto>,
    #[prost(message, optional, tag = "4")]
    program_shape: Option<ProgramShapeProto>,
    #[prost(int64, tag = "5")]
    id: i64,
}

/// `xla.HloInstructionProto`: `name` (1), `opcode` (2), `metadata` (7), `parameter_number` (9),
/// `custom_call_target` (28), `backend_config` (43).
#[derive(Clone, PartialEq, Message)]
struct HloInstructionProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(string, tag = "2")]
    opcode: String,
    #[prost(message, optional, tag = "7")]
    metadata: Option<OpMetadata>,
    #[prost(int64, tag = "9")]
    parameter_number: i64,
    #[prost(string, tag = "28")]
    custom_call_target: String,
    #[prost(bytes = "vec", tag = "43")]
    backend_config: Vec<u8>,
}

/// `xla.OpMetadata`: `op_name` (2).
#[derive(Clone, PartialEq, Message)]
struct OpMetadata {
    #[prost(string, tag = "2")]
    op_name: String,
}

#[derive(Clone, PartialEq, Message)]
struct ProgramShapeProto {
    #[prost(message, repeated, tag = "1")]
    parameters: Vec<ShapeProto>,
    #[prost(message, optional, tag = "2")]
    result: Option<ShapeProto>,
    #[prost(string, repeated, tag = "3")]
    parameter_names: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ShapeProto {
    #[prost(int32, tag = "2")]
    element_type: i32,
    #[prost(int64, repeated, tag = "3")]
    dimensions: Vec<i64>,
    #[prost(message, repeated, tag = "4")]
    tuple_shapes: Vec<ShapeProto>,
    #[prost(bool, repeated, tag = "6")]
    is_dynamic_dimension: Vec<bool>,
}

/// `xla.HloModuleProtoWithConfig` (what `PJRT_Executable_OptimizedProgram` returns as
/// `hlo_with_config`).
#[derive(Clone, PartialEq, Message)]
struct HloModuleProtoWithConfig {
    #[prost(message, optional, tag = "1")]
    hlo_module: Option<HloModuleProto>,
}

const TUPLE: i32 = 13;

fn dtype(code: i32) -> Result<DType, ArtifactError> {
    Ok(match code {
        1 => DType::Bool,
        2 => DType::I8,
        3 => DType::I16,
        4 => DType::I32,
        5 => DType::I64,
        6 => DType::U8,
        7 => DType::U16,
        8 => DType::U32,
        9 => DType::U64,
        10 => DType::F16,
        11 => DType::F32,
        12 => DType::F64,
        16 => DType::BF16,
        15 => DType::C64,
        18 => DType::C128,
        _ => {
            let name = match code {
                0 => "PRIMITIVE_TYPE_INVALID",
                13 => "TUPLE",
                14 => "OPAQUE_TYPE",
                15 => "C64",
                17 => "TOKEN",
                18 => "C128",
                19 => "F8E5M2",
                20 => "F8E4M3FN",
                21 => "S4",
                22 => "U4",
                23 => "F8E4M3B11FNUZ",
                24 => "F8E5M2FNUZ",
                25 => "F8E4M3FNUZ",
                26 => "S2",
                27 => "U2",
                28 => "F8E4M3",
                29 => "F8E3M4",
                30 => "F4E2M1FN",
                31 => "F8E8M0FNU",
                _ => {
                    return Err(ArtifactError::unsupported(
                        format!("XLA element type {code}"),
                        "an element type this build does not know",
                    ))
                }
            };
            return Err(ArtifactError::unsupported(
                format!("XLA element type {name}"),
                "supported: PRED, S8..S64, U8..U64, F16, BF16, F32, F64",
            ));
        }
    })
}

fn array_spec(name: String, s: &ShapeProto) -> Result<TensorSpec, ArtifactError> {
    let dtype = dtype(s.element_type)?;
    let mut shape = Vec::with_capacity(s.dimensions.len());
    for (i, &d) in s.dimensions.iter().enumerate() {
        let d = u64::try_from(d).map_err(|_| {
            ArtifactError::corrupt(WHAT, format!("dimension {i} of {name} is negative ({d})"))
        })?;
        if s.is_dynamic_dimension.get(i).copied().unwrap_or(false) {
            shape.push(Dim::Symbolic(format!("<={d}")));
        } else {
            shape.push(Dim::Static(d));
        }
    }
    Ok(TensorSpec {
        name,
        dtype,
        shape,
        jax_type: None,
    })
}

/// Flattens a (possibly nested) tuple into its array leaves.
fn flatten<'a>(
    s: &'a ShapeProto,
    out: &mut Vec<&'a ShapeProto>,
    depth: usize,
) -> Result<(), ArtifactError> {
    if depth > 64 || out.len() > MAX_LEAVES {
        return Err(ArtifactError::unsupported(
            "deeply nested or huge tuples",
            "the result tuple nests deeper than 64 or has over 2^20 leaves",
        ));
    }
    if s.element_type == TUPLE {
        for t in &s.tuple_shapes {
            flatten(t, out, depth.saturating_add(1))?;
        }
    } else {
        out.push(s);
    }
    Ok(())
}

fn signature_of(ps: &ProgramShapeProto) -> Result<Signature, ArtifactError> {
    let use_names = ps.parameter_names.len() == ps.parameters.len()
        && ps.parameter_names.iter().all(|n| !n.is_empty())
        // XLA's default names (`p0`, `p1`, ...) say nothing: use `arg0`, ... instead.
        && !ps
            .parameter_names
            .iter()
            .enumerate()
            .all(|(i, n)| *n == format!("p{i}"))
        && {
            let mut seen = std::collections::HashSet::new();
            ps.parameter_names.iter().all(|n| seen.insert(n.as_str()))
        };
    let mut inputs = Vec::with_capacity(ps.parameters.len());
    for (i, p) in ps.parameters.iter().enumerate() {
        if p.element_type == TUPLE {
            return Err(ArtifactError::unsupported(
                "tuple parameters",
                format!("parameter {i} of the entry computation is a tuple"),
            ));
        }
        let name = match ps.parameter_names.get(i) {
            Some(n) if use_names => n.clone(),
            _ => format!("arg{i}"),
        };
        inputs.push(array_spec(name, p)?);
    }
    let mut leaves = Vec::new();
    if let Some(r) = &ps.result {
        flatten(r, &mut leaves, 0)?;
    }
    let outputs = leaves
        .into_iter()
        .enumerate()
        .map(|(i, s)| array_spec(format!("out{i}"), s))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Signature { inputs, outputs })
}

fn decode_err(e: prost::DecodeError) -> ArtifactError {
    let msg = e.to_string();
    if msg.contains("underflow") || msg.contains("invalid varint") {
        ArtifactError::truncated(WHAT, format!("protobuf decoding failed: {msg}"))
    } else {
        ArtifactError::corrupt(WHAT, format!("protobuf decoding failed: {msg}"))
    }
}

/// The entry program shape of a module: `host_program_shape`, else the entry computation's.
fn module_shape(m: &HloModuleProto) -> Option<&ProgramShapeProto> {
    m.host_program_shape.as_ref().or_else(|| {
        m.computations
            .iter()
            .find(|c| c.id == m.entry_computation_id)
            .or_else(|| m.computations.last())
            .and_then(|c| c.program_shape.as_ref())
    })
}

/// The signature of an `HloModuleProto`'s entry computation; also accepts an
/// `HloModuleProtoWithConfig` (the `hlo_with_config` bytes of `PJRT_Executable_OptimizedProgram`).
///
/// Inputs are named from `parameter_names` when those are present, unique and not XLA's
/// default `p0`, `p1`, ...; else `arg0`, ...;
/// a tuple result is flattened into `out0`, `out1`, ...
///
/// # Errors
/// [`ArtifactError::Truncated`] / [`ArtifactError::Corrupt`] when the bytes do not decode or
/// carry no program shape; [`ArtifactError::Unsupported`] for element types or tuple
/// parameters not supported.
pub fn program_shape(hlo_module_proto: &[u8]) -> Result<Signature, ArtifactError> {
    let plain = HloModuleProto::decode(hlo_module_proto);
    if let Ok(m) = &plain {
        if let Some(ps) = module_shape(m) {
            return signature_of(ps);
        }
    }
    if let Ok(w) = HloModuleProtoWithConfig::decode(hlo_module_proto) {
        if let Some(ps) = w.hlo_module.as_ref().and_then(module_shape) {
            return signature_of(ps);
        }
    }
    match plain {
        Err(e) => Err(decode_err(e)),
        Ok(_) => Err(ArtifactError::corrupt(
            WHAT,
            "expected host_program_shape or an entry computation with a program shape, found \
             neither",
        )),
    }
}

/// The library kernels an optimized module calls, by name, with how many instructions call
/// each: fusions XLA's CPU backend hands to a library (`__ynn_fusion`, `__xnn_fusion`,
/// `__onednn_fusion`: the `kind` of their backend config's `fusion_config`) and custom calls
/// to one (targets starting `__onednn$`, `__xnn`, `__ynn`). Sorted by name.
///
/// # Errors
/// [`ArtifactError::Truncated`] / [`ArtifactError::Corrupt`] when the bytes do not decode.
pub fn library_calls(hlo_module_proto: &[u8]) -> Result<Vec<(String, usize)>, ArtifactError> {
    let m = match HloModuleProto::decode(hlo_module_proto) {
        Ok(m) if !m.computations.is_empty() => m,
        plain => match HloModuleProtoWithConfig::decode(hlo_module_proto) {
            Ok(HloModuleProtoWithConfig {
                hlo_module: Some(m),
            }) => m,
            _ => plain.map_err(decode_err)?,
        },
    };
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for i in m.computations.iter().flat_map(|c| &c.instructions) {
        let name = match i.opcode.as_str() {
            "fusion" => fusion_kind(&i.backend_config),
            "custom-call"
                if LIBRARY_PREFIXES
                    .iter()
                    .any(|p| i.custom_call_target.starts_with(p)) =>
            {
                Some(i.custom_call_target.clone())
            }
            _ => None,
        };
        if let Some(n) = name {
            let c = counts.entry(n).or_default();
            *c = c.saturating_add(1);
        }
    }
    Ok(counts.into_iter().collect())
}

/// How the CPU backend's library fusion kinds and custom-call targets start.
const LIBRARY_PREFIXES: &[&str] = &["__onednn", "__xnn", "__ynn"];

/// A library fusion's kind (`"fusion_config":{"kind":"__ynn_fusion"}`), if the backend config
/// names one.
fn fusion_kind(backend_config: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(backend_config).ok()?;
    let kind = v.get("fusion_config")?.get("kind")?.as_str()?;
    LIBRARY_PREFIXES
        .iter()
        .any(|p| kind.starts_with(p))
        .then(|| kind.to_string())
}

/// What a compiled module says about one entry parameter's name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParameterName {
    /// The instruction name with XLA's uniquifying `.N` suffix removed (`x.1` → `x`,
    /// `params['w']` → `params__w__`: XLA's sanitized form).
    pub instruction: String,
    /// The parameter's metadata `op_name`: the `loc("...")` name of the StableHLO `@main`
    /// argument, unsanitized (`params['w']`); empty when absent.
    pub op_name: String,
}

/// The names of the entry computation's parameters, by parameter number. XLA takes them from
/// the `loc("...")` of the StableHLO `@main` arguments, which is how a `jax.export` artifact's
/// argument names (kept only in its MLIR bytecode) reach us. Accepts a plain `HloModuleProto`
/// or the `hlo_with_config` wrapper. Empty when the module has no such names.
pub fn entry_parameter_names(hlo_module_proto: &[u8]) -> Vec<Option<ParameterName>> {
    let module = match HloModuleProto::decode(hlo_module_proto) {
        Ok(m) if !m.computations.is_empty() => Some(m),
        _ => HloModuleProtoWithConfig::decode(hlo_module_proto)
            .ok()
            .and_then(|w| w.hlo_module),
    };
    let Some(m) = module else {
        return Vec::new();
    };
    let Some(entry) = m
        .computations
        .iter()
        .find(|c| c.id == m.entry_computation_id)
    else {
        return Vec::new();
    };
    let mut names: Vec<Option<ParameterName>> = Vec::new();
    for ins in entry
        .instructions
        .iter()
        .filter(|i| i.opcode == "parameter")
    {
        let Ok(n) = usize::try_from(ins.parameter_number) else {
            continue;
        };
        if n >= MAX_LEAVES {
            continue;
        }
        if names.len() <= n {
            names.resize(n.saturating_add(1), None);
        }
        let base = match ins.name.rsplit_once('.') {
            Some((b, suffix))
                if !suffix.is_empty() && suffix.bytes().all(|c| c.is_ascii_digit()) =>
            {
                b
            }
            _ => ins.name.as_str(),
        };
        if let Some(slot) = names.get_mut(n) {
            *slot = Some(ParameterName {
                instruction: base.to_string(),
                op_name: ins
                    .metadata
                    .as_ref()
                    .map(|m| m.op_name.clone())
                    .unwrap_or_default(),
            });
        }
    }
    names
}

/// Tries to read `bytes` as an `HloModuleProto`.
///
/// `Ok(None)` when the bytes do not look like one (so the caller reports an unknown format);
/// an error when they start like one (field 1, the name) but do not decode.
pub(crate) fn try_load(bytes: &[u8]) -> Result<Option<Artifact>, ArtifactError> {
    let m = match HloModuleProto::decode(bytes) {
        Ok(m) => m,
        Err(e) => {
            return if bytes.first() == Some(&0x0a) {
                Err(decode_err(e))
            } else {
                Ok(None)
            };
        }
    };
    if m.computations.is_empty() {
        return if bytes.first() == Some(&0x0a) && !m.name.is_empty() {
            Err(ArtifactError::corrupt(
                WHAT,
                format!("module {:?} has no computations", m.name),
            ))
        } else {
            Ok(None)
        };
    }
    let signature = module_shape(&m).map(signature_of).transpose()?;
    let uses_shape_polymorphism = signature.as_ref().is_some_and(|s| {
        s.inputs
            .iter()
            .chain(&s.outputs)
            .any(TensorSpec::is_polymorphic)
    });
    Ok(Some(Artifact {
        kind: ArtifactKind::HloProto,
        program: bytes.to_vec(),
        format: ProgramFormat::Hlo,
        signature,
        platforms: Vec::new(),
        calling_convention_version: None,
        kept_inputs: None,
        ordered_effects: Vec::new(),
        unordered_effects: Vec::new(),
        nr_devices: 1,
        serialization_version: None,
        uses_shape_polymorphism,
        platform_index_dtype: None,
        input_paths: Vec::new(),
    }))
}
