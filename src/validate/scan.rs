//! Fused single-pass value scans, one per dtype.
//!
//! One pass over an input's bytes counts everything a value policy needs: NaNs, +Inf, -Inf,
//! finite values below the lower bound and above the upper bound, the first offending element
//! of each kind, and the minimum and maximum finite value. The caller's bytes are only read.
//!
//! f32, bf16, f16, i32 and u8 have explicit AVX2 kernels, chosen at run time when the CPU has
//! AVX2 ([`Backend::best`]); every dtype has a scalar implementation, which is also the fallback.
//! bf16 and f16 are checked in their own 16-bit width through their bit patterns (every NaN
//! payload is a NaN, `-0.0` equals `0.0`), never by converting the array to f32.
//!
//! The kernels count per SIMD lane in narrow counters and flush them to 64-bit totals after
//! each block of elements; a block that holds the first offender of some kind is rescanned
//! by the scalar code to find its exact index, which happens at most once per kind.

use std::fmt;

use half::{bf16, f16};

use crate::signature::DType;

/// A bound as written in a policy: an integer or a float.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    /// An integer bound (exact for integer inputs).
    Int(i64),
    /// A floating-point bound.
    Float(f64),
}

impl Bound {
    /// The bound as an `f64` (integers above 2^53 round).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(self) -> f64 {
        match self {
            Bound::Int(i) => i as f64,
            Bound::Float(f) => f,
        }
    }
}

impl fmt::Display for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bound::Int(i) => write!(f, "{i}"),
            Bound::Float(x) => write!(f, "{x:?}"),
        }
    }
}

impl From<i64> for Bound {
    fn from(v: i64) -> Bound {
        Bound::Int(v)
    }
}
impl From<i32> for Bound {
    fn from(v: i32) -> Bound {
        Bound::Int(i64::from(v))
    }
}
impl From<u32> for Bound {
    fn from(v: u32) -> Bound {
        Bound::Int(i64::from(v))
    }
}
impl From<f64> for Bound {
    fn from(v: f64) -> Bound {
        Bound::Float(v)
    }
}
impl From<f32> for Bound {
    fn from(v: f32) -> Bound {
        Bound::Float(f64::from(v))
    }
}

/// One element's value, in its own dtype (shown in messages: `255.0`, `NaN`, `-inf`, `50`).
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// A `bool`.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A `float16`.
    F16(f16),
    /// A `bfloat16`.
    BF16(bf16),
    /// A `float32`.
    F32(f32),
    /// A `float64`.
    F64(f64),
}

impl Value {
    /// The value as an `f64` (exact for every float dtype and for integers up to 2^53).
    #[allow(clippy::cast_precision_loss)]
    pub fn as_f64(self) -> f64 {
        match self {
            Value::Bool(b) => f64::from(u8::from(b)),
            Value::Int(i) => i as f64,
            Value::UInt(u) => u as f64,
            Value::F16(x) => x.to_f64(),
            Value::BF16(x) => x.to_f64(),
            Value::F32(x) => f64::from(x),
            Value::F64(x) => x,
        }
    }

    /// Reads element `index` of `data` (little-endian) as `dtype`; `None` past the end.
    pub fn read(dtype: DType, data: &[u8], index: usize) -> Option<Value> {
        if let Some(part) = dtype.complex_part() {
            return Value::read(part, data, index);
        }
        let n = dtype.size();
        let b = data.get(index.checked_mul(n)?..index.checked_mul(n)?.checked_add(n)?)?;
        Some(match dtype {
            DType::Bool => Value::Bool(b[0] != 0),
            DType::I8 => i8::load(b).value(),
            DType::I16 => i16::load(b).value(),
            DType::I32 => i32::load(b).value(),
            DType::I64 => i64::load(b).value(),
            DType::U8 => u8::load(b).value(),
            DType::U16 => u16::load(b).value(),
            DType::U32 => u32::load(b).value(),
            DType::U64 => u64::load(b).value(),
            DType::F16 => f16::load(b).value(),
            DType::BF16 => bf16::load(b).value(),
            DType::F32 => f32::load(b).value(),
            DType::F64 => f64::load(b).value(),
            DType::C64 | DType::C128 => return None, // handled above
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::UInt(u) => write!(f, "{u}"),
            // f32's shortest round-trip form is exact for every f16 and bf16 value.
            Value::F16(x) => write!(f, "{:?}", x.to_f32()),
            Value::BF16(x) => write!(f, "{:?}", x.to_f32()),
            Value::F32(x) => write!(f, "{x:?}"),
            Value::F64(x) => write!(f, "{x:?}"),
        }
    }
}

/// What kind of value an element is, for the scan's categories.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Nan,
    PosInf,
    NegInf,
    Finite,
}

/// An element type the scans and sanitizers work on.
pub(crate) trait Elem: Copy + fmt::Debug + 'static {
    const SIZE: usize;
    /// Orders non-NaN values (infinities included); `-0.0` and `0.0` have equal keys.
    type Key: Copy + PartialOrd + fmt::Debug;
    /// Smallest and largest finite values.
    const LOWEST: Self;
    const HIGHEST: Self;
    fn load(b: &[u8]) -> Self;
    fn store(self, b: &mut [u8]);
    fn class(self) -> Class;
    fn key(self) -> Self::Key;
    /// The value with this key (`+0.0` for a zero key).
    fn from_key(k: Self::Key) -> Self;
    fn value(self) -> Value;
}

macro_rules! int_elem {
    ($($t:ty => $v:ident as $w:ty),*) => {$(
        impl Elem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            type Key = $t;
            const LOWEST: $t = <$t>::MIN;
            const HIGHEST: $t = <$t>::MAX;
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            #[inline(always)]
            fn store(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn class(self) -> Class {
                Class::Finite
            }
            #[inline(always)]
            fn key(self) -> $t {
                self
            }
            #[inline(always)]
            fn from_key(k: $t) -> $t {
                k
            }
            fn value(self) -> Value {
                Value::$v(<$w>::from(self))
            }
        }
    )*};
}
int_elem!(i8 => Int as i64, i16 => Int as i64, i32 => Int as i64, i64 => Int as i64,
          u8 => UInt as u64, u16 => UInt as u64, u32 => UInt as u64, u64 => UInt as u64);

macro_rules! float_elem {
    ($($t:ty => $v:ident),*) => {$(
        impl Elem for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            type Key = $t;
            const LOWEST: $t = <$t>::MIN;
            const HIGHEST: $t = <$t>::MAX;
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                let mut a = [0u8; std::mem::size_of::<$t>()];
                a.copy_from_slice(b);
                <$t>::from_le_bytes(a)
            }
            #[inline(always)]
            fn store(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_le_bytes());
            }
            #[inline(always)]
            fn from_key(k: $t) -> $t {
                k
            }
            #[inline(always)]
            fn class(self) -> Class {
                if self.is_nan() {
                    Class::Nan
                } else if self == <$t>::INFINITY {
                    Class::PosInf
                } else if self == <$t>::NEG_INFINITY {
                    Class::NegInf
                } else {
                    Class::Finite
                }
            }
            #[inline(always)]
            fn key(self) -> $t {
                self
            }
            fn value(self) -> Value {
                Value::$v(self)
            }
        }
    )*};
}
float_elem!(f32 => F32, f64 => F64);

/// The ordering key of a 16-bit float's bit pattern: the magnitude bits, negated when the sign
/// bit is set. Monotonic in the value for every non-NaN pattern; `-0.0` and `0.0` both give 0.
#[inline(always)]
pub(crate) fn half_key(bits: u16) -> i16 {
    // The magnitude fits in 15 bits, so it is a non-negative i16.
    let mag = (bits & 0x7fff) as i16;
    if bits & 0x8000 != 0 {
        -mag
    } else {
        mag
    }
}

