//! How a compile worker failed (a leaf type: the library's error wraps it).

use std::time::Duration;

use super::protocol::ProtocolError;
use super::sandbox::{self, ChildUsage, ExitInfo};

/// Why a worker produced no executable.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FailureCause {
    /// The worker could not be started.
    Spawn(String),
    /// The worker started but could not jail itself or load the plugin.
    Setup(String),
    /// Killed by a signal it raised or caused (abort, segfault...).
    Signal(i32),
    /// Exited without replying.
    Exit(i32),
    /// Killed by seccomp (`SIGSYS`): it made a forbidden system call.
    SeccompKill,
    /// Killed at the wall-clock deadline.
    Timeout(Duration),
    /// Hit the CPU-time limit (seconds).
    CpuLimit(u64),
    /// Ran out of address space under the memory limit (bytes).
    MemoryLimit(u64),
    /// Broke the protocol (and was killed).
    Protocol(ProtocolError),
    /// The pipes failed.
    Io(String),
}

impl std::fmt::Display for FailureCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureCause::Spawn(e) => write!(f, "could not start: {e}"),
            FailureCause::Setup(e) => write!(f, "could not set up: {e}"),
            FailureCause::Signal(s) => write!(f, "killed by {}", sandbox::signal_name(*s)),
            FailureCause::Exit(c) => write!(f, "exited with code {c} without replying"),
            FailureCause::SeccompKill => {
                write!(f, "killed by seccomp (SIGSYS) for a forbidden system call")
            }
            FailureCause::Timeout(d) => {
                write!(f, "killed at the {:.1} s deadline", d.as_secs_f64())
            }
            FailureCause::CpuLimit(s) => write!(f, "hit the CPU limit of {s} s"),
            FailureCause::MemoryLimit(b) => {
                write!(f, "ran out of memory under the {} MiB limit", b >> 20)
            }
            FailureCause::Protocol(e) => write!(f, "broke the protocol: {e}"),
            FailureCause::Io(e) => write!(f, "pipe error: {e}"),
        }
    }
}

/// What a worker was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorkerRole {
    /// A compile worker: one module in, one serialized executable out.
    Compile,
    /// An execution worker: one model's executable, many requests.
    Execution,
}

impl WorkerRole {
    /// `compile` or `execution`.
    pub fn name(self) -> &'static str {
        match self {
            WorkerRole::Compile => "compile",
            WorkerRole::Execution => "execution",
        }
    }
}

/// A worker that failed: what happened, and what it used.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerFailure {
    /// The worker's pid (0 if it never started).
    pub pid: u32,
    /// What the worker was for.
    pub role: WorkerRole,
    /// What happened.
    pub cause: FailureCause,
    /// How the process ended, when known.
    pub exit: Option<ExitInfo>,
    /// CPU time and peak RSS (from `wait4`).
    pub usage: ChildUsage,
    /// Wall time from start to death.
    pub wall: Duration,
    /// The end of its stderr (XLA's `Check failed: ...` lands here).
    pub stderr_tail: String,
}

impl std::fmt::Display for WorkerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} worker {} {}", self.role.name(), self.pid, self.cause)?;
        if let Some(e) = self.exit {
            write!(f, " ({e})")?;
        }
        let last: Vec<&str> = self
            .stderr_tail
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if let Some(l) = last
            .iter()
            .rev()
            .find(|l| l.contains("Check failed") || l.contains("error") || l.contains("Error"))
        {
            write!(f, "; stderr: {}", l.trim())?;
        } else if let Some(l) = last.last() {
            write!(f, "; stderr: {}", l.trim())?;
        }
        Ok(())
    }
}

impl std::error::Error for WorkerFailure {}
