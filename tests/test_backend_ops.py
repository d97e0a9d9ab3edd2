"""Every backend op against the float64 references in tests/reference.py.

Backend-neutral: arrays go in through ``backend.asarray`` and come back
through ``backend.to_numpy``, so the same tests run the CPU backend and the
CUDA backend (under Numba's simulator, on the smaller ``op_sizes``). Output
arrays are poisoned with NaN first, so an element a kernel forgot to write
shows up as NaN.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from fastnn.backend.base import ACTIVATIONS, LOSS_KINDS, METRIC_KINDS

import reference as ref

F32_EPS = float(np.finfo(np.float32).eps)


# ---- helpers -------------------------------------------------------------------------

def dev(backend, a):
    return backend.asarray(np.ascontiguousarray(a))


def host(backend, a):
    backend.synchronize()
    return np.array(backend.to_numpy(a))


def poisoned(backend, shape, dtype=np.float32):
    return backend.asarray(np.full(shape, np.nan, dtype=dtype))


def assert_close(got, want, rtol=2e-5, atol_rel=2e-6, what=""):
    """float32 results against float64 references: elementwise relative
    tolerance plus an absolute floor relative to the largest magnitude."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    bad = ~np.isfinite(got) & np.isfinite(want)
    assert not bad.any(), f"{what}: {bad.sum()} elements not written (NaN) or not finite"
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * max(scale, 1e-30),
                               err_msg=what)


def simulated(backend):
    """True for backends whose kernels run slowly in tests (the CUDA simulator):
    they get fewer shape combinations, every size still covered."""
    return backend.name != "cpu"


def shapes_2d(sizes, backend=None):
    """(rows, cols) pairs: every size as rows and as cols, plus a square one
    (on a simulated backend: every size as rows, the largest as cols)."""
    shapes = {(sizes[2], sizes[2])}
    for s in sizes:
        shapes.add((s, 3))
        if backend is None or not simulated(backend) or s == sizes[-1]:
            shapes.add((3, s))
    return sorted(shapes)


def f32(rng, shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def acc_zero(backend, start=0.0):
    return backend.asarray(np.array([start], dtype=np.float64))


# ---- memory ------------------------------------------------------------------------

def test_memory_ops(backend, rng):
    x = f32(rng, (7, 5))
    d = dev(backend, x)
    np.testing.assert_array_equal(host(backend, d), x)
    z = backend.zeros((4, 3))
    np.testing.assert_array_equal(host(backend, z), np.zeros((4, 3), np.float32))
    e = backend.empty((7, 5))
    backend.copy_(e, d)
    np.testing.assert_array_equal(host(backend, e), x)
    backend.fill_(e, 2.5)
    np.testing.assert_array_equal(host(backend, e), np.full((7, 5), 2.5, np.float32))
    labels = rng.integers(0, 9, 11).astype(np.int32)
    np.testing.assert_array_equal(host(backend, dev(backend, labels)), labels)
    acc = backend.zeros((1,), "float64")
    assert host(backend, acc).dtype == np.float64


# ---- GEMM ---------------------------------------------------------------------------

def gemm_dims(sizes, light=False):
    """(M, N, K): every size in every role, plus cubes (on a simulated
    backend: every size as M, the largest as N and as K, one cube)."""
    dims = []
    for s in sizes:
        dims.append((s, 3, 17))
        if not light or s == sizes[-1]:
            dims += [(17, s, 3), (3, 17, s)]
        if s <= 129 and (not light or s == sizes[2]):
            dims.append((s, s, s))
    return dims


def dense_dims(sizes, light=False):
    """(batch, K, N): every size as the batch and as K."""
    dims = [(s, 17, 5) for s in sizes]
    dims += [(3, s, 3) for s in (sizes[-1:] if light else sizes)]
    return dims


def stored(rng, rows, cols, trans):
    """A random operand whose op() is (rows, cols)."""
    return f32(rng, (cols, rows) if trans else (rows, cols))


@pytest.mark.parametrize("trans_a,trans_b", list(itertools.product([False, True], repeat=2)))
def test_gemm_transposes(backend, op_sizes, rng, trans_a, trans_b):
    for m, n, k in gemm_dims(op_sizes, simulated(backend)):
        a = stored(rng, m, k, trans_a)
        b = stored(rng, k, n, trans_b)
        out = poisoned(backend, (m, n))
        backend.gemm(dev(backend, a), dev(backend, b), out, trans_a=trans_a, trans_b=trans_b)
        got = host(backend, out)
        want = ref.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
        bound = ref.gemm_error_bound(a, b, trans_a=trans_a, trans_b=trans_b)
        assert np.isfinite(got).all(), f"unwritten elements for {(m, n, k)}"
        assert (np.abs(got - want) <= bound).all(), (
            f"gemm {(m, n, k)} ta={trans_a} tb={trans_b}: "
            f"max err {np.max(np.abs(got - want))}")


@pytest.mark.parametrize("alpha,beta", [(0.5, 0.0), (1.0, 1.0), (-1.25, 0.75), (2.0, -1.0)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True)])
def test_gemm_alpha_beta(backend, op_sizes, rng, alpha, beta, trans_a, trans_b):
    for m, n, k in [(op_sizes[2], op_sizes[1], op_sizes[3]), (op_sizes[1], op_sizes[3], 1)]:
        a = stored(rng, m, k, trans_a)
        b = stored(rng, k, n, trans_b)
        c0 = f32(rng, (m, n))
        # beta == 0 must not read C: poison it so a read would show.
        out = poisoned(backend, (m, n)) if beta == 0 else dev(backend, c0)
        backend.gemm(dev(backend, a), dev(backend, b), out, trans_a=trans_a,
                     trans_b=trans_b, alpha=alpha, beta=beta)
        got = host(backend, out)
        want = ref.gemm(a, b, c0, trans_a, trans_b, alpha, beta)
        bound = ref.gemm_error_bound(a, b, c0, trans_a, trans_b, alpha, beta)
        assert np.isfinite(got).all()
        assert (np.abs(got - want) <= bound).all(), np.max(np.abs(got - want))


