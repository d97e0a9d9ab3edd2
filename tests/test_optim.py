"""Several consecutive optimiser steps against the float64 Keras formulas.

Each test feeds the same gradient sequence to the backend (float32 state) and
to tests/reference.py (float64 state) and compares parameters and state after
every step, so bias correction (Adam's step-dependent rate), momentum
accumulation, clipping, gradient scaling and weight decay are all exercised
across steps rather than once.
"""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref

STEPS = 5


def dev(backend, a):
    return backend.asarray(np.ascontiguousarray(a))


def host(backend, a):
    backend.synchronize()
    return np.array(backend.to_numpy(a), dtype=np.float64)


def close(got, want, what):
    scale = float(np.max(np.abs(want)))
    np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-6 * scale, err_msg=what)


def grads(rng, n):
    """A gradient sequence with a few large entries so clipping bites."""
    seq = []
    for _ in range(STEPS):
        g = rng.standard_normal(n).astype(np.float32)
        g[rng.random(n) < 0.1] *= 10.0
        seq.append(g)
    return seq


@pytest.mark.parametrize("momentum,nesterov,wd,scale,clip", [
    (0.0, False, 0.0, 1.0, 0.0),
    (0.9, False, 0.0, 1.0, 0.0),
    (0.9, True, 0.0, 1.0, 0.0),
    (0.5, True, 0.01, 0.25, 1.0),
    (0.0, False, 0.05, 2.0, 0.5),
])
def test_sgd_steps(backend, op_sizes, rng, momentum, nesterov, wd, scale, clip):
    n = op_sizes[-1]
    p = rng.standard_normal(n).astype(np.float32)
    dp = dev(backend, p)
    dv = backend.zeros((n,)) if momentum > 0 else None
    state = {"velocity": np.zeros(n)} if momentum > 0 else {}
    want = p.astype(np.float64)
    for t, g in enumerate(grads(rng, n), start=1):
        backend.sgd_step(dp, dev(backend, g), dv, lr=0.05, momentum=momentum,
                         nesterov=nesterov, weight_decay=wd, grad_scale=scale,
                         clip_value=clip)
        want = ref.sgd_step(want, g, state, lr=0.05, momentum=momentum, nesterov=nesterov,
                            weight_decay=wd, grad_scale=scale, clip_value=clip)
        close(host(backend, dp), want, f"sgd p after step {t}")
        if dv is not None:
            close(host(backend, dv), state["velocity"], f"sgd velocity after step {t}")


@pytest.mark.parametrize("wd,scale,clip", [
    (0.0, 1.0, 0.0),     # Adam
    (0.004, 1.0, 0.0),   # AdamW
    (0.0, 0.5, 2.0),     # scaled and clipped
    (0.01, 4.0, 1.0),
])
def test_adam_steps(backend, op_sizes, rng, wd, scale, clip):
    n = op_sizes[-1]
    p = rng.standard_normal(n).astype(np.float32)
    dp, dm, dv = dev(backend, p), backend.zeros((n,)), backend.zeros((n,))
    state = {"m": np.zeros(n), "v": np.zeros(n)}
    want = p.astype(np.float64)
    kw = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=wd,
              grad_scale=scale, clip_value=clip)
    for t, g in enumerate(grads(rng, n), start=1):
        backend.adam_step(dp, dev(backend, g), dm, dv, step=t, **kw)
        want = ref.adam_step(want, g, state, step=t, **kw)
        close(host(backend, dp), want, f"adam p after step {t}")
        close(host(backend, dm), state["m"], f"adam m after step {t}")
        close(host(backend, dv), state["v"], f"adam v after step {t}")


def test_adam_first_step_is_lr_sized(backend, rng):
    """Bias correction: from zero state, step 1 moves each weight by about lr
    in the direction opposite to its gradient (Keras behaviour)."""
    n = 64
    p = np.zeros(n, np.float32)
    g = rng.standard_normal(n).astype(np.float32) + 3.0
    dp = dev(backend, p)
    backend.adam_step(dp, dev(backend, g), backend.zeros((n,)), backend.zeros((n,)), lr=0.1,
                      beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1, weight_decay=0.0,
                      grad_scale=1.0, clip_value=0.0)
    np.testing.assert_allclose(host(backend, dp), -0.1 * np.sign(g), rtol=1e-4)


