//! Restricted, monitored compilation.
//!
//! By default every compile runs in a *compile worker*: the host executable re-executed with
//! a hidden argument ([`WORKER_ARG`]), which jails itself (see [`sandbox`]), loads the plugin,
//! compiles the module it receives over a pipe, and returns `PJRT_Executable_Serialize` bytes.
//! The parent loads them with `DeserializeAndLoad`. A worker that aborts, faults, hangs or
//! breaks the protocol costs one typed error and is replaced; the parent is unharmed.
//!
//! Programs that embed xlaguard call [`worker_main_if_requested`] first thing in `main` (the
//! `xlaguard` binary does), or point [`CompileConfig::worker_exe`] (or `$XLAGUARD_WORKER_EXE`)
//! at a binary that does.
//!
//! Every compile is counted in [`CompileStats`], recorded in the optional JSON-lines
//! [`audit`] log, and its executable may be kept in the authenticated [`cache`].

pub mod audit;
pub mod cache;
mod failure;
mod limits;
pub(crate) mod pool;
pub mod protocol;
pub mod sandbox;
pub mod stats;
mod worker;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::json;

pub use audit::AuditLog;
pub use cache::{Cache, CacheKey, CacheRejection};
pub use failure::{FailureCause, WorkerFailure, WorkerRole};
pub use limits::{Limits, SandboxOptions, DEFAULT_MAX_MODULE_BYTES};
pub use protocol::{Bake, BakedArg, ProtocolError, Refinement, EXEC_WORKER_ARG, WORKER_ARG};
pub use sandbox::{thread_usage, ChildUsage, ExitInfo, JailReport};
pub use stats::{CompileStats, Histogram, StatsSnapshot};
#[cfg(feature = "test-hooks")]
pub use worker::{TestRequest, TestResult};
pub use worker::{WorkerStats, ENV_ALLOWLIST};

use crate::error::Error;
use crate::pjrt::{Client, ClientOptions, CompileOptions, ErrorCode, LoadedExecutable, PjrtError};
use pool::{Pool, PoolConfig, PoolError};
use protocol::Kind;
use stats::Counter;

/// Environment variable naming the worker executable (when [`CompileConfig::worker_exe`] is
/// not set).
pub const WORKER_EXE_ENV: &str = "XLAGUARD_WORKER_EXE";

/// If this process was started as a compile worker, runs the worker and exits; otherwise
/// returns at once. Call it first thing in `main`, before any thread starts.
pub fn worker_main_if_requested() {
    let arg = std::env::args_os().nth(1);
    let role = match arg.as_deref().and_then(std::ffi::OsStr::to_str) {
        Some(WORKER_ARG) => WorkerRole::Compile,
        Some(EXEC_WORKER_ARG) => WorkerRole::Execution,
        _ => return,
    };
    let code = worker::run(role);
    sandbox::fast_exit(code);
}

/// Where compilation runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// In a jailed worker process (the default).
    #[default]
    Process,
    /// In this process, on the caller's thread, bounded by the same worker and queue limits.
    /// No jail, no deadline, no memory limit: for embedders who accept the risk.
    Thread,
}

impl Isolation {
    /// `process` or `thread`.
    pub fn name(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::Thread => "thread",
        }
    }
}

/// How an [`Engine`](crate::Engine) compiles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompileConfig {
    /// Process (default) or thread isolation.
    pub isolation: Isolation,
    /// Compiles that may run at once.
    pub workers: usize,
    /// Compiles that may wait for a worker; beyond, [`Error::Busy`].
    pub queue: usize,
    /// Workers kept started and jailed ahead of need.
    pub spare_workers: usize,
    /// Have each worker compile a small module of its own before it takes a request, so the
    /// compiler's one-time start-up is paid ahead of need (by spares, in the background).
    pub warm_up_workers: bool,
    /// Limits of each compile.
    pub limits: Limits,
    /// The jail.
    pub sandbox: SandboxOptions,
    /// The worker executable (default: `$XLAGUARD_WORKER_EXE`, else this executable).
    pub worker_exe: Option<PathBuf>,
    /// A cache folder for compiled executables (`None`: no cache).
    pub cache_dir: Option<PathBuf>,
    /// The cache's HMAC key file (default: `cache_dir/hmac.key`).
    pub cache_key_file: Option<PathBuf>,
    /// A JSON-lines audit log to append to (`None`: none).
    pub audit_log: Option<PathBuf>,
    /// The StableHLO refiner for shape-polymorphic modules (default:
    /// [`crate::plugin::find_refiner`]); loaded only inside jailed workers.
    pub refiner: Option<PathBuf>,
}

impl Default for CompileConfig {
    fn default() -> Self {
        CompileConfig {
            isolation: Isolation::Process,
            workers: 2,
            queue: 16,
            spare_workers: 1,
            warm_up_workers: true,
            limits: Limits::default(),
            sandbox: SandboxOptions::default(),
            worker_exe: None,
            cache_dir: None,
            cache_key_file: None,
            audit_log: None,
            refiner: None,
        }
    }
}

impl CompileConfig {
    /// Sets the isolation.
    pub fn isolation(&mut self, i: Isolation) -> &mut Self {
        self.isolation = i;
        self
    }

    /// Sets the worker executable.
    pub fn worker_exe(&mut self, p: impl Into<PathBuf>) -> &mut Self {
        self.worker_exe = Some(p.into());
        self
    }

    /// Sets the cache folder.
    pub fn cache_dir(&mut self, p: impl Into<PathBuf>) -> &mut Self {
        self.cache_dir = Some(p.into());
        self
    }

