//! The NVIDIA libraries a CUDA plugin needs, loaded from the pip wheels beside it.
//!
//! JAX's CUDA plugin wheel expects cuDNN, cuBLAS, NCCL, ... from the `nvidia-*` wheels in the
//! same `site-packages`. JAX preloads them by path before it loads the plugin
//! (`jax_plugins/xla_cuda13/__init__.py`, `_load_nvidia_libraries`); we do the same, in the same
//! order, so that the plugin's later `dlopen` by soname finds the copies already loaded and no
//! user has to set `LD_LIBRARY_PATH`.

use std::path::{Path, PathBuf};

/// `(wheel module under site-packages/nvidia, library files)` in JAX's order.
pub const NVIDIA_LIBRARIES: &[(&str, &[&str])] = &[
    ("cuda_runtime", &["libcudart.so.12"]),
    ("cu13", &["libcudart.so.13"]),
    ("cuda_nvrtc", &["libnvrtc.so.12"]),
    ("cu13", &["libnvrtc.so.13"]),
    ("cublas", &["libcublas.so.12", "libcublasLt.so.12"]),
    ("cu13", &["libcublas.so.13", "libcublasLt.so.13"]),
    ("nccl", &["libnccl.so.2"]),
    ("cuda_cupti", &["libcupti.so.12"]),
    ("cu13", &["libcupti.so.13"]),
    ("cusparse", &["libcusparse.so.12"]),
    ("cu13", &["libcusparse.so.12"]),
    ("cusolver", &["libcusolver.so.11"]),
    ("cu13", &["libcusolver.so.12"]),
    ("cufft", &["libcufft.so.11"]),
    ("cu13", &["libcufft.so.12"]),
    ("nvshmem", &["libnvshmem_host.so.3"]),
    ("cudnn", &["libcudnn.so.9"]),
];

/// What preloading did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preloaded {
    /// The `site-packages/nvidia` folder looked in (None: the plugin is not in a pip layout).
    pub nvidia_dir: Option<PathBuf>,
    /// Libraries loaded.
    pub loaded: Vec<PathBuf>,
    /// Libraries present but failing to load, with the loader's message.
    pub failed: Vec<(PathBuf, String)>,
}

impl Preloaded {
    /// One line for error messages: where we looked and what failed.
    pub fn describe(&self) -> String {
        match &self.nvidia_dir {
            None => "no site-packages/nvidia folder beside the plugin".to_string(),
            Some(d) => {
                let mut s = format!(
                    "looked in {} (loaded {} libraries",
                    d.display(),
                    self.loaded.len()
                );
                if self.failed.is_empty() {
                    s.push(')');
                } else {
                    let f: Vec<String> = self
                        .failed
                        .iter()
                        .map(|(p, e)| format!("{}: {e}", p.display()))
                        .collect();
                    s.push_str(&format!("; failed: {})", f.join("; ")));
                }
                s
            }
        }
    }
}

/// The `site-packages` folder of a plugin installed as `site-packages/jax_plugins/NAME/x.so`.
pub fn site_packages_of(plugin: &Path) -> Option<PathBuf> {
    let dir = plugin.parent()?.parent()?;
    (dir.file_name()? == "jax_plugins").then(|| dir.parent().map(Path::to_path_buf))?
}

/// Loads, in JAX's order, every NVIDIA library of [`NVIDIA_LIBRARIES`] present in the
/// `site-packages/nvidia` folder beside `plugin`. Libraries stay loaded for the life of the
/// process. Missing files are skipped (not every CUDA version ships every one).
pub fn preload_nvidia_libraries(plugin: &Path) -> Preloaded {
    let mut out = Preloaded::default();
    let Some(site) = site_packages_of(plugin) else {
        return out;
    };
    let nvidia = site.join("nvidia");
    if !nvidia.is_dir() {
        return out;
    }
    out.nvidia_dir = Some(nvidia.clone());
    for (module, libs) in NVIDIA_LIBRARIES {
        for lib in *libs {
            let p = nvidia.join(module).join("lib").join(lib);
            if !p.is_file() || out.loaded.contains(&p) {
                continue;
            }
            // SAFETY: loading NVIDIA's own libraries from the wheels the plugin was built
            // against, exactly as JAX does before loading the same plugin; their initializers
            // are the vendor's.
            match unsafe { libloading::Library::new(&p) } {
                Ok(l) => {
                    // Keep it loaded for the life of the process, as JAX does.
                    std::mem::forget(l);
                    out.loaded.push(p);
                }
                Err(e) => out.failed.push((p, e.to_string())),
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_packages_from_plugin_path() {
        let p =
            Path::new("/v/lib/python3.12/site-packages/jax_plugins/xla_cuda13/xla_cuda_plugin.so");
        assert_eq!(
            site_packages_of(p),
            Some(PathBuf::from("/v/lib/python3.12/site-packages"))
        );
        assert_eq!(
            site_packages_of(Path::new("/x/third_party/pjrt-cpu/p.so")),
            None
        );
    }

    #[test]
    fn nothing_to_load_outside_a_pip_layout() {
        let r = preload_nvidia_libraries(Path::new("/nonexistent/jax_plugins/xla_cuda13/x.so"));
        assert!(r.nvidia_dir.is_none() && r.loaded.is_empty());
        assert!(r.describe().contains("no site-packages/nvidia"));
    }
}
