//! `xlaguard serve`: a KServe v2 / Open Inference Protocol server over HTTP/1.1.
//!
//! Endpoints (as Triton and KServe implement them):
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /v2` | server metadata: name, version, extensions |
//! | `GET /v2/health/live` | 200 while the process serves HTTP |
//! | `GET /v2/health/ready` | 200 once every model is loaded (400 before, or when one failed; `--strict-readiness false`: once loading finished) |
//! | `GET /v2/models/{m}[/versions/{v}]` | model metadata: name, versions, platform, inputs and outputs (name, datatype, shape) |
//! | `GET /v2/models/{m}[/versions/{v}]/ready` | 200 when the model is loaded, 400 when not |
//! | `GET /v2/models/{m}[/versions/{v}]/config` | Triton's model configuration: `max_batch_size`, inputs and outputs (`data_type`, `dims`), `dynamic_batching`, and xlaguard's batching state |
//! | `POST /v2/models/{m}[/versions/{v}]/infer` | inference, JSON or with the binary tensor data extension |
//! | `POST /v2/repository/index` | every model with its state (`READY`, `LOADING`, `UNAVAILABLE`) and the reason |
//! | `GET /metrics` | Prometheus text format |
//!
//! Errors are `{"error": "..."}`: 400 invalid input (the validation message verbatim), 404
//! unknown model, version or route, 405 wrong method, 408 request body too slow, 413 body over
//! the cap, 415 unsupported `Content-Encoding`, 429 model queue full (with `Retry-After`), 500
//! internal, 503 overloaded, deadline passed or model not ready (with `Retry-After`).
//!
//! Request flow of an inference: the model must be ready; a global cap on concurrent inference
//! requests (503 beyond it); the body is read with a size cap (413) and a time limit (408); a
//! free worker is taken at once or a place in the model's bounded queue (429 when full); the
//! request waits for a worker until its deadline (503); then decoding, validation, execution
//! and encoding run on tokio's blocking pool, never on the async workers, and the answer must
//! come before the deadline (503). JSON nesting depth is checked by a flat scan before any
//! parser sees the body.
//!
//! ```no_run
//! # async fn demo() -> Result<(), xlaguard::server::ServerError> {
//! use xlaguard::server::{repo::ModelSpec, Server, ServerConfig};
//! let mut config = ServerConfig::default();
//! config.addr = "127.0.0.1:0".parse().unwrap();
//! let models = vec![ModelSpec::from_file("digits", "hlo/digits/model.jaxexport")];
//! let server = Server::bind(config, models, None).await?;
//! println!("serving on http://{}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

#![forbid(unsafe_code)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod batch;
mod cli;
mod datatype;
pub mod error;
mod fastjson;
pub mod metrics;
pub mod repo;
pub mod wire;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::artifact::{self, ArtifactKind};
use crate::engine::{Engine, EngineConfig, Model};
use crate::plugin::DeviceKind;

pub use cli::{serve_command, LogFormat, ServeArgs};
use error::ApiError;
use metrics::{ModelGauges, ModelMetrics, ServerMetrics};
use repo::{ArtifactSource, ModelLimits, ModelSpec};
use wire::{OutputRef, ParseLimits};

/// The header that gives the JSON part's length when binary tensor data follows it.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Server settings. [`ServerConfig::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8000`, Triton's HTTP port).
    pub addr: SocketAddr,
    /// Largest request body accepted, in bytes (default 64 MiB); more gets 413.
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted (default 64).
    pub max_json_depth: usize,
    /// Inference requests in progress at once, all models together (default 256); more get 503.
    /// A request counts once its body is in memory: receiving a body holds no permit.
    pub max_concurrent_requests: usize,
    /// Bytes of request bodies held in memory at once, all connections together (default
    /// 1 GiB), counted as they arrive; a body that would pass it gets 503. Slow senders hold
    /// only what they have sent.
    pub max_body_memory_bytes: usize,
    /// Open connections at once (default 1024); more are answered 503 and closed at accept.
    pub max_connections: usize,
    /// Open connections at once from one client address (default 256); more are answered
    /// 503 and closed at accept, so one client cannot take every connection.
    pub max_connections_per_client: usize,
    /// Time to receive a request's headers (default 10 s); a slower client is disconnected.
    pub header_read_timeout: Duration,
    /// Time to receive a request's body (default 30 s); a slower client gets 408.
    pub body_read_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish (default 30 s).
    pub drain_timeout: Duration,
    /// Per-model limits unless `config.toml` overrides them.
    pub limits: ModelLimits,
    /// `/v2/health/ready` needs every model ready (true, Triton's default) or only loading to
    /// have finished (false).
    pub strict_readiness: bool,
    /// The engine to build when none is given to [`Server::bind`].
    pub engine: EngineConfig,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_body_bytes: 64 << 20,
            max_json_depth: 64,
            max_concurrent_requests: 256,
            max_body_memory_bytes: 1 << 30,
            max_connections: 1024,
            max_connections_per_client: 256,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            limits: ModelLimits::default(),
            strict_readiness: true,
            engine: EngineConfig::default(),
        }
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The address could not be bound.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error (in the message; not also returned by `source()`).
        error: std::io::Error,
    },
    /// Two models have the same name.
    #[error("two models are named '{0}'")]
    DuplicateModel(String),
    /// A model name clients could not address.
    #[error("model name '{0}' must be letters, digits, '_', '-', '.' (up to 128, not starting with '.')")]
    InvalidModelName(String),
    /// The model repository could not be read.
    #[error(transparent)]
    Repository(#[from] repo::RepositoryError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// A model's state, set once by the loader.
type LoadResult = Result<Arc<Loaded>, String>;

/// A loaded model and what its metadata needs.
#[derive(Debug)]
struct Loaded {
    runner: Arc<batch::Runner>,
    platform: &'static str,
    batching: Batching,
}

/// A model's batching state.
#[derive(Debug)]
enum Batching {
    /// No `[batching]` (and not a bundle).
    Off,
    /// Requests are batched by this task.
    On {
        config: batch::BatchConfig,
        batcher: batch::Batcher,
        metrics: Arc<batch::BatchMetrics>,
    },
    /// Asked for, refused at load: served unbatched.
    Refused {
        config: batch::BatchConfig,
        reason: String,
    },
}

impl Batching {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Batching::Off => serde_json::json!({"state": "off"}),
            Batching::On { config, .. } => {
                let mut v = config.to_json();
                v.insert("state".into(), "on".into());
                v.into()
            }
            Batching::Refused { config, reason } => {
                let mut v = config.to_json();
                v.insert("state".into(), "refused".into());
                v.insert("reason".into(), reason.clone().into());
                v.into()
            }
        }
    }
}