    /// Sets the audit log.
    pub fn audit_log(&mut self, p: impl Into<PathBuf>) -> &mut Self {
        self.audit_log = Some(p.into());
        self
    }

    /// Sets the per-compile deadline.
    pub fn deadline(&mut self, d: Duration) -> &mut Self {
        self.limits.deadline = d;
        self
    }
}

impl WorkerFailure {
    fn into_error(self: Box<Self>) -> Error {
        match self.cause {
            FailureCause::SeccompKill => Error::SandboxViolation(self),
            FailureCause::Timeout(_) | FailureCause::CpuLimit(_) => Error::Timeout(self),
            _ => Error::WorkerCrashed(self),
        }
    }
}

/// How a model's executable was obtained.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileSummary {
    /// Where the compile ran.
    pub isolation: Isolation,
    /// Whether the executable came from the cache.
    pub cache_hit: bool,
    /// The worker's pid (process isolation, not cached).
    pub worker_pid: Option<u32>,
    /// The worker's CPU time and peak RSS.
    pub usage: Option<ChildUsage>,
    /// What the worker measured.
    pub worker: Option<WorkerStats>,
}

/// Serialized executable bytes the caller vouches for. A serialized executable is machine
/// code that runs with this process's rights, so making one is `unsafe`; loading it
/// ([`Engine::load_serialized`](crate::Engine::load_serialized)) is then safe.
#[derive(Clone, Copy, Debug)]
pub struct TrustedExecutable<'a>(&'a [u8]);

impl<'a> TrustedExecutable<'a> {
    /// Vouches for `bytes`.
    ///
    /// # Safety
    /// `bytes` must be an executable serialized by this crate's own compile (of the artifact it
    /// will be loaded with, on the same plugin), kept where nobody else could change it since.
    /// The built-in cache does not need this: it authenticates its entries.
    pub unsafe fn new(bytes: &'a [u8]) -> TrustedExecutable<'a> {
        TrustedExecutable(bytes)
    }

    /// The bytes.
    pub fn bytes(&self) -> &'a [u8] {
        self.0
    }
}

/// Loads vouched-for executable bytes.
pub(crate) fn load_trusted(
    client: &Client,
    exe: TrustedExecutable<'_>,
) -> Result<LoadedExecutable, PjrtError> {
    // SAFETY: a TrustedExecutable is only made through its `unsafe` constructor, whose caller
    // guarantees the bytes are this crate's own serialized executable.
    unsafe { client.deserialize(exe.0) }
}

/// XLA flags a worker (or thread-isolated client) may be given through `XLA_FLAGS`. Checked
/// against the pinned CPU plugin; an unknown flag would abort XLA at client creation, and
/// dump/debug flags would try to write files.
pub const ALLOWED_XLA_FLAGS: &[&str] = &[
    "xla_backend_optimization_level",
    "xla_cpu_enable_fast_math",
    "xla_cpu_enable_fast_min_max",
    "xla_cpu_fast_math_honor_nans",
    "xla_cpu_fast_math_honor_infs",
    "xla_cpu_fast_math_honor_division",
    "xla_cpu_fast_math_honor_functions",
    "xla_cpu_multi_thread_eigen",
    "xla_cpu_parallel_codegen_split_count",
    "xla_cpu_prefer_vector_width",
    "xla_cpu_max_isa",
    "xla_cpu_strict_dot_conv_math",
    "xla_cpu_use_thunk_runtime",
    "xla_cpu_use_xnnpack",
    "xla_llvm_disable_expensive_passes",
    "xla_disable_hlo_passes",
    "xla_force_host_platform_device_count",
];

/// Checks an `XLA_FLAGS` value: every token must be `--NAME` or `--NAME=VALUE` with `NAME` in
/// [`ALLOWED_XLA_FLAGS`] and a plain `VALUE`.
///
/// # Errors
/// [`Error::Config`] naming the first offending token.
pub fn validate_xla_flags(flags: &str) -> Result<(), Error> {
    for tok in flags.split_whitespace() {
        let Some(body) = tok.strip_prefix("--") else {
            return Err(Error::Config(format!(
                "XLA_FLAGS: '{tok}' is not of the form --name=value"
            )));
        };
        let (name, value) = body.split_once('=').unwrap_or((body, ""));
        if !ALLOWED_XLA_FLAGS.contains(&name) {
            return Err(Error::Config(format!(
                "XLA_FLAGS: --{name} is not an allowed flag (allowed: {})",
                ALLOWED_XLA_FLAGS.join(", ")
            )));
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.,:+-".contains(c))
        {
            return Err(Error::Config(format!(
                "XLA_FLAGS: --{name} has a value with characters outside [A-Za-z0-9_.,:+-]"
            )));
        }
    }
    Ok(())
}

/// Files the CPU plugin reads while it creates a client, compiles and serializes (measured
/// with strace; see PJRT_NOTES.md), besides the plugin file itself.
pub const CPU_PLUGIN_READS: &[&str] = &[
    "/sys/devices/system/cpu/online",
    "/sys/devices/system/cpu/possible",
    "/sys/devices/system/cpu/present",
    "/sys/devices/system/cpu/kernel_max",
    "/sys/devices/system/cpu/cpu0/tsc_freq_khz",
    "/proc/cpuinfo",
    "/proc/sys/vm/overcommit_memory",
    "/proc/self/maps",
];

/// The worker executable: the configured one, else `$XLAGUARD_WORKER_EXE`, else this one.
fn worker_exe(config: &CompileConfig) -> Result<PathBuf, Error> {
    Ok(match &config.worker_exe {
        Some(p) => p.clone(),
        None => match std::env::var_os(WORKER_EXE_ENV).filter(|v| !v.is_empty()) {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(|e| Error::Config(format!("cannot find the worker executable: {e}")))?,
        },
    })
}

/// The environment a worker starts with: [`ENV_ALLOWLIST`], `MALLOC_ARENA_MAX=2`.
fn worker_env() -> Vec<(String, OsString)> {
    let mut env: Vec<(String, OsString)> = ENV_ALLOWLIST
        .iter()
        .filter(|k| **k != "MALLOC_ARENA_MAX")
        .filter_map(|k| std::env::var_os(k).map(|v| (k.to_string(), v)))
        .collect();
    env.push(("MALLOC_ARENA_MAX".into(), "2".into()));
    env
}

/// Everything needed to start execution workers jailed as compile workers are.
#[derive(Clone, Debug)]
pub(crate) struct ExecWorkerSetup {
    pub exe: PathBuf,
    pub env: Vec<(String, OsString)>,
    /// The encoded init frame.
    pub init: Vec<u8>,
    pub limits: Limits,
    /// The host's memory (0: unknown), the most address space a worker may be given.
    pub address_space_cap: u64,
}

/// The plugin's identity for the cache and the audit log.
#[derive(Clone, Debug)]
struct PluginIdentity {
    path: PathBuf,
    sha256: Option<[u8; 32]>,
    api: (i32, i32),
}

/// What a compile needs besides the program.
pub(crate) struct CompileInput<'a> {
    pub program: &'a [u8],
    pub format: &'static str,
    pub options: &'a CompileOptions,
    /// Input avals for the audit log (`f32[1,64]`).
    pub inputs: Vec<String>,
    /// For a shape-polymorphic module: the concrete type of every `@main` argument, to refine
    /// it to (in the worker) before compiling.
    pub refine: Option<&'a protocol::Refinement>,
    /// Arguments of `@main` to replace by these constants (in the worker) before compiling.
    pub bake: Option<(&'a protocol::Bake, &'a [u8])>,
}

