//! The model repository: one folder per model.
//!
//! ```text
//! models/
//!   digits/
//!     model.jaxexport      the artifact (*.jaxexport, *.mlirbc, *.mlir, *.hlo.pb or *.pb)
//!     config.toml          optional: version, device, limits
//!     policy.toml          optional: the model's value policy
//!     params.safetensors   optional: tensors bound to inputs by name (or params.npz)
//! ```
//!
//! The folder name is the model's name (letters, digits, `_`, `-`, `.`; up to 128 bytes, not
//! starting with `.`). When a folder holds several artifacts, the first kind in the order above
//! is taken (`hlo/digits/` holds all of them and serves its `.jaxexport`); two of that kind are
//! an error unless `config.toml` names one with `artifact`.
//!
//! `config.toml` (every key optional; unknown keys are an error, so a typo is reported):
//! ```toml
//! version = "1"              # the model's version (string or integer), default "1"
//! device = "cpu"             # cpu | cuda | tpu: the plugin kind to run on, default the server's
//! artifact = "model.mlirbc"  # which file to serve when there are several
//! [limits]
//! workers = 2                # executions at once, default: the CPUs available
//! max_queue = 64             # requests waiting beyond those, default 64; more get 429
//! timeout_ms = 10000         # request deadline from arrival, default 30000; past it, 503
//! max_execution_bytes = 1073741824  # memory one execution may need (compiled memory stats);
//!                            # more and the model is refused at load
//! [batching]                 # dynamic batching (see `server::batch`)
//! sizes = [1, 2, 4, 8]       # batch sizes executed, default 1, 2, 4, 8, 16, 32
//! max_queue_delay_us = 0     # how long a batch's first request may wait for more, default 0
//! pad = "zeros"              # or "repeat_last"
//! batch_dim = 0
//! ```
//! and at the top level `execution = "process"` (run in jailed execution workers, killed at
//! the request's deadline) or `"in-process"`; default: the server's `--execution`; and
//! `cpu_kernels = "xla"` (JAX's kernel choice, the default), `"xnnpack"`, `"onednn"` or
//! `"ynn_off"`: the CPU kernel libraries the model's compiles may call
//! ([`crate::CpuKernels`], `docs/cpu_kernels.md`).
//!
//! A bundle of static exports of one function at several batch sizes (`model.b1.jaxexport`,
//! `model.b8.jaxexport`, ...: every `.jaxexport` in the folder named `<stem>.b<N>.jaxexport`
//! with one stem) is served as one model with batching on (its sizes by default the exported
//! ones).
//!
//! A folder whose configuration is wrong still becomes a model: it is reported as unavailable
//! with the reason (in the log, `POST /v2/repository/index` and `/metrics`), and the other models
//! are served.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::plugin::DeviceKind;

/// Where a model's artifact comes from.
#[derive(Clone, Debug)]
pub enum ArtifactSource {
    /// A file.
    File(PathBuf),
    /// Bytes in memory (the embedded default model).
    Bytes(Arc<[u8]>),
}

/// Per-model overrides of the server's default [`ModelLimits`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimitOverrides {
    /// Executions at once.
    pub workers: Option<usize>,
    /// Requests waiting beyond the executing ones.
    pub max_queue: Option<usize>,
    /// Request deadline.
    pub timeout: Option<Duration>,
    /// Largest module this model may have, in bytes (at most the server's
    /// `--max-module-bytes`): a bigger artifact makes the model unavailable before any worker
    /// sees it.
    pub max_module_bytes: Option<u64>,
    /// Most bytes one execution may need by the plugin's compiled memory statistics; a model
    /// needing more is unavailable (refused at load).
    pub max_execution_bytes: Option<u64>,
}

/// How many requests a model runs and queues, and how long a request may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelLimits {
    /// Executions at once (blocking threads used by this model at most).
    pub workers: usize,
    /// Requests admitted beyond the executing ones; one more gets 429.
    pub max_queue: usize,
    /// Deadline from the request's arrival; a request still queued or running past it gets 503.
    pub timeout: Duration,
}

impl Default for ModelLimits {
    fn default() -> ModelLimits {
        ModelLimits {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            max_queue: 64,
            timeout: Duration::from_secs(30),
        }
    }
}