def test_gemm_k_zero_scales_c(backend, rng):
    c0 = f32(rng, (3, 4))
    out = dev(backend, c0)
    backend.gemm(dev(backend, np.zeros((3, 0), np.float32)),
                 dev(backend, np.zeros((0, 4), np.float32)), out, alpha=1.0, beta=0.5)
    assert_close(host(backend, out), 0.5 * c0.astype(np.float64))


# ---- dense and activations ----------------------------------------------------------

@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_fwd(backend, op_sizes, rng, act):
    for i, (batch, k, n) in enumerate(dense_dims(op_sizes, simulated(backend))):
        x, w, b = f32(rng, (batch, k)), f32(rng, (k, n), 0.3), f32(rng, (n,))
        for bias in ((b, None) if i < 2 or not simulated(backend) else (b,)):
            out = poisoned(backend, (batch, n))
            backend.dense_fwd(dev(backend, x), dev(backend, w),
                              None if bias is None else dev(backend, bias), act, out)
            want = ref.dense(x, w, bias, act)
            assert_close(host(backend, out), want, rtol=1e-4, atol_rel=1e-5,
                         what=f"dense_fwd {act} {(batch, k, n)}")


def test_dense_bwd(backend, op_sizes, rng):
    for batch, k, n in dense_dims(op_sizes, simulated(backend)):
        x, w, dz = f32(rng, (batch, k)), f32(rng, (k, n)), f32(rng, (batch, n))
        dw, db, dx = poisoned(backend, (k, n)), poisoned(backend, (n,)), poisoned(backend, (batch, k))
        backend.dense_bwd(dev(backend, x), dev(backend, w), dev(backend, dz), dw, db, dx)
        got_dw, got_dx = host(backend, dw), host(backend, dx)
        bound_dw = ref.gemm_error_bound(x, dz, trans_a=True)
        bound_dx = ref.gemm_error_bound(dz, w, trans_b=True)
        assert np.isfinite(got_dw).all() and np.isfinite(got_dx).all()
        assert (np.abs(got_dw - ref.gemm(x, dz, trans_a=True)) <= bound_dw).all()
        assert (np.abs(got_dx - ref.gemm(dz, w, trans_b=True)) <= bound_dx).all()
        assert_close(host(backend, db), ref.bias_grad(dz), what="dense_bwd db")
        # Optional outputs may be skipped.
        dw2 = poisoned(backend, (k, n))
        backend.dense_bwd(dev(backend, x), dev(backend, w), dev(backend, dz), dw2, None, None)
        np.testing.assert_array_equal(host(backend, dw2), got_dw)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act_fwd(backend, op_sizes, rng, act):
    for rows, cols in shapes_2d(op_sizes, backend):
        x, b = f32(rng, (rows, cols), 3.0), f32(rng, (cols,))
        for bias in (b, None):
            out = poisoned(backend, (rows, cols))
            backend.bias_act_fwd(dev(backend, x), None if bias is None else dev(backend, bias),
                                 act, out)
            assert_close(host(backend, out), ref.bias_act(x, bias, act),
                         what=f"bias_act_fwd {act} {(rows, cols)}")


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_bias_act_fwd_in_place(backend, rng, act):
    x, b = f32(rng, (17, 9), 3.0), f32(rng, (9,))
    d = dev(backend, x)
    backend.bias_act_fwd(d, dev(backend, b), act, d)
    assert_close(host(backend, d), ref.bias_act(x, b, act))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_act_bwd(backend, op_sizes, rng, act):
    for rows, cols in shapes_2d(op_sizes, backend):
        z, dy = f32(rng, (rows, cols), 2.0), f32(rng, (rows, cols))
        y = ref.activation(act, z).astype(np.float32)
        out = poisoned(backend, (rows, cols))
        backend.act_bwd(act, dev(backend, y), dev(backend, dy), out)
        want = ref.act_backward(act, z, dy)
        # y is rounded to float32 before the kernel sees it: allow for that.
        assert_close(host(backend, out), want, rtol=1e-4, atol_rel=1e-5,
                     what=f"act_bwd {act} {(rows, cols)}")
        # dx may be dy itself.
        d = dev(backend, dy)
        backend.act_bwd(act, dev(backend, y), d, d)
        np.testing.assert_array_equal(host(backend, d), host(backend, out))


