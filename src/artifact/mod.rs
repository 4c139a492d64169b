//! Reading model artifacts: `jax.export` flatbuffers, StableHLO (text or bytecode) and HLO protos.
//!
//! [`load`] sniffs the format, extracts the bytes to hand to PJRT and, where the bytes say, the
//! user-facing [`Signature`]. Every parser here is pure safe Rust and treats its input as
//! untrusted: corrupt, truncated or hostile bytes give an [`ArtifactError`], never a panic.
//!
//! # Input and output names
//!
//! Each leaf of the input and output pytrees gets one name, built from its path:
//! - a path that passes through at least one dict key is named by its keys and indices below the
//!   top-level argument, joined with `.` (`params['w'][0]['k']` → `w.0.k`);
//! - otherwise an input is named after its top-level argument: the parameter name from the
//!   module's `loc("...")` when known (StableHLO text), else `argN` (`N` = positional index) or the
//!   keyword name, with any list/tuple indices appended (`arg0.1`);
//! - otherwise an output is `outN` (`N` = flat output index);
//! - a name used twice is replaced, for every leaf that uses it, by its full path (argument name
//!   first for inputs, `outN` first for outputs), and a remaining clash gets a `_N` suffix.

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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::signature::{Dim, Signature};

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
    #[error("cannot read artifact {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An error in a named file.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: Box<ArtifactError>,
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
            ArtifactError::InFile { source, .. } => source.root(),
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
        source,
    })?;
    load(&bytes).map_err(|e| ArtifactError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
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
            for (side, spec) in all {
                if let Some(Dim::Symbolic(sym)) =
                    spec.shape.iter().find(|d| matches!(d, Dim::Symbolic(_)))
                {
                    return Err(ArtifactError::unsupported(
                        "shape polymorphism",
                        format!(
                            "{side} {:?} has symbolic dimension {sym:?} ({}); export with \
                             concrete shapes",
                            spec.name,
                            spec.type_string()
                        ),
                    ));
                }
            }
        }
        Ok(())
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

/// One step of a pytree path below the top-level argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum PathElem {
    /// A dict key (or named field).
    Key(String),
    /// A list / tuple / custom-node child index.
    Index(usize),
}

/// The path of one leaf: its top-level name and the steps below it.
#[derive(Clone, Debug)]
pub(crate) struct LeafPath {
    /// The top-level argument's name (`x`, `arg0`, a keyword) or `outN` for outputs.
    pub base: String,
    /// Steps below the top level.
    pub elems: Vec<PathElem>,
}

fn join_elems(elems: &[PathElem]) -> String {
    let parts: Vec<String> = elems
        .iter()
        .map(|e| match e {
            PathElem::Key(k) => k.clone(),
            PathElem::Index(i) => i.to_string(),
        })
        .collect();
    parts.join(".")
}

/// Applies the naming rule in the module docs to a list of leaf paths.
pub(crate) fn assign_names(paths: &[LeafPath]) -> Vec<String> {
    let short: Vec<String> = paths
        .iter()
        .map(|p| {
            if p.elems.iter().any(|e| matches!(e, PathElem::Key(_))) {
                join_elems(&p.elems)
            } else if p.elems.is_empty() {
                p.base.clone()
            } else {
                format!("{}.{}", p.base, join_elems(&p.elems))
            }
        })
        .collect();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for n in &short {
        let c = counts.entry(n.as_str()).or_insert(0);
        *c = c.saturating_add(1);
    }
    let full: Vec<String> = paths
        .iter()
        .zip(&short)
        .map(|(p, s)| {
            if counts.get(s.as_str()).copied().unwrap_or(0) > 1 && !p.elems.is_empty() {
                format!("{}.{}", p.base, join_elems(&p.elems))
            } else {
                s.clone()
            }
        })
        .collect();
    let mut used: HashMap<String, usize> = HashMap::new();
    for n in &full {
        let c = used.entry(n.clone()).or_insert(0);
        *c = c.saturating_add(1);
    }
    let mut taken: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(full.len());
    for n in full {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(base: &str, elems: Vec<PathElem>) -> LeafPath {
        LeafPath {
            base: base.into(),
            elems,
        }
    }

    #[test]
    fn naming_rule() {
        use PathElem::{Index as I, Key as K};
        let names = assign_names(&[
            lp("params", vec![K("b".into())]),
            lp("params", vec![K("w".into()), I(0), K("k".into())]),
            lp("x", vec![]),
            lp("arg3", vec![I(1)]),
        ]);
        assert_eq!(names, ["b", "w.0.k", "x", "arg3.1"]);
        let names = assign_names(&[
            lp("a", vec![K("x".into())]),
            lp("b", vec![K("x".into())]),
            lp("x", vec![]),
        ]);
        assert_eq!(names, ["a.x", "b.x", "x"]);
        let names = assign_names(&[lp("x", vec![]), lp("x", vec![])]);
        assert_eq!(names, ["x_1", "x_2"]);
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