impl ModelLimits {
    /// These limits with `o`'s overrides applied (zero workers is taken as one).
    pub fn with(self, o: LimitOverrides) -> ModelLimits {
        ModelLimits {
            workers: o.workers.unwrap_or(self.workers).max(1),
            max_queue: o.max_queue.unwrap_or(self.max_queue),
            timeout: o.timeout.unwrap_or(self.timeout),
        }
    }
}

/// One model to serve.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    /// The name clients use.
    pub name: String,
    /// The one version served.
    pub version: String,
    /// The artifact.
    pub source: ArtifactSource,
    /// The plugin kind to run on (`None`: the server's engine).
    pub device: Option<DeviceKind>,
    /// Limit overrides from `config.toml`.
    pub limits: LimitOverrides,
    /// The model's `policy.toml`, when it has one.
    pub policy: Option<PathBuf>,
    /// The model's `params.safetensors` (or `params.npz`), bound to its inputs at load.
    pub params: Option<PathBuf>,
    /// The params file's expected sha256 (`config.toml` `params_sha256`), checked at load.
    pub params_sha256: Option<String>,
    /// Put in front of every params tensor's name before binding (`[params] prefix`).
    pub params_prefix: Option<String>,
    /// Params tensor name → input name (`[params.rename]`), applied before the prefix.
    pub params_rename: std::collections::BTreeMap<String, String>,
    /// Bake the params into the executable as constants (`[params] bake = true`;
    /// [`crate::Engine::load_baked`]) instead of passing them as resident arguments.
    pub params_bake: bool,
    /// Where the model executes (`config.toml` `execution`; `None`: the engine's setting).
    pub execution: Option<crate::exec::Execution>,
    /// CPU kernel libraries for the model's compiles (`config.toml` `cpu_kernels`; `None`:
    /// the engine's setting).
    pub cpu_kernels: Option<crate::CpuKernels>,
    /// Why this model cannot be loaded, found while reading its folder (reported, not fatal).
    pub problem: Option<String>,
    /// Shape-polymorphic models: values of dimension variables to compile at load
    /// (`config.toml` `[shapes] b = [1, 8, 32]`; several variables: every combination).
    pub shapes: std::collections::BTreeMap<String, Vec<u64>>,
    /// `[batching]`: dynamic batching settings (`None`: off, unless the model is a bundle).
    pub batching: Option<super::batch::BatchConfig>,
    /// A bundle of static exports per batch size (`model.b8.jaxexport`): (size, file),
    /// ascending; empty for a single artifact.
    pub bundle: Vec<(u64, PathBuf)>,
    /// The model folder it was read from (`None`: given directly). A repository load request
    /// reads it again.
    pub dir: Option<PathBuf>,
}

