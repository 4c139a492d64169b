//! jnp.linalg exports run: xlaguard's LAPACK custom-call handlers (src/lapack) against JAX's own
//! outputs (hlo/export_linalg.py wrote them with jaxlib's handlers over scipy's OpenBLAS).
//!
//! The comparison is bit for bit: the handlers call the same LAPACK routines of the same library
//! (the pinned copy of scipy's OpenBLAS) with the same leading dimensions and workspace sizes
//! as jaxlib's, and the rest of each module is compiled by the same XLA. On mismatch the test
//! reports the largest difference in ulps, the number docs/linalg.md states (0).
#![cfg(feature = "lapack")]

mod common;

use std::path::{Path, PathBuf};

use serde_json::Value;
use xlaguard::{DType, Error, Tensor, TensorRef};

use common::{cli_run, engine, fixture, numbered, root, thread_engine, xlaguard_cmd};

fn linalg_dirs() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(fixture("linalg"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("model.jaxexport").is_file())
        .collect();
    v.sort();
    assert!(
        v.len() >= 40,
        "expected the hlo/linalg fixtures, found {}",
        v.len()
    );
    v
}

/// A fixture's model, with NaN and infinities let through (the default policy refuses them;
/// `nan_input_f32` is about what LAPACK does with one).
fn load(engine: &xlaguard::Engine, dir: &Path) -> xlaguard::Model {
    let m = engine
        .load_file(&dir.join("model.jaxexport"))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut p = xlaguard::Policy::new();
    for i in &m.signature().inputs {
        p.input(&i.name)
            .nan(xlaguard::validate::NonFinite::Allow)
            .inf(xlaguard::validate::NonFinite::Allow);
    }
    m.with_policy(p).unwrap()
}

/// Runs a fixture on its inputs.
fn run(engine: &xlaguard::Engine, dir: &Path) -> Vec<Tensor> {
    let inputs = numbered(dir, "in");
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    load(engine, dir)
        .run(&views)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

fn meta(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap()
}

/// Distance in units in the last place between two floats of the same width, taken as
/// sign-magnitude integers (two NaNs count as equal only with the same bits, else `u64::MAX`).
fn ulps(dtype: DType, a: &[u8], b: &[u8]) -> u64 {
    let key32 = |x: &[u8]| {
        let b = u32::from_le_bytes(x.try_into().unwrap());
        let m = i128::from(b & 0x7fff_ffff);
        (
            f32::from_bits(b).is_nan(),
            if b >> 31 == 1 { -m } else { m },
        )
    };
    let key64 = |x: &[u8]| {
        let b = u64::from_le_bytes(x.try_into().unwrap());
        let m = i128::from(b & 0x7fff_ffff_ffff_ffff);
        (
            f64::from_bits(b).is_nan(),
            if b >> 63 == 1 { -m } else { m },
        )
    };
    type Key<'k> = &'k dyn Fn(&[u8]) -> (bool, i128);
    let (width, key): (usize, Key<'_>) = match dtype {
        DType::F32 | DType::C64 => (4, &key32),
        DType::F64 | DType::C128 => (8, &key64),
        _ => return if a == b { 0 } else { u64::MAX },
    };
    a.chunks_exact(width)
        .zip(b.chunks_exact(width))
        .map(|(x, y)| {
            if x == y {
                return 0;
            }
            match (key(x), key(y)) {
                ((false, x), (false, y)) => u64::try_from(x.abs_diff(y)).unwrap_or(u64::MAX),
                _ => u64::MAX,
            }
        })
        .max()
        .unwrap_or(0)
}

/// Compares outputs with JAX's; returns the largest ulp distance (0 when bit-identical).
fn max_ulps(what: &str, got: &[Tensor], expected: &[Tensor]) -> u64 {
    assert_eq!(got.len(), expected.len(), "{what}: output count");
    let mut worst = 0;
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g.type_string(), e.type_string(), "{what}: out{i} type");
        worst = worst.max(ulps(e.dtype(), g.bytes(), e.bytes()));
    }
    worst
}

/// Outputs allowed to differ from JAX's, each with its bound in ulps: differences made by XLA
/// itself, not by the LAPACK handlers. `lstsq_c64` out5 (the residuals of the vmapped lstsq,
/// `norm(b - a @ x, axis=0) ** 2` on complex64) is 1 ulp off in one element although every
/// LAPACK result (x, rank, singular values) is bit-identical: the same computation on the same
/// x, with no custom call at all, gives the same 1-ulp difference between the PJRT plugin and
/// jaxlib's own XLA (measured; see docs/linalg.md). How far off depends on the CPU XLA tunes
/// for, as the goldens do (hlo/README.md): 1 ulp on the export machine, 6 on an AVX2 AMD EPYC
/// (2026-12-01, against JAX's outputs there, `hlo/linalg/lstsq_c64/cpu-avx2/`), at most 1 ulp on an
/// AVX-512 one (`znver4`, 2026-12-02). One bound for every CPU, the worst measured with room
/// (a residual of a solved system is a difference of nearly equal numbers, so a last-bit
/// change in `a @ x` grows in it); every other output of every linalg fixture is bit-identical
/// on each.
const XLA_DIFFERENCES: &[(&str, usize, u64)] = &[("lstsq_c64", 5, 8)];