/// The compile machinery of one engine.
pub(crate) struct Compiler {
    config: CompileConfig,
    pool: Option<Pool>,
    gate: Gate,
    cache: Option<Cache>,
    audit: Option<AuditLog>,
    stats: Arc<CompileStats>,
    report: JailReport,
    plugin: OnceLock<PluginIdentity>,
    plugin_path: PathBuf,
    client_options: ClientOptions,
    xla_flags: String,
    /// JAX's compile options with `XLA_FLAGS` applied: what every compile sends.
    options: CompileOptions,
    /// The StableHLO refiner workers load for shape-polymorphic modules, if one was found.
    refiner: Option<PathBuf>,
    /// The refiner's sha256 (hex), for cache keys of refined compiles; hashed on first need.
    refiner_sha: OnceLock<String>,
    /// The most address space one compile may be given (the host's memory; 0 unknown).
    address_space_cap: u64,
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiler")
            .field("isolation", &self.config.isolation)
            .field("report", &self.report)
            .finish()
    }
}

/// Admission control for thread isolation (the pool has its own).
#[derive(Default)]
struct Gate {
    state: Mutex<(usize, usize)>,
    cv: std::sync::Condvar,
}

fn warn_once(report: &JailReport) {
    static WARNED: OnceLock<()> = OnceLock::new();
    if report.unenforced.is_empty() || WARNED.set(()).is_err() {
        return;
    }
    eprintln!(
        "xlaguard: warning: compile sandbox incomplete: {}",
        report.unenforced.join("; ")
    );
}

impl Compiler {
    /// The options every compile of this compiler sends: JAX's, with `XLA_FLAGS` applied.
    pub(crate) fn options(&self) -> &CompileOptions {
        &self.options
    }

    /// The refiner workers use for shape-polymorphic modules (`None`: none was found).
    pub(crate) fn refiner(&self) -> Option<&Path> {
        self.refiner.as_deref()
    }

