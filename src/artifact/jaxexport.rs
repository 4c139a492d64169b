//! The `jax.export` flatbuffer (`Exported.serialize()`).
//!
//! The schema is `jax/_src/export/serialization.fbs` (jax 0.11.2, serialization version 12).
//! Bytes are first checked by the `flatbuffers` crate's verifier, then read with a small
//! bounds-checked reader: nothing here can read out of bounds or panic.
//!
//! Two layouts are read: before version 10 the avals are vectors of `AbstractValue` tables
//! (`in_avals`, `out_avals`); from version 10 they are `unique_avals` plus index vectors
//! (`in_avals_idxs`, `out_avals_idxs`), and writers still fill both. The index form wins when
//! present, as in JAX's own reader.

use flatbuffers::{ForwardsUOffset, InvalidFlatbuffer, Vector, Verifiable, Verifier};

use super::{
    input_names, output_names, Artifact, ArtifactError, ArtifactKind, LeafPath, PathElem,
    ProgramFormat, MLIR_BYTECODE_MAGIC,
};
use crate::signature::{DType, Dim, Signature, TensorSpec};

const WHAT: &str = "jax.export flatbuffer";

/// The newest serialization version this reader knows (jax 0.11.2 writes 12).
pub const MAX_SERIALIZATION_VERSION: u32 = 12;

/// Deepest pytree accepted.
const MAX_TREE_DEPTH: usize = 64;
/// Most leaves / avals accepted on one side.
const MAX_LEAVES: usize = 1 << 20;

// Field slots (vtable offsets) of table `Exported`.
mod exported {
    pub const SERIALIZATION_VERSION: u16 = 4;
    pub const FUNCTION_NAME: u16 = 6;
    pub const IN_TREE: u16 = 8;
    pub const IN_AVALS: u16 = 10;
    pub const OUT_TREE: u16 = 12;
    pub const OUT_AVALS: u16 = 14;
    pub const NR_DEVICES_SHORT: u16 = 16;
    pub const PLATFORMS: u16 = 22;
    pub const ORDERED_EFFECTS: u16 = 24;
    pub const UNORDERED_EFFECTS: u16 = 26;
    pub const MLIR_MODULE_SERIALIZED: u16 = 30;
    pub const CALLING_CONVENTION_VERSION: u16 = 32;
    pub const MODULE_KEPT_VAR_IDX: u16 = 34;
    pub const USES_GLOBAL_CONSTANTS: u16 = 36;
    pub const NR_DEVICES: u16 = 40;
    pub const UNIQUE_AVALS: u16 = 42;
    pub const IN_AVALS_IDXS: u16 = 48;
    pub const OUT_AVALS_IDXS: u16 = 50;
    pub const JAX_VERSION: u16 = 56;
}

// Field slots of table `PyTreeDef`.
mod pytree {
    pub const KIND: u16 = 4;
    pub const CHILDREN: u16 = 6;
    pub const CHILDREN_NAMES: u16 = 8;
    pub const CUSTOM_NAME: u16 = 10;
    pub const CUSTOM_AUXDATA: u16 = 12;
}

// Field slots of table `AbstractValue`.
mod aval {
    pub const KIND: u16 = 4;
    pub const SHAPE: u16 = 6;
    pub const DTYPE: u16 = 8;
    pub const MEMORY_SPACE: u16 = 10;
}

// Field slot of table `Effect`.
const EFFECT_TYPE_NAME: u16 = 4;

type Strings = Vector<'static, ForwardsUOffset<&'static str>>;

struct ExportedV;
struct PyTreeV;
struct AvalV;
struct EffectV;