/// One model's slot: fixed at start, filled by the loader.
#[derive(Debug)]
struct Slot {
    name: String,
    version: String,
    limits: ModelLimits,
    state: OnceLock<LoadResult>,
    /// Free workers.
    exec: Arc<Semaphore>,
    /// Free places in the queue of requests waiting for a worker.
    queue: Arc<Semaphore>,
    metrics: ModelMetrics,
}

impl Slot {
    fn ready(&self) -> Result<Arc<Loaded>, ApiError> {
        match self.state.get() {
            Some(Ok(l)) => Ok(l.clone()),
            Some(Err(reason)) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model '{}' is unavailable: {reason}", self.name),
            )),
            None => Err(ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("model '{}' is still loading", self.name),
            )),
        }
    }

    fn gauges(&self) -> ModelGauges<'_> {
        let running = self.limits.workers - self.exec.available_permits().min(self.limits.workers);
        let queued =
            self.limits.max_queue - self.queue.available_permits().min(self.limits.max_queue);
        ModelGauges {
            name: &self.name,
            version: &self.version,
            ready: matches!(self.state.get(), Some(Ok(_))),
            queued,
            running,
            metrics: &self.metrics,
            batch: match self.state.get() {
                Some(Ok(l)) => match &l.batching {
                    Batching::On { metrics, .. } => Some(&**metrics),
                    _ => None,
                },
                _ => None,
            },
            execution: match self.state.get() {
                Some(Ok(l)) => match &*l.runner {
                    batch::Runner::Model(m) => {
                        Some((m.execution(), m.execution_report().map(|(_, s)| s)))
                    }
                    batch::Runner::Bundle(_) => None,
                },
                _ => None,
            },
        }
    }
}

/// Shared state of the handlers.
#[derive(Debug)]
struct App {
    config: ServerConfig,
    models: BTreeMap<String, Arc<Slot>>,
    loading_done: AtomicBool,
    global: Arc<Semaphore>,
    /// Request body memory, in [`BUDGET_UNIT`]s.
    body_budget: Arc<Semaphore>,
    metrics: ServerMetrics,
    started: Instant,
    /// The runtime the batcher tasks run on.
    rt: tokio::runtime::Handle,
}

impl App {
    fn slot(&self, name: &str, version: Option<&str>) -> Result<&Arc<Slot>, ApiError> {
        let slot = self
            .models
            .get(name)
            .ok_or_else(|| ApiError::unknown_model(name, None))?;
        match version {
            Some(v) if v != slot.version => Err(ApiError::unknown_model(name, Some(v))),
            _ => Ok(slot),
        }
    }

    fn gauges(&self) -> Vec<ModelGauges<'_>> {
        self.models.values().map(|s| s.gauges()).collect()
    }
}

/// A bound server: models are loading in the background; [`Server::run`] serves.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
}

impl Server {
    /// Binds the address, checks the model list and starts loading the models in the
    /// background (one after another, on a thread of its own). Readiness turns true per model
    /// as each loads; a model that fails is reported and the others are served.
    ///
    /// `engine` is used for models without a `device`; when `None`, one is built from
    /// `config.engine` by the loader (a failure there makes every such model unavailable).
    ///
    /// # Errors
    /// [`ServerError::Bind`], [`ServerError::DuplicateModel`], [`ServerError::InvalidModelName`].
    pub async fn bind(
        config: ServerConfig,
        models: Vec<ModelSpec>,
        engine: Option<Engine>,
    ) -> Result<Server, ServerError> {
        let mut slots = BTreeMap::new();
        for spec in &models {
            if !repo::valid_model_name(&spec.name) {
                return Err(ServerError::InvalidModelName(spec.name.clone()));
            }
            let limits = config.limits.with(spec.limits);
            let slot = Slot {
                name: spec.name.clone(),
                version: spec.version.clone(),
                limits,
                state: OnceLock::new(),
                exec: Arc::new(Semaphore::new(limits.workers)),
                queue: Arc::new(Semaphore::new(limits.max_queue)),
                metrics: ModelMetrics::default(),
            };
            if slots.insert(spec.name.clone(), Arc::new(slot)).is_some() {
                return Err(ServerError::DuplicateModel(spec.name.clone()));
            }
        }
        let listener =
            TcpListener::bind(config.addr)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.addr,
                    error: source,
                })?;
        let app = Arc::new(App {
            global: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            body_budget: Arc::new(Semaphore::new(
                config
                    .max_body_memory_bytes
                    .div_ceil(BUDGET_UNIT)
                    .clamp(1, Semaphore::MAX_PERMITS),
            )),
            config,
            models: slots,
            loading_done: AtomicBool::new(false),
            metrics: ServerMetrics::default(),
            started: Instant::now(),
            rt: tokio::runtime::Handle::current(),
        });
        let loader_app = app.clone();
        std::thread::Builder::new()
            .name("xlaguard-loader".into())
            .spawn(move || load_all(&loader_app, models, engine))
            .map_err(ServerError::Runtime)?;
        Ok(Server { listener, app })
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.app.config.addr)
    }

    /// The HTTP routes, to embed in another axum application.
    pub fn router(&self) -> Router {
        router(self.app.clone())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight requests finish
    /// (up to [`ServerConfig::drain_timeout`]) and returns.
    ///
    /// # Errors
    /// None today; the `Result` is for future listener errors.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), ServerError> {
        let app = self.app.clone();
        let router = router(app.clone());
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(app.config.header_read_timeout)
            .keep_alive(true);
        let connections = Arc::new(Semaphore::new(app.config.max_connections.max(1)));
        tokio::pin!(shutdown);
        let connection_log = RateLimitedLog::default();
        let clients = Arc::new(ClientCounts::default());
        loop {
            let accepted = tokio::select! {
                r = self.listener.accept() => r,
                () = &mut shutdown => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                app.metrics.rejected("connections");
                if let Some(suppressed) = connection_log.allow() {
                    tracing::warn!(%peer, limit = app.config.max_connections, suppressed, "connection limit reached; shedding (logged at most once a second)");
                }
                shed(
                    stream,
                    &format!(
                        "server busy: {} connections open",
                        app.config.max_connections
                    ),
                );
                continue;
            };
            // One client address may hold only its share of the connections.
            let Some(per_client) = clients.admit(peer.ip(), app.config.max_connections_per_client)
            else {
                app.metrics.rejected("client_connections");
                if let Some(suppressed) = connection_log.allow() {
                    tracing::warn!(%peer, limit = app.config.max_connections_per_client, suppressed, "per-client connection limit reached; shedding (logged at most once a second)");
                }
                shed(
                    stream,
                    &format!(
                        "too many connections from {}: at most {} per client address",
                        peer.ip(),
                        app.config.max_connections_per_client
                    ),
                );
                continue;
            };
            let _ = stream.set_nodelay(true);
            let io = hyper_util::rt::TokioIo::new(stream);
            let svc = hyper_util::service::TowerToHyperService::new(router.clone());
            let conn = graceful.watch(http.serve_connection(io, svc));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(per_client);
                drop(permit);
            });
        }
        drop(self.listener);
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained; bye"),
            () = tokio::time::sleep(app.config.drain_timeout) => tracing::warn!(
                timeout_ms = app.config.drain_timeout.as_millis(),
                "drain timeout passed; closing remaining connections"
            ),
        }
        Ok(())
    }
}

