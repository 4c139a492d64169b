//! Value policies on the real CPU plugin with the JAX fixtures in hlo/ and hlo/policy/: every
//! rule accepts what it should and refuses or sanitizes what it should, sanitized inputs give
//! JAX's own outputs on the same sanitized inputs (bit for bit), the caller's buffers are never
//! changed, and every bad policy file is an error naming the file, line and key.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::{engine, fixture, numbered};
use xlaguard::validate::scan::{LimitError, Value};
use xlaguard::validate::{
    BoundPolicy, NonFinite, OutOfRange, Policy, PolicyAction, PolicyErrorKind, Rule, RunReport,
};
use xlaguard::{Error, Model, Tensor, TensorRef};

fn policy_dir() -> PathBuf {
    fixture("policy")
}

fn npy(name: &str) -> Tensor {
    Tensor::read_npy(&policy_dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn case(name: &str) -> Policy {
    Policy::load(&policy_dir().join(format!("{name}.policy.toml"))).unwrap()
}

fn model(name: &str) -> Model {
    engine()
        .load_file(&fixture(name).join("model.jaxexport"))
        .unwrap()
}

fn model_with(name: &str, policy: Policy) -> Model {
    model(name).with_policy(policy).unwrap()
}

fn run(m: &Model, inputs: &[Tensor]) -> Result<(Vec<Tensor>, RunReport), Error> {
    let views: Vec<TensorRef<'_>> = inputs.iter().map(Tensor::view).collect();
    m.run_with_report(&views)
}

fn violation(r: Result<(Vec<Tensor>, RunReport), Error>) -> xlaguard::PolicyViolation {
    match r {
        Err(Error::PolicyViolation(v)) => *v,
        Err(e) => panic!("expected a policy violation, got {e}"),
        Ok(_) => panic!("expected a policy violation, the call ran"),
    }
}

fn assert_outputs(got: &[Tensor], prefix: &str) {
    let expected: Vec<Tensor> = (0..got.len())
        .map(|i| npy(&format!("{prefix}{i}.npy")))
        .collect();
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(g.type_string(), e.type_string(), "{prefix}{i}");
        assert!(
            g.bytes() == e.bytes(),
            "{prefix}{i} differs from JAX's output"
        );
    }
}

/// A scratch folder for this test binary.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xlaguard-policy-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

// ---- min / max ---------------------------------------------------------------------------

#[test]
fn max_rejects_with_the_issue_message() {
    let mut p = Policy::new();
    p.input("pixels").max(16.0);
    let m = model_with("digits", p);
    let v = violation(run(&m, &[npy("digits_dirty.npy")]));
    assert_eq!(
        v.to_string(),
        "input 'pixels': 3 values above max 16.0; first at [0, 41] = 255.0"
    );
    assert_eq!(v.rule, Rule::Max);
    assert_eq!(v.count, 3);
    let first = v.first.unwrap();
    assert_eq!((first.flat, first.index), (41, vec![0, 41]));
    assert_eq!(first.value, Value::F32(255.0));
}

#[test]
fn min_and_max_accept_in_range_and_reject_below_first() {
    let m = model_with("digits", case("digits_range"));
    // The real digit is within [0, 16]: JAX's outputs, nothing changed.
    let (out, report) = run(
        &m,
        &[Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap()],
    )
    .unwrap();
    assert!(report.is_empty(), "{report}");
    assert_eq!(out, numbered(&fixture("digits"), "out"));
    // Both bounds broken: `min` is reported (rules in the order nan, inf, min, max).
    let v = violation(run(&m, &[npy("digits_dirty.npy")]));
    assert_eq!(
        v.to_string(),
        "input 'pixels': 2 values below min 0.0; first at [0, 5] = -3.0"
    );
    // validate() refuses the same input without running anything.
    let dirty = npy("digits_dirty.npy");
    assert!(matches!(
        m.validate(&[dirty.view()]),
        Err(Error::PolicyViolation(_))
    ));
    // Bounds are inclusive: exactly 0.0 and 16.0 (and -0.0) pass.
    let mut edge = vec![0.0f32; 64];
    edge[0] = 16.0;
    edge[1] = -0.0;
    let t = Tensor::from_slice(&[1, 64], &edge).unwrap();
    run(&m, &[t]).unwrap();
}

#[test]
fn clip_gives_jax_outputs_on_the_clipped_input() {
    let m = model_with("digits", case("digits_clip"));
    let dirty = npy("digits_dirty.npy");
    let before = dirty.clone();
    let (out, report) = run(&m, std::slice::from_ref(&dirty)).unwrap();
    assert_outputs(&out, "digits_clipped_out");
    assert_eq!(dirty, before, "the caller's buffer was modified");
    assert_eq!(report.count("pixels", Rule::Min), 2);
    assert_eq!(report.count("pixels", Rule::Max), 3);
    assert_eq!(
        report.to_string(),
        "input 'pixels': 2 values clipped to min 0.0, 3 values clipped to max 16.0"
    );
    // The clipped input itself passes unchanged and gives the same outputs.
    let (out2, report2) = run(&m, &[npy("digits_clipped.npy")]).unwrap();
    assert!(report2.is_empty());
    assert_eq!(out2, out);
    // validate() accepts what a clip rule would fix.
    m.validate(&[dirty.view()]).unwrap();
    // Model::run (the unchanged signature) sanitizes too.
    assert_eq!(m.run(&[dirty.view()]).unwrap(), out);
}

#[test]
fn integer_bounds_are_exact() {
    let m = model_with("embedding", case("ids_range"));
    let ids = Tensor::read_npy(&fixture("embedding").join("in0.npy")).unwrap();
    let (out, _) = run(&m, &[ids]).unwrap();
    assert_eq!(out, numbered(&fixture("embedding"), "out"));
    let v = violation(run(&m, &[npy("ids_dirty.npy")]));
    assert_eq!(
        v.to_string(),
        "input 'ids': 1 value below min 0; first at [0, 2] = -1"
    );
    // 49 passes, 50 does not.
    let mut ok = vec![0i32; 24];
    ok[23] = 49;
    run(&m, &[Tensor::from_slice(&[4, 6], &ok).unwrap()]).unwrap();
    ok[23] = 50;
    let v = violation(run(&m, &[Tensor::from_slice(&[4, 6], &ok).unwrap()]));
    assert_eq!(
        v.to_string(),
        "input 'ids': 1 value above max 49; first at [3, 5] = 50"
    );
}

#[test]
fn integer_clip_gives_jax_outputs() {
    let m = model_with("embedding", case("ids_clip"));
    let (out, report) = run(&m, &[npy("ids_dirty.npy")]).unwrap();
    assert_outputs(&out, "ids_clipped_out");
    assert_eq!(report.count("ids", Rule::Min), 1);
    assert_eq!(report.count("ids", Rule::Max), 2);
    assert_eq!(
        report.to_string(),
        "input 'ids': 1 value clipped to min 0, 2 values clipped to max 49"
    );
}

// ---- nan / inf ---------------------------------------------------------------------------

#[test]
fn floats_reject_nan_and_inf_by_default() {
    let m = model("digits");
    let v = violation(run(&m, &[npy("digits_nonfinite.npy")]));
    assert_eq!(
        v.to_string(),
        "input 'pixels': 2 NaN values; first at [0, 3] = NaN"
    );
    let mut p = Policy::new();
    p.input("pixels").nan(NonFinite::Allow);
    let m = model_with("digits", p);
    let v = violation(run(&m, &[npy("digits_nonfinite.npy")]));
    assert_eq!(
        v.to_string(),
        "input 'pixels': 2 infinite values; first at [0, 7] = inf"
    );
    // Integers have no NaN: the default policy checks nothing on them.
    let m = model("embedding");
    run(&m, &[npy("ids_dirty.npy")]).unwrap();
}

#[test]
fn allow_lets_nan_and_inf_through() {
    let mut p = Policy::new();
    p.input("pixels")
        .nan(NonFinite::Allow)
        .inf(NonFinite::Allow);
    let m = model_with("digits", p);
    let (out, report) = run(&m, &[npy("digits_nonfinite.npy")]).unwrap();
    assert!(report.is_empty());
    // The model saw the NaN: its logits are NaN.
    let logits = out[1].to_array::<f32>().unwrap();
    assert!(logits.iter().any(|x| x.is_nan()));
}

#[test]
fn replace_gives_jax_outputs_on_the_replaced_input() {
    let m = model_with("digits", case("digits_replace"));
    let input = npy("digits_nonfinite.npy");
    let before = input.clone();
    let (out, report) = run(&m, std::slice::from_ref(&input)).unwrap();
    assert_outputs(&out, "digits_replaced_out");
    assert_eq!(input, before);
    assert_eq!(
        report.to_string(),
        "input 'pixels': 2 NaN values replaced with 0.0, 2 infinite values replaced with 8.0"
    );
}

#[test]
fn allowed_infinities_are_clipped_like_any_out_of_range_value() {
    let m = model_with("digits", case("digits_inf_clip"));
    let (out, report) = run(&m, &[npy("digits_nonfinite.npy")]).unwrap();
    assert_outputs(&out, "digits_inf_clipped_out");
    assert_eq!(report.count("pixels", Rule::Nan), 2);
    assert_eq!(report.count("pixels", Rule::Min), 1);
    assert_eq!(report.count("pixels", Rule::Max), 1);
    // With "reject" the allowed infinity is out of range: refused as such.
    let mut p = case("digits_inf_clip");
    p.input("pixels").out_of_range(OutOfRange::Reject);
    let m = model_with("digits", p);
    let v = violation(run(&m, &[npy("digits_nonfinite.npy")]));
    assert_eq!(
        v.to_string(),
        "input 'pixels': 1 value below min 0.0; first at [0, 9] = -inf"
    );
}

#[test]
fn reused_staging_buffers_carry_nothing_over() {
    // The same model sanitizes different inputs in turn; staging buffers are recycled.
    let m = model_with("digits", case("digits_inf_clip"));
    for _ in 0..2 {
        let (out, _) = run(&m, &[npy("digits_nonfinite.npy")]).unwrap();
        assert_outputs(&out, "digits_inf_clipped_out");
        let (out, _) = run(&m, &[npy("digits_dirty.npy")]).unwrap();
        assert_outputs(&out, "digits_clipped_out");
        let (out, report) = run(&m, &[npy("digits_clipped.npy")]).unwrap();
        assert!(report.is_empty());
        assert_outputs(&out, "digits_clipped_out");
    }
}

#[test]
fn bf16_is_checked_and_sanitized_in_its_own_width() {
    let dirty = npy("attention_dirty.npy");
    let v = violation(run(&model("attention"), std::slice::from_ref(&dirty)));
    assert_eq!(
        v.to_string(),
        "input 'x': 2 NaN values; first at [0, 0, 1] = NaN"
    );
    let m = model_with("attention", case("attention_clip"));
    let (out, report) = run(&m, std::slice::from_ref(&dirty)).unwrap();
    assert_outputs(&out, "attention_clipped_out");
    assert_eq!(
        report.to_string(),
        "input 'x': 2 NaN values replaced with 0.0, 1 value clipped to min -4.0, 1 value clipped to max 4.0"
    );
    let mut p = case("attention_clip");
    p.input("x").out_of_range(OutOfRange::Reject);
    let v = violation(run(&model_with("attention", p), &[dirty]));
    assert_eq!(
        v.to_string(),
        "input 'x': 1 value below min -4.0; first at [0, 9, 31] = -100.0"
    );
}

#[test]
fn every_dtype_is_sanitized_in_its_own_type() {
    let dir = fixture("dtypes");
    let mut inputs = numbered(&dir, "in");
    for i in [5, 9, 10, 11, 12] {
        inputs[i] = npy(&format!("dtypes_dirty_in{i}.npy"));
    }
    // bf16 arrives as '<V2' with no dtype of its own; the model says what it is.
    inputs[10] = Tensor::new(
        xlaguard::DType::BF16,
        inputs[10].shape().to_vec(),
        inputs[10].bytes().to_vec(),
    )
    .unwrap();
    let v = violation(run(&model("dtypes"), &inputs));
    assert_eq!(
        v.to_string(),
        "input 'xs_9_': 1 NaN value; first at [1] = NaN"
    );
    let m = model_with("dtypes", case("dtypes_clip"));
    let (out, report) = run(&m, &inputs).unwrap();
    assert_outputs(&out, "dtypes_clean_out");
    assert_eq!(report.count("xs_5_", Rule::Max), 1);
    for name in ["xs_9_", "xs_10_", "xs_11_", "xs_12_"] {
        assert_eq!(report.count(name, Rule::Nan), 1, "{name}");
        assert_eq!(report.count(name, Rule::Min), 1, "{name}");
        assert_eq!(report.count(name, Rule::Max), 1, "{name}");
    }
}

// ---- normalize ---------------------------------------------------------------------------

#[test]
fn normalize_per_last_axis_gives_jax_outputs() {
    let m = model_with("digits", case("digits_normalize"));
    let x = Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap();
    let (out, report) = run(&m, &[x]).unwrap();
    assert_outputs(&out, "digits_normalized_out");
    assert_eq!(report.count("pixels", Rule::Normalize), 64);
    // The normalized input, given unnormalized to a model without the policy, agrees.
    let (out2, _) = run(&model("digits"), &[npy("digits_normalized.npy")]).unwrap();
    assert_eq!(out2, out);
}

#[test]
fn normalize_scalar_gives_jax_outputs() {
    let m = model_with("digits", case("digits_normalize_scalar"));
    let x = Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap();
    let (out, report) = run(&m, &[x]).unwrap();
    assert_outputs(&out, "digits_normalized_scalar_out");
    assert_eq!(report.to_string(), "input 'pixels': 64 values normalized");
}

/// A std so small that normalizing makes finite pixels infinite: refused like an Inf in the
/// input (the model never sees it), not passed on after the NaN/Inf checks ran.
#[test]
fn normalize_that_overflows_is_a_violation() {
    let mut p = Policy::new();
    p.input("pixels").normalize(vec![0.0], vec![1e-45]);
    let m = model_with("digits", p);
    let x = Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap();
    let e = run(&m, &[x]).unwrap_err();
    let Error::PolicyViolation(v) = &e else {
        panic!("{e}")
    };
    assert_eq!(v.rule, Rule::Normalize);
    assert!(
        e.to_string().starts_with("input 'pixels': ")
            && e.to_string()
                .contains("not finite after normalize (mean [0.0] std [1e-45])"),
        "{e}"
    );
    // Zero pixels stay 0 / 1e-45 = 0: the count is of the nonzero ones.
    let x = Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap();
    let nonzero = x
        .bytes()
        .chunks(4)
        .filter(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) != 0.0)
        .count() as u64;
    assert_eq!(v.count, nonzero);
    // With Inf allowed, the policy says it accepts what it makes.
    let mut p = Policy::new();
    p.input("pixels")
        .normalize(vec![0.0], vec![1e-45])
        .nan(NonFinite::Allow)
        .inf(NonFinite::Allow);
    let m = model_with("digits", p);
    assert!(run(&m, &[x]).is_ok());
}

