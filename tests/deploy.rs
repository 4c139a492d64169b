//! deploy/: the KServe manifests against Kubernetes' schemas (kubernetes-validate, pinned in
//! tests/requirements-deploy.txt) and KServe's CRD schemas (deploy/kserve/schema/, hashes
//! checked), the runtime's exact arguments run by the real binary, and the container recipe's
//! agreement with both. No cluster runs here.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

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
         kubernetes-validate from tests/requirements-deploy.txt",
        p.display()
    );
    p
}

fn validate(extra: &[&str]) -> String {
    let out = Command::new(python())
        .current_dir(root())
        .args(["tests/validate_manifests.py", "deploy/kserve"])
        .args(extra)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Every manifest against KServe's CRD schema and the runtime's Pod against Kubernetes 1.37
/// (both strict), the settings, and broken copies refused.
#[test]
fn manifests_validate_against_kubernetes_and_kserve_schemas() {
    let text = validate(&[]);
    assert!(text.contains("\nOK 26 checks"), "{text}");
    for line in [
        "ok: clusterservingruntime.yaml (ClusterServingRuntime) against KServe's CRD schema: []",
        "ok: inferenceservice.yaml (InferenceService) against KServe's CRD schema: []",
        "ok: inferenceservice-grpc.yaml (InferenceService) against KServe's CRD schema: []",
        "ok: the runtime's Pod against Kubernetes 1.37.0 (strict): []",
    ] {
        assert!(text.contains(line), "{line}\n{text}");
    }
}

/// The committed CRD schemas are KServe v0.20.0's files, byte for byte (the hashes of
/// deploy/kserve/schema/README.md).
#[test]
fn committed_crd_schemas_match_their_recorded_hashes() {
    let dir = root().join("deploy/kserve/schema");
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mut seen = 0;
    for line in readme
        .lines()
        .filter(|l| l.starts_with("| serving.kserve.io_"))
    {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let (file, sha) = (cells[1], cells[3]);
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, sha, "{file}");
        seen += 1;
    }
    assert_eq!(seen, 2, "{readme}");
}

/// The runtime's args, exactly as written (only /mnt/models, {{.Name}} and the ports
/// replaced), start the real binary; its probes' paths answer on the HTTP port they name, as
/// does the Prometheus path; the Containerfile's user is the runtime's runAsUser and its plugin
/// is where scripts/fetch-plugin.sh puts it.
#[test]
fn the_runtime_args_serve_and_the_probes_answer() {
    let spec: serde_json::Value = serde_json::from_str(validate(&["--args"]).trim()).unwrap();
    let args: Vec<String> = spec["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let http_port = args
        .iter()
        .position(|a| a == "--addr")
        .map(|i| args[i + 1].rsplit(':').next().unwrap().to_string())
        .unwrap();
    for p in ["readinessProbe", "startupProbe", "livenessProbe"] {
        assert_eq!(spec["probes"][p]["port"].to_string(), http_port, "{p}");
    }
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("deploy/mnt/models");
    let _ = std::fs::remove_dir_all(&dir);
    copy_into(
        &fixture("digits").join("model.jaxexport"),
        &dir,
        "model.jaxexport",
    );
    let args: Vec<String> = args
        .iter()
        .map(|a| match a.as_str() {
            "/mnt/models" => dir.display().to_string(),
            "{{.Name}}" => "digits".into(),
            a if a.starts_with("0.0.0.0:") => "127.0.0.1:0".into(),
            a => a.into(),
        })
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
        .arg("--plugin")
        .arg(common::plugin())
        .args(&args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let addr: std::net::SocketAddr = line
        .trim()
        .strip_prefix("serving on http://")
        .unwrap_or_else(|| panic!("{line:?}"))
        .parse()
        .unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("serving grpc on 127.0.0.1:"), "{line:?}");
    wait_loaded(addr);
    for p in ["readinessProbe", "startupProbe", "livenessProbe"] {
        let path = spec["probes"][p]["path"].as_str().unwrap();
        assert_eq!(get(addr, path).status, 200, "{p} {path}");
    }
    assert_eq!(get(addr, "/v2/models/digits/ready").status, 200);
    let metrics = get(addr, "/metrics").text();
    assert!(
        metrics.contains("xlaguard_model_ready{model=\"digits\",version=\"1\"} 1"),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();

    let containerfile = std::fs::read_to_string(root().join("deploy/Containerfile")).unwrap();
    let runtime =
        std::fs::read_to_string(root().join("deploy/kserve/clusterservingruntime.yaml")).unwrap();
    assert!(
        containerfile.contains("\nUSER 1000:1000\n"),
        "{containerfile}"
    );
    assert!(runtime.contains("        runAsUser: 1000\n"), "{runtime}");
    assert!(containerfile.contains("\nRUN scripts/fetch-plugin.sh\n"));
    assert!(containerfile.contains(&format!(
        "ENV XLAGUARD_PLUGIN=/opt/xlaguard/{}",
        xlaguard::plugin::THIRD_PARTY_CPU
    )));
    assert!(containerfile.contains("ENTRYPOINT [\"/opt/xlaguard/bin/xlaguard\"]"));
}