#[test]
fn every_linalg_fixture_gives_jax_outputs_bit_for_bit() {
    let mut report = Vec::new();
    for dir in linalg_dirs() {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let got = run(engine(), &dir);
        let expected = numbered(&dir, "out");
        assert_eq!(got.len(), expected.len(), "{name}: output count");
        for (k, (g, e)) in got.iter().zip(&expected).enumerate() {
            assert_eq!(g.type_string(), e.type_string(), "{name}: out{k} type");
            let d = ulps(e.dtype(), g.bytes(), e.bytes());
            let allowed = XLA_DIFFERENCES
                .iter()
                .find(|(n, o, _)| *n == name && *o == k)
                .map_or(0, |x| x.2);
            if d > allowed {
                report.push(format!(
                    "{name}: out{k} differs by {d} ulp (allowed {allowed})"
                ));
            }
        }
    }
    assert!(
        report.is_empty(),
        "differs from JAX:\n{}",
        report.join("\n")
    );
}

#[test]
fn every_target_jax_emits_is_registered_and_every_registered_one_is_tested() {
    let ours: Vec<&str> = xlaguard::lapack::targets().collect();
    assert_eq!(ours.len(), 28, "{ours:?}");
    let mut used = std::collections::BTreeSet::new();
    for dir in linalg_dirs() {
        for t in meta(&dir)["custom_call_targets"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            assert!(ours.contains(&t), "{}: {t} has no handler", dir.display());
            used.insert(t.to_string());
        }
    }
    let untested: Vec<&&str> = ours.iter().filter(|t| !used.contains(**t)).collect();
    assert!(untested.is_empty(), "no fixture calls {untested:?}");
}

#[test]
fn failures_follow_jax_semantics() {
    // Outputs are compared bit for bit above; here, that they are what JAX promises.
    let run = |name: &str| run(engine(), &fixture("linalg").join(name));
    let f32s = |t: &Tensor| {
        t.to_array::<f32>()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>()
    };
    // Non-positive-definite Cholesky: the lower triangle all NaN (above it, zeros); in a batch
    // only the bad matrix.
    let lower_nan = |m: &[f32]| {
        (0..3).all(|i| {
            (0..3).all(|j| {
                if j <= i {
                    m[i * 3 + j].is_nan()
                } else {
                    m[i * 3 + j] == 0.0
                }
            })
        })
    };
    let out = run("not_positive_definite_f32");
    assert!(lower_nan(&f32s(&out[0])), "{:?}", f32s(&out[0]));
    let both = f32s(&out[1]);
    assert!(both[..9].iter().all(|x| x.is_finite()), "{both:?}");
    assert!(lower_nan(&both[9..]), "{both:?}");
    // Singular: det 0, slogdet sign 0 and log|det| -inf, rank 3; solve is not finite.
    let out = run("singular_f32");
    assert!(f32s(&out[0]).iter().any(|x| !x.is_finite()));
    assert_eq!(f32s(&out[2]), [0.0]);
    assert_eq!(f32s(&out[3]), [0.0]);
    assert_eq!(f32s(&out[4]), [f32::NEG_INFINITY]);
    assert_eq!(
        out[5]
            .to_array::<i64>()
            .unwrap()
            .iter()
            .copied()
            .collect::<Vec<_>>(),
        [3]
    );
    // A NaN input: svd and eigh are all NaN (LAPACK reports failure, jax masks), no crash.
    let out = run("nan_input_f32");
    for (k, o) in out.iter().enumerate().take(5) {
        assert!(f32s(o).iter().all(|x| x.is_nan()), "output {k}");
    }
    // The Gaussian process interpolates sin(x) where there is data.
    let out = run("gp_posterior_f64");
    let mean = out[0].to_array::<f64>().unwrap();
    let xs: Vec<f64> = (0..9).map(|i| -3.5 + 7.0 * f64::from(i) / 8.0).collect();
    assert!((mean[4] - xs[4].sin()).abs() < 0.2, "{mean:?}");
    // The cubic fit recovers 1.5 - 2x + 0.5x³.
    let out = run("lstsq_fit_f32");
    let c = f32s(&out[0]);
    for (got, want) in c.iter().zip([1.5, -2.0, 0.0, 0.5]) {
        assert!((got - want).abs() < 0.1, "{c:?}");
    }
}

