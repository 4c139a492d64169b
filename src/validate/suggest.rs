//! A starting policy from sample data: the observed range of each input, widened by a margin,
//! for a human to review (`xlaguard policy suggest`).

use std::fmt::Write as _;

use super::enforce::ValidationError;
use super::policy::{NonFinite, Policy, PolicyError, PolicyErrorKind};
use super::scan::{self, Bound, Limits, Value};
use super::InputError;
use crate::signature::{format_type, DType, Signature};
use crate::tensor::TensorRef;

/// What the samples of one input held.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The input.
    pub input: String,
    /// Sample arrays seen.
    pub samples: usize,
    /// Elements seen.
    pub elements: u64,
    /// Smallest finite value.
    pub min: Option<Value>,
    /// Largest finite value.
    pub max: Option<Value>,
    /// NaNs seen.
    pub nan: u64,
    /// Infinities seen.
    pub inf: u64,
}

/// A suggested policy and the observations behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Suggestion {
    /// The policy.
    pub policy: Policy,
    /// One entry per input of the signature, in order.
    pub observed: Vec<Observed>,
    /// The margin used.
    pub margin: f64,
}

impl Suggestion {
    /// The policy as TOML, with a comment block saying what was observed.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# Suggested by `xlaguard policy suggest` from sample data: review before use.\n",
        );
        let _ = writeln!(
            out,
            "# Bounds are the observed finite range widened by {} of its width on each side.",
            self.margin
        );
        for o in &self.observed {
            let range = match (o.min, o.max) {
                (Some(a), Some(b)) => format!("min {a}, max {b}"),
                _ if o.samples == 0 => "no sample given".to_string(),
                _ => "no finite value".to_string(),
            };
            let _ = writeln!(
                out,
                "# {}: {} sample(s), {} elements: {range}; {} NaN, {} infinite",
                o.input, o.samples, o.elements, o.nan, o.inf
            );
        }
        out.push_str("# Add out_of_range = \"clip\" to an input to clamp instead of refusing.\n\n");
        out.push_str(&self.policy.to_toml());
        out
    }
}

#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
fn widen_int(min: i128, max: i128, margin: f64, dtype: DType) -> (i64, i64) {
    let span = (max - min) as f64;
    let pad = (span * margin).ceil() as i128;
    let (lo_t, hi_t): (i128, i128) = match dtype {
        DType::I8 => (i128::from(i8::MIN), i128::from(i8::MAX)),
        DType::I16 => (i128::from(i16::MIN), i128::from(i16::MAX)),
        DType::I32 => (i128::from(i32::MIN), i128::from(i32::MAX)),
        DType::U8 => (0, i128::from(u8::MAX)),
        DType::U16 => (0, i128::from(u16::MAX)),
        DType::U32 => (0, i128::from(u32::MAX)),
        DType::U64 => (0, i128::from(u64::MAX)),
        _ => (i128::from(i64::MIN), i128::from(i64::MAX)),
    };
    // TOML integers are i64.
    let lo = (min - pad).max(lo_t).max(i128::from(i64::MIN));
    let hi = (max + pad).min(hi_t).min(i128::from(i64::MAX));
    (
        i64::try_from(lo).unwrap_or(i64::MIN),
        i64::try_from(hi).unwrap_or(i64::MAX),
    )
}

fn float_max(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => half::f16::MAX.to_f64(),
        DType::BF16 => half::bf16::MAX.to_f64(),
        DType::F32 => f64::from(f32::MAX),
        _ => f64::MAX,
    }
}

fn as_int(v: Value) -> Option<i128> {
    match v {
        Value::Int(i) => Some(i128::from(i)),
        Value::UInt(u) => Some(i128::from(u)),
        _ => None,
    }
}