/// The bit pattern of a 16-bit float key (`0` gives `+0.0`).
#[inline(always)]
pub(crate) fn half_from_key(key: i16) -> u16 {
    if key < 0 {
        0x8000 | key.unsigned_abs()
    } else {
        key.unsigned_abs()
    }
}

macro_rules! half_elem {
    ($($t:ty => $v:ident, $inf:expr),*) => {$(
        impl Elem for $t {
            const SIZE: usize = 2;
            type Key = i16;
            const LOWEST: $t = <$t>::MIN;
            const HIGHEST: $t = <$t>::MAX;
            #[inline(always)]
            fn from_key(k: i16) -> $t {
                <$t>::from_bits(half_from_key(k))
            }
            #[inline(always)]
            fn load(b: &[u8]) -> Self {
                <$t>::from_bits(u16::from_le_bytes([b[0], b[1]]))
            }
            #[inline(always)]
            fn store(self, b: &mut [u8]) {
                b.copy_from_slice(&self.to_bits().to_le_bytes());
            }
            #[inline(always)]
            fn class(self) -> Class {
                let bits = self.to_bits();
                let mag = bits & 0x7fff;
                if mag > $inf {
                    Class::Nan
                } else if mag == $inf {
                    if bits & 0x8000 == 0 { Class::PosInf } else { Class::NegInf }
                } else {
                    Class::Finite
                }
            }
            #[inline(always)]
            fn key(self) -> i16 {
                half_key(self.to_bits())
            }
            fn value(self) -> Value {
                Value::$v(self)
            }
        }
    )*};
}
/// `+inf` of bfloat16 (exponent all ones, mantissa zero).
pub(crate) const BF16_INF: u16 = 0x7f80;
/// `+inf` of float16.
pub(crate) const F16_INF: u16 = 0x7c00;
half_elem!(bf16 => BF16, BF16_INF, f16 => F16, F16_INF);

/// Floats: rounding of bounds into the dtype.
pub(crate) trait FloatElem: Elem {
    const MAX_F64: f64;
    /// Nearest (or nearly nearest) value of the type.
    fn near(v: f64) -> Self;
    fn to_f64(self) -> f64;
    /// The next value up (`up`) or down, for finite values strictly inside the range.
    fn step(self, up: bool) -> Self;
}

/// Next representable value of an IEEE float by its bit pattern, for finite inputs.
macro_rules! ieee_step {
    ($x:expr, $up:expr, $bits:ty, $from:path) => {{
        let x = $x;
        let b = x.to_bits();
        let sign = b >> (<$bits>::BITS - 1) != 0;
        let zero = x == 0.0;
        if zero {
            // Smallest subnormal of the direction's sign.
            let tiny: $bits = 1;
            $from(if $up {
                tiny
            } else {
                tiny | (1 << (<$bits>::BITS - 1))
            })
        } else if sign != $up {
            // Moving away from zero: magnitude + 1 ulp.
            $from(b + 1)
        } else {
            $from(b - 1)
        }
    }};
}

impl FloatElem for f32 {
    const MAX_F64: f64 = f32::MAX as f64;
    #[allow(clippy::cast_possible_truncation)]
    fn near(v: f64) -> f32 {
        v as f32
    }
    fn to_f64(self) -> f64 {
        f64::from(self)
    }
    fn step(self, up: bool) -> f32 {
        ieee_step!(self, up, u32, f32::from_bits)
    }
}

impl FloatElem for f64 {
    const MAX_F64: f64 = f64::MAX;
    fn near(v: f64) -> f64 {
        v
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn step(self, up: bool) -> f64 {
        ieee_step!(self, up, u64, f64::from_bits)
    }
}

macro_rules! half_float {
    ($($t:ty),*) => {$(
        impl FloatElem for $t {
            const MAX_F64: f64 = <$t>::MAX.to_f64_const();
            fn near(v: f64) -> $t {
                <$t>::from_f64(v)
            }
            fn to_f64(self) -> f64 {
                <$t>::to_f64(self)
            }
            fn step(self, up: bool) -> $t {
                let k = half_key(self.to_bits());
                <$t>::from_bits(half_from_key(if up { k + 1 } else { k - 1 }))
            }
        }
    )*};
}
half_float!(bf16, f16);

/// The smallest value of `T` that is `>= v` (`up`) or the largest that is `<= v`. `v` must be
/// finite and within `±T::MAX`.
fn round_into<T: FloatElem>(v: f64, up: bool) -> T {
    let mut c = T::near(v);
    // `near` is within an ulp or two of `v`; walk to the directed neighbour.
    for _ in 0..4 {
        if up && c.to_f64() < v {
            c = c.step(true);
        } else if !up && c.to_f64() > v {
            c = c.step(false);
        } else {
            break;
        }
    }
    for _ in 0..4 {
        let n = c.step(!up);
        let closer = if up { n.to_f64() >= v } else { n.to_f64() <= v };
        if closer && n.to_f64().abs() <= T::MAX_F64 {
            c = n;
        } else {
            break;
        }
    }
    c
}

/// Inclusive bounds of one input, in its dtype's own domain.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Typed {
    Bool,
    I8(i8, i8),
    I16(i16, i16),
    I32(i32, i32),
    I64(i64, i64),
    U8(u8, u8),
    U16(u16, u16),
    U32(u32, u32),
    U64(u64, u64),
    F16(f16, f16),
    BF16(bf16, bf16),
    F32(f32, f32),
    F64(f64, f64),
}

/// Why a bound does not fit an input's dtype.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A fractional bound for an integer input.
    #[error("{bound} is not an integer; {dtype} bounds must be integers")]
    NotInteger {
        /// The bound.
        bound: Bound,
        /// The input's dtype.
        dtype: DType,
    },
    /// A bound outside what the dtype can hold.
    #[error("{bound} does not fit {dtype} (range {lo} to {hi})")]
    DoesNotFit {
        /// The bound.
        bound: Bound,
        /// The input's dtype.
        dtype: DType,
        /// Smallest value of the dtype.
        lo: String,
        /// Largest value of the dtype.
        hi: String,
    },
    /// NaN or an infinity as a bound.
    #[error("{bound} is not a finite bound")]
    NotFinite {
        /// The bound.
        bound: Bound,
    },
    /// `min > max`.
    #[error("min {min} is above max {max}")]
    MinAboveMax {
        /// The lower bound.
        min: Bound,
        /// The upper bound.
        max: Bound,
    },
    /// No value of the dtype lies within the bounds.
    #[error("no {dtype} value lies in [{min}, {max}]")]
    Empty {
        /// The lower bound.
        min: Bound,
        /// The upper bound.
        max: Bound,
        /// The input's dtype.
        dtype: DType,
    },
    /// The dtype has no ordered values (`bool`).
    #[error("{dtype} inputs take no bounds")]
    NotApplicable {
        /// The input's dtype.
        dtype: DType,
    },
}

/// Inclusive `[min, max]` bounds of one input, resolved into its dtype: a float bound that the
/// dtype cannot represent exactly is rounded inwards (the lower bound up, the upper bound down),
/// so that "value < min" and "value > max" are decided exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    pub(crate) typed: Typed,
    min: Option<Bound>,
    max: Option<Bound>,
}

fn int_bound<T: TryFrom<i64> + Copy + fmt::Display>(
    b: Bound,
    dtype: DType,
    lo: T,
    hi: T,
) -> Result<T, LimitError> {
    match b {
        Bound::Int(i) => T::try_from(i).map_err(|_| LimitError::DoesNotFit {
            bound: b,
            dtype,
            lo: lo.to_string(),
            hi: hi.to_string(),
        }),
        Bound::Float(_) => Err(LimitError::NotInteger { bound: b, dtype }),
    }
}

