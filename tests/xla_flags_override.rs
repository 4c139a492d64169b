//! `XLA_FLAGS` still overrides the compile options (its own process: the variable is
//! process-wide). With `--xla_cpu_enable_fast_min_max=true` — XLA's default when a client
//! sends no DebugOptions, and what xlaguard did before it sent JAX's — `min` over a row holding
//! a NaN the model computed returns a number, so `nan_max` no longer matches JAX: the parity of
//! `tests/parity.rs` is the options' doing, not luck.

mod common;

use xlaguard::{Engine, Tensor, TensorRef};

#[test]
fn fast_min_max_from_xla_flags_drops_the_nan() {
    std::env::set_var("XLA_FLAGS", "--xla_cpu_enable_fast_min_max=true");
    let engine = Engine::new(&common::config()).unwrap();
    let dir = common::fixture("nan_max");
    let m = engine.load_file(&dir.join("model.jaxexport")).unwrap();
    let k = m
        .signature()
        .outputs
        .iter()
        .position(|o| o.name == "min")
        .unwrap();
    let inputs = common::numbered(&dir, "in");
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    let got = m.run(&views).unwrap();
    let expected = common::numbered(&dir, "out");
    let nan = |t: &Tensor| {
        t.to_array::<f32>()
            .unwrap()
            .iter()
            .filter(|x| x.is_nan())
            .count()
    };
    assert_eq!(nan(&expected[k]), 4, "JAX's min keeps four NaN rows");
    assert!(
        nan(&got[k]) < 4,
        "with fast min/max the NaN rows should become numbers"
    );
}
