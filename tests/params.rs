//! Weights bound server-side (issue 11): `hlo/export_params.py`'s Flax (`apply(variables, x)`),
//! Keras (`stateless_call`) and Equinox (`eqx.partition`) exports, their params bound from
//! `params.safetensors` and `params.npz`, give JAX's outputs bit for bit from `x` alone through
//! the library, `run --params` and `serve`; bad params files get typed errors naming the tensor.
#![cfg(feature = "server")]

mod common;
mod serving;

use std::path::Path;

use xlaguard::server::repo::ModelSpec;
use xlaguard::{Error, Params, ParamsError, Tensor};

use common::{assert_bit_equal, cli_run_with, engine, fixture, numbered, xlaguard_cmd};
use serving::*;

/// Flax linen `apply(variables, x)`, a Keras net and keras.applications MobileNetV3Small via
/// `stateless_call` (211 weight tensors), Equinox via `eqx.partition`.
const MODELS: &[&str] = &[
    "params_flax",
    "params_keras",
    "params_mobilenet",
    "params_eqx",
];

fn model(name: &str) -> xlaguard::Model {
    engine()
        .load_file(&fixture(name).join("model.jaxexport"))
        .unwrap()
}

#[test]
fn library_bind_gives_jax_outputs_from_safetensors_and_npz() {
    for name in MODELS {
        let dir = fixture(name);
        let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
        let expected = numbered(&dir, "out");
        for file in ["params.safetensors", "params.npz"] {
            if !dir.join(file).is_file() {
                assert_eq!((*name, file), ("params_mobilenet", "params.npz"));
                continue;
            }
            let params = Params::read(&dir.join(file)).unwrap();
            let mut m = model(name);
            let full = m.signature().inputs.len();
            let report = m.bind(&params).unwrap();
            assert_eq!(report.applied.len(), full - 1, "{name} {file}: {report}");
            assert!(report.missing.is_empty() && report.unused.is_empty());
            assert_eq!(report.unbound, vec!["x".to_string()], "{name}");
            let names: Vec<&str> = m
                .signature()
                .inputs
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            assert_eq!(names, ["x"], "{name}: request signature");
            assert_eq!(m.full_signature().inputs.len(), full);
            let b = m.bound_params().unwrap();
            assert_eq!(b.inputs.len(), full - 1);
            assert_eq!(b.sha256.len(), 64);
            assert!(b.bytes > 0);
            // Twice: the resident buffers (and staging slots) are reused across calls.
            for _ in 0..2 {
                let out = m.run(&[x.view()]).unwrap();
                assert_bit_equal(&format!("{name} {file}"), &out, &expected);
            }
        }
    }
}

