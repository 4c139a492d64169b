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

mod golden;
pub use golden::{golden_difference, GoldenDifference};

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
