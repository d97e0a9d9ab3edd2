"""Direct tests of fastnn._C: numerical edge cases, thread-count independence,
fork safety, strided GEMM operands, and the references' own gradients."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference as ref
from fastnn import _C

needs_openmp = pytest.mark.skipif(not _C.has_openmp(), reason="built without OpenMP")


def f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.fixture
def threads():
    """Restores the thread count and serial flag after the test."""
    before = _C.get_num_threads()
    yield
    _C.force_serial(False)
    _C.set_num_threads(before)


# ---- the references are right: gradients against central differences ----------------

def _fd_grad(f, x, h=1e-6):
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        g[i] = (f(xp) - f(xm)) / (2 * h)
    return g


@pytest.mark.parametrize("kind", sorted(ref.LOSSES))
def test_reference_loss_gradients_match_finite_differences(kind, rng):
    rows, cols = 4, 5
    if kind in ("cce_probs", "sparse_cce_probs"):
        x = rng.uniform(0.2, 1.0, (rows, cols))
    elif kind == "bce_probs":
        x = rng.uniform(0.05, 0.95, (rows, cols))
    else:
        x = rng.standard_normal((rows, cols)) * 2
    if "sparse" in kind:
        t = rng.integers(0, cols, rows)
    elif kind in ("softmax_cce_logits", "cce_probs"):
        t = rng.dirichlet(np.ones(cols), rows) * 1.3  # sum(t) != 1 on purpose
    else:
        t = rng.uniform(0, 1, (rows, cols))
    loss_fn = ref.LOSSES[kind]
    _, grad = loss_fn(x, t)
    fd = _fd_grad(lambda v: loss_fn(v, t)[0], x)
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_reference_act_backward_matches_finite_differences(act, rng):
    z = rng.standard_normal((3, 6)) * 2
    dy = rng.standard_normal((3, 6))
    fd = _fd_grad(lambda v: float((dy * ref.activation(act, v)).sum()), z)
    np.testing.assert_allclose(ref.act_backward(act, z, dy), fd, rtol=1e-5, atol=1e-8)


# ---- numerical edge cases -------------------------------------------------------------

def test_softmax_cce_stable_for_huge_logits(rng):
    rows, cols = 6, 4
    z = (1e4 + f32(rng, (rows, cols), 3.0)).astype(np.float32)
    z[1] = -1e4 + z[1] - 1e4
    z[2, 0] = 3e4
    labels = rng.integers(0, cols, rows).astype(np.int32)
    t = np.eye(cols, dtype=np.float32)[labels]
    for fn, target in ((_C.softmax_cce_logits, t), (_C.softmax_sparse_cce_logits, labels)):
        probs, grad = np.full_like(z, np.nan), np.full_like(z, np.nan)
        loss = fn(z, target, probs, grad)
        want, want_grad = ref.softmax_cce_logits(z, t)
        assert np.isfinite(loss) and loss == pytest.approx(want, rel=1e-6)
        assert np.isfinite(probs).all() and np.isfinite(grad).all()
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(grad, want_grad, atol=1e-6)
    y = np.full_like(z, np.nan)
    _C.bias_act_fwd(_C.ACT_SOFTMAX, z, None, y)
    np.testing.assert_allclose(y, ref.softmax(z), atol=1e-6)


@pytest.mark.parametrize("cols", [10, 37])
def test_softmax_nan_stays_in_its_row(rng, cols):
    # Rows are reduced in lanes and exponentiated a block of rows at a time: a
    # NaN past the first lane block must still reach its whole row, and no other.
    rows, bad = 70, 33
    z = f32(rng, (rows, cols), 3.0)
    z[bad, cols - 2] = np.nan
    labels = rng.integers(0, cols, rows).astype(np.int32)
    t = np.eye(cols, dtype=np.float32)[labels]
    ok = np.arange(rows) != bad
    for fn, target in ((_C.softmax_cce_logits, t), (_C.softmax_sparse_cce_logits, labels)):
        probs, grad = np.full_like(z, -1.0), np.full_like(z, -1.0)
        assert np.isnan(fn(z, target, probs, grad))
        assert np.isnan(probs[bad]).all() and np.isnan(grad[bad]).all()
        np.testing.assert_allclose(probs[ok], ref.softmax(z[ok]), atol=1e-6)
    y = z.copy()
    _C.bias_act_fwd(_C.ACT_SOFTMAX, y, None, y)  # in place
    assert np.isnan(y[bad]).all()
    np.testing.assert_allclose(y[ok], ref.softmax(z[ok]), atol=1e-6)


@pytest.mark.parametrize("rows,cols", [(10_000, 10), (777, 37), (5, 1000)])
def test_softmax_loss_probs_equal_the_softmax_activation(rng, threads, rows, cols):
    # The loss takes its rows in chunks of its own and the activation in blocks
    # of 32; each row's probabilities must not depend on either.
    z = f32(rng, (rows, cols), 4.0)
    labels = rng.integers(0, cols, rows).astype(np.int32)
    for n in (1, 2):
        _C.set_num_threads(n)
        probs, grad, act = (np.empty_like(z) for _ in range(3))
        _C.softmax_sparse_cce_logits(z, labels, probs, grad)
        _C.bias_act_fwd(_C.ACT_SOFTMAX, z, None, act)
        np.testing.assert_array_equal(probs, act)


def test_sigmoid_bce_logits_finite_at_extremes():
    z = np.array([[100.0, -100.0, 100.0, -100.0, 0.0]], np.float32)
    t = np.array([[0.0, 1.0, 1.0, 0.0, 0.5]], np.float32)
    probs, grad = np.full_like(z, np.nan), np.full_like(z, np.nan)
    loss = _C.sigmoid_bce_logits(z, t, probs, grad)
    want, want_grad = ref.sigmoid_bce_logits(z, t)
    assert np.isfinite(loss) and loss == pytest.approx(want, rel=1e-9)
    assert loss == pytest.approx((100 + 100 + np.log(2)) / 5, rel=1e-6)
    np.testing.assert_allclose(probs[0, :4], [1.0, 0.0, 1.0, 0.0], rtol=0, atol=1e-30)
    np.testing.assert_allclose(grad, want_grad, atol=1e-9)


def test_probability_losses_clip_like_keras():
    # Exact 0 and 1 probabilities: finite loss and gradient (clipped at 1e-7).
    p = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    t = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    grad = np.full_like(p, np.nan)
    loss = _C.bce_probs(p, t, grad)
    want, want_grad = ref.bce_probs(p, t)
    assert np.isfinite(loss) and loss == pytest.approx(want, rel=1e-6)
    np.testing.assert_array_equal(grad, want_grad.astype(np.float32))  # clipped: zero
    grad = np.full_like(p, np.nan)
    loss = _C.cce_probs(p, t, grad)
    assert loss == pytest.approx(ref.cce_probs(p, t)[0], rel=1e-6)
    assert loss == pytest.approx(-0.5 * np.log(1e-7), rel=1e-6)
    # BCE at p = 1, t = 0: log(1 - clip(1)) with Keras's float32 bound 0.99999988.
    grad = np.full((1, 1), np.nan, np.float32)
    loss = _C.bce_probs(np.ones((1, 1), np.float32), np.zeros((1, 1), np.float32), grad)
    assert loss == pytest.approx(-np.log(1.0 - float(np.float32(1) - np.float32(1e-7))),
                                 rel=1e-6)
    assert grad[0, 0] == 0.0


def _ulp_error(got, want):
    """|got - want| in units of the float32 spacing at want (float64 want)."""
    w32 = want.astype(np.float32)
    spacing = np.spacing(np.abs(w32)).astype(np.float64)
    spacing = np.maximum(spacing, float(np.finfo(np.float32).smallest_subnormal))
    return np.abs(got.astype(np.float64) - want) / spacing


def test_exp_tanh_sigmoid_accuracy(rng):
    """The vectorised float32 exp/tanh/sigmoid stay within a few ulp of
    float64 over the whole range, subnormal results and extremes included."""
    x = np.concatenate([
        rng.uniform(-104, 88.7, 200_000), rng.standard_normal(200_000) * 3,
        rng.standard_normal(50_000) * 1e-3, np.linspace(-0.6, 0.6, 20_001),
        [0.0, -0.0, 1e-30, -1e-30, 88.72, -87.3, -100.0, -103.9, 0.5, -0.5],
    ]).astype(np.float32)
    x64 = x.astype(np.float64)
    y = np.full_like(x, np.nan)
    _C.vexpf(x, y)
    assert _ulp_error(y, np.exp(x64)).max() <= 2.0
    rows = x.reshape(1, -1)
    t = np.full_like(rows, np.nan)
    _C.bias_act_fwd("tanh", rows, None, t)
    assert _ulp_error(t[0], np.tanh(x64)).max() <= 3.0
    _C.bias_act_fwd("sigmoid", rows, None, t)
    assert _ulp_error(t[0], 1 / (1 + np.exp(-x64))).max() <= 3.0
    special = np.array([[np.nan, np.inf, -np.inf, -0.0, 50.0, -200.0]], np.float32)
    out = np.empty_like(special)
    _C.bias_act_fwd("tanh", special, None, out)
    assert np.isnan(out[0, 0]) and list(out[0, 1:5]) == [1.0, -1.0, 0.0, 1.0]
    assert np.signbit(out[0, 3]) and out[0, 5] == -1.0
    _C.bias_act_fwd("sigmoid", special, None, out)
    assert np.isnan(out[0, 0]) and list(out[0, 1:5]) == [1.0, 0.0, 0.5, 1.0]
    assert out[0, 5] == 0.0
    e = np.empty_like(special)
    _C.vexpf(special, e)
    assert np.isnan(e[0, 0]) and e[0, 2] == 0.0 and e[0, 3] == 1.0 and e[0, 5] == 0.0


def test_nan_propagates():
    x = np.array([[np.nan, 1.0, -1.0]], np.float32)
    y = np.empty_like(x)
    _C.bias_act_fwd("relu", x, None, y)
    assert np.isnan(y[0, 0]) and y[0, 1] == 1.0 and y[0, 2] == 0.0
    p = np.ones(3, np.float32)
    g = np.array([np.nan, 5.0, -5.0], np.float32)
    _C.sgd_step(p, g, None, 0.1, clip_value=1.0)
    assert np.isnan(p[0])
    np.testing.assert_allclose(p[1:], [0.9, 1.1], rtol=1e-6)


def test_dropout_given_u_exact(rng):
    x = f32(rng, (33, 7))
    u = rng.random(x.shape, dtype=np.float32)
    u.flat[::5] = np.float32(0.5)  # u == rate keeps the unit: the test is u >= rate
    for rate in (0.0, 0.2, 0.5, 1.0):
        mask, y = np.full_like(x, np.nan), np.full_like(x, np.nan)
        _C.dropout_fwd(x, u, rate, mask, y)
        keep = np.float32(1) / (np.float32(1) - np.float32(rate)) if rate < 1 else 0
        want_mask = np.where(u >= np.float32(rate), keep, 0).astype(np.float32)
        np.testing.assert_array_equal(mask, want_mask)
        np.testing.assert_array_equal(y, x * want_mask)
        ref_mask, ref_y = ref.dropout(x, u, rate)
        np.testing.assert_allclose(y, ref_y, rtol=1e-6)


def test_accuracy_ties_pick_first_maximum():
    """argmax ties resolve to the first index, as numpy.argmax does."""
    pred = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7], [0.3, 0.3, 0.3]], np.float32)
    target = np.eye(3, dtype=np.float32)[[0, 2, 0]]
    assert _C.categorical_accuracy_sum(pred, target) == 2.0
    assert _C.sparse_categorical_accuracy_sum(pred, np.array([1, 1, 0], np.int32)) == 2.0
    assert _C.categorical_accuracy_sum(pred, target) == ref.categorical_accuracy_sum(pred, target)


@pytest.mark.parametrize("n", [0, 1, 7, 4095, 4096, 4097, 1024 * 4096 + 3])
def test_sumsq_chunk_boundaries(n, rng):
    x = f32(rng, (n,), 2.0)
    assert _C.sumsq(x) == pytest.approx(ref.sumsq(x), rel=1e-12, abs=0)


def test_bias_act_and_grad_on_nd_arrays(rng):
    """Conv-like (N, H, W, C) arrays: the last axis is the feature axis."""
    x, b = f32(rng, (2, 3, 4, 5)), f32(rng, (5,))
    y = np.full_like(x, np.nan)
    _C.bias_act_fwd("tanh", x, b, y)
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64) + b), rtol=1e-5, atol=1e-6)
    db = np.full(5, np.nan, np.float32)
    _C.bias_grad(x, db)
    np.testing.assert_allclose(db, x.reshape(-1, 5).astype(np.float64).sum(0), rtol=1e-5)


# ---- GEMM with leading dimensions ------------------------------------------------------

@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_sgemm_strided_operands(rng, trans_a, trans_b):
    m, n, k = 13, 9, 11
    big_a = f32(rng, (40, 40))
    big_b = f32(rng, (40, 40))
    a = big_a[3:3 + (k if trans_a else m), 5:5 + (m if trans_a else k)]
    b = big_b[1:1 + (n if trans_b else k), 2:2 + (k if trans_b else n)]
    assert not a.flags.c_contiguous and not b.flags.c_contiguous
    big_c = np.full((m + 4, n + 6), np.nan, np.float32)
    c = big_c[2:2 + m, 3:3 + n]
    _C.sgemm(a, b, c, trans_a, trans_b, 1.0, 0.0)
    want = ref.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    assert (np.abs(c - want) <= ref.gemm_error_bound(a, b, trans_a=trans_a,
                                                       trans_b=trans_b)).all()
    # Nothing outside the slice of C was touched.
    outside = np.ones(big_c.shape, bool)
    outside[2:2 + m, 3:3 + n] = False
    assert np.isnan(big_c[outside]).all()


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(0, 40),
       trans_a=st.booleans(), trans_b=st.booleans(),
       alpha=st.sampled_from([1.0, -0.5, 2.0]), beta=st.sampled_from([0.0, 1.0, -0.25]),
       seed=st.integers(0, 2 ** 31))
def test_sgemm_property(m, n, k, trans_a, trans_b, alpha, beta, seed):
    r = np.random.default_rng(seed)
    a = f32(r, (k, m) if trans_a else (m, k))
    b = f32(r, (n, k) if trans_b else (k, n))
    c0 = f32(r, (m, n))
    c = c0.copy() if beta != 0 else np.full((m, n), np.nan, np.float32)
    _C.sgemm(a, b, c, trans_a, trans_b, alpha, beta)
    want = ref.gemm(a, b, c0, trans_a, trans_b, alpha, beta)
    bound = ref.gemm_error_bound(a, b, c0, trans_a, trans_b, alpha, beta)
    assert (np.abs(c - want) <= bound).all()


# ---- threads ---------------------------------------------------------------------------

def test_thread_controls(threads):
    assert isinstance(_C.has_openmp(), bool)
    _C.set_num_threads(3)
    assert _C.get_num_threads() == (3 if _C.has_openmp() else 1)
    _C.force_serial(True)
    assert _C.get_num_threads() == 1
    _C.force_serial(False)
    assert _C.get_num_threads() == (3 if _C.has_openmp() else 1)


def _run_all(rng_seed):
    """Runs every reducing kernel on inputs big enough to go parallel and
    returns all results."""
    r = np.random.default_rng(rng_seed)
    out = {}
    x = f32(r, (3_000_017,))
    out["sumsq"] = _C.sumsq(x)
    dz = f32(r, (2000, 300))
    db = np.empty(300, np.float32)
    _C.bias_grad(dz, db)
    out["bias_grad"] = db
    rows, cols = 5000, 10
    z = f32(r, (rows, cols), 3.0)
    labels = r.integers(0, cols, rows).astype(np.int32)
    onehot = np.eye(cols, dtype=np.float32)[labels]
    probs_in = r.uniform(0.01, 1.0, (rows, cols)).astype(np.float32)
    unit = r.uniform(0.0, 1.0, (rows, cols)).astype(np.float32)
    for name, fn, args in [
        ("softmax_cce_logits", _C.softmax_cce_logits, (z, onehot)),
        ("softmax_sparse_cce_logits", _C.softmax_sparse_cce_logits, (z, labels)),
        ("sigmoid_bce_logits", _C.sigmoid_bce_logits, (z, unit)),
    ]:
        probs, grad = np.empty_like(z), np.empty_like(z)
        out[name] = (fn(*args, probs, grad), probs, grad)
    for name, fn, args in [
        ("cce_probs", _C.cce_probs, (probs_in, onehot)),
        ("sparse_cce_probs", _C.sparse_cce_probs, (probs_in, labels)),
        ("bce_probs", _C.bce_probs, (unit, onehot)),
        ("mse", _C.mse, (z, unit)),
        ("mae", _C.mae, (z, unit)),
    ]:
        grad = np.empty_like(z)
        out[name] = (fn(*args, grad), grad)
    out["metrics"] = (_C.categorical_accuracy_sum(z, onehot),
                      _C.sparse_categorical_accuracy_sum(z, labels),
                      _C.binary_accuracy_sum(unit, onehot),
                      _C.mse_sum(z, unit), _C.mae_sum(z, unit))
    a, b = f32(r, (200, 300)), f32(r, (300, 150))
    c = np.empty((200, 150), np.float32)
    _C.sgemm(a, b, c)
    out["sgemm"] = c
    y = np.empty((200, 150), np.float32)
    _C.dense_fwd("softmax", a, b, f32(r, (150,)), y)
    out["dense_fwd"] = y
    return out


def _assert_identical(a, b, path="result"):
    if isinstance(a, dict):
        for key in a:
            _assert_identical(a[key], b[key], f"{path}[{key}]")
    elif isinstance(a, tuple):
        for i, (u, v) in enumerate(zip(a, b)):
            _assert_identical(u, v, f"{path}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), f"{path} differs between thread counts"
    else:
        assert a == b, f"{path}: {a!r} != {b!r} between thread counts"


@needs_openmp
def test_results_bit_identical_for_any_thread_count(threads):
    _C.set_num_threads(1)
    one = _run_all(7)
    _C.set_num_threads(2)
    two = _run_all(7)
    _C.set_num_threads(3)
    three = _run_all(7)
    _C.force_serial(True)
    serial = _run_all(7)
    _assert_identical(one, two)
    _assert_identical(one, three)
    _assert_identical(one, serial)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_runs_serial_and_does_not_hang(threads):
    _C.set_num_threads(2)
    x = np.arange(1_000_000, dtype=np.float32) / 1e6
    want = _C.sumsq(x)  # the parent has now used its thread pool
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        try:
            ok = _C.get_num_threads() == 1 and _C.sumsq(x) == want
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    deadline = time.monotonic() + 60
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung in a kernel")
        time.sleep(0.01)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert _C.get_num_threads() == (2 if _C.has_openmp() else 1)  # parent unaffected


# ---- the finiteness scan of input data ---------------------------------------------

@pytest.mark.parametrize("threads_n", [1, 2, 3])
def test_first_nonfinite_matches_numpy(threads, rng, threads_n):
    _C.set_num_threads(threads_n)
    n = 5 * 16384 + 77
    base = f32(rng, (n,))
    base[::1000] = np.float32(3.4028235e38)       # largest finite
    base[1::1000] = np.float32(1e-45)             # subnormal
    base[2::1000] = np.float32(-0.0)
    assert _C.first_nonfinite(base) == -1
    assert _C.first_nonfinite(base[:0]) == -1
    for bad in (np.nan, np.inf, -np.inf):
        for pos in (0, 1, 16383, 16384, 3 * 16384 + 5, n - 1):
            x = base.copy()
            x[pos] = bad
            x[min(n - 1, pos + 20000)] = bad      # a later one must not win
            want = int(np.flatnonzero(~np.isfinite(x))[0])
            assert _C.first_nonfinite(x) == want == pos
    # any shape: the flat index
    x = base[: 6 * 100].reshape(6, 10, 10).copy()
    x[4, 3, 2] = np.nan
    assert _C.first_nonfinite(x) == 4 * 100 + 3 * 10 + 2
    with pytest.raises(TypeError, match="float32"):
        _C.first_nonfinite(x.astype(np.float64))