#[test]
fn run_and_inspect_with_params() {
    for name in MODELS {
        let dir = fixture(name);
        let file = ["params.npz", "params.safetensors"]
            .into_iter()
            .find(|f| dir.join(f).is_file())
            .unwrap();
        let params = dir.join(file);
        let got = cli_run_with(
            &dir.join("model.jaxexport"),
            &dir,
            &["--params".as_ref(), params.as_os_str()],
        );
        assert_bit_equal(name, &got, &numbered(&dir, "out"));
    }
    let dir = fixture("params_flax");
    let r = xlaguard_cmd()
        .arg("inspect")
        .arg(dir.join("model.jaxexport"))
        .arg("--params")
        .arg(dir.join("params.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&r.stdout);
    assert!(r.status.success(), "{text}");
    assert!(
        text.contains("inputs:\n  0: x float32[2,16,16,3]\nbound inputs: 14 from"),
        "{text}"
    );
    assert!(
        text.contains("  variables['params']['Conv_0']['kernel'] float32[3,3,3,8]"),
        "{text}"
    );
}

#[test]
fn serve_binds_params_and_others_keep_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for (name, file) in [
        ("params_flax", "params.safetensors"),
        ("params_keras", "params.npz"),
        ("params_mobilenet", "params.safetensors"),
        ("params_eqx", "params.safetensors"),
    ] {
        specs.push(ModelSpec {
            params: Some(fixture(name).join(file)),
            ..ModelSpec::from_file(name, fixture(name).join("model.jaxexport"))
        });
    }
    // A params file missing one tensor: that model is unavailable, naming it.
    let broken = tmp.path().join("broken.safetensors");
    let p = Params::read(&fixture("params_eqx").join("params.safetensors")).unwrap();
    write_without(&p, "params.layers[1].bias", &broken);
    specs.push(ModelSpec {
        params: Some(broken),
        ..ModelSpec::from_file("broken", fixture("params_eqx").join("model.jaxexport"))
    });
    // Baked in ([params] bake = true): JAX's outputs for the weights as constants.
    specs.push(ModelSpec {
        params: Some(fixture("params_mobilenet").join("params.safetensors")),
        params_bake: true,
        ..ModelSpec::from_file("baked", fixture("params_mobilenet").join("model.jaxexport"))
    });
    // The right weights under a config.toml sha256 that is not theirs: unavailable, naming both.
    let good = Params::read(&fixture("params_eqx").join("params.safetensors")).unwrap();
    specs.push(ModelSpec {
        params: Some(fixture("params_eqx").join("params.safetensors")),
        params_sha256: Some("0".repeat(64)),
        ..ModelSpec::from_file("pinned", fixture("params_eqx").join("model.jaxexport"))
    });
    let s = InProcess::start(specs, |_| {});
    for name in MODELS {
        let dir = fixture(name);
        let names = served_input_names(s.addr, name);
        assert_eq!(names, ["x"], "{name}: metadata lists only unbound inputs");
        let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
        let expected = numbered(&dir, "out");
        let bin = infer_binary(s.addr, name, &names, std::slice::from_ref(&x));
        assert!(
            bin == expected[0].bytes(),
            "{name}: binary output differs from JAX's"
        );
        let v = infer_json(s.addr, name, &names, &[x]);
        let got = bytes_of_json(expected[0].dtype(), &v["outputs"][0]["data"]);
        assert!(
            got == expected[0].bytes(),
            "{name}: JSON output differs from JAX's"
        );
    }
    let dir = fixture("params_mobilenet");
    let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
    assert_eq!(served_input_names(s.addr, "baked"), ["x"]);
    let bin = infer_binary(
        s.addr,
        "baked",
        &["x".to_string()],
        std::slice::from_ref(&x),
    );
    assert!(
        bin == numbered(&dir, "baked_out")[0].bytes(),
        "baked: binary output differs from JAX's baked export"
    );
    let r = get(s.addr, "/v2/models/broken/ready");
    assert_ne!(r.status, 200);
    let idx = post_json(s.addr, "/v2/repository/index", &serde_json::json!({}));
    let text = idx.text();
    assert!(text.contains("missing: 'params.layers[1].bias'"), "{text}");
    assert!(
        text.contains(&format!(
            "sha256 {} but config.toml params_sha256 is {}",
            good.sha256(),
            "0".repeat(64)
        )),
        "{text}"
    );
    // From a model folder: params_sha256 is read from config.toml.
    let repo = tempfile::tempdir().unwrap();
    let m = repo.path().join("eqx");
    std::fs::create_dir_all(&m).unwrap();
    for f in ["model.jaxexport", "params.safetensors"] {
        std::fs::copy(fixture("params_eqx").join(f), m.join(f)).unwrap();
    }
    std::fs::write(
        m.join("config.toml"),
        format!("params_sha256 = \"{}\"\n", good.sha256().to_uppercase()),
    )
    .unwrap();
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    assert_eq!(specs[0].params_sha256.as_deref(), Some(good.sha256()));
    std::fs::write(m.join("config.toml"), "[params]\nbake = true\n").unwrap();
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    assert!(specs[0].params_bake && specs[0].problem.is_none());
    std::fs::write(m.join("config.toml"), "[params]\nbake = \"yes\"\n").unwrap();
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    let problem = specs[0].problem.as_deref().unwrap();
    assert!(
        problem.contains("line 2") && problem.contains("expected a boolean"),
        "{problem}"
    );
    std::fs::write(m.join("config.toml"), "params_sha256 = \"abc\"\n").unwrap();
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    assert!(specs[0]
        .problem
        .as_deref()
        .unwrap()
        .contains("64 hex digits"));
}

/// Writes `p` as safetensors without tensor `drop` (by hand: 8-byte length, JSON, data).
fn write_without(p: &Params, drop: &str, path: &Path) {
    write_st(
        p.tensors()
            .iter()
            .filter(|(n, _)| n != drop)
            .map(|(n, t)| (n.as_str(), t)),
        path,
    );
}

fn write_st<'a>(tensors: impl Iterator<Item = (&'a str, &'a Tensor)>, path: &Path) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (n, t) in tensors {
        let dt = match t.dtype() {
            xlaguard::DType::F32 => "F32",
            xlaguard::DType::I32 => "I32",
            other => panic!("{other:?}"),
        };
        let start = data.len();
        data.extend_from_slice(t.bytes());
        header.insert(n.into(), serde_json::json!({"dtype": dt, "shape": t.shape(), "data_offsets": [start, data.len()]}));
    }
    let h = serde_json::to_vec(&header).unwrap();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn eqx_params() -> Params {
    Params::read(&fixture("params_eqx").join("params.safetensors")).unwrap()
}