fn platform_of(kind: ArtifactKind) -> &'static str {
    match kind {
        ArtifactKind::JaxExport => "jax_export",
        ArtifactKind::StableHloText | ArtifactKind::StableHloBytecode => "stablehlo",
        ArtifactKind::HloProto => "hlo",
    }
}

/// Value policies are not part of this build: a model folder with a `policy.toml` is refused
/// (reported unavailable) rather than served without the checks its owner asked for.
fn apply_policy(model: &mut Model, policy: &std::path::Path) -> Result<(), String> {
    let p = crate::validate::policy::Policy::load(policy).map_err(|e| e.to_string())?;
    model.set_policy(p).map_err(|e| e.to_string())
}

/// Builds (once per device kind) the engine a model asks for.
struct Engines {
    config: EngineConfig,
    default: Option<Result<Engine, String>>,
    by_kind: HashMap<DeviceKind, Result<Engine, String>>,
}

impl Engines {
    fn get(&mut self, device: Option<DeviceKind>) -> Result<Engine, String> {
        let config = &self.config;
        let default = self
            .default
            .get_or_insert_with(|| Engine::new(config).map_err(|e| e.to_string()))
            .clone();
        let Some(kind) = device else {
            return default;
        };
        if let Ok(e) = &default {
            if e.plugin().kind == kind {
                return Ok(e.clone());
            }
        }
        self.by_kind
            .entry(kind)
            .or_insert_with(|| {
                let mut c = EngineConfig::default();
                c.device(kind);
                let e = Engine::new(&c).map_err(|e| format!("device {}: {e}", kind.name()))?;
                // XLAGUARD_PLUGIN is taken as given: make sure it drives the device asked for,
                // rather than serve a `device = "cuda"` model on a CPU plugin.
                let platform = e.client().platform();
                let matches = match kind {
                    DeviceKind::Cpu => platform == "cpu",
                    DeviceKind::Cuda => platform == "cuda" || platform == "gpu",
                    DeviceKind::Tpu => platform == "tpu",
                };
                if !matches {
                    return Err(format!(
                        "device {}: the plugin found ({}, from {:?}) runs on '{platform}'",
                        kind.name(),
                        e.plugin().path.display(),
                        e.plugin().source
                    ));
                }
                Ok(e)
            })
            .clone()
    }
}

/// A model folder's params file, its `params_sha256` checked and its `[params]` names mapped.
fn read_params(
    spec: &ModelSpec,
    p: &std::path::Path,
) -> Result<crate::artifact::params::Params, String> {
    let params = crate::artifact::params::Params::read(p).map_err(|e| e.to_string())?;
    if let Some(want) = &spec.params_sha256 {
        if params.sha256() != want {
            return Err(format!(
                "{}: sha256 {} but config.toml params_sha256 is {want}",
                p.display(),
                params.sha256()
            ));
        }
    }
    if spec.params_prefix.is_some() || !spec.params_rename.is_empty() {
        params
            .renamed(spec.params_prefix.as_deref(), &spec.params_rename)
            .map_err(|e| e.to_string())
    } else {
        Ok(params)
    }
}

/// Loads one model and publishes its state (ready or unavailable) in its slot.
fn load_into_slot(app: &App, spec: &ModelSpec, engines: &std::sync::Mutex<Engines>) {
    let Some(slot) = app.models.get(&spec.name) else {
        return;
    };
    tracing::info!(model = %spec.name, version = %spec.version, "loading model");
    let started = Instant::now();
    let exec = ExecLimits {
        workers: slot.limits.workers,
        timeout: Some(slot.limits.timeout),
    };
    let result = load_one(spec, engines, exec);
    let state = match result {
        Ok((runner, platform, compile, verdict)) => {
            app.metrics.compile(true, compile);
            slot.metrics.compiled(compile);
            let runner = Arc::new(runner);
            let batching = match verdict {
                None => Batching::Off,
                Some((config, Ok(()))) => {
                    let metrics = Arc::new(batch::BatchMetrics::new(&config.sizes));
                    let batcher = batch::Batcher::start(
                        &app.rt,
                        runner.clone(),
                        config.clone(),
                        slot.exec.clone(),
                        metrics.clone(),
                    );
                    tracing::info!(model = %spec.name, sizes = ?config.sizes, pad = config.pad.name(), "batching on");
                    Batching::On {
                        config,
                        batcher,
                        metrics,
                    }
                }
                Some((config, Err(reason))) => {
                    tracing::warn!(model = %spec.name, %reason, "batching refused; serving unbatched");
                    Batching::Refused { config, reason }
                }
            };
            let loaded = Loaded {
                runner,
                platform,
                batching,
            };
            let sig = loaded.runner.signature();
            tracing::info!(
                model = %spec.name,
                version = %spec.version,
                compile_ms = compile.as_secs_f64() * 1e3,
                inputs = %sig.inputs.iter().map(|s| format!("{}: {}", s.name, s.type_string())).collect::<Vec<_>>().join(", "),
                "model ready"
            );
            Ok(Arc::new(loaded))
        }
        Err(reason) => {
            if spec.problem.is_none() {
                app.metrics.compile(false, started.elapsed());
            }
            tracing::error!(model = %spec.name, version = %spec.version, %reason, "model unavailable");
            Err(reason)
        }
    };
    let _ = slot.state.set(state);
}

