//! Workers that abort, segfault, hang past the deadline or run out of memory: each gives a
//! typed error, the worker is replaced, a compile running at the same time still succeeds, and
//! the audit log records it.
#![cfg(feature = "test-hooks")]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use xlaguard::compile::{ExitInfo, FailureCause, TestRequest, WorkerFailure};
use xlaguard::{Engine, EngineConfig, Error};

const TINY: &str = "func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {\n  %0 = stablehlo.add %arg0, %arg0 : tensor<4xf32>\n  return %0 : tensor<4xf32>\n}\n";

fn engine_with_audit(log: &Path, tweak: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut c = common::config();
    c.compile.audit_log(log);
    tweak(&mut c);
    Engine::new(&c).unwrap()
}

/// Runs `bad` while another thread compiles digits on the same engine; then checks that the
/// engine still compiles in a new worker. Returns the failure.
fn fails_alone(e: &Engine, bad: impl FnOnce() -> Error) -> WorkerFailure {
    std::thread::scope(|s| {
        let good = s.spawn(|| common::digits_still_work(e));
        let err = bad();
        good.join().expect("the concurrent compile succeeded");
        let f = match err {
            Error::WorkerCrashed(f) | Error::Timeout(f) | Error::SandboxViolation(f) => *f,
            other => panic!("expected a worker failure, got {other}"),
        };
        // Replaced: the next compile runs in another process and succeeds.
        let m = e
            .load_bytes(TINY.as_bytes())
            .expect("a compile after the failure");
        let next = m.info().compile.worker_pid.unwrap();
        assert_ne!(next, f.pid);
        f
    })
}

fn failed_record(log: &Path, pid: u32) -> Value {
    let lines = common::audit_lines(log);
    lines
        .into_iter()
        .find(|l| l["event"] == "compile_failed" && l["worker_pid"] == pid)
        .unwrap_or_else(|| panic!("no compile_failed record for worker {pid}"))
}

#[test]
fn abort_in_the_compiler_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let e = engine_with_audit(&log, |_| {});
    // Empty compile options: the real plugin aborts with `Check failed: replica_count > 0`.
    let f = fails_alone(&e, || {
        e.test_request(&TestRequest::CompileRawOptions {
            format: "mlir".into(),
            options: Vec::new(),
            program: TINY.as_bytes().to_vec(),
        })
        .unwrap_err()
    });
    assert_eq!(f.cause, FailureCause::Signal(libc::SIGABRT), "{f}");
    assert_eq!(f.exit, Some(ExitInfo::Signal(libc::SIGABRT)));
    assert!(
        f.stderr_tail.contains("Check failed: replica_count > 0"),
        "{}",
        f.stderr_tail
    );
    assert!(f.to_string().contains("Check failed"), "{f}");
    let r = failed_record(&log, f.pid);
    assert_eq!(r["outcome"], "crashed");
    assert_eq!(r["exit"], "signal SIGABRT (6)");
    assert!(r["peak_rss_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
    assert_eq!(e.compile_stats().crashed, 1);
}

#[test]
fn segfault_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let e = engine_with_audit(&log, |_| {});
    let f = fails_alone(&e, || e.test_request(&TestRequest::Segfault).unwrap_err());
    assert_eq!(f.cause, FailureCause::Signal(libc::SIGSEGV), "{f}");
    assert_eq!(failed_record(&log, f.pid)["exit"], "signal SIGSEGV (11)");
}

#[test]
fn a_compile_past_the_deadline_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let deadline = Duration::from_millis(1500);
    let e = engine_with_audit(&log, |c| {
        c.compile.deadline(deadline);
    });
    // 3,000 chained sines: several seconds of compile on any machine.
    let slow = common::slow_module(3000);
    let t = Instant::now();
    let f = fails_alone(&e, || e.load_bytes(slow.as_bytes()).unwrap_err());
    assert!(t.elapsed() < deadline * 4, "{:?}", t.elapsed());
    assert_eq!(f.cause, FailureCause::Timeout(deadline), "{f}");
    assert_eq!(f.exit, Some(ExitInfo::Signal(libc::SIGKILL)));
    assert!(f.wall >= deadline, "{:?}", f.wall);
    let r = failed_record(&log, f.pid);
    assert_eq!(r["outcome"], "timeout");
    assert_eq!(r["limits"]["deadline_ms"], 1500);
    assert_eq!(r["module"]["size"], slow.len());
    assert!(r["cpu_user_ms"].as_f64().unwrap() > 100.0, "{r}");
    // A worker that hangs outright meets the same fate.
    let g = e.test_request(&TestRequest::Hang).unwrap_err();
    assert!(matches!(g, Error::Timeout(_)), "{g}");
    assert_eq!(e.compile_stats().timeouts, 2);
}

#[test]
fn a_compile_over_the_memory_limit_fails() {
    // The limit: what an idle worker (plugin loaded, client created) peaks at, plus 64 MiB:
    // enough for digits (the concurrent compile needs < 24 MiB more), far too little for 4,000
    // chained sines (3,000 need > 96 MiB more). Workers run with MALLOC_ARENA_MAX=2, so address
    // space tracks memory use rather than the number of threads.
    let probe = Engine::new(&common::config()).unwrap();
    let pid = probe.spare_worker_pids(Duration::from_secs(30))[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmPeak:"))
        .unwrap()
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    drop(probe);
    let limit = (peak_kb << 10) + (64 << 20);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let e = engine_with_audit(&log, |c| {
        c.compile.limits.address_space_bytes = Some(limit);
    });
    let slow = common::slow_module(4000);
    let f = fails_alone(&e, || e.load_bytes(slow.as_bytes()).unwrap_err());
    assert_eq!(f.cause, FailureCause::MemoryLimit(limit), "{f}");
    // glibc or libstdc++ said so on the way down.
    assert!(
        f.stderr_tail.contains("bad_alloc") || f.stderr_tail.contains("cannot allocate memory"),
        "{}",
        f.stderr_tail
    );
    assert!(f.to_string().contains("ran out of memory"), "{f}");
    assert_eq!(failed_record(&log, f.pid)["outcome"], "crashed");
}

#[test]
fn a_refused_module_is_audited_with_the_worker_that_refused_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let e = engine_with_audit(&log, |_| {});
    // The plugin refuses it (the add's type does not match its operands): a typed refusal from
    // a worker that stays alive, not a crash.
    let bad = TINY.replace(": tensor<4xf32>\n  return", ": tensor<5xf32>\n  return");
    let err = e.load_bytes(bad.as_bytes()).unwrap_err();
    assert!(matches!(err, Error::CompileRejected(_)), "{err}");
    let lines = common::audit_lines(&log);
    let r = lines
        .iter()
        .find(|l| l["event"] == "compile_failed")
        .expect("a compile_failed record");
    assert_eq!(r["outcome"], "rejected", "{r}");
    // The worker's pid and what it used are kept, as for a worker that crashed.
    assert!(r["worker_pid"].as_u64().is_some_and(|p| p > 1), "{r}");
    assert!(
        r["peak_rss_bytes"].as_u64().is_some_and(|b| b > 1 << 20),
        "{r}"
    );
    assert!(r["cpu_user_ms"].as_f64().is_some(), "{r}");
}
