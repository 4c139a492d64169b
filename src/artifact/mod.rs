//! Reading model artifacts: `jax.export` flatbuffers, StableHLO (text or bytecode) and HLO protos.
//!
//! [`load`] sniffs the format, extracts the bytes to hand to PJRT and, where the bytes say, the
//! user-facing [`Signature`]. Every parser here is pure safe Rust and treats its input as
//! untrusted: corrupt, truncated or hostile bytes give an [`ArtifactError`], never a panic.
//!
//! # Input and output names
//!
//! Every leaf of the input and output pytrees gets one name, in the form
//! `jax.tree_util.keystr` prints a key path: `['key']` for a dict key, `[i]` for a list, tuple
//! or unnamed custom-node child, `.field` for a named-tuple field. The rule ([`input_names`],
//! [`output_names`]):
//! - an input's full name is its top-level argument's name followed by the keystr of the path
//!   below it: `params['Dense_0']['kernel']`, `trainable[0]`, `x`. The argument's name is JAX's
//!   own (the `loc("...")` of the `@main` argument, which JAX writes as exactly this full name;
//!   for a `jax.export` artifact it reaches us through the compiled module's parameter metadata,
//!   see [`crate::Model::signature`]), else the keyword's name, else `argN` (`N` = positional
//!   index);
//! - when all inputs are leaves of one dict argument (`f(inputs)` with `inputs = {"a": ..}`),
//!   that argument's name and the brackets of the first key are dropped: `a`, `a['b']`;
//! - an output whose path starts with a dict key is named like that (`label`, `logits['x']`);
//!   an output without any dict key on its path is `outN` (`N` = flat output index); any other
//!   is `result` followed by its keystr (`result[0]['a']`), as in JAX's `jax.result_info`;
//! - a name that would still be used twice gets a `_N` suffix on every use.
//!
//! The same names are used everywhere: `inspect`, policy files (quote them as TOML keys:
//! `[inputs."params['Dense_0']['kernel']"]`), HTTP metadata and requests, and errors.

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

pub mod hlo;
pub mod jaxexport;
pub mod mlir;
pub mod params;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::signature::{Dim, Signature, TensorSpec};

/// The program format PJRT is asked to compile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProgramFormat {
    /// StableHLO / MLIR, as text or portable bytecode.
    Mlir,
    /// A serialized `xla.HloModuleProto`.
    Hlo,
}

impl ProgramFormat {
    /// The format name `PJRT_Client_Compile` expects (`"mlir"` or `"hlo"`).
    pub fn pjrt_name(self) -> &'static str {
        match self {
            ProgramFormat::Mlir => "mlir",
            ProgramFormat::Hlo => "hlo",
        }
    }
}

/// What kind of file an artifact was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ArtifactKind {
    /// A `jax.export` `Exported.serialize()` flatbuffer.
    JaxExport,
    /// StableHLO text (`Exported.mlir_module()`).
    StableHloText,
    /// MLIR / StableHLO portable bytecode (`Exported.mlir_module_serialized`).
    StableHloBytecode,
    /// A serialized `xla.HloModuleProto`.
    HloProto,
}

impl fmt::Display for ArtifactKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArtifactKind::JaxExport => "jax.export artifact",
            ArtifactKind::StableHloText => "StableHLO text",
            ArtifactKind::StableHloBytecode => "StableHLO bytecode",
            ArtifactKind::HloProto => "HLO module proto",
        })
    }
}

