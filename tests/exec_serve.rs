//! The server with `execution = "process"` models (issue 12): a request past its deadline gets
//! 503 at the deadline and its worker is killed, so the model's single worker permit is free
//! again within the replacement's start-up, not after the abandoned run (20 s here) ends; a
//! model beside it never notices; outputs over HTTP are JAX's.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use xlaguard::server::repo::{LimitOverrides, ModelSpec};
use xlaguard::Execution;

use serving::*;

fn spin(n: i32) -> Value {
    json!({"inputs": [
        {"name": "n", "datatype": "INT32", "shape": [], "data": [n]},
        {"name": "x", "datatype": "FP32", "shape": [], "data": [0.5]}]})
}

#[test]
fn a_request_past_its_deadline_frees_its_worker_at_once_in_process_execution() {
    let mut m = ModelSpec::from_file("spin", test_fixture("spin").join("model.mlir"));
    m.limits = LimitOverrides {
        workers: Some(1),
        max_queue: Some(1),
        timeout: Some(Duration::from_millis(1000)),
        ..LimitOverrides::default()
    };
    m.execution = Some(Execution::Process);
    let mut tiny = ModelSpec::from_file("tiny", common::fixture("tiny").join("model.jaxexport"));
    tiny.execution = Some(Execution::Process);
    let s = InProcess::start(vec![m, tiny], |_| {});
    let addr = s.addr;
    let tiny_in = common::numbered(&common::fixture("tiny"), "in");
    let names = served_input_names(addr, "tiny");
    let want = common::numbered(&common::fixture("tiny"), "out");
    let check_tiny = || {
        let out = infer_json(addr, "tiny", &names, &tiny_in);
        let got = bytes_of_json(want[0].dtype(), &out["outputs"][0]["data"]);
        assert_eq!(got, want[0].bytes(), "tiny over HTTP");
    };
    check_tiny();
    assert_eq!(
        post_json(addr, "/v2/models/spin/infer", &spin(1)).status,
        200
    );
    // i32::MAX steps: about 19 s of spinning (9 ns per step, measured for tests/server.rs).
    let started = Instant::now();
    let r = post_json(addr, "/v2/models/spin/infer", &spin(i32::MAX));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    check_tiny();
    // The killed worker's replacement serves the same model well before the run would end.
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let r = post_json(addr, "/v2/models/spin/infer", &spin(1));
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < end, "the model never recovered");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    let t = get(addr, "/metrics").text();
    for line in [
        r#"xlaguard_model_execution{model="spin",version="1",mode="process"} 1"#,
        r#"xlaguard_model_execution{model="tiny",version="1",mode="process"} 1"#,
        r#"xlaguard_execution_worker_events_total{model="spin",version="1",event="killed_deadline"} 1"#,
        r#"xlaguard_execution_worker_events_total{model="spin",version="1",event="started"} 2"#,
        r#"xlaguard_execution_worker_events_total{model="tiny",version="1",event="died"} 0"#,
    ] {
        assert!(t.lines().any(|l| l == line), "missing {line} in\n{t}");
    }
}