fn float_bound<T: FloatElem>(b: Bound, dtype: DType, up: bool) -> Result<T, LimitError> {
    let v = b.as_f64();
    if !v.is_finite() {
        return Err(LimitError::NotFinite { bound: b });
    }
    if v.abs() > T::MAX_F64 {
        return Err(LimitError::DoesNotFit {
            bound: b,
            dtype,
            lo: format!("{:?}", -T::MAX_F64),
            hi: format!("{:?}", T::MAX_F64),
        });
    }
    Ok(round_into::<T>(v, up))
}

impl Limits {
    /// Bounds for `dtype`; `None` leaves a side open.
    ///
    /// # Errors
    /// A [`LimitError`] when a bound does not fit the dtype, is not finite, is fractional for an
    /// integer dtype, when `min > max`, or when no value of the dtype lies between them.
    pub fn new(dtype: DType, min: Option<Bound>, max: Option<Bound>) -> Result<Limits, LimitError> {
        if let (Some(a), Some(b)) = (min, max) {
            let above = match (a, b) {
                (Bound::Int(x), Bound::Int(y)) => x > y,
                _ => a.as_f64() > b.as_f64(),
            };
            if above {
                return Err(LimitError::MinAboveMax { min: a, max: b });
            }
        }
        macro_rules! int {
            ($t:ty, $v:ident) => {{
                let lo = match min {
                    Some(b) => int_bound::<$t>(b, dtype, <$t>::MIN, <$t>::MAX)?,
                    None => <$t>::MIN,
                };
                let hi = match max {
                    Some(b) => int_bound::<$t>(b, dtype, <$t>::MIN, <$t>::MAX)?,
                    None => <$t>::MAX,
                };
                Typed::$v(lo, hi)
            }};
        }
        macro_rules! float {
            ($t:ty, $v:ident, $ninf:expr, $pinf:expr) => {{
                let lo = match min {
                    Some(b) => float_bound::<$t>(b, dtype, true)?,
                    None => $ninf,
                };
                let hi = match max {
                    Some(b) => float_bound::<$t>(b, dtype, false)?,
                    None => $pinf,
                };
                if lo.key() > hi.key() {
                    return Err(LimitError::Empty {
                        min: min.unwrap_or(Bound::Float(f64::NEG_INFINITY)),
                        max: max.unwrap_or(Bound::Float(f64::INFINITY)),
                        dtype,
                    });
                }
                Typed::$v(lo, hi)
            }};
        }
        let typed = match dtype {
            // A complex tensor is scanned as its real and imaginary parts (twice as many
            // floats): NaN and infinity rules apply to each part; ranges have no meaning.
            DType::C64 | DType::C128 => {
                if min.is_some() || max.is_some() {
                    return Err(LimitError::NotApplicable { dtype });
                }
                let part = dtype.complex_part().unwrap_or(DType::F64);
                return Limits::new(part, None, None);
            }
            DType::Bool => {
                if min.is_some() || max.is_some() {
                    return Err(LimitError::NotApplicable { dtype });
                }
                Typed::Bool
            }
            DType::I8 => int!(i8, I8),
            DType::I16 => int!(i16, I16),
            DType::I32 => int!(i32, I32),
            DType::I64 => int!(i64, I64),
            DType::U8 => int!(u8, U8),
            DType::U16 => int!(u16, U16),
            DType::U32 => int!(u32, U32),
            DType::U64 => int!(u64, U64),
            DType::F16 => float!(f16, F16, f16::NEG_INFINITY, f16::INFINITY),
            DType::BF16 => float!(bf16, BF16, bf16::NEG_INFINITY, bf16::INFINITY),
            DType::F32 => float!(f32, F32, f32::NEG_INFINITY, f32::INFINITY),
            DType::F64 => float!(f64, F64, f64::NEG_INFINITY, f64::INFINITY),
        };
        Ok(Limits { typed, min, max })
    }

    /// No bounds: the scan only counts NaNs and infinities (and finds min/max).
    pub fn unbounded(dtype: DType) -> Limits {
        // Cannot fail: no bound given.
        Limits::new(dtype, None, None).unwrap_or(Limits {
            typed: Typed::Bool,
            min: None,
            max: None,
        })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        match self.typed {
            Typed::Bool => DType::Bool,
            Typed::I8(..) => DType::I8,
            Typed::I16(..) => DType::I16,
            Typed::I32(..) => DType::I32,
            Typed::I64(..) => DType::I64,
            Typed::U8(..) => DType::U8,
            Typed::U16(..) => DType::U16,
            Typed::U32(..) => DType::U32,
            Typed::U64(..) => DType::U64,
            Typed::F16(..) => DType::F16,
            Typed::BF16(..) => DType::BF16,
            Typed::F32(..) => DType::F32,
            Typed::F64(..) => DType::F64,
        }
    }

    /// The lower bound as given.
    pub fn min(&self) -> Option<Bound> {
        self.min
    }

    /// The upper bound as given.
    pub fn max(&self) -> Option<Bound> {
        self.max
    }

    /// The lower bound in the dtype (what clipping writes), when there is one.
    pub fn min_value(&self) -> Option<Value> {
        self.min?;
        Some(self.typed_values()?.0)
    }

    /// The upper bound in the dtype (what clipping writes), when there is one.
    pub fn max_value(&self) -> Option<Value> {
        self.max?;
        Some(self.typed_values()?.1)
    }

    fn typed_values(&self) -> Option<(Value, Value)> {
        Some(match self.typed {
            Typed::Bool => return None,
            Typed::I8(a, b) => (a.value(), b.value()),
            Typed::I16(a, b) => (a.value(), b.value()),
            Typed::I32(a, b) => (a.value(), b.value()),
            Typed::I64(a, b) => (a.value(), b.value()),
            Typed::U8(a, b) => (a.value(), b.value()),
            Typed::U16(a, b) => (a.value(), b.value()),
            Typed::U32(a, b) => (a.value(), b.value()),
            Typed::U64(a, b) => (a.value(), b.value()),
            Typed::F16(a, b) => (a.value(), b.value()),
            Typed::BF16(a, b) => (a.value(), b.value()),
            Typed::F32(a, b) => (a.value(), b.value()),
            Typed::F64(a, b) => (a.value(), b.value()),
        })
    }
}

/// How many elements fell into one category, and the flat index of the first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Number of elements.
    pub count: u64,
    /// Flat (row-major) index of the first, if any.
    pub first: Option<u64>,
}

impl Tally {
    #[inline(always)]
    fn bump(&mut self, index: u64) {
        if self.count == 0 {
            self.first = Some(index);
        }
        self.count += 1;
    }

    /// Adds a later part's tally (its `first` counts only if this one has none).
    pub fn merge(&mut self, later: Tally) {
        if self.first.is_none() {
            self.first = later.first;
        }
        self.count += later.count;
    }

