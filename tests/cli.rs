//! The `xlaguard` binary: inspect, run, errors.

mod common;

use std::process::Command;

use common::xlaguard_cmd as xlaguard;
use common::{fixture, numbered};
use xlaguard::Tensor;

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
    // Shape-polymorphic: runnable, dimension variables shown by name.
    let out = xlaguard()
        .arg("inspect")
        .arg(fixture("poly").join("model.jaxexport"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("float32[b,16]") && !text.contains("NOT RUNNABLE"),
        "{text}"
    );
    assert_eq!(out.status.code(), Some(0), "{text}");
    let out = xlaguard()
        .arg("inspect")
        .arg(fixture("ordered_effect").join("model.jaxexport"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("NOT RUNNABLE"), "{text}");
    // Not runnable: exit status 2, with the whole report still printed.
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("inputs:"), "{text}");
}

#[test]
fn inspect_exits_2_when_the_model_does_not_compile_and_1_on_a_bad_file() {
    // A module that parses but fails to compile: a custom call no handler is registered for.
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown_target.mlir");
    std::fs::write(&unknown, UNKNOWN_TARGET).unwrap();
    let out = xlaguard()
        .args(["inspect", "--json"])
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["note"].as_str().unwrap().contains("not compiled"), "{v}");
    // `qr` (LAPACK custom calls) compiles since xlaguard registers LAPACK handlers.
    #[cfg(feature = "lapack")]
    {
        let out = xlaguard()
            .args(["inspect", "--json"])
            .arg(fixture("qr").join("model.jaxexport"))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = xlaguard()
        .args(["inspect", "/nonexistent/model.jaxexport"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let out = xlaguard()
        .arg("inspect")
        .arg(fixture("tiny").join("model.jaxexport"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

/// StableHLO calling a custom-call target that no handler is registered for.
const UNKNOWN_TARGET: &str = "func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {\n  %0 = stablehlo.custom_call @xlaguard_no_such_target(%arg0) {mhlo.backend_config = {}} : (tensor<4xf32>) -> tensor<4xf32>\n  return %0 : tensor<4xf32>\n}\n";

/// The `error:` line of a failed command; it must be the only one.
fn error_line(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

#[test]
fn every_error_names_its_file_and_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("x.npy");
    let tiny = fixture("tiny");
    let cases: Vec<(Vec<std::ffi::OsString>, String, &str)> = vec![
        (
            vec![
                "run".into(),
                tiny.join("model.jaxexport").into(),
                missing.clone().into(),
                tiny.join("in1.npy").into(),
            ],
            missing.display().to_string(),
            "No such file or directory",
        ),
        (
            vec!["run".into(), dir.path().join("m.jaxexport").into()],
            dir.path().join("m.jaxexport").display().to_string(),
            "No such file or directory",
        ),
        (
            vec![
                "run".into(),
                tiny.join("model.jaxexport").into(),
                "--policy".into(),
                dir.path().join("p.toml").into(),
                tiny.join("in0.npy").into(),
                tiny.join("in1.npy").into(),
            ],
            dir.path().join("p.toml").display().to_string(),
            "No such file or directory",
        ),
        (
            vec![
                "run".into(),
                tiny.join("model.jaxexport").into(),
                tiny.join("model.mlir").into(),
                tiny.join("in1.npy").into(),
            ],
            tiny.join("model.mlir").display().to_string(),
            "not a readable .npy file",
        ),
    ];
    for (args, file, cause) in cases {
        let out = xlaguard().args(&args).output().unwrap();
        let line = error_line(&out);
        assert_eq!(line.matches(file.as_str()).count(), 1, "{line}");
        assert_eq!(line.matches(cause).count(), 1, "{line}");
    }
    // A file that is no artifact at all.
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"junk").unwrap();
    let out = xlaguard().arg("run").arg(&junk).output().unwrap();
    let line = error_line(&out);
    assert_eq!(line.matches("junk.bin").count(), 1, "{line}");
    assert_eq!(line.matches("unknown artifact format").count(), 1, "{line}");
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

// ---- value policies ------------------------------------------------------------------------

fn policy_fixture(name: &str) -> std::path::PathBuf {
    fixture("policy").join(name)
}

fn last_stderr_line(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn run_with_policy_prints_sanitization_and_gives_jax_outputs() {
    let out_dir = std::env::temp_dir().join(format!("xlaguard-cli-policy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out_dir);
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(policy_fixture("digits_dirty.npy"))
        .arg("--policy")
        .arg(policy_fixture("digits_clip.policy.toml"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().next().unwrap(),
        "sanitized input 'pixels': 2 values clipped to min 0.0, 3 values clipped to max 16.0",
        "{stdout}"
    );
    for i in 0..2 {
        let got = Tensor::read_npy(&out_dir.join(format!("out{i}.npy"))).unwrap();
        let want =
            Tensor::read_npy(&policy_fixture(&format!("digits_clipped_out{i}.npy"))).unwrap();
        assert_eq!(got, want, "out{i}");
    }
    let _ = std::fs::remove_dir_all(&out_dir);

    // Rejecting policy: exit 1, the message.
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(policy_fixture("digits_dirty.npy"))
        .arg("--policy")
        .arg(policy_fixture("digits_range.policy.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        last_stderr_line(&out),
        "error: input 'pixels': 2 values below min 0.0; first at [0, 5] = -3.0"
    );
    // No policy: the default rejects NaN.
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(policy_fixture("digits_nonfinite.npy"))
        .output()
        .unwrap();
    assert_eq!(
        last_stderr_line(&out),
        "error: input 'pixels': 2 NaN values; first at [0, 3] = NaN"
    );
}

#[test]
fn run_and_inspect_use_the_policy_beside_the_model() {
    let dir = std::env::temp_dir().join(format!("xlaguard-cli-beside-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("ids.jaxexport");
    std::fs::copy(fixture("embedding").join("model.jaxexport"), &model).unwrap();
    std::fs::copy(
        policy_fixture("ids_clip.policy.toml"),
        dir.join("ids.policy.toml"),
    )
    .unwrap();
    let out = xlaguard()
        .arg("run")
        .arg(&model)
        .arg(policy_fixture("ids_dirty.npy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with(
        "sanitized input 'ids': 1 value clipped to min 0, 2 values clipped to max 49\n"
    ));

    let out = xlaguard().arg("inspect").arg(&model).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(&format!(
            "policy: {}\n  ids: min 0, max 49 (clip)\n",
            dir.join("ids.policy.toml").display()
        )),
        "{text}"
    );
    let out = xlaguard()
        .args(["inspect", "--json"])
        .arg(&model)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["policy"]["inputs"]["ids"]["min"], 0);
    assert_eq!(v["policy"]["inputs"]["ids"]["max"], 49);
    assert_eq!(v["policy"]["inputs"]["ids"]["out_of_range"], "clip");
    assert_eq!(
        v["policy"]["file"],
        dir.join("ids.policy.toml").display().to_string()
    );

    // A broken file beside the model: one line naming file, line and key.
    std::fs::write(
        dir.join("ids.policy.toml"),
        "[inputs.ids]\nmin = 0\nmaxx = 49\n",
    )
    .unwrap();
    let out = xlaguard()
        .arg("run")
        .arg(&model)
        .arg(policy_fixture("ids_dirty.npy"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        last_stderr_line(&out).starts_with(&format!(
            "error: {}:3: inputs.ids.maxx: unknown key",
            dir.join("ids.policy.toml").display()
        )),
        "{}",
        last_stderr_line(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn inspect_shows_the_default_policy() {
    let out = xlaguard()
        .arg("inspect")
        .arg(fixture("attention").join("model.jaxexport"))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("policy: default (float inputs reject NaN and infinities)\n  x: nan reject, inf reject\n"),
        "{text}"
    );
}

#[test]
fn policy_suggest_writes_a_policy_that_loads_and_passes_its_samples() {
    let dir = std::env::temp_dir().join(format!("xlaguard-cli-suggest-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("digits.policy.toml");
    let out = xlaguard()
        .args(["policy", "suggest"])
        .arg(fixture("digits").join("model.jaxexport"))
        .arg("--from")
        .arg(fixture("digits").join("batch.npy"))
        .args(["--margin", "0.25", "-o"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# pixels: 1 sample(s), 2048 elements: min 0.0, max 16.0; 0 NaN, 0 infinite"),
        "{text}"
    );
    assert!(
        text.contains(
            "[inputs.pixels]\nmin = -4.0\nmax = 20.0\nnan = \"reject\"\ninf = \"reject\"\n"
        ),
        "{text}"
    );
    // It loads, binds, and the sample passes; the dirty digit does not (255 > 20).
    let out = xlaguard()
        .args(["policy", "check"])
        .arg(fixture("digits").join("model.jaxexport"))
        .arg("--policy")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(fixture("digits").join("in0.npy"))
        .arg("--policy")
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", last_stderr_line(&out));
    let out = xlaguard()
        .arg("run")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg(policy_fixture("digits_dirty.npy"))
        .arg("--policy")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        last_stderr_line(&out),
        "error: input 'pixels': 1 value above max 20.0; first at [0, 41] = 255.0"
    );
    // A sample of the wrong dtype is refused.
    let out = xlaguard()
        .args(["policy", "suggest"])
        .arg(fixture("digits").join("model.jaxexport"))
        .arg("--from")
        .arg(fixture("digits").join("batch_labels.npy"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        last_stderr_line(&out),
        "error: input 'pixels' (0): expected float32[1,64], got int32[32]"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn plugin_info_logs_only_with_verbose() {
    let tiny = fixture("tiny");
    let run = |verbose: bool| {
        let mut c = xlaguard();
        c.env_remove("TF_CPP_MIN_LOG_LEVEL");
        if verbose {
            c.arg("-v");
        }
        let out = c
            .arg("run")
            .arg(tiny.join("model.jaxexport"))
            .arg(tiny.join("in0.npy"))
            .arg(tiny.join("in1.npy"))
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let quiet = run(false);
    assert!(!quiet.contains("absl::InitializeLog"), "{quiet}");
    assert!(!quiet.contains("cpu_device_count"), "{quiet}");
    let loud = run(true);
    assert!(
        loud.contains("cpu_device_count set via create_options"),
        "{loud}"
    );
}

#[test]
fn a_module_over_max_module_bytes_is_refused_naming_both_sizes() {
    let tiny = fixture("tiny");
    let size = std::fs::read(tiny.join("model.mlirbc")).unwrap().len();
    let run = |limit: usize| {
        xlaguard()
            .arg("--max-module-bytes")
            .arg(limit.to_string())
            .arg("run")
            .arg(tiny.join("model.mlirbc"))
            .arg(tiny.join("in0.npy"))
            .arg(tiny.join("in1.npy"))
            .output()
            .unwrap()
    };
    // One byte short of the module: refused, the message naming both sizes.
    let out = run(size - 1);
    let line = error_line(&out);
    assert!(
        line.contains(&format!(
            "module of {size} bytes exceeds the limit of {} bytes",
            size - 1
        )),
        "{line}"
    );
    // Exactly its size: runs.
    let out = run(size);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = xlaguard()
        .args(["--max-module-bytes", "0", "inspect", "default"])
        .output()
        .unwrap();
    assert!(error_line(&out).contains("--max-module-bytes"));
}

/// Plugin discovery asks `python3` (unjailed, from PATH) for its site-packages only when
/// nothing else gave a plugin: never with --plugin, XLAGUARD_PLUGIN, or third_party/.
#[test]
fn discovery_runs_no_python_when_a_plugin_is_named_or_found() {
    let tmp = tempfile::tempdir().unwrap();
    let marker = tmp.path().join("python-ran");
    let fake = tmp.path().join("python3");
    std::fs::write(
        &fake,
        format!("#!/bin/sh\ntouch '{}'\nexit 1\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // The fake works: run directly, it leaves its marker.
    std::process::Command::new(&fake).status().unwrap();
    assert!(marker.is_file());
    std::fs::remove_file(&marker).unwrap();
    let path = format!(
        "{}:{}",
        tmp.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let model = common::fixture("tiny").join("model.jaxexport");
    // --plugin, then XLAGUARD_PLUGIN, then third_party/ found from the source tree.
    let plugin = common::plugin();
    let runs: [(&[&str], Option<&std::path::Path>); 3] = [
        (&["--plugin", plugin.to_str().unwrap()], None),
        (&[], Some(plugin.as_path())),
        (&[], None),
    ];
    for (args, env) in runs {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xlaguard"));
        c.current_dir(common::root())
            .env("PATH", &path)
            .env_remove("XLAGUARD_PLUGIN")
            .args(args)
            .arg("inspect")
            .arg(&model);
        if let Some(p) = env {
            c.env("XLAGUARD_PLUGIN", p);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} {env:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!marker.exists(), "{args:?} {env:?}: python3 was run");
    }
}
