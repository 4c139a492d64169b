//! The handlers' logic, one function per LAPACK target family, generic over the element type.
//!
//! Each checks the operand and result dtypes and dims against what jax 0.11.2 emits for the
//! target (and what jaxlib's handler of the same name accepts), reads the attributes, then runs
//! the routine over the batch the way jaxlib's handler does: same routine, same leading
//! dimensions, same workspace sizes, so that with the same LAPACK the results are the same bits.
//! `info` goes back as a result, as in jaxlib; jax's lowering turns a nonzero `info` into NaNs.

use super::ffi::{Attr, BufferInfo, FfiError, Frame};
use super::sys::{gesdd_sizes, Diag, EigJob, Lapack, Scalar, Side, SvdJob, Trans, UpLo, Workspace};

fn counts(f: &Frame<'_>, args: usize, rets: usize) -> Result<(), FfiError> {
    if f.args().len() != args || f.rets().len() != rets {
        return Err(FfiError::invalid(format!(
            "expected {args} operands and {rets} results, got {} and {}",
            f.args().len(),
            f.rets().len()
        )));
    }
    Ok(())
}

/// Splits `[batch..., rows, cols]` into (batch dims, rows, cols).
fn matrix(b: &BufferInfo, what: &str) -> Result<(Vec<i64>, usize, usize), FfiError> {
    let r = b.dims.len();
    if r < 2 {
        return Err(FfiError::invalid(format!(
            "{what}: expected a matrix (rank >= 2), got dims {:?}",
            b.dims
        )));
    }
    let dim = |d: i64| {
        usize::try_from(d)
            .map_err(|_| FfiError::invalid(format!("{what}: negative dim in {:?}", b.dims)))
    };
    Ok((
        b.dims[..r - 2].to_vec(),
        dim(b.dims[r - 2])?,
        dim(b.dims[r - 1])?,
    ))
}

fn batch_count(batch: &[i64]) -> Result<usize, FfiError> {
    batch.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| FfiError::invalid(format!("bad batch dims {batch:?}")))
    })
}

fn dims_of(batch: &[i64], tail: &[usize]) -> Vec<i64> {
    let mut v = batch.to_vec();
    v.extend(tail.iter().map(|&t| t as i64));
    v
}

fn expect(f: &Frame<'_>, ret: usize, want: &[i64]) -> Result<(), FfiError> {
    let got = &f.rets()[ret].dims;
    if got != want {
        return Err(FfiError::invalid(format!(
            "result {ret} has dims {got:?}, expected {want:?}"
        )));
    }
    Ok(())
}

fn char_attr(f: &Frame<'_>, name: &str, allowed: &[u8]) -> Result<u8, FfiError> {
    match f.attr(name) {
        Some(Attr::U8(c)) if allowed.contains(c) => Ok(*c),
        Some(Attr::U8(c)) => Err(FfiError::invalid(format!(
            "attribute {name} = {:?}, expected one of {:?}",
            char::from(*c),
            allowed.iter().map(|&b| char::from(b)).collect::<Vec<_>>()
        ))),
        Some(other) => Err(FfiError::invalid(format!(
            "attribute {name} should be a ui8 scalar, got {other:?}"
        ))),
        None => Err(FfiError::invalid(format!(
            "missing attribute {name} (has {:?})",
            f.attr_names()
        ))),
    }
}

fn uplo(f: &Frame<'_>) -> Result<UpLo, FfiError> {
    Ok(match char_attr(f, "uplo", b"LU")? {
        b'L' => UpLo::Lower,
        _ => UpLo::Upper,
    })
}

/// `lapack_?getrf_ffi`: (x[..., m, n]) -> (lu[..., m, n], ipiv s32[..., min], info s32[...]).
pub fn getrf<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 1, 3)?;
    let (batch, m, n) = matrix(&f.args()[0], "operand 0")?;
    let k = m.min(n);
    expect(f, 1, &dims_of(&batch, &[k]))?;
    expect(f, 2, &batch)?;
    let count = batch_count(&batch)?;
    let a = f.arg_into_ret::<T>(0, 0)?;
    let ipiv = f.ret::<i32>(1)?;
    let info = f.ret::<i32>(2)?;
    if m == 0 || n == 0 {
        info.fill(0);
        return Ok(());
    }
    for ((a, p), i) in a
        .chunks_exact_mut(m * n)
        .zip(ipiv.chunks_exact_mut(k))
        .zip(info.iter_mut())
        .take(count)
    {
        *i = l.getrf(m, n, a, p)?;
    }
    Ok(())
}

