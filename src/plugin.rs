//! Finding a PJRT plugin: `--plugin PATH`, `XLAGUARD_PLUGIN`, the pinned copy under
//! `third_party/`, then the places pip puts the known plugin wheels.

use std::path::{Path, PathBuf};

/// The environment variable naming a plugin file.
pub const PLUGIN_ENV: &str = "XLAGUARD_PLUGIN";

/// Which kind of device a plugin drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// XLA:CPU.
    Cpu,
    /// NVIDIA GPUs (the CUDA plugins).
    Cuda,
    /// Google TPUs (libtpu).
    Tpu,
}

impl DeviceKind {
    /// `cpu`, `cuda` or `tpu`.
    pub fn name(self) -> &'static str {
        match self {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Tpu => "tpu",
        }
    }

    /// Guesses the kind from a plugin's file path (`xla_cuda13/...` → CUDA).
    pub fn guess(path: &Path) -> DeviceKind {
        let s = path.to_string_lossy().to_ascii_lowercase();
        if s.contains("cuda") || s.contains("gpu") {
            DeviceKind::Cuda
        } else if s.contains("tpu") {
            DeviceKind::Tpu
        } else {
            DeviceKind::Cpu
        }
    }
}

/// Where a plugin was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginSource {
    /// Given explicitly (`--plugin`, or the library's config).
    Explicit,
    /// From `XLAGUARD_PLUGIN`.
    Env,
    /// The pinned copy under `third_party/`.
    ThirdParty,
    /// A pip-installed wheel.
    Pip,
}

/// A plugin file and how it was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundPlugin {
    /// The shared library.
    pub path: PathBuf,
    /// How it was found.
    pub source: PluginSource,
    /// The device kind it drives (from where it was found, or guessed from its path).
    pub kind: DeviceKind,
}

/// No plugin could be found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no PJRT plugin found{}; looked in:\n  {}\nget the pinned CPU plugin with `scripts/fetch-plugin.sh` (or `pip install lammps-jax-pjrt-cpu==0.11.2`), or pass --plugin PATH / set XLAGUARD_PLUGIN", want.map(|k| format!(" for {}", k.name())).unwrap_or_default(), looked.join("\n  "))]
pub struct NotFound {
    /// The device kind asked for, if any.
    pub want: Option<DeviceKind>,
    /// Every place looked at.
    pub looked: Vec<String>,
}

/// Plugin files inside a pip `site-packages`, in search order, with their kind.
pub const PIP_PLUGINS: [(&str, DeviceKind); 4] = [
    (
        "jax_plugins/xla_cuda13/xla_cuda_plugin.so",
        DeviceKind::Cuda,
    ),
    (
        "jax_plugins/xla_cuda12/xla_cuda_plugin.so",
        DeviceKind::Cuda,
    ),
    ("libtpu/libtpu.so", DeviceKind::Tpu),
    (
        "lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so",
        DeviceKind::Cpu,
    ),
];

/// The pinned CPU plugin's path relative to the repository root.
pub const THIRD_PARTY_CPU: &str = "third_party/pjrt-cpu/pjrt_c_api_cpu_plugin.so";

/// Candidate `site-packages` folders: the active virtualenv, the user's, the system's, pyenv's
/// (read from the file system; [`discover`] asks `python3` for its own only when none of these
/// holds a plugin).
pub fn site_packages_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(PathBuf::from(v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        let h = PathBuf::from(h);
        roots.push(h.join(".local/lib"));
        if let Ok(rd) = std::fs::read_dir(h.join(".pyenv/versions")) {
            let mut v: Vec<PathBuf> = rd.flatten().map(|e| e.path().join("lib")).collect();
            v.sort();
            roots.extend(v);
        }
    }
    roots.push(PathBuf::from("/usr/local/lib"));
    roots.push(PathBuf::from("/usr/lib"));
    let mut out = Vec::new();
    for r in roots {
        let Ok(rd) = std::fs::read_dir(&r) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pys.sort();
        for p in pys {
            for sub in ["site-packages", "dist-packages"] {
                let d = p.join(sub);
                if d.is_dir() {
                    out.push(d);
                }
            }
        }
    }
    let debian = PathBuf::from("/usr/lib/python3/dist-packages");
    if !out.contains(&debian) {
        out.push(debian);
    }
    out
}

/// The `site-packages` / `dist-packages` folders on the `sys.path` of `python3` (from PATH),
/// or nothing if there is no python3. Runs `python3 -I` once (isolated: no environment
/// variables, no user site); it only prints paths.
fn python_site_packages() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-I", "-c", "import sys; print('\\n'.join(p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))))"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .collect(),
        _ => Vec::new(),
    }
}

