//! Execution isolation (issue 12): models run in jailed execution workers. Outputs equal the
//! in-process outputs (and JAX's) bit for bit on the `hlo/` fixtures; a never-ending while loop,
//! a client-controlled trip count, a worker killed from outside mid-request and a worker that
//! writes garbage each cost one typed error, and the same model and the others keep serving,
//! with no process, thread or descriptor left behind; a 16 GiB execution is refused at load.
//! Hostile modules come from hlo/export_hostile.py.

mod common;

use std::time::{Duration, Instant};

use common::{assert_bit_equal, config, engine, fixture, numbered};
use xlaguard::compile::FailureCause;
use xlaguard::{Engine, Error, Execution, Model, Params, Tensor, TensorRef};

fn load(e: &Engine, name: &str) -> Model {
    e.load_file(&fixture(name).join("model.jaxexport"))
        .unwrap_or_else(|err| panic!("{name}: {err}"))
}

fn process(mut m: Model) -> Model {
    m.set_execution(Execution::Process, 1, None).unwrap();
    m.start_execution().unwrap();
    m
}

fn views(t: &[Tensor]) -> Vec<TensorRef<'_>> {
    t.iter().map(Tensor::view).collect()
}

fn scalar_i32(v: i32) -> Tensor {
    Tensor::from_slice(&[], &[v]).unwrap()
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
fn outputs_equal_in_process_and_jax_bit_for_bit_on_every_fixture() {
    let mut compared = Vec::new();
    let hlo = common::root().join("hlo");
    let dirs = std::fs::read_dir(&hlo)
        .unwrap()
        .chain(std::fs::read_dir(hlo.join("linalg")).unwrap());
    for entry in dirs {
        let dir = entry.unwrap().path();
        let name = dir
            .strip_prefix(&hlo)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if !dir.join("model.jaxexport").is_file()
            || !dir.join("out0.npy").is_file()
            || dir.join("params.safetensors").is_file()
            || name.starts_with("hostile_")
        {
            continue;
        }
        // Fixtures that do not load in-process on this plugin (other platforms, lying
        // metadata, shape-polymorphic ones without the refiner) are other tests' business.
        let Ok(local) = engine().load_file(&dir.join("model.jaxexport")) else {
            continue;
        };
        if local.is_polymorphic() {
            continue;
        }
        let inputs = numbered(&dir, "in");
        let Ok(want) = local.run(&views(&inputs)) else {
            continue;
        };
        let mut remote = engine().load_file(&dir.join("model.jaxexport")).unwrap();
        remote.set_execution(Execution::Process, 1, None).unwrap();
        remote.start_execution().unwrap();
        let got = remote
            .run(&views(&inputs))
            .unwrap_or_else(|e| panic!("{name} (process): {e}"));
        assert_bit_equal(&format!("{name}: process vs in-process"), &got, &want);
        // tests/linalg.rs compares the LAPACK fixtures with JAX (some within a few ulps: a
        // different LAPACK build); here they must equal the in-process run exactly.
        if !name.starts_with("linalg/") {
            assert_bit_equal(
                &format!("{name}: process vs JAX"),
                &got,
                &numbered(&dir, "out"),
            );
        }
        compared.push(name);
    }
    compared.sort();
    // LAPACK custom calls (jnp.linalg) execute in the worker too, with the library loaded
    // inside its jail.
    for must in [
        "qr",
        "linalg/cholesky_f32",
        "linalg/eigh_c128",
        "linalg/lstsq_f64",
        "tiny",
        "digits",
        "conv",
        "attention",
        "fori",
        "multi_platform",
        "dtypes",
    ] {
        assert!(
            compared.iter().any(|c| c == must),
            "{must} not compared: {compared:?}"
        );
    }
    assert!(compared.len() >= 50, "only {compared:?}");
    eprintln!("{} fixtures compared: {compared:?}", compared.len());
}

#[test]
fn bound_and_baked_params_run_in_the_worker_bit_for_bit() {
    let dir = fixture("params_flax");
    let params = Params::read(&dir.join("params.safetensors")).unwrap();
    let x = numbered(&dir, "in");
    let (bound, _) = load(engine(), "params_flax").with_params(&params).unwrap();
    let bound = process(bound);
    let got = bound.run(&views(&x)).unwrap();
    assert_bit_equal("params_flax bound", &got, &numbered(&dir, "out"));
    let a = xlaguard::artifact::load_file(&dir.join("model.jaxexport")).unwrap();
    let (baked, _) = engine().load_baked(a, &params, None).unwrap();
    let baked = process(baked);
    let got = baked.run(&views(&x)).unwrap();
    assert_bit_equal("params_flax baked", &got, &numbered(&dir, "baked_out"));
}

#[test]
fn a_client_controlled_trip_count_is_stopped_and_short_ones_give_jax_outputs() {
    let dir = fixture("hostile_fori");
    let m = process(load(engine(), "hostile_fori"));
    let inputs = numbered(&dir, "in");
    let want = numbered(&dir, "out");
    assert_bit_equal("n = 10", &m.run(&views(&inputs)).unwrap(), &want);
    let long = [scalar_i32(i32::MAX), inputs[1].clone()];
    let err = m
        .run_until(&views(&long), Instant::now() + Duration::from_millis(300))
        .unwrap_err();
    assert!(matches!(err, Error::ExecutionTimeout(_)), "{err}");
    // The same model afterwards, on its replacement worker.
    assert_bit_equal("n = 10 again", &m.run(&views(&inputs)).unwrap(), &want);
}

#[test]
fn a_worker_killed_from_outside_mid_request_is_a_typed_error_and_is_replaced() {
    let dir = fixture("hostile_fori");
    let m = process(load(engine(), "hostile_fori"));
    let inputs = numbered(&dir, "in");
    let pid = worker_pid(&m);
    let killer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        let s = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    });
    let long = [scalar_i32(i32::MAX), inputs[1].clone()];
    let err = m
        .run_until(&views(&long), Instant::now() + Duration::from_secs(30))
        .unwrap_err();
    killer.join().unwrap();
    let Error::ExecutionFailed(f) = &err else {
        panic!("expected a failed execution, got {err}");
    };
    assert_eq!(f.cause, FailureCause::Signal(9), "{err}");
    assert_eq!(f.pid, pid);
    assert!(err.to_string().contains("SIGKILL"), "{err}");
    assert_bit_equal(
        "after",
        &m.run(&views(&inputs)).unwrap(),
        &numbered(&dir, "out"),
    );
    assert_eq!(m.execution_report().unwrap().1.died, 1);
}