impl Verifiable for ExportedV {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use exported::*;
        v.visit_table(pos)?
            .visit_field::<u16>("serialization_version", SERIALIZATION_VERSION, false)?
            .visit_field::<ForwardsUOffset<&str>>("function_name", FUNCTION_NAME, false)?
            .visit_field::<ForwardsUOffset<PyTreeV>>("in_tree", IN_TREE, false)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<AvalV>>>>(
                "in_avals", IN_AVALS, false,
            )?
            .visit_field::<ForwardsUOffset<PyTreeV>>("out_tree", OUT_TREE, false)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<AvalV>>>>(
                "out_avals",
                OUT_AVALS,
                false,
            )?
            .visit_field::<i16>("nr_devices_short", NR_DEVICES_SHORT, false)?
            .visit_field::<ForwardsUOffset<Strings>>("platforms", PLATFORMS, false)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<EffectV>>>>(
                "ordered_effects",
                ORDERED_EFFECTS,
                false,
            )?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<EffectV>>>>(
                "unordered_effects",
                UNORDERED_EFFECTS,
                false,
            )?
            .visit_field::<ForwardsUOffset<Vector<u8>>>(
                "mlir_module_serialized",
                MLIR_MODULE_SERIALIZED,
                false,
            )?
            .visit_field::<u16>(
                "calling_convention_version",
                CALLING_CONVENTION_VERSION,
                false,
            )?
            .visit_field::<ForwardsUOffset<Vector<u16>>>(
                "module_kept_var_idx",
                MODULE_KEPT_VAR_IDX,
                false,
            )?
            .visit_field::<bool>("uses_global_constants", USES_GLOBAL_CONSTANTS, false)?
            .visit_field::<u32>("nr_devices", NR_DEVICES, false)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<AvalV>>>>(
                "unique_avals",
                UNIQUE_AVALS,
                false,
            )?
            .visit_field::<ForwardsUOffset<Vector<u32>>>("in_avals_idxs", IN_AVALS_IDXS, false)?
            .visit_field::<ForwardsUOffset<Vector<u32>>>("out_avals_idxs", OUT_AVALS_IDXS, false)?
            .visit_field::<ForwardsUOffset<&str>>("jax_version", JAX_VERSION, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for PyTreeV {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use pytree::*;
        v.visit_table(pos)?
            .visit_field::<i8>("kind", KIND, false)?
            .visit_field::<ForwardsUOffset<Vector<ForwardsUOffset<PyTreeV>>>>(
                "children", CHILDREN, false,
            )?
            .visit_field::<ForwardsUOffset<Strings>>("children_names", CHILDREN_NAMES, false)?
            .visit_field::<ForwardsUOffset<&str>>("custom_name", CUSTOM_NAME, false)?
            .visit_field::<ForwardsUOffset<Vector<u8>>>("custom_auxdata", CUSTOM_AUXDATA, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for AvalV {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        use aval::*;
        v.visit_table(pos)?
            .visit_field::<i8>("kind", KIND, false)?
            .visit_field::<ForwardsUOffset<Strings>>("shape", SHAPE, false)?
            .visit_field::<i8>("dtype", DTYPE, false)?
            .visit_field::<i8>("memory_space", MEMORY_SPACE, false)?
            .finish();
        Ok(())
    }
}

impl Verifiable for EffectV {
    fn run_verifier(v: &mut Verifier, pos: usize) -> Result<(), InvalidFlatbuffer> {
        v.visit_table(pos)?
            .visit_field::<ForwardsUOffset<&str>>("type_name", EFFECT_TYPE_NAME, false)?
            .finish();
        Ok(())
    }
}

fn verify(bytes: &[u8]) -> Result<(), ArtifactError> {
    let opts = flatbuffers::VerifierOptions {
        max_depth: 128,
        max_tables: 1_000_000,
        max_apparent_size: 1 << 31,
        ignore_missing_null_terminator: false,
    };
    let mut v = Verifier::new(&opts, bytes);
    <ForwardsUOffset<ExportedV>>::run_verifier(&mut v, 0).map_err(|e| {
        let detail = format!("the flatbuffer verifier refused it: {e}");
        match e {
            InvalidFlatbuffer::RangeOutOfBounds { .. }
            | InvalidFlatbuffer::SignedOffsetOutOfBounds { .. } => {
                ArtifactError::truncated(WHAT, detail)
            }
            _ => ArtifactError::corrupt(WHAT, detail),
        }
    })
}

/// A cheap sniff: does this start like a flatbuffer whose root table has a vtable?
pub fn looks_like(bytes: &[u8]) -> bool {
    let rd = Reader(bytes);
    let Ok(root) = rd.u32(0) else {
        return false;
    };
    let root = root as usize;
    if root < 8 || root % 4 != 0 || root >= bytes.len() {
        return false;
    }
    let Ok(soff) = rd.i32(root) else {
        return false;
    };
    let Some(vt) = i64::try_from(root)
        .ok()
        .and_then(|r| r.checked_sub(i64::from(soff)))
    else {
        return false;
    };
    let Ok(vt) = usize::try_from(vt) else {
        return false;
    };
    if vt < 4 || vt >= root {
        return false;
    }
    matches!(rd.u16(vt), Ok(n) if n >= 4 && n % 2 == 0)
}

/// Bounds-checked little-endian reads.
#[derive(Clone, Copy)]
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn slice(&self, pos: usize, len: usize) -> Result<&'a [u8], ArtifactError> {
        pos.checked_add(len)
            .and_then(|end| self.0.get(pos..end))
            .ok_or_else(|| {
                ArtifactError::truncated(
                    WHAT,
                    format!(
                        "expected {len} bytes at offset {pos}, the buffer has {}",
                        self.0.len()
                    ),
                )
            })
    }
    fn arr<const N: usize>(&self, pos: usize) -> Result<[u8; N], ArtifactError> {
        let s = self.slice(pos, N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&self, pos: usize) -> Result<u8, ArtifactError> {
        Ok(self.arr::<1>(pos)?[0])
    }
    fn u16(&self, pos: usize) -> Result<u16, ArtifactError> {
        Ok(u16::from_le_bytes(self.arr(pos)?))
    }
    fn u32(&self, pos: usize) -> Result<u32, ArtifactError> {
        Ok(u32::from_le_bytes(self.arr(pos)?))
    }
    fn i32(&self, pos: usize) -> Result<i32, ArtifactError> {
        Ok(i32::from_le_bytes(self.arr(pos)?))
    }
    /// Follows the uoffset stored at `pos`.
    fn deref(&self, pos: usize) -> Result<usize, ArtifactError> {
        let off = self.u32(pos)? as usize;
        pos.checked_add(off)
            .ok_or_else(|| ArtifactError::corrupt(WHAT, format!("offset overflow at {pos}")))
    }
    fn table(&self, pos: usize) -> Result<Table<'a>, ArtifactError> {
        let soff = i64::from(self.i32(pos)?);
        let vt = i64::try_from(pos)
            .ok()
            .and_then(|p| p.checked_sub(soff))
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| {
                ArtifactError::corrupt(WHAT, format!("vtable offset out of range at {pos}"))
            })?;
        let vt_len = self.u16(vt)?;
        Ok(Table {
            rd: *self,
            pos,
            vt,
            vt_len,
        })
    }
}