/// A loaded artifact: the program bytes for PJRT and what is known about its calling convention.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    /// What the bytes were.
    pub kind: ArtifactKind,
    /// The bytes handed to PJRT compile.
    pub program: Vec<u8>,
    /// The format of [`Artifact::program`].
    pub format: ProgramFormat,
    /// User-facing inputs (all of them, including ones the module dropped) and outputs; `None`
    /// where the bytes do not say (MLIR bytecode, an HLO proto without a program shape).
    pub signature: Option<Signature>,
    /// Lowercase platform names the module was lowered for (`["cpu"]`, `["cpu", "cuda"]`);
    /// empty when unknown.
    pub platforms: Vec<String>,
    /// The `jax.export` calling convention version, when known.
    pub calling_convention_version: Option<u32>,
    /// Indices of the user inputs the module actually takes (`module_kept_var_idx`); `None`
    /// means all of them.
    pub kept_inputs: Option<Vec<usize>>,
    /// Ordered effects (their type names); the module then takes and returns tokens.
    pub ordered_effects: Vec<String>,
    /// Unordered effects (their type names).
    pub unordered_effects: Vec<String>,
    /// Number of devices the module was exported for (1 when unknown).
    pub nr_devices: u32,
    /// The `jax.export` flatbuffer serialization version, when recorded.
    pub serialization_version: Option<u32>,
    /// True if the module is shape-polymorphic (has symbolic dimensions).
    pub uses_shape_polymorphism: bool,
    /// The dtype of the leading platform-index argument, when the module has one and the bytes
    /// say which (`int32`, or `int64` for an export made with `jax_enable_x64`).
    pub platform_index_dtype: Option<crate::signature::DType>,
    /// The pytree path of each user input, in signature order; empty when the bytes do not
    /// say (bytecode, HLO protos). The signature's input names are [`input_names`] of these.
    pub input_paths: Vec<LeafPath>,
}

/// Why an artifact could not be read or is not supported.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum ArtifactError {
    /// The bytes end before a structure they announce.
    #[error("truncated {what}: {detail}")]
    Truncated {
        /// The structure being read (`jax.export flatbuffer`, `HLO module proto`, ...).
        what: &'static str,
        /// What was expected and what was found.
        detail: String,
    },
    /// The bytes are malformed.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// The structure being read.
        what: &'static str,
        /// What was expected and what was found.
        detail: String,
    },
    /// The bytes are none of the known artifact formats.
    #[error(
        "unknown artifact format: expected a jax.export flatbuffer, StableHLO text, MLIR bytecode \
         (magic \"ML\\xefR\") or an HLO module proto; found {found}"
    )]
    UnknownFormat {
        /// A short description of the first bytes.
        found: String,
    },
    /// The artifact uses a feature this version does not support.
    #[error("{feature} is not supported yet: {detail}")]
    Unsupported {
        /// The feature (`ordered effects`, `shape polymorphism`, `dtype float8_e4m3fn`, ...).
        feature: Cow<'static, str>,
        /// Details: where it occurs, what would be needed.
        detail: String,
    },
    /// The artifact was made for other platforms than the one asked for.
    #[error("the artifact was exported for platforms {available:?}, not for {requested:?}")]
    PlatformNotInArtifact {
        /// The platform asked for.
        requested: String,
        /// The platforms in the artifact.
        available: Vec<String>,
    },
    /// A file could not be read.
    #[error("cannot read artifact {}: {error}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message; not also returned by `source()`).
        error: std::io::Error,
    },
    /// An error in a named file.
    #[error("{}: {error}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error (in the message; not also returned by `source()`).
        error: Box<ArtifactError>,
    },
}