/// Needs the test-only garbage replies (`--features test-hooks`, as scripts/test.sh runs).
#[cfg(feature = "test-hooks")]
#[test]
fn a_worker_that_writes_garbage_is_killed_and_the_model_serves_again() {
    let dir = fixture("tiny");
    let mut m = load(engine(), "tiny");
    m.set_execution(Execution::Process, 1, None).unwrap();
    m.test_garbage_replies(Some(5));
    let inputs = numbered(&dir, "in");
    let err = m.run(&views(&inputs)).unwrap_err();
    let Error::ExecutionFailed(f) = &err else {
        panic!("expected a failed execution, got {err}");
    };
    assert!(matches!(f.cause, FailureCause::Protocol(_)), "{err}");
    // Outputs travel in the shared-memory arena: a reply that carries bytes breaks the
    // protocol (the decoder's bound for `Executed` is zero bytes).
    assert!(
        err.to_string()
            .contains("Executed message of 5 bytes exceeds the limit of 0"),
        "{err}"
    );
    assert_eq!(m.execution_report().unwrap().1.protocol_violations, 1);
    // A worker that fills its output slot with garbage and answers as it should: the parent
    // reads the slot as plain bytes (copied out, never referenced), returns exactly them for
    // this request, and the model serves again.
    m.test_garbage_replies(Some(0));
    let outs = m.run(&views(&inputs)).unwrap();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].bytes().len(), 512);
    assert!(outs[0].bytes().iter().all(|&b| b == 0xa5));
    m.test_garbage_replies(None);
    assert_bit_equal(
        "after",
        &m.run(&views(&inputs)).unwrap(),
        &numbered(&dir, "out"),
    );
}

