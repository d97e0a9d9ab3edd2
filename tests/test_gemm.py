"""fnn_sgemm (ext/gemm.c) against a float64 NumPy reference.

Every test runs twice: through the built extension (``fastnn._C.sgemm``,
whose row-strided views give leading dimensions larger than the row), and
straight on the C contract through ctypes on ext/gemm.c compiled into a
small library here, which keeps the kernel tested while the extension is
not built.  Both force each micro-kernel (portable C, AVX2, AVX-512) and
several thread counts through the testing hooks.

Tolerance: an FMA chain of length K has error at most about K * 2**-24 times
sum_k |a_ik b_kj|; alpha and beta add a few roundings more.  We allow twice
that bound, elementwise; a wrong element is off by O(|a||b|) and fails.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXT = ROOT / "ext"

KERNELS = {"generic": 1, "avx2": 2, "avx512": 3}

# Stands in for ext/threads.c while that file is absent.
_THREADS_STUB = r"""
#include "fastnn.h"
#ifdef _OPENMP
#include <omp.h>
#endif
static int serial_forced = 0;
int fnn_has_openmp(void) {
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}
void fnn_set_num_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}
int fnn_get_num_threads(void) {
#ifdef _OPENMP
    return serial_forced ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}
void fnn_force_serial(int on) { serial_forced = on; }
"""


class CGemm:
    """ctypes view of fnn_sgemm and its testing hooks."""

    def __init__(self, path: Path) -> None:
        lib = ctypes.CDLL(str(path))
        f = lib.fnn_sgemm
        f.restype = None
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                      ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                      ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                      ctypes.c_int64]
        self.sgemm = f
        self.set_kernel = lib.fnn_sgemm_set_kernel
        self.set_kernel.argtypes = [ctypes.c_int]
        self.set_kernel.restype = ctypes.c_int
        self.get_kernel = lib.fnn_sgemm_get_kernel
        self.get_kernel.restype = ctypes.c_int
        self.set_threads = lib.fnn_set_num_threads
        self.set_threads.argtypes = [ctypes.c_int]
        self.get_threads = lib.fnn_get_num_threads
        self.get_threads.restype = ctypes.c_int
        self.has_openmp = lib.fnn_has_openmp
        self.has_openmp.restype = ctypes.c_int
        self.set_sparse_density = lib.fnn_sgemm_set_sparse_density
        self.set_sparse_density.argtypes = [ctypes.c_double]
        self.set_sparse_density.restype = ctypes.c_double

    def __call__(self, ta: int, tb: int, M: int, N: int, K: int,
                 alpha: float, a: np.ndarray, b: np.ndarray, beta: float,
                 c: np.ndarray) -> None:
        """C[:M, :N] = alpha op(A) op(B) + beta C; ld* from the row pitch."""
        def ld(x: np.ndarray) -> int:
            assert x.dtype == np.float32
            if x.shape[0] < 2 or x.shape[1] == 0:
                return max(1, x.shape[1])
            assert x.strides[1] == 4
            return x.strides[0] // 4

        self.sgemm(ta, tb, M, N, K, alpha, a.ctypes.data, ld(a),
                   b.ctypes.data, ld(b), beta, c.ctypes.data, ld(c))


class ExtGemm:
    """The same interface over the Cython extension."""

    def __init__(self, C) -> None:
        self._C = C
        self.set_kernel = C.sgemm_set_kernel
        self.get_kernel = C.sgemm_get_kernel
        self.set_threads = C.set_num_threads
        self.get_threads = C.get_num_threads
        self.has_openmp = C.has_openmp
        self.set_sparse_density = C.sgemm_set_sparse_density

    def __call__(self, ta: int, tb: int, M: int, N: int, K: int,
                 alpha: float, a: np.ndarray, b: np.ndarray, beta: float,
                 c: np.ndarray) -> None:
        # Views of the logical shapes; the padding stays in the row stride.
        av = a[:K, :M] if ta else a[:M, :K]
        bv = b[:N, :K] if tb else b[:K, :N]
        self._C.sgemm(av, bv, c[:M, :N], trans_a=bool(ta),
                      trans_b=bool(tb), alpha=alpha, beta=beta)


def _build_ctypes(tmp_path_factory) -> CGemm:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler to build ext/gemm.c")
    out = tmp_path_factory.mktemp("gemm")
    # activation.c holds the epilogue (bias + activation) gemm.c calls.
    srcs = [str(EXT / "gemm.c"), str(EXT / "gemm_sparse.c"), str(EXT / "activation.c")]
    if (EXT / "threads.c").exists():
        srcs.append(str(EXT / "threads.c"))
    else:
        stub = out / "threads_stub.c"
        stub.write_text(_THREADS_STUB)
        srcs.append(str(stub))
    lib = out / "libgemm.so"
    cmd = [cc, "-O2", "-std=c99", "-fopenmp", "-shared", "-fPIC",
           f"-I{EXT}", *srcs, "-o", str(lib)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return CGemm(lib)


@pytest.fixture(scope="module", params=["ext", "ctypes"])
def cgemm(request, tmp_path_factory):
    if request.param == "ext":
        try:
            from fastnn import _C
        except ImportError as e:
            pytest.skip(f"fastnn._C is not built: {e}")
        g = ExtGemm(_C)
    else:
        g = _build_ctypes(tmp_path_factory)
    saved = g.get_threads()
    yield g
    g.set_kernel(0)
    g.set_threads(saved)


def _operands(rng, ta, tb, M, N, K, pad):
    """op(A) (M,K), op(B) (K,N), C (M,N), stored with `pad` extra NaN
    columns so that lda/ldb/ldc exceed the row length and any read of the
    padding shows up as NaN."""
    def stored(rows, cols):
        x = np.full((rows, cols + pad), np.nan, np.float32)
        x[:, :cols] = rng.standard_normal((rows, cols)).astype(np.float32)
        return x

    a = stored(K, M) if ta else stored(M, K)
    b = stored(N, K) if tb else stored(K, N)
    c = stored(M, N)
    return a, b, c


def _check(g, rng, ta, tb, M, N, K, alpha=1.0, beta=0.0, pad=0):
    a, b, c = _operands(rng, ta, tb, M, N, K, pad)
    opa = (a[:, :M].T if ta else a[:, :K]).astype(np.float64)
    opb = (b[:, :K].T if tb else b[:, :N]).astype(np.float64)
    if beta == 0.0:
        c[:, :N] = np.nan                  # must be overwritten, never read
        c0 = np.zeros((M, N))
    else:
        c0 = c[:, :N].astype(np.float64)
    before = c.copy()
    g(ta, tb, M, N, K, alpha, a, b, beta, c)
    got = c[:, :N].astype(np.float64)
    ref = alpha * (opa @ opb) + beta * c0
    mag = abs(alpha) * (np.abs(opa) @ np.abs(opb)) + abs(beta) * np.abs(c0)
    tol = 2.0 * (K + 4) * 2.0 ** -24 * mag + 1e-30
    assert np.all(np.isfinite(got)), "unwritten or NaN-contaminated elements"
    err = np.abs(got - ref)
    bad = err > tol
    assert not bad.any(), (
        f"{bad.sum()} wrong elements, worst at "
        f"{np.unravel_index(np.argmax(err - tol), err.shape)}: "
        f"err {err.max():.3g}")
    # Padding columns of C are not C: untouched.
    np.testing.assert_array_equal(c[:, N:], before[:, N:])
    return c[:, :N].copy()


def _use_kernel(g, name):
    if g.set_kernel(KERNELS[name]) != 0:
        pytest.skip(f"this CPU has no {name} kernel")
    assert g.get_kernel() == KERNELS[name]


SIZES = (1, 3, 17, 129)
# Shapes with a 1000 somewhere: several K blocks, several N blocks, long
# M runs; the MLP shapes the models use; narrow C (<= 16 columns); few rows
# of A with a B block too large to be read in place (100 x 1024, K 300).
BIG = [(1000, 17, 129), (17, 1000, 3), (3, 129, 1000), (1000, 1000, 17),
       (129, 1000, 1000), (1000, 3, 1000), (128, 128, 784), (784, 128, 128),
       (128, 784, 128), (128, 10, 128), (128, 128, 10), (1000, 16, 129),
       (300, 13, 700), (100, 1024, 300)]


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), (0, 1))))
def test_small_shapes_every_kernel(cgemm, rng, kernel, ta, tb):
    _use_kernel(cgemm, kernel)
    for M, N, K in itertools.product(SIZES, SIZES, SIZES):
        _check(cgemm, rng, ta, tb, M, N, K)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), (0, 1))))
def test_large_shapes_alpha_beta_strides(cgemm, rng, kernel, ta, tb):
    _use_kernel(cgemm, kernel)
    cases = [(1.0, 0.0, 0), (1.0, 1.0, 3), (0.75, 0.5, 5), (-1.5, -2.0, 1)]
    for i, (M, N, K) in enumerate(BIG):
        alpha, beta, pad = cases[i % len(cases)]
        _check(cgemm, rng, ta, tb, M, N, K, alpha, beta, pad)


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("tb", (0, 1))
def test_narrow_c_with_plain_a(cgemm, rng, kernel, tb):
    """C of at most 8 columns from plain A takes the narrow kernels (AVX-512)
    once a thread has 32 rows: A transposed into 32-row panels, 128 rows at a
    time; ragged panels and blocks, several K blocks, alpha/beta, strides. The
    same rows computed 16 at a time (a 16-wide tile) give the same bits."""
    _use_kernel(cgemm, kernel)
    cases = [(1.0, 0.0, 0), (0.75, 0.5, 3), (-1.5, 1.0, 1)]
    shapes = [(32, 1, 7), (45, 8, 400), (200, 3, 1024), (300, 5, 129), (129, 2, 800),
              (64, 9, 300), (40, 12, 50)]
    cgemm.set_threads(1)
    for i, (M, N, K) in enumerate(shapes):
        alpha, beta, pad = cases[i % len(cases)]
        _check(cgemm, rng, 0, tb, M, N, K, alpha, beta, pad)
        a, b, c = _operands(rng, 0, tb, M, N, K, pad)
        whole = c.copy()
        cgemm(0, tb, M, N, K, alpha, a, b, beta, whole)
        for r0 in range(0, M, 16):
            rows = min(16, M - r0)
            part = c[r0:r0 + rows].copy()
            cgemm(0, tb, rows, N, K, alpha, a[r0:r0 + rows], b, beta, part)
            np.testing.assert_array_equal(part[:, :N], whole[r0:r0 + rows, :N])


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_alpha_beta_grid(cgemm, rng, kernel):
    _use_kernel(cgemm, kernel)
    for (ta, tb), (alpha, beta) in itertools.product(
            itertools.product((0, 1), (0, 1)),
            [(1.0, 0.0), (1.0, 1.0), (1.0, 0.5), (2.5, 0.0), (-0.5, 1.0),
             (0.3, -0.7)]):
        _check(cgemm, rng, ta, tb, 37, 45, 29, alpha, beta, pad=2)
        _check(cgemm, rng, ta, tb, 150, 70, 400, alpha, beta, pad=1)


def test_k1_m1_n1(cgemm, rng):
    for name in KERNELS:
        _use_kernel(cgemm, name)
        for ta, tb in itertools.product((0, 1), (0, 1)):
            for M, N, K in [(1, 1, 1), (1, 1000, 1), (1000, 1, 1), (1, 1, 1000),
                            (1, 129, 17), (129, 1, 17), (17, 129, 1)]:
                _check(cgemm, rng, ta, tb, M, N, K, 1.0, 0.5, pad=1)


def test_alpha_zero_and_empty_k(cgemm, rng):
    """alpha == 0 or K == 0: C = beta * C, A and B never read."""
    c = rng.standard_normal((5, 7)).astype(np.float32)
    for alpha, K in [(0.0, 4), (1.0, 0)]:
        a = np.full((5, K), np.nan, np.float32)
        b = np.full((K, 7), np.nan, np.float32)
        for beta in (0.0, 1.0, -2.0):
            got = c.copy()
            if beta == 0.0:
                got[:] = np.nan
            cgemm(0, 0, 5, 7, K, alpha, a, b, beta, got)
            want = np.zeros_like(c) if beta == 0.0 else beta * c
            np.testing.assert_array_equal(got, want)
    # M == 0 / N == 0 write nothing.
    a = np.full((5, 4), np.nan, np.float32)
    b = np.full((4, 7), np.nan, np.float32)
    got = c.copy()
    cgemm(0, 0, 0, 7, 4, 1.0, a, b, 0.0, got)
    cgemm(0, 0, 5, 0, 4, 1.0, a, b, 0.0, got)
    np.testing.assert_array_equal(got, c)


def test_set_kernel_rejects_unknown(cgemm):
    if isinstance(cgemm, ExtGemm):
        with pytest.raises(ValueError, match="kind"):
            cgemm.set_kernel(7)
    else:
        assert cgemm.set_kernel(7) == -1
    assert cgemm.set_kernel(0) == 0
    assert cgemm.get_kernel() in (1, 2, 3)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_bit_identical_across_thread_counts(cgemm, rng, kernel):
    if not cgemm.has_openmp():
        pytest.skip("built without OpenMP")
    _use_kernel(cgemm, kernel)
    # Split along M, along N, both; direct and packed operands; several K
    # blocks; a short K (split by rows, as partial rows of C cost more).
    shapes = [(1000, 129, 300), (129, 1000, 300), (300, 300, 800),
              (128, 128, 784), (784, 128, 128), (128, 784, 128),
              (1000, 10, 300), (3000, 16, 50), (100, 1024, 300), (128, 1024, 10)]
    for ta, tb in itertools.product((0, 1), (0, 1)):
        for M, N, K in shapes:
            a, b, c = _operands(rng, ta, tb, M, N, K, pad=1)
            outs = []
            for nt in (1, 2, 3):
                cgemm.set_threads(nt)
                assert cgemm.get_threads() == nt
                cc = c.copy()
                cgemm(ta, tb, M, N, K, 0.5, a, b, 1.0, cc)
                outs.append(cc)
            np.testing.assert_array_equal(outs[0], outs[1])
            np.testing.assert_array_equal(outs[0], outs[2])


def test_threads_from_python_threads(cgemm, rng):
    """Two Python threads calling at once use separate packing buffers."""
    import threading

    cgemm.set_kernel(0)
    a, b, _ = _operands(rng, 0, 0, 300, 300, 300, pad=0)
    want = np.empty((300, 300), np.float32)
    cgemm(0, 0, 300, 300, 300, 1.0, a, b, 0.0, want)
    outs = [np.full((300, 300), np.nan, np.float32) for _ in range(4)]

    def work(o):
        for _ in range(5):
            cgemm(0, 0, 300, 300, 300, 1.0, a, b, 0.0, o)

    ts = [threading.Thread(target=work, args=(o,)) for o in outs]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for o in outs:
        np.testing.assert_array_equal(o, want)


# ---- the path that skips zeros of op(A) (ext/gemm_sparse.c) ----------------
#
# Taken when op(A) has few nonzeros, B is not transposed, C has at least 32
# columns and the product is not tiny. It must give the dense path's bits
# (same FMA chains, same K blocks, skipped terms are exact zeros), so each
# case runs both ways and compares bitwise, besides the float64 reference.

SPARSE_SHAPES = [(128, 128, 784), (784, 128, 128), (100, 1024, 784),
                 (130, 257, 1000), (1000, 33, 129), (37, 48, 2000), (17, 500, 300)]


@pytest.fixture
def sparse_density(cgemm):
    """Sets the sparse path's threshold for one test, then restores it."""
    saved = cgemm.set_sparse_density(1.0)
    cgemm.set_sparse_density(saved)
    yield cgemm.set_sparse_density
    cgemm.set_sparse_density(saved)


