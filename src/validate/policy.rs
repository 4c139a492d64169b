//! Value policies: what each input's values may be, and what to do with those that are not.
//!
//! A policy lives beside the artifact (`model.jaxexport` → `model.policy.toml`), is passed with
//! `--policy`, or is built in code:
//!
//! ```toml
//! strict = true                 # refuse to load unless every input has a section
//! max_total_bytes = 1048576     # all inputs of one call together
//!
//! [inputs.pixels]
//! min = 0.0                     # inclusive; integers for integer inputs
//! max = 16.0
//! out_of_range = "clip"         # or "reject" (the default)
//! nan = "reject"                # or "allow", or { replace = 0.0 }; floats only
//! inf = { replace = 16.0 }      # the same choices, for +inf and -inf
//! normalize = { mean = 8.0, std = 4.0 }   # (x - mean) / std before the call; arrays = per last axis
//! max_elements = 64
//! max_bytes = 256
//!
//! [dims]
//! b = 64                        # a dimension variable's upper bound
//! s = { min = 8, max = 512 }    # or both bounds
//! ```
//!
//! ```
//! use xlaguard::validate::policy::{NonFinite, OutOfRange, Policy};
//! let mut p = Policy::new();
//! p.input("pixels").range(0.0, 16.0).out_of_range(OutOfRange::Clip).nan(NonFinite::Reject);
//! p.input("ids").range(0, 49);
//! p.max_total_bytes(1 << 20);
//! let text = p.to_toml();
//! assert_eq!(Policy::from_toml(&text, None).unwrap(), p);
//! ```
//!
//! Parsing checks the file on its own (unknown keys, types, `min > max`); binding it to a
//! model's signature ([`crate::validate::enforce::BoundPolicy`]) checks the rest (input names,
//! bounds the dtype cannot hold, rules that do not apply to the dtype). Every error names the
//! file, the line and the key.

// Policy errors are the cold path (load time, or a refused call); they stay unboxed so callers
// can match on them directly. `crate::Error` boxes them.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use super::scan::{Bound, LimitError};
use crate::signature::DType;

/// What to do with NaN (or infinite) values of a float input.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinite {
    /// Refuse the call (the default for float inputs).
    Reject,
    /// Let them through unchanged (an infinity is then still subject to `min`/`max`).
    Allow,
    /// Replace each with this value (which must fit the dtype and lie within `min`/`max`).
    Replace(f64),
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NonFinite::Reject => f.write_str("reject"),
            NonFinite::Allow => f.write_str("allow"),
            NonFinite::Replace(v) => write!(f, "replace with {v:?}"),
        }
    }
}

/// What to do with values outside `[min, max]`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OutOfRange {
    /// Refuse the call (the default).
    #[default]
    Reject,
    /// Clamp each to the nearest bound.
    Clip,
}

impl fmt::Display for OutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutOfRange::Reject => "reject",
            OutOfRange::Clip => "clip",
        })
    }
}

/// `(x - mean) / std` before the call: one value each (scalar), or one per element of the last
/// axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Subtracted first.
    pub mean: Vec<f64>,
    /// Divided by next; every value positive and finite.
    pub std: Vec<f64>,
}

/// The rules for one input. Unset fields take the defaults: floats reject NaN and infinities,
/// out-of-range values are rejected, nothing else is checked.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct InputPolicy {
    /// Inclusive lower bound.
    pub min: Option<Bound>,
    /// Inclusive upper bound.
    pub max: Option<Bound>,
    /// NaN handling (floats only; `None`: reject).
    pub nan: Option<NonFinite>,
    /// ±Inf handling (floats only; `None`: reject).
    pub inf: Option<NonFinite>,
    /// Out-of-range handling.
    pub out_of_range: OutOfRange,
    /// Normalization applied before the call (floats only).
    pub normalize: Option<Normalize>,
    /// Most elements this input may have.
    pub max_elements: Option<u64>,
    /// Most bytes this input may have.
    pub max_bytes: Option<u64>,
}

impl InputPolicy {
    /// Sets the inclusive lower bound.
    pub fn min(&mut self, v: impl Into<Bound>) -> &mut Self {
        self.min = Some(v.into());
        self
    }

    /// Sets the inclusive upper bound.
    pub fn max(&mut self, v: impl Into<Bound>) -> &mut Self {
        self.max = Some(v.into());
        self
    }

