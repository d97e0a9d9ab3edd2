"""Fused optimiser steps over the flat parameter buffer, and the reductions
used for gradient clipping by global norm.

The update formulas are exactly those of fnn_sgd_step / fnn_adam_step /
fnn_rmsprop_step in ext/fastnn.h, evaluated in float32 in the same order.
"""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from ._registry import kernel

RT = 256                 # threads per reduction block
SUMSQ_PER_THREAD = 16    # elements each thread of stage 1 squares
SUMSQ_CHUNK = RT * SUMSQ_PER_THREAD   # elements per stage-1 block (fixed: the
                                      # summation order depends on n only)

_F1 = "float32[::1]"


@kernel(f"void({_F1}, {_F1}, {_F1}, float32, float32, int32, float32, float32, "
        "float32, int32)")
def sgd_step(p, g, vel, lr, momentum, nesterov, weight_decay, grad_scale,
             clip_value, has_vel):
    """Keras SGD; vel is used only when has_vel (else p -= lr*g')."""
    i = cuda.grid(1)
    if i >= p.shape[0]:
        return
    gi = g[i] * grad_scale
    if clip_value > float32(0.0):
        gi = min(max(gi, -clip_value), clip_value)
    pi = p[i]
    if weight_decay > float32(0.0):
        pi -= pi * weight_decay * lr
    if has_vel:
        v = momentum * vel[i] - lr * gi
        vel[i] = v
        if nesterov:
            pi += momentum * v - lr * gi
        else:
            pi += v
    else:
        pi -= lr * gi
    p[i] = pi


@kernel(f"void({_F1}, {_F1}, {_F1}, {_F1}, float32, float32, float32, float32, "
        "float32, float32, float32, float32)")
def adam_step(p, g, m, v, lr, lr_t, beta_1, beta_2, epsilon, weight_decay,
              grad_scale, clip_value):
    """Keras Adam/AdamW; lr_t = lr*sqrt(1-b2^t)/(1-b1^t) comes from the host."""
    i = cuda.grid(1)
    if i >= p.shape[0]:
        return
    one = float32(1.0)
    gi = g[i] * grad_scale
    if clip_value > float32(0.0):
        gi = min(max(gi, -clip_value), clip_value)
    pi = p[i]
    if weight_decay > float32(0.0):
        pi -= pi * weight_decay * lr
    mi = m[i]
    vi = v[i]
    mi += (gi - mi) * (one - beta_1)
    vi += (gi * gi - vi) * (one - beta_2)
    m[i] = mi
    v[i] = vi
    p[i] = pi - lr_t * mi / (math.sqrt(vi) + epsilon)


@kernel(f"void({_F1}, {_F1}, {_F1}, {_F1}, {_F1}, float32, float32, float32, "
        "float32, float32, float32, float32, int32, int32)")
def rmsprop_step(p, g, vel, mom, avg, lr, rho, momentum, epsilon, weight_decay,
                 grad_scale, clip_value, has_mom, centered):
    """Keras RMSprop; mom used only when has_mom, avg only when centered."""
    i = cuda.grid(1)
    if i >= p.shape[0]:
        return
    one = float32(1.0)
    gi = g[i] * grad_scale
    if clip_value > float32(0.0):
        gi = min(max(gi, -clip_value), clip_value)
    pi = p[i]
    if weight_decay > float32(0.0):
        pi -= pi * weight_decay * lr
    vl = rho * vel[i] + (one - rho) * (gi * gi)
    vel[i] = vl
    if centered:
        a = rho * avg[i] + (one - rho) * gi
        avg[i] = a
        den = vl - a * a + epsilon
    else:
        den = vl + epsilon
    inc = lr * gi / math.sqrt(den)
    if has_mom:
        mo = momentum * mom[i] + inc
        mom[i] = mo
        pi -= mo
    else:
        pi -= inc
    p[i] = pi


@kernel(f"void({_F1}, float64[::1])", allow_f64=True)
def sumsq_partial(x, part):
    """Stage 1: part[b] = sum of x[i]^2 over block b's SUMSQ_CHUNK elements, in
    float64: thread t takes elements t, t+RT, ... of the chunk in turn, then a
    fixed halving tree combines the threads. Launch: ceil(n/SUMSQ_CHUNK)
    blocks of RT threads."""
    sh = cuda.shared.array(RT, float64)
    t = cuda.threadIdx.x
    base = cuda.blockIdx.x * SUMSQ_CHUNK
    n = x.shape[0]
    s = float64(0.0)
    for j in range(SUMSQ_PER_THREAD):
        i = base + j * RT + t
        if i < n:
            xi = float64(x[i])
            s += xi * xi
    sh[t] = s
    cuda.syncthreads()
    half = RT // 2
    while half > 0:
        if t < half:
            sh[t] += sh[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        part[cuda.blockIdx.x] = sh[0]


@kernel("void(float64[::1], float64[::1])", allow_f64=True)
def sum_partials(part, out):
    """Stage 2: out[0] = sum(part), same fixed order. Launch: one block of RT."""
    sh = cuda.shared.array(RT, float64)
    t = cuda.threadIdx.x
    s = float64(0.0)
    for i in range(t, part.shape[0], RT):
        s += part[i]
    sh[t] = s
    cuda.syncthreads()
    half = RT // 2
    while half > 0:
        if t < half:
            sh[t] += sh[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        out[0] = sh[0]