#[test]
fn normalize_is_checked_against_the_signature() {
    let m = model("digits");
    let mut p = Policy::new();
    p.input("pixels").normalize(vec![0.0; 63], vec![1.0]);
    let e = m.policy().signature().clone();
    let err = BoundPolicy::new(p, &e).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy: inputs.pixels.normalize.mean: expected 1 or 64 values (the last dimension of float32[1,64]), got 63"
    );
    let mut p = Policy::new();
    p.input("pixels").normalize(vec![], vec![1.0]);
    let err = BoundPolicy::new(p, &e).unwrap_err();
    assert!(err.to_string().ends_with("got 0"), "{err}");
    let mut p = Policy::new();
    p.input("pixels").normalize(vec![0.0], vec![0.0]);
    let err = BoundPolicy::new(p, &e).unwrap_err();
    assert!(
        matches!(err.kind, PolicyErrorKind::BadValue { .. }),
        "{err}"
    );
    let mut p = Policy::new();
    p.input("ids").normalize(vec![0.0], vec![1.0]);
    let err = BoundPolicy::new(p, model("embedding").signature()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy: inputs.ids.normalize: 'normalize' applies to float inputs only; input 'ids' is int32"
    );
}

// ---- sizes, dims, strict ----------------------------------------------------------------

#[test]
fn size_limits_that_no_call_can_meet_are_load_errors() {
    let dir = scratch("sizes");
    let m = model("digits");
    let ok = write(
        &dir,
        "ok.toml",
        "max_total_bytes = 256\n[inputs.pixels]\nmax_elements = 64\nmax_bytes = 256\n",
    );
    BoundPolicy::new(Policy::load(&ok).unwrap(), m.signature()).unwrap();
    for (text, line, msg) in [
        (
            "[inputs.pixels]\nmax_elements = 63\n",
            2,
            "inputs.pixels.max_elements: float32[1,64] has 64 elements, above max_elements 63: no call could pass",
        ),
        (
            "[inputs.pixels]\nmax_bytes = 255\n",
            2,
            "inputs.pixels.max_bytes: float32[1,64] has 256 bytes, above max_bytes 255: no call could pass",
        ),
        (
            "\nmax_total_bytes = 100\n",
            2,
            "max_total_bytes: the inputs has 256 bytes, above max_total_bytes 100: no call could pass",
        ),
    ] {
        let f = write(&dir, "bad.toml", text);
        let err = BoundPolicy::new(Policy::load(&f).unwrap(), m.signature()).unwrap_err();
        assert_eq!(err.to_string(), format!("{}:{line}: {msg}", f.display()));
    }
}

