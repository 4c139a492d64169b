//! The fused value scans against a plain reference written here (values decoded by `half` and
//! std, compared as f64 / i128 with the bounds as written, unrounded): every backend, every
//! lane position and the tail, block boundaries, every bf16 and f16 bit pattern (so every NaN
//! payload), -0.0, subnormals and ±max; then proptest on random arrays.
// Test data is built with deliberate saturating `as` casts.
#![allow(clippy::cast_possible_truncation)]

use half::{bf16, f16};
use proptest::prelude::*;
use xlaguard::validate::scan::{
    scan_with, Backend, Bound, LimitError, Limits, ScanSummary, Tally, Value,
};
use xlaguard::DType;

/// A decoded element: a float (NaN/inf kept) or an integer.
#[derive(Clone, Copy, Debug)]
enum R {
    F(f64),
    I(i128),
}

fn decode(dtype: DType, b: &[u8]) -> R {
    match dtype {
        DType::F32 => R::F(f64::from(f32::from_le_bytes(b.try_into().unwrap()))),
        DType::F64 => R::F(f64::from_le_bytes(b.try_into().unwrap())),
        DType::BF16 => R::F(bf16::from_le_bytes(b.try_into().unwrap()).to_f64()),
        DType::F16 => R::F(f16::from_le_bytes(b.try_into().unwrap()).to_f64()),
        DType::I8 => R::I(i128::from(i8::from_le_bytes(b.try_into().unwrap()))),
        DType::I16 => R::I(i128::from(i16::from_le_bytes(b.try_into().unwrap()))),
        DType::I32 => R::I(i128::from(i32::from_le_bytes(b.try_into().unwrap()))),
        DType::I64 => R::I(i128::from(i64::from_le_bytes(b.try_into().unwrap()))),
        DType::U8 => R::I(i128::from(b[0])),
        DType::U16 => R::I(i128::from(u16::from_le_bytes(b.try_into().unwrap()))),
        DType::U32 => R::I(i128::from(u32::from_le_bytes(b.try_into().unwrap()))),
        DType::U64 => R::I(i128::from(u64::from_le_bytes(b.try_into().unwrap()))),
        other => panic!("{other} is not scanned"),
    }
}

fn as_f64(v: Value) -> f64 {
    v.as_f64()
}

/// Counts and first indices of [nan, +inf, -inf, below, above], and finite min/max.
#[derive(Debug, PartialEq)]
struct Expect {
    tallies: [Tally; 5],
    min: Option<f64>,
    max: Option<f64>,
}

fn reference(dtype: DType, data: &[u8], lo: Option<Bound>, hi: Option<Bound>) -> Expect {
    let mut t = [Tally::default(); 5];
    let mut bump = |k: usize, i: u64| {
        if t[k].count == 0 {
            t[k].first = Some(i);
        }
        t[k].count += 1;
    };
    let (mut mn, mut mx): (Option<f64>, Option<f64>) = (None, None);
    for (i, b) in data.chunks_exact(dtype.size()).enumerate() {
        let i = i as u64;
        let (below, above, v) = match decode(dtype, b) {
            R::F(x) if x.is_nan() => {
                bump(0, i);
                continue;
            }
            R::F(x) if x == f64::INFINITY => {
                bump(1, i);
                continue;
            }
            R::F(x) if x == f64::NEG_INFINITY => {
                bump(2, i);
                continue;
            }
            R::F(x) => (
                lo.is_some_and(|l| x < l.as_f64()),
                hi.is_some_and(|h| x > h.as_f64()),
                x,
            ),
            R::I(x) => {
                let int = |b: Bound| match b {
                    Bound::Int(i) => i128::from(i),
                    Bound::Float(_) => unreachable!(),
                };
                (
                    lo.is_some_and(|l| x < int(l)),
                    hi.is_some_and(|h| x > int(h)),
                    x as f64,
                )
            }
        };
        if below {
            bump(3, i);
        } else if above {
            bump(4, i);
        }
        mn = Some(mn.map_or(v, |m| m.min(v)));
        mx = Some(mx.map_or(v, |m| m.max(v)));
    }
    Expect {
        tallies: t,
        min: mn,
        max: mx,
    }
}

fn got(s: &ScanSummary) -> Expect {
    Expect {
        tallies: [s.nan, s.pos_inf, s.neg_inf, s.below, s.above],
        min: s.min.map(as_f64),
        max: s.max.map(as_f64),
    }
}

fn backends() -> Vec<Backend> {
    let mut v = vec![Backend::Scalar];
    if Backend::Avx2.is_available() {
        v.push(Backend::Avx2);
    }
    v
}

