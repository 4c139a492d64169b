//! Shape-polymorphic models against their static equivalent, in one run (ratios; this VM is
//! noisy). The static equivalent is the polymorphic module refined at the same shape by the
//! same refiner: exactly what a static export at that shape compiles to, minus JAX's shape
//! assertions.
//!
//! - refine + compile for a new shape (jailed worker: refiner load, refine, compile) vs
//!   compiling the static module (jailed worker); goal ≤ 1.2×;
//! - first request at a new shape (includes the compile) vs a request at a compiled shape;
//! - steady state at b = 8: the polymorphic model vs the static one; goal: equal within noise.
//!
//! `cargo bench --bench poly` (`MODEL=hlo/poly_keras_cnn B=8 ITERS=300` to change).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xlaguard::{Engine, EngineConfig, Tensor, TensorRef};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var("MODEL").unwrap_or_else(|_| "hlo/poly_keras_cnn".into());
    let b: u64 = std::env::var("B")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let dir = root.join(&model);
    let mut c = EngineConfig::default();
    c.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"));
    c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    let engine = Engine::new(&c).expect("engine");

    let poly = engine
        .load_file(&dir.join("model.jaxexport"))
        .expect("load");
    let sig = poly.signature().clone();
    // Inputs at b: the fixture's own size folder when it has one, else zeros.
    let shapes: Vec<Vec<u64>> = sig
        .inputs
        .iter()
        .map(|s| {
            s.shape
                .iter()
                .map(|d| match d {
                    xlaguard::Dim::Static(n) => *n,
                    xlaguard::Dim::Symbolic(_) => b,
                })
                .collect()
        })
        .collect();
    let inputs: Vec<Tensor> = sig
        .inputs
        .iter()
        .zip(&shapes)
        .map(|(s, sh)| {
            let n: u64 = sh.iter().product();
            Tensor::new(
                s.dtype,
                sh.clone(),
                vec![0u8; usize::try_from(n).unwrap() * s.dtype.size()],
            )
            .unwrap()
        })
        .collect();
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();

    // The static equivalent: the same module refined at these shapes.
    let refiner =
        xlaguard::refine::Refiner::load(&root.join(xlaguard::plugin::THIRD_PARTY_REFINER))
            .expect("refiner (scripts/fetch-plugin.sh --refiner-only)");
    let exported = xlaguard::artifact::load_file(&dir.join("model.jaxexport")).unwrap();
    let types: Vec<String> = sig
        .inputs
        .iter()
        .zip(&shapes)
        .map(|(s, sh)| s.dtype.mlir_tensor_type(sh))
        .collect();
    let (ma, mi, pa) = refiner.version();
    let refined = refiner
        .refine(&exported.program, &types, &format!("{ma}.{mi}.{pa}"))
        .expect("refine");

    let mut static_compile = Vec::new();
    let mut poly_compile = Vec::new();
    let mut first_request = Vec::new();
    let mut cached_request = Vec::new();
    let mut static_model = None;
    for _ in 0..3 {
        let t = Instant::now();
        static_model = Some(engine.load_bytes(&refined).expect("static compile"));
        static_compile.push(t.elapsed());

        let fresh = engine.load_file(&dir.join("model.jaxexport")).unwrap();
        let refs: Vec<&[u64]> = shapes.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        fresh.specialize(&refs).expect("refine + compile");
        poly_compile.push(t.elapsed());

        let fresh = engine.load_file(&dir.join("model.jaxexport")).unwrap();
        let t = Instant::now();
        fresh.run(&views).expect("first request");
        first_request.push(t.elapsed());
        let t = Instant::now();
        fresh.run(&views).expect("cached request");
        cached_request.push(t.elapsed());
    }
    let static_model = static_model.unwrap();
    poly.run(&views).unwrap();
    static_model.run(&views).unwrap();
    let (mut p, mut s) = (Vec::new(), Vec::new());
    for _ in 0..iters {
        let t = Instant::now();
        poly.run(&views).unwrap();
        p.push(t.elapsed());
        let t = Instant::now();
        static_model.run(&views).unwrap();
        s.push(t.elapsed());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (sc, pc) = (median(static_compile), median(poly_compile));
    let (fr, cr) = (median(first_request), median(cached_request));
    let (pr, sr) = (median(p), median(s));
    println!("model {model}, b = {b} (medians; compiles: 3 runs, requests: {iters} runs)");
    println!(
        "refine + compile a new shape: {:.1} ms; static compile: {:.1} ms; ratio {:.2}",
        ms(pc),
        ms(sc),
        pc.as_secs_f64() / sc.as_secs_f64()
    );
    println!(
        "first request at a new shape: {:.1} ms; at a compiled shape: {:.3} ms",
        ms(fr),
        ms(cr)
    );
    println!(
        "steady state: polymorphic {:.3} ms; static {:.3} ms; ratio {:.3}",
        ms(pr),
        ms(sr),
        pr.as_secs_f64() / sr.as_secs_f64()
    );
}