    /// Sets up compilation for a plugin: opens the audit log and the cache, and for process
    /// isolation starts the first worker, whose jail report is kept (and printed once to
    /// stderr if anything is not enforced).
    pub(crate) fn new(
        config: &CompileConfig,
        plugin_path: &Path,
        api_version: (i32, i32),
        client_options: &ClientOptions,
    ) -> Result<Compiler, Error> {
        let xla_flags = std::env::var("XLA_FLAGS").unwrap_or_default();
        validate_xla_flags(&xla_flags)?;
        let mut options = CompileOptions::new();
        options
            .xla_flags(&xla_flags)
            .map_err(|e| Error::Config(e.to_string()))?;
        if config.workers == 0 {
            return Err(Error::Config("compile workers must be at least 1".into()));
        }
        let audit = match &config.audit_log {
            Some(p) => Some(AuditLog::open(p).map_err(|e| Error::Io {
                path: p.display().to_string(),
                error: e,
            })?),
            None => None,
        };
        let cache = match &config.cache_dir {
            Some(d) => {
                let mut c =
                    Cache::open(d, config.cache_key_file.as_deref()).map_err(|e| Error::Io {
                        path: d.display().to_string(),
                        error: e,
                    })?;
                c.set_max_executable_bytes(config.limits.max_executable_bytes as u64);
                Some(c)
            }
            None => None,
        };
        let refiner = crate::plugin::find_refiner(config.refiner.as_deref());
        let address_space_cap = sandbox::host_cap(
            sandbox::physical_memory(),
            config.limits.host_memory_percent,
        );
        let stats = Arc::new(CompileStats::default());
        let plugin_path = std::fs::canonicalize(plugin_path).unwrap_or(plugin_path.to_path_buf());
        let (pool, report) = match config.isolation {
            Isolation::Thread => (None, JailReport::thread()),
            Isolation::Process => {
                let exe = worker_exe(config)?;
                let mut read_paths = vec![plugin_path.clone()];
                read_paths.extend(CPU_PLUGIN_READS.iter().map(PathBuf::from));
                read_paths.extend(config.sandbox.extra_read_paths.iter().cloned());
                // The refiner: one more read-only file, opened only for polymorphic modules.
                read_paths.extend(refiner.iter().filter(|p| p.is_file()).cloned());
                let init = worker::WorkerInit {
                    plugin: plugin_path.clone(),
                    client_options: client_options.clone(),
                    limits: config.limits.clone(),
                    sandbox: config.sandbox.clone(),
                    warm_up: config.warm_up_workers,
                    read_paths,
                    refiner: refiner.clone(),
                    address_space_cap,
                    lapack: None,
                };
                let init = serde_json::to_vec(&init)
                    .map_err(|e| Error::Internal(format!("encoding the worker init: {e}")))
                    .and_then(|b| {
                        protocol::encode(Kind::Init, &b).map_err(|e| Error::Internal(e.to_string()))
                    })?;
                let env = worker_env();
                let cfg = PoolConfig {
                    exe,
                    init,
                    env,
                    limits: config.limits.clone(),
                    workers: config.workers,
                    queue: config.queue,
                    spares: config.spare_workers,
                };
                let (pool, report) =
                    Pool::new(cfg, stats.clone()).map_err(WorkerFailure::into_error)?;
                (Some(pool), report)
            }
        };
        let c = Compiler {
            config: config.clone(),
            pool,
            gate: Gate::default(),
            cache,
            audit,
            stats,
            report,
            plugin: OnceLock::new(),
            plugin_path,
            client_options: client_options.clone(),
            xla_flags,
            options,
            refiner,
            refiner_sha: OnceLock::new(),
            address_space_cap,
        };
        let _ = c.plugin_identity(api_version);
        warn_once(&c.report);
        c.audit(
            "sandbox_report",
            json!({ "isolation": c.config.isolation.name(), "jail": c.report }),
        );
        Ok(c)
    }

    /// How to start execution workers: the same executable, environment, plugin and jail as a
    /// compile worker, with `limits` (no warm-up compile, no refiner).
    pub(crate) fn exec_worker_setup(&self, limits: &Limits) -> Result<ExecWorkerSetup, Error> {
        let exe = worker_exe(&self.config)?;
        let mut read_paths = vec![self.plugin_path.clone()];
        read_paths.extend(CPU_PLUGIN_READS.iter().map(PathBuf::from));
        read_paths.extend(self.config.sandbox.extra_read_paths.iter().cloned());
        // LAPACK custom calls execute here: the library (and the libraries beside it that it
        // loads) must be readable in the jail.
        #[cfg(feature = "lapack")]
        let lapack = crate::plugin::find_lapack(None)
            .ok()
            .and_then(|p| std::fs::canonicalize(p).ok());
        #[cfg(not(feature = "lapack"))]
        let lapack: Option<PathBuf> = None;
        read_paths.extend(
            lapack
                .iter()
                .filter_map(|p| p.parent())
                .map(Path::to_path_buf),
        );
        let init = worker::WorkerInit {
            plugin: self.plugin_path.clone(),
            client_options: self.client_options.clone(),
            limits: limits.clone(),
            sandbox: self.config.sandbox.clone(),
            warm_up: false,
            read_paths,
            refiner: None,
            address_space_cap: self.address_space_cap,
            lapack,
        };
        let init = serde_json::to_vec(&init)
            .map_err(|e| Error::Internal(format!("encoding the worker init: {e}")))
            .and_then(|b| {
                protocol::encode(Kind::Init, &b).map_err(|e| Error::Internal(e.to_string()))
            })?;
        Ok(ExecWorkerSetup {
            exe,
            env: worker_env(),
            init,
            limits: limits.clone(),
            address_space_cap: self.address_space_cap,
        })
    }

    /// Records an event in the audit log (if one is configured).
    pub(crate) fn audit_event(&self, event: &str, fields: serde_json::Value) {
        self.audit(event, fields);
    }

    /// The jail report (for `inspect`).
    pub(crate) fn report(&self) -> &JailReport {
        &self.report
    }

    /// Adds a line to what is not enforced (said once at start-up, shown by `inspect`).
    pub(crate) fn note_unenforced(&mut self, why: String) {
        eprintln!("xlaguard: not enforced: {why}");
        self.report.unenforced.push(why);
    }