/// One table: bounds-checked field access.
#[derive(Clone, Copy)]
struct Table<'a> {
    rd: Reader<'a>,
    pos: usize,
    vt: usize,
    vt_len: u16,
}

impl<'a> Table<'a> {
    fn field(&self, slot: u16) -> Result<Option<usize>, ArtifactError> {
        if slot >= self.vt_len {
            return Ok(None);
        }
        let at = self
            .vt
            .checked_add(usize::from(slot))
            .ok_or_else(|| ArtifactError::corrupt(WHAT, "vtable overflow"))?;
        let off = self.rd.u16(at)?;
        if off == 0 {
            return Ok(None);
        }
        self.pos
            .checked_add(usize::from(off))
            .map(Some)
            .ok_or_else(|| ArtifactError::corrupt(WHAT, "field offset overflow"))
    }
    fn u16_or(&self, slot: u16, default: u16) -> Result<u16, ArtifactError> {
        match self.field(slot)? {
            Some(p) => self.rd.u16(p),
            None => Ok(default),
        }
    }
    fn u32_or(&self, slot: u16, default: u32) -> Result<u32, ArtifactError> {
        match self.field(slot)? {
            Some(p) => self.rd.u32(p),
            None => Ok(default),
        }
    }
    fn u8_or(&self, slot: u16, default: u8) -> Result<u8, ArtifactError> {
        match self.field(slot)? {
            Some(p) => self.rd.u8(p),
            None => Ok(default),
        }
    }
    fn i8_or(&self, slot: u16, default: i8) -> Result<i8, ArtifactError> {
        Ok(i8::from_le_bytes([
            self.u8_or(slot, default.to_le_bytes()[0])?
        ]))
    }
    fn i16_or(&self, slot: u16, default: i16) -> Result<i16, ArtifactError> {
        Ok(i16::from_le_bytes(
            self.u16_or(slot, u16::from_le_bytes(default.to_le_bytes()))?
                .to_le_bytes(),
        ))
    }
    fn sub_table(&self, slot: u16) -> Result<Option<Table<'a>>, ArtifactError> {
        match self.field(slot)? {
            Some(p) => Ok(Some(self.rd.table(self.rd.deref(p)?)?)),
            None => Ok(None),
        }
    }
    /// (start of elements, element count) of a vector field.
    fn vector(&self, slot: u16) -> Result<Option<(usize, usize)>, ArtifactError> {
        match self.field(slot)? {
            Some(p) => {
                let v = self.rd.deref(p)?;
                let len = self.rd.u32(v)? as usize;
                let start = v
                    .checked_add(4)
                    .ok_or_else(|| ArtifactError::corrupt(WHAT, "vector offset overflow"))?;
                Ok(Some((start, len)))
            }
            None => Ok(None),
        }
    }
    fn bytes(&self, slot: u16) -> Result<Option<&'a [u8]>, ArtifactError> {
        match self.vector(slot)? {
            Some((start, len)) => Ok(Some(self.rd.slice(start, len)?)),
            None => Ok(None),
        }
    }
    fn string(&self, slot: u16) -> Result<Option<&'a str>, ArtifactError> {
        match self.bytes(slot)? {
            Some(b) => Ok(Some(std::str::from_utf8(b).map_err(|e| {
                ArtifactError::corrupt(WHAT, format!("string is not UTF-8: {e}"))
            })?)),
            None => Ok(None),
        }
    }
    fn elem_pos(start: usize, i: usize, size: usize) -> Result<usize, ArtifactError> {
        i.checked_mul(size)
            .and_then(|o| start.checked_add(o))
            .ok_or_else(|| ArtifactError::corrupt(WHAT, "vector element offset overflow"))
    }
    fn tables(&self, slot: u16) -> Result<Vec<Table<'a>>, ArtifactError> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(Vec::new());
        };
        check_count(len)?;
        let mut out = Vec::with_capacity(len.min(1024));
        for i in 0..len {
            let p = Self::elem_pos(start, i, 4)?;
            out.push(self.rd.table(self.rd.deref(p)?)?);
        }
        Ok(out)
    }
    fn strings(&self, slot: u16) -> Result<Vec<&'a str>, ArtifactError> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(Vec::new());
        };
        check_count(len)?;
        let mut out = Vec::with_capacity(len.min(1024));
        for i in 0..len {
            let p = self.rd.deref(Self::elem_pos(start, i, 4)?)?;
            let n = self.rd.u32(p)? as usize;
            let b = self.rd.slice(
                p.checked_add(4)
                    .ok_or_else(|| ArtifactError::corrupt(WHAT, "string offset overflow"))?,
                n,
            )?;
            out.push(
                std::str::from_utf8(b).map_err(|e| {
                    ArtifactError::corrupt(WHAT, format!("string is not UTF-8: {e}"))
                })?,
            );
        }
        Ok(out)
    }
    fn u16s(&self, slot: u16) -> Result<Option<Vec<u16>>, ArtifactError> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(None);
        };
        check_count(len)?;
        let mut out = Vec::with_capacity(len.min(1024));
        for i in 0..len {
            out.push(self.rd.u16(Self::elem_pos(start, i, 2)?)?);
        }
        Ok(Some(out))
    }
    fn u32s(&self, slot: u16) -> Result<Vec<u32>, ArtifactError> {
        let Some((start, len)) = self.vector(slot)? else {
            return Ok(Vec::new());
        };
        check_count(len)?;
        let mut out = Vec::with_capacity(len.min(1024));
        for i in 0..len {
            out.push(self.rd.u32(Self::elem_pos(start, i, 4)?)?);
        }
        Ok(out)
    }
}