impl ModelSpec {
    /// A model from bytes in memory, version "1", no overrides.
    pub fn from_bytes(name: impl Into<String>, bytes: impl Into<Arc<[u8]>>) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            version: "1".into(),
            source: ArtifactSource::Bytes(bytes.into()),
            device: None,
            limits: LimitOverrides::default(),
            policy: None,
            params: None,
            params_sha256: None,
            params_prefix: None,
            params_rename: std::collections::BTreeMap::new(),
            params_bake: false,
            execution: None,
            cpu_kernels: None,
            problem: None,
            shapes: std::collections::BTreeMap::new(),
            batching: None,
            bundle: Vec::new(),
            dir: None,
        }
    }

    /// A model from an artifact file, version "1", no overrides.
    pub fn from_file(name: impl Into<String>, path: impl Into<PathBuf>) -> ModelSpec {
        ModelSpec {
            source: ArtifactSource::File(path.into()),
            ..ModelSpec::from_bytes(name, Vec::new())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    version: Option<toml::Value>,
    #[serde(default)]
    device: Option<String>,
    #[serde(default)]
    artifact: Option<String>,
    #[serde(default)]
    limits: Option<LimitsFile>,
    #[serde(default)]
    shapes: Option<std::collections::BTreeMap<String, Vec<u64>>>,
    #[serde(default)]
    params_sha256: Option<String>,
    #[serde(default)]
    params: Option<ParamsFile>,
    #[serde(default)]
    execution: Option<String>,
    #[serde(default)]
    cpu_kernels: Option<String>,
    #[serde(default)]
    batching: Option<BatchingFile>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchingFile {
    #[serde(default)]
    sizes: Option<Vec<u64>>,
    #[serde(default)]
    max_queue_delay_us: Option<u64>,
    #[serde(default)]
    pad: Option<String>,
    #[serde(default)]
    batch_dim: Option<usize>,
}

impl BatchingFile {
    fn config(&self, bundle: &[(u64, PathBuf)]) -> Result<super::batch::BatchConfig, String> {
        use super::batch::{BatchConfig, Pad};
        let mut c = BatchConfig::default();
        if !bundle.is_empty() {
            c.sizes = bundle.iter().map(|(n, _)| *n).collect();
        }
        if let Some(s) = &self.sizes {
            if s.is_empty() || s.contains(&0) || s.windows(2).any(|w| matches!(w, [a, b] if a >= b))
            {
                return Err(format!(
                    "config.toml [batching] sizes must be ascending batch sizes of at least 1, got {s:?}"
                ));
            }
            c.sizes.clone_from(s);
        }
        if let Some(us) = self.max_queue_delay_us {
            c.max_queue_delay = Duration::from_micros(us);
        }
        match self.pad.as_deref() {
            None | Some("zeros") => {}
            Some("repeat_last") => c.pad = Pad::RepeatLast,
            Some(other) => {
                return Err(format!(
                    "config.toml [batching] pad '{other}' is not one of zeros, repeat_last"
                ))
            }
        }
        if let Some(d) = self.batch_dim {
            c.batch_dim = d;
        }
        Ok(c)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamsFile {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    rename: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    bake: bool,
}

/// Most executions at once of one model (`[limits] workers`, `--workers`).
pub const MAX_WORKERS: u64 = 1024;
/// Most requests queued per model (`[limits] max_queue`, `--max-queue`).
pub const MAX_QUEUE: u64 = 1_000_000;
/// Longest request deadline, milliseconds (one day).
pub const MAX_TIMEOUT_MS: u64 = 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    #[serde(default)]
    workers: Option<usize>,
    #[serde(default)]
    max_queue: Option<usize>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    max_module_bytes: Option<u64>,
    #[serde(default)]
    max_execution_bytes: Option<u64>,
}

/// Why a repository could not be read at all (a bad model folder is not this: it is reported
/// as an unavailable model).
#[derive(Debug, thiserror::Error)]
#[error("model repository {path}: {error}")]
pub struct RepositoryError {
    /// The repository folder.
    pub path: PathBuf,
    /// The OS error (in the message; not also returned by `source()`).
    pub error: std::io::Error,
}

/// True for a name clients can put in a URL and that is safe in logs and metric labels.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.'))
}

const ARTIFACT_KINDS: [&str; 5] = [".jaxexport", ".mlirbc", ".mlir", ".hlo.pb", ".pb"];

fn pick_artifact(dir: &Path, files: &[String], named: Option<&str>) -> Result<PathBuf, String> {
    if let Some(n) = named {
        if n.contains('/') || n.contains('\\') || n.starts_with('.') {
            return Err(format!(
                "config.toml: artifact '{n}' must be a file name in the model's folder"
            ));
        }
        let p = dir.join(n);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "config.toml: artifact '{n}' is not a file in the folder"
            ))
        };
    }
    for ext in ARTIFACT_KINDS {
        let found: Vec<&String> = files
            .iter()
            .filter(|f| f.ends_with(ext))
            // `.pb` should not also take `.hlo.pb` files: they were the previous kind.
            .filter(|f| ext != ".pb" || !f.ends_with(".hlo.pb"))
            .collect();
        match found.as_slice() {
            [] => continue,
            [one] => return Ok(dir.join(one)),
            many => {
                let list: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
                return Err(format!(
                    "several {ext} artifacts ({}); name one with `artifact = \"...\"` in config.toml",
                    list.join(", ")
                ));
            }
        }
    }
    Err(format!(
        "no artifact (a file ending in {})",
        ARTIFACT_KINDS.join(", ")
    ))
}

