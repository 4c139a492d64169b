//! Weights files: named tensors from `.safetensors` (the `safetensors` crate) or `.npz` (a zip
//! of `.npy` files, as `np.savez` / `np.savez_compressed` write), bound to a model's inputs by
//! name with [`crate::Model::bind`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::signature::DType;
use crate::tensor::Tensor;

/// A weights file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParamsError {
    /// The file cannot be read.
    #[error("cannot read params file {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        message: String,
    },
    /// The file is truncated, corrupt, or its header does not fit its contents.
    #[error("params {source_name}: {}{reason}", tensor.as_ref().map(|t| format!("tensor '{t}': ")).unwrap_or_default())]
    Malformed {
        /// The file (or `<memory>`).
        source_name: String,
        /// The tensor concerned, when one is.
        tensor: Option<String>,
        /// What is wrong.
        reason: String,
    },
    /// Two tensors have the same name.
    #[error("params {source_name}: tensor '{name}' occurs more than once")]
    Duplicate {
        /// The file (or `<memory>`).
        source_name: String,
        /// The repeated name.
        name: String,
    },
    /// A tensor has an element type xlaguard does not support.
    #[error("params {source_name}: tensor '{name}' has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The file (or `<memory>`).
        source_name: String,
        /// The tensor.
        name: String,
        /// The file's dtype.
        dtype: String,
    },
    /// The file is neither safetensors nor npz.
    #[error("params {source_name}: not a .safetensors or .npz file")]
    UnknownFormat {
        /// The file (or `<memory>`).
        source_name: String,
    },
}

/// Named tensors to bind to a model's inputs, with where they came from.
#[derive(Debug, Clone)]
pub struct Params {
    tensors: Vec<(String, Tensor)>,
    source: String,
    sha256: String,
    bytes: u64,
}

impl Params {
    /// Reads a `.safetensors` or `.npz` file (told apart by content: npz is a zip).
    ///
    /// # Errors
    /// [`ParamsError`] for an unreadable, truncated or corrupt file, a duplicate name or an
    /// unsupported dtype.
    pub fn read(path: &Path) -> Result<Params, ParamsError> {
        let bytes = std::fs::read(path).map_err(|e| ParamsError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Params::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses the bytes of a `.safetensors` or `.npz` file; `source` names it in errors.
    ///
    /// # Errors
    /// As [`Params::read`].
    pub fn from_bytes(bytes: &[u8], source: &str) -> Result<Params, ParamsError> {
        let tensors = if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
            read_npz(bytes, source)?
        } else if source.ends_with(".npz") {
            return Err(malformed(source, None, "not a zip archive"));
        } else if bytes.get(8) == Some(&b'{') || source.ends_with(".safetensors") {
            read_safetensors(bytes, source)?
        } else {
            return Err(ParamsError::UnknownFormat {
                source_name: source.to_string(),
            });
        };
        Ok(Params {
            tensors,
            source: source.to_string(),
            sha256: hex(&Sha256::digest(bytes)),
            bytes: bytes.len() as u64,
        })
    }

    /// Tensors given in memory; `source` names them in reports.
    ///
    /// # Errors
    /// [`ParamsError::Duplicate`] for a name given twice.
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        source: &str,
    ) -> Result<Params, ParamsError> {
        check_unique(tensors.iter().map(|(n, _)| n.as_str()), source)?;
        let mut h = Sha256::new();
        let mut bytes = 0u64;
        for (n, t) in &tensors {
            h.update(n.as_bytes());
            h.update(t.bytes());
            bytes = bytes.saturating_add(t.bytes().len() as u64);
        }
        Ok(Params {
            tensors,
            source: source.to_string(),
            sha256: hex(&h.finalize()),
            bytes,
        })
    }

    /// The tensors renamed to the model's input names: a name in `rename` becomes its value;
    /// any other gets `prefix` in front (`['params']['w']` under `variables` is
    /// `variables['params']['w']`). The file's identity (sha256, size) is kept.
    ///
    /// ```
    /// use xlaguard::{Params, Tensor};
    /// let t = Tensor::from_slice(&[1], &[1.0f32]).unwrap();
    /// let p = Params::from_tensors(vec![("['w']".into(), t.clone()), ("b".into(), t)], "mem")?;
    /// let table = [("b".to_string(), "x['bias']".to_string())].into_iter().collect();
    /// let r = p.renamed(Some("params"), &table)?;
    /// assert!(r.get("params['w']").is_some() && r.get("x['bias']").is_some());
    /// # Ok::<(), xlaguard::ParamsError>(())
    /// ```
    ///
    /// # Errors
    /// [`ParamsError::Duplicate`] when two tensors end up with one name.
    pub fn renamed(
        &self,
        prefix: Option<&str>,
        rename: &std::collections::BTreeMap<String, String>,
    ) -> Result<Params, ParamsError> {
        let tensors: Vec<(String, Tensor)> = self
            .tensors
            .iter()
            .map(|(n, t)| {
                let name = match (rename.get(n), prefix) {
                    (Some(to), _) => to.clone(),
                    (None, Some(p)) => format!("{p}{n}"),
                    (None, None) => n.clone(),
                };
                (name, t.clone())
            })
            .collect();
        check_unique(tensors.iter().map(|(n, _)| n.as_str()), &self.source)?;
        Ok(Params {
            tensors,
            source: self.source.clone(),
            sha256: self.sha256.clone(),
            bytes: self.bytes,
        })
    }