    /// Two disjoint tallies as one: counts added, the earlier first.
    pub fn union(self, other: Tally) -> Tally {
        Tally {
            count: self.count + other.count,
            first: match (self.first, other.first) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// What one scan found. The five categories are disjoint: `below`/`above` count finite values
/// only (infinities are in `pos_inf`/`neg_inf`, NaNs in `nan`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ScanSummary {
    /// Elements scanned.
    pub elements: u64,
    /// NaNs (every payload, either sign).
    pub nan: Tally,
    /// `+inf`.
    pub pos_inf: Tally,
    /// `-inf`.
    pub neg_inf: Tally,
    /// Finite values below the lower bound.
    pub below: Tally,
    /// Finite values above the upper bound.
    pub above: Tally,
    /// Smallest finite value (`None` when there is none).
    pub min: Option<Value>,
    /// Largest finite value.
    pub max: Option<Value>,
}

impl ScanSummary {
    /// True when nothing is NaN, infinite or out of bounds.
    pub fn is_clean(&self) -> bool {
        self.nan.count
            + self.pos_inf.count
            + self.neg_inf.count
            + self.below.count
            + self.above.count
            == 0
    }
}

/// Which implementation runs a scan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Backend {
    /// Plain Rust, every dtype, every CPU.
    Scalar,
    /// x86-64 AVX2 kernels for f32, bf16, f16, i32 and u8 (the other dtypes use the scalar code).
    Avx2,
}

impl Backend {
    /// The fastest backend this CPU supports (detected once per process by `std`).
    pub fn best() -> Backend {
        if Backend::Avx2.is_available() {
            Backend::Avx2
        } else {
            Backend::Scalar
        }
    }

    /// True if this CPU can run the backend.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => std::is_x86_feature_detected!("avx2"),
            #[cfg(not(target_arch = "x86_64"))]
            Backend::Avx2 => false,
        }
    }

    /// `scalar` or `avx2`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
        }
    }
}

/// Why a scan did not run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScanError {
    /// The byte length is not a whole number of elements.
    #[error("{len} bytes is not a whole number of {dtype} elements ({size} bytes each)")]
    Length {
        /// The dtype.
        dtype: DType,
        /// Bytes given.
        len: usize,
        /// Bytes per element.
        size: usize,
    },
    /// The backend needs a CPU feature this machine lacks.
    #[error("the {0} scan backend is not available on this CPU")]
    Unavailable(&'static str),
}

/// Scans little-endian `data` of `limits.dtype()` with the fastest backend.
///
/// # Errors
/// [`ScanError::Length`] when `data` is not a whole number of elements.
pub fn scan(data: &[u8], limits: &Limits) -> Result<ScanSummary, ScanError> {
    scan_with(Backend::best(), data, limits)
}

/// Scans with a chosen backend (for tests and benchmarks).
///
/// # Errors
/// [`ScanError::Length`], or [`ScanError::Unavailable`] when the CPU lacks the backend.
pub fn scan_with(backend: Backend, data: &[u8], limits: &Limits) -> Result<ScanSummary, ScanError> {
    let dtype = limits.dtype();
    if data.len() % dtype.size() != 0 {
        return Err(ScanError::Length {
            dtype,
            len: data.len(),
            size: dtype.size(),
        });
    }
    if !backend.is_available() {
        return Err(ScanError::Unavailable(backend.name()));
    }
    #[cfg(target_arch = "x86_64")]
    if backend == Backend::Avx2 {
        if let Some(s) = avx2::scan(data, &limits.typed) {
            return Ok(s);
        }
    }
    Ok(scan_scalar_typed(data, &limits.typed))
}

fn scan_scalar_typed(data: &[u8], typed: &Typed) -> ScanSummary {
    match *typed {
        Typed::Bool => ScanSummary {
            elements: data.len() as u64,
            ..ScanSummary::default()
        },
        Typed::I8(lo, hi) => scalar::<i8>(data, lo, hi),
        Typed::I16(lo, hi) => scalar::<i16>(data, lo, hi),
        Typed::I32(lo, hi) => scalar::<i32>(data, lo, hi),
        Typed::I64(lo, hi) => scalar::<i64>(data, lo, hi),
        Typed::U8(lo, hi) => scalar::<u8>(data, lo, hi),
        Typed::U16(lo, hi) => scalar::<u16>(data, lo, hi),
        Typed::U32(lo, hi) => scalar::<u32>(data, lo, hi),
        Typed::U64(lo, hi) => scalar::<u64>(data, lo, hi),
        Typed::F16(lo, hi) => scalar::<f16>(data, lo, hi),
        Typed::BF16(lo, hi) => scalar::<bf16>(data, lo, hi),
        Typed::F32(lo, hi) => scalar::<f32>(data, lo, hi),
        Typed::F64(lo, hi) => scalar::<f64>(data, lo, hi),
    }
}

/// Elements per block of the scalar backend.
const SCALAR_BLOCK: usize = 16384;

/// The scalar backend: the fast check per block, the exact pass on blocks that fail it.
fn scalar<T: Elem>(data: &[u8], lo: T, hi: T) -> ScanSummary {
    let (flo, fhi) = fast_bounds(lo, hi);
    drive::<T>(
        data,
        lo,
        hi,
        SCALAR_BLOCK,
        |b| fast_scalar::<T>(b, flo, fhi),
        |b| exact_scalar::<T>(b, lo, hi),
    )
}

/// Bounds for the fast check: an open side becomes the dtype's finite extreme, so that every
/// NaN and infinity falls outside `[lo, hi]` (a float NaN compares false with everything; a
/// 16-bit float NaN's key lies beyond the infinities').
#[inline]
fn fast_bounds<T: Elem>(lo: T, hi: T) -> (T::Key, T::Key) {
    let lo = if lo.class() == Class::NegInf {
        T::LOWEST
    } else {
        lo
    };
    let hi = if hi.class() == Class::PosInf {
        T::HIGHEST
    } else {
        hi
    };
    (lo.key(), hi.key())
}

/// The min and max of a non-empty `data` when every element is finite and within `[flo, fhi]`;
/// `None` otherwise. Branch-free, so the compiler can vectorize it.
fn fast_scalar<T: Elem>(data: &[u8], flo: T::Key, fhi: T::Key) -> Option<(T, T)> {
    let mut mn = T::HIGHEST.key();
    let mut mx = T::LOWEST.key();
    let mut ok = true;
    for b in data.chunks_exact(T::SIZE) {
        let k = T::load(b).key();
        ok &= (k >= flo) & (k <= fhi);
        mn = if k < mn { k } else { mn };
        mx = if k > mx { k } else { mx };
    }
    (ok && data.len() >= T::SIZE).then(|| (T::from_key(mn), T::from_key(mx)))
}

/// Counts `[nan, +inf, -inf, below, above]` and the finite min/max of a block.
type KernelOut<T> = ([u64; 5], Option<T>, Option<T>);

fn exact_scalar<T: Elem>(data: &[u8], lo: T, hi: T) -> KernelOut<T> {
    let (s, mn, mx) = scan_scalar_t::<T>(data, lo, hi);
    (
        [
            s.nan.count,
            s.pos_inf.count,
            s.neg_inf.count,
            s.below.count,
            s.above.count,
        ],
        mn,
        mx,
    )
}

/// The plain scalar scan of whole elements of `data`, flat indices from 0 (the pass that finds
/// first offenders).
pub(crate) fn scan_scalar<T: Elem>(data: &[u8], lo: T, hi: T) -> ScanSummary {
    let (mut s, mn, mx) = scan_scalar_t::<T>(data, lo, hi);
    s.min = mn.map(Elem::value);
    s.max = mx.map(Elem::value);
    s
}

fn scan_scalar_t<T: Elem>(data: &[u8], lo: T, hi: T) -> (ScanSummary, Option<T>, Option<T>) {
    let mut s = ScanSummary::default();
    let (lo, hi) = (lo.key(), hi.key());
    let mut min: Option<T> = None;
    let mut max: Option<T> = None;
    let mut i = 0u64;
    for b in data.chunks_exact(T::SIZE) {
        let x = T::load(b);
        match x.class() {
            Class::Nan => s.nan.bump(i),
            Class::PosInf => s.pos_inf.bump(i),
            Class::NegInf => s.neg_inf.bump(i),
            Class::Finite => {
                let k = x.key();
                if k < lo {
                    s.below.bump(i);
                } else if k > hi {
                    s.above.bump(i);
                }
                if min.is_none_or(|m| k < m.key()) {
                    min = Some(x);
                }
                if max.is_none_or(|m| k > m.key()) {
                    max = Some(x);
                }
            }
        }
        i += 1;
    }
    s.elements = i;
    (s, min, max)
}

