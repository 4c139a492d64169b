//! The LAPACK library: symbol loading and one checked, safe wrapper per routine.
//!
//! Routines are taken by their Fortran names (`dgetrf_`), with the `scipy_` prefix that the
//! OpenBLAS inside scipy's wheels uses tried first. Every wrapper works on one column-major
//! matrix, takes slices, and checks each slice's length against the dimensions (and the fixed
//! workspace sizes the routine does not receive) before the call, so no call can read or write
//! out of bounds whatever the caller passes. Character arguments are enums; the Fortran hidden
//! string lengths (gfortran ABI) are passed as 1.
#![allow(clippy::too_many_arguments)]

use std::ffi::c_char;
use std::path::{Path, PathBuf};

use super::ffi::{Complex, Element, FfiError};

/// `RTLD_NODELETE`: the library stays mapped (OpenBLAS's threads run its code until exit).
const RTLD_NODELETE: std::ffi::c_int = 0x1000;

/// `uplo`: which triangle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpLo {
    /// `'L'`.
    Lower,
    /// `'U'`.
    Upper,
}

/// `side` of a triangular solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `'L'`: op(A) X = B.
    Left,
    /// `'R'`: X op(A) = B.
    Right,
}

/// `transa`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// `'N'`.
    No,
    /// `'T'`.
    Trans,
    /// `'C'`.
    Conj,
}

/// `diag`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Diag {
    /// `'N'`.
    NonUnit,
    /// `'U'`.
    Unit,
}

/// `jobz` of `syevd`/`heevd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EigJob {
    /// `'N'`: eigenvalues only.
    Values,
    /// `'V'`: eigenvalues and eigenvectors.
    Vectors,
}

/// `jobz` of `gesdd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SvdJob {
    /// `'N'`: singular values only.
    None,
    /// `'S'`: the first min(m, n) columns of U and rows of Vᵀ.
    Some,
    /// `'A'`: all of U and Vᵀ.
    All,
}

impl UpLo {
    fn c(self) -> c_char {
        (match self {
            UpLo::Lower => b'L',
            UpLo::Upper => b'U',
        }) as c_char
    }
}
impl Side {
    fn c(self) -> c_char {
        (match self {
            Side::Left => b'L',
            Side::Right => b'R',
        }) as c_char
    }
}
impl Trans {
    fn c(self) -> c_char {
        (match self {
            Trans::No => b'N',
            Trans::Trans => b'T',
            Trans::Conj => b'C',
        }) as c_char
    }
}
impl Diag {
    fn c(self) -> c_char {
        (match self {
            Diag::NonUnit => b'N',
            Diag::Unit => b'U',
        }) as c_char
    }
}
impl EigJob {
    fn c(self) -> c_char {
        (match self {
            EigJob::Values => b'N',
            EigJob::Vectors => b'V',
        }) as c_char
    }
}
impl SvdJob {
    fn c(self) -> c_char {
        (match self {
            SvdJob::None => b'N',
            SvdJob::Some => b'S',
            SvdJob::All => b'A',
        }) as c_char
    }
}

type C = *const c_char;
type I = *const i32;
type O = *mut i32;
type L = usize;

type GetrfFn<T> = unsafe extern "C" fn(I, I, *mut T, I, O, O);
type PotrfFn<T> = unsafe extern "C" fn(C, I, *mut T, I, O, L);
type TrsmFn<T> =
    unsafe extern "C" fn(C, C, C, C, I, I, *const T, *const T, I, *mut T, I, L, L, L, L);
type GeqrfFn<T> = unsafe extern "C" fn(I, I, *mut T, I, *mut T, *mut T, I, O);
type OrgqrFn<T> = unsafe extern "C" fn(I, I, I, *mut T, I, *const T, *mut T, I, O);
type SyevdFn<T> = unsafe extern "C" fn(C, C, I, *mut T, I, *mut T, *mut T, I, O, I, O, L, L);
type HeevdFn<T, R> =
    unsafe extern "C" fn(C, C, I, *mut T, I, *mut R, *mut T, I, *mut R, I, O, I, O, L, L);
