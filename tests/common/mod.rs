//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use xlaguard::{Engine, EngineConfig, Tensor};

/// The repository root.
pub fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture folder under `hlo/`.
pub fn fixture(name: &str) -> PathBuf {
    root().join("hlo").join(name)
}

/// The pinned CPU plugin (fetched by scripts/fetch-plugin.sh).
pub fn plugin() -> PathBuf {
    let p = root().join("third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so");
    assert!(
        p.is_file(),
        "missing {}: run scripts/fetch-plugin.sh",
        p.display()
    );
    p
}

/// The default config on the pinned CPU plugin, compiling in jailed workers run by the
/// `xlaguard` binary (a test binary cannot serve as its own worker).
pub fn config() -> EngineConfig {
    let mut c = EngineConfig::default();
    c.plugin(plugin());
    c.compile.worker_exe(env!("CARGO_BIN_EXE_xlaguard"));
    c
}

/// One engine on the pinned CPU plugin, shared by the tests of a binary.
pub fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(&config()).expect("engine on the pinned CPU plugin"))
}

/// One in-process (thread isolation) engine on the pinned CPU plugin.
pub fn thread_engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| {
        let mut c = config();
        c.compile.isolation(xlaguard::compile::Isolation::Thread);
        Engine::new(&c).expect("in-process engine on the pinned CPU plugin")
    })
}

/// `prefix0.npy`, `prefix1.npy`, ... in a folder, in order.
pub fn numbered(dir: &Path, prefix: &str) -> Vec<Tensor> {
    let mut v = Vec::new();
    for i in 0.. {
        let p = dir.join(format!("{prefix}{i}.npy"));
        if !p.is_file() {
            break;
        }
        v.push(Tensor::read_npy(&p).unwrap());
    }
    v
}