/// After its model is loaded a worker runs under the request loop's allowlist: starting a
/// thread (allowed while the client was created) now kills it with SIGSYS, which the parent
/// reports as a seccomp kill; the replacement serves. Needs `--features test-hooks`.
#[cfg(feature = "test-hooks")]
#[test]
fn the_request_loop_filter_kills_a_worker_that_starts_a_thread() {
    let dir = fixture("tiny");
    let mut m = load(engine(), "tiny");
    m.set_execution(Execution::Process, 1, None).unwrap();
    m.test_spawn_thread(true);
    let inputs = numbered(&dir, "in");
    let err = m.run(&views(&inputs)).unwrap_err();
    let Error::ExecutionFailed(f) = &err else {
        panic!("expected a failed execution, got {err}");
    };
    assert!(matches!(f.cause, FailureCause::SeccompKill), "{err}");
    m.test_spawn_thread(false);
    assert_bit_equal(
        "after",
        &m.run(&views(&inputs)).unwrap(),
        &numbered(&dir, "out"),
    );
}

/// A worker's stderr is non-blocking once its model is loaded: the plugin's logging can fill
/// the pipe without stalling a request (the server waits on stdout only).
#[test]
fn a_loaded_workers_stderr_never_blocks() {
    let m = process(load(engine(), "tiny"));
    let pid = worker_pid(&m);
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/2")).unwrap();
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & libc::O_NONBLOCK as u32, 0, "fd 2 flags {flags:o}");
}

/// Eight threads on one worker: requests that find it busy are rung behind the running one
/// (its other arena slot) or queued, and each caller gets exactly its own outputs, bit for bit
/// the in-process ones for its own inputs.
#[test]
fn concurrent_callers_on_one_worker_each_get_their_own_outputs() {
    let dir = fixture("tiny");
    let local = load(engine(), "tiny");
    let remote = std::sync::Arc::new(process(load(engine(), "tiny")));
    let base = numbered(&dir, "in");
    let inputs_for = |i: usize| -> Vec<Tensor> {
        base.iter()
            .map(|t| {
                let v: Vec<f32> = t
                    .bytes()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) * (i as f32 + 1.5))
                    .collect();
                Tensor::from_slice(t.shape(), &v).unwrap()
            })
            .collect()
    };
    let want: Vec<Vec<Tensor>> = (0..8)
        .map(|i| local.run(&views(&inputs_for(i))).unwrap())
        .collect();
    std::thread::scope(|sc| {
        for (i, want) in want.iter().enumerate() {
            let (remote, inputs) = (remote.clone(), inputs_for(i));
            sc.spawn(move || {
                for round in 0..150 {
                    let got = remote.run(&views(&inputs)).unwrap();
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(want) {
                        assert_eq!(g.bytes(), w.bytes(), "caller {i}, round {round}");
                    }
                }
            });
        }
    });
    let report = remote.execution_report().unwrap().1;
    assert_eq!(report.executions, 8 * 150);
    assert!(report.rung_behind > 0, "{report:?}");
    assert_eq!(report.workers_started, 1, "{report:?}");
}