/// A model as loaded, before its batcher starts: the batching config and the gate's verdict.
type LoadedParts = (
    batch::Runner,
    &'static str,
    Duration,
    Option<(batch::BatchConfig, Result<(), String>)>,
);

/// Loads one artifact of a model folder: policy applied, params bound or baked in.
fn load_model(
    spec: &ModelSpec,
    engine: &Engine,
    source: &ArtifactSource,
    exec: ExecLimits,
) -> Result<(Model, &'static str), String> {
    let a = match source {
        ArtifactSource::File(p) => artifact::load_file(p),
        ArtifactSource::Bytes(b) => artifact::load(b),
    }
    .map_err(|e| e.to_string())?;
    if let Some(limit) = spec.limits.max_module_bytes {
        let size = a.program.len() as u64;
        if size > limit {
            return Err(format!(
                "the module is {size} bytes, above this model's config.toml [limits] \
                 max_module_bytes = {limit}"
            ));
        }
    }
    let platform = platform_of(a.kind);
    let params = match &spec.params {
        Some(p) => Some((p, read_params(spec, p)?)),
        None => None,
    };
    let model = match &params {
        Some((p, params)) if spec.params_bake => {
            let policy = match &spec.policy {
                Some(f) => {
                    Some(crate::validate::policy::Policy::load(f).map_err(|e| e.to_string())?)
                }
                None => None,
            };
            let (model, report) = engine
                .load_baked(a, params, policy)
                .map_err(|e| e.to_string())?;
            tracing::info!(model = %spec.name, params = %p.display(), %report, "params baked in");
            model
        }
        _ => {
            let mut model = engine.load_artifact(a).map_err(|e| e.to_string())?;
            if let Some(p) = &spec.policy {
                apply_policy(&mut model, p)?;
            }
            if let Some((p, params)) = &params {
                let report = model.bind(params).map_err(|e| e.to_string())?;
                tracing::info!(model = %spec.name, params = %p.display(), %report, "params bound");
            }
            model
        }
    };
    let mut model = model;
    if let Some(b) = spec.limits.max_execution_bytes {
        model
            .check_memory_budget(b, "config.toml [limits] max_execution_bytes")
            .map_err(|e| e.to_string())?;
    }
    // Process execution: the model's `workers` execution workers, each call (batched ones too)
    // killed at the model's timeout at the latest; the first worker starts now.
    let execution = spec.execution.unwrap_or(engine.execution().execution);
    model
        .set_execution(execution, exec.workers, exec.timeout)
        .map_err(|e| e.to_string())?;
    model.start_execution().map_err(|e| e.to_string())?;
    Ok((model, platform))
}

/// What a model's execution workers take from its limits: how many, and the longest call.
#[derive(Clone, Copy, Debug)]
struct ExecLimits {
    workers: usize,
    timeout: Option<Duration>,
}

fn load_one(
    spec: &ModelSpec,
    engines: &std::sync::Mutex<Engines>,
    exec: ExecLimits,
) -> Result<LoadedParts, String> {
    if let Some(p) = &spec.problem {
        return Err(p.clone());
    }
    // Engines are made once per device kind; the lock is held only to get one.
    let engine = engines
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(spec.device)?;
    let started = Instant::now();
    let (runner, platform) = if spec.bundle.is_empty() {
        let (model, platform) = load_model(spec, &engine, &spec.source, exec)?;
        if !spec.shapes.is_empty() {
            model
                .precompile(&spec.shapes)
                .map_err(|e| format!("config.toml [shapes]: {e}"))?;
        }
        (batch::Runner::Model(model), platform)
    } else {
        if !spec.shapes.is_empty() {
            return Err(
                "config.toml [shapes] is for shape-polymorphic models; this folder is \
                        a bundle of static exports"
                    .into(),
            );
        }
        let mut models = Vec::with_capacity(spec.bundle.len());
        let mut platform = "jax_export";
        for (n, p) in &spec.bundle {
            let (m, pl) = load_model(spec, &engine, &ArtifactSource::File(p.clone()), exec)
                .map_err(|e| format!("{}: {e}", p.display()))?;
            platform = pl;
            models.push((*n, m));
        }
        let dim = spec.batching.as_ref().map_or(0, |c| c.batch_dim);
        (
            batch::Runner::Bundle(batch::Bundle::new(models, dim)?),
            platform,
        )
    };
    let verdict = spec.batching.as_ref().map(|c| {
        let r = batch::check_plan(&runner, c).and_then(|()| batch::gate(&runner, c, &spec.shapes));
        (c.clone(), r)
    });
    Ok((runner, platform, started.elapsed(), verdict))
}

/// A model folder's batching as `serve` would set it up (`inspect` shows it): loads the model
/// (every export of a bundle) on `engine`, checks `[batching]` against the signature and runs
/// the correctness gate. JSON: `state` (`off`, `on`, `refused` with `reason`), the settings,
/// and `bundle` (the exported sizes) for a bundle.
///
/// # Errors
/// The folder's problem, or why the model does not load.
pub fn batching_report(spec: &ModelSpec, engine: &Engine) -> Result<serde_json::Value, String> {
    let engines = std::sync::Mutex::new(Engines {
        config: EngineConfig::default(),
        default: Some(Ok(engine.clone())),
        by_kind: HashMap::new(),
    });
    let exec = ExecLimits {
        workers: 1,
        timeout: None,
    };
    let (runner, _, _, verdict) = load_one(spec, &engines, exec)?;
    let mut v = match verdict {
        None => serde_json::json!({"state": "off"}),
        Some((c, r)) => {
            let mut m = c.to_json();
            match r {
                Ok(()) => {
                    m.insert("state".into(), "on".into());
                }
                Err(reason) => {
                    m.insert("state".into(), "refused".into());
                    m.insert("reason".into(), reason.into());
                }
            }
            serde_json::Value::Object(m)
        }
    };
    if let (batch::Runner::Bundle(b), Some(o)) = (&runner, v.as_object_mut()) {
        o.insert("bundle".into(), b.sizes().into());
    }
    Ok(v)
}