type GesddFn<T> =
    unsafe extern "C" fn(C, I, I, *mut T, I, *mut T, *mut T, I, *mut T, I, *mut T, I, O, O, L);
type ZgesddFn<T, R> = unsafe extern "C" fn(
    C,
    I,
    I,
    *mut T,
    I,
    *mut R,
    *mut T,
    I,
    *mut T,
    I,
    *mut T,
    I,
    *mut R,
    O,
    O,
    L,
);

/// The routines every dtype has with one signature (resolved from one library).
pub struct Common<T> {
    getrf: GetrfFn<T>,
    potrf: PotrfFn<T>,
    trsm: TrsmFn<T>,
    geqrf: GeqrfFn<T>,
    /// `?orgqr` for real types, `?ungqr` for complex ones.
    orgqr: OrgqrFn<T>,
}

/// A loaded LAPACK (with BLAS `?trsm`): the library handle and every routine xlaguard calls.
pub struct Lapack {
    path: PathBuf,
    config: String,
    prefix: &'static str,
    s: Common<f32>,
    d: Common<f64>,
    c: Common<Complex<f32>>,
    z: Common<Complex<f64>>,
    ssyevd: SyevdFn<f32>,
    dsyevd: SyevdFn<f64>,
    cheevd: HeevdFn<Complex<f32>, f32>,
    zheevd: HeevdFn<Complex<f64>, f64>,
    sgesdd: GesddFn<f32>,
    dgesdd: GesddFn<f64>,
    cgesdd: ZgesddFn<Complex<f32>, f32>,
    zgesdd: ZgesddFn<Complex<f64>, f64>,
    _lib: std::mem::ManuallyDrop<libloading::Library>,
}

impl std::fmt::Debug for Lapack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lapack")
            .field("path", &self.path)
            .field("config", &self.config)
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Symbol prefixes tried, in order: scipy's OpenBLAS, then plain Fortran names.
const PREFIXES: [&str; 2] = ["scipy_", ""];

impl Lapack {
    /// Opens the library at `path` and resolves every routine.
    ///
    /// # Errors
    /// A message naming the path and the missing symbol, or the loader's error.
    pub fn open(path: &Path) -> Result<Lapack, String> {
        let flags =
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_LOCAL | RTLD_NODELETE;
        // SAFETY: loading a shared library runs its initializers; the file is the LAPACK the
        // operator installed (pinned by sha256 in third_party/requirements-lapack.txt, or named
        // explicitly), trusted like the PJRT plugin.
        let lib: libloading::Library =
            unsafe { libloading::os::unix::Library::open(Some(path), flags) }
                .map_err(|e| format!("cannot load LAPACK library {}: {e}", path.display()))?
                .into();
        let prefix = PREFIXES
            .into_iter()
            .find(|p| {
                let name = format!("{p}dgetrf_\0");
                // SAFETY: only checks that the symbol exists; it is not called.
                unsafe { lib.get::<unsafe extern "C" fn()>(name.as_bytes()) }.is_ok()
            })
            .ok_or_else(|| {
                format!(
                    "{} is not a LAPACK library (no scipy_dgetrf_ or dgetrf_ symbol)",
                    path.display()
                )
            })?;
        macro_rules! sym {
            ($name:expr) => {{
                let name = format!("{}{}_\0", prefix, $name);
                // SAFETY: the symbol is the Fortran-ABI LAPACK/BLAS routine of that name; its C
                // signature is the one the field's type spells (reference LAPACK 3.x docs, with
                // gfortran's trailing hidden string lengths). The library stays mapped.
                *unsafe { lib.get(name.as_bytes()) }.map_err(|e| {
                    format!("{}: no symbol {}{}_ ({e})", path.display(), prefix, $name)
                })?
            }};
        }
        macro_rules! common {
            ($p:literal, $q:literal) => {
                Common {
                    getrf: sym!(concat!($p, "getrf")),
                    potrf: sym!(concat!($p, "potrf")),
                    trsm: sym!(concat!($p, "trsm")),
                    geqrf: sym!(concat!($p, "geqrf")),
                    orgqr: sym!(concat!($p, $q)),
                }
            };
        }
        let s = common!("s", "orgqr");
        let d = common!("d", "orgqr");
        let c = common!("c", "ungqr");
        let z = common!("z", "ungqr");
        let config = {
            let name = format!("{prefix}openblas_get_config\0");
            // SAFETY: OpenBLAS's `char* openblas_get_config(void)` returns a static string.
            match unsafe { lib.get::<unsafe extern "C" fn() -> *const c_char>(name.as_bytes()) } {
                Ok(f) => {
                    // SAFETY: as above; the string is static and NUL-terminated.
                    let p = unsafe { f() };
                    if p.is_null() {
                        String::new()
                    } else {
                        // SAFETY: non-null static C string.
                        unsafe { std::ffi::CStr::from_ptr(p) }
                            .to_string_lossy()
                            .into_owned()
                    }
                }
                Err(_) => String::new(),
            }
        };
        Ok(Lapack {
            path: path.to_path_buf(),
            config,
            prefix,
            s,
            d,
            c,
            z,
            ssyevd: sym!("ssyevd"),
            dsyevd: sym!("dsyevd"),
            cheevd: sym!("cheevd"),
            zheevd: sym!("zheevd"),
            sgesdd: sym!("sgesdd"),
            dgesdd: sym!("dgesdd"),
            cgesdd: sym!("cgesdd"),
            zgesdd: sym!("zgesdd"),
            _lib: std::mem::ManuallyDrop::new(lib),
        })
    }

