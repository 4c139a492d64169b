//! Element types, dimensions and tensor signatures.
//!
//! A [`Signature`] lists a module's inputs and outputs as [`TensorSpec`]s. It is what every input
//! is checked against before any device buffer exists.

use std::fmt;

/// An element type, spelled as numpy spells it (`float32`, `bfloat16`, `int32`, `bool`, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// `bool` (XLA `PRED`), one byte per element.
    Bool,
    /// `int8`.
    I8,
    /// `int16`.
    I16,
    /// `int32`.
    I32,
    /// `int64`.
    I64,
    /// `uint8`.
    U8,
    /// `uint16`.
    U16,
    /// `uint32`.
    U32,
    /// `uint64`.
    U64,
    /// `float16` (IEEE half).
    F16,
    /// `bfloat16`.
    BF16,
    /// `float32`.
    F32,
    /// `float64`.
    F64,
    /// `complex64`: two `float32`s per element, real part first.
    C64,
    /// `complex128`: two `float64`s per element, real part first.
    C128,
}

impl DType {
    /// Every supported dtype, in a fixed order.
    pub const ALL: [DType; 15] = [
        DType::Bool,
        DType::I8,
        DType::I16,
        DType::I32,
        DType::I64,
        DType::U8,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F16,
        DType::BF16,
        DType::F32,
        DType::F64,
        DType::C64,
        DType::C128,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::Bool | DType::I8 | DType::U8 => 1,
            DType::I16 | DType::U16 | DType::F16 | DType::BF16 => 2,
            DType::I32 | DType::U32 | DType::F32 => 4,
            DType::I64 | DType::U64 | DType::F64 | DType::C64 => 8,
            DType::C128 => 16,
        }
    }

    /// The numpy name (`float32`, `bfloat16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::Bool => "bool",
            DType::I8 => "int8",
            DType::I16 => "int16",
            DType::I32 => "int32",
            DType::I64 => "int64",
            DType::U8 => "uint8",
            DType::U16 => "uint16",
            DType::U32 => "uint32",
            DType::U64 => "uint64",
            DType::F16 => "float16",
            DType::BF16 => "bfloat16",
            DType::F32 => "float32",
            DType::F64 => "float64",
            DType::C64 => "complex64",
            DType::C128 => "complex128",
        }
    }

    /// Parses a numpy name (`float32`, `bfloat16`, `bool`, ...).
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }

    /// Parses an MLIR element type (`f32`, `bf16`, `i1`, `i32`, `ui8`, ...).
    pub fn from_mlir(ty: &str) -> Option<DType> {
        Some(match ty {
            "i1" => DType::Bool,
            "i8" | "si8" => DType::I8,
            "i16" | "si16" => DType::I16,
            "i32" | "si32" => DType::I32,
            "i64" | "si64" => DType::I64,
            "ui8" => DType::U8,
            "ui16" => DType::U16,
            "ui32" => DType::U32,
            "ui64" => DType::U64,
            "f16" => DType::F16,
            "bf16" => DType::BF16,
            "f32" => DType::F32,
            "f64" => DType::F64,
            "complex<f32>" => DType::C64,
            "complex<f64>" => DType::C128,
            _ => return None,
        })
    }

    /// The MLIR element type (`f32`, `bf16`, `i1`, `ui32`, `complex<f32>`).
    pub const fn mlir_name(self) -> &'static str {
        match self {
            DType::Bool => "i1",
            DType::I8 => "i8",
            DType::I16 => "i16",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::U8 => "ui8",
            DType::U16 => "ui16",
            DType::U32 => "ui32",
            DType::U64 => "ui64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::C64 => "complex<f32>",
            DType::C128 => "complex<f64>",
        }
    }

    /// The MLIR tensor type of this dtype at `dims`: `tensor<3x16xf32>`, `tensor<i32>`.
    pub fn mlir_tensor_type(self, dims: &[u64]) -> String {
        let mut s = String::from("tensor<");
        for d in dims {
            s.push_str(&d.to_string());
            s.push('x');
        }
        s.push_str(self.mlir_name());
        s.push('>');
        s
    }

    /// True for the floating-point dtypes.
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F16 | DType::BF16 | DType::F32 | DType::F64)
    }

    /// True for `complex64` and `complex128`.
    pub const fn is_complex(self) -> bool {
        matches!(self, DType::C64 | DType::C128)
    }

    /// The real type of a complex dtype's parts (`float32` for `complex64`); `None` for the
    /// others. A complex tensor of shape `[..]` has the bytes of its part type at `[.., 2]`.
    pub const fn complex_part(self) -> Option<DType> {
        match self {
            DType::C64 => Some(DType::F32),
            DType::C128 => Some(DType::F64),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One dimension of a shape: a fixed size, or a symbolic one from a shape-polymorphic export.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Static(u64),
    /// A symbolic size such as `b` or `2*b`, as written by `jax.export`.
    Symbolic(String),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Static(n) => write!(f, "{n}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// The name, dtype and shape of one input or output.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TensorSpec {
    /// Name from the export's metadata, else `arg0`, `arg1`, ... (`out0`, ... for outputs).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Shape; empty for a scalar.
    pub shape: Vec<Dim>,
    /// JAX's own type where it is not what the module takes: a typed PRNG key (`key<fry>[3]`)
    /// is taken as its raw data, `uint32[3,2]`, which `dtype` and `shape` describe.
    pub jax_type: Option<String>,
}

impl TensorSpec {
    /// A spec with a fully static shape.
    pub fn new(name: impl Into<String>, dtype: DType, shape: &[u64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.iter().map(|&d| Dim::Static(d)).collect(),
            jax_type: None,
        }
    }

    /// The static dims, or `None` if any dimension is symbolic.
    pub fn static_shape(&self) -> Option<Vec<u64>> {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Static(n) => Some(*n),
                Dim::Symbolic(_) => None,
            })
            .collect()
    }

    /// True if any dimension is symbolic.
    pub fn is_polymorphic(&self) -> bool {
        self.shape.iter().any(|d| matches!(d, Dim::Symbolic(_)))
    }

    /// `float32[8,16]`, the form used in every message.
    pub fn type_string(&self) -> String {
        format_type(self.dtype, self.shape.iter())
    }

    /// [`TensorSpec::type_string`], followed by JAX's own type where it differs:
    /// `uint32[2] (key<fry>[])`.
    pub fn described_type(&self) -> String {
        match &self.jax_type {
            Some(j) => format!("{} ({j})", self.type_string()),
            None => self.type_string(),
        }
    }
}

/// Formats `dtype[d0,d1,...]` as in `float32[8,16]` (a scalar is `float32[]`).
pub fn format_type<D: fmt::Display>(dtype: DType, dims: impl Iterator<Item = D>) -> String {
    let dims: Vec<String> = dims.map(|d| d.to_string()).collect();
    format!("{}[{}]", dtype.name(), dims.join(","))
}

/// The inputs and outputs of a module, in calling order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signature {
    /// Inputs, in the order the caller passes them.
    pub inputs: Vec<TensorSpec>,
    /// Outputs, in the order they are returned.
    pub outputs: Vec<TensorSpec>,
}

impl Signature {
    /// Index of the input called `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("float"), None);
    }

    #[test]
    fn type_string() {
        let s = TensorSpec::new("x", DType::F32, &[8, 16]);
        assert_eq!(s.type_string(), "float32[8,16]");
        let s = TensorSpec::new("x", DType::BF16, &[]);
        assert_eq!(s.type_string(), "bfloat16[]");
    }
}
