//! Artifact parsers against the JAX-exported fixtures in `hlo/` (their `meta.json` is the
//! golden source), plus negative tests: truncation, byte flips, random bytes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::cast_possible_truncation,
    clippy::arithmetic_side_effects
)]

use std::path::{Path, PathBuf};

use serde_json::Value;
use xlaguard::artifact::{self, ArtifactError, ArtifactKind, ProgramFormat};
use xlaguard::signature::{DType, Dim, TensorSpec};

const FIXTURES: [&str; 13] = [
    "tiny",
    "digits",
    "conv",
    "attention",
    "embedding",
    "dict_io",
    "fori",
    "kept_var",
    "multi_platform",
    "dtypes",
    "poly",
    "qr",
    "ordered_effect",
];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("hlo").join(name)
}

fn meta(name: &str) -> Value {
    let s = std::fs::read_to_string(dir(name).join("meta.json")).unwrap();
    serde_json::from_str(&s).unwrap()
}

/// One step of a `jax.tree_util.keystr` path.
#[derive(Clone, Debug, PartialEq)]
enum Step {
    Key(String),
    Idx(usize),
    Attr(String),
}

/// A `jax.tree_util.keystr` path: `[0]['a'].b` → steps.
fn keystr(s: &str) -> Vec<Step> {
    let mut out = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']").unwrap();
            out.push(Step::Key(r[..end].to_string()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']').unwrap();
            out.push(Step::Idx(r[..end].parse().unwrap()));
            rest = &r[end + 1..];
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            out.push(Step::Attr(r[..end].to_string()));
            rest = &r[end..];
        } else {
            panic!("bad keystr {s:?}");
        }
    }
    out
}

/// Prints steps back the way `keystr` does (the fixtures' keys need no escaping).
fn show(steps: &[Step]) -> String {
    steps
        .iter()
        .map(|s| match s {
            Step::Key(k) => format!("['{k}']"),
            Step::Idx(i) => format!("[{i}]"),
            Step::Attr(a) => format!(".{a}"),
        })
        .collect()
}

/// The naming rule (README, "Input and output names") for all inputs, given (argument name, steps below it); no
/// fixture needs the clash fallback.
fn rule(leaves: &[(String, Vec<Step>)]) -> Vec<String> {
    let one_dict_arg = leaves
        .iter()
        .all(|(b, s)| *b == leaves[0].0 && matches!(s.first(), Some(Step::Key(_))));
    leaves
        .iter()
        .map(|(base, steps)| match (one_dict_arg, steps.split_first()) {
            (true, Some((Step::Key(k), rest))) => format!("{k}{}", show(rest)),
            _ => format!("{base}{}", show(steps)),
        })
        .collect()
}

/// Input names of a `jax.export` artifact read alone: positional arguments are `argN`.
fn expected_input_names(paths: &[&str]) -> Vec<String> {
    let leaves: Vec<(String, Vec<Step>)> = paths
        .iter()
        .map(|p| {
            let steps = keystr(p);
            let Some(Step::Idx(i)) = steps.first() else {
                panic!("input path {p:?} does not start with a positional index")
            };
            (format!("arg{i}"), steps[1..].to_vec())
        })
        .collect();
    rule(&leaves)
}

fn expected_output_name(i: usize, path: &str) -> String {
    let steps = keystr(path);
    match steps.split_first() {
        Some((Step::Key(k), rest)) => format!("{k}{}", show(rest)),
        _ if !steps.iter().any(|s| matches!(s, Step::Key(_))) => format!("out{i}"),
        _ => format!("result{}", show(&steps)),
    }
}

fn expected_shape(v: &Value) -> Vec<Dim> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| match d {
            Value::Number(n) => Dim::Static(n.as_u64().unwrap()),
            Value::String(s) => Dim::Symbolic(s.clone()),
            other => panic!("bad dim {other}"),
        })
        .collect()
}

