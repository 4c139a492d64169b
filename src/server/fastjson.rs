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

/// Whether the eight bytes of `v` (little-endian) are all ASCII digits.
#[inline]
fn eight_digits(v: u64) -> bool {
    let a = v.wrapping_add(0x4646_4646_4646_4646);
    let b = v.wrapping_sub(0x3030_3030_3030_3030);
    (a | b) & 0x8080_8080_8080_8080 == 0
}

/// The value of eight ASCII digits read little-endian (first digit in the low byte).
#[inline]
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

impl Number {
    /// `w * 10^exp` in f64 with three roundings (`w`, the power, the product: under two ulps
    /// in all), or `None` when the exponent is outside the tables.
    #[inline]
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
    #[inline]
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

impl<'a> Cursor<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
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

    fn boolean(&mut self) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b't' => self.literal(b"true").map(|()| true),
            b'f' => self.literal(b"false").map(|()| false),
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
    #[inline]
    fn number(&mut self) -> Option<Number> {
        let b = self.b;
        let mut i = self.i;
        let neg = b.get(i) == Some(&b'-');
        if neg {
            i += 1;
        }
        let mut w: u64 = 0;
        let mut digits: u32 = 0;
        let mut exp: i32 = 0;
        let mut truncated = false;
        match b.get(i)? {
            b'0' => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
            }
            b'1'..=b'9' => {
                while let Some(&c) = b.get(i) {
                    let d = c.wrapping_sub(b'0');
                    if d > 9 {
                        break;
                    }
                    if digits < 19 {
                        w = w * 10 + u64::from(d);
                        digits += 1;
                    } else {
                        exp = exp.saturating_add(1);
                        truncated |= d != 0;
                    }
                    i += 1;
                }
            }
            _ => return None,
        }
        let mut integer = true;
        if b.get(i) == Some(&b'.') {
            integer = false;
            i += 1;
            let first = i;
            // Leading zeros of the fraction are not significant.
            if w == 0 {
                while b.get(i) == Some(&b'0') {
                    i += 1;
                    exp = exp.saturating_sub(1);
                }
            }
            // Eight digits at a time while the significand has room.
            while digits + 8 <= 19 {
                let Some(chunk) = b.get(i..i + 8) else { break };
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(chunk);
                let v = u64::from_le_bytes(bytes);
                if !eight_digits(v) {
                    break;
                }
                w = w * 100_000_000 + parse_eight(v);
                digits += 8;
                exp = exp.saturating_sub(8);
                i += 8;
            }
            while let Some(&c) = b.get(i) {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                if digits < 19 {
                    if w != 0 || d != 0 {
                        w = w * 10 + u64::from(d);
                        digits += 1;
                    }
                    exp = exp.saturating_sub(1);
                } else {
                    truncated |= d != 0;
                }
                i += 1;
            }
            if i == first {
                return None;
            }
        }
        if let Some(b'e' | b'E') = b.get(i) {
            integer = false;
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
            exp = if eneg {
                exp.saturating_sub(e)
            } else {
                exp.saturating_add(e)
            };
        }
        self.i = i;
        Some(Number {
            neg,
            w,
            exp,
            digits,
            truncated,
            integer,
        })
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
            b'{' => {
                self.i += 1;
                self.enter()?;
                self.ws();
                if self.peek()? == b'}' {
                    self.i += 1;
                } else {
                    loop {
                        self.string()?;
                        self.eat(b':')?;
                        self.skip()?;
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
            b'[' => {
                self.i += 1;
                self.enter()?;
                self.ws();
                if self.peek()? == b']' {
                    self.i += 1;
                } else {
                    loop {
                        self.skip()?;
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
                Some(())
            }
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
            ($elem:expr) => {
                self.elements(shape, want, dtype, &mut out, $elem)
            };
        }
        match dtype {
            DType::F32 => run!(|c: &mut Self, out: &mut Vec<u8>| {
                let start = c.i;
                let n = c.number()?;
                let x = match n.f32() {
                    Some(x) => x,
                    None => c.token(start)?.parse::<f32>().ok()?,
                };
                x.is_finite()
                    .then(|| out.extend_from_slice(&x.to_le_bytes()))
            }),
            DType::F64 | DType::F16 | DType::BF16 => run!(|c: &mut Self, out: &mut Vec<u8>| {
                let start = c.i;
                let n = c.number()?;
                let v = match n.exact_f64() {
                    Some(v) => v,
                    None => c.token(start)?.parse::<f64>().ok()?,
                };
                if !v.is_finite() {
                    return None;
                }
                match dtype {
                    DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
                    DType::F16 => {
                        let x = f16::from_f64(v);
                        x.is_finite()
                            .then(|| out.extend_from_slice(&x.to_le_bytes()))?;
                    }
                    _ => {
                        let x = bf16::from_f64(v);
                        x.is_finite()
                            .then(|| out.extend_from_slice(&x.to_le_bytes()))?;
                    }
                }
                Some(())
            }),
            DType::Bool => run!(|c: &mut Self, out: &mut Vec<u8>| {
                let v = c.boolean()?;
                out.push(u8::from(v));
                Some(())
            }),
            DType::I8
            | DType::I16
            | DType::I32
            | DType::I64
            | DType::U8
            | DType::U16
            | DType::U32
            | DType::U64 => run!(|c: &mut Self, out: &mut Vec<u8>| {
                let start = c.i;
                let n = c.number()?;
                if !n.integer || n.digits > 18 {
                    // The serde path's reader tells range from syntax.
                    return push_element(c.token(start)?, false, dtype, out).ok();
                }
                #[allow(clippy::cast_possible_wrap)] // w < 10^18
                let v = if n.neg { -(n.w as i64) } else { n.w as i64 };
                macro_rules! put {
                    ($t:ty) => {
                        out.extend_from_slice(&<$t>::try_from(v).ok()?.to_le_bytes())
                    };
                }
                match dtype {
                    DType::I8 => put!(i8),
                    DType::I16 => put!(i16),
                    DType::I32 => put!(i32),
                    DType::I64 => put!(i64),
                    DType::U8 => put!(u8),
                    DType::U16 => put!(u16),
                    DType::U32 => put!(u32),
                    _ => put!(u64),
                }
                Some(())
            }),
            _ => None,
        }?;
        Some(out)
    }

    /// Walks the arrays of a `data` value, calling `elem` for each element that is not a string
    /// (strings — `"NaN"` and the like — go to the serde path's element reader).
    ///
    /// Takes arrays of arrays and arrays of elements (a run, read in a tight loop); an array
    /// that mixes elements and arrays (which the serde path may still take, `[1, [], 2]`) is
    /// left to the serde path.
    #[inline]
    fn elements(
        &mut self,
        shape: &[u64],
        want: usize,
        dtype: DType,
        out: &mut Vec<u8>,
        mut elem: impl FnMut(&mut Self, &mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        let rank = shape.len().max(1);
        self.ws();
        if self.peek()? != b'[' {
            // A bare scalar: only for a tensor of one element.
            if want != 1 {
                return None;
            }
            return self.element(dtype, out, &mut elem);
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
                    self.element(dtype, out, &mut elem)?;
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

    /// One element: a string through the serde path's element reader, anything else `elem`.
    #[inline]
    fn element(
        &mut self,
        dtype: DType,
        out: &mut Vec<u8>,
        elem: &mut impl FnMut(&mut Self, &mut Vec<u8>) -> Option<()>,
    ) -> Option<()> {
        if self.peek()? == b'"' {
            let s = self.string()?;
            push_element(s, true, dtype, out).ok()
        } else {
            elem(self, out)
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
