//! Process execution vs in-process, in one run (ratios; noisy VM): per-call latency of the same
//! model run in this process and through its jailed execution worker, interleaved call by call
//! so drift hits both alike, for tiny and digits; then throughput with 8 client threads.
//!
//! `cargo bench --bench exec` (`ITERS=3000 CLIENTS=8 SECONDS=3 WORKERS=2
//! MODELS=tiny,digits,keras_mobilenet` to change: any `hlo/` folder with `in*.npy`, or a path
//! to such a folder).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xlaguard::{Engine, EngineConfig, Execution, Model, Tensor, TensorRef};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn inputs(dir: &std::path::Path) -> Vec<Tensor> {
    (0..)
        .map(|i| dir.join(format!("in{i}.npy")))
        .take_while(|p| p.is_file())
        .map(|p| Tensor::read_npy(&p).expect("input"))
        .collect()
}

/// Calls per second from `clients` threads for `secs` seconds.
fn throughput(m: &Arc<Model>, x: &Arc<Vec<Tensor>>, clients: usize, secs: u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (m, x, stop, calls) = (m.clone(), x.clone(), stop.clone(), calls.clone());
            std::thread::spawn(move || {
                let v: Vec<TensorRef<'_>> = x.iter().map(Tensor::view).collect();
                while !stop.load(Ordering::Relaxed) {
                    m.run(&v).expect("run");
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    calls.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let iters = env("ITERS", 3000);
    let clients = env("CLIENTS", 8);
    let secs = env("SECONDS", 3) as u64;
    let workers = env("WORKERS", 2);
    let mut c = EngineConfig::default();
    c.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"));
    c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    let engine = Engine::new(&c).expect("engine");
    let models = std::env::var("MODELS").unwrap_or_else(|_| "tiny,digits,keras_mobilenet".into());
    for name in models.split(',') {
        // A folder of hlo/, or a path to one.
        let dir = root.join("hlo").join(name);
        let file = dir.join("model.jaxexport");
        let local = engine.load_file(&file).unwrap();
        let mut remote = engine.load_file(&file).unwrap();
        remote
            .set_execution(Execution::Process, workers, None)
            .unwrap();
        remote.start_execution().unwrap();
        let x = inputs(&dir);
        let v: Vec<TensorRef<'_>> = x.iter().map(Tensor::view).collect();
        assert_eq!(
            local.run(&v).unwrap()[0].bytes(),
            remote.run(&v).unwrap()[0].bytes()
        );
        for _ in 0..200 {
            local.run(&v).unwrap();
            remote.run(&v).unwrap();
        }
        let (mut a, mut b) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
        for _ in 0..iters {
            let t = Instant::now();
            local.run(&v).unwrap();
            a.push(t.elapsed());
            let t = Instant::now();
            remote.run(&v).unwrap();
            b.push(t.elapsed());
        }
        let (a, b) = (median(a), median(b));
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let bytes: usize = x.iter().map(|t| t.bytes().len()).sum();
        println!(
            "{name}: per call in-process {:.1} us, process {:.1} us: ratio {:.2}, added {:.1} us \
             ({bytes} input bytes, median of {iters} interleaved calls)",
            us(a),
            us(b),
            b.as_secs_f64() / a.as_secs_f64(),
            us(b) - us(a)
        );
        let x = Arc::new(x);
        let local = Arc::new(local);
        let remote = Arc::new(remote);
        let tl = throughput(&local, &x, clients, secs);
        let tr = throughput(&remote, &x, clients, secs);
        println!(
            "{name}: {clients} clients, {secs} s each: in-process {tl:.0}/s, process ({workers} \
             workers) {tr:.0}/s: ratio {:.2}",
            tr / tl
        );
    }
}