fn check_count(len: usize) -> Result<(), ArtifactError> {
    if len > MAX_LEAVES {
        return Err(ArtifactError::unsupported(
            "vectors over 2^20 elements",
            format!("a vector announces {len} elements"),
        ));
    }
    Ok(())
}

/// The dtype enum of the schema, mapped to ours or named for the error.
fn dtype(code: i8) -> Result<DType, ArtifactError> {
    Ok(match code {
        0 => DType::Bool,
        1 => DType::I8,
        2 => DType::I16,
        3 => DType::I32,
        4 => DType::I64,
        5 => DType::U8,
        6 => DType::U16,
        7 => DType::U32,
        8 => DType::U64,
        9 => DType::F16,
        10 => DType::F32,
        11 => DType::F64,
        14 => DType::BF16,
        12 => DType::C64,
        13 => DType::C128,
        _ => {
            let name = match code {
                15 => "int4",
                16 => "uint4",
                17 => "float8_e4m3b11fnuz",
                18 => "float8_e4m3fn",
                19 => "float8_e4m3fnuz",
                20 => "float8_e5m2",
                21 => "float8_e5m2fnuz",
                22 => "float0",
                23 => "float8_e4m3",
                24 => "float8_e3m4",
                25 => "float8_e8m0fnu",
                26 => "float4_e2m1fn",
                _ => {
                    return Err(ArtifactError::corrupt(
                        WHAT,
                        format!("unknown dtype code {code} (expected 0..=29)"),
                    ))
                }
            };
            return Err(ArtifactError::unsupported(
                format!("dtype {name}"),
                "supported dtypes are bool, (u)int8..64, float16, bfloat16, float32, float64, \
                 complex64, complex128 and typed PRNG keys; export with one of them (e.g. \
                 `x.astype(jnp.float32)` at the boundary)",
            ));
        }
    })
}

