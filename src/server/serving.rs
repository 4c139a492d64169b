//! The protocol-free serving core: the model repository (slots, versions, readiness, load and
//! unload), admission (the global cap, per-model workers and queues, deadlines), batching,
//! execution and metrics. It takes typed tensors in and gives typed tensors out; errors are
//! [`CoreError`]s with an [`ErrorKind`] that each frontend maps to its own status codes.
//!
//! The frontends (HTTP in [`super`], gRPC in [`super::grpc`]) only parse, call into the core,
//! map errors and encode. Both share one [`Core`]: one set of models, limits and metrics.
//!
//! Decoding and encoding of tensor contents are the frontends' own, but they run where the
//! core puts them, next to the execution: on a blocking thread (see [`offload`]), or inline on
//! the async worker when the model's measured cost says its requests are short (see
//! [`super::blocking`]).

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::Semaphore;

use crate::artifact::{self, ArtifactKind};
use crate::engine::{Engine, EngineConfig, Model};
use crate::plugin::DeviceKind;
use crate::signature::Signature;
use crate::Tensor;

use super::batch;
pub use super::blocking::offload;
use super::blocking::{Cost, Ran};
use super::config::ModelControl;
use super::config::{ServerConfig, ServerError};
pub use super::fault::{kind_for, CoreError, ErrorKind};
use super::metrics::{ModelGauges, ModelMetrics, ServerMetrics};
use super::repo::{self, ArtifactSource, ModelLimits, ModelSpec};
use super::wire::{InferRequest, InputTensor, OutputRef};

/// The protocol extensions both frontends implement (server metadata lists them).
pub const EXTENSIONS: &[&str] = &[
    "binary_tensor_data",
    "model_repository",
    "statistics",
    "model_configuration",
];

/// A loaded model and what its metadata needs.
#[derive(Debug)]
pub struct Loaded {
    pub(crate) runner: Arc<batch::Runner>,
    /// `jax_export`, `stablehlo` or `hlo`.
    pub platform: &'static str,
    pub(crate) batching: Batching,
    /// How long its requests hold a thread (inline or on the blocking pool): in-process
    /// models only (never inline otherwise).
    pub(crate) cost: Arc<Cost>,
    /// Process execution: how long the parts before and after the execution worker's round
    /// trip hold a thread (decode and validate; outputs and encode).
    pub(crate) flight: Arc<Cost>,
}

impl Loaded {
    /// How long this model's requests hold a thread, and whether they run inline (process
    /// execution: the parts before and after the round trip to the execution worker).
    pub fn cost(&self) -> &Cost {
        if self.runner.in_process() {
            &self.cost
        } else {
            &self.flight
        }
    }

    /// The signature clients see.
    pub fn signature(&self) -> &Signature {
        self.runner.signature()
    }

    /// Batching settings when batching is on, with the batch dimension.
    pub fn batch_config(&self) -> Option<&batch::BatchConfig> {
        match &self.batching {
            Batching::On { config, .. } => Some(config),
            _ => None,
        }
    }

    /// The batching state as JSON (`state`: `off`, `on`, `refused` with `reason`).
    pub fn batching_json(&self) -> serde_json::Value {
        self.batching.to_json()
    }
}

/// A model's batching state.
#[derive(Debug)]
pub(crate) enum Batching {
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

/// A model's state in its slot.
#[derive(Clone, Debug)]
pub enum SlotState {
    /// Being loaded.
    Loading,
    /// Serving.
    Ready(Arc<Loaded>),
    /// Could not be loaded, and why.
    Failed(String),
    /// Unloaded by a client (`--model-control explicit`).
    Unloaded,
}

impl SlotState {
    /// The repository-index state name (Triton's): `READY`, `LOADING`, `UNAVAILABLE`.
    pub fn name(&self) -> &'static str {
        match self {
            SlotState::Ready(_) => "READY",
            SlotState::Loading => "LOADING",
            SlotState::Failed(_) | SlotState::Unloaded => "UNAVAILABLE",
        }
    }

    /// Why the model is not ready (`None` when ready or loading).
    pub fn reason(&self) -> Option<&str> {
        match self {
            SlotState::Failed(r) => Some(r),
            SlotState::Unloaded => Some("unloaded"),
            _ => None,
        }
    }
}

/// Cumulative count and time of one phase (Triton's `StatisticDuration`).
#[derive(Debug, Default)]
pub struct PhaseStat {
    count: AtomicU64,
    ns: AtomicU64,
}

impl PhaseStat {
    fn add(&self, d: Duration) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// (count, cumulative nanoseconds).
    pub fn get(&self) -> (u64, u64) {
        (
            self.count.load(Ordering::Relaxed),
            self.ns.load(Ordering::Relaxed),
        )
    }
}

