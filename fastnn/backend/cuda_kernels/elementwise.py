"""Elementwise and per-row kernels: activations, bias, dropout, fill/scale/mul/add.

Every float literal is a float32 cast: a bare Python float (or int) in
arithmetic with a float32 promotes it to float64 in Numba, which is slow on most
GPUs and would make results differ from the float32 CPU kernels.
"""
from __future__ import annotations

import math

from numba import cuda, float32

from ._registry import device_function, kernel

# Activation codes, shared with the CPU kernels' enum fnn_activation.
ACT_LINEAR = 0
ACT_RELU = 1
ACT_SIGMOID = 2
ACT_TANH = 3
ACT_SOFTMAX = 4
ACT_CODES = {"linear": ACT_LINEAR, "relu": ACT_RELU, "sigmoid": ACT_SIGMOID,
             "tanh": ACT_TANH, "softmax": ACT_SOFTMAX}

# Threads per block for flat one-thread-per-element kernels.
TPB = 256


@device_function
def act_value(v, act):
    """act(v) for the elementwise activations (softmax is handled per row)."""
    if act == ACT_RELU:
        return v if v > float32(0.0) else float32(0.0)
    if act == ACT_SIGMOID:
        return float32(1.0) / (float32(1.0) + math.exp(-v))
    if act == ACT_TANH:
        return math.tanh(v)
    return v


@device_function
def act_deriv(y, act):
    """act'(x) written through the forward output y = act(x)."""
    if act == ACT_RELU:
        return float32(1.0) if y > float32(0.0) else float32(0.0)
    if act == ACT_SIGMOID:
        return y * (float32(1.0) - y)
    if act == ACT_TANH:
        return float32(1.0) - y * y
    return float32(1.0)


@kernel("void(float32[:, ::1], float32[::1], int32, int32, float32[:, ::1])")
def bias_act_fwd(x, bias, has_bias, act, y):
    """y[r, c] = act(x[r, c] + bias[c]); elementwise acts only; y may be x."""
    i = cuda.grid(1)
    cols = x.shape[1]
    if i < x.shape[0] * cols:
        r = i // cols
        c = i - r * cols
        v = x[r, c]
        if has_bias:
            v = v + bias[c]
        y[r, c] = act_value(v, act)


@kernel("void(float32[:, ::1], float32[::1], int32, float32[:, ::1])")
def bias_softmax_rows(x, bias, has_bias, y):
    """y[r, :] = softmax(x[r, :] + bias), max-subtracted; one thread per row;
    y may be x."""
    r = cuda.grid(1)
    if r >= x.shape[0]:
        return
    cols = x.shape[1]
    m = x[r, 0] + (bias[0] if has_bias else float32(0.0))
    for c in range(1, cols):
        v = x[r, c] + (bias[c] if has_bias else float32(0.0))
        if v > m:
            m = v
    s = float32(0.0)
    for c in range(cols):
        e = math.exp(x[r, c] + (bias[c] if has_bias else float32(0.0)) - m)
        y[r, c] = e
        s += e
    for c in range(cols):
        y[r, c] = y[r, c] / s


@kernel("void(int32, float32[::1], float32[::1], float32[::1])")
def act_bwd(act, y, dy, dx):
    """dx = dy * act'(.) via the forward output y (flat); dx may be dy."""
    i = cuda.grid(1)
    if i < y.shape[0]:
        dx[i] = dy[i] * act_deriv(y[i], act)


@kernel("void(float32[:, ::1], float32[:, ::1], float32[:, ::1])")
def softmax_bwd_rows(y, dy, dx):
    """dx[r] = y[r] * (dy[r] - dot(dy[r], y[r])); one thread per row; dx may be dy."""
    r = cuda.grid(1)
    if r >= y.shape[0]:
        return
    dot = float32(0.0)
    for c in range(y.shape[1]):
        dot += dy[r, c] * y[r, c]
    for c in range(y.shape[1]):
        dx[r, c] = y[r, c] * (dy[r, c] - dot)


@kernel("void(float32[:, ::1], float32[::1])")
def bias_grad(dz, db):
    """db[c] = sum over r, in row order, of dz[r, c]; one thread per column
    (consecutive threads read consecutive addresses)."""
    c = cuda.grid(1)
    if c < dz.shape[1]:
        s = float32(0.0)
        for r in range(dz.shape[0]):
            s += dz[r, c]
        db[c] = s


@kernel("void(float32[::1], float32)", "void(int32[::1], int32)",
        "void(float64[::1], float64)", allow_f64=True)
def fill(x, value):
    """x[:] = value (value already has x's dtype)."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] = value


@kernel("void(float32[::1], float32)")
def scale(x, s):
    """x *= s."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        x[i] = x[i] * s


@kernel("void(float32[::1], float32[::1], float32[::1])")
def mul(a, b, out):
    """out = a * b; out may be a or b."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a[i] * b[i]


@kernel("void(float32[::1], float32[::1], float32[::1])")
def add(a, b, out):
    """out = a + b; out may be a or b."""
    i = cuda.grid(1)
    if i < out.shape[0]:
        out[i] = a[i] + b[i]


@kernel("void(float32[::1], float32[::1], float32, float32, float32[::1], float32[::1])")
def dropout_fwd(x, u, rate, keep_scale, mask, y):
    """mask = u >= rate ? keep_scale : 0 with keep_scale = 1/(1-rate) computed in
    float32 on the host; y = x * mask."""
    i = cuda.grid(1)
    if i < x.shape[0]:
        mk = keep_scale if u[i] >= rate else float32(0.0)
        mask[i] = mk
        y[i] = x[i] * mk