def test_bias_grad(backend, op_sizes, rng):
    for rows, cols in shapes_2d(op_sizes, backend) + [(op_sizes[-1], 70)]:
        dz = f32(rng, (rows, cols))
        db = poisoned(backend, (cols,))
        backend.bias_grad(dev(backend, dz), db)
        want = ref.bias_grad(dz)
        tol = 1e-6 * np.abs(dz.astype(np.float64)).sum(axis=0) + 1e-30
        got = host(backend, db)
        assert np.isfinite(got).all()
        assert (np.abs(got - want) <= tol).all()


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_act_bias_bwd(backend, op_sizes, rng, act):
    """The fused activation backward + bias gradient: dz against the float64
    derivative at z, db against the float64 column sums of that dz."""
    for rows, cols in shapes_2d(op_sizes, backend) + [(op_sizes[-1], 70)]:
        z, dy = f32(rng, (rows, cols), 2.0), f32(rng, (rows, cols))
        y = ref.activation(act, z).astype(np.float32)
        dz, db = poisoned(backend, (rows, cols)), poisoned(backend, (cols,))
        backend.act_bias_bwd(act, dev(backend, y), dev(backend, dy), dz, db)
        want = ref.act_backward(act, z, dy)
        what = f"act_bias_bwd {act} {(rows, cols)}"
        assert_close(host(backend, dz), want, rtol=1e-4, atol_rel=1e-5, what=what)
        # db sums the kernel's own dz (float32) exactly up to summation rounding.
        got_dz = host(backend, dz).astype(np.float64)
        tol = 1e-6 * np.abs(got_dz).sum(axis=0) + 1e-30
        got_db = host(backend, db)
        assert np.isfinite(got_db).all(), what
        assert (np.abs(got_db - ref.bias_grad(got_dz)) <= tol).all(), what
        # In place (dz is dy) and without db: the same dz.
        d = dev(backend, dy)
        backend.act_bias_bwd(act, dev(backend, y), d, d, None)
        np.testing.assert_array_equal(host(backend, d), host(backend, dz))