/// A request rung behind one that never ends is not lost with it: when the first is killed
/// at its deadline, the second goes back to the head of the queue and runs on the
/// replacement worker, giving JAX's output.
#[test]
fn a_request_rung_behind_a_hung_one_runs_on_the_next_worker() {
    let dir = fixture("hostile_fori");
    let m = std::sync::Arc::new(process(load(engine(), "hostile_fori")));
    let inputs = numbered(&dir, "in");
    let (short, x) = (inputs[0].clone(), inputs[1].clone());
    let hang = scalar_i32(i32::MAX);
    std::thread::scope(|sc| {
        let m1 = m.clone();
        let x1 = x.clone();
        let first = sc.spawn(move || {
            m1.run_until(
                &[hang.view(), x1.view()],
                Instant::now() + Duration::from_millis(1500),
            )
        });
        // Once the first is running, the second rings behind it.
        let end = Instant::now() + Duration::from_secs(20);
        while m.execution_report().unwrap().1.pids.len() != 1 && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(300));
        let second = m
            .run_until(
                &[short.view(), x.view()],
                Instant::now() + Duration::from_secs(60),
            )
            .unwrap();
        assert_bit_equal("behind the hung one", &second, &numbered(&dir, "out"));
        let err = first.join().unwrap().unwrap_err();
        assert!(matches!(err, Error::ExecutionTimeout(_)), "{err}");
    });
    let report = m.execution_report().unwrap().1;
    assert_eq!(report.killed_deadline, 1, "{report:?}");
    assert_eq!(report.rung_behind, 1, "{report:?}");
}

#[test]
fn a_16_gib_execution_is_refused_at_load_with_the_numbers() {
    let err = engine()
        .load_file(&fixture("hostile_alloc").join("model.jaxexport"))
        .unwrap_err();
    let Error::MemoryBudget { need, budget, .. } = &err else {
        panic!("expected a memory refusal, got {err}");
    };
    assert!(*need >= 16 << 30, "{err}");
    assert!(need > budget, "{err}");
    let msg = err.to_string();
    assert!(msg.contains("outputs 17179869184"), "{msg}");
    assert!(msg.contains("half the host's"), "{msg}");
    // A configured budget is named as such, and small models pass under it.
    // tiny needs 1536 bytes: two f32[8,16] arguments and one f32[8,16] output.
    let mut c = config();
    c.execution.max_execution_bytes = Some(1024);
    let e = Engine::new(&c).unwrap();
    let err = e
        .load_file(&fixture("tiny").join("model.jaxexport"))
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::MemoryBudget {
                need: 1536,
                budget: 1024,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("max_execution_bytes"), "{err}");
    let tiny = load(engine(), "tiny");
    tiny.check_memory_budget(1536, "exactly").unwrap();
    assert!(tiny.check_memory_budget(1535, "one short").is_err());
}

/// `infeed` and `outfeed` wait forever on the CPU plugin (nothing feeds or drains them): in
/// process execution each is killed at its deadline with a typed error, its worker replaced,
/// and a model beside it, and the same model's next call, are served as before.
#[test]
fn infeed_and_outfeed_hang_until_their_deadline_kills_the_worker() {
    let e = engine();
    let tiny = process(load(e, "tiny"));
    let tiny_in = numbered(&fixture("tiny"), "in");
    for name in ["hostile_infeed", "hostile_outfeed"] {
        let dir = fixture(name);
        let m = process(
            e.load_file(&dir.join("model.mlir"))
                .unwrap_or_else(|err| panic!("{name}: {err}")),
        );
        let inputs = numbered(&dir, "in");
        for round in 0..2 {
            let t = Instant::now();
            let err = m
                .run_until(&views(&inputs), Instant::now() + Duration::from_millis(300))
                .unwrap_err();
            let waited = t.elapsed();
            let Error::ExecutionTimeout(f) = &err else {
                panic!("{name} round {round}: expected a deadline, got {err}");
            };
            assert!(matches!(f.cause, FailureCause::Timeout(_)), "{err}");
            assert!(waited < Duration::from_secs(20), "{name}: {waited:?}");
            assert_eq!(
                m.execution_report().unwrap().1.killed_deadline,
                round + 1,
                "{name}"
            );
            assert_bit_equal(
                &format!("tiny beside {name}"),
                &tiny.run(&views(&tiny_in)).unwrap(),
                &numbered(&fixture("tiny"), "out"),
            );
        }
    }
}

