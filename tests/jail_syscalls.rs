//! Inside a jailed compile worker, sockets, execve and fork are fatal: seccomp kills the
//! worker with SIGSYS, the parent gets `Error::SandboxViolation`, the audit log records it,
//! and the next compile runs in a fresh worker.
#![cfg(feature = "test-hooks")]

mod common;

use xlaguard::compile::{FailureCause, TestRequest};
use xlaguard::{Engine, Error};

#[test]
fn socket_execve_and_fork_kill_the_worker() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut c = common::config();
    c.compile.audit_log(&log);
    let e = Engine::new(&c).unwrap();
    let mut pids = Vec::new();
    for req in [
        TestRequest::Socket,
        TestRequest::Exec("/bin/true".into()),
        TestRequest::Fork,
    ] {
        match e.test_request(&req) {
            Err(Error::SandboxViolation(f)) => {
                assert_eq!(f.cause, FailureCause::SeccompKill, "{req:?}");
                assert_eq!(
                    f.exit,
                    Some(xlaguard::compile::ExitInfo::Signal(libc::SIGSYS))
                );
                assert!(f.to_string().contains("seccomp"), "{f}");
                pids.push(f.pid);
            }
            other => panic!("{req:?}: expected a sandbox violation, got {other:?}"),
        }
    }
    pids.dedup();
    assert_eq!(pids.len(), 3, "each request ran in its own worker");
    // The engine still compiles.
    common::digits_still_work(&e);
    let s = e.compile_stats();
    assert_eq!(s.sandbox_violations, 3);
    assert_eq!(s.succeeded, 1);
    let lines = common::audit_lines(&log);
    let violations: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "sandbox_violation")
        .collect();
    assert_eq!(violations.len(), 3, "{lines:#?}");
    for (v, pid) in violations.iter().zip(&pids) {
        assert_eq!(v["worker_pid"], *pid);
        assert_eq!(v["exit"], "signal SIGSYS (31)");
        assert!(v["time"].as_str().unwrap().ends_with('Z'));
    }
}

#[test]
fn the_parent_keeps_its_network() {
    // The jail is the worker's alone: the parent can still open sockets.
    let e = Engine::new(&common::config()).unwrap();
    assert!(e.sandbox_report().network.contains("new network namespace"));
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    assert!(l.local_addr().unwrap().port() > 0);
}