/// `lapack_?potrf_ffi`: (x[..., n, n]) {uplo} -> (l[..., n, n], info s32[...]).
pub fn potrf<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 1, 2)?;
    let (batch, m, n) = matrix(&f.args()[0], "operand 0")?;
    if m != n {
        return Err(FfiError::invalid(format!(
            "expected square matrices, got {m}x{n}"
        )));
    }
    expect(f, 1, &batch)?;
    let uplo = uplo(f)?;
    let count = batch_count(&batch)?;
    let a = f.arg_into_ret::<T>(0, 0)?;
    let info = f.ret::<i32>(1)?;
    if n == 0 {
        info.fill(0);
        return Ok(());
    }
    for (a, i) in a.chunks_exact_mut(n * n).zip(info.iter_mut()).take(count) {
        *i = l.potrf(uplo, n, a)?;
    }
    Ok(())
}

/// `lapack_?trsm_ffi`: (a[..., k, k], b[..., m, n]) {side, uplo, trans_x, diag} -> x[..., m, n].
pub fn trsm<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 2, 1)?;
    let (batch, m, n) = matrix(&f.args()[1], "operand 1")?;
    let side = match char_attr(f, "side", b"LR")? {
        b'L' => Side::Left,
        _ => Side::Right,
    };
    let k = if side == Side::Left { m } else { n };
    let want_a = dims_of(&batch, &[k, k]);
    if f.args()[0].dims != want_a {
        return Err(FfiError::invalid(format!(
            "operand 0 has dims {:?}, expected {want_a:?}",
            f.args()[0].dims
        )));
    }
    let uplo = uplo(f)?;
    let trans = match char_attr(f, "trans_x", b"NTC")? {
        b'N' => Trans::No,
        b'T' => Trans::Trans,
        _ => Trans::Conj,
    };
    let diag = match char_attr(f, "diag", b"NU")? {
        b'N' => Diag::NonUnit,
        _ => Diag::Unit,
    };
    let count = batch_count(&batch)?;
    let a = f.arg::<T>(0)?;
    let b = f.arg_into_ret::<T>(1, 0)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    for (a, b) in a
        .chunks_exact(k * k)
        .zip(b.chunks_exact_mut(m * n))
        .take(count)
    {
        l.trsm(side, uplo, trans, diag, m, n, a, b)?;
    }
    Ok(())
}

/// `lapack_?geqrf_ffi`: (x[..., m, n]) -> (qr[..., m, n], tau[..., min]).
pub fn geqrf<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 1, 2)?;
    let (batch, m, n) = matrix(&f.args()[0], "operand 0")?;
    let k = m.min(n);
    expect(f, 1, &dims_of(&batch, &[k]))?;
    let count = batch_count(&batch)?;
    let a = f.arg_into_ret::<T>(0, 0)?;
    let tau = f.ret::<T>(1)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let lwork = usize::try_from(l.geqrf_lwork::<T>(m, n)?).unwrap_or(1);
    let mut work = vec![T::default(); lwork.max(1)];
    for (a, t) in a
        .chunks_exact_mut(m * n)
        .zip(tau.chunks_exact_mut(k))
        .take(count)
    {
        l.geqrf(m, n, a, t, &mut work)?;
    }
    Ok(())
}

/// `lapack_?orgqr_ffi` / `lapack_?ungqr_ffi`: (x[..., m, n], tau[..., k]) -> q[..., m, n].
pub fn orgqr<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 2, 1)?;
    let (batch, m, n) = matrix(&f.args()[0], "operand 0")?;
    let tdims = &f.args()[1].dims;
    let k = match tdims.split_last() {
        Some((&k, b)) if b == batch.as_slice() && usize::try_from(k).is_ok() => {
            usize::try_from(k).unwrap_or(0)
        }
        _ => {
            return Err(FfiError::invalid(format!(
                "operand 1 has dims {tdims:?}, expected {batch:?} + [k]"
            )))
        }
    };
    if !(m >= n && n >= k) {
        return Err(FfiError::invalid(format!(
            "needs m >= n >= k, got {m}x{n} with k = {k}"
        )));
    }
    let count = batch_count(&batch)?;
    let tau = f.arg::<T>(1)?;
    let a = f.arg_into_ret::<T>(0, 0)?;
    if m == 0 || n == 0 {
        return Ok(());
    }
    let lwork = usize::try_from(l.orgqr_lwork::<T>(m, n, k)?).unwrap_or(1);
    let mut work = vec![T::default(); lwork.max(1)];
    let tau_chunks: Box<dyn Iterator<Item = &[T]>> = if k == 0 {
        Box::new(std::iter::repeat(&[][..]))
    } else {
        Box::new(tau.chunks_exact(k))
    };
    for (a, t) in a.chunks_exact_mut(m * n).zip(tau_chunks).take(count) {
        l.orgqr(m, n, a, t, &mut work)?;
    }
    Ok(())
}

