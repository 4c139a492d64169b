//! Checks of inputs against a signature, before any device buffer exists.
//!
//! [`check_inputs`] checks count, dtype, shape and byte length; [`policy`] describes what the
//! values may be, [`scan`] checks them in one fused pass, and [`enforce`] applies a policy bound
//! to a model's signature on every call (rejecting or sanitizing).

#[cfg(feature = "cuda")]
pub mod device;
pub mod enforce;
pub mod policy;
mod sanitize;
pub mod scan;
pub mod suggest;

pub use enforce::{
    BoundPolicy, Change, InputReport, InputRules, Offender, PolicyAction, PolicyEvent,
    PolicyObserver, PolicyViolation, Prepared, Rule, RunReport, ValidationError,
};
pub use policy::{
    InputPolicy, NonFinite, Normalize, OutOfRange, Policy, PolicyError, PolicyErrorKind,
};

use crate::signature::{format_type, DType, Dim, Signature, TensorSpec};
use crate::tensor::{byte_len, TensorRef};

/// An input that does not match the signature. Messages follow Triton's style:
/// `input 'x' (0): expected float32[8,16], got float32[8,15]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// Wrong number of inputs.
    #[error("expected {expected} inputs ({names}), got {got}")]
    Count {
        /// Inputs the model takes.
        expected: usize,
        /// Their names, comma-separated.
        names: String,
        /// Inputs given.
        got: usize,
    },
    /// A named input the model does not have.
    #[error("unknown input '{name}'; the model takes {names}")]
    UnknownName {
        /// The name given.
        name: String,
        /// The model's input names, comma-separated.
        names: String,
    },
    /// The same input given twice.
    #[error("input '{name}' given more than once")]
    Duplicate {
        /// The name.
        name: String,
    },
    /// An input the model needs was not given.
    #[error("input '{name}' ({index}) is missing: expected {expected}")]
    Missing {
        /// The name.
        name: String,
        /// Its position.
        index: usize,
        /// Its type.
        expected: String,
    },
    /// Wrong dtype.
    #[error("input '{name}' ({index}): expected {expected}, got {got}")]
    DType {
        /// The name.
        name: String,
        /// Its position.
        index: usize,
        /// The signature's type, e.g. `float32[8,16]`.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Wrong rank or dimensions.
    #[error("input '{name}' ({index}): expected {expected}, got {got}")]
    Shape {
        /// The name.
        name: String,
        /// Its position.
        index: usize,
        /// The signature's type.
        expected: String,
        /// What was given.
        got: String,
    },
    /// Symbolic dimensions that the given shapes do not satisfy: a dimension variable given
    /// two values, an expression that does not evaluate to the size given, a variable no shape
    /// determines, or a size outside the policy's `[dims]` bounds.
    #[error("{message}")]
    Dimensions {
        /// The input the problem was found at (its name), if one.
        name: Option<String>,
        /// The whole message, naming inputs, dimensions and values.
        message: String,
    },
    /// A shape constraint of the export failed (checked by the module's own shape assertions
    /// during refinement): JAX's message, placeholders filled.
    #[error("{message}")]
    Constraint {
        /// JAX's message.
        message: String,
    },
    /// The data length does not match the shape.
    #[error("input '{name}' ({index}): {got_type} needs {expected} bytes, got {got} bytes")]
    ByteLength {
        /// The name.
        name: String,
        /// Its position.
        index: usize,
        /// The declared type.
        got_type: String,
        /// Bytes the shape needs, or a note that it overflows.
        expected: String,
        /// Bytes given.
        got: usize,
    },
}