/// Suggests a policy for `sig` from sample arrays given as `(input index, array)`. A sample
/// must have the input's dtype; its shape may differ (a batch of samples is fine). Bounds are
/// the observed finite range widened by `margin` × its width on each side (integers outwards to
/// whole numbers), clamped to the dtype; NaN/Inf are rejected unless a sample had some.
///
/// # Errors
/// [`ValidationError::InvalidInput`] for a sample of the wrong dtype or an unknown input index;
/// [`ValidationError::Policy`] for a negative or non-finite margin.
pub fn suggest(
    sig: &Signature,
    samples: &[(usize, TensorRef<'_>)],
    margin: f64,
) -> Result<Suggestion, ValidationError> {
    if !(margin.is_finite() && margin >= 0.0) {
        return Err(PolicyError {
            file: None,
            line: None,
            key: "margin".into(),
            kind: PolicyErrorKind::BadValue {
                expected: "a non-negative finite number".into(),
                got: format!("{margin:?}"),
            },
        }
        .into());
    }
    let mut observed: Vec<Observed> = sig
        .inputs
        .iter()
        .map(|s| Observed {
            input: s.name.clone(),
            samples: 0,
            elements: 0,
            min: None,
            max: None,
            nan: 0,
            inf: 0,
        })
        .collect();
    for (index, t) in samples {
        let spec = sig.inputs.get(*index).ok_or_else(|| InputError::Count {
            expected: sig.inputs.len(),
            names: crate::validate::input_names(sig),
            got: index + 1,
        })?;
        if t.dtype != spec.dtype {
            return Err(InputError::DType {
                name: spec.name.clone(),
                index: *index,
                expected: spec.type_string(),
                got: format_type(t.dtype, t.shape.iter()),
            }
            .into());
        }
        let s = scan::scan(t.data, &Limits::unbounded(t.dtype))
            .map_err(|e| ValidationError::Internal(e.to_string()))?;
        let o = &mut observed[*index];
        o.samples += 1;
        o.elements += s.elements;
        o.nan += s.nan.count;
        o.inf += s.pos_inf.count + s.neg_inf.count;
        if let Some(v) = s.min {
            if o.min.is_none_or_lt(v) {
                o.min = Some(v);
            }
        }
        if let Some(v) = s.max {
            if o.max.is_none_or_gt(v) {
                o.max = Some(v);
            }
        }
    }
    let mut policy = Policy::new();
    for (spec, o) in sig.inputs.iter().zip(&observed) {
        if o.samples == 0 || spec.dtype == DType::Bool {
            continue;
        }
        let ip = policy.input(&spec.name);
        if spec.dtype.is_float() {
            ip.nan(if o.nan > 0 {
                NonFinite::Allow
            } else {
                NonFinite::Reject
            });
            ip.inf(if o.inf > 0 {
                NonFinite::Allow
            } else {
                NonFinite::Reject
            });
            if let (Some(a), Some(b)) = (o.min, o.max) {
                let (a, b) = (a.as_f64(), b.as_f64());
                let width = if b > a { b - a } else { b.abs().max(1.0) };
                let top = float_max(spec.dtype);
                ip.min(Bound::Float((a - margin * width).max(-top)));
                ip.max(Bound::Float((b + margin * width).min(top)));
            }
        } else if let (Some(a), Some(b)) = (o.min.and_then(as_int), o.max.and_then(as_int)) {
            let (lo, hi) = widen_int(a, b, margin, spec.dtype);
            ip.range(lo, hi);
        }
    }
    Ok(Suggestion {
        policy,
        observed,
        margin,
    })
}

/// Comparisons of an optional running extreme with a new value.
trait Extreme {
    fn is_none_or_lt(&self, v: Value) -> bool;
    fn is_none_or_gt(&self, v: Value) -> bool;
}

impl Extreme for Option<Value> {
    fn is_none_or_lt(&self, v: Value) -> bool {
        self.is_none_or(|m| less(v, m))
    }
    fn is_none_or_gt(&self, v: Value) -> bool {
        self.is_none_or(|m| less(m, v))
    }
}

fn less(a: Value, b: Value) -> bool {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => x < y,
        _ => a.as_f64() < b.as_f64(),
    }
}
