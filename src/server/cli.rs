//! The `xlaguard serve` command: arguments, logging, runtime, signals.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::EngineConfig;

use super::config::{ModelControl, ServerConfig, ServerError};
use super::repo::{self, ModelLimits, ModelSpec};
use super::Server;

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Arguments of `xlaguard serve`.
#[derive(Clone, Debug, clap::Args)]
pub struct ServeArgs {
    /// Model repository: one folder per model (artifact, optional config.toml and policy.toml);
    /// or one model's folder, holding its artifact directly (KServe's `/mnt/models`), served
    /// under --model-name. Without it, the embedded digits classifier is served as `digits`.
    #[arg(long, value_name = "DIR")]
    pub models: Option<PathBuf>,
    /// The name of the one model served when --models DIR holds an artifact directly
    /// (required there; refused for a repository, whose models are named after their
    /// folders); without --models, the embedded model's name (default `digits`).
    #[arg(long, value_name = "NAME", value_parser = parse_model_name)]
    pub model_name: Option<String>,
    /// Address to listen on (port 0: any free port; the actual one is printed).
    #[arg(long, default_value = "127.0.0.1:8000")]
    pub addr: SocketAddr,
    /// Address of the gRPC frontend (KServe v2 / Triton gRPC; port 0: any free port, printed
    /// on a second stdout line `serving grpc on ADDR`).
    #[arg(long, default_value = "127.0.0.1:8001")]
    pub grpc_addr: SocketAddr,
    /// Serve HTTP only.
    #[arg(long)]
    pub no_grpc: bool,
    /// Largest request body accepted (and largest gRPC message), in bytes (64 MiB; 1 to 4 GiB).
    #[arg(long, default_value_t = 64 << 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1u64 << 32))]
    pub max_body_bytes: usize,
    /// Deepest JSON nesting accepted in a request (1 to 1024).
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub max_json_depth: usize,
    /// Inference requests in progress at once, all models together; more get 503 (1 to
    /// 1,000,000).
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_concurrent_requests: usize,
    /// Bytes of request bodies held in memory at once, all connections together, counted as
    /// they arrive; more get 503 (1 GiB; 1 MiB to 1 TiB).
    #[arg(long, default_value_t = 1 << 30, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range((1u64 << 20)..=(1u64 << 40)))]
    pub max_body_memory_bytes: usize,
    /// Open connections at once; more are answered 503 and closed at accept (1 to 1,000,000).
    #[arg(long, default_value_t = 1024, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections: usize,
    /// Open connections at once from one client address; more are answered 503 and closed
    /// (1 to 1,000,000).
    #[arg(long, default_value_t = 256, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_connections_per_client: usize,
    /// Executions at once per model (default: the CPUs available; 1 to 1024).
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub workers: Option<usize>,
    /// Requests queued per model beyond the executing ones; more get 429 (0 to 1,000,000).
    #[arg(long, default_value_t = 64, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=1_000_000))]
    pub max_queue: usize,
    /// Request deadline in milliseconds, from arrival; past it, 503 (1 ms to 1 day).
    #[arg(long, default_value_t = 30_000, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=86_400_000))]
    pub timeout_ms: u64,
    /// Time to receive a request's headers, in milliseconds; slower clients are disconnected (1 ms to 1 day).
    #[arg(long, default_value_t = 10_000, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=86_400_000))]
    pub header_timeout_ms: u64,
    /// Time to receive a request's body, in milliseconds; slower clients get 408 (1 ms to 1 day).
    #[arg(long, default_value_t = 30_000, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=86_400_000))]
    pub body_timeout_ms: u64,
    /// On SIGTERM/SIGINT, how long in-flight requests may take to finish, in milliseconds (1 ms to 1 day).
    #[arg(long, default_value_t = 30_000, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(1..=86_400_000))]
    pub drain_timeout_ms: u64,
    /// Readiness needs every model loaded (true) or only loading finished (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub strict_readiness: bool,
    /// Model control: `none` (every model loads at start; load and unload requests are
    /// refused) or `explicit` (every model loads at start, and `POST
    /// /v2/repository/models/{m}/load` and `/unload`, or their gRPC RPCs, reload and unload
    /// models by name).
    #[arg(long, value_enum, default_value_t = ModelControl::None)]
    pub model_control: ModelControl,
    /// Request parts that take at most this many microseconds (a per-model moving average)
    /// run inline on the async worker that read the request, with no hand-off to the
    /// blocking pool; process-execution models wait for their worker in the reactor; 0:
    /// every request on the blocking pool (0 to 10,000).
    #[arg(long, default_value_t = 50, value_parser = clap::builder::RangedU64ValueParser::<u64>::new().range(0..=10_000))]
    pub inline_execution_us: u64,
    /// In-process models' short requests run inline too, execution included (their runs
    /// cannot be stopped: a request far longer than the model's average holds an async
    /// worker and answers after its deadline).
    #[arg(long)]
    pub inline_in_process: bool,
    /// Log format (the level comes from RUST_LOG, default info).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl ServeArgs {
    /// The server configuration these arguments describe.
    pub fn config(&self, engine: EngineConfig) -> ServerConfig {
        let defaults = ModelLimits::default();
        ServerConfig {
            addr: self.addr,
            grpc_addr: (!self.no_grpc).then_some(self.grpc_addr),
            max_body_bytes: self.max_body_bytes,
            max_json_depth: self.max_json_depth,
            max_concurrent_requests: self.max_concurrent_requests,
            max_body_memory_bytes: self.max_body_memory_bytes,
            max_connections: self.max_connections,
            max_connections_per_client: self.max_connections_per_client,
            header_read_timeout: Duration::from_millis(self.header_timeout_ms),
            body_read_timeout: Duration::from_millis(self.body_timeout_ms),
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
            limits: ModelLimits {
                workers: self.workers.unwrap_or(defaults.workers).max(1),
                max_queue: self.max_queue,
                timeout: Duration::from_millis(self.timeout_ms),
            },
            strict_readiness: self.strict_readiness,
            engine,
            model_control: self.model_control,
            inline_execution: Duration::from_micros(self.inline_execution_us),
            inline_in_process: self.inline_in_process,
        }
    }
}

