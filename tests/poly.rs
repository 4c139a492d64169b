//! Shape-polymorphic exports (`hlo/export_poly.py`: a Keras CNN with `(b, 32, 32, 3)`, a
//! keras_hub BERT with `(b, s)` and `s <= 16`, `2*b` and `b + 1` dimensions, dict inputs and
//! outputs, a Flax transformer with `(b, s, 32)`), refined per concrete shape in the jailed
//! compile worker and compiled: every size gives JAX's outputs bit for bit through the
//! library, `run` and `serve`; bad shapes get typed errors naming what disagrees.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use xlaguard::validate::InputError;
use xlaguard::{Engine, Error, Tensor, TensorRef};

use common::{assert_bit_equal, cli_run, config, engine, fixture, numbered, xlaguard_cmd};
use serving::*;

const MODELS: &[&str] = &[
    "poly_keras_cnn",
    "poly_bert",
    "poly_twice",
    "poly_affine",
    "poly_dict",
    "poly_seq_flax",
];

fn meta(model: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(model).join("meta.json")).unwrap())
        .unwrap()
}

/// Each size folder of a fixture: `(tag, folder)`.
fn sizes(model: &str) -> Vec<(String, PathBuf)> {
    meta(model)["sizes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let tag = s["tag"].as_str().unwrap().to_string();
            let dir = fixture(model).join("sizes").join(&tag);
            (tag, dir)
        })
        .collect()
}

fn run(m: &xlaguard::Model, dir: &Path) -> Result<Vec<Tensor>, Error> {
    let inputs = numbered(dir, "in");
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    m.run(&views)
}

#[test]
fn every_size_matches_jax_through_the_library() {
    for model in MODELS {
        let m = engine()
            .load_file(&fixture(model).join("model.jaxexport"))
            .unwrap_or_else(|e| panic!("{model}: {e}"));
        assert!(m.is_polymorphic(), "{model}");
        let sizes = sizes(model);
        assert!(sizes.len() >= 3, "{model}: {} sizes", sizes.len());
        for (tag, dir) in &sizes {
            let got = run(&m, dir).unwrap_or_else(|e| panic!("{model} {tag}: {e}"));
            assert_bit_equal(&format!("{model} {tag}"), &got, &numbered(dir, "out"));
        }
        // One executable per concrete shape, reused on a second call.
        assert_eq!(m.compiled_shapes().len(), sizes.len(), "{model}");
        let (tag, dir) = &sizes[0];
        let again = run(&m, dir).unwrap();
        assert_bit_equal(
            &format!("{model} {tag} again"),
            &again,
            &numbered(dir, "out"),
        );
        assert_eq!(m.compiled_shapes().len(), sizes.len(), "{model}");
    }
}

#[test]
fn a_violated_constraint_gets_jaxs_own_message() {
    let m = engine()
        .load_file(&fixture("poly_bert").join("model.jaxexport"))
        .unwrap();
    let v = &meta("poly_bert")["violation"];
    let e = run(&m, &fixture("poly_bert").join(v["dir"].as_str().unwrap())).unwrap_err();
    let Error::InvalidInput(InputError::Constraint { message }) = &e else {
        panic!("expected a constraint error, got {e:?}")
    };
    assert_eq!(message, v["error"].as_str().unwrap());
    // The model keeps serving good sizes.
    let (_, dir) = &sizes("poly_bert")[0];
    assert_bit_equal(
        "poly_bert after",
        &run(&m, dir).unwrap(),
        &numbered(dir, "out"),
    );
}