impl ArtifactError {
    pub(crate) fn corrupt(what: &'static str, detail: impl Into<String>) -> ArtifactError {
        ArtifactError::Corrupt {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn truncated(what: &'static str, detail: impl Into<String>) -> ArtifactError {
        ArtifactError::Truncated {
            what,
            detail: detail.into(),
        }
    }

    pub(crate) fn unsupported(
        feature: impl Into<Cow<'static, str>>,
        detail: impl Into<String>,
    ) -> ArtifactError {
        ArtifactError::Unsupported {
            feature: feature.into(),
            detail: detail.into(),
        }
    }

    /// The error without the file wrapper added by [`load_file`].
    pub fn root(&self) -> &ArtifactError {
        match self {
            ArtifactError::InFile { error, .. } => error.root(),
            other => other,
        }
    }
}

/// The largest artifact [`load`] accepts (2 GiB, the flatbuffer and protobuf limit).
pub const MAX_ARTIFACT_BYTES: usize = 1 << 31;

/// The four-byte magic of MLIR bytecode.
pub const MLIR_BYTECODE_MAGIC: &[u8; 4] = b"ML\xefR";

/// Reads an artifact from its bytes, sniffing the format.
///
/// Order: MLIR bytecode (magic `ML\xefR`), StableHLO text (UTF-8 with a `module` or `func.func`),
/// a `jax.export` flatbuffer (verified), an HLO module proto.
///
/// # Errors
/// [`ArtifactError::UnknownFormat`] when the bytes are none of these; a typed error when they
/// look like one but are corrupt, truncated or use an unsupported feature.
pub fn load(bytes: &[u8]) -> Result<Artifact, ArtifactError> {
    if bytes.is_empty() {
        return Err(ArtifactError::UnknownFormat {
            found: "an empty file".into(),
        });
    }
    if bytes.len() > MAX_ARTIFACT_BYTES {
        return Err(ArtifactError::unsupported(
            "artifacts over 2 GiB",
            format!("the artifact has {} bytes", bytes.len()),
        ));
    }
    if bytes.starts_with(MLIR_BYTECODE_MAGIC) {
        return mlir::load_bytecode(bytes);
    }
    if mlir::looks_like_text(bytes) {
        return mlir::load_text(bytes);
    }
    if bytes.starts_with(b"ML") && bytes.len() < 4 {
        return Err(ArtifactError::truncated(
            "MLIR bytecode",
            format!("expected the 4-byte magic, found {} bytes", bytes.len()),
        ));
    }
    let fb_err = match jaxexport::load(bytes) {
        Ok(a) => return Ok(a),
        Err(e) => e,
    };
    if jaxexport::looks_like(bytes) {
        return Err(fb_err);
    }
    if let Some(a) = hlo::try_load(bytes)? {
        return Ok(a);
    }
    Err(ArtifactError::UnknownFormat {
        found: describe_prefix(bytes),
    })
}

/// Reads an artifact from a file; errors name the file.
///
/// # Errors
/// [`ArtifactError::Io`] when the file cannot be read, otherwise [`ArtifactError::InFile`]
/// wrapping the error of [`load`].
pub fn load_file(path: &Path) -> Result<Artifact, ArtifactError> {
    let bytes = std::fs::read(path).map_err(|source| ArtifactError::Io {
        path: path.to_path_buf(),
        error: source,
    })?;
    load(&bytes).map_err(|e| ArtifactError::InFile {
        path: path.to_path_buf(),
        error: Box::new(e),
    })
}

fn describe_prefix(bytes: &[u8]) -> String {
    let head: Vec<String> = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes starting {}", bytes.len(), head.join(" "))
}

impl Artifact {
    /// Refuses what the host cannot run yet: ordered effects, symbolic (shape-polymorphic)
    /// dimensions, and modules for more than one device.
    ///
    /// # Errors
    /// [`ArtifactError::Unsupported`] naming the feature and where it occurs.
    pub fn check_supported(&self) -> Result<(), ArtifactError> {
        if !self.ordered_effects.is_empty() {
            return Err(ArtifactError::unsupported(
                "ordered effects",
                format!(
                    "the module has ordered effects {:?}; running it needs effect tokens",
                    self.ordered_effects
                ),
            ));
        }
        if self.nr_devices > 1 {
            return Err(ArtifactError::unsupported(
                "multi-device modules",
                format!(
                    "the module was exported for {} devices; only 1 is supported",
                    self.nr_devices
                ),
            ));
        }
        if let Some(sig) = &self.signature {
            let all = sig
                .inputs
                .iter()
                .map(|s| ("input", s))
                .chain(sig.outputs.iter().map(|s| ("output", s)));
            // A jax.export artifact names its dimension variables (`b`, `2*b`) and carries the
            // portable module the refiner takes; other forms only say `?`.
            let named = self.kind == ArtifactKind::JaxExport && self.format == ProgramFormat::Mlir;
            for (side, spec) in all {
                if let Some(Dim::Symbolic(sym)) =
                    spec.shape.iter().find(|d| matches!(d, Dim::Symbolic(_)))
                {
                    if named {
                        continue;
                    }
                    return Err(ArtifactError::unsupported(
                        "shape polymorphism",
                        format!(
                            "{side} {:?} has symbolic dimension {sym:?} ({}); a {} does not \
                             name its dimension variables: serve the jax.export artifact \
                             (`Exported.serialize()`), or export with concrete shapes",
                            spec.name,
                            spec.type_string(),
                            self.kind
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// True for a shape-polymorphic artifact: some input has a symbolic dimension.
    pub fn is_polymorphic(&self) -> bool {
        self.signature
            .as_ref()
            .is_some_and(|s| s.inputs.iter().any(TensorSpec::is_polymorphic))
    }

    /// True when the artifact names no platforms, or names `platform` (`cuda` and `gpu` are the
    /// same, as are `cpu` and `host`).
    pub fn supports_platform(&self, platform: &str) -> bool {
        let want = canonical_platform(platform);
        self.platforms.is_empty() || self.platforms.iter().any(|p| canonical_platform(p) == want)
    }

    /// The value of the leading platform-index argument for `platform`.
    ///
    /// When the module was lowered for more than one platform its first argument is the index
    /// of the platform it runs on. `platform` is a PJRT platform name (`cpu`, `cuda`, `gpu`,
    /// `rocm`, `tpu`); `cuda` and `gpu` name the same thing.
    ///
    /// # Errors
    /// [`ArtifactError::PlatformNotInArtifact`] when the module has several platforms and none
    /// matches; [`ArtifactError::Unsupported`] when the module takes a platform index but the
    /// artifact does not list its platforms (StableHLO text).
    pub fn platform_index(&self, platform: &str) -> Result<Option<i32>, ArtifactError> {
        if self.platforms.len() <= 1 {
            if self.platforms.is_empty() && self.platform_index_dtype.is_some() {
                return Err(ArtifactError::unsupported(
                    "multi-platform StableHLO without its platform list",
                    "@main takes a platform index but the text does not say which platforms the indices stand for; load the jax.export artifact instead",
                ));
            }
            return Ok(None);
        }
        let want = canonical_platform(platform);
        for (i, p) in self.platforms.iter().enumerate() {
            if canonical_platform(p) == want {
                let idx = i32::try_from(i).map_err(|_| {
                    ArtifactError::corrupt("platform list", "more than 2^31 platforms")
                })?;
                return Ok(Some(idx));
            }
        }
        Err(ArtifactError::PlatformNotInArtifact {
            requested: platform.to_string(),
            available: self.platforms.clone(),
        })
    }
}

fn canonical_platform(p: &str) -> String {
    let p = p.trim().to_ascii_lowercase();
    match p.as_str() {
        "gpu" | "cuda" => "cuda".to_string(),
        "host" => "cpu".to_string(),
        _ => p,
    }
}

/// One step of a pytree key path.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathElem {
    /// A dict key, printed `['key']`.
    Key(String),
    /// A list, tuple or unnamed custom-node child, printed `[i]`.
    Index(usize),
    /// A named-tuple field, printed `.field`.
    Attr(String),
}

/// The pytree path of one leaf: its top-level argument and the steps below it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeafPath {
    /// The top-level argument's name (`x`, `params`, a keyword, `argN` when unknown); unused
    /// for outputs.
    pub base: String,
    /// Steps below the top level.
    pub elems: Vec<PathElem>,
}

impl LeafPath {
    /// The full name: the base followed by [`keystr`] of the steps (`params['w'][0]`).
    pub fn full_name(&self) -> String {
        let mut s = self.base.clone();
        s.push_str(&keystr(&self.elems));
        s
    }

    /// True when the base is a positional placeholder (`argN`), not a known name.
    pub(crate) fn has_placeholder_base(&self) -> bool {
        self.base
            .strip_prefix("arg")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit()))
    }
}

/// A string as Python's `repr` prints it (how `keystr` quotes dict keys).
fn py_repr(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len().saturating_add(2));
    out.push(q);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// The steps of a path as `jax.tree_util.keystr` prints them: `['a'][0].b`.
pub fn keystr(elems: &[PathElem]) -> String {
    let mut s = String::new();
    for e in elems {
        match e {
            PathElem::Key(k) => {
                s.push('[');
                s.push_str(&py_repr(k));
                s.push(']');
            }
            PathElem::Index(i) => {
                s.push('[');
                s.push_str(&i.to_string());
                s.push(']');
            }
            PathElem::Attr(a) => {
                s.push('.');
                s.push_str(a);
            }
        }
    }
    s
}

/// Gives every name used more than once a `_N` suffix on each use (the last rule).
fn uniquify(names: Vec<String>) -> Vec<String> {
    let mut used: HashMap<String, usize> = HashMap::new();
    for n in &names {
        let c = used.entry(n.clone()).or_insert(0);
        *c = c.saturating_add(1);
    }
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        if used.get(&n).copied().unwrap_or(0) > 1 || taken.contains(&n) {
            let mut k: usize = 1;
            loop {
                let cand = format!("{n}_{k}");
                if !taken.contains(&cand) && !used.contains_key(&cand) {
                    taken.insert(cand.clone());
                    out.push(cand);
                    break;
                }
                k = k.saturating_add(1);
            }
        } else {
            taken.insert(n.clone());
            out.push(n);
        }
    }
    out
}

/// The input names of the naming rule (module docs) for these leaf paths.
pub fn input_names(paths: &[LeafPath]) -> Vec<String> {
    let one_dict_arg = paths.first().is_some_and(|first| {
        paths
            .iter()
            .all(|p| p.base == first.base && matches!(p.elems.first(), Some(PathElem::Key(_))))
    });
    let names = paths
        .iter()
        .map(|p| match (one_dict_arg, p.elems.split_first()) {
            (true, Some((PathElem::Key(k), rest))) => format!("{k}{}", keystr(rest)),
            _ => p.full_name(),
        })
        .collect();
    uniquify(names)
}

/// The output names of the naming rule (module docs) for these paths inside the result.
pub fn output_names(paths: &[Vec<PathElem>]) -> Vec<String> {
    let names = paths
        .iter()
        .enumerate()
        .map(|(i, p)| match p.split_first() {
            Some((PathElem::Key(k), rest)) => format!("{k}{}", keystr(rest)),
            _ if !p.iter().any(|e| matches!(e, PathElem::Key(_))) => format!("out{i}"),
            _ => format!("result{}", keystr(p)),
        })
        .collect();
    uniquify(names)
}

/// XLA's spelling of an instruction name: every character outside `[A-Za-z0-9_.-]` becomes `_`.
fn xla_sanitized(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn is_identifier(s: &str) -> bool {
    s.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The top-level argument name that a compiled module's entry parameter gives the leaf at
/// `path`: from the parameter's metadata `op_name` (JAX's full `loc` name, e.g.
/// `params['w'][0]`, which must end in the leaf's own steps), else from the instruction name
/// (XLA's sanitized form of the same, `params__w___0_`). `None` when neither fits, or the
/// name is one of XLA's generic ones (`Arg_0`, `param_1`, `p`, `argN`).
pub(crate) fn argument_base(path: &LeafPath, op_name: &str, instruction: &str) -> Option<String> {
    let generic = |b: &str| {
        b == "p"
            || ["Arg_", "param_", "param", "arg"].iter().any(|pre| {
                b.strip_prefix(pre)
                    .is_some_and(|n| n.bytes().all(|c| c.is_ascii_digit()))
            })
    };
    if let Some((base, elems)) = mlir::parse_keystr(op_name) {
        if !base.is_empty() && elems == path.elems && is_identifier(&base) && !generic(&base) {
            return Some(base);
        }
    }
    let suffix = xla_sanitized(&keystr(&path.elems));
    let base = instruction.strip_suffix(suffix.as_str())?;
    (is_identifier(base) && !generic(base)).then(|| base.to_string())
}

/// The whole path JAX wrote (`loc("params.layers[0].weight")`) for a leaf under a custom pytree
/// node, whose children the serialized tree only numbers (`arg0[0][0][0]`): the same depth, and
/// ours agrees wherever it has a name; `None` otherwise.
pub(crate) fn custom_node_path(path: &LeafPath, op_name: &str) -> Option<LeafPath> {
    let (base, elems) = mlir::parse_keystr(op_name)?;
    if !is_identifier(&base) || elems.len() != path.elems.len() {
        return None;
    }
    let mut renamed = false;
    for (ours, theirs) in path.elems.iter().zip(&elems) {
        match (ours, theirs) {
            (PathElem::Index(a), PathElem::Index(b)) if a == b => {}
            (PathElem::Index(_), PathElem::Attr(_) | PathElem::Key(_)) => renamed = true,
            (a, b) if a == b => {}
            _ => return None,
        }
    }
    renamed.then_some(LeafPath { base, elems })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn custom_node_children_take_the_names_jax_wrote() {
        let ours = lp(
            "arg0",
            vec![PathElem::Index(0), PathElem::Index(1), PathElem::Index(0)],
        );
        let p = custom_node_path(&ours, "params.layers[1].weight").unwrap();
        assert_eq!(keystr(&p.elems), ".layers[1].weight");
        assert_eq!(p.base, "params");
        // Another index, another depth, or a clash with a name we have: not this leaf.
        assert!(custom_node_path(&ours, "params.layers[2].weight").is_none());
        assert!(custom_node_path(&ours, "params.layers.weight").is_none());
        let keyed = lp("arg0", vec![PathElem::Key("w".into()), PathElem::Index(0)]);
        assert!(custom_node_path(&keyed, "p['v'].a").is_none());
        assert!(custom_node_path(&keyed, "p['w'].a").is_some());
        // Nothing to rename: the plain rule applies.
        assert!(custom_node_path(&ours, "params[0][1][0]").is_none());
    }

    fn lp(base: &str, elems: Vec<PathElem>) -> LeafPath {
        LeafPath {
            base: base.into(),
            elems,
        }
    }

    #[test]
    fn naming_rule() {
        use PathElem::{Attr as A, Index as I, Key as K};
        // Several arguments: full JAX names.
        let names = input_names(&[
            lp("params", vec![K("Dense_0".into()), K("kernel".into())]),
            lp("params", vec![K("w".into()), I(0), A("k".into())]),
            lp("x", vec![]),
            lp("arg3", vec![I(1)]),
        ]);
        assert_eq!(
            names,
            [
                "params['Dense_0']['kernel']",
                "params['w'][0].k",
                "x",
                "arg3[1]"
            ]
        );
        // One dict argument: its keys.
        let names = input_names(&[
            lp("inputs", vec![K("a".into())]),
            lp("inputs", vec![K("b".into()), K("c".into())]),
        ]);
        assert_eq!(names, ["a", "b['c']"]);
        // One list argument keeps its name.
        let names = input_names(&[lp("xs", vec![I(0)]), lp("xs", vec![I(1)])]);
        assert_eq!(names, ["xs[0]", "xs[1]"]);
        let names = input_names(&[lp("x", vec![]), lp("x", vec![])]);
        assert_eq!(names, ["x_1", "x_2"]);
        let outs = output_names(&[
            vec![K("label".into())],
            vec![I(1)],
            vec![I(2), K("a".into())],
            vec![K("l".into()), I(0)],
        ]);
        assert_eq!(outs, ["label", "out1", "result[2]['a']", "l[0]"]);
    }

    #[test]
    fn keystr_quotes_like_python() {
        assert_eq!(keystr(&[PathElem::Key("it's".into())]), "[\"it's\"]");
        assert_eq!(keystr(&[PathElem::Key("a\\b".into())]), "['a\\\\b']");
    }

    #[test]
    fn argument_base_from_xla_names() {
        let p = lp(
            "arg0",
            vec![PathElem::Key("Dense_0".into()), PathElem::Index(0)],
        );
        assert_eq!(
            argument_base(&p, "params['Dense_0'][0]", "whatever").as_deref(),
            Some("params")
        );
        // Metadata for another leaf does not fit; the sanitized instruction name does.
        assert_eq!(
            argument_base(&p, "params['b']", "params__Dense_0___0_").as_deref(),
            Some("params")
        );
        assert_eq!(argument_base(&p, "", "Arg_0__Dense_0___0_"), None);
        assert_eq!(
            argument_base(&lp("arg1", vec![]), "", "x").as_deref(),
            Some("x")
        );
        assert_eq!(argument_base(&lp("arg1", vec![]), "", "param_1"), None);
        assert_eq!(
            argument_base(&lp("arg1", vec![]), "params", "").as_deref(),
            Some("params")
        );
    }

    #[test]
    fn platform_index() {
        let mut a = mlir::load_text(b"func.func public @main() -> () {}").unwrap_or_else(|e| {
            unreachable!("{e}");
        });
        a.platforms = vec!["cpu".into(), "cuda".into()];
        assert_eq!(a.platform_index("gpu").ok(), Some(Some(1)));
        assert_eq!(a.platform_index("CPU").ok(), Some(Some(0)));
        assert!(a.platform_index("tpu").is_err());
        a.platforms = vec!["cpu".into()];
        assert_eq!(a.platform_index("tpu").ok(), Some(None));
    }
}
