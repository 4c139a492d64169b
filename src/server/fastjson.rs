//! The one-pass reader of inference request JSON: one walk over the bytes checks the syntax and
//! the nesting depth, reads the envelope (`id`, `parameters`, `inputs`, `outputs`) and decodes
//! each input's `data` straight into its little-endian buffer, FP32 parsed as FP32.
//!
//! It is the fast path of [`super::wire::parse_request`] and never the judge of a bad request:
//! it gives up (`None`) on anything it does not take for certain — a syntax error, an escape in
//! a string, a duplicate key, a value out of range, a count or nesting that does not match — and
//! the request is then read again by the serde-based reader, whose error messages stay what
//! they were. So the only property that matters here is: **when this reader returns fields,
//! they are exactly what the serde reader would have produced.** `tests` below and the
//! differential property test check it.
//!
//! # Numbers
//! JSON numbers are scanned once into a 19-digit decimal significand and an exponent (eight
//! digits at a time where eight are there). FP32 is computed as one f64 product of the
//! significand and a correctly rounded power of ten — three roundings, under two f64 ulps from
//! the exact value — and rounded to f32 unless that f64 lies within 16 ulps of an FP32 rounding
//! boundary (one value in 2^24), where Rust's correctly rounded `str::parse::<f32>` decides. FP64 takes Clinger's exact fast path (at most
//! 15 digits and |exponent| ≤ 22) or `str::parse::<f64>`. Integers are exact. Anything unusual
//! (strings, literals) goes through the same element reader the serde path uses.

use half::{bf16, f16};

use crate::signature::DType;

use super::datatype::{parse_datatype, push_element};

/// An input's `data` as the readers hand it on.
#[derive(Debug)]
pub(super) enum Data<'a> {
    /// The JSON text of the value, still to decode.
    Raw(&'a str),
    /// Already decoded little-endian elements of the datatype and shape the request named.
    Decoded(Vec<u8>),
}

/// The fields of one request input, as both readers produce them.
#[derive(Debug)]
pub(super) struct InputFields<'a> {
    pub name: &'a str,
    pub shape: Vec<i64>,
    pub datatype: &'a str,
    pub binary_data_size: Option<u64>,
    pub shared_memory: bool,
    pub data: Option<Data<'a>>,
}

/// The fields of one requested output.
#[derive(Debug)]
pub(super) struct OutputFields<'a> {
    pub name: &'a str,
    pub binary_data: Option<bool>,
    pub classification: bool,
    pub shared_memory: bool,
}

/// The fields of a request.
#[derive(Debug)]
pub(super) struct RequestFields<'a> {
    pub id: Option<String>,
    pub binary_data_output: Option<bool>,
    pub inputs: Vec<InputFields<'a>>,
    pub outputs: Option<Vec<OutputFields<'a>>>,
}

/// serde_json's own recursion limit: deeper documents are its error, not ours to accept.
const SERDE_DEPTH: usize = 127;

/// Reads a whole request, or `None` when the serde reader must look at it.
pub(super) fn read_request(json: &[u8], max_depth: usize) -> Option<RequestFields<'_>> {
    let mut c = Cursor {
        b: json,
        i: 0,
        depth: 0,
        max_depth: max_depth.min(SERDE_DEPTH),
    };
    let r = c.request()?;
    c.ws();
    (c.i == json.len()).then_some(r)
}

/// Decodes the text of one `data` value (what `serde_json` accepted as a raw value) of `dtype`
/// and `shape` in one pass, or `None` when the serde path's decoder must say why not.
pub(super) fn decode_data(text: &str, dtype: DType, shape: &[u64]) -> Option<Vec<u8>> {
    let mut c = Cursor {
        b: text.as_bytes(),
        i: 0,
        depth: 0,
        max_depth: usize::MAX,
    };
    let out = c.data(dtype, shape)?;
    c.ws();
    (c.i == c.b.len()).then_some(out)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
    depth: usize,
    max_depth: usize,
}

/// A scanned JSON number: `(-1)^neg * w * 10^exp`, exactly unless `truncated`.
#[derive(Clone, Copy, Debug)]
struct Number {
    neg: bool,
    w: u64,
    exp: i32,
    /// Significant digits held in `w`.
    digits: u32,
    /// Nonzero digits beyond the 19th were dropped.
    truncated: bool,
    /// No fraction and no exponent.
    integer: bool,
}

const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
];