fn check(dtype: DType, data: &[u8], lo: Option<Bound>, hi: Option<Bound>) {
    let want = reference(dtype, data, lo, hi);
    let limits = match Limits::new(dtype, lo, hi) {
        Ok(l) => l,
        Err(LimitError::Empty { .. }) => {
            // No value of the dtype lies in [lo, hi]: then no element may either.
            let out: u64 = want.tallies.iter().map(|t| t.count).sum();
            assert_eq!(
                out as usize,
                data.len() / dtype.size(),
                "{dtype} {lo:?}..{hi:?}"
            );
            return;
        }
        Err(e) => panic!("{dtype} {lo:?}..{hi:?}: {e}"),
    };
    for b in backends() {
        let s = scan_with(b, data, &limits).unwrap();
        assert_eq!(s.elements as usize, data.len() / dtype.size());
        assert_eq!(
            got(&s),
            want,
            "{dtype} {b:?} len {} bounds {lo:?}..{hi:?}",
            data.len() / dtype.size()
        );
    }
}

#[test]
fn avx2_runs_on_this_machine() {
    // The CI and development machines are x86-64 with AVX2; if this fails the SIMD kernels are
    // not being tested at all.
    #[cfg(target_arch = "x86_64")]
    assert!(Backend::Avx2.is_available());
    assert!(Backend::best().is_available());
}

