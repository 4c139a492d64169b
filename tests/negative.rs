//! Bad inputs, bad artifacts, bad plugins: each a typed error, never a panic or an abort.

mod common;

use common::{engine, fixture, numbered};
use xlaguard::pjrt::{Api, LoadError};
use xlaguard::validate::InputError;
use xlaguard::{DType, Engine, EngineConfig, Error, Tensor};

fn tiny() -> xlaguard::Model {
    engine()
        .load_file(&fixture("tiny").join("model.jaxexport"))
        .unwrap()
}

fn input_error(r: Result<Vec<Tensor>, Error>) -> InputError {
    match r {
        Err(Error::InvalidInput(e)) => e,
        other => panic!("expected InvalidInput, got {other:?}"),
    }
}

#[test]
fn wrong_count() {
    let m = tiny();
    let x = Tensor::from_slice(&[8, 16], &[0f32; 128]).unwrap();
    let e = input_error(m.run(&[x.view()]));
    assert!(
        matches!(
            e,
            InputError::Count {
                expected: 2,
                got: 1,
                ..
            }
        ),
        "{e}"
    );
    let e = input_error(m.run(&[x.view(), x.view(), x.view()]));
    assert!(
        matches!(
            e,
            InputError::Count {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{e}"
    );
}

#[test]
fn wrong_dtype_rank_dims_and_length() {
    let m = tiny();
    let name = m.signature().inputs[0].name.clone();
    let good = Tensor::from_slice(&[8, 16], &[0f32; 128]).unwrap();
    let ints = Tensor::from_slice(&[8, 16], &[0i32; 128]).unwrap();
    let e = input_error(m.run(&[ints.view(), good.view()]));
    assert_eq!(
        e.to_string(),
        format!("input '{name}' (0): expected float32[8,16], got int32[8,16]")
    );
    let flat = Tensor::from_slice(&[128], &[0f32; 128]).unwrap();
    let e = input_error(m.run(&[flat.view(), good.view()]));
    assert_eq!(
        e.to_string(),
        format!("input '{name}' (0): expected float32[8,16], got float32[128]")
    );
    let short = Tensor::from_slice(&[8, 15], &[0f32; 120]).unwrap();
    let e = input_error(m.run(&[short.view(), good.view()]));
    assert_eq!(
        e.to_string(),
        format!("input '{name}' (0): expected float32[8,16], got float32[8,15]")
    );
    // A view whose bytes do not match its own shape (a caller's bug) is caught before upload.
    let mut bad = good.view();
    bad.data = &bad.data[..511];
    let e = input_error(m.run(&[bad, good.view()]));
    assert!(matches!(e, InputError::ByteLength { got: 511, .. }), "{e}");
    assert!(e.to_string().contains("needs 512 bytes, got 511"), "{e}");
    // Overflowing shapes are an error, not a wrap-around.
    let mut huge = good.view();
    huge.shape = &[u64::MAX, 16];
    assert!(matches!(
        input_error(m.run(&[huge, good.view()])),
        InputError::Shape { .. }
    ));
}

#[test]
fn unknown_and_missing_names() {
    let m = tiny();
    let x = Tensor::from_slice(&[8, 16], &[0f32; 128]).unwrap();
    let e = input_error(m.run_named(vec![("nope".into(), x.view())]));
    assert!(matches!(e, InputError::UnknownName { .. }), "{e}");
    let first = m.signature().inputs[0].name.clone();
    let e = input_error(m.run_named(vec![(first, x.view())]));
    assert!(matches!(e, InputError::Missing { index: 1, .. }), "{e}");
}

#[test]
fn dropped_inputs_are_still_checked_and_then_ignored() {
    let dir = fixture("kept_var");
    let m = engine().load_file(&dir.join("model.jaxexport")).unwrap();
    assert_eq!(m.signature().inputs.len(), 2);
    let ins = numbered(&dir, "in");
    let wrong = Tensor::from_slice(&[4], &[0f32; 4]).unwrap();
    assert!(matches!(
        m.run(&[ins[0].view(), wrong.view()]),
        Err(Error::InvalidInput(_))
    ));
    let other = Tensor::from_slice(&[3], &[9f32, 9., 9.]).unwrap();
    let out = m.run(&[ins[0].view(), other.view()]).unwrap();
    assert_eq!(out[0].bytes(), numbered(&dir, "out")[0].bytes());
}

#[test]
fn truncated_and_corrupt_artifacts() {
    let bytes = std::fs::read(fixture("digits").join("model.jaxexport")).unwrap();
    for cut in [0, 1, 4, 8, 16, 100, bytes.len() / 2, bytes.len() - 1] {
        match engine().load_bytes(&bytes[..cut]) {
            Err(Error::Artifact(_)) | Err(Error::CompileRejected(_)) => {}
            other => panic!("cut {cut}: expected an artifact error, got {other:?}"),
        }
    }
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| i.wrapping_mul(2654435761).to_le_bytes()[2])
        .collect();
    assert!(engine().load_bytes(&garbage).is_err());
    let text = b"func.func @main(%x: tensor<4xf32>) -> tensor<4xf32> { this is not mlir }";
    match engine().load_bytes(text) {
        Err(Error::Artifact(_)) | Err(Error::CompileRejected(_)) => {}
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn unsupported_features_are_refused_clearly() {
    // Raw StableHLO with `?` dimensions names no dimension variables.
    let poly = engine()
        .load_file(&fixture("poly").join("model.mlir"))
        .unwrap_err();
    assert!(matches!(poly, Error::Artifact(_)), "{poly}");
    assert!(
        poly.to_string().to_lowercase().contains("symbolic")
            && poly.to_string().contains("jax.export"),
        "{poly}"
    );
    let eff = engine()
        .load_file(&fixture("ordered_effect").join("model.jaxexport"))
        .unwrap_err();
    assert!(matches!(eff, Error::Artifact(_)), "{eff}");
    assert!(eff.to_string().contains("ordered effect"), "{eff}");
    // A custom call no handler is registered for fails at compile, with the plugin's message.
    let unknown = engine()
        .load_bytes(
            b"func.func public @main(%arg0: tensor<4xf32>) -> tensor<4xf32> {\n  %0 = stablehlo.custom_call @xlaguard_no_such_target(%arg0) {mhlo.backend_config = {}} : (tensor<4xf32>) -> tensor<4xf32>\n  return %0 : tensor<4xf32>\n}\n",
        )
        .unwrap_err();
    assert!(matches!(unknown, Error::CompileRejected(_)), "{unknown}");
    assert!(
        unknown.to_string().contains("xlaguard_no_such_target"),
        "{unknown}"
    );
    // Without the `lapack` feature, LAPACK custom calls (jnp.linalg) have no handler either.
    #[cfg(not(feature = "lapack"))]
    {
        let qr = engine()
            .load_file(&fixture("qr").join("model.jaxexport"))
            .unwrap_err();
        assert!(matches!(qr, Error::CompileRejected(_)), "{qr}");
        assert!(qr.to_string().contains("lapack"), "{qr}");
    }
}

#[test]
fn a_file_that_is_not_a_plugin() {
    let dir = std::env::temp_dir().join(format!("xlaguard-notplugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let text = dir.join("plugin.so");
    std::fs::write(&text, b"not an ELF file").unwrap();
    assert!(matches!(Api::load(&text), Err(LoadError::Dlopen { .. })));
    assert!(matches!(
        Api::load(&dir.join("absent.so")),
        Err(LoadError::NotFound { .. })
    ));
    // A real shared library without GetPjrtApi.
    let libm = [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .iter()
    .find(|p| std::path::Path::new(p).is_file());
    if let Some(p) = libm {
        let e = Api::load(std::path::Path::new(p)).unwrap_err();
        assert!(matches!(e, LoadError::MissingSymbol { .. }), "{e}");
        assert!(e.to_string().contains("not a PJRT plugin"), "{e}");
    }
    let mut c = EngineConfig::default();
    c.plugin(&text);
    let e = Engine::new(&c).unwrap_err();
    assert!(matches!(e, Error::PluginLoad(_)), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_dtype_reaches_the_device_and_back() {
    // The real dtypes are in `dtypes`; complex ones in the two complex fixtures.
    let mut dtypes: Vec<DType> = Vec::new();
    for f in ["dtypes", "complex_fft", "complex128"] {
        let m = engine()
            .load_file(&fixture(f).join("model.jaxexport"))
            .unwrap();
        dtypes.extend(m.signature().inputs.iter().map(|s| s.dtype));
    }
    for d in DType::ALL {
        assert!(dtypes.contains(&d), "the dtypes fixture lacks {d}");
    }
}

#[test]
fn an_export_for_another_platform_is_refused_unless_allowed() {
    let e = engine()
        .load_file(&fixture("cuda_only").join("model.jaxexport"))
        .unwrap_err();
    assert!(matches!(e, Error::Artifact(_)), "{e}");
    assert!(
        e.to_string().contains("cuda") && e.to_string().contains("cpu"),
        "{e}"
    );
    // Explicitly allowed: the tiny module's StableHLO is platform-neutral and runs on the CPU.
    let mut c = common::config();
    c.allow_platform_mismatch = true;
    let lenient = Engine::new(&c).unwrap();
    let m = lenient
        .load_file(&fixture("cuda_only").join("model.jaxexport"))
        .unwrap();
    let ins = numbered(&fixture("tiny"), "in");
    let out = m.run(&[ins[0].view(), ins[1].view()]).unwrap();
    assert_eq!(out[0].bytes(), numbered(&fixture("tiny"), "out")[0].bytes());
}

#[test]
fn a_signature_that_lies_about_its_module_is_refused_at_load() {
    let dir = fixture("lying");
    for (file, side, declared, compiled) in [
        (
            "in_avals_int32.jaxexport",
            "inputs",
            "int32[8,16], int32[8,16]",
            "float32[8,16], float32[8,16]",
        ),
        (
            "out_avals_bf16.jaxexport",
            "outputs",
            "bfloat16[8,16]",
            "float32[8,16]",
        ),
    ] {
        let e = engine().load_file(&dir.join(file)).unwrap_err();
        assert!(matches!(e, xlaguard::Error::Artifact(_)), "{file}: {e:?}");
        let m = e.to_string();
        assert!(
            m.contains(&format!("declares {side} ({declared})"))
                && m.contains(&format!("({compiled})")),
            "{file}: {m}"
        );
    }
}

#[test]
fn main_in_a_comment_or_string_is_not_the_signature() {
    // A fake int32 @main sits in a comment and in a string attribute before the real one.
    let m = engine()
        .load_file(&fixture("lying").join("main_in_comment.mlir"))
        .unwrap();
    let types: Vec<String> = m
        .signature()
        .inputs
        .iter()
        .map(|s| s.type_string())
        .collect();
    assert_eq!(types, ["float32[8,16]", "float32[8,16]"]);
    // And the value policy follows the real types: a NaN is refused.
    let x = Tensor::from_slice(&[8, 16], &[f32::NAN; 128]).unwrap();
    let e = m.run(&[x.view(), x.view()]).unwrap_err();
    assert!(e.to_string().contains("NaN"), "{e}");
}
