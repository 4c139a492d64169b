//! `xla.CompileOptionsProto`: the options JAX 0.11.2 sends, with our counts, device and flags.
//!
//! JAX sends XLA a full `DebugOptions`; a proto without one gets XLA's defaults, which differ
//! (`xla_cpu_enable_fast_min_max` is false under JAX and true by default, so a max over a NaN
//! that a model computes returns a number, and attention models differ in the last bits). So
//! the base of every encoding is the `CompileOptionsProto` that JAX itself serialized for a
//! CPU compile, captured by `hlo/compile_options.py` and embedded here byte for byte
//! (`jax_cpu_compile_options.binpb`; its text form is `hlo/compile_options/default.txtpb`).
//! Fields are edited at the wire level, so every field JAX sets is kept as JAX wrote it,
//! including ones this crate has no name for.
//!
//! On top of it: the replica and partition counts, the device, and the `XLA_FLAGS` that are
//! `DebugOptions` fields ([`CompileOptions::xla_flags`]). Sending a full `DebugOptions` means
//! the plugin no longer applies `XLA_FLAGS` to it itself, so we do, the way XLA parses them.
//!
//! The plugin aborts the whole process on empty options or on build options without both
//! `num_replicas` and `num_partitions` (see PJRT_NOTES.md). [`CompileOptions`] therefore has no
//! public fields, and every way to get one sets both counts to at least 1.

use std::fmt;
use std::num::NonZeroU32;

use prost::bytes::Buf;
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};

/// What JAX 0.11.2 sent for `jax.jit(f)` on CPU (one replica, one partition, device 0),
/// captured by `hlo/compile_options.py`.
const JAX_CPU_OPTIONS: &[u8] = include_bytes!("jax_cpu_compile_options.binpb");

/// `CompileOptionsProto.executable_build_options`.
const COMPILE_BUILD_OPTIONS: u32 = 3;
/// `ExecutableBuildOptionsProto` fields.
const BUILD_DEVICE_ORDINAL: u32 = 1;
const BUILD_DEBUG_OPTIONS: u32 = 3;
const BUILD_NUM_REPLICAS: u32 = 4;
const BUILD_NUM_PARTITIONS: u32 = 5;
const BUILD_DEVICE_ASSIGNMENT: u32 = 9;

/// How an `XLA_FLAGS` value becomes a `DebugOptions` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    Bool,
    Int32,
    Str,
    /// A repeated string field, given as a comma-separated list.
    StrList,
    /// An enum field: its value names, by number.
    Enum(&'static [&'static str]),
    /// A repeated (packed) enum field, given as a comma-separated list of value names.
    EnumList(&'static [&'static str]),
}

/// `DebugOptions.XnnGraphFusionMode`, by number.
const XNN_GRAPH_FUSION_MODE: &[&str] = &[
    "XNN_GRAPH_FUSION_MODE_DISABLED",
    "XNN_GRAPH_FUSION_MODE_GREEDY",
    "XNN_GRAPH_FUSION_MODE_GREEDY_SLINKY",
    "XNN_GRAPH_FUSION_MODE_BYPASS_COST_MODEL",
];

/// `DebugOptions.LibraryFusionType`, by number.
const LIBRARY_FUSION_TYPE: &[&str] = &[
    "LIBRARY_FUSION_TYPE_INVALID",
    "LIBRARY_FUSION_TYPE_DOT",
    "LIBRARY_FUSION_TYPE_ELTWISE",
    "LIBRARY_FUSION_TYPE_REDUCE",
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT",
    "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION",
];

/// The number of enum value `name`: the full name, or the part after the prefix all the
/// values share, in any case (`LIBRARY_FUSION_TYPE_DOT`, `dot`).
fn enum_number(names: &[&str], name: &str) -> Option<u64> {
    let cut = common_prefix(names);
    names
        .iter()
        .position(|n| n.eq_ignore_ascii_case(name) || n[cut..].eq_ignore_ascii_case(name))
        .map(|i| i as u64)
}

