//! The sandbox as the `xlaguard` binary shows it: inspect, audit log, compile output.

mod common;

use common::fixture;
use common::xlaguard_cmd as xlaguard;

#[test]
fn inspect_shows_the_jail() {
    let out = xlaguard()
        .args(["inspect", "--json", "default"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["compile"]["isolation"], "process");
    let jail = &v["compile"]["jail"];
    assert!(
        jail["landlock"]
            .as_str()
            .unwrap()
            .starts_with("fully enforced"),
        "{jail}"
    );
    assert_eq!(jail["no_new_privs"], true);
    assert_eq!(jail["unenforced"], serde_json::json!([]));
    let out = xlaguard()
        .args(["--isolation", "thread", "inspect", "default"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("NOT ENFORCED: thread isolation"), "{text}");
}

#[test]
fn compile_writes_a_loadable_executable_and_an_audit_trail() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("digits.xla");
    let log = dir.path().join("audit.jsonl");
    let out = xlaguard()
        .arg("--audit-log")
        .arg(&log)
        .arg("compile")
        .arg(fixture("digits").join("model.jaxexport"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&exe).unwrap();
    let a = xlaguard::artifact::load_file(&fixture("digits").join("model.jaxexport")).unwrap();
    // SAFETY: written a moment ago by our own binary, in a folder only this test uses.
    let trusted = unsafe { xlaguard::compile::TrustedExecutable::new(&bytes) };
    let m = common::engine().load_serialized(a, trusted).unwrap();
    let ins = common::numbered(&fixture("digits"), "in");
    let got = m.run(&[ins[0].view()]).unwrap();
    assert_eq!(
        got[1].bytes(),
        common::numbered(&fixture("digits"), "out")[1].bytes()
    );
    let events: Vec<String> = common::audit_lines(&log)
        .iter()
        .map(|l| l["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(events, ["sandbox_report", "compile_start", "compile_end"]);
    let end = &common::audit_lines(&log)[2];
    assert_eq!(end["outcome"], "ok");
    assert!(end["peak_rss_bytes"].as_u64().unwrap() > 10 << 20, "{end}");
    assert!(end["cpu_user_ms"].as_f64().unwrap() > 0.0, "{end}");
    assert_eq!(end["exit"], "exit code 0");
}

#[test]
fn a_timeout_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow.mlir");
    std::fs::write(&slow, common::slow_module(3000)).unwrap();
    let out = xlaguard()
        .args(["--compile-timeout", "0.5", "inspect"])
        .arg(&slow)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("not compiled: compile timed out"), "{text}");
}