# ---- losses and metrics ----------------------------------------------------------------

def loss_inputs(kind, rng, rows, cols):
    """(prediction, target) host arrays suited to the loss kind."""
    if kind in ("softmax_cce_logits", "sigmoid_bce_logits", "mse", "mae"):
        pred = f32(rng, (rows, cols), 3.0)
    elif kind in ("cce_probs", "sparse_cce_probs"):
        # Unnormalised positive scores: the kernel normalises by the row sum.
        # A few tiny entries exercise the clip (zero gradient there).
        pred = rng.uniform(0.05, 1.0, (rows, cols)).astype(np.float32)
        pred[rng.random((rows, cols)) < 0.05] = 1e-12
    else:  # bce_probs
        pred = rng.uniform(0.0, 1.0, (rows, cols)).astype(np.float32)
        pred.flat[::7] = 0.0
        pred.flat[3::11] = 1.0
    if "sparse" in kind:
        target = rng.integers(0, cols, rows).astype(np.int32)
    elif kind in ("softmax_cce_logits", "cce_probs"):
        target = np.eye(cols, dtype=np.float32)[rng.integers(0, cols, rows)]
        if rows > 2:
            # Soft targets too (label smoothing), not only one-hot.
            target[1] = rng.dirichlet(np.ones(cols)).astype(np.float32)
    elif kind in ("sigmoid_bce_logits", "bce_probs"):
        target = rng.uniform(0.0, 1.0, (rows, cols)).astype(np.float32)
        target[rng.random((rows, cols)) < 0.5] = 1.0
    else:
        target = f32(rng, (rows, cols))
    return pred, target


@pytest.mark.parametrize("kind", LOSS_KINDS)
def test_loss(backend, op_sizes, rng, kind):
    for rows, cols in shapes_2d(op_sizes, backend):
        pred, target = loss_inputs(kind, rng, rows, cols)
        grad = poisoned(backend, (rows, cols))
        probs = poisoned(backend, (rows, cols)) if kind.endswith("_logits") else None
        acc = acc_zero(backend, 0.25)  # the op adds to what is there
        backend.loss(kind, dev(backend, pred), dev(backend, target), grad, acc, probs)
        want_loss, want_grad = ref.LOSSES[kind](pred, target)
        got_loss = host(backend, acc)[0] - 0.25
        assert got_loss == pytest.approx(want_loss, rel=2e-5, abs=1e-6), (kind, rows, cols)
        assert_close(host(backend, grad), want_grad, rtol=1e-4, atol_rel=1e-5,
                     what=f"{kind} grad {(rows, cols)}")
        if probs is not None:
            assert_close(host(backend, probs), ref.loss_probs(kind, pred),
                         what=f"{kind} probs {(rows, cols)}")


def metric_inputs(kind, rng, rows, cols):
    pred = rng.random((rows, cols)).astype(np.float32)
    if kind == "sparse_categorical_accuracy":
        target = rng.integers(0, cols, rows).astype(np.int32)
        # Make some rows right so the count is not trivially ~1/cols.
        hit = rng.random(rows) < 0.5
        target[hit] = np.argmax(pred[hit], axis=1)
    elif kind == "categorical_accuracy":
        lab = rng.integers(0, cols, rows)
        hit = rng.random(rows) < 0.5
        lab[hit] = np.argmax(pred[hit], axis=1)
        target = np.eye(cols, dtype=np.float32)[lab]
    elif kind == "binary_accuracy":
        target = (rng.random((rows, cols)) < 0.5).astype(np.float32)
    else:
        target = rng.random((rows, cols)).astype(np.float32)
    return pred, target


