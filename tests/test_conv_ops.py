"""Convolution, pooling, zero-padding and batch-norm backend ops against the
float64 references in tests/reference_conv.py (and PyTorch when importable).

Every output is poisoned with NaN before the op runs, so an element the
kernel forgets to write fails the comparison. The CPU backend runs every
case on both of its conv code paths (SIMD and plain C); the CUDA backend
runs the small cases once it has conv ops (skipped until then).
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import reference_conv as R
from fastnn.backend.conv_shapes import (conv_output_shape, normalize_pair,
                                        pool_output_shape, resolve_padding,
                                        same_padding)

# (B, H, W, C, F, kernel, strides, padding, dilation, small): small cases also
# run on the simulated GPU (tiny: the simulator runs ~1e5x slower).
CONV_CASES = [
    (1, 5, 7, 1, 3, (3, 3), (1, 1), "same", (1, 1), True),
    (2, 5, 6, 2, 3, (4, 4), (2, 2), "same", (1, 1), True),   # even kernel: pad 1/2
    (1, 6, 5, 2, 2, (3, 2), (1, 2), "valid", (2, 1), True),  # dilation, mixed strides
    (1, 7, 9, 1, 6, (5, 5), (1, 1), "same", (1, 1), False),
    (3, 7, 9, 3, 4, (3, 3), (1, 1), "valid", (1, 1), False),
    (3, 7, 9, 3, 5, (4, 4), (2, 2), "same", (1, 1), False),
    (1, 7, 9, 1, 6, (3, 3), (2, 2), "valid", (1, 1), False),
    (3, 9, 7, 3, 17, (3, 2), (1, 2), "same", (1, 1), False),
    (3, 7, 9, 3, 6, (3, 3), (1, 1), "same", (2, 2), False),   # dilation 2
    (1, 9, 9, 1, 16, (2, 3), (1, 1), "valid", (2, 2), False),
    (3, 7, 9, 3, 33, (1, 1), (2, 2), "valid", (1, 1), False),
    (2, 5, 13, 1, 1, (3, 3), (1, 1), "same", (1, 1), False),   # one filter
    (2, 5, 13, 3, 10, (3, 3), (1, 1), "same", (1, 1), False),
    (2, 8, 8, 17, 24, (3, 3), (1, 1), "same", (1, 1), False),
    (3, 11, 10, 2, 9, (4, 4), (2, 1), (1, 2, 3, 0), (1, 2), False),  # explicit pads
    (2, 28, 28, 1, 6, (5, 5), (1, 1), "same", (1, 1), False),   # LeNet conv 1
    (3, 14, 14, 6, 16, (5, 5), (1, 1), "valid", (1, 1), False),  # LeNet conv 2
    (2, 9, 9, 32, 64, (3, 3), (2, 2), "same", (1, 1), False),   # ResNet-like
]
ACTS = ("linear", "relu", "sigmoid", "tanh", "softmax")

# (B, H, W, C, pool, strides, padding, small)
POOL_CASES = [
    (1, 7, 9, 1, (2, 2), (2, 2), "valid", True),    # odd sizes drop the last row/col
    (3, 7, 9, 3, (2, 2), (2, 2), "same", True),
    (3, 7, 9, 3, (3, 3), (2, 2), "same", True),
    (1, 7, 9, 3, (3, 3), (1, 1), "same", True),     # overlapping windows
    (3, 9, 7, 1, (2, 3), (1, 2), "same", True),     # asymmetric padding
    (2, 8, 6, 5, (3, 2), (3, 1), "valid", True),
    (3, 28, 28, 6, (2, 2), (2, 2), "valid", False),  # LeNet pool
    (2, 13, 11, 17, (3, 3), (2, 2), "same", False),
]

BN_ROWS = (1, 3, 17, 129, 1000)
BN_CHANNELS = (1, 3, 17)


# ---------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------

@pytest.fixture
def ops(backend):
    """The backend under test, with conv ops (skipped on a backend without them)."""
    from fastnn.backend.base import Backend
    if getattr(type(backend), "conv2d_fwd", Backend.conv2d_fwd) is Backend.conv2d_fwd:
        if backend.name != "cpu":
            pytest.skip(f"the {backend.name} backend has no conv ops yet")
        # CPUBackend not yet wired to the conv mixin: test the mixin over it.
        from fastnn.backend.cpu_conv import CPUConvOps
        return type("CPUBackendWithConv", (CPUConvOps, type(backend)), {})()
    return backend


@pytest.fixture(params=["simd", "generic"])
def conv_path(request, ops):
    """Runs a CPU conv test on each kernel path (once on other backends)."""
    if ops.name != "cpu":
        if request.param == "generic":
            pytest.skip("code paths are a CPU matter")
        yield request.param
        return
    from fastnn import _conv
    if request.param == "simd" and not _conv.simd_path():
        pytest.skip("this CPU has no AVX2+FMA")
    _conv.force_generic(request.param == "generic")
    try:
        yield request.param
    finally:
        _conv.force_generic(False)


def _skip_large(ops, small: bool) -> None:
    if not small and ops.name != "cpu":
        pytest.skip("large case: CPU only (the GPU simulator is slow)")


def dev(ops, a: np.ndarray):
    return ops.asarray(np.ascontiguousarray(a))


def poisoned(ops, shape, dtype=np.float32):
    if np.dtype(dtype).kind == "f":
        return ops.asarray(np.full(shape, np.nan, dtype=dtype))
    return ops.asarray(np.full(shape, -7, dtype=dtype))


def host(ops, a) -> np.ndarray:
    return np.asarray(ops.to_numpy(a))


def assert_close(got, ref, what: str, rtol: float = 2e-5) -> None:
    """float32 result vs float64 reference, scaled by the reference's size."""
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.isfinite(got).all(), f"{what}: non-finite values (unwritten output?)"
    scale = max(float(np.abs(ref).max()), 1e-30) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale, err_msg=what)


