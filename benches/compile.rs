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

fn config(root: &Path) -> EngineConfig {
    let mut c = EngineConfig::default();
    c.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"));
    c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    c
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `iters` loads; `pause` lets background work (a spare worker starting) finish between
/// loads, outside the timed region.
fn time_loads(e: &Engine, a: &Artifact, iters: usize, pause: Duration) -> (f64, Vec<f64>) {
    let mut wall = Vec::new();
    let mut compile_ms = Vec::new();
    // One untimed warm-up.
    e.load_artifact(a.clone()).unwrap();
    for _ in 0..iters {
        std::thread::sleep(pause);
        let t = Instant::now();
        let m = e.load_artifact(a.clone()).unwrap();
        wall.push(t.elapsed().as_secs_f64() * 1e3);
        if let Some(w) = &m.info().compile.worker {
            compile_ms.push(w.compile_ms);
        }
    }
    (median(wall), compile_ms)
}

fn main() {
    // Criterion-style arguments (`--bench`) are ignored.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
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
    let (inproc, _) = time_loads(&thread, &a, iters, pause);

    let warm = Engine::new(&config(root)).unwrap();
    let (worker_warm, worker_compile) = time_loads(&warm, &a, iters, pause);

    let mut c = config(root);
    c.compile.spare_workers = 0;
    let cold = Engine::new(&c).unwrap();
    let (worker_cold, _) = time_loads(&cold, &a, iters, pause);

    let dir = std::env::temp_dir().join(format!("xlaguard-bench-cache-{}", std::process::id()));
    let mut c = config(root);
    c.compile.cache_dir(&dir);
    let cached = Engine::new(&c).unwrap();
    cached.load_artifact(a.clone()).unwrap();
    let (hit, _) = time_loads(&cached, &a, iters, Duration::ZERO);
    assert!(cached.compile_stats().cache_hits as usize > iters);
    let _ = std::fs::remove_dir_all(&dir);

    let in_worker = median(worker_compile);
    println!("digits model, median of {iters} loads (load_artifact: compile + load + signature)");
    println!("  in-process compile (thread isolation):      {inproc:8.1} ms");
    println!(
        "  jailed worker, warm spare:                   {worker_warm:8.1} ms  ({:+.1}% vs in-process; compile inside the worker {in_worker:.1} ms)",
        (worker_warm / inproc - 1.0) * 100.0
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
            "worker_inner_compile_ms": in_worker,
            "cache_hit_ms": hit,
            "worker_overhead_pct": (worker_warm / inproc - 1.0) * 100.0,
            "cache_hit_pct": hit / inproc * 100.0,
            "iters": iters,
        })
    );
}