#[test]
fn size_and_dim_limits_are_enforced_per_call_for_symbolic_shapes() {
    // poly's signature is float32[b,16] (it parses but PJRT cannot compile it): the limits are
    // checked on the signature alone.
    let sig = xlaguard::artifact::load_file(&fixture("poly").join("model.jaxexport"))
        .unwrap()
        .signature
        .unwrap();
    let mut p = Policy::new();
    p.dim("b", 4).max_total_bytes(4 * 16 * 4);
    p.input("arg0").max_elements(48).max_bytes(1024);
    let bp = BoundPolicy::new(p, &sig).unwrap();
    let t = |b: u64| {
        Tensor::from_slice(&[b, 16], &vec![1.0f32; usize::try_from(b * 16).unwrap()]).unwrap()
    };
    bp.check(&[t(3).view()]).unwrap();
    let e = bp.check(&[t(4).view()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'arg0': 64 elements, above max_elements 48"
    );
    let e = bp.check(&[t(5).view()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "inputs: 320 bytes in total, above max_total_bytes 256"
    );
    let mut p = Policy::new();
    p.dim("b", 4);
    p.input("arg0").max_bytes(200);
    let bp = BoundPolicy::new(p, &sig).unwrap();
    let e = bp.check(&[t(4).view()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'arg0': 256 bytes, above max_bytes 200"
    );
    let mut p = Policy::new();
    p.dim("b", 4);
    let bp = BoundPolicy::new(p, &sig).unwrap();
    let e = bp.check(&[t(5).view()]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'arg0': dimension 'b' (axis 0) is 5, above its bound 4"
    );
    // A dimension the signature does not have.
    let mut p = Policy::new();
    p.dim("n", 4);
    let e = BoundPolicy::new(p, &sig).unwrap_err();
    assert_eq!(
        e.to_string(),
        "policy: dims.n: the model has no symbolic dimension 'n'; it has b"
    );
}

#[test]
fn strict_needs_every_input() {
    let dir = scratch("strict");
    let f = write(&dir, "p.toml", "strict = true\n\n[inputs.x]\nmax = 1.0\n");
    let e = BoundPolicy::new(Policy::load(&f).unwrap(), model("tiny").signature()).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:1: strict: strict policy has no rules for input(s) 'y'",
            f.display()
        )
    );
    let f = write(&dir, "p.toml", "strict = true\n[inputs.x]\n[inputs.y]\n");
    BoundPolicy::new(Policy::load(&f).unwrap(), model("tiny").signature()).unwrap();
}

// ---- policy files ------------------------------------------------------------------------

#[test]
fn policy_file_errors_name_file_line_and_key() {
    let dir = scratch("errors");
    let digits = model("digits");
    let ids = model("embedding");
    let half = model("dtypes");
    let cases: &[(&Model, &str, String)] = &[
        (
            &digits,
            "[inputs.pixels]\nmin = 0.0\nclip = true\n",
            "3: inputs.pixels.clip: unknown key; expected one of min, max, nan, inf, out_of_range, normalize, max_elements, max_bytes".into(),
        ),
        (
            &digits,
            "version = 1\n",
            "1: version: unknown key; expected one of inputs, max_total_bytes, strict, dims".into(),
        ),
        (
            &digits,
            "[inputs.pixel]\nmax = 16.0\n",
            "1: inputs.pixel: the model has no input 'pixel'; its inputs are 'pixels'".into(),
        ),
        (
            &digits,
            "[inputs.pixels]\nmin = 16.0\nmax = 0.0\n",
            "3: inputs.pixels.max: min 16.0 is above max 0.0".into(),
        ),
        (
            &ids,
            "[inputs.ids]\nmin = 0\nmax = 10000000000\n",
            "3: inputs.ids.max: 10000000000 does not fit int32 (range -2147483648 to 2147483647)".into(),
        ),
        (
            &ids,
            "[inputs.ids]\nmin = 0.5\n",
            "2: inputs.ids.min: 0.5 is not an integer; int32 bounds must be integers".into(),
        ),
        (
            &half,
            "[inputs.xs_9_]\n\nmax = 1e6\n",
            "3: inputs.xs_9_.max: 1000000.0 does not fit float16 (range -65504.0 to 65504.0)".into(),
        ),
        (
            &half,
            "[inputs.xs_5_]\nmin = -1\n",
            "2: inputs.xs_5_.min: -1 does not fit uint8 (range 0 to 255)".into(),
        ),
        (
            &half,
            "[inputs.xs_0_]\nmax = 1\n",
            "2: inputs.xs_0_.max: bool inputs take no bounds".into(),
        ),
        (
            &ids,
            "[inputs.ids]\nnan = \"reject\"\n",
            "2: inputs.ids.nan: 'nan' applies to float inputs only; input 'ids' is int32".into(),
        ),
        (
            &digits,
            "[inputs.pixels]\nmax = 16.0\nnan = { replace = 100.0 }\n",
            "3: inputs.pixels.nan: expected a replacement within [-, 16.0], got 100.0".into(),
        ),
        (
            &digits,
            "[inputs.pixels]\nmax = nan\n",
            "2: inputs.pixels.max: NaN is not a finite bound".into(),
        ),
        (
            &digits,
            "[inputs.pixels]\nout_of_range = \"wrap\"\n",
            "2: inputs.pixels.out_of_range: expected \"reject\" or \"clip\", got \"wrap\"".into(),
        ),
        (
            &digits,
            "[inputs.pixels]\nmax_elements = 1.5\n",
            "2: inputs.pixels.max_elements: expected a non-negative integer, got float".into(),
        ),
        (
            &digits,
            "[inputs.pixels]\nmin = = 3\n",
            "2: invalid TOML: ".into(),
        ),
    ];
    for (i, (m, text, msg)) in cases.iter().enumerate() {
        let f = write(&dir, &format!("case{i}.policy.toml"), text);
        let got = Policy::load(&f)
            .map_err(Error::from)
            .and_then(|p| BoundPolicy::new(p, m.signature()).map_err(Error::from));
        let e = got.expect_err(text);
        assert!(matches!(e, Error::Policy(_)), "{text}: {e:?}");
        let expected = format!("{}:{msg}", f.display());
        assert!(
            e.to_string().starts_with(&expected),
            "{text}\n got: {e}\nwant: {expected}"
        );
    }
    // A missing file names itself.
    let e = Policy::load(&dir.join("missing.toml")).unwrap_err();
    assert!(e
        .to_string()
        .starts_with(&format!("{}: ", dir.join("missing.toml").display())));
    // A rejected policy leaves the model's policy as it was.
    let mut m = model("digits");
    let mut p = Policy::new();
    p.input("nope").max(1.0);
    assert!(matches!(m.set_policy(p), Err(Error::Policy(_))));
    assert!(m.policy().policy().inputs.is_empty());
}

#[test]
fn policy_beside_the_artifact_is_loaded() {
    let dir = scratch("beside");
    let artifact = dir.join("digits.jaxexport");
    std::fs::copy(fixture("digits").join("model.jaxexport"), &artifact).unwrap();
    std::fs::copy(
        policy_dir().join("digits_range.policy.toml"),
        dir.join("digits.policy.toml"),
    )
    .unwrap();
    let m = engine().load_file(&artifact).unwrap();
    assert_eq!(
        m.policy().policy().file(),
        Some(
            dir.join("digits.policy.toml")
                .display()
                .to_string()
                .as_str()
        )
    );
    assert_eq!(m.policy().policy(), &case("digits_range"));
    let v = violation(run(&m, &[npy("digits_dirty.npy")]));
    assert_eq!(v.rule, Rule::Min);
    // A broken policy file beside the artifact stops the load.
    std::fs::write(
        dir.join("digits.policy.toml"),
        "[inputs.pixels]\nmax = \"16\"\n",
    )
    .unwrap();
    let e = engine().load_file(&artifact).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: inputs.pixels.max: expected a number, got string",
            dir.join("digits.policy.toml").display()
        )
    );
}

