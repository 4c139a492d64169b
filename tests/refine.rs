//! Shape refinement through the StableHLO C API (`xlaguard::refine`), end to end: a symbolic
//! `jax.export` module refined at concrete shapes, compiled and run by the pinned CPU plugin.
//!
//! Its own test binary: it loads an LLVM + MLIR library (the refiner) into the process.
//!
//! `tests/fixtures/refine_constraint.mlirbc` is `jax.export` (jax 0.11.2) of `x.sum(axis=1)` with
//! x: f32[b, s] and the constraint `s <= 8`, written by `tests/fixtures/make_refine_constraint.py`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Instant;

use xlaguard::pjrt::{Api, Client, ClientOptions, CompileOptions};
use xlaguard::refine::{artifact_version, mlir_type, RefineError, Refiner};
use xlaguard::signature::DType;

const TARGET: &str = "1.10.0";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn library() -> PathBuf {
    let p = root().join("third_party/refiner/libTorchMLIRAggregateCAPI.so");
    assert!(
        p.is_file(),
        "missing {}: run scripts/fetch-plugin.sh --refiner-only",
        p.display()
    );
    p
}

fn refiner() -> &'static Refiner {
    static R: OnceLock<Refiner> = OnceLock::new();
    R.get_or_init(|| Refiner::load(&library()).expect("the pinned refiner loads"))
}

fn client() -> &'static Client {
    static C: OnceLock<Client> = OnceLock::new();
    C.get_or_init(|| {
        let plugin = root().join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so");
        let api = Api::load(&plugin).expect("the pinned CPU plugin loads");
        Client::new(api, &ClientOptions::cpu()).expect("a CPU client")
    })
}

fn poly() -> Vec<u8> {
    std::fs::read(root().join("hlo/poly/model.mlirbc")).unwrap()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn f32_values(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

#[test]
fn version_of_library_and_artifact() {
    let v = refiner().version();
    assert_eq!(
        v,
        (1, 19, 0),
        "the pinned torch-mlir 20261001 has StableHLO 1.19.0"
    );
    assert!(refiner().minimum_version() <= (1, 10, 0));
    assert_eq!(artifact_version(&poly()), Some((1, 18, 0)));
    assert_eq!(artifact_version(b"not bytecode"), None);
}

#[test]
fn poly_refined_compiles_and_runs() {
    for b in [3u64, 8] {
        let t = Instant::now();
        let refined = refiner()
            .refine(&poly(), &[mlir_type("f32", &[b, 16])], TARGET)
            .unwrap_or_else(|e| panic!("refine at b = {b}: {e}"));
        println!("refine b = {b}: {:?}, {} bytes", t.elapsed(), refined.len());
        assert_eq!(artifact_version(&refined), Some((1, 10, 0)));
        let exe = client()
            .compile(&refined, "mlir", &CompileOptions::new())
            .unwrap_or_else(|e| panic!("compile at b = {b}: {e}"));
        let n = usize::try_from(b).unwrap() * 16;
        let x: Vec<f32> = (0..n).map(|i| i as f32 * 0.25 - 7.0).collect();
        let dims = [i64::try_from(b).unwrap(), 16];
        let buf = client()
            .buffer_from_host(&f32_bytes(&x), DType::F32, &dims)
            .unwrap();
        let out = exe.execute(&[&buf]).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].dims().unwrap(), dims);
        let y = f32_values(&out[0].to_host().unwrap());
        let want: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
        assert_eq!(y, want, "x * 2 at b = {b}");
    }
}

#[test]
fn refine_time() {
    let module = poly();
    let types = [mlir_type("f32", &[5, 16])];
    refiner().refine(&module, &types, TARGET).unwrap();
    let n = 20;
    let t = Instant::now();
    for _ in 0..n {
        refiner().refine(&module, &types, TARGET).unwrap();
    }
    println!(
        "refine hlo/poly: {:?} per call (mean of {n})",
        t.elapsed() / n
    );
}

#[test]
fn wrong_static_dim_is_a_pipeline_error() {
    let err = refiner()
        .refine(&poly(), &["tensor<3x17xf32>".to_string()], TARGET)
        .unwrap_err();
    match &err {
        RefineError::Pipeline(d) => {
            assert!(d.contains("invalid refinement for argument 0"), "{d}");
            assert!(d.contains("tensor<3x17xf32>"), "{d}");
        }
        other => panic!("expected Pipeline, got {other:?}"),
    }
}

#[test]
fn wrong_number_of_types_is_a_pipeline_error() {
    let t = mlir_type("f32", &[3, 16]);
    let err = refiner()
        .refine(&poly(), &[t.clone(), t], TARGET)
        .unwrap_err();
    match &err {
        RefineError::Pipeline(d) => assert!(d.contains("number of refinements"), "{d}"),
        other => panic!("expected Pipeline, got {other:?}"),
    }
    let err = refiner().refine(&poly(), &[], TARGET).unwrap_err();
    assert!(matches!(err, RefineError::Pipeline(_)), "{err:?}");
}

#[test]
fn malformed_arguments_are_refused_before_mlir() {
    let err = refiner()
        .refine(&poly(), &["tensor<3x16xf32>},canonicalize{".into()], TARGET)
        .unwrap_err();
    assert!(matches!(err, RefineError::InvalidArgument(_)), "{err:?}");
    let err = refiner()
        .refine(&poly(), &[mlir_type("f32", &[3, 16])], "1.10")
        .unwrap_err();
    assert!(matches!(err, RefineError::InvalidArgument(_)), "{err:?}");
}