/// `10^k` for `k` in 0..40, each correctly rounded to f64 (exact up to `1e22`).
const POS_POW10: [f64; 40] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
    1e17, 1e18, 1e19, 1e20, 1e21, 1e22, 1e23, 1e24, 1e25, 1e26, 1e27, 1e28, 1e29, 1e30, 1e31, 1e32,
    1e33, 1e34, 1e35, 1e36, 1e37, 1e38, 1e39,
];

/// `10^-k` for `k` in 0..66, each correctly rounded to f64.
const NEG_POW10: [f64; 66] = [
    1e-0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8, 1e-9, 1e-10, 1e-11, 1e-12, 1e-13, 1e-14,
    1e-15, 1e-16, 1e-17, 1e-18, 1e-19, 1e-20, 1e-21, 1e-22, 1e-23, 1e-24, 1e-25, 1e-26, 1e-27,
    1e-28, 1e-29, 1e-30, 1e-31, 1e-32, 1e-33, 1e-34, 1e-35, 1e-36, 1e-37, 1e-38, 1e-39, 1e-40,
    1e-41, 1e-42, 1e-43, 1e-44, 1e-45, 1e-46, 1e-47, 1e-48, 1e-49, 1e-50, 1e-51, 1e-52, 1e-53,
    1e-54, 1e-55, 1e-56, 1e-57, 1e-58, 1e-59, 1e-60, 1e-61, 1e-62, 1e-63, 1e-64, 1e-65,
];

/// `10^|e|` for `|e| ≤ 22`, exactly.
fn pow10(e: i32) -> Option<f64> {
    usize::try_from(e.unsigned_abs())
        .ok()
        .and_then(|e| POW10.get(e).copied())
}

/// The value of eight ASCII digits read little-endian (first digit in the low byte).
#[inline(always)]
fn parse_eight(v: u64) -> u64 {
    const MASK: u64 = 0x0000_00FF_0000_00FF;
    const MUL1: u64 = 0x000F_4240_0000_0064;
    const MUL2: u64 = 0x0000_2710_0000_0001;
    let v = v.wrapping_sub(0x3030_3030_3030_3030);
    let v = v.wrapping_mul(10).wrapping_add(v >> 8);
    ((v & MASK)
        .wrapping_mul(MUL1)
        .wrapping_add(((v >> 16) & MASK).wrapping_mul(MUL2)))
        >> 32
}

/// The eight bytes at `b[i..]`, little-endian, when there are eight.
#[inline(always)]
fn load8(b: &[u8], i: usize) -> Option<u64> {
    let chunk: [u8; 8] = b.get(i..i.checked_add(8)?)?.try_into().ok()?;
    Some(u64::from_le_bytes(chunk))
}

/// Whether all eight bytes of `v` are ASCII digits (fast_float's test): a byte is a digit
/// exactly when its high nibble is 3 and adding 6 keeps it 3. A carry out of a byte comes only
/// from a byte that already fails, so it cannot make the whole test pass.
#[inline(always)]
fn eight_digits(v: u64) -> bool {
    ((v & 0xF0F0_F0F0_F0F0_F0F0)
        | ((v.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) >> 4))
        == 0x3333_3333_3333_3333
}

