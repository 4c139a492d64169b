//! `xlaguard serve`: a KServe v2 / Open Inference Protocol server over HTTP/1.1 and gRPC.
//!
//! One protocol-free core ([`serving`]: repository, readiness, admission, batching, execution,
//! metrics) and two thin frontends: HTTP here, gRPC in [`grpc`]. Both share one process, one
//! set of models, limits and metrics.
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
//! | `POST /v2/repository/models/{m}/load`, `/unload` | reload a model from its folder (answers when loaded; 503 with the reason when the load failed) or unload it; 403 unless `--model-control explicit` |
//! | `GET /v2/models[/{m}[/versions/{v}]]/stats` | Triton's statistics: per model, counts and cumulative ns of success, fail, queue, compute_input, compute_infer, compute_output |
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
pub mod blocking;
mod cli;
pub mod config;
mod datatype;
pub mod error;
mod fastjson;
pub mod fault;
pub mod grpc;
pub mod metrics;
pub mod repo;
pub mod serving;
pub mod wire;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
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

use crate::engine::Engine;

pub use cli::{serve_command, LogFormat, ServeArgs};
pub use config::{ModelControl, ServerConfig, ServerError};
use error::ApiError;
use repo::ModelSpec;
pub use serving::batching_report;
use serving::{Core, CoreError, Picked, Slot, Timings};
use wire::ParseLimits;

/// The header that gives the JSON part's length when binary tensor data follows it.
pub const HEADER_CONTENT_LENGTH: &str = "inference-header-content-length";

/// Shared state of the HTTP handlers: the serving core and what only HTTP needs.
#[derive(Debug)]
struct App {
    core: Arc<Core>,
    /// Request body memory, in [`BUDGET_UNIT`]s.
    body_budget: Arc<Semaphore>,
}

impl std::ops::Deref for App {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

/// A bound server: models are loading in the background; [`Server::run`] serves.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    grpc: Option<TcpListener>,
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
        let core = Core::new(config, &models, engine)?;
        let listener = TcpListener::bind(core.config.addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: core.config.addr,
                error: source,
            })?;
        let grpc = match core.config.grpc_addr {
            Some(addr) => {
                Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|source| ServerError::Bind {
                            addr,
                            error: source,
                        })?,
                )
            }
            None => None,
        };
        let core = Arc::new(core);
        let app = Arc::new(App {
            body_budget: Arc::new(Semaphore::new(
                core.config
                    .max_body_memory_bytes
                    .div_ceil(BUDGET_UNIT)
                    .clamp(1, Semaphore::MAX_PERMITS),
            )),
            core: core.clone(),
        });
        core.start_loading(models)?;
        Ok(Server {
            listener,
            grpc,
            app,
        })
    }

    /// The address actually bound (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.app.config.addr)
    }

    /// The gRPC address actually bound, when gRPC is on ([`ServerConfig::grpc_addr`]).
    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
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
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let grpc = self.grpc.map(|l| {
            let mut stopped = stopped.clone();
            tokio::spawn(grpc::serve(l, app.core.clone(), async move {
                let _ = stopped.wait_for(|s| *s).await;
            }))
        });
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
        let _ = stop.send(true);
        tracing::info!("shutting down: no new connections; draining in-flight requests");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("drained; bye"),
            () = tokio::time::sleep(app.config.drain_timeout) => tracing::warn!(
                timeout_ms = app.config.drain_timeout.as_millis(),
                "drain timeout passed; closing remaining connections"
            ),
        }
        if let Some(g) = grpc {
            let _ = g.await;
        }
        Ok(())
    }
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
        .route("/v2/repository/models/{model}/load", post(repository_load))
        .route(
            "/v2/repository/models/{model}/unload",
            post(repository_unload),
        )
        .route("/v2/models/stats", get(stats_all))
        .route("/v2/models/{model}/stats", get(stats_h))
        .route("/v2/models/{model}/versions/{version}/stats", get(stats_v))
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
            "extensions": serving::EXTENSIONS,
        }),
    )
}

async fn live() -> StatusCode {
    StatusCode::OK
}

