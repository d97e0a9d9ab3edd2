"""The fused paths of the dense layer against float64 references.

- The GEMM epilogue (``_C.sgemm(..., bias=, act=)``, which ``dense_fwd`` uses):
  bias and an elementwise activation applied to each tile of C as soon as it
  is final. Every micro-kernel, every transpose case, edge tiles, several K
  blocks, the narrow-C kernel (A transposed, at most 16 columns) and beta != 0.
- ``dense_fwd`` with softmax (bias in the epilogue, softmax over whole rows after).
- ``act_bias_bwd``: dz = dy * act'(y) and the bias gradient in one pass, equal to
  the two separate kernels bit for bit, and independent of the thread count.

Tolerance for the epilogue: the GEMM's float32 rounding bound (K * 2**-24 times
sum |a b|, doubled), carried through the activation (its slope is at most 1),
plus a few ulps of the activation itself.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import reference as ref
from fastnn import _C

KERNELS = {"generic": 1, "avx2": 2, "avx512": 3}
ELEMENTWISE = ["linear", "relu", "sigmoid", "tanh"]
SHAPES = [(1, 1, 1), (3, 17, 129), (17, 3, 5), (129, 129, 17), (13, 33, 400),
          (128, 128, 784), (784, 128, 128), (300, 13, 700), (1000, 16, 129),
          (130, 10, 128), (16, 2048 + 40, 9), (100, 1, 300), (70, 6, 50)]


@pytest.fixture
def kernel_and_threads():
    before_threads, before_kernel = _C.get_num_threads(), _C.sgemm_get_kernel()
    yield
    _C.sgemm_set_kernel(0)
    _C.set_num_threads(before_threads)
    assert _C.sgemm_get_kernel() == before_kernel


def _use_kernel(name):
    if _C.sgemm_set_kernel(KERNELS[name]) != 0:
        pytest.skip(f"this CPU has no {name} kernel")


def _operands(rng, ta, tb, M, N, K):
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
    return a, b


def _check_epilogue(rng, ta, tb, M, N, K, act, with_bias, beta=0.0, alpha=1.0):
    a, b = _operands(rng, ta, tb, M, N, K)
    bias = rng.standard_normal(N).astype(np.float32) if with_bias else None
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    c = c0.copy() if beta != 0.0 else np.full((M, N), np.nan, np.float32)
    _C.sgemm(a, b, c, bool(ta), bool(tb), alpha, beta, bias=bias, act=act)
    z = ref.gemm(a, b, c0, bool(ta), bool(tb), alpha, beta)
    if bias is not None:
        z = z + ref.f64(bias)
    want = ref.activation(act, z)
    oa = np.abs(ref.f64(a).T if ta else ref.f64(a))
    ob = np.abs(ref.f64(b).T if tb else ref.f64(b))
    mag = abs(alpha) * (oa @ ob) + abs(beta) * np.abs(ref.f64(c0))
    if bias is not None:
        mag = mag + np.abs(ref.f64(bias))
    tol = 2.0 * (K + 4) * 2.0 ** -24 * mag + 8 * 2.0 ** -24 * np.abs(want) + 1e-30
    got = c.astype(np.float64)
    assert np.isfinite(got).all(), "unwritten elements"
    err = np.abs(got - want)
    assert (err <= tol).all(), (f"{act} ta={ta} tb={tb} {(M, N, K)}: "
                                f"{(err > tol).sum()} bad, worst {err.max():.3g}")
    return c


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("ta,tb", list(itertools.product((0, 1), (0, 1))))
def test_epilogue_every_kernel_and_transpose(rng, kernel_and_threads, kernel, ta, tb):
    _use_kernel(kernel)
    for (M, N, K), act in itertools.product(SHAPES, ELEMENTWISE):
        _check_epilogue(rng, ta, tb, M, N, K, act, with_bias=True)
    for M, N, K in SHAPES[:4]:
        _check_epilogue(rng, ta, tb, M, N, K, "relu", with_bias=False)
        _check_epilogue(rng, ta, tb, M, N, K, "tanh", with_bias=True, beta=0.5, alpha=-1.5)


def test_epilogue_with_empty_k_or_zero_alpha(rng):
    """No product to compute: C = act(beta * C + bias) still holds."""
    c0 = rng.standard_normal((5, 7)).astype(np.float32)
    bias = rng.standard_normal(7).astype(np.float32)
    a, b = np.empty((5, 0), np.float32), np.empty((0, 7), np.float32)
    c = c0.copy()
    _C.sgemm(a, b, c, beta=2.0, bias=bias, act="relu")
    np.testing.assert_allclose(c, np.maximum(2.0 * ref.f64(c0) + bias, 0.0), rtol=1e-6)
    a, b = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((3, 7)).astype(np.float32)
    c = c0.copy()
    _C.sgemm(a, b, c, alpha=0.0, beta=0.0, bias=bias, act="sigmoid")
    np.testing.assert_allclose(c, ref.sigmoid(np.broadcast_to(ref.f64(bias), (5, 7))),
                               rtol=1e-6)


def test_epilogue_bit_identical_across_thread_counts(rng, kernel_and_threads):
    if not _C.has_openmp():
        pytest.skip("built without OpenMP")
    results = []
    for threads in (1, 2, 3):
        _C.set_num_threads(threads)
        out = []
        for (M, N, K), (ta, tb) in itertools.product(
                [(257, 300, 200), (128, 784, 128), (784, 10, 128)],
                itertools.product((0, 1), (0, 1))):
            r = np.random.default_rng(M * N + K)
            a, b = _operands(r, ta, tb, M, N, K)
            bias = r.standard_normal(N).astype(np.float32)
            c = np.empty((M, N), np.float32)
            _C.sgemm(a, b, c, bool(ta), bool(tb), bias=bias, act="tanh")
            out.append(c)
        results.append(out)
    for other in results[1:]:
        for x, y in zip(results[0], other):
            assert np.array_equal(x.view(np.uint32), y.view(np.uint32))


@pytest.mark.parametrize("act", ELEMENTWISE + ["softmax"])
def test_dense_fwd_fused(rng, act):
    for M, N, K in SHAPES:
        x = rng.standard_normal((M, K)).astype(np.float32)
        w = (rng.standard_normal((K, N)) / np.sqrt(K)).astype(np.float32)
        bias = rng.standard_normal(N).astype(np.float32)
        y = np.full((M, N), np.nan, np.float32)
        _C.dense_fwd(act, x, w, bias, y)
        want = ref.dense(x, w, bias, act)
        np.testing.assert_allclose(y, want, rtol=2e-5, atol=2e-5 * max(np.abs(want).max(), 1.0),
                                   err_msg=f"dense_fwd {act} {(M, N, K)}")


def test_epilogue_rejects_bad_arguments(rng):
    a, b = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    c = np.empty((4, 5), np.float32)
    with pytest.raises(ValueError, match="softmax"):
        _C.sgemm(a, b, c, act="softmax")
    with pytest.raises(ValueError, match="bias"):
        _C.sgemm(a, b, c, bias=np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="bias"):
        _C.sgemm(a, b, c, bias=np.zeros(5, np.float64))
    with pytest.raises(ValueError, match="act"):
        _C.sgemm(a, b, c, act="swish")
    with pytest.raises(ValueError, match="overlap"):
        _C.sgemm(a, b, c, bias=c[0])


# ---- act_bias_bwd ------------------------------------------------------------------

@pytest.mark.parametrize("act", ELEMENTWISE + ["softmax"])
def test_act_bias_bwd_equals_the_two_kernels(rng, act):
    # 2500 columns: more than one 1024-column block of sums, and a ragged last one.
    for rows, cols in [(1, 1), (7, 3), (300, 70), (128, 1024), (2000, 129), (64, 2500)]:
        z = rng.standard_normal((rows, cols)).astype(np.float32) * 2
        y = ref.activation(act, z).astype(np.float32)
        dy = rng.standard_normal((rows, cols)).astype(np.float32)
        dz_two, db_two = np.empty_like(dy), np.empty(cols, np.float32)
        _C.act_bwd(act, y, dy, dz_two)
        _C.bias_grad(dz_two, db_two)
        dz, db = np.full_like(dy, np.nan), np.full(cols, np.nan, np.float32)
        _C.act_bias_bwd(act, y, dy, dz, db)
        assert np.array_equal(dz.view(np.uint32), dz_two.view(np.uint32))
        assert np.array_equal(db.view(np.uint32), db_two.view(np.uint32))
        np.testing.assert_allclose(db, ref.bias_grad(ref.act_backward(act, z, dy)),
                                   rtol=1e-3, atol=1e-4 * np.sqrt(rows))


def test_act_bias_bwd_bit_identical_across_thread_counts(rng, kernel_and_threads):
    if not _C.has_openmp():
        pytest.skip("built without OpenMP")
    # The columns are shared out per thread, in 1024-column blocks of sums.
    for rows, cols in [(3000, 333), (40, 2100)]:
        y = np.maximum(rng.standard_normal((rows, cols)), 0).astype(np.float32)
        dy = rng.standard_normal((rows, cols)).astype(np.float32)
        outs = []
        for threads in (1, 2, 3):
            _C.set_num_threads(threads)
            dz, db = np.empty_like(dy), np.empty(cols, np.float32)
            _C.act_bias_bwd("relu", y, dy, dz, db)
            outs.append((dz, db))
        for dz, db in outs[1:]:
            assert np.array_equal(dz, outs[0][0]) and np.array_equal(
                db.view(np.uint32), outs[0][1].view(np.uint32))


def test_act_bias_bwd_rejects_bad_arguments(rng):
    y = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    dz = np.empty_like(dy)
    with pytest.raises(ValueError, match="db"):
        _C.act_bias_bwd("relu", y, dy, dz, np.empty(4, np.float32))
    with pytest.raises(ValueError, match="db"):
        _C.act_bias_bwd("relu", y, dy, dz, dz[0])
    with pytest.raises(ValueError, match="dz"):
        _C.act_bias_bwd("relu", y, dy, y, None)
    with pytest.raises(ValueError, match="dz"):
        _C.act_bias_bwd("relu", y, dy, np.empty((4, 6), np.float32), None)