impl Number {
    /// Takes the digits at `b[i..]` into the significand (at most 19; later ones move the
    /// exponent in an integer part, and only mark `truncated`), returns the index after them.
    /// Eight at a time while eight are there and fit, then one by one.
    #[inline(always)]
    fn digits_at(&mut self, b: &[u8], mut i: usize, fraction: bool) -> usize {
        while self.digits <= 11 {
            match load8(b, i) {
                Some(v) if eight_digits(v) => {
                    self.w = self.w * 100_000_000 + parse_eight(v);
                    self.digits += 8;
                    if fraction {
                        self.exp = self.exp.saturating_sub(8);
                    }
                    i += 8;
                }
                _ => break,
            }
        }
        while let Some(&c) = b.get(i) {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                break;
            }
            if self.digits < 19 {
                self.w = self.w * 10 + u64::from(d);
                self.digits += 1;
                if fraction {
                    self.exp = self.exp.saturating_sub(1);
                }
            } else {
                if !fraction {
                    self.exp = self.exp.saturating_add(1);
                }
                self.truncated |= d != 0;
            }
            i += 1;
        }
        i
    }

    /// `w * 10^exp` in f64 with three roundings (`w`, the power, the product: under two ulps
    /// in all), or `None` when the exponent is outside the tables.
    #[inline(always)]
    fn approx(self) -> Option<f64> {
        #[allow(clippy::cast_precision_loss)] // rounding is what the error bound accounts for
        let w = self.w as f64;
        let k = usize::try_from(self.exp.unsigned_abs()).ok()?;
        let p = if self.exp >= 0 {
            POS_POW10.get(k)?
        } else {
            NEG_POW10.get(k)?
        };
        let v = w * p;
        Some(if self.neg { -v } else { v })
    }

    /// The correctly rounded f64, when Clinger's exact fast path applies.
    #[inline]
    fn exact_f64(self) -> Option<f64> {
        if self.truncated || self.w > 1 << 53 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)] // w ≤ 2^53 is exact
        let w = self.w as f64;
        let p = pow10(self.exp)?;
        let v = if self.exp >= 0 { w * p } else { w / p };
        Some(if self.neg { -v } else { v })
    }

    /// The correctly rounded f32, when the f64 approximation decides it.
    #[inline(always)]
    fn f32(self) -> Option<f32> {
        if self.w == 0 {
            return Some(if self.neg { -0.0 } else { 0.0 });
        }
        let v = self.approx()?;
        let a = v.abs();
        // Normal f32 range, away from the overflow threshold (f32::MAX + half an ulp). The
        // f64 is within two ulps of the exact value; sixteen leave room to spare.
        if !(1.2e-38..=3.4e38).contains(&a) {
            return None;
        }
        // The 29 bits below f32's precision: 1 << 28 is a rounding boundary (a midpoint).
        let low = v.to_bits() & ((1 << 29) - 1);
        if low.abs_diff(1 << 28) <= 16 {
            return None;
        }
        #[allow(clippy::cast_possible_truncation)] // rounding to nearest is the point
        Some(v as f32)
    }
}

/// How one non-string element of a datatype is read and appended.
trait Elem {
    /// Reads the element at the cursor (whitespace skipped) and appends its bytes, or `None`
    /// when the serde path must judge it.
    fn put(c: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<()>;
}

/// FP32: parsed as FP32 (see the module's notes on rounding).
struct F32;
impl Elem for F32 {
    #[inline(always)]
    fn put(c: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<()> {
        let start = c.i;
        let n = c.number()?;
        let x = match n.f32() {
            Some(x) => x,
            None => c.token(start)?.parse::<f32>().ok()?,
        };
        x.is_finite()
            .then(|| out.extend_from_slice(&x.to_le_bytes()))
    }
}

/// A float type read as the serde path does: the correctly rounded f64, then converted.
trait FromF64: Sized {
    fn put_f64(v: f64, out: &mut Vec<u8>) -> Option<()>;
}
impl FromF64 for f64 {
    #[inline(always)]
    fn put_f64(v: f64, out: &mut Vec<u8>) -> Option<()> {
        out.extend_from_slice(&v.to_le_bytes());
        Some(())
    }
}
impl FromF64 for f16 {
    #[inline(always)]
    fn put_f64(v: f64, out: &mut Vec<u8>) -> Option<()> {
        let x = f16::from_f64(v);
        x.is_finite()
            .then(|| out.extend_from_slice(&x.to_le_bytes()))
    }
}
impl FromF64 for bf16 {
    #[inline(always)]
    fn put_f64(v: f64, out: &mut Vec<u8>) -> Option<()> {
        let x = bf16::from_f64(v);
        x.is_finite()
            .then(|| out.extend_from_slice(&x.to_le_bytes()))
    }
}

/// FP64, FP16, BF16.
struct Wide<T>(std::marker::PhantomData<T>);
impl<T: FromF64> Elem for Wide<T> {
    #[inline(always)]
    fn put(c: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<()> {
        let start = c.i;
        let n = c.number()?;
        let v = match n.exact_f64() {
            Some(v) => v,
            None => c.token(start)?.parse::<f64>().ok()?,
        };
        if !v.is_finite() {
            return None;
        }
        T::put_f64(v, out)
    }
}

/// BOOL: `true` or `false`.
struct Bool;
impl Elem for Bool {
    #[inline(always)]
    fn put(c: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<()> {
        let v = c.boolean()?;
        out.push(u8::from(v));
        Some(())
    }
}

/// An integer type: exact, in range, no fraction or exponent.
trait FromI64: Sized {
    const DTYPE: DType;
    fn put_i64(v: i64, out: &mut Vec<u8>) -> Option<()>;
}
macro_rules! from_i64 {
    ($($t:ty => $d:expr),*) => {$(
        impl FromI64 for $t {
            const DTYPE: DType = $d;
            #[inline(always)]
            fn put_i64(v: i64, out: &mut Vec<u8>) -> Option<()> {
                out.extend_from_slice(&<$t>::try_from(v).ok()?.to_le_bytes());
                Some(())
            }
        }
    )*};
}
from_i64!(i8 => DType::I8, i16 => DType::I16, i32 => DType::I32, i64 => DType::I64,
          u8 => DType::U8, u16 => DType::U16, u32 => DType::U32, u64 => DType::U64);

struct Int<T>(std::marker::PhantomData<T>);
impl<T: FromI64> Elem for Int<T> {
    #[inline(always)]
    fn put(c: &mut Cursor<'_>, out: &mut Vec<u8>) -> Option<()> {
        let start = c.i;
        let n = c.number()?;
        if !n.integer || n.digits > 18 {
            // The serde path's reader tells range from syntax.
            return push_element(c.token(start)?, false, T::DTYPE, out).ok();
        }
        #[allow(clippy::cast_possible_wrap)] // w < 10^18
        let v = if n.neg { -(n.w as i64) } else { n.w as i64 };
        T::put_i64(v, out)
    }
}

impl<'a> Cursor<'a> {
    #[inline(always)]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline(always)]
    fn ws(&mut self) {
        // Most bytes after a token are not whitespace: one comparison for them.
        while let Some(&c) = self.b.get(self.i) {
            if c > b' ' || !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                return;
            }
            self.i += 1;
        }
    }