#[test]
fn builder_policy_equals_the_file() {
    let mut p = Policy::new();
    p.input("pixels")
        .range(0.0, 16.0)
        .out_of_range(OutOfRange::Clip);
    assert_eq!(p, case("digits_clip"));
    let mut p = Policy::new();
    p.input("ids").range(0, 49);
    assert_eq!(p, case("ids_range"));
    for name in [
        "digits_clip",
        "digits_inf_clip",
        "digits_normalize",
        "digits_replace",
        "dtypes_clip",
        "attention_clip",
    ] {
        let p = case(name);
        assert_eq!(Policy::from_toml(&p.to_toml(), None).unwrap(), p, "{name}");
    }
}

// ---- audit hook --------------------------------------------------------------------------

#[test]
fn observer_hears_rejections_and_sanitizations() {
    type Seen = Vec<(Option<String>, Rule, u64, PolicyAction)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let sink = seen.clone();
    let observer = Arc::new(move |e: &xlaguard::validate::PolicyEvent<'_>| {
        sink.lock()
            .unwrap()
            .push((e.input.map(str::to_string), e.rule, e.count, e.action));
    });
    let mut m = model_with("digits", case("digits_clip"));
    m.set_observer(Some(observer.clone()));
    run(&m, &[npy("digits_dirty.npy")]).unwrap();
    let px = Some("pixels".to_string());
    assert_eq!(
        *seen.lock().unwrap(),
        vec![
            (px.clone(), Rule::Min, 2, PolicyAction::Sanitized),
            (px.clone(), Rule::Max, 3, PolicyAction::Sanitized)
        ]
    );
    seen.lock().unwrap().clear();
    m.set_policy(case("digits_range")).unwrap();
    let _ = run(&m, &[npy("digits_dirty.npy")]);
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(px.clone(), Rule::Min, 2, PolicyAction::Rejected)]
    );
    // Clean inputs: no events.
    seen.lock().unwrap().clear();
    run(&m, &[npy("digits_clipped.npy")]).unwrap();
    assert!(seen.lock().unwrap().is_empty());
    // Removed: silent.
    m.set_observer(None);
    let _ = run(&m, &[npy("digits_dirty.npy")]);
    assert!(seen.lock().unwrap().is_empty());
}

