//! The compiled-executable cache: hits skip the compiler; a flipped byte or a truncated entry
//! is refused, logged and recompiled; an entry made by another plugin is never used.
#![cfg(feature = "test-hooks")]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use xlaguard::{Engine, EngineConfig};

fn cached_config(cache: &Path, log: &Path, plugin: &Path) -> EngineConfig {
    let mut c = common::config();
    c.plugin(plugin);
    c.compile.cache_dir(cache).audit_log(log);
    c
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "xlx"))
        .collect();
    v.sort();
    v
}

fn load_digits(e: &Engine) -> xlaguard::Model {
    let m = e
        .load_file(&common::fixture("digits").join("model.jaxexport"))
        .unwrap();
    let dir = common::fixture("digits");
    let ins = common::numbered(&dir, "in");
    let out = m.run(&[ins[0].view()]).unwrap();
    assert_eq!(out[1].bytes(), common::numbered(&dir, "out")[1].bytes());
    m
}

#[test]
fn hits_tampering_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let log = dir.path().join("audit.jsonl");
    let e = Engine::new(&cached_config(&cache, &log, &common::plugin())).unwrap();
    let key_mode = std::fs::metadata(cache.join("hmac.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    // Miss: compiled in a worker and stored.
    let m = load_digits(&e);
    assert!(!m.info().compile.cache_hit);
    assert!(m.info().compile.worker_pid.is_some());
    let files = entries(&cache);
    assert_eq!(files.len(), 1);
    let entry = files[0].clone();
    // Hit, from another engine on the same cache: no worker involved.
    let e2 = Engine::new(&cached_config(&cache, &log, &common::plugin())).unwrap();
    let m = load_digits(&e2);
    assert!(m.info().compile.cache_hit);
    assert_eq!(m.info().compile.worker_pid, None);
    assert_eq!(e2.compile_stats().started, 0);
    // A flipped byte in the middle of the machine code: refused, logged, recompiled.
    let good = std::fs::read(&entry).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x40;
    std::fs::write(&entry, &bad).unwrap();
    let m = load_digits(&e2);
    assert!(!m.info().compile.cache_hit);
    assert_eq!(e2.compile_stats().cache_rejected, 1);
    // The recompile rewrote a valid entry: the next load hits again.
    assert_eq!(std::fs::read(&entry).unwrap().len(), good.len());
    assert!(load_digits(&e2).info().compile.cache_hit);
    // A truncated entry: refused and recompiled too.
    std::fs::write(&entry, &good[..good.len() - 100]).unwrap();
    assert!(!load_digits(&e2).info().compile.cache_hit);
    assert_eq!(e2.compile_stats().cache_rejected, 2);
    let lines = common::audit_lines(&log);
    let rejected: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "cache_rejected")
        .collect();
    assert_eq!(rejected.len(), 2, "{lines:#?}");
    assert!(rejected[0]["error"]
        .as_str()
        .unwrap()
        .contains("authentication failed"));
    assert!(rejected[1]["error"].as_str().unwrap().contains("truncated"));
    assert_eq!(
        lines.iter().filter(|l| l["event"] == "cache_hit").count(),
        2
    );
    // Every compile record names the plugin by its sha256.
    let start = lines
        .iter()
        .find(|l| l["event"] == "compile_start")
        .unwrap();
    assert_eq!(start["plugin"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(
        start["module"]["inputs"],
        serde_json::json!(["float32[1,64]"])
    );
    assert_eq!(start["module"]["format"], "mlir");
    // The worker's address space is sized from the module: the configured base plus 8 × its
    // size, capped at half of this host's memory (Limits::host_memory_percent).
    let base = start["limits"]["address_space_bytes"].as_u64().unwrap();
    let size = start["module"]["size"].as_u64().unwrap();
    let cap = start["address_space_cap_bytes"].as_u64().unwrap();
    let total_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    let half = total_kib * 1024 / 100 * 50;
    assert!(
        cap.abs_diff(half) < 1 << 20,
        "cap {cap}, half of MemTotal {half}"
    );
    assert_eq!(
        start["address_space_limit_bytes"].as_u64().unwrap(),
        (base + 8 * size).min(cap)
    );
}

#[test]
fn an_entry_from_another_plugin_is_never_used() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let log = dir.path().join("audit.jsonl");
    // "Another plugin": the same library with bytes appended, so another sha256.
    let other = dir.path().join("other_plugin.so");
    let mut bytes = std::fs::read(common::plugin()).unwrap();
    bytes.extend_from_slice(b"another build");
    std::fs::write(&other, &bytes).unwrap();
    drop(bytes);
    let a = Engine::new(&cached_config(&cache, &log, &common::plugin())).unwrap();
    assert!(!load_digits(&a).info().compile.cache_hit);
    let b = Engine::new(&cached_config(&cache, &log, &other)).unwrap();
    // Same module, same options, other plugin: not a hit; compiled anew under its own key.
    let m = load_digits(&b);
    assert!(!m.info().compile.cache_hit);
    assert_eq!(b.compile_stats().cache_hits, 0);
    let files = entries(&cache);
    assert_eq!(files.len(), 2);
    // Plugin A's entry copied over plugin B's name: authentic, but refused as foreign.
    let a_entry = {
        let before: Vec<_> = files.clone();
        // A's entry is the one written first.
        let mut by_time: Vec<_> = before
            .into_iter()
            .map(|p| (std::fs::metadata(&p).unwrap().modified().unwrap(), p))
            .collect();
        by_time.sort();
        by_time[0].1.clone()
    };
    let b_entry = files.iter().find(|p| **p != a_entry).unwrap().clone();
    std::fs::copy(&a_entry, &b_entry).unwrap();
    let m = load_digits(&b);
    assert!(!m.info().compile.cache_hit);
    assert_eq!(b.compile_stats().cache_rejected, 1);
    let lines = common::audit_lines(&log);
    let r = lines
        .iter()
        .find(|l| l["event"] == "cache_rejected")
        .unwrap();
    assert!(r["error"].as_str().unwrap().contains("another key"), "{r}");
}