async fn server_ready(State(app): State<Arc<App>>) -> Response {
    match app.server_ready() {
        Ok(()) => StatusCode::OK.into_response(),
        Err(why) => ApiError::new(StatusCode::BAD_REQUEST, why).into_response(),
    }
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
    let sig = loaded.signature();
    let mut v = serde_json::json!({
        "name": slot.name,
        "versions": [slot.version],
        "platform": loaded.platform,
        "inputs": specs(&sig.inputs),
        "outputs": specs(&sig.outputs),
    });
    if let (Some(config), Some(o)) = (loaded.batch_config(), v.as_object_mut()) {
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
    let sig = loaded.signature();
    let batched = loaded.batch_config().filter(|c| c.batch_dim == 0);
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
        "xlaguard": {"batching": loaded.batching_json()},
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
        Err(e) => ApiError::from(e).into_response(),
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
        .index()
        .into_iter()
        .map(|e| {
            let mut v = serde_json::json!({"name": e.name, "version": e.version, "state": e.state});
            if let (Some(r), Some(o)) = (e.reason, v.as_object_mut()) {
                o.insert("reason".into(), r.into());
            }
            v
        })
        .collect();
    json_response(StatusCode::OK, &serde_json::Value::Array(list))
}

/// `POST /v2/repository/models/{m}/load`: (re)loads the model from its folder and answers when
/// the load has ended (503 with the reason when it failed). Needs `--model-control explicit`.
async fn repository_load(
    State(app): State<Arc<App>>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match p {
        Ok(Path(name)) => match app.core.load(&name).await {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(r) => path_error(&r),
    }
}

/// `POST /v2/repository/models/{m}/unload`. Needs `--model-control explicit`.
async fn repository_unload(
    State(app): State<Arc<App>>,
    p: Result<Path<String>, PathRejection>,
) -> Response {
    match p {
        Ok(Path(name)) => match app.core.unload(&name) {
            Ok(()) => StatusCode::OK.into_response(),
            Err(e) => ApiError::from(e).into_response(),
        },
        Err(r) => path_error(&r),
    }
}

/// One model's statistics in Triton's JSON layout.
fn stats_json(slot: &Slot) -> serde_json::Value {
    let st = &slot.stats;
    let d = |p: &serving::PhaseStat| {
        let (count, ns) = p.get();
        serde_json::json!({"count": count, "ns": ns})
    };
    let (success, _) = st.success.get();
    serde_json::json!({
        "name": slot.name,
        "version": slot.version,
        "last_inference": st.last_inference_ms.load(Ordering::Relaxed),
        "inference_count": success,
        "execution_count": success,
        "inference_stats": {
            "success": d(&st.success),
            "fail": d(&st.fail),
            "queue": d(&st.queue),
            "compute_input": d(&st.compute_input),
            "compute_infer": d(&st.compute_infer),
            "compute_output": d(&st.compute_output),
            "cache_hit": {"count": 0, "ns": 0},
            "cache_miss": {"count": 0, "ns": 0},
        },
        "batch_stats": [],
    })
}

fn stats(app: &App, name: &str, version: Option<&str>) -> Response {
    match app.slot(name, version) {
        Ok(slot) => json_response(
            StatusCode::OK,
            &serde_json::json!({"model_stats": [stats_json(slot)]}),
        ),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn stats_all(State(app): State<Arc<App>>) -> Response {
    let all: Vec<_> = app.models.values().map(|s| stats_json(s)).collect();
    json_response(StatusCode::OK, &serde_json::json!({"model_stats": all}))
}

async fn stats_h(State(app): State<Arc<App>>, p: Result<Path<String>, PathRejection>) -> Response {
    match p {
        Ok(Path(name)) => stats(&app, &name, None),
        Err(r) => path_error(&r),
    }
}

async fn stats_v(
    State(app): State<Arc<App>>,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Response {
    match p {
        Ok(Path((name, v))) => stats(&app, &name, Some(&v)),
        Err(r) => path_error(&r),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    let loaded: Vec<_> = app.models.values().map(|s| (s, s.loaded())).collect();
    let gauges: Vec<_> = loaded.iter().map(|(s, l)| s.gauges(l.as_deref())).collect();
    let text = metrics::render(&app.metrics, &gauges, app.started.elapsed());
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
        Err(e) => return ApiError::from(e).closing().into_response(),
    };
    let result = infer_inner(&app, &slot, arrived, headers, body).await;
    match result {
        Ok((resp, timings)) => {
            slot.record_success(arrived, &timings);
            resp
        }
        Err(e) => {
            slot.record_failure(arrived, e.status.as_u16(), e.rejection.as_ref());
            if let Some((rule, input)) = &e.rejection {
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
) -> Result<(Response, Timings), ApiError> {
    // Answers before the body is read close the connection (the body is still on it).
    let loaded = slot
        .ready()
        .inspect_err(|_| app.metrics.rejected("not_ready"))
        .map_err(|e| ApiError::from(e).closing())?;
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
    let limits = ParseLimits {
        max_json_depth: app.config.max_json_depth,
    };
    let decode = move |sig: &crate::Signature| {
        wire::parse_request(&body, header_len, sig, &limits).map_err(CoreError::from)
    };
    let encode = |p: Picked<'_>| Ok(wire::encode_response(p.model, p.version, p.id, &p.outputs));
    let (encoded, timings) = app
        .core
        .infer(slot, loaded, arrived, None, decode, encode)
        .await?;
    Ok((response_of(encoded), timings))
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