/// The pinned StableHLO refiner under `third_party/` (`scripts/fetch-plugin.sh` fetches it).
pub const THIRD_PARTY_REFINER: &str = "third_party/refiner/libTorchMLIRAggregateCAPI.so";

/// The command that fetches the refiner, for messages.
pub const FETCH_REFINER: &str = "scripts/fetch-plugin.sh --refiner-only";

/// Finds the StableHLO refiner that shape-polymorphic exports need: `explicit`, then
/// `XLAGUARD_REFINER`, then [`THIRD_PARTY_REFINER`] under the current directory, the
/// executable's ancestors or the source tree. `None` when there is none (a named file that does
/// not exist is returned as it is, for the load to report).
pub fn find_refiner(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("XLAGUARD_REFINER").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(p));
    }
    third_party_roots()
        .into_iter()
        .map(|r| r.join(THIRD_PARTY_REFINER))
        .find(|p| p.is_file())
}

/// The pinned LAPACK under `third_party/` (scipy 1.18.1's bundled OpenBLAS, the library jaxlib
/// 0.11.2 calls; `scripts/fetch-plugin.sh` fetches it with the two libraries it needs).
pub const THIRD_PARTY_LAPACK: &str = "third_party/lapack/libscipy_openblas-5f890258.so";

/// No LAPACK library could be found.
#[derive(Debug, Clone, thiserror::Error)]
#[error("no LAPACK library found; looked in:\n  {}\nget the pinned one with `scripts/fetch-plugin.sh --lapack-only`, or set XLAGUARD_LAPACK to a LAPACK shared library", looked.join("\n  "))]
pub struct LapackNotFound {
    /// Every place looked at.
    pub looked: Vec<String>,
}

/// Finds the LAPACK library the linear-algebra handlers call: `explicit`, then
/// `XLAGUARD_LAPACK`, then [`THIRD_PARTY_LAPACK`] under the current directory, the executable's
/// ancestors or the source tree, then the `libscipy_openblas*.so` in a pip `scipy.libs` folder
/// (what jaxlib uses when run from that environment). A named file is returned as it is, for
/// the load to report.
///
/// # Errors
/// [`LapackNotFound`] listing every place looked at.
pub fn find_lapack(explicit: Option<&Path>) -> Result<PathBuf, LapackNotFound> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("XLAGUARD_LAPACK").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let mut looked = vec!["$XLAGUARD_LAPACK (unset)".to_string()];
    for r in third_party_roots() {
        let p = r.join(THIRD_PARTY_LAPACK);
        if p.is_file() {
            return Ok(p);
        }
        looked.push(p.display().to_string());
    }
    for sp in site_packages_dirs() {
        let dir = sp.join("scipy.libs");
        let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("libscipy_openblas") && n.ends_with(".so"))
            })
            .collect();
        found.sort();
        if let Some(p) = found.into_iter().next() {
            return Ok(p);
        }
        looked.push(format!("{}/libscipy_openblas*.so", dir.display()));
    }
    Err(LapackNotFound { looked })
}

/// Folders that may hold `third_party/`: the current directory and the executable's ancestors,
/// then the source tree this crate was built from.
fn third_party_roots() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        v.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        v.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    v.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    v
}