fn load_all(app: &App, specs: Vec<ModelSpec>, engine: Option<Engine>) {
    let engines = std::sync::Mutex::new(Engines {
        config: app.config.engine.clone(),
        default: engine.map(Ok),
        by_kind: HashMap::new(),
    });
    // Models load in parallel, as many at once as compiles may run; each is ready (or
    // unavailable) as soon as its own load ends, so a slow model never delays a fast one.
    let parallel = app
        .config
        .engine
        .compile
        .workers
        .clamp(1, specs.len().max(1));
    let queue = std::sync::Mutex::new(specs.into_iter());
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let next = queue.lock().unwrap_or_else(|p| p.into_inner()).next();
                let Some(spec) = next else { break };
                load_into_slot(app, &spec, &engines);
            });
        }
    });
    app.loading_done.store(true, Ordering::Release);
    tracing::info!("model loading finished");
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(server_ready))
        .route("/v2/models/{model}", get(model_metadata))
        .route("/v2/models/{model}/ready", get(model_ready))
        .route("/v2/models/{model}/config", get(model_config_h))
        .route(
            "/v2/models/{model}/versions/{version}/config",
            get(model_config_v),
        )
        .route("/v2/models/{model}/infer", post(infer))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(model_metadata_v),
        )
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{model}/versions/{version}/infer", post(infer_v))
        .route("/v2/repository/index", post(repository_index))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(app.clone(), observe))
        .with_state(app)
}

/// Answers a connection the server will not serve with a 503 and closes it, instead of a bare
/// reset. The write gets at most a second (a fresh connection's socket buffer takes the few
/// hundred bytes at once); the connection holds no slot meanwhile.
fn shed(stream: tokio::net::TcpStream, message: &str) {
    let body = error::error_body(message);
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let mut rest = reply.as_bytes();
            while !rest.is_empty() && stream.writable().await.is_ok() {
                match stream.try_write(rest) {
                    Ok(n) => rest = rest.get(n..).unwrap_or_default(),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => break,
                }
            }
        })
        .await;
    });
}

/// Open connections per client address.
#[derive(Default)]
struct ClientCounts(std::sync::Mutex<HashMap<std::net::IpAddr, usize>>);

/// A connection counted against its client address; uncounted when dropped.
struct ClientSlot {
    counts: Arc<ClientCounts>,
    ip: std::net::IpAddr,
}

impl ClientCounts {
    /// Counts a connection from `ip`, or `None` when it already has `limit` open.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(ip).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            counts: self.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut m = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// At most one log line a second; says how many were skipped since the last.
#[derive(Default)]
struct RateLimitedLog {
    last: std::sync::Mutex<Option<Instant>>,
    skipped: std::sync::atomic::AtomicU64,
}

impl RateLimitedLog {
    /// `Some(skipped since the last line)` when a line may be written now.
    fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

/// Counts every response by route template and status, and logs it.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = next.run(req).await;
    let code = resp.status().as_u16();
    app.metrics
        .http(route.as_ref().map_or("(none)", MatchedPath::as_str), code);
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let path = uri.path();
    // Per-request lines are debug (counters carry the rest): a refused or overloaded request
    // is the client's business or load, and logging each would let clients fill the disk. Only
    // a server fault (500) is a warning.
    if code == 500 {
        tracing::warn!(%method, path, code, ms, "request");
    } else {
        tracing::debug!(%method, path, code, ms, "request");
    }
    resp
}

fn json_response(status: StatusCode, value: &serde_json::Value) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        value.to_string(),
    )
        .into_response()
}

async fn server_metadata() -> Response {
    json_response(
        StatusCode::OK,
        &serde_json::json!({
            "name": "xlaguard",
            "version": env!("CARGO_PKG_VERSION"),
            "extensions": ["binary_tensor_data"],
        }),
    )
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn server_ready(State(app): State<Arc<App>>) -> Response {
    if !app.loading_done.load(Ordering::Acquire) {
        return ApiError::new(StatusCode::BAD_REQUEST, "models are still loading").into_response();
    }
    if app.config.strict_readiness {
        let failed: Vec<&str> = app
            .models
            .values()
            .filter(|s| !matches!(s.state.get(), Some(Ok(_))))
            .map(|s| s.name.as_str())
            .collect();
        if !failed.is_empty() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("models not ready: {}", failed.join(", ")),
            )
            .into_response();
        }
    }
    StatusCode::OK.into_response()
}

fn path_error(r: &PathRejection) -> Response {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("bad path: {}", r.body_text()),
    )
    .into_response()
}

fn metadata(app: &App, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let slot = app.slot(name, version)?;
    let loaded = slot.ready()?;
    let specs = |v: &[crate::TensorSpec]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name,
                    "datatype": wire::datatype_name(s.dtype),
                    "shape": wire::metadata_shape(s),
                })
            })
            .collect()
    };
    let sig = loaded.runner.signature();
    let mut v = serde_json::json!({
        "name": slot.name,
        "versions": [slot.version],
        "platform": loaded.platform,
        "inputs": specs(&sig.inputs),
        "outputs": specs(&sig.outputs),
    });
    if let (Batching::On { config, .. }, Some(o)) = (&loaded.batching, v.as_object_mut()) {
        o.insert("max_batch_size".into(), config.max_size().into());
    }
    Ok(json_response(StatusCode::OK, &v))
}