@pytest.mark.parametrize("kind", METRIC_KINDS)
def test_metric(backend, op_sizes, rng, kind):
    for rows, cols in shapes_2d(op_sizes, backend):
        pred, target = metric_inputs(kind, rng, rows, cols)
        acc = acc_zero(backend, 1.5)
        backend.metric(kind, dev(backend, pred), dev(backend, target), acc)
        want = ref.METRICS[kind](pred, target)
        got = host(backend, acc)[0] - 1.5
        # A backend may form per-row values in float32; a miscounted row
        # (an error of 1/cols at least) is still far outside this tolerance.
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), (kind, rows, cols)


# ---- reductions -----------------------------------------------------------------------

def test_sumsq(backend, op_sizes, rng):
    for n in list(op_sizes) + [op_sizes[-1] * 37 + 5]:
        x = f32(rng, (n,), 3.0)
        assert backend.sumsq(dev(backend, x)) == pytest.approx(ref.sumsq(x), rel=1e-12)


def test_scale(backend, op_sizes, rng):
    for n in op_sizes:
        x = f32(rng, (n,))
        d = dev(backend, x)
        backend.scale_(d, 0.3)
        np.testing.assert_array_equal(host(backend, d), x * np.float32(0.3))


# ---- optimisers: one step each (several steps: tests/test_optim.py) -----------------

def test_sgd_step_variants(backend, op_sizes, rng):
    n = op_sizes[-1]
    for momentum, nesterov, wd, scale, clip in [(0.0, False, 0.0, 1.0, 0.0),
                                                (0.9, False, 0.0, 1.0, 0.0),
                                                (0.9, True, 0.01, 0.5, 0.8)]:
        p, g, v = f32(rng, (n,)), f32(rng, (n,)), f32(rng, (n,), 0.1)
        state = {"velocity": v.astype(np.float64)} if momentum > 0 else {}
        dp = dev(backend, p)
        dv = dev(backend, v) if momentum > 0 else None
        backend.sgd_step(dp, dev(backend, g), dv, lr=0.1, momentum=momentum,
                         nesterov=nesterov, weight_decay=wd, grad_scale=scale, clip_value=clip)
        want = ref.sgd_step(p, g, state, lr=0.1, momentum=momentum, nesterov=nesterov,
                            weight_decay=wd, grad_scale=scale, clip_value=clip)
        assert_close(host(backend, dp), want)
        if dv is not None:
            assert_close(host(backend, dv), state["velocity"])


def test_adam_step(backend, op_sizes, rng):
    n = op_sizes[-1]
    p, g = f32(rng, (n,)), f32(rng, (n,))
    m, v = f32(rng, (n,), 0.1), np.abs(f32(rng, (n,), 0.1))
    state = {"m": m.astype(np.float64), "v": v.astype(np.float64)}
    dp, dm, dv = dev(backend, p), dev(backend, m), dev(backend, v)
    kw = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3, weight_decay=0.004,
              grad_scale=2.0, clip_value=1.5)
    backend.adam_step(dp, dev(backend, g), dm, dv, **kw)
    want = ref.adam_step(p, g, state, **kw)
    assert_close(host(backend, dp), want)
    assert_close(host(backend, dm), state["m"])
    assert_close(host(backend, dv), state["v"])


@pytest.mark.parametrize("centered,momentum", [(False, 0.0), (True, 0.0), (False, 0.5),
                                               (True, 0.5)])
def test_rmsprop_step(backend, op_sizes, rng, centered, momentum):
    n = op_sizes[-1]
    p, g = f32(rng, (n,)), f32(rng, (n,))
    vel = np.abs(f32(rng, (n,), 0.5)) + 0.5
    avg, mom = f32(rng, (n,), 0.1), f32(rng, (n,), 0.1)
    state = {"vel": vel.astype(np.float64), "avg": avg.astype(np.float64),
             "mom": mom.astype(np.float64)}
    dp, dvel = dev(backend, p), dev(backend, vel)
    dmom = dev(backend, mom) if momentum > 0 else None
    davg = dev(backend, avg) if centered else None
    kw = dict(lr=0.01, rho=0.9, momentum=momentum, epsilon=1e-7, weight_decay=0.0,
              grad_scale=1.0, clip_value=0.0)
    backend.rmsprop_step(dp, dev(backend, g), dvel, dmom, davg, **kw)
    want = ref.rmsprop_step(p, g, state, centered=centered, **kw)
    assert_close(host(backend, dp), want)
    assert_close(host(backend, dvel), state["vel"])
    if centered:
        assert_close(host(backend, davg), state["avg"])
    if momentum > 0:
        assert_close(host(backend, dmom), state["mom"])


