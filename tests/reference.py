"""Plain NumPy float64 references for every kernel.

Written from the mathematical definitions (and Keras's documented formulas),
never from the C code. Every function takes NumPy arrays of any float dtype,
computes in float64 and returns float64 results. Gradients are checked against
central finite differences in tests/test_kernels.py, so the references
themselves are tested too.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

KERAS_EPSILON = 1e-7


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def finite_differences(f, weights, skip=None, h: float = 1e-6):
    """Central differences of f(list of float64 weights) for every element of
    every weight (None for the weights flagged in ``skip``). The weights are
    perturbed in place and restored."""
    grads = []
    for w, skipped in zip(weights, skip or [False] * len(weights)):
        if skipped:
            grads.append(None)
            continue
        g = np.zeros_like(w)
        for i in np.ndindex(w.shape):
            saved = w[i]
            w[i] = saved + h
            up = f(weights)
            w[i] = saved - h
            down = f(weights)
            w[i] = saved
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return grads


# ---- GEMM ---------------------------------------------------------------------------

def gemm(a, b, c=None, trans_a: bool = False, trans_b: bool = False,
         alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """alpha * op(a) @ op(b) + beta * c; c is ignored when beta == 0."""
    a, b = f64(a), f64(b)
    oa = a.T if trans_a else a
    ob = b.T if trans_b else b
    out = alpha * (oa @ ob)
    if beta != 0.0:
        out = out + beta * f64(c)
    return out


def gemm_error_bound(a, b, c=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    """Elementwise float32 rounding allowance for gemm: a few ulps times
    sqrt(K) of the sum of |terms| (random-walk growth of rounding errors)."""
    a, b = np.abs(f64(a)), np.abs(f64(b))
    oa = a.T if trans_a else a
    ob = b.T if trans_b else b
    k = oa.shape[1]
    mag = abs(alpha) * (oa @ ob)
    if beta != 0.0:
        mag = mag + abs(beta) * np.abs(f64(c))
    eps32 = float(np.finfo(np.float32).eps)
    return 4.0 * eps32 * np.sqrt(max(k, 1)) * mag + 1e-30


# ---- activations --------------------------------------------------------------------

def sigmoid(z) -> np.ndarray:
    z = f64(z)
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    e = np.exp(z[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def softmax(z) -> np.ndarray:
    z = f64(z)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(z) -> np.ndarray:
    z = f64(z)
    m = z.max(axis=-1, keepdims=True)
    return z - m - np.log(np.exp(z - m).sum(axis=-1, keepdims=True))


def activation(name: str, z) -> np.ndarray:
    z = f64(z)
    if name == "linear":
        return z.copy()
    if name == "relu":
        return np.maximum(z, 0.0)
    if name == "sigmoid":
        return sigmoid(z)
    if name == "tanh":
        return np.tanh(z)
    if name == "softmax":
        return softmax(z)
    raise ValueError(name)


def bias_act(x, bias, name: str) -> np.ndarray:
    z = f64(x) if bias is None else f64(x) + f64(bias)
    return activation(name, z)


def act_backward(name: str, z, dy) -> np.ndarray:
    """dL/dz given dL/dy for y = act(z), from the derivative at z."""
    z, dy = f64(z), f64(dy)
    if name == "linear":
        return dy.copy()
    if name == "relu":
        return dy * (z > 0)
    if name == "sigmoid":
        s = sigmoid(z)
        return dy * s * (1.0 - s)
    if name == "tanh":
        return dy / np.cosh(z) ** 2
    if name == "softmax":
        # Full Jacobian per row: J_ij = s_i (delta_ij - s_j); dz = J^T dy.
        s = softmax(z)
        jac = s[..., :, None] * (np.eye(s.shape[-1]) - s[..., None, :])
        return np.einsum("...ij,...i->...j", jac, dy)
    raise ValueError(name)


def bias_grad(dz) -> np.ndarray:
    dz = f64(dz)
    return dz.reshape(-1, dz.shape[-1]).sum(axis=0)


def dense(x, w, bias, name: str) -> np.ndarray:
    return bias_act(f64(x) @ f64(w), bias, name)


# ---- losses: each returns (mean loss, d(mean loss)/d(input)) --------------------------

def one_hot(labels, cols: int) -> np.ndarray:
    return np.eye(cols)[np.asarray(labels, dtype=np.int64)]


def softmax_cce_logits(z, t) -> Tuple[float, np.ndarray]:
    z, t = f64(z), f64(t)
    rows = z.shape[0]
    per_row = -(t * log_softmax(z)).sum(axis=1)
    grad = (softmax(z) * t.sum(axis=1, keepdims=True) - t) / rows
    return float(per_row.mean()), grad


def softmax_sparse_cce_logits(z, labels) -> Tuple[float, np.ndarray]:
    return softmax_cce_logits(z, one_hot(labels, np.shape(z)[1]))


# Keras applies the clip to float32 tensors, so its bounds are float32 values
# (1 - 1e-7 becomes 0.99999988).
CLIP_LO = float(np.float32(KERAS_EPSILON))
CLIP_HI = float(np.float32(1.0) - np.float32(KERAS_EPSILON))


def _clip_mask(q) -> Tuple[np.ndarray, np.ndarray]:
    lo, hi = CLIP_LO, CLIP_HI
    return np.clip(q, lo, hi), (q >= lo) & (q <= hi)


def cce_probs(p, t) -> Tuple[float, np.ndarray]:
    """Keras: q = p / sum(p), c = clip(q, eps, 1-eps), loss = -sum t log c."""
    p, t = f64(p), f64(t)
    rows = p.shape[0]
    s = p.sum(axis=1, keepdims=True)
    q = p / s
    c, inside = _clip_mask(q)
    per_row = -(t * np.log(c)).sum(axis=1)
    dq = np.where(inside, -t / c, 0.0)                  # dL/dq
    # dq_i/dp_j = (delta_ij - q_i) / s
    dp = (dq - (dq * q).sum(axis=1, keepdims=True)) / s
    return float(per_row.mean()), dp / rows


def sparse_cce_probs(p, labels) -> Tuple[float, np.ndarray]:
    return cce_probs(p, one_hot(labels, np.shape(p)[1]))


def sigmoid_bce_logits(z, t) -> Tuple[float, np.ndarray]:
    z, t = f64(z), f64(t)
    rows, cols = z.shape
    # -t log s(z) - (1-t) log(1-s(z)) = log(1 + e^z) - t z
    elem = np.logaddexp(0.0, z) - t * z
    grad = (sigmoid(z) - t) / (rows * cols)
    return float(elem.mean(axis=1).mean()), grad


def bce_probs(p, t) -> Tuple[float, np.ndarray]:
    """Keras 3: c = clip(p, eps, 1-eps), loss = -(t log c + (1 - t) log(1 - c))."""
    p, t = f64(p), f64(t)
    rows, cols = p.shape
    c, inside = _clip_mask(p)
    elem = -(t * np.log(c) + (1.0 - t) * np.log(1.0 - c))
    dc = -t / c + (1.0 - t) / (1.0 - c)
    grad = np.where(inside, dc, 0.0) / (rows * cols)
    return float(elem.mean(axis=1).mean()), grad


def mse(p, t) -> Tuple[float, np.ndarray]:
    p, t = f64(p), f64(t)
    rows, cols = p.shape
    d = p - t
    return float((d ** 2).mean(axis=1).mean()), 2.0 * d / (rows * cols)


def mae(p, t) -> Tuple[float, np.ndarray]:
    p, t = f64(p), f64(t)
    rows, cols = p.shape
    d = p - t
    return float(np.abs(d).mean(axis=1).mean()), np.sign(d) / (rows * cols)


LOSSES = {
    "softmax_cce_logits": softmax_cce_logits,
    "softmax_sparse_cce_logits": softmax_sparse_cce_logits,
    "cce_probs": cce_probs,
    "sparse_cce_probs": sparse_cce_probs,
    "sigmoid_bce_logits": sigmoid_bce_logits,
    "bce_probs": bce_probs,
    "mse": mse,
    "mae": mae,
}


def loss_probs(kind: str, z) -> Optional[np.ndarray]:
    """The activated predictions a "_logits" loss writes into probs."""
    if kind.startswith("softmax_"):
        return softmax(z)
    if kind.startswith("sigmoid_"):
        return sigmoid(z)
    return None


# ---- metrics: each returns the SUM over rows ----------------------------------------

def categorical_accuracy_sum(p, t) -> float:
    return float((np.argmax(p, axis=1) == np.argmax(t, axis=1)).sum())


def sparse_categorical_accuracy_sum(p, labels) -> float:
    return float((np.argmax(p, axis=1) == np.asarray(labels)).sum())


def binary_accuracy_sum(p, t, threshold: float = 0.5) -> float:
    hit = (f64(p) > threshold) == (f64(t) > 0.5)
    return float(hit.mean(axis=1).sum())


def mse_sum(p, t) -> float:
    return float(((f64(p) - f64(t)) ** 2).mean(axis=1).sum())


def mae_sum(p, t) -> float:
    return float(np.abs(f64(p) - f64(t)).mean(axis=1).sum())


METRICS = {
    "categorical_accuracy": categorical_accuracy_sum,
    "sparse_categorical_accuracy": sparse_categorical_accuracy_sum,
    "binary_accuracy": binary_accuracy_sum,
    "mse": mse_sum,
    "mae": mae_sum,
}


# ---- reductions ---------------------------------------------------------------------

def sumsq(x) -> float:
    x = f64(x).ravel()
    return float(np.dot(x, x))


# ---- optimisers (Keras 3 update rules, float64 state) -------------------------------

def _prep_grad(g, grad_scale: float, clip_value: float) -> np.ndarray:
    g = f64(g) * grad_scale
    if clip_value > 0:
        g = np.clip(g, -clip_value, clip_value)
    return g


def _decay(p, lr: float, weight_decay: float) -> np.ndarray:
    return p - p * weight_decay * lr if weight_decay > 0 else p


def sgd_step(p, g, state: Dict[str, np.ndarray], *, lr, momentum=0.0, nesterov=False,
             weight_decay=0.0, grad_scale=1.0, clip_value=0.0) -> np.ndarray:
    """Returns the new p; updates state["velocity"] (float64) in place."""
    g = _prep_grad(g, grad_scale, clip_value)
    p = _decay(f64(p), lr, weight_decay)
    if momentum == 0 and "velocity" not in state:
        return p - lr * g
    v = momentum * state["velocity"] - lr * g
    state["velocity"] = v
    if nesterov:
        return p + momentum * v - lr * g
    return p + v


def adam_step(p, g, state: Dict[str, np.ndarray], *, lr, beta_1=0.9, beta_2=0.999,
              epsilon=1e-7, step=1, weight_decay=0.0, grad_scale=1.0,
              clip_value=0.0) -> np.ndarray:
    g = _prep_grad(g, grad_scale, clip_value)
    p = _decay(f64(p), lr, weight_decay)
    m = state["m"] + (g - state["m"]) * (1 - beta_1)
    v = state["v"] + (g * g - state["v"]) * (1 - beta_2)
    state["m"], state["v"] = m, v
    lr_t = lr * np.sqrt(1 - beta_2 ** step) / (1 - beta_1 ** step)
    return p - lr_t * m / (np.sqrt(v) + epsilon)


def rmsprop_step(p, g, state: Dict[str, np.ndarray], *, lr, rho=0.9, momentum=0.0,
                 epsilon=1e-7, centered=False, weight_decay=0.0, grad_scale=1.0,
                 clip_value=0.0) -> np.ndarray:
    g = _prep_grad(g, grad_scale, clip_value)
    p = _decay(f64(p), lr, weight_decay)
    vel = rho * state["vel"] + (1 - rho) * g * g
    state["vel"] = vel
    if centered:
        avg = rho * state["avg"] + (1 - rho) * g
        state["avg"] = avg
        den = vel - avg * avg + epsilon
    else:
        den = vel + epsilon
    inc = lr * g / np.sqrt(den)
    if momentum > 0:
        mom = momentum * state["mom"] + inc
        state["mom"] = mom
        return p - mom
    return p - inc


# ---- data movement ------------------------------------------------------------------

def gather_rows(src, idx) -> np.ndarray:
    return np.asarray(src)[np.asarray(idx, dtype=np.int64)]


def dropout(x, u, rate: float) -> Tuple[np.ndarray, np.ndarray]:
    """(mask, y) of inverted dropout given the uniform draws u."""
    keep = np.asarray(u) >= rate
    scale = 1.0 / (1.0 - rate) if rate < 1 else 0.0
    mask = np.where(keep, scale, 0.0)
    return mask, f64(x) * mask
