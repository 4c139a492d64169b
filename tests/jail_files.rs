//! Inside a jailed compile worker, the filesystem is read-only and limited to an allowlist.
#![cfg(feature = "test-hooks")]

mod common;

use xlaguard::compile::{TestRequest, TestResult};
use xlaguard::Engine;

fn ask(e: &Engine, r: TestRequest) -> TestResult {
    e.test_request(&r)
        .unwrap_or_else(|err| panic!("{r:?}: {err}"))
}

#[test]
fn reads_outside_the_allowlist_fail_and_nothing_is_writable() {
    let e = Engine::new(&common::config()).unwrap();
    // An allowed file (XLA reads it) can be read...
    let ok = ask(&e, TestRequest::Open("/proc/cpuinfo".into()));
    assert!(ok.ret > 0 && ok.errno == 0, "{ok:?}");
    assert!(ok.detail.contains("processor"), "{ok:?}");
    // ...files outside the allowlist cannot, whoever owns them (the worker runs as root here).
    for p in [
        "/etc/passwd",
        "/etc/hostname",
        "/proc/self/environ",
        "/proc/1/status",
        env!("CARGO_MANIFEST_DIR"),
    ] {
        let r = ask(&e, TestRequest::Open(p.into()));
        assert_eq!((r.ret, r.errno), (-1, libc::EACCES), "{p}: {r:?}");
    }
    // The test's own source is not readable either.
    let me = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/jail_files.rs");
    let r = ask(&e, TestRequest::Open(me.into()));
    assert_eq!(r.errno, libc::EACCES, "{r:?}");
    // Nothing can be written or created: not in /tmp, not in the repository, not even an
    // allowlisted file.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("escaped.txt");
    for p in [
        target.clone(),
        "/tmp/xlaguard-escape".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/escaped").into(),
        "/proc/cpuinfo".into(),
        "/sys/devices/system/cpu/online".into(),
    ] {
        let r = ask(&e, TestRequest::Write(p.clone()));
        assert_eq!(r.ret, -1, "{}: {r:?}", p.display());
        assert!(
            r.errno == libc::EACCES || r.errno == libc::EPERM,
            "{}: {r:?}",
            p.display()
        );
        if p != std::path::Path::new("/proc/cpuinfo")
            && p != std::path::Path::new("/sys/devices/system/cpu/online")
        {
            assert!(!p.exists(), "{} was created", p.display());
        }
    }
}