/// Triton's per-model inference statistics: counts and cumulative time per phase.
#[derive(Debug, Default)]
pub struct InferStats {
    /// Successful requests, arrival to answer.
    pub success: PhaseStat,
    /// Failed requests, arrival to answer.
    pub fail: PhaseStat,
    /// Waiting for a worker or a batch.
    pub queue: PhaseStat,
    /// Decoding and checking the inputs.
    pub compute_input: PhaseStat,
    /// Executing.
    pub compute_infer: PhaseStat,
    /// Encoding the outputs.
    pub compute_output: PhaseStat,
    /// Milliseconds since the epoch of the last successful request (0: none yet).
    pub last_inference_ms: AtomicU64,
}

/// Where the time of one successful request went.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timings {
    /// Waiting for a worker or a batch.
    pub queue: Duration,
    /// Decoding and checking the inputs.
    pub input: Duration,
    /// Executing.
    pub infer: Duration,
    /// Encoding the outputs.
    pub output: Duration,
}

impl Timings {
    /// Decoding, executing and encoding together.
    pub fn run_time(&self) -> Duration {
        self.input + self.infer + self.output
    }
}

/// One model's slot: fixed at start; its state is set by the loader (and by load and unload).
#[derive(Debug)]
pub struct Slot {
    /// The name clients use.
    pub name: String,
    /// The one version served.
    pub version: String,
    /// The model's limits.
    pub limits: ModelLimits,
    state: RwLock<SlotState>,
    /// Free workers.
    pub(crate) exec: Arc<Semaphore>,
    /// Free places in the queue of requests waiting for a worker.
    pub(crate) queue: Arc<Semaphore>,
    /// Counters.
    pub metrics: ModelMetrics,
    /// Triton's statistics.
    pub stats: InferStats,
    /// Where the model's folder is (to read it again on load), when it came from one.
    dir: Option<std::path::PathBuf>,
    /// Serializes loads and unloads of this model.
    control: Mutex<()>,
}

impl Slot {
    /// The state now.
    pub fn state(&self) -> SlotState {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_state(&self, s: SlotState) {
        *self.state.write().unwrap_or_else(|p| p.into_inner()) = s;
    }

    /// The loaded model, when ready.
    pub fn loaded(&self) -> Option<Arc<Loaded>> {
        match &*self.state.read().unwrap_or_else(|p| p.into_inner()) {
            SlotState::Ready(l) => Some(l.clone()),
            _ => None,
        }
    }

    /// The loaded model, or why it cannot serve.
    ///
    /// # Errors
    /// [`ErrorKind::Unavailable`].
    pub fn ready(&self) -> Result<Arc<Loaded>, CoreError> {
        match self.state() {
            SlotState::Ready(l) => Ok(l),
            SlotState::Failed(reason) => Err(CoreError::new(
                ErrorKind::Unavailable,
                format!("model '{}' is unavailable: {reason}", self.name),
            )),
            SlotState::Loading => Err(CoreError::retry(
                ErrorKind::Unavailable,
                format!("model '{}' is still loading", self.name),
            )),
            SlotState::Unloaded => Err(CoreError::new(
                ErrorKind::Unavailable,
                format!(
                    "model '{}' is unloaded; a repository load request loads it",
                    self.name
                ),
            )),
        }
    }

    /// The gauges of a scrape, borrowing `loaded` (this slot's loaded model, when ready).
    pub fn gauges<'a>(&'a self, loaded: Option<&'a Loaded>) -> ModelGauges<'a> {
        let running = self.limits.workers - self.exec.available_permits().min(self.limits.workers);
        let queued =
            self.limits.max_queue - self.queue.available_permits().min(self.limits.max_queue);
        ModelGauges {
            name: &self.name,
            version: &self.version,
            ready: loaded.is_some(),
            queued,
            running,
            metrics: &self.metrics,
            batch: loaded.and_then(|l| match &l.batching {
                Batching::On { metrics, .. } => Some(&**metrics),
                _ => None,
            }),
            execution: loaded.and_then(|l| match &*l.runner {
                batch::Runner::Model(m) => {
                    Some((m.execution(), m.execution_report().map(|(_, s)| s)))
                }
                batch::Runner::Bundle(_) => None,
            }),
            sync: loaded.map(|l| {
                let ((a, b), (c, d)) = (l.cost.counts(), l.flight.counts());
                (a + c, b + d, l.cost().estimate())
            }),
        }
    }

    /// Records a successful request.
    pub fn record_success(&self, arrived: Instant, t: &Timings) {
        let total = arrived.elapsed();
        self.metrics.count(200);
        self.metrics.latency.observe(total);
        self.metrics.run_time.observe(t.run_time());
        self.stats.success.add(total);
        self.stats.queue.add(t.queue);
        self.stats.compute_input.add(t.input);
        self.stats.compute_infer.add(t.infer);
        self.stats.compute_output.add(t.output);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.stats.last_inference_ms.store(now, Ordering::Relaxed);
    }

    /// Records a failed request: its HTTP-equivalent status `code` (the per-model counters are
    /// labelled with those, whichever frontend answered) and its validation rule, if any.
    pub fn record_failure(
        &self,
        arrived: Instant,
        code: u16,
        rejection: Option<&(&'static str, String)>,
    ) {
        self.metrics.count(code);
        self.stats.fail.add(arrived.elapsed());
        if let Some((rule, input)) = rejection {
            self.metrics.reject(input, rule);
        }
    }
}

/// One entry of the repository index.
#[derive(Clone, Debug)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// `READY`, `LOADING` or `UNAVAILABLE`.
    pub state: &'static str,
    /// Why it is unavailable.
    pub reason: Option<String>,
}

/// What the frontends share: settings, models, admission and metrics.
pub struct Core {
    /// The server's settings.
    pub config: ServerConfig,
    /// Every model, by name.
    pub models: BTreeMap<String, Arc<Slot>>,
    pub(crate) loading_done: AtomicBool,
    global: Arc<Semaphore>,
    /// Process-wide counters.
    pub metrics: ServerMetrics,
    /// When the server started.
    pub started: Instant,
    /// The runtime the batcher tasks run on.
    rt: tokio::runtime::Handle,
    engines: Mutex<Engines>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// Checks the model list and makes a slot per model (nothing loads yet; see
    /// [`Core::start_loading`]). Must be called inside a tokio runtime (batchers run on it).
    ///
    /// # Errors
    /// [`ServerError::DuplicateModel`], [`ServerError::InvalidModelName`].
    pub fn new(
        config: ServerConfig,
        models: &[ModelSpec],
        engine: Option<Engine>,
    ) -> Result<Core, ServerError> {
        let mut slots = BTreeMap::new();
        for spec in models {
            if !repo::valid_model_name(&spec.name) {
                return Err(ServerError::InvalidModelName(spec.name.clone()));
            }
            let limits = config.limits.with(spec.limits);
            let dir = spec.dir.clone();
            let slot = Slot {
                name: spec.name.clone(),
                version: spec.version.clone(),
                limits,
                state: RwLock::new(SlotState::Loading),
                exec: Arc::new(Semaphore::new(limits.workers)),
                queue: Arc::new(Semaphore::new(limits.max_queue)),
                metrics: ModelMetrics::default(),
                stats: InferStats::default(),
                dir,
                control: Mutex::new(()),
            };
            if slots.insert(spec.name.clone(), Arc::new(slot)).is_some() {
                return Err(ServerError::DuplicateModel(spec.name.clone()));
            }
        }
        Ok(Core {
            global: Arc::new(Semaphore::new(config.max_concurrent_requests.max(1))),
            engines: Mutex::new(Engines {
                config: config.engine.clone(),
                default: engine.map(Ok),
                by_kind: HashMap::new(),
            }),
            config,
            models: slots,
            loading_done: AtomicBool::new(false),
            metrics: ServerMetrics::default(),
            started: Instant::now(),
            rt: tokio::runtime::Handle::current(),
        })
    }