/// The folder's bundle of static exports per batch size: every `.jaxexport` named
/// `<stem>.b<N>.jaxexport` with one stem (empty when there is none, or a plain artifact too).
fn find_bundle(dir: &Path, files: &[String]) -> Result<Vec<(u64, PathBuf)>, String> {
    let exports: Vec<&String> = files.iter().filter(|f| f.ends_with(".jaxexport")).collect();
    let mut found = Vec::new();
    let mut stem = None;
    for f in &exports {
        let Some(base) = f.strip_suffix(".jaxexport") else {
            return Ok(Vec::new());
        };
        let Some((s, n)) = base.rsplit_once(".b") else {
            return Ok(Vec::new());
        };
        let Ok(n) = n.parse::<u64>() else {
            return Ok(Vec::new());
        };
        if n == 0 || !n.to_string().eq(base.rsplit_once(".b").map_or("", |x| x.1)) {
            return Ok(Vec::new());
        }
        match stem {
            None => stem = Some(s),
            Some(t) if t != s => {
                return Err(format!(
                    "bundle exports with two stems ('{t}' and '{s}'); keep one model per folder"
                ))
            }
            Some(_) => {}
        }
        found.push((n, dir.join(f.as_str())));
    }
    found.sort();
    Ok(found)
}

fn read_config(path: &Path) -> Result<Option<ConfigFile>, String> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("config.toml: {e}"))?;
    toml::from_str(&text).map(Some).map_err(|e| {
        // One line: where, then what.
        let line = e.span().map_or(0, |s| {
            text.get(..s.start)
                .map_or(0, |t| t.bytes().filter(|&b| b == b'\n').count())
                + 1
        });
        match line {
            0 => format!("config.toml: {}", e.message()),
            n => format!("config.toml line {n}: {}", e.message()),
        }
    })
}

fn parse_device(s: &str) -> Result<DeviceKind, String> {
    match s {
        "cpu" => Ok(DeviceKind::Cpu),
        "cuda" | "gpu" => Ok(DeviceKind::Cuda),
        "tpu" => Ok(DeviceKind::Tpu),
        other => Err(format!(
            "config.toml: device '{other}' is not one of cpu, cuda, tpu"
        )),
    }
}