def conv_data(rng, case):
    b, h, w, c, f, k, s, pad, d, _small = case
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    wt = (rng.standard_normal(k + (c, f)) / np.sqrt(k[0] * k[1] * c)).astype(np.float32)
    bias = rng.standard_normal(f).astype(np.float32)
    p = resolve_padding(pad, (h, w), k, s, d)
    return x, wt, bias, s, p, d


def set_threads_or_skip(n: int) -> None:
    try:
        from fastnn import _C
        setter = _C.set_num_threads
    except (ImportError, AttributeError):
        pytest.skip("fastnn._C.set_num_threads is not available")
    setter(n)


def current_threads() -> int:
    from fastnn import _C
    return _C.get_num_threads()


# ---------------------------------------------------------------------------
# shape helpers
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("n,k,s,d,expect", [
    (28, 5, 1, 1, (2, 2)),
    (7, 4, 1, 1, (1, 2)),     # odd total: extra at the end, as TensorFlow
    (7, 3, 2, 1, (1, 1)),
    (8, 3, 2, 1, (0, 1)),
    (9, 3, 1, 2, (2, 2)),     # dilated extent 5
    (5, 1, 1, 1, (0, 0)),
    (4, 7, 3, 1, (3, 3)),     # kernel larger than the input
])
def test_same_padding(n, k, s, d, expect):
    assert same_padding(n, k, s, d) == expect
    before, after = expect
    # 'same' means ceil(n / s) outputs
    assert (n + before + after - d * (k - 1) - 1) // s + 1 == -(-n // s)


def test_output_shapes():
    assert conv_output_shape((None, 28, 28, 1), 5, 6, padding="same") == (None, 28, 28, 6)
    assert conv_output_shape((8, 14, 14, 6), (5, 5), 16) == (8, 10, 10, 16)
    assert conv_output_shape((2, 7, 9, 3), 3, 4, strides=2, padding="same") == (2, 4, 5, 4)
    assert conv_output_shape((2, 9, 9, 3), 3, 4, dilation=2) == (2, 5, 5, 4)
    assert pool_output_shape((2, 28, 28, 6), 2) == (2, 14, 14, 6)
    assert pool_output_shape((2, 7, 9, 6), 2) == (2, 3, 4, 6)
    assert pool_output_shape((2, 7, 9, 6), 2, padding="same") == (2, 4, 5, 6)
    assert pool_output_shape((2, 7, 9, 6), 3, strides=1, padding="same") == (2, 7, 9, 6)
    assert resolve_padding((1, 2), (5, 5), (3, 3)) == (1, 1, 2, 2)
    assert normalize_pair(3, "k") == (3, 3)
    with pytest.raises(ValueError, match="padding"):
        resolve_padding("full", (5, 5), (3, 3))
    with pytest.raises(ValueError, match="strides"):
        normalize_pair((1, 0), "strides")
    with pytest.raises(ValueError, match="does not fit"):
        conv_output_shape((1, 3, 3, 1), 5, 2)


# ---------------------------------------------------------------------------
# the references themselves against central finite differences
# ---------------------------------------------------------------------------

