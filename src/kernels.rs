//! Which CPU kernel libraries XLA may call: JAX's choice (the default) or another, per model.
//!
//! XLA's CPU backend hands some operations to libraries instead of its own generated code:
//! under JAX 0.11.2's options, convolutions, dots and reductions go to YNNPACK
//! (`__ynn_fusion` fusions). The plugin can also call XNNPACK and oneDNN; which it does is set
//! by `DebugOptions` fields. A [`CpuKernels`] setting is a set of such edits, written on top of
//! JAX's options and of `XLA_FLAGS` for every compile of the model it is chosen for.
//! `docs/cpu_kernels.md` says what each changes and how far its results are from JAX's.

use std::fmt;
use std::str::FromStr;

use crate::pjrt::{CompileOptions, XlaFlagError};

/// CPU kernel libraries for a model's compiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuKernels {
    /// JAX's options unchanged (YNNPACK for convolutions, dots and reductions): results equal
    /// JAX's bit for bit.
    #[default]
    Xla,
    /// XNNPACK graph fusion (greedy) for dots, elementwise ops and convolutions, instead of
    /// YNNPACK.
    Xnnpack,
    /// oneDNN: XLA rewrites the convolutions and matrix multiplications it can into oneDNN
    /// custom calls (`__onednn$convolution`, `__onednn$matmul`); YNNPACK keeps the rest.
    Onednn,
    /// No library fusions at all: XLA's own generated code (and Eigen) for everything.
    YnnOff,
}

/// A `cpu_kernels` value that is not one of the settings.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cpu_kernels: expected one of {}, got '{got}'", CpuKernels::NAMES.join(", "))]
pub struct CpuKernelsError {
    /// The value given.
    pub got: String,
}

impl CpuKernels {
    /// Every setting, in the order of [`CpuKernels::NAMES`].
    pub const ALL: [CpuKernels; 4] = [
        CpuKernels::Xla,
        CpuKernels::Xnnpack,
        CpuKernels::Onednn,
        CpuKernels::YnnOff,
    ];

    /// The settings' names, as `config.toml` and `--cpu-kernels` take them.
    pub const NAMES: [&'static str; 4] = ["xla", "xnnpack", "onednn", "ynn_off"];

    /// The setting's name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The `DebugOptions` edits, as `XLA_FLAGS` text (empty for [`CpuKernels::Xla`]).
    pub fn flags(self) -> &'static str {
        match self {
            CpuKernels::Xla => "",
            CpuKernels::Xnnpack => {
                "--xla_cpu_use_xnnpack=true \
                 --xla_cpu_experimental_xnn_graph_fusion_mode=greedy \
                 --xla_cpu_experimental_xnn_fusion_type=dot,eltwise,individual_convolution \
                 --xla_cpu_experimental_ynn_fusion_type="
            }
            CpuKernels::Onednn => {
                "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true"
            }
            CpuKernels::YnnOff => "--xla_cpu_experimental_ynn_fusion_type=",
        }
    }

    /// Writes the setting's edits into `options` (after `XLA_FLAGS`: the setting wins).
    ///
    /// # Errors
    /// None for the built-in settings (a unit test encodes each); the type is
    /// [`CompileOptions::xla_flags`]'s.
    pub fn apply(self, options: &mut CompileOptions) -> Result<(), XlaFlagError> {
        options.xla_flags(self.flags()).map(|_| ())
    }
}

impl fmt::Display for CpuKernels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for CpuKernels {
    type Err = CpuKernelsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::NAMES
            .iter()
            .position(|n| *n == s)
            .map(|i| Self::ALL[i])
            .ok_or_else(|| CpuKernelsError { got: s.to_string() })
    }
}

/// How far a model's outputs are from JAX's on the golden inputs beside its artifact.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GoldenDifference {
    /// Output tensors compared.
    pub outputs: usize,
    /// Elements compared.
    pub elements: usize,
    /// Elements that differ in any bit.
    pub differing: usize,
    /// Largest absolute difference (floats; 0 for other dtypes when equal).
    pub max_abs: f64,
    /// Largest difference in units in the last place (f32 and f64 outputs).
    pub max_ulp: u64,
}

