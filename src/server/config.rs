//! The server's settings and start-up errors, shared by the core and both frontends.

use std::net::SocketAddr;
use std::time::Duration;

use crate::engine::EngineConfig;

use super::repo::{self, ModelLimits};

/// How models are loaded and unloaded (Triton's `--model-control-mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelControl {
    /// Every model of the repository loads at start; load and unload requests are refused.
    #[default]
    None,
    /// Every model loads at start too, and clients may unload and (re)load models by name:
    /// a load reads the model's folder again.
    Explicit,
}

/// Server settings. [`ServerConfig::default`] gives the documented defaults.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (default `127.0.0.1:8000`, Triton's HTTP port).
    pub addr: SocketAddr,
    /// Address of the gRPC frontend (`None`, the default here, turns it off; `xlaguard serve`
    /// listens on `127.0.0.1:8001`, Triton's gRPC port, unless told otherwise).
    pub grpc_addr: Option<SocketAddr>,
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
    /// Whether clients may load and unload models (default [`ModelControl::None`]).
    pub model_control: ModelControl,
    /// Parts of a request that take at most this long (a per-model moving average of the
    /// measured time) run inline on the async worker that read the request instead of on the
    /// blocking pool: for process-execution models, decoding and validation before the round
    /// trip and encoding after it, the round trip itself awaited in the reactor; with
    /// [`ServerConfig::inline_in_process`], in-process models' whole requests. Default 50 µs;
    /// `Duration::ZERO`: every request on the blocking pool, round trip included. See
    /// `docs/serving.md`.
    pub inline_execution: Duration,
    /// Whether in-process models' requests (execution included) may run inline (default
    /// false): an in-process execution cannot be stopped, so a request far longer than the
    /// model's average then holds an async worker and answers after its deadline rather than
    /// at it. For trusted models whose run time does not depend on their inputs.
    pub inline_in_process: bool,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8000)),
            grpc_addr: None,
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
            model_control: ModelControl::None,
            inline_execution: Duration::from_micros(50),
            inline_in_process: false,
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
    /// `--models` and `--model-name` do not fit together (a single-model folder without a
    /// name, or a name for a repository).
    #[error(transparent)]
    Layout(#[from] repo::LayoutError),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}