    /// Starts loading `models` in the background (on a thread of its own). Readiness turns
    /// true per model as each loads; a model that fails is reported and the others are served.
    ///
    /// # Errors
    /// [`ServerError::Runtime`] when the thread cannot start.
    pub fn start_loading(self: &Arc<Core>, models: Vec<ModelSpec>) -> Result<(), ServerError> {
        let core = self.clone();
        std::thread::Builder::new()
            .name("xlaguard-loader".into())
            .spawn(move || load_all(&core, models))
            .map(|_| ())
            .map_err(ServerError::Runtime)
    }

    /// A model's slot by name (and version, when given).
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`].
    pub fn slot(&self, name: &str, version: Option<&str>) -> Result<&Arc<Slot>, CoreError> {
        let slot = self
            .models
            .get(name)
            .ok_or_else(|| CoreError::unknown_model(name, None))?;
        match version {
            Some(v) if !v.is_empty() && v != slot.version => {
                Err(CoreError::unknown_model(name, Some(v)))
            }
            _ => Ok(slot),
        }
    }

    /// Whether the server is ready: loading finished and (with strict readiness) every model
    /// that is not unloaded is ready.
    ///
    /// # Errors
    /// Why not, as a message.
    pub fn server_ready(&self) -> Result<(), String> {
        // Judged from the slots' own states, so the answer never lags the repository index
        // (slots are ready before the loading threads have all returned); `loading_done` only
        // keeps a non-strict server ready while a client reloads a model.
        let names = |f: fn(&SlotState) -> bool| -> Vec<&str> {
            self.models
                .values()
                .filter(|s| f(&s.state()))
                .map(|s| s.name.as_str())
                .collect()
        };
        let reloading_ok =
            !self.config.strict_readiness && self.loading_done.load(Ordering::Acquire);
        let loading = names(|s| matches!(s, SlotState::Loading));
        if !loading.is_empty() && !reloading_ok {
            return Err(format!("models are still loading: {}", loading.join(", ")));
        }
        if self.config.strict_readiness {
            let failed = names(|s| !matches!(s, SlotState::Ready(_) | SlotState::Unloaded));
            if !failed.is_empty() {
                return Err(format!("models not ready: {}", failed.join(", ")));
            }
        }
        Ok(())
    }

    /// Every model with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        self.models
            .values()
            .map(|s| {
                let st = s.state();
                IndexEntry {
                    name: s.name.clone(),
                    version: s.version.clone(),
                    state: st.name(),
                    reason: st.reason().map(str::to_string),
                }
            })
            .collect()
    }

    fn controllable(&self, name: &str) -> Result<&Arc<Slot>, CoreError> {
        if self.config.model_control != ModelControl::Explicit {
            return Err(CoreError::new(
                ErrorKind::NotAllowed,
                "explicit model load and unload are not allowed: start the server with \
                 --model-control explicit",
            ));
        }
        self.slot(name, None)
    }

    /// Loads a model again (reading its folder again when it came from one), and waits for
    /// the load to end. The model is unavailable while it loads.
    ///
    /// # Errors
    /// [`ErrorKind::NotAllowed`] without explicit model control, [`ErrorKind::NotFound`], or
    /// [`ErrorKind::Unavailable`] with the reason the load failed.
    pub async fn load(self: &Arc<Core>, name: &str) -> Result<(), CoreError> {
        let slot = self.controllable(name)?.clone();
        let core = self.clone();
        let job = offload(move || {
            let _one = slot.control.lock().unwrap_or_else(|p| p.into_inner());
            let spec = match &slot.dir {
                Some(d) => repo::read_model_dir(d, &slot.name),
                None => {
                    return Err(CoreError::new(
                        ErrorKind::Unprocessable,
                        format!(
                            "model '{}' was not read from a folder: it cannot be reloaded",
                            slot.name
                        ),
                    ))
                }
            };
            if spec.version != slot.version {
                tracing::warn!(model = %slot.name, old = %slot.version, new = %spec.version, "the folder names another version; serving it under the old one's limits");
            }
            slot.set_state(SlotState::Loading);
            load_into_slot(&core, &spec);
            slot.ready().map(|_| ())
        });
        job.await
            .map_err(|_| CoreError::internal("internal error: the load task failed"))?
    }

    /// Unloads a model: new requests are refused; requests in flight finish.
    ///
    /// # Errors
    /// [`ErrorKind::NotAllowed`] without explicit model control, [`ErrorKind::NotFound`].
    pub fn unload(&self, name: &str) -> Result<(), CoreError> {
        let slot = self.controllable(name)?;
        let _one = slot.control.lock().unwrap_or_else(|p| p.into_inner());
        slot.set_state(SlotState::Unloaded);
        tracing::info!(model = %slot.name, "model unloaded");
        Ok(())
    }

    /// Runs one request: the global cap, a worker (or the model's batcher) before the
    /// deadline, then `decode`, execution and `encode` on a blocking thread.
    ///
    /// `decode` turns the frontend's request into typed inputs in signature order (checked
    /// against the signature); `encode` turns the chosen outputs into the frontend's answer.
    /// The deadline is the model's timeout from `arrived`, or `client_deadline` when sooner.
    ///
    /// # Errors
    /// A [`CoreError`] of the kind that stopped it.
    pub async fn infer<R, D, E>(
        &self,
        slot: &Arc<Slot>,
        loaded: Arc<Loaded>,
        arrived: Instant,
        client_deadline: Option<Instant>,
        decode: D,
        encode: E,
    ) -> Result<(R, Timings), CoreError>
    where
        R: Send + 'static,
        D: FnOnce(&Signature) -> Result<InferRequest, CoreError> + Send + 'static,
        E: FnOnce(Picked<'_>) -> Result<R, CoreError> + Send + 'static,
    {
        let Ok(_global) = self.global.clone().try_acquire_owned() else {
            self.metrics.rejected("overloaded");
            return Err(CoreError::retry(
                ErrorKind::Overloaded,
                format!(
                    "server busy: {} inference requests already in progress",
                    self.config.max_concurrent_requests
                ),
            ));
        };
        let deadline = Deadline::new(arrived, slot.limits.timeout, client_deadline);
        if let Batching::On {
            config, batcher, ..
        } = &loaded.batching
        {
            let (config, batcher) = (config.clone(), batcher.clone());
            return self
                .infer_batched(slot, loaded, &config, &batcher, deadline, decode, encode)
                .await;
        }

        // A free worker now, or a place in the queue and a worker before the deadline.
        let queued = Instant::now();
        let worker = match slot.exec.clone().try_acquire_owned() {
            Ok(w) => w,
            Err(_) => {
                let Ok(place) = slot.queue.clone().try_acquire_owned() else {
                    self.metrics.rejected("queue_full");
                    return Err(CoreError::retry(
                        ErrorKind::QueueFull,
                        format!(
                            "model '{}' is busy: {} requests running and {} queued",
                            slot.name, slot.limits.workers, slot.limits.max_queue
                        ),
                    ));
                };
                let w =
                    tokio::time::timeout_at(deadline.tokio(), slot.exec.clone().acquire_owned())
                        .await;
                drop(place);
                match w {
                    Ok(Ok(w)) => w,
                    Ok(Err(_)) => return Err(shutting_down()),
                    Err(_) => {
                        return Err(self.deadline_passed(
                            &deadline,
                            format!("waiting for a worker of model '{}'", slot.name),
                        ))
                    }
                }
            }
        };
        let queue_time = queued.elapsed();

        if let batch::Runner::Model(m) = &*loaded.runner {
            // `--inline-execution-us 0`: the whole request on the blocking pool, as before.
            if m.execution() == crate::exec::Execution::Process && loaded.flight.enabled() {
                return self
                    .infer_flight(slot, loaded, worker, queue_time, deadline, decode, encode)
                    .await;
            }
        }
        let name = slot.name.clone();
        let version = slot.version.clone();
        let until = deadline.at;
        let cost = loaded.cost.clone();
        let job = move || {
            let _worker = worker;
            run_one(&loaded, decode, encode, &name, &version, until)
        };
        match super::blocking::run(&cost, deadline.tokio(), job).await {
            Ran::Done(r) => r.map(|(r, mut t)| {
                t.queue = queue_time;
                (r, t)
            }),
            Ran::Failed => {
                tracing::error!(model = %slot.name, "inference task failed");
                Err(CoreError::internal(
                    "internal error: the inference task failed",
                ))
            }
            Ran::Late => {
                Err(self.deadline_passed(&deadline, format!("model '{}' was running", slot.name)))
            }
        }
    }

    /// A request to a model in process execution (not batching): decoded, validated and
    /// sent to an idle execution worker, inline when short (else on the blocking pool); the
    /// worker's answer is awaited in the reactor, with no thread blocked; then the outputs
    /// are encoded, inline when short. Without an idle worker (one being replaced) or for a
    /// shape-polymorphic model, the round trip runs on the blocking pool as before.
    #[allow(clippy::too_many_arguments)]
    async fn infer_flight<R, D, E>(
        &self,
        slot: &Arc<Slot>,
        loaded: Arc<Loaded>,
        worker: tokio::sync::OwnedSemaphorePermit,
        queue: Duration,
        deadline: Deadline,
        decode: D,
        encode: E,
    ) -> Result<(R, Timings), CoreError>
    where
        R: Send + 'static,
        D: FnOnce(&Signature) -> Result<InferRequest, CoreError> + Send + 'static,
        E: FnOnce(Picked<'_>) -> Result<R, CoreError> + Send + 'static,
    {
        let cost = loaded.flight.clone();
        let until = deadline.at;
        let running = || format!("model '{}' was running", slot.name);
        let failed = || CoreError::internal("internal error: the inference task failed");
        let l = loaded.clone();
        let first = move || {
            let started = Instant::now();
            let req = decode(l.runner.signature())?;
            let begun = match &*l.runner {
                batch::Runner::Model(m) => {
                    let views: Vec<_> = req.inputs.iter().map(InputTensor::view).collect();
                    m.begin_remote(&views, until)?
                }
                batch::Runner::Bundle(_) => None,
            };
            Ok::<_, CoreError>((req, begun, started.elapsed()))
        };
        let (mut req, begun, input) =
            match super::blocking::run(&cost, deadline.tokio(), first).await {
                Ran::Done(r) => r?,
                Ran::Failed => return Err(failed()),
                Ran::Late => return Err(self.deadline_passed(&deadline, running())),
            };
        let started = Instant::now();
        let outputs: Result<Vec<Tensor>, CoreError> = match begun {
            Some(crate::engine::Begun::Flight(remote, mut flight)) => {
                let ended =
                    tokio::time::timeout_at(deadline.tokio(), super::blocking::drive(&mut flight))
                        .await;
                match ended {
                    Ok(Ok(())) => {
                        let bytes = flight.finish()?;
                        self.model_of(&loaded)?
                            .remote_outputs(&remote, bytes)
                            .map_err(CoreError::from)
                    }
                    Ok(Err(io)) => {
                        tracing::error!(model = %slot.name, error = %io, "cannot wait for an execution worker");
                        drop(flight.expire());
                        return Err(failed());
                    }
                    Err(_) => {
                        // The worker is killed at the deadline, as on the blocking pool.
                        drop(flight.expire());
                        return Err(self.deadline_passed(&deadline, running()));
                    }
                }
            }
            other => {
                // No idle worker, or not a static model in a worker: wait on the pool.
                let l = loaded.clone();
                let job = offload(move || {
                    let run = || -> Result<Vec<Tensor>, CoreError> {
                        let batch::Runner::Model(m) = &*l.runner else {
                            return Err(CoreError::internal(
                                "internal error: a bundle in process execution",
                            ));
                        };
                        match other {
                            Some(crate::engine::Begun::Wait(remote, parts)) => {
                                let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
                                let bytes = remote.call(&parts, Some(until))?;
                                Ok(m.remote_outputs(&remote, bytes)?)
                            }
                            _ => {
                                let views: Vec<_> =
                                    req.inputs.iter().map(InputTensor::view).collect();
                                Ok(m.run_until(&views, until)?)
                            }
                        }
                    };
                    let r = run();
                    (req, r)
                });
                match tokio::time::timeout_at(deadline.tokio(), job).await {
                    Ok(Ok((back, r))) => {
                        req = back;
                        r
                    }
                    Ok(Err(_)) => return Err(failed()),
                    Err(_) => return Err(self.deadline_passed(&deadline, running())),
                }
            }
        };
        let outputs = outputs?;
        drop(worker);
        let infer = started.elapsed();
        let (name, version) = (slot.name.clone(), slot.version.clone());
        let last = move || {
            let t0 = Instant::now();
            let r = encode(pick(&loaded, &outputs, &req, &name, &version)?)?;
            Ok::<_, CoreError>((r, t0.elapsed()))
        };
        match super::blocking::run(&cost, deadline.tokio(), last).await {
            Ran::Done(r) => r.map(|(r, output)| {
                (
                    r,
                    Timings {
                        queue,
                        input,
                        infer,
                        output,
                    },
                )
            }),
            Ran::Failed => Err(failed()),
            Ran::Late => Err(self.deadline_passed(&deadline, running())),
        }
    }

    fn model_of<'a>(&self, loaded: &'a Loaded) -> Result<&'a Model, CoreError> {
        match &*loaded.runner {
            batch::Runner::Model(m) => Ok(m),
            batch::Runner::Bundle(_) => Err(CoreError::internal(
                "internal error: a bundle in process execution",
            )),
        }
    }

    /// `what`: what the request was doing, with the model's name (`waiting for a worker of
    /// model 'm'`).
    fn deadline_passed(&self, deadline: &Deadline, what: String) -> CoreError {
        self.metrics.rejected("deadline");
        let whose = if deadline.by_client {
            "the client's deadline"
        } else {
            "deadline"
        };
        CoreError::retry(
            ErrorKind::Deadline,
            format!("{whose} of {} ms passed while {what}", deadline.ms),
        )
    }

