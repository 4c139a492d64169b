//! Host tensors and `.npy` input/output.
//!
//! A [`Tensor`] is a dtype, a shape and row-major little-endian bytes. `.npy` files are read and
//! written here by hand rather than through ndarray-npy: the dtype is only known once the header
//! is read (ndarray-npy wants it at compile time), bf16 arrives as the raw `<V2` that numpy +
//! ml_dtypes write, and every malformed file must become a typed error, never a panic.

use std::path::Path;

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};

use crate::signature::{format_type, DType};

/// Why bytes could not become a tensor.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TensorError {
    /// The data length does not match dtype and shape.
    #[error("{dtype}{shape:?} needs {expected} bytes, got {got}")]
    Length {
        /// Element type.
        dtype: DType,
        /// Shape.
        shape: Vec<u64>,
        /// Bytes needed (None when the product overflows).
        expected: String,
        /// Bytes given.
        got: usize,
    },
    /// A `.npy` file is malformed or uses a layout we do not read.
    #[error("{path}: not a readable .npy file: {detail}")]
    Npy {
        /// The file (or `<bytes>`).
        path: String,
        /// What was wrong.
        detail: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The OS error (in the message; not also returned by `source()`).
        error: std::io::Error,
    },
    /// The requested Rust element type does not match the tensor's dtype.
    #[error("tensor is {got}, not {expected}")]
    DType {
        /// The type asked for.
        expected: DType,
        /// The tensor's type.
        got: DType,
    },
}

/// Byte length of `shape` elements of `dtype`, or `None` on overflow.
pub fn byte_len(dtype: DType, shape: &[u64]) -> Option<usize> {
    shape.iter().try_fold(dtype.size(), |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

/// A Rust type that is the element of one [`DType`].
pub trait Element: Copy + 'static + sealed::Sealed {
    /// The dtype.
    const DTYPE: DType;
    /// Reads one element from little-endian bytes (exactly `DTYPE.size()` of them).
    fn from_le(b: &[u8]) -> Self;
    /// Appends the little-endian bytes.
    fn put_le(self, out: &mut Vec<u8>);
}

mod sealed {
    pub trait Sealed {}
}

macro_rules! element {
    ($($t:ty => $d:ident),*) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn from_le(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            fn put_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
        }
    )*};
}
element!(i8 => I8, i16 => I16, i32 => I32, i64 => I64, u8 => U8, u16 => U16, u32 => U32, u64 => U64,
         f16 => F16, bf16 => BF16, f32 => F32, f64 => F64);

impl sealed::Sealed for bool {}
impl Element for bool {
    const DTYPE: DType = DType::Bool;
    fn from_le(b: &[u8]) -> Self {
        b.first().is_some_and(|&x| x != 0)
    }
    fn put_le(self, out: &mut Vec<u8>) {
        out.push(u8::from(self));
    }
}

/// A borrowed host array: what validation and upload read. No copy of the caller's data.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    /// Element type.
    pub dtype: DType,
    /// Shape.
    pub shape: &'a [u64],
    /// Row-major little-endian bytes.
    pub data: &'a [u8],
}

