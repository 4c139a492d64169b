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

/// The `xlaguard` binary, run from the repository root on the pinned plugin.
pub fn xlaguard_cmd() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_xlaguard"));
    c.current_dir(root()).arg("--plugin").arg(plugin());
    c
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
///
/// A golden folder may hold JAX's outputs on another CPU in `cpu-<key>/` (written by
/// `hlo/cpu_goldens.py` where JAX gives other low bits there): where that key applies
/// (`golden_key`) they are read instead.
pub fn numbered(dir: &Path, prefix: &str) -> Vec<Tensor> {
    let here = golden_key().map(|k| dir.join(format!("cpu-{k}")));
    let dir = match here {
        Some(h) if h.join(format!("{prefix}0.npy")).is_file() => h,
        _ => dir.to_path_buf(),
    };
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

/// The key whose goldens apply here, as `tests/goldens.py` chooses it: the first of LLVM's
/// name for the host CPU (`cpu_name`) and its ISA class (`cpu_class`) that
/// `hlo/cpu-classes/<key>.txt` records, or `None` (the committed outputs apply).
pub fn golden_key() -> Option<&'static str> {
    static K: OnceLock<Option<String>> = OnceLock::new();
    K.get_or_init(|| {
        [cpu_name(), cpu_class()]
            .into_iter()
            .find(|k| {
                root()
                    .join("hlo/cpu-classes")
                    .join(format!("{k}.txt"))
                    .is_file()
            })
            .map(str::to_string)
    })
    .as_deref()
}

/// LLVM's name for the host CPU (`znver4`, `sapphirerapids`, ...), as `rustc --print
/// target-cpus` reports it (`native`), or `unknown`. XLA's CPU compiler tunes for it.
pub fn cpu_name() -> &'static str {
    static N: OnceLock<String> = OnceLock::new();
    N.get_or_init(|| {
        let out = std::process::Command::new("rustc")
            .args(["--print", "target-cpus"])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        text.lines()
            .find(|l| l.trim_start().starts_with("native "))
            .and_then(|l| l.split("(currently ").nth(1))
            .and_then(|r| r.split(')').next())
            .unwrap_or("unknown")
            .to_string()
    })
}

/// The widest x86 vector ISA (`avx512`, `avx2`, `avx`, `sse`), else the architecture: the
/// older, coarser key of `hlo/cpu-classes/`, and what some tolerances depend on.
pub fn cpu_class() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
        if std::is_x86_feature_detected!("avx") {
            return "avx";
        }
        "sse"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::env::consts::ARCH
    }
}

/// StableHLO text of a straight chain of `n` sine ops on `tensor<64xf32>`: compile time and
/// memory grow faster than its size (PJRT_NOTES.md: n = 2,000 takes ~3 s and 0.2 GB).
pub fn slow_module(n: usize) -> String {
    let mut s = String::from(
        "func.func public @main(%arg0: tensor<64xf32>) -> tensor<64xf32> {\n  %0 = stablehlo.sine %arg0 : tensor<64xf32>\n",
    );
    for i in 1..n {
        s.push_str(&format!(
            "  %{i} = stablehlo.sine %{} : tensor<64xf32>\n",
            i - 1
        ));
    }
    s.push_str(&format!("  return %{} : tensor<64xf32>\n}}\n", n - 1));
    s
}

/// The records of a JSON-lines audit log.
pub fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every audit line is JSON"))
        .collect()
}

/// Compiles and runs the digits model on `engine`, checking JAX's output.
pub fn digits_still_work(engine: &Engine) {
    let dir = fixture("digits");
    let m = engine.load_file(&dir.join("model.jaxexport")).unwrap();
    let ins = numbered(&dir, "in");
    let out = m.run(&[ins[0].view()]).unwrap();
    assert_eq!(out[1].bytes(), numbered(&dir, "out")[1].bytes());
}

/// Asserts outputs equal JAX's bit for bit (type and bytes), naming `what` on failure.
pub fn assert_bit_equal(what: &str, got: &[Tensor], expected: &[Tensor]) {
    assert_eq!(got.len(), expected.len(), "{what}: output count");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g.type_string(), e.type_string(), "{what}: out{i} type");
        assert!(
            g.bytes() == e.bytes(),
            "{what}: out{i} differs from JAX's output (this CPU is {} ({}); goldens of {}: where \
             JAX's bits differ here, scripts/cpu-goldens.sh has JAX write them; hlo/README.md)",
            cpu_name(),
            cpu_class(),
            golden_key().map_or("the export machine".to_string(), |k| format!("cpu-{k}"))
        );
    }
}

/// `xlaguard run MODEL in0.npy in1.npy ... --out DIR` on the `in*.npy` of `inputs_dir` (in
/// numeric order); asserts success and returns the `out*.npy` it wrote.
pub fn cli_run(model: &Path, inputs_dir: &Path) -> Vec<Tensor> {
    cli_run_with(model, inputs_dir, &[])
}

/// [`cli_run`] with more arguments for `run` (e.g. `--params FILE`).
pub fn cli_run_with(model: &Path, inputs_dir: &Path, extra: &[&std::ffi::OsStr]) -> Vec<Tensor> {
    let out = tempfile::tempdir().unwrap();
    let mut ins: Vec<(u32, PathBuf)> = std::fs::read_dir(inputs_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter_map(|p| {
            let stem = p.file_stem()?.to_str()?.strip_prefix("in")?.parse().ok()?;
            (p.extension()? == "npy").then_some((stem, p))
        })
        .collect();
    ins.sort();
    let r = xlaguard_cmd()
        .arg("run")
        .arg(model)
        .args(extra)
        .args(ins.iter().map(|(_, p)| p))
        .arg("--out")
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        r.status.success(),
        "{}: {}",
        model.display(),
        String::from_utf8_lossy(&r.stderr)
    );
    numbered(out.path(), "out")
}
