//! Admission control and size caps: a full queue is a typed `Busy` error, not a pile-up; an
//! over-large module never reaches a worker; thread isolation is bounded the same way.
#![cfg(feature = "test-hooks")]

mod common;

use std::time::{Duration, Instant};

use xlaguard::compile::{Isolation, TestRequest};
use xlaguard::{Engine, Error};

#[test]
fn a_full_queue_is_busy() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.jsonl");
    let mut c = common::config();
    c.compile.workers = 1;
    c.compile.queue = 1;
    c.compile.deadline(Duration::from_secs(3));
    c.compile.audit_log(&log);
    let e = Engine::new(&c).unwrap();
    std::thread::scope(|s| {
        // One running (hangs until its deadline) ...
        let running = s.spawn(|| e.test_request(&TestRequest::Hang));
        let t = Instant::now();
        while e.compile_stats().running < 1 {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        // ... one waiting ...
        let queued = s.spawn(|| common::digits_still_work(&e));
        while e.compile_stats().queued < 1 {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(5));
        }
        // ... and the next is refused at once.
        let t = Instant::now();
        let err = e
            .load_file(&common::fixture("tiny").join("model.jaxexport"))
            .unwrap_err();
        assert!(t.elapsed() < Duration::from_millis(500));
        assert!(
            matches!(
                err,
                Error::Busy {
                    running: 1,
                    queued: 1
                }
            ),
            "{err}"
        );
        assert!(matches!(running.join().unwrap(), Err(Error::Timeout(_))));
        queued.join().unwrap();
    });
    let s = e.compile_stats();
    assert_eq!((s.busy, s.running, s.queued), (1, 0, 0));
    assert_eq!(s.succeeded, 1);
    let lines = common::audit_lines(&log);
    let busy: Vec<_> = lines.iter().filter(|l| l["event"] == "busy").collect();
    assert_eq!(busy.len(), 1, "{lines:#?}");
    assert!(busy[0]["error"].as_str().unwrap().contains("queue full"));
}

#[test]
fn an_oversized_module_never_reaches_a_worker() {
    let mut c = common::config();
    c.compile.limits.max_module_bytes = 1000;
    let e = Engine::new(&c).unwrap();
    let spawned = e.compile_stats().workers_spawned;
    let big = common::slow_module(100);
    let err = e.load_bytes(big.as_bytes()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooLarge {
                what: "module",
                limit: 1000,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(e.compile_stats().too_large, 1);
    assert_eq!(e.compile_stats().workers_spawned, spawned);
}

#[test]
fn thread_isolation_is_bounded_too() {
    let mut c = common::config();
    c.compile.isolation(Isolation::Thread);
    c.compile.workers = 1;
    c.compile.queue = 0;
    let e = Engine::new(&c).unwrap();
    assert_eq!(e.isolation(), Isolation::Thread);
    let slow = common::slow_module(1500);
    std::thread::scope(|s| {
        let running = s.spawn(|| e.load_bytes(slow.as_bytes()).map(|_| ()));
        let t = Instant::now();
        while e.compile_stats().running < 1 {
            assert!(t.elapsed() < Duration::from_secs(10));
            std::thread::sleep(Duration::from_millis(2));
        }
        let err = e.load_bytes(slow.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::Busy { .. }), "{err}");
        running.join().unwrap().unwrap();
    });
    assert_eq!(e.compile_stats().succeeded, 1);
}

#[test]
fn a_worker_binary_that_is_not_a_worker_is_a_typed_error() {
    // A test binary does not call worker_main_if_requested(): it prints test-harness output.
    let mut c = common::config();
    c.compile.worker_exe(std::env::current_exe().unwrap());
    let err = Engine::new(&c).unwrap_err();
    assert!(matches!(err, Error::WorkerCrashed(_)), "{err}");
    assert!(
        err.to_string().contains("worker_main_if_requested"),
        "{err}"
    );
    c.compile.worker_exe("/nonexistent/xlaguard");
    let err = Engine::new(&c).unwrap_err();
    assert!(err.to_string().contains("could not start"), "{err}");
}