/// The model's input names, quoted and comma-separated, for messages.
pub(crate) fn input_names(sig: &Signature) -> String {
    sig.inputs
        .iter()
        .map(|s| format!("'{}'", s.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks one input's dtype, rank and each dimension against its spec (no data needed: also
/// used for device-resident inputs).
///
/// # Errors
/// [`InputError::DType`] or [`InputError::Shape`].
pub fn check_type(
    spec: &TensorSpec,
    index: usize,
    dtype: DType,
    shape: &[u64],
) -> Result<(), InputError> {
    if dtype != spec.dtype {
        return Err(InputError::DType {
            name: spec.name.clone(),
            index,
            expected: spec.type_string(),
            got: format_type(dtype, shape.iter()),
        });
    }
    let dims_ok = spec.shape.len() == shape.len()
        && spec.shape.iter().zip(shape).all(|(d, &g)| match d {
            Dim::Static(n) => *n == g,
            Dim::Symbolic(_) => true,
        });
    if !dims_ok {
        return Err(InputError::Shape {
            name: spec.name.clone(),
            index,
            expected: spec.type_string(),
            got: format_type(dtype, shape.iter()),
        });
    }
    Ok(())
}

/// Checks one input against its spec: dtype, rank, each dimension, byte length.
///
/// # Errors
/// The first mismatch, as an [`InputError`].
pub fn check_input(spec: &TensorSpec, index: usize, t: &TensorRef<'_>) -> Result<(), InputError> {
    check_type(spec, index, t.dtype, t.shape)?;
    match byte_len(t.dtype, t.shape) {
        Some(n) if n == t.data.len() => Ok(()),
        n => Err(InputError::ByteLength {
            name: spec.name.clone(),
            index,
            got_type: format_type(t.dtype, t.shape.iter()),
            expected: n.map_or_else(|| "more than usize::MAX".into(), |n| n.to_string()),
            got: t.data.len(),
        }),
    }
}

/// Checks that `got` inputs are what the signature takes.
///
/// # Errors
/// [`InputError::Count`], naming the inputs expected.
pub fn check_count(sig: &Signature, got: usize) -> Result<(), InputError> {
    if got == sig.inputs.len() {
        return Ok(());
    }
    Err(InputError::Count {
        expected: sig.inputs.len(),
        names: input_names(sig),
        got,
    })
}

/// Checks positional inputs: count, then each input.
///
/// # Errors
/// The first mismatch.
pub fn check_inputs(sig: &Signature, inputs: &[TensorRef<'_>]) -> Result<(), InputError> {
    check_count(sig, inputs.len())?;
    for (i, (spec, t)) in sig.inputs.iter().zip(inputs).enumerate() {
        check_input(spec, i, t)?;
    }
    Ok(())
}

/// Orders named inputs by the signature: every name must be known, given once, and every input
/// present. Returns the inputs in signature order.
///
/// # Errors
/// [`InputError::UnknownName`], [`InputError::Duplicate`] or [`InputError::Missing`].
pub fn order_named<T>(sig: &Signature, named: Vec<(String, T)>) -> Result<Vec<T>, InputError> {
    let mut slots: Vec<Option<T>> = sig.inputs.iter().map(|_| None).collect();
    for (name, t) in named {
        let i = sig
            .input_index(&name)
            .ok_or_else(|| InputError::UnknownName {
                name: name.clone(),
                names: input_names(sig),
            })?;
        if slots[i].is_some() {
            return Err(InputError::Duplicate { name });
        }
        slots[i] = Some(t);
    }
    slots
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            s.ok_or_else(|| InputError::Missing {
                name: sig.inputs[i].name.clone(),
                index: i,
                expected: sig.inputs[i].type_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig() -> Signature {
        Signature {
            inputs: vec![
                TensorSpec::new("x", DType::F32, &[8, 16]),
                TensorSpec::new("ids", DType::I32, &[4]),
            ],
            outputs: vec![],
        }
    }

    #[test]
    fn messages_name_input_expected_and_got() {
        let data = vec![0u8; 8 * 15 * 4];
        let t = TensorRef {
            dtype: DType::F32,
            shape: &[8, 15],
            data: &data,
        };
        let e = check_input(&sig().inputs[0], 0, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'x' (0): expected float32[8,16], got float32[8,15]"
        );
        let t = TensorRef {
            dtype: DType::I64,
            shape: &[4],
            data: &data[..32],
        };
        let e = check_input(&sig().inputs[1], 1, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'ids' (1): expected int32[4], got int64[4]"
        );
        let t = TensorRef {
            dtype: DType::I32,
            shape: &[4],
            data: &data[..15],
        };
        let e = check_input(&sig().inputs[1], 1, &t).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'ids' (1): int32[4] needs 16 bytes, got 15 bytes"
        );
        let t = TensorRef {
            dtype: DType::I32,
            shape: &[4, 1],
            data: &data[..16],
        };
        assert!(matches!(
            check_input(&sig().inputs[1], 1, &t),
            Err(InputError::Shape { .. })
        ));
    }

    #[test]
    fn named_ordering() {
        let s = sig();
        let got = order_named(&s, vec![("ids".to_string(), 1), ("x".to_string(), 0)]).unwrap();
        assert_eq!(got, vec![0, 1]);
        assert!(matches!(
            order_named(&s, vec![("y".to_string(), 0)]),
            Err(InputError::UnknownName { .. })
        ));
        assert!(matches!(
            order_named(&s, vec![("x".to_string(), 0), ("x".to_string(), 0)]),
            Err(InputError::Duplicate { .. })
        ));
        let e = order_named(&s, vec![("x".to_string(), 0)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "input 'ids' (1) is missing: expected int32[4]"
        );
    }
}