def _fd_grad(f, a: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    g = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        old = a[i]
        a[i] = old + eps
        hi = f()
        a[i] = old - eps
        lo = f()
        a[i] = old
        g[i] = (hi - lo) / (2 * eps)
    return g


@pytest.mark.parametrize("s,p,d", [((1, 1), (1, 1, 1, 1), (1, 1)),
                                   ((2, 1), (1, 1, 0, 1), (1, 2)),
                                   ((2, 2), (0, 1, 0, 1), (1, 1))])
def test_reference_conv_bwd_is_the_gradient(rng, s, p, d):
    x = rng.standard_normal((2, 5, 6, 2))
    w = rng.standard_normal((3, 2, 2, 3))
    b = rng.standard_normal(3)
    g = rng.standard_normal(R.conv2d_fwd(x, w, b, s, p, d).shape)

    def loss():
        return float((R.conv2d_fwd(x, w, b, s, p, d) * g).sum())

    dw, db, dx = R.conv2d_bwd(x, w, g, s, p, d)
    np.testing.assert_allclose(dx, _fd_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dw, _fd_grad(loss, w), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(db, _fd_grad(loss, b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("pool,s,pad", [((2, 2), (2, 2), (0, 0, 0, 0)),
                                        ((3, 3), (1, 1), (1, 1, 1, 1)),
                                        ((2, 3), (1, 2), (0, 1, 1, 1))])
def test_reference_pool_bwd_is_the_gradient(rng, pool, s, pad):
    x = rng.standard_normal((2, 5, 6, 3))
    g = rng.standard_normal(R.pool_out_shape(x.shape, pool, s, pad))

    def avg_loss():
        return float((R.avgpool2d_fwd(x, pool, s, pad) * g).sum())

    def max_loss():
        return float((R.maxpool2d_fwd(x, pool, s, pad)[0] * g).sum())

    np.testing.assert_allclose(R.avgpool2d_bwd(x.shape, g, pool, s, pad),
                               _fd_grad(avg_loss, x), rtol=1e-6, atol=1e-7)
    _, arg = R.maxpool2d_fwd(x, pool, s, pad)
    np.testing.assert_allclose(R.maxpool2d_bwd(x.shape, g, arg),
                               _fd_grad(max_loss, x), rtol=1e-6, atol=1e-7)


def test_reference_batchnorm_bwd_is_the_gradient(rng):
    x = 2.0 + rng.standard_normal((7, 3))
    gamma = rng.standard_normal(3)
    beta = rng.standard_normal(3)
    g = rng.standard_normal((7, 3))
    eps = 1e-3

    def loss():
        out = R.batchnorm_fwd_train(x, gamma, beta, np.zeros(3), np.ones(3), 0.9, eps)[0]
        return float((out * g).sum())

    dx, dgamma, dbeta = R.batchnorm_bwd(x, g, gamma, eps)
    np.testing.assert_allclose(dx, _fd_grad(loss, x), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dgamma, _fd_grad(loss, gamma), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dbeta, _fd_grad(loss, beta), rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------
# convolution
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])) +
                         f"-k{c[5][0]}{c[5][1]}-s{c[6][0]}{c[6][1]}-{c[7]}-d{c[8][0]}{c[8][1]}")
def test_conv2d_fwd(ops, conv_path, rng, case):
    _skip_large(ops, case[-1])
    x, w, b, s, p, d = conv_data(rng, case)
    if ops.name != "cpu":
        combos = [("relu", True), ("softmax", False)]
    elif case[2] * case[1] <= 100:
        combos = list(itertools.product(ACTS, (True, False)))
    else:
        combos = [("linear", True), ("relu", False), ("tanh", True)]
    for act, with_bias in combos:
        bb = b if with_bias else None
        ref = R.conv2d_fwd(x, w, bb, s, p, d, act)
        out = poisoned(ops, ref.shape)
        ops.conv2d_fwd(dev(ops, x), dev(ops, w), None if bb is None else dev(ops, bb), out,
                       strides=s, padding=p, dilation=d, act=act)
        assert_close(host(ops, out), ref, f"conv2d_fwd act={act} bias={with_bias}")


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "x".join(map(str, c[:5])) +
                         f"-k{c[5][0]}{c[5][1]}-s{c[6][0]}{c[6][1]}-{c[7]}-d{c[8][0]}{c[8][1]}")
def test_conv2d_bwd(ops, conv_path, rng, case):
    _skip_large(ops, case[-1])
    x, w, _b, s, p, d = conv_data(rng, case)
    shape = R.conv2d_fwd(x, w, None, s, p, d).shape
    dz = rng.standard_normal(shape).astype(np.float32)
    rdw, rdb, rdx = R.conv2d_bwd(x, w, dz, s, p, d)
    combos = ((True, True), (False, True), (True, False)) if ops.name == "cpu" else ((True, True),)
    for want_db, want_dx in combos:
        dw = poisoned(ops, w.shape)
        db = poisoned(ops, rdb.shape) if want_db else None
        dx = poisoned(ops, x.shape) if want_dx else None
        ops.conv2d_bwd(dev(ops, x), dev(ops, w), dev(ops, dz), dw, db, dx,
                       strides=s, padding=p, dilation=d)
        assert_close(host(ops, dw), rdw, "dw")
        if want_db:
            assert_close(host(ops, db), rdb, "db")
        if want_dx:
            assert_close(host(ops, dx), rdx, "dx")