    /// Sets both bounds.
    pub fn range(&mut self, min: impl Into<Bound>, max: impl Into<Bound>) -> &mut Self {
        self.min(min).max(max)
    }

    /// Sets NaN handling.
    pub fn nan(&mut self, rule: NonFinite) -> &mut Self {
        self.nan = Some(rule);
        self
    }

    /// Sets ±Inf handling.
    pub fn inf(&mut self, rule: NonFinite) -> &mut Self {
        self.inf = Some(rule);
        self
    }

    /// Sets out-of-range handling.
    pub fn out_of_range(&mut self, rule: OutOfRange) -> &mut Self {
        self.out_of_range = rule;
        self
    }

    /// Normalizes with a scalar mean and std, or one per element of the last axis.
    pub fn normalize(&mut self, mean: Vec<f64>, std: Vec<f64>) -> &mut Self {
        self.normalize = Some(Normalize { mean, std });
        self
    }

    /// Sets the element limit.
    pub fn max_elements(&mut self, n: u64) -> &mut Self {
        self.max_elements = Some(n);
        self
    }

    /// Sets the byte limit.
    pub fn max_bytes(&mut self, n: u64) -> &mut Self {
        self.max_bytes = Some(n);
        self
    }
}

/// Where a policy came from: its file and the line of each key, for error messages.
#[derive(Clone, Debug, Default)]
struct Origin {
    file: Option<String>,
    lines: BTreeMap<String, usize>,
}

// Where a policy came from does not change what it says.
impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

/// A model's value policy. See the [module documentation](self) for the file format.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Policy {
    /// Rules per input name.
    pub inputs: BTreeMap<String, InputPolicy>,
    /// Most bytes all inputs of one call may have together.
    pub max_total_bytes: Option<u64>,
    /// Refuse to bind unless every input of the model has rules here.
    pub strict: bool,
    /// Upper bounds of dimension variables, by name (`b <= 64`).
    pub dims: BTreeMap<String, u64>,
    /// Lower bounds of dimension variables, by name (`s >= 8`).
    pub dims_min: BTreeMap<String, u64>,
    origin: Origin,
}

/// A policy file that cannot be read, parsed, or bound to the model: the file, line and key,
/// and what was wrong. Displays as `model.policy.toml:4: inputs.pixels.max: ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyError {
    /// The policy file (`None` for a policy built in code).
    pub file: Option<String>,
    /// 1-based line of the offending key or value, when known.
    pub line: Option<usize>,
    /// Dotted key, e.g. `inputs.pixels.max` (empty for syntax and I/O errors).
    pub key: String,
    /// What was wrong.
    pub kind: PolicyErrorKind,
}

impl std::error::Error for PolicyError {}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.place(), self.kind)
    }
}

impl PolicyError {
    fn place(&self) -> String {
        let mut s = self.file.clone().unwrap_or_else(|| "policy".to_string());
        if let Some(l) = self.line {
            s.push_str(&format!(":{l}"));
        }
        s.push_str(": ");
        if !self.key.is_empty() {
            s.push_str(&self.key);
            s.push_str(": ");
        }
        s
    }
}

/// What was wrong with a policy.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyErrorKind {
    /// The file could not be read.
    #[error("{0}")]
    Io(String),
    /// Not valid TOML.
    #[error("invalid TOML: {0}")]
    Syntax(String),
    /// A key the format does not have.
    #[error("unknown key; expected one of {expected}")]
    UnknownKey {
        /// The keys allowed here.
        expected: &'static str,
    },
    /// A value of the wrong TOML type.
    #[error("expected {expected}, got {got}")]
    WrongType {
        /// What the key takes.
        expected: &'static str,
        /// The TOML type given.
        got: String,
    },
    /// A value of the right type that is not allowed.
    #[error("expected {expected}, got {got}")]
    BadValue {
        /// What the key takes.
        expected: String,
        /// What was given.
        got: String,
    },
    /// A bound that does not fit the input, or `min > max`.
    #[error(transparent)]
    Limit(#[from] LimitError),
    /// An input name the model does not have.
    #[error("the model has no input '{name}'; its inputs are {inputs}")]
    UnknownInput {
        /// The name in the policy.
        name: String,
        /// The model's inputs.
        inputs: String,
    },
    /// A symbolic dimension the model does not have.
    #[error("the model has no symbolic dimension '{name}'; it has {dims}")]
    UnknownDim {
        /// The name in the policy.
        name: String,
        /// The model's symbolic dimensions.
        dims: String,
    },
    /// A rule that does not apply to the input's dtype.
    #[error("'{rule}' applies to float inputs only; input '{input}' is {dtype}")]
    FloatOnly {
        /// The rule.
        rule: &'static str,
        /// The input.
        input: String,
        /// Its dtype.
        dtype: DType,
    },
    /// A `normalize` array whose length is not the input's last dimension.
    #[error("expected 1 or {expected} values (the last dimension of {ty}), got {got}")]
    NormalizeLength {
        /// The last dimension (0 when it is not static or the input is a scalar).
        expected: String,
        /// The input's type.
        ty: String,
        /// Values given.
        got: usize,
    },
    /// `strict = true` but some inputs have no rules.
    #[error("strict policy has no rules for input(s) {inputs}")]
    Uncovered {
        /// The inputs without rules.
        inputs: String,
    },
    /// A limit that no input of the model's static signature can meet.
    #[error("{ty} has {needed}, above {limit}: no call could pass")]
    Unsatisfiable {
        /// The type(s).
        ty: String,
        /// What the signature needs, e.g. `64 elements`.
        needed: String,
        /// The limit, e.g. `max_elements 32`.
        limit: String,
    },
}

