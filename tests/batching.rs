//! Dynamic batching (`[batching]` in a model's config.toml; `hlo/export_batching.py`): concurrent
//! requests merged into one execution each get JAX's rows bit for bit, from a polymorphic export
//! and from a bundle of static exports; mixed request sizes are split back; a bad request in a
//! forming batch fails alone; requests whose deadline passed or whose client went away are
//! dropped before batching; bound params stay bound; `inspect` shows a folder's batching; the
//! load-time gate refuses a model whose rows interact (batch-norm in training mode) and serves
//! it unbatched; the Triton model-configuration endpoint and the metrics show it all.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use serde_json::{json, Value};
use xlaguard::server::repo::scan_repository;
use xlaguard::{DType, Tensor};

use common::fixture;
use serving::*;

/// A model repository: (folder name, fixture whose `*.jaxexport` files it gets, config.toml).
fn repo(models: &[(&str, &str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, fix, config) in models {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for e in std::fs::read_dir(fixture(fix)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "jaxexport")
                || p.file_name().is_some_and(|n| n == "params.safetensors")
            {
                std::fs::copy(&p, d.join(p.file_name().unwrap())).unwrap();
            }
        }
        if !config.is_empty() {
            std::fs::write(d.join("config.toml"), config).unwrap();
        }
    }
    dir
}

fn serve(dir: &Path, workers: usize) -> InProcess {
    let specs = scan_repository(dir).unwrap();
    for s in &specs {
        assert!(s.problem.is_none(), "{}: {:?}", s.name, s.problem);
    }
    InProcess::start(specs, |c| c.limits.workers = workers)
}

/// Rows `from..from + n` of a `[rows, d]` float32 tensor.
fn rows(t: &Tensor, from: usize, n: usize) -> Tensor {
    let d = usize::try_from(t.shape()[1]).unwrap();
    let b = &t.bytes()[from * d * 4..(from + n) * d * 4];
    Tensor::new(DType::F32, vec![n as u64, d as u64], b.to_vec()).unwrap()
}

fn jax_rows(fix: &str) -> (Tensor, Vec<Tensor>) {
    let d = fixture(fix).join("rows");
    (
        Tensor::read_npy(&d.join("in0.npy")).unwrap(),
        common::numbered(&d, "out"),
    )
}

/// A metric's value: the line that starts with `prefix` (name and labels).
fn metric(addr: SocketAddr, prefix: &str) -> f64 {
    let text = get(addr, "/metrics").text();
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no metric {prefix} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Infers `x` on `model` (binary or JSON), returning the status and the outputs' bytes.
fn infer(addr: SocketAddr, model: &str, x: &Tensor, binary: bool) -> (u16, Vec<Vec<u8>>, String) {
    let path = format!("/v2/models/{model}/infer");
    if binary {
        let header = json!({
            "inputs": [{"name": "x", "datatype": "FP32", "shape": x.shape(),
                        "parameters": {"binary_data_size": x.bytes().len()}}],
            "parameters": {"binary_data_output": true},
        });
        let r = post_binary(addr, &path, &header, x.bytes());
        if r.status != 200 {
            return (r.status, vec![], r.error());
        }
        let v = r.json();
        let mut at = 0;
        let mut outs = Vec::new();
        for o in v["outputs"].as_array().unwrap() {
            let n = usize::try_from(o["parameters"]["binary_data_size"].as_u64().unwrap()).unwrap();
            outs.push(r.binary()[at..at + n].to_vec());
            at += n;
        }
        (200, outs, String::new())
    } else {
        let body = json!({"inputs": json_inputs(&["x"], std::slice::from_ref(x))});
        let r = post_json(addr, &path, &body);
        if r.status != 200 {
            return (r.status, vec![], r.error());
        }
        let v = r.json();
        let outs = v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| bytes_of_json(DType::F32, &o["data"]))
            .collect();
        (200, outs, String::new())
    }
}

/// The expected bytes of rows `from..from + n` of each JAX output.
fn want(outs: &[Tensor], from: usize, n: usize) -> Vec<Vec<u8>> {
    outs.iter()
        .map(|t| rows(t, from, n).bytes().to_vec())
        .collect()
}