/// Runs a scan block by block: `fast` proves a block clean (every element finite and in
/// bounds) and gives its min/max, which is all a clean block needs; a block it cannot prove
/// clean gets the `full` counting pass, and, if it holds the first offender of some kind, the
/// scalar pass that finds its index.
fn drive<T: Elem>(
    data: &[u8],
    lo: T,
    hi: T,
    block: usize,
    fast: impl Fn(&[u8]) -> Option<(T, T)>,
    full: impl Fn(&[u8]) -> KernelOut<T>,
) -> ScanSummary {
    let mut m = Merge::<T>::new();
    let mut base = 0u64;
    for blk in data.chunks(block * T::SIZE) {
        let n = (blk.len() / T::SIZE) as u64;
        if let Some((mn, mx)) = fast(blk) {
            m.add(base, n, [0; 5], Some(mn), Some(mx), ScanSummary::default);
        } else {
            let (counts, mn, mx) = full(blk);
            m.add(base, n, counts, mn, mx, || scan_scalar::<T>(blk, lo, hi));
        }
        base += n;
    }
    m.finish()
}

/// Combines per-block results, taking each category's first offender from the first block
/// that has one.
struct Merge<T: Elem> {
    s: ScanSummary,
    min: Option<T>,
    max: Option<T>,
}

impl<T: Elem> Merge<T> {
    fn new() -> Merge<T> {
        Merge {
            s: ScanSummary::default(),
            min: None,
            max: None,
        }
    }

    /// Adds one block that starts at element `base`: `counts` are
    /// `[nan, +inf, -inf, below, above]`; `rescan` gives the block's exact scalar summary.
    fn add(
        &mut self,
        base: u64,
        elements: u64,
        counts: [u64; 5],
        min: Option<T>,
        max: Option<T>,
        rescan: impl FnOnce() -> ScanSummary,
    ) {
        let tallies = [
            &mut self.s.nan,
            &mut self.s.pos_inf,
            &mut self.s.neg_inf,
            &mut self.s.below,
            &mut self.s.above,
        ];
        let need_first = tallies
            .iter()
            .zip(counts)
            .any(|(t, c)| c > 0 && t.first.is_none());
        if need_first {
            let r = rescan();
            let firsts = [r.nan, r.pos_inf, r.neg_inf, r.below, r.above];
            for ((t, c), f) in tallies.into_iter().zip(counts).zip(firsts) {
                t.merge(Tally {
                    count: c,
                    first: f.first.map(|i| i + base),
                });
            }
        } else {
            for (t, c) in tallies.into_iter().zip(counts) {
                t.count += c;
            }
        }
        self.s.elements += elements;
        if let Some(m) = min {
            if self.min.is_none_or(|x| m.key() < x.key()) {
                self.min = Some(m);
            }
        }
        if let Some(m) = max {
            if self.max.is_none_or(|x| m.key() > x.key()) {
                self.max = Some(m);
            }
        }
    }

