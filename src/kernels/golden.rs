//! A model's outputs against JAX's goldens beside its artifact (for `inspect --cpu-kernels`).

/// How far a model's outputs are from JAX's on the golden inputs beside its artifact.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct GoldenDifference {
    /// Output tensors compared.
    pub outputs: usize,
    /// Elements compared.
    pub elements: usize,
    /// Elements that differ in any bit.
    pub differing: usize,
    /// Largest absolute difference (floats; 0 for other dtypes when equal).
    pub max_abs: f64,
    /// Largest difference in units in the last place (f32 and f64 outputs).
    pub max_ulp: u64,
}

/// Runs `model` on the goldens in `dir` (`in0.npy`, `in1.npy`, ... in signature order, and
/// `out0.npy`, ...: what JAX returned, as `hlo/` commits them) and measures its outputs
/// against JAX's. `Ok(None)` when `dir` has no `in0.npy` and `out0.npy`.
///
/// # Errors
/// An unreadable golden, or the model's error for the run; [`crate::Error::Config`] when the
/// outputs' dtypes or shapes are not the goldens'.
pub fn golden_difference(
    model: &crate::Model,
    dir: &std::path::Path,
) -> Result<Option<GoldenDifference>, crate::Error> {
    use crate::{DType, Error, Tensor};
    if !dir.join("in0.npy").is_file() || !dir.join("out0.npy").is_file() {
        return Ok(None);
    }
    let read = |p: std::path::PathBuf| {
        Tensor::read_npy(&p).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    };
    let inputs = (0..model.signature().inputs.len())
        .map(|i| read(dir.join(format!("in{i}.npy"))))
        .collect::<Result<Vec<_>, _>>()?;
    let views: Vec<_> = inputs.iter().map(Tensor::view).collect();
    let got = model.run(&views)?;
    let mut d = GoldenDifference::default();
    for (i, g) in got.iter().enumerate() {
        let want = read(dir.join(format!("out{i}.npy")))?;
        if want.dtype() != g.dtype() || want.shape() != g.shape() {
            return Err(Error::Config(format!(
                "out{i}.npy is {} but the model returns {}",
                want.type_string(),
                g.type_string()
            )));
        }
        d.outputs += 1;
        let width = g.dtype().size().max(1);
        for (a, b) in g.bytes().chunks(width).zip(want.bytes().chunks(width)) {
            d.elements += 1;
            if a == b {
                continue;
            }
            d.differing += 1;
            let (abs, ulp) = match g.dtype() {
                DType::F32 => {
                    let (x, y) = (f32_of(a), f32_of(b));
                    let ord = |v: f32| {
                        let i = v.to_bits() as i32;
                        i64::from(if i < 0 { i32::MIN - i } else { i })
                    };
                    (f64::from((x - y).abs()), ord(x).abs_diff(ord(y)))
                }
                DType::F64 => {
                    let (x, y) = (f64_of(a), f64_of(b));
                    let ord = |v: f64| {
                        let i = v.to_bits() as i64;
                        i128::from(if i < 0 { i64::MIN - i } else { i })
                    };
                    let ulp = u64::try_from(ord(x).abs_diff(ord(y))).unwrap_or(u64::MAX);
                    ((x - y).abs(), ulp)
                }
                _ => (f64::NAN, 0),
            };
            d.max_abs = if abs.is_nan() {
                f64::NAN
            } else {
                d.max_abs.max(abs)
            };
            d.max_ulp = d.max_ulp.max(ulp);
        }
    }
    Ok(Some(d))
}

fn f32_of(b: &[u8]) -> f32 {
    f32::from_le_bytes(b.try_into().unwrap_or([0; 4]))
}

fn f64_of(b: &[u8]) -> f64 {
    f64::from_le_bytes(b.try_into().unwrap_or([0; 8]))
}
