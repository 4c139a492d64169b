//! Weights bound server-side vs sent with every call vs baked in, in one run (ratios; noisy VM):
//! the same exported module, once with every weight passed as an input on each call, once with
//! its params bound (`Model::bind`: resident device buffers, the caller gives only `x`), and
//! once with them baked in as constants (`Engine::load_baked`: what an export with baked weights
//! gives). The three are interleaved call by call, so drift hits them alike.
//!
//! `cargo bench --bench params` (`MODEL=hlo/params_mobilenet ITERS=2000` to change).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use xlaguard::{Engine, EngineConfig, Params, Tensor, TensorRef};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let model = std::env::var("MODEL").unwrap_or_else(|_| "hlo/params_flax".into());
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let dir = root.join(&model);
    let mut c = EngineConfig::default();
    c.plugin(root.join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so"));
    c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    let engine = Engine::new(&c).expect("engine");
    let file = ["params.safetensors", "params.npz"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .expect("a params file");
    let params = Params::read(&file).expect("params");
    let x = Tensor::read_npy(&dir.join("in0.npy")).expect("x");

    let all = engine.load_file(&dir.join("model.jaxexport")).unwrap();
    let inputs: Vec<Tensor> = all
        .signature()
        .inputs
        .iter()
        .map(|s| params.get(&s.name).cloned().unwrap_or_else(|| x.clone()))
        .collect();
    let all_views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();

    let t = Instant::now();
    let mut bound = engine.load_file(&dir.join("model.jaxexport")).unwrap();
    let report = bound.bind(&params).unwrap();
    let load_bind = t.elapsed();
    let t = Instant::now();
    let artifact = xlaguard::artifact::load_file(&dir.join("model.jaxexport")).unwrap();
    let (baked, _) = engine.load_baked(artifact, &params, None).unwrap();
    let load_bake = t.elapsed();
    let xv = [x.view()];
    assert_eq!(
        all.run(&all_views).unwrap()[0].bytes(),
        bound.run(&xv).unwrap()[0].bytes()
    );
    let (mut a, mut b, mut c) = (
        Vec::with_capacity(iters),
        Vec::with_capacity(iters),
        Vec::with_capacity(iters),
    );
    for _ in 0..iters {
        let t = Instant::now();
        all.run(&all_views).unwrap();
        a.push(t.elapsed());
        let t = Instant::now();
        bound.run(&xv).unwrap();
        b.push(t.elapsed());
        let t = Instant::now();
        baked.run(&xv).unwrap();
        c.push(t.elapsed());
    }
    let (a, b, c) = (median(a), median(b), median(c));
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "model {model}: {} bound tensors, {} bytes ({report})",
        params.tensors().len(),
        params
            .tensors()
            .iter()
            .map(|(_, t)| t.bytes().len())
            .sum::<usize>()
    );
    println!(
        "load + compile + bind: {:.1} ms; load + compile + bind + compile baked: {:.1} ms",
        load_bind.as_secs_f64() * 1e3,
        load_bake.as_secs_f64() * 1e3
    );
    println!(
        "per call (median of {iters}): weights sent {:.1} us; bound {:.1} us; baked {:.1} us; \
         bound / sent {:.2}; bound / baked {:.2}",
        us(a),
        us(b),
        us(c),
        b.as_secs_f64() / a.as_secs_f64(),
        b.as_secs_f64() / c.as_secs_f64()
    );
}
