//! Sanitization: NaN/Inf replacement, clipping and normalization, written into a new staging
//! buffer (the one that is uploaded instead of the caller's, which is never modified).
//!
//! Runs only after a scan found something to change (or a normalization is configured), so clean
//! inputs are uploaded straight from the caller's memory.

use half::{bf16, f16};

use super::scan::{Class, Elem, FloatElem, Limits, Typed};

/// What to change. Replacement values have already been checked to fit the dtype and bounds.
#[derive(Clone, Debug, Default)]
pub(crate) struct Ops {
    /// Replace NaNs with this.
    pub nan: Option<f64>,
    /// Replace ±Inf with this.
    pub inf: Option<f64>,
    /// Clamp values (infinities included, when not replaced) to the limits.
    pub clip: bool,
    /// `(x - mean[j]) / std[j]`, `j` the index along the last axis (or 0 for scalars).
    pub normalize: Option<(Vec<f64>, Vec<f64>)>,
}

/// The sanitized copy of `src` (a whole number of elements of `limits.dtype()`).
pub(crate) fn sanitize(limits: &Limits, src: &[u8], ops: &Ops) -> Vec<u8> {
    match limits.typed {
        Typed::Bool => src.to_vec(),
        Typed::I8(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::I16(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::I32(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::I64(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::U8(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::U16(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::U32(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::U64(lo, hi) => int_pass(src, lo, hi, ops.clip),
        Typed::F32(lo, hi) => match &ops.normalize {
            Some((m, s)) => {
                let (m, s) = (to_f32(m), to_f32(s));
                float_pass(src, lo, hi, ops, |x: f32, i| {
                    let j = i % m.len();
                    (x - m[j]) / s[j]
                })
            }
            None => float_pass(src, lo, hi, ops, |x, _| x),
        },
        Typed::F64(lo, hi) => match &ops.normalize {
            Some((m, s)) => float_pass(src, lo, hi, ops, |x: f64, i| {
                let j = i % m.len();
                (x - m[j]) / s[j]
            }),
            None => float_pass(src, lo, hi, ops, |x, _| x),
        },
        Typed::BF16(lo, hi) => match &ops.normalize {
            Some((m, s)) => {
                let (m, s) = (to_f32(m), to_f32(s));
                float_pass(src, lo, hi, ops, |x: bf16, i| {
                    let j = i % m.len();
                    bf16::from_f32((x.to_f32() - m[j]) / s[j])
                })
            }
            None => float_pass(src, lo, hi, ops, |x, _| x),
        },
        Typed::F16(lo, hi) => match &ops.normalize {
            Some((m, s)) => {
                let (m, s) = (to_f32(m), to_f32(s));
                float_pass(src, lo, hi, ops, |x: f16, i| {
                    let j = i % m.len();
                    f16::from_f32((x.to_f32() - m[j]) / s[j])
                })
            }
            None => float_pass(src, lo, hi, ops, |x, _| x),
        },
    }
}

#[allow(clippy::cast_possible_truncation)]
fn to_f32(v: &[f64]) -> Vec<f32> {
    // Nearest f32, as numpy's astype(float32) would give.
    v.iter().map(|&x| x as f32).collect()
}

fn int_pass<T: Elem>(src: &[u8], lo: T, hi: T, clip: bool) -> Vec<u8> {
    let mut out = src.to_vec();
    if clip {
        let (kl, kh) = (lo.key(), hi.key());
        for d in out.chunks_exact_mut(T::SIZE) {
            let x = T::load(d);
            let k = x.key();
            if k < kl {
                lo.store(d);
            } else if k > kh {
                hi.store(d);
            }
        }
    }
    out
}

fn float_pass<T: FloatElem>(
    src: &[u8],
    lo: T,
    hi: T,
    ops: &Ops,
    norm: impl Fn(T, usize) -> T,
) -> Vec<u8> {
    let nan = ops.nan.map(T::near);
    let inf = ops.inf.map(T::near);
    let (kl, kh) = (lo.key(), hi.key());
    let mut out = vec![0u8; src.len()];
    for (i, (s, d)) in src
        .chunks_exact(T::SIZE)
        .zip(out.chunks_exact_mut(T::SIZE))
        .enumerate()
    {
        let mut x = T::load(s);
        let class = x.class();
        match class {
            Class::Nan => {
                if let Some(r) = nan {
                    x = r;
                }
            }
            Class::PosInf | Class::NegInf => {
                if let Some(r) = inf {
                    x = r;
                }
            }
            Class::Finite => {}
        }
        if ops.clip && x.class() != Class::Nan {
            let k = x.key();
            if k < kl {
                x = lo;
            } else if k > kh {
                x = hi;
            }
        }
        norm(x, i).store(d);
    }
    out
}