/// Parses one dimension as `jax.export` writes it: an integer or a symbolic expression.
pub(crate) fn parse_dim(s: &str, what: &'static str) -> Result<Dim, ArtifactError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(ArtifactError::corrupt(what, "empty dimension"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return t.parse::<u64>().map(Dim::Static).map_err(|_| {
            ArtifactError::unsupported("dimensions over 2^64", format!("dimension {t}"))
        });
    }
    if let Some(rest) = t.strip_prefix('-') {
        if rest.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ArtifactError::corrupt(
                what,
                format!("negative dimension {t}"),
            ));
        }
    }
    Ok(Dim::Symbolic(t.to_string()))
}

struct Aval {
    dtype: DType,
    shape: Vec<Dim>,
    jax_type: Option<String>,
}

fn read_aval(t: &Table<'_>) -> Result<Aval, ArtifactError> {
    let kind = t.i8_or(aval::KIND, 0)?;
    match kind {
        0 => {}
        1 => {
            return Err(ArtifactError::unsupported(
                "token inputs or outputs",
                "an aval is an abstract token",
            ))
        }
        k => {
            return Err(ArtifactError::corrupt(
                WHAT,
                format!("unknown aval kind {k} (expected 0 shapedArray or 1 abstractToken)"),
            ))
        }
    }
    let code = t.i8_or(aval::DTYPE, 0)?;
    let mut shape = t
        .strings(aval::SHAPE)?
        .into_iter()
        .map(|s| parse_dim(s, WHAT))
        .collect::<Result<Vec<_>, _>>()?;
    // A typed PRNG key is passed to @main as its uint32 data: threefry keys are 2 words,
    // rbg and unsafe_rbg keys 4 (jax/_src/prng.py key shapes).
    if let Some((key, words)) = match code {
        27 => Some(("fry", 2)),
        28 => Some(("rbg", 4)),
        29 => Some(("unsafe_rbg", 4)),
        _ => None,
    } {
        let dims: Vec<String> = shape.iter().map(Dim::to_string).collect();
        let jax_type = format!("key<{key}>[{}]", dims.join(","));
        shape.push(Dim::Static(words));
        return Ok(Aval {
            dtype: DType::U32,
            shape,
            jax_type: Some(jax_type),
        });
    }
    Ok(Aval {
        dtype: dtype(code)?,
        shape,
        jax_type: None,
    })
}

