//! Counters, gauges and histograms, rendered in the Prometheus text format (version 0.0.4).
//!
//! Hot-path counters are atomics; maps keyed by labels are only touched on errors and at
//! scrape time. Label values are model names (checked by
//! [`valid_model_name`](super::repo::valid_model_name)), input names from a model's signature,
//! route templates, and fixed rule names, so cardinality is bounded by the repository.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|&b| s <= b) {
            if let Some(b) = self.buckets.get(i) {
                b.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Renders the histogram's lines (`_bucket`, `_sum`, `_count`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (b, le) in self.buckets.iter().zip(LATENCY_BUCKETS) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// HTTP status codes counted per model; anything else is counted as `other`.
const CODES: [u16; 12] = [200, 400, 404, 405, 408, 413, 415, 422, 429, 500, 503, 504];

/// Inference counters of one model.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    codes: [AtomicU64; CODES.len() + 1],
    /// Latency of inference requests that succeeded, from arrival to response.
    pub latency: Histogram,
    /// Time spent running (decode, validate, execute, encode), successful requests.
    pub run_time: Histogram,
    rejections: Mutex<BTreeMap<(String, &'static str), u64>>,
    compile_seconds: Mutex<Option<f64>>,
}

impl ModelMetrics {
    /// Counts a finished inference request by status code.
    pub fn count(&self, code: u16) {
        let i = CODES.iter().position(|&c| c == code).unwrap_or(CODES.len());
        if let Some(c) = self.codes.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a validation rejection of `input` (empty when it names no model input) by rule.
    pub fn reject(&self, input: &str, rule: &'static str) {
        if let Ok(mut m) = self.rejections.lock() {
            *m.entry((input.to_string(), rule)).or_default() += 1;
        }
    }

    /// Records the model's compile time.
    pub fn compiled(&self, d: Duration) {
        if let Ok(mut c) = self.compile_seconds.lock() {
            *c = Some(d.as_secs_f64());
        }
    }

    /// Requests answered with `code` so far.
    pub fn requests(&self, code: u16) -> u64 {
        let i = CODES.iter().position(|&c| c == code).unwrap_or(CODES.len());
        self.codes.get(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Process-wide counters.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    http: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    grpc: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
    compiles: Mutex<BTreeMap<&'static str, u64>>,
    compile_time: Histogram,
}

impl ServerMetrics {
    /// Counts one HTTP response by route template and status.
    pub fn http(&self, route: &str, code: u16) {
        if let Ok(mut m) = self.http.lock() {
            let codes = match m.get_mut(route) {
                Some(c) => c,
                None => m.entry(route.to_string()).or_default(),
            };
            *codes.entry(code).or_default() += 1;
        }
    }

    /// Counts one gRPC call by method (`Service/Method`, from a fixed list) and status code
    /// name (`OK`, `INVALID_ARGUMENT`, ...).
    pub fn grpc(&self, method: &'static str, code: &'static str) {
        if let Ok(mut m) = self.grpc.lock() {
            *m.entry((method, code)).or_default() += 1;
        }
    }

    /// gRPC calls counted for `method` with `code` so far.
    pub fn grpc_calls(&self, method: &str, code: &str) -> u64 {
        self.grpc.lock().map_or(0, |m| {
            m.iter()
                .filter(|((a, b), _)| *a == method && *b == code)
                .map(|(_, n)| *n)
                .sum()
        })
    }

    /// Counts a request refused by admission control (`queue_full`, `overloaded`,
    /// `deadline`, `body_too_large`, `body_timeout`, `not_ready`).
    pub fn rejected(&self, reason: &'static str) {
        if let Ok(mut m) = self.rejected.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// Counts a compile and its duration.
    pub fn compile(&self, ok: bool, d: Duration) {
        if let Ok(mut m) = self.compiles.lock() {
            *m.entry(if ok { "ok" } else { "error" }).or_default() += 1;
        }
        self.compile_time.observe(d);
    }
}

/// What a scrape needs to know about one model besides its counters.
#[derive(Debug)]
pub struct ModelGauges<'a> {
    /// Name.
    pub name: &'a str,
    /// Version.
    pub version: &'a str,
    /// Loaded and serving.
    pub ready: bool,
    /// Admitted requests waiting for a worker.
    pub queued: usize,
    /// Requests executing.
    pub running: usize,
    /// Counters.
    pub metrics: &'a ModelMetrics,
    /// Batching counters, when the model batches.
    pub batch: Option<&'a BatchMetrics>,
    /// Where the model executes (`None` until loaded), and its execution workers' counters.
    pub execution: Option<(crate::exec::Execution, Option<crate::exec::ExecSnapshot>)>,
    /// Requests' synchronous parts run inline and on the blocking pool, and the estimate of
    /// how long one takes (`None` until loaded).
    pub sync: Option<(u64, u64, Option<Duration>)>,
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The resident set size of this process in bytes (Linux; 0 elsewhere).
pub fn resident_bytes() -> u64 {
    status_kb("VmRSS:")
}

/// The peak resident set size of this process in bytes (Linux; 0 elsewhere). Compiles at start
/// usually set it.
pub fn peak_resident_bytes() -> u64 {
    status_kb("VmHWM:")
}

fn status_kb(key: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Renders everything in the Prometheus text format.
pub fn render(server: &ServerMetrics, models: &[ModelGauges<'_>], uptime: Duration) -> String {
    let mut out = String::with_capacity(8192);
    let m = |g: &ModelGauges<'_>| {
        format!(
            "model=\"{}\",version=\"{}\"",
            escape(g.name),
            escape(g.version)
        )
    };

    help(
        &mut out,
        "xlaguard_model_ready",
        "gauge",
        "1 when the model is loaded and serving.",
    );
    for g in models {
        let _ = writeln!(
            out,
            "xlaguard_model_ready{{{}}} {}",
            m(g),
            u8::from(g.ready)
        );
    }
    help(
        &mut out,
        "xlaguard_inference_requests_total",
        "counter",
        "Inference requests by model and HTTP status.",
    );
    for g in models {
        for (i, code) in CODES
            .iter()
            .map(u16::to_string)
            .chain(["other".to_string()])
            .enumerate()
        {
            let n = g
                .metrics
                .codes
                .get(i)
                .map_or(0, |c| c.load(Ordering::Relaxed));
            if n > 0 {
                let _ = writeln!(
                    out,
                    "xlaguard_inference_requests_total{{{},code=\"{code}\"}} {n}",
                    m(g)
                );
            }
        }
    }
    help(
        &mut out,
        "xlaguard_inference_duration_seconds",
        "histogram",
        "Latency of successful inference requests, arrival to response.",
    );
    for g in models {
        g.metrics
            .latency
            .render(&mut out, "xlaguard_inference_duration_seconds", &m(g));
    }
    help(
        &mut out,
        "xlaguard_inference_run_seconds",
        "histogram",
        "Time spent decoding, validating, executing and encoding, successful requests.",
    );
    for g in models {
        g.metrics
            .run_time
            .render(&mut out, "xlaguard_inference_run_seconds", &m(g));
    }
    help(
        &mut out,
        "xlaguard_validation_rejections_total",
        "counter",
        "Requests refused by input validation, by model, input and rule.",
    );
    for g in models {
        if let Ok(r) = g.metrics.rejections.lock() {
            for ((input, rule), n) in r.iter() {
                let _ = writeln!(
                    out,
                    "xlaguard_validation_rejections_total{{{},input=\"{}\",rule=\"{rule}\"}} {n}",
                    m(g),
                    escape(input)
                );
            }
        }
    }
    help(
        &mut out,
        "xlaguard_queue_depth",
        "gauge",
        "Admitted requests waiting for a worker.",
    );
    for g in models {
        let _ = writeln!(out, "xlaguard_queue_depth{{{}}} {}", m(g), g.queued);
    }
    help(
        &mut out,
        "xlaguard_inflight",
        "gauge",
        "Requests executing.",
    );
    for g in models {
        let _ = writeln!(out, "xlaguard_inflight{{{}}} {}", m(g), g.running);
    }
    render_batching(&mut out, models, &m);
    help(
        &mut out,
        "xlaguard_model_execution",
        "gauge",
        "1 for where the model executes: mode=\"process\" (jailed execution workers) or \"in-process\".",
    );
    for g in models {
        if let Some((mode, _)) = &g.execution {
            let _ = writeln!(
                out,
                "xlaguard_model_execution{{{},mode=\"{}\"}} 1",
                m(g),
                mode.name()
            );
        }
    }
    help(
        &mut out,
        "xlaguard_model_sync_requests_total",
        "counter",
        "Requests whose decoding, execution and encoding ran where=\"inline\" (on the async worker) or \"pool\" (the blocking pool).",
    );
    for g in models {
        if let Some((inline, pool, _)) = g.sync {
            for (at, n) in [("inline", inline), ("pool", pool)] {
                let _ = writeln!(
                    out,
                    "xlaguard_model_sync_requests_total{{{},where=\"{at}\"}} {n}",
                    m(g)
                );
            }
        }
    }
    help(
        &mut out,
        "xlaguard_model_sync_estimate_seconds",
        "gauge",
        "The moving estimate of how long one request's decoding, execution and encoding take (inline below --inline-execution-us).",
    );
    for g in models {
        if let Some((_, _, Some(e))) = g.sync {
            let _ = writeln!(
                out,
                "xlaguard_model_sync_estimate_seconds{{{}}} {}",
                m(g),
                e.as_secs_f64()
            );
        }
    }
    help(
        &mut out,
        "xlaguard_execution_worker_events_total",
        "counter",
        "Execution workers started, killed at a deadline, dead during a request, killed for a protocol violation.",
    );
    for g in models {
        if let Some((_, Some(s))) = &g.execution {
            for (event, n) in [
                ("started", s.workers_started),
                ("killed_deadline", s.killed_deadline),
                ("died", s.died),
                ("protocol_violation", s.protocol_violations),
            ] {
                let _ = writeln!(
                    out,
                    "xlaguard_execution_worker_events_total{{{},event=\"{event}\"}} {n}",
                    m(g)
                );
            }
        }
    }
    help(
        &mut out,
        "xlaguard_execution_seconds_total",
        "counter",
        "Time of completed executions in execution workers (round trip).",
    );
    for g in models {
        if let Some((_, Some(s))) = &g.execution {
            let _ = writeln!(
                out,
                "xlaguard_execution_seconds_total{{{}}} {}",
                m(g),
                s.execution_nanos as f64 / 1e9
            );
        }
    }
    help(
        &mut out,
        "xlaguard_model_compile_seconds",
        "gauge",
        "Wall time of the model's compile.",
    );
    for g in models {
        if let Ok(Some(s)) = g.metrics.compile_seconds.lock().map(|c| *c) {
            let _ = writeln!(out, "xlaguard_model_compile_seconds{{{}}} {s}", m(g));
        }
    }
    help(
        &mut out,
        "xlaguard_compiles_total",
        "counter",
        "Model compiles by result.",
    );
    if let Ok(c) = server.compiles.lock() {
        for (result, n) in c.iter() {
            let _ = writeln!(out, "xlaguard_compiles_total{{result=\"{result}\"}} {n}");
        }
    }
    help(
        &mut out,
        "xlaguard_compile_duration_seconds",
        "histogram",
        "Wall time of model compiles.",
    );
    server.compile_time.render(
        &mut out,
        "xlaguard_compile_duration_seconds",
        "kind=\"model\"",
    );
    help(
        &mut out,
        "xlaguard_admission_rejections_total",
        "counter",
        "Requests refused by admission control, by reason.",
    );
    if let Ok(r) = server.rejected.lock() {
        for (reason, n) in r.iter() {
            let _ = writeln!(
                out,
                "xlaguard_admission_rejections_total{{reason=\"{reason}\"}} {n}"
            );
        }
    }
    help(
        &mut out,
        "xlaguard_http_requests_total",
        "counter",
        "HTTP responses by route template and status.",
    );
    if let Ok(h) = server.http.lock() {
        for (route, codes) in h.iter() {
            for (code, n) in codes {
                let _ = writeln!(
                    out,
                    "xlaguard_http_requests_total{{route=\"{}\",code=\"{code}\"}} {n}",
                    escape(route)
                );
            }
        }
    }
    help(
        &mut out,
        "xlaguard_grpc_requests_total",
        "counter",
        "gRPC calls by method and status code.",
    );
    if let Ok(g) = server.grpc.lock() {
        for ((method, code), n) in g.iter() {
            let _ = writeln!(
                out,
                "xlaguard_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} {n}"
            );
        }
    }
    help(
        &mut out,
        "xlaguard_process_resident_memory_bytes",
        "gauge",
        "Resident set size of the server process.",
    );
    let _ = writeln!(
        out,
        "xlaguard_process_resident_memory_bytes {}",
        resident_bytes()
    );
    help(
        &mut out,
        "xlaguard_process_peak_resident_memory_bytes",
        "gauge",
        "Peak resident set size of the server process (model compiles at start usually set it).",
    );
    let _ = writeln!(
        out,
        "xlaguard_process_peak_resident_memory_bytes {}",
        peak_resident_bytes()
    );
    help(
        &mut out,
        "xlaguard_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    let _ = writeln!(out, "xlaguard_uptime_seconds {}", uptime.as_secs_f64());
    out
}

fn render_batching(
    out: &mut String,
    models: &[ModelGauges<'_>],
    m: &dyn Fn(&ModelGauges<'_>) -> String,
) {
    let batched: Vec<(&ModelGauges<'_>, &BatchMetrics)> =
        models.iter().filter_map(|g| Some((g, g.batch?))).collect();
    if batched.is_empty() {
        return;
    }
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    help(
        out,
        "xlaguard_batch_size",
        "histogram",
        "Executions of batched models by the batch size executed (padding included).",
    );
    for (g, b) in &batched {
        let mut cumulative = 0u64;
        let mut sum = 0u64;
        for (size, n) in &b.sizes {
            cumulative += load(n);
            sum += size * load(n);
            let _ = writeln!(
                out,
                "xlaguard_batch_size_bucket{{{},le=\"{size}\"}} {cumulative}",
                m(g)
            );
        }
        let _ = writeln!(
            out,
            "xlaguard_batch_size_bucket{{{},le=\"+Inf\"}} {cumulative}",
            m(g)
        );
        let _ = writeln!(out, "xlaguard_batch_size_sum{{{}}} {sum}", m(g));
        let _ = writeln!(out, "xlaguard_batch_size_count{{{}}} {cumulative}", m(g));
    }
    help(
        out,
        "xlaguard_batch_requests",
        "histogram",
        "Requests merged into one execution.",
    );
    for (g, b) in &batched {
        let mut cumulative = 0u64;
        for (i, n) in b.requests.iter().enumerate() {
            cumulative += load(n);
            if i < 8 {
                let _ = writeln!(
                    out,
                    "xlaguard_batch_requests_bucket{{{},le=\"{}\"}} {cumulative}",
                    m(g),
                    1u32 << i
                );
            }
        }
        let _ = writeln!(
            out,
            "xlaguard_batch_requests_bucket{{{},le=\"+Inf\"}} {cumulative}",
            m(g)
        );
        let _ = writeln!(
            out,
            "xlaguard_batch_requests_count{{{}}} {cumulative}",
            m(g)
        );
    }
    help(
        out,
        "xlaguard_batch_rows_total",
        "counter",
        "Rows executed by batched models: request rows (kind=\"request\") and padding.",
    );
    for (g, b) in &batched {
        let _ = writeln!(
            out,
            "xlaguard_batch_rows_total{{{},kind=\"request\"}} {}",
            m(g),
            load(&b.rows_real)
        );
        let _ = writeln!(
            out,
            "xlaguard_batch_rows_total{{{},kind=\"padding\"}} {}",
            m(g),
            load(&b.rows_padded)
        );
    }
    help(
        out,
        "xlaguard_batch_padding_ratio",
        "gauge",
        "Padding waste: rows padded / rows run, since start.",
    );
    for (g, b) in &batched {
        let (real, pad) = (load(&b.rows_real), load(&b.rows_padded));
        let ratio = if real + pad == 0 {
            0.0
        } else {
            pad as f64 / (real + pad) as f64
        };
        let _ = writeln!(out, "xlaguard_batch_padding_ratio{{{}}} {ratio}", m(g));
    }
    help(
        out,
        "xlaguard_batch_queue_delay_seconds",
        "histogram",
        "Time a request waited in its model's batch queue before its batch started.",
    );
    for (g, b) in &batched {
        b.queue_delay
            .render(out, "xlaguard_batch_queue_delay_seconds", &m(g));
    }
    help(
        out,
        "xlaguard_batch_dropped_total",
        "counter",
        "Requests dropped from a batch queue before batching: client gone or deadline passed.",
    );
    for (g, b) in &batched {
        let _ = writeln!(
            out,
            "xlaguard_batch_dropped_total{{{},reason=\"cancelled\"}} {}",
            m(g),
            load(&b.cancelled)
        );
        let _ = writeln!(
            out,
            "xlaguard_batch_dropped_total{{{},reason=\"deadline\"}} {}",
            m(g),
            load(&b.expired)
        );
    }
}

/// Batching counters of one model.
#[derive(Debug, Default)]
pub struct BatchMetrics {
    /// Executions by the size executed (index into the plan's sizes).
    pub sizes: BTreeMap<u64, AtomicU64>,
    /// Real (request) rows executed.
    pub rows_real: AtomicU64,
    /// Padding rows executed.
    pub rows_padded: AtomicU64,
    /// Requests per execution, as a histogram of counts (le 1, 2, 4, ... 128, +Inf).
    pub requests: [AtomicU64; 9],
    /// Time from joining the queue to the batch's start.
    pub queue_delay: Histogram,
    /// Requests dropped before batching: client gone.
    pub cancelled: AtomicU64,
    /// Requests dropped before batching: deadline passed.
    pub expired: AtomicU64,
}

impl BatchMetrics {
    /// Counters for a batching plan's sizes.
    pub fn new(sizes: &[u64]) -> BatchMetrics {
        BatchMetrics {
            sizes: sizes.iter().map(|&s| (s, AtomicU64::new(0))).collect(),
            ..BatchMetrics::default()
        }
    }

    /// One execution of `size` rows, `rows` of them real, for `requests` requests.
    pub(crate) fn executed(&self, size: u64, rows: u64, requests: usize) {
        if let Some(c) = self.sizes.get(&size) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.rows_real.fetch_add(rows, Ordering::Relaxed);
        self.rows_padded
            .fetch_add(size.saturating_sub(rows), Ordering::Relaxed);
        let i = (0..8).find(|&i| requests <= 1 << i).unwrap_or(8);
        if let Some(c) = self.requests.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}