fn bind_err(tensors: Vec<(String, Tensor)>) -> xlaguard::BindReport {
    let p = Params::from_tensors(tensors, "test").unwrap();
    match model("params_eqx").bind(&p) {
        Err(Error::Bind(e)) => e.report,
        other => panic!("expected a bind error, got {other:?}"),
    }
}

#[test]
fn missing_extra_wrong_dtype_wrong_shape() {
    let all: Vec<(String, Tensor)> = eqx_params().tensors().to_vec();
    // Missing.
    let r = bind_err(
        all.iter()
            .filter(|(n, _)| n != "params.layers[2].weight")
            .cloned()
            .collect(),
    );
    assert_eq!(r.missing, ["params.layers[2].weight"]);
    // Extra: reported, binding succeeds.
    let mut extra = all.clone();
    extra.push((
        "arg0[9]".into(),
        Tensor::from_slice(&[1], &[1.0f32]).unwrap(),
    ));
    let mut m = model("params_eqx");
    let r = m
        .bind(&Params::from_tensors(extra, "test").unwrap())
        .unwrap();
    assert_eq!(r.unused, ["arg0[9]"]);
    // Wrong dtype.
    let bias = all
        .iter()
        .position(|(n, _)| n == "params.layers[0].bias")
        .unwrap();
    let mut wrong = all.clone();
    wrong[bias].1 = Tensor::from_slice(&[32], &[0i32; 32]).unwrap();
    let r = bind_err(wrong);
    assert_eq!(r.mismatched.len(), 1);
    assert_eq!(r.mismatched[0].name, "params.layers[0].bias");
    assert_eq!(r.mismatched[0].expected, "float32[32]");
    assert_eq!(r.mismatched[0].got, "int32[32]");
    // Wrong shape.
    let mut wrong = all.clone();
    wrong[bias].1 = Tensor::from_slice(&[31], &[0f32; 31]).unwrap();
    let r = bind_err(wrong);
    assert_eq!(r.mismatched[0].got, "float32[31]");
    let e = Error::Bind(Box::new(xlaguard::BindError {
        source_name: "t".into(),
        report: r,
    }));
    assert!(
        e.to_string()
            .contains("'params.layers[0].bias' (expected float32[32], got float32[31])"),
        "{e}"
    );
}