/// Triton's model configuration (its model-configuration extension), as `perf_analyzer` and
/// Triton's clients read it. With batching on at dimension 0, `max_batch_size` is the largest
/// size and `dims` leave the batch dimension out, as Triton writes them; otherwise
/// `max_batch_size` is 0 and `dims` are the whole shape (`-1` for a symbolic dimension).
fn model_config(app: &App, name: &str, version: Option<&str>) -> Result<Response, ApiError> {
    let slot = app.slot(name, version)?;
    let loaded = slot.ready()?;
    let sig = loaded.runner.signature();
    let batched = match &loaded.batching {
        Batching::On { config, .. } if config.batch_dim == 0 => Some(config),
        _ => None,
    };
    let specs = |v: &[crate::TensorSpec]| -> Vec<serde_json::Value> {
        v.iter()
            .map(|s| {
                let mut dims = wire::metadata_shape(s);
                if batched.is_some() && !dims.is_empty() {
                    dims.remove(0);
                }
                serde_json::json!({
                    "name": s.name,
                    "data_type": format!("TYPE_{}", wire::datatype_name(s.dtype)),
                    "dims": dims,
                })
            })
            .collect()
    };
    let mut v = serde_json::json!({
        "name": slot.name,
        "platform": loaded.platform,
        "backend": "xlaguard",
        "version_policy": {"specific": {"versions": [slot.version]}},
        "max_batch_size": batched.map_or(0, batch::BatchConfig::max_size),
        "input": specs(&sig.inputs),
        "output": specs(&sig.outputs),
        "instance_group": [{"count": slot.limits.workers, "kind": "KIND_CPU"}],
        "xlaguard": {"batching": loaded.batching.to_json()},
    });
    if let (Some(c), Some(o)) = (batched, v.as_object_mut()) {
        o.insert(
            "dynamic_batching".into(),
            serde_json::json!({
                "preferred_batch_size": c.sizes,
                "max_queue_delay_microseconds": u64::try_from(c.max_queue_delay.as_micros()).unwrap_or(u64::MAX),
            }),
        );
    }
    Ok(json_response(StatusCode::OK, &v))
}

async fn model_config_h(
    State(app): State<Arc<App>>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match p {
        Ok(Path(name)) => {
            model_config(&app, &name, None).unwrap_or_else(IntoResponse::into_response)
        }
        Err(r) => path_error(&r),
    }
}

async fn model_config_v(
    State(app): State<Arc<App>>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match p {
        Ok(Path((name, v))) => {
            model_config(&app, &name, Some(&v)).unwrap_or_else(IntoResponse::into_response)
        }
        Err(r) => path_error(&r),
    }
}

async fn model_metadata(
    State(app): State<Arc<App>>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match p {
        Ok(Path(name)) => metadata(&app, &name, None).unwrap_or_else(IntoResponse::into_response),
        Err(r) => path_error(&r),
    }
}

async fn model_metadata_v(
    State(app): State<Arc<App>>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match p {
        Ok(Path((name, v))) => {
            metadata(&app, &name, Some(&v)).unwrap_or_else(IntoResponse::into_response)
        }
        Err(r) => path_error(&r),
    }
}

fn readiness(app: &App, name: &str, version: Option<&str>) -> Response {
    match app.slot(name, version) {
        Err(e) => e.into_response(),
        Ok(slot) => match slot.ready() {
            Ok(_) => StatusCode::OK.into_response(),
            Err(e) => ApiError::new(StatusCode::BAD_REQUEST, e.message).into_response(),
        },
    }
}

async fn model_ready(
    State(app): State<Arc<App>>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match p {
        Ok(Path(name)) => readiness(&app, &name, None),
        Err(r) => path_error(&r),
    }
}

async fn model_ready_v(
    State(app): State<Arc<App>>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match p {
        Ok(Path((name, v))) => readiness(&app, &name, Some(&v)),
        Err(r) => path_error(&r),
    }
}

async fn repository_index(State(app): State<Arc<App>>) -> Response {
    let list: Vec<serde_json::Value> = app
        .models
        .values()
        .map(|s| match s.state.get() {
            Some(Ok(_)) => serde_json::json!({"name": s.name, "version": s.version, "state": "READY"}),
            Some(Err(reason)) => serde_json::json!({"name": s.name, "version": s.version, "state": "UNAVAILABLE", "reason": reason}),
            None => serde_json::json!({"name": s.name, "version": s.version, "state": "LOADING"}),
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(list))
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let text = metrics::render(&app.metrics, &app.gauges(), app.started.elapsed());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}

async fn not_found(req: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no route for {} {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn method_not_allowed(req: Request) -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
    .into_response()
}

async fn infer(
    State(app): State<Arc<App>>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match p {
        Ok(Path(name)) => infer_outer(app, &name, None, &headers, body).await,
        Err(r) => path_error(&r),
    }
}

async fn infer_v(
    State(app): State<Arc<App>>,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match p {
        Ok(Path((name, v))) => infer_outer(app, &name, Some(&v), &headers, body).await,
        Err(r) => path_error(&r),
    }
}

async fn infer_outer(
    app: Arc<App>,
    name: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let arrived = Instant::now();
    let slot = match app.slot(name, version) {
        Ok(s) => s.clone(),
        Err(e) => return e.closing().into_response(),
    };
    let result = infer_inner(&app, &slot, arrived, headers, body).await;
    match result {
        Ok((resp, run_time)) => {
            slot.metrics.count(200);
            slot.metrics.latency.observe(arrived.elapsed());
            slot.metrics.run_time.observe(run_time);
            resp
        }
        Err(e) => {
            slot.metrics.count(e.status.as_u16());
            if let Some((rule, input)) = &e.rejection {
                slot.metrics.reject(input, rule);
                tracing::debug!(model = %slot.name, input = %input, rule, error = %e.message, "input rejected");
            }
            let mut r = e.into_response();
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE
                || r.status() == StatusCode::REQUEST_TIMEOUT
            {
                // The rest of the body was not read: the connection cannot be reused.
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            r
        }
    }
}

/// Refuses a request that repeats a header whose meaning depends on there being one: taking
/// the first (as a proxy in front might take the last) would read the body differently.
fn single_header(headers: &HeaderMap, name: &str) -> Result<(), ApiError> {
    let n = headers.get_all(name).iter().count();
    if n > 1 {
        return Err(ApiError::from(wire::BadRequest {
            rule: "duplicate_header",
            input: None,
            message: format!("header {name} appears {n} times; send it once"),
        }));
    }
    Ok(())
}

fn header_len(headers: &HeaderMap) -> Result<Option<usize>, ApiError> {
    single_header(headers, HEADER_CONTENT_LENGTH)?;
    let Some(v) = headers.get(HEADER_CONTENT_LENGTH) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map(Some)
        .ok_or_else(|| {
            ApiError::from(wire::BadRequest {
                rule: "binary_header",
                input: None,
                message: format!(
                    "Inference-Header-Content-Length must be a byte count, got {:?}",
                    String::from_utf8_lossy(v.as_bytes())
                ),
            })
        })
}

/// Granularity of the body memory budget (permits of [`App::body_budget`]).
const BUDGET_UNIT: usize = 1024;

/// Reads a request body under its limits: at most `max_body_bytes`, within the body timeout,
/// and counted against the server's body memory budget as it arrives (the returned permit
/// holds its share until the request is answered).
async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Bytes, Option<tokio::sync::OwnedSemaphorePermit>), ApiError> {
    let max = app.config.max_body_bytes;
    let too_large = |got: String| {
        app.metrics.rejected("body_too_large");
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {got} bytes is over the limit of {max} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    if let Some(len) = declared {
        if usize::try_from(len).map_or(true, |l| l > max) {
            return Err(too_large(len.to_string()).closing());
        }
    }
    let read = async {
        let mut body = body;
        // Grown as bytes arrive (never reserved from the declared length up front); a body
        // that arrives in one frame is kept as it is, without a copy.
        let mut first: Option<Bytes> = None;
        let mut buf: Vec<u8> = Vec::new();
        let mut permit: Option<tokio::sync::OwnedSemaphorePermit> = None;
        let mut held = 0usize; // units
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("error reading the request body: {e}"),
                )
            })?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let so_far = buf
                .len()
                .saturating_add(first.as_ref().map_or(0, Bytes::len));
            let total = so_far.saturating_add(data.len());
            if total > max {
                return Err(too_large(format!("more than {max}")).closing());
            }
            let need = total.div_ceil(BUDGET_UNIT).saturating_sub(held);
            if need > 0 {
                let more = u32::try_from(need)
                    .ok()
                    .and_then(|n| app.body_budget.clone().try_acquire_many_owned(n).ok());
                let Some(more) = more else {
                    app.metrics.rejected("body_memory");
                    return Err(ApiError::overloaded(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "server busy: request bodies in memory would pass {} bytes",
                            app.config.max_body_memory_bytes
                        ),
                    )
                    .closing());
                };
                match &mut permit {
                    Some(p) => p.merge(more),
                    None => permit = Some(more),
                }
                held = held.saturating_add(need);
            }
            match first.take() {
                None if buf.is_empty() => first = Some(data),
                Some(f) => {
                    buf.extend_from_slice(&f);
                    buf.extend_from_slice(&data);
                }
                None => buf.extend_from_slice(&data),
            }
        }
        let bytes = match first {
            Some(f) => f,
            None => Bytes::from(buf),
        };
        Ok((bytes, permit))
    };
    match tokio::time::timeout(app.config.body_read_timeout, read).await {
        Err(_) => {
            app.metrics.rejected("body_timeout");
            Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "request body not received within {} ms",
                    app.config.body_read_timeout.as_millis()
                ),
            )
            .closing())
        }
        Ok(r) => r,
    }
}