/// Sends `requests` (first row, rows) at once from one thread each; returns the answers.
fn concurrently(
    addr: SocketAddr,
    model: &str,
    x: &Tensor,
    requests: &[(usize, usize)],
) -> Vec<(u16, Vec<Vec<u8>>, String)> {
    let barrier = Arc::new(Barrier::new(requests.len()));
    let threads: Vec<_> = requests
        .iter()
        .enumerate()
        .map(|(i, &(from, n))| {
            let (barrier, model, x) = (barrier.clone(), model.to_string(), rows(x, from, n));
            std::thread::spawn(move || {
                barrier.wait();
                infer(addr, &model, &x, i % 2 == 0)
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

const BATCHED: &str = "[batching]\nsizes = [1, 2, 4, 8]\nmax_queue_delay_us = 100000\n";

fn assert_merged(addr: SocketAddr, model: &str) {
    let l = format!("model=\"{model}\",version=\"1\"");
    let executions = metric(addr, &format!("xlaguard_batch_requests_count{{{l}}}"));
    let alone = metric(
        addr,
        &format!("xlaguard_batch_requests_bucket{{{l},le=\"1\"}}"),
    );
    assert!(
        executions > alone,
        "{model}: no execution merged two requests ({executions} executions, {alone} alone)"
    );
}

#[test]
fn concurrent_single_rows_get_jaxs_rows_bit_for_bit_polymorphic_and_bundle() {
    let dir = repo(&[
        ("mlp", "batch_mlp", BATCHED),
        ("bundle", "batch_mlp_bundle", BATCHED),
    ]);
    let server = serve(dir.path(), 1);
    let addr = server.addr;
    for (model, fix) in [("mlp", "batch_mlp"), ("bundle", "batch_mlp_bundle")] {
        let (x, outs) = jax_rows(fix);
        let reqs: Vec<(usize, usize)> = (0..16).map(|i| (i, 1)).collect();
        for (i, (status, got, err)) in concurrently(addr, model, &x, &reqs).into_iter().enumerate()
        {
            assert_eq!(status, 200, "{model} row {i}: {err}");
            assert!(got == want(&outs, i, 1), "{model} row {i}: not JAX's row");
        }
        assert_merged(addr, model);
        // 16 single rows into batches of at most 8: every row ran, and the padding is counted.
        let l = format!("model=\"{model}\",version=\"1\"");
        let real = metric(
            addr,
            &format!("xlaguard_batch_rows_total{{{l},kind=\"request\"}}"),
        );
        assert_eq!(real, 16.0, "{model}");
        let size_count = metric(addr, &format!("xlaguard_batch_size_count{{{l}}}"));
        let size_sum = metric(addr, &format!("xlaguard_batch_size_sum{{{l}}}"));
        let padded = metric(
            addr,
            &format!("xlaguard_batch_rows_total{{{l},kind=\"padding\"}}"),
        );
        assert_eq!(
            size_sum,
            real + padded,
            "{model}: sizes executed = rows + padding"
        );
        assert!(
            (2.0..16.0).contains(&size_count),
            "{model}: {size_count} executions"
        );
        assert!(
            metric(
                addr,
                &format!("xlaguard_batch_queue_delay_seconds_count{{{l}}}")
            ) == 16.0,
            "{model}: one queue delay per request"
        );
    }
}

#[test]
fn mixed_request_sizes_are_split_back_and_a_lone_request_runs_at_once() {
    let dir = repo(&[
        ("mlp", "batch_mlp", BATCHED),
        ("bundle", "batch_mlp_bundle", BATCHED),
        (
            "nodelay",
            "batch_mlp",
            "[batching]\nsizes = [1, 2, 4, 8]\npad = \"repeat_last\"\n",
        ),
    ]);
    let server = serve(dir.path(), 1);
    let addr = server.addr;
    for (model, fix) in [
        ("mlp", "batch_mlp"),
        ("bundle", "batch_mlp_bundle"),
        ("nodelay", "batch_mlp"),
    ] {
        let (x, outs) = jax_rows(fix);
        // 1 + 3 + 5 + 3 + 1 + 3 rows at distinct offsets: batches of up to 8 rows, padded.
        let reqs = [(0, 1), (1, 3), (4, 5), (9, 3), (12, 1), (13, 3)];
        for ((from, n), (status, got, err)) in reqs.iter().zip(concurrently(addr, model, &x, &reqs))
        {
            assert_eq!(status, 200, "{model} rows {from}+{n}: {err}");
            assert!(
                got == want(&outs, *from, *n),
                "{model} rows {from}+{n}: not JAX's rows"
            );
        }
    }
    assert_merged(addr, "mlp");
    // max_queue_delay_us = 0: a lone request does not wait for company.
    let (x, outs) = jax_rows("batch_mlp");
    let t = std::time::Instant::now();
    let (status, got, err) = infer(addr, "nodelay", &rows(&x, 2, 1), true);
    assert_eq!(status, 200, "{err}");
    assert!(got == want(&outs, 2, 1));
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "{:?}",
        t.elapsed()
    );
    // More rows than the largest size: a polymorphic model runs the request alone; a bundle
    // refuses it, naming its sizes.
    let (status, got, err) = infer(addr, "mlp", &rows(&x, 0, 12), false);
    assert_eq!(status, 200, "{err}");
    assert!(got == want(&outs, 0, 12));
    let (status, _, err) = infer(addr, "bundle", &rows(&x, 0, 12), true);
    assert_eq!(status, 400);
    assert!(
        err.contains("12 rows") && err.contains("1, 2, 4, 8"),
        "{err}"
    );
}

#[test]
fn a_bad_request_inside_a_forming_batch_fails_alone() {
    let dir = repo(&[
        ("mlp", "batch_mlp", BATCHED),
        ("bundle", "batch_mlp_bundle", BATCHED),
    ]);
    let server = serve(dir.path(), 1);
    let addr = server.addr;
    for (model, fix) in [("mlp", "batch_mlp"), ("bundle", "batch_mlp_bundle")] {
        let (x, outs) = jax_rows(fix);
        let mut nan = rows(&x, 5, 1).bytes().to_vec();
        nan[4 * 3..4 * 4].copy_from_slice(&f32::NAN.to_le_bytes());
        let nan = Tensor::new(DType::F32, vec![1, 16], nan).unwrap();
        let narrow = Tensor::new(DType::F32, vec![1, 15], vec![0; 60]).unwrap();
        let barrier = Arc::new(Barrier::new(8));
        let mut threads = Vec::new();
        for i in 0..8usize {
            let barrier = barrier.clone();
            let model = model.to_string();
            let t = match i {
                3 => nan.clone(),
                6 => narrow.clone(),
                _ => rows(&x, i, 1),
            };
            threads.push(std::thread::spawn(move || {
                barrier.wait();
                infer(addr, &model, &t, i % 2 == 1)
            }));
        }
        for (i, t) in threads.into_iter().enumerate() {
            let (status, got, err) = t.join().unwrap();
            match i {
                3 => {
                    assert_eq!(status, 400, "{model}: the NaN request");
                    assert!(
                        err.contains("input 'x'") && err.contains("NaN"),
                        "{model}: {err}"
                    );
                }
                6 => {
                    assert_eq!(status, 400, "{model}: the [1,15] request");
                    assert!(err.contains("float32[1,15]"), "{model}: {err}");
                }
                _ => {
                    assert_eq!(status, 200, "{model} row {i}: {err}");
                    assert!(got == want(&outs, i, 1), "{model} row {i}: not JAX's row");
                }
            }
        }
        assert_merged(addr, model);
        let l = format!("model=\"{model}\",version=\"1\"");
        assert_eq!(
            metric(
                addr,
                &format!("xlaguard_batch_rows_total{{{l},kind=\"request\"}}")
            ),
            6.0,
            "{model}: the bad requests never joined a batch"
        );
    }
}

#[test]
fn requests_past_their_deadline_are_dropped_before_batching() {
    // The first request of a batch waits up to 2 s for company; the deadline is 300 ms.
    let dir = repo(&[(
        "mlp",
        "batch_mlp",
        "[limits]\ntimeout_ms = 300\n[batching]\nsizes = [1, 2, 4, 8]\nmax_queue_delay_us = 2000000\n",
    )]);
    let server = serve(dir.path(), 1);
    let addr = server.addr;
    let (x, _) = jax_rows("batch_mlp");
    let (status, _, err) = infer(addr, "mlp", &rows(&x, 0, 1), true);
    assert_eq!(status, 503, "{err}");
    assert!(err.contains("deadline of 300 ms"), "{err}");
    // The batcher drops it when the wait ends, without running it.
    std::thread::sleep(Duration::from_millis(2200));
    let l = "model=\"mlp\",version=\"1\"";
    assert_eq!(
        metric(
            addr,
            &format!("xlaguard_batch_dropped_total{{{l},reason=\"deadline\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(addr, &format!("xlaguard_batch_size_count{{{l}}}")),
        0.0
    );
}

#[test]
fn the_gate_refuses_a_model_whose_rows_interact_and_serves_it_unbatched() {
    let dir = repo(&[
        ("bn", "batch_interact", BATCHED),
        ("bn_bundle", "batch_interact_bundle", ""),
        ("mlp", "batch_mlp", BATCHED),
        ("plain", "batch_mlp", ""),
    ]);
    let server = serve(dir.path(), 2);
    let addr = server.addr;
    for model in ["bn", "bn_bundle"] {
        let c = get(addr, &format!("/v2/models/{model}/config")).json();
        let b = &c["xlaguard"]["batching"];
        assert_eq!(b["state"], "refused", "{model}: {c}");
        let reason = b["reason"].as_str().unwrap();
        assert!(reason.contains("rows are not independent"), "{reason}");
        assert_eq!(c["max_batch_size"], 0, "{model}: {c}");
        assert!(c.get("dynamic_batching").is_none(), "{model}: {c}");
    }
    // Served unbatched: one row gets JAX's row alone.
    let x = Tensor::read_npy(&fixture("batch_interact").join("rows/in0.npy")).unwrap();
    let want0 = Tensor::read_npy(&fixture("batch_interact").join("rows/out0.npy")).unwrap();
    let r = rows(&x, 4, 1);
    let (status, got, err) = infer(addr, "bn", &r, true);
    assert_eq!(status, 200, "{err}");
    assert!(got[0] == rows(&want0, 4, 1).bytes());
    // The bundle then serves its exported sizes exactly, and nothing in between.
    let (status, _, err) = infer(addr, "bn_bundle", &rows(&x, 0, 2), false);
    assert_eq!(status, 200, "{err}");
    let (status, _, err) = infer(addr, "bn_bundle", &rows(&x, 0, 3), false);
    assert_eq!(status, 400);
    assert!(err.contains("batch sizes 1, 2, 4"), "{err}");
    // Triton's model configuration of a batching model: the batch dimension left out of dims.
    let c = get(addr, "/v2/models/mlp/config").json();
    assert_eq!(c["max_batch_size"], 8, "{c}");
    assert_eq!(
        c["input"],
        json!([{"name": "x", "data_type": "TYPE_FP32", "dims": [16]}]),
        "{c}"
    );
    assert_eq!(c["output"][0]["dims"], json!([4]), "{c}");
    assert_eq!(
        c["dynamic_batching"],
        json!({"preferred_batch_size": [1, 2, 4, 8], "max_queue_delay_microseconds": 100000})
    );
    assert_eq!(c["xlaguard"]["batching"]["state"], "on");
    assert_eq!(c["xlaguard"]["batching"]["pad"], "zeros");
    let m = get(addr, "/v2/models/mlp").json();
    assert_eq!(m["max_batch_size"], 8, "{m}");
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 16]), "{m}");
    // Without [batching]: max_batch_size 0 and the whole shape.
    let c: Value = get(addr, "/v2/models/plain/config").json();
    assert_eq!(c["max_batch_size"], 0, "{c}");
    assert_eq!(c["input"][0]["dims"], json!([-1, 16]), "{c}");
    assert_eq!(c["xlaguard"]["batching"]["state"], "off");
    assert_eq!(get(addr, "/v2/models/nope/config").status, 404);
}

#[test]
fn batching_config_errors_are_reported_per_model() {
    let dir = repo(&[
        ("badpad", "batch_mlp", "[batching]\npad = \"mirror\"\n"),
        ("badsizes", "batch_mlp", "[batching]\nsizes = [4, 2]\n"),
        ("typo", "batch_mlp", "[batching]\nsize = [4]\n"),
        (
            "missing",
            "batch_mlp_bundle",
            "[batching]\nsizes = [1, 16]\n",
        ),
        ("static", "digits", "[batching]\nsizes = [1, 2]\n"),
    ]);
    let specs = scan_repository(dir.path()).unwrap();
    let problem = |n: &str| {
        specs
            .iter()
            .find(|s| s.name == n)
            .unwrap()
            .problem
            .clone()
            .unwrap_or_default()
    };
    assert!(problem("badpad").contains("pad 'mirror' is not one of zeros, repeat_last"));
    assert!(
        problem("badsizes").contains("ascending"),
        "{}",
        problem("badsizes")
    );
    assert!(
        problem("typo").contains("unknown field `size`"),
        "{}",
        problem("typo")
    );
    let bundle = specs.iter().find(|s| s.name == "missing").unwrap();
    assert_eq!(
        bundle.bundle.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 4, 8]
    );
    // Structural refusals come at load, as a refused batching state: the model is served.
    let server = InProcess::start(specs, |c| c.limits.workers = 1);
    for (model, says) in [
        (
            "missing",
            "sizes has 16, but the bundle has exports for 1, 2, 4, 8 only",
        ),
        ("static", "the model is static"),
    ] {
        let c = get(server.addr, &format!("/v2/models/{model}/config")).json();
        assert_eq!(c["xlaguard"]["batching"]["state"], "refused", "{c}");
        let reason = c["xlaguard"]["batching"]["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{model}: {reason}");
    }
}

#[test]
fn bound_params_stay_bound_and_only_request_inputs_are_batched() {
    let dir = repo(&[("mlp", "batch_params", BATCHED)]);
    let server = serve(dir.path(), 1);
    let addr = server.addr;
    let m = get(addr, "/v2/models/mlp").json();
    assert_eq!(
        m["inputs"],
        json!([{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]),
        "{m}"
    );
    let (x, outs) = jax_rows("batch_params");
    let reqs = [(0, 1), (1, 2), (3, 1), (4, 4), (8, 1), (9, 3)];
    for ((from, n), (status, got, err)) in reqs.iter().zip(concurrently(addr, "mlp", &x, &reqs)) {
        assert_eq!(status, 200, "rows {from}+{n}: {err}");
        assert!(
            got == want(&outs, *from, *n),
            "rows {from}+{n}: not JAX's rows"
        );
    }
    assert_merged(addr, "mlp");
}

#[test]
fn inspect_shows_a_model_folders_batching() {
    let dir = repo(&[
        ("mlp", "batch_mlp", BATCHED),
        ("bundle", "batch_mlp_bundle", ""),
        ("bn", "batch_interact", BATCHED),
    ]);
    let inspect = |m: &str, json: bool| {
        let mut c = common::xlaguard_cmd();
        c.arg("inspect").arg(dir.path().join(m));
        if json {
            c.arg("--json");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let text = inspect("mlp", false);
    assert!(
        text.contains(
            "batching: on: sizes 1, 2, 4, 8, max_queue_delay_us 100000, pad zeros, batch_dim 0"
        ),
        "{text}"
    );
    let text = inspect("bundle", false);
    assert!(
        text.contains("bundle: static exports at batch sizes 1, 2, 4, 8"),
        "{text}"
    );
    assert!(text.contains("batching: on: sizes 1, 2, 4, 8,"), "{text}");
    let v: Value = serde_json::from_str(&inspect("bn", true)).unwrap();
    assert_eq!(v["batching"]["state"], "refused", "{v}");
    assert!(
        v["batching"]["reason"]
            .as_str()
            .unwrap()
            .contains("rows are not independent"),
        "{v}"
    );
}

#[test]
fn a_request_whose_client_went_away_is_dropped_before_batching() {
    let dir = repo(&[(
        "mlp",
        "batch_mlp",
        "[batching]\nsizes = [1, 2, 4, 8]\nmax_queue_delay_us = 1500000\n",
    )]);
    let server = serve(dir.path(), 1);
    let addr = server.addr;
    let (x, outs) = jax_rows("batch_mlp");
    let one = rows(&x, 0, 1);
    let header = json!({
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 16],
                    "parameters": {"binary_data_size": 64}}],
    })
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend_from_slice(one.bytes());
    {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        write!(
            s,
            "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
             Inference-Header-Content-Length: {}\r\n\r\n",
            body.len(),
            header.len()
        )
        .unwrap();
        s.write_all(&body).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        // The client goes away while its request waits for company.
    }
    std::thread::sleep(Duration::from_millis(1600));
    let l = "model=\"mlp\",version=\"1\"";
    assert_eq!(
        metric(
            addr,
            &format!("xlaguard_batch_dropped_total{{{l},reason=\"cancelled\"}}")
        ),
        1.0
    );
    assert_eq!(
        metric(addr, &format!("xlaguard_batch_size_count{{{l}}}")),
        0.0
    );
    // The model still serves.
    let (status, got, err) = infer(addr, "mlp", &rows(&x, 1, 1), true);
    assert_eq!(status, 200, "{err}");
    assert!(got == want(&outs, 1, 1));
}