/// Reads one side's avals: the v10+ index form when present, else the pre-v10 table vector.
fn read_avals(
    root: &Table<'_>,
    uniques: &[Table<'_>],
    idx_slot: u16,
    avals_slot: u16,
) -> Result<Vec<Aval>, ArtifactError> {
    let idxs = root.u32s(idx_slot)?;
    if !idxs.is_empty() {
        return idxs
            .into_iter()
            .map(|i| {
                let t = uniques.get(i as usize).ok_or_else(|| {
                    ArtifactError::corrupt(
                        WHAT,
                        format!(
                            "aval index {i} is out of range (unique_avals has {})",
                            uniques.len()
                        ),
                    )
                })?;
                read_aval(t)
            })
            .collect();
    }
    root.tables(avals_slot)?.iter().map(read_aval).collect()
}

/// A pytree leaf path as read from the flatbuffer: raw steps from the root.
fn tree_leaves(
    t: &Table<'_>,
    prefix: &mut Vec<PathElem>,
    out: &mut Vec<Vec<PathElem>>,
    depth: usize,
) -> Result<(), ArtifactError> {
    if depth > MAX_TREE_DEPTH {
        return Err(ArtifactError::unsupported(
            "pytrees deeper than 64",
            "the pytree nests too deeply",
        ));
    }
    if out.len() > MAX_LEAVES {
        return Err(ArtifactError::unsupported(
            "pytrees over 2^20 leaves",
            "too many leaves",
        ));
    }
    let kind = t.i8_or(pytree::KIND, 0)?;
    let children = t.tables(pytree::CHILDREN)?;
    let keys: Vec<Option<PathElem>> = match kind {
        0 => {
            if !children.is_empty() {
                return Err(ArtifactError::corrupt(WHAT, "a pytree leaf has children"));
            }
            out.push(prefix.clone());
            return Ok(());
        }
        1 => return Ok(()),
        2 | 3 => vec![None; children.len()],
        4 => {
            let names = t.strings(pytree::CHILDREN_NAMES)?;
            if names.len() != children.len() {
                return Err(ArtifactError::corrupt(
                    WHAT,
                    format!(
                        "a dict node has {} children but {} keys",
                        children.len(),
                        names.len()
                    ),
                ));
            }
            names
                .into_iter()
                .map(|s| Some(PathElem::Key(s.to_string())))
                .collect()
        }
        5 => {
            // Named tuples store their field names as a JSON list of strings.
            let aux = t.bytes(pytree::CUSTOM_AUXDATA)?.unwrap_or(&[]);
            match parse_json_string_list(aux) {
                Some(names) if names.len() == children.len() => {
                    names.into_iter().map(|n| Some(PathElem::Attr(n))).collect()
                }
                _ => vec![None; children.len()],
            }
        }
        k => {
            return Err(ArtifactError::corrupt(
                WHAT,
                format!("unknown pytree node kind {k} (expected 0..=5)"),
            ))
        }
    };
    for (i, (child, key)) in children.iter().zip(keys).enumerate() {
        prefix.push(key.unwrap_or(PathElem::Index(i)));
        let r = tree_leaves(child, prefix, out, depth.saturating_add(1));
        prefix.pop();
        r?;
    }
    Ok(())
}

/// Parses `["a", "b"]` (plain strings, simple escapes); `None` for anything else.
fn parse_json_string_list(bytes: &[u8]) -> Option<Vec<String>> {
    let s = std::str::from_utf8(bytes).ok()?.trim();
    let inner = s.strip_prefix('[')?.strip_suffix(']')?.trim();
    let mut out = Vec::new();
    if inner.is_empty() {
        return Some(out);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next()? != '"' {
            return None;
        }
        let mut cur = String::new();
        loop {
            match chars.next()? {
                '"' => break,
                '\\' => match chars.next()? {
                    c @ ('"' | '\\' | '/') => cur.push(c),
                    _ => return None,
                },
                c => cur.push(c),
            }
        }
        out.push(cur);
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            None => return Some(out),
            Some(',') => {}
            Some(_) => return None,
        }
    }
}