#[test]
fn versions_are_checked() {
    let types = [mlir_type("f32", &[3, 16])];
    // A target newer than the refiner: the refiner is too old.
    match refiner().refine(&poly(), &types, "1.99.0").unwrap_err() {
        RefineError::TooOld {
            what,
            version,
            needed,
        } => {
            assert!(what.contains("refiner"), "{what}");
            assert_eq!(version, "1.19.0");
            assert!(needed.contains("1.99.0"), "{needed}");
        }
        other => panic!("expected TooOld, got {other:?}"),
    }
    // A module from a newer StableHLO: rewrite the producer string in place (same length).
    let mut newer = poly();
    let at = newer
        .windows(17)
        .position(|w| w == b"StableHLO_v1.18.0")
        .unwrap();
    newer[at..at + 17].copy_from_slice(b"StableHLO_v1.20.0");
    assert_eq!(artifact_version(&newer), Some((1, 20, 0)));
    match refiner().refine(&newer, &types, TARGET).unwrap_err() {
        RefineError::TooOld {
            what,
            version,
            needed,
        } => {
            assert!(what.contains("refiner"), "{what}");
            assert_eq!(version, "1.19.0");
            assert!(needed.contains("1.20.0"), "{needed}");
        }
        other => panic!("expected TooOld, got {other:?}"),
    }
    // A target older than the refiner can write.
    match refiner().refine(&poly(), &types, "0.0.1").unwrap_err() {
        RefineError::TooOld { what, .. } => assert!(what.contains("target"), "{what}"),
        other => panic!("expected TooOld, got {other:?}"),
    }
}

#[test]
fn truncated_or_garbage_module_is_a_deserialize_error() {
    let m = poly();
    let types = [mlir_type("f32", &[3, 16])];
    for cut in [m.len() / 2, 40, 4] {
        let err = refiner().refine(&m[..cut], &types, TARGET).unwrap_err();
        assert!(
            matches!(err, RefineError::Deserialize(_)),
            "cut at {cut}: {err:?}"
        );
    }
    let err = refiner()
        .refine(b"\x00garbage\xff", &types, TARGET)
        .unwrap_err();
    assert!(matches!(err, RefineError::Deserialize(_)), "{err:?}");
}

#[test]
fn shape_constraint_failure_gives_jax_message() {
    let m = std::fs::read(root().join("tests/fixtures/refine_constraint.mlirbc")).unwrap();
    // Within the constraint it refines.
    refiner()
        .refine(&m, &[mlir_type("f32", &[2, 8])], TARGET)
        .unwrap();
    match refiner()
        .refine(&m, &[mlir_type("f32", &[2, 9])], TARGET)
        .unwrap_err()
    {
        RefineError::ShapeAssertion { message } => {
            println!("{message}");
            assert!(
                message
                    .starts_with("Input shapes do not match the symbolic shape constraint s <= 8"),
                "{message}"
            );
            assert!(message.contains("'s' = 9"), "{message}");
            assert!(
                !message.contains("{0}") && !message.contains("{1}"),
                "{message}"
            );
            assert!(!message.contains("loc("), "{message}");
        }
        other => panic!("expected ShapeAssertion, got {other:?}"),
    }
    // b >= 1 is JAX's own assertion.
    match refiner()
        .refine(&m, &[mlir_type("f32", &[0, 4])], TARGET)
        .unwrap_err()
    {
        RefineError::ShapeAssertion { message } => {
            assert!(
                message.contains("Expected value >= 1 for dimension variable 'b'"),
                "{message}"
            )
        }
        other => panic!("expected ShapeAssertion, got {other:?}"),
    }
}

#[test]
fn shardy_module_is_unsupported() {
    let m = std::fs::read(root().join("hlo/qr/model.mlirbc")).unwrap();
    // qr's @main takes one f32 matrix; the failure comes before the types matter.
    match refiner()
        .refine(&m, &[mlir_type("f32", &[4, 4])], TARGET)
        .unwrap_err()
    {
        RefineError::Unsupported { construct, detail } => {
            assert_eq!(construct, "Shardy (sdy) attributes");
            assert!(detail.contains("dialect 'sdy'"), "{detail}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[test]
fn corrupted_library_is_a_load_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("libTorchMLIRAggregateCAPI.so");
    std::fs::write(&p, b"\x7fELF this is not really a shared library").unwrap();
    match Refiner::load(&p).unwrap_err() {
        RefineError::Load { path, detail } => {
            assert_eq!(path, p);
            assert!(!detail.is_empty());
        }
        other => panic!("expected Load, got {other:?}"),
    }
    let missing = dir.path().join("absent.so");
    assert!(matches!(
        Refiner::load(&missing).unwrap_err(),
        RefineError::Load { .. }
    ));
    // A real shared library that is not the refiner.
    let plugin = root().join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so");
    match Refiner::load(&plugin).unwrap_err() {
        RefineError::MissingSymbol { path, symbol } => {
            assert_eq!(path, plugin);
            assert!(
                symbol.starts_with("stablehlo") || symbol.starts_with("mlir"),
                "{symbol}"
            );
        }
        other => panic!("expected MissingSymbol, got {other:?}"),
    }
}