    /// Skips whitespace and takes `c`.
    #[inline]
    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= self.max_depth).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i.checked_add(word.len())?;
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes or control characters, as `&str`.
    fn string(&mut self) -> Option<&'a str> {
        self.ws();
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.i + 1;
        let rest = self.b.get(start..)?;
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.i = start + len + 1;
        std::str::from_utf8(rest.get(..len)?).ok()
    }

    /// `null` (then `None`) or what `f` reads.
    fn nullable<T>(&mut self, f: impl FnOnce(&mut Self) -> Option<T>) -> Option<Option<T>> {
        self.ws();
        if self.peek()? == b'n' {
            self.literal(b"null")?;
            Some(None)
        } else {
            f(self).map(Some)
        }
    }

    #[inline(always)]
    fn boolean(&mut self) -> Option<bool> {
        self.ws();
        let i = self.i;
        match self.b.get(i..i + 4)? {
            b"true" => {
                self.i = i + 4;
                Some(true)
            }
            b"fals" if self.b.get(i + 4) == Some(&b'e') => {
                self.i = i + 5;
                Some(false)
            }
            _ => None,
        }
    }

    /// A non-negative JSON integer of at most 18 digits (what every u64 and i64 field takes
    /// without question).
    fn small_uint(&mut self) -> Option<u64> {
        self.ws();
        let n = self.number()?;
        (n.integer && !n.neg && !n.truncated && n.exp == 0 && n.digits <= 18).then_some(n.w)
    }

    /// Scans a JSON number (strict grammar: no `+`, no leading zeros, digits after `.` and
    /// `e`). The caller has skipped whitespace.
    #[inline(always)]
    fn number(&mut self) -> Option<Number> {
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut n = Number {
            neg,
            w: 0,
            exp: 0,
            digits: 0,
            truncated: false,
            integer: true,
        };
        match b.get(i)? {
            b'0' => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => i = n.digits_at(b, i, false),
            _ => return None,
        }
        if b.get(i) == Some(&b'.') {
            n.integer = false;
            i += 1;
            let first = i;
            // Leading zeros of the fraction are not significant.
            if n.w == 0 {
                while b.get(i) == Some(&b'0') {
                    i += 1;
                    n.exp = n.exp.saturating_sub(1);
                }
            }
            i = n.digits_at(b, i, true);
            if i == first {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            n.integer = false;
            i += 1;
            let eneg = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => false,
            };
            let first = i;
            let mut e: i32 = 0;
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                e = e.saturating_mul(10).saturating_add(i32::from(d));
                i += 1;
            }
            if i == first {
                return None;
            }
            n.exp = if eneg {
                n.exp.saturating_sub(e)
            } else {
                n.exp.saturating_add(e)
            };
        }
        self.i = i;
        Some(n)
    }

