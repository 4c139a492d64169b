//! A policy bound to a model's signature, and its enforcement on each call.
//!
//! [`BoundPolicy::apply`] runs, before any device buffer exists: the signature checks, the size
//! limits, then per input one fused scan ([`super::scan`]). A rejected input becomes a
//! [`PolicyViolation`]; values to sanitize are written into a staging copy that is uploaded in
//! place of the caller's buffer (which is never modified), and a [`RunReport`] says what changed.
//! A [`PolicyObserver`] hears about every rejection and sanitization.

// Policy errors are the cold path (load time, or a refused call); they stay unboxed so callers
// can match on them directly. `crate::Error` boxes them.
#![allow(clippy::result_large_err)]

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use super::policy::{
    input_key, InputPolicy, NonFinite, Normalize, OutOfRange, Policy, PolicyError, PolicyErrorKind,
};
use super::sanitize::{self, Ops};
use super::scan::{self, Bound, LimitError, Limits, Tally, Value};
use super::InputError;
use crate::signature::{DType, Dim, Signature, TensorSpec};
use crate::tensor::TensorRef;

/// A policy rule, as named in messages, reports and audit events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// `nan`: NaN values.
    Nan,
    /// `inf`: +Inf and -Inf values.
    Inf,
    /// `min`: values below the lower bound.
    Min,
    /// `max`: values above the upper bound.
    Max,
    /// `normalize`.
    Normalize,
    /// `max_elements`.
    MaxElements,
    /// `max_bytes`.
    MaxBytes,
    /// `max_total_bytes` (all inputs of a call).
    MaxTotalBytes,
    /// `dims`: a symbolic dimension's bound.
    Dim,
}

impl Rule {
    /// The policy key of the rule.
    pub fn key(self) -> &'static str {
        match self {
            Rule::Nan => "nan",
            Rule::Inf => "inf",
            Rule::Min => "min",
            Rule::Max => "max",
            Rule::Normalize => "normalize",
            Rule::MaxElements => "max_elements",
            Rule::MaxBytes => "max_bytes",
            Rule::MaxTotalBytes => "max_total_bytes",
            Rule::Dim => "dims",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// The first element that broke a rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Offender {
    /// Row-major flat index.
    pub flat: u64,
    /// Multi-dimensional index.
    pub index: Vec<u64>,
    /// Its value.
    pub value: Value,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("{n} {one}")
    } else {
        format!("{n} {many}")
    }
}

/// An input refused by the policy. Displays as
/// `input 'pixels': 3 values above max 16.0; first at [0, 41] = 255.0`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct PolicyViolation {
    /// The input (`None` for `max_total_bytes`, which is about all of them).
    pub input: Option<String>,
    /// The rule broken.
    pub rule: Rule,
    /// How many elements broke it (for size rules: the size found).
    pub count: u64,
    /// The limit, as the policy states it (`16.0`, `49`, `1024`); `None` for NaN/Inf.
    pub limit: Option<String>,
    /// The first offending element, for value rules.
    pub first: Option<Offender>,
    /// For [`Rule::Dim`]: the dimension's name and axis.
    pub dim: Option<(String, usize)>,
}

impl std::error::Error for PolicyViolation {}

/// Why validation refused inputs, or a policy. [`crate::Error`] has a variant for each (the
/// same names), so `?` converts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// An input does not match the signature.
    #[error(transparent)]
    InvalidInput(#[from] InputError),
    /// An input's values break the policy.
    #[error(transparent)]
    PolicyViolation(Box<PolicyViolation>),
    /// A policy (or a parameter of one, like `suggest`'s margin) is malformed.
    #[error(transparent)]
    Policy(Box<PolicyError>),
    /// A check failed in a way that is a bug, not the input's fault.
    #[error("internal: {0}")]
    Internal(String),
}

impl From<PolicyViolation> for ValidationError {
    fn from(v: PolicyViolation) -> ValidationError {
        ValidationError::PolicyViolation(Box::new(v))
    }
}

impl From<PolicyError> for ValidationError {
    fn from(e: PolicyError) -> ValidationError {
        ValidationError::Policy(Box::new(e))
    }
}