#[test]
fn corrupt_files_are_typed_errors() {
    let bytes = std::fs::read(fixture("params_eqx").join("params.safetensors")).unwrap();
    // Truncated: the data ends early.
    let e = Params::from_bytes(&bytes[..bytes.len() - 10], "t.safetensors").unwrap_err();
    assert!(matches!(e, ParamsError::Malformed { .. }), "{e}");
    assert!(e.to_string().contains("truncated"), "{e}");
    // Too short for the length.
    let e = Params::from_bytes(&bytes[..5], "t.safetensors").unwrap_err();
    assert!(matches!(e, ParamsError::Malformed { .. }), "{e}");
    // A header claiming more bytes than the file has.
    let mut big = bytes.clone();
    big[..8].copy_from_slice(&(bytes.len() as u64 * 2).to_le_bytes());
    let e = Params::from_bytes(&big, "t.safetensors").unwrap_err();
    assert!(e.to_string().contains("the header claims"), "{e}");
    // A tensor whose offsets go past its data.
    let t = Tensor::from_slice(&[2], &[1.0f32, 2.0]).unwrap();
    let h = br#"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,8]}}"#;
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(h);
    f.extend_from_slice(t.bytes());
    let e = Params::from_bytes(&f, "t.safetensors").unwrap_err();
    assert!(matches!(e, ParamsError::Malformed { .. }), "{e}");
    // Duplicate name in a safetensors header.
    let h = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
    let mut f = (h.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(h);
    f.extend_from_slice(t.bytes());
    let e = Params::from_bytes(&f, "t.safetensors").unwrap_err();
    assert!(
        matches!(&e, ParamsError::Duplicate { name, .. } if name == "w"),
        "{e}"
    );
    // Corrupt npz.
    let npz = std::fs::read(fixture("params_eqx").join("params.npz")).unwrap();
    let e = Params::from_bytes(&npz[..npz.len() / 2], "t.npz").unwrap_err();
    assert!(matches!(e, ParamsError::Malformed { .. }), "{e}");
    // Duplicate in memory.
    let e = Params::from_tensors(vec![("a".into(), t.clone()), ("a".into(), t)], "m").unwrap_err();
    assert!(matches!(e, ParamsError::Duplicate { .. }), "{e}");
}

#[test]
fn new_weights_reuse_the_compiled_executable() {
    // Two versions of a model that differ only in their weights: the second load is a cache
    // hit (the params are not part of the key), and each version answers with its own weights.
    let cache = tempfile::tempdir().unwrap();
    let mut c = common::config();
    c.compile.cache_dir = Some(cache.path().to_path_buf());
    let e = xlaguard::Engine::new(&c).unwrap();
    let dir = fixture("params_eqx");
    let p1 = Params::read(&dir.join("params.safetensors")).unwrap();
    let halved: Vec<(String, Tensor)> = p1
        .tensors()
        .iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t
                .to_array::<f32>()
                .unwrap()
                .iter()
                .map(|x| x * 0.5)
                .collect();
            (n.clone(), Tensor::from_slice(t.shape(), &v).unwrap())
        })
        .collect();
    let p2 = Params::from_tensors(halved, "halved").unwrap();
    let mut v1 = e.load_file(&dir.join("model.jaxexport")).unwrap();
    v1.bind(&p1).unwrap();
    let mut v2 = e.load_file(&dir.join("model.jaxexport")).unwrap();
    v2.bind(&p2).unwrap();
    assert!(!v1.info().compile.cache_hit && v2.info().compile.cache_hit);
    let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
    let o1 = v1.run(&[x.view()]).unwrap();
    let o2 = v2.run(&[x.view()]).unwrap();
    assert_bit_equal("v1", &o1, &numbered(&dir, "out"));
    assert!(
        o1[0].bytes() != o2[0].bytes(),
        "the new weights changed nothing"
    );
}

#[test]
fn the_value_policy_checks_bound_weights_once_at_bind() {
    let dir = fixture("params_eqx");
    let p = Params::read(&dir.join("params.safetensors")).unwrap();
    let name = "params.layers[0].bias";
    let with_nan: Vec<(String, Tensor)> = p
        .tensors()
        .iter()
        .map(|(n, t)| {
            if n != name {
                return (n.clone(), t.clone());
            }
            let mut v: Vec<f32> = t.to_array::<f32>().unwrap().iter().copied().collect();
            v[3] = f32::NAN;
            v[5] = 7.5;
            (n.clone(), Tensor::from_slice(t.shape(), &v).unwrap())
        })
        .collect();
    let bad = Params::from_tensors(with_nan, "nan").unwrap();
    // A rule naming the weight: the NaN is refused at bind, naming it.
    let mut policy = xlaguard::Policy::new();
    policy
        .input(name)
        .nan(xlaguard::validate::NonFinite::Reject);
    let mut m = model("params_eqx").with_policy(policy).unwrap();
    let e = m.bind(&bad).unwrap_err();
    assert!(matches!(e, Error::PolicyViolation(_)), "{e:?}");
    assert!(
        e.to_string().contains(name) && e.to_string().contains("NaN"),
        "{e}"
    );
    // A sanitizing rule: the weight is replaced and clipped once, and the report says so.
    let mut policy = xlaguard::Policy::new();
    policy
        .input(name)
        .nan(xlaguard::validate::NonFinite::Replace(0.0))
        .range(-10.0, 1.0)
        .out_of_range(xlaguard::validate::OutOfRange::Clip);
    let mut m = model("params_eqx").with_policy(policy).unwrap();
    let r = m.bind(&bad).unwrap();
    let text = r.checked.join("; ");
    assert!(text.contains("NaN") && text.contains("clipped"), "{text}");
    // The request-facing policy no longer names the bound input; calls run.
    let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
    assert_eq!(m.run(&[x.view()]).unwrap().len(), 1);
    // Without a rule for them, weights are not scanned (a NaN passes, as JAX would run it).
    let mut m = model("params_eqx");
    let r = m.bind(&bad).unwrap();
    assert!(r.checked.is_empty());
}