/// Turns raw input-tree leaf paths into [`LeafPath`]s.
///
/// JAX's input tree is `((positional...), {keyword: ...})`: a positional argument's base is
/// `argN`, a keyword's its name.
pub(crate) fn input_paths(raw: Vec<Vec<PathElem>>, args_kwargs: bool) -> Vec<LeafPath> {
    raw.into_iter()
        .map(|p| {
            let mut it = p.into_iter();
            if args_kwargs {
                match (it.next(), it.next()) {
                    (Some(PathElem::Index(0)), Some(PathElem::Index(i))) => {
                        return LeafPath {
                            base: format!("arg{i}"),
                            elems: it.collect(),
                        }
                    }
                    (Some(PathElem::Index(1)), Some(PathElem::Key(k))) => {
                        return LeafPath {
                            base: k,
                            elems: it.collect(),
                        }
                    }
                    _ => {}
                }
            }
            LeafPath {
                base: "args".into(),
                elems: it.collect(),
            }
        })
        .collect()
}

fn is_args_kwargs(t: &Table<'_>) -> Result<bool, ArtifactError> {
    if t.i8_or(pytree::KIND, 0)? != 2 {
        return Ok(false);
    }
    let ch = t.tables(pytree::CHILDREN)?;
    match ch.as_slice() {
        [a, k] => Ok(a.i8_or(pytree::KIND, 0)? == 2 && k.i8_or(pytree::KIND, 0)? == 4),
        _ => Ok(false),
    }
}

fn specs(avals: Vec<Aval>, names: Vec<String>) -> Vec<TensorSpec> {
    avals
        .into_iter()
        .zip(names)
        .map(|(a, name)| TensorSpec {
            name,
            dtype: a.dtype,
            shape: a.shape,
            jax_type: a.jax_type,
        })
        .collect()
}