def _zero_out(rng, a, ta, M, K, density):
    """Keeps about `density` of op(A)'s entries (the stored block a[:K,:M] or
    a[:M,:K]), zeros the rest; padding columns keep their NaN."""
    block = a[:K, :M] if ta else a[:M, :K]
    block[rng.random(block.shape) >= density] = 0.0


def _sparse_and_dense(g, set_density, rng, ta, M, N, K, density, alpha, beta, pad):
    a, b, c = _operands(rng, ta, 0, M, N, K, pad)
    _zero_out(rng, a, ta, M, K, density)
    opa = (a[:, :M].T if ta else a[:, :K]).astype(np.float64)
    opb = b[:, :N].astype(np.float64)
    c0 = np.zeros((M, N)) if beta == 0.0 else c[:, :N].astype(np.float64)
    if beta == 0.0:
        c[:, :N] = np.nan                  # must be overwritten, never read
    outs = []
    for threshold in (1.0, 0.0):           # sparse path forced, then off
        set_density(threshold)
        cc = c.copy()
        g(ta, 0, M, N, K, alpha, a, b, beta, cc)
        outs.append(cc)
    got = outs[0][:, :N].astype(np.float64)
    ref = alpha * (opa @ opb) + beta * c0
    mag = abs(alpha) * (np.abs(opa) @ np.abs(opb)) + abs(beta) * np.abs(c0)
    tol = 2.0 * (K + 4) * 2.0 ** -24 * mag + 1e-30
    assert np.all(np.isfinite(got))
    assert not (np.abs(got - ref) > tol).any(), f"sparse path wrong at {(ta, M, N, K)}"
    np.testing.assert_array_equal(outs[0][:, N:], c[:, N:])  # padding untouched
    assert outs[0].tobytes() == outs[1].tobytes(), (
        f"sparse and dense paths differ at ta={ta} {(M, N, K)} density {density}")


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("ta", (0, 1))
def test_sparse_a_matches_reference_and_dense_bits(cgemm, sparse_density, rng,
                                                   kernel, ta):
    _use_kernel(cgemm, kernel)
    cases = [(1.0, 0.0, 0), (1.0, 1.0, 3), (0.75, 0.5, 1), (-1.5, -2.0, 0)]
    for i, (M, N, K) in enumerate(SPARSE_SHAPES):
        alpha, beta, pad = cases[i % len(cases)]
        for density in (0.0, 0.05, 0.19, 0.5):
            _sparse_and_dense(cgemm, sparse_density, rng, ta, M, N, K, density,
                              alpha, beta, pad)