#[test]
fn config_toml_maps_tensor_names_to_input_names() {
    // A file keyed by the model's own names without the argument (`.layers[0].weight`), and one
    // tensor under a name of its own: `[params] prefix` and `rename` map them.
    let p = eqx_params();
    let repo = tempfile::tempdir().unwrap();
    let dir = repo.path().join("eqx");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("params_eqx").join("model.jaxexport"),
        dir.join("model.jaxexport"),
    )
    .unwrap();
    let renamed: Vec<(String, &Tensor)> = p
        .tensors()
        .iter()
        .map(|(n, t)| match n.as_str() {
            "params.layers[2].bias" => ("last_bias".to_string(), t),
            n => (n.trim_start_matches("params").to_string(), t),
        })
        .collect();
    write_st(
        renamed.iter().map(|(n, t)| (n.as_str(), *t)),
        &dir.join("params.safetensors"),
    );
    std::fs::write(
        dir.join("config.toml"),
        "[params]\nprefix = \"params\"\nrename = { last_bias = \"params.layers[2].bias\" }\n",
    )
    .unwrap();
    let specs = xlaguard::server::repo::scan_repository(repo.path()).unwrap();
    assert!(specs[0].problem.is_none(), "{:?}", specs[0].problem);
    let s = InProcess::start(specs, |_| {});
    wait_loaded(s.addr);
    let names = served_input_names(s.addr, "eqx");
    assert_eq!(names, ["x"]);
    let x = Tensor::read_npy(&fixture("params_eqx").join("in0.npy")).unwrap();
    let got = infer_binary(s.addr, "eqx", &names, &[x]);
    assert!(got == numbered(&fixture("params_eqx"), "out")[0].bytes());
    // Two tensors mapped to one name: a duplicate, named.
    let t = Tensor::from_slice(&[1], &[0f32]).unwrap();
    let two = Params::from_tensors(vec![("a".into(), t.clone()), ("b".into(), t)], "m").unwrap();
    let table = [("a".to_string(), "b".to_string())].into_iter().collect();
    let e = two.renamed(None, &table).unwrap_err();
    assert!(
        matches!(e, ParamsError::Duplicate { ref name, .. } if name == "b"),
        "{e:?}"
    );
}

/// `Engine::load_baked`: the bound tensors become constants of the executable (what a user
/// gets from an export with baked weights); outputs are JAX's for the same weights baked in.
#[test]
fn baked_params_give_jax_outputs() {
    for name in MODELS {
        let dir = fixture(name);
        let x = Tensor::read_npy(&dir.join("in0.npy")).unwrap();
        let params = Params::read(&dir.join("params.safetensors")).unwrap();
        let a = xlaguard::artifact::load_file(&dir.join("model.jaxexport")).unwrap();
        let (m, report) = engine().load_baked(a, &params, None).unwrap();
        assert_eq!(report.unbound, vec!["x".to_string()], "{name}");
        assert!(m.bound_params().unwrap().baked);
        assert_eq!(m.signature().inputs.len(), 1);
        let got = m.run(&[x.view()]).unwrap();
        assert_bit_equal(name, &got, &numbered(&dir, "baked_out"));
        // Another model keeps its arguments: the two do not share an executable.
        let mut bound = model(name);
        bound.bind(&params).unwrap();
        assert!(!bound.bound_params().unwrap().baked);
        assert_bit_equal(
            name,
            &bound.run(&[x.view()]).unwrap(),
            &numbered(&dir, "out"),
        );
    }
    // Baked params cannot be re-bound (the weights are in the executable).
    let dir = fixture("params_eqx");
    let params = Params::read(&dir.join("params.safetensors")).unwrap();
    let a = xlaguard::artifact::load_file(&dir.join("model.jaxexport")).unwrap();
    let (mut m, _) = engine().load_baked(a, &params, None).unwrap();
    let e = m.bind(&params).unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(
        e.to_string().contains("baked into this model's executable"),
        "{e}"
    );
}