/// Reads a `jax.export` flatbuffer.
///
/// # Errors
/// [`ArtifactError::Truncated`] / [`ArtifactError::Corrupt`] when the verifier or the reader
/// refuse the bytes, [`ArtifactError::Unsupported`] for a newer serialization version or an
/// unsupported dtype.
pub fn load(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    if bytes.len() < 8 {
        return Err(ArtifactError::truncated(
            WHAT,
            format!("expected at least 8 bytes, found {}", bytes.len()),
        ));
    }
    verify(bytes)?;
    let rd = Reader(bytes);
    let root = rd.table(rd.deref(0)?)?;

    let version = u32::from(root.u16_or(exported::SERIALIZATION_VERSION, 0)?);
    if version > MAX_SERIALIZATION_VERSION {
        let by = root
            .string(exported::JAX_VERSION)?
            .map(|v| format!(" (written by JAX {v})"))
            .unwrap_or_default();
        return Err(ArtifactError::unsupported(
            format!("jax.export serialization version {version}"),
            format!(
                "the artifact{by} is newer than the newest version this build reads \
                 ({MAX_SERIALIZATION_VERSION}, jax 0.11.2)"
            ),
        ));
    }

    let program = root
        .bytes(exported::MLIR_MODULE_SERIALIZED)?
        .unwrap_or(&[])
        .to_vec();
    if program.is_empty() {
        return Err(ArtifactError::corrupt(
            WHAT,
            "mlir_module_serialized is missing or empty",
        ));
    }
    if program.starts_with(MLIR_BYTECODE_MAGIC) {
        super::mlir::check_bytecode(&program)?;
    } else if !super::mlir::looks_like_text(&program) {
        return Err(ArtifactError::corrupt(
            WHAT,
            "mlir_module_serialized is neither MLIR bytecode (magic ML\\xefR) nor MLIR text",
        ));
    }

    let uniques = root.tables(exported::UNIQUE_AVALS)?;
    let in_avals = read_avals(&root, &uniques, exported::IN_AVALS_IDXS, exported::IN_AVALS)?;
    let out_avals = read_avals(
        &root,
        &uniques,
        exported::OUT_AVALS_IDXS,
        exported::OUT_AVALS,
    )?;

    let mut in_raw = Vec::new();
    let args_kwargs = if let Some(t) = root.sub_table(exported::IN_TREE)? {
        tree_leaves(&t, &mut Vec::new(), &mut in_raw, 0)?;
        is_args_kwargs(&t)?
    } else {
        in_raw = (0..in_avals.len())
            .map(|i| vec![PathElem::Index(0), PathElem::Index(i)])
            .collect();
        true
    };
    let mut out_raw = Vec::new();
    if let Some(t) = root.sub_table(exported::OUT_TREE)? {
        tree_leaves(&t, &mut Vec::new(), &mut out_raw, 0)?;
    } else {
        out_raw = (0..out_avals.len())
            .map(|i| vec![PathElem::Index(i)])
            .collect();
    }
    if in_raw.len() != in_avals.len() {
        return Err(ArtifactError::corrupt(
            WHAT,
            format!(
                "in_tree has {} leaves but there are {} input avals",
                in_raw.len(),
                in_avals.len()
            ),
        ));
    }
    if out_raw.len() != out_avals.len() {
        return Err(ArtifactError::corrupt(
            WHAT,
            format!(
                "out_tree has {} leaves but there are {} output avals",
                out_raw.len(),
                out_avals.len()
            ),
        ));
    }
    let input_paths = input_paths(in_raw, args_kwargs);
    let in_names = input_names(&input_paths);
    let out_names = output_names(&out_raw);

    let n_in = in_avals.len();
    let kept_inputs = match root.u16s(exported::MODULE_KEPT_VAR_IDX)? {
        None => None,
        Some(k) => {
            let k: Vec<usize> = k.into_iter().map(usize::from).collect();
            let mut prev: Option<usize> = None;
            for &i in &k {
                if i >= n_in || prev.is_some_and(|p| p >= i) {
                    return Err(ArtifactError::corrupt(
                        WHAT,
                        format!(
                            "module_kept_var_idx {k:?} is not strictly increasing below the \
                             {n_in} inputs"
                        ),
                    ));
                }
                prev = Some(i);
            }
            if k.len() == n_in {
                None
            } else {
                Some(k)
            }
        }
    };

    let effects = |slot: u16| -> Result<Vec<String>, ArtifactError> {
        root.tables(slot)?
            .iter()
            .map(|t| Ok(t.string(EFFECT_TYPE_NAME)?.unwrap_or("").to_string()))
            .collect()
    };
    let ordered_effects = effects(exported::ORDERED_EFFECTS)?;
    let unordered_effects = effects(exported::UNORDERED_EFFECTS)?;

    let mut nr_devices = root.u32_or(exported::NR_DEVICES, 0)?;
    if nr_devices == 0 {
        let short = root.i16_or(exported::NR_DEVICES_SHORT, 1)?;
        nr_devices = u32::try_from(short).unwrap_or(0).max(1);
    }
    let platforms: Vec<String> = root
        .strings(exported::PLATFORMS)?
        .into_iter()
        .map(|p| p.to_ascii_lowercase())
        .collect();
    let ccv = root.u16_or(exported::CALLING_CONVENTION_VERSION, 0)?;

    let signature = Signature {
        inputs: specs(in_avals, in_names),
        outputs: specs(out_avals, out_names),
    };
    let uses_shape_polymorphism = signature
        .inputs
        .iter()
        .chain(&signature.outputs)
        .any(TensorSpec::is_polymorphic);
    Ok(Artifact {
        kind: ArtifactKind::JaxExport,
        program,
        format: ProgramFormat::Mlir,
        signature: Some(signature),
        platforms,
        calling_convention_version: (ccv != 0).then_some(u32::from(ccv)),
        kept_inputs,
        ordered_effects,
        unordered_effects,
        nr_devices,
        serialization_version: (version != 0).then_some(version),
        uses_shape_polymorphism,
        platform_index_dtype: None,
        input_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_list() {
        assert_eq!(
            parse_json_string_list(br#"["q", "r"]"#),
            Some(vec!["q".to_string(), "r".to_string()])
        );
        assert_eq!(parse_json_string_list(b"[]"), Some(vec![]));
        assert_eq!(parse_json_string_list(b"[1]"), None);
        assert_eq!(parse_json_string_list(br#"["a""#), None);
    }

    #[test]
    fn dims() {
        assert!(matches!(parse_dim("8", WHAT), Ok(Dim::Static(8))));
        assert!(matches!(parse_dim("2*b", WHAT), Ok(Dim::Symbolic(s)) if s == "2*b"));
        assert!(parse_dim("-3", WHAT).is_err());
        assert!(parse_dim("", WHAT).is_err());
    }
}