#[test]
fn named_runs_and_signature_errors_come_first() {
    let m = model_with("digits", case("digits_clip"));
    let out = m
        .run_named(vec![("pixels".into(), npy("digits_dirty.npy").view())])
        .unwrap();
    assert_outputs(&out, "digits_clipped_out");
    // A wrong shape is a signature error, not a policy one.
    let t = Tensor::from_slice(&[1, 63], &[0.0f32; 63]).unwrap();
    assert!(matches!(m.run(&[t.view()]), Err(Error::InvalidInput(_))));
}

#[test]
fn limits_resolve_bounds_into_the_dtype() {
    let l = xlaguard::validate::scan::Limits::new(
        xlaguard::DType::F32,
        None,
        Some(xlaguard::validate::scan::Bound::Float(3.5e38)),
    );
    assert!(matches!(l, Err(LimitError::DoesNotFit { .. })));
}

// ---- suggest -----------------------------------------------------------------------------

#[test]
fn suggest_widens_the_observed_range() {
    use xlaguard::validate::suggest::suggest;
    let digits = model("digits");
    let batch = Tensor::read_npy(&fixture("digits").join("batch.npy")).unwrap();
    let s = suggest(digits.signature(), &[(0, batch.view())], 0.05).unwrap();
    let mut want = Policy::new();
    want.input("pixels")
        .range(-0.8, 16.8)
        .nan(NonFinite::Reject)
        .inf(NonFinite::Reject);
    assert_eq!(s.policy, want);
    assert_eq!(s.observed[0].elements, 32 * 64);
    // The suggestion binds and its own samples pass.
    let m = model_with("digits", s.policy.clone());
    let x = Tensor::read_npy(&fixture("digits").join("in0.npy")).unwrap();
    run(&m, &[x]).unwrap();

    // Integers widen outwards to whole numbers, clamped to the dtype.
    let emb = model("embedding");
    let ids = Tensor::read_npy(&fixture("embedding").join("in0.npy")).unwrap();
    let a = ids.to_array::<i32>().unwrap();
    let (lo, hi) = (*a.iter().min().unwrap(), *a.iter().max().unwrap());
    let s = suggest(emb.signature(), &[(0, ids.view())], 0.1).unwrap();
    let pad = (hi - lo + 9) / 10; // ceil(width * 0.1)
    let mut want = Policy::new();
    want.input("ids").range(lo - pad, hi + pad);
    assert_eq!(s.policy, want);
    let s = suggest(
        model("dtypes").signature(),
        &[(
            5,
            Tensor::read_npy(&fixture("dtypes").join("in5.npy"))
                .unwrap()
                .view(),
        )],
        1.0,
    )
    .unwrap();
    assert_eq!(
        s.policy.inputs["xs_5_"].min,
        Some(xlaguard::validate::scan::Bound::Int(0))
    );
    assert_eq!(
        s.policy.inputs["xs_5_"].max,
        Some(xlaguard::validate::scan::Bound::Int(255))
    );

    // NaN in the samples: allowed, not silently rejected later.
    let s = suggest(
        digits.signature(),
        &[(0, npy("digits_nonfinite.npy").view())],
        0.0,
    )
    .unwrap();
    assert_eq!(s.policy.inputs["pixels"].nan, Some(NonFinite::Allow));
    assert_eq!(s.observed[0].nan, 2);
    assert_eq!(s.observed[0].inf, 2);
    // Wrong dtype.
    let e = suggest(digits.signature(), &[(0, ids.view())], 0.0).unwrap_err();
    assert!(
        matches!(e, xlaguard::validate::ValidationError::InvalidInput(_)),
        "{e}"
    );
    let e = suggest(digits.signature(), &[], -1.0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "policy: margin: expected a non-negative finite number, got -1.0"
    );
}

