"""Fixtures for jnp.linalg on CPU (issue 18): models whose modules call LAPACK custom calls
(`stablehlo.custom_call @lapack_<t><routine>_ffi`), with JAX's outputs.

One model per function and dtype under hlo/linalg/<function>_<dtype>/. Each takes an unbatched
and a batched operand (and the variants of the function: modes, triangles, transposes) and
returns every result, so one fixture covers both layouts jax emits (`num_batch_dims = 0` and
> 0). Plus real uses (a Gaussian-process posterior mean through cho_factor/cho_solve, a
least-squares polynomial fit) and inputs that make LAPACK fail: singular and ill-conditioned
systems, non-positive-definite Cholesky, NaN inputs.

Each folder holds model.jaxexport, in*.npy, out*.npy (exp.call, checked equal to jax.jit) and
meta.json (`custom_call_targets`: every target the module calls; `lapack`: the OpenBLAS jaxlib
called). Run from the repository root: venv312/bin/python hlo/export_linalg.py (about 40 s).
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import re
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)  # f64/c128 models; f32 ones say so explicitly

import jax.numpy as jnp  # noqa: E402
import jax.scipy.linalg as jsl  # noqa: E402
import numpy as np  # noqa: E402
from jax import export, lax  # noqa: E402

JAX_VERSION = "0.11.2"
HLO = Path(__file__).resolve().parent
OUT = HLO / "linalg"
REPO_ROOT = HLO.parent
MAX_FOLDER_BYTES = 96 << 10

if jax.__version__ != JAX_VERSION:
    sys.exit(f"hlo/export_linalg.py needs jax=={JAX_VERSION}, found {jax.__version__}")
jax.config.update(
    "jax_hlo_source_file_canonicalization_regex", "^" + re.escape(str(REPO_ROOT) + os.sep)
)

DTYPES = {"f32": np.float32, "f64": np.float64, "c64": np.complex64, "c128": np.complex128}
TARGET_RE = re.compile(r"stablehlo\.custom_call @(\w+)\(")


def openblas_config() -> str:
    """The configuration string of the OpenBLAS in scipy's wheel (what jaxlib calls)."""
    import scipy
    libs = sorted(glob.glob(str(Path(scipy.__file__).parent.parent / "scipy.libs" / "libscipy_openblas*.so")))
    lib = ctypes.CDLL(libs[0])
    lib.scipy_openblas_get_config.restype = ctypes.c_char_p
    return f"{Path(libs[0]).name}: {lib.scipy_openblas_get_config().decode()}"


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def rand(r, shape, dt):
    x = r.standard_normal(shape)
    if np.issubdtype(dt, np.complexfloating):
        x = x + 1j * r.standard_normal(shape)
    return x.astype(dt)


def spd(r, shape, dt):
    """Hermitian positive definite: A Aᴴ + n I."""
    a = rand(r, shape, dt)
    n = shape[-1]
    return (a @ np.conj(np.swapaxes(a, -1, -2)) + n * np.eye(n)).astype(dt)


def herm(r, shape, dt):
    a = rand(r, shape, dt)
    return ((a + np.conj(np.swapaxes(a, -1, -2))) / 2).astype(dt)


def tri(r, shape, dt, lower: bool):
    a = rand(r, shape, dt) + 3 * np.eye(shape[-1])
    return (np.tril(a) if lower else np.triu(a)).astype(dt)


def save_npy(path: Path, arr) -> None:
    with open(path, "wb") as f:
        np.save(f, np.asarray(arr), allow_pickle=False)


SUMMARY: list[str] = []