def test_conv2d_bwd_overwrites(ops, rng):
    """Outputs are overwritten, not accumulated into, on repeated calls."""
    x, w, _b, s, p, d = conv_data(rng, CONV_CASES[1])
    dz = rng.standard_normal(R.conv2d_fwd(x, w, None, s, p, d).shape).astype(np.float32)
    rdw, rdb, rdx = R.conv2d_bwd(x, w, dz, s, p, d)
    dw, db, dx = poisoned(ops, w.shape), poisoned(ops, rdb.shape), poisoned(ops, x.shape)
    for _ in range(2):
        ops.conv2d_bwd(dev(ops, x), dev(ops, w), dev(ops, dz), dw, db, dx,
                       strides=s, padding=p, dilation=d)
    assert_close(host(ops, dw), rdw, "dw")
    assert_close(host(ops, db), rdb, "db")
    assert_close(host(ops, dx), rdx, "dx")


def test_conv2d_keras_padding_names(ops, rng):
    """'same' / 'valid' strings resolve as Keras does."""
    x = rng.standard_normal((1, 5, 6, 2)).astype(np.float32)
    w = rng.standard_normal((4, 4, 2, 3)).astype(np.float32)
    for name, s in (("same", (2, 2)), ("valid", (1, 2)), ("same", (1, 1))):
        p = resolve_padding(name, (5, 6), (4, 4), s)
        ref = R.conv2d_fwd(x, w, None, s, p, (1, 1))
        assert ref.shape == conv_output_shape(x.shape, (4, 4), 3, s, name)
        out = poisoned(ops, ref.shape)
        ops.conv2d_fwd(dev(ops, x), dev(ops, w), None, out, strides=s, padding=name)
        assert_close(host(ops, out), ref, f"padding={name}")


# ---------------------------------------------------------------------------
# pooling and zero padding
# ---------------------------------------------------------------------------

def _pool_id(c):
    return "x".join(map(str, c[:4])) + f"-p{c[4][0]}{c[4][1]}-s{c[5][0]}{c[5][1]}-{c[6]}"


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_id)
def test_maxpool2d(ops, rng, case, index_dtype):
    b, h, w, c, k, s, pad, small = case
    _skip_large(ops, small)
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    p = resolve_padding(pad, (h, w), k, s)
    ref, rarg = R.maxpool2d_fwd(x, k, s, p)
    assert ref.shape == pool_output_shape(x.shape, k, s, pad)
    out = poisoned(ops, ref.shape)
    arg = poisoned(ops, ref.shape, index_dtype)
    ops.maxpool2d_fwd(dev(ops, x), out, arg, pool=k, strides=s, padding=p)
    np.testing.assert_array_equal(host(ops, out), ref.astype(np.float32))
    np.testing.assert_array_equal(host(ops, arg), rarg)
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    dx = poisoned(ops, x.shape)
    ops.maxpool2d_bwd(dev(ops, dy), arg, dx)
    assert_close(host(ops, dx), R.maxpool2d_bwd(x.shape, dy, rarg), "maxpool dx", rtol=1e-6)


def test_maxpool2d_first_max_and_nan(ops):
    """Ties go to the first element in row-major window order; NaN propagates."""
    x = np.zeros((1, 2, 4, 2), np.float32)
    x[0, 1, 0, 0] = np.nan
    out = poisoned(ops, (1, 1, 2, 2))
    arg = poisoned(ops, (1, 1, 2, 2), np.int64)
    ops.maxpool2d_fwd(dev(ops, x), out, arg, pool=(2, 2), strides=(2, 2), padding=(0, 0, 0, 0))
    o, a = host(ops, out), host(ops, arg)
    assert np.isnan(o[0, 0, 0, 0]) and a[0, 0, 0, 0] == (1 * 4 + 0) * 2 + 0
    assert o[0, 0, 0, 1] == 0 and a[0, 0, 0, 1] == 1            # (0, 0), channel 1
    assert o[0, 0, 1, 0] == 0 and a[0, 0, 1, 0] == (0 * 4 + 2) * 2 + 0


@pytest.mark.parametrize("case", POOL_CASES, ids=_pool_id)
def test_avgpool2d(ops, rng, case):
    b, h, w, c, k, s, pad, small = case
    _skip_large(ops, small)
    x = rng.standard_normal((b, h, w, c)).astype(np.float32)
    p = resolve_padding(pad, (h, w), k, s)
    ref = R.avgpool2d_fwd(x, k, s, p)
    out = poisoned(ops, ref.shape)
    ops.avgpool2d_fwd(dev(ops, x), out, pool=k, strides=s, padding=p)
    assert_close(host(ops, out), ref, "avgpool out", rtol=1e-6)
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    dx = poisoned(ops, x.shape)
    ops.avgpool2d_bwd(dev(ops, dy), dx, pool=k, strides=s, padding=p)
    assert_close(host(ops, dx), R.avgpool2d_bwd(x.shape, dy, k, s, p), "avgpool dx", rtol=1e-6)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 7, 9, 3), (2, 5, 5, 17), (3, 28, 28, 6)])