    /// The library file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// OpenBLAS's configuration string (`OpenBLAS 0.3.31.dev DYNAMIC_ARCH ... SkylakeX`), empty
    /// for another LAPACK.
    pub fn config(&self) -> &str {
        &self.config
    }
}

fn int(v: usize, what: &str) -> Result<i32, FfiError> {
    i32::try_from(v).map_err(|_| FfiError::invalid(format!("{what} = {v} exceeds LAPACK's int")))
}

fn len_is<T>(s: &[T], want: usize, what: &str) -> Result<(), FfiError> {
    if s.len() != want {
        return Err(FfiError::internal(format!(
            "{what} has {} elements, expected {want}",
            s.len()
        )));
    }
    Ok(())
}

fn len_at_least<T>(s: &[T], want: usize, what: &str) -> Result<(), FfiError> {
    if s.len() < want {
        return Err(FfiError::internal(format!(
            "{what} has {} elements, need at least {want}",
            s.len()
        )));
    }
    Ok(())
}

fn mul(a: usize, b: usize) -> Result<usize, FfiError> {
    a.checked_mul(b)
        .ok_or_else(|| FfiError::invalid("matrix size overflows"))
}

/// A LAPACK element type: f32, f64, c64, c128.
pub trait Scalar: Element + Default {
    /// The real type (the type of eigenvalues and singular values).
    type Real: Element + Default;
    /// One (the `alpha` of `trsm`).
    const ONE: Self;
    /// Whether this is a complex type (whose routines take a real `rwork`).
    const COMPLEX: bool;
    /// The real part, truncated to an int: a workspace query's answer.
    fn lwork(self) -> i32;
    /// A real value as this type (for identity fills).
    fn from_real(r: Self::Real) -> Self;
    /// One as the real type.
    const REAL_ONE: Self::Real;
    #[doc(hidden)]
    fn common(l: &Lapack) -> &Common<Self>;
    /// `?syevd` / `?heevd` on an n×n matrix with jaxlib's workspace sizes; returns `info`.
    fn eigh(
        l: &Lapack,
        job: EigJob,
        uplo: UpLo,
        n: usize,
        a: &mut [Self],
        w: &mut [Self::Real],
        ws: &mut Workspace<Self>,
    ) -> Result<i32, FfiError>;
    /// `?gesdd` on an m×n matrix; `u`, `vt` sized for `job`; returns `info`.
    fn gesdd(
        l: &Lapack,
        job: SvdJob,
        m: usize,
        n: usize,
        a: &mut [Self],
        s: &mut [Self::Real],
        u: &mut [Self],
        vt: &mut [Self],
        ws: &mut Workspace<Self>,
    ) -> Result<i32, FfiError>;
    /// The optimal `lwork` of `?gesdd` (a workspace query, as jaxlib makes it).
    fn gesdd_lwork(l: &Lapack, job: SvdJob, m: usize, n: usize) -> Result<i32, FfiError>;
}