# ---- data movement and elementwise ---------------------------------------------------

def test_gather_rows(backend, op_sizes, rng):
    for n in op_sizes:
        idx = rng.integers(0, n, max(n // 2, 1) + 2).astype(np.int64)
        for src in (f32(rng, (n, 5)), f32(rng, (n, 2, 3)), f32(rng, (n,)),
                    rng.integers(-9, 9, (n,)).astype(np.int32),
                    rng.integers(-9, 9, (n, 4)).astype(np.int32)):
            out = backend.asarray(np.full((len(idx),) + src.shape[1:], -7, src.dtype))
            backend.gather_rows(dev(backend, src), idx, out)
            np.testing.assert_array_equal(host(backend, out), ref.gather_rows(src, idx))


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.75])
def test_dropout_fwd(backend, op_sizes, rng, rate):
    for shape in [(op_sizes[-1], 7), (op_sizes[1], 2, 5)]:
        x = f32(rng, shape)
        mask, out = poisoned(backend, shape), poisoned(backend, shape)
        backend.dropout_fwd(dev(backend, x), rate, np.random.default_rng(99), mask, out)
        got_mask, got = host(backend, mask), host(backend, out)
        keep = np.float32(1) / (np.float32(1) - np.float32(rate))
        assert np.isin(got_mask, [0.0, keep]).all(), "mask holds other values"
        np.testing.assert_array_equal(got, x * got_mask)
        if rate == 0.0:
            assert (got_mask == 1).all()
        if got_mask.size >= 1000:
            dropped = float(np.mean(got_mask == 0))
            assert abs(dropped - rate) < 0.05, dropped


def test_dropout_uses_rng(backend, rng):
    x = f32(rng, (64, 8))
    masks = []
    for seed in (1, 1, 2):
        mask, out = poisoned(backend, x.shape), poisoned(backend, x.shape)
        backend.dropout_fwd(dev(backend, x), 0.5, np.random.default_rng(seed), mask, out)
        masks.append(host(backend, mask))
    np.testing.assert_array_equal(masks[0], masks[1])  # same seed, same mask
    assert (masks[0] != masks[2]).any()                 # the draws come from rng


@pytest.mark.parametrize("op", ["mul", "add"])
def test_elementwise(backend, op_sizes, rng, op):
    fn = {"mul": np.multiply, "add": np.add}[op]
    for shape in [(n,) for n in op_sizes] + [(op_sizes[2], 3, 2)]:
        a, b = f32(rng, shape), f32(rng, shape)
        out = poisoned(backend, shape)
        getattr(backend, op)(dev(backend, a), dev(backend, b), out)
        np.testing.assert_array_equal(host(backend, out), fn(a, b))
        # out may be a or b itself.
        da, db = dev(backend, a), dev(backend, b)
        getattr(backend, op)(da, db, da)
        np.testing.assert_array_equal(host(backend, da), fn(a, b))
        getattr(backend, op)(dev(backend, a), db, db)
        np.testing.assert_array_equal(host(backend, db), fn(a, b))


def test_concat_and_split_last(backend, op_sizes, rng):
    for lead in [(n,) for n in op_sizes] + [(2, 3)]:
        parts = [f32(rng, lead + (w,)) for w in (1, 3, 17)]
        whole = np.concatenate(parts, axis=-1)
        out = poisoned(backend, whole.shape)
        backend.concat_last([dev(backend, p) for p in parts], out)
        np.testing.assert_array_equal(host(backend, out), whole)
        outs = [poisoned(backend, p.shape) for p in parts]
        backend.split_last(dev(backend, whole), outs)
        for got, want in zip(outs, parts):
            np.testing.assert_array_equal(host(backend, got), want)