    fn finish(mut self) -> ScanSummary {
        self.s.min = self.min.map(Elem::value);
        self.s.max = self.max.map(Elem::value);
        self.s
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2 kernels. Per block, a lean pass (min/max, and a NaN flag for f32) proves the block
    //! clean; only blocks that hold offenders get the counting kernel. Kernels process whole
    //! 32-byte vectors; the tail under 32 bytes goes to the scalar code.

    use std::arch::x86_64::*;

    use half::{bf16, f16};

    use super::{
        drive, exact_scalar, fast_bounds, fast_scalar, Elem, KernelOut, ScanSummary, Typed,
    };
    use super::{BF16_INF, F16_INF};

    /// Elements per block for 32-bit lanes (64 KiB): the counting kernel's i32 lane counters
    /// reach at most 2048.
    const BLOCK_32: usize = 1 << 14;
    /// Elements per block for 16-bit lanes (64 KiB): i16 lane counters reach at most 2048.
    const BLOCK_16: usize = 1 << 15;
    /// Elements per block for 8-bit lanes: u8 lane counters reach at most 128.
    const BLOCK_8: usize = 4096;

    /// Runs the AVX2 kernels for the dtype; `None` for dtypes without any.
    pub(super) fn scan(data: &[u8], typed: &Typed) -> Option<ScanSummary> {
        Some(match *typed {
            Typed::F32(lo, hi) => {
                let (flo, fhi) = fast_bounds(lo, hi);
                drive::<f32>(
                    data,
                    lo,
                    hi,
                    BLOCK_32,
                    |b| {
                        split(b, flo, fhi, |v| {
                            // SAFETY: `scan_with` picks this backend only after detecting AVX2.
                            let (mn, mx, nan) = unsafe { f32_fast(v) };
                            (!nan && mn >= flo && mx <= fhi).then_some((mn, mx))
                        })
                    },
                    |b| {
                        full(b, lo, hi, |v| {
                            // SAFETY: AVX2 was detected (see above).
                            unsafe { f32_kernel(v, lo, hi) }
                        })
                    },
                )
            }
            Typed::BF16(lo, hi) => half::<bf16>(data, lo, hi, BF16_INF),
            Typed::F16(lo, hi) => half::<f16>(data, lo, hi, F16_INF),
            Typed::I32(lo, hi) => drive::<i32>(
                data,
                lo,
                hi,
                BLOCK_32,
                |b| {
                    split(b, lo, hi, |v| {
                        // SAFETY: AVX2 was detected (see above).
                        let (mn, mx) = unsafe { i32_fast(v) };
                        (mn >= lo && mx <= hi).then_some((mn, mx))
                    })
                },
                |b| {
                    full(b, lo, hi, |v| {
                        // SAFETY: AVX2 was detected (see above).
                        unsafe { i32_kernel(v, lo, hi) }
                    })
                },
            ),
            Typed::U8(lo, hi) => drive::<u8>(
                data,
                lo,
                hi,
                BLOCK_8,
                |b| {
                    split(b, lo, hi, |v| {
                        // SAFETY: AVX2 was detected (see above).
                        let (mn, mx) = unsafe { u8_fast(v) };
                        (mn >= lo && mx <= hi).then_some((mn, mx))
                    })
                },
                |b| {
                    full(b, lo, hi, |v| {
                        // SAFETY: AVX2 was detected (see above).
                        unsafe { u8_kernel(v, lo, hi) }
                    })
                },
            ),
            _ => return None,
        })
    }

    fn half<T: Elem<Key = i16>>(data: &[u8], lo: T, hi: T, inf: u16) -> ScanSummary {
        let (flo, fhi) = fast_bounds(lo, hi);
        drive::<T>(
            data,
            lo,
            hi,
            BLOCK_16,
            |b| {
                split(b, flo, fhi, |v| {
                    // SAFETY: AVX2 was detected (see `scan`).
                    let (mn, mx) = unsafe { half_fast(v) };
                    // NaN and infinity keys lie outside every finite [flo, fhi].
                    (mn >= flo && mx <= fhi).then(|| (T::from_key(mn), T::from_key(mx)))
                })
            },
            |b| {
                full(b, lo, hi, |v| {
                    // SAFETY: AVX2 was detected (see `scan`).
                    let (c, mn, mx) = unsafe { half_kernel(v, inf, lo.key(), hi.key()) };
                    (c, mn.map(T::from_key), mx.map(T::from_key))
                })
            },
        )
    }

    /// The fast check of a block: whole vectors by the kernel, the tail by the scalar code.
    fn split<T: Elem>(
        blk: &[u8],
        flo: T::Key,
        fhi: T::Key,
        kernel: impl Fn(&[u8]) -> Option<(T, T)>,
    ) -> Option<(T, T)> {
        let v = blk.len() - blk.len() % 32;
        let head = if v > 0 {
            Some(kernel(&blk[..v])?)
        } else {
            None
        };
        let tail = if v < blk.len() {
            Some(fast_scalar::<T>(&blk[v..], flo, fhi)?)
        } else {
            None
        };
        match (head, tail) {
            (Some((a, b)), Some((c, d))) => Some((
                if c.key() < a.key() { c } else { a },
                if d.key() > b.key() { d } else { b },
            )),
            (h, t) => h.or(t),
        }
    }

    /// The counting pass of a block: whole vectors by the kernel, the tail by the scalar code.
    fn full<T: Elem>(
        blk: &[u8],
        lo: T,
        hi: T,
        kernel: impl Fn(&[u8]) -> KernelOut<T>,
    ) -> KernelOut<T> {
        let v = blk.len() - blk.len() % 32;
        let (mut counts, mut mn, mut mx) = if v > 0 {
            kernel(&blk[..v])
        } else {
            ([0; 5], None, None)
        };
        if v < blk.len() {
            let (c, tmn, tmx) = exact_scalar::<T>(&blk[v..], lo, hi);
            for (a, b) in counts.iter_mut().zip(c) {
                *a += b;
            }
            if let Some(t) = tmn {
                if mn.is_none_or(|x| t.key() < x.key()) {
                    mn = Some(t);
                }
            }
            if let Some(t) = tmx {
                if mx.is_none_or(|x| t.key() > x.key()) {
                    mx = Some(t);
                }
            }
        }
        (counts, mn, mx)
    }

    /// Sum of the eight i32 lanes (each a non-negative count).
    #[target_feature(enable = "avx2")]
    unsafe fn hsum_epi32(v: __m256i) -> u64 {
        // SAFETY: AVX2 is enabled here, as `lanes` needs.
        let a: [i32; 8] = unsafe { lanes(v) };
        a.iter().map(|&x| u64::from(x.unsigned_abs())).sum()
    }

    /// f32 fast pass over whole vectors: min and max of the non-NaN values, and whether any
    /// NaN was seen. Four independent accumulators hide the min/max latency.
    #[target_feature(enable = "avx2")]
    unsafe fn f32_fast(data: &[u8]) -> (f32, f32, bool) {
        let n = data.len() / 32;
        let p = data.as_ptr();
        // SAFETY: every load reads the 32 bytes at j * 32 with j < n = len / 32, inside `data`;
        // `_mm256_loadu_ps` has no alignment requirement. The rest is register arithmetic.
        unsafe {
            let ld = |j: usize| _mm256_loadu_ps(p.add(j * 32).cast::<f32>());
            let pinf = _mm256_set1_ps(f32::INFINITY);
            let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
            let (mut a0, mut a1, mut a2, mut a3) = (pinf, pinf, pinf, pinf);
            let (mut b0, mut b1, mut b2, mut b3) = (ninf, ninf, ninf, ninf);
            let mut nan = _mm256_setzero_ps();
            let mut j = 0;
            while j + 4 <= n {
                let (x0, x1, x2, x3) = (ld(j), ld(j + 1), ld(j + 2), ld(j + 3));
                // A NaN in the first operand returns the second: NaNs leave the accumulators.
                a0 = _mm256_min_ps(x0, a0);
                a1 = _mm256_min_ps(x1, a1);
                a2 = _mm256_min_ps(x2, a2);
                a3 = _mm256_min_ps(x3, a3);
                b0 = _mm256_max_ps(x0, b0);
                b1 = _mm256_max_ps(x1, b1);
                b2 = _mm256_max_ps(x2, b2);
                b3 = _mm256_max_ps(x3, b3);
                // UNORD(a, b) is set where a or b is NaN.
                let u = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(x0, x1),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(x2, x3),
                );
                nan = _mm256_or_ps(nan, u);
                j += 4;
            }
            while j < n {
                let x = ld(j);
                a0 = _mm256_min_ps(x, a0);
                b0 = _mm256_max_ps(x, b0);
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
                j += 1;
            }
            let a = _mm256_min_ps(_mm256_min_ps(a0, a1), _mm256_min_ps(a2, a3));
            let b = _mm256_max_ps(_mm256_max_ps(b0, b1), _mm256_max_ps(b2, b3));
            let mut sa = [0f32; 8];
            let mut sb = [0f32; 8];
            _mm256_storeu_ps(sa.as_mut_ptr(), a);
            _mm256_storeu_ps(sb.as_mut_ptr(), b);
            (
                sa.iter().copied().fold(f32::INFINITY, f32::min),
                sb.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                _mm256_movemask_ps(nan) != 0,
            )
        }
    }

    /// The 32 bytes of `v` as `N` lanes of `T` (`size_of::<T>() * N == 32`).
    #[target_feature(enable = "avx2")]
    unsafe fn lanes<T: Copy + Default, const N: usize>(v: __m256i) -> [T; N] {
        const { assert!(std::mem::size_of::<T>() * N == 32) };
        let mut a = [T::default(); N];
        // SAFETY: `a` is exactly 32 writable bytes (checked above); storeu has no alignment
        // requirement.
        unsafe { _mm256_storeu_si256(a.as_mut_ptr().cast(), v) };
        a
    }