/// Scratch space reused across the matrices of one batched call.
#[derive(Default)]
pub struct Workspace<T: Scalar> {
    /// `work`.
    pub work: Vec<T>,
    /// `rwork` (complex routines).
    pub rwork: Vec<T::Real>,
    /// `iwork`.
    pub iwork: Vec<i32>,
}

impl<T: Scalar> Workspace<T> {
    /// Sizes the buffers (zero-filled).
    pub fn resize(&mut self, work: usize, rwork: usize, iwork: usize) {
        self.work.clear();
        self.work.resize(work.max(1), T::default());
        self.rwork.clear();
        self.rwork.resize(rwork.max(1), T::Real::default());
        self.iwork.clear();
        self.iwork.resize(iwork.max(1), 0);
    }
}

/// Workspace sizes jaxlib 0.11.2 uses for `?syevd` (`eig::GetWorkspaceSize` and friends).
fn syevd_sizes(n: usize, job: EigJob, complex: bool) -> Result<(usize, usize, usize), FfiError> {
    let nn = mul(n, n)?;
    let s = match (job, complex) {
        (EigJob::Values, false) => (2 * n + 1, 0, 1),
        (EigJob::Vectors, false) => (1 + 6 * n + 2 * nn, 0, 3 + 5 * n),
        (EigJob::Values, true) => (n + 1, n.max(1), 1),
        (EigJob::Vectors, true) => (2 * n + nn, 1 + 5 * n + 2 * nn, 3 + 5 * n),
    };
    Ok(s)
}

/// `?gesdd`'s `iwork` (8 min(m, n)) and, for complex types, `rwork` (jaxlib's
/// `svd::GetRealWorkspaceSize`, LAPACK's documented minimum).
pub fn gesdd_sizes(m: usize, n: usize, job: SvdJob) -> Result<(usize, usize), FfiError> {
    let mn = m.min(n);
    let mx = m.max(n);
    let rwork = if job == SvdJob::None {
        7 * mn
    } else {
        let a = mul(5, mul(mn, mn)?)? + 5 * mn;
        let b = mul(2, mul(mx, mn)?)? + mul(2, mul(mn, mn)?)? + mn;
        a.max(b)
    };
    Ok((8 * mn, rwork))
}

/// The leading dimension and element counts of U and Vᵀ for a job.
fn svd_dims(job: SvdJob, m: usize, n: usize) -> (usize, usize, usize) {
    let mn = m.min(n);
    match job {
        SvdJob::All => (n, m * m, n * n),
        SvdJob::Some => (mn, m * mn, mn * n),
        SvdJob::None => (n, 0, 0),
    }
}