const TOP_KEYS: &str = "inputs, max_total_bytes, strict, dims";
const INPUT_KEYS: &str = "min, max, nan, inf, out_of_range, normalize, max_elements, max_bytes";

/// A TOML key, quoted unless it is bare.
pub(crate) fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        k.to_string()
    } else {
        toml_string(k)
    }
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A float as TOML writes it (`16.0`, `1e-7`, `inf`, `nan`).
fn toml_float(v: f64) -> String {
    if v.is_nan() {
        "nan".into()
    } else if v.is_infinite() {
        if v > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        format!("{v:?}")
    }
}

fn toml_bound(b: Bound) -> String {
    match b {
        Bound::Int(i) => i.to_string(),
        Bound::Float(f) => toml_float(f),
    }
}

fn toml_non_finite(r: NonFinite) -> String {
    match r {
        NonFinite::Reject => "\"reject\"".into(),
        NonFinite::Allow => "\"allow\"".into(),
        NonFinite::Replace(v) => format!("{{ replace = {} }}", toml_float(v)),
    }
}

fn toml_floats(v: &[f64]) -> String {
    match v {
        [x] => toml_float(*x),
        _ => format!(
            "[{}]",
            v.iter()
                .map(|x| toml_float(*x))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The dotted path of an input's key.
pub(crate) fn input_key(name: &str, key: &str) -> String {
    if key.is_empty() {
        format!("inputs.{}", toml_key(name))
    } else {
        format!("inputs.{}.{key}", toml_key(name))
    }
}

impl Policy {
    /// An empty policy: the defaults (floats reject NaN and infinities).
    pub fn new() -> Policy {
        Policy::default()
    }

    /// The rules of an input, created empty if missing (the builder entry point).
    pub fn input(&mut self, name: &str) -> &mut InputPolicy {
        self.inputs.entry(name.to_string()).or_default()
    }

    /// Sets the per-call byte limit for all inputs together.
    pub fn max_total_bytes(&mut self, n: u64) -> &mut Self {
        self.max_total_bytes = Some(n);
        self
    }

    /// Requires rules for every input.
    pub fn strict(&mut self, yes: bool) -> &mut Self {
        self.strict = yes;
        self
    }

    /// Bounds a dimension variable: `name <= max`.
    pub fn dim(&mut self, name: &str, max: u64) -> &mut Self {
        self.dims.insert(name.to_string(), max);
        self
    }

    /// Bounds a dimension variable from below: `name >= min`.
    pub fn dim_min(&mut self, name: &str, min: u64) -> &mut Self {
        self.dims_min.insert(name.to_string(), min);
        self
    }

    /// The file this policy was read from, if any.
    pub fn file(&self) -> Option<&str> {
        self.origin.file.as_deref()
    }

    /// The policy file conventionally beside a model: the model's file name with its last
    /// extension replaced by `.policy.toml` (`model.jaxexport` → `model.policy.toml`).
    pub fn beside(model: &Path) -> PathBuf {
        model.with_extension("policy.toml")
    }

    /// Reads and parses a policy file.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the file (and line and key) for an unreadable or malformed file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            file: Some(file.clone()),
            line: None,
            key: String::new(),
            kind: PolicyErrorKind::Io(e.to_string()),
        })?;
        Policy::from_toml(&text, Some(&file))
    }

    /// Parses policy TOML; `file` names it in errors.
    ///
    /// # Errors
    /// A [`PolicyError`] with the line and key of the first problem: invalid TOML, an unknown
    /// key, a value of the wrong type, an unknown choice, a negative limit, `min > max`.
    pub fn from_toml(text: &str, file: Option<&str>) -> Result<Policy, PolicyError> {
        let mut p = Parser {
            text,
            policy: Policy::default(),
        };
        p.policy.origin.file = file.map(str::to_string);
        let doc = DeTable::parse(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            p.err(
                line,
                String::new(),
                PolicyErrorKind::Syntax(first_line(e.message())),
            )
        })?;
        p.document(doc.get_ref())?;
        Ok(p.policy)
    }

    /// Writes the policy as TOML that [`Policy::from_toml`] reads back to an equal policy.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        if self.strict {
            out.push_str("strict = true\n");
        }
        if let Some(n) = self.max_total_bytes {
            out.push_str(&format!("max_total_bytes = {n}\n"));
        }
        if !self.dims.is_empty() || !self.dims_min.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str("[dims]\n");
            let names: std::collections::BTreeSet<&String> =
                self.dims.keys().chain(self.dims_min.keys()).collect();
            for k in names {
                match (self.dims_min.get(k), self.dims.get(k)) {
                    (None, Some(max)) => out.push_str(&format!("{} = {max}\n", toml_key(k))),
                    (Some(min), Some(max)) => out.push_str(&format!(
                        "{} = {{ min = {min}, max = {max} }}\n",
                        toml_key(k)
                    )),
                    (Some(min), None) => {
                        out.push_str(&format!("{} = {{ min = {min} }}\n", toml_key(k)))
                    }
                    (None, None) => {}
                }
            }
        }
        for (name, ip) in &self.inputs {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[inputs.{}]\n", toml_key(name)));
            if let Some(b) = ip.min {
                out.push_str(&format!("min = {}\n", toml_bound(b)));
            }
            if let Some(b) = ip.max {
                out.push_str(&format!("max = {}\n", toml_bound(b)));
            }
            if ip.out_of_range != OutOfRange::Reject {
                out.push_str(&format!("out_of_range = \"{}\"\n", ip.out_of_range));
            }
            if let Some(r) = ip.nan {
                out.push_str(&format!("nan = {}\n", toml_non_finite(r)));
            }
            if let Some(r) = ip.inf {
                out.push_str(&format!("inf = {}\n", toml_non_finite(r)));
            }
            if let Some(n) = &ip.normalize {
                out.push_str(&format!(
                    "normalize = {{ mean = {}, std = {} }}\n",
                    toml_floats(&n.mean),
                    toml_floats(&n.std)
                ));
            }
            if let Some(n) = ip.max_elements {
                out.push_str(&format!("max_elements = {n}\n"));
            }
            if let Some(n) = ip.max_bytes {
                out.push_str(&format!("max_bytes = {n}\n"));
            }
        }
        out
    }

    /// An error about `key`, placed at the line the key had in the file (if any).
    pub(crate) fn error(&self, key: String, kind: PolicyErrorKind) -> PolicyError {
        // The closest recorded ancestor gives the line: `inputs.x.max`, else `inputs.x`.
        let mut k = key.as_str();
        let line = loop {
            if let Some(&l) = self.origin.lines.get(k) {
                break Some(l);
            }
            match k.rfind('.') {
                Some(i) => k = &k[..i],
                None => break None,
            }
        };
        PolicyError {
            file: self.origin.file.clone(),
            line,
            key,
            kind,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().trim().to_string()
}

/// Entries of a table in source order (the parser stores them sorted by key).
fn entries<'a, 'i>(
    t: &'a DeTable<'i>,
) -> Vec<(
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
)> {
    let mut v: Vec<_> = t.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

struct Parser<'t> {
    text: &'t str,
    policy: Policy,
}

impl Parser<'_> {
    fn err(&self, line: Option<usize>, key: String, kind: PolicyErrorKind) -> PolicyError {
        PolicyError {
            file: self.policy.origin.file.clone(),
            line,
            key,
            kind,
        }
    }

    fn at(&self, span: Range<usize>, key: String, kind: PolicyErrorKind) -> PolicyError {
        self.err(Some(line_of(self.text, span.start)), key, kind)
    }

    fn record(&mut self, key: &str, span: Range<usize>) {
        let line = line_of(self.text, span.start);
        self.policy.origin.lines.insert(key.to_string(), line);
    }

    fn wrong_type(
        &self,
        v: &Spanned<DeValue<'_>>,
        key: String,
        expected: &'static str,
    ) -> PolicyError {
        self.at(
            v.span(),
            key,
            PolicyErrorKind::WrongType {
                expected,
                got: v.get_ref().type_str().to_string(),
            },
        )
    }

    fn table<'a, 'i>(
        &self,
        v: &'a Spanned<DeValue<'i>>,
        key: &str,
    ) -> Result<&'a DeTable<'i>, PolicyError> {
        match v.get_ref() {
            DeValue::Table(t) => Ok(t),
            _ => Err(self.wrong_type(v, key.to_string(), "a table")),
        }
    }

    fn uint(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<u64, PolicyError> {
        match v.get_ref() {
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix()).map_err(|_| {
                self.at(
                    v.span(),
                    key.to_string(),
                    PolicyErrorKind::BadValue {
                        expected: "a non-negative integer".into(),
                        got: i.to_string(),
                    },
                )
            }),
            _ => Err(self.wrong_type(v, key.to_string(), "a non-negative integer")),
        }
    }

    fn number(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<Bound, PolicyError> {
        let bad = |got: String| {
            self.at(
                v.span(),
                key.to_string(),
                PolicyErrorKind::BadValue {
                    expected: "a number".into(),
                    got,
                },
            )
        };
        match v.get_ref() {
            DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix())
                .map(Bound::Int)
                .map_err(|_| bad(i.to_string())),
            DeValue::Float(f) => f
                .as_str()
                .replace('_', "")
                .parse::<f64>()
                .map(Bound::Float)
                .map_err(|_| bad(f.to_string())),
            _ => Err(self.wrong_type(v, key.to_string(), "a number")),
        }
    }

    fn floats(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<Vec<f64>, PolicyError> {
        match v.get_ref() {
            DeValue::Array(a) => {
                if a.is_empty() {
                    return Err(self.at(
                        v.span(),
                        key.to_string(),
                        PolicyErrorKind::BadValue {
                            expected: "a number or a non-empty array of numbers".into(),
                            got: "[]".into(),
                        },
                    ));
                }
                a.iter()
                    .map(|x| self.number(x, key).map(Bound::as_f64))
                    .collect()
            }
            DeValue::Integer(_) | DeValue::Float(_) => Ok(vec![self.number(v, key)?.as_f64()]),
            _ => Err(self.wrong_type(v, key.to_string(), "a number or an array of numbers")),
        }
    }

    fn document(&mut self, doc: &DeTable<'_>) -> Result<(), PolicyError> {
        for (k, v) in entries(doc) {
            let key = k.get_ref().to_string();
            self.record(&key, k.span());
            match key.as_str() {
                "inputs" => {
                    let t = self.table(v, "inputs")?;
                    for (name, iv) in entries(t) {
                        let span = name.span();
                        let name = name.get_ref().to_string();
                        let path = input_key(&name, "");
                        self.record(&path, span);
                        let it = self.table(iv, &path)?;
                        let ip = self.input(&name, it)?;
                        self.policy.inputs.insert(name, ip);
                    }
                }
                "max_total_bytes" => self.policy.max_total_bytes = Some(self.uint(v, &key)?),
                "strict" => match v.get_ref() {
                    DeValue::Boolean(b) => self.policy.strict = *b,
                    _ => return Err(self.wrong_type(v, key, "true or false")),
                },
                "dims" => {
                    let t = self.table(v, "dims")?;
                    for (dk, dv) in entries(t) {
                        let path = format!("dims.{}", toml_key(dk.get_ref()));
                        self.record(&path, dk.span());
                        let name = dk.get_ref().to_string();
                        if let DeValue::Table(bounds) = dv.get_ref() {
                            for (bk, bv) in entries(bounds) {
                                let key = format!("{path}.{}", toml_key(bk.get_ref()));
                                self.record(&key, bk.span());
                                let n = self.uint(bv, &key)?;
                                match bk.get_ref().as_ref() {
                                    "min" => self.policy.dims_min.insert(name.clone(), n),
                                    "max" => self.policy.dims.insert(name.clone(), n),
                                    _ => {
                                        return Err(self.at(
                                            bk.span(),
                                            key,
                                            PolicyErrorKind::UnknownKey {
                                                expected: "min, max",
                                            },
                                        ))
                                    }
                                };
                            }
                        } else {
                            let n = self.uint(dv, &path)?;
                            self.policy.dims.insert(name, n);
                        }
                    }
                }
                _ => {
                    return Err(self.at(
                        k.span(),
                        key,
                        PolicyErrorKind::UnknownKey { expected: TOP_KEYS },
                    ))
                }
            }
        }
        Ok(())
    }

    fn non_finite(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<NonFinite, PolicyError> {
        const EXPECTED: &str = "\"reject\", \"allow\" or { replace = <number> }";
        match v.get_ref() {
            DeValue::String(s) => match s.as_ref() {
                "reject" => Ok(NonFinite::Reject),
                "allow" => Ok(NonFinite::Allow),
                other => Err(self.at(
                    v.span(),
                    key.to_string(),
                    PolicyErrorKind::BadValue {
                        expected: EXPECTED.into(),
                        got: format!("\"{other}\""),
                    },
                )),
            },
            DeValue::Table(t) => {
                let mut replace = None;
                for (k, x) in entries(t) {
                    let path = format!("{key}.{}", toml_key(k.get_ref()));
                    if k.get_ref() == "replace" {
                        replace = Some(self.number(x, &path)?.as_f64());
                    } else {
                        return Err(self.at(
                            k.span(),
                            path,
                            PolicyErrorKind::UnknownKey {
                                expected: "replace",
                            },
                        ));
                    }
                }
                replace.map(NonFinite::Replace).ok_or_else(|| {
                    self.at(
                        v.span(),
                        key.to_string(),
                        PolicyErrorKind::BadValue {
                            expected: EXPECTED.into(),
                            got: "a table without 'replace'".into(),
                        },
                    )
                })
            }
            _ => Err(self.wrong_type(v, key.to_string(), "\"reject\", \"allow\" or a table")),
        }
    }

    fn input(&mut self, name: &str, t: &DeTable<'_>) -> Result<InputPolicy, PolicyError> {
        let mut ip = InputPolicy::default();
        for (k, v) in entries(t) {
            let key = input_key(name, k.get_ref());
            self.record(&key, k.span());
            match k.get_ref().as_ref() {
                "min" => ip.min = Some(self.number(v, &key)?),
                "max" => ip.max = Some(self.number(v, &key)?),
                "nan" => ip.nan = Some(self.non_finite(v, &key)?),
                "inf" => ip.inf = Some(self.non_finite(v, &key)?),
                "out_of_range" => {
                    ip.out_of_range = match v.get_ref() {
                        DeValue::String(s) if s == "reject" => OutOfRange::Reject,
                        DeValue::String(s) if s == "clip" => OutOfRange::Clip,
                        DeValue::String(s) => {
                            return Err(self.at(
                                v.span(),
                                key,
                                PolicyErrorKind::BadValue {
                                    expected: "\"reject\" or \"clip\"".into(),
                                    got: format!("\"{s}\""),
                                },
                            ))
                        }
                        _ => return Err(self.wrong_type(v, key, "\"reject\" or \"clip\"")),
                    }
                }
                "normalize" => {
                    let nt = self.table(v, &key)?;
                    let (mut mean, mut std) = (None, None);
                    for (nk, nv) in entries(nt) {
                        let path = format!("{key}.{}", toml_key(nk.get_ref()));
                        match nk.get_ref().as_ref() {
                            "mean" => mean = Some(self.floats(nv, &path)?),
                            "std" => std = Some(self.floats(nv, &path)?),
                            _ => {
                                return Err(self.at(
                                    nk.span(),
                                    path,
                                    PolicyErrorKind::UnknownKey {
                                        expected: "mean, std",
                                    },
                                ))
                            }
                        }
                    }
                    match (mean, std) {
                        (Some(mean), Some(std)) => ip.normalize = Some(Normalize { mean, std }),
                        (m, _) => {
                            return Err(self.at(
                                v.span(),
                                key,
                                PolicyErrorKind::BadValue {
                                    expected: "{ mean = .., std = .. }".into(),
                                    got: format!(
                                        "a table without '{}'",
                                        if m.is_none() { "mean" } else { "std" }
                                    ),
                                },
                            ))
                        }
                    }
                }
                "max_elements" => ip.max_elements = Some(self.uint(v, &key)?),
                "max_bytes" => ip.max_bytes = Some(self.uint(v, &key)?),
                _ => {
                    return Err(self.at(
                        k.span(),
                        key,
                        PolicyErrorKind::UnknownKey {
                            expected: INPUT_KEYS,
                        },
                    ))
                }
            }
        }
        if let (Some(min), Some(max)) = (ip.min, ip.max) {
            let above = match (min, max) {
                (Bound::Int(a), Bound::Int(b)) => a > b,
                _ => min.as_f64() > max.as_f64(),
            };
            if above {
                return Err(self.policy.error(
                    input_key(name, "max"),
                    LimitError::MinAboveMax { min, max }.into(),
                ));
            }
        }
        Ok(ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Policy, PolicyError> {
        Policy::from_toml(s, Some("m.policy.toml"))
    }

    #[test]
    fn issue_example_parses() {
        let p = parse(
            "[inputs.pixels]\nmin = 0.0\nmax = 16.0\nout_of_range = \"clip\"\nnan = \"reject\"\n\n[inputs.ids]\nmin = 0\nmax = 49\n",
        )
        .unwrap();
        let px = &p.inputs["pixels"];
        assert_eq!(px.min, Some(Bound::Float(0.0)));
        assert_eq!(px.max, Some(Bound::Float(16.0)));
        assert_eq!(px.out_of_range, OutOfRange::Clip);
        assert_eq!(px.nan, Some(NonFinite::Reject));
        assert_eq!(p.inputs["ids"].max, Some(Bound::Int(49)));
        let mut q = Policy::new();
        q.input("pixels")
            .range(0.0, 16.0)
            .out_of_range(OutOfRange::Clip)
            .nan(NonFinite::Reject);
        q.input("ids").range(0, 49);
        assert_eq!(p, q);
        assert_eq!(parse(&q.to_toml()).unwrap(), q);
    }

    #[test]
    fn every_key_round_trips() {
        let mut p = Policy::new();
        p.strict(true).max_total_bytes(4096).dim("b", 64);
        p.input("x")
            .min(-1.5)
            .max(1e-7)
            .nan(NonFinite::Replace(0.0))
            .inf(NonFinite::Allow)
            .out_of_range(OutOfRange::Clip)
            .normalize(vec![0.5, 1.0], vec![2.0, 0.25])
            .max_elements(10)
            .max_bytes(40);
        p.input("weird name.'\"").min(0);
        let text = p.to_toml();
        assert_eq!(parse(&text).unwrap(), p, "{text}");
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let e = parse("[inputs.pixels]\nmin = 0\nmaxx = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "m.policy.toml:3: inputs.pixels.maxx: unknown key; expected one of {INPUT_KEYS}"
            )
        );
        let e = parse("strict = 1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.policy.toml:1: strict: expected true or false, got integer"
        );
        let e = parse("[inputs.x]\nmin = 5\nmax = 4\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.policy.toml:3: inputs.x.max: min 5 is above max 4"
        );
        let e = parse("[inputs.x]\nnan = \"drop\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.policy.toml:2: inputs.x.nan: expected \"reject\", \"allow\" or { replace = <number> }, got \"drop\""
        );
        let e = parse("max_total_bytes = -1\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.policy.toml:1: max_total_bytes: expected a non-negative integer, got -1"
        );
        let e = parse("[inputs.x]\nmin = \"0\"\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "m.policy.toml:2: inputs.x.min: expected a number, got string"
        );
        let e = parse("[inputs.x]\nnormalize = { mean = 1.0 }\n").unwrap_err();
        assert!(e.to_string().contains("without 'std'"), "{e}");
        let e = parse("[inputs.x\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(
            e.to_string().starts_with("m.policy.toml:1: invalid TOML"),
            "{e}"
        );
        let e = parse("\n\nfoo = 1\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key, "foo");
    }

    #[test]
    fn number_forms() {
        let p = parse("[inputs.x]\nmin = -1_000\nmax = 1_000.5\n").unwrap();
        assert_eq!(p.inputs["x"].min, Some(Bound::Int(-1000)));
        assert_eq!(p.inputs["x"].max, Some(Bound::Float(1000.5)));
        let p = parse("[inputs.x]\nmax = 0x10\n").unwrap();
        assert_eq!(p.inputs["x"].max, Some(Bound::Int(16)));
    }
}
