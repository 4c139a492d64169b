//! The protocol's datatypes and the reading of one JSON tensor element: shared by the serde
//! reader ([`super::wire`]) and the one-pass reader ([`super::fastjson`]).

use half::{bf16, f16};

use crate::signature::DType;

/// The protocol's datatype names, in the order the protocol lists them.
pub const DATATYPES: [(&str, DType); 13] = [
    ("BOOL", DType::Bool),
    ("UINT8", DType::U8),
    ("UINT16", DType::U16),
    ("UINT32", DType::U32),
    ("UINT64", DType::U64),
    ("INT8", DType::I8),
    ("INT16", DType::I16),
    ("INT32", DType::I32),
    ("INT64", DType::I64),
    ("FP16", DType::F16),
    ("FP32", DType::F32),
    ("FP64", DType::F64),
    ("BF16", DType::BF16),
];

/// The protocol name of a dtype (`FP32` for `float32`).
pub fn datatype_name(d: DType) -> &'static str {
    match d {
        DType::Bool => "BOOL",
        DType::U8 => "UINT8",
        DType::U16 => "UINT16",
        DType::U32 => "UINT32",
        DType::U64 => "UINT64",
        DType::I8 => "INT8",
        DType::I16 => "INT16",
        DType::I32 => "INT32",
        DType::I64 => "INT64",
        DType::F16 => "FP16",
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::BF16 => "BF16",
        // KServe v2 has no complex datatype: (real, imag) pairs in a trailing dimension of 2.
        DType::C64 => "FP32",
        DType::C128 => "FP64",
    }
}

/// The dtype of a protocol datatype name (case-sensitive, as the protocol spells it).
pub fn parse_datatype(name: &str) -> Option<DType> {
    DATATYPES.iter().find(|(n, _)| *n == name).map(|&(_, d)| d)
}

fn special_float(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" | "NAN" => Some(f64::NAN),
        "Infinity" | "inf" | "Inf" | "+Infinity" | "+inf" => Some(f64::INFINITY),
        "-Infinity" | "-inf" | "-Inf" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// Appends one JSON element (`token`: a number or literal, or a string's contents when
/// `is_string`) of `dtype` to `out`, or says what is wrong with it.
pub(super) fn push_element(
    token: &str,
    is_string: bool,
    dtype: DType,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let dt = datatype_name(dtype);
    if dtype == DType::Bool {
        return match (token, is_string) {
            ("true", false) => {
                out.push(1);
                Ok(())
            }
            ("false", false) => {
                out.push(0);
                Ok(())
            }
            _ => Err("BOOL takes true or false".into()),
        };
    }
    if !is_string && (token == "true" || token == "false" || token == "null") {
        return Err(format!("expected a number ({dt})"));
    }
    if !is_string && token.starts_with('{') {
        return Err(format!("expected a number ({dt}), got an object"));
    }
    if dtype.is_float() {
        let v: f64 = if is_string {
            special_float(token).ok_or_else(|| {
                format!("expected a number ({dt}); the only strings taken are \"NaN\", \"Infinity\" and \"-Infinity\"")
            })?
        } else {
            token
                .parse::<f64>()
                .map_err(|_| format!("expected a number ({dt})"))?
        };
        let overflow = || format!("out of range for {dt}");
        // A JSON number is finite: one that becomes infinite does not fit the datatype.
        let finite_in = !is_string;
        match dtype {
            DType::F64 => {
                if finite_in && !v.is_finite() {
                    return Err(overflow());
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            DType::F32 => {
                // Parse the text directly for correct rounding (no double rounding via f64).
                let x = if is_string {
                    // Only NaN and the infinities come from strings.
                    if v.is_nan() {
                        f32::NAN
                    } else if v > 0.0 {
                        f32::INFINITY
                    } else {
                        f32::NEG_INFINITY
                    }
                } else {
                    token
                        .parse::<f32>()
                        .map_err(|_| format!("expected a number ({dt})"))?
                };
                if finite_in && !x.is_finite() {
                    return Err(overflow());
                }
                out.extend_from_slice(&x.to_le_bytes());
            }
            DType::F16 => {
                let x = f16::from_f64(v);
                if finite_in && !x.is_finite() {
                    return Err(overflow());
                }
                out.extend_from_slice(&x.to_le_bytes());
            }
            DType::BF16 => {
                let x = bf16::from_f64(v);
                if finite_in && !x.is_finite() {
                    return Err(overflow());
                }
                out.extend_from_slice(&x.to_le_bytes());
            }
            _ => return Err(format!("expected a number ({dt})")),
        }
        return Ok(());
    }
    if is_string {
        return Err(format!("expected an integer ({dt})"));
    }
    let not_int = || format!("expected an integer ({dt})");
    let range = || format!("out of range for {dt}");
    macro_rules! int {
        ($t:ty) => {{
            let x: $t = if token.starts_with('-') {
                let v: i64 = token.parse().map_err(|_| not_int())?;
                <$t>::try_from(v).map_err(|_| range())?
            } else {
                let v: u64 = token.parse().map_err(|_| not_int())?;
                <$t>::try_from(v).map_err(|_| range())?
            };
            out.extend_from_slice(&x.to_le_bytes());
        }};
    }
    // A JSON integer too long for u64/i64 fails to parse: tell range from syntax.
    let digits_only = token
        .strip_prefix('-')
        .unwrap_or(token)
        .bytes()
        .all(|c| c.is_ascii_digit());
    let parsed: Result<(), String> = (|| {
        match dtype {
            DType::I8 => int!(i8),
            DType::I16 => int!(i16),
            DType::I32 => int!(i32),
            DType::I64 => int!(i64),
            DType::U8 => int!(u8),
            DType::U16 => int!(u16),
            DType::U32 => int!(u32),
            DType::U64 => int!(u64),
            _ => return Err(not_int()),
        }
        Ok(())
    })();
    match parsed {
        Err(e) if digits_only && !token.is_empty() && e == not_int() => Err(range()),
        r => r,
    }
}