    /// A request to a batching model: decoded and checked alone on a blocking thread, then
    /// queued in the model's batcher (or run alone when it has more rows than the largest
    /// size).
    #[allow(clippy::too_many_arguments)]
    async fn infer_batched<R, D, E>(
        &self,
        slot: &Arc<Slot>,
        loaded: Arc<Loaded>,
        config: &batch::BatchConfig,
        batcher: &batch::Batcher,
        deadline: Deadline,
        decode: D,
        encode: E,
    ) -> Result<(R, Timings), CoreError>
    where
        R: Send + 'static,
        D: FnOnce(&Signature) -> Result<InferRequest, CoreError> + Send + 'static,
        E: FnOnce(Picked<'_>) -> Result<R, CoreError> + Send + 'static,
    {
        let Ok(_place) = slot.queue.clone().try_acquire_owned() else {
            self.metrics.rejected("queue_full");
            return Err(CoreError::retry(
                ErrorKind::QueueFull,
                format!(
                    "model '{}' is busy: {} requests queued",
                    slot.name, slot.limits.max_queue
                ),
            ));
        };
        let (l, c, b) = (loaded.clone(), config.clone(), batcher.clone());
        let (name, version) = (slot.name.clone(), slot.version.clone());
        let (n, v) = (name.clone(), version.clone());
        let cost = loaded.cost.clone();
        let checked = move || {
            let started = Instant::now();
            let req = decode(l.runner.signature())?;
            let views: Vec<_> = req.inputs.iter().map(InputTensor::view).collect();
            let admit = batch::admit(&l.runner, &c, &views)?;
            let input = started.elapsed();
            // An idle model runs the request here and now, as the batch it would form alone.
            if let batch::Admit::Batch(rows) = admit {
                if let Some(outs) = b.try_run_now(&views, rows) {
                    let infer = started.elapsed() - input;
                    let outs = outs?;
                    let t0 = Instant::now();
                    let r = encode(pick(&l, &outs, &req, &n, &v)?)?;
                    let t = Timings {
                        queue: Duration::ZERO,
                        input,
                        infer,
                        output: t0.elapsed(),
                    };
                    return Ok(Checked::Done(r, t));
                }
            }
            drop(views);
            Ok::<_, CoreError>(Checked::Queue(req, admit, input, encode))
        };
        let (req, admit, input, encode) =
            match super::blocking::run(&cost, deadline.tokio(), checked).await {
                Ran::Done(r) => match r? {
                    Checked::Queue(req, admit, input, encode) => (req, admit, input, encode),
                    Checked::Done(r, t) => return Ok((r, t)),
                },
                Ran::Failed => {
                    tracing::error!(model = %slot.name, "request check failed");
                    return Err(CoreError::internal(
                        "internal error: the request check failed",
                    ));
                }
                Ran::Late => {
                    return Err(self.deadline_passed(
                        &deadline,
                        format!("checking a request of model '{}'", slot.name),
                    ))
                }
            };
        let waited = Instant::now();
        match admit {
            batch::Admit::Batch(rows) => {
                let l = loaded.clone();
                let meta = RequestMeta {
                    id: req.id.clone(),
                    outputs: req.outputs.clone(),
                };
                let finish: batch::Finish = Box::new(move |outs| {
                    let t0 = Instant::now();
                    let r = encode(pick_meta(&l, &outs, &meta, &name, &version)?)?;
                    Ok(Box::new((r, t0.elapsed())) as Box<dyn Any + Send>)
                });
                let rx = batcher.submit(req.inputs, rows, deadline.at, finish)?;
                let done = match tokio::time::timeout_at(deadline.tokio(), rx).await {
                    Ok(Ok(r)) => r?,
                    Ok(Err(_)) | Err(_) => {
                        return Err(self.deadline_passed(
                            &deadline,
                            format!("waiting in the batch queue of model '{}'", slot.name),
                        ))
                    }
                };
                let total = waited.elapsed();
                let (r, output) = *done.encoded.downcast::<(R, Duration)>().map_err(|_| {
                    CoreError::internal("internal error: a batch answer of another type")
                })?;
                let t = Timings {
                    queue: total.saturating_sub(done.run_time),
                    input,
                    infer: done.run_time.saturating_sub(output),
                    output,
                };
                Ok((r, t))
            }
            batch::Admit::Alone => {
                let worker = match tokio::time::timeout_at(
                    deadline.tokio(),
                    slot.exec.clone().acquire_owned(),
                )
                .await
                {
                    Ok(Ok(w)) => w,
                    Ok(Err(_)) => return Err(shutting_down()),
                    Err(_) => {
                        return Err(self.deadline_passed(
                            &deadline,
                            format!("waiting for a worker of model '{}'", slot.name),
                        ))
                    }
                };
                let queue = waited.elapsed();
                let b = batcher.clone();
                let cost = loaded.cost.clone();
                let job = move || {
                    let started = Instant::now();
                    let views: Vec<_> = req.inputs.iter().map(InputTensor::view).collect();
                    let outs = loaded.runner.run(&views);
                    drop(worker);
                    b.finished();
                    let outs = outs?;
                    let infer = started.elapsed();
                    let t0 = Instant::now();
                    let r = encode(pick(&loaded, &outs, &req, &name, &version)?)?;
                    Ok::<_, CoreError>((
                        r,
                        Timings {
                            queue,
                            input,
                            infer,
                            output: t0.elapsed(),
                        },
                    ))
                };
                match super::blocking::run(&cost, deadline.tokio(), job).await {
                    Ran::Done(r) => r,
                    Ran::Failed => Err(CoreError::internal(
                        "internal error: the inference task failed",
                    )),
                    Ran::Late => Err(self
                        .deadline_passed(&deadline, format!("running of model '{}'", slot.name))),
                }
            }
        }
    }
}

fn shutting_down() -> CoreError {
    CoreError::new(ErrorKind::Unavailable, "model is shutting down")
}

/// A request's deadline: the model's timeout from arrival, or the client's when sooner.
#[derive(Clone, Copy, Debug)]
struct Deadline {
    at: Instant,
    ms: u128,
    by_client: bool,
}

impl Deadline {
    fn new(arrived: Instant, timeout: Duration, client: Option<Instant>) -> Deadline {
        let model = arrived + timeout;
        match client {
            Some(c) if c < model => Deadline {
                at: c,
                ms: c.saturating_duration_since(arrived).as_millis(),
                by_client: true,
            },
            _ => Deadline {
                at: model,
                ms: timeout.as_millis(),
                by_client: false,
            },
        }
    }