impl fmt::Display for PolicyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.input {
            Some(n) => write!(f, "input '{n}': ")?,
            None => write!(f, "inputs: ")?,
        }
        let limit = self.limit.as_deref().unwrap_or_default();
        let n = self.count;
        match self.rule {
            Rule::Nan => write!(f, "{}", plural(n, "NaN value", "NaN values"))?,
            Rule::Inf => write!(f, "{}", plural(n, "infinite value", "infinite values"))?,
            Rule::Min => write!(f, "{} below min {limit}", plural(n, "value", "values"))?,
            Rule::Max => write!(f, "{} above max {limit}", plural(n, "value", "values"))?,
            Rule::MaxElements => write!(f, "{n} elements, above max_elements {limit}")?,
            Rule::MaxBytes => write!(f, "{n} bytes, above max_bytes {limit}")?,
            Rule::MaxTotalBytes => write!(f, "{n} bytes in total, above max_total_bytes {limit}")?,
            Rule::Dim => {
                let (name, axis) = self.dim.clone().unwrap_or_default();
                let below = limit.parse::<u64>().is_ok_and(|l| n < l);
                write!(
                    f,
                    "dimension '{name}' (axis {axis}) is {n}, {} {limit}",
                    if below {
                        "below its minimum"
                    } else {
                        "above its bound"
                    }
                )?;
            }
            Rule::Normalize => write!(
                f,
                "{} not finite after normalize ({limit})",
                plural(n, "value", "values")
            )?,
        }
        if let Some(o) = &self.first {
            let idx: Vec<String> = o.index.iter().map(u64::to_string).collect();
            write!(f, "; first at [{}] = {}", idx.join(", "), o.value)?;
        }
        Ok(())
    }
}

/// One kind of change made to one input.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// The rule that made it: [`Rule::Nan`]/[`Rule::Inf`] (replaced), [`Rule::Min`]/[`Rule::Max`]
    /// (clipped), [`Rule::Normalize`].
    pub rule: Rule,
    /// Elements changed.
    pub count: u64,
    /// The value written (replacement or bound), except for normalization.
    pub to: Option<Value>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let to = self.to.map(|v| v.to_string()).unwrap_or_default();
        let n = self.count;
        match self.rule {
            Rule::Nan => write!(
                f,
                "{} replaced with {to}",
                plural(n, "NaN value", "NaN values")
            ),
            Rule::Inf => write!(
                f,
                "{} replaced with {to}",
                plural(n, "infinite value", "infinite values")
            ),
            Rule::Min => write!(f, "{} clipped to min {to}", plural(n, "value", "values")),
            Rule::Max => write!(f, "{} clipped to max {to}", plural(n, "value", "values")),
            Rule::Normalize => write!(f, "{} normalized", plural(n, "value", "values")),
            other => write!(f, "{n} changed by {other}"),
        }
    }
}

/// What sanitization changed in one input.
#[derive(Clone, Debug, PartialEq)]
pub struct InputReport {
    /// The input.
    pub name: String,
    /// Its position.
    pub index: usize,
    /// The changes, in rule order.
    pub changes: Vec<Change>,
}

/// What sanitization changed in one call: one entry per input that was changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunReport {
    /// Changed inputs, in signature order.
    pub inputs: Vec<InputReport>,
}

impl RunReport {
    /// True when nothing was changed.
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }

    /// Elements of `input` changed by `rule`.
    pub fn count(&self, input: &str, rule: Rule) -> u64 {
        self.inputs
            .iter()
            .filter(|r| r.name == input)
            .flat_map(|r| &r.changes)
            .filter(|c| c.rule == rule)
            .map(|c| c.count)
            .sum()
    }
}

impl fmt::Display for InputReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.changes.iter().map(Change::to_string).collect();
        write!(f, "input '{}': {}", self.name, parts.join(", "))
    }
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inputs.is_empty() {
            return f.write_str("no values changed");
        }
        let lines: Vec<String> = self.inputs.iter().map(InputReport::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

/// What the policy did about an input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PolicyAction {
    /// The call was refused.
    Rejected,
    /// Values were changed and the call went on.
    Sanitized,
}

/// One rejection or sanitization, as told to a [`PolicyObserver`].
#[derive(Clone, Copy, Debug)]
pub struct PolicyEvent<'a> {
    /// The input (`None` for `max_total_bytes`).
    pub input: Option<&'a str>,
    /// The rule.
    pub rule: Rule,
    /// Elements rejected or changed (for size rules: the size found).
    pub count: u64,
    /// Rejected or sanitized.
    pub action: PolicyAction,
}

/// An audit/metrics hook, told about every rejection and every sanitization (one event per
/// input and rule). Called on the calling thread, before the call returns; keep it cheap.
/// Any `Fn(&PolicyEvent) + Send + Sync` closure is one.
pub trait PolicyObserver: Send + Sync {
    /// Receives one event.
    fn observe(&self, event: &PolicyEvent<'_>);
}

impl<F: Fn(&PolicyEvent<'_>) + Send + Sync> PolicyObserver for F {
    fn observe(&self, event: &PolicyEvent<'_>) {
        self(event);
    }
}

/// One input's rules, resolved against its dtype and shape.
#[derive(Clone, Debug)]
pub struct InputRules {
    name: String,
    spec: TensorSpec,
    limits: Limits,
    nan: NonFinite,
    inf: NonFinite,
    out_of_range: OutOfRange,
    normalize: Option<Normalize>,
    max_elements: Option<u64>,
    max_bytes: Option<u64>,
    named: bool,
}

impl InputRules {
    /// The input's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The input's dtype and shape.
    pub fn spec(&self) -> &TensorSpec {
        &self.spec
    }

