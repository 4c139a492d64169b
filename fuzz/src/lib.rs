//! What the fuzz targets share: fixture signatures (read from the committed `hlo/` exports) and
//! the invariants every loaded artifact must satisfy.
//!
//! Every target asserts more than "did not crash": a value that round-trips, a consistent
//! result, or a typed error with a message.

use std::sync::OnceLock;

use xlaguard::artifact::{self, Artifact, ArtifactKind};
use xlaguard::signature::{Dim, Signature};

/// The exports whose signatures the request targets parse against: float32 (digits), every
/// dtype (dtypes), dict inputs (dict_io), complex128, and symbolic dimensions (poly).
const FIXTURES: [&[u8]; 5] = [
    include_bytes!("../../hlo/digits/model.jaxexport"),
    include_bytes!("../../hlo/dtypes/model.jaxexport"),
    include_bytes!("../../hlo/dict_io/model.jaxexport"),
    include_bytes!("../../hlo/complex128/model.jaxexport"),
    include_bytes!("../../hlo/poly/model.jaxexport"),
];

/// The fixture signatures, loaded once.
pub fn signatures() -> &'static [Signature] {
    static SIGS: OnceLock<Vec<Signature>> = OnceLock::new();
    SIGS.get_or_init(|| {
        FIXTURES
            .iter()
            .map(|b| {
                artifact::load(b)
                    .expect("committed fixture loads")
                    .signature
                    .expect("a jax.export has a signature")
            })
            .collect()
    })
}

/// The fixture signature chosen by `selector`.
pub fn signature(selector: u8) -> &'static Signature {
    let s = signatures();
    &s[usize::from(selector) % s.len()]
}

/// Checks what must hold of the result of loading `bytes` with `load`: the same answer twice
/// (no hidden state, no hash-order dependence), an error that says something, and an artifact
/// whose parts agree with each other.
pub fn check_load(
    bytes: &[u8],
    load: impl Fn(&[u8]) -> Result<Artifact, artifact::ArtifactError>,
) -> Option<Artifact> {
    let first = load(bytes);
    let again = load(bytes);
    match (&first, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "loading the same bytes twice differs"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("loading the same bytes twice: {first:?} then {again:?}"),
    }
    match first {
        Err(e) => {
            assert!(!e.to_string().is_empty(), "an error without a message");
            None
        }
        Ok(a) => {
            check_artifact(&a);
            Some(a)
        }
    }
}

/// The consistency of a loaded artifact.
pub fn check_artifact(a: &Artifact) {
    assert!(!a.program.is_empty(), "an artifact without a program");
    assert!(a.nr_devices >= 1, "nr_devices {}", a.nr_devices);
    for p in &a.platforms {
        assert_eq!(p, &p.to_ascii_lowercase(), "platform names are lowercase");
    }
    if let Some(sig) = &a.signature {
        let mut names: Vec<&str> = sig.inputs.iter().map(|s| s.name.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), sig.inputs.len(), "input names are unique");
        for (i, s) in sig.inputs.iter().enumerate() {
            assert_eq!(sig.input_index(&s.name), Some(i));
        }
        if a.kind == ArtifactKind::JaxExport {
            assert_eq!(
                a.uses_shape_polymorphism,
                sig.inputs
                    .iter()
                    .chain(&sig.outputs)
                    .any(|s| s.is_polymorphic()),
            );
            assert_eq!(a.input_paths.len(), sig.inputs.len());
        }
        for s in sig.inputs.iter().chain(&sig.outputs) {
            let static_dims = s.shape.iter().all(|d| matches!(d, Dim::Static(_)));
            assert_eq!(s.static_shape().is_some(), static_dims);
            assert!(s.type_string().starts_with(s.dtype.name()));
            if let Some(Dim::Symbolic(d)) = s.shape.iter().find(|d| matches!(d, Dim::Symbolic(_))) {
                assert!(!d.is_empty(), "an empty symbolic dimension");
            }
        }
        if let Some(k) = &a.kept_inputs {
            assert!(k.windows(2).all(|w| w[0] < w[1]), "kept inputs ascend");
            assert!(k.iter().all(|&i| i < sig.inputs.len()), "kept inputs exist");
        }
    }
    // The questions the engine asks of every artifact must answer, not panic.
    let _ = a.check_supported();
    let _ = a.is_polymorphic();
    for p in ["cpu", "cuda", "rocm", "tpu"] {
        let supported = a.supports_platform(p);
        match a.platform_index(p) {
            Ok(Some(i)) => {
                assert!(supported, "an index for a platform it does not support");
                assert!(usize::try_from(i).is_ok_and(|i| i < a.platforms.len()));
            }
            Ok(None) => {}
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}

/// Parses a KServe v2 request body against `sig` and checks the result: a [`BadRequest`] with a
/// rule and a message, or inputs in signature order whose dtype, shape and bytes the library's
/// own input check accepts, and outputs that exist, each once. Returns the parsed request.
///
/// [`BadRequest`]: xlaguard::server::wire::BadRequest
pub fn check_request(
    sig: &Signature,
    body: &[u8],
    header_len: Option<usize>,
) -> Option<xlaguard::server::wire::InferRequest> {
    use xlaguard::server::wire::{parse_request, ParseLimits};
    let body = bytes::Bytes::copy_from_slice(body);
    match parse_request(&body, header_len, sig, &ParseLimits::default()) {
        Err(e) => {
            assert!(!e.rule.is_empty() && !e.message.is_empty(), "{e:?}");
            if let Some(name) = &e.input {
                assert!(!name.is_empty(), "an empty input name in {e:?}");
            }
            None
        }
        Ok(r) => {
            assert_eq!(r.inputs.len(), sig.inputs.len(), "one tensor per input");
            for (i, (t, spec)) in r.inputs.iter().zip(&sig.inputs).enumerate() {
                assert_eq!(t.name, spec.name, "inputs in signature order");
                xlaguard::validate::check_input(spec, i, &t.view())
                    .unwrap_or_else(|e| panic!("accepted input fails the input check: {e}"));
            }
            let mut seen = vec![false; sig.outputs.len()];
            for o in &r.outputs {
                assert!(o.index < sig.outputs.len(), "output {} exists", o.index);
                assert!(!std::mem::replace(&mut seen[o.index], true), "output once");
            }
            Some(r)
        }
    }
}

/// A per-process scratch folder for the targets that read real files: in `/dev/shm` (memory)
/// where there is one, so that file I/O does not dominate the executions.
pub fn scratch(what: &str) -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("xlaguard-fuzz-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("scratch folder");
    d
}