# B's rows 4 KiB apart (1024 floats), or close to it, would pile a K chunk of
# B into a few L1 sets, so the path copies the rows each group of rows uses
# side by side first: the wide MLP's first layer (forward and weight
# gradient), narrow and ragged column slices of a 1024-wide B, several
# groups of 128 rows, and a stride 4 bytes past 4 KiB.
CROWDED = [(128, 1024, 784, 0), (784, 1024, 128, 0), (300, 200, 600, 824),
           (260, 72, 390, 952), (129, 40, 1000, 985)]


@pytest.mark.parametrize("kernel", ["generic", "avx512"])
@pytest.mark.parametrize("ta", (0, 1))
def test_sparse_a_with_crowded_b_strides(cgemm, sparse_density, rng, kernel, ta):
    _use_kernel(cgemm, kernel)
    for i, (M, N, K, pad) in enumerate(CROWDED):
        alpha, beta = [(1.0, 0.0), (-0.5, 1.0), (2.0, 0.25)][i % 3]
        for density in (0.02, 0.19):
            _sparse_and_dense(cgemm, sparse_density, rng, ta, M, N, K, density,
                              alpha, beta, pad)


@pytest.mark.parametrize("kernel", ["generic", "avx512"])
def test_sparse_a_path_is_taken_below_the_threshold_only(cgemm, sparse_density, rng,
                                                         kernel):
    """Observable through B's infinities: the dense path multiplies a zero of
    op(A) by them (NaN), the sparse path skips the product, as BLAS's
    reference SGEMM does."""
    _use_kernel(cgemm, kernel)
    M, N, K = 128, 64, 300
    for ta in (0, 1):
        a, b, c = _operands(rng, ta, 0, M, N, K, pad=0)
        _zero_out(rng, a, ta, M, K, 0.2)
        opa = a.T if ta else a
        opa[:, 7] = 0.0                    # no sample uses feature 7...
        b[7, :] = np.inf                   # ...whose weights overflowed
        for threshold, expect_nan in [(0.3, False), (1.0, False), (0.1, True),
                                      (0.0, True)]:
            sparse_density(threshold)
            cc = c.copy()
            cgemm(ta, 0, M, N, K, 1.0, a, b, 0.0, cc)
            assert np.isnan(cc).all() == expect_nan, (ta, threshold)
            if not expect_nan:
                ref = opa.astype(np.float64) @ np.where(np.isinf(b), 0.0, b)
                np.testing.assert_allclose(cc, ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kernel", ["generic", "avx512"])
def test_sparse_a_propagates_nan_of_a(cgemm, sparse_density, rng, kernel):
    _use_kernel(cgemm, kernel)
    sparse_density(1.0)
    M, N, K = 64, 96, 200
    for ta in (0, 1):
        a, b, c = _operands(rng, ta, 0, M, N, K, pad=0)
        _zero_out(rng, a, ta, M, K, 0.1)
        opa = a.T if ta else a
        opa[5, 33] = np.nan
        cgemm(ta, 0, M, N, K, 1.0, a, b, 0.0, c)
        assert np.isnan(c[5]).all()
        assert np.isfinite(np.delete(c, 5, axis=0)).all()


@pytest.mark.parametrize("kernel", ["generic", "avx512"])
def test_sparse_a_bit_identical_across_thread_counts(cgemm, sparse_density, rng,
                                                     kernel):
    if not cgemm.has_openmp():
        pytest.skip("built without OpenMP")
    _use_kernel(cgemm, kernel)
    sparse_density(1.0)
    for ta in (0, 1):
        for M, N, K in [(128, 128, 784), (784, 128, 128), (1000, 200, 129),
                        (100, 1024, 300)]:
            a, b, c = _operands(rng, ta, 0, M, N, K, pad=1)
            _zero_out(rng, a, ta, M, K, 0.2)
            outs = []
            for nt in (1, 2, 3):
                cgemm.set_threads(nt)
                cc = c.copy()
                cgemm(ta, 0, M, N, K, 0.5, a, b, 1.0, cc)
                outs.append(cc.tobytes())
            assert outs[0] == outs[1] == outs[2], (ta, M, N, K)


def test_sparse_a_epilogue_matches_dense(rng):
    """Bias and activation after the sparse path: the dense path's bits."""
    C = pytest.importorskip("fastnn._C")
    saved = C.sgemm_set_sparse_density(1.0)
    try:
        for kind in (1, 3):
            if C.sgemm_set_kernel(kind) != 0:
                continue
            for act in ("linear", "relu", "sigmoid", "tanh"):
                x = rng.standard_normal((128, 784)).astype(np.float32)
                x[rng.random(x.shape) > 0.2] = 0.0
                w = rng.standard_normal((784, 200)).astype(np.float32) * 0.05
                bias = rng.standard_normal(200).astype(np.float32)
                outs = []
                for threshold in (1.0, 0.0):
                    C.sgemm_set_sparse_density(threshold)
                    y = np.full((128, 200), np.nan, np.float32)
                    C.sgemm(x, w, y, bias=bias, act=act)
                    outs.append(y)
                assert outs[0].tobytes() == outs[1].tobytes(), (kind, act)
                z = x.astype(np.float64) @ w + bias
                ref = {"linear": z, "relu": np.maximum(z, 0.0),
                       "sigmoid": 1.0 / (1.0 + np.exp(-z)), "tanh": np.tanh(z)}[act]
                np.testing.assert_allclose(outs[0], ref, rtol=1e-4, atol=1e-5)
    finally:
        C.sgemm_set_kernel(0)
        C.sgemm_set_sparse_density(saved)


def test_set_sparse_density_validates():
    C = pytest.importorskip("fastnn._C")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="max_density"):
            C.sgemm_set_sparse_density(bad)
    saved = C.sgemm_set_sparse_density(0.25)
    assert C.sgemm_set_sparse_density(saved) == 0.25