    /// The bounds, resolved into the dtype.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// NaN handling (always `Allow` for non-float inputs, which have no NaN).
    pub fn nan(&self) -> NonFinite {
        self.nan
    }

    /// ±Inf handling (always `Allow` for non-float inputs).
    pub fn inf(&self) -> NonFinite {
        self.inf
    }

    /// Out-of-range handling.
    pub fn out_of_range(&self) -> OutOfRange {
        self.out_of_range
    }

    /// Normalization.
    pub fn normalize(&self) -> Option<&Normalize> {
        self.normalize.as_ref()
    }

    /// Element limit.
    pub fn max_elements(&self) -> Option<u64> {
        self.max_elements
    }

    /// Byte limit.
    pub fn max_bytes(&self) -> Option<u64> {
        self.max_bytes
    }

    /// True if the policy names this input (else only the defaults apply).
    pub fn is_named(&self) -> bool {
        self.named
    }

    fn is_float(&self) -> bool {
        self.spec.dtype.is_float()
    }

    /// Whether a value scan is needed at all.
    fn scans(&self) -> bool {
        self.spec.dtype != DType::Bool
            && (self.limits.min().is_some()
                || self.limits.max().is_some()
                || self.normalize.is_some()
                || (self.is_float()
                    && (self.nan != NonFinite::Allow || self.inf != NonFinite::Allow)))
    }

    /// The effective rules as JSON (for `xlaguard inspect --json`).
    pub fn to_json(&self) -> serde_json::Value {
        let bound = |b: Option<Bound>| match b {
            Some(Bound::Int(i)) => serde_json::json!(i),
            Some(Bound::Float(f)) => serde_json::json!(f),
            None => serde_json::Value::Null,
        };
        let nf = |r: NonFinite| match r {
            NonFinite::Replace(v) => serde_json::json!({ "replace": v }),
            other => serde_json::json!(other.to_string()),
        };
        let mut o = serde_json::json!({
            "min": bound(self.limits.min()),
            "max": bound(self.limits.max()),
            "out_of_range": self.out_of_range.to_string(),
            "max_elements": self.max_elements,
            "max_bytes": self.max_bytes,
            "named": self.named,
        });
        if self.is_float() {
            o["nan"] = nf(self.nan);
            o["inf"] = nf(self.inf);
            o["normalize"] = match &self.normalize {
                Some(n) => serde_json::json!({ "mean": n.mean, "std": n.std }),
                None => serde_json::Value::Null,
            };
        }
        o
    }
}

impl fmt::Display for InputRules {
    /// `min 0.0, max 16.0 (clip), nan reject, inf reject`; `no checks` when there are none.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = self.limits.min() {
            parts.push(format!("min {b}"));
        }
        if let Some(b) = self.limits.max() {
            parts.push(format!("max {b}"));
        }
        if !parts.is_empty() {
            let last = parts.len() - 1;
            parts[last].push_str(&format!(
                " ({})",
                match self.out_of_range {
                    OutOfRange::Reject => "reject outside",
                    OutOfRange::Clip => "clip",
                }
            ));
        }
        if self.is_float() {
            parts.push(format!("nan {}", self.nan));
            parts.push(format!("inf {}", self.inf));
        }
        if let Some(n) = &self.normalize {
            let show = |v: &[f64]| match v {
                [x] => format!("{x:?}"),
                _ => format!("[{} values]", v.len()),
            };
            parts.push(format!(
                "normalize mean {} std {}",
                show(&n.mean),
                show(&n.std)
            ));
        }
        if let Some(n) = self.max_elements {
            parts.push(format!("max_elements {n}"));
        }
        if let Some(n) = self.max_bytes {
            parts.push(format!("max_bytes {n}"));
        }
        if parts.is_empty() {
            f.write_str("no checks")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Sanitized bytes per input (only for inputs that changed), and what changed.
#[derive(Debug, Default)]
pub struct Prepared {
    staged: Vec<Option<Vec<u8>>>,
    report: RunReport,
}

impl Prepared {
    /// The bytes to upload for input `index` instead of the caller's, if it was changed.
    pub fn staged(&self, index: usize) -> Option<&[u8]> {
        self.staged.get(index).and_then(|s| s.as_deref())
    }

    /// What changed.
    pub fn report(&self) -> &RunReport {
        &self.report
    }

    /// Takes the report.
    pub fn into_report(self) -> RunReport {
        self.report
    }
}

/// A [`Policy`] checked against one model's [`Signature`], ready to enforce.
#[derive(Clone, Debug)]
pub struct BoundPolicy {
    policy: Policy,
    signature: Signature,
    inputs: Vec<InputRules>,
    dims: Vec<(String, u64)>,
    pool: StagingPool,
}

/// Staging buffers handed back after upload, reused so that sanitizing a large input does not
/// map (and fault in) fresh pages on every call. Shared by clones of the policy.
#[derive(Clone, Default)]
struct StagingPool(Arc<Mutex<Vec<Vec<u8>>>>);

/// At most this many idle buffers, and this many idle bytes in all, are kept.
const POOL_BUFFERS: usize = 4;
const POOL_BYTES: usize = 128 << 20;

impl fmt::Debug for StagingPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.lock().map(|p| p.len()).unwrap_or(0);
        write!(f, "StagingPool({n} idle)")
    }
}