#[test]
fn dimension_variables_must_agree_across_inputs() {
    let m = engine()
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap();
    let x = numbered(&fixture("poly_twice").join("sizes/b5"), "in");
    let y = numbered(&fixture("poly_twice").join("sizes/b2"), "in");
    // x: f32[b, 4] with b = 5; y: f32[2*b, 4] from b = 2 (4 rows, not 10).
    let e = m.run(&[x[0].view(), y[1].view()]).unwrap_err();
    let Error::InvalidInput(InputError::Dimensions { message, .. }) = &e else {
        panic!("{e:?}")
    };
    assert_eq!(
        message,
        &format!(
            "input '{}' (1): dimension 0 is 2*b = 10 (b = 5 from input '{}' (0)), got 4",
            m.signature().inputs[1].name,
            m.signature().inputs[0].name
        )
    );
    // poly_bert: every input is (b, s); one with another b.
    let bert = engine()
        .load_file(&fixture("poly_bert").join("model.jaxexport"))
        .unwrap();
    let a = numbered(&fixture("poly_bert").join("sizes/b5_s12"), "in");
    let b = numbered(&fixture("poly_bert").join("sizes/b2_s16"), "in");
    let e = bert
        .run(&[a[0].view(), a[1].view(), b[2].view()])
        .unwrap_err()
        .to_string();
    let n = |i: usize| bert.signature().inputs[i].name.clone();
    assert_eq!(
        e,
        format!(
            "input '{}' (2): dimension b = 2 but input '{}' (0) has b = 5",
            n(2),
            n(0)
        )
    );
    // Rank and dtype are still checked first, against the symbolic type.
    let e = m.run(&[y[1].view(), x[0].view()]).unwrap_err().to_string();
    assert!(e.contains("got"), "{e}");
    let bad = Tensor::from_slice(&[5], &[0f32; 5]).unwrap();
    let e = m.run(&[bad.view(), y[1].view()]).unwrap_err().to_string();
    assert!(e.contains("expected float32[b,4], got float32[5]"), "{e}");
}

#[test]
fn policy_dims_bound_the_dimension_variables() {
    let mut p = xlaguard::Policy::new();
    p.dim("b", 4).dim_min("s", 10);
    let m = engine()
        .load_file(&fixture("poly_bert").join("model.jaxexport"))
        .unwrap()
        .with_policy(p)
        .unwrap();
    // b = 5 > 4.
    let e = run(&m, &fixture("poly_bert").join("sizes/b5_s12")).unwrap_err();
    assert!(matches!(e, Error::PolicyViolation(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("dimension 'b' (axis 0) is 5, above its bound 4"),
        "{e}"
    );
    // s = 8 < 10.
    let e = run(&m, &fixture("poly_bert").join("sizes/b1_s8")).unwrap_err();
    assert!(
        e.to_string()
            .contains("dimension 's' (axis 1) is 8, below its minimum 10"),
        "{e}"
    );
    // Within both bounds: runs (b = 2, s = 16).
    let dir = fixture("poly_bert").join("sizes/b2_s16");
    assert_bit_equal(
        "poly_bert b2_s16",
        &run(&m, &dir).unwrap(),
        &numbered(&dir, "out"),
    );
    // Nothing was compiled for the refused shapes.
    assert_eq!(m.compiled_shapes(), vec![vec![vec![2, 16]; 3]]);
    // A bound on a variable the model does not have is refused at bind.
    let mut p = xlaguard::Policy::new();
    p.dim("t", 4);
    let e = engine()
        .load_file(&fixture("poly_bert").join("model.jaxexport"))
        .unwrap()
        .with_policy(p)
        .unwrap_err();
    assert!(e.to_string().contains("b, s"), "{e}");
}

#[test]
fn a_missing_or_corrupt_refiner_is_a_typed_error() {
    let mut c = config();
    c.compile.refiner = Some("/nonexistent/libTorchMLIRAggregateCAPI.so".into());
    let e = Engine::new(&c).unwrap();
    let err = e
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("scripts/fetch-plugin.sh --refiner-only") && msg.contains("does not exist"),
        "{msg}"
    );
    // A file that is not the library: the load (whose jailed worker reads the module's names
    // with the refiner) fails with a typed error naming it; the engine goes on.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libTorchMLIRAggregateCAPI.so");
    std::fs::write(&junk, b"\x7fELF not really").unwrap();
    let mut c = config();
    c.compile.refiner = Some(junk.clone());
    let e = Engine::new(&c).unwrap();
    let err = e
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap_err();
    assert!(matches!(err, Error::CompileRejected(_)), "{err:?}");
    assert!(err.to_string().contains(junk.to_str().unwrap()), "{err}");
    let tiny = e
        .load_file(&fixture("tiny").join("model.jaxexport"))
        .unwrap();
    assert_eq!(tiny.signature().inputs.len(), 2);
    // In-process compiles never load the refiner.
    let mut c = config();
    c.compile.isolation(xlaguard::compile::Isolation::Thread);
    let e = Engine::new(&c).unwrap();
    let m = e
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap();
    let err = run(&m, &fixture("poly_twice").join("sizes/b2")).unwrap_err();
    assert!(err.to_string().contains("jailed compile workers"), "{err}");
}

#[test]
fn executables_per_shape_are_bounded_and_cached_on_disk() {
    let cache = tempfile::tempdir().unwrap();
    let mut c = config();
    c.compile.cache_dir = Some(cache.path().to_path_buf());
    c.shapes.max_entries = 2;
    let e = Engine::new(&c).unwrap();
    let m = e
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap();
    for (tag, dir) in sizes("poly_twice") {
        assert_bit_equal(&tag, &run(&m, &dir).unwrap(), &numbered(&dir, "out"));
    }
    // Three shapes ran; two are kept, the least recently used went.
    let kept: Vec<u64> = m.compiled_shapes().iter().map(|s| s[0][0]).collect();
    assert_eq!(kept, [2, 5]);
    // One cache entry per shape; a second engine on the same cache loads them.
    let entries = std::fs::read_dir(cache.path())
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains("key")
        })
        .count();
    assert!(entries >= 3, "{entries} cache entries");
    let e2 = Engine::new(&c).unwrap();
    let m2 = e2
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap();
    let shape = [vec![1u64, 4], vec![2, 4]];
    let refs: Vec<&[u64]> = shape.iter().map(Vec::as_slice).collect();
    let s = m2.specialize(&refs).unwrap();
    assert!(s.info().compile.cache_hit, "{:?}", s.info().compile);
    let dir = fixture("poly_twice").join("sizes/b1");
    assert_bit_equal(
        "b1 from cache",
        &run(&m2, &dir).unwrap(),
        &numbered(&dir, "out"),
    );
}

