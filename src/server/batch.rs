//! Dynamic batching: concurrent requests to one model merged into one execution.
//!
//! Per model, `config.toml`:
//! ```toml
//! [batching]
//! sizes = [1, 2, 4, 8, 16, 32]   # batch sizes executed; a batch is padded up to the next one
//! max_queue_delay_us = 0         # default 0: batch only what is already waiting
//! pad = "zeros"                  # or "repeat_last": what the padding rows hold
//! batch_dim = 0                  # the dimension requests are stacked along
//! ```
//!
//! Works with a shape-polymorphic model whose inputs and outputs all have one dimension
//! variable (`b`) at `batch_dim`, and with a bundle of static exports of one function at several
//! batch sizes (`model.b1.jaxexport`, `model.b8.jaxexport`, ...; [`Bundle`]).
//!
//! - Each request is decoded and validated alone (signature, value policy, dimension bounds)
//!   before it joins a batch: its errors are its own. Requests join a batch only with requests
//!   of equal non-batch dimensions, up to the largest size; each gets exactly its rows back.
//! - One task per model owns the queue ([`Batcher`]: a cloneable handle, oneshot replies). It
//!   takes one free execution slot (the model's `[limits] workers`) for each batch: while a slot
//!   is free a lone request runs at once, and requests that arrive while every slot is busy wait
//!   and leave together. Requests whose client went away or whose deadline passed are dropped
//!   from the queue before a batch is formed.
//! - At load, [`gate`] checks for each size that a padded batch gives bit-identical rows to each
//!   of its rows run alone at that size; a model whose rows interact is served unbatched.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};

use crate::engine::Model;
use crate::signature::{DType, Dim, Signature, TensorSpec};
use crate::tensor::{byte_len, Tensor, TensorRef};

use super::fault::{CoreError, ErrorKind};
pub use super::metrics::BatchMetrics;
use super::wire::InputTensor;

/// What padding rows hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pad {
    /// Zeros (the default).
    Zeros,
    /// Copies of the batch's last real row (for models whose policy refuses zeros).
    RepeatLast,
}

impl Pad {
    /// The name `config.toml` uses.
    pub fn name(self) -> &'static str {
        match self {
            Pad::Zeros => "zeros",
            Pad::RepeatLast => "repeat_last",
        }
    }
}

/// A model's `[batching]` settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Batch sizes executed, ascending; a batch is padded up to the next one.
    pub sizes: Vec<u64>,
    /// How long the first request of a batch may wait for more (default 0).
    pub max_queue_delay: Duration,
    /// What padding rows hold.
    pub pad: Pad,
    /// The dimension requests are stacked along.
    pub batch_dim: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            sizes: vec![1, 2, 4, 8, 16, 32],
            max_queue_delay: Duration::ZERO,
            pad: Pad::Zeros,
            batch_dim: 0,
        }
    }
}

impl BatchConfig {
    /// The largest size.
    pub fn max_size(&self) -> u64 {
        self.sizes.last().copied().unwrap_or(1)
    }

    /// The smallest size that holds `rows`.
    pub fn size_for(&self, rows: u64) -> Option<u64> {
        self.sizes.iter().copied().find(|&s| s >= rows)
    }

    /// The settings as JSON, for the config endpoint and `inspect`.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        let v = serde_json::json!({
            "sizes": self.sizes,
            "max_queue_delay_us": u64::try_from(self.max_queue_delay.as_micros()).unwrap_or(u64::MAX),
            "pad": self.pad.name(),
            "batch_dim": self.batch_dim,
        });
        match v {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        }
    }
}

/// Static exports of one function at several batch sizes, served as one model whose batch
/// dimension is `b`.
#[derive(Debug)]
pub struct Bundle {
    signature: Signature,
    batch_dim: usize,
    models: Vec<(u64, Model)>,
}

fn with_batch_var(spec: &TensorSpec, dim: usize) -> TensorSpec {
    let mut s = spec.clone();
    if let Some(d) = s.shape.get_mut(dim) {
        *d = Dim::Symbolic("b".into());
    }
    s
}