/// Memory pressure inside a worker, with admission turned off (a budget above the 16 GiB each
/// model needs). `hostile_temp` really allocates a 16 GiB temporary, beyond the worker's
/// address-space limit (capped at a share of the host's memory): the worker fails, the request
/// gets a typed error, this process's memory does not move, and other models keep serving.
/// `hostile_alloc`'s 16 GiB output does not even fit the worker's output arena: its worker
/// fails to start, with the arena named.
#[test]
fn an_allocation_beyond_the_workers_limit_fails_in_the_worker_not_here() {
    let mut c = config();
    c.execution.max_execution_bytes = Some(64 << 30);
    let e = Engine::new(&c).unwrap();
    let rss = || {
        let s = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 1024
    };
    let before = rss();

    let m = process(load(&e, "hostile_temp"));
    let limit = m.execution_report().unwrap().1.address_space_limit.unwrap();
    assert!(
        limit < 16 << 30,
        "the worker's limit {limit} would allow the sort"
    );
    let inputs = numbered(&fixture("hostile_temp"), "in");
    let err = m
        .run_until(&views(&inputs), Instant::now() + Duration::from_secs(60))
        .unwrap_err();
    match &err {
        // XLA's allocation fails and the worker says so ...
        Error::Plugin(p) => assert!(
            p.to_string().to_lowercase().contains("alloc")
                || p.to_string().contains("RESOURCE_EXHAUSTED"),
            "{err}"
        ),
        // ... or it aborts, and the parent sees why.
        Error::ExecutionFailed(f) => assert!(
            matches!(
                f.cause,
                FailureCause::MemoryLimit(_) | FailureCause::Signal(_)
            ),
            "{err}"
        ),
        other => panic!("expected a typed allocation failure, got {other}"),
    }
    eprintln!("hostile_temp: {err}");

    let mut big = load(&e, "hostile_alloc");
    big.set_execution(Execution::Process, 1, None).unwrap();
    let err = big.start_execution().unwrap_err();
    let Error::ExecutionFailed(f) = &err else {
        panic!("expected a worker that cannot start, got {err}");
    };
    assert!(
        matches!(&f.cause, FailureCause::Setup(s) if s.contains("output arena")),
        "{err}"
    );

    assert!(
        rss() < before + (256 << 20),
        "this process grew from {before} to {} bytes",
        rss()
    );
    let tiny = process(load(&e, "tiny"));
    assert_bit_equal(
        "tiny after",
        &tiny.run(&views(&numbered(&fixture("tiny"), "in"))).unwrap(),
        &numbered(&fixture("tiny"), "out"),
    );
}

#[test]
fn an_engine_configured_for_process_execution_runs_every_model_there() {
    let mut c = config();
    c.execution.execution = Execution::Process;
    c.execution.deadline = Some(Duration::from_millis(400));
    let e = Engine::new(&c).unwrap();
    let m = load(&e, "hostile_while");
    assert_eq!(m.execution(), Execution::Process);
    // The engine's default deadline applies to a plain run.
    let err = m
        .run(&views(&numbered(&fixture("hostile_while"), "in")))
        .unwrap_err();
    assert!(matches!(err, Error::ExecutionTimeout(_)), "{err}");
    let (jail, _) = m.execution_report().unwrap();
    assert!(jail.unenforced.is_empty(), "{:?}", jail.unenforced);
    assert!(jail.seccomp.contains("kill process"), "{}", jail.seccomp);
    // The request loop runs under the narrower, measured allowlist.
    assert!(
        jail.seccomp.contains("after load: request-loop allowlist"),
        "{}",
        jail.seccomp
    );
}