/// Runs `model` on the goldens in `dir` (`in0.npy`, `in1.npy`, ... in signature order, and
/// `out0.npy`, ...: what JAX returned, as `hlo/` commits them) and measures its outputs
/// against JAX's. `Ok(None)` when `dir` has no `in0.npy` and `out0.npy`.
///
/// # Errors
/// An unreadable golden, or the model's error for the run; [`crate::Error::Config`] when the
/// outputs' dtypes or shapes are not the goldens'.
pub fn golden_difference(
    model: &crate::Model,
    dir: &std::path::Path,
) -> Result<Option<GoldenDifference>, crate::Error> {
    use crate::{DType, Error, Tensor};
    if !dir.join("in0.npy").is_file() || !dir.join("out0.npy").is_file() {
        return Ok(None);
    }
    let read = |p: std::path::PathBuf| {
        Tensor::read_npy(&p).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    };
    let inputs = (0..model.signature().inputs.len())
        .map(|i| read(dir.join(format!("in{i}.npy"))))
        .collect::<Result<Vec<_>, _>>()?;
    let views: Vec<_> = inputs.iter().map(Tensor::view).collect();
    let got = model.run(&views)?;
    let mut d = GoldenDifference::default();
    for (i, g) in got.iter().enumerate() {
        let want = read(dir.join(format!("out{i}.npy")))?;
        if want.dtype() != g.dtype() || want.shape() != g.shape() {
            return Err(Error::Config(format!(
                "out{i}.npy is {} but the model returns {}",
                want.type_string(),
                g.type_string()
            )));
        }
        d.outputs += 1;
        let width = g.dtype().size().max(1);
        for (a, b) in g.bytes().chunks(width).zip(want.bytes().chunks(width)) {
            d.elements += 1;
            if a == b {
                continue;
            }
            d.differing += 1;
            let (abs, ulp) = match g.dtype() {
                DType::F32 => {
                    let (x, y) = (f32_of(a), f32_of(b));
                    let ord = |v: f32| {
                        let i = v.to_bits() as i32;
                        i64::from(if i < 0 { i32::MIN - i } else { i })
                    };
                    (f64::from((x - y).abs()), ord(x).abs_diff(ord(y)))
                }
                DType::F64 => {
                    let (x, y) = (f64_of(a), f64_of(b));
                    let ord = |v: f64| {
                        let i = v.to_bits() as i64;
                        i128::from(if i < 0 { i64::MIN - i } else { i })
                    };
                    let ulp = u64::try_from(ord(x).abs_diff(ord(y))).unwrap_or(u64::MAX);
                    ((x - y).abs(), ulp)
                }
                _ => (f64::NAN, 0),
            };
            d.max_abs = if abs.is_nan() {
                f64::NAN
            } else {
                d.max_abs.max(abs)
            };
            d.max_ulp = d.max_ulp.max(ulp);
        }
    }
    Ok(Some(d))
}

fn f32_of(b: &[u8]) -> f32 {
    f32::from_le_bytes(b.try_into().unwrap_or([0; 4]))
}

fn f64_of(b: &[u8]) -> f64 {
    f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_names_list_the_choices() {
        for k in CpuKernels::ALL {
            assert_eq!(k.name().parse::<CpuKernels>(), Ok(k));
        }
        let e = "mkl".parse::<CpuKernels>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "cpu_kernels: expected one of xla, xnnpack, onednn, ynn_off, got 'mkl'"
        );
    }

    #[test]
    fn each_setting_encodes_and_only_xla_is_jax() {
        for k in CpuKernels::ALL {
            let mut o = CompileOptions::new();
            k.apply(&mut o).unwrap();
            assert_eq!(o == CompileOptions::new(), k == CpuKernels::Xla, "{k}");
            assert_eq!(CompileOptions::decode(&o.encode()), Some(o));
        }
    }
}