/// The length of the prefix that all `names` share, cut after an underscore.
fn common_prefix(names: &[&str]) -> usize {
    let first = names.first().copied().unwrap_or("");
    let mut len = first.len();
    for n in names {
        len = len.min(
            first
                .bytes()
                .zip(n.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    first[..len].rfind('_').map_or(0, |i| i + 1)
}

/// The `DebugOptions` fields that the allowed `XLA_FLAGS` set: flag name, field number, kind.
/// Numbers and types are those of the `xla/xla.proto` that jaxlib 0.11.2 and the pinned CPU
/// plugin embed (`hlo/compile_options/debug_options_fields.json`; a test checks this table
/// against it). A flag that is not a `DebugOptions` field (`xla_cpu_use_thunk_runtime`, kept
/// by XLA as a no-op) is not listed and changes nothing here.
/// Whether `name` (without `--`) is an `XLA_FLAGS` flag that [`CompileOptions::xla_flags`]
/// writes into `DebugOptions` (the others are not `DebugOptions` fields).
pub fn is_debug_options_flag(name: &str) -> bool {
    FLAG_FIELDS.iter().any(|(n, _, _)| *n == name)
}

const FLAG_FIELDS: &[(&str, u32, FlagKind)] = &[
    ("xla_disable_hlo_passes", 30, FlagKind::StrList),
    ("xla_backend_optimization_level", 31, FlagKind::Int32),
    ("xla_cpu_multi_thread_eigen", 60, FlagKind::Bool),
    ("xla_llvm_disable_expensive_passes", 73, FlagKind::Bool),
    ("xla_cpu_enable_fast_math", 99, FlagKind::Bool),
    ("xla_force_host_platform_device_count", 102, FlagKind::Int32),
    ("xla_cpu_fast_math_honor_nans", 120, FlagKind::Bool),
    ("xla_cpu_fast_math_honor_infs", 121, FlagKind::Bool),
    ("xla_cpu_fast_math_honor_division", 126, FlagKind::Bool),
    ("xla_cpu_fast_math_honor_functions", 129, FlagKind::Bool),
    ("xla_cpu_enable_fast_min_max", 140, FlagKind::Bool),
    ("xla_cpu_strict_dot_conv_math", 175, FlagKind::Bool),
    ("xla_cpu_prefer_vector_width", 308, FlagKind::Int32),
    ("xla_cpu_parallel_codegen_split_count", 323, FlagKind::Int32),
    ("xla_cpu_max_isa", 333, FlagKind::Str),
    ("xla_cpu_use_onednn", 97, FlagKind::Bool),
    ("xla_cpu_use_xnnpack", 359, FlagKind::Bool),
    (
        "xla_cpu_experimental_xnn_graph_fusion_mode",
        365,
        FlagKind::Enum(XNN_GRAPH_FUSION_MODE),
    ),
    (
        "xla_cpu_experimental_onednn_fusion_type",
        399,
        FlagKind::EnumList(LIBRARY_FUSION_TYPE),
    ),
    (
        "xla_cpu_experimental_xnn_fusion_type",
        400,
        FlagKind::EnumList(LIBRARY_FUSION_TYPE),
    ),
    (
        "xla_cpu_experimental_onednn_custom_call",
        412,
        FlagKind::Bool,
    ),
    (
        "xla_cpu_experimental_ynn_fusion_type",
        422,
        FlagKind::EnumList(LIBRARY_FUSION_TYPE),
    ),
];

/// One protobuf field value, as it travels on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Value {
    Varint(u64),
    Fixed64(u64),
    Bytes(Vec<u8>),
    Fixed32(u32),
}

/// A message as its fields in wire order (numbers may repeat).
type Fields = Vec<(u32, Value)>;

/// Parses one message level. `None` for malformed bytes or group wire types.
fn parse(mut buf: &[u8]) -> Option<Fields> {
    let mut out = Vec::new();
    while buf.has_remaining() {
        let (number, wire) = decode_key(&mut buf).ok()?;
        let value = match wire {
            WireType::Varint => Value::Varint(decode_varint(&mut buf).ok()?),
            WireType::SixtyFourBit => {
                (buf.remaining() >= 8).then_some(())?;
                Value::Fixed64(buf.get_u64_le())
            }
            WireType::ThirtyTwoBit => {
                (buf.remaining() >= 4).then_some(())?;
                Value::Fixed32(buf.get_u32_le())
            }
            WireType::LengthDelimited => {
                let n = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
                let bytes = buf.get(..n)?.to_vec();
                buf.advance(n);
                Value::Bytes(bytes)
            }
            WireType::StartGroup | WireType::EndGroup => return None,
        };
        out.push((number, value));
    }
    Some(out)
}

fn encode(fields: &[(u32, Value)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (number, value) in fields {
        match value {
            Value::Varint(v) => {
                encode_key(*number, WireType::Varint, &mut out);
                encode_varint(*v, &mut out);
            }
            Value::Fixed64(v) => {
                encode_key(*number, WireType::SixtyFourBit, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Fixed32(v) => {
                encode_key(*number, WireType::ThirtyTwoBit, &mut out);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Value::Bytes(b) => {
                encode_key(*number, WireType::LengthDelimited, &mut out);
                encode_varint(b.len() as u64, &mut out);
                out.extend_from_slice(b);
            }
        }
    }
    out
}

/// Replaces every occurrence of `number` with `values`, where the first occurrence was, or
/// (when absent) before the first field with a larger number: the field-number order in
/// which XLA's C++ serializer writes.
fn set(fields: &mut Fields, number: u32, values: Vec<Value>) {
    let at = fields
        .iter()
        .position(|(n, _)| *n == number)
        .or_else(|| fields.iter().position(|(n, _)| *n > number))
        .unwrap_or(fields.len());
    let before = fields[..at].iter().filter(|(n, _)| *n == number).count();
    fields.retain(|(n, _)| *n != number);
    let at = at - before;
    fields.splice(at..at, values.into_iter().map(|v| (number, v)));
}

fn sub_message(fields: &[(u32, Value)], number: u32) -> Option<Fields> {
    match fields.iter().find(|(n, _)| *n == number) {
        Some((_, Value::Bytes(b))) => parse(b),
        Some(_) => None,
        None => Some(Vec::new()),
    }
}

/// The embedded JAX options, parsed: (top level, build options, debug options).
fn template() -> (Fields, Fields, Fields) {
    // The embedded bytes are JAX's own serialization (a unit test parses them); an empty
    // parse would still encode complete options below.
    let top = parse(JAX_CPU_OPTIONS).unwrap_or_default();
    let build = sub_message(&top, COMPILE_BUILD_OPTIONS).unwrap_or_default();
    let debug = sub_message(&build, BUILD_DEBUG_OPTIONS).unwrap_or_default();
    (top, build, debug)
}

/// An `XLA_FLAGS` token this crate cannot turn into a `DebugOptions` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XlaFlagError {
    /// The flag's name, without `--`.
    pub flag: String,
    /// The value given.
    pub value: String,
    /// What the flag takes (`true or false`, `a 32-bit integer`).
    pub expected: &'static str,
}

impl fmt::Display for XlaFlagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "XLA_FLAGS: --{} takes {}, got '{}'",
            self.flag, self.expected, self.value
        )
    }
}

impl std::error::Error for XlaFlagError {}

/// Compile options: JAX's, with our counts, device and `XLA_FLAGS`. Always complete: replicas
/// and partitions are at least 1.
///
/// ```
/// use xlaguard::pjrt::CompileOptions;
/// let mut o = CompileOptions::new();
/// o.xla_flags("--xla_cpu_max_isa=AVX2")?;
/// let bytes = o.encode();
/// // field 3 (executable_build_options) first, as JAX writes it
/// assert_eq!(bytes[0], 0x1a);
/// assert_eq!(CompileOptions::decode(&bytes), Some(o));
/// # Ok::<(), xlaguard::pjrt::XlaFlagError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CompileOptions {
    num_replicas: NonZeroU32,
    num_partitions: NonZeroU32,
    device_ordinal: Option<u32>,
    /// `DebugOptions` fields that differ from JAX's, by field number (sorted, unique).
    debug: Vec<(u32, Vec<Value>)>,
}

impl CompileOptions {
    /// JAX's options: one replica, one partition, device chosen by the plugin.
    pub fn new() -> CompileOptions {
        CompileOptions {
            num_replicas: NonZeroU32::MIN,
            num_partitions: NonZeroU32::MIN,
            device_ordinal: None,
            debug: Vec::new(),
        }
    }

    /// Sets the number of replicas.
    pub fn num_replicas(&mut self, n: NonZeroU32) -> &mut Self {
        self.num_replicas = n;
        self
    }

    /// Sets the number of partitions.
    pub fn num_partitions(&mut self, n: NonZeroU32) -> &mut Self {
        self.num_partitions = n;
        self
    }

    /// Pins compilation to one device ordinal.
    pub fn device_ordinal(&mut self, n: Option<u32>) -> &mut Self {
        self.device_ordinal = n;
        self
    }

    /// Applies `XLA_FLAGS` (`--name=value` tokens, `--name` alone meaning true) to the
    /// `DebugOptions`, as XLA parses them: booleans take `true`/`false`/`1`/`0`, lists are
    /// comma-separated. Flags that are not `DebugOptions` fields are left to the plugin, which
    /// reads `XLA_FLAGS` itself when it creates a client; which flags may appear at all is
    /// [`crate::compile::validate_xla_flags`]'s business.
    ///
    /// One deviation from JAX, on purpose: JAX's `CompileOptions()` resets
    /// `xla_cpu_enable_fast_min_max` to false after XLA parsed the flags, so under JAX that
    /// flag does nothing; here a flag that is set is honoured.
    ///
    /// # Errors
    /// [`XlaFlagError`] for a value the field cannot take.
    pub fn xla_flags(&mut self, flags: &str) -> Result<&mut Self, XlaFlagError> {
        let (_, _, jax) = template();
        for tok in flags.split_whitespace() {
            let body = tok.strip_prefix("--").unwrap_or(tok);
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(_, number, kind)) = FLAG_FIELDS.iter().find(|(n, _, _)| *n == name) else {
                continue;
            };
            let bad = |expected| XlaFlagError {
                flag: name.to_string(),
                value: value.unwrap_or("").to_string(),
                expected,
            };
            let values = match (kind, value) {
                (FlagKind::Bool, None | Some("true" | "1")) => vec![Value::Varint(1)],
                (FlagKind::Bool, Some("false" | "0")) => vec![Value::Varint(0)],
                (FlagKind::Bool, _) => return Err(bad("true or false")),
                (FlagKind::Int32, Some(v)) => {
                    let n: i32 = v.parse().map_err(|_| bad("a 32-bit integer"))?;
                    // int32 is sign-extended to 64 bits on the wire.
                    vec![Value::Varint(i64::from(n) as u64)]
                }
                (FlagKind::Int32, None) => return Err(bad("a 32-bit integer")),
                (FlagKind::Str, v) => vec![Value::Bytes(v.unwrap_or("").as_bytes().to_vec())],
                (FlagKind::StrList, v) => v
                    .unwrap_or("")
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::Bytes(s.as_bytes().to_vec()))
                    .collect(),
                (FlagKind::Enum(names), Some(v)) => match enum_number(names, v) {
                    Some(n) => vec![Value::Varint(n)],
                    None => return Err(bad("one of the enum's value names")),
                },
                (FlagKind::Enum(_), None) => return Err(bad("one of the enum's value names")),
                (FlagKind::EnumList(names), v) => {
                    // Packed, as XLA's serializer writes repeated enums; empty: no field.
                    let mut packed = Vec::new();
                    for s in v.unwrap_or("").split(',').filter(|s| !s.is_empty()) {
                        let n = enum_number(names, s).ok_or_else(|| {
                            bad("a comma-separated list of the enum's value names")
                        })?;
                        encode_varint(n, &mut packed);
                    }
                    if packed.is_empty() {
                        Vec::new()
                    } else {
                        vec![Value::Bytes(packed)]
                    }
                }
            };
            let same_as_jax = jax
                .iter()
                .filter(|(n, _)| *n == number)
                .map(|(_, v)| v)
                .eq(values.iter());
            self.debug.retain(|(n, _)| *n != number);
            if !same_as_jax {
                let at = self.debug.partition_point(|(n, _)| *n < number);
                self.debug.insert(at, (number, values));
            }
        }
        Ok(self)
    }

    /// The serialized `CompileOptionsProto`.
    pub fn encode(&self) -> Vec<u8> {
        let (mut top, mut build, mut debug) = template();
        for (number, values) in &self.debug {
            set(&mut debug, *number, values.clone());
        }
        let (r, p) = self.counts();
        // JAX writes device_ordinal = -1 and names the device in a device assignment.
        let ordinal = self.device_ordinal.map_or(-1, i64::from);
        set(
            &mut build,
            BUILD_DEVICE_ORDINAL,
            vec![Value::Varint(ordinal as u64)],
        );
        set(
            &mut build,
            BUILD_DEBUG_OPTIONS,
            vec![Value::Bytes(encode(&debug))],
        );
        set(
            &mut build,
            BUILD_NUM_REPLICAS,
            vec![Value::Varint(r.into())],
        );
        set(
            &mut build,
            BUILD_NUM_PARTITIONS,
            vec![Value::Varint(p.into())],
        );
        let assignment = match (r, p, self.device_ordinal) {
            // JAX's own assignment: replica 0 on device 0.
            (1, 1, None | Some(0)) => None,
            (1, 1, Some(n)) => Some(vec![Value::Bytes(device_assignment(n))]),
            // More than one device: the plugin assigns them.
            _ => Some(Vec::new()),
        };
        if let Some(a) = assignment {
            set(&mut build, BUILD_DEVICE_ASSIGNMENT, a);
        }
        set(
            &mut top,
            COMPILE_BUILD_OPTIONS,
            vec![Value::Bytes(encode(&build))],
        );
        encode(&top)
    }

    /// Decodes options produced by [`CompileOptions::encode`]. Returns `None` for bytes that
    /// do not decode, or that lack a replica or partition count (which would abort the plugin).
    pub fn decode(bytes: &[u8]) -> Option<CompileOptions> {
        let top = parse(bytes)?;
        let build = sub_message(&top, COMPILE_BUILD_OPTIONS)?;
        let varint = |number| {
            build.iter().rev().find_map(|(n, v)| match v {
                Value::Varint(x) if *n == number => Some(*x),
                _ => None,
            })
        };
        let count = |n: Option<u64>| u32::try_from(n?).ok().and_then(NonZeroU32::new);
        let debug = sub_message(&build, BUILD_DEBUG_OPTIONS)?;
        let (_, _, jax) = template();
        let mut numbers: Vec<u32> = debug.iter().chain(&jax).map(|(n, _)| *n).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let values = |fields: &Fields, number: u32| -> Vec<Value> {
            fields
                .iter()
                .filter(|(n, _)| *n == number)
                .map(|(_, v)| v.clone())
                .collect()
        };
        let differs = numbers
            .into_iter()
            .map(|n| (n, values(&debug, n)))
            .filter(|(n, v)| *v != values(&jax, *n))
            .collect();
        Some(CompileOptions {
            num_replicas: count(varint(BUILD_NUM_REPLICAS))?,
            num_partitions: count(varint(BUILD_NUM_PARTITIONS))?,
            device_ordinal: match varint(BUILD_DEVICE_ORDINAL).map_or(-1, |v| v as i64) {
                -1 => None,
                n => Some(u32::try_from(n).ok()?),
            },
            debug: differs,
        })
    }

    /// Whether every `DebugOptions` field is JAX's (no `XLA_FLAGS` edit, no CPU kernel
    /// setting).
    pub fn is_jax_default(&self) -> bool {
        self.debug.is_empty()
    }

    /// Replicas and partitions.
    pub fn counts(&self) -> (u32, u32) {
        (self.num_replicas.get(), self.num_partitions.get())
    }
}