#[test]
fn the_qr_fixture_now_runs_bit_for_bit() {
    let dir = fixture("qr");
    assert_eq!(
        max_ulps("qr", &run(engine(), &dir), &numbered(&dir, "out")),
        0
    );
}

#[test]
fn in_process_compiles_and_cli_run_give_the_same_bits() {
    for name in ["svd_f64", "gp_posterior_f32", "eigh_c64"] {
        let dir = fixture("linalg").join(name);
        let expected = numbered(&dir, "out");
        let got = run(thread_engine(), &dir);
        assert_eq!(max_ulps(name, &got, &expected), 0, "{name}");
        let got = cli_run(&dir.join("model.jaxexport"), &dir);
        assert_eq!(max_ulps(name, &got, &expected), 0, "{name} (run)");
    }
}

/// A one-custom-call module: `%0:N = custom_call @target(args) {attrs}`, returning every result.
fn module(target: &str, args: &[&str], results: &[&str], config: &str, aliased: bool) -> String {
    let params: Vec<String> = args
        .iter()
        .enumerate()
        .map(|(i, t)| format!("%arg{i}: {t}"))
        .collect();
    let names: Vec<String> = (0..args.len()).map(|i| format!("%arg{i}")).collect();
    let layout = |t: &str| {
        let rank = t.matches('x').count();
        let dims: Vec<String> = (0..rank).map(|d| d.to_string()).collect();
        let mut dims = dims;
        if rank >= 2 {
            // The matrix dims column-major, batch dims major: jax's layouts.
            let mut v = vec![(rank - 2).to_string(), (rank - 1).to_string()];
            v.extend((0..rank - 2).rev().map(|d| d.to_string()));
            dims = v;
        }
        format!("dense<[{}]> : tensor<{rank}xindex>", dims.join(", "))
    };
    let alias = match (aliased, results.len()) {
        (false, _) => "",
        (true, 1) => ", output_operand_aliases = [#stablehlo.output_operand_alias<output_tuple_indices = [], operand_index = 0, operand_tuple_indices = []>]",
        (true, _) => ", output_operand_aliases = [#stablehlo.output_operand_alias<output_tuple_indices = [0], operand_index = 0, operand_tuple_indices = []>]",
    };
    let outs: Vec<String> = (0..results.len()).map(|i| format!("%0#{i}")).collect();
    format!(
        "module @m {{\n  func.func public @main({}) -> ({}) {{\n    %0:{} = stablehlo.custom_call @{target}({}) {{mhlo.backend_config = {{{config}}}, operand_layouts = [{}]{alias}, result_layouts = [{}]}} : ({}) -> ({})\n    return {} : {}\n  }}\n}}\n",
        params.join(", "),
        results.join(", "),
        results.len(),
        names.join(", "),
        args.iter().map(|t| layout(t)).collect::<Vec<_>>().join(", "),
        results.iter().map(|t| layout(t)).collect::<Vec<_>>().join(", "),
        args.join(", "),
        results.join(", "),
        outs.join(", "),
        results.join(", "),
    )
}

fn zeros(spec: &str) -> Tensor {
    let inner = spec.trim_start_matches("tensor<").trim_end_matches('>');
    let mut parts: Vec<&str> = inner.split('x').collect();
    let ty = parts.pop().unwrap();
    let shape: Vec<u64> = parts.iter().map(|d| d.parse().unwrap()).collect();
    let n = usize::try_from(shape.iter().product::<u64>()).unwrap();
    let dtype = match ty {
        "f32" => DType::F32,
        "f64" => DType::F64,
        "i32" => DType::I32,
        t => panic!("{t}"),
    };
    // Identity-ish data (a valid SPD / triangular matrix when square).
    let mut bytes = vec![0u8; n * dtype.size()];
    if shape.len() >= 2 && dtype == DType::F32 {
        let (r, c) = (
            usize::try_from(shape[shape.len() - 2]).unwrap(),
            usize::try_from(shape[shape.len() - 1]).unwrap(),
        );
        for b in 0..n / (r * c).max(1) {
            for i in 0..r.min(c) {
                let k = (b * r * c + i * c + i) * 4;
                bytes[k..k + 4].copy_from_slice(&1.0f32.to_le_bytes());
            }
        }
    }
    Tensor::new(dtype, shape, bytes).unwrap()
}

/// Runs a hand-written module whose custom call breaks the target's contract: an execute error
/// naming the problem (never a crash), and the engine keeps working.
fn refused(target: &str, args: &[&str], results: &[&str], config: &str, want: &str) {
    let text = module(target, args, results, config, true);
    let m = engine()
        .load_bytes(text.as_bytes())
        .unwrap_or_else(|e| panic!("{target}: {e}\n{text}"));
    let inputs: Vec<Tensor> = args.iter().map(|a| zeros(a)).collect();
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    let e = m.run(&views).expect_err(target);
    assert!(matches!(e, Error::Plugin(_)), "{target}: {e:?}");
    assert!(e.to_string().contains(want), "{target}: {e}");
    assert!(e.to_string().contains(target), "{target}: {e}");
}

