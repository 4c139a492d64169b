//! Raw PJRT execute (inputs resident on the device) against a validated execute (signature
//! checks + host-to-device copy + execute), and a full run (+ outputs back to the host), for
//! the tiny and the digits models. `benches/vs_jax.py` compares the same numbers with JAX.

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use xlaguard::{Engine, EngineConfig, Tensor, TensorRef};

fn bench(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = EngineConfig::default();
    cfg.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"));
    cfg.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    let engine = Engine::new(&cfg).expect("run scripts/fetch-plugin.sh first");
    for name in ["tiny", "digits"] {
        let dir = root.join("hlo").join(name);
        let m = engine.load_file(&dir.join("model.jaxexport")).unwrap();
        let inputs: Vec<Tensor> = (0..m.signature().inputs.len())
            .map(|i| Tensor::read_npy(&dir.join(format!("in{i}.npy"))).unwrap())
            .collect();
        let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
        let resident = m.upload(&views).unwrap();
        let refs: Vec<_> = resident.iter().collect();
        let mut g = c.benchmark_group(name);
        g.bench_function("raw_execute", |b| {
            b.iter(|| m.execute_buffers(&refs).unwrap())
        });
        g.bench_function("validated_execute", |b| {
            b.iter(|| m.execute(&views).unwrap())
        });
        g.bench_function("full_run", |b| b.iter(|| m.run(&views).unwrap()));
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