/// Reads one model folder. Problems are recorded in [`ModelSpec::problem`].
pub fn read_model_dir(dir: &Path, name: &str) -> ModelSpec {
    let mut spec = ModelSpec::from_file(name, dir.join("model.jaxexport"));
    spec.dir = Some(dir.to_path_buf());
    let files: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => {
            let mut v: Vec<String> = rd
                .filter_map(Result::ok)
                .filter(|e| e.path().is_file())
                .filter_map(|e| e.file_name().into_string().ok())
                .collect();
            v.sort();
            v
        }
        Err(e) => {
            spec.problem = Some(format!("{}: {e}", dir.display()));
            return spec;
        }
    };
    let config = match read_config(&dir.join("config.toml")) {
        Ok(c) => c,
        Err(e) => {
            spec.problem = Some(e);
            return spec;
        }
    };
    let mut named = None;
    if let Some(c) = &config {
        match &c.version {
            None => {}
            Some(toml::Value::String(s)) if valid_model_name(s) => spec.version.clone_from(s),
            Some(toml::Value::Integer(i)) if *i >= 0 => spec.version = i.to_string(),
            Some(other) => {
                spec.problem = Some(format!(
                    "config.toml: version {other} must be a non-negative integer or a name of \
                     letters, digits, '_', '-', '.'"
                ));
                return spec;
            }
        }
        if let Some(d) = &c.device {
            match parse_device(d) {
                Ok(k) => spec.device = Some(k),
                Err(e) => {
                    spec.problem = Some(e);
                    return spec;
                }
            }
        }
        if let Some(l) = &c.limits {
            let ranges: [(&str, Option<u64>, u64, u64); 5] = [
                ("max_execution_bytes", l.max_execution_bytes, 1, u64::MAX),
                ("workers", l.workers.map(|v| v as u64), 1, MAX_WORKERS),
                ("max_queue", l.max_queue.map(|v| v as u64), 0, MAX_QUEUE),
                ("timeout_ms", l.timeout_ms, 1, MAX_TIMEOUT_MS),
                (
                    "max_module_bytes",
                    l.max_module_bytes,
                    1,
                    crate::compile::DEFAULT_MAX_MODULE_BYTES as u64,
                ),
            ];
            for (key, v, lo, hi) in ranges {
                if let Some(v) = v.filter(|v| !(lo..=hi).contains(v)) {
                    spec.problem = Some(format!(
                        "config.toml [limits] {key} = {v}: expected {lo} to {hi}"
                    ));
                    return spec;
                }
            }
            spec.limits = LimitOverrides {
                workers: l.workers,
                max_queue: l.max_queue,
                timeout: l.timeout_ms.map(Duration::from_millis),
                max_module_bytes: l.max_module_bytes,
                max_execution_bytes: l.max_execution_bytes,
            };
        }
        if let Some(s) = &c.shapes {
            spec.shapes.clone_from(s);
        }
        if let Some(k) = &c.cpu_kernels {
            match k.parse::<crate::CpuKernels>() {
                Ok(k) => spec.cpu_kernels = Some(k),
                Err(e) => {
                    spec.problem = Some(format!("config.toml: {e}"));
                    return spec;
                }
            }
        }
        if let Some(e) = &c.execution {
            match crate::exec::Execution::parse(e) {
                Some(x) => spec.execution = Some(x),
                None => {
                    spec.problem = Some(format!(
                        "config.toml: execution must be \"process\" or \"in-process\", got {e:?}"
                    ));
                    return spec;
                }
            }
        }
        if let Some(h) = &c.params_sha256 {
            if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                spec.problem = Some(format!(
                    "config.toml: params_sha256 must be 64 hex digits, got {h:?}"
                ));
                return spec;
            }
            spec.params_sha256 = Some(h.to_ascii_lowercase());
        }
        if let Some(p) = &c.params {
            spec.params_prefix.clone_from(&p.prefix);
            spec.params_rename.clone_from(&p.rename);
            spec.params_bake = p.bake;
        }
        named = c.artifact.as_deref();
    }
    let bundle = if named.is_none() {
        find_bundle(dir, &files)
    } else {
        Ok(Vec::new())
    };
    match bundle {
        Ok(b) if !b.is_empty() => {
            if let Some((_, p)) = b.first() {
                spec.source = ArtifactSource::File(p.clone());
            }
            spec.bundle = b;
        }
        Ok(_) => match pick_artifact(dir, &files, named) {
            Ok(p) => spec.source = ArtifactSource::File(p),
            Err(e) => spec.problem = Some(e),
        },
        Err(e) => spec.problem = Some(e),
    }
    let batching = config.as_ref().and_then(|c| c.batching.as_ref());
    match batching {
        Some(b) => match b.config(&spec.bundle) {
            Ok(c) => spec.batching = Some(c),
            Err(e) => {
                spec.problem.get_or_insert(e);
            }
        },
        None if !spec.bundle.is_empty() => {
            spec.batching = Some(super::batch::BatchConfig {
                sizes: spec.bundle.iter().map(|(n, _)| *n).collect(),
                ..super::batch::BatchConfig::default()
            });
        }
        None => {}
    }
    let policy = dir.join("policy.toml");
    if policy.is_file() {
        spec.policy = Some(policy);
    }
    let params: Vec<PathBuf> = ["params.safetensors", "params.npz"]
        .iter()
        .map(|f| dir.join(f))
        .filter(|p| p.is_file())
        .collect();
    match params.as_slice() {
        [] => {}
        [one] => spec.params = Some(one.clone()),
        _ => {
            spec.problem.get_or_insert_with(|| {
                "the folder holds both params.safetensors and params.npz; keep one".into()
            });
        }
    }
    spec
}