    fn tokio(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.at)
    }
}

/// A checked request to a batching model: answered already (the model was idle), or to be
/// queued (with the time its decoding took and its encoder).
enum Checked<R, E> {
    Done(R, Timings),
    Queue(InferRequest, batch::Admit, Duration, E),
}

/// What a request needs of its outputs once its inputs are gone.
struct RequestMeta {
    id: Option<String>,
    outputs: Vec<super::wire::OutputChoice>,
}

/// The outputs a request asked for, for its frontend's encoder.
#[derive(Debug)]
pub struct Picked<'a> {
    /// The model's name.
    pub model: &'a str,
    /// Its version.
    pub version: &'a str,
    /// The request's id.
    pub id: Option<&'a str>,
    /// The chosen outputs, in the order asked.
    pub outputs: Vec<OutputRef<'a>>,
}

fn pick<'a>(
    loaded: &'a Loaded,
    outputs: &'a [Tensor],
    req: &'a InferRequest,
    model: &'a str,
    version: &'a str,
) -> Result<Picked<'a>, CoreError> {
    choose(
        loaded,
        outputs,
        &req.outputs,
        req.id.as_deref(),
        model,
        version,
    )
}

fn pick_meta<'a>(
    loaded: &'a Loaded,
    outputs: &'a [Tensor],
    meta: &'a RequestMeta,
    model: &'a str,
    version: &'a str,
) -> Result<Picked<'a>, CoreError> {
    choose(
        loaded,
        outputs,
        &meta.outputs,
        meta.id.as_deref(),
        model,
        version,
    )
}

