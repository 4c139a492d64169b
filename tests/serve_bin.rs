//! The real `xlaguard serve` binary: the embedded default model and the documented curl, the
//! official Python client (tritonclient[http]) against JAX's outputs, graceful shutdown on
//! SIGTERM and SIGINT, JSON logs.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;

use common::{fixture, root};
use serving::*;

#[test]
fn default_model_and_the_documented_curl() {
    let s = Binary::start(&[]);
    let meta = get(s.addr, "/v2/models/digits").json();
    assert_eq!(meta["inputs"][0]["name"], "pixels");
    // The request file the docs' curl sends.
    let body = std::fs::read(root().join("examples/digits_request.json")).unwrap();
    let r = request(s.addr, "POST", "/v2/models/digits/infer", &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["outputs"][0]["data"], json!([2]));
    // The curl line of docs/serving.md, run as written (port swapped), where curl exists.
    let doc = std::fs::read_to_string(root().join("docs/serving.md")).unwrap();
    let line = doc
        .lines()
        .find(|l| l.starts_with("curl ") && l.contains("/infer"))
        .expect("a curl .../infer line in docs/serving.md");
    assert!(line.contains("localhost:8000"), "{line}");
    if Command::new("curl").arg("--version").output().is_ok() {
        let cmd = line.replace("localhost:8000", &s.addr.to_string());
        let out = Command::new("sh")
            .current_dir(root())
            .args(["-c", &cmd])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([2]), "{v}");
    }
}

fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("XLAGUARD_TEST_PYTHON") {
        return p.into();
    }
    let p = root().join("venv-test/bin/python");
    assert!(
        p.is_file(),
        "missing {}: run scripts/setup-test-venv.sh (scripts/test.sh does) to install \
         tritonclient[http] from tests/requirements-tritonclient.txt",
        p.display()
    );
    p
}

/// A model repository under the target's temp folder: for each model, its files copied from
/// `hlo/<model>/`.
fn triton_repo(name: &str, models: &[(&str, &[&str])]) -> std::path::PathBuf {
    let repo = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&repo);
    for (m, files) in models {
        for f in *files {
            copy_into(&fixture(m).join(f), &repo.join(m), f);
        }
    }
    repo
}