/// Reads a model repository: every sub-folder with a valid name is a model. Folders with other
/// names are skipped with a warning (they could not be addressed or labelled safely).
///
/// # Errors
/// [`RepositoryError`] when the folder itself cannot be read.
pub fn scan_repository(dir: &Path) -> Result<Vec<ModelSpec>, RepositoryError> {
    let err = |source| RepositoryError {
        path: dir.to_path_buf(),
        error: source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if !entry.path().is_dir() {
            continue;
        }
        match entry.file_name().into_string() {
            Ok(n) if valid_model_name(&n) => names.push(n),
            Ok(n) if n.starts_with('.') => {}
            other => tracing::warn!(
                folder = ?other.unwrap_or_else(|n| n.to_string_lossy().into_owned()),
                "skipping a model folder whose name is not letters, digits, '_', '-', '.'"
            ),
        }
    }
    names.sort();
    Ok(names
        .iter()
        .map(|n| read_model_dir(&dir.join(n), n))
        .collect())
}

/// Why `--models DIR` and `--model-name` do not fit together.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// DIR holds an artifact itself (a single-model folder) and no name was given.
    #[error(
        "{} holds an artifact itself ({artifact}), so it is one model (the single-model \
         layout): name it with --model-name NAME",
        dir.display()
    )]
    NameNeeded {
        /// The folder.
        dir: PathBuf,
        /// The first artifact file found in it.
        artifact: String,
    },
    /// A name was given for a repository, whose models are named after their folders.
    #[error(
        "--model-name {name}: {} holds no artifact itself, so it is a repository of model \
         folders, each named after its folder; --model-name names the model of a folder that \
         holds an artifact directly",
        dir.display()
    )]
    NameForRepository {
        /// The name given.
        name: String,
        /// The folder.
        dir: PathBuf,
    },
    /// The folder could not be read.
    #[error(transparent)]
    Repository(#[from] RepositoryError),
}

/// The first file directly in `dir` that is an artifact (by [`ARTIFACT_KINDS`]' endings),
/// `None` when there is none: `dir` is then a repository.
///
/// # Errors
/// [`RepositoryError`] when the folder cannot be read.
pub fn artifact_in(dir: &Path) -> Result<Option<String>, RepositoryError> {
    let err = |source| RepositoryError {
        path: dir.to_path_buf(),
        error: source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        if !entry.path().is_file() {
            continue;
        }
        if let Ok(n) = entry.file_name().into_string() {
            if ARTIFACT_KINDS.iter().any(|k| n.ends_with(k)) {
                found.push(n);
            }
        }
    }
    found.sort();
    Ok(found.into_iter().next())
}

/// Reads what `serve --models DIR` serves. With `name`, DIR is one model's folder (what
/// KServe's storage initializer puts at `/mnt/models`): it must hold an artifact itself, and is
/// read like a repository's model folder, served under `name`. Without it, DIR is a repository
/// (see [`scan_repository`]), whose models are named after their folders; a DIR that holds an
/// artifact itself and no sub-folder holding one is a single model left unnamed, an error (the
/// folder's own name says nothing at `/mnt/models`). A repository with a stray artifact at its
/// top (beside model folders) stays a repository; the file is ignored, with a warning.
///
/// # Errors
/// [`LayoutError`] when the folder cannot be read or `name` does not fit the layout.
pub fn read_models(dir: &Path, name: Option<&str>) -> Result<Vec<ModelSpec>, LayoutError> {
    match (artifact_in(dir)?, name) {
        (Some(_), Some(n)) => Ok(vec![read_model_dir(dir, n)]),
        (None, Some(n)) => Err(LayoutError::NameForRepository {
            name: n.to_string(),
            dir: dir.to_path_buf(),
        }),
        (None, None) => Ok(scan_repository(dir)?),
        (Some(artifact), None) => {
            let models = scan_repository(dir)?;
            let with_artifact = models.iter().any(|m| {
                m.dir
                    .as_deref()
                    .is_some_and(|d| matches!(artifact_in(d), Ok(Some(_))))
            });
            if !with_artifact {
                return Err(LayoutError::NameNeeded {
                    dir: dir.to_path_buf(),
                    artifact,
                });
            }
            tracing::warn!(
                dir = %dir.display(),
                file = %artifact,
                "the repository holds an artifact at its top as well as model folders: serving \
                 the folders; give --model-name to serve the folder itself as one model"
            );
            Ok(models)
        }
    }
}