    /// The text of the token from `start` to the cursor.
    fn token(&self, start: usize) -> Option<&'a str> {
        std::str::from_utf8(self.b.get(start..self.i)?).ok()
    }

    /// Skips any JSON value, checking its syntax and depth (strings without escapes only).
    fn skip(&mut self) -> Option<()> {
        self.ws();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => self.object(|c, _| c.skip().map(|()| false)),
            b'[' => self.array(Cursor::skip).map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.number().map(drop),
        }
    }

    /// `{ "key": value, ... }`, calling `field` for each key (which must consume the value).
    /// Keys must be unique among those `field` knows (it returns `true` for them).
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<bool>) -> Option<()> {
        self.eat(b'{')?;
        self.enter()?;
        let mut seen: Vec<&'a str> = Vec::new();
        self.ws();
        if self.peek()? == b'}' {
            self.i += 1;
        } else {
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                if field(self, key)? {
                    if seen.contains(&key) {
                        return None;
                    }
                    seen.push(key);
                }
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b'}' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(())
    }

    /// `[ item, ... ]`.
    fn array<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.eat(b'[')?;
        self.enter()?;
        let mut out = Vec::new();
        self.ws();
        if self.peek()? == b']' {
            self.i += 1;
        } else {
            loop {
                out.push(item(self)?);
                self.ws();
                match self.peek()? {
                    b',' => self.i += 1,
                    b']' => {
                        self.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        self.depth -= 1;
        Some(out)
    }

    fn request(&mut self) -> Option<RequestFields<'a>> {
        let mut id = None;
        let mut binary_data_output = None;
        let mut inputs = None;
        let mut outputs = None;
        self.object(|c, key| {
            match key {
                "id" => id = c.nullable(|c| c.string().map(str::to_string))?,
                "parameters" => {
                    let mut bdo = None;
                    c.nullable(|c| {
                        c.object(|c, key| {
                            if key == "binary_data_output" {
                                bdo = c.nullable(Cursor::boolean)?;
                                Some(true)
                            } else {
                                c.skip().map(|()| false)
                            }
                        })
                    })?;
                    binary_data_output = bdo;
                }
                "inputs" => inputs = Some(c.array(Cursor::input)?),
                "outputs" => outputs = c.nullable(|c| c.array(Cursor::output))?,
                _ => return c.skip().map(|()| false),
            }
            Some(true)
        })?;
        Some(RequestFields {
            id,
            binary_data_output,
            inputs: inputs?,
            outputs,
        })
    }

    fn input(&mut self) -> Option<InputFields<'a>> {
        let mut name = None;
        let mut shape: Option<Vec<i64>> = None;
        let mut datatype = None;
        let mut binary_data_size = None;
        let mut shared_memory = false;
        let mut data = None;
        self.object(|c, key| {
            match key {
                "name" => name = Some(c.string()?),
                "shape" => {
                    shape = Some(c.array(|c| c.small_uint().and_then(|d| i64::try_from(d).ok()))?)
                }
                "datatype" => datatype = Some(c.string()?),
                "parameters" => {
                    let mut size = None;
                    let mut shm = false;
                    c.nullable(|c| {
                        c.object(|c, key| match key {
                            "binary_data_size" => {
                                size = c.nullable(Cursor::small_uint)?;
                                Some(true)
                            }
                            "shared_memory_region" => {
                                c.ws();
                                shm = c.peek()? != b'n';
                                c.skip().map(|()| true)
                            }
                            _ => c.skip().map(|()| false),
                        })
                    })?;
                    binary_data_size = size;
                    shared_memory = shm;
                }
                "data" => {
                    c.ws();
                    if c.peek()? == b'n' {
                        c.literal(b"null")?;
                        data = None;
                    } else {
                        // Decode now when the datatype and shape came first (as every client
                        // writes them); otherwise keep the checked text.
                        let wire = match (datatype.and_then(parse_datatype), &shape) {
                            (Some(d), Some(s)) => s
                                .iter()
                                .map(|&x| u64::try_from(x).ok())
                                .collect::<Option<Vec<u64>>>()
                                .map(|s| (d, s)),
                            _ => None,
                        };
                        data = Some(match wire {
                            Some((d, s)) => Data::Decoded(c.data(d, &s)?),
                            None => {
                                let start = c.i;
                                c.skip()?;
                                Data::Raw(c.token(start)?)
                            }
                        });
                    }
                }
                _ => return c.skip().map(|()| false),
            }
            Some(true)
        })?;
        Some(InputFields {
            name: name?,
            shape: shape?,
            datatype: datatype?,
            binary_data_size,
            shared_memory,
            data,
        })
    }

    fn output(&mut self) -> Option<OutputFields<'a>> {
        let mut name = None;
        let mut binary_data = None;
        let mut classification = false;
        let mut shared_memory = false;
        self.object(|c, key| {
            match key {
                "name" => name = Some(c.string()?),
                "parameters" => {
                    let (mut bd, mut cl, mut shm) = (None, false, false);
                    c.nullable(|c| {
                        c.object(|c, key| {
                            let flag = match key {
                                "binary_data" => {
                                    bd = c.nullable(Cursor::boolean)?;
                                    return Some(true);
                                }
                                "classification" => &mut cl,
                                "shared_memory_region" => &mut shm,
                                _ => return c.skip().map(|()| false),
                            };
                            c.ws();
                            *flag = c.peek()? != b'n';
                            c.skip().map(|()| true)
                        })
                    })?;
                    (binary_data, classification, shared_memory) = (bd, cl, shm);
                }
                _ => return c.skip().map(|()| false),
            }
            Some(true)
        })?;
        Some(OutputFields {
            name: name?,
            binary_data,
            classification,
            shared_memory,
        })
    }

    /// One `data` value of `dtype` (the wire datatype: a complex tensor's part type) and
    /// `shape` (the wire shape), with the serde path's nesting rules: flat, or nested exactly as
    /// the shape (a scalar may be bare).
    fn data(&mut self, dtype: DType, shape: &[u64]) -> Option<Vec<u8>> {
        let want = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(usize::try_from(d).ok()?))?;
        // Every element takes at least two bytes of text: never reserve more than the body.
        let left = self.b.len().saturating_sub(self.i);
        let mut out = Vec::with_capacity(want.min(left / 2 + 1).saturating_mul(dtype.size()));
        macro_rules! run {
            ($elem:ty) => {
                self.elements::<$elem>(shape, want, dtype, &mut out)
            };
        }
        match dtype {
            DType::F32 => run!(F32),
            DType::F64 => run!(Wide<f64>),
            DType::F16 => run!(Wide<f16>),
            DType::BF16 => run!(Wide<bf16>),
            DType::Bool => run!(Bool),
            DType::I8 => run!(Int<i8>),
            DType::I16 => run!(Int<i16>),
            DType::I32 => run!(Int<i32>),
            DType::I64 => run!(Int<i64>),
            DType::U8 => run!(Int<u8>),
            DType::U16 => run!(Int<u16>),
            DType::U32 => run!(Int<u32>),
            DType::U64 => run!(Int<u64>),
            _ => None,
        }?;
        Some(out)
    }

    /// Walks the arrays of a `data` value, reading each element that is not a string with `E`
    /// (strings — `"NaN"` and the like — go to the serde path's element reader).
    ///
    /// Takes arrays of arrays and arrays of elements (a run, read in a tight loop); an array
    /// that mixes elements and arrays (which the serde path may still take, `[1, [], 2]`) is
    /// left to the serde path.
    #[inline]
    fn elements<E: Elem>(
        &mut self,
        shape: &[u64],
        want: usize,
        dtype: DType,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        let rank = shape.len().max(1);
        self.ws();
        if self.peek()? != b'[' {
            // A bare scalar: only for a tensor of one element.
            if want != 1 {
                return None;
            }
            return self.element::<E>(dtype, out);
        }
        let mut open: Vec<u64> = Vec::new();
        let mut leaf_depth: Option<usize> = None;
        let mut count = 0usize;
        'arrays: loop {
            // At a `[`: open it and any arrays directly inside.
            while self.peek()? == b'[' {
                if let Some(top) = open.last_mut() {
                    *top += 1;
                }
                open.push(0);
                self.i += 1;
                self.enter()?;
                self.ws();
            }
            if self.peek()? != b']' {
                // A run of elements, all at this depth.
                let depth = open.len();
                match leaf_depth {
                    None if depth == 1 || depth == rank => leaf_depth = Some(depth),
                    Some(d) if d == depth => {}
                    _ => return None,
                }
                let mut n = 0u64;
                loop {
                    if count == want {
                        return None;
                    }
                    self.element::<E>(dtype, out)?;
                    count += 1;
                    n += 1;
                    self.ws();
                    match self.peek()? {
                        b',' => {
                            self.i += 1;
                            self.ws();
                        }
                        b']' => break,
                        _ => return None,
                    }
                }
                *open.last_mut()? += n;
            }
            // At a `]`: close it and any arrays that end with it.
            loop {
                self.close(&mut open, leaf_depth, rank, shape)?;
                if open.is_empty() {
                    break 'arrays;
                }
                self.ws();
                match self.peek()? {
                    b']' => {}
                    b',' => {
                        self.i += 1;
                        self.ws();
                        if self.peek()? != b'[' {
                            return None;
                        }
                        continue 'arrays;
                    }
                    _ => return None,
                }
            }
        }
        (count == want).then_some(())
    }

    /// One element: a string through the serde path's element reader, anything else `E`.
    #[inline(always)]
    fn element<E: Elem>(&mut self, dtype: DType, out: &mut Vec<u8>) -> Option<()> {
        if self.peek()? == b'"' {
            let s = self.string()?;
            push_element(s, true, dtype, out).ok()
        } else {
            E::put(self, out)
        }
    }

    /// Takes a `]`, checking the entry count of a nested array against the shape.
    fn close(
        &mut self,
        open: &mut Vec<u64>,
        leaf_depth: Option<usize>,
        rank: usize,
        shape: &[u64],
    ) -> Option<()> {
        let depth = open.len();
        let n = open.pop()?;
        if leaf_depth == Some(rank) && rank > 1 {
            let want_n = shape.get(depth.saturating_sub(1)).copied().unwrap_or(0);
            if n != want_n {
                return None;
            }
        }
        self.i += 1;
        self.depth -= 1;
        Some(())
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::panic
)]
mod tests {
    use super::*;