fn choose<'a>(
    loaded: &'a Loaded,
    outputs: &'a [Tensor],
    wanted: &[super::wire::OutputChoice],
    id: Option<&'a str>,
    model: &'a str,
    version: &'a str,
) -> Result<Picked<'a>, CoreError> {
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
                return Err(CoreError::internal(
                    "internal error: the model returned fewer outputs than its signature",
                ))
            }
        }
    }
    Ok(Picked {
        model,
        version,
        id,
        outputs: chosen,
    })
}

/// Decodes, validates, runs and encodes one request (on a blocking thread).
fn run_one<R, D, E>(
    loaded: &Loaded,
    decode: D,
    encode: E,
    name: &str,
    version: &str,
    deadline: Instant,
) -> Result<(R, Timings), CoreError>
where
    D: FnOnce(&Signature) -> Result<InferRequest, CoreError>,
    E: FnOnce(Picked<'_>) -> Result<R, CoreError>,
{
    let started = Instant::now();
    let req = decode(loaded.runner.signature())?;
    let views: Vec<_> = req.inputs.iter().map(InputTensor::view).collect();
    let input = started.elapsed();
    // With process execution the worker is killed at the request's deadline (nothing stays
    // running).
    let outputs = match &*loaded.runner {
        batch::Runner::Model(m) => m.run_until(&views, deadline)?,
        r => r.run(&views)?,
    };
    let infer = started.elapsed() - input;
    let t0 = Instant::now();
    let r = encode(pick(loaded, &outputs, &req, name, version)?)?;
    Ok((
        r,
        Timings {
            queue: Duration::ZERO,
            input,
            infer,
            output: t0.elapsed(),
        },
    ))
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
fn load_into_slot(core: &Core, spec: &ModelSpec) {
    let engines = &core.engines;
    let Some(slot) = core.models.get(&spec.name) else {
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
            core.metrics.compile(true, compile);
            slot.metrics.compiled(compile);
            let runner = Arc::new(runner);
            let batching = match verdict {
                None => Batching::Off,
                Some((config, Ok(()))) => {
                    let metrics = Arc::new(batch::BatchMetrics::new(&config.sizes));
                    let batcher = batch::Batcher::start(
                        &core.rt,
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
            // A process execution's round trip waits in the reactor, with the parts around it
            // (bounded by the request's size) inline when short. An in-process execution runs
            // inline as a whole only when asked: it cannot be stopped, so one request far
            // longer than the model's average would hold an async worker and answer after its
            // deadline instead of at it.
            let limit = core.config.inline_execution;
            let inline = if runner.in_process() && core.config.inline_in_process {
                limit
            } else {
                Duration::ZERO
            };
            let loaded = Loaded {
                runner,
                platform,
                batching,
                cost: Arc::new(Cost::new(inline)),
                flight: Arc::new(Cost::new(limit)),
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
                core.metrics.compile(false, started.elapsed());
            }
            tracing::error!(model = %spec.name, version = %spec.version, %reason, "model unavailable");
            Err(reason)
        }
    };
    slot.set_state(match state {
        Ok(l) => SlotState::Ready(l),
        Err(reason) => SlotState::Failed(reason),
    });
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
    let with_kernels;
    let engine = match spec.cpu_kernels {
        Some(k) if k != engine.cpu_kernels() => {
            with_kernels = engine.with_cpu_kernels(k);
            &with_kernels
        }
        _ => engine,
    };
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

fn load_all(core: &Core, specs: Vec<ModelSpec>) {
    // Models load in parallel, as many at once as compiles may run; each is ready (or
    // unavailable) as soon as its own load ends, so a slow model never delays a fast one.
    let parallel = core
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
                load_into_slot(core, &spec);
            });
        }
    });
    core.loading_done.store(true, Ordering::Release);
    tracing::info!("model loading finished");
}