fn parse_model_name(s: &str) -> Result<String, String> {
    if repo::valid_model_name(s) {
        Ok(s.to_string())
    } else {
        Err(
            "a model name is letters, digits, '_', '-', '.' (1 to 128 bytes, not starting \
             with '.')"
                .into(),
        )
    }
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // A subscriber already set (an embedding program's) is kept.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("SIGINT received");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Runs `xlaguard serve`: sets up logging, reads the repository (or serves `default_model` as
/// `digits`), binds, prints `serving on http://ADDR` on stdout, and serves until SIGTERM or
/// SIGINT, then drains in-flight requests and returns.
///
/// # Errors
/// [`ServerError`] when the repository cannot be read or the address bound.
pub fn serve_command(
    engine: EngineConfig,
    args: &ServeArgs,
    default_model: &'static [u8],
) -> Result<(), ServerError> {
    init_logging(args.log_format);
    let config = args.config(engine);
    let models = match &args.models {
        Some(dir) => {
            let m = repo::read_models(dir, args.model_name.as_deref())?;
            if m.is_empty() {
                tracing::warn!(dir = %dir.display(), "the model repository has no model folders");
            }
            m
        }
        None => vec![ModelSpec::from_bytes(
            args.model_name.as_deref().unwrap_or("digits"),
            Arc::<[u8]>::from(default_model),
        )],
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("xlaguard-http")
        .build()
        .map_err(ServerError::Runtime)?;
    let result = runtime.block_on(async move {
        let server = Server::bind(config, models, None).await?;
        let addr = server.local_addr();
        tracing::info!(%addr, "serving");
        // The one line on stdout, for scripts and tests that asked for port 0.
        println!("serving on http://{addr}");
        if let Some(g) = server.grpc_addr() {
            tracing::info!(addr = %g, "serving gRPC");
            println!("serving grpc on {g}");
        }
        server.run(shutdown_signal()).await
    });
    // Work abandoned at its deadline may still be running on the blocking pool: do not wait
    // for it long.
    runtime.shutdown_timeout(Duration::from_secs(2));
    result
}
