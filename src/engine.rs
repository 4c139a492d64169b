//! Engine (a plugin and its client, long-lived and shared) and Model (a compiled artifact).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::artifact::params::{BindReport, Mismatch};
use crate::artifact::{self, Artifact, ArtifactError, ArtifactKind, ProgramFormat};
use crate::compile::{
    CompileConfig, CompileInput, CompileSummary, Compiler, JailReport, StatsSnapshot,
    TrustedExecutable,
};
use crate::dims::DimExpr;
use crate::error::{BindError, Error};
use crate::exec::{ExecConfig, ExecSnapshot, Execution, Remote, RemoteModel};
use crate::kernels::CpuKernels;
use crate::pjrt::deps::preload_nvidia_libraries;
use crate::pjrt::{
    Api, Buffer, Client, ClientOptions, CompiledMemoryStats, ErrorCode, LoadError,
    LoadedExecutable, StagingBuffer,
};
use crate::plugin::{self, DeviceKind, FoundPlugin};
use crate::signature::{Dim, Signature, TensorSpec};
use crate::tensor::{Tensor, TensorRef};
use crate::validate;
use crate::validate::{BoundPolicy, Policy, PolicyObserver, Prepared, RunReport};

/// How to build an [`Engine`].
#[derive(Clone, Debug, Default)]
pub struct EngineConfig {
    /// A plugin file; when `None`, [`plugin::discover`] finds one.
    pub plugin: Option<PathBuf>,
    /// The device kind wanted from discovery (`None`: the first plugin found).
    pub device: Option<DeviceKind>,
    /// Run artifacts exported for another platform (e.g. a `cpu` export on a CUDA plugin).
    /// JAX refuses this; the StableHLO of simple models is platform-neutral, so it can be
    /// useful for comparisons, but platform-specific lowerings may fail or differ.
    pub allow_platform_mismatch: bool,
    /// Client create options; when `None`, [`ClientOptions::cpu`] on a CPU plugin (one
    /// device, synchronous) and the plugin's defaults elsewhere.
    pub client_options: Option<ClientOptions>,
    /// How compiles run: isolation, jail, limits, cache, audit log.
    pub compile: CompileConfig,
    /// Shape-polymorphic models: executables kept per concrete shape (least recently used
    /// evicted first).
    pub shapes: ShapeCacheConfig,
    /// Where models execute (in this process by default, or in jailed execution workers), and
    /// the memory budget every model is admitted against at load.
    pub execution: ExecConfig,
    /// CPU kernel libraries every compile may call ([`CpuKernels::Xla`]: JAX's choice);
    /// [`Engine::with_cpu_kernels`] changes it for the models loaded through the copy.
    pub cpu_kernels: CpuKernels,
}

/// Bounds of a shape-polymorphic model's in-memory executables, one per concrete shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShapeCacheConfig {
    /// Most executables kept per model.
    pub max_entries: usize,
    /// Most bytes of serialized executables kept per model.
    pub max_bytes: u64,
}

impl Default for ShapeCacheConfig {
    fn default() -> Self {
        ShapeCacheConfig {
            max_entries: 32,
            max_bytes: 1 << 30,
        }
    }
}

impl EngineConfig {
    /// Sets the plugin file.
    pub fn plugin(&mut self, path: impl Into<PathBuf>) -> &mut Self {
        self.plugin = Some(path.into());
        self
    }

    /// Sets the device kind for discovery.
    pub fn device(&mut self, kind: DeviceKind) -> &mut Self {
        self.device = Some(kind);
        self
    }
}

/// A loaded plugin and its client. Long-lived, shared (cloning is cheap), thread-safe.
#[derive(Clone, Debug)]
pub struct Engine {
    client: Client,
    plugin: FoundPlugin,
    allow_platform_mismatch: bool,
    compiler: Arc<Compiler>,
    shapes: ShapeCacheConfig,
    exec: Arc<ExecSetup>,
    /// Edits the compile options of this engine's models ([`EngineConfig::cpu_kernels`]).
    cpu_kernels: CpuKernels,
}

/// An engine's execution settings, and how to start its execution workers (built on first
/// need).
#[derive(Debug)]
struct ExecSetup {
    config: ExecConfig,
    limits: crate::compile::Limits,
    /// Why this engine cannot run execution workers (a non-CPU plugin), if so.
    refused: Option<String>,
    setup: std::sync::OnceLock<Result<Arc<crate::exec::Spawner>, String>>,
}

impl Engine {
    /// Finds and loads the plugin, creates a client, and sets up compilation: with process
    /// isolation (the default) the first compile worker is started, jailed, and its jail
    /// report kept ([`Engine::sandbox_report`]).
    ///
    /// # Errors
    /// [`Error::PluginNotFound`], [`Error::PluginLoad`], the plugin's client-creation error,
    /// [`Error::Config`] for a disallowed `XLA_FLAGS`, or a worker error if no compile worker
    /// can be started (e.g. the worker executable does not call
    /// [`crate::compile::worker_main_if_requested`]).
    pub fn new(config: &EngineConfig) -> Result<Engine, Error> {
        // An unknown flag in XLA_FLAGS aborts XLA at client creation: check it first.
        crate::compile::validate_xla_flags(&std::env::var("XLA_FLAGS").unwrap_or_default())?;
        let found = plugin::discover(config.plugin.as_deref(), config.device)?;
        // A CUDA plugin from pip needs the NVIDIA wheels beside it loaded first (as JAX does).
        let libraries =
            (found.kind == DeviceKind::Cuda).then(|| preload_nvidia_libraries(&found.path));
        let api = Api::load(&found.path).map_err(|e| match (&libraries, e) {
            (Some(l), LoadError::Dlopen { path, detail }) => Error::PluginLoad(LoadError::Dlopen {
                path,
                detail: format!("{detail}; NVIDIA libraries: {}", l.describe()),
            }),
            (_, e) => Error::PluginLoad(e),
        })?;
        let api_version = api.version();
        // jnp.linalg lowers to LAPACK custom calls whose handlers jaxlib registers with its CPU
        // client; the plugin has none. Register ours (the compile worker does the same).
        #[cfg(feature = "lapack")]
        if found.kind == DeviceKind::Cpu && api.has_ffi_extension() {
            crate::lapack::register(&api).map_err(|e| match e {
                crate::lapack::LapackError::Register { error, .. } => Error::Plugin(error),
                e => Error::Internal(e.to_string()),
            })?;
        }
        let options = match &config.client_options {
            Some(o) => o.clone(),
            None if found.kind == DeviceKind::Cpu => ClientOptions::cpu(),
            None => ClientOptions::new(),
        };
        let (client, options) = match Client::new(api.clone(), &options) {
            // A CPU plugin that does not know our default options: fall back to its defaults.
            Err(e)
                if config.client_options.is_none()
                    && e.code() == Some(ErrorCode::InvalidArgument)
                    && !options.values().is_empty() =>
            {
                (
                    Client::new(api, &ClientOptions::new())?,
                    ClientOptions::new(),
                )
            }
            r => (
                r.map_err(|source| Error::ClientCreate {
                    plugin: found.path.clone(),
                    error: source,
                    libraries: libraries.as_ref().map(|l| l.describe()).unwrap_or_default(),
                })?,
                options,
            ),
        };
        // The jail's syscall and file allowlists are the CPU plugin's; a GPU plugin needs the
        // driver's device files and ioctls, so it compiles in-process until it has a profile.
        let mut compile = config.compile.clone();
        let mut gpu_note = None;
        if found.kind != DeviceKind::Cpu && compile.isolation == crate::compile::Isolation::Process
        {
            let why = format!(
                "the compile jail has a profile for the CPU plugin only; the {} plugin compiles in \
                 this process (thread isolation)",
                found.kind.name()
            );
            if compile.sandbox.strict {
                return Err(Error::Config(why));
            }
            compile.isolation = crate::compile::Isolation::Thread;
            gpu_note = Some(why);
        }
        let mut compiler = Compiler::new(&compile, &found.path, api_version, &options)?;
        if let Some(why) = gpu_note {
            compiler.note_unenforced(why);
        }
        let refused = (found.kind != DeviceKind::Cpu).then(|| {
            format!(
                "the execution jail has a profile for the CPU plugin only; the {} plugin's \
                 models run in this process (execution = \"in-process\")",
                found.kind.name()
            )
        });
        let mut exec_config = config.execution.clone();
        if let (Some(why), Execution::Process) = (&refused, exec_config.execution) {
            if config.compile.sandbox.strict {
                return Err(Error::Config(why.clone()));
            }
            eprintln!("xlaguard: not enforced: {why}");
            exec_config.execution = Execution::InProcess;
        }
        let exec = ExecSetup {
            config: exec_config,
            limits: crate::compile::Limits {
                deadline: config.execution.startup_timeout,
                startup_timeout: config.execution.startup_timeout,
                address_space_bytes: Some(config.execution.address_space_base),
                host_memory_percent: config.compile.limits.host_memory_percent,
                // RLIMIT_CPU counts a process's whole life: a long-lived worker has none; its
                // requests have deadlines instead.
                cpu_seconds: None,
                open_files: config.compile.limits.open_files,
                max_module_bytes: config.compile.limits.max_module_bytes,
                max_executable_bytes: config.compile.limits.max_executable_bytes,
            },
            refused,
            setup: std::sync::OnceLock::new(),
        };
        Ok(Engine {
            client,
            plugin: found,
            allow_platform_mismatch: config.allow_platform_mismatch,
            shapes: config.shapes,
            compiler: Arc::new(compiler),
            exec: Arc::new(exec),
            cpu_kernels: config.cpu_kernels,
        })
    }

    /// This engine, compiling the models loaded through it with the CPU kernel libraries
    /// `kernels` (the same plugin, client, compiler and workers: cloning is cheap). The models
    /// keep the setting for every later compile (a new shape, baked params).
    pub fn with_cpu_kernels(&self, kernels: CpuKernels) -> Engine {
        Engine {
            cpu_kernels: kernels,
            ..self.clone()
        }
    }

    /// The CPU kernel libraries this engine's compiles may call.
    pub fn cpu_kernels(&self) -> CpuKernels {
        self.cpu_kernels
    }