impl StagingPool {
    /// A buffer of exactly `len` bytes, contents unspecified (the sanitizer writes every byte).
    fn take(&self, len: usize) -> Vec<u8> {
        let reused = {
            let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            pool.iter()
                .position(|b| b.capacity() >= len)
                .map(|i| pool.swap_remove(i))
        };
        match reused {
            Some(mut b) => {
                if b.len() >= len {
                    b.truncate(len);
                } else {
                    b.resize(len, 0);
                }
                b
            }
            None => vec![0u8; len],
        }
    }

    fn give(&self, bufs: impl Iterator<Item = Vec<u8>>) {
        let mut pool = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for b in bufs {
            let held: usize = pool.iter().map(Vec::capacity).sum();
            if pool.len() < POOL_BUFFERS && held + b.capacity() <= POOL_BYTES {
                pool.push(b);
            }
        }
    }
}

fn product(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))
}

fn unravel(mut flat: u64, shape: &[u64]) -> Vec<u64> {
    let mut idx = vec![0u64; shape.len()];
    for (i, &d) in shape.iter().enumerate().rev() {
        if d > 0 {
            idx[i] = flat % d;
            flat /= d;
        }
    }
    idx
}

impl BoundPolicy {
    /// Binds `policy` to `signature`.
    ///
    /// # Errors
    /// A [`PolicyError`] (with the file, line and key) for: an input or dimension name the
    /// signature lacks, a bound the dtype cannot hold, a NaN/Inf/normalize rule on a non-float
    /// input, a replacement outside the bounds, a `normalize` array of the wrong length, a size
    /// limit no call could meet, or a strict policy that does not name every input.
    pub fn new(policy: Policy, signature: &Signature) -> Result<BoundPolicy, PolicyError> {
        let names = || {
            signature
                .inputs
                .iter()
                .map(|s| format!("'{}'", s.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        for name in policy.inputs.keys() {
            if signature.input_index(name).is_none() {
                return Err(policy.error(
                    input_key(name, ""),
                    PolicyErrorKind::UnknownInput {
                        name: name.clone(),
                        inputs: names(),
                    },
                ));
            }
        }
        if policy.strict {
            let missing: Vec<String> = signature
                .inputs
                .iter()
                .filter(|s| !policy.inputs.contains_key(&s.name))
                .map(|s| format!("'{}'", s.name))
                .collect();
            if !missing.is_empty() {
                return Err(policy.error(
                    "strict".into(),
                    PolicyErrorKind::Uncovered {
                        inputs: missing.join(", "),
                    },
                ));
            }
        }
        // The dimension variables: `b` in `b`, `2*b`, `b + 1`.
        let vars: Vec<String> = signature
            .inputs
            .iter()
            .flat_map(|s| &s.shape)
            .filter_map(|d| match d {
                Dim::Symbolic(s) => Some(
                    crate::dims::DimExpr::parse(s).map_or_else(|_| vec![s.clone()], |e| e.vars()),
                ),
                Dim::Static(_) => None,
            })
            .flatten()
            .collect();
        let symbolic: Vec<&str> = vars.iter().map(String::as_str).collect();
        for name in policy.dims.keys().chain(policy.dims_min.keys()) {
            if !symbolic.contains(&name.as_str()) {
                let mut have: Vec<&str> = symbolic.clone();
                have.sort_unstable();
                have.dedup();
                return Err(policy.error(
                    format!("dims.{}", super::policy::toml_key(name)),
                    PolicyErrorKind::UnknownDim {
                        name: name.clone(),
                        dims: if have.is_empty() {
                            "none".into()
                        } else {
                            have.join(", ")
                        },
                    },
                ));
            }
        }
        let default = InputPolicy::default();
        let mut inputs = Vec::with_capacity(signature.inputs.len());
        for spec in &signature.inputs {
            let ip = policy.inputs.get(&spec.name);
            inputs.push(resolve(
                &policy,
                spec,
                ip.unwrap_or(&default),
                ip.is_some(),
            )?);
        }
        let all_static: Option<Vec<Vec<u64>>> = signature
            .inputs
            .iter()
            .map(TensorSpec::static_shape)
            .collect();
        if let (Some(limit), Some(shapes)) = (policy.max_total_bytes, all_static) {
            let total: Option<u64> = shapes
                .iter()
                .zip(&signature.inputs)
                .try_fold(0u64, |a, (s, spec)| {
                    a.checked_add(product(s)?.checked_mul(spec.dtype.size() as u64)?)
                });
            if total.is_none_or(|t| t > limit) {
                return Err(policy.error(
                    "max_total_bytes".into(),
                    PolicyErrorKind::Unsatisfiable {
                        ty: "the inputs".into(),
                        needed: total.map_or("too many bytes".into(), |t| format!("{t} bytes")),
                        limit: format!("max_total_bytes {limit}"),
                    },
                ));
            }
        }
        Ok(BoundPolicy {
            dims: policy.dims.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            policy,
            signature: signature.clone(),
            inputs,
            pool: StagingPool::default(),
        })
    }

    /// The default policy for a signature: float inputs reject NaN and ±Inf; nothing else.
    pub fn default_for(signature: &Signature) -> BoundPolicy {
        let inputs = signature
            .inputs
            .iter()
            .map(|spec| InputRules {
                name: spec.name.clone(),
                spec: spec.clone(),
                limits: Limits::unbounded(spec.dtype),
                nan: if spec.dtype.is_float() {
                    NonFinite::Reject
                } else {
                    NonFinite::Allow
                },
                inf: if spec.dtype.is_float() {
                    NonFinite::Reject
                } else {
                    NonFinite::Allow
                },
                out_of_range: OutOfRange::Reject,
                normalize: None,
                max_elements: None,
                max_bytes: None,
                named: false,
            })
            .collect();
        BoundPolicy {
            policy: Policy::new(),
            signature: signature.clone(),
            inputs,
            dims: Vec::new(),
            pool: StagingPool::default(),
        }
    }

    /// The policy as written.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The signature it is bound to.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// The resolved rules of each input, in signature order.
    pub fn inputs(&self) -> &[InputRules] {
        &self.inputs
    }

    /// Hands the staging buffers of an uploaded call back for reuse, and returns its report.
    /// (Dropping a [`Prepared`] instead is fine; its buffers are then freed.)
    pub fn recycle(&self, prepared: Prepared) -> RunReport {
        self.pool.give(prepared.staged.into_iter().flatten());
        prepared.report
    }

    /// The effective policy as JSON: source file, model-wide limits, and rules per input.
    pub fn to_json(&self) -> serde_json::Value {
        let inputs: serde_json::Map<String, serde_json::Value> = self
            .inputs
            .iter()
            .map(|r| (r.name.clone(), r.to_json()))
            .collect();
        serde_json::json!({
            "file": self.policy.file(),
            "strict": self.policy.strict,
            "max_total_bytes": self.policy.max_total_bytes,
            "dims": self.policy.dims,
            "inputs": inputs,
        })
    }

    /// Checks inputs against the signature and every rule, without changing anything: inputs that
    /// a sanitizing rule would change pass.
    ///
    /// # Errors
    /// [`ValidationError::InvalidInput`] or [`ValidationError::PolicyViolation`].
    pub fn check(&self, inputs: &[TensorRef<'_>]) -> Result<(), ValidationError> {
        self.run(inputs, None, false).map(|_| ())
    }

    /// Checks inputs and sanitizes them into staging buffers. The observer, if any, hears about
    /// the rejection, or (on success) about each sanitization.
    ///
    /// # Errors
    /// [`ValidationError::InvalidInput`] or [`ValidationError::PolicyViolation`].
    pub fn apply(
        &self,
        inputs: &[TensorRef<'_>],
        observer: Option<&dyn PolicyObserver>,
    ) -> Result<Prepared, ValidationError> {
        self.run(inputs, observer, true)
    }

    fn run(
        &self,
        inputs: &[TensorRef<'_>],
        observer: Option<&dyn PolicyObserver>,
        sanitize: bool,
    ) -> Result<Prepared, ValidationError> {
        super::check_inputs(&self.signature, inputs)?;
        let reject = |v: PolicyViolation| -> ValidationError {
            if let Some(o) = observer {
                o.observe(&PolicyEvent {
                    input: v.input.as_deref(),
                    rule: v.rule,
                    count: v.count,
                    action: PolicyAction::Rejected,
                });
            }
            ValidationError::from(v)
        };
        if let Some(limit) = self.policy.max_total_bytes {
            let total: u64 = inputs.iter().map(|t| t.data.len() as u64).sum();
            if total > limit {
                return Err(reject(PolicyViolation {
                    input: None,
                    rule: Rule::MaxTotalBytes,
                    count: total,
                    limit: Some(limit.to_string()),
                    first: None,
                    dim: None,
                }));
            }
        }
        let mut prepared = Prepared {
            staged: Vec::with_capacity(inputs.len()),
            report: RunReport::default(),
        };
        for (index, (r, t)) in self.inputs.iter().zip(inputs).enumerate() {
            self.check_sizes(r, t).map_err(reject)?;
            let pool = sanitize.then_some(&self.pool);
            let (staged, changes) = evaluate(r, t, pool).map_err(|e| match e {
                Eval::Violation(v) => reject(*v),
                Eval::Internal(s) => ValidationError::Internal(s),
            })?;
            prepared.staged.push(staged);
            if !changes.is_empty() {
                prepared.report.inputs.push(InputReport {
                    name: r.name.clone(),
                    index,
                    changes,
                });
            }
        }
        if let Some(o) = observer {
            for ir in &prepared.report.inputs {
                for c in &ir.changes {
                    o.observe(&PolicyEvent {
                        input: Some(&ir.name),
                        rule: c.rule,
                        count: c.count,
                        action: PolicyAction::Sanitized,
                    });
                }
            }
        }
        Ok(prepared)
    }

    /// Checks solved dimension variables against the policy's `[dims]` bounds.
    ///
    /// # Errors
    /// [`ValidationError::PolicyViolation`] naming the variable, where it occurs, and the bound.
    pub fn check_dims(&self, bindings: &crate::dims::Bindings) -> Result<(), ValidationError> {
        for (name, &value) in bindings {
            let value = u64::try_from(value).unwrap_or(0);
            let max = self.policy.dims.get(name).filter(|&&m| value > m);
            let min = self.policy.dims_min.get(name).filter(|&&m| value < m);
            let Some(&limit) = max.or(min) else { continue };
            // Name the first input and axis where the variable is the whole dimension.
            let at = self.signature.inputs.iter().find_map(|s| {
                let axis = s
                    .shape
                    .iter()
                    .position(|d| matches!(d, Dim::Symbolic(v) if v == name))?;
                Some((s.name.clone(), axis))
            });
            return Err(ValidationError::PolicyViolation(Box::new(
                PolicyViolation {
                    input: at.as_ref().map(|(n, _)| n.clone()),
                    rule: Rule::Dim,
                    count: value,
                    limit: Some(limit.to_string()),
                    first: None,
                    dim: Some((name.clone(), at.map_or(0, |(_, a)| a))),
                },
            )));
        }
        Ok(())
    }

    fn check_sizes(&self, r: &InputRules, t: &TensorRef<'_>) -> Result<(), PolicyViolation> {
        let v = |rule, count, limit: u64, dim| PolicyViolation {
            input: Some(r.name.clone()),
            rule,
            count,
            limit: Some(limit.to_string()),
            first: None,
            dim,
        };
        if let Some(limit) = r.max_elements {
            let n = product(t.shape).unwrap_or(u64::MAX);
            if n > limit {
                return Err(v(Rule::MaxElements, n, limit, None));
            }
        }
        if let Some(limit) = r.max_bytes {
            let n = t.data.len() as u64;
            if n > limit {
                return Err(v(Rule::MaxBytes, n, limit, None));
            }
        }
        for (axis, d) in r.spec.shape.iter().enumerate() {
            if let Dim::Symbolic(name) = d {
                if let Some((_, limit)) = self.dims.iter().find(|(n, _)| n == name) {
                    let got = t.shape.get(axis).copied().unwrap_or(0);
                    if got > *limit {
                        return Err(v(Rule::Dim, got, *limit, Some((name.clone(), axis))));
                    }
                }
            }
        }
        Ok(())
    }
}

enum Eval {
    Violation(Box<PolicyViolation>),
    Internal(String),
}

type Evaluated = (Option<Vec<u8>>, Vec<Change>);

/// Scans one input and decides: reject, pass unchanged, or sanitize into a staging copy (taken
/// from `pool`; no copy is made without one).
fn evaluate(
    r: &InputRules,
    t: &TensorRef<'_>,
    pool: Option<&StagingPool>,
) -> Result<Evaluated, Eval> {
    if !r.scans() {
        return Ok((None, Vec::new()));
    }
    let s = scan::scan(t.data, &r.limits).map_err(|e| Eval::Internal(e.to_string()))?;
    let violation = |rule: Rule, tally: Tally, limit: Option<Bound>| {
        let first = tally.first.map(|flat| Offender {
            flat,
            index: unravel(flat, t.shape),
            value: usize::try_from(flat)
                .ok()
                .and_then(|i| Value::read(t.dtype, t.data, i))
                .unwrap_or(Value::UInt(0)),
        });
        Eval::Violation(Box::new(PolicyViolation {
            input: Some(r.name.clone()),
            rule,
            count: tally.count,
            limit: limit.map(|b| b.to_string()),
            first,
            dim: None,
        }))
    };
    let mut changes = Vec::new();
    let mut ops = Ops::default();
    if s.nan.count > 0 {
        match r.nan {
            NonFinite::Reject => return Err(violation(Rule::Nan, s.nan, None)),
            NonFinite::Replace(v) => {
                ops.nan = Some(v);
                changes.push(Change {
                    rule: Rule::Nan,
                    count: s.nan.count,
                    to: replacement_value(r.spec.dtype, v),
                });
            }
            NonFinite::Allow => {}
        }
    }
    let inf = s.pos_inf.union(s.neg_inf);
    let (mut below, mut above) = (s.below, s.above);
    if inf.count > 0 {
        match r.inf {
            NonFinite::Reject => return Err(violation(Rule::Inf, inf, None)),
            NonFinite::Replace(v) => {
                ops.inf = Some(v);
                changes.push(Change {
                    rule: Rule::Inf,
                    count: inf.count,
                    to: replacement_value(r.spec.dtype, v),
                });
            }
            NonFinite::Allow => {
                // Let through as values: an infinity is still out of any bound.
                if r.limits.min().is_some() {
                    below = below.union(s.neg_inf);
                }
                if r.limits.max().is_some() {
                    above = above.union(s.pos_inf);
                }
            }
        }
    }
    for (rule, tally, bound, to) in [
        (Rule::Min, below, r.limits.min(), r.limits.min_value()),
        (Rule::Max, above, r.limits.max(), r.limits.max_value()),
    ] {
        if tally.count == 0 {
            continue;
        }
        match r.out_of_range {
            OutOfRange::Reject => return Err(violation(rule, tally, bound)),
            OutOfRange::Clip => {
                ops.clip = true;
                changes.push(Change {
                    rule,
                    count: tally.count,
                    to,
                });
            }
        }
    }
    if let Some(n) = &r.normalize {
        ops.normalize = Some((n.mean.clone(), n.std.clone()));
        changes.push(Change {
            rule: Rule::Normalize,
            count: s.elements,
            to: None,
        });
    }
    let staged = match pool {
        Some(pool) if !changes.is_empty() => {
            let mut buf = pool.take(t.data.len());
            sanitize::sanitize_into(&r.limits, t.data, &ops, &mut buf);
            // Normalizing can make finite values infinite (a tiny std, a huge value): the
            // NaN/Inf rules hold for what the model receives, so check the result too.
            if let (Some(n), true) = (
                &r.normalize,
                r.nan == NonFinite::Reject || r.inf == NonFinite::Reject,
            ) {
                let after = scan::scan(&buf, &Limits::unbounded(t.dtype))
                    .map_err(|e| Eval::Internal(e.to_string()))?;
                let bad = after.nan.union(after.pos_inf).union(after.neg_inf);
                if bad.count > 0 {
                    pool.give(std::iter::once(buf));
                    let limit = format!("mean {:?} std {:?}", n.mean, n.std);
                    return Err(match violation(Rule::Normalize, bad, None) {
                        Eval::Violation(mut v) => {
                            v.limit = Some(limit);
                            Eval::Violation(v)
                        }
                        other => other,
                    });
                }
            }
            Some(buf)
        }
        _ => None,
    };
    Ok((staged, changes))
}

/// The replacement as the dtype holds it.
fn replacement_value(dtype: DType, v: f64) -> Option<Value> {
    let l = Limits::new(dtype, None, None).ok()?;
    let bytes = sanitize::sanitize(
        &l,
        &vec![0xff; dtype.size()],
        &Ops {
            nan: Some(v),
            ..Ops::default()
        },
    );
    // 0xff.. is a NaN in every float dtype, so the pass writes the replacement.
    Value::read(dtype, &bytes, 0)
}

fn resolve(
    policy: &Policy,
    spec: &TensorSpec,
    ip: &InputPolicy,
    named: bool,
) -> Result<InputRules, PolicyError> {
    let key = |k: &str| input_key(&spec.name, k);
    let dtype = spec.dtype;
    // Complex inputs follow the float rules part by part (real and imaginary).
    let part = dtype.complex_part().unwrap_or(dtype);
    let float = part.is_float();
    // Attribute a bound error to the key that caused it.
    Limits::new(dtype, ip.min, None).map_err(|e| policy.error(key("min"), e.into()))?;
    Limits::new(dtype, None, ip.max).map_err(|e| policy.error(key("max"), e.into()))?;
    let limits =
        Limits::new(dtype, ip.min, ip.max).map_err(|e| policy.error(key("max"), e.into()))?;
    let float_only = |rule: &'static str| {
        policy.error(
            key(rule),
            PolicyErrorKind::FloatOnly {
                rule,
                input: spec.name.clone(),
                dtype,
            },
        )
    };
    if dtype.is_complex() && ip.normalize.is_some() {
        return Err(float_only("normalize"));
    }
    if !float {
        if ip.nan.is_some() {
            return Err(float_only("nan"));
        }
        if ip.inf.is_some() {
            return Err(float_only("inf"));
        }
        if ip.normalize.is_some() {
            return Err(float_only("normalize"));
        }
    }
    let default_nf = if float {
        NonFinite::Reject
    } else {
        NonFinite::Allow
    };
    let nan = ip.nan.unwrap_or(default_nf);
    let inf = ip.inf.unwrap_or(default_nf);
    for (k, rule) in [("nan", nan), ("inf", inf)] {
        if let NonFinite::Replace(v) = rule {
            check_replacement(policy, &key(k), part, ip, v)?;
        }
    }
    let normalize = match &ip.normalize {
        Some(n) => Some(check_normalize(policy, &key("normalize"), spec, n)?),
        None => None,
    };
    if let Some(shape) = spec.static_shape() {
        let elements = product(&shape);
        if let Some(limit) = ip.max_elements {
            if elements.is_none_or(|n| n > limit) {
                return Err(policy.error(
                    key("max_elements"),
                    PolicyErrorKind::Unsatisfiable {
                        ty: spec.type_string(),
                        needed: elements
                            .map_or("too many elements".into(), |n| format!("{n} elements")),
                        limit: format!("max_elements {limit}"),
                    },
                ));
            }
        }
        if let Some(limit) = ip.max_bytes {
            let bytes = elements.and_then(|n| n.checked_mul(dtype.size() as u64));
            if bytes.is_none_or(|n| n > limit) {
                return Err(policy.error(
                    key("max_bytes"),
                    PolicyErrorKind::Unsatisfiable {
                        ty: spec.type_string(),
                        needed: bytes.map_or("too many bytes".into(), |n| format!("{n} bytes")),
                        limit: format!("max_bytes {limit}"),
                    },
                ));
            }
        }
    }
    Ok(InputRules {
        name: spec.name.clone(),
        spec: spec.clone(),
        limits,
        nan,
        inf,
        out_of_range: ip.out_of_range,
        normalize,
        max_elements: ip.max_elements,
        max_bytes: ip.max_bytes,
        named,
    })
}

fn check_replacement(
    policy: &Policy,
    key: &str,
    dtype: DType,
    ip: &InputPolicy,
    v: f64,
) -> Result<(), PolicyError> {
    // It must fit the dtype (a bound check does exactly that) and lie within [min, max].
    Limits::new(dtype, Some(Bound::Float(v)), None).map_err(|e| {
        let e = match e {
            LimitError::DoesNotFit { dtype, lo, hi, .. } => PolicyErrorKind::BadValue {
                expected: format!("a finite {dtype} replacement ({lo} to {hi})"),
                got: format!("{v:?}"),
            },
            other => other.into(),
        };
        policy.error(key.to_string(), e)
    })?;
    // Compare what will be written (the dtype's nearest value), not the number as written.
    let w = replacement_value(dtype, v).map_or(v, Value::as_f64);
    let below = ip.min.is_some_and(|m| w < m.as_f64());
    let above = ip.max.is_some_and(|m| w > m.as_f64());
    if below || above {
        let show = |b: Option<Bound>| b.map_or("-".to_string(), |b| b.to_string());
        return Err(policy.error(
            key.to_string(),
            PolicyErrorKind::BadValue {
                expected: format!("a replacement within [{}, {}]", show(ip.min), show(ip.max)),
                got: format!("{v:?}"),
            },
        ));
    }
    Ok(())
}

fn check_normalize(
    policy: &Policy,
    key: &str,
    spec: &TensorSpec,
    n: &Normalize,
) -> Result<Normalize, PolicyError> {
    let last = match spec.shape.last() {
        Some(Dim::Static(d)) => Some(*d),
        _ => None,
    };
    for (k, v) in [("mean", &n.mean), ("std", &n.std)] {
        let ok = v.len() == 1 || (!v.is_empty() && last.is_some_and(|d| v.len() as u64 == d));
        if !ok {
            return Err(policy.error(
                format!("{key}.{k}"),
                PolicyErrorKind::NormalizeLength {
                    expected: last.map_or("a static last dimension".into(), |d| d.to_string()),
                    ty: spec.type_string(),
                    got: v.len(),
                },
            ));
        }
    }
    if let Some(bad) = n.mean.iter().find(|x| !x.is_finite()) {
        return Err(policy.error(
            format!("{key}.mean"),
            PolicyErrorKind::BadValue {
                expected: "finite values".into(),
                got: format!("{bad:?}"),
            },
        ));
    }
    if let Some(bad) = n.std.iter().find(|x| !(x.is_finite() && **x > 0.0)) {
        return Err(policy.error(
            format!("{key}.std"),
            PolicyErrorKind::BadValue {
                expected: "positive finite values".into(),
                got: format!("{bad:?}"),
            },
        ));
    }
    // One length for both, so that the pass indexes them the same way.
    let len = n.mean.len().max(n.std.len());
    let widen = |v: &[f64]| {
        if v.len() == len {
            v.to_vec()
        } else {
            // Non-empty (checked above).
            vec![v.first().copied().unwrap_or(1.0); len]
        }
    };
    Ok(Normalize {
        mean: widen(&n.mean),
        std: widen(&n.std),
    })
}