    /// The live statistics.
    pub(crate) fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot(self.config.isolation.name())
    }

    pub(crate) fn isolation(&self) -> Isolation {
        self.config.isolation
    }

    fn plugin_identity(&self, api: (i32, i32)) -> &PluginIdentity {
        self.plugin.get_or_init(|| PluginIdentity {
            path: self.plugin_path.clone(),
            // Hashing a 200 MB plugin takes a moment: only done when something records it.
            sha256: if self.cache.is_some() || self.audit.is_some() {
                cache::sha256_file(&self.plugin_path).ok()
            } else {
                None
            },
            api,
        })
    }

    fn audit(&self, event: &str, fields: serde_json::Value) {
        if let Some(a) = &self.audit {
            if a.record(event, fields).is_err() {
                self.stats.bump(Counter::AuditErrors);
            }
        }
    }

    fn limits_json(&self) -> serde_json::Value {
        let l = &self.config.limits;
        json!({
            "deadline_ms": u64::try_from(l.deadline.as_millis()).unwrap_or(u64::MAX),
            "address_space_bytes": l.address_space_bytes,
            "cpu_seconds": l.cpu_seconds,
            "open_files": l.open_files,
            "max_module_bytes": l.max_module_bytes,
            "workers": self.config.workers,
            "queue": self.config.queue,
        })
    }

    /// Compiles (or loads from the cache) a program for `client`. Returns the executable
    /// and, when there are some, the serialized bytes it was loaded from (a deserialized CPU
    /// executable does not serialize again faithfully, so these are the ones to keep).
    pub(crate) fn compile(
        &self,
        client: &Client,
        input: &CompileInput<'_>,
    ) -> Result<(LoadedExecutable, CompileSummary, Option<Vec<u8>>), Error> {
        let api = client.api().version();
        let plugin = self.plugin_identity(api);
        let options = input.options.encode();
        let module_sha = cache::hex(&cache::sha256(input.program));
        let (replicas, partitions) = input.options.counts();
        let base = json!({
            "isolation": self.config.isolation.name(),
            "module": {
                "sha256": module_sha,
                "size": input.program.len(),
                "format": input.format,
                "inputs": input.inputs,
                "refined_to": input.refine.map(|r| &r.types),
            },
            "plugin": {
                "path": plugin.path,
                "sha256": plugin.sha256.map(|s| cache::hex(&s)),
                "api_version": format!("{}.{}", plugin.api.0, plugin.api.1),
            },
            "options": {"num_replicas": replicas, "num_partitions": partitions, "hex": cache::hex(&options)},
            "limits": self.limits_json(),
            "address_space_limit_bytes": self.config.limits.address_space_bytes.map(|b| {
                sandbox::address_space_for(b, self.address_space_cap, input.program.len())
            }),
            "address_space_cap_bytes": self.address_space_cap,
        });
        let with = |extra: serde_json::Value| {
            let mut v = base.clone();
            if let (Some(o), serde_json::Value::Object(e)) = (v.as_object_mut(), extra) {
                o.extend(e);
            }
            v
        };
        let limit = self.config.limits.max_module_bytes;
        if input.program.len() > limit {
            self.stats.bump(Counter::TooLarge);
            let e = Error::TooLarge {
                what: "module",
                actual: input.program.len() as u64,
                limit: limit as u64,
            };
            self.audit(
                "compile_failed",
                with(json!({"outcome": "too_large", "error": e.to_string()})),
            );
            return Err(e);
        }
        // The cache, when configured and the plugin's identity is known.
        // A refined compile is keyed by the argument types too (one entry per concrete shape)
        // and by the refiner that rewrote the module.
        let keyed_options = match input.refine {
            Some(r) if self.cache.is_some() => {
                let refiner = self.refiner_sha.get_or_init(|| {
                    self.refiner
                        .as_deref()
                        .and_then(|p| cache::sha256_file(p).ok())
                        .map(|s| cache::hex(&s))
                        .unwrap_or_default()
                });
                [
                    &options[..],
                    b"\0refine:",
                    r.types.join(",").as_bytes(),
                    b"\0refiner:",
                    refiner.as_bytes(),
                ]
                .concat()
            }
            _ => options.clone(),
        };
        // A baked compile is keyed by which arguments became constants and by their bytes.
        let keyed_options = match input.bake {
            Some((b, _)) => {
                let args: Vec<String> = b
                    .args
                    .iter()
                    .map(|a| format!("{}:{}", a.index, a.ty))
                    .collect();
                [
                    &keyed_options[..],
                    b"\0bake:",
                    args.join(",").as_bytes(),
                    b"\0constants:",
                    b.sha256.as_bytes(),
                ]
                .concat()
            }
            None => keyed_options,
        };
        let key = match (&self.cache, plugin.sha256) {
            (Some(_), Some(sha)) => Some(CacheKey::new(
                input.program,
                input.format,
                &keyed_options,
                sha,
                plugin.api,
                &format!("{:?}", self.client_options),
                &self.xla_flags,
            )),
            _ => None,
        };
        if let (Some(c), Some(k)) = (&self.cache, &key) {
            let t = Instant::now();
            match c.get(k) {
                Ok(Some(bytes)) => {
                    // SAFETY: the bytes passed HMAC-SHA256 verification with this install's
                    // secret key and carry the key of exactly this module, options and plugin:
                    // they are an executable this install compiled earlier.
                    match unsafe { client.deserialize(&bytes) } {
                        Ok(exe) => {
                            self.stats.bump(Counter::CacheHits);
                            self.audit(
                                "cache_hit",
                                with(json!({"entry": k.hex(), "duration_ms": t.elapsed().as_secs_f64() * 1e3})),
                            );
                            return Ok((
                                exe,
                                CompileSummary {
                                    isolation: self.config.isolation,
                                    cache_hit: true,
                                    worker_pid: None,
                                    usage: None,
                                    worker: None,
                                },
                                Some(bytes),
                            ));
                        }
                        Err(e) => {
                            self.stats.bump(Counter::CacheRejected);
                            self.audit(
                                "cache_rejected",
                                with(json!({"entry": k.hex(), "error": format!("the plugin refused it: {e}")})),
                            );
                            c.remove(k);
                        }
                    }
                }
                Ok(None) => self.stats.bump(Counter::CacheMisses),
                Err(why) => {
                    self.stats.bump(Counter::CacheRejected);
                    self.audit(
                        "cache_rejected",
                        with(json!({"entry": k.hex(), "error": why.to_string()})),
                    );
                    c.remove(k);
                }
            }
        }
        self.stats.bump(Counter::Started);
        self.audit("compile_start", base.clone());
        let t = Instant::now();
        // The worker that answered (pid, resource usage), also when it refused the module.
        let mut answered = None;
        let result = match &self.pool {
            Some(pool) => self.compile_in_worker(pool, client, input, &options, &mut answered),
            None => self.compile_in_thread(client, input),
        };
        let wall = t.elapsed();
        match result {
            Ok((exe, summary, serialized)) => {
                self.stats.bump(Counter::Succeeded);
                let usage = summary.usage;
                self.stats.observe(
                    wall.as_secs_f64(),
                    usage.map(|u| (u.user + u.sys).as_secs_f64()),
                    usage.map(|u| u.peak_rss_bytes),
                );
                let mut stored = None;
                let mut serialized = serialized;
                if let (Some(c), Some(k)) = (&self.cache, &key) {
                    if serialized.is_none() {
                        serialized = serialize_checked(&exe, Some(input.options))
                            .ok()
                            .map(|s| s.0);
                    }
                    if let Some(b) = &serialized {
                        if c.put(k, b).is_ok() {
                            self.stats.bump(Counter::CacheStores);
                            stored = Some(k.hex());
                        }
                    }
                }
                self.audit(
                    "compile_end",
                    with(json!({
                        "outcome": "ok",
                        "duration_ms": wall.as_secs_f64() * 1e3,
                        "worker_pid": summary.worker_pid,
                        "cpu_user_ms": usage.map(|u| u.user.as_secs_f64() * 1e3),
                        "cpu_sys_ms": usage.map(|u| u.sys.as_secs_f64() * 1e3),
                        "peak_rss_bytes": usage.map(|u| u.peak_rss_bytes),
                        "exit": "exit code 0",
                        "cache_entry": stored,
                    })),
                );
                Ok((exe, summary, serialized))
            }
            Err(e) => {
                let (outcome, fail) = match &e {
                    Error::CompileRejected(_) => ("rejected", None),
                    Error::Busy { .. } => ("busy", None),
                    Error::Timeout(f) => ("timeout", Some(f)),
                    Error::SandboxViolation(f) => ("sandbox_violation", Some(f)),
                    Error::WorkerCrashed(f) => ("crashed", Some(f)),
                    _ => ("error", None),
                };
                match outcome {
                    "rejected" => self.stats.bump(Counter::Rejected),
                    "timeout" => self.stats.bump(Counter::Timeouts),
                    "sandbox_violation" => self.stats.bump(Counter::SandboxViolations),
                    "crashed" => self.stats.bump(Counter::Crashed),
                    _ => {}
                }
                if let Some(f) = fail {
                    self.stats.observe(
                        wall.as_secs_f64(),
                        Some((f.usage.user + f.usage.sys).as_secs_f64()),
                        Some(f.usage.peak_rss_bytes),
                    );
                }
                // A failed worker's own record, else the worker that answered with a refusal.
                let (pid, usage) = match fail {
                    Some(f) => (Some(f.pid), Some(f.usage)),
                    None => (answered.map(|(p, _)| p), answered.map(|(_, u)| u)),
                };
                if let (None, Some(u)) = (fail, usage) {
                    self.stats.observe(
                        wall.as_secs_f64(),
                        Some((u.user + u.sys).as_secs_f64()),
                        Some(u.peak_rss_bytes),
                    );
                }
                let fields = with(json!({
                    "outcome": outcome,
                    "duration_ms": wall.as_secs_f64() * 1e3,
                    "worker_pid": pid,
                    "cpu_user_ms": usage.map(|u| u.user.as_secs_f64() * 1e3),
                    "cpu_sys_ms": usage.map(|u| u.sys.as_secs_f64() * 1e3),
                    "peak_rss_bytes": usage.map(|u| u.peak_rss_bytes),
                    "exit": fail.and_then(|f| f.exit).map(|x| x.to_string()),
                    "error": e.to_string(),
                    "stderr_tail": fail.map(|f| f.stderr_tail.chars().rev().take(2000).collect::<String>().chars().rev().collect::<String>()),
                }));
                if outcome == "sandbox_violation" {
                    self.audit("sandbox_violation", fields.clone());
                }
                // A request refused for a full queue never reached a compiler.
                let event = if outcome == "busy" {
                    "busy"
                } else {
                    "compile_failed"
                };
                self.audit(event, fields);
                Err(e)
            }
        }
    }

    fn compile_in_worker(
        &self,
        pool: &Pool,
        client: &Client,
        input: &CompileInput<'_>,
        options: &[u8],
        answered: &mut Option<(u32, ChildUsage)>,
    ) -> Result<(LoadedExecutable, CompileSummary, Option<Vec<u8>>), Error> {
        // One copy of the module: straight into the frame written to the worker.
        let frame = protocol::encode_compile_frame(
            input.format,
            options,
            input.refine,
            input.bake,
            input.program,
        );
        let done = pool.run_encoded(frame).map_err(pool_error)?;
        *answered = Some((done.pid, done.usage));
        self.finish_worker_reply(client, done)
    }

    fn finish_worker_reply(
        &self,
        client: &Client,
        done: pool::Done,
    ) -> Result<(LoadedExecutable, CompileSummary, Option<Vec<u8>>), Error> {
        let reply = read_compile_reply(done.frame.kind, &done.frame.payload)
            .map_err(|e| Error::WorkerCrashed(protocol_failure(&done, e)))?;
        match reply {
            CompileReply::Compiled { worker, executable } => {
                // SAFETY: the bytes are the reply of our own worker process, read from its pipe
                // moments ago; the worker is this crate's code compiling with the same plugin.
                // (A worker compromised by the module could return hostile bytes: executables
                // from a worker are trusted exactly as much as the jail that built them.)
                let loaded = unsafe { client.deserialize(executable) }?;
                let bytes = Some(executable.to_vec());
                Ok((
                    loaded,
                    CompileSummary {
                        isolation: Isolation::Process,
                        cache_hit: false,
                        worker_pid: Some(done.pid),
                        usage: Some(done.usage),
                        worker,
                    },
                    bytes,
                ))
            }
            CompileReply::Refused(e) => Err(e),
            CompileReply::Fatal(message) => Err(Error::WorkerCrashed(Box::new(WorkerFailure {
                pid: done.pid,
                role: WorkerRole::Compile,
                cause: FailureCause::Setup(message),
                exit: done.exit,
                usage: done.usage,
                wall: done.wall,
                stderr_tail: String::new(),
            }))),
        }
    }

    fn compile_in_thread(
        &self,
        client: &Client,
        input: &CompileInput<'_>,
    ) -> Result<(LoadedExecutable, CompileSummary, Option<Vec<u8>>), Error> {
        if input.refine.is_some() || input.bake.is_some() {
            return Err(Error::Config(
                "shape-polymorphic models are refined, and params baked into modules, only \
                 inside jailed compile workers (the refiner is a full LLVM parsing untrusted \
                 bytes); use process isolation"
                    .into(),
            ));
        }
        // Admission: the same bounds as the process pool.
        {
            let mut s = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
            if s.0 >= self.config.workers {
                if s.1 >= self.config.queue {
                    self.stats.bump(Counter::Busy);
                    return Err(Error::Busy {
                        running: s.0,
                        queued: s.1,
                    });
                }
                s.1 += 1;
                while s.0 >= self.config.workers {
                    s = self.gate.cv.wait(s).unwrap_or_else(|p| p.into_inner());
                }
                s.1 -= 1;
            }
            s.0 += 1;
            self.stats.set_load(s.0, s.1);
        }
        let r = client
            .compile(input.program, input.format, input.options)
            .map_err(Error::CompileRejected);
        {
            let mut s = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
            s.0 -= 1;
            self.stats.set_load(s.0, s.1);
        }
        self.gate.cv.notify_one();
        Ok((
            r?,
            CompileSummary {
                isolation: Isolation::Thread,
                cache_hit: false,
                worker_pid: None,
                usage: None,
                worker: None,
            },
            None,
        ))
    }

    /// Pids of warm spare workers, waiting up to `wait` for one (test builds).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn spare_pids(&self, wait: Duration) -> Vec<u32> {
        self.pool
            .as_ref()
            .map(|p| p.spare_pids(wait))
            .unwrap_or_default()
    }

    /// Reads a shape-polymorphic module's argument names and shape assertions, in a jailed
    /// worker with the refiner (`None` with thread isolation, which never loads the refiner).
    pub(crate) fn describe(
        &self,
        client: &Client,
        module: &[u8],
    ) -> Result<Option<protocol::Description>, Error> {
        let Some(pool) = &self.pool else {
            return Ok(None);
        };
        let done = pool
            .run_encoded(protocol::encode(Kind::Describe, module))
            .map_err(pool_error)?;
        if done.frame.kind == Kind::Described {
            return serde_json::from_slice(&done.frame.payload)
                .map(Some)
                .map_err(|e| Error::Internal(format!("a worker's description: {e}")));
        }
        self.finish_worker_reply(client, done).map(|_| None)
    }

    /// Runs a test-only request in a jailed worker (test builds). A raw-options compile that
    /// succeeds answers `ret = 0, detail = "compiled"`.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn test_request(
        &self,
        client: &Client,
        req: &TestRequest,
    ) -> Result<TestResult, Error> {
        let Some(pool) = &self.pool else {
            return Err(Error::Config("test requests need process isolation".into()));
        };
        let body = serde_json::to_vec(req).map_err(|e| Error::Internal(e.to_string()))?;
        let t = Instant::now();
        let r = pool
            .run(Kind::Test, &body)
            .map_err(pool_error)
            .and_then(|done| {
                if done.frame.kind == Kind::TestResult {
                    serde_json::from_slice(&done.frame.payload)
                        .map_err(|e| Error::Internal(e.to_string()))
                } else {
                    self.finish_worker_reply(client, done).map(|_| TestResult {
                        ret: 0,
                        errno: 0,
                        detail: "compiled".into(),
                    })
                }
            });
        if let Err(e) = &r {
            self.record_test_failure(e, t.elapsed());
        }
        r
    }

    #[cfg(feature = "test-hooks")]
    fn record_test_failure(&self, e: &Error, wall: Duration) {
        let (outcome, f) = match e {
            Error::Timeout(f) => ("timeout", f),
            Error::SandboxViolation(f) => ("sandbox_violation", f),
            Error::WorkerCrashed(f) => ("crashed", f),
            _ => return,
        };
        let fields = json!({
            "isolation": "process",
            "request": "test",
            "outcome": outcome,
            "duration_ms": wall.as_secs_f64() * 1e3,
            "worker_pid": f.pid,
            "cpu_user_ms": f.usage.user.as_secs_f64() * 1e3,
            "cpu_sys_ms": f.usage.sys.as_secs_f64() * 1e3,
            "peak_rss_bytes": f.usage.peak_rss_bytes,
            "exit": f.exit.map(|x| x.to_string()),
            "error": e.to_string(),
        });
        match outcome {
            "timeout" => self.stats.bump(Counter::Timeouts),
            "sandbox_violation" => {
                self.stats.bump(Counter::SandboxViolations);
                self.audit("sandbox_violation", fields.clone());
            }
            _ => self.stats.bump(Counter::Crashed),
        }
        self.audit("compile_failed", fields);
    }
}

