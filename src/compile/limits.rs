//! What a compile may use, and which protections its worker applies (plain data, shared by
//! the compiler, the pool, the sandbox and the worker).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The default [`Limits::max_module_bytes`]: 2 GiB, the size limit of the artifact formats
/// (flatbuffer, protobuf) and of [`crate::artifact::load`].
pub const DEFAULT_MAX_MODULE_BYTES: usize = 1 << 31;

/// Resource limits of one compile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock deadline of a compile; the worker is killed when it passes.
    pub deadline: Duration,
    /// How long a worker may take to start (jail, plugin load, client).
    pub startup_timeout: Duration,
    /// `RLIMIT_AS` of a worker (`None`: unlimited); each compile gets this plus 8 × its
    /// module, never more than [`Limits::host_memory_percent`] of the host's memory.
    pub address_space_bytes: Option<u64>,
    /// The share of the host's physical memory, in percent (1 to 100, default 50), a compile
    /// worker's address space may reach: a memory bomb in a module is stopped before the host.
    pub host_memory_percent: u8,
    /// `RLIMIT_CPU` of a worker, seconds (`None`: unlimited).
    pub cpu_seconds: Option<u64>,
    /// `RLIMIT_NOFILE` of a worker.
    pub open_files: u64,
    /// Largest module accepted, bytes (checked before any worker sees it).
    pub max_module_bytes: usize,
    /// Largest serialized executable accepted from a worker, bytes.
    pub max_executable_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: Duration::from_secs(120),
            startup_timeout: Duration::from_secs(60),
            address_space_bytes: Some(16 << 30),
            host_memory_percent: 50,
            cpu_seconds: Some(600),
            open_files: 64,
            max_module_bytes: DEFAULT_MAX_MODULE_BYTES,
            max_executable_bytes: 1 << 30,
        }
    }
}

/// Which protections the worker applies. Each one the kernel cannot enforce is reported in
/// [`JailReport::unenforced`](super::JailReport::unenforced); with `strict`, the worker refuses to start instead.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxOptions {
    /// Landlock filesystem (read-only allowlist), network and signal restrictions.
    pub landlock: bool,
    /// The seccomp-bpf allowlist.
    pub seccomp: bool,
    /// A new network namespace.
    pub network_namespace: bool,
    /// CPU cores the worker (and XLA's thread pool) may use; `None` keeps the inherited set.
    pub cores: Option<Vec<usize>>,
    /// Extra read-only paths for Landlock (e.g. device files and libraries of a GPU plugin).
    pub extra_read_paths: Vec<PathBuf>,
    /// Refuse to compile unless every protection is in force.
    pub strict: bool,
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            landlock: true,
            seccomp: true,
            network_namespace: true,
            cores: None,
            extra_read_paths: Vec::new(),
            strict: false,
        }
    }
}