/// `DeviceAssignmentProto { replica_count: 1, computation_count: 1, computation_devices {
/// replica_device_ids: [device] } }`.
fn device_assignment(device: u32) -> Vec<u8> {
    let ids = encode(&[(1, Value::Varint(device.into()))]);
    encode(&[
        (1, Value::Varint(1)),
        (2, Value::Varint(1)),
        (3, Value::Bytes(ids)),
    ])
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_options_are_jax_bytes() {
        assert_eq!(CompileOptions::new().encode(), JAX_CPU_OPTIONS);
        let (top, build, debug) = template();
        assert!(!top.is_empty() && !build.is_empty());
        // JAX's debug options keep NaNs through max/min.
        assert!(debug.contains(&(140, Value::Varint(0))));
    }

    #[test]
    fn pinned_device_gets_its_own_assignment() {
        let mut o = CompileOptions::new();
        o.device_ordinal(Some(3));
        let bytes = o.encode();
        let build = sub_message(&parse(&bytes).unwrap(), COMPILE_BUILD_OPTIONS).unwrap();
        assert!(build.contains(&(BUILD_DEVICE_ORDINAL, Value::Varint(3))));
        assert!(build.contains(&(BUILD_DEVICE_ASSIGNMENT, Value::Bytes(device_assignment(3)))));
        assert_eq!(CompileOptions::decode(&bytes), Some(o));
    }

    #[test]
    fn decode_round_trips_and_refuses_incomplete_options() {
        let mut o = CompileOptions::new();
        o.num_partitions(NonZeroU32::new(3).unwrap());
        o.xla_flags("--xla_disable_hlo_passes=a,b --xla_cpu_enable_fast_math")
            .unwrap();
        assert_eq!(CompileOptions::decode(&o.encode()), Some(o));
        assert_eq!(CompileOptions::decode(&[]), None);
        // field 3 with only num_replicas = 1: the plugin would abort on it.
        assert_eq!(CompileOptions::decode(&[0x1a, 0x02, 0x20, 0x01]), None);
        // Truncated bytes.
        assert_eq!(CompileOptions::decode(&JAX_CPU_OPTIONS[..100]), None);
    }

    #[test]
    fn counts_are_always_present() {
        let mut o = CompileOptions::new();
        o.num_replicas(NonZeroU32::new(2).unwrap());
        let build = sub_message(&parse(&o.encode()).unwrap(), COMPILE_BUILD_OPTIONS).unwrap();
        assert!(build.contains(&(BUILD_NUM_REPLICAS, Value::Varint(2))));
        assert!(build.contains(&(BUILD_NUM_PARTITIONS, Value::Varint(1))));
        assert!(!build.iter().any(|(n, _)| *n == BUILD_DEVICE_ASSIGNMENT));
    }

    #[test]
    fn flags_equal_to_jax_change_nothing_and_bad_values_are_refused() {
        let mut o = CompileOptions::new();
        o.xla_flags("--xla_cpu_enable_fast_min_max=false --xla_cpu_use_thunk_runtime=false")
            .unwrap();
        assert_eq!(o, CompileOptions::new());
        let e = o.xla_flags("--xla_cpu_enable_fast_math=maybe").unwrap_err();
        assert_eq!(
            e.to_string(),
            "XLA_FLAGS: --xla_cpu_enable_fast_math takes true or false, got 'maybe'"
        );
        let e = o
            .xla_flags("--xla_cpu_prefer_vector_width=wide")
            .unwrap_err();
        assert_eq!(e.expected, "a 32-bit integer");
        let mut o = CompileOptions::new();
        o.xla_flags("--xla_backend_optimization_level=-1").unwrap();
        let debug = sub_message(
            &sub_message(&parse(&o.encode()).unwrap(), COMPILE_BUILD_OPTIONS).unwrap(),
            BUILD_DEBUG_OPTIONS,
        )
        .unwrap();
        assert!(debug.contains(&(31, Value::Varint(u64::MAX))));
    }

    #[test]
    fn flag_table_matches_the_xla_proto_jaxlib_embeds() {
        let table: Vec<serde_json::Value> = serde_json::from_str(include_str!(
            "../../hlo/compile_options/debug_options_fields.json"
        ))
        .unwrap();
        for (name, number, kind) in FLAG_FIELDS {
            let f = table
                .iter()
                .find(|f| f["name"] == *name)
                .unwrap_or_else(|| panic!("{name} is not a DebugOptions field"));
            assert_eq!(f["number"], *number, "{name}");
            // descriptor.proto types: 5 int32, 8 bool, 9 string.
            // descriptor.proto types: 14 enum.
            let (ty, repeated) = match kind {
                FlagKind::Bool => (8, false),
                FlagKind::Int32 => (5, false),
                FlagKind::Str => (9, false),
                FlagKind::StrList => (9, true),
                FlagKind::Enum(_) => (14, false),
                FlagKind::EnumList(_) => (14, true),
            };
            assert_eq!(
                (f["type"].clone(), f["repeated"].clone()),
                (ty.into(), repeated.into()),
                "{name}"
            );
        }
    }

    #[test]
    fn enum_flags_encode_as_xla_does() {
        // JAX's own YNN fusion types, given by name, equal JAX's packed bytes.
        let mut o = CompileOptions::new();
        o.xla_flags(
            "--xla_cpu_experimental_ynn_fusion_type=individual_dot,\
             LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,reduce \
             --xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_DISABLED",
        )
        .unwrap();
        assert_eq!(o, CompileOptions::new());
        o.xla_flags(
            "--xla_cpu_experimental_ynn_fusion_type= \
             --xla_cpu_experimental_xnn_fusion_type=dot,eltwise \
             --xla_cpu_experimental_xnn_graph_fusion_mode=greedy",
        )
        .unwrap();
        let debug = sub_message(
            &sub_message(&parse(&o.encode()).unwrap(), COMPILE_BUILD_OPTIONS).unwrap(),
            BUILD_DEBUG_OPTIONS,
        )
        .unwrap();
        assert!(!debug.iter().any(|(n, _)| *n == 422));
        assert!(debug.contains(&(400, Value::Bytes(vec![1, 2]))));
        assert!(debug.contains(&(365, Value::Varint(1))));
        assert_eq!(CompileOptions::decode(&o.encode()), Some(o.clone()));
        let e = o
            .xla_flags("--xla_cpu_experimental_xnn_fusion_type=dot,conv")
            .unwrap_err();
        assert_eq!(e.value, "dot,conv");
        assert_eq!(
            e.expected,
            "a comma-separated list of the enum's value names"
        );
    }

    #[test]
    fn set_keeps_field_number_order() {
        let mut f: Fields = vec![(1, Value::Varint(1)), (5, Value::Varint(5))];
        set(&mut f, 3, vec![Value::Varint(3), Value::Varint(4)]);
        set(&mut f, 9, vec![Value::Varint(9)]);
        set(&mut f, 1, vec![]);
        assert_eq!(
            f,
            vec![
                (3, Value::Varint(3)),
                (3, Value::Varint(4)),
                (5, Value::Varint(5)),
                (9, Value::Varint(9))
            ]
        );
    }
}
