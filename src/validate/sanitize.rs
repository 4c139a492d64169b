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
    let mut out = vec![0u8; src.len()];
    sanitize_into(limits, src, ops, &mut out);
    out
}

/// Writes the sanitized copy of `src` into `out` (the same length; every byte is written).
pub(crate) fn sanitize_into(limits: &Limits, src: &[u8], ops: &Ops, out: &mut [u8]) {
    let out = &mut out[..src.len()];
    match limits.typed {
        Typed::Bool => out.copy_from_slice(src),
        Typed::I8(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::I16(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::I32(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::I64(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::U8(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::U16(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::U32(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::U64(lo, hi) => int_pass(src, out, lo, hi, ops.clip),
        Typed::F32(lo, hi) if ops.normalize.is_none() => {
            ieee_f32(src, out, lo, hi, ops);
        }
        Typed::F64(lo, hi) if ops.normalize.is_none() => {
            ieee_f64(src, out, lo, hi, ops);
        }
        Typed::F32(lo, hi) => match &ops.normalize {
            Some((m, s)) => {
                let (m, s) = (to_f32(m), to_f32(s));
                float_pass(src, out, lo, hi, ops, |x: f32, i| {
                    let j = i % m.len();
                    (x - m[j]) / s[j]
                })
            }
            None => float_pass(src, out, lo, hi, ops, |x, _| x),
        },
        Typed::F64(lo, hi) => match &ops.normalize {
            Some((m, s)) => float_pass(src, out, lo, hi, ops, |x: f64, i| {
                let j = i % m.len();
                (x - m[j]) / s[j]
            }),
            None => float_pass(src, out, lo, hi, ops, |x, _| x),
        },
        Typed::BF16(lo, hi) => match &ops.normalize {
            Some((m, s)) => {
                let (m, s) = (to_f32(m), to_f32(s));
                float_pass(src, out, lo, hi, ops, |x: bf16, i| {
                    let j = i % m.len();
                    bf16::from_f32((x.to_f32() - m[j]) / s[j])
                })
            }
            None => float_pass(src, out, lo, hi, ops, |x, _| x),
        },
        Typed::F16(lo, hi) => match &ops.normalize {
            Some((m, s)) => {
                let (m, s) = (to_f32(m), to_f32(s));
                float_pass(src, out, lo, hi, ops, |x: f16, i| {
                    let j = i % m.len();
                    f16::from_f32((x.to_f32() - m[j]) / s[j])
                })
            }
            None => float_pass(src, out, lo, hi, ops, |x, _| x),
        },
    }
}

#[allow(clippy::cast_possible_truncation)]
fn to_f32(v: &[f64]) -> Vec<f32> {
    // Nearest f32, as numpy's astype(float32) would give.
    v.iter().map(|&x| x as f32).collect()
}

fn int_pass<T: Elem>(src: &[u8], out: &mut [u8], lo: T, hi: T, clip: bool) {
    out.copy_from_slice(src);
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
}

/// f32 and f64 without normalization: branch-free selects, which the compiler vectorizes.
macro_rules! ieee_pass {
    ($name:ident, $t:ty) => {
        fn $name(src: &[u8], out: &mut [u8], lo: $t, hi: $t, ops: &Ops) {
            const N: usize = std::mem::size_of::<$t>();
            #[allow(clippy::cast_possible_truncation)]
            let (dn, nr) = (ops.nan.is_some(), ops.nan.unwrap_or(0.0) as $t);
            #[allow(clippy::cast_possible_truncation)]
            let (di, ir) = (ops.inf.is_some(), ops.inf.unwrap_or(0.0) as $t);
            // Without clipping, bounds that nothing finite or infinite exceeds.
            let (lo, hi) = if ops.clip {
                (lo, hi)
            } else {
                (<$t>::NEG_INFINITY, <$t>::INFINITY)
            };
            for (s, d) in src.chunks_exact(N).zip(out.chunks_exact_mut(N)) {
                let mut a = [0u8; N];
                a.copy_from_slice(s);
                let x = <$t>::from_le_bytes(a);
                let x = if dn & x.is_nan() { nr } else { x };
                let x = if di & x.is_infinite() { ir } else { x };
                // NaN compares false both ways and passes through.
                let x = if x < lo {
                    lo
                } else if x > hi {
                    hi
                } else {
                    x
                };
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
    };
}
ieee_pass!(ieee_f32, f32);
ieee_pass!(ieee_f64, f64);

fn float_pass<T: FloatElem>(
    src: &[u8],
    out: &mut [u8],
    lo: T,
    hi: T,
    ops: &Ops,
    norm: impl Fn(T, usize) -> T,
) {
    let nan = ops.nan.map(T::near);
    let inf = ops.inf.map(T::near);
    let (kl, kh) = (lo.key(), hi.key());
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
}
