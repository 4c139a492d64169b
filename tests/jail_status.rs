//! A jailed worker, seen from outside through /proc, and the jail report.
#![cfg(feature = "test-hooks")]

mod common;

use std::time::Duration;

use xlaguard::Engine;

fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
}

#[test]
fn proc_status_shows_seccomp_no_new_privs_and_no_capabilities() {
    let e = Engine::new(&common::config()).unwrap();
    let pids = e.spare_worker_pids(Duration::from_secs(30));
    let pid = *pids.first().expect("a spare worker");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert_eq!(field(&status, "Seccomp:"), "2", "{status}");
    assert_eq!(field(&status, "NoNewPrivs:"), "1", "{status}");
    assert_eq!(field(&status, "Seccomp_filters:"), "3", "{status}");
    assert_eq!(field(&status, "CapEff:"), "0000000000000000", "{status}");
    assert_eq!(field(&status, "CapBnd:"), "0000000000000000", "{status}");
    // The client's threads are inside the jail too (TSYNC, and born after it).
    let threads: usize = field(&status, "Threads:").parse().unwrap();
    assert!(threads > 1, "{status}");
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let s = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        assert_eq!(field(&s, "Seccomp:"), "2");
        assert_eq!(field(&s, "NoNewPrivs:"), "1");
    }
    // Its own network namespace.
    let mine = std::fs::read_link("/proc/self/ns/net").unwrap();
    let its = std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(mine, its);
    // An empty environment but for the allowlist.
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    for var in env.split(|&b| b == 0).filter(|v| !v.is_empty()) {
        let name = String::from_utf8_lossy(var.split(|&b| b == b'=').next().unwrap()).into_owned();
        assert!(
            xlaguard::compile::ENV_ALLOWLIST.contains(&name.as_str()),
            "{name} leaked into the worker"
        );
    }
    // Limits.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = |n: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(line("Max file size").contains("0 0"), "{limits}");
    assert!(line("Max core file size").contains("0 0"), "{limits}");
    assert!(line("Max open files").contains("64 64"), "{limits}");
    assert!(line("Max cpu time").contains("600 601"), "{limits}");
    // Only stdin/stdout/stderr are open.
    let fds: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .map(|f| f.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut fds: Vec<u32> = fds.iter().map(|f| f.parse().unwrap()).collect();
    fds.sort();
    assert_eq!(fds, [0, 1, 2]);
}

#[test]
fn the_jail_report_says_what_is_enforced() {
    let e = Engine::new(&common::config()).unwrap();
    let r = e.sandbox_report();
    println!("{r:#?}");
    assert_eq!(r.isolation, "process");
    assert!(r.landlock.starts_with("fully enforced"), "{r:?}");
    assert!(r.seccomp.contains("kill"), "{r:?}");
    assert!(r.no_new_privs);
    assert_eq!(r.capabilities, "all dropped");
    assert!(r.unenforced.is_empty(), "{:?}", r.unenforced);
    // Thread isolation reports that nothing is enforced, never silently.
    let t = common::thread_engine().sandbox_report();
    assert_eq!(t.isolation, "thread");
    assert!(!t.unenforced.is_empty());
    // Disabling a protection is reported, and strict mode refuses it.
    let mut c = common::config();
    c.compile.sandbox.landlock = false;
    let e = Engine::new(&c).unwrap();
    assert!(e
        .sandbox_report()
        .unenforced
        .iter()
        .any(|u| u.contains("Landlock")));
    c.compile.sandbox.strict = true;
    let err = Engine::new(&c).unwrap_err();
    assert!(matches!(err, xlaguard::Error::WorkerCrashed(_)), "{err}");
    assert!(err.to_string().contains("strict sandbox"), "{err}");
}
