//! The gRPC frontend of the real `xlaguard serve` binary against the official client,
//! `tritonclient.grpc` (tests/triton_grpc_client.py, pinned in
//! tests/requirements-tritonclient.txt): JAX's outputs bit for bit on the hlo/ models, raw and
//! typed contents, every error code, the client's deadline, message size limits, health,
//! repository load/unload, statistics and configuration; and the same extensions over HTTP.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::process::Command;

use serde_json::json;
use xlaguard::Tensor;

use common::{fixture, root};
use serving::*;

fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("XLAGUARD_TEST_PYTHON") {
        return p.into();
    }
    let p = root().join("venv-test/bin/python");
    assert!(
        p.is_file(),
        "missing {}: run scripts/setup-test-venv.sh (scripts/test.sh does) to install \
         tritonclient[http,grpc] from tests/requirements-tritonclient.txt",
        p.display()
    );
    p
}

/// Models with hlo/<m>/in*.npy and out*.npy the golden check sends over gRPC (every datatype,
/// complex, dict inputs, kept variables, params bound server-side, several frameworks).
const GOLDEN: &[&str] = &[
    "digits",
    "dtypes",
    "attention",
    "complex128",
    "conv",
    "dict_io",
    "embedding",
    "equinox_attention",
    "equinox_mlp",
    "flax_linen",
    "flax_nnx",
    "kept_var",
    "multi_platform",
    "names",
    "nan_max",
    "prng_key",
    "tiny",
    "params_eqx",
];

/// A repository for the gRPC checks: the golden models, a batching model, a model that fails
/// to load, and the spin model three ways (plain, a 400 ms timeout, one worker and no queue).
fn repo(name: &str) -> std::path::PathBuf {
    let repo = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&repo);
    for m in GOLDEN {
        copy_into(
            &fixture(m).join("model.jaxexport"),
            &repo.join(m),
            "model.jaxexport",
        );
    }
    copy_into(
        &fixture("params_eqx").join("params.safetensors"),
        &repo.join("params_eqx"),
        "params.safetensors",
    );
    copy_into(
        &fixture("batch_mlp").join("model.jaxexport"),
        &repo.join("batch_mlp"),
        "model.jaxexport",
    );
    std::fs::write(
        repo.join("batch_mlp/config.toml"),
        "[batching]\nsizes = [1, 2, 4, 8]\n",
    )
    .unwrap();
    std::fs::create_dir_all(repo.join("broken")).unwrap();
    std::fs::write(repo.join("broken/model.jaxexport"), b"not an export").unwrap();
    for (name, config) in [
        ("spin", ""),
        ("spin_short", "[limits]\ntimeout_ms = 400\n"),
        ("spin_one", "[limits]\nworkers = 1\nmax_queue = 0\n"),
    ] {
        for f in ["model.mlir", "policy.toml"] {
            copy_into(&test_fixture("spin").join(f), &repo.join(name), f);
        }
        std::fs::write(repo.join(name).join("config.toml"), config).unwrap();
    }
    repo
}

fn start(repo: &std::path::Path) -> Binary {
    Binary::start(&[
        "--models",
        repo.to_str().unwrap(),
        "--model-control",
        "explicit",
        "--strict-readiness",
        "false",
        "--max-body-bytes",
        "8388608",
    ])
}

