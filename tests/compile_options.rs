//! Our compile options are JAX's: for each `XLA_FLAGS` case that `hlo/compile_options.py`
//! ran JAX under, the bytes we encode equal the bytes JAX 0.11.2 serialized, field for field
//! (`hlo/compile_options/<case>.txtpb` shows them by name).

use std::path::Path;

use xlaguard::pjrt::CompileOptions;

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hlo/compile_options"))
}

fn cases() -> Vec<(String, String, Vec<u8>)> {
    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir().join("cases.json")).unwrap()).unwrap();
    index
        .as_object()
        .unwrap()
        .iter()
        .map(|(case, c)| {
            let bytes = std::fs::read(dir().join(c["binpb"].as_str().unwrap())).unwrap();
            (
                case.clone(),
                c["xla_flags"].as_str().unwrap().to_string(),
                bytes,
            )
        })
        .collect()
}

fn ours(flags: &str) -> Vec<u8> {
    let mut o = CompileOptions::new();
    o.xla_flags(flags).unwrap();
    o.encode()
}

#[test]
fn encoded_options_equal_what_jax_sends() {
    let cases = cases();
    assert!(cases.len() >= 3, "cases.json lists {} cases", cases.len());
    for (case, flags, jax) in &cases {
        if case == "fast_min_max" {
            continue;
        }
        assert!(
            ours(flags) == *jax,
            "case {case} (XLA_FLAGS={flags:?}): bytes differ from JAX's"
        );
        assert_eq!(
            CompileOptions::decode(jax).map(|o| o.encode()),
            Some(jax.clone())
        );
    }
}

#[test]
fn fast_min_max_flag_is_honoured_where_jax_ignores_it() {
    let (_, flags, jax) = cases()
        .into_iter()
        .find(|(c, _, _)| c == "fast_min_max")
        .unwrap();
    let (_, _, default) = cases()
        .into_iter()
        .find(|(c, _, _)| c == "default")
        .unwrap();
    // JAX resets the flag after XLA parsed it: its bytes equal the default case.
    assert_eq!(jax, default);
    // Ours carry it, and only it: setting it back gives JAX's bytes again.
    assert_ne!(ours(&flags), jax);
    assert_eq!(
        ours(&format!("{flags} --xla_cpu_enable_fast_min_max=false")),
        jax
    );
}