/// A host array: dtype, shape and row-major little-endian bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tensor {
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl Tensor {
    /// Wraps bytes, checking that their length is exactly what dtype and shape need.
    ///
    /// # Errors
    /// [`TensorError::Length`] otherwise (including when the size overflows).
    pub fn new(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Result<Tensor, TensorError> {
        match byte_len(dtype, &shape) {
            Some(n) if n == data.len() => Ok(Tensor { dtype, shape, data }),
            n => Err(TensorError::Length {
                dtype,
                expected: n.map_or_else(|| "more than usize::MAX".to_string(), |n| n.to_string()),
                shape,
                got: data.len(),
            }),
        }
    }

    /// A tensor from a slice of elements and a shape.
    ///
    /// # Errors
    /// [`TensorError::Length`] if the element count does not match the shape.
    pub fn from_slice<T: Element>(shape: &[u64], values: &[T]) -> Result<Tensor, TensorError> {
        let mut data = Vec::with_capacity(values.len() * T::DTYPE.size());
        for &v in values {
            v.put_le(&mut data);
        }
        Tensor::new(T::DTYPE, shape.to_vec(), data)
    }

    /// A tensor from an ndarray (any layout; copied in row-major order).
    ///
    /// ```
    /// use xlaguard::tensor::Tensor;
    /// let t = Tensor::from_array(&ndarray::arr2(&[[1.0f32, 2.0], [3.0, 4.0]]).into_dyn());
    /// assert_eq!(t.shape(), &[2, 2]);
    /// ```
    pub fn from_array<T: Element>(a: &ArrayD<T>) -> Tensor {
        let mut data = Vec::with_capacity(a.len() * T::DTYPE.size());
        for &v in a.iter() {
            v.put_le(&mut data);
        }
        Tensor {
            dtype: T::DTYPE,
            shape: a.shape().iter().map(|&d| d as u64).collect(),
            data,
        }
    }

    /// The elements as an ndarray of `T`.
    ///
    /// # Errors
    /// [`TensorError::DType`] if `T` is not this tensor's dtype.
    pub fn to_array<T: Element>(&self) -> Result<ArrayD<T>, TensorError> {
        if T::DTYPE != self.dtype {
            return Err(TensorError::DType {
                expected: T::DTYPE,
                got: self.dtype,
            });
        }
        let v: Vec<T> = self
            .data
            .chunks_exact(self.dtype.size())
            .map(T::from_le)
            .collect();
        let bad = |detail: String| TensorError::Npy {
            path: "<tensor>".into(),
            detail,
        };
        let shape: Vec<usize> = self
            .shape
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| bad(format!("dimension {d} exceeds usize"))))
            .collect::<Result<_, _>>()?;
        ArrayD::from_shape_vec(IxDyn(&shape), v).map_err(|e| bad(e.to_string()))
    }

    /// A borrowed view.
    pub fn view(&self) -> TensorRef<'_> {
        TensorRef {
            dtype: self.dtype,
            shape: &self.shape,
            data: &self.data,
        }
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Shape (empty for a scalar).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// Row-major little-endian bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.data
    }

    /// Takes the bytes.
    pub fn into_bytes(self) -> Vec<u8> {
        self.data
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.data.len() / self.dtype.size()
    }

    /// True for a tensor with no elements.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// `float32[8,16]`.
    pub fn type_string(&self) -> String {
        format_type(self.dtype, self.shape.iter())
    }

    /// Reads a `.npy` file.
    ///
    /// # Errors
    /// [`TensorError::Io`] or [`TensorError::Npy`], naming the file.
    pub fn read_npy(path: &Path) -> Result<Tensor, TensorError> {
        let bytes = std::fs::read(path).map_err(|source| TensorError::Io {
            path: path.display().to_string(),
            error: source,
        })?;
        Tensor::from_npy(&bytes).map_err(|e| match e {
            TensorError::Npy { detail, .. } => TensorError::Npy {
                path: path.display().to_string(),
                detail,
            },
            other => other,
        })
    }

    /// Parses `.npy` bytes (format versions 1, 2 and 3; C order; any byte order).
    /// bf16 is the raw 2-byte void `<V2` that numpy + ml_dtypes write.
    ///
    /// # Errors
    /// [`TensorError::Npy`] for anything malformed or unsupported.
    pub fn from_npy(bytes: &[u8]) -> Result<Tensor, TensorError> {
        let bad = |detail: String| TensorError::Npy {
            path: "<bytes>".into(),
            detail,
        };
        if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
            return Err(bad("missing the \\x93NUMPY magic".into()));
        }
        let (header_len, start) = match bytes[6] {
            1 => (
                usize::from(u16::from_le_bytes([bytes[8], bytes[9]])),
                10usize,
            ),
            2 | 3 => {
                if bytes.len() < 12 {
                    return Err(bad("truncated header".into()));
                }
                let n = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
                (
                    usize::try_from(n).map_err(|_| bad("header too long".into()))?,
                    12,
                )
            }
            v => return Err(bad(format!("format version {v} (expected 1, 2 or 3)"))),
        };
        let end = start
            .checked_add(header_len)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "header of {header_len} bytes runs past the end of the file"
                ))
            })?;
        let header = std::str::from_utf8(&bytes[start..end])
            .map_err(|_| bad("header is not text".into()))?;
        let descr =
            dict_value(header, "descr").ok_or_else(|| bad("header has no 'descr'".into()))?;
        let fortran = dict_value(header, "fortran_order")
            .ok_or_else(|| bad("header has no 'fortran_order'".into()))?;
        let shape_s =
            dict_value(header, "shape").ok_or_else(|| bad("header has no 'shape'".into()))?;
        let descr = descr.trim().trim_matches(|c| c == '\'' || c == '"');
        let (dtype, swap) =
            parse_descr(descr).ok_or_else(|| bad(format!("unsupported dtype descr '{descr}'")))?;
        match fortran.trim() {
            "False" => {}
            "True" => {
                return Err(bad(
                    "Fortran-order arrays are not supported; save with np.ascontiguousarray".into(),
                ))
            }
            other => return Err(bad(format!("fortran_order is '{other}'"))),
        }
        let shape =
            parse_shape(shape_s).ok_or_else(|| bad(format!("bad shape '{}'", shape_s.trim())))?;
        let n = byte_len(dtype, &shape).ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
        let body = &bytes[end..];
        if body.len() != n {
            return Err(bad(format!(
                "{} needs {n} data bytes, file has {}",
                format_type(dtype, shape.iter()),
                body.len()
            )));
        }
        let mut data = body.to_vec();
        if swap {
            // A complex element is two floats, each swapped on its own.
            let part = dtype.complex_part().unwrap_or(dtype);
            for c in data.chunks_exact_mut(part.size()) {
                c.reverse();
            }
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Serializes as `.npy` (version 1; bf16 as `<V2`, as numpy + ml_dtypes write it).
    pub fn to_npy(&self) -> Vec<u8> {
        let descr = match self.dtype {
            DType::Bool => "|b1",
            DType::I8 => "|i1",
            DType::U8 => "|u1",
            DType::I16 => "<i2",
            DType::U16 => "<u2",
            DType::I32 => "<i4",
            DType::U32 => "<u4",
            DType::I64 => "<i8",
            DType::U64 => "<u8",
            DType::F16 => "<f2",
            DType::BF16 => "<V2",
            DType::F32 => "<f4",
            DType::F64 => "<f8",
            DType::C64 => "<c8",
            DType::C128 => "<c16",
        };
        let shape = match self.shape.len() {
            0 => "()".to_string(),
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        // Version 1 has a 2-byte header length; version 2 (a 4-byte one) only for huge ranks.
        let v1 = header.len() + 11 < usize::from(u16::MAX);
        let prefix = if v1 { 10 } else { 12 };
        // Pad so that magic + len + header + '\n' is a multiple of 64.
        let total = prefix + header.len() + 1;
        header.push_str(&" ".repeat((64 - total % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(prefix + header.len() + self.data.len());
        match (u16::try_from(header.len()), u32::try_from(header.len())) {
            (Ok(n), _) if v1 => {
                out.extend_from_slice(b"\x93NUMPY\x01\x00");
                out.extend_from_slice(&n.to_le_bytes());
            }
            (_, Ok(n)) => {
                out.extend_from_slice(b"\x93NUMPY\x02\x00");
                out.extend_from_slice(&n.to_le_bytes());
            }
            // A header over 4 GiB would need a shape with ~200 million dimensions.
            (_, Err(_)) => out.extend_from_slice(b"\x93NUMPY\x02\x00\xff\xff\xff\xff"),
        }
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&self.data);
        out
    }

    /// Writes a `.npy` file.
    ///
    /// # Errors
    /// [`TensorError::Io`] naming the file.
    pub fn write_npy(&self, path: &Path) -> Result<(), TensorError> {
        std::fs::write(path, self.to_npy()).map_err(|source| TensorError::Io {
            path: path.display().to_string(),
            error: source,
        })
    }
}

/// The text of `'key': value` in a numpy header dict, up to the next top-level comma.
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let pat1 = format!("'{key}':");
    let pat2 = format!("\"{key}\":");
    let at = header
        .find(&pat1)
        .map(|i| i + pat1.len())
        .or_else(|| header.find(&pat2).map(|i| i + pat2.len()))?;
    let rest = &header[at..];
    let mut depth = 0i32;
    for (i, c) in rest.char_indices() {
        match c {
            '(' | '[' => depth += 1,
            ')' | ']' => depth -= 1,
            ',' | '}' if depth == 0 => return Some(&rest[..i]),
            _ => {}
        }
    }
    None
}

fn parse_descr(descr: &str) -> Option<(DType, bool)> {
    let (order, code) = descr.split_at_checked(1)?;
    let swap = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return None,
    };
    let dtype = match code {
        "b1" => DType::Bool,
        "i1" => DType::I8,
        "u1" => DType::U8,
        "i2" => DType::I16,
        "u2" => DType::U16,
        "i4" => DType::I32,
        "u4" => DType::U32,
        "i8" => DType::I64,
        "u8" => DType::U64,
        "f2" => DType::F16,
        "V2" => DType::BF16,
        "f4" => DType::F32,
        "f8" => DType::F64,
        "c8" => DType::C64,
        "c16" => DType::C128,
        _ => return None,
    };
    Some((dtype, swap && dtype.size() > 1))
}

fn parse_shape(s: &str) -> Option<Vec<u64>> {
    let inner = s.trim().strip_prefix('(')?.strip_suffix(')')?;
    inner
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.trim_end_matches('L').parse::<u64>().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_every_dtype() {
        for d in DType::ALL {
            for shape in [vec![], vec![3], vec![2, 3]] {
                let n = byte_len(d, &shape).unwrap();
                let data: Vec<u8> = (0..n).map(|i| u8::try_from(i * 7 % 251).unwrap()).collect();
                let t = Tensor::new(d, shape.clone(), data).unwrap();
                let back = Tensor::from_npy(&t.to_npy()).unwrap();
                assert_eq!(back, t, "{d} {shape:?}");
            }
        }
    }

    #[test]
    fn big_endian_is_swapped() {
        let mut t = Tensor::from_slice(&[2], &[1.5f32, -2.0]).unwrap().to_npy();
        let at = t.windows(3).position(|w| w == b"<f4").unwrap();
        t[at] = b'>';
        // The body is still little-endian bytes; after the descr change they are read swapped.
        let back = Tensor::from_npy(&t).unwrap();
        assert_eq!(back.bytes()[..4], 1.5f32.to_be_bytes());
    }

    #[test]
    fn malformed_npy_is_an_error_not_a_panic() {
        let good = Tensor::from_slice(&[2, 2], &[1i32, 2, 3, 4])
            .unwrap()
            .to_npy();
        for cut in 0..good.len() {
            assert!(Tensor::from_npy(&good[..cut]).is_err(), "cut at {cut}");
        }
        for i in 0..good.len() {
            let mut b = good.clone();
            b[i] ^= 0xff;
            let _ = Tensor::from_npy(&b);
        }
    }

    #[test]
    fn length_is_checked() {
        let e = Tensor::new(DType::F32, vec![2, 3], vec![0; 23]).unwrap_err();
        assert!(e.to_string().contains("needs 24 bytes, got 23"), "{e}");
        assert!(Tensor::new(DType::F64, vec![u64::MAX, 2], vec![]).is_err());
    }
}
