"""CUDA-backend behaviour the shared op tests do not cover.

Runs on Numba's CUDA simulator (tests/conftest.py turns it on unless the caller
set NUMBA_ENABLE_CUDASIM) or on a real GPU with NUMBA_ENABLE_CUDASIM=0. The
simulator runs every GPU thread as Python, so shapes stay small: a few blocks
per launch. Everything is checked against float64 NumPy references.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

# Children import the same fastnn as this process (the installed one in CI),
# and run outside the repository root so its unbuilt sources cannot shadow it.
import fastnn  # noqa: E402
PACKAGE_PARENT = Path(fastnn.__file__).resolve().parents[1]
CHILD_CWD = Path(__file__).resolve().parent


def _numba_cuda_installed() -> bool:
    try:
        return importlib.util.find_spec("numba") is not None and \
            importlib.util.find_spec("numba.cuda") is not None
    except ImportError:
        return False


needs_numba = pytest.mark.skipif(not _numba_cuda_installed(),
                                 reason="numba-cuda is not installed (pip install fastnn[cuda])")


@pytest.fixture(scope="module")
def be():
    if not _numba_cuda_installed():
        pytest.skip("numba-cuda is not installed (pip install fastnn[cuda])")
    from fastnn.backend import get_backend
    return get_backend("cuda")


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


def _nan(be, shape, dtype=np.float32):
    """A device array poisoned with NaN (or -1 for ints): every element a kernel
    fails to write shows up."""
    fill = np.nan if np.dtype(dtype).kind == "f" else -1
    return be.asarray(np.full(shape, fill, dtype=dtype))


def _run(code: str, **env_overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(env_overrides)
    env["PYTHONPATH"] = os.pathsep.join([str(PACKAGE_PARENT)] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(CHILD_CWD),
                          env=env, capture_output=True, text=True, timeout=300)


# ---- import-time and construction errors ------------------------------------

def test_import_fastnn_does_not_import_numba():
    proc = _run("""
        import sys
        import fastnn, fastnn.backend
        assert 'numba' not in sys.modules, 'import fastnn imported numba'
        print('ok')
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_without_numba_get_backend_cuda_says_how_to_install():
    proc = _run("""
        import sys
        sys.modules['numba'] = None   # as if numba-cuda were not installed
        from fastnn.backend import get_backend
        try:
            get_backend('cuda')
        except ImportError as exc:
            print('ImportError:', exc)
        else:
            print('no error')
    """)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ImportError:" in proc.stdout
    assert "pip install fastnn[cuda]" in proc.stdout