    /// xorshift: the test's own deterministic stream.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Decodes `[t0, t1, ...]` as FP32 and compares each element with Rust's correctly rounded
    /// `str::parse::<f32>`, bit for bit.
    fn check_f32(tokens: &[String]) {
        let text = format!("[{}]", tokens.join(","));
        let n = tokens.len() as u64;
        let got = decode_data(&text, DType::F32, &[n]).unwrap_or_else(|| panic!("{text:.200}"));
        for (k, t) in tokens.iter().enumerate() {
            let want = t.parse::<f32>().unwrap();
            let bits = u32::from_le_bytes(got[4 * k..4 * k + 4].try_into().unwrap());
            assert_eq!(
                bits,
                want.to_bits(),
                "{t}: got {}, want {want}",
                f32::from_bits(bits)
            );
        }
    }

    #[test]
    fn f32_matches_correct_rounding_on_every_format() {
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut tokens = Vec::new();
        for _ in 0..200_000 {
            // Random finite f32 bit patterns (all binades) and their usual spellings: Python's
            // repr of the f64 (tritonclient's JSON), the shortest f32, and scientific forms.
            let x = f32::from_bits((r.next() >> 32) as u32);
            if !x.is_finite() {
                continue;
            }
            tokens.push(format!("{:?}", f64::from(x)));
            tokens.push(format!("{x:?}"));
            tokens.push(format!("{:e}", f64::from(x)));
            tokens.push(format!("{:.3e}", x));
        }
        // Decimals of 1 to 25 random digits with random exponents.
        for _ in 0..100_000 {
            let digits = 1 + (r.next() % 25) as usize;
            let mut m: String = (0..digits)
                .map(|_| char::from(b'0' + (r.next() % 10) as u8))
                .collect();
            if m.len() > 1 {
                m = m.trim_start_matches('0').to_string();
                if m.is_empty() {
                    m.push('0');
                }
            }
            let e = (r.next() % 90) as i32 - 60;
            let point = (r.next() as usize) % (m.len() + 1);
            let t = if point == 0 || point == m.len() {
                format!("{m}e{e}")
            } else {
                format!("{}.{}e{e}", &m[..point], &m[point..])
            };
            let t = if r.next() % 2 == 0 {
                format!("-{t}")
            } else {
                t
            };
            if t.parse::<f32>().unwrap().is_finite() {
                tokens.push(t);
            }
        }
        check_f32(&tokens);
    }