/// A compile worker's reply, read by the parent ([`read_compile_reply`]).
#[doc(hidden)]
#[derive(Debug)]
pub enum CompileReply<'a> {
    /// [`Kind::Compiled`]: the serialized executable (never empty; not yet loaded) and the
    /// worker's timings, when its statistics JSON decodes.
    Compiled {
        /// What the worker measured (`None`: its statistics did not decode; they are advisory).
        worker: Option<WorkerStats>,
        /// The serialized executable.
        executable: &'a [u8],
    },
    /// [`Kind::Rejected`]: the plugin or the refiner refused the module; the error to return.
    Refused(Error),
    /// [`Kind::Fatal`]: the worker could not set itself up; its message.
    Fatal(String),
}

/// Reads a compile worker's reply frame (kind and payload, as the parent's frame decoder
/// returned them) without loading anything: the parent-side reader of what a possibly hostile
/// worker wrote. Public (hidden) for the `worker_reply` fuzz target.
///
/// # Errors
/// A [`ProtocolError`] for a reply that is not a well-formed compile reply: a malformed
/// `Compiled` payload or `Rejected` JSON, or a kind a compile request is not answered with.
#[doc(hidden)]
pub fn read_compile_reply(kind: Kind, payload: &[u8]) -> Result<CompileReply<'_>, ProtocolError> {
    match kind {
        Kind::Compiled => {
            let (stats, executable) = protocol::decode_compiled(payload)?;
            Ok(CompileReply::Compiled {
                worker: serde_json::from_slice(stats).ok(),
                executable,
            })
        }
        Kind::Rejected => {
            let r: worker::Rejection =
                serde_json::from_slice(payload).map_err(|e| ProtocolError::Malformed {
                    kind: Kind::Rejected,
                    detail: e.to_string(),
                })?;
            Ok(CompileReply::Refused(match r.function.as_str() {
                worker::REFINE_ASSERTION => {
                    Error::InvalidInput(crate::validate::InputError::Constraint {
                        message: r.message,
                    })
                }
                worker::REFINE_UNSUPPORTED => {
                    Error::Artifact(crate::artifact::ArtifactError::unsupported(
                        "a module the refiner cannot make static",
                        r.message,
                    ))
                }
                worker::REFINE => Error::CompileRejected(PjrtError::Call {
                    function: worker::REFINE,
                    code: ErrorCode::from_raw(r.code.unwrap_or(3)),
                    message: r.message,
                }),
                "PJRT_Executable_Serialize" => Error::CompileRejected(PjrtError::Call {
                    function: "PJRT_Executable_Serialize",
                    code: ErrorCode::from_raw(r.code.unwrap_or(12)),
                    message: r.message,
                }),
                _ => Error::CompileRejected(PjrtError::Call {
                    function: "PJRT_Client_Compile",
                    code: ErrorCode::from_raw(r.code.unwrap_or(2)),
                    message: r.message,
                }),
            }))
        }
        Kind::Fatal => Ok(CompileReply::Fatal(
            String::from_utf8_lossy(payload).into_owned(),
        )),
        k => Err(ProtocolError::Unexpected(k)),
    }
}