def write(name: str, fn, args: tuple, *, function: str, notes: str, expect: list[str]) -> None:
    """Export `fn` at `args`, check every target in `expect` is called, write hlo/linalg/<name>/."""
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    jitted = jax.jit(fn)
    specs = tuple(jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) for a in args)
    exp = export.export(jitted, platforms=("cpu",))(*specs)
    ser = bytes(exp.serialize())
    (d / "model.jaxexport").write_bytes(ser)
    text = exp.mlir_module()
    targets = sorted(set(TARGET_RE.findall(text)))
    missing = [t for t in expect if t not in targets]
    assert not missing, (name, missing, targets)
    for i, a in enumerate(args):
        save_npy(d / f"in{i}.npy", a)
    res = jax.tree.leaves(exp.call(*args))
    direct = jax.tree.leaves(jitted(*args))
    assert len(res) == len(exp.out_avals) == len(direct)
    for i, (r, dr, aval) in enumerate(zip(res, direct, exp.out_avals)):
        r = np.asarray(r)
        assert r.dtype == aval.dtype and r.shape == aval.shape, (name, i, r.dtype, aval)
        assert r.tobytes() == np.asarray(dr).tobytes(), (name, i, "exp.call differs from jit")
        save_npy(d / f"out{i}.npy", r)
    nonfinite = [int(np.sum(~np.isfinite(np.asarray(r)))) for r in res]
    meta = {
        "name": name,
        "function": function,
        "inputs": [{"dtype": str(a.dtype), "shape": list(a.shape)} for a in exp.in_avals],
        "outputs": [{"dtype": str(a.dtype), "shape": list(a.shape)} for a in exp.out_avals],
        "custom_call_targets": targets,
        "nonfinite_outputs": nonfinite,
        "jax_version": jax.__version__,
        "lapack": LAPACK,
        "outputs_bit_identical_to_jit": True,
        "sha256": {"model.jaxexport": hashlib.sha256(ser).hexdigest()},
        "notes": notes,
    }
    (d / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    size = sum(p.stat().st_size for p in d.iterdir())
    assert size < MAX_FOLDER_BYTES, (name, size)
    SUMMARY.append(f"{name:28s} {size:7d} B  {' '.join(targets)}")


def p(dt) -> str:
    """The LAPACK type letter jaxlib uses in target names."""
    return {np.float32: "s", np.float64: "d", np.complex64: "c", np.complex128: "z"}[dt]


def is_complex(dt) -> bool:
    return np.issubdtype(dt, np.complexfloating)


# ---- one model per function and dtype ----------------------------------------------------------

def functions(tag: str, dt, seed: int) -> None:
    t = p(dt)
    cx = is_complex(dt)
    r = rng(seed)

    a, b = rand(r, (4, 4), dt), rand(r, (4, 2), dt)
    ab, bb = rand(r, (2, 3, 3), dt), rand(r, (2, 3, 2), dt)
    write(f"solve_{tag}", lambda a, b, ab, bb: (jnp.linalg.solve(a, b), jnp.linalg.solve(ab, bb)),
          (a, b, ab, bb), function="jnp.linalg.solve",
          notes=f"solve {dt.__name__}[4,4] x = [4,2] and batched [2,3,3] x = [2,3,2]: getrf + two trsm.",
          expect=[f"lapack_{t}getrf_ffi", f"lapack_{t}trsm_ffi"])

    a, ab = rand(r, (4, 4), dt), rand(r, (2, 3, 3), dt)
    write(f"inv_{tag}", lambda a, ab: (jnp.linalg.inv(a), jnp.linalg.inv(ab)), (a, ab),
          function="jnp.linalg.inv", notes=f"inv of {dt.__name__}[4,4] and [2,3,3].",
          expect=[f"lapack_{t}getrf_ffi", f"lapack_{t}trsm_ffi"])

    a, ab = rand(r, (5, 5), dt), rand(r, (2, 4, 4), dt)
    write(f"det_{tag}",
          lambda a, ab: (jnp.linalg.det(a), jnp.linalg.det(ab), *jnp.linalg.slogdet(a), *jnp.linalg.slogdet(ab)),
          (a, ab), function="jnp.linalg.det, slogdet",
          notes=f"det and slogdet of {dt.__name__}[5,5] and [2,4,4] (jax uses closed forms up to 3x3, getrf above).",
          expect=[f"lapack_{t}getrf_ffi"])

    a, ab = spd(r, (4, 4), dt), spd(r, (2, 3, 3), dt)
    write(f"cholesky_{tag}",
          lambda a, ab: (jnp.linalg.cholesky(a), jnp.linalg.cholesky(ab), jnp.linalg.cholesky(a, upper=True)),
          (a, ab), function="jnp.linalg.cholesky",
          notes=f"cholesky (lower; upper=True) of Hermitian positive definite {dt.__name__}[4,4] and [2,3,3].",
          expect=[f"lapack_{t}potrf_ffi"])

    a, ab = herm(r, (4, 4), dt), herm(r, (2, 3, 3), dt)
    eig = "heevd" if cx else "syevd"
    write(f"eigh_{tag}",
          lambda a, ab: (*jnp.linalg.eigh(a), *jnp.linalg.eigh(ab), *jnp.linalg.eigh(a, UPLO="U"),
                         jnp.linalg.eigvalsh(ab)),
          (a, ab), function="jnp.linalg.eigh, eigvalsh",
          notes=f"eigh (UPLO L and U) and eigvalsh of Hermitian {dt.__name__}[4,4] and [2,3,3].",
          expect=[f"lapack_{t}{eig}_ffi"])

    a, ab = rand(r, (5, 3), dt), rand(r, (2, 3, 4), dt)
    write(f"svd_{tag}",
          lambda a, ab: (*jnp.linalg.svd(a), *jnp.linalg.svd(a, full_matrices=False),
                         jnp.linalg.svd(a, compute_uv=False), *jnp.linalg.svd(ab),
                         *jnp.linalg.svd(ab, full_matrices=False), jnp.linalg.svd(ab, compute_uv=False)),
          (a, ab), function="jnp.linalg.svd",
          notes=f"svd (full, reduced, values only: gesdd modes A, S, N) of tall {dt.__name__}[5,3] and wide [2,3,4].",
          expect=[f"lapack_{t}gesdd_ffi"])

    a, b = rand(r, (6, 3), dt), rand(r, (6, 2), dt)
    ab, bb = rand(r, (2, 5, 3), dt), rand(r, (2, 5), dt)
    write(f"lstsq_{tag}",
          lambda a, b, ab, bb: (*jnp.linalg.lstsq(a, b), *jax.vmap(jnp.linalg.lstsq)(ab, bb)),
          (a, b, ab, bb), function="jnp.linalg.lstsq",
          notes=f"lstsq of {dt.__name__}[6,3] with [6,2], and vmapped over [2,5,3] with [2,5] (gesdd mode S).",
          expect=[f"lapack_{t}gesdd_ffi"])

    q = "ungqr" if cx else "orgqr"
    a, ab = rand(r, (5, 3), dt), rand(r, (2, 3, 4), dt)
    write(f"qr_{tag}",
          lambda a, ab: (*jnp.linalg.qr(a), *jnp.linalg.qr(a, mode="complete"), jnp.linalg.qr(a, mode="r"),
                         *jnp.linalg.qr(ab)),
          (a, ab), function="jnp.linalg.qr",
          notes=f"qr (reduced, complete, r) of tall {dt.__name__}[5,3], reduced of wide [2,3,4].",
          expect=[f"lapack_{t}geqrf_ffi", f"lapack_{t}{q}_ffi"])

    lo, up = tri(r, (4, 4), dt, True), tri(r, (4, 4), dt, False)
    b, bb = rand(r, (4, 2), dt), rand(r, (2, 3, 2), dt)
    lob = tri(r, (2, 3, 3), dt, True)
    br = rand(r, (2, 4), dt)

    def solve_tri(lo, up, b, lob, bb, br):
        return (jsl.solve_triangular(lo, b, lower=True),
                jsl.solve_triangular(up, b, lower=False),
                jsl.solve_triangular(lo, b, lower=True, trans=1),
                jsl.solve_triangular(up, b, lower=False, trans=2),
                jsl.solve_triangular(lo, b, lower=True, unit_diagonal=True),
                jsl.solve_triangular(lob, bb, lower=True),
                lax.linalg.triangular_solve(lo, br, left_side=False, lower=True),
                lax.linalg.triangular_solve(up, br, left_side=False, lower=False, transpose_a=True,
                                            conjugate_a=cx))

    write(f"solve_triangular_{tag}", solve_tri, (lo, up, b, lob, bb, br),
          function="jax.scipy.linalg.solve_triangular, lax.linalg.triangular_solve",
          notes=(f"{dt.__name__} triangular solves: lower/upper, trans 0/1/2, unit diagonal, batched "
                 "[2,3,3], and right-side solves X A = B (side R)."),
          expect=[f"lapack_{t}trsm_ffi"])


# ---- real uses ----------------------------------------------------------------------------------

def gp_posterior(tag: str, dt) -> None:
    r = rng(11)
    x_train = np.sort(r.uniform(-3, 3, 12)).astype(dt)
    y_train = (np.sin(x_train) + 0.1 * r.standard_normal(12)).astype(dt)
    x_test = np.linspace(-3.5, 3.5, 9).astype(dt)

    def posterior(x_train, y_train, x_test):
        def k(a, b):
            return jnp.exp(-0.5 * (a[:, None] - b[None, :]) ** 2 / 0.8 ** 2)
        kxx = k(x_train, x_train) + 0.01 * jnp.eye(x_train.shape[0], dtype=x_train.dtype)
        c = jsl.cho_factor(kxx, lower=True)
        alpha = jsl.cho_solve(c, y_train)
        ks = k(x_test, x_train)
        mean = ks @ alpha
        v = jsl.cho_solve(c, ks.T)
        var = jnp.diag(k(x_test, x_test)) - jnp.sum(ks * v.T, axis=1)
        return mean, var

    t = p(dt)
    write(f"gp_posterior_{tag}", posterior, (x_train, y_train, x_test),
          function="jax.scipy.linalg.cho_factor/cho_solve",
          notes=(f"Gaussian-process regression ({dt.__name__}): RBF kernel (length 0.8), noise 0.01, "
                 "12 training points of sin(x) + noise; posterior mean and variance at 9 test points."),
          expect=[f"lapack_{t}potrf_ffi", f"lapack_{t}trsm_ffi"])


def lstsq_fit() -> None:
    r = rng(12)
    x = np.linspace(-1, 1, 20).astype(np.float32)
    y = (1.5 - 2 * x + 0.5 * x ** 3 + 0.05 * r.standard_normal(20)).astype(np.float32)

    def fit(x, y):
        design = jnp.stack([x ** k for k in range(4)], axis=1)
        coef, residuals, rank, sv = jnp.linalg.lstsq(design, y)
        return coef, design @ coef, residuals, rank, sv

    write("lstsq_fit_f32", fit, (x, y), function="jnp.linalg.lstsq",
          notes="cubic polynomial least-squares fit of 20 noisy float32 points: coefficients, fitted values, residuals, rank, singular values.",
          expect=["lapack_sgesdd_ffi"])


# ---- failing and ill-conditioned inputs ---------------------------------------------------------

def hard_inputs() -> None:
    # Hilbert matrices: condition number ~1e13 (f64, 10x10) and ~1e10 (f32, 7x7).
    for tag, dt, n in (("f64", np.float64, 10), ("f32", np.float32, 7)):
        h = (1.0 / (np.arange(n)[:, None] + np.arange(n)[None, :] + 1)).astype(dt)
        b = h.sum(axis=1, keepdims=True).astype(dt)  # exact solution: ones
        write(f"ill_conditioned_{tag}",
              lambda h, b: (jnp.linalg.solve(h, b), jnp.linalg.inv(h), jnp.linalg.cholesky(h),
                            jnp.linalg.svd(h, compute_uv=False), jnp.linalg.eigvalsh(h)),
              (h, b), function="solve, inv, cholesky, svd, eigvalsh",
              notes=f"{n}x{n} {dt.__name__} Hilbert matrix (ill-conditioned), b = row sums (exact x = ones).",
              expect=[f"lapack_{p(dt)}getrf_ffi", f"lapack_{p(dt)}potrf_ffi", f"lapack_{p(dt)}gesdd_ffi"])

    r = rng(13)
    s = rand(r, (4, 4), np.float32)
    s[:, 3] = s[:, 0] + s[:, 1]  # rank 3
    s[3] = 0  # an exactly zero row: getrf meets an exact zero pivot (info > 0)
    b = rand(r, (4, 2), np.float32)
    write("singular_f32",
          lambda s, b: (jnp.linalg.solve(s, b), jnp.linalg.inv(s), jnp.linalg.det(s), *jnp.linalg.slogdet(s),
                        jnp.linalg.matrix_rank(s), jnp.linalg.pinv(s)),
          (s, b), function="solve, inv, det, slogdet, matrix_rank, pinv",
          notes="singular float32[4,4] (a zero row): getrf info > 0; solve/inv give inf/NaN, det 0, slogdet (0, -inf), rank 3.",
          expect=["lapack_sgetrf_ffi", "lapack_sgesdd_ffi"])

    good = spd(r, (3, 3), np.float32)
    bad = np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32)  # eigenvalue -1
    both = np.stack([good, bad])
    rhs = rand(r, (3, 1), np.float32)
    write("not_positive_definite_f32",
          lambda bad, both, rhs: (jnp.linalg.cholesky(bad), jnp.linalg.cholesky(both),
                                  jsl.cho_solve(jsl.cho_factor(bad), rhs)),
          (bad, both, rhs), function="cholesky, cho_factor/cho_solve",
          notes=("Cholesky of an indefinite float32[3,3] (potrf info 2): jax returns all-NaN; in the batch "
                 "[good, bad] only the bad matrix is NaN. cho_factor does not check info: cho_solve gives what LAPACK left."),
          expect=["lapack_spotrf_ffi"])

    n = rand(r, (4, 4), np.float32)
    n[1, 2] = np.nan
    h = ((n + n.T) / 2).astype(np.float32)
    write("nan_input_f32",
          lambda n, h: (*jnp.linalg.svd(n), *jnp.linalg.eigh(h), *jnp.linalg.qr(n), jnp.linalg.inv(n)),
          (n, h), function="svd, eigh, qr, inv",
          notes="float32[4,4] with one NaN: gesdd/syevd report failure (jax: NaN results), qr and inv propagate NaN.",
          expect=["lapack_sgesdd_ffi", "lapack_ssyevd_ffi", "lapack_sgeqrf_ffi", "lapack_sgetrf_ffi"])


LAPACK = ""


def main() -> None:
    global LAPACK
    os.chdir(REPO_ROOT)
    LAPACK = openblas_config()
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir()
    for i, (tag, dt) in enumerate(DTYPES.items()):
        functions(tag, dt, seed=100 + i)
    gp_posterior("f64", np.float64)
    gp_posterior("f32", np.float32)
    lstsq_fit()
    hard_inputs()
    (OUT / "README.md").write_text(
        "# hlo/linalg: jnp.linalg fixtures\n\n"
        "Written by `hlo/export_linalg.py` (jax/jaxlib 0.11.2, scipy "
        f"{version('scipy')}; jaxlib's LAPACK: {LAPACK}). Each folder: model.jaxexport, in*.npy, "
        "out*.npy (JAX's outputs), meta.json (`custom_call_targets`, notes). tests/linalg.rs "
        "runs every one and compares bit for bit.\n\n| fixture | bytes | targets |\n|---|---|---|\n"
        + "".join(f"| `{s.split()[0]}` | {s.split()[1]} | {' '.join(s.split()[3:])} |\n" for s in SUMMARY)
    )
    print("\n".join(SUMMARY))


if __name__ == "__main__":
    main()