/// Finds a plugin. `explicit` wins, then `XLAGUARD_PLUGIN`, then `third_party/`, then pip
/// locations. With `want` set, only plugins of that kind are taken from pip locations (an
/// explicit path or the environment variable is always taken as given).
///
/// # Errors
/// [`NotFound`] listing every place looked at.
pub fn discover(
    explicit: Option<&Path>,
    want: Option<DeviceKind>,
) -> Result<FoundPlugin, NotFound> {
    let env = std::env::var_os(PLUGIN_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let roots = third_party_roots();
    let mut dirs = site_packages_dirs();
    match discover_with(explicit, env.as_deref(), want, &roots, &dirs) {
        Ok(found) => Ok(found),
        Err(_) => {
            // Last, and only now: whatever the `python3` on PATH uses (an active or
            // preinstalled venv elsewhere, such as /opt/<tool>/.venv, which JAX users often
            // have). It runs unjailed, so never when --plugin, XLAGUARD_PLUGIN, third_party/ or
            // a known folder already gave a plugin.
            for d in python_site_packages() {
                if !dirs.contains(&d) {
                    dirs.push(d);
                }
            }
            discover_with(explicit, env.as_deref(), want, &roots, &dirs)
        }
    }
}

/// [`discover`] with the environment made explicit (for tests).
///
/// # Errors
/// [`NotFound`] listing every place looked at.
pub fn discover_with(
    explicit: Option<&Path>,
    env: Option<&Path>,
    want: Option<DeviceKind>,
    roots: &[PathBuf],
    site_packages: &[PathBuf],
) -> Result<FoundPlugin, NotFound> {
    // An explicit choice is never second-guessed: a missing file is reported by the loader.
    if let Some(p) = explicit {
        return Ok(FoundPlugin {
            path: p.to_path_buf(),
            source: PluginSource::Explicit,
            kind: DeviceKind::guess(p),
        });
    }
    if let Some(p) = env {
        return Ok(FoundPlugin {
            path: p.to_path_buf(),
            source: PluginSource::Env,
            kind: DeviceKind::guess(p),
        });
    }
    let mut looked = vec![format!("--plugin (not given), ${PLUGIN_ENV} (not set)")];
    if want.is_none() || want == Some(DeviceKind::Cpu) {
        for r in roots {
            let p = r.join(THIRD_PARTY_CPU);
            if p.is_file() {
                return Ok(FoundPlugin {
                    path: p,
                    source: PluginSource::ThirdParty,
                    kind: DeviceKind::Cpu,
                });
            }
            looked.push(p.display().to_string());
        }
    }
    for (rel, kind) in PIP_PLUGINS {
        if want.is_some_and(|w| w != kind) {
            continue;
        }
        for sp in site_packages {
            let p = sp.join(rel);
            if p.is_file() {
                return Ok(FoundPlugin {
                    path: p,
                    source: PluginSource::Pip,
                    kind,
                });
            }
            looked.push(p.display().to_string());
        }
    }
    Err(NotFound { want, looked })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"x").unwrap();
    }

    #[test]
    fn search_order() {
        let tmp = std::env::temp_dir().join(format!("xlaguard-disc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let root = tmp.join("repo");
        let sp = tmp.join("site-packages");
        let roots = vec![root.clone()];
        let sps = vec![sp.clone()];
        // Nothing anywhere: the error lists the places.
        let e = discover_with(None, None, None, &roots, &sps).unwrap_err();
        assert!(e.to_string().contains("fetch-plugin.sh"), "{e}");
        assert!(e.looked.iter().any(|l| l.contains("xla_cuda13")));
        // pip: cuda13 before cuda12 before libtpu before the CPU wheel.
        touch(&sp.join("lammps_jax_pjrt_cpu/pjrt_c_api_cpu_plugin.so"));
        touch(&sp.join("jax_plugins/xla_cuda12/xla_cuda_plugin.so"));
        let f = discover_with(None, None, None, &roots, &sps).unwrap();
        assert_eq!(
            (f.kind, f.source.clone()),
            (DeviceKind::Cuda, PluginSource::Pip)
        );
        assert!(f.path.ends_with("xla_cuda12/xla_cuda_plugin.so"));
        touch(&sp.join("jax_plugins/xla_cuda13/xla_cuda_plugin.so"));
        let f = discover_with(None, None, None, &roots, &sps).unwrap();
        assert!(f.path.ends_with("xla_cuda13/xla_cuda_plugin.so"));
        let f = discover_with(None, None, Some(DeviceKind::Cpu), &roots, &sps).unwrap();
        assert!(f.path.ends_with("pjrt_c_api_cpu_plugin.so"));
        assert!(discover_with(None, None, Some(DeviceKind::Tpu), &roots, &sps).is_err());
        touch(&sp.join("libtpu/libtpu.so"));
        assert_eq!(
            discover_with(None, None, Some(DeviceKind::Tpu), &roots, &sps)
                .unwrap()
                .kind,
            DeviceKind::Tpu
        );
        // third_party wins over pip.
        touch(&root.join(THIRD_PARTY_CPU));
        assert_eq!(
            discover_with(None, None, None, &roots, &sps)
                .unwrap()
                .source,
            PluginSource::ThirdParty
        );
        // env wins over third_party; explicit wins over env.
        let e = Path::new("/x/env.so");
        assert_eq!(
            discover_with(None, Some(e), None, &roots, &sps)
                .unwrap()
                .source,
            PluginSource::Env
        );
        let x = Path::new("/x/flag.so");
        assert_eq!(
            discover_with(Some(x), Some(e), None, &roots, &sps)
                .unwrap()
                .path,
            x
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