fn protocol_failure(done: &pool::Done, e: ProtocolError) -> Box<WorkerFailure> {
    Box::new(WorkerFailure {
        pid: done.pid,
        role: WorkerRole::Compile,
        cause: FailureCause::Protocol(e),
        exit: done.exit,
        usage: done.usage,
        wall: done.wall,
        stderr_tail: String::new(),
    })
}

fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Busy { running, queued } => Error::Busy { running, queued },
        PoolError::Failed(f) => f.into_error(),
    }
}

/// Why `exe` cannot be serialized, if it cannot: this CPU plugin throws a C++ exception out of
/// `PJRT_Executable_Serialize` for an executable that calls oneDNN kernels (measured 2026-12-02
/// on keras_mobilenet with `cpu_kernels = "onednn"`: a garbage-sized allocation, then
/// `std::bad_alloc`), and a C++ exception through Rust frames aborts the process. So such an
/// executable is never handed to it: compile workers, the compile cache and process execution
/// all need the serialized form and refuse with this message instead.
pub(crate) fn unserializable(exe: &LoadedExecutable) -> Option<String> {
    let (_, prog) = exe.optimized_program().ok()?;
    let calls = crate::artifact::hlo::library_calls(&prog).ok()?;
    let onednn: usize = calls
        .iter()
        .filter(|(n, _)| n.starts_with("__onednn"))
        .map(|(_, c)| c)
        .sum();
    (onednn > 0).then(|| {
        format!(
            "the executable calls oneDNN kernels ({onednn} calls) and this CPU plugin aborts \
             serializing such an executable: it cannot leave the process that compiled it \
             (no compile worker, compile cache or execution worker); use cpu_kernels = \
             \"onednn\" with --isolation thread and in-process execution, or another \
             cpu_kernels setting"
        )
    })
}

/// [`LoadedExecutable::serialize`], refused (as a PJRT error that names the function) where
/// [`unserializable`] says the plugin would abort. With JAX's own options (`options`, what
/// `exe` was compiled with, `None` when unknown) XLA emits no oneDNN calls, and the optimized
/// module (which holds every baked weight) is not read.
pub(crate) fn serialize_checked(
    exe: &LoadedExecutable,
    options: Option<&CompileOptions>,
) -> Result<crate::pjrt::SerializedExecutable, PjrtError> {
    let check = options.is_none_or(|o| !o.is_jax_default());
    if let Some(why) = check.then(|| unserializable(exe)).flatten() {
        return Err(PjrtError::Call {
            function: "PJRT_Executable_Serialize",
            code: ErrorCode::Unimplemented,
            message: format!("not called by xlaguard: {why}"),
        });
    }
    exe.serialize()
}