macro_rules! scalar {
    ($t:ty, $real:ty, $one:expr, $rone:expr, $field:ident, lwork = $lw:expr, from_real = $fr:expr,
     eigh = $eigh:ident ($complex:tt), gesdd = $gesdd:ident) => {
        impl Scalar for $t {
            type Real = $real;
            const ONE: Self = $one;
            const COMPLEX: bool = scalar!(@bool $complex);
            const REAL_ONE: $real = $rone;
            // `as` truncates toward zero and saturates, as jaxlib's static_cast of the query's
            // answer truncates; a workspace beyond i32 is refused by LAPACK's own checks.
            #[allow(clippy::cast_possible_truncation)]
            fn lwork(self) -> i32 {
                let f: fn($t) -> f64 = $lw;
                f(self) as i32
            }
            fn from_real(r: $real) -> Self {
                let f: fn($real) -> $t = $fr;
                f(r)
            }
            fn common(l: &Lapack) -> &Common<Self> {
                &l.$field
            }
            fn eigh(
                l: &Lapack,
                job: EigJob,
                uplo: UpLo,
                n: usize,
                a: &mut [Self],
                w: &mut [$real],
                ws: &mut Workspace<Self>,
            ) -> Result<i32, FfiError> {
                len_is(a, mul(n, n)?, "eigh matrix")?;
                len_is(w, n, "eigenvalues")?;
                let (lwork, lrwork, liwork) = syevd_sizes(n, job, scalar!(@bool $complex))?;
                ws.resize(lwork, lrwork, liwork);
                let nn = int(n, "n")?;
                let lda = nn.max(1);
                let lwork = int(ws.work.len(), "lwork")?;
                let lrwork = int(ws.rwork.len(), "lrwork")?;
                let liwork = int(ws.iwork.len(), "liwork")?;
                let (jobz, uplo) = (job.c(), uplo.c());
                let mut info = 0;
                scalar!(@eigh $complex, l.$eigh, jobz, uplo, nn, a, lda, w, ws, lwork, lrwork,
                        liwork, info);
                Ok(info)
            }
            fn gesdd_lwork(l: &Lapack, job: SvdJob, m: usize, n: usize) -> Result<i32, FfiError> {
                let (mm, nn) = (int(m, "m")?, int(n, "n")?);
                let (ldvt, _, _) = svd_dims(job, m, n);
                let ldvt = int(ldvt, "ldvt")?.max(1);
                let ld = mm.max(1);
                let mut work = <$t>::default();
                let lwork = -1;
                let mut info = 0;
                let jobz = job.c();
                let mut iw = 0i32;
                let mut dummy = <$t>::default();
                let mut rdummy = <$real>::default();
                let dp: *mut $t = &mut dummy;
                let rp: *mut $real = &mut rdummy;
                let wp: *mut $t = &mut work;
                let ip: *mut i32 = &mut iw;
                scalar!(@gesdd_query $complex, l.$gesdd, jobz, mm, nn, dp, ld, rp, ldvt, wp,
                        lwork, ip, info);
                if info != 0 {
                    return Err(FfiError::internal(format!(
                        "gesdd workspace query failed (info {info})"
                    )));
                }
                Ok(work.lwork().max(1))
            }
            fn gesdd(
                l: &Lapack,
                job: SvdJob,
                m: usize,
                n: usize,
                a: &mut [Self],
                s: &mut [$real],
                u: &mut [Self],
                vt: &mut [Self],
                ws: &mut Workspace<Self>,
            ) -> Result<i32, FfiError> {
                len_is(a, mul(m, n)?, "svd matrix")?;
                len_is(s, m.min(n), "singular values")?;
                let (ldvt, ulen, vtlen) = svd_dims(job, m, n);
                if job != SvdJob::None {
                    len_is(u, ulen, "u")?;
                    len_is(vt, vtlen, "vt")?;
                }
                let (iwork, rwork) = gesdd_sizes(m, n, job)?;
                len_at_least(&ws.work, 1, "gesdd work")?;
                len_at_least(&ws.iwork, iwork, "gesdd iwork")?;
                if scalar!(@bool $complex) {
                    len_at_least(&ws.rwork, rwork, "gesdd rwork")?;
                }
                let (mm, nn) = (int(m, "m")?, int(n, "n")?);
                let ld = mm.max(1);
                let ldvt = int(ldvt, "ldvt")?.max(1);
                let lwork = int(ws.work.len(), "lwork")?;
                let jobz = job.c();
                let mut info = 0;
                // With job N, U and Vᵀ are not referenced (LAPACK); they may be empty.
                let mut du = <$t>::default();
                let mut dvt = <$t>::default();
                let up: *mut $t = if u.is_empty() { &mut du } else { u.as_mut_ptr() };
                let vtp: *mut $t = if vt.is_empty() { &mut dvt } else { vt.as_mut_ptr() };
                scalar!(@gesdd $complex, l.$gesdd, jobz, mm, nn, a, ld, s, up, vtp, ldvt, ws,
                        lwork, info);
                Ok(info)
            }
        }
    };
    (@bool real) => { false };
    (@bool complex) => { true };
    (@eigh real, $f:expr, $jobz:ident, $uplo:ident, $n:ident, $a:ident, $lda:ident, $w:ident,
     $ws:ident, $lwork:ident, $lrwork:ident, $liwork:ident, $info:ident) => {
        let _ = $lrwork;
        // SAFETY: a is n×n (lda = max(1, n)), w has n entries, work/iwork hold lwork/liwork
        // (LAPACK reads the sizes and refuses smaller than its minimum); checked above.
        unsafe {
            ($f)(&$jobz, &$uplo, &$n, $a.as_mut_ptr(), &$lda, $w.as_mut_ptr(),
                 $ws.work.as_mut_ptr(), &$lwork, $ws.iwork.as_mut_ptr(), &$liwork, &mut $info, 1, 1)
        };
    };
    (@eigh complex, $f:expr, $jobz:ident, $uplo:ident, $n:ident, $a:ident, $lda:ident, $w:ident,
     $ws:ident, $lwork:ident, $lrwork:ident, $liwork:ident, $info:ident) => {
        // SAFETY: as for the real case, with rwork holding lrwork.
        unsafe {
            ($f)(&$jobz, &$uplo, &$n, $a.as_mut_ptr(), &$lda, $w.as_mut_ptr(),
                 $ws.work.as_mut_ptr(), &$lwork, $ws.rwork.as_mut_ptr(), &$lrwork,
                 $ws.iwork.as_mut_ptr(), &$liwork, &mut $info, 1, 1)
        };
    };
    (@gesdd_query real, $f:expr, $jobz:ident, $m:ident, $n:ident, $a:expr, $ld:ident, $r:expr,
     $ldvt:ident, $work:expr, $lwork:ident, $iw:expr, $info:ident) => {
        let _ = $r;
        // SAFETY: lwork = -1 is a workspace query: LAPACK writes only work[0] (and info).
        unsafe {
            ($f)(&$jobz, &$m, &$n, $a, &$ld, $a, $a, &$ld, $a, &$ldvt, $work, &$lwork, $iw,
                 &mut $info, 1)
        };
    };
    (@gesdd_query complex, $f:expr, $jobz:ident, $m:ident, $n:ident, $a:expr, $ld:ident, $r:expr,
     $ldvt:ident, $work:expr, $lwork:ident, $iw:expr, $info:ident) => {
        // SAFETY: lwork = -1 is a workspace query: LAPACK writes only work[0] (and info).
        unsafe {
            ($f)(&$jobz, &$m, &$n, $a, &$ld, $r, $a, &$ld, $a, &$ldvt, $work, &$lwork, $r, $iw,
                 &mut $info, 1)
        };
    };
    (@gesdd real, $f:expr, $jobz:ident, $m:ident, $n:ident, $a:ident, $ld:ident, $s:ident,
     $u:ident, $vt:ident, $ldvt:ident, $ws:ident, $lwork:ident, $info:ident) => {
        // SAFETY: a is m×n (lda = max(1, m)), s has min(m, n) entries, u/vt hold what the job
        // writes with ldu = max(1, m) and this ldvt, iwork holds 8 min(m, n), work holds
        // lwork (LAPACK refuses a smaller than minimal lwork); all checked above.
        unsafe {
            ($f)(&$jobz, &$m, &$n, $a.as_mut_ptr(), &$ld, $s.as_mut_ptr(), $u, &$ld, $vt,
                 &$ldvt, $ws.work.as_mut_ptr(), &$lwork, $ws.iwork.as_mut_ptr(), &mut $info, 1)
        };
    };
    (@gesdd complex, $f:expr, $jobz:ident, $m:ident, $n:ident, $a:ident, $ld:ident, $s:ident,
     $u:ident, $vt:ident, $ldvt:ident, $ws:ident, $lwork:ident, $info:ident) => {
        // SAFETY: as for the real case, with rwork holding LAPACK's documented minimum.
        unsafe {
            ($f)(&$jobz, &$m, &$n, $a.as_mut_ptr(), &$ld, $s.as_mut_ptr(), $u, &$ld, $vt,
                 &$ldvt, $ws.work.as_mut_ptr(), &$lwork, $ws.rwork.as_mut_ptr(),
                 $ws.iwork.as_mut_ptr(), &mut $info, 1)
        };
    };
}