/// Serves `repo` and runs `tests/triton_client.py` against it with `args`; asserts it
/// succeeded and returns what it printed.
fn triton_client(repo: &std::path::Path, args: &[&str]) -> String {
    let s = Binary::start(&["--models", repo.to_str().unwrap()]);
    let out = Command::new(python())
        .current_dir(root())
        .arg("tests/triton_client.py")
        .args(["--url", &s.addr.to_string(), "--fixtures", "hlo"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn tritonclient_json_and_binary_equal_jax() {
    let model = &["model.jaxexport"][..];
    let repo = triton_repo("triton-repo", &[("digits", model), ("dtypes", model)]);
    let text = triton_client(&repo, &[]);
    assert!(text.contains("OK 43 checks"), "{text}");
    assert!(text.contains("ok: dtypes BF16 binary == JAX"));
    assert!(text.contains("ok: digits JSON logits == JAX"));
}

#[test]
fn tritonclient_on_shape_polymorphic_models() {
    let model = &["model.jaxexport"][..];
    let repo = triton_repo(
        "triton-poly-repo",
        &[("poly_bert", model), ("poly_keras_cnn", model)],
    );
    let text = triton_client(&repo, &["--poly", "poly_bert", "poly_keras_cnn"]);
    // 2 metadata + (3 BERT sizes x 2 outputs + 3 CNN sizes x 1) x (JSON, binary) + 1 violation.
    assert!(text.contains("OK 21 checks"), "{text}");
    assert!(text.contains("ok: poly_bert b5_s12"), "{text}");
}

#[test]
fn tritonclient_sends_only_data_to_models_with_bound_weights() {
    let st = &["model.jaxexport", "params.safetensors"][..];
    let npz = &["model.jaxexport", "params.npz"][..];
    let models = [
        ("params_flax", st),
        ("params_keras", npz),
        ("params_mobilenet", st),
        ("params_eqx", st),
    ];
    let repo = triton_repo("triton-params-repo", &models);
    let mut args = vec!["--plain"];
    args.extend(models.iter().map(|(m, _)| *m));
    let text = triton_client(&repo, &args);
    // 4 models x 1 output x (JSON, binary).
    assert!(text.contains("OK 8 checks"), "{text}");
}

#[test]
fn tritonclient_on_batching_models_polymorphic_and_bundle() {
    let repo = triton_repo(
        "triton-batch-repo",
        &[
            ("batch_mlp", &["model.jaxexport"][..]),
            (
                "batch_mlp_bundle",
                &[
                    "model.b1.jaxexport",
                    "model.b2.jaxexport",
                    "model.b4.jaxexport",
                    "model.b8.jaxexport",
                ][..],
            ),
        ],
    );
    let config = "[batching]\nsizes = [1, 2, 4, 8]\nmax_queue_delay_us = 50000\n";
    for m in ["batch_mlp", "batch_mlp_bundle"] {
        std::fs::write(repo.join(m).join("config.toml"), config).unwrap();
    }
    let text = triton_client(
        &repo,
        &[
            "--batched",
            "batch_mlp=batch_mlp",
            "batch_mlp_bundle=batch_mlp_bundle",
        ],
    );
    // 2 models x (config, metadata, answers, bits).
    assert!(text.contains("OK 8 checks"), "{text}");
}

#[test]
fn sigterm_drains_in_flight_requests_and_exits_0() {
    let s = Binary::start(&["--models", "tests/fixtures"]);
    let addr = s.addr;
    // About three seconds of work here (see tests/fixtures/spin/README.md).
    let body = json!({"inputs": [
        {"name": "n", "datatype": "INT32", "shape": [], "data": [330_000_000]},
        {"name": "x", "datatype": "FP32", "shape": [], "data": [0.5]}]});
    let in_flight = std::thread::spawn(move || {
        let started = Instant::now();
        let r = post_json(addr, "/v2/models/spin/infer", &body);
        (r, started.elapsed())
    });
    // An idle keep-alive connection must not hold up the shutdown.
    let mut idle = Conn::open(addr);
    assert_eq!(
        idle.send("GET", "/v2/health/live", &[], b"")
            .unwrap()
            .status,
        200
    );
    std::thread::sleep(Duration::from_millis(300));
    let pid = s.child.id().to_string();
    let stopped = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    // New connections are refused soon after the signal.
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (r, took) = in_flight.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "the in-flight request was not drained: {}",
        r.text()
    );
    assert!(took > Duration::from_millis(500), "{took:?}");
    let status = s.stop("0", Duration::from_secs(15)); // signal 0: just wait
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(stopped.elapsed() < Duration::from_secs(15));
}

#[test]
fn sigint_exits_0_and_logs_are_json() {
    let log = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("serve-json.log");
    let file = std::fs::File::create(&log).unwrap();
    let s = Binary::start_logging(&["--log-format", "json"], "info", Stdio::from(file));
    // 200 refused requests: counted, not logged one line each at info (clients cannot fill
    // the disk).
    let mut conn = Conn::open(s.addr);
    let bad = json!({"inputs": [
        {"name": "pixels", "datatype": "FP32", "shape": [1, 63], "data": vec![0.0; 63]}]})
    .to_string();
    for _ in 0..200 {
        let r = conn
            .send(
                "POST",
                "/v2/models/digits/infer",
                &[("Content-Type", "application/json")],
                bad.as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 400);
    }
    let m = get(s.addr, "/metrics").text();
    assert!(
        m.contains("xlaguard_validation_rejections_total{model=\"digits\",version=\"1\",input=\"pixels\",rule=\"shape\"} 200"),
        "{m}"
    );
    let _idle = Conn::open(s.addr);
    let status = s.stop("INT", Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{status:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let find = |msg: &str| {
        events
            .iter()
            .find(|e| e["message"] == msg)
            .unwrap_or_else(|| panic!("no '{msg}' event in\n{text}"))
            .clone()
    };
    let ready = find("model ready");
    assert_eq!(ready["model"], "digits");
    assert_eq!(ready["level"], "INFO");
    assert!(
        !events
            .iter()
            .any(|e| e["message"] == "input rejected" || e["message"] == "request"),
        "per-request lines at info:\n{text}"
    );
    assert!(events.len() < 20, "{} lines:\n{text}", events.len());
    find("SIGINT received");
    find("drained; bye");
}

#[test]
fn bad_arguments_and_unreadable_repository_fail_cleanly() {
    let out = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
        .args([
            "serve",
            "--models",
            "/nonexistent/models",
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("error: model repository /nonexistent/models: No such file or directory"),
        "{err}"
    );
    // The port is taken: a clean error, not a panic.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
        .args(["serve", "--addr", &addr])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("error: cannot listen on {addr}")),
        "{err}"
    );
    // Out-of-range numbers: a usage error naming the flag and its range, never a panic.
    for (flag, value) in [
        ("--workers", "9223372036854775807"),
        ("--max-queue", "9223372036854775807"),
        ("--max-concurrent-requests", "0"),
        ("--max-connections", "18446744073709551615"),
        ("--timeout-ms", "0"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
            .args(["serve", "--addr", "127.0.0.1:0", flag, value])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {err}");
        assert!(
            err.contains(flag) && err.contains("is not in"),
            "{flag}: {err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
        .args([
            "serve",
            "--addr",
            "127.0.0.1:0",
            "--compile-timeout",
            "1e300",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--compile-timeout must be a number of seconds in (0, 604800], got 1e300"),
        "{err}"
    );
}

/// A model whose config.toml asks for more workers (or queue, or deadline) than the range
/// allows is unavailable with a message; the others serve.
#[test]
fn out_of_range_model_limits_make_only_that_model_unavailable() {
    let repo = tempfile::tempdir().unwrap();
    for (name, config) in [
        ("good", ""),
        ("workers", "[limits]\nworkers = 9223372036854775807\n"),
        ("queue", "[limits]\nmax_queue = 9223372036854775807\n"),
        ("deadline", "[limits]\ntimeout_ms = 0\n"),
    ] {
        let d = repo.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            fixture("tiny").join("model.jaxexport"),
            d.join("model.jaxexport"),
        )
        .unwrap();
        std::fs::write(d.join("config.toml"), config).unwrap();
    }
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    let problem = |n: &str| {
        specs
            .iter()
            .find(|s| s.name == n)
            .and_then(|s| s.problem.clone())
    };
    assert_eq!(problem("good"), None);
    assert_eq!(
        problem("workers").as_deref(),
        Some("config.toml [limits] workers = 9223372036854775807: expected 1 to 1024")
    );
    assert_eq!(
        problem("queue").as_deref(),
        Some("config.toml [limits] max_queue = 9223372036854775807: expected 0 to 1000000")
    );
    assert_eq!(
        problem("deadline").as_deref(),
        Some("config.toml [limits] timeout_ms = 0: expected 1 to 86400000")
    );
}

/// `device = "cuda"` in a model's config.toml with XLAGUARD_PLUGIN naming the CPU plugin: that
/// model is unavailable, saying what the plugin runs on; it is not served on the CPU.
#[test]
fn a_device_the_named_plugin_does_not_drive_is_refused() {
    let repo = tempfile::tempdir().unwrap();
    for (name, config) in [("good", ""), ("gpu", "device = \"cuda\"\n")] {
        let d = repo.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            fixture("tiny").join("model.jaxexport"),
            d.join("model.jaxexport"),
        )
        .unwrap();
        std::fs::write(d.join("config.toml"), config).unwrap();
    }
    // The same file every other test passes as --plugin: harmless to them.
    std::env::set_var("XLAGUARD_PLUGIN", common::plugin());
    let s = Binary::start(&["--models", repo.path().to_str().unwrap()]);
    assert_eq!(get(s.addr, "/v2/models/good/ready").status, 200);
    assert_ne!(get(s.addr, "/v2/models/gpu/ready").status, 200);
    let idx = post_json(s.addr, "/v2/repository/index", &json!({}));
    assert!(
        idx.text().contains("device cuda: the plugin found")
            && idx.text().contains("runs on 'cpu'"),
        "{}",
        idx.text()
    );
}

/// KServe's layout: `--models DIR` where DIR holds the artifact itself (what the storage
/// initializer puts at `/mnt/models`) is one model, served under `--model-name` (not the
/// folder's name), with its config.toml and params; a sub-folder is not a model. Over HTTP
/// (bit for bit against JAX), over gRPC with tritonclient.grpc, and reloaded from the same
/// folder under `--model-control explicit`.
#[test]
fn a_folder_holding_an_artifact_is_one_model_named_by_model_name() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("single/mnt/models");
    let _ = std::fs::remove_dir_all(&dir);
    for f in ["model.jaxexport", "params.safetensors"] {
        copy_into(&fixture("params_eqx").join(f), &dir, f);
    }
    std::fs::write(dir.join("config.toml"), "version = \"3\"\n").unwrap();
    copy_into(
        &fixture("tiny").join("model.jaxexport"),
        &dir.join("assets"),
        "model.jaxexport",
    );
    let s = Binary::start(&[
        "--models",
        dir.to_str().unwrap(),
        "--model-name",
        "params_eqx",
        "--model-control",
        "explicit",
    ]);
    let meta = get(s.addr, "/v2/models/params_eqx").json();
    assert_eq!(meta["versions"], json!(["3"]), "{meta}");
    // Only the input clients send: the weights are bound from params.safetensors.
    let names = served_input_names(s.addr, "params_eqx");
    let inputs = common::numbered(&fixture("params_eqx"), "in");
    assert_eq!(names.len(), inputs.len(), "{meta}");
    for m in ["models", "assets", "tiny"] {
        assert_eq!(get(s.addr, &format!("/v2/models/{m}")).status, 404, "{m}");
    }
    let index = request(s.addr, "POST", "/v2/repository/index", &[], b"").json();
    assert_eq!(
        index,
        json!([{"name": "params_eqx", "version": "3", "state": "READY"}]),
        "{index}"
    );
    let golden: Vec<u8> = common::numbered(&fixture("params_eqx"), "out")
        .iter()
        .flat_map(|t| t.bytes().to_vec())
        .collect();
    assert_eq!(infer_binary(s.addr, "params_eqx", &names, &inputs), golden);
    // The same model over gRPC, with the official client (raw and typed contents).
    let grpc = s.grpc.expect("gRPC on by default").to_string();
    let out = Command::new(python())
        .current_dir(root())
        .args([
            "tests/triton_grpc_client.py",
            "--url",
            &grpc,
            "--fixtures",
            "hlo",
        ])
        .args(["--models", "params_eqx"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("OK "),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Unload, then load: the load reads the same folder again.
    let r = request(
        s.addr,
        "POST",
        "/v2/repository/models/params_eqx/unload",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(
        s.addr,
        "/v2/models/params_eqx/infer",
        &json!({"inputs": json_inputs(&[names[0].as_str()], &inputs[..1])}),
    );
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.error(),
        "model 'params_eqx' is unloaded; a repository load request loads it"
    );
    let r = request(
        s.addr,
        "POST",
        "/v2/repository/models/params_eqx/load",
        &[],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(infer_binary(s.addr, "params_eqx", &names, &inputs), golden);
}

/// The layout and `--model-name` must agree: a single-model folder without a name, or a name
/// for a repository, is an error naming the folder and what to do; a name clients could not
/// address is a usage error. Without `--models`, `--model-name` renames the embedded model.
#[test]
fn model_name_and_layout_must_agree() {
    let single = tempfile::tempdir().unwrap();
    copy_into(
        &fixture("tiny").join("model.jaxexport"),
        single.path(),
        "model.jaxexport",
    );
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
            .arg("--plugin")
            .arg(common::plugin())
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let d = single.path().display().to_string();
    let (code, err) = run(&["--models", &d]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: {d} holds an artifact itself (model.jaxexport), so it is one model (the \
             single-model layout): name it with --model-name NAME"
        )),
        "{err}"
    );
    let repo = tempfile::tempdir().unwrap();
    copy_into(
        &fixture("tiny").join("model.jaxexport"),
        &repo.path().join("tiny"),
        "model.jaxexport",
    );
    let r = repo.path().display().to_string();
    let (code, err) = run(&["--models", &r, "--model-name", "tiny"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "error: --model-name tiny: {r} holds no artifact itself, so it is a repository of \
             model folders, each named after its folder"
        )),
        "{err}"
    );
    // A repository with a stray artifact at its top (as tests/fixtures/ has) stays a
    // repository when no name is given.
    copy_into(
        &fixture("tiny").join("model.jaxexport"),
        repo.path(),
        "stray.mlirbc",
    );
    let specs = xlaguard::server::repo::read_models(repo.path(), None).unwrap();
    let names: Vec<&str> = specs.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["tiny"]);
    for bad in ["", ".hidden", "a/b", "white space"] {
        let (code, err) = run(&["--models", &d, "--model-name", bad]);
        assert_eq!(code, Some(2), "{bad:?}: {err}");
        assert!(
            err.contains("--model-name") && err.contains("a model name is letters, digits"),
            "{bad:?}: {err}"
        );
    }
    let s = Binary::start(&["--model-name", "mnist"]);
    assert_eq!(get(s.addr, "/v2/models/mnist/ready").status, 200);
    assert_eq!(get(s.addr, "/v2/models/digits").status, 404);
}