    /// The tensors, in file order.
    pub fn tensors(&self) -> &[(String, Tensor)] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }

    /// Where the tensors came from (a path, or the name given).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// SHA-256 of the file (hex).
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// Size of the file in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.bytes
    }
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

fn malformed(source: &str, tensor: Option<&str>, reason: impl Into<String>) -> ParamsError {
    ParamsError::Malformed {
        source_name: source.to_string(),
        tensor: tensor.map(str::to_string),
        reason: reason.into(),
    }
}

fn check_unique<'a>(names: impl Iterator<Item = &'a str>, source: &str) -> Result<(), ParamsError> {
    let mut seen = HashSet::new();
    for n in names {
        if !seen.insert(n) {
            return Err(ParamsError::Duplicate {
                source_name: source.to_string(),
                name: n.to_string(),
            });
        }
    }
    Ok(())
}

/// The tensor names of a safetensors header in file order, duplicates kept (serde's maps
/// silently keep the last of a repeated key).
fn header_names(bytes: &[u8]) -> Option<Vec<String>> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Vec<String>, A::Error> {
            let mut keys = Vec::new();
            while let Some(k) = m.next_key::<String>()? {
                m.next_value::<IgnoredAny>()?;
                keys.push(k);
            }
            Ok(keys)
        }
    }
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header = bytes.get(8..8usize.checked_add(n)?)?;
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(Keys).ok()
}

/// Checks that the tensors' data offsets tile the data from 0 without gaps or overlaps, in
/// (offsets, name) order, naming the first tensor that breaks it. The safetensors crate checks
/// the same, but in the order of a hash map for tensors with equal offsets, so the tensor it
/// names (and even the error) could differ from one read of the same bytes to the next (found
/// by the `params` fuzz target). Headers it cannot read are left to the crate to report.
fn check_offsets(bytes: &[u8], source: &str) -> Result<(), ParamsError> {
    let Some(n) = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .and_then(|b| usize::try_from(u64::from_le_bytes(b)).ok())
    else {
        return Ok(());
    };
    let Some(header) = 8usize.checked_add(n).and_then(|end| bytes.get(8..end)) else {
        return Ok(());
    };
    let Ok(map) = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(header)
    else {
        return Ok(());
    };
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(map.len());
    for (name, info) in &map {
        if name == "__metadata__" {
            continue;
        }
        match info
            .get("data_offsets")
            .and_then(|o| o.as_array())
            .map(Vec::as_slice)
        {
            Some([s, e]) => match (s.as_u64(), e.as_u64()) {
                (Some(s), Some(e)) => spans.push((s, e, name)),
                _ => return Ok(()),
            },
            _ => return Ok(()),
        }
    }
    spans.sort_unstable();
    let mut at = 0u64;
    for (s, e, name) in spans {
        if s != at || e < s {
            return Err(malformed(
                source,
                Some(name),
                "its data offsets are invalid",
            ));
        }
        at = e;
    }
    Ok(())
}