scalar!(
    f32,
    f32,
    1.0,
    1.0,
    s,
    lwork = |x| f64::from(x),
    from_real = |r| r,
    eigh = ssyevd(real),
    gesdd = sgesdd
);
scalar!(
    f64,
    f64,
    1.0,
    1.0,
    d,
    lwork = |x| x,
    from_real = |r| r,
    eigh = dsyevd(real),
    gesdd = dgesdd
);
scalar!(
    Complex<f32>,
    f32,
    Complex { re: 1.0, im: 0.0 },
    1.0,
    c,
    lwork = |x| f64::from(x.re),
    from_real = |r| Complex { re: r, im: 0.0 },
    eigh = cheevd(complex),
    gesdd = cgesdd
);
scalar!(
    Complex<f64>,
    f64,
    Complex { re: 1.0, im: 0.0 },
    1.0,
    z,
    lwork = |x| x.re,
    from_real = |r| Complex { re: r, im: 0.0 },
    eigh = zheevd(complex),
    gesdd = zgesdd
);

impl Lapack {
    /// `?getrf` on an m×n matrix (lda = max(1, m)); `ipiv` gets min(m, n) 1-based pivots.
    /// Returns `info` (> 0: U(info, info) is exactly zero).
    pub fn getrf<T: Scalar>(
        &self,
        m: usize,
        n: usize,
        a: &mut [T],
        ipiv: &mut [i32],
    ) -> Result<i32, FfiError> {
        len_is(a, mul(m, n)?, "getrf matrix")?;
        len_is(ipiv, m.min(n), "getrf pivots")?;
        let (mm, nn) = (int(m, "m")?, int(n, "n")?);
        let lda = mm.max(1);
        let mut info = 0;
        // SAFETY: a is m×n column-major with lda = max(1, m), ipiv has min(m, n) entries.
        unsafe {
            (T::common(self).getrf)(&mm, &nn, a.as_mut_ptr(), &lda, ipiv.as_mut_ptr(), &mut info)
        };
        Ok(info)
    }