    /// The options a compile sends: JAX's, with `XLA_FLAGS`, then the CPU kernel setting.
    fn compile_options(&self) -> Result<std::borrow::Cow<'_, crate::pjrt::CompileOptions>, Error> {
        let base = self.compiler.options();
        if self.cpu_kernels == CpuKernels::Xla {
            return Ok(std::borrow::Cow::Borrowed(base));
        }
        let mut o = base.clone();
        self.cpu_kernels
            .apply(&mut o)
            .map_err(|e| Error::Internal(format!("cpu_kernels {}: {e}", self.cpu_kernels)))?;
        Ok(std::borrow::Cow::Owned(o))
    }

    /// How models of this engine execute by default, and their memory budget.
    pub fn execution(&self) -> &ExecConfig {
        &self.exec.config
    }

    /// How to start execution workers (built once).
    fn exec_worker_setup(&self) -> Result<Arc<crate::exec::Spawner>, Error> {
        if let Some(why) = &self.exec.refused {
            return Err(Error::Config(why.clone()));
        }
        self.exec
            .setup
            .get_or_init(|| {
                self.compiler
                    .exec_worker_setup(&self.exec.limits)
                    .map(|s| crate::exec::Spawner::new(s, self.exec.config.spare_workers))
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(Error::Config)
    }

    /// Pids of the warm, jailed spare execution workers, waiting up to `wait` for one (test
    /// builds only; none before a model ran in a process).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn exec_spare_pids(&self, wait: std::time::Duration) -> Vec<u32> {
        match self.exec.setup.get() {
            Some(Ok(s)) => s.spare_pids(wait),
            _ => Vec::new(),
        }
    }

    /// The memory budget of one execution, and where it comes from (`None`: unknown).
    fn execution_budget(&self) -> Option<(u64, String)> {
        match self.exec.config.max_execution_bytes {
            Some(b) => Some((b, "max_execution_bytes".into())),
            None => crate::compile::sandbox::physical_memory()
                .map(|m| (m / 2, format!("half the host's {} MiB of memory", m >> 20))),
        }
    }

    /// What the compile jail enforces (and what it cannot), as the first worker reported it;
    /// for thread isolation, a report saying that nothing is enforced.
    pub fn sandbox_report(&self) -> &JailReport {
        self.compiler.report()
    }

    /// Counters and histograms of this engine's compiles (for metrics).
    pub fn compile_stats(&self) -> StatsSnapshot {
        self.compiler.stats()
    }

    /// Where this engine compiles.
    pub fn isolation(&self) -> crate::compile::Isolation {
        self.compiler.isolation()
    }

    /// Loads an artifact with an executable serialized earlier (by
    /// [`Model::serialized_executable`] on the same plugin), without compiling. Building the
    /// [`TrustedExecutable`] is the `unsafe` step: see its safety contract.
    ///
    /// # Errors
    /// The plugin's error if it cannot load the bytes, or as [`Engine::load_artifact`].
    pub fn load_serialized(
        &self,
        a: Artifact,
        executable: TrustedExecutable<'_>,
    ) -> Result<Model, Error> {
        a.check_supported()?;
        let platform_index = a.platform_index(self.client.platform())?;
        let started = std::time::Instant::now();
        let exe = crate::compile::load_trusted(&self.client, executable)?;
        let summary = CompileSummary {
            isolation: self.compiler.isolation(),
            cache_hit: false,
            worker_pid: None,
            usage: None,
            worker: None,
        };
        let mut m = Model::new(
            self.clone(),
            a,
            exe,
            platform_index,
            started.elapsed(),
            summary,
        )?;
        m.serialized = Some(Arc::from(executable.bytes()));
        Ok(m)
    }

    /// Runs a test-only request in a jailed compile worker (test builds only).
    ///
    /// # Errors
    /// The worker's fate as a typed error.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_request(
        &self,
        req: &crate::compile::TestRequest,
    ) -> Result<crate::compile::TestResult, Error> {
        self.compiler.test_request(&self.client, req)
    }

    /// Pids of the warm, jailed spare workers, waiting up to `wait` for one (test builds only).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn spare_worker_pids(&self, wait: std::time::Duration) -> Vec<u32> {
        self.compiler.spare_pids(wait)
    }

    /// The PJRT client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The plugin in use and how it was found.
    pub fn plugin(&self) -> &FoundPlugin {
        &self.plugin
    }

    /// Loads and compiles a model file (`.jaxexport`, `.mlir`, `.mlirbc`, HLO proto), with the
    /// value policy beside it ([`Policy::beside`]: `model.jaxexport` → `model.policy.toml`) when
    /// that file exists, else the default policy (float inputs reject NaN and ±Inf).
    ///
    /// # Errors
    /// [`Error::Artifact`] for a malformed or unsupported artifact, [`Error::CompileRejected`]
    /// when the plugin refuses it, [`Error::Policy`] for a policy file that is malformed or does
    /// not fit the model.
    pub fn load_file(&self, path: &Path) -> Result<Model, Error> {
        let a = artifact::load_file(path)?;
        let mut model = self.load_artifact(a)?;
        let beside = Policy::beside(path);
        if beside.is_file() {
            model.set_policy(Policy::load(&beside)?)?;
        }
        Ok(model)
    }

    /// Loads and compiles a model from bytes.
    ///
    /// # Errors
    /// As [`Engine::load_file`].
    pub fn load_bytes(&self, bytes: &[u8]) -> Result<Model, Error> {
        self.load_artifact(artifact::load(bytes)?)
    }

    /// Compiles a parsed artifact.
    ///
    /// # Errors
    /// As [`Engine::load_file`].
    pub fn load_artifact(&self, a: Artifact) -> Result<Model, Error> {
        a.check_supported()?;
        if !self.allow_platform_mismatch && !a.supports_platform(self.client.platform()) {
            return Err(ArtifactError::PlatformNotInArtifact {
                requested: self.client.platform().to_string(),
                available: a.platforms.clone(),
            }
            .into());
        }
        let platform_index = a.platform_index(self.client.platform())?;
        if a.is_polymorphic() {
            return self.load_polymorphic(a, platform_index);
        }
        let format = match a.format {
            ProgramFormat::Mlir => "mlir",
            ProgramFormat::Hlo => "hlo",
        };
        let started = std::time::Instant::now();
        let inputs = a
            .signature
            .as_ref()
            .map(|s| s.inputs.iter().map(TensorSpec::type_string).collect())
            .unwrap_or_default();
        let options = self.compile_options()?;
        let (exe, summary, serialized) = self.compiler.compile(
            &self.client,
            &CompileInput {
                program: &a.program,
                format,
                options: &options,
                inputs,
                refine: None,
                bake: None,
            },
        )?;
        let compile_time = started.elapsed();
        let mut m = Model::new(self.clone(), a, exe, platform_index, compile_time, summary)?;
        m.serialized = serialized.map(Arc::from);
        Ok(m)
    }

    /// Compiles a parsed artifact with `params` baked in: bound as [`Model::bind`] binds them
    /// (same matching, checks, report and value `policy`, which is set first), then compiled again with each bound
    /// tensor a constant of the module, so XLA can optimize around the weights (fold batch
    /// norms, pre-arrange filters) as it does for an export with baked weights. The price:
    /// other params need another compile (cached by the constants' sha256), not just new
    /// buffers. StableHLO modules only; the rewrite runs in a jailed worker with the refiner.
    ///
    /// # Errors
    /// As [`Engine::load_artifact`] and [`Model::bind`]; [`Error::Config`] for an HLO module
    /// or a shape-polymorphic one; a compile rejection naming the baking step when the module
    /// cannot be rewritten (no refiner, a boolean or empty tensor).
    pub fn load_baked(
        &self,
        a: Artifact,
        params: &crate::artifact::params::Params,
        policy: Option<Policy>,
    ) -> Result<(Model, BindReport), Error> {
        if a.format != ProgramFormat::Mlir {
            return Err(Error::Config(
                "params can be baked into StableHLO modules only, not HLO".into(),
            ));
        }
        let program = a.program.clone();
        let mut m = self.load_artifact(a)?;
        if let Some(p) = policy {
            m.set_policy(p)?;
        }
        let report = m.bind_with(params, Some(&program))?;
        Ok((m, report))
    }

    /// A shape-polymorphic model: nothing is compiled now; each concrete shape a request
    /// brings is refined (in a jailed worker) and compiled on first use.
    fn load_polymorphic(
        &self,
        mut a: Artifact,
        platform_index: Option<i32>,
    ) -> Result<Model, Error> {
        let sig = a
            .signature
            .clone()
            .ok_or_else(|| Error::Internal("a polymorphic artifact without a signature".into()))?;
        if !self.compiler.refiner().is_some_and(Path::is_file) {
            return Err(Error::Config(format!(
                "{} inputs {} are shape-polymorphic: running them needs the StableHLO refiner \
                 (torch-mlir's libTorchMLIRAggregateCAPI.so, pinned in \
                 third_party/requirements-refiner.txt); fetch it with `{}`, or name it with \
                 --refiner / XLAGUARD_REFINER{}",
                a.kind,
                sig.inputs
                    .iter()
                    .filter(|s| s.is_polymorphic())
                    .map(|s| format!("'{}' {}", s.name, s.type_string()))
                    .collect::<Vec<_>>()
                    .join(", "),
                crate::plugin::FETCH_REFINER,
                self.compiler
                    .refiner()
                    .map(|p| format!(" ({} does not exist)", p.display()))
                    .unwrap_or_default()
            )));
        }
        let parse = |specs: &[TensorSpec]| -> Result<Vec<Vec<Option<DimExpr>>>, Error> {
            specs
                .iter()
                .map(|s| {
                    s.shape
                        .iter()
                        .map(|d| match d {
                            Dim::Static(_) => Ok(None),
                            Dim::Symbolic(t) => DimExpr::parse(t).map(Some).map_err(|m| {
                                Error::Artifact(ArtifactError::corrupt(
                                    "symbolic dimension",
                                    format!("{} of '{}': {m}", s.type_string(), s.name),
                                ))
                            }),
                        })
                        .collect()
                })
                .collect()
        };
        let inputs = parse(&sig.inputs)?;
        let outputs = parse(&sig.outputs)?;
        // Argument names and constraints live in the module (JAX puts the names on the wrapped
        // main): read them in a jailed worker, with the refiner.
        let mut sig = sig;
        let mut constraints = Vec::new();
        if let Some(d) = self.compiler.describe(&self.client, &a.program)? {
            let names: Vec<Option<artifact::hlo::ParameterName>> = d
                .arg_names
                .into_iter()
                .map(|n| {
                    n.map(|op_name| artifact::hlo::ParameterName {
                        instruction: String::new(),
                        op_name,
                    })
                })
                .collect();
            adopt_names(
                &mut sig,
                &a.input_paths,
                &names,
                a.kept_inputs.as_deref(),
                0,
            );
            constraints = d
                .assertions
                .iter()
                .filter_map(|m| constraint_of(m))
                .collect();
        }
        let program = std::mem::take(&mut a.program);
        let policy = BoundPolicy::default_for(&sig);
        Ok(Model {
            engine: self.clone(),
            policy,
            observer: None,
            staging: None,
            signature: sig,
            info: ModelInfo {
                kind: a.kind,
                platforms: a.platforms.clone(),
                calling_convention_version: a.calling_convention_version,
                kept_inputs: a.kept_inputs.clone(),
                platform_index,
                signature_source: "artifact",
                constraints,
                compile_time: std::time::Duration::ZERO,
                compile: CompileSummary {
                    isolation: self.compiler.isolation(),
                    cache_hit: false,
                    worker_pid: None,
                    usage: None,
                    worker: None,
                },
                memory: None,
                execution_bytes: None,
            },
            exe: None,
            serialized: None,
            platform_buffer: None,
            poly: Some(Box::new(Poly {
                meta: a,
                program,
                inputs,
                outputs,
                cache: std::sync::Mutex::new(Vec::new()),
                bounds: self.shapes,
            })),
            bound: None,
            exec: ModelExec::of(&self.exec.config),
            remote: std::sync::Mutex::new(None),
        })
    }
}

