//! The models people actually export — Keras 3 applications, keras_hub transformers, Flax
//! (nnx, linen), Equinox; a model whose own computation makes NaNs before max/min/argmax;
//! complex64/complex128; typed PRNG keys — give JAX's outputs bit for bit (hlo/export_models.py
//! wrote JAX's outputs) through the library, `xlaguard run`, and `serve` (JSON and binary).
#![cfg(feature = "server")]

mod common;
mod serving;

use serde_json::{json, Value};
use xlaguard::{DType, Tensor, TensorRef};

use common::{assert_bit_equal, cli_run, engine, fixture, numbered, xlaguard_cmd};
use serving::*;

const MODELS: &[&str] = &[
    "keras_mobilenet",
    "keras_hub_bert",
    "keras_hub_gpt2",
    "flax_nnx",
    "flax_linen",
    "equinox_mlp",
    "equinox_attention",
    "nan_max",
    "complex_fft",
    "complex128",
    "prng_key",
    "prng_keys",
];

#[test]
fn library_gives_jax_outputs_bit_for_bit() {
    for model in MODELS {
        let dir = fixture(model);
        let m = engine()
            .load_file(&dir.join("model.jaxexport"))
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        let inputs = numbered(&dir, "in");
        let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
        let got = m.run(&views).unwrap_or_else(|e| panic!("{model}: {e}"));
        assert_bit_equal(&format!("{model} (library)"), &got, &numbered(&dir, "out"));
    }
}

#[test]
fn nan_made_by_the_model_survives_max_and_min() {
    // JAX keeps NaN through reductions (xla_cpu_enable_fast_min_max = false in the options it
    // sends); XLA's default would turn `min` over a NaN row into a number.
    let dir = fixture("nan_max");
    let m = engine().load_file(&dir.join("model.jaxexport")).unwrap();
    let names: Vec<&str> = m
        .signature()
        .outputs
        .iter()
        .map(|o| o.name.as_str())
        .collect();
    let inputs = numbered(&dir, "in");
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    let got = m.run(&views).unwrap();
    for name in ["max", "min"] {
        let k = names.iter().position(|n| *n == name).unwrap();
        let nans = got[k]
            .to_array::<f32>()
            .unwrap()
            .iter()
            .filter(|x| x.is_nan())
            .count();
        assert_eq!(nans, 4, "output {name}: rows with a NaN must stay NaN");
    }
    assert!(inputs[0]
        .to_array::<f32>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite()));
}

#[test]
fn cli_run_gives_jax_outputs_bit_for_bit() {
    for model in MODELS {
        let dir = fixture(model);
        let got = cli_run(&dir.join("model.jaxexport"), &dir);
        assert_bit_equal(&format!("{model} (run)"), &got, &numbered(&dir, "out"));
    }
}

#[test]
fn inspect_names_key_and_complex_types() {
    let r = xlaguard_cmd()
        .args(["inspect", "hlo/prng_keys/model.jaxexport"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("uint32[3,2] (key<fry>[3])"), "{text}");
    let r = xlaguard_cmd()
        .args(["inspect", "--json", "hlo/complex_fft/model.jaxexport"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["inputs"][1]["dtype"], "complex64");
    assert_eq!(v["outputs"][1]["dtype"], "complex64");
}

/// A complex tensor as the wire carries it: its part type with a trailing dimension of 2.
fn wire_view(t: &Tensor) -> Tensor {
    match t.dtype().complex_part() {
        Some(part) => {
            let mut shape = t.shape().to_vec();
            shape.push(2);
            Tensor::new(part, shape, t.bytes().to_vec()).unwrap()
        }
        None => t.clone(),
    }
}

/// JSON cannot carry a NaN's sign or payload ("NaN"): compare floats with every NaN equal.
fn json_equal(dtype: DType, got: &[u8], expected: &[u8]) -> bool {
    match dtype {
        DType::F32 => {
            got.chunks_exact(4)
                .zip(expected.chunks_exact(4))
                .all(|(g, e)| {
                    let (g, e) = (
                        f32::from_le_bytes(g.try_into().unwrap()),
                        f32::from_le_bytes(e.try_into().unwrap()),
                    );
                    g.to_bits() == e.to_bits() || (g.is_nan() && e.is_nan())
                })
                && got.len() == expected.len()
        }
        _ => got == expected,
    }
}

#[test]
fn serve_gives_jax_outputs_in_json_and_binary() {
    let server = serve_fixtures(MODELS);
    let addr = server.addr;
    for model in MODELS {
        let dir = fixture(model);
        let meta = get(addr, &format!("/v2/models/{model}")).json();
        let inputs: Vec<Tensor> = numbered(&dir, "in").iter().map(wire_view).collect();
        let expected: Vec<Tensor> = numbered(&dir, "out").iter().map(wire_view).collect();
        // Metadata shows each input as it travels: complex as FP32/FP64 [..., 2].
        for (i, t) in inputs.iter().enumerate() {
            assert_eq!(
                meta["inputs"][i]["datatype"],
                datatype(t.dtype()),
                "{model}"
            );
            assert_eq!(meta["inputs"][i]["shape"], json!(t.shape()), "{model}");
        }
        let names = served_input_names(addr, model);
        let v = infer_json(addr, model, &names, &inputs);
        for (k, e) in expected.iter().enumerate() {
            let o = &v["outputs"][k];
            assert_eq!(o["datatype"], datatype(e.dtype()), "{model} out{k}");
            assert_eq!(o["shape"], json!(e.shape()), "{model} out{k}");
            let got = bytes_of_json(e.dtype(), &o["data"]);
            assert!(
                json_equal(e.dtype(), &got, e.bytes()),
                "{model} out{k} (JSON) differs from JAX"
            );
        }
        let want: Vec<u8> = expected.iter().flat_map(|t| t.bytes().to_vec()).collect();
        assert!(
            infer_binary(addr, model, &names, &inputs) == want,
            "{model}: binary outputs differ from JAX's"
        );
    }
}