    /// `?potrf` on an n×n matrix. Returns `info` (> 0: not positive definite).
    pub fn potrf<T: Scalar>(&self, uplo: UpLo, n: usize, a: &mut [T]) -> Result<i32, FfiError> {
        len_is(a, mul(n, n)?, "potrf matrix")?;
        let nn = int(n, "n")?;
        let lda = nn.max(1);
        let mut info = 0;
        let u = uplo.c();
        // SAFETY: a is n×n with lda = max(1, n).
        unsafe { (T::common(self).potrf)(&u, &nn, a.as_mut_ptr(), &lda, &mut info, 1) };
        Ok(info)
    }

    /// `?trsm` with alpha = 1: solves op(A) X = B (side left, A m×m) or X op(A) = B (side
    /// right, A n×n) for X, overwriting the m×n matrix `b`.
    pub fn trsm<T: Scalar>(
        &self,
        side: Side,
        uplo: UpLo,
        trans: Trans,
        diag: Diag,
        m: usize,
        n: usize,
        a: &[T],
        b: &mut [T],
    ) -> Result<(), FfiError> {
        let k = if side == Side::Left { m } else { n };
        len_is(a, mul(k, k)?, "trsm triangle")?;
        len_is(b, mul(m, n)?, "trsm right-hand side")?;
        let (mm, nn, kk) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
        let (lda, ldb) = (kk.max(1), mm.max(1));
        let (s, u, t, d) = (side.c(), uplo.c(), trans.c(), diag.c());
        let one = T::ONE;
        // With k = 0 there is nothing to solve, and `a` may be an empty slice.
        if m == 0 || n == 0 {
            return Ok(());
        }
        // SAFETY: a is k×k (lda = max(1, k)), read only; b is m×n (ldb = max(1, m)).
        unsafe {
            (T::common(self).trsm)(
                &s,
                &u,
                &t,
                &d,
                &mm,
                &nn,
                &one,
                a.as_ptr(),
                &lda,
                b.as_mut_ptr(),
                &ldb,
                1,
                1,
                1,
                1,
            )
        };
        Ok(())
    }