/// `lapack_?syevd_ffi` / `lapack_?heevd_ffi`: (x[..., n, n]) {mode, uplo} ->
/// (v[..., n, n], w real[..., n], info s32[...]).
pub fn eigh<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 1, 3)?;
    let (batch, m, n) = matrix(&f.args()[0], "operand 0")?;
    if m != n {
        return Err(FfiError::invalid(format!(
            "expected square matrices, got {m}x{n}"
        )));
    }
    expect(f, 1, &dims_of(&batch, &[n]))?;
    expect(f, 2, &batch)?;
    let job = match char_attr(f, "mode", b"NV")? {
        b'N' => EigJob::Values,
        _ => EigJob::Vectors,
    };
    let uplo = uplo(f)?;
    let count = batch_count(&batch)?;
    let a = f.arg_into_ret::<T>(0, 0)?;
    let w = f.ret::<T::Real>(1)?;
    let info = f.ret::<i32>(2)?;
    if n == 0 {
        info.fill(0);
        return Ok(());
    }
    let mut ws = Workspace::<T>::default();
    for ((a, w), i) in a
        .chunks_exact_mut(n * n)
        .zip(w.chunks_exact_mut(n))
        .zip(info.iter_mut())
        .take(count)
    {
        *i = T::eigh(l, job, uplo, n, a, w, &mut ws)?;
    }
    Ok(())
}

/// `lapack_?gesdd_ffi`: (x[..., m, n]) {mode} -> (x[..., m, n], s real[..., min], u[..., m, ·],
/// vt[..., ·, n], info s32[...]).
pub fn gesdd<T: Scalar>(l: &Lapack, f: &mut Frame<'_>) -> Result<(), FfiError> {
    counts(f, 1, 5)?;
    let (batch, m, n) = matrix(&f.args()[0], "operand 0")?;
    let k = m.min(n);
    let job = match char_attr(f, "mode", b"NSAO")? {
        b'N' => SvdJob::None,
        b'S' => SvdJob::Some,
        b'A' => SvdJob::All,
        _ => {
            return Err(FfiError::unimplemented(
                "mode 'O' is not supported (jaxlib does not support it either)",
            ))
        }
    };
    expect(f, 1, &dims_of(&batch, &[k]))?;
    expect(f, 4, &batch)?;
    let (ucols, vtrows) = match job {
        SvdJob::All => (m, n),
        SvdJob::Some => (k, k),
        // Not referenced; jax emits m×m and n×n.
        SvdJob::None => {
            let (ub, _, uc) = matrix(&f.rets()[2], "result 2")?;
            let (vb, vr, _) = matrix(&f.rets()[3], "result 3")?;
            if ub != batch || vb != batch {
                return Err(FfiError::invalid(format!(
                    "u/vt batch dims differ from the operand's {batch:?}"
                )));
            }
            (uc, vr)
        }
    };
    expect(f, 2, &dims_of(&batch, &[m, ucols]))?;
    expect(f, 3, &dims_of(&batch, &[vtrows, n]))?;
    let count = batch_count(&batch)?;
    let a = f.arg_into_ret::<T>(0, 0)?;
    let s = f.ret::<T::Real>(1)?;
    let u = f.ret::<T>(2)?;
    let vt = f.ret::<T>(3)?;
    let info = f.ret::<i32>(4)?;
    if m == 0 || n == 0 {
        // No singular values; U and Vᵀ are identities (LAPACK would leave them unset).
        for (q, d) in [(u, m), (vt, n)] {
            if d > 0 && job != SvdJob::None {
                for mat in q.chunks_exact_mut(d * d) {
                    mat.fill(T::default());
                    for j in 0..d {
                        mat[j * d + j] = T::from_real(T::REAL_ONE);
                    }
                }
            }
        }
        info.fill(0);
        return Ok(());
    }
    let (usz, vtsz) = (m * ucols, vtrows * n);
    let lwork = usize::try_from(T::gesdd_lwork(l, job, m, n)?).unwrap_or(1);
    let mut ws = Workspace::<T>::default();
    let (iwork, rwork) = gesdd_sizes(m, n, job)?;
    ws.resize(lwork, if T::COMPLEX { rwork } else { 0 }, iwork);
    let pass = job != SvdJob::None;
    let mut u_chunks = u.chunks_exact_mut(usz.max(1));
    let mut vt_chunks = vt.chunks_exact_mut(vtsz.max(1));
    for ((a, s), i) in a
        .chunks_exact_mut(m * n)
        .zip(s.chunks_exact_mut(k))
        .zip(info.iter_mut())
        .take(count)
    {
        let (uc, vc) = (u_chunks.next(), vt_chunks.next());
        let (uc, vc): (&mut [T], &mut [T]) = if pass {
            match (uc, vc) {
                (Some(u), Some(v)) => (u, v),
                _ => return Err(FfiError::internal("u/vt too short")),
            }
        } else {
            (&mut [], &mut [])
        };
        *i = T::gesdd(l, job, m, n, a, s, uc, vc, &mut ws)?;
    }
    Ok(())
}