/// Encodes `n` elements of `dtype`: element i is `f(i)`, an f64 for floats or an integer.
fn encode(dtype: DType, vals: &[f64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(vals.len() * dtype.size());
    for &v in vals {
        match dtype {
            DType::F32 => out.extend_from_slice(&(v as f32).to_le_bytes()),
            DType::F64 => out.extend_from_slice(&v.to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&bf16::from_f64(v).to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f64(v).to_le_bytes()),
            DType::I32 => out.extend_from_slice(&(v as i32).to_le_bytes()),
            DType::U8 => out.push(v as u8),
            DType::I8 => out.extend_from_slice(&(v as i8).to_le_bytes()),
            DType::I16 => out.extend_from_slice(&(v as i16).to_le_bytes()),
            DType::I64 => out.extend_from_slice(&(v as i64).to_le_bytes()),
            DType::U16 => out.extend_from_slice(&(v as u16).to_le_bytes()),
            DType::U32 => out.extend_from_slice(&(v as u32).to_le_bytes()),
            DType::U64 => out.extend_from_slice(&(v as u64).to_le_bytes()),
            other => panic!("{other}"),
        }
    }
    out
}

const SIMD: [DType; 5] = [DType::F32, DType::BF16, DType::F16, DType::I32, DType::U8];
const ALL: [DType; 12] = [
    DType::F32,
    DType::BF16,
    DType::F16,
    DType::I32,
    DType::U8,
    DType::F64,
    DType::I8,
    DType::I16,
    DType::I64,
    DType::U16,
    DType::U32,
    DType::U64,
];

fn bounds(dtype: DType) -> (Bound, Bound) {
    if dtype.is_float() {
        (Bound::Float(-2.5), Bound::Float(20.0))
    } else if matches!(dtype, DType::U8 | DType::U16 | DType::U32 | DType::U64) {
        (Bound::Int(3), Bound::Int(20))
    } else {
        (Bound::Int(-3), Bound::Int(20))
    }
}

/// In-range background values.
fn base(n: usize) -> Vec<f64> {
    (0..n).map(|i| (i % 17) as f64).collect()
}

#[test]
fn every_lane_position_and_the_tail() {
    for dtype in ALL {
        let lanes = 32 / dtype.size();
        let (lo, hi) = bounds(dtype);
        // Out of range by one, and exactly on each (inclusive) bound.
        let mut specials = vec![
            lo.as_f64() - 1.0,
            hi.as_f64() + 1.0,
            lo.as_f64(),
            hi.as_f64(),
        ];
        if dtype.is_float() {
            specials.extend([f64::NAN, f64::INFINITY, f64::NEG_INFINITY]);
        }
        // Lengths: shorter than one vector, whole vectors, and every tail length.
        for len in (0..lanes).chain((1..=lanes).map(|t| 3 * lanes + t)) {
            for p in 0..len {
                for &s in &specials {
                    let mut v = base(len);
                    v[p] = s;
                    check(dtype, &encode(dtype, &v), Some(lo), Some(hi));
                    // A second offender later: the first stays first, counts add up.
                    if p + 1 < len {
                        v[len - 1] = s;
                        check(dtype, &encode(dtype, &v), Some(lo), Some(hi));
                    }
                }
            }
            // Clean, and unbounded.
            check(dtype, &encode(dtype, &base(len)), Some(lo), Some(hi));
            check(dtype, &encode(dtype, &base(len)), None, None);
        }
    }
}

#[test]
fn block_boundaries() {
    // Scans work in blocks (16384 elements; 32768 for bf16/f16 and 4096 for u8 under AVX2): a
    // fast pass proves a block clean, a block with offenders is counted exactly, and the block
    // holding a category's first offender is rescanned for its index.
    for dtype in SIMD {
        let (lo, hi) = bounds(dtype);
        let block = match dtype {
            DType::U8 => 4096,
            DType::BF16 | DType::F16 => 32768,
            _ => 16384,
        };
        let len = 2 * block + 37;
        let mut v = base(len);
        v[block - 1] = hi.as_f64() + 1.0;
        v[block] = lo.as_f64() - 1.0;
        v[2 * block + 5] = hi.as_f64() + 2.0;
        v[block + 1] = hi.as_f64() + 1.0;
        if dtype.is_float() {
            v[2 * block] = f64::NAN;
            v[2 * block + 36] = f64::INFINITY;
            v[7] = f64::NEG_INFINITY;
        }
        check(dtype, &encode(dtype, &v), Some(lo), Some(hi));
        // Many offenders: counts beyond what one narrow lane counter could hold.
        let w: Vec<f64> = (0..len)
            .map(|i| if i % 3 == 0 { hi.as_f64() + 1.0 } else { 1.0 })
            .collect();
        check(dtype, &encode(dtype, &w), Some(lo), Some(hi));
    }
}

#[test]
fn every_bf16_and_f16_bit_pattern() {
    for dtype in [DType::BF16, DType::F16] {
        let data: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        let max = if dtype == DType::BF16 {
            bf16::MAX.to_f64()
        } else {
            f16::MAX.to_f64()
        };
        let tiny = if dtype == DType::BF16 {
            bf16::from_bits(1).to_f64()
        } else {
            f16::from_bits(1).to_f64()
        };
        for (lo, hi) in [
            (None, None),
            (Some(-1.5), Some(2.0)),
            (Some(0.0), Some(0.0)),
            (Some(-0.0), Some(-0.0)),
            (Some(-max), Some(max)),
            (Some(tiny), Some(3.0 * tiny)),
            (Some(-tiny / 2.0), Some(tiny / 2.0)),
            (Some(0.1), Some(0.3)),
            (Some(-max), None),
            (None, Some(-65504.0)),
        ] {
            check(dtype, &data, lo.map(Bound::Float), hi.map(Bound::Float));
        }
        // Every NaN payload, both signs.
        let limits = Limits::new(dtype, None, None).unwrap();
        let inf: u16 = if dtype == DType::BF16 { 0x7f80 } else { 0x7c00 };
        let nans = 2 * u64::from(0x7fff - inf);
        for b in backends() {
            let s = scan_with(b, &data, &limits).unwrap();
            assert_eq!(s.nan.count, nans, "{dtype} {b:?}");
            assert_eq!(s.nan.first, Some(u64::from(inf) + 1));
            assert_eq!(s.pos_inf.count, 1);
            assert_eq!(s.neg_inf.first, Some(u64::from(inf | 0x8000)));
            assert_eq!(s.min.map(as_f64), Some(-max));
            assert_eq!(s.max.map(as_f64), Some(max));
        }
    }
}

#[test]
fn zero_signs_subnormals_and_max_values() {
    let data = encode(
        DType::F32,
        &[
            -0.0,
            0.0,
            f64::from(f32::from_bits(1)),
            -f64::from(f32::from_bits(1)),
            f64::from(f32::MAX),
            -f64::from(f32::MAX),
        ],
    );
    // -0.0 is not below min 0.0; a negative subnormal is.
    check(DType::F32, &data, Some(Bound::Float(0.0)), None);
    // +0.0 is not above max -0.0.
    check(DType::F32, &data, None, Some(Bound::Float(-0.0)));
    // ±max as bounds: everything finite is in range.
    let l = Limits::new(
        DType::F32,
        Some(Bound::Float(-f64::from(f32::MAX))),
        Some(Bound::Float(f64::from(f32::MAX))),
    )
    .unwrap();
    for b in backends() {
        assert!(scan_with(b, &data, &l).unwrap().is_clean());
    }
    check(
        DType::F32,
        &data,
        Some(Bound::Float(-f64::from(f32::MAX))),
        Some(Bound::Float(f64::from(f32::MAX))),
    );
    // Subnormal bounds.
    let tiny = f64::from(f32::from_bits(1));
    check(
        DType::F32,
        &data,
        Some(Bound::Float(tiny / 2.0)),
        Some(Bound::Float(tiny * 1.5)),
    );
    // Every f32 NaN class: quiet, signalling, negative, max payload.
    let nans: Vec<u8> = [
        0x7fc0_0000u32,
        0x7f80_0001,
        0xffc0_0123,
        0x7fff_ffff,
        0xff80_0001,
    ]
    .iter()
    .cycle()
    .take(37)
    .flat_map(|b| b.to_le_bytes())
    .collect();
    check(
        DType::F32,
        &nans,
        Some(Bound::Float(0.0)),
        Some(Bound::Float(1.0)),
    );
}

#[test]
fn integer_extremes() {
    let v: Vec<u8> = [i32::MIN, i32::MAX, 0, -1, 49, 50]
        .iter()
        .cycle()
        .take(41)
        .flat_map(|x| x.to_le_bytes())
        .collect();
    check(DType::I32, &v, Some(Bound::Int(0)), Some(Bound::Int(49)));
    check(
        DType::I32,
        &v,
        Some(Bound::Int(i64::from(i32::MIN))),
        Some(Bound::Int(i64::from(i32::MAX))),
    );
    let u: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    check(DType::U8, &u, Some(Bound::Int(0)), Some(Bound::Int(255)));
    check(DType::U8, &u, Some(Bound::Int(127)), Some(Bound::Int(128)));
    check(DType::U8, &u, Some(Bound::Int(255)), None);
    check(DType::U8, &u, None, Some(Bound::Int(0)));
}

// ---- proptest ----------------------------------------------------------------------------

/// An f32 drawn from the interesting classes.
fn f32_elem() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => (-30.0f32..30.0).prop_map(f32::to_bits),
        1 => any::<u32>().prop_map(|p| 0x7f80_0000 | (p & 0x807f_ffff) | 1), // NaN, any payload/sign
        1 => Just(f32::INFINITY.to_bits()),
        1 => Just(f32::NEG_INFINITY.to_bits()),
        1 => prop_oneof![Just(0u32), Just(0x8000_0000), Just(1), Just(0x8000_0001), Just(f32::MAX.to_bits()), Just((-f32::MAX).to_bits())],
        1 => any::<u32>(),
    ]
}