#[test]
fn malformed_policy_text_is_an_error_not_a_panic() {
    let sigs = [
        model("digits").signature().clone(),
        model("embedding").signature().clone(),
        model("dtypes").signature().clone(),
        model("attention").signature().clone(),
    ];
    let mut files = Vec::new();
    for e in std::fs::read_dir(policy_dir()).unwrap() {
        let p = e.unwrap().path();
        if p.to_string_lossy().ends_with(".policy.toml") {
            files.push(std::fs::read_to_string(&p).unwrap());
        }
    }
    files.push("strict = true\nmax_total_bytes = 9\n[dims]\nb = 3\n[inputs.ids]\nmax_elements = 0\nnormalize = { mean = [], std = 1 }\n".into());
    let mut tried = 0;
    for text in &files {
        let bytes = text.as_bytes();
        let step = (bytes.len() / 200).max(1);
        let mut variants: Vec<Vec<u8>> = (0..bytes.len())
            .step_by(step)
            .map(|i| bytes[..i].to_vec())
            .collect();
        for i in (0..bytes.len()).step_by(step) {
            for c in [b'"', b'[', b'=', b'\n', b'-', b'9', b'.', b'x', b'{', 0xff] {
                let mut b = bytes.to_vec();
                b[i] = c;
                variants.push(b);
            }
        }
        for v in variants {
            tried += 1;
            let Ok(text) = String::from_utf8(v) else {
                continue;
            };
            if let Ok(p) = Policy::from_toml(&text, Some("fuzz.toml")) {
                for sig in &sigs {
                    let _ = BoundPolicy::new(p.clone(), sig);
                }
            }
        }
    }
    assert!(tried > 1000, "{tried}");
}