async fn infer_inner(
    app: &App,
    slot: &Arc<Slot>,
    arrived: Instant,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, Duration), ApiError> {
    // Answers before the body is read close the connection (the body is still on it).
    let loaded = slot
        .ready()
        .inspect_err(|_| app.metrics.rejected("not_ready"))
        .map_err(ApiError::closing)?;
    single_header(headers, header::CONTENT_ENCODING.as_str()).map_err(ApiError::closing)?;
    if let Some(enc) = headers.get(header::CONTENT_ENCODING) {
        if enc.as_bytes() != b"identity" {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Encoding {:?} is not supported; send the body uncompressed",
                    String::from_utf8_lossy(enc.as_bytes())
                ),
            )
            .closing());
        }
    }
    let header_len = header_len(headers).map_err(ApiError::closing)?;
    // The body first (holding only the memory it takes), then a place among the requests in
    // progress: a slow sender never holds execution capacity.
    let (body, _memory) = read_body(app, headers, body).await?;
    let Ok(_global) = app.global.clone().try_acquire_owned() else {
        app.metrics.rejected("overloaded");
        return Err(ApiError::overloaded(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "server busy: {} inference requests already in progress",
                app.config.max_concurrent_requests
            ),
        ));
    };
    let deadline = tokio::time::Instant::from_std(arrived + slot.limits.timeout);
    let timeout_ms = slot.limits.timeout.as_millis();
    if let Batching::On {
        config, batcher, ..
    } = &loaded.batching
    {
        let (config, batcher) = (config.clone(), batcher.clone());
        return infer_batched(
            app, slot, loaded, &config, &batcher, body, header_len, deadline,
        )
        .await;
    }

    // A free worker now, or a place in the queue and a worker before the deadline.
    let worker = match slot.exec.clone().try_acquire_owned() {
        Ok(w) => w,
        Err(_) => {
            let Ok(place) = slot.queue.clone().try_acquire_owned() else {
                app.metrics.rejected("queue_full");
                return Err(ApiError::overloaded(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!(
                        "model '{}' is busy: {} requests running and {} queued",
                        slot.name, slot.limits.workers, slot.limits.max_queue
                    ),
                ));
            };
            let w = tokio::time::timeout_at(deadline, slot.exec.clone().acquire_owned()).await;
            drop(place);
            match w {
                Ok(Ok(w)) => w,
                Ok(Err(_)) => {
                    return Err(ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "model is shutting down",
                    ))
                }
                Err(_) => {
                    app.metrics.rejected("deadline");
                    return Err(ApiError::overloaded(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!(
                            "deadline of {timeout_ms} ms passed while waiting for a worker of \
                             model '{}'",
                            slot.name
                        ),
                    ));
                }
            }
        }
    };

    let limits = ParseLimits {
        max_json_depth: app.config.max_json_depth,
    };
    let name = slot.name.clone();
    let version = slot.version.clone();
    let until = arrived + slot.limits.timeout;
    let job = tokio::task::spawn_blocking(move || {
        let _worker = worker;
        let started = Instant::now();
        run_one(&loaded, &body, header_len, &limits, &name, &version, until)
            .map(|r| (r, started.elapsed()))
    });
    let (encoded, run_time) = match tokio::time::timeout_at(deadline, job).await {
        Ok(Ok(r)) => r?,
        Ok(Err(join)) => {
            tracing::error!(model = %slot.name, error = %join, "inference task failed");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: the inference task failed",
            ));
        }
        Err(_) => {
            app.metrics.rejected("deadline");
            return Err(ApiError::overloaded(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "deadline of {timeout_ms} ms passed while model '{}' was running",
                    slot.name
                ),
            ));
        }
    };
    Ok((response_of(encoded), run_time))
}

fn deadline_passed(app: &App, slot: &Slot, what: &str) -> ApiError {
    app.metrics.rejected("deadline");
    ApiError::overloaded(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "deadline of {} ms passed while {what} of model '{}'",
            slot.limits.timeout.as_millis(),
            slot.name
        ),
    )
}