fn half_elem() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => any::<u16>(),
        1 => prop_oneof![Just(0u16), Just(0x8000), Just(1), Just(0x8001), Just(0x7f80), Just(0xff80), Just(0x7c00), Just(0xfc00)],
    ]
}

fn float_bound() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        1 => Just(None),
        4 => (-40.0f64..40.0).prop_map(Some),
        1 => Just(Some(0.0)),
        1 => Just(Some(-0.0)),
    ]
}

fn ordered(lo: Option<f64>, hi: Option<f64>) -> (Option<Bound>, Option<Bound>) {
    match (lo, hi) {
        (Some(a), Some(b)) if a > b => (Some(Bound::Float(b)), Some(Bound::Float(a))),
        (a, b) => (a.map(Bound::Float), b.map(Bound::Float)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn f32_simd_matches_reference(v in prop::collection::vec(f32_elem(), 0..300), lo in float_bound(), hi in float_bound()) {
        let data: Vec<u8> = v.iter().flat_map(|b| b.to_le_bytes()).collect();
        let (lo, hi) = ordered(lo, hi);
        check(DType::F32, &data, lo, hi);
    }

    #[test]
    fn half_simd_matches_reference(v in prop::collection::vec(half_elem(), 0..400), lo in float_bound(), hi in float_bound()) {
        let data: Vec<u8> = v.iter().flat_map(|b| b.to_le_bytes()).collect();
        let (lo, hi) = ordered(lo, hi);
        for dtype in [DType::BF16, DType::F16] {
            // Bounds outside f16's range do not occur: |bound| < 40.
            check(dtype, &data, lo, hi);
        }
    }

    #[test]
    fn i32_simd_matches_reference(v in prop::collection::vec(any::<i32>(), 0..300), a in any::<i32>(), b in any::<i32>()) {
        let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        let (lo, hi) = (a.min(b), a.max(b));
        check(DType::I32, &data, Some(Bound::Int(i64::from(lo))), Some(Bound::Int(i64::from(hi))));
    }

    #[test]
    fn u8_simd_matches_reference(v in prop::collection::vec(any::<u8>(), 0..700), a in any::<u8>(), b in any::<u8>()) {
        let (lo, hi) = (a.min(b), a.max(b));
        check(DType::U8, &v, Some(Bound::Int(i64::from(lo))), Some(Bound::Int(i64::from(hi))));
    }
}