fn check_specs(what: &str, got: &[TensorSpec], want: &[Value], names: &[String]) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for ((g, w), n) in got.iter().zip(want).zip(names) {
        let dt = DType::from_name(w["dtype"].as_str().unwrap()).unwrap();
        assert_eq!(g.dtype, dt, "{what} {n}: dtype");
        assert_eq!(&g.name, n, "{what}: name");
        let ws = expected_shape(&w["shape"]);
        if ws.iter().any(|d| matches!(d, Dim::Symbolic(_))) && what.contains("text") {
            // Text has `?` where the export has the symbol's name.
            assert_eq!(g.shape.len(), ws.len(), "{what} {n}: rank");
        } else {
            assert_eq!(g.shape, ws, "{what} {n}: shape");
        }
    }
    let mut uniq: Vec<&String> = got.iter().map(|s| &s.name).collect();
    uniq.sort();
    uniq.dedup();
    assert_eq!(uniq.len(), got.len(), "{what}: names are unique");
}

#[test]
fn jaxexport_matches_meta() {
    for name in FIXTURES {
        let m = meta(name);
        let a = artifact::load_file(&dir(name).join("model.jaxexport"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.kind, ArtifactKind::JaxExport, "{name}");
        assert_eq!(a.format, ProgramFormat::Mlir);
        assert_eq!(a.format.pjrt_name(), "mlir");
        let bc = std::fs::read(dir(name).join("model.mlirbc")).unwrap();
        assert_eq!(a.program, bc, "{name}: program is mlir_module_serialized");
        let sig = a.signature.as_ref().unwrap();
        let ins = m["inputs"].as_array().unwrap();
        let outs = m["outputs"].as_array().unwrap();
        let paths: Vec<&str> = ins.iter().map(|i| i["path"].as_str().unwrap()).collect();
        let in_names = expected_input_names(&paths);
        let out_names: Vec<String> = outs
            .iter()
            .enumerate()
            .map(|(i, o)| expected_output_name(i, o["path"].as_str().unwrap()))
            .collect();
        check_specs(&format!("{name} inputs"), &sig.inputs, ins, &in_names);
        check_specs(&format!("{name} outputs"), &sig.outputs, outs, &out_names);
        let plats: Vec<String> = m["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_lowercase())
            .collect();
        assert_eq!(a.platforms, plats, "{name}");
        assert_eq!(
            a.calling_convention_version,
            m["calling_convention_version"].as_u64().map(|v| v as u32),
            "{name}"
        );
        let kept: Vec<usize> = m["module_kept_var_idx"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let all: Vec<usize> = (0..ins.len()).collect();
        let want_kept = if kept == all { None } else { Some(kept) };
        assert_eq!(a.kept_inputs, want_kept, "{name}");
        assert_eq!(
            a.ordered_effects.len(),
            m["ordered_effects"].as_array().unwrap().len(),
            "{name}"
        );
        assert_eq!(
            a.unordered_effects.len(),
            m["unordered_effects"].as_array().unwrap().len(),
            "{name}"
        );
        assert_eq!(u64::from(a.nr_devices), m["nr_devices"].as_u64().unwrap());
        assert_eq!(a.serialization_version, Some(12), "{name}");
        assert_eq!(
            a.uses_shape_polymorphism,
            m["has_symbolic_shapes"].as_bool().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn text_matches_meta() {
    for name in FIXTURES {
        let m = meta(name);
        let a = artifact::load_file(&dir(name).join("model.mlir"))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(a.kind, ArtifactKind::StableHloText);
        assert_eq!(a.format, ProgramFormat::Mlir);
        let sig = a.signature.as_ref().unwrap();
        let kept: Vec<usize> = m["module_kept_var_idx"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let ins: Vec<Value> = kept.iter().map(|&k| m["inputs"][k].clone()).collect();
        // @main's locations, without the platform index and effect tokens.
        let sigline = m["main_signature"].as_str().unwrap();
        let mut locs: Vec<String> = m["main_arg_locs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap().to_string())
            .collect();
        let extra = usize::from(sigline.contains("_platform_index"))
            + sigline
                .matches("!stablehlo.token {jax.token = true} loc")
                .count();
        locs.drain(..extra);
        let leaves: Vec<(String, Vec<Step>)> = locs
            .iter()
            .enumerate()
            .map(|(i, l)| {
                if l == "unknown" {
                    return (format!("arg{i}"), Vec::new());
                }
                let (base, rest) = l.split_at(l.find(['[', '.']).unwrap_or(l.len()));
                (base.to_string(), keystr(rest))
            })
            .collect();
        let in_names = rule(&leaves);
        let outs = m["outputs"].as_array().unwrap();
        let out_names: Vec<String> = outs
            .iter()
            .enumerate()
            .map(|(i, o)| expected_output_name(i, o["path"].as_str().unwrap()))
            .collect();
        check_specs(&format!("{name} text inputs"), &sig.inputs, &ins, &in_names);
        check_specs(
            &format!("{name} text outputs"),
            &sig.outputs,
            outs,
            &out_names,
        );
        let has_index = sigline.contains("_platform_index");
        assert_eq!(a.platform_index_dtype.is_some(), has_index, "{name}");
        assert_eq!(
            !a.ordered_effects.is_empty(),
            !m["ordered_effects"].as_array().unwrap().is_empty(),
            "{name}"
        );
        assert_eq!(
            a.uses_shape_polymorphism,
            m["has_symbolic_shapes"].as_bool().unwrap()
        );
    }
}

#[test]
fn explicit_names() {
    let n = |f: &str, file: &str| {
        let s = artifact::load_file(&dir(f).join(file))
            .unwrap()
            .signature
            .unwrap();
        (
            s.inputs.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            s.outputs.into_iter().map(|s| s.name).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        n("dict_io", "model.jaxexport"),
        (
            vec!["a".into(), "b".into()],
            vec!["count".into(), "scaled".into(), "sum".into()]
        )
    );
    assert_eq!(
        n("digits", "model.mlir"),
        (vec!["pixels".into()], vec!["label".into(), "logits".into()])
    );
    assert_eq!(
        n("digits", "model.jaxexport"),
        (vec!["arg0".into()], vec!["label".into(), "logits".into()])
    );
    assert_eq!(
        n("tiny", "model.mlir"),
        (vec!["x".into(), "y".into()], vec!["out0".into()])
    );
    assert_eq!(
        n("tiny", "model.jaxexport"),
        (vec!["arg0".into(), "arg1".into()], vec!["out0".into()])
    );
}

/// `hlo/names`: `f(params, state, x, *, scale)` (hlo/names/export.py). StableHLO text carries
/// JAX's own names; the flatbuffer alone knows the keyword's name but only the positions of
/// the others (the engine completes them from the compiled module: tests/golden.rs).
#[test]
fn multi_argument_pytree_names() {
    let m = meta("names");
    let jax: Vec<String> = m["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["jax_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(jax[1], "params['Dense_0']['kernel']");
    let text = artifact::load_file(&dir("names").join("model.mlir")).unwrap();
    let sig = text.signature.unwrap();
    let names: Vec<String> = sig.inputs.iter().map(|s| s.name.clone()).collect();
    assert_eq!(names, jax);
    let outs: Vec<String> = sig.outputs.iter().map(|s| s.name.clone()).collect();
    assert_eq!(outs, ["aux['norm']", "logits"]);
    let fb = artifact::load_file(&dir("names").join("model.jaxexport")).unwrap();
    let names: Vec<String> = fb
        .signature
        .unwrap()
        .inputs
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(
        names,
        [
            "arg0['Dense_0']['bias']",
            "arg0['Dense_0']['kernel']",
            "arg0['Dense_1']['kernel']",
            "arg1[0]",
            "arg1[1]",
            "arg2",
            "scale"
        ]
    );
    assert_eq!(fb.input_paths.len(), 7);
    assert_eq!(fb.input_paths[6].full_name(), "scale");
}

#[test]
fn bytecode_loads_without_signature() {
    for name in FIXTURES {
        let a = artifact::load_file(&dir(name).join("model.mlirbc")).unwrap();
        assert_eq!(a.kind, ArtifactKind::StableHloBytecode);
        assert_eq!(a.format, ProgramFormat::Mlir);
        assert!(a.signature.is_none());
    }
}

#[test]
fn hlo_proto_program_shape() {
    for name in ["tiny", "digits"] {
        let m = meta(name);
        let bytes = std::fs::read(dir(name).join("model.hlo.pb")).unwrap();
        let a = artifact::load(&bytes).unwrap();
        assert_eq!(a.kind, ArtifactKind::HloProto);
        assert_eq!(a.format, ProgramFormat::Hlo);
        assert_eq!(a.format.pjrt_name(), "hlo");
        let sig = a.signature.unwrap();
        assert_eq!(sig, artifact::hlo::program_shape(&bytes).unwrap());
        let ins = m["inputs"].as_array().unwrap();
        let outs = m["outputs"].as_array().unwrap();
        let in_names: Vec<String> = (0..ins.len()).map(|i| format!("arg{i}")).collect();
        let out_names: Vec<String> = (0..outs.len()).map(|i| format!("out{i}")).collect();
        check_specs(&format!("{name} hlo inputs"), &sig.inputs, ins, &in_names);
        check_specs(
            &format!("{name} hlo outputs"),
            &sig.outputs,
            outs,
            &out_names,
        );
    }
}

#[test]
fn multi_platform_index() {
    let a = artifact::load_file(&dir("multi_platform").join("model.jaxexport")).unwrap();
    assert_eq!(a.platforms, ["cpu", "cuda"]);
    assert_eq!(a.platform_index("cpu").unwrap(), Some(0));
    assert_eq!(a.platform_index("cuda").unwrap(), Some(1));
    assert_eq!(a.platform_index("gpu").unwrap(), Some(1));
    let e = a.platform_index("tpu").unwrap_err();
    assert!(
        matches!(e, ArtifactError::PlatformNotInArtifact { .. }),
        "{e}"
    );
    a.check_supported().unwrap();

    let t = artifact::load_file(&dir("multi_platform").join("model.mlir")).unwrap();
    assert_eq!(t.platform_index_dtype, Some(DType::I32));
    assert_eq!(t.signature.as_ref().unwrap().inputs.len(), 2);
    assert!(t.platform_index("cpu").is_err());

    let tiny = artifact::load_file(&dir("tiny").join("model.jaxexport")).unwrap();
    assert_eq!(tiny.platform_index("cuda").unwrap(), None);
}

#[test]
fn check_supported_refusals() {
    // A shape-polymorphic jax.export names its dimension variables: supported (refined per
    // shape). Raw StableHLO only says `?`: refused, pointing at the jax.export artifact.
    let a = artifact::load_file(&dir("poly").join("model.jaxexport")).unwrap();
    assert!(a.check_supported().is_ok() && a.is_polymorphic());
    for file in ["model.jaxexport", "model.mlir"] {
        if file == "model.mlir" {
            let a = artifact::load_file(&dir("poly").join(file)).unwrap();
            let e = a.check_supported().unwrap_err();
            let ArtifactError::Unsupported { feature, detail } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(feature, "shape polymorphism");
            assert!(detail.contains("jax.export"), "{detail}");
        }

        let a = artifact::load_file(&dir("ordered_effect").join(file)).unwrap();
        let e = a.check_supported().unwrap_err();
        assert!(
            matches!(&e, ArtifactError::Unsupported { feature, .. } if feature == "ordered effects"),
            "{e}"
        );
        if file == "model.jaxexport" {
            assert!(a.ordered_effects[0].contains("XlaguardOrderedEffect"));
            assert_eq!(a.signature.as_ref().unwrap().inputs.len(), 1);
        }
    }
    // qr (LAPACK custom calls) loads and passes; it compiles and runs with the LAPACK handlers
    // (tests/linalg.rs).
    for file in ["model.jaxexport", "model.mlir"] {
        let a = artifact::load_file(&dir("qr").join(file)).unwrap();
        a.check_supported().unwrap();
        assert_eq!(a.signature.unwrap().outputs.len(), 2);
    }
    for name in ["tiny", "digits", "dict_io", "kept_var", "dtypes"] {
        artifact::load_file(&dir(name).join("model.jaxexport"))
            .unwrap()
            .check_supported()
            .unwrap();
    }
}

#[test]
fn backcompat_layouts() {
    let idx: Value = serde_json::from_str(
        &std::fs::read_to_string(dir("backcompat").join("index.json")).unwrap(),
    )
    .unwrap();
    let idx = idx.as_object().unwrap();
    assert!(!idx.is_empty());
    for (file, m) in idx {
        let a = artifact::load_file(&dir("backcompat").join(file))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        let sig = a.signature.as_ref().unwrap();
        let ins = m["inputs"].as_array().unwrap();
        let outs = m["outputs"].as_array().unwrap();
        assert_eq!(sig.inputs.len(), ins.len(), "{file}");
        assert_eq!(sig.outputs.len(), outs.len(), "{file}");
        for (g, w) in sig
            .inputs
            .iter()
            .zip(ins)
            .chain(sig.outputs.iter().zip(outs))
        {
            assert_eq!(g.dtype.name(), w["dtype"].as_str().unwrap(), "{file}");
            assert_eq!(g.shape, expected_shape(&w["shape"]), "{file}");
        }
        assert_eq!(u64::from(a.nr_devices), m["nr_devices"].as_u64().unwrap());
        let plats: Vec<String> = m["platforms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_lowercase())
            .collect();
        assert_eq!(a.platforms, plats, "{file}");
        let sv = m["flatbuffer"]["serialization_version_field"].as_u64();
        assert_eq!(a.serialization_version.map(u64::from), sv, "{file}");
        // nr_devices > 1: refused for now.
        assert!(a.check_supported().is_err());
    }
}

fn assert_typed(what: &str, r: Result<artifact::Artifact, ArtifactError>) {
    if let Err(e) = r {
        let msg = e.to_string();
        assert!(!msg.is_empty(), "{what}");
        assert!(
            matches!(
                e,
                ArtifactError::Truncated { .. }
                    | ArtifactError::Corrupt { .. }
                    | ArtifactError::UnknownFormat { .. }
                    | ArtifactError::Unsupported { .. }
            ),
            "{what}: {e:?}"
        );
    }
}

#[test]
fn truncations_are_errors() {
    for name in FIXTURES {
        for file in ["model.jaxexport", "model.mlirbc"] {
            let bytes = std::fs::read(dir(name).join(file)).unwrap();
            let step = (bytes.len() / 300).max(1);
            for cut in (0..bytes.len()).step_by(step) {
                let r = artifact::load(&bytes[..cut]);
                // Dropping only the flatbuffer's trailing alignment padding is undetectable.
                let only_padding = bytes[cut..].len() < 8 && bytes[cut..].iter().all(|&b| b == 0);
                assert!(
                    r.is_err() || only_padding,
                    "{name}/{file} cut at {cut} loaded"
                );
                assert_typed(&format!("{name}/{file} cut {cut}"), r);
            }
        }
        // Text cut inside @main's signature is an error; elsewhere it may load (the body is
        // PJRT's to reject), but never panics.
        let text = std::fs::read(dir(name).join("model.mlir")).unwrap();
        for cut in (0..text.len()).step_by((text.len() / 200).max(1)) {
            assert_typed(
                &format!("{name} text cut {cut}"),
                artifact::load(&text[..cut]),
            );
        }
    }
    for name in ["tiny", "digits"] {
        let bytes = std::fs::read(dir(name).join("model.hlo.pb")).unwrap();
        for cut in 1..bytes.len() {
            let r = artifact::load(&bytes[..cut]);
            assert_typed(&format!("{name} hlo cut {cut}"), r);
            let _ = artifact::hlo::program_shape(&bytes[..cut]);
        }
    }
}

/// A deterministic xorshift generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn mutations_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for name in FIXTURES {
        for file in ["model.jaxexport", "model.mlirbc", "model.mlir"] {
            let orig = std::fs::read(dir(name).join(file)).unwrap();
            for round in 0..150 {
                let mut b = orig.clone();
                let flips = 1 + rng.below(4);
                for _ in 0..flips {
                    let i = rng.below(b.len());
                    match round % 3 {
                        0 => b[i] ^= 1 << rng.below(8),
                        1 => b[i] = rng.next() as u8,
                        _ => b[i] = [0x00, 0xff, 0x7f, 0x80][rng.below(4)],
                    }
                }
                assert_typed(&format!("{name}/{file} round {round}"), artifact::load(&b));
            }
        }
    }
    for name in ["tiny", "digits"] {
        let orig = std::fs::read(dir(name).join("model.hlo.pb")).unwrap();
        for _ in 0..300 {
            let mut b = orig.clone();
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(8);
            assert_typed(&format!("{name} hlo"), artifact::load(&b));
            let _ = artifact::hlo::program_shape(&b);
        }
    }
}

#[test]
fn random_and_empty_inputs() {
    let e = artifact::load(&[]).unwrap_err();
    assert!(matches!(e, ArtifactError::UnknownFormat { .. }), "{e}");
    let mut rng = Rng(42);
    for len in 0..400 {
        let b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        assert_typed(&format!("random {len}"), artifact::load(&b));
        let _ = artifact::hlo::program_shape(&b);
    }
    for prefix in [
        &b"ML\xefR"[..],
        b"ML",
        b"module",
        b"\x0a\x05",
        b"\x10\x00\x00\x00",
    ] {
        for len in 0..64 {
            let mut b = prefix.to_vec();
            b.extend((0..len).map(|_| rng.next() as u8));
            assert_typed("prefixed random", artifact::load(&b));
        }
    }
    let e = artifact::load(b"hello world").unwrap_err();
    assert!(matches!(e, ArtifactError::UnknownFormat { .. }), "{e}");
}

#[test]
fn load_file_names_the_file() {
    let p = dir("does-not-exist").join("model.jaxexport");
    let e = artifact::load_file(&p).unwrap_err();
    assert!(matches!(e, ArtifactError::Io { .. }));
    assert!(e.to_string().contains("does-not-exist"), "{e}");

    let tmp = std::env::temp_dir().join(format!("xlaguard-artifact-{}.bin", std::process::id()));
    std::fs::write(&tmp, b"\x01\x02\x03").unwrap();
    let e = artifact::load_file(&tmp).unwrap_err();
    let _ = std::fs::remove_file(&tmp);
    assert!(e.to_string().contains(&tmp.display().to_string()), "{e}");
    assert!(matches!(e.root(), ArtifactError::UnknownFormat { .. }));
}

#[test]
fn newer_serialization_version_is_refused() {
    let mut b = std::fs::read(dir("tiny").join("model.jaxexport")).unwrap();
    // Find the serialization_version field through the root table's vtable.
    let root = u32::from_le_bytes(b[0..4].try_into().unwrap()) as usize;
    let soff = i32::from_le_bytes(b[root..root + 4].try_into().unwrap());
    let vt = (root as i64 - i64::from(soff)) as usize;
    let off = u16::from_le_bytes(b[vt + 4..vt + 6].try_into().unwrap()) as usize;
    assert_ne!(off, 0);
    b[root + off..root + off + 2].copy_from_slice(&13u16.to_le_bytes());
    let e = artifact::load(&b).unwrap_err();
    assert!(
        matches!(&e, ArtifactError::Unsupported { feature, .. } if feature.contains("13")),
        "{e}"
    );
}