/// A request to a batching model: decoded and checked alone on a blocking thread, then queued
/// in the model's batcher (or run alone when it has more rows than the largest size).
#[allow(clippy::too_many_arguments)]
async fn infer_batched(
    app: &App,
    slot: &Arc<Slot>,
    loaded: Arc<Loaded>,
    config: &batch::BatchConfig,
    batcher: &batch::Batcher,
    body: Bytes,
    header_len: Option<usize>,
    deadline: tokio::time::Instant,
) -> Result<(Response, Duration), ApiError> {
    let Ok(_place) = slot.queue.clone().try_acquire_owned() else {
        app.metrics.rejected("queue_full");
        return Err(ApiError::overloaded(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "model '{}' is busy: {} requests queued",
                slot.name, slot.limits.max_queue
            ),
        ));
    };
    let limits = ParseLimits {
        max_json_depth: app.config.max_json_depth,
    };
    let (l, c, b) = (loaded.clone(), config.clone(), batcher.clone());
    let (name, version) = (slot.name.clone(), slot.version.clone());
    let (n, v) = (name.clone(), version.clone());
    let checked = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let req = wire::parse_request(&body, header_len, l.runner.signature(), &limits)?;
        let views: Vec<_> = req.inputs.iter().map(wire::InputTensor::view).collect();
        let admit = batch::admit(&l.runner, &c, &views)?;
        // An idle model runs the request here and now, as the batch it would form alone.
        if let batch::Admit::Batch(rows) = admit {
            if let Some(outs) = b.try_run_now(&views, rows) {
                let encoded = encode(&l, &outs?, &req.outputs, &n, &v, req.id.as_deref())?;
                return Ok(Checked::Done(batch::Done {
                    encoded,
                    run_time: started.elapsed(),
                }));
            }
        }
        drop(views);
        Ok::<_, ApiError>(Checked::Queue(req, admit))
    });
    let (req, admit) = match tokio::time::timeout_at(deadline, checked).await {
        Ok(Ok(r)) => match r? {
            Checked::Queue(req, admit) => (req, admit),
            Checked::Done(done) => return Ok((response_of(done.encoded), done.run_time)),
        },
        Ok(Err(join)) => {
            tracing::error!(model = %slot.name, error = %join, "request check failed");
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error: the request check failed",
            ));
        }
        Err(_) => return Err(deadline_passed(app, slot, "checking a request")),
    };
    let done = match admit {
        batch::Admit::Batch(rows) => {
            let l = loaded.clone();
            let id = req.id.clone();
            let choices = req.outputs.clone();
            let finish: batch::Finish =
                Box::new(move |outs| encode(&l, &outs, &choices, &name, &version, id.as_deref()));
            let rx = batcher.submit(req.inputs, rows, deadline.into_std(), finish)?;
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => r?,
                Ok(Err(_)) | Err(_) => {
                    return Err(deadline_passed(app, slot, "waiting in the batch queue"))
                }
            }
        }
        batch::Admit::Alone => {
            let worker =
                match tokio::time::timeout_at(deadline, slot.exec.clone().acquire_owned()).await {
                    Ok(Ok(w)) => w,
                    Ok(Err(_)) => {
                        return Err(ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "model is shutting down",
                        ))
                    }
                    Err(_) => return Err(deadline_passed(app, slot, "waiting for a worker")),
                };
            let b = batcher.clone();
            let job = tokio::task::spawn_blocking(move || {
                let started = Instant::now();
                let views: Vec<_> = req.inputs.iter().map(wire::InputTensor::view).collect();
                let outs = loaded.runner.run(&views);
                drop(worker);
                b.finished();
                let outs = outs?;
                let encoded = encode(
                    &loaded,
                    &outs,
                    &req.outputs,
                    &name,
                    &version,
                    req.id.as_deref(),
                )?;
                Ok::<_, ApiError>(batch::Done {
                    encoded,
                    run_time: started.elapsed(),
                })
            });
            match tokio::time::timeout_at(deadline, job).await {
                Ok(Ok(r)) => r?,
                Ok(Err(_)) => {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal error: the inference task failed",
                    ))
                }
                Err(_) => return Err(deadline_passed(app, slot, "running")),
            }
        }
    };
    Ok((response_of(done.encoded), done.run_time))
}

/// A checked request: answered already (the model was idle), or to be queued.
enum Checked {
    Done(batch::Done),
    Queue(wire::InferRequest, batch::Admit),
}

fn response_of(encoded: wire::EncodedResponse) -> Response {
    let mut resp = Response::new(Body::from(encoded.body));
    let h = resp.headers_mut();
    match encoded.header_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    resp
}

/// Decodes, validates, runs and encodes one request (on a blocking thread).
fn run_one(
    loaded: &Loaded,
    body: &Bytes,
    header_len: Option<usize>,
    limits: &ParseLimits,
    name: &str,
    version: &str,
    deadline: Instant,
) -> Result<wire::EncodedResponse, ApiError> {
    let sig = loaded.runner.signature();
    let req = wire::parse_request(body, header_len, sig, limits)?;
    let views: Vec<_> = req.inputs.iter().map(wire::InputTensor::view).collect();
    // With process execution the worker is killed at the request's deadline (nothing stays
    // running).
    let outputs = match &*loaded.runner {
        batch::Runner::Model(m) => m.run_until(&views, deadline)?,
        r => r.run(&views)?,
    };
    encode(
        loaded,
        &outputs,
        &req.outputs,
        name,
        version,
        req.id.as_deref(),
    )
}

/// Encodes the outputs a request asked for.
fn encode(
    loaded: &Loaded,
    outputs: &[crate::Tensor],
    wanted: &[wire::OutputChoice],
    name: &str,
    version: &str,
    id: Option<&str>,
) -> Result<wire::EncodedResponse, ApiError> {
    let sig = loaded.runner.signature();
    let mut chosen = Vec::with_capacity(wanted.len());
    for o in wanted {
        match (sig.outputs.get(o.index), outputs.get(o.index)) {
            (Some(spec), Some(tensor)) => chosen.push(OutputRef {
                spec,
                tensor,
                binary: o.binary,
            }),
            _ => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal error: the model returned fewer outputs than its signature",
                ))
            }
        }
    }
    Ok(wire::encode_response(name, version, id, &chosen))
}