impl Bundle {
    /// The bundle of `models` (batch size, model). Every input and output of each must have
    /// the model's batch size at `batch_dim`, and be otherwise the same in every model.
    ///
    /// # Errors
    /// A message naming the size, tensor and what differs.
    pub fn new(mut models: Vec<(u64, Model)>, batch_dim: usize) -> Result<Bundle, String> {
        models.sort_by_key(|(n, _)| *n);
        let Some((first_n, first)) = models.first() else {
            return Err("an empty bundle".into());
        };
        let general = |sig: &Signature, n: u64| -> Result<Signature, String> {
            let check = |s: &TensorSpec| -> Result<TensorSpec, String> {
                match s.shape.get(batch_dim) {
                    Some(Dim::Static(d)) if *d == n => Ok(with_batch_var(s, batch_dim)),
                    _ => Err(format!(
                        "model.b{n}: '{}' is {}, without {n} at dimension {batch_dim} \
                         (batch_dim)",
                        s.name,
                        s.type_string()
                    )),
                }
            };
            Ok(Signature {
                inputs: sig.inputs.iter().map(check).collect::<Result<_, _>>()?,
                outputs: sig.outputs.iter().map(check).collect::<Result<_, _>>()?,
            })
        };
        let signature = general(first.signature(), *first_n)?;
        for pair in models.windows(2) {
            if let [(a, _), (b, _)] = pair {
                if a == b {
                    return Err(format!("two exports for batch size {a}"));
                }
            }
        }
        for (n, m) in models.iter().skip(1) {
            let g = general(m.signature(), *n)?;
            if g != signature {
                let show = |s: &Signature| {
                    s.inputs
                        .iter()
                        .chain(&s.outputs)
                        .map(|t| format!("{}: {}", t.name, t.type_string()))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                return Err(format!(
                    "model.b{n} is not model.b{first_n} at another batch size: ({}) vs ({})",
                    show(&g),
                    show(&signature)
                ));
            }
        }
        Ok(Bundle {
            signature,
            batch_dim,
            models,
        })
    }

    /// The exported batch sizes, ascending.
    pub fn sizes(&self) -> Vec<u64> {
        self.models.iter().map(|(n, _)| *n).collect()
    }

    fn model(&self, size: u64) -> Option<&Model> {
        self.models.iter().find(|(n, _)| *n == size).map(|(_, m)| m)
    }
}

/// What executes a model's requests: one (usually shape-polymorphic) model, or a bundle.
// One per model, behind an `Arc`: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Runner {
    /// One model.
    Model(Model),
    /// Static exports per batch size.
    Bundle(Bundle),
}

impl Runner {
    /// The signature clients see (a bundle's batch dimension is `b`).
    pub fn signature(&self) -> &Signature {
        match self {
            Runner::Model(m) => m.signature(),
            Runner::Bundle(b) => &b.signature,
        }
    }

    /// The (first) model, for what every model of a bundle shares.
    pub fn first(&self) -> Option<&Model> {
        match self {
            Runner::Model(m) => Some(m),
            Runner::Bundle(b) => b.models.first().map(|(_, m)| m),
        }
    }

    /// Whether every model runs in this process (none in execution workers).
    pub fn in_process(&self) -> bool {
        let here = |m: &Model| m.execution() == crate::exec::Execution::InProcess;
        match self {
            Runner::Model(m) => here(m),
            Runner::Bundle(b) => b.models.iter().all(|(_, m)| here(m)),
        }
    }

    /// Every model (to set a policy or bind params on each).
    pub fn models_mut(&mut self) -> Vec<&mut Model> {
        match self {
            Runner::Model(m) => vec![m],
            Runner::Bundle(b) => b.models.iter_mut().map(|(_, m)| m).collect(),
        }
    }

