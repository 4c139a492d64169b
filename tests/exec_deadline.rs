//! A never-ending while loop (hlo/export_hostile.py) in an execution worker is killed at its
//! deadline, twice; the model keeps serving (on a replacement worker) and so does another model
//! beside it; no process, thread or descriptor is left behind. Alone in its binary: it counts
//! the process's threads and descriptors. Needs `--features test-hooks` (to wait for the
//! engine's spare compile worker before counting descriptors), as scripts/test.sh runs.
#![cfg(feature = "test-hooks")]

mod common;

use std::time::{Duration, Instant};

use common::{assert_bit_equal, engine, fixture, numbered};
use xlaguard::compile::FailureCause;
use xlaguard::{Error, Execution, Model, Tensor, TensorRef};

fn load(name: &str) -> Model {
    let mut m = engine()
        .load_file(&fixture(name).join("model.jaxexport"))
        .unwrap_or_else(|err| panic!("{name}: {err}"));
    m.set_execution(Execution::Process, 1, None).unwrap();
    m.start_execution().unwrap();
    m
}

fn views(t: &[Tensor]) -> Vec<TensorRef<'_>> {
    t.iter().map(Tensor::view).collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// The process's thread count once it has stopped changing (a thread that starts a spare
/// worker ends a moment after the spare is registered): the same for 300 ms, within 10 s.
fn steady_threads() -> usize {
    let end = Instant::now() + Duration::from_secs(10);
    let mut last = count("/proc/self/task");
    let mut since = Instant::now();
    while since.elapsed() < Duration::from_millis(300) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
        let now = count("/proc/self/task");
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
    last
}

/// The one live worker of `m` (waiting for a replacement to be up).
fn worker_pid(m: &Model) -> u32 {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let pids = m.execution_report().unwrap().1.pids;
        if pids.len() == 1 {
            return pids[0];
        }
        assert!(Instant::now() < end, "no single live worker: {pids:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_never_ending_loop_is_killed_at_its_deadline_and_the_model_keeps_serving() {
    // tiny's worker comes first: it also starts the engine's warm spare execution worker.
    let tiny = load("tiny");
    let settled = || {
        let wait = Duration::from_secs(30);
        assert!(!engine().spare_worker_pids(wait).is_empty());
        assert!(!engine().exec_spare_pids(wait).is_empty());
    };
    settled();
    let fds = count("/proc/self/fd");
    let hang = load("hostile_while");
    let tiny_in = numbered(&fixture("tiny"), "in");
    let tiny_out = numbered(&fixture("tiny"), "out");
    let inputs = numbered(&fixture("hostile_while"), "in");
    settled();
    let threads = steady_threads();
    for round in 0..2 {
        settled();
        let first = worker_pid(&hang);
        let t = Instant::now();
        let err = hang
            .run_until(&views(&inputs), Instant::now() + Duration::from_millis(500))
            .unwrap_err();
        let took = t.elapsed();
        let Error::ExecutionTimeout(f) = &err else {
            panic!("round {round}: expected an execution timeout, got {err}");
        };
        assert!(matches!(f.cause, FailureCause::Timeout(_)), "{err}");
        assert!(err.to_string().contains("execution worker"), "{err}");
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(5),
            "round {round}: {took:?}"
        );
        assert!(!alive(first), "round {round}: worker {first} still runs");
        // Other models never notice.
        assert_bit_equal(
            "tiny beside",
            &tiny.run(&views(&tiny_in)).unwrap(),
            &tiny_out,
        );
        // The replacement is a new process, made from the warm spare: it only loads the model
        // (a fresh worker takes about 2 s to start its client here).
        let t = Instant::now();
        let next = worker_pid(&hang);
        assert_ne!(next, first);
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "round {round}: replacement ready after {:?}",
            t.elapsed()
        );
    }
    let (_, snap) = hang.execution_report().unwrap();
    assert_eq!(snap.killed_deadline, 2);
    assert_eq!(snap.workers_started, 3);
    settled();
    assert_eq!(steady_threads(), threads, "threads left behind");
    let pids = snap.pids.clone();
    drop(hang);
    for p in pids {
        assert!(!alive(p), "worker {p} outlived its model");
    }
    settled();
    assert_eq!(count("/proc/self/fd"), fds, "descriptors left behind");
    drop(tiny);
}
