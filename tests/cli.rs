//! The `xlaguard` binary: inspect, run, errors.

mod common;

use std::process::Command;

use common::{fixture, numbered, plugin, root};
use xlaguard::Tensor;

fn xlaguard() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xlaguard"));
    c.current_dir(root()).arg("--plugin").arg(plugin());
    c
}

#[test]
fn inspect_json() {
    let out = xlaguard()
        .args(["inspect", "--json"])
        .arg(fixture("digits").join("model.jaxexport"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["inputs"],
        serde_json::json!([{"name": "pixels", "dtype": "float32", "shape": [1, 64]}])
    );
    assert_eq!(
        v["outputs"],
        serde_json::json!([{"name": "label", "dtype": "int32", "shape": [1]}, {"name": "logits", "dtype": "float32", "shape": [1, 10]}])
    );
    assert_eq!(v["platforms"], serde_json::json!(["cpu"]));
    assert_eq!(v["calling_convention_version"], 10);
    assert!(v["plugin"]["path"]
        .as_str()
        .unwrap()
        .ends_with("pjrt_c_api_cpu_plugin.so"));
}

#[test]
fn inspect_text_and_bf16_and_unsupported() {
    let out = xlaguard()
        .arg("inspect")
        .arg(fixture("attention").join("model.jaxexport"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("bfloat16[1,16,32]"), "{text}");
    let out = xlaguard()
        .arg("inspect")
        .arg(fixture("poly").join("model.jaxexport"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("NOT RUNNABLE") && text.contains("b,16"),
        "{text}"
    );
}

#[test]
fn run_writes_outputs_equal_to_jax() {
    let dir = fixture("dict_io");
    let out_dir = std::env::temp_dir().join(format!("xlaguard-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = xlaguard()
        .arg("run")
        .arg(dir.join("model.jaxexport"))
        .arg("--input")
        .arg(format!("b={}", dir.join("in1.npy").display()))
        .arg("--input")
        .arg(format!("a={}", dir.join("in0.npy").display()))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3, "{stdout}");
    assert!(
        stdout
            .lines()
            .next()
            .unwrap()
            .starts_with("out0 'count': int32[]"),
        "{stdout}"
    );
    let expected = numbered(&dir, "out");
    let got = numbered(&out_dir, "out");
    assert_eq!(got, expected);
    let _ = std::fs::remove_dir_all(&out_dir);
}

#[test]
fn run_default_model_predicts_the_sample_digit() {
    let out = xlaguard().args(["run", "default"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    // hlo/digits/in0.npy is a held-out "2".
    assert!(
        stdout.starts_with("out0 'label': int32[1] = [2]"),
        "{stdout}"
    );
}

#[test]
fn invalid_input_is_one_line_naming_input_expected_and_got() {
    let dir = std::env::temp_dir().join(format!("xlaguard-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.npy");
    Tensor::from_slice(&[1, 63], &[0f32; 63])
        .unwrap()
        .write_npy(&bad)
        .unwrap();
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().unwrap();
    assert_eq!(
        last,
        "error: input 'pixels' (0): expected float32[1,64], got float32[1,63]"
    );
    // A file that is not .npy.
    std::fs::write(&bad, b"hello").unwrap();
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("not a readable .npy file"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_plugin_says_how_to_get_one() {
    let out = Command::new(env!("CARGO_BIN_EXE_xlaguard"))
        .args(["--plugin", "/nonexistent/plugin.so", "run", "default"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no PJRT plugin at /nonexistent/plugin.so"));
}