    /// Runs one request alone. A bundle takes only its exported batch sizes this way.
    ///
    /// # Errors
    /// Invalid input (400), or the execution's error.
    pub fn run(&self, inputs: &[TensorRef<'_>]) -> Result<Vec<Tensor>, CoreError> {
        match self {
            Runner::Model(m) => Ok(m.run(inputs)?),
            Runner::Bundle(b) => {
                crate::validate::check_inputs(&b.signature, inputs).map_err(crate::Error::from)?;
                let rows = rows_of(&b.signature, inputs, b.batch_dim)?;
                match b.model(rows) {
                    Some(m) => Ok(m.run(inputs)?),
                    None => Err(bad_rows(format!(
                        "this model is a bundle of exports at batch sizes {} and serves only \
                         those (its batching is off); got {rows} rows",
                        list(&b.sizes())
                    ))),
                }
            }
        }
    }

    /// Runs inputs of exactly `size` rows (a size the plan checked).
    fn run_size(&self, size: u64, inputs: &[TensorRef<'_>]) -> Result<Vec<Tensor>, crate::Error> {
        match self {
            Runner::Model(m) => m.run(inputs),
            Runner::Bundle(b) => b
                .model(size)
                .ok_or_else(|| crate::Error::Internal(format!("no export for batch size {size}")))?
                .run(inputs),
        }
    }
}

fn list(sizes: &[u64]) -> String {
    sizes
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn bad_rows(message: String) -> CoreError {
    CoreError {
        rejection: Some(("batch", String::new())),
        ..CoreError::new(ErrorKind::InvalidInput, message)
    }
}

/// The rows of a request: the size at `dim`, the same in every input.
fn rows_of(sig: &Signature, inputs: &[TensorRef<'_>], dim: usize) -> Result<u64, CoreError> {
    let mut rows: Option<(u64, &str)> = None;
    for (spec, t) in sig.inputs.iter().zip(inputs) {
        let n = t.shape.get(dim).copied().unwrap_or(0);
        match rows {
            None => rows = Some((n, &spec.name)),
            Some((r, first)) if r != n => {
                return Err(bad_rows(format!(
                    "input '{}' has {n} rows (dimension {dim}) but input '{first}' has {r}: \
                     every input of a request needs the same number",
                    spec.name
                )))
            }
            Some(_) => {}
        }
    }
    Ok(rows.map_or(0, |(r, _)| r))
}

/// How a checked request is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// It joins a batch with this many rows.
    Batch(u64),
    /// It runs alone (more rows than the largest size; polymorphic models only).
    Alone,
}

/// Checks batching fits the model's signature: every input and output has the batch dimension
/// (a polymorphic model: one dimension variable, used nowhere else), and a bundle has every
/// configured size.
///
/// # Errors
/// Why the model cannot be batched.
pub fn check_plan(runner: &Runner, config: &BatchConfig) -> Result<(), String> {
    if config.sizes.is_empty() || config.sizes.contains(&0) {
        return Err("[batching] sizes must be batch sizes of at least 1".into());
    }
    if config
        .sizes
        .windows(2)
        .any(|w| matches!(w, [a, b] if a >= b))
    {
        return Err("[batching] sizes must be ascending without repeats".into());
    }
    let dim = config.batch_dim;
    let sig = runner.signature();
    if sig.inputs.is_empty() {
        return Err("the model takes no request inputs to batch".into());
    }
    match runner {
        Runner::Bundle(b) => {
            let have = b.sizes();
            if let Some(missing) = config.sizes.iter().find(|s| !have.contains(s)) {
                return Err(format!(
                    "[batching] sizes has {missing}, but the bundle has exports for {} only",
                    list(&have)
                ));
            }
            if b.batch_dim != dim {
                return Err("internal: the bundle was made for another batch_dim".into());
            }
        }
        Runner::Model(m) => {
            if !m.is_polymorphic() {
                return Err(format!(
                    "the model is static ({}); batching needs a symbolic batch dimension or a \
                     bundle of exports per batch size (model.b1.jaxexport, model.b8.jaxexport, \
                     ...)",
                    sig.inputs
                        .iter()
                        .map(TensorSpec::type_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            let var = match sig.inputs.first().and_then(|s| s.shape.get(dim)) {
                Some(Dim::Symbolic(v)) if is_ident(v) => v.clone(),
                _ => {
                    return Err(format!(
                        "input '{}' has no dimension variable at dimension {dim} (batch_dim)",
                        sig.inputs.first().map_or("", |s| s.name.as_str())
                    ))
                }
            };
            for s in sig.inputs.iter().chain(&sig.outputs) {
                for (axis, d) in s.shape.iter().enumerate() {
                    let Dim::Symbolic(e) = d else { continue };
                    let here = axis == dim;
                    if here && *e != var {
                        return Err(format!(
                            "'{}' is {}: dimension {dim} (batch_dim) must be '{var}' in every \
                             input and output",
                            s.name,
                            s.type_string()
                        ));
                    }
                    if !here && mentions(e, &var) {
                        return Err(format!(
                            "'{}' is {}: the batch variable '{var}' is used outside dimension \
                             {dim}, so requests cannot be stacked",
                            s.name,
                            s.type_string()
                        ));
                    }
                }
                if !matches!(s.shape.get(dim), Some(Dim::Symbolic(_))) {
                    return Err(format!(
                        "'{}' is {}: it has no batch dimension {dim}, so it cannot be split \
                         back per request",
                        s.name,
                        s.type_string()
                    ));
                }
            }
        }
    }
    Ok(())
}

fn is_ident(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

fn mentions(expr: &str, var: &str) -> bool {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|t| t == var)
}

/// Checks one request on its own (signature, value policy, dimension bounds) and says how it
/// is served.
///
/// # Errors
/// The request's own error (400 for bad input).
pub fn admit(
    runner: &Runner,
    config: &BatchConfig,
    inputs: &[TensorRef<'_>],
) -> Result<Admit, CoreError> {
    let sig = runner.signature();
    crate::validate::check_inputs(sig, inputs).map_err(crate::Error::from)?;
    let rows = rows_of(sig, inputs, config.batch_dim)?;
    match runner {
        Runner::Model(m) => {
            m.validate(inputs)?;
            Ok(if rows > config.max_size() {
                Admit::Alone
            } else {
                Admit::Batch(rows)
            })
        }
        Runner::Bundle(b) => {
            let Some(size) = config.size_for(rows).filter(|_| rows > 0) else {
                return Err(bad_rows(format!(
                    "{rows} rows: this model serves batches of 1 to {} rows (exports at batch \
                     sizes {})",
                    config.max_size(),
                    list(&config.sizes)
                )));
            };
            let m = b
                .model(size)
                .ok_or_else(|| CoreError::from(crate::Error::Internal("no export".into())))?;
            // Validated at the export's size, padded with its own rows (values it has).
            let padded = stack(&[inputs], &[rows], size, config.batch_dim, Pad::RepeatLast)
                .map_err(CoreError::from)?;
            let views: Vec<TensorRef<'_>> = padded.iter().map(Tensor::view).collect();
            m.validate(&views)?;
            Ok(Admit::Batch(rows))
        }
    }
}

/// Stacks the requests' inputs along `dim` and pads up to `size` rows.
fn stack(
    parts: &[&[TensorRef<'_>]],
    rows: &[u64],
    size: u64,
    dim: usize,
    pad: Pad,
) -> Result<Vec<Tensor>, crate::Error> {
    let internal = |m: &str| crate::Error::Internal(format!("batching: {m}"));
    let first = parts.first().ok_or_else(|| internal("no requests"))?;
    let total: u64 = rows.iter().sum();
    let mut out = Vec::with_capacity(first.len());
    for (i, t0) in first.iter().enumerate() {
        let outer: u64 = t0.shape.iter().take(dim).product();
        let inner_elems: u64 = t0.shape.iter().skip(dim + 1).product();
        let row = byte_len(t0.dtype, &[inner_elems]).ok_or_else(|| internal("size"))?;
        let size_us = usize::try_from(size).map_err(|_| internal("size"))?;
        let outer_us = usize::try_from(outer).map_err(|_| internal("size"))?;
        let mut data = Vec::with_capacity(outer_us * size_us * row);
        for o in 0..outer_us {
            for (part, &n) in parts.iter().zip(rows) {
                let t = part.get(i).ok_or_else(|| internal("input count"))?;
                let n = usize::try_from(n).map_err(|_| internal("rows"))?;
                let chunk = t
                    .data
                    .get(o * n * row..(o + 1) * n * row)
                    .ok_or_else(|| internal("input length"))?;
                data.extend_from_slice(chunk);
            }
            let missing = usize::try_from(size.saturating_sub(total)).unwrap_or(0);
            match pad {
                Pad::Zeros => data.resize(data.len() + missing * row, 0),
                Pad::RepeatLast => {
                    let start = data.len().saturating_sub(row);
                    for _ in 0..missing {
                        data.extend_from_within(start..start + row);
                    }
                }
            }
        }
        let mut shape = t0.shape.to_vec();
        if let Some(d) = shape.get_mut(dim) {
            *d = size;
        }
        out.push(Tensor::new(t0.dtype, shape, data)?);
    }
    Ok(out)
}

/// Cuts each output into the requests' rows (padding rows are dropped).
fn split(outputs: Vec<Tensor>, rows: &[u64], dim: usize) -> Result<Vec<Vec<Tensor>>, crate::Error> {
    let internal = |m: &str| crate::Error::Internal(format!("batching: {m}"));
    let mut per: Vec<Vec<Tensor>> = rows.iter().map(|_| Vec::new()).collect();
    for t in outputs {
        let shape = t.shape();
        let size = shape
            .get(dim)
            .copied()
            .ok_or_else(|| internal("output rank"))?;
        let outer: u64 = shape.iter().take(dim).product();
        let inner_elems: u64 = shape.iter().skip(dim + 1).product();
        let row = byte_len(t.dtype(), &[inner_elems]).ok_or_else(|| internal("size"))?;
        let size = usize::try_from(size).map_err(|_| internal("size"))?;
        let outer = usize::try_from(outer).map_err(|_| internal("size"))?;
        let mut off = 0usize;
        for (dst, &n) in per.iter_mut().zip(rows) {
            let n = usize::try_from(n).map_err(|_| internal("rows"))?;
            let mut data = Vec::with_capacity(outer * n * row);
            for o in 0..outer {
                let a = (o * size + off) * row;
                let chunk = t
                    .bytes()
                    .get(a..a + n * row)
                    .ok_or_else(|| internal("output length"))?;
                data.extend_from_slice(chunk);
            }
            let mut s = shape.to_vec();
            if let Some(d) = s.get_mut(dim) {
                *d = n as u64;
            }
            dst.push(Tensor::new(t.dtype(), s, data)?);
            off += n;
        }
    }
    Ok(per)
}

/// Runs the requests (`rows` each) as one batch padded to the plan's next size; returns each
/// request's outputs and the size executed.
///
/// # Errors
/// The execution's error (shared by the whole batch).
pub fn run_batch(
    runner: &Runner,
    config: &BatchConfig,
    parts: &[&[TensorRef<'_>]],
    rows: &[u64],
) -> Result<(Vec<Vec<Tensor>>, u64), crate::Error> {
    let total: u64 = rows.iter().sum();
    let size = config
        .size_for(total)
        .ok_or_else(|| crate::Error::Internal(format!("a batch of {total} rows")))?;
    let stacked = stack(parts, rows, size, config.batch_dim, config.pad)?;
    let views: Vec<TensorRef<'_>> = stacked.iter().map(Tensor::view).collect();
    let outs = runner.run_size(size, &views)?;
    Ok((split(outs, rows, config.batch_dim)?, size))
}

/// Deterministic probe values: small, finite, distinct per row (`seed`).
fn probe(dtype: DType, elems: usize, seed: u64) -> Vec<u8> {
    let seed = u8::try_from(seed % 251).unwrap_or(0);
    let v = |e: usize| -> u8 {
        let e = u8::try_from(e % 251).unwrap_or(0);
        seed.wrapping_mul(31).wrapping_add(e.wrapping_mul(7)) % 5
    };
    // Multiples of 1/8 in [-0.5, 0.875]: exact in every float type.
    let f = |e: usize| -> f32 { (f32::from(v(e)) - 2.0) * 0.25 + f32::from(seed % 4) * 0.125 };
    let mut out = Vec::with_capacity(elems * dtype.size());
    for e in 0..elems {
        match dtype {
            DType::Bool => out.push(v(e) % 2),
            DType::I8 | DType::U8 => out.push(v(e)),
            DType::I16 | DType::U16 => out.extend_from_slice(&u16::from(v(e)).to_le_bytes()),
            DType::I32 | DType::U32 => out.extend_from_slice(&u32::from(v(e)).to_le_bytes()),
            DType::I64 | DType::U64 => out.extend_from_slice(&u64::from(v(e)).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&half::f16::from_f32(f(e)).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(f(e)).to_le_bytes()),
            DType::F32 => out.extend_from_slice(&f(e).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&f64::from(f(e)).to_le_bytes()),
            DType::C64 => {
                out.extend_from_slice(&f(e).to_le_bytes());
                out.extend_from_slice(&f(e + 1).to_le_bytes());
            }
            DType::C128 => {
                out.extend_from_slice(&f64::from(f(e)).to_le_bytes());
                out.extend_from_slice(&f64::from(f(e + 1)).to_le_bytes());
            }
        }
    }
    out
}

/// The correctness gate: for each size, a batch of distinct probe rows padded to the size must
/// give, row for row, the bits each row gives when run alone (padded to the same size). Other
/// dimension variables take their first `[shapes]` value (else 1).
///
/// Alone means at the same size: XLA's CPU kernels differ between batch sizes (a matrix-vector
/// product at 1 row, a blocked matrix product at 8), so a row's low bits may depend on the size
/// it ran at, as they do under JAX; they must not depend on its batch-mates or padding.
///
/// # Errors
/// Why batching is refused: the rows of a size are not independent, or the probes failed.
pub fn gate(
    runner: &Runner,
    config: &BatchConfig,
    shapes: &BTreeMap<String, Vec<u64>>,
) -> Result<(), String> {
    let sig = runner.signature();
    let dim = config.batch_dim;
    // One row of each input.
    let mut row_shapes = Vec::with_capacity(sig.inputs.len());
    for s in &sig.inputs {
        let mut shape = Vec::with_capacity(s.shape.len());
        for (axis, d) in s.shape.iter().enumerate() {
            shape.push(match d {
                _ if axis == dim => 1,
                Dim::Static(n) => *n,
                Dim::Symbolic(v) if is_ident(v) => {
                    shapes.get(v).and_then(|x| x.first()).copied().unwrap_or(1)
                }
                Dim::Symbolic(v) => {
                    return Err(format!(
                        "cannot choose a probe size for '{}' dimension {axis} ({v}) to check \
                         that rows are independent",
                        s.name
                    ))
                }
            });
        }
        row_shapes.push(shape);
    }
    let rows_of_seed = |seed: u64| -> Result<Vec<Tensor>, String> {
        sig.inputs
            .iter()
            .zip(&row_shapes)
            .map(|(s, shape)| {
                let elems: u64 = shape.iter().product();
                let elems = usize::try_from(elems).map_err(|e| e.to_string())?;
                Tensor::new(s.dtype, shape.clone(), probe(s.dtype, elems, seed))
                    .map_err(|e| e.to_string())
            })
            .collect()
    };
    let run = |rows: &[Vec<Tensor>], size: u64| -> Result<Vec<Vec<Tensor>>, String> {
        let views: Vec<Vec<TensorRef<'_>>> = rows
            .iter()
            .map(|r| r.iter().map(Tensor::view).collect())
            .collect();
        let parts: Vec<&[TensorRef<'_>]> = views.iter().map(Vec::as_slice).collect();
        let counts = vec![1u64; rows.len()];
        let stacked = stack(&parts, &counts, size, dim, config.pad).map_err(|e| e.to_string())?;
        let v: Vec<TensorRef<'_>> = stacked.iter().map(Tensor::view).collect();
        let outs = runner.run_size(size, &v).map_err(|e| {
            format!(
                "a probe batch of {} rows padded to {size} ({} padding) failed: {e}",
                rows.len(),
                config.pad.name()
            )
        })?;
        split(outs, &counts, dim).map_err(|e| e.to_string())
    };
    for &size in &config.sizes {
        let k = size.saturating_sub(1).max(1);
        let rows: Vec<Vec<Tensor>> = (0..k).map(rows_of_seed).collect::<Result<_, _>>()?;
        let batch = run(&rows, size)?;
        if size == 1 {
            continue;
        }
        let mut picks = vec![0, k / 2, k - 1];
        picks.dedup();
        for r in picks {
            let ri = usize::try_from(r).unwrap_or(0);
            let alone_in = rows.get(ri).cloned().ok_or("probe row")?;
            let alone = run(std::slice::from_ref(&alone_in), size)?;
            let (Some(a), Some(b)) = (alone.first(), batch.get(ri)) else {
                return Err("probe outputs missing".into());
            };
            for (o, (x, y)) in a.iter().zip(b).enumerate() {
                if x.bytes() != y.bytes() {
                    let name = sig.outputs.get(o).map_or("?", |s| s.name.as_str());
                    return Err(format!(
                        "rows are not independent: at batch size {size}, output '{name}' of \
                         row {r} differs between the row run alone (padded with {}) and the \
                         row run with {} other rows; this model's rows interact (a reduction \
                         or batch statistics over dimension {dim}?)",
                        config.pad.name(),
                        k - 1
                    ));
                }
            }
        }
    }
    Ok(())
}

/// What a request got from its batch.
#[derive(Debug)]
pub struct Done {
    /// The encoded response (of the type its frontend's encoder makes).
    pub encoded: Box<dyn std::any::Any + Send>,
    /// Time the batch took (stack, execute, split, encode).
    pub run_time: Duration,
}

/// Encodes a request's outputs (run on the execution thread).
pub type Finish =
    Box<dyn FnOnce(Vec<Tensor>) -> Result<Box<dyn std::any::Any + Send>, CoreError> + Send>;

/// One request waiting in a model's queue.
pub struct Job {
    inputs: Vec<InputTensor>,
    rows: u64,
    key: Vec<Vec<u64>>,
    deadline: Instant,
    enqueued: Instant,
    finish: Finish,
    reply: oneshot::Sender<Result<Done, CoreError>>,
}

/// What the batcher task and the request threads share.
struct Shared {
    runner: Arc<Runner>,
    config: BatchConfig,
    exec: Arc<Semaphore>,
    metrics: Arc<BatchMetrics>,
    /// Requests sent to the task and not yet dispatched or dropped.
    queued: AtomicUsize,
    /// Signalled when an execution ends (a slot is free again).
    done: Notify,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A cloneable handle to a model's batcher task.
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Job>,
    shared: Arc<Shared>,
}

impl Batcher {
    /// Starts the model's batcher task on `rt`. Each batch takes one permit of `exec` (one per
    /// execution slot, `[limits] workers`) while it runs on the blocking pool.
    ///
    /// Scheduling: a batch starts as soon as an execution slot is free, with every request
    /// waiting then (up to the largest size); while every slot is busy, requests gather and the
    /// next batch starts when an execution ends. So idle slots run requests side by side at
    /// once, and under load requests batch. With `workers = 1` every request waits for the one
    /// execution in flight, which gives the largest batches.
    pub fn start(
        rt: &tokio::runtime::Handle,
        runner: Arc<Runner>,
        config: BatchConfig,
        exec: Arc<Semaphore>,
        metrics: Arc<BatchMetrics>,
    ) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            runner,
            config,
            exec,
            metrics,
            queued: AtomicUsize::new(0),
            done: Notify::new(),
        });
        rt.spawn(batch_loop(rx, shared.clone()));
        Batcher { tx, shared }
    }

    /// Runs a checked request of `rows` rows at once on this thread when nothing is queued, an
    /// execution slot is free and `max_queue_delay` is 0: the batch the task would form for it
    /// alone, without the hand-off to the batcher task. `None` otherwise: queue it with
    /// [`Batcher::submit`].
    pub fn try_run_now(
        &self,
        inputs: &[TensorRef<'_>],
        rows: u64,
    ) -> Option<Result<Vec<Tensor>, crate::Error>> {
        let s = &self.shared;
        if !s.config.max_queue_delay.is_zero() || s.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        let permit = s.exec.clone().try_acquire_owned().ok()?;
        let result = run_batch(&s.runner, &s.config, &[inputs], &[rows]);
        if let Ok((_, size)) = &result {
            s.metrics.executed(*size, rows, 1);
            s.metrics.queue_delay.observe(Duration::ZERO);
        }
        drop(permit);
        s.done.notify_one();
        Some(result.map(|(mut per, _)| per.pop().unwrap_or_default()))
    }

    /// Tells the batcher that an execution outside it (a request run alone) has ended.
    pub fn finished(&self) {
        self.shared.done.notify_one();
    }

    /// Queues a checked request of `rows` rows; the answer comes when its batch has run. The
    /// caller bounds the wait by the deadline too; a caller that stops waiting (its client went
    /// away) is dropped from the queue.
    ///
    /// # Errors
    /// 503 when the batcher is gone.
    pub fn submit(
        &self,
        inputs: Vec<InputTensor>,
        rows: u64,
        deadline: Instant,
        finish: Finish,
    ) -> Result<oneshot::Receiver<Result<Done, CoreError>>, CoreError> {
        let dim = self.shared.config.batch_dim;
        let key = inputs
            .iter()
            .map(|t| {
                let mut s = t.shape.clone();
                if let Some(d) = s.get_mut(dim) {
                    *d = 0;
                }
                s
            })
            .collect();
        let (reply, rx) = oneshot::channel();
        let job = Job {
            inputs,
            rows,
            key,
            deadline,
            enqueued: Instant::now(),
            finish,
            reply,
        };
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        self.tx.send(job).map_err(|_| {
            self.shared.queued.fetch_sub(1, Ordering::AcqRel);
            CoreError::new(ErrorKind::Unavailable, "the model's batcher stopped")
        })?;
        Ok(rx)
    }
}

/// Rows waiting with the first job's non-batch dimensions.
fn ready_rows(pending: &VecDeque<Job>) -> u64 {
    let Some(key) = pending.front().map(|j| &j.key) else {
        return 0;
    };
    pending
        .iter()
        .filter(|j| j.key == *key)
        .map(|j| j.rows)
        .sum()
}

/// Drops the jobs whose deadline passed or whose client went away, counting each.
fn drop_given_up(pending: &mut VecDeque<Job>, s: &Shared) {
    let now = Instant::now();
    let before = pending.len();
    pending.retain(|j| {
        if j.deadline <= now {
            s.metrics.expired.fetch_add(1, Ordering::Relaxed);
            false
        } else if j.reply.is_closed() {
            s.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            true
        }
    });
    s.queued.fetch_sub(before - pending.len(), Ordering::AcqRel);
}

async fn batch_loop(mut rx: mpsc::UnboundedReceiver<Job>, s: Arc<Shared>) {
    let max = s.config.max_size();
    let mut pending: VecDeque<Job> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(j) => pending.push_back(j),
                None => return,
            }
        }
        while let Ok(j) = rx.try_recv() {
            pending.push_back(j);
        }
        drop_given_up(&mut pending, &s);
        if pending.is_empty() {
            continue;
        }
        let Some(permit) = s.exec.clone().try_acquire_owned().ok() else {
            // Every slot busy: wait for an execution to end, gathering requests meanwhile.
            tokio::select! {
                j = rx.recv() => match j {
                    Some(j) => pending.push_back(j),
                    None => return,
                },
                () = s.done.notified() => {}
            }
            continue;
        };
        if !s.config.max_queue_delay.is_zero() {
            if let Some(first) = pending.front() {
                let until =
                    tokio::time::Instant::from_std(first.enqueued + s.config.max_queue_delay);
                while ready_rows(&pending) < max {
                    match tokio::time::timeout_at(until, rx.recv()).await {
                        Ok(Some(j)) => pending.push_back(j),
                        Ok(None) | Err(_) => break,
                    }
                }
                // Requests may have given up while the batch filled.
                drop_given_up(&mut pending, &s);
            }
        }
        let Some(key) = pending.front().map(|j| j.key.clone()) else {
            continue;
        };
        let mut batch = Vec::new();
        let mut rest = VecDeque::with_capacity(pending.len());
        let mut rows = 0u64;
        for j in pending.drain(..) {
            if j.key == key && rows + j.rows <= max {
                rows += j.rows;
                batch.push(j);
            } else {
                rest.push_back(j);
            }
        }
        pending = rest;
        s.queued.fetch_sub(batch.len(), Ordering::AcqRel);
        let shared = s.clone();
        super::blocking::offload(move || {
            execute(&shared, batch);
            drop(permit);
            shared.done.notify_one();
        });
    }
}

fn execute(s: &Shared, batch: Vec<Job>) {
    let started = Instant::now();
    for j in &batch {
        s.metrics.queue_delay.observe(started - j.enqueued);
    }
    let views: Vec<Vec<TensorRef<'_>>> = batch
        .iter()
        .map(|j| j.inputs.iter().map(InputTensor::view).collect())
        .collect();
    let parts: Vec<&[TensorRef<'_>]> = views.iter().map(Vec::as_slice).collect();
    let rows: Vec<u64> = batch.iter().map(|j| j.rows).collect();
    let result = run_batch(&s.runner, &s.config, &parts, &rows);
    drop(parts);
    drop(views);
    match result {
        Ok((outs, size)) => {
            s.metrics.executed(size, rows.iter().sum(), batch.len());
            for (j, o) in batch.into_iter().zip(outs) {
                let r = (j.finish)(o).map(|encoded| Done {
                    encoded,
                    run_time: started.elapsed(),
                });
                let _ = j.reply.send(r);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "a batch failed");
            let api = CoreError::from(e);
            for j in batch {
                let _ = j.reply.send(Err(api.clone()));
            }
        }
    }
}