#[test]
fn a_call_that_breaks_the_targets_contract_is_an_execute_error() {
    let f = "tensor<3x3xf32>";
    refused(
        "lapack_spotrf_ffi",
        &[f],
        &[f, "tensor<2xi32>"],
        "uplo = 76 : ui8",
        "result 1 has dims [2], expected []",
    );
    refused(
        "lapack_spotrf_ffi",
        &[f],
        &[f, "tensor<i32>"],
        "",
        "missing attribute uplo",
    );
    refused(
        "lapack_spotrf_ffi",
        &[f],
        &[f, "tensor<i32>"],
        "uplo = 88 : ui8",
        "attribute uplo = 'X'",
    );
    refused(
        "lapack_spotrf_ffi",
        &[f],
        &[f, "tensor<i32>"],
        "uplo = 76 : i32",
        "uplo should be a ui8 scalar",
    );
    refused(
        "lapack_dpotrf_ffi",
        &[f],
        &[f, "tensor<i32>"],
        "uplo = 76 : ui8",
        "expected f64 but got f32",
    );
    refused(
        "lapack_spotrf_ffi",
        &["tensor<3x2xf32>"],
        &["tensor<3x2xf32>", "tensor<i32>"],
        "uplo = 76 : ui8",
        "expected square matrices, got 3x2",
    );
    refused(
        "lapack_sgetrf_ffi",
        &[f],
        &[f, "tensor<3xf32>", "tensor<i32>"],
        "",
        "result 1: expected s32 but got f32",
    );
    refused(
        "lapack_sgetrf_ffi",
        &["tensor<3xf32>"],
        &["tensor<3xf32>", "tensor<1xi32>", "tensor<i32>"],
        "",
        "expected a matrix",
    );
    refused(
        "lapack_sgesdd_ffi",
        &[f],
        &[f, "tensor<3xf32>", f, f, "tensor<i32>"],
        "mode = 79 : ui8",
        "mode 'O' is not supported",
    );
    refused(
        "lapack_sgesdd_ffi",
        &[f],
        &[f, "tensor<3xf32>", "tensor<3x2xf32>", f, "tensor<i32>"],
        "mode = 65 : ui8",
        "result 2 has dims [3, 2], expected [3, 3]",
    );
    refused(
        "lapack_ssyevd_ffi",
        &[f],
        &[f, "tensor<3xf32>"],
        "mode = 86 : ui8, uplo = 76 : ui8",
        "expected 1 operands and 3 results, got 1 and 2",
    );
    refused(
        "lapack_sorgqr_ffi",
        &["tensor<3x3xf32>", "tensor<4xf32>"],
        &[f],
        "",
        "needs m >= n >= k",
    );
    // trsm: the triangle must match the side (left: m x m).
    let text = module(
        "lapack_strsm_ffi",
        &["tensor<3x3xf32>", "tensor<4x2xf32>"],
        &["tensor<4x2xf32>"],
        "diag = 78 : ui8, side = 76 : ui8, trans_x = 78 : ui8, uplo = 76 : ui8",
        false,
    );
    let m = engine().load_bytes(text.as_bytes()).unwrap();
    let ins = [zeros("tensor<3x3xf32>"), zeros("tensor<4x2xf32>")];
    let e = m.run(&[ins[0].view(), ins[1].view()]).unwrap_err();
    assert!(
        e.to_string()
            .contains("operand 0 has dims [3, 3], expected [4, 4]"),
        "{e}"
    );
    // The engine still runs LAPACK models.
    let dir = fixture("linalg").join("cholesky_f32");
    let got = run(engine(), &dir);
    assert_eq!(max_ulps("cholesky_f32", &got, &numbered(&dir, "out")), 0);
}

#[test]
fn compile_needs_no_lapack_library_and_a_missing_one_is_an_execute_error() {
    // The jailed compile worker only registers the handlers (it never loads LAPACK); with no
    // usable library, compiling still succeeds and the first execute fails, naming it.
    let dir = fixture("linalg").join("solve_f32");
    let missing = root().join("target/no-such-lapack.so");
    let out = xlaguard_cmd()
        .env("XLAGUARD_LAPACK", &missing)
        .arg("run")
        .arg(dir.join("model.jaxexport"))
        .args((0..4).map(|i| dir.join(format!("in{i}.npy"))))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("lapack_sgetrf_ffi"), "{err}");
    assert!(err.contains("cannot load LAPACK library"), "{err}");
    assert!(err.contains("no-such-lapack.so"), "{err}");
    assert!(
        !err.to_lowercase().contains("compile"),
        "failed at compile: {err}"
    );
}