    #[test]
    fn f32_rounding_boundaries_are_decided_exactly() {
        // Midpoints between neighbouring f32 values, written exactly and with 20-40 digits
        // (just above or below the midpoint): where a shortcut through f64 would round twice.
        let mut r = Rng(42);
        let mut tokens = Vec::new();
        for _ in 0..50_000 {
            let a = f32::from_bits((r.next() >> 33) as u32 & 0x7F7F_FFFF | 0x0080_0000);
            let b = f32::from_bits(a.to_bits() + 1);
            if !b.is_finite() {
                continue;
            }
            let mid = (f64::from(a) + f64::from(b)) / 2.0;
            for digits in [20usize, 25, 30, 40, 60] {
                tokens.push(format!("{mid:.digits$e}"));
            }
            tokens.push(format!("{:?}", mid));
            tokens.push(format!("{:e}", f64::from_bits(mid.to_bits() + 1)));
            tokens.push(format!("{:e}", f64::from_bits(mid.to_bits() - 1)));
        }
        // The largest finite value, the overflow threshold's neighbourhood and subnormals.
        for t in [
            "3.4028235e38",
            "3.4028235677973366e38",
            "3.4028235677973362e38",
            "1.1754942e-38",
            "1.401298464324817e-45",
            "1e-50",
            "-0",
            "0.0",
            "-0.0e-7",
        ] {
            tokens.push(t.to_string());
        }
        check_f32(&tokens);
    }