    /// The optimal `lwork` of `?geqrf` for an m×n matrix (a workspace query).
    pub fn geqrf_lwork<T: Scalar>(&self, m: usize, n: usize) -> Result<i32, FfiError> {
        let (mm, nn) = (int(m, "m")?, int(n, "n")?);
        let lda = mm.max(1);
        let mut work = T::default();
        let mut dummy = T::default();
        let lwork = -1;
        let mut info = 0;
        // SAFETY: lwork = -1 is a workspace query: only work[0] and info are written.
        unsafe {
            (T::common(self).geqrf)(
                &mm, &nn, &mut dummy, &lda, &mut dummy, &mut work, &lwork, &mut info,
            )
        };
        if info != 0 {
            return Err(FfiError::internal(format!(
                "geqrf workspace query failed (info {info})"
            )));
        }
        Ok(work.lwork().max(1))
    }

    /// `?geqrf` on an m×n matrix: R above the diagonal, Householder vectors below, `tau` gets
    /// min(m, n) scalars. `work` is the workspace (its length is lwork).
    pub fn geqrf<T: Scalar>(
        &self,
        m: usize,
        n: usize,
        a: &mut [T],
        tau: &mut [T],
        work: &mut [T],
    ) -> Result<i32, FfiError> {
        len_is(a, mul(m, n)?, "geqrf matrix")?;
        len_is(tau, m.min(n), "geqrf tau")?;
        len_at_least(work, 1, "geqrf work")?;
        let (mm, nn) = (int(m, "m")?, int(n, "n")?);
        let lda = mm.max(1);
        let lwork = int(work.len(), "lwork")?;
        let mut info = 0;
        let mut dtau = T::default();
        let taup: *mut T = if tau.is_empty() {
            &mut dtau
        } else {
            tau.as_mut_ptr()
        };
        // SAFETY: a is m×n (lda = max(1, m)), tau holds min(m, n), work holds lwork.
        unsafe {
            (T::common(self).geqrf)(
                &mm,
                &nn,
                a.as_mut_ptr(),
                &lda,
                taup,
                work.as_mut_ptr(),
                &lwork,
                &mut info,
            )
        };
        Ok(info)
    }

    /// The optimal `lwork` of `?orgqr`/`?ungqr`.
    pub fn orgqr_lwork<T: Scalar>(&self, m: usize, n: usize, k: usize) -> Result<i32, FfiError> {
        let (mm, nn, kk) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
        let lda = mm.max(1);
        let mut work = T::default();
        let mut dummy = T::default();
        let lwork = -1;
        let mut info = 0;
        // SAFETY: lwork = -1 is a workspace query: only work[0] and info are written.
        unsafe {
            (T::common(self).orgqr)(
                &mm, &nn, &kk, &mut dummy, &lda, &dummy, &mut work, &lwork, &mut info,
            )
        };
        if info != 0 {
            return Err(FfiError::internal(format!(
                "orgqr workspace query failed (info {info})"
            )));
        }
        Ok(work.lwork().max(1))
    }

    /// `?orgqr`/`?ungqr`: the m×n matrix Q from k reflectors (m ≥ n ≥ k).
    pub fn orgqr<T: Scalar>(
        &self,
        m: usize,
        n: usize,
        a: &mut [T],
        tau: &[T],
        work: &mut [T],
    ) -> Result<i32, FfiError> {
        let k = tau.len();
        if !(m >= n && n >= k) {
            return Err(FfiError::invalid(format!(
                "orgqr needs m >= n >= k, got m = {m}, n = {n}, k = {k}"
            )));
        }
        len_is(a, mul(m, n)?, "orgqr matrix")?;
        len_at_least(work, 1, "orgqr work")?;
        let (mm, nn, kk) = (int(m, "m")?, int(n, "n")?, int(k, "k")?);
        let lda = mm.max(1);
        let lwork = int(work.len(), "lwork")?;
        let mut info = 0;
        let dtau = T::default();
        let taup: *const T = if tau.is_empty() { &dtau } else { tau.as_ptr() };
        if m == 0 || n == 0 {
            return Ok(0);
        }
        // SAFETY: a is m×n (lda = max(1, m)), tau holds k ≤ n reflectors, work holds lwork.
        unsafe {
            (T::common(self).orgqr)(
                &mm,
                &nn,
                &kk,
                a.as_mut_ptr(),
                &lda,
                taup,
                work.as_mut_ptr(),
                &lwork,
                &mut info,
            )
        };
        Ok(info)
    }
}