def test_global_pools(ops, rng, shape):
    _skip_large(ops, shape[1] < 20)
    x = rng.standard_normal(shape).astype(np.float32)
    b, c = shape[0], shape[3]
    out = poisoned(ops, (b, c))
    ops.global_avgpool_fwd(dev(ops, x), out)
    assert_close(host(ops, out), R.global_avgpool_fwd(x), "global avg", rtol=1e-6)
    dy = rng.standard_normal((b, c)).astype(np.float32)
    dx = poisoned(ops, shape)
    ops.global_avgpool_bwd(dev(ops, dy), dx)
    assert_close(host(ops, dx), R.global_avgpool_bwd(shape, dy), "global avg dx", rtol=1e-6)

    rout, rarg = R.global_maxpool_fwd(x)
    for dt in (np.int32, np.int64):
        out = poisoned(ops, (b, c))
        arg = poisoned(ops, (b, c), dt)
        ops.global_maxpool_fwd(dev(ops, x), out, arg)
        np.testing.assert_array_equal(host(ops, out), rout.astype(np.float32))
        np.testing.assert_array_equal(host(ops, arg), rarg)
        dx = poisoned(ops, shape)
        ops.global_maxpool_bwd(dev(ops, dy), arg, dx)
        assert_close(host(ops, dx), R.maxpool2d_bwd(shape, dy, rarg), "global max dx",
                     rtol=1e-6)


@pytest.mark.parametrize("padding", [(0, 0, 0, 0), (1, 1, 1, 1), (0, 2, 3, 1), (2, 0, 0, 1)])
def test_zeropad2d(ops, rng, padding):
    x = rng.standard_normal((3, 7, 9, 3)).astype(np.float32)
    ref = R.zeropad2d_fwd(x, padding)
    out = poisoned(ops, ref.shape)
    ops.zeropad2d_fwd(dev(ops, x), out, padding=padding)
    np.testing.assert_array_equal(host(ops, out), ref.astype(np.float32))
    dy = rng.standard_normal(ref.shape).astype(np.float32)
    dx = poisoned(ops, x.shape)
    ops.zeropad2d_bwd(dev(ops, dy), dx, padding=padding)
    np.testing.assert_array_equal(host(ops, dx), R.zeropad2d_bwd(dy, padding).astype(np.float32))


# ---------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------