    #[test]
    fn f64_and_integers_are_exact() {
        let mut r = Rng(7);
        let mut floats = Vec::new();
        for _ in 0..100_000 {
            let x = f64::from_bits(r.next());
            if x.is_finite() {
                floats.push(format!("{x:?}"));
                floats.push(format!("{:.6}", x.fract()));
            }
        }
        let text = format!("[{}]", floats.join(","));
        let got = decode_data(&text, DType::F64, &[floats.len() as u64]).unwrap();
        for (k, t) in floats.iter().enumerate() {
            let bits = u64::from_le_bytes(got[8 * k..8 * k + 8].try_into().unwrap());
            assert_eq!(bits, t.parse::<f64>().unwrap().to_bits(), "{t}");
        }
        let ints: Vec<i64> = (0..10_000)
            .map(|_| (r.next() as i64) >> (r.next() % 64))
            .collect();
        let text = format!("{ints:?}");
        let got = decode_data(&text, DType::I64, &[ints.len() as u64]).unwrap();
        let want: Vec<u8> = ints.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(got, want);
        // Out of range or not an integer: the serde path must judge (and refuse) it.
        for bad in [
            "[128]", "[1.0]", "[1e2]", "[-129]", "[01]", "[+1]", "[1,]", "[true]",
        ] {
            assert_eq!(decode_data(bad, DType::I8, &[1]), None, "{bad}");
        }
        assert_eq!(
            decode_data("[127, -128]", DType::I8, &[2]),
            Some(vec![127, 128])
        );
    }

    #[test]
    fn eight_digits_matches_a_byte_by_byte_test() {
        let mut r = Rng(3);
        let alphabet = b"0123456789/:.,e-]\x00\xff9\xfa\x29";
        for round in 0..400_000 {
            let v = if round % 2 == 0 {
                r.next()
            } else {
                let b: [u8; 8] =
                    std::array::from_fn(|_| alphabet[(r.next() % alphabet.len() as u64) as usize]);
                u64::from_le_bytes(b)
            };
            let bytes = v.to_le_bytes();
            assert_eq!(
                eight_digits(v),
                bytes.iter().all(u8::is_ascii_digit),
                "{bytes:?}"
            );
            if eight_digits(v) {
                let value = bytes
                    .iter()
                    .fold(0u64, |a, &c| a * 10 + u64::from(c - b'0'));
                assert_eq!(parse_eight(v), value, "{bytes:?}");
            }
        }
        // Every byte value at every position of an all-digit word.
        for base in [*b"00000000", *b"99999999", *b"12345678"] {
            for at in 0..8 {
                for x in 0..=255u8 {
                    let mut b = base;
                    b[at] = x;
                    let v = u64::from_le_bytes(b);
                    assert_eq!(eight_digits(v), x.is_ascii_digit(), "{b:?}");
                }
            }
        }
    }

    #[test]
    fn strict_json_number_grammar() {
        for bad in [
            "[1.]", "[.5]", "[1e]", "[1e+]", "[-]", "[00]", "[1.5x]", "[1 2]", "[NaN]", "[[1]]",
        ] {
            assert_eq!(decode_data(bad, DType::F32, &[1]), None, "{bad}");
        }
        let one = 1f32.to_le_bytes().to_vec();
        for good in ["[1]", "[1.0]", "[1e0]", "[1E+0]", "[10e-1]", " [ 1 ] ", "1"] {
            assert_eq!(
                decode_data(good, DType::F32, &[1]),
                Some(one.clone()),
                "{good}"
            );
        }
    }
}