/// `spec`'s shape with its symbolic dimensions (`dims`, parsed) evaluated under `b`; `None`
/// when one has no non-negative value there.
fn concrete_shape(
    spec: &TensorSpec,
    dims: &[Option<DimExpr>],
    b: &crate::dims::Bindings,
) -> Option<Vec<u64>> {
    spec.shape
        .iter()
        .zip(dims)
        .map(|(d, e)| match (d, e) {
            (_, Some(e)) => u64::try_from(e.eval(b)?).ok(),
            (Dim::Static(n), None) => Some(*n),
            (Dim::Symbolic(_), None) => None,
        })
        .collect()
}

/// A shape-polymorphic model's module and its executables per concrete shape.
struct Poly {
    /// The artifact, without its program.
    meta: Artifact,
    /// The portable artifact to refine.
    program: Vec<u8>,
    /// Each input's dimensions, parsed where symbolic.
    inputs: Vec<Vec<Option<DimExpr>>>,
    /// Each output's dimensions, parsed where symbolic.
    outputs: Vec<Vec<Option<DimExpr>>>,
    /// Concrete input shapes → the model compiled for them, least recently used first. A slot
    /// is locked while its shape compiles, so a second request for it waits for that compile
    /// while other shapes go on.
    cache: std::sync::Mutex<Vec<(Vec<Vec<u64>>, ShapeSlot)>>,
    bounds: ShapeCacheConfig,
}

type ShapeSlot = Arc<std::sync::Mutex<Option<Arc<Model>>>>;

/// What is known about a loaded model besides its signature.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// The artifact's kind.
    pub kind: ArtifactKind,
    /// Platforms the export was lowered for (empty when the artifact does not say).
    pub platforms: Vec<String>,
    /// `jax.export` calling convention version.
    pub calling_convention_version: Option<u32>,
    /// Inputs the module actually takes (the others are accepted and ignored).
    pub kept_inputs: Option<Vec<usize>>,
    /// The platform index passed as the module's first argument, for multi-platform exports.
    pub platform_index: Option<i32>,
    /// Where the signature came from: the artifact's metadata or the compiled executable.
    pub signature_source: &'static str,
    /// A shape-polymorphic export's shape constraints, as JAX states them (`s <= 16`).
    pub constraints: Vec<String>,
    /// Wall time of the compile (or of the cache load).
    pub compile_time: std::time::Duration,
    /// Where the compile ran, whether the cache served it, and what the worker used.
    pub compile: CompileSummary,
    /// The plugin's compiled memory statistics of the executable (`None`: polymorphic, or the
    /// plugin does not say).
    pub memory: Option<CompiledMemoryStats>,
    /// Bytes one execution needs by those statistics (arguments + outputs + temporaries +
    /// generated code − aliased).
    pub execution_bytes: Option<u64>,
}

/// A compiled model: signature, executable, and what the module needs besides user inputs.
pub struct Model {
    engine: Engine,
    signature: Signature,
    info: ModelInfo,
    exe: Option<LoadedExecutable>,
    /// The bytes the executable was loaded from (worker reply or cache entry), if any.
    serialized: Option<Arc<[u8]>>,
    /// Resident i32 scalar for the platform-index argument.
    platform_buffer: Option<Buffer>,
    /// The value policy, bound to the signature.
    policy: BoundPolicy,
    /// Told about every rejection and sanitization.
    observer: Option<Arc<dyn PolicyObserver>>,
    /// CPU plugin: sets of resident input buffers refilled in place per call (one set per
    /// concurrent call, up to [`STAGING_SLOTS`] kept).
    staging: Option<std::sync::Mutex<Vec<Vec<StagingBuffer>>>>,
    /// Shape-polymorphic models (then `exe` is `None`): the module and its executables per
    /// concrete shape.
    poly: Option<Box<Poly>>,
    /// Inputs bound to stored tensors ([`Model::bind`]), resident on the device.
    bound: Option<Box<Bound>>,
    /// Where this model executes, with how many workers and what default deadline.
    exec: ModelExec,
    /// Process execution: the model's execution workers, started on first need.
    remote: std::sync::Mutex<Option<Arc<Remote>>>,
}

/// A model's execution settings.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ModelExec {
    execution: Execution,
    workers: usize,
    deadline: Option<std::time::Duration>,
    /// Test builds: workers reply with this many garbage bytes.
    test_garbage_reply: Option<u64>,
    /// Test builds: workers try to start a thread before each request.
    test_spawn_thread: bool,
}

impl ModelExec {
    fn of(c: &ExecConfig) -> ModelExec {
        ModelExec {
            execution: c.execution,
            workers: c.workers,
            deadline: c.deadline,
            test_garbage_reply: None,
            test_spawn_thread: false,
        }
    }
}

/// The inputs a model took from a params file: uploaded once, passed on every call.
struct Bound {
    /// The module's whole signature (`Model::signature` then lists only the unbound inputs).
    full: Signature,
    /// Full input index of each request-facing input.
    user_to_full: Vec<usize>,
    /// Per full input: `Some(i)` for the resident buffer `buffers[i]` of a bound input the
    /// module keeps, `None` for a request input (or a bound one the module ignores).
    slots: Vec<Option<usize>>,
    /// The resident device buffers of the bound inputs the module keeps.
    buffers: Vec<Buffer>,
    /// What was bound, from where.
    info: BoundParams,
}

/// The inputs of a model bound to stored tensors ([`Model::bind`]), as `inspect` shows them.
#[derive(Clone, Debug)]
pub struct BoundParams {
    /// The params file (or the name given to in-memory tensors).
    pub source: String,
    /// SHA-256 of the params file (hex).
    pub sha256: String,
    /// Bytes of the bound tensors.
    pub bytes: u64,
    /// The bound inputs, in module order.
    pub inputs: Vec<TensorSpec>,
    /// True when the tensors are constants of the executable ([`Engine::load_baked`]), not
    /// resident arguments.
    pub baked: bool,
}

/// The compiled executable's optimized HLO module (unwrapped from its `HloWithConfig` when
/// the plugin wraps it).
fn optimized_module(exe: &LoadedExecutable) -> Result<Vec<u8>, Error> {
    let (_, prog) = exe.optimized_program()?;
    Ok(<HloWithConfig as prost::Message>::decode(prog.as_slice())
        .map(|w| w.hlo_module)
        .unwrap_or(prog))
}

/// True when both lists hold the same dtypes and shapes, in order (names aside).
fn same_types(a: &[&TensorSpec], b: &[&TensorSpec]) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| x.dtype == y.dtype && x.shape == y.shape)
}

/// The argument an input name belongs to: `variables` for `variables['params']['w']`,
/// `trainable` for `trainable[0]`, `params` for `params.layers[0].weight`.
fn argument_of(name: &str) -> &str {
    name.find(['[', '.']).map_or(name, |i| &name[..i])
}

/// Most sets of resident input buffers a model keeps for reuse.
const STAGING_SLOTS: usize = 8;

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("signature", &self.signature)
            .field("info", &self.info)
            .finish()
    }
}

/// Decodes the `HloModuleProtoWithConfig` wrapper of `OptimizedProgram` (field 1: the module).
#[derive(Clone, PartialEq, prost::Message)]
struct HloWithConfig {
    #[prost(bytes = "vec", tag = "1")]
    hlo_module: Vec<u8>,
}

