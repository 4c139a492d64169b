//! Counters and histograms of compilation, for the server's metrics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// A fixed-bucket histogram (Prometheus style: cumulative counts are derived on export).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// Upper bounds of the buckets (the last, implicit bucket is +Inf).
    pub bounds: Vec<f64>,
    /// Observations per bucket (not cumulative); one more entry than `bounds`.
    pub counts: Vec<u64>,
    /// Sum of all observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    fn new(bounds: &[f64]) -> Histogram {
        Histogram {
            bounds: bounds.to_vec(),
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    fn observe(&mut self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }
}

/// Live counters, shared by every compile of an engine.
#[derive(Debug)]
pub struct CompileStats {
    started: AtomicU64,
    succeeded: AtomicU64,
    rejected: AtomicU64,
    crashed: AtomicU64,
    timeouts: AtomicU64,
    sandbox_violations: AtomicU64,
    busy: AtomicU64,
    too_large: AtomicU64,
    workers_spawned: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_rejected: AtomicU64,
    cache_stores: AtomicU64,
    audit_errors: AtomicU64,
    running: AtomicU64,
    queued: AtomicU64,
    hist: Mutex<(Histogram, Histogram, Histogram)>,
}

/// A consistent-enough copy of [`CompileStats`] (each field read atomically).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsSnapshot {
    /// `process` or `thread`.
    pub isolation: &'static str,
    /// Compile requests past the cache and the size cap (including those then refused `busy`).
    pub started: u64,
    /// Compiles that produced an executable.
    pub succeeded: u64,
    /// Compiles the plugin rejected.
    pub rejected: u64,
    /// Workers that crashed, were killed, or broke the protocol (timeouts and violations
    /// excluded).
    pub crashed: u64,
    /// Compiles killed at the deadline or the CPU limit.
    pub timeouts: u64,
    /// Workers killed by seccomp.
    pub sandbox_violations: u64,
    /// Requests refused because the queue was full.
    pub busy: u64,
    /// Modules refused by the size cap.
    pub too_large: u64,
    /// Worker processes started.
    pub workers_spawned: u64,
    /// Cache hits.
    pub cache_hits: u64,
    /// Cache misses.
    pub cache_misses: u64,
    /// Cache entries refused (tampered, truncated, foreign).
    pub cache_rejected: u64,
    /// Cache entries written.
    pub cache_stores: u64,
    /// Audit records that could not be written.
    pub audit_errors: u64,
    /// Compiles running now.
    pub running: u64,
    /// Compiles waiting for a worker now.
    pub queued: u64,
    /// Wall time of finished compiles, seconds.
    pub wall_seconds: Histogram,
    /// CPU time (user + system) of worker processes, seconds.
    pub cpu_seconds: Histogram,
    /// Peak RSS of worker processes, bytes.
    pub peak_rss_bytes: Histogram,
}

const WALL: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
const RSS: &[f64] = &[
    64e6, 128e6, 256e6, 512e6, 1024e6, 2048e6, 4096e6, 8192e6, 16384e6,
];

/// Which counter to bump.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Counter {
    Started,
    Succeeded,
    Rejected,
    Crashed,
    Timeouts,
    SandboxViolations,
    Busy,
    TooLarge,
    WorkersSpawned,
    CacheHits,
    CacheMisses,
    CacheRejected,
    CacheStores,
    AuditErrors,
}

impl Default for CompileStats {
    fn default() -> Self {
        CompileStats {
            started: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            crashed: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            sandbox_violations: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            too_large: AtomicU64::new(0),
            workers_spawned: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_rejected: AtomicU64::new(0),
            cache_stores: AtomicU64::new(0),
            audit_errors: AtomicU64::new(0),
            running: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            hist: Mutex::new((
                Histogram::new(WALL),
                Histogram::new(WALL),
                Histogram::new(RSS),
            )),
        }
    }
}

impl CompileStats {
    fn counter(&self, c: Counter) -> &AtomicU64 {
        match c {
            Counter::Started => &self.started,
            Counter::Succeeded => &self.succeeded,
            Counter::Rejected => &self.rejected,
            Counter::Crashed => &self.crashed,
            Counter::Timeouts => &self.timeouts,
            Counter::SandboxViolations => &self.sandbox_violations,
            Counter::Busy => &self.busy,
            Counter::TooLarge => &self.too_large,
            Counter::WorkersSpawned => &self.workers_spawned,
            Counter::CacheHits => &self.cache_hits,
            Counter::CacheMisses => &self.cache_misses,
            Counter::CacheRejected => &self.cache_rejected,
            Counter::CacheStores => &self.cache_stores,
            Counter::AuditErrors => &self.audit_errors,
        }
    }

    pub(crate) fn bump(&self, c: Counter) {
        self.counter(c).fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn set_load(&self, running: usize, queued: usize) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.queued.store(queued as u64, Ordering::Relaxed);
    }

    pub(crate) fn observe(&self, wall_s: f64, cpu_s: Option<f64>, rss: Option<u64>) {
        let mut h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        h.0.observe(wall_s);
        if let Some(c) = cpu_s {
            h.1.observe(c);
        }
        if let Some(r) = rss {
            h.2.observe(r as f64);
        }
    }

    /// A copy of every counter and histogram.
    pub fn snapshot(&self, isolation: &'static str) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let h = self.hist.lock().unwrap_or_else(|p| p.into_inner());
        StatsSnapshot {
            isolation,
            started: g(&self.started),
            succeeded: g(&self.succeeded),
            rejected: g(&self.rejected),
            crashed: g(&self.crashed),
            timeouts: g(&self.timeouts),
            sandbox_violations: g(&self.sandbox_violations),
            busy: g(&self.busy),
            too_large: g(&self.too_large),
            workers_spawned: g(&self.workers_spawned),
            cache_hits: g(&self.cache_hits),
            cache_misses: g(&self.cache_misses),
            cache_rejected: g(&self.cache_rejected),
            cache_stores: g(&self.cache_stores),
            audit_errors: g(&self.audit_errors),
            running: g(&self.running),
            queued: g(&self.queued),
            wall_seconds: h.0.clone(),
            cpu_seconds: h.1.clone(),
            peak_rss_bytes: h.2.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets() {
        let mut h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.0, 1.5, 3.0] {
            h.observe(v);
        }
        assert_eq!(h.counts, [2, 1, 1]);
        assert_eq!(h.count, 4);
        assert!((h.sum - 6.0).abs() < 1e-12);
    }
}