#[test]
fn cli_run_and_inspect() {
    for model in MODELS {
        let (tag, dir) = sizes(model).pop().unwrap();
        let got = cli_run(&fixture(model).join("model.jaxexport"), &dir);
        assert_bit_equal(
            &format!("{model} {tag} (run)"),
            &got,
            &numbered(&dir, "out"),
        );
    }
    let r = xlaguard_cmd()
        .args(["inspect", "hlo/poly_twice/model.jaxexport"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{text}");
    // Positional names come from the module (JAX puts them on the wrapped main).
    assert!(
        text.contains("0: x float32[b,4]") && text.contains("1: y float32[2*b,4]"),
        "{text}"
    );
    let r = xlaguard_cmd()
        .args(["inspect", "hlo/poly_bert/model.jaxexport"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(text.contains("constraints: s <= 16"), "{text}");
    assert!(text.contains("token_ids int32[b,s]"), "{text}");
}

#[test]
fn serve_answers_every_size_like_jax_in_json_and_binary() {
    let server = serve_fixtures(MODELS);
    let addr = server.addr;
    for model in MODELS {
        let meta = get(addr, &format!("/v2/models/{model}")).json();
        // Symbolic dimensions are -1 in the metadata, as Triton and KServe write them.
        let shape0 = meta["inputs"][0]["shape"].as_array().unwrap().clone();
        assert!(shape0.contains(&json!(-1)), "{model}: {meta}");
        let names = served_input_names(addr, model);
        for (tag, dir) in sizes(model) {
            let inputs = numbered(&dir, "in");
            let expected = numbered(&dir, "out");
            let v = infer_json(addr, model, &names, &inputs);
            for (k, e) in expected.iter().enumerate() {
                let o = &v["outputs"][k];
                assert_eq!(o["shape"], json!(e.shape()), "{model} {tag} out{k}");
                assert_eq!(
                    bytes_of_json(e.dtype(), &o["data"]),
                    e.bytes(),
                    "{model} {tag} out{k} (JSON)"
                );
            }
            let want: Vec<u8> = expected.iter().flat_map(|t| t.bytes().to_vec()).collect();
            assert!(
                infer_binary(addr, model, &names, &inputs) == want,
                "{model} {tag}: binary outputs differ"
            );
        }
    }
    // A violated constraint is a 400 with JAX's message; the model keeps serving.
    let v = meta("poly_bert")["violation"].clone();
    let inputs = numbered(&fixture("poly_bert").join(v["dir"].as_str().unwrap()), "in");
    let names = served_input_names(addr, "poly_bert");
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let r = post_json(
        addr,
        "/v2/models/poly_bert/infer",
        &json!({"inputs": json_inputs(&name_refs, &inputs)}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.error().contains("s <= 16"), "{}", r.text());
}

#[test]
fn shapes_can_be_compiled_ahead_of_requests() {
    let m = engine()
        .load_file(&fixture("poly_bert").join("model.jaxexport"))
        .unwrap();
    let values = |pairs: &[(&str, &[u64])]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    m.precompile(&values(&[("b", &[1, 2]), ("s", &[8])]))
        .unwrap();
    let mut shapes: Vec<Vec<u64>> = m.compiled_shapes().iter().map(|s| s[0].clone()).collect();
    shapes.sort();
    assert_eq!(shapes, [[1, 8], [2, 8]]);
    let e = m.precompile(&values(&[("b", &[1])])).unwrap_err();
    assert!(
        e.to_string()
            .contains("no values for dimension variable 's'"),
        "{e}"
    );
    let e = m
        .precompile(&values(&[("b", &[1]), ("s", &[8]), ("t", &[1])]))
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("no dimension variable 't'; it has b, s"),
        "{e}"
    );
    // A precompiled shape then runs without compiling again.
    let dir = fixture("poly_bert").join("sizes/b1_s8");
    assert_bit_equal("b1_s8", &run(&m, &dir).unwrap(), &numbered(&dir, "out"));
    assert_eq!(m.compiled_shapes().len(), 2);
    // From a model folder's config.toml.
    let repo = tempfile::tempdir().unwrap();
    copy_into(
        &fixture("poly_twice").join("model.jaxexport"),
        &repo.path().join("twice"),
        "model.jaxexport",
    );
    std::fs::write(
        repo.path().join("twice/config.toml"),
        "[shapes]\nb = [1, 5]\n",
    )
    .unwrap();
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    assert_eq!(specs[0].shapes.get("b"), Some(&vec![1, 5]));
    assert!(specs[0].problem.is_none());
}

#[test]
fn a_second_process_loads_shapes_from_the_cache_and_a_tampered_entry_is_refused() {
    let cache = tempfile::tempdir().unwrap();
    let log = cache.path().join("audit.jsonl");
    let dir = fixture("poly_twice").join("sizes/b2");
    let cmd = |out: &Path| {
        xlaguard_cmd()
            .arg("--cache-dir")
            .arg(cache.path().join("c"))
            .arg("--audit-log")
            .arg(&log)
            .arg("run")
            .arg(fixture("poly_twice").join("model.jaxexport"))
            .arg(dir.join("in0.npy"))
            .arg(dir.join("in1.npy"))
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let events = || -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["event"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    let outs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let r = cmd(outs[0].path());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        !events().contains(&"cache_hit".to_string()),
        "{:?}",
        events()
    );
    // Another process, the same cache: the shape loads without compiling.
    let r = cmd(outs[1].path());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(
        events().iter().filter(|e| *e == "cache_hit").count(),
        1,
        "{:?}",
        events()
    );
    // Tamper with every entry: refused (authentication), recompiled, same outputs.
    for e in std::fs::read_dir(cache.path().join("c")).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "xlx") {
            let mut b = std::fs::read(&p).unwrap();
            let n = b.len() / 2;
            b[n] ^= 0xff;
            std::fs::write(&p, b).unwrap();
        }
    }
    let r = cmd(outs[2].path());
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert!(
        events().contains(&"cache_rejected".to_string()),
        "{:?}",
        events()
    );
    for out in &outs {
        assert_bit_equal(
            "b2 (cli, cache)",
            &numbered(out.path(), "out"),
            &numbered(&dir, "out"),
        );
    }
}

#[test]
fn a_new_policy_applies_to_shapes_compiled_before_it() {
    let mut m = engine()
        .load_file(&fixture("poly_twice").join("model.jaxexport"))
        .unwrap();
    let dir = fixture("poly_twice").join("sizes/b2");
    run(&m, &dir).unwrap();
    assert_eq!(m.compiled_shapes().len(), 1);
    // Now refuse values above 0.5 in x: the shape compiled earlier must follow the new rule.
    let mut p = xlaguard::Policy::new();
    p.input("x").range(-0.5, 0.5);
    m.set_policy(p).unwrap();
    let e = run(&m, &dir).unwrap_err();
    assert!(matches!(e, Error::PolicyViolation(_)), "{e:?}");
    assert!(e.to_string().contains("input 'x'"), "{e}");
}