impl Model {
    fn new(
        engine: Engine,
        a: Artifact,
        exe: LoadedExecutable,
        platform_index: Option<i32>,
        compile_time: std::time::Duration,
        compile: CompileSummary,
    ) -> Result<Model, Error> {
        let compiled_outputs: Vec<TensorSpec> = exe
            .output_types()
            .iter()
            .zip(exe.output_dims())
            .enumerate()
            .map(|(i, (&d, dims))| TensorSpec {
                name: format!("out{i}"),
                dtype: d,
                shape: dims.iter().map(|&n| Dim::Static(n as u64)).collect(),
                jax_type: None,
            })
            .collect();
        let (signature, source) = match a.signature.clone() {
            Some(sig) => {
                // The compiled module must agree with the artifact's own metadata.
                let same = sig.outputs.len() == compiled_outputs.len()
                    && sig
                        .outputs
                        .iter()
                        .zip(&compiled_outputs)
                        .all(|(s, c)| s.dtype == c.dtype && s.shape == c.shape);
                let show = |v: &[&TensorSpec]| {
                    v.iter()
                        .map(|s| s.type_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let lie = |side: &str, declared: &[&TensorSpec], compiled: &[&TensorSpec]| {
                    Error::Artifact(crate::artifact::ArtifactError::corrupt(
                        "signature",
                        format!(
                            "the artifact declares {side} ({}) but the compiled module {} ({}); \
                             refusing a model whose checked signature is not the one that runs",
                            show(declared),
                            if side == "inputs" { "takes" } else { "returns" },
                            show(compiled)
                        ),
                    ))
                };
                if !same {
                    let d: Vec<&TensorSpec> = sig.outputs.iter().collect();
                    let c: Vec<&TensorSpec> = compiled_outputs.iter().collect();
                    return Err(lie("outputs", &d, &c));
                }
                // The inputs too, against the compiled entry computation's parameters: the
                // platform index (if any), then the arguments the module kept.
                let module = optimized_module(&exe)?;
                let params = artifact::hlo::program_shape(&module)?.inputs;
                let skip = usize::from(platform_index.is_some());
                let declared: Vec<&TensorSpec> = match a.kept_inputs.as_deref() {
                    Some(k) => k.iter().filter_map(|&i| sig.inputs.get(i)).collect(),
                    None => sig.inputs.iter().collect(),
                };
                let compiled: Vec<&TensorSpec> = params.iter().skip(skip).collect();
                if !same_types(&declared, &compiled) {
                    return Err(lie("inputs", &declared, &compiled));
                }
                let mut sig = sig;
                adopt_parameter_names(
                    &mut sig,
                    &a.input_paths,
                    &module,
                    a.kept_inputs.as_deref(),
                    skip,
                );
                (sig, "artifact")
            }
            None => {
                let module = optimized_module(&exe)?;
                let shape = artifact::hlo::program_shape(&module)?;
                let mut outputs = compiled_outputs;
                for (o, s) in outputs.iter_mut().zip(&shape.outputs) {
                    o.name.clone_from(&s.name);
                }
                (
                    Signature {
                        inputs: shape.inputs,
                        outputs,
                    },
                    "executable",
                )
            }
        };
        let platform_buffer = match platform_index {
            Some(i) => Some(engine.client.buffer_from_host(
                &i.to_le_bytes(),
                crate::DType::I32,
                &[],
            )?),
            None => None,
        };
        let policy = BoundPolicy::default_for(&signature);
        let staging =
            (engine.client.platform() == "cpu").then(|| std::sync::Mutex::new(Vec::new()));
        // Memory admission: an execution that needs more than the budget is refused now, not
        // discovered by the OOM killer.
        let memory = exe.memory_stats().ok();
        let execution_bytes = memory.map(|m| execution_need(&m).0);
        if let (Some(m), Some((budget, source))) = (memory, engine.execution_budget()) {
            check_budget(&m, budget, &source)?;
        }
        let exec = ModelExec::of(&engine.exec.config);
        Ok(Model {
            engine,
            policy,
            observer: None,
            staging,
            signature,
            info: ModelInfo {
                kind: a.kind,
                platforms: a.platforms,
                calling_convention_version: a.calling_convention_version,
                kept_inputs: a.kept_inputs,
                platform_index,
                signature_source: source,
                constraints: Vec::new(),
                compile_time,
                compile,
                memory,
                execution_bytes,
            },
            exe: Some(exe),
            serialized: None,
            platform_buffer,
            poly: None,
            bound: None,
            exec,
            remote: std::sync::Mutex::new(None),
        })
    }

    /// The inputs each request gives (all of the module's, less those bound with
    /// [`Model::bind`]) and the outputs.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The module's whole signature, bound inputs included.
    pub fn full_signature(&self) -> &Signature {
        self.bound.as_ref().map_or(&self.signature, |b| &b.full)
    }

    /// The inputs bound to stored tensors, if any ([`Model::bind`]).
    pub fn bound_params(&self) -> Option<&BoundParams> {
        self.bound.as_ref().map(|b| &b.info)
    }

    /// Binds inputs to stored tensors by name: each is checked (dtype and shape exactly),
    /// uploaded to the device once, and passed on every call; requests then give only the
    /// other inputs ([`Model::signature`]). Every input under an argument the params bind
    /// (`variables` for `variables['params']['w']`) must be given. Binding again replaces
    /// the previous binding. The value policy's rules for bound inputs are dropped.
    ///
    /// # Errors
    /// [`Error::Bind`] (with the report) for a missing or mismatched tensor, nothing bound;
    /// [`Error::Config`] for a shape-polymorphic model; the plugin's error for an upload.
    pub fn bind(&mut self, params: &crate::artifact::params::Params) -> Result<BindReport, Error> {
        self.bind_with(params, None)
    }

    /// [`Model::bind`], or with `bake` (the model's StableHLO module) the bound tensors become
    /// constants of a new executable instead of resident arguments.
    fn bind_with(
        &mut self,
        params: &crate::artifact::params::Params,
        bake: Option<&[u8]>,
    ) -> Result<BindReport, Error> {
        if self.poly.is_some() {
            return Err(Error::Config(
                "binding params to a shape-polymorphic model is not supported".into(),
            ));
        }
        if self.bound.as_ref().is_some_and(|b| b.info.baked) {
            return Err(Error::Config(format!(
                "params {} are baked into this model's executable; load the model again to \
                 bind other params",
                self.bound.as_ref().map_or("", |b| b.info.source.as_str())
            )));
        }
        let full = self.full_signature().clone();
        let mut report = BindReport::default();
        let bound_args: std::collections::HashSet<&str> = params
            .tensors()
            .iter()
            .map(|(n, _)| argument_of(n))
            .collect();
        let mut chosen: Vec<Option<&Tensor>> = Vec::with_capacity(full.inputs.len());
        for spec in &full.inputs {
            match params.get(&spec.name) {
                Some(t) => {
                    let shape = spec.static_shape();
                    if t.dtype() != spec.dtype || shape.as_deref() != Some(t.shape()) {
                        report.mismatched.push(Mismatch {
                            name: spec.name.clone(),
                            expected: spec.type_string(),
                            got: t.type_string(),
                        });
                        chosen.push(None);
                    } else {
                        report.applied.push(spec.name.clone());
                        chosen.push(Some(t));
                    }
                }
                None => {
                    if bound_args.contains(argument_of(&spec.name)) {
                        report.missing.push(spec.name.clone());
                    } else {
                        report.unbound.push(spec.name.clone());
                    }
                    chosen.push(None);
                }
            }
        }
        report.unused = params
            .tensors()
            .iter()
            .filter(|(n, _)| full.input_index(n).is_none())
            .map(|(n, _)| n.clone())
            .collect();
        if !report.is_ok() {
            return Err(Error::Bind(Box::new(BindError {
                source_name: params.source().to_string(),
                report,
            })));
        }
        // The value policy's rules for bound inputs, if it names any, apply once, now: a NaN in
        // the weights is refused at load (or sanitized, as the rule says), not per call.
        let ruled: Vec<usize> = (0..full.inputs.len())
            .filter(|&f| {
                chosen[f].is_some()
                    && self
                        .policy
                        .policy()
                        .inputs
                        .contains_key(&full.inputs[f].name)
            })
            .collect();
        let mut sanitized: std::collections::HashMap<usize, Vec<u8>> = Default::default();
        if !ruled.is_empty() {
            let mut rules = Policy::new();
            for &f in &ruled {
                let name = &full.inputs[f].name;
                if let Some(ip) = self.policy.policy().inputs.get(name) {
                    rules.inputs.insert(name.clone(), ip.clone());
                }
            }
            let sig = Signature {
                inputs: ruled.iter().map(|&f| full.inputs[f].clone()).collect(),
                outputs: Vec::new(),
            };
            let checker = BoundPolicy::new(rules, &sig)?;
            let views: Vec<TensorRef<'_>> = ruled
                .iter()
                .filter_map(|&f| chosen[f].map(Tensor::view))
                .collect();
            let prepared = checker.apply(&views, self.observer.as_deref())?;
            for (j, &f) in ruled.iter().enumerate() {
                if let Some(b) = prepared.staged(j) {
                    sanitized.insert(f, b.to_vec());
                }
            }
            let run = checker.recycle(prepared);
            for ir in &run.inputs {
                for c in &ir.changes {
                    report.checked.push(format!("'{}': {c}", ir.name));
                }
            }
            for &f in &ruled {
                if !run.inputs.iter().any(|ir| ir.name == full.inputs[f].name) {
                    report
                        .checked
                        .push(format!("'{}': passed", full.inputs[f].name));
                }
            }
        }
        let mut slots = Vec::with_capacity(full.inputs.len());
        let mut buffers = Vec::new();
        let mut user_to_full = Vec::new();
        let mut inputs = Vec::new();
        let mut bytes = 0u64;
        // Baking: (position among @main's arguments, type, bytes) of each kept bound input.
        let mut baked: Vec<(usize, String, &[u8])> = Vec::new();
        let skip = usize::from(self.info.platform_index.is_some());
        for (f, (spec, t)) in full.inputs.iter().zip(&chosen).enumerate() {
            match t {
                Some(t) => {
                    inputs.push(spec.clone());
                    bytes += t.bytes().len() as u64;
                    let kept = self
                        .info
                        .kept_inputs
                        .as_ref()
                        .is_none_or(|k| k.contains(&f));
                    if kept && bake.is_some() {
                        let data = sanitized.get(&f).map_or(t.bytes(), Vec::as_slice);
                        let arg = match &self.info.kept_inputs {
                            Some(k) => k.iter().position(|&x| x == f).unwrap_or(f),
                            None => f,
                        };
                        baked.push((skip + arg, t.dtype().mlir_tensor_type(t.shape()), data));
                        slots.push(None);
                    } else if kept {
                        let dims = dims_i64(t.shape())?;
                        let data = sanitized.get(&f).map_or(t.bytes(), Vec::as_slice);
                        buffers.push(self.engine.client.buffer_from_host(
                            data,
                            t.dtype(),
                            &dims,
                        )?);
                        slots.push(Some(buffers.len() - 1));
                    } else {
                        slots.push(None);
                    }
                }
                None => {
                    user_to_full.push(f);
                    slots.push(None);
                }
            }
        }
        let unbound = Signature {
            inputs: user_to_full
                .iter()
                .map(|&f| full.inputs[f].clone())
                .collect(),
            outputs: full.outputs.clone(),
        };
        let mut policy = self.policy.policy().clone();
        for spec in &inputs {
            policy.inputs.remove(&spec.name);
        }
        let policy = BoundPolicy::new(policy, &unbound)?;
        if let Some(program) = bake {
            self.compile_baked(program, &baked, &unbound)?;
        }
        self.policy = policy;
        self.signature = unbound;
        self.forget_workers();
        if let Some(pool) = &self.staging {
            if let Ok(mut p) = pool.lock() {
                p.clear();
            }
        }
        self.bound = Some(Box::new(Bound {
            full,
            user_to_full,
            slots,
            buffers,
            info: BoundParams {
                source: params.source().to_string(),
                sha256: params.sha256().to_string(),
                bytes,
                inputs,
                baked: bake.is_some(),
            },
        }));
        Ok(report)
    }

    /// Compiles `program` with the `baked` arguments of `@main` replaced by constants (in a
    /// jailed worker, which reads the module with the refiner) and makes it this model's
    /// executable; its parameters must be the platform index (if any) and the kept inputs of
    /// `unbound`, in order.
    fn compile_baked(
        &mut self,
        program: &[u8],
        baked: &[(usize, String, &[u8])],
        unbound: &Signature,
    ) -> Result<(), Error> {
        use sha2::Digest as _;
        let mut constants = Vec::with_capacity(baked.iter().map(|(_, _, b)| b.len()).sum());
        let mut args = Vec::with_capacity(baked.len());
        for (index, ty, bytes) in baked {
            constants.extend_from_slice(bytes);
            args.push(crate::compile::BakedArg {
                index: *index,
                ty: ty.clone(),
                len: bytes.len(),
            });
        }
        let spec = crate::compile::Bake {
            args,
            sha256: crate::compile::cache::hex(sha2::Sha256::digest(&constants).as_slice()),
        };
        let engine = self.engine.clone();
        let started = std::time::Instant::now();
        let options = engine.compile_options()?;
        let (exe, summary, serialized) = engine.compiler.compile(
            &engine.client,
            &CompileInput {
                program,
                format: "mlir",
                options: &options,
                inputs: unbound.inputs.iter().map(TensorSpec::type_string).collect(),
                refine: None,
                bake: Some((&spec, &constants)),
            },
        )?;
        // The new executable takes exactly the request inputs the module keeps.
        let module = optimized_module(&exe)?;
        let params = artifact::hlo::program_shape(&module)?.inputs;
        let skip = usize::from(self.info.platform_index.is_some());
        let want: Vec<&TensorSpec> = unbound
            .inputs
            .iter()
            .filter(|s| {
                self.signature
                    .input_index(&s.name)
                    .is_none_or(|i| self.keeps(i))
            })
            .collect();
        let got: Vec<&TensorSpec> = params.iter().skip(skip).collect();
        if !same_types(&want, &got) {
            let show = |v: &[&TensorSpec]| {
                v.iter()
                    .map(|s| s.type_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            return Err(Error::Internal(format!(
                "the module with baked params takes ({}), expected ({})",
                show(&got),
                show(&want)
            )));
        }
        self.exe = Some(exe);
        self.serialized = serialized.map(Arc::from);
        self.forget_workers();
        self.info.compile_time += started.elapsed();
        self.info.compile = summary;
        Ok(())
    }

    /// [`Model::bind`], builder style.
    ///
    /// # Errors
    /// As [`Model::bind`].
    pub fn with_params(
        mut self,
        params: &crate::artifact::params::Params,
    ) -> Result<(Model, BindReport), Error> {
        let report = self.bind(params)?;
        Ok((self, report))
    }

    /// Metadata.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The engine this model runs on.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The library kernels the optimized module calls, with how many instructions call each
    /// ([`crate::artifact::hlo::library_calls`]: `__ynn_fusion`, `__onednn$convolution`, ...).
    ///
    /// # Errors
    /// As [`Model::executable`]; the plugin's error if it cannot give the optimized module.
    pub fn library_calls(&self) -> Result<Vec<(String, usize)>, Error> {
        let module = optimized_module(self.executable()?)?;
        Ok(artifact::hlo::library_calls(&module)?)
    }

    /// The compiled executable.
    ///
    /// # Errors
    /// [`Error::Config`] for a shape-polymorphic model, which has one executable per concrete
    /// shape ([`Model::specialize`]).
    pub fn executable(&self) -> Result<&LoadedExecutable, Error> {
        self.exe.as_ref().ok_or_else(|| self.needs_shapes())
    }

    /// The error for a call that needs one executable on a shape-polymorphic model.
    fn needs_shapes(&self) -> Error {
        Error::Config(format!(
            "the model is shape-polymorphic ({}): this call needs concrete shapes; use \
             Model::run, or Model::specialize for a model of one shape",
            self.signature
                .inputs
                .iter()
                .map(TensorSpec::type_string)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    /// True for a shape-polymorphic model (symbolic input dimensions), which is refined and
    /// compiled per concrete shape.
    pub fn is_polymorphic(&self) -> bool {
        self.poly.is_some()
    }

    /// The model compiled for these concrete input shapes (for a static model: the shapes are
    /// checked and the model itself is not needed, so this is an error). The dimension
    /// variables are solved from the shapes as JAX does and checked against the policy's
    /// `[dims]` bounds; the module is refined and compiled in a jailed worker on first use of
    /// a shape, then kept (least recently used evicted past the engine's [`ShapeCacheConfig`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for shapes that do not fit the symbolic signature (naming the
    /// inputs and dimensions that disagree) or that fail a shape constraint of the export
    /// (JAX's message); compile errors as [`Engine::load_file`].
    pub fn specialize(&self, shapes: &[&[u64]]) -> Result<Arc<Model>, Error> {
        let Some(poly) = &self.poly else {
            return Err(Error::Config(
                "the model is not shape-polymorphic: run it directly".into(),
            ));
        };
        let bindings = self.solve_dims(poly, shapes)?;
        let key: Vec<Vec<u64>> = shapes.iter().map(|s| s.to_vec()).collect();
        let slot = {
            let mut c = poly.cache.lock().unwrap_or_else(|p| p.into_inner());
            let slot = match c.iter().position(|(k, _)| *k == key) {
                Some(i) => c.remove(i).1,
                None => Arc::new(std::sync::Mutex::new(None)),
            };
            c.push((key.clone(), slot.clone()));
            slot
        };
        let mut entry = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = &*entry {
            return Ok(m.clone());
        }
        let compiled = self.compile_shape(poly, &key, &bindings);
        let m = match compiled {
            Ok(m) => Arc::new(m),
            Err(e) => {
                drop(entry);
                let mut c = poly.cache.lock().unwrap_or_else(|p| p.into_inner());
                c.retain(|(_, s)| !Arc::ptr_eq(s, &slot));
                return Err(e);
            }
        };
        *entry = Some(m.clone());
        drop(entry);
        // Evict the least recently used shapes past the bounds (never the one just made).
        let mut c = poly.cache.lock().unwrap_or_else(|p| p.into_inner());
        let bytes = |c: &[(Vec<Vec<u64>>, ShapeSlot)]| -> u64 {
            c.iter()
                .filter_map(|(_, s)| s.try_lock().ok()?.as_ref().map(|m| m.resident_bytes()))
                .sum()
        };
        while c.len() > 1
            && (c.len() > poly.bounds.max_entries || bytes(&c) > poly.bounds.max_bytes)
        {
            c.remove(0);
        }
        Ok(m)
    }

    /// Compiles a shape-polymorphic model ahead of requests for every combination of the given
    /// dimension-variable values (`b = [1, 8]`, `s = [128]` → (1, 128) and (8, 128)).
    ///
    /// # Errors
    /// [`Error::Config`] for a static model or a variable the model does not have or that is
    /// missing; then as [`Model::specialize`] for each shape.
    pub fn precompile(
        &self,
        values: &std::collections::BTreeMap<String, Vec<u64>>,
    ) -> Result<(), Error> {
        let Some(poly) = &self.poly else {
            return Err(Error::Config(
                "[shapes] is for shape-polymorphic models; this one is static".into(),
            ));
        };
        let mut vars: Vec<String> = poly
            .inputs
            .iter()
            .flatten()
            .flatten()
            .flat_map(DimExpr::vars)
            .collect();
        vars.sort();
        vars.dedup();
        for k in values.keys() {
            if !vars.contains(k) {
                return Err(Error::Config(format!(
                    "the model has no dimension variable '{k}'; it has {}",
                    vars.join(", ")
                )));
            }
        }
        if let Some(missing) = vars.iter().find(|v| !values.contains_key(*v)) {
            return Err(Error::Config(format!(
                "no values for dimension variable '{missing}' (the model has {})",
                vars.join(", ")
            )));
        }
        // Every combination, first variable slowest.
        let mut combos: Vec<crate::dims::Bindings> = vec![crate::dims::Bindings::new()];
        for v in &vars {
            let xs = values.get(v).map(Vec::as_slice).unwrap_or_default();
            combos = combos
                .into_iter()
                .flat_map(|b| {
                    xs.iter().map(move |&x| {
                        let mut b = b.clone();
                        b.insert(v.clone(), i64::try_from(x).unwrap_or(i64::MAX));
                        b
                    })
                })
                .collect();
        }
        for b in combos {
            let shapes: Vec<Vec<u64>> = poly
                .inputs
                .iter()
                .zip(&self.signature.inputs)
                .map(|(dims, spec)| {
                    concrete_shape(spec, dims, &b).ok_or_else(|| {
                        Error::Config(format!("{} has no size at {b:?}", spec.type_string()))
                    })
                })
                .collect::<Result<_, _>>()?;
            let refs: Vec<&[u64]> = shapes.iter().map(Vec::as_slice).collect();
            self.specialize(&refs)?;
        }
        Ok(())
    }

    /// Concrete shapes held by a shape-polymorphic model, least recently used first (empty for
    /// a static model).
    pub fn compiled_shapes(&self) -> Vec<Vec<Vec<u64>>> {
        self.poly.as_ref().map_or_else(Vec::new, |p| {
            p.cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(_, s)| s.try_lock().map(|m| m.is_some()).unwrap_or(true))
                .map(|(k, _)| k.clone())
                .collect()
        })
    }

    /// Bytes of the serialized executable this model keeps (0 when unknown).
    fn resident_bytes(&self) -> u64 {
        self.serialized.as_ref().map_or(0, |b| b.len() as u64)
    }

    /// Solves the dimension variables from `shapes` (dtype and rank checked by the caller).
    fn solve_dims(&self, poly: &Poly, shapes: &[&[u64]]) -> Result<crate::dims::Bindings, Error> {
        use crate::dims::{solve, Equation, SolveError};
        let mut eqs = Vec::new();
        for (i, (dims, shape)) in poly.inputs.iter().zip(shapes).enumerate() {
            for (axis, (d, &value)) in dims.iter().zip(shape.iter()).enumerate() {
                if let Some(expr) = d {
                    eqs.push(Equation {
                        input: i,
                        axis,
                        expr,
                        value,
                    });
                }
            }
        }
        let name = |i: usize| {
            self.signature
                .inputs
                .get(i)
                .map_or_else(|| format!("#{i}"), |s| s.name.clone())
        };
        let bindings = solve(&eqs).map_err(|e| {
            let (at, message) = match e {
                SolveError::Conflict { var, first, other } => (
                    other.0,
                    format!(
                        "input '{}' ({}): dimension {var} = {} but input '{}' ({}) has {var} = {}",
                        name(other.0),
                        other.0,
                        other.2,
                        name(first.0),
                        first.0,
                        first.2
                    ),
                ),
                SolveError::Mismatch {
                    at,
                    expr,
                    expected,
                    got,
                    from,
                } => (
                    at.0,
                    format!(
                        "input '{}' ({}): dimension {} is {expr} = {expected} ({}), got {got}",
                        name(at.0),
                        at.0,
                        at.1,
                        from.iter()
                            .map(|(v, x, i, _)| format!(
                                "{v} = {x} from input '{}' ({i})",
                                name(*i)
                            ))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ),
                SolveError::Unsolvable { vars } => (
                    0,
                    format!(
                        "cannot determine dimension variable(s) {} from the input shapes: no \
                         input dimension is linear in one of them alone",
                        vars.join(", ")
                    ),
                ),
                SolveError::NotPositive { var, value, at } => (
                    at.0,
                    format!(
                        "input '{}' ({}): dimension {var} = {value}; dimension variables must \
                         be at least 1",
                        name(at.0),
                        at.0
                    ),
                ),
            };
            Error::InvalidInput(crate::validate::InputError::Dimensions {
                name: self.signature.inputs.get(at).map(|s| s.name.clone()),
                message,
            })
        })?;
        self.policy.check_dims(&bindings)?;
        Ok(bindings)
    }

    /// Refines and compiles the module for one set of concrete input shapes.
    fn compile_shape(
        &self,
        poly: &Poly,
        shapes: &[Vec<u64>],
        bindings: &crate::dims::Bindings,
    ) -> Result<Model, Error> {
        let mut sig = self.signature.clone();
        for (spec, shape) in sig.inputs.iter_mut().zip(shapes) {
            spec.shape = shape.iter().map(|&d| Dim::Static(d)).collect();
        }
        for (spec, dims) in sig.outputs.iter_mut().zip(&poly.outputs) {
            let shape = concrete_shape(spec, dims, bindings).ok_or_else(|| {
                Error::Internal(format!(
                    "output {} has no size at {bindings:?}",
                    spec.type_string()
                ))
            })?;
            spec.shape = shape.into_iter().map(Dim::Static).collect();
        }
        let mut a = poly.meta.clone();
        let kept: Vec<usize> = match &a.kept_inputs {
            Some(k) => k.clone(),
            None => (0..sig.inputs.len()).collect(),
        };
        let mut types = Vec::with_capacity(kept.len() + 1);
        if self.info.platform_index.is_some() {
            let d = a.platform_index_dtype.unwrap_or(crate::DType::I32);
            types.push(d.mlir_tensor_type(&[]));
        }
        for &i in &kept {
            let (spec, shape) = sig
                .inputs
                .get(i)
                .zip(shapes.get(i))
                .ok_or_else(|| Error::Internal(format!("kept input {i} out of range")))?;
            types.push(spec.dtype.mlir_tensor_type(shape));
        }
        let inputs = sig.inputs.iter().map(TensorSpec::type_string).collect();
        a.signature = Some(sig);
        let refinement = crate::compile::Refinement {
            types,
            dims: bindings.clone(),
        };
        let engine = &self.engine;
        let started = std::time::Instant::now();
        let options = engine.compile_options()?;
        let (exe, summary, serialized) = engine.compiler.compile(
            &engine.client,
            &CompileInput {
                program: &poly.program,
                format: "mlir",
                options: &options,
                inputs,
                refine: Some(&refinement),
                bake: None,
            },
        )?;
        let mut m = Model::new(
            engine.clone(),
            a,
            exe,
            self.info.platform_index,
            started.elapsed(),
            summary,
        )?;
        m.serialized = serialized.map(Arc::from);
        // The polymorphic model's names (read from the module at load) are the ones requests
        // and policies use; the refined module's parameters no longer carry them.
        for (s, p) in m.signature.inputs.iter_mut().zip(&self.signature.inputs) {
            s.name.clone_from(&p.name);
        }
        for (s, p) in m.signature.outputs.iter_mut().zip(&self.signature.outputs) {
            s.name.clone_from(&p.name);
        }
        // The same rules; the [dims] bounds were checked on the variables already (the
        // specialization has no symbolic dimension to bind them to).
        let mut policy = self.policy.policy().clone();
        policy.dims.clear();
        policy.dims_min.clear();
        m.set_policy(policy)?;
        m.observer.clone_from(&self.observer);
        m.exec = self.exec.clone();
        Ok(m)
    }

    /// For a shape-polymorphic model, the model compiled for these inputs' shapes.
    fn for_inputs(&self, inputs: &[TensorRef<'_>]) -> Result<Option<Arc<Model>>, Error> {
        if self.poly.is_none() {
            return Ok(None);
        }
        let shapes = self.shapes_of(inputs)?;
        self.specialize(&shapes).map(Some)
    }

    /// The shapes of positional inputs, checked for count, dtype and rank against the
    /// symbolic signature.
    fn shapes_of<'a>(&self, inputs: &[TensorRef<'a>]) -> Result<Vec<&'a [u64]>, Error> {
        validate::check_inputs(&self.signature, inputs)?;
        Ok(inputs.iter().map(|t| t.shape).collect())
    }

    /// The serialized executable: the bytes it was loaded from when it came from a compile
    /// worker or the cache (serializing a deserialized CPU executable again loses functions),
    /// else a fresh `PJRT_Executable_Serialize`.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn serialized_executable(&self) -> Result<crate::pjrt::SerializedExecutable, Error> {
        match &self.serialized {
            Some(b) => Ok(crate::pjrt::SerializedExecutable(b.to_vec())),
            None => Ok(crate::compile::serialize_checked(
                self.executable()?,
                self.engine.compile_options().ok().as_deref(),
            )?),
        }
    }

    /// Checks positional inputs against the signature (count, dtype, rank, dims, byte length)
    /// and the value policy, without changing anything (values a sanitizing rule would change
    /// pass).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the input, expected and got; [`Error::PolicyViolation`]
    /// naming the input, rule, count and first offender.
    pub fn validate(&self, inputs: &[TensorRef<'_>]) -> Result<(), Error> {
        if let Some(poly) = &self.poly {
            let shapes = self.shapes_of(inputs)?;
            self.solve_dims(poly, &shapes)?;
        }
        Ok(self.policy.check(inputs)?)
    }

    /// The value policy in force, bound to the signature.
    pub fn policy(&self) -> &BoundPolicy {
        &self.policy
    }

    /// Replaces the value policy.
    ///
    /// # Errors
    /// [`Error::Policy`] when the policy does not fit the signature (the old one stays).
    pub fn set_policy(&mut self, policy: Policy) -> Result<(), Error> {
        self.policy = BoundPolicy::new(policy, &self.signature)?;
        self.forget_shapes();
        Ok(())
    }

    /// A shape-polymorphic model's compiled shapes carry the policy and observer they were made
    /// with: drop them when either changes (the disk cache, if any, makes them cheap again).
    fn forget_shapes(&mut self) {
        if let Some(p) = &self.poly {
            p.cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }

    /// [`Model::set_policy`], builder style.
    ///
    /// # Errors
    /// As [`Model::set_policy`].
    pub fn with_policy(mut self, policy: Policy) -> Result<Model, Error> {
        self.set_policy(policy)?;
        Ok(self)
    }

    /// Registers (or with `None` removes) the audit/metrics hook told about every rejection and
    /// sanitization.
    pub fn set_observer(&mut self, observer: Option<Arc<dyn PolicyObserver>>) {
        self.observer = observer;
        self.forget_shapes();
    }

    /// Validates and copies inputs to the device (only those the module keeps).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] or [`Error::PolicyViolation`] before anything is copied; the
    /// plugin's error after.
    pub fn upload(&self, inputs: &[TensorRef<'_>]) -> Result<Vec<Buffer>, Error> {
        self.upload_with_report(inputs).map(|(b, _)| b)
    }

    /// [`Model::upload`], also returning what sanitization changed. Sanitized inputs are
    /// uploaded from a staging copy; the caller's buffers are never modified.
    ///
    /// # Errors
    /// As [`Model::upload`].
    pub fn upload_with_report(
        &self,
        inputs: &[TensorRef<'_>],
    ) -> Result<(Vec<Buffer>, RunReport), Error> {
        if self.poly.is_some() {
            return Err(self.needs_shapes());
        }
        let prepared = self.policy.apply(inputs, self.observer.as_deref())?;
        let mut out = Vec::with_capacity(inputs.len());
        for (t, data) in self.to_upload(inputs, &prepared) {
            let dims = dims_i64(t.shape)?;
            out.push(self.engine.client.buffer_from_host(data, t.dtype, &dims)?);
        }
        Ok((out, self.policy.recycle(prepared)))
    }

    /// Checks inputs (signature and value policy, sanitizing where it says so) and runs them,
    /// leaving the outputs on the device. Inputs are handed to the plugin without a copy where
    /// it can alias host memory (the CPU plugin does); sanitized inputs come from the policy's
    /// staging copy, never from a modified caller buffer.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] or [`Error::PolicyViolation`] (nothing reaches the device), or
    /// the plugin's error.
    pub fn execute(&self, inputs: &[TensorRef<'_>]) -> Result<Vec<Buffer>, Error> {
        self.execute_with_report(inputs).map(|(b, _)| b)
    }

    /// True when the module takes user input `i` (the others are checked, then ignored).
    fn keeps(&self, i: usize) -> bool {
        let full = self
            .bound
            .as_ref()
            .map_or(Some(i), |b| b.user_to_full.get(i).copied());
        full.is_some_and(|f| {
            self.info
                .kept_inputs
                .as_ref()
                .is_none_or(|k| k.contains(&f))
        })
    }

    /// The inputs the module takes, each with the bytes to upload: the policy's staging copy
    /// where it sanitized, else the caller's.
    fn to_upload<'a>(
        &self,
        inputs: &'a [TensorRef<'a>],
        prepared: &'a Prepared,
    ) -> Vec<(&'a TensorRef<'a>, &'a [u8])> {
        inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.keeps(*i))
            .map(|(i, t)| (t, prepared.staged(i).unwrap_or(t.data)))
            .collect()
    }

    /// A new set of resident input buffers (one per kept input), or `None` when the plugin
    /// does not keep them in host memory.
    fn new_staging_slot(&self) -> Result<Option<Vec<StagingBuffer>>, Error> {
        let mut slot = Vec::new();
        for (i, spec) in self.signature.inputs.iter().enumerate() {
            if !self.keeps(i) {
                continue;
            }
            let shape = spec
                .static_shape()
                .ok_or_else(|| Error::Internal("symbolic input shape".into()))?;
            match StagingBuffer::new(&self.engine.client, spec.dtype, &dims_i64(&shape)?)? {
                Some(b) => slot.push(b),
                None => return Ok(None),
            }
        }
        Ok(Some(slot))
    }

    /// [`Model::execute`], also returning what sanitization changed.
    ///
    /// # Errors
    /// As [`Model::execute`].
    pub fn execute_with_report(
        &self,
        inputs: &[TensorRef<'_>],
    ) -> Result<(Vec<Buffer>, RunReport), Error> {
        if self.poly.is_some() {
            return Err(self.needs_shapes());
        }
        if self.exec.execution == Execution::Process {
            // The outputs come back to the host; buffers of this process's client hold them.
            let (tensors, report) = self.run_remote(inputs, None)?;
            let mut bufs = Vec::with_capacity(tensors.len());
            for t in &tensors {
                let dims = dims_i64(t.shape())?;
                bufs.push(
                    self.engine
                        .client
                        .buffer_from_host(t.bytes(), t.dtype(), &dims)?,
                );
            }
            return Ok((bufs, report));
        }
        let prepared = self.policy.apply(inputs, self.observer.as_deref())?;
        if let Some(pool) = &self.staging {
            let reused = pool.lock().ok().and_then(|mut p| p.pop());
            let slot = match reused {
                Some(slot) => Some(slot),
                None => self.new_staging_slot()?,
            };
            if let Some(mut slot) = slot {
                for (dst, (_, data)) in slot.iter_mut().zip(self.to_upload(inputs, &prepared)) {
                    dst.fill(data)?;
                }
                let refs: Vec<&Buffer> = slot.iter().map(StagingBuffer::buffer).collect();
                let outs = self.execute_buffers(&refs);
                drop(refs);
                // A failed execution may leave the buffers in any state: drop them.
                if outs.is_ok() {
                    if let Ok(mut p) = pool.lock() {
                        if p.len() < STAGING_SLOTS {
                            p.push(slot);
                        }
                    }
                }
                return Ok((outs?, self.policy.recycle(prepared)));
            }
        }
        let outs = {
            let mut bufs = Vec::with_capacity(inputs.len());
            for (t, data) in self.to_upload(inputs, &prepared) {
                let dims = dims_i64(t.shape)?;
                bufs.push(
                    self.engine
                        .client
                        .buffer_from_host_borrowed(data, t.dtype, &dims)?,
                );
            }
            let refs: Vec<&Buffer> = bufs.iter().map(|b| &**b).collect();
            self.execute_buffers(&refs)?
            // `bufs` (which may alias the staging copies) is dropped here, before they are
            // recycled below.
        };
        Ok((outs, self.policy.recycle(prepared)))
    }

    /// Executes on device buffers that were produced by [`Model::upload`] (no value checks).
    /// Adds the platform index argument where the module takes one.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn execute_buffers(&self, args: &[&Buffer]) -> Result<Vec<Buffer>, Error> {
        let merged;
        let args = match &self.bound {
            // Baked params are in the executable: it takes only the request inputs.
            Some(b) if !b.info.baked => {
                let mut user = args.iter();
                let mut all = Vec::with_capacity(b.slots.len());
                for (f, slot) in b.slots.iter().enumerate() {
                    match slot {
                        Some(k) => all.push(&b.buffers[*k]),
                        None if self
                            .info
                            .kept_inputs
                            .as_ref()
                            .is_none_or(|k| k.contains(&f)) =>
                        {
                            if let Some(u) = user.next() {
                                all.push(*u);
                            }
                        }
                        None => {}
                    }
                }
                merged = all;
                &merged[..]
            }
            _ => args,
        };
        let out = match &self.platform_buffer {
            Some(p) => {
                let mut all = Vec::with_capacity(args.len() + 1);
                all.push(p);
                all.extend_from_slice(args);
                self.executable()?.execute(&all)?
            }
            None => self.executable()?.execute(args)?,
        };
        Ok(out)
    }

    /// Copies outputs back to the host.
    ///
    /// # Errors
    /// The plugin's error.
    pub fn download(&self, outputs: &[Buffer]) -> Result<Vec<Tensor>, Error> {
        if self.poly.is_some() {
            return Err(self.needs_shapes());
        }
        outputs
            .iter()
            .zip(&self.signature.outputs)
            .map(|(b, spec)| {
                let shape = spec
                    .static_shape()
                    .ok_or_else(|| Error::Internal("symbolic output shape".into()))?;
                let bytes = b.to_host()?;
                Ok(Tensor::new(spec.dtype, shape, bytes)?)
            })
            .collect()
    }

    /// Runs inputs that already live on the GPU (feature `cuda`): checks dtype and shape
    /// against the signature, then every input's values against the model's policy with one
    /// fused scan on the device (NaN, ±Inf, min, max — the same rules and messages as the host
    /// scan), then hands the memory to PJRT without a copy. Device inputs are checked, never
    /// rewritten: a policy that would sanitize one (clip, replace, normalize) is refused.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a signature mismatch, [`Error::PolicyViolation`] for a
    /// failed value check, [`Error::Cuda`] for a CUDA failure or a sanitizing rule, or the
    /// plugin's error.
    #[cfg(feature = "cuda")]
    pub fn run_device<'a>(
        &self,
        scanner: &crate::pjrt::cuda::DeviceScanner,
        inputs: &[&dyn crate::pjrt::cuda::DeviceInput<'a>],
    ) -> Result<Vec<Tensor>, Error> {
        use crate::pjrt::cuda::CudaError;
        use crate::validate::device::{bounds_of, judge, sanitizes};
        if self.poly.is_some() {
            return Err(self.needs_shapes());
        }
        validate::check_count(&self.signature, inputs.len())?;
        for (i, (spec, t)) in self.signature.inputs.iter().zip(inputs).enumerate() {
            // The byte length was checked when the DeviceTensor was made.
            validate::check_type(spec, i, t.dtype(), t.shape())?;
        }
        for (rules, t) in self.policy.inputs().iter().zip(inputs) {
            if sanitizes(rules) {
                return Err(Error::Cuda(CudaError(format!(
                    "input '{}': the policy rewrites values (clip, replace or normalize), which \
                     device inputs do not support; pass this input from the host",
                    rules.name()
                ))));
            }
            let stats = t.scan(scanner, bounds_of(rules)).map_err(Error::Cuda)?;
            if let Some(v) = judge(rules, *t, scanner, &stats).map_err(Error::Cuda)? {
                return Err(Error::PolicyViolation(Box::new(v)));
            }
        }
        let client = &self.engine.client;
        let mut views = Vec::with_capacity(inputs.len());
        for (i, t) in inputs.iter().enumerate() {
            if self.keeps(i) {
                views.push(t.view(client, scanner)?);
            }
        }
        let refs: Vec<&Buffer> = views.iter().map(|b| &**b).collect();
        let outs = self.execute_buffers(&refs)?;
        self.download(&outs)
    }

    /// Validates (signature and value policy, sanitizing where the policy says so), runs and
    /// returns the outputs in signature order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] or [`Error::PolicyViolation`] (nothing reaches the device), or
    /// the plugin's error.
    pub fn run(&self, inputs: &[TensorRef<'_>]) -> Result<Vec<Tensor>, Error> {
        if let Some(m) = self.for_inputs(inputs)? {
            return m.run(inputs);
        }
        if self.exec.execution == Execution::Process {
            return self.run_remote(inputs, None).map(|(t, _)| t);
        }
        let outs = self.execute(inputs)?;
        self.download(&outs)
    }

    /// [`Model::run`] with a deadline. With process execution the worker is killed when the
    /// deadline passes and the call returns [`Error::ExecutionTimeout`]; in this process an
    /// execution cannot be stopped, so the deadline is not enforced.
    ///
    /// # Errors
    /// As [`Model::run`], plus [`Error::ExecutionTimeout`], [`Error::ExecutionFailed`], and
    /// [`Error::Busy`] when no execution worker became free before the deadline.
    pub fn run_until(
        &self,
        inputs: &[TensorRef<'_>],
        deadline: std::time::Instant,
    ) -> Result<Vec<Tensor>, Error> {
        if let Some(m) = self.for_inputs(inputs)? {
            return m.run_until(inputs, deadline);
        }
        if self.exec.execution == Execution::Process {
            return self.run_remote(inputs, Some(deadline)).map(|(t, _)| t);
        }
        let outs = self.execute(inputs)?;
        self.download(&outs)
    }

    /// Where this model executes.
    pub fn execution(&self) -> Execution {
        self.exec.execution
    }

    /// Sets where this model executes; with [`Execution::Process`], `workers` execution
    /// workers (at least one) and the `deadline` of a call without one of its own
    /// ([`Model::run_until`]). Running workers are stopped; new ones start on first need (or
    /// with [`Model::start_execution`]).
    ///
    /// # Errors
    /// [`Error::Config`] for process execution on a plugin the execution jail has no profile
    /// for (non-CPU).
    pub fn set_execution(
        &mut self,
        execution: Execution,
        workers: usize,
        deadline: Option<std::time::Duration>,
    ) -> Result<(), Error> {
        if execution == Execution::Process {
            if let Some(why) = &self.engine.exec.refused {
                return Err(Error::Config(why.clone()));
            }
        }
        self.exec.execution = execution;
        self.exec.workers = workers.max(1);
        self.exec.deadline = deadline;
        self.forget_workers();
        self.forget_shapes();
        Ok(())
    }

    /// Test builds: this model's execution workers answer every request with `n` garbage bytes.
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_garbage_replies(&mut self, n: Option<u64>) {
        self.exec.test_garbage_reply = n;
        self.forget_workers();
    }

    /// Test builds: this model's execution workers try to start a thread before each request
    /// (which the request loop's seccomp filter forbids).
    #[cfg(feature = "test-hooks")]
    #[doc(hidden)]
    pub fn test_spawn_thread(&mut self, on: bool) {
        self.exec.test_spawn_thread = on;
        self.forget_workers();
    }

    /// With process execution, starts the first execution worker now (jailed, model loaded)
    /// rather than on the first call, so that a model its worker cannot load fails here. A
    /// shape-polymorphic model starts one per concrete shape, on first use.
    ///
    /// # Errors
    /// [`Error::ExecutionFailed`] for a worker that cannot start or load the model, the
    /// plugin's error for an executable it refuses.
    pub fn start_execution(&self) -> Result<(), Error> {
        if self.exec.execution == Execution::Process && self.poly.is_none() {
            self.remote()?;
        }
        Ok(())
    }

    /// The execution jail as the first execution worker reported it, and what the workers did
    /// (`None` until one started).
    pub fn execution_report(&self) -> Option<(JailReport, ExecSnapshot)> {
        let r = self
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        Some((r.report().clone(), r.snapshot()))
    }

    /// Refuses the model if one execution needs more than `budget` bytes by the compiled
    /// memory statistics (`source` says where the budget comes from).
    ///
    /// # Errors
    /// [`Error::MemoryBudget`] with the numbers.
    pub fn check_memory_budget(&self, budget: u64, source: &str) -> Result<(), Error> {
        match &self.info.memory {
            Some(m) => check_budget(m, budget, source),
            None => Ok(()),
        }
    }

    /// Stops the execution workers (they are started again on need).
    fn forget_workers(&mut self) {
        *self.remote.get_mut().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The model's execution workers, started (first one, model loaded) if need be.
    fn remote(&self) -> Result<Arc<Remote>, Error> {
        let mut g = self.remote.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = &*g {
            return Ok(r.clone());
        }
        let setup = self.engine.exec_worker_setup()?;
        let executable = self.serialized_executable()?.0;
        let spec_of = |s: &TensorSpec| -> Result<crate::exec::message::ArgSpec, Error> {
            let shape = s
                .static_shape()
                .ok_or_else(|| Error::Internal("symbolic input shape".into()))?;
            Ok(crate::exec::message::ArgSpec {
                dtype: s.dtype.name().into(),
                dims: dims_i64(&shape)?,
                resident: false,
            })
        };
        let mut args = Vec::new();
        let mut residents = Vec::new();
        if let Some(i) = self.info.platform_index {
            args.push(crate::exec::message::ArgSpec {
                dtype: crate::DType::I32.name().into(),
                dims: Vec::new(),
                resident: true,
            });
            residents.push(i.to_le_bytes().to_vec());
        }
        let request: Vec<&TensorSpec> = self
            .signature
            .inputs
            .iter()
            .enumerate()
            .filter(|(i, _)| self.keeps(*i))
            .map(|(_, s)| s)
            .collect();
        match &self.bound {
            Some(b) if !b.info.baked => {
                let mut user = request.iter();
                for (f, slot) in b.slots.iter().enumerate() {
                    match slot {
                        Some(k) => {
                            let mut a = spec_of(&b.full.inputs[f])?;
                            a.resident = true;
                            args.push(a);
                            residents.push(b.buffers[*k].to_host()?);
                        }
                        None if self
                            .info
                            .kept_inputs
                            .as_ref()
                            .is_none_or(|k| k.contains(&f)) =>
                        {
                            if let Some(u) = user.next() {
                                args.push(spec_of(u)?);
                            }
                        }
                        None => {}
                    }
                }
            }
            _ => {
                for s in &request {
                    args.push(spec_of(s)?);
                }
            }
        }
        let outputs = self
            .signature
            .outputs
            .iter()
            .map(|s| {
                spec_of(s).map(|a| crate::exec::message::OutSpec {
                    dtype: a.dtype,
                    dims: a.dims,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let c = &self.engine.exec.config;
        let cap = setup.setup().address_space_cap;
        // The worker also maps its shared-memory arena: the arguments and outputs of each of
        // its request slots.
        let arena: u64 = crate::exec::shm::SLOTS as u64
            * args
                .iter()
                .filter(|a| !a.resident)
                .map(|a| (&a.dtype, &a.dims))
                .chain(outputs.iter().map(|o| (&o.dtype, &o.dims)))
                .map(|(d, dims)| {
                    crate::exec::message::byte_len(d, dims).map_or(0, |n| n as u64 + 64)
                })
                .sum::<u64>();
        let need = self
            .info
            .execution_bytes
            .unwrap_or(0)
            .saturating_add((executable.len() as u64).saturating_mul(2))
            .saturating_add(arena);
        let mut address_space = c
            .address_space_base
            .saturating_add(c.address_space_headroom)
            .saturating_add(need);
        if cap > 0 {
            address_space = address_space.min(cap.max(c.address_space_base));
        }
        let compiler = self.engine.compiler.clone();
        let audit: crate::exec::Audit =
            Arc::new(move |event, fields| compiler.audit_event(event, fields));
        let r = Remote::start(
            setup,
            RemoteModel {
                executable: &executable,
                args,
                residents,
                outputs,
                address_space: Some(address_space),
                test_garbage_reply: self.exec.test_garbage_reply,
                test_spawn_thread: self.exec.test_spawn_thread,
            },
            self.exec.workers,
            self.exec.deadline,
            audit,
        )?;
        *g = Some(r.clone());
        Ok(r)
    }

    /// Validates (and sanitizes) here, runs in an execution worker.
    fn run_remote(
        &self,
        inputs: &[TensorRef<'_>],
        deadline: Option<std::time::Instant>,
    ) -> Result<(Vec<Tensor>, RunReport), Error> {
        let prepared = self.policy.apply(inputs, self.observer.as_deref())?;
        let remote = self.remote()?;
        let bytes = {
            let parts: Vec<&[u8]> = self
                .to_upload(inputs, &prepared)
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            remote.call(&parts, deadline)
        };
        let report = self.policy.recycle(prepared);
        Ok((self.remote_outputs(&remote, bytes?)?, report))
    }

    /// The outputs of a process execution, from the bytes the worker left in its arena.
    pub(crate) fn remote_outputs(
        &self,
        remote: &Remote,
        bytes: Vec<Vec<u8>>,
    ) -> Result<Vec<Tensor>, Error> {
        if bytes.len() != remote.out_lens().len() {
            return Err(Error::Internal(format!(
                "{} outputs from an execution worker, expected {}",
                bytes.len(),
                remote.out_lens().len()
            )));
        }
        self.signature
            .outputs
            .iter()
            .zip(bytes)
            .map(|(spec, data)| {
                let shape = spec
                    .static_shape()
                    .ok_or_else(|| Error::Internal("symbolic output shape".into()))?;
                Ok(Tensor::new(spec.dtype, shape, data)?)
            })
            .collect()
    }

    /// [`Model::run_until`] for a statically shaped model in process execution, without
    /// waiting for anything: validates and sanitizes, builds the request, and starts it on an
    /// idle execution worker ([`Begun::Flight`], driven by the caller's event loop), or hands
    /// back the request when none is idle ([`Begun::Wait`], for [`Remote::call`], which waits
    /// for one). `None`: the model is not one of those (in-process, shape-polymorphic, or its
    /// workers are not started): use [`Model::run_until`].
    ///
    /// # Errors
    /// As [`Model::run`] before anything runs.
    pub(crate) fn begin_remote(
        &self,
        inputs: &[TensorRef<'_>],
        deadline: std::time::Instant,
    ) -> Result<Option<Begun>, Error> {
        if self.poly.is_some() || self.exec.execution != Execution::Process {
            return Ok(None);
        }
        let Some(remote) = self
            .remote
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(None);
        };
        let prepared = self.policy.apply(inputs, self.observer.as_deref())?;
        let begun = {
            let parts: Vec<&[u8]> = self
                .to_upload(inputs, &prepared)
                .into_iter()
                .map(|(_, d)| d)
                .collect();
            remote.begin(&parts, Some(deadline))
        };
        let _ = self.policy.recycle(prepared);
        Ok(Some(match begun? {
            Ok(flight) => Begun::Flight(remote, Box::new(flight)),
            Err(parts) => Begun::Wait(remote, parts),
        }))
    }

    /// [`Model::run`], also returning what sanitization changed (counts per input and rule).
    ///
    /// # Errors
    /// As [`Model::run`], plus [`Error::PolicyViolation`].
    pub fn run_with_report(
        &self,
        inputs: &[TensorRef<'_>],
    ) -> Result<(Vec<Tensor>, RunReport), Error> {
        if let Some(m) = self.for_inputs(inputs)? {
            return m.run_with_report(inputs);
        }
        if self.exec.execution == Execution::Process {
            return self.run_remote(inputs, None);
        }
        let (outs, report) = self.execute_with_report(inputs)?;
        Ok((self.download(&outs)?, report))
    }

    /// Like [`Model::run`], with inputs given by name in any order.
    ///
    /// # Errors
    /// Unknown, duplicate or missing names, then as [`Model::run`].
    pub fn run_named(&self, inputs: Vec<(String, TensorRef<'_>)>) -> Result<Vec<Tensor>, Error> {
        let ordered = validate::order_named(&self.signature, inputs)?;
        self.run(&ordered)
    }
}

/// A process execution started by [`Model::begin_remote`].
pub(crate) enum Begun {
    /// Running in an idle worker; drive it with [`crate::exec::InFlight::step`].
    Flight(Arc<Remote>, Box<crate::exec::InFlight>),
    /// No worker was idle: the request arguments' bytes, for [`Remote::call`].
    Wait(Arc<Remote>, Vec<Vec<u8>>),
}

/// Bytes one execution needs by the compiled memory statistics, and the parts in words.
fn execution_need(m: &CompiledMemoryStats) -> (u64, String) {
    let b = |x: i64| u64::try_from(x).unwrap_or(0);
    let need = b(m.argument_bytes)
        .saturating_add(b(m.output_bytes))
        .saturating_add(b(m.temp_bytes))
        .saturating_add(b(m.generated_code_bytes))
        .saturating_sub(b(m.alias_bytes));
    (
        need,
        format!(
            "arguments {} + outputs {} + temporaries {} + code {} - aliased {}",
            b(m.argument_bytes),
            b(m.output_bytes),
            b(m.temp_bytes),
            b(m.generated_code_bytes),
            b(m.alias_bytes)
        ),
    )
}

/// [`Error::MemoryBudget`] when an execution needs more than `budget`.
fn check_budget(m: &CompiledMemoryStats, budget: u64, source: &str) -> Result<(), Error> {
    let (need, detail) = execution_need(m);
    if need > budget {
        return Err(Error::MemoryBudget {
            need,
            budget,
            detail,
            source_of_budget: source.to_string(),
        });
    }
    Ok(())
}

/// Shape as PJRT's signed dims (validated shapes always fit; this only guards the cast).
fn dims_i64(shape: &[u64]) -> Result<Vec<i64>, Error> {
    shape
        .iter()
        .map(|&d| {
            i64::try_from(d).map_err(|_| Error::Internal(format!("dimension {d} exceeds i64")))
        })
        .collect()
}

/// Gives positional arguments whose name the artifact does not know (`argN`) the name of
/// their `@main` argument location, which XLA keeps on the entry parameters (metadata
/// `op_name`, and a sanitized instruction name), then renames the inputs by the naming rule
/// ([`artifact::input_names`]). Without leaf paths (HLO protos), or when no name is found,
/// the signature is left as it is.
fn adopt_parameter_names(
    sig: &mut Signature,
    paths: &[artifact::LeafPath],
    module: &[u8],
    kept: Option<&[usize]>,
    skip: usize,
) {
    if paths.len() != sig.inputs.len() || !paths.iter().any(|p| p.has_placeholder_base()) {
        return;
    }
    adopt_names(
        sig,
        paths,
        &artifact::hlo::entry_parameter_names(module),
        kept,
        skip,
    );
}

/// The constraint a JAX shape-assertion message states (`s <= 16` from "Input shapes do not
/// match the symbolic shape constraint s <= 16. Expected ..."); `None` for the other checks.
fn constraint_of(message: &str) -> Option<String> {
    const HEAD: &str = "the symbolic shape constraint ";
    let rest = message.get(message.find(HEAD)?.saturating_add(HEAD.len())..)?;
    Some(rest.split(". ").next()?.trim_end_matches('.').to_string())
}

/// [`adopt_parameter_names`] with the names given: one per module parameter (after `skip`).
fn adopt_names(
    sig: &mut Signature,
    paths: &[artifact::LeafPath],
    names: &[Option<artifact::hlo::ParameterName>],
    kept: Option<&[usize]>,
    skip: usize,
) {
    if paths.len() != sig.inputs.len() || !paths.iter().any(|p| p.has_placeholder_base()) {
        return;
    }
    let user_inputs: Vec<usize> = match kept {
        Some(k) => k.to_vec(),
        None => (0..sig.inputs.len()).collect(),
    };
    // The base each placeholder argument gets: every leaf of one argument must agree. Leaves
    // under custom pytree nodes also take the child names JAX wrote (`.layers[0].weight`).
    let mut bases: std::collections::HashMap<String, Option<String>> = Default::default();
    let mut whole: std::collections::HashMap<usize, artifact::LeafPath> = Default::default();
    for (param, &input) in user_inputs.iter().enumerate() {
        let (Some(Some(pn)), Some(path)) = (names.get(param + skip), paths.get(input)) else {
            continue;
        };
        if !path.has_placeholder_base() {
            continue;
        }
        let mut found = artifact::argument_base(path, &pn.op_name, &pn.instruction);
        if found.is_none() {
            if let Some(p) = artifact::custom_node_path(path, &pn.op_name) {
                found = Some(p.base.clone());
                whole.insert(input, p);
            }
        }
        let slot = bases.entry(path.base.clone()).or_insert(found.clone());
        if *slot != found {
            *slot = None;
        }
    }
    let known: std::collections::HashSet<&str> = paths
        .iter()
        .filter(|p| !p.has_placeholder_base())
        .map(|p| p.base.as_str())
        .collect();
    let mut renamed = paths.to_vec();
    for (i, p) in renamed.iter_mut().enumerate() {
        if let Some(Some(b)) = bases.get(&p.base) {
            if !known.contains(b.as_str()) {
                match whole.remove(&i) {
                    Some(w) => *p = w,
                    None => p.base.clone_from(b),
                }
            }
        }
    }
    for (spec, name) in sig.inputs.iter_mut().zip(artifact::input_names(&renamed)) {
        spec.name = name;
    }
}