@needs_numba
def test_no_gpu_and_no_simulator_is_a_runtime_error():
    proc = _run("""
        import json
        from numba import cuda
        gpu = cuda.is_available()
        from fastnn.backend import get_backend
        try:
            be = get_backend('cuda')
        except RuntimeError as exc:
            print(json.dumps({'gpu': gpu, 'error': str(exc)}))
        else:
            print(json.dumps({'gpu': gpu, 'error': None, 'name': be.name}))
    """, NUMBA_ENABLE_CUDASIM="0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["gpu"]:  # a machine with a real GPU: the backend must come up
        assert out["error"] is None and out["name"] == "cuda"
    else:
        assert out["error"] is not None
        assert "no CUDA GPU" in out["error"] and "NUMBA_ENABLE_CUDASIM=1" in out["error"]


# ---- argument checks and dtypes ------------------------------------------------

def test_allocations_are_float32_by_default(be):
    assert be.empty((2, 3)).dtype == np.float32
    z = be.zeros((4, 5))
    assert z.dtype == np.float32 and tuple(z.shape) == (4, 5)
    assert np.array_equal(be.to_numpy(z), np.zeros((4, 5), np.float32))
    acc = be.zeros((1,), "float64")
    assert acc.dtype == np.float64 and be.to_numpy(acc)[0] == 0.0
    assert be.zeros(3, "int32").dtype == np.int32


def test_host_and_wrong_dtype_arrays_are_rejected_by_name(be, rng):
    a = be.asarray(rng.standard_normal((3, 4)).astype(np.float32))
    b = be.asarray(rng.standard_normal((4, 2)).astype(np.float32))
    with pytest.raises(TypeError, match="out"):
        be.gemm(a, b, np.zeros((3, 2), np.float32))          # host array
    with pytest.raises(TypeError, match="out"):
        be.gemm(a, b, be.zeros((3, 2), "float64"))            # float64 output
    with pytest.raises(ValueError, match="out"):
        be.gemm(a, b, be.zeros((3, 3)))
    with pytest.raises(ValueError, match="op\\(a\\)"):
        be.gemm(a, a, be.zeros((3, 4)))
    with pytest.raises(TypeError, match="acc"):
        be.loss("mse", a, a, be.zeros((3, 4)), be.zeros((1,)))  # float32 acc
    with pytest.raises(ValueError, match="activation"):
        be.bias_act_fwd(a, None, "gelu", a)
    with pytest.raises(ValueError, match="probs"):
        be.loss("softmax_cce_logits", a, a, be.zeros((3, 4)), be.zeros((1,), "float64"))
    with pytest.raises(IndexError, match="idx"):
        be.gather_rows(a, np.array([0, 3]), be.zeros((2, 4)))
    with pytest.raises(TypeError, match="idx"):
        be.gather_rows(a, be.asarray(np.array([0, 1])), be.zeros((2, 4)))
    with pytest.raises(ValueError, match="rate"):
        be.dropout_fwd(a, 1.0, np.random.default_rng(0), be.zeros((3, 4)), be.zeros((3, 4)))
    with pytest.raises(ValueError, match="velocity"):
        be.sgd_step(a, a, None, lr=0.1, momentum=0.9, nesterov=False, weight_decay=0.0,
                    grad_scale=1.0, clip_value=0.0)


# ---- GEMM: the tile edges that only the CUDA kernel has ------------------------

@pytest.fixture(params=["64x64", "128x128"])
def gemm_tiling(request, be, monkeypatch):
    """Forces one of the two SGEMM tilings; yields its tile height."""
    if request.param == "128x128":
        monkeypatch.setattr(be, "large_gemm_min_blocks", 1)
        return 128
    monkeypatch.setattr(be, "large_gemm_min_blocks", 10 ** 9)
    return 64


@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_crosses_block_and_k_tiles(be, rng, gemm_tiling, trans_a, trans_b):
    # M = tile + 1 spills one row into a second block tile; K = 9 spills one
    # column past the 8-deep shared slice; N = 3 leaves most columns idle.
    m, n, k = gemm_tiling + 1, 3, 9
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(np.float32)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    c0 = rng.standard_normal((m, n)).astype(np.float32)
    opa = (a.T if trans_a else a).astype(np.float64)
    opb = (b.T if trans_b else b).astype(np.float64)
    c = be.asarray(c0)
    be.gemm(be.asarray(a), be.asarray(b), c, trans_a=trans_a, trans_b=trans_b,
            alpha=-0.75, beta=0.5)
    np.testing.assert_allclose(be.to_numpy(c), -0.75 * opa @ opb + 0.5 * c0,
                               rtol=1e-5, atol=1e-5)


def test_gemm_beta_zero_never_reads_out(be, rng, gemm_tiling):
    m, n, k = 5, gemm_tiling + 2, 17   # two column tiles
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = _nan(be, (m, n))   # NaN * 0 would still be NaN if out were read
    be.gemm(be.asarray(a), be.asarray(b), out, beta=0.0)
    np.testing.assert_allclose(be.to_numpy(out), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_dense_fwd_fuses_bias_and_activation(be, rng, act):
    x = rng.standard_normal((7, 5)).astype(np.float32)
    w = rng.standard_normal((5, 4)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    z = x.astype(np.float64) @ w + b
    ref = {"linear": z, "relu": np.maximum(z, 0), "sigmoid": 1 / (1 + np.exp(-z)),
           "tanh": np.tanh(z)}.get(act)
    if act == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        ref = e / e.sum(1, keepdims=True)
    out = _nan(be, (7, 4))
    be.dense_fwd(be.asarray(x), be.asarray(w), be.asarray(b), act, out)
    np.testing.assert_allclose(be.to_numpy(out), ref, rtol=1e-5, atol=1e-6)


# ---- device-side accumulation: no host sync, no allocation per step -----------

class _Forbidden(AssertionError):
    pass


def _forbid(monkeypatch, be, *arrays):
    """Makes every host sync, host<->device copy and device allocation raise."""
    from numba import cuda

    def boom(*args, **kwargs):
        raise _Forbidden("the op synchronised with, copied to/from or allocated on the device")

    for name in ("synchronize", "to_device", "device_array", "device_array_like",
                 "pinned_array"):
        monkeypatch.setattr(cuda, name, boom)
    for cls in {type(a) for a in arrays}:
        monkeypatch.setattr(cls, "copy_to_host", boom)


def test_loss_and_metric_accumulate_on_device_without_sync(be, rng, monkeypatch):
    rows, cols = 300, 3   # more rows than the 256-thread reduction block
    pred = rng.standard_normal((rows, cols)).astype(np.float32)
    target = rng.standard_normal((rows, cols)).astype(np.float32)
    d_pred, d_target = be.asarray(pred), be.asarray(target)
    grad = _nan(be, (rows, cols))
    acc = be.asarray(np.array([0.25]))
    macc = be.zeros((1,), "float64")
    be.loss("mse", d_pred, d_target, grad, acc)          # warm-up: scratch allocated
    with monkeypatch.context() as mp:
        _forbid(mp, be, acc, grad)
        be.loss("mse", d_pred, d_target, grad, acc)
        be.loss("mse", d_pred, d_target, grad, acc)
        be.metric("mae", d_pred, d_target, macc)
        be.metric("mae", d_pred, d_target, macc)
    d = pred.astype(np.float64) - target
    per_row = (d * d).mean(1)
    assert be.to_numpy(acc)[0] == pytest.approx(0.25 + 3 * per_row.mean(), rel=1e-6)
    assert be.to_numpy(macc)[0] == pytest.approx(2 * np.abs(d).mean(1).sum(), rel=1e-6)
    np.testing.assert_allclose(be.to_numpy(grad), 2 * d / (rows * cols), rtol=1e-5, atol=1e-9)


def test_optimizer_steps_do_not_sync_or_allocate(be, rng, monkeypatch):
    n = 300
    p0 = rng.standard_normal(n).astype(np.float32)
    g = be.asarray(rng.standard_normal(n).astype(np.float32))
    p, m, v = be.asarray(p0), be.zeros(n), be.zeros(n)
    with monkeypatch.context() as mp:
        _forbid(mp, be, p)
        be.adam_step(p, g, m, v, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1,
                     weight_decay=0.0, grad_scale=1.0, clip_value=0.0)
        be.sgd_step(p, g, None, lr=0.1, momentum=0.0, nesterov=False, weight_decay=0.0,
                    grad_scale=1.0, clip_value=0.0)
        be.scale_(g, 0.5)
    assert not np.array_equal(be.to_numpy(p), p0)


def test_sumsq_is_fixed_order_and_float64(be, rng):
    from fastnn.backend.cuda_kernels.optim import SUMSQ_CHUNK
    x = (rng.standard_normal(SUMSQ_CHUNK + 37) * 1e3).astype(np.float32)  # two partials
    d = be.asarray(x)
    first = be.sumsq(d)
    assert isinstance(first, float)
    assert first == be.sumsq(d)   # bit-identical on repeat
    assert first == pytest.approx(float((x.astype(np.float64) ** 2).sum()), rel=1e-12)
    assert be.sumsq(be.zeros(0)) == 0.0


# ---- index upload for gather_rows -------------------------------------------------

def test_gather_reuses_its_index_buffer(be, rng, monkeypatch):
    src = rng.standard_normal((11, 2, 3)).astype(np.float32)
    labels = rng.integers(0, 10, 11).astype(np.int32)
    d_src, d_lab = be.asarray(src), be.asarray(labels)
    out, lab_out = _nan(be, (4, 2, 3)), _nan(be, (4,), np.int32)
    idx1 = np.array([10, 0, 3, 3], dtype=np.int64)
    be.gather_rows(d_src, idx1, out)                  # first batch of this size allocates
    buf = be._idx_bufs[4].device
    np.testing.assert_array_equal(be.to_numpy(out), src[idx1])

    from numba import cuda
    real_to_device = cuda.to_device
    uploads = []

    def counting_to_device(*args, **kwargs):
        assert kwargs.get("to") is buf, "index upload must go into the cached buffer"
        uploads.append(1)
        return real_to_device(*args, **kwargs)

    def no_alloc(*args, **kwargs):
        raise _Forbidden("gather_rows allocated a device buffer for a seen batch size")

    idx2 = np.array([1, 9, 2, 7], dtype=np.int64)
    with monkeypatch.context() as mp:
        mp.setattr(cuda, "to_device", counting_to_device)
        mp.setattr(cuda, "device_array", no_alloc)
        be.gather_rows(d_src, idx2, out)              # new indices: one upload
        be.gather_rows(d_lab, idx2, lab_out)          # same indices: no upload
    assert len(uploads) == 1
    assert be._idx_bufs[4].device is buf
    np.testing.assert_array_equal(be.to_numpy(out), src[idx2])
    np.testing.assert_array_equal(be.to_numpy(lab_out), labels[idx2])
    # Changing the caller's array in place must not be mistaken for "same indices".
    idx2[0] = 4
    be.gather_rows(d_lab, idx2, lab_out)
    np.testing.assert_array_equal(be.to_numpy(lab_out), labels[idx2])


# ---- dropout: host draws, device apply -----------------------------------------

def test_dropout_matches_a_host_draw_bit_for_bit(be, rng, monkeypatch):
    x = rng.standard_normal((6, 7)).astype(np.float32)
    rate = 0.3
    mask, out = _nan(be, (6, 7)), _nan(be, (6, 7))
    gen = np.random.default_rng(99)
    be.dropout_fwd(be.asarray(x), rate, gen, mask, out)
    ref_gen = np.random.default_rng(99)
    u = ref_gen.random(x.size, dtype=np.float32).reshape(x.shape)
    keep = np.float32(1) / (np.float32(1) - np.float32(rate))
    ref_mask = np.where(u >= np.float32(rate), keep, np.float32(0))
    assert np.array_equal(be.to_numpy(mask), ref_mask)
    assert np.array_equal(be.to_numpy(out), x * ref_mask)
    assert 0 < (ref_mask == 0).sum() < x.size   # the draw really drops some
    assert gen.random() == ref_gen.random()      # the generator advanced the same

    from numba import cuda

    def no_alloc(*args, **kwargs):
        raise _Forbidden("dropout_fwd allocated a buffer for a seen size")

    with monkeypatch.context() as mp:
        mp.setattr(cuda, "device_array", no_alloc)
        mp.setattr(cuda, "pinned_array", no_alloc)
        be.dropout_fwd(be.asarray(x), rate, gen, mask, out)


# ---- concat / split along the last axis ---------------------------------------

def test_concat_and_split_last(be, rng):
    parts = [rng.standard_normal((2, 3, w)).astype(np.float32) for w in (1, 4, 2)]
    out = _nan(be, (2, 3, 7))
    be.concat_last([be.asarray(p) for p in parts], out)
    np.testing.assert_array_equal(be.to_numpy(out), np.concatenate(parts, -1))
    outs = [_nan(be, p.shape) for p in parts]
    be.split_last(out, outs)
    for got, ref in zip(outs, parts):
        np.testing.assert_array_equal(be.to_numpy(got), ref)


# ---- loss, metric, activation-gradient and optimiser formulas --------------------
# Until the shared op tests cover the dense ops on every backend, these pin the
# CUDA kernels to float64 NumPy references of the formulas in ext/fastnn.h.

EPS = 1e-7


def _softmax64(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _loss_ref(kind, pred, target):
    """(mean loss, activated predictions or None) in float64."""
    rows, cols = pred.shape
    if kind == "softmax_cce_logits":
        p = _softmax64(pred)
        return float(-(target * np.log(p)).sum(1).mean()), p
    if kind == "softmax_sparse_cce_logits":
        p = _softmax64(pred)
        return float(-np.log(p[np.arange(rows), target]).mean()), p
    if kind in ("cce_probs", "sparse_cce_probs"):
        t = np.eye(cols)[target] if kind.startswith("sparse") else target
        q = np.clip(pred / pred.sum(1, keepdims=True), EPS, 1 - EPS)
        return float(-(t * np.log(q)).sum(1).mean()), None
    if kind == "sigmoid_bce_logits":
        p = 1 / (1 + np.exp(-pred))
        per = np.maximum(pred, 0) - pred * target + np.log1p(np.exp(-np.abs(pred)))
        return float(per.mean(1).mean()), p
    if kind == "bce_probs":
        pc = np.clip(pred, EPS, 1 - EPS)
        per = -(target * np.log(pc) + (1 - target) * np.log(1 - pc))
        return float(per.mean(1).mean()), None
    if kind == "mse":
        return float(((pred - target) ** 2).mean(1).mean()), None
    return float(np.abs(pred - target).mean(1).mean()), None   # mae


def _loss_inputs(kind, rng, rows=5, cols=4):
    labels = rng.integers(0, cols, rows).astype(np.int32)
    if kind in ("cce_probs", "sparse_cce_probs", "bce_probs"):
        pred = rng.random((rows, cols)) * 0.9 + 0.05
    else:
        pred = rng.standard_normal((rows, cols))
    if "sparse" in kind:
        target = labels
    elif kind in ("softmax_cce_logits", "cce_probs"):
        target = rng.random((rows, cols))            # soft targets, rows not summing to 1
    else:
        target = rng.random((rows, cols))
    return pred.astype(np.float32), (target if "sparse" in kind else target.astype(np.float32))


@pytest.mark.parametrize("kind", ["softmax_cce_logits", "softmax_sparse_cce_logits",
                                  "cce_probs", "sparse_cce_probs", "sigmoid_bce_logits",
                                  "bce_probs", "mse", "mae"])
def test_losses_match_reference(be, rng, kind):
    pred, target = _loss_inputs(kind, rng)
    p64 = pred.astype(np.float64)
    t64 = target if target.dtype == np.int32 else target.astype(np.float64)
    loss, probs_ref = _loss_ref(kind, p64, t64)
    # The gradient of the mean loss, by central differences of the reference.
    grad_ref = np.empty_like(p64)
    h = 1e-6
    for idx in np.ndindex(*p64.shape):
        up, down = p64.copy(), p64.copy()
        up[idx] += h
        down[idx] -= h
        grad_ref[idx] = (_loss_ref(kind, up, t64)[0] - _loss_ref(kind, down, t64)[0]) / (2 * h)
    grad, acc = _nan(be, pred.shape), be.asarray(np.array([0.5]))
    probs = _nan(be, pred.shape) if kind.endswith("_logits") else None
    be.loss(kind, be.asarray(pred), be.asarray(target), grad, acc, probs)
    assert be.to_numpy(acc)[0] == pytest.approx(0.5 + loss, rel=1e-5)
    np.testing.assert_allclose(be.to_numpy(grad), grad_ref, rtol=1e-4, atol=1e-6)
    if probs is not None:
        np.testing.assert_allclose(be.to_numpy(probs), probs_ref, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["categorical_accuracy", "sparse_categorical_accuracy",
                                  "binary_accuracy", "mse", "mae"])
def test_metrics_match_reference(be, rng, kind):
    rows, cols = 7, 3
    pred = rng.random((rows, cols)).astype(np.float32)
    pred[0, 1] = pred[0, 2] = 2.0   # a tie: the first maximum wins
    labels = rng.integers(0, cols, rows).astype(np.int32)
    labels[0] = 1
    onehot = np.eye(cols, dtype=np.float32)[labels]
    soft = rng.random((rows, cols)).astype(np.float32)
    p64 = pred.astype(np.float64)
    target, ref = {
        "categorical_accuracy": (onehot, (p64.argmax(1) == labels).sum()),
        "sparse_categorical_accuracy": (labels, (p64.argmax(1) == labels).sum()),
        "binary_accuracy": (soft, ((p64 > 0.5) == (soft > 0.5)).mean(1).sum()),
        "mse": (soft, ((p64 - soft) ** 2).mean(1).sum()),
        "mae": (soft, np.abs(p64 - soft).mean(1).sum()),
    }[kind]
    acc = be.zeros((1,), "float64")
    be.metric(kind, be.asarray(pred), be.asarray(target), acc)
    assert be.to_numpy(acc)[0] == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("act", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_act_bwd_matches_reference(be, rng, act):
    x = rng.standard_normal((6, 5))
    y = {"linear": x, "relu": np.maximum(x, 0), "sigmoid": 1 / (1 + np.exp(-x)),
         "tanh": np.tanh(x), "softmax": _softmax64(x)}[act].astype(np.float32)
    dy = rng.standard_normal((6, 5)).astype(np.float32)
    y64, dy64 = y.astype(np.float64), dy.astype(np.float64)
    ref = {"linear": dy64, "relu": dy64 * (y64 > 0), "sigmoid": dy64 * y64 * (1 - y64),
           "tanh": dy64 * (1 - y64 ** 2),
           "softmax": y64 * (dy64 - (dy64 * y64).sum(1, keepdims=True))}[act]
    d_dy = be.asarray(dy)
    be.act_bwd(act, be.asarray(y), d_dy, d_dy)   # in place, as layers call it
    np.testing.assert_allclose(be.to_numpy(d_dy), ref, rtol=1e-5, atol=1e-6)


def _clipped(g, grad_scale, clip):
    g = g * grad_scale
    return np.clip(g, -clip, clip) if clip > 0 else g


@pytest.mark.parametrize("momentum,nesterov,wd,clip", [(0.0, False, 0.0, 0.0),
                                                       (0.9, False, 0.01, 0.5),
                                                       (0.9, True, 0.0, 0.0)])
def test_sgd_step_matches_reference(be, rng, momentum, nesterov, wd, clip):
    n, lr = 300, 0.1
    p, g, v = (rng.standard_normal(n) for _ in range(3))
    d_p = be.asarray(p.astype(np.float32))
    d_v = be.asarray(v.astype(np.float32)) if momentum else None
    be.sgd_step(d_p, be.asarray(g.astype(np.float32)), d_v, lr=lr, momentum=momentum,
                nesterov=nesterov, weight_decay=wd, grad_scale=0.5, clip_value=clip)
    gc = _clipped(g, 0.5, clip)
    p_ref = p - p * wd * lr
    if momentum:
        v_ref = momentum * v - lr * gc
        p_ref = p_ref + (momentum * v_ref - lr * gc if nesterov else v_ref)
        np.testing.assert_allclose(be.to_numpy(d_v), v_ref, rtol=1e-5, atol=1e-6)
    else:
        p_ref = p_ref - lr * gc
    np.testing.assert_allclose(be.to_numpy(d_p), p_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("step,wd,clip", [(1, 0.0, 0.0), (7, 0.004, 0.3)])
def test_adam_step_matches_reference(be, rng, step, wd, clip):
    n, lr, b1, b2, eps = 300, 0.01, 0.9, 0.999, 1e-7
    p, g, m = (rng.standard_normal(n) for _ in range(3))
    v = np.abs(rng.standard_normal(n))
    d_p, d_m, d_v = (be.asarray(a.astype(np.float32)) for a in (p, m, v))
    be.adam_step(d_p, be.asarray(g.astype(np.float32)), d_m, d_v, lr=lr, beta_1=b1,
                 beta_2=b2, epsilon=eps, step=step, weight_decay=wd, grad_scale=2.0,
                 clip_value=clip)
    gc = _clipped(g, 2.0, clip)
    lr_t = lr * np.sqrt(1 - b2 ** step) / (1 - b1 ** step)
    m_ref = m + (gc - m) * (1 - b1)
    v_ref = v + (gc * gc - v) * (1 - b2)
    p_ref = p - p * wd * lr - lr_t * m_ref / (np.sqrt(v_ref) + eps)
    np.testing.assert_allclose(be.to_numpy(d_m), m_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(be.to_numpy(d_v), v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(be.to_numpy(d_p), p_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum,centered", [(0.0, False), (0.5, True)])
def test_rmsprop_step_matches_reference(be, rng, momentum, centered):
    n, lr, rho, eps, wd = 300, 0.01, 0.9, 1e-7, 0.01
    p, g, mom = (rng.standard_normal(n) for _ in range(3))
    vel = np.abs(rng.standard_normal(n)) + 0.5
    avg = rng.standard_normal(n) * 0.1
    d_p, d_vel = be.asarray(p.astype(np.float32)), be.asarray(vel.astype(np.float32))
    d_mom = be.asarray(mom.astype(np.float32)) if momentum else None
    d_avg = be.asarray(avg.astype(np.float32)) if centered else None
    be.rmsprop_step(d_p, be.asarray(g.astype(np.float32)), d_vel, d_mom, d_avg, lr=lr,
                    rho=rho, momentum=momentum, epsilon=eps, weight_decay=wd,
                    grad_scale=1.0, clip_value=0.0)
    vel_ref = rho * vel + (1 - rho) * g * g
    if centered:
        avg_ref = rho * avg + (1 - rho) * g
        den = vel_ref - avg_ref ** 2 + eps
        np.testing.assert_allclose(be.to_numpy(d_avg), avg_ref, rtol=1e-5, atol=1e-6)
    else:
        den = vel_ref + eps
    inc = lr * g / np.sqrt(den)
    p_ref = p - p * wd * lr
    if momentum:
        mom_ref = momentum * mom + inc
        p_ref = p_ref - mom_ref
        np.testing.assert_allclose(be.to_numpy(d_mom), mom_ref, rtol=1e-5, atol=1e-6)
    else:
        p_ref = p_ref - inc
    np.testing.assert_allclose(be.to_numpy(d_vel), vel_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(be.to_numpy(d_p), p_ref, rtol=1e-5, atol=1e-6)

# ---- convolution: the GPU-only paths ------------------------------------------

def _conv_ref(x, w, strides, pads):
    """float64 im2col of x (B*Ho*Wo, kh*kw*C) and the output shape."""
    b, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (pads[0], pads[1]), (pads[2], pads[3]), (0, 0)))
    ho = (h + pads[0] + pads[1] - kh) // strides[0] + 1
    wo = (wd + pads[2] + pads[3] - kw) // strides[1] + 1
    col = np.empty((b, ho, wo, kh, kw, c))
    for ki in range(kh):
        for kj in range(kw):
            col[:, :, :, ki, kj, :] = xp[:, ki:ki + strides[0] * (ho - 1) + 1:strides[0],
                                         kj:kj + strides[1] * (wo - 1) + 1:strides[1], :]
    return col.reshape(b * ho * wo, -1), (b, ho, wo, f)


@pytest.mark.parametrize("slice_rows", [16, 2048])
def test_conv_bwd_split_sums_match_reference(be, rng, monkeypatch, slice_rows):
    # With 16-row slices the filter gradient runs as a split-K GEMM and the
    # bias gradient as sliced column sums; 2048 keeps both in one piece.
    import fastnn.backend.cuda as cuda_mod
    monkeypatch.setattr(cuda_mod, "_COLSUM_SLICE", slice_rows)
    x = rng.standard_normal((2, 6, 5, 3)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    strides, pads = (1, 2), (1, 1, 0, 1)
    col, oshape = _conv_ref(x, w, strides, pads)
    dz = rng.standard_normal(oshape).astype(np.float32)
    dw, db, dx = _nan(be, w.shape), _nan(be, (4,)), _nan(be, x.shape)
    be.conv2d_bwd(be.asarray(x), be.asarray(w), be.asarray(dz), dw, db, dx,
                  strides=strides, padding=pads)
    dz2 = dz.reshape(-1, 4).astype(np.float64)
    np.testing.assert_allclose(be.to_numpy(dw), (col.T @ dz2).reshape(w.shape),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(be.to_numpy(db), dz2.sum(0), rtol=1e-5, atol=1e-5)
    # dx by the adjoint identity <dz, conv(x')> = <dx, x'> for a random x'.
    xr = rng.standard_normal(x.shape)
    col_r, _ = _conv_ref(xr, w, strides, pads)
    lhs = float((dz2 * (col_r @ w.reshape(-1, 4).astype(np.float64))).sum())
    assert float((be.to_numpy(dx).astype(np.float64) * xr).sum()) == pytest.approx(lhs, rel=1e-5)


def test_pointwise_conv_needs_no_im2col_workspace(be, rng):
    x = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)
    w = rng.standard_normal((1, 1, 5, 3)).astype(np.float32)
    before = {k for k in be._work if k[0] == "im2col"}
    out = _nan(be, (3, 4, 2, 3))
    be.conv2d_fwd(be.asarray(x), be.asarray(w), None, out, act="relu")
    ref = np.maximum(x.reshape(-1, 5).astype(np.float64) @ w.reshape(5, 3), 0)
    np.testing.assert_allclose(be.to_numpy(out).reshape(-1, 3), ref, rtol=1e-5, atol=1e-6)
    assert {k for k in be._work if k[0] == "im2col"} == before


def test_batchnorm_statistics_over_several_chunks(be, rng):
    from fastnn.backend.cuda_kernels.conv import BN_CHUNK
    rows, c = 2 * BN_CHUNK + 17, 3
    x = (rng.standard_normal((rows, c)) * 2 + 100).astype(np.float32)  # large mean
    out, mm, mv = _nan(be, (rows, c)), be.zeros(c), be.asarray(np.ones(c, np.float32))
    sm, si = _nan(be, (c,)), _nan(be, (c,))
    be.batchnorm_fwd_train(be.asarray(x), out, None, None, mm, mv, sm, si,
                           momentum=0.75, epsilon=1e-3)
    x64 = x.astype(np.float64)
    mean, var = x64.mean(0), x64.var(0)
    np.testing.assert_allclose(be.to_numpy(sm), mean, rtol=1e-6)
    np.testing.assert_allclose(be.to_numpy(si), 1 / np.sqrt(var + 1e-3), rtol=1e-5)
    np.testing.assert_allclose(be.to_numpy(mv), 0.75 + 0.25 * var, rtol=1e-5)
    np.testing.assert_allclose(be.to_numpy(out), (x64 - mean) / np.sqrt(var + 1e-3),
                               rtol=1e-4, atol=1e-4)


def test_maxpool_bwd_adds_overlapping_windows(be, rng):
    # 3x3 windows at stride 1 overlap: one input can be the max of several.
    x = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    x[0, 2, 1, :] = 10.0   # the max of every window that holds it
    out, arg = _nan(be, (2, 3, 2, 3)), _nan(be, (2, 3, 2, 3), np.int64)
    be.maxpool2d_fwd(be.asarray(x), out, arg, pool=(3, 3), strides=(1, 1))
    dy = rng.standard_normal((2, 3, 2, 3)).astype(np.float32)
    dx = _nan(be, x.shape)
    be.maxpool2d_bwd(be.asarray(dy), arg, dx)
    a = be.to_numpy(arg)
    ref = np.zeros((2, x[0].size))
    for b in range(2):
        np.add.at(ref[b], a[b].ravel(), dy[b].ravel().astype(np.float64))
    assert (a[0] == (2 * 4 + 1) * 3 + np.arange(3)).all()
    np.testing.assert_allclose(be.to_numpy(dx).reshape(2, -1), ref, rtol=1e-6, atol=1e-6)


# ---- on a real GPU: launches match the PTX-tested signatures -------------------

def test_launches_used_only_registered_signatures(be):
    # Runs last in this module, after every op above has launched its kernels.
    # A Python float or int reaching a kernel compiles a float64/int64 variant
    # that the PTX test never saw; the simulator compiles nothing, so skip there.
    if be.simulated:
        pytest.skip("the simulator does not compile kernels")
    from fastnn.backend.cuda_kernels import unexpected_specialisations
    assert unexpected_specialisations() == []
