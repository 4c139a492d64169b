//! Policy decisions for inputs that live on a GPU (feature `cuda`).
//!
//! The device layer ([`crate::pjrt::cuda`]) only counts: one fused scan per input returns NaN,
//! ±Inf, below-min and above-max counts with the first offender of each. This module turns those
//! statistics into the same decisions and [`PolicyViolation`]s the host scan makes, from the same
//! [`InputRules`], so the rules live in one place for host and device inputs.

use super::enforce::{InputRules, Offender, PolicyViolation, Rule};
use super::policy::{NonFinite, OutOfRange};
use super::scan::Value;
use crate::pjrt::cuda::{unravel, Bounds, CudaError, DeviceInput, DeviceScanner, DeviceStats};

/// The device scan's bounds for an input's policy rules.
pub fn bounds_of(rules: &InputRules) -> Bounds {
    Bounds {
        min: rules.limits().min().map(|b| b.as_f64()),
        max: rules.limits().max().map(|b| b.as_f64()),
    }
}

/// True when the rules would change values (clip, replace, normalize), which device inputs do
/// not support: they are checked, never rewritten.
pub fn sanitizes(rules: &InputRules) -> bool {
    rules.out_of_range() == OutOfRange::Clip
        && (rules.limits().min().is_some() || rules.limits().max().is_some())
        || matches!(rules.nan(), NonFinite::Replace(_))
        || matches!(rules.inf(), NonFinite::Replace(_))
        || rules.normalize().is_some()
}

/// Applies an input's policy rules to a device scan: the first broken rule, in the order NaN,
/// Inf, min, max, becomes the same [`PolicyViolation`] the host scan reports.
///
/// # Errors
/// [`CudaError`] if reading the offending value fails.
pub fn judge(
    rules: &InputRules,
    input: &dyn DeviceInput<'_>,
    scanner: &DeviceScanner,
    stats: &DeviceStats,
) -> Result<Option<PolicyViolation>, CudaError> {
    let float = input.dtype().is_float();
    let mut checks: Vec<(Rule, u64, Option<u64>, Option<String>)> = Vec::new();
    if float && rules.nan() == NonFinite::Reject {
        checks.push((Rule::Nan, stats.nan, stats.first_nan, None));
    }
    if float && rules.inf() == NonFinite::Reject {
        checks.push((
            Rule::Inf,
            stats.pos_inf + stats.neg_inf,
            stats.first_inf,
            None,
        ));
    }
    if let Some(lo) = rules.limits().min() {
        checks.push((
            Rule::Min,
            stats.below,
            stats.first_below,
            Some(lo.to_string()),
        ));
    }
    if let Some(hi) = rules.limits().max() {
        checks.push((
            Rule::Max,
            stats.above,
            stats.first_above,
            Some(hi.to_string()),
        ));
    }
    for (rule, count, first, limit) in checks {
        if let (true, Some(i)) = (count > 0, first) {
            return Ok(Some(PolicyViolation {
                input: Some(rules.name().to_string()),
                rule,
                count,
                limit,
                first: Some(Offender {
                    flat: i,
                    index: unravel(i, input.shape()),
                    value: {
                        let bytes = input.element_bytes(scanner, i)?;
                        Value::read(input.dtype(), &bytes, 0).ok_or_else(|| {
                            CudaError(format!(
                                "cannot read a {} value from {} bytes",
                                input.dtype(),
                                bytes.len()
                            ))
                        })?
                    },
                }),
                dim: None,
            }));
        }
    }
    Ok(None)
}