def _bn_data(rng, rows, c):
    # a large common offset: the statistics must not lose it to cancellation
    x = (5.0 + 3.0 * rng.standard_normal((rows, c))).astype(np.float32)
    gamma = rng.standard_normal(c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    mm = rng.standard_normal(c).astype(np.float32)
    mv = (0.5 + rng.random(c)).astype(np.float32)
    return x, gamma, beta, mm, mv


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("c", BN_CHANNELS)
@pytest.mark.parametrize("rows", BN_ROWS)
def test_batchnorm(ops, op_sizes, rng, rows, c, affine):
    if rows not in op_sizes and rows > max(op_sizes):
        pytest.skip("size not run on this backend")
    x, gamma, beta, mm, mv = _bn_data(rng, rows, c)
    g, bt = (gamma, beta) if affine else (None, None)
    momentum, eps = 0.9, 1e-3
    rout, rmm, rmv, rmean, rinv = R.batchnorm_fwd_train(x, g, bt, mm, mv, momentum, eps)
    out = poisoned(ops, x.shape)
    dmm, dmv = dev(ops, mm), dev(ops, mv)
    smean, sinv = poisoned(ops, (c,)), poisoned(ops, (c,))
    dg = None if g is None else dev(ops, g)
    dbt = None if bt is None else dev(ops, bt)
    ops.batchnorm_fwd_train(dev(ops, x), out, dg, dbt, dmm, dmv, smean, sinv,
                            momentum=momentum, epsilon=eps)
    assert_close(host(ops, out), rout, "bn out", rtol=1e-5)
    assert_close(host(ops, dmm), rmm, "moving_mean", rtol=1e-6)
    assert_close(host(ops, dmv), rmv, "moving_var", rtol=1e-5)
    assert_close(host(ops, smean), rmean, "save_mean", rtol=1e-6)
    assert_close(host(ops, sinv), rinv, "save_invstd", rtol=1e-5)

    dy = rng.standard_normal(x.shape).astype(np.float32)
    rdx, rdg, rdb = R.batchnorm_bwd(x, dy, g, eps)
    dx = poisoned(ops, x.shape)
    dgam, dbet = poisoned(ops, (c,)), poisoned(ops, (c,))
    ops.batchnorm_bwd(dev(ops, x), dev(ops, dy), dg, smean, sinv, dx, dgam, dbet)
    # dx is a difference of nearly equal terms: compare against its own scale
    # plus the size of the terms it cancels
    scale = np.abs(rdx).max() + np.abs(dy).max() * np.abs(rinv * (1 if g is None else g)).max()
    np.testing.assert_allclose(host(ops, dx), rdx, rtol=1e-4, atol=2e-5 * scale)
    assert_close(host(ops, dgam), rdg, "dgamma", rtol=1e-4)
    assert_close(host(ops, dbet), rdb, "dbeta", rtol=1e-5)

    out = poisoned(ops, x.shape)
    ops.batchnorm_fwd_infer(dev(ops, x), out, dg, dbt, dev(ops, mm), dev(ops, mv),
                            epsilon=eps)
    assert_close(host(ops, out), R.batchnorm_fwd_infer(x, g, bt, mm, mv, eps), "bn infer",
                 rtol=1e-5)


def test_batchnorm_nhwc_input(ops, rng):
    """4-D NHWC input normalises over every axis but the last."""
    x = rng.standard_normal((3, 5, 7, 4)).astype(np.float32)
    c = 4
    rout, rmm, rmv, _, _ = R.batchnorm_fwd_train(x.reshape(-1, c), None, None, np.zeros(c),
                                                 np.ones(c), 0.99, 1e-3)
    out = poisoned(ops, x.shape)
    mm, mv = dev(ops, np.zeros(c, np.float32)), dev(ops, np.ones(c, np.float32))
    ops.batchnorm_fwd_train(dev(ops, x), out, None, None, mm, mv, poisoned(ops, (c,)),
                            poisoned(ops, (c,)), momentum=0.99, epsilon=1e-3)
    assert_close(host(ops, out).reshape(-1, c), rout, "bn nhwc", rtol=1e-5)
    assert_close(host(ops, mv), rmv, "moving_var (biased, as Keras)", rtol=1e-6)


# ---------------------------------------------------------------------------
# thread-count independence (CPU)
# ---------------------------------------------------------------------------

def _run_all(ops, rng_seed: int):
    rng = np.random.default_rng(rng_seed)
    res = []
    for case in CONV_CASES[-4:] + [CONV_CASES[7], CONV_CASES[14]]:
        x, w, b, s, p, d = conv_data(rng, case)
        out = np.empty(R.conv2d_fwd(x, w, b, s, p, d).shape, np.float32)
        ops.conv2d_fwd(x, w, b, out, strides=s, padding=p, dilation=d, act="relu")
        dz = rng.standard_normal(out.shape).astype(np.float32)
        dw, db, dx = np.empty_like(w), np.empty_like(b), np.empty_like(x)
        ops.conv2d_bwd(x, w, dz, dw, db, dx, strides=s, padding=p, dilation=d)
        res += [out, dw, db, dx]
    x = rng.standard_normal((5, 9, 7, 3)).astype(np.float32)
    for k, s, pad in (((3, 3), (1, 1), (1, 1, 1, 1)), ((2, 2), (2, 2), (0, 1, 0, 1))):
        out = np.empty(R.pool_out_shape(x.shape, k, s, pad), np.float32)
        arg = np.empty(out.shape, np.int32)
        ops.maxpool2d_fwd(x, out, arg, pool=k, strides=s, padding=pad)
        dx = np.empty_like(x)
        ops.maxpool2d_bwd(out, arg, dx)
        res += [out, arg, dx]
        ops.avgpool2d_fwd(x, out, pool=k, strides=s, padding=pad)
        ops.avgpool2d_bwd(out, dx, pool=k, strides=s, padding=pad)
        res += [out.copy(), dx.copy()]
    xb = (1.0 + rng.standard_normal((1000, 17))).astype(np.float32)
    out, dxb = np.empty_like(xb), np.empty_like(xb)
    mm, mv = np.zeros(17, np.float32), np.ones(17, np.float32)
    sm, si, dg, dbt = (np.empty(17, np.float32) for _ in range(4))
    g = rng.standard_normal(17).astype(np.float32)
    ops.batchnorm_fwd_train(xb, out, g, None, mm, mv, sm, si, momentum=0.9, epsilon=1e-3)
    ops.batchnorm_bwd(xb, out, g, sm, si, dxb, dg, dbt)
    return res + [out, mm, mv, sm, si, dxb, dg, dbt]


def test_thread_count_independence(ops):
    if ops.name != "cpu":
        pytest.skip("thread counts are a CPU matter")
    set_threads_or_skip(1)
    try:
        one = _run_all(ops, 7)
        set_threads_or_skip(2)
        assert current_threads() == 2
        two = _run_all(ops, 7)
        set_threads_or_skip(3)
        three = _run_all(ops, 7)
    finally:
        set_threads_or_skip(2)
    for i, (a, b, c) in enumerate(zip(one, two, three)):
        assert np.array_equal(a, b, equal_nan=True), f"result {i} differs at 1 vs 2 threads"
        assert np.array_equal(a, c, equal_nan=True), f"result {i} differs at 1 vs 3 threads"


# ---------------------------------------------------------------------------
# argument checking (CPU)
# ---------------------------------------------------------------------------

def test_bad_arguments_raise(ops):
    if ops.name != "cpu":
        pytest.skip("argument checks are tested on the CPU backend")
    x = np.zeros((2, 7, 9, 3), np.float32)
    w = np.zeros((3, 3, 3, 4), np.float32)
    out = np.zeros((2, 5, 7, 4), np.float32)
    with pytest.raises(TypeError, match="'x'"):
        ops.conv2d_fwd(x.astype(np.float64), w, None, out)
    with pytest.raises(ValueError, match="'out'"):
        ops.conv2d_fwd(x, w, None, np.zeros((2, 5, 6, 4), np.float32))
    with pytest.raises(ValueError, match="'w'"):
        ops.conv2d_fwd(x, np.zeros((3, 3, 2, 4), np.float32), None, out)
    with pytest.raises(ValueError, match="'b'"):
        ops.conv2d_fwd(x, w, np.zeros(5, np.float32), out)
    with pytest.raises(ValueError, match="contiguous"):
        ops.conv2d_fwd(np.zeros((2, 7, 9, 6), np.float32)[..., ::2], w, None, out)
    with pytest.raises(ValueError, match="activation"):
        ops.conv2d_fwd(x, w, None, out, act="gelu")
    with pytest.raises(ValueError, match="strides"):
        ops.conv2d_fwd(x, w, None, out, strides=(0, 1))
    alias = np.zeros((2, 7, 9, 4), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        ops.zeropad2d_fwd(alias, alias, padding=(0, 0, 0, 0))
    with pytest.raises(ValueError, match="overlaps"):
        ops.conv2d_fwd(alias.reshape(-1)[:2 * 7 * 9 * 3].reshape(2, 7, 9, 3),
                       np.zeros((1, 1, 3, 4), np.float32), None, alias)
    with pytest.raises(ValueError, match="'dz'"):
        ops.conv2d_bwd(x, w, np.zeros((2, 5, 7, 3), np.float32), np.zeros_like(w), None, None)
    pooled = np.zeros((2, 3, 4, 3), np.float32)
    with pytest.raises(TypeError, match="'argmax'"):
        ops.maxpool2d_fwd(x, pooled, np.zeros(pooled.shape, np.float32), pool=2)
    with pytest.raises(ValueError, match="'argmax'"):
        ops.maxpool2d_bwd(pooled, np.full(pooled.shape, 10 ** 6, np.int64), np.zeros_like(x))
    with pytest.raises(ValueError, match="padding"):
        ops.maxpool2d_fwd(x, pooled, np.zeros(pooled.shape, np.int32), pool=2,
                          padding=(2, 0, 0, 0))
    with pytest.raises(ValueError, match="'moving_var'"):
        ops.batchnorm_fwd_train(np.zeros((4, 3), np.float32), np.zeros((4, 3), np.float32),
                                None, None, np.zeros(3, np.float32), np.zeros(2, np.float32),
                                np.zeros(3, np.float32), np.zeros(3, np.float32))


# ---------------------------------------------------------------------------
# PyTorch cross-checks (skipped when torch is not importable)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in CONV_CASES], ids=lambda c: "x".join(map(str, c[:5])))
def test_conv2d_matches_torch(ops, rng, case):
    torch = pytest.importorskip("torch")
    _skip_large(ops, case[-1])
    if ops.name != "cpu" and case is not CONV_CASES[1]:
        pytest.skip("one torch cross-check on the simulated GPU")
    tf = torch.nn.functional
    x, w, b, s, p, d = conv_data(rng, case)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float64), requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).astype(np.float64), requires_grad=True)
    bt = torch.tensor(b.astype(np.float64), requires_grad=True)
    xp = tf.pad(xt, (p[2], p[3], p[0], p[1]))
    yt = tf.conv2d(xp, wt, bt, stride=s, dilation=d)
    dz = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
    yt.backward(torch.tensor(dz.astype(np.float64)))
    out = poisoned(ops, tuple(yt.permute(0, 2, 3, 1).shape))
    ops.conv2d_fwd(dev(ops, x), dev(ops, w), dev(ops, b), out, strides=s, padding=p,
                   dilation=d)
    assert_close(host(ops, out), yt.detach().numpy().transpose(0, 2, 3, 1), "torch out")
    dzn = np.ascontiguousarray(dz.transpose(0, 2, 3, 1))
    dw, db, dx = poisoned(ops, w.shape), poisoned(ops, b.shape), poisoned(ops, x.shape)
    ops.conv2d_bwd(dev(ops, x), dev(ops, w), dev(ops, dzn), dw, db, dx, strides=s, padding=p,
                   dilation=d)
    assert_close(host(ops, dw), wt.grad.numpy().transpose(2, 3, 1, 0), "torch dw")
    assert_close(host(ops, db), bt.grad.numpy(), "torch db")
    assert_close(host(ops, dx), xt.grad.numpy().transpose(0, 2, 3, 1), "torch dx")