fn read_safetensors(bytes: &[u8], source: &str) -> Result<Vec<(String, Tensor)>, ParamsError> {
    use safetensors::{Dtype, SafeTensorError, SafeTensors};
    if let Some(names) = header_names(bytes) {
        check_unique(
            names
                .iter()
                .map(String::as_str)
                .filter(|n| *n != "__metadata__"),
            source,
        )?;
    }
    check_offsets(bytes, source)?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| {
        let (tensor, reason) = match e {
            SafeTensorError::HeaderTooSmall => (
                None,
                "truncated: shorter than its 8-byte header length".into(),
            ),
            SafeTensorError::InvalidHeaderLength => (
                None,
                format!(
                    "the header claims {} bytes, more than the file's {} after the length",
                    bytes
                        .get(..8)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u64::from_le_bytes),
                    bytes.len().saturating_sub(8)
                ),
            ),
            SafeTensorError::MetadataIncompleteBuffer => (
                None,
                "truncated or padded: the tensors' data offsets do not end at the end of the file"
                    .into(),
            ),
            SafeTensorError::InvalidOffset(name) => {
                (Some(name), "its data offsets are invalid".to_string())
            }
            other => (None, other.to_string()),
        };
        malformed(source, tensor.as_deref(), reason)
    })?;
    let mut out = Vec::with_capacity(st.len());
    for (name, view) in st.iter() {
        let dtype = match view.dtype() {
            Dtype::BOOL => DType::Bool,
            Dtype::U8 => DType::U8,
            Dtype::I8 => DType::I8,
            Dtype::I16 => DType::I16,
            Dtype::U16 => DType::U16,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::I32 => DType::I32,
            Dtype::U32 => DType::U32,
            Dtype::F32 => DType::F32,
            Dtype::C64 => DType::C64,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::U64 => DType::U64,
            other => {
                return Err(ParamsError::UnsupportedDtype {
                    source_name: source.to_string(),
                    name: name.to_string(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let t = Tensor::new(dtype, shape, view.data().to_vec())
            .map_err(|e| malformed(source, Some(name), e.to_string()))?;
        out.push((name.to_string(), t));
    }
    // Keep file order (by data offset), not the header map's.
    out.sort_by_key(|(n, _)| {
        st.tensor(n)
            .map(|v| v.data().as_ptr() as usize)
            .unwrap_or(usize::MAX)
    });
    Ok(out)
}

fn read_npz(bytes: &[u8], source: &str) -> Result<Vec<(String, Tensor)>, ParamsError> {
    use std::io::Read;
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| malformed(source, None, format!("not a valid npz (zip) archive: {e}")))?;
    let mut out = Vec::with_capacity(zip.len());
    let mut seen = HashSet::new();
    for i in 0..zip.len() {
        let mut f = zip
            .by_index(i)
            .map_err(|e| malformed(source, None, format!("entry {i}: {e}")))?;
        let file = f.name().to_string();
        let name = file.strip_suffix(".npy").unwrap_or(&file).to_string();
        if !seen.insert(name.clone()) {
            return Err(ParamsError::Duplicate {
                source_name: source.to_string(),
                name,
            });
        }
        let mut data = Vec::with_capacity(usize::try_from(f.size()).unwrap_or(0).min(1 << 30));
        f.read_to_end(&mut data)
            .map_err(|e| malformed(source, Some(&name), format!("cannot read: {e}")))?;
        let t =
            Tensor::from_npy(&data).map_err(|e| malformed(source, Some(&name), e.to_string()))?;
        out.push((name, t));
    }
    Ok(out)
}

/// A bound tensor whose dtype or shape is not the input's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// The input (and tensor) name.
    pub name: String,
    /// The input's type, e.g. `float32[3,3,8]`.
    pub expected: String,
    /// The tensor's type.
    pub got: String,
}

/// What [`crate::Model::bind`] did, like burn-store's apply report: inputs bound (`applied`), inputs
/// of a bound argument that the params lack (`missing`), tensors that name no input
/// (`unused`), tensors whose dtype or shape differs (`mismatched`), and the inputs left to
/// each request (`unbound`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindReport {
    /// Inputs bound, in module order.
    pub applied: Vec<String>,
    /// Inputs under an argument the params bind (e.g. `variables[...]`) with no tensor.
    pub missing: Vec<String>,
    /// Tensors that match no input (reported, not an error).
    pub unused: Vec<String>,
    /// Tensors whose dtype or shape is not the input's.
    pub mismatched: Vec<Mismatch>,
    /// Inputs each request still gives, in order.
    pub unbound: Vec<String>,
    /// Bound tensors the model's value policy names, checked (and sanitized where it says so)
    /// once, here: what each rule changed (`'w': 2 values clipped to max 1.0`).
    pub checked: Vec<String>,
}

impl BindReport {
    /// True when nothing is missing or mismatched.
    pub fn is_ok(&self) -> bool {
        self.missing.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for BindReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} applied", self.applied.len())?;
        if !self.missing.is_empty() {
            write!(f, "; missing: {}", quoted(&self.missing))?;
        }
        if !self.mismatched.is_empty() {
            let m: Vec<String> = self
                .mismatched
                .iter()
                .map(|m| format!("'{}' (expected {}, got {})", m.name, m.expected, m.got))
                .collect();
            write!(f, "; mismatched: {}", m.join(", "))?;
        }
        if !self.unused.is_empty() {
            write!(f, "; unused: {}", quoted(&self.unused))?;
        }
        if !self.checked.is_empty() {
            write!(f, "; checked: {}", self.checked.join(", "))?;
        }
        write!(f, "; unbound: {}", quoted(&self.unbound))
    }
}

fn quoted(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}