@pytest.mark.parametrize("centered,momentum,wd,scale,clip", [
    (False, 0.0, 0.0, 1.0, 0.0),
    (True, 0.0, 0.0, 1.0, 0.0),
    (False, 0.9, 0.0, 1.0, 0.0),
    (True, 0.5, 0.01, 0.5, 1.5),
])
def test_rmsprop_steps(backend, op_sizes, rng, centered, momentum, wd, scale, clip):
    n = op_sizes[-1]
    p = rng.standard_normal(n).astype(np.float32)
    dp, dvel = dev(backend, p), backend.zeros((n,))
    dmom = backend.zeros((n,)) if momentum > 0 else None
    davg = backend.zeros((n,)) if centered else None
    state = {"vel": np.zeros(n), "mom": np.zeros(n), "avg": np.zeros(n)}
    want = p.astype(np.float64)
    kw = dict(lr=0.01, rho=0.9, momentum=momentum, epsilon=1e-7, weight_decay=wd,
              grad_scale=scale, clip_value=clip)
    for t, g in enumerate(grads(rng, n), start=1):
        backend.rmsprop_step(dp, dev(backend, g), dvel, dmom, davg, **kw)
        want = ref.rmsprop_step(want, g, state, centered=centered, **kw)
        close(host(backend, dp), want, f"rmsprop p after step {t}")
        close(host(backend, dvel), state["vel"], f"rmsprop vel after step {t}")
        if centered:
            close(host(backend, davg), state["avg"], f"rmsprop avg after step {t}")
        if momentum > 0:
            close(host(backend, dmom), state["mom"], f"rmsprop mom after step {t}")


def test_clip_bounds_the_update(backend):
    """With clipping, a huge gradient moves SGD weights by exactly lr * clip."""
    g = np.array([1e6, -1e6, 0.25, -0.25], np.float32)
    dp = dev(backend, np.zeros(4, np.float32))
    backend.sgd_step(dp, dev(backend, g), None, lr=0.5, momentum=0.0, nesterov=False,
                     weight_decay=0.0, grad_scale=1.0, clip_value=1.0)
    np.testing.assert_allclose(host(backend, dp), [-0.5, 0.5, -0.125, 0.125], rtol=1e-6)


def test_weight_decay_is_decoupled(backend):
    """Zero gradient: only the decay p -= p * wd * lr acts (Adam and SGD)."""
    p = np.array([1.0, -2.0, 4.0], np.float32)
    zero = np.zeros(3, np.float32)
    dp = dev(backend, p)
    backend.sgd_step(dp, dev(backend, zero), None, lr=0.1, momentum=0.0, nesterov=False,
                     weight_decay=0.5, grad_scale=1.0, clip_value=0.0)
    np.testing.assert_allclose(host(backend, dp), p * (1 - 0.05), rtol=1e-6)
    dp = dev(backend, p)
    backend.adam_step(dp, dev(backend, zero), backend.zeros((3,)), backend.zeros((3,)),
                      lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1,
                      weight_decay=0.5, grad_scale=1.0, clip_value=0.0)
    np.testing.assert_allclose(host(backend, dp), p * (1 - 0.05), rtol=1e-6)


# ---- block boundaries and threads (CPU: the steps run in 4096-element blocks) --------

BLOCK_SIZES = (4095, 4096, 4097, 3 * 4096 + 5, 40_000 + 7)


@pytest.fixture
def cpu_threads():
    from fastnn import _C
    before = _C.get_num_threads()
    yield _C
    _C.set_num_threads(before)


@pytest.mark.parametrize("kind", ["sgd", "sgd_nesterov", "adam", "rmsprop"])
def test_steps_across_blocks_match_reference_at_any_thread_count(cpu_threads, rng, kind):
    from fastnn.backend import get_backend
    backend = get_backend("cpu")
    for n in BLOCK_SIZES:
        p0 = rng.standard_normal(n).astype(np.float32)
        seq = grads(rng, n)
        finals = []
        for threads in (1, 2, 3):
            cpu_threads.set_num_threads(threads)
            p, s1, s2 = p0.copy(), np.zeros(n, np.float32), np.zeros(n, np.float32)
            want, state = p0.astype(np.float64), {"m": np.zeros(n), "v": np.zeros(n),
                                                  "vel": np.zeros(n), "mom": np.zeros(n),
                                                  "avg": np.zeros(n), "velocity": np.zeros(n)}
            for t, g in enumerate(seq, start=1):
                if kind.startswith("sgd"):
                    kw = dict(lr=0.05, momentum=0.9, nesterov=kind == "sgd_nesterov",
                              weight_decay=0.01, grad_scale=0.5, clip_value=2.0)
                    backend.sgd_step(p, g, s1, **kw)
                    want = ref.sgd_step(want, g, state, **kw)
                elif kind == "adam":
                    kw = dict(lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                              weight_decay=0.004, grad_scale=1.0, clip_value=3.0)
                    backend.adam_step(p, g, s1, s2, step=t, **kw)
                    want = ref.adam_step(want, g, state, step=t, **kw)
                else:
                    kw = dict(lr=0.01, rho=0.9, momentum=0.5, epsilon=1e-7,
                              weight_decay=0.0, grad_scale=1.0, clip_value=0.0)
                    backend.rmsprop_step(p, g, s1, s2, None, **kw)
                    want = ref.rmsprop_step(want, g, state, centered=False, **kw)
            close(p.astype(np.float64), want, f"{kind} n={n} threads={threads}")
            finals.append(p)
        for other in finals[1:]:
            assert np.array_equal(other.view(np.uint32), finals[0].view(np.uint32)), (kind, n)
