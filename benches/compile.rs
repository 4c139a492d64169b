//! Compile cost by isolation, on the digits model: in-process, in a jailed worker (with a warm
//! spare, and cold), and a cache hit. Prints medians and the ratios the README quotes.
//!
//! `cargo bench --bench compile` (CARGO_BUILD_JOBS=1 on small machines); `ITERS=N` to change
//! the number of timed loads per mode (default 15).

use std::path::Path;
use std::time::{Duration, Instant};

use xlaguard::artifact::{self, Artifact};
use xlaguard::compile::Isolation;
use xlaguard::{Engine, EngineConfig};

/// `$XLAGUARD_PLUGIN` / `$XLAGUARD_WORKER_EXE` override the pinned plugin and the built
/// binary (to run the bench binary on another machine).
fn config(root: &Path) -> EngineConfig {
    let mut c = EngineConfig::default();
    match std::env::var_os("XLAGUARD_PLUGIN") {
        Some(p) => c.plugin(p),
        None => c.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so")),
    };
    match std::env::var_os("XLAGUARD_WORKER_EXE") {
        Some(p) => c.compile.worker_exe(p),
        None => c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard")),
    };
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times one load; returns (wall ms, compile ms inside the worker if any).
fn time_load(e: &Engine, a: &Artifact) -> (f64, Option<f64>) {
    let t = Instant::now();
    let m = e.load_artifact(a.clone()).unwrap();
    let wall = t.elapsed().as_secs_f64() * 1e3;
    (wall, m.info().compile.worker.as_ref().map(|w| w.compile_ms))
}

fn main() {
    // Criterion-style arguments (`--bench`) are ignored.
    let root_dir = std::env::var_os("XLAGUARD_ROOT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    let root = root_dir.as_path();
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let bytes = std::fs::read(root.join("hlo/digits/model.jaxexport")).unwrap();
    let a = artifact::load(&bytes).unwrap();
    let pause = Duration::from_millis(400);

    let mut c = config(root);
    c.compile.isolation(Isolation::Thread);
    let thread = Engine::new(&c).unwrap();
    let warm = Engine::new(&config(root)).unwrap();
    let mut c = config(root);
    c.compile.spare_workers = 0;
    let cold = Engine::new(&c).unwrap();
    let mut c = config(root);
    c.compile.warm_up_workers = false;
    let no_warm_up = Engine::new(&c).unwrap();
    let dir = std::env::temp_dir().join(format!("xlaguard-bench-cache-{}", std::process::id()));
    let mut c = config(root);
    c.compile.cache_dir(&dir);
    let cached = Engine::new(&c).unwrap();
    // Untimed warm-up of each (and the cache entry).
    for e in [&thread, &warm, &cold, &no_warm_up, &cached] {
        e.load_artifact(a.clone()).unwrap();
    }
    // Interleaved, so that load from other processes affects every mode alike; the pause lets
    // the warm engine's next spare worker start outside the timed region.
    let (mut t_in, mut t_warm, mut t_cold, mut t_hit, mut worker_compile) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut t_nowarm = Vec::new();
    for _ in 0..iters {
        std::thread::sleep(pause);
        t_in.push(time_load(&thread, &a).0);
        std::thread::sleep(pause);
        let (w, c) = time_load(&warm, &a);
        t_warm.push(w);
        worker_compile.extend(c);
        std::thread::sleep(pause);
        t_cold.push(time_load(&cold, &a).0);
        std::thread::sleep(pause);
        t_nowarm.push(time_load(&no_warm_up, &a).0);
        t_hit.push(time_load(&cached, &a).0);
    }
    assert!(cached.compile_stats().cache_hits >= iters as u64);
    let _ = std::fs::remove_dir_all(&dir);
    let (inproc, worker_warm, worker_cold, hit) =
        (median(t_in), median(t_warm), median(t_cold), median(t_hit));
    let worker_nowarm = median(t_nowarm);

    let in_worker = median(worker_compile);
    println!("digits model, median of {iters} loads (load_artifact: compile + load + signature)");
    println!("  in-process compile (thread isolation):      {inproc:8.1} ms");
    println!(
        "  jailed worker, warm spare:                   {worker_warm:8.1} ms  ({:+.1}% vs in-process; compile inside the worker {in_worker:.1} ms)",
        (worker_warm / inproc - 1.0) * 100.0
    );
    println!(
        "  jailed worker, spare without warm-up:        {worker_nowarm:8.1} ms  ({:+.1}%)",
        (worker_nowarm / inproc - 1.0) * 100.0
    );
    println!(
        "  jailed worker, cold (start + jail + plugin): {worker_cold:8.1} ms  ({:+.1}%)",
        (worker_cold / inproc - 1.0) * 100.0
    );
    println!(
        "  cache hit (HMAC check + deserialize):        {hit:8.1} ms  ({:.1}% of the in-process compile)",
        hit / inproc * 100.0
    );
    println!(
        "{}",
        serde_json::json!({
            "inproc_ms": inproc,
            "worker_warm_ms": worker_warm,
            "worker_cold_ms": worker_cold,
            "worker_no_warm_up_ms": worker_nowarm,
            "worker_inner_compile_ms": in_worker,
            "cache_hit_ms": hit,
            "worker_overhead_pct": (worker_warm / inproc - 1.0) * 100.0,
            "cache_hit_pct": hit / inproc * 100.0,
            "iters": iters,
        })
    );
}