    /// An integer-keyed fast pass over whole vectors: the min and max of `key(x)` per lane,
    /// with two accumulators each to hide the min/max latency, then across lanes.
    macro_rules! min_max_pass {
        ($(#[$doc:meta])* fn $name:ident -> $t:ty, lanes $n:literal,
         $min:ident, $max:ident, start ($lo:expr, $hi:expr), key |$x:ident| $key:expr) => {
            $(#[$doc])*
            #[target_feature(enable = "avx2")]
            unsafe fn $name(data: &[u8]) -> ($t, $t) {
                let n = data.len() / 32;
                let p = data.as_ptr();
                // SAFETY: every load reads the 32 bytes at j * 32 with j < n = len / 32, inside
                // `data`; `_mm256_loadu_si256` has no alignment requirement.
                unsafe {
                    let key = |j: usize| {
                        let $x = _mm256_loadu_si256(p.add(j * 32).cast::<__m256i>());
                        $key
                    };
                    let (mut a0, mut a1) = ($lo, $lo);
                    let (mut b0, mut b1) = ($hi, $hi);
                    let mut j = 0;
                    while j + 2 <= n {
                        let (k0, k1) = (key(j), key(j + 1));
                        a0 = $min(a0, k0);
                        a1 = $min(a1, k1);
                        b0 = $max(b0, k0);
                        b1 = $max(b1, k1);
                        j += 2;
                    }
                    if j < n {
                        let k = key(j);
                        a0 = $min(a0, k);
                        b0 = $max(b0, k);
                    }
                    let sa: [$t; $n] = lanes($min(a0, a1));
                    let sb: [$t; $n] = lanes($max(b0, b1));
                    (
                        sa.iter().copied().min().unwrap_or(<$t>::MAX),
                        sb.iter().copied().max().unwrap_or(<$t>::MIN),
                    )
                }
            }
        };
    }

    min_max_pass! {
        /// bf16/f16 fast pass: min and max key over whole vectors (NaN keys included: they lie
        /// beyond the infinities', so the caller's bound check catches them).
        fn half_fast -> i16, lanes 16, _mm256_min_epi16, _mm256_max_epi16,
        start (_mm256_set1_epi16(i16::MAX), _mm256_set1_epi16(i16::MIN)),
        key |x| {
            let neg = _mm256_srai_epi16::<15>(x);
            let mag = _mm256_and_si256(x, _mm256_set1_epi16(0x7fff));
            _mm256_sub_epi16(_mm256_xor_si256(mag, neg), neg)
        }
    }

    min_max_pass! {
        /// i32 fast pass: min and max over whole vectors.
        fn i32_fast -> i32, lanes 8, _mm256_min_epi32, _mm256_max_epi32,
        start (_mm256_set1_epi32(i32::MAX), _mm256_set1_epi32(i32::MIN)),
        key |x| x
    }

    min_max_pass! {
        /// u8 fast pass: min and max over whole vectors.
        fn u8_fast -> u8, lanes 32, _mm256_min_epu8, _mm256_max_epu8,
        start (_mm256_set1_epi8(-1), _mm256_setzero_si256()),
        key |x| x
    }

    /// f32: NaN, +inf, -inf, finite < lo, finite > hi; finite min and max.
    #[target_feature(enable = "avx2")]
    unsafe fn f32_kernel(data: &[u8], lo: f32, hi: f32) -> KernelOut<f32> {
        let n = data.len() / 32;
        let p = data.as_ptr();
        // SAFETY: every load reads 32 bytes at offset i * 32 with i < n = len / 32, inside
        // `data`; `_mm256_loadu_ps` has no alignment requirement. The rest is register math.
        unsafe {
            let vlo = _mm256_set1_ps(lo);
            let vhi = _mm256_set1_ps(hi);
            let pinf = _mm256_set1_ps(f32::INFINITY);
            let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
            let z = _mm256_setzero_si256();
            let (mut cn, mut cp, mut cm, mut cb, mut ca) = (z, z, z, z, z);
            let mut vmin = pinf;
            let mut vmax = ninf;
            for i in 0..n {
                let x = _mm256_loadu_ps(p.add(i * 32).cast::<f32>());
                let nan = _mm256_cmp_ps::<_CMP_UNORD_Q>(x, x);
                let pi = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, pinf);
                let ni = _mm256_cmp_ps::<_CMP_EQ_OQ>(x, ninf);
                let below = _mm256_andnot_ps(ni, _mm256_cmp_ps::<_CMP_LT_OQ>(x, vlo));
                let above = _mm256_andnot_ps(pi, _mm256_cmp_ps::<_CMP_GT_OQ>(x, vhi));
                cn = _mm256_sub_epi32(cn, _mm256_castps_si256(nan));
                cp = _mm256_sub_epi32(cp, _mm256_castps_si256(pi));
                cm = _mm256_sub_epi32(cm, _mm256_castps_si256(ni));
                cb = _mm256_sub_epi32(cb, _mm256_castps_si256(below));
                ca = _mm256_sub_epi32(ca, _mm256_castps_si256(above));
                // min/max of finite values: infinities become the neutral element, and a NaN
                // in the first operand returns the second (the accumulator).
                vmin = _mm256_min_ps(_mm256_blendv_ps(x, pinf, ni), vmin);
                vmax = _mm256_max_ps(_mm256_blendv_ps(x, ninf, pi), vmax);
            }
            let counts = [
                hsum_epi32(cn),
                hsum_epi32(cp),
                hsum_epi32(cm),
                hsum_epi32(cb),
                hsum_epi32(ca),
            ];
            let mut a = [0f32; 8];
            let mut b = [0f32; 8];
            _mm256_storeu_ps(a.as_mut_ptr(), vmin);
            _mm256_storeu_ps(b.as_mut_ptr(), vmax);
            let mn = a.iter().copied().fold(f32::INFINITY, f32::min);
            let mx = b.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            (
                counts,
                (mn != f32::INFINITY).then_some(mn),
                (mx != f32::NEG_INFINITY).then_some(mx),
            )
        }
    }

    /// bf16/f16 by bit pattern: `inf` is the +inf pattern (0x7f80 or 0x7c00); keys order values.
    #[target_feature(enable = "avx2")]
    unsafe fn half_kernel(data: &[u8], inf: u16, lo: i16, hi: i16) -> KernelOut<i16> {
        let n = data.len() / 32;
        let p = data.as_ptr();
        // SAFETY: every load reads 32 bytes at offset i * 32 with i < n = len / 32, inside
        // `data`; `_mm256_loadu_si256` has no alignment requirement.
        unsafe {
            let mask = _mm256_set1_epi16(0x7fff);
            // The +inf pattern has its sign bit clear, so it is a positive i16.
            let vinf = _mm256_set1_epi16(inf as i16);
            let vlo = _mm256_set1_epi16(lo);
            let vhi = _mm256_set1_epi16(hi);
            let kmax = _mm256_set1_epi16(i16::MAX);
            let kmin = _mm256_set1_epi16(i16::MIN);
            let z = _mm256_setzero_si256();
            let (mut cn, mut cp, mut cm, mut cb, mut ca) = (z, z, z, z, z);
            let mut vmin = kmax;
            let mut vmax = kmin;
            for i in 0..n {
                let x = _mm256_loadu_si256(p.add(i * 32).cast::<__m256i>());
                let mag = _mm256_and_si256(x, mask);
                let neg = _mm256_srai_epi16::<15>(x);
                let key = _mm256_sub_epi16(_mm256_xor_si256(mag, neg), neg);
                let nan = _mm256_cmpgt_epi16(mag, vinf);
                let isinf = _mm256_cmpeq_epi16(mag, vinf);
                let fin = _mm256_cmpgt_epi16(vinf, mag);
                let pi = _mm256_andnot_si256(neg, isinf);
                let ni = _mm256_and_si256(neg, isinf);
                let below = _mm256_and_si256(fin, _mm256_cmpgt_epi16(vlo, key));
                let above = _mm256_and_si256(fin, _mm256_cmpgt_epi16(key, vhi));
                cn = _mm256_sub_epi16(cn, nan);
                cp = _mm256_sub_epi16(cp, pi);
                cm = _mm256_sub_epi16(cm, ni);
                cb = _mm256_sub_epi16(cb, below);
                ca = _mm256_sub_epi16(ca, above);
                vmin = _mm256_min_epi16(vmin, _mm256_blendv_epi8(kmax, key, fin));
                vmax = _mm256_max_epi16(vmax, _mm256_blendv_epi8(kmin, key, fin));
            }
            // Widen the i16 counts (at most 4096 per lane) to i32 pairs and add them up.
            let ones = _mm256_set1_epi16(1);
            let counts = [
                hsum_epi32(_mm256_madd_epi16(cn, ones)),
                hsum_epi32(_mm256_madd_epi16(cp, ones)),
                hsum_epi32(_mm256_madd_epi16(cm, ones)),
                hsum_epi32(_mm256_madd_epi16(cb, ones)),
                hsum_epi32(_mm256_madd_epi16(ca, ones)),
            ];
            let a: [i16; 16] = lanes(vmin);
            let b: [i16; 16] = lanes(vmax);
            let mn = a.iter().copied().min().unwrap_or(i16::MAX);
            let mx = b.iter().copied().max().unwrap_or(i16::MIN);
            // Finite keys are strictly inside (i16::MIN, i16::MAX): the sentinels mean "none".
            (
                counts,
                (mn != i16::MAX).then_some(mn),
                (mx != i16::MIN).then_some(mx),
            )
        }
    }

    /// i32: below and above; min and max.
    #[target_feature(enable = "avx2")]
    unsafe fn i32_kernel(data: &[u8], lo: i32, hi: i32) -> KernelOut<i32> {
        let n = data.len() / 32;
        let p = data.as_ptr();
        // SAFETY: as in `f32_kernel`: loads stay within `data`, unaligned loads are allowed.
        unsafe {
            let vlo = _mm256_set1_epi32(lo);
            let vhi = _mm256_set1_epi32(hi);
            let z = _mm256_setzero_si256();
            let (mut cb, mut ca) = (z, z);
            let mut vmin = _mm256_set1_epi32(i32::MAX);
            let mut vmax = _mm256_set1_epi32(i32::MIN);
            for i in 0..n {
                let x = _mm256_loadu_si256(p.add(i * 32).cast::<__m256i>());
                cb = _mm256_sub_epi32(cb, _mm256_cmpgt_epi32(vlo, x));
                ca = _mm256_sub_epi32(ca, _mm256_cmpgt_epi32(x, vhi));
                vmin = _mm256_min_epi32(vmin, x);
                vmax = _mm256_max_epi32(vmax, x);
            }
            let (a, b): ([i32; 8], [i32; 8]) = (lanes(vmin), lanes(vmax));
            let counts = [0, 0, 0, hsum_epi32(cb), hsum_epi32(ca)];
            // Called only with at least one vector, so min/max are real values.
            (counts, a.iter().copied().min(), b.iter().copied().max())
        }
    }

    /// u8: below and above (unsigned, via the sign-flip trick); min and max.
    #[target_feature(enable = "avx2")]
    unsafe fn u8_kernel(data: &[u8], lo: u8, hi: u8) -> KernelOut<u8> {
        let n = data.len() / 32;
        let p = data.as_ptr();
        // SAFETY: as in `f32_kernel`: loads stay within `data`, unaligned loads are allowed.
        unsafe {
            let flip = _mm256_set1_epi8(i8::MIN);
            // Unsigned order becomes signed order once the top bit is flipped.
            let vlo = _mm256_set1_epi8((lo ^ 0x80) as i8);
            let vhi = _mm256_set1_epi8((hi ^ 0x80) as i8);
            let z = _mm256_setzero_si256();
            let (mut cb, mut ca) = (z, z);
            let mut vmin = _mm256_set1_epi8(-1);
            let mut vmax = z;
            for i in 0..n {
                let x = _mm256_loadu_si256(p.add(i * 32).cast::<__m256i>());
                let xs = _mm256_xor_si256(x, flip);
                // A block has at most 128 vectors, so an 8-bit lane counts at most 128.
                cb = _mm256_sub_epi8(cb, _mm256_cmpgt_epi8(vlo, xs));
                ca = _mm256_sub_epi8(ca, _mm256_cmpgt_epi8(xs, vhi));
                vmin = _mm256_min_epu8(vmin, x);
                vmax = _mm256_max_epu8(vmax, x);
            }
            let bsum = |v: __m256i| -> u64 { lanes::<u64, 4>(_mm256_sad_epu8(v, z)).iter().sum() };
            let counts = [0, 0, 0, bsum(cb), bsum(ca)];
            let (a, b): ([u8; 32], [u8; 32]) = (lanes(vmin), lanes(vmax));
            (counts, a.iter().copied().min(), b.iter().copied().max())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_round_inwards() {
        // 0.1 is not a bf16: min rounds up, max rounds down.
        let l = Limits::new(
            DType::BF16,
            Some(Bound::Float(0.1)),
            Some(Bound::Float(0.1)),
        );
        assert!(matches!(l, Err(LimitError::Empty { .. })), "{l:?}");
        let l = Limits::new(
            DType::BF16,
            Some(Bound::Float(0.1)),
            Some(Bound::Float(0.2)),
        )
        .unwrap();
        let (lo, hi) = (
            l.min_value().unwrap().as_f64(),
            l.max_value().unwrap().as_f64(),
        );
        assert!((0.1..0.1 + 0.001).contains(&lo), "{lo}");
        assert!(hi <= 0.2 && hi > 0.2 - 0.002, "{hi}");
        let l = Limits::new(DType::F32, Some(Bound::Float(0.1)), None).unwrap();
        assert!(l.min_value().unwrap().as_f64() >= 0.1);
        assert_eq!(
            Limits::new(DType::F16, None, Some(Bound::Float(65504.0)))
                .unwrap()
                .max_value(),
            Some(Value::F16(f16::MAX))
        );
        assert!(matches!(
            Limits::new(DType::F16, None, Some(Bound::Float(65505.0))),
            Err(LimitError::DoesNotFit { .. })
        ));
        assert!(matches!(
            Limits::new(DType::U8, Some(Bound::Int(-1)), None),
            Err(LimitError::DoesNotFit { .. })
        ));
        assert!(matches!(
            Limits::new(DType::I32, Some(Bound::Float(0.5)), None),
            Err(LimitError::NotInteger { .. })
        ));
        assert!(matches!(
            Limits::new(DType::F32, Some(Bound::Float(f64::NAN)), None),
            Err(LimitError::NotFinite { .. })
        ));
        assert!(matches!(
            Limits::new(DType::I32, Some(Bound::Int(3)), Some(Bound::Int(2))),
            Err(LimitError::MinAboveMax { .. })
        ));
        // Subnormal bounds step correctly around zero.
        let tiny = f64::from(f32::from_bits(1));
        let l = Limits::new(DType::F32, Some(Bound::Float(tiny / 2.0)), None).unwrap();
        assert_eq!(l.min_value(), Some(Value::F32(f32::from_bits(1))));
        let l = Limits::new(DType::F32, None, Some(Bound::Float(-tiny / 2.0))).unwrap();
        assert_eq!(l.max_value(), Some(Value::F32(-f32::from_bits(1))));
    }

    #[test]
    fn scalar_categories() {
        let v = [
            1.0f32,
            f32::NAN,
            f32::INFINITY,
            -5.0,
            20.0,
            f32::NEG_INFINITY,
            -0.0,
        ];
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let l = Limits::new(
            DType::F32,
            Some(Bound::Float(0.0)),
            Some(Bound::Float(16.0)),
        )
        .unwrap();
        for b in [Backend::Scalar, Backend::best()] {
            let s = scan_with(b, &data, &l).unwrap();
            assert_eq!(
                s.nan,
                Tally {
                    count: 1,
                    first: Some(1)
                }
            );
            assert_eq!(
                s.pos_inf,
                Tally {
                    count: 1,
                    first: Some(2)
                }
            );
            assert_eq!(
                s.neg_inf,
                Tally {
                    count: 1,
                    first: Some(5)
                }
            );
            assert_eq!(
                s.below,
                Tally {
                    count: 1,
                    first: Some(3)
                }
            );
            assert_eq!(
                s.above,
                Tally {
                    count: 1,
                    first: Some(4)
                }
            );
            assert_eq!(s.min, Some(Value::F32(-5.0)));
            assert_eq!(s.max, Some(Value::F32(20.0)));
        }
        assert!(matches!(
            scan(&data[..5], &l),
            Err(ScanError::Length { len: 5, .. })
        ));
    }

    #[test]
    fn value_display() {
        assert_eq!(Value::F32(255.0).to_string(), "255.0");
        assert_eq!(Value::F32(f32::NAN).to_string(), "NaN");
        assert_eq!(Value::F32(f32::NEG_INFINITY).to_string(), "-inf");
        assert_eq!(Value::BF16(bf16::from_f32(1.5)).to_string(), "1.5");
        assert_eq!(Value::Int(-1).to_string(), "-1");
        assert_eq!(Bound::Float(16.0).to_string(), "16.0");
        assert_eq!(Bound::Int(49).to_string(), "49");
    }
}
