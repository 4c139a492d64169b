//! The model folder's `config.toml` binder (`server::repo::read_model_dir`), on real folders
//! (one artifact; a bundle of per-batch-size exports; artifact, params and policy): either the
//! model is marked with a problem (a message), or every bound value is within its documented
//! range and every file it names lies in the model's folder.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use xlaguard::server::repo::{
    read_model_dir, valid_model_name, ArtifactSource, MAX_QUEUE, MAX_TIMEOUT_MS, MAX_WORKERS,
};

const LAYOUTS: [&[&str]; 3] = [
    &["model.jaxexport"],
    &["model.b1.jaxexport", "model.b4.jaxexport"],
    &["model.mlir", "params.safetensors", "policy.toml"],
];

fn folders() -> &'static [PathBuf] {
    static DIRS: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DIRS.get_or_init(|| {
        let root = xlaguard_fuzz::scratch("config");
        LAYOUTS
            .iter()
            .enumerate()
            .map(|(i, files)| {
                let d = root.join(format!("m{i}"));
                std::fs::create_dir_all(&d).expect("temp folder");
                for f in *files {
                    std::fs::write(d.join(f), b"").expect("temp file");
                }
                d
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&layout, config)) = data.split_first() else {
        return;
    };
    let dir = &folders()[usize::from(layout) % LAYOUTS.len()];
    std::fs::write(dir.join("config.toml"), config).expect("write config.toml");
    let spec = read_model_dir(dir, "m");
    if let Some(p) = &spec.problem {
        assert!(!p.is_empty(), "a problem without a message");
        return;
    }
    assert!(
        valid_model_name(&spec.version),
        "version {:?}",
        spec.version
    );
    let l = &spec.limits;
    assert!(l
        .workers
        .is_none_or(|w| (1..=MAX_WORKERS).contains(&(w as u64))));
    assert!(l.max_queue.is_none_or(|q| q as u64 <= MAX_QUEUE));
    assert!(l
        .timeout
        .is_none_or(|t| t.as_millis() >= 1 && t.as_millis() <= u128::from(MAX_TIMEOUT_MS)));
    assert!(l.max_module_bytes.is_none_or(|b| b >= 1));
    assert!(l.max_execution_bytes.is_none_or(|b| b >= 1));
    if let Some(h) = &spec.params_sha256 {
        assert_eq!(h.len(), 64);
        assert!(h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')));
    }
    if let Some(b) = &spec.batching {
        assert!(!b.sizes.is_empty() && b.sizes[0] >= 1);
        assert!(b.sizes.windows(2).all(|w| w[0] < w[1]), "{:?}", b.sizes);
    }
    match &spec.source {
        ArtifactSource::File(p) => {
            assert_eq!(
                p.parent(),
                Some(dir.as_path()),
                "artifact outside the folder: {p:?}"
            );
            assert!(p.is_file());
        }
        other => panic!("a folder's model is a file, got {other:?}"),
    }
    for (_, p) in &spec.bundle {
        assert_eq!(p.parent(), Some(dir.as_path()));
    }
    for p in spec.params.iter().chain(&spec.policy) {
        assert_eq!(p.parent(), Some(dir.as_path()));
    }
});