@pytest.mark.parametrize("k,s,p", [((2, 2), (2, 2), 0), ((3, 3), (2, 2), 1), ((3, 3), (1, 1), 1),
                                   ((2, 3), (1, 2), (1, 1))])
def test_pools_match_torch(ops, rng, k, s, p):
    torch = pytest.importorskip("torch")
    if ops.name != "cpu" and k != (3, 3):
        pytest.skip("fewer torch cross-checks on the simulated GPU")
    tf = torch.nn.functional
    x = rng.standard_normal((3, 7, 9, 4)).astype(np.float32)
    pp = (p, p) if isinstance(p, int) else p
    pad4 = (pp[0], pp[0], pp[1], pp[1])
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    for kind in ("max", "avg"):
        if kind == "max":
            yt = tf.max_pool2d(xt, k, s, pp)
        else:
            yt = tf.avg_pool2d(xt, k, s, pp, count_include_pad=False)
        dy = rng.standard_normal(tuple(yt.shape)).astype(np.float32)
        xt.grad = None
        yt.backward(torch.tensor(dy))
        ref = yt.detach().numpy().transpose(0, 2, 3, 1)
        out = poisoned(ops, ref.shape)
        dyn = dev(ops, dy.transpose(0, 2, 3, 1))
        dx = poisoned(ops, x.shape)
        if kind == "max":
            arg = poisoned(ops, ref.shape, np.int64)
            ops.maxpool2d_fwd(dev(ops, x), out, arg, pool=k, strides=s, padding=pad4)
            ops.maxpool2d_bwd(dyn, arg, dx)
        else:
            ops.avgpool2d_fwd(dev(ops, x), out, pool=k, strides=s, padding=pad4)
            ops.avgpool2d_bwd(dyn, dx, pool=k, strides=s, padding=pad4)
        assert_close(host(ops, out), ref.astype(np.float64), f"torch {kind} out", rtol=1e-6)
        assert_close(host(ops, dx), xt.grad.numpy().transpose(0, 2, 3, 1).astype(np.float64),
                     f"torch {kind} dx", rtol=1e-6)