fn client(grpc: std::net::SocketAddr, args: &[&str]) -> String {
    let out = Command::new(python())
        .current_dir(root())
        .arg("tests/triton_grpc_client.py")
        .args(["--url", &grpc.to_string(), "--fixtures", "hlo"])
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
fn tritonclient_grpc_against_jax_errors_and_repository() {
    let repo = repo("grpc-repo");
    let s = start(&repo);
    let grpc = s.grpc.expect("gRPC on by default");
    let mut args = vec!["--models"];
    args.extend(GOLDEN);
    args.extend(["--errors", "--repository"]);
    let text = client(grpc, &args);
    assert!(text.contains("BF16 raw == JAX"), "{text}");
    assert!(
        text.contains("ok: digits logits FP32 typed == JAX"),
        "{text}"
    );
    assert!(
        text.contains("ok: dtypes: typed FP16/BF16 contents refused"),
        "{text}"
    );
    assert!(
        text.contains("ok: client deadline shorter than the run"),
        "{text}"
    );
    assert!(
        text.contains("ok: loaded again: digits logits == JAX"),
        "{text}"
    );
    let n: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("OK ")?.strip_suffix(" checks")?.parse().ok())
        .unwrap();
    assert!(n > 150, "{n} checks\n{text}");

    // Every call counted by method and status code in /metrics, tonic's own size check
    // (RESOURCE_EXHAUSTED) included.
    let metrics = get(s.addr, "/metrics").text();
    let calls = |method: &str, code: &str| -> u64 {
        let key = format!("xlaguard_grpc_requests_total{{method=\"{method}\",code=\"{code}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&key)?.parse().ok())
            .unwrap_or(0)
    };
    let infer = "GRPCInferenceService/ModelInfer";
    assert!(calls(infer, "OK") >= 2 * GOLDEN.len() as u64, "{metrics}");
    for code in [
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
        "DEADLINE_EXCEEDED",
    ] {
        assert!(calls(infer, code) >= 1, "{code}: {metrics}");
    }
    assert!(calls("GRPCInferenceService/ModelStreamInfer", "OK") == 0);
    assert!(
        calls("GRPCInferenceService/RepositoryModelLoad", "OK") >= 1,
        "{metrics}"
    );
    assert!(calls("Health/Check", "OK") >= 1, "{metrics}");

    // The same server's HTTP side: the gRPC requests are in the shared statistics.
    let st = get(s.addr, "/v2/models/digits/stats").json();
    let d = &st["model_stats"][0];
    assert_eq!(d["name"], "digits");
    assert!(
        d["inference_stats"]["success"]["count"].as_u64().unwrap() >= 5,
        "{st}"
    );
    assert!(
        d["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0,
        "{st}"
    );
}

#[test]
fn http_repository_load_unload_stats_and_config() {
    let repo = repo("grpc-http-repo");
    let s = start(&repo);
    let a = s.addr;
    let idx = post_json(a, "/v2/repository/index", &json!({})).json();
    let digits = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "digits")
        .unwrap();
    assert_eq!(digits["state"], "READY");
    let broken = idx
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "broken")
        .unwrap();
    assert_eq!(broken["state"], "UNAVAILABLE");
    assert!(
        broken["reason"]
            .as_str()
            .unwrap()
            .contains("model.jaxexport"),
        "{broken}"
    );

    // Unload: not ready, inference 503 naming the reason; load: ready and JAX's answer again.
    let r = post_json(a, "/v2/repository/models/digits/unload", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(a, "/v2/models/digits/ready").status, 400);
    let x = Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap();
    let body = json!({"inputs": json_inputs(&["pixels"], &[x])});
    let r = post_json(a, "/v2/models/digits/infer", &body);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.error().contains("model 'digits' is unloaded"),
        "{}",
        r.error()
    );
    let r = post_json(a, "/v2/repository/models/digits/load", &json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(a, "/v2/models/digits/ready").status, 200);
    let r = post_json(a, "/v2/models/digits/infer", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let want = Tensor::read_npy(&fixture("digits").join("out0.npy")).unwrap();
    assert_eq!(r.json()["outputs"][0]["data"], json!(json_values(&want)));
    // A load of a folder that is still broken: 503 with the reason.
    let r = post_json(a, "/v2/repository/models/broken/load", &json!({}));
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(
        r.error().contains("model 'broken' is unavailable"),
        "{}",
        r.error()
    );
    let r = post_json(a, "/v2/repository/models/nope/load", &json!({}));
    assert_eq!(r.status, 404, "{}", r.text());

    // Statistics: the successful inference and the refused one, with time per phase.
    let st = get(a, "/v2/models/digits/stats").json();
    let d = &st["model_stats"][0];
    assert_eq!(d["inference_stats"]["success"]["count"], 1, "{st}");
    assert_eq!(d["inference_stats"]["fail"]["count"], 1, "{st}");
    for phase in ["queue", "compute_input", "compute_infer", "compute_output"] {
        assert_eq!(d["inference_stats"][phase]["count"], 1, "{phase}: {st}");
    }
    assert!(
        d["inference_stats"]["compute_infer"]["ns"]
            .as_u64()
            .unwrap()
            > 0
    );
    let all = get(a, "/v2/models/stats").json();
    assert!(
        all["model_stats"].as_array().unwrap().len() >= GOLDEN.len(),
        "{all}"
    );
    assert_eq!(get(a, "/v2/models/nope/stats").status, 404);

    // Config of a batching model (perf_analyzer's first request).
    let c = get(a, "/v2/models/batch_mlp/config").json();
    assert_eq!(c["max_batch_size"], 8, "{c}");
    assert_eq!(c["input"][0]["dims"], json!([16]), "{c}");
    assert_eq!(
        c["dynamic_batching"]["preferred_batch_size"],
        json!([1, 2, 4, 8]),
        "{c}"
    );
}

#[test]
fn load_and_unload_are_refused_without_explicit_model_control() {
    let repo = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("grpc-none-repo");
    let _ = std::fs::remove_dir_all(&repo);
    copy_into(
        &fixture("tiny").join("model.jaxexport"),
        &repo.join("tiny"),
        "model.jaxexport",
    );
    let s = Binary::start(&["--models", repo.to_str().unwrap()]);
    for op in ["load", "unload"] {
        let r = post_json(
            s.addr,
            &format!("/v2/repository/models/tiny/{op}"),
            &json!({}),
        );
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(
            r.error().contains("--model-control explicit"),
            "{}",
            r.error()
        );
    }
    assert_eq!(get(s.addr, "/v2/models/tiny/ready").status, 200);
}

/// `--max-connections-per-client` holds for the gRPC frontend too: one address's connection
/// past the limit is closed at accept and counted; once one closes, a new one is served.
#[test]
fn grpc_connections_per_client_are_limited() {
    use std::io::Read;
    let s = Binary::start(&["--max-connections-per-client", "2"]);
    let grpc = s.grpc.expect("gRPC on by default");
    let open = || {
        let c = std::net::TcpStream::connect(grpc).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        c
    };
    // Served: the server opens with its HTTP/2 SETTINGS frame.
    let (a, b) = (open(), open());
    let mut buf = [0u8; 16];
    for mut c in [&a, &b] {
        assert!(c.read(&mut buf).unwrap() > 0);
    }
    // The third is closed by the server at accept: end of stream (or a reset), no SETTINGS.
    let mut third = open();
    match third.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("third connection not closed: {other:?}"),
    }
    let metrics = get(s.addr, "/metrics").text();
    assert!(
        metrics.contains("xlaguard_admission_rejections_total{reason=\"client_connections\"} 1"),
        "{metrics}"
    );
    // One closes: a new connection from the address is served again.
    drop(a);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let mut again = open();
    assert!(again.read(&mut buf).unwrap() > 0);
    drop(b);
}