def test_batchnorm_matches_torch(ops, rng):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    x, gamma, beta, mm, mv = _bn_data(rng, 129, 5)
    momentum, eps = 0.99, 1e-3
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    gt = torch.tensor(gamma.astype(np.float64), requires_grad=True)
    bt = torch.tensor(beta.astype(np.float64), requires_grad=True)
    rm = torch.tensor(mm.astype(np.float64))
    rv = torch.tensor(mv.astype(np.float64))
    # torch's momentum is the weight of the new batch: 1 - Keras's momentum
    yt = tf.batch_norm(xt, rm, rv, gt, bt, training=True, momentum=1 - momentum, eps=eps)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    yt.backward(torch.tensor(dy.astype(np.float64)))
    out = poisoned(ops, x.shape)
    dmm, dmv = dev(ops, mm), dev(ops, mv)
    sm, si = poisoned(ops, (5,)), poisoned(ops, (5,))
    ops.batchnorm_fwd_train(dev(ops, x), out, dev(ops, gamma), dev(ops, beta), dmm, dmv, sm, si,
                            momentum=momentum, epsilon=eps)
    assert_close(host(ops, out), yt.detach().numpy(), "torch bn out", rtol=1e-5)
    assert_close(host(ops, dmm), rm.numpy(), "torch running mean", rtol=1e-6)
    # torch tracks the unbiased variance, Keras (and fastnn) the biased one
    n = x.shape[0]
    var_b = x.astype(np.float64).var(axis=0)
    keras_rv = rv.numpy() - (1 - momentum) * var_b * (n / (n - 1) - 1)
    assert_close(host(ops, dmv), keras_rv, "running var", rtol=1e-5)
    dx, dg, db = poisoned(ops, x.shape), poisoned(ops, (5,)), poisoned(ops, (5,))
    ops.batchnorm_bwd(dev(ops, x), dev(ops, dy), dev(ops, gamma), sm, si, dx, dg, db)
    assert_close(host(ops, dx), xt.grad.numpy(), "torch bn dx", rtol=1e-4)
    assert_close(host(ops, dg), gt.grad.numpy(), "torch bn dgamma", rtol=1e-4)
    assert_close(host(ops, db), bt.grad.numpy(), "torch bn dbeta", rtol=1e-5)
