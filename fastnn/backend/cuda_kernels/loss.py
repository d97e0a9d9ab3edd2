"""Fused losses and metrics.

Each loss is one per-row kernel (one thread per sample) that writes the
gradient (and, for the "_logits" kinds, the activated predictions) and the
per-sample loss into a scratch vector; ``reduce_into_acc`` then adds the mean
of that vector into the float64 accumulator on the device, so a training step
never waits for the GPU to read its loss. Metrics write per-sample values and
are summed the same way.

``scale`` is the gradient factor computed in float32 on the host: 1/rows for
the per-row losses, 1/(rows*cols) for the per-element ones.
"""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from ._registry import kernel

EPS = 1e-7   # Keras's backend epsilon, used to clip probabilities
RT = 256     # threads of the reduction block

_F2 = "float32[:, ::1]"
_F1 = "float32[::1]"
_I1 = "int32[::1]"


@kernel(f"void({_F2}, {_F2}, {_F2}, {_F2}, {_F1}, float32)")
def softmax_cce_logits(z, t, probs, grad, rowloss, scale):
    """loss = -sum t*log softmax(z); grad = (softmax(z)*sum(t) - t) * scale."""
    r = cuda.grid(1)
    if r >= z.shape[0]:
        return
    cols = z.shape[1]
    m = z[r, 0]
    for c in range(1, cols):
        if z[r, c] > m:
            m = z[r, c]
    s = float32(0.0)
    for c in range(cols):
        s += math.exp(z[r, c] - m)
    log_s = math.log(s)
    loss = float32(0.0)
    tsum = float32(0.0)
    for c in range(cols):
        zc = z[r, c] - m
        probs[r, c] = math.exp(zc) / s
        tc = t[r, c]
        loss -= tc * (zc - log_s)
        tsum += tc
    for c in range(cols):
        grad[r, c] = (probs[r, c] * tsum - t[r, c]) * scale
    rowloss[r] = loss


@kernel(f"void({_F2}, {_I1}, {_F2}, {_F2}, {_F1}, float32)")
def softmax_sparse_cce_logits(z, labels, probs, grad, rowloss, scale):
    """loss = -log softmax(z)[label]; grad = (softmax(z) - onehot) * scale.
    A label outside [0, cols) gives a NaN loss (the host cannot check labels
    that live on the device without a sync)."""
    r = cuda.grid(1)
    if r >= z.shape[0]:
        return
    cols = z.shape[1]
    y = labels[r]
    m = z[r, 0]
    for c in range(1, cols):
        if z[r, c] > m:
            m = z[r, c]
    s = float32(0.0)
    for c in range(cols):
        s += math.exp(z[r, c] - m)
    log_s = math.log(s)
    for c in range(cols):
        p = math.exp(z[r, c] - m) / s
        probs[r, c] = p
        grad[r, c] = (p - (float32(1.0) if c == y else float32(0.0))) * scale
    if y >= 0 and y < cols:
        rowloss[r] = log_s - (z[r, y] - m)
    else:
        rowloss[r] = math.nan


@kernel(f"void({_F2}, {_F2}, {_F2}, {_F1}, float32)")
def cce_probs(p, t, grad, rowloss, scale):
    """Keras CCE on probabilities: q = p / sum(p), clipped to [eps, 1-eps];
    loss = -sum t*log(q). The gradient goes through the normalisation and the
    clip (zero where q was clipped)."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    cols = p.shape[1]
    lo = float32(EPS)
    hi = float32(1.0) - float32(EPS)
    tot = float32(0.0)
    for c in range(cols):
        tot += p[r, c]
    loss = float32(0.0)
    dot = float32(0.0)   # sum_c dL/dq_c * q_c
    for c in range(cols):
        q = p[r, c] / tot
        qc = min(max(q, lo), hi)
        loss -= t[r, c] * math.log(qc)
        gq = -t[r, c] / qc if (q >= lo and q <= hi) else float32(0.0)
        grad[r, c] = gq
        dot += gq * q
    for c in range(cols):
        grad[r, c] = (grad[r, c] - dot) / tot * scale
    rowloss[r] = loss


@kernel(f"void({_F2}, {_I1}, {_F2}, {_F1}, float32)")
def sparse_cce_probs(p, labels, grad, rowloss, scale):
    """cce_probs with a one-hot target given by an int32 label."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    cols = p.shape[1]
    y = labels[r]
    if y < 0 or y >= cols:
        for c in range(cols):
            grad[r, c] = math.nan
        rowloss[r] = math.nan
        return
    lo = float32(EPS)
    hi = float32(1.0) - float32(EPS)
    tot = float32(0.0)
    for c in range(cols):
        tot += p[r, c]
    q = p[r, y] / tot
    qc = min(max(q, lo), hi)
    gq = -float32(1.0) / qc if (q >= lo and q <= hi) else float32(0.0)
    dot = gq * q
    for c in range(cols):
        g = (gq if c == y else float32(0.0)) - dot
        grad[r, c] = g / tot * scale
    rowloss[r] = -math.log(qc)


@kernel(f"void({_F2}, {_F2}, {_F2}, {_F2}, {_F1}, float32)")
def sigmoid_bce_logits(z, t, probs, grad, rowloss, scale):
    """Per element max(z,0) - z*t + log1p(exp(-|z|)) (stable), per sample the
    mean over cols; probs = sigmoid(z); grad = (probs - t) * scale."""
    r = cuda.grid(1)
    if r >= z.shape[0]:
        return
    cols = z.shape[1]
    loss = float32(0.0)
    for c in range(cols):
        x = z[r, c]
        tc = t[r, c]
        p = float32(1.0) / (float32(1.0) + math.exp(-x))
        probs[r, c] = p
        grad[r, c] = (p - tc) * scale
        loss += max(x, float32(0.0)) - x * tc + math.log1p(math.exp(-abs(x)))
    rowloss[r] = loss / float32(cols)


@kernel(f"void({_F2}, {_F2}, {_F2}, {_F1}, float32)")
def bce_probs(p, t, grad, rowloss, scale):
    """Keras BCE on probabilities: pc = clip(p, eps, 1-eps); per element
    -(t*log(pc) + (1-t)*log(1-pc)), per sample the mean over cols; the
    gradient is zero where p was clipped."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    cols = p.shape[1]
    lo = float32(EPS)
    hi = float32(1.0) - float32(EPS)
    one = float32(1.0)
    loss = float32(0.0)
    for c in range(cols):
        pv = p[r, c]
        tc = t[r, c]
        pc = min(max(pv, lo), hi)
        loss -= tc * math.log(pc) + (one - tc) * math.log(one - pc)
        if pv >= lo and pv <= hi:
            grad[r, c] = ((one - tc) / (one - pc) - tc / pc) * scale
        else:
            grad[r, c] = float32(0.0)
    rowloss[r] = loss / float32(cols)


@kernel(f"void({_F2}, {_F2}, {_F2}, {_F1}, float32)")
def mse(p, t, grad, rowloss, scale):
    """Per sample mean over cols of (p-t)^2; grad = 2(p-t) * scale."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    cols = p.shape[1]
    loss = float32(0.0)
    for c in range(cols):
        d = p[r, c] - t[r, c]
        loss += d * d
        grad[r, c] = float32(2.0) * d * scale
    rowloss[r] = loss / float32(cols)


@kernel(f"void({_F2}, {_F2}, {_F2}, {_F1}, float32)")
def mae(p, t, grad, rowloss, scale):
    """Per sample mean over cols of |p-t|; grad = sign(p-t) * scale."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    cols = p.shape[1]
    loss = float32(0.0)
    for c in range(cols):
        d = p[r, c] - t[r, c]
        loss += abs(d)
        if d > float32(0.0):
            grad[r, c] = scale
        elif d < float32(0.0):
            grad[r, c] = -scale
        else:
            grad[r, c] = float32(0.0)
    rowloss[r] = loss / float32(cols)


# ---- metrics: per-sample values into `rowval` ------------------------------

@kernel(f"void({_F2}, {_F2}, {_F1})")
def categorical_accuracy(p, t, rowval):
    """1 where argmax(p) == argmax(t) (first maximum wins), else 0."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    ip = 0
    it = 0
    for c in range(1, p.shape[1]):
        if p[r, c] > p[r, ip]:
            ip = c
        if t[r, c] > t[r, it]:
            it = c
    rowval[r] = float32(1.0) if ip == it else float32(0.0)


@kernel(f"void({_F2}, {_I1}, {_F1})")
def sparse_categorical_accuracy(p, labels, rowval):
    """1 where argmax(p) == label (first maximum wins), else 0."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    ip = 0
    for c in range(1, p.shape[1]):
        if p[r, c] > p[r, ip]:
            ip = c
    rowval[r] = float32(1.0) if ip == labels[r] else float32(0.0)


@kernel(f"void({_F2}, {_F2}, float32, {_F1})")
def binary_accuracy(p, t, threshold, rowval):
    """Mean over cols of (p > threshold) == (t > 0.5)."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    cols = p.shape[1]
    hits = 0
    for c in range(cols):
        if (p[r, c] > threshold) == (t[r, c] > float32(0.5)):
            hits += 1
    rowval[r] = float32(hits) / float32(cols)


@kernel(f"void({_F2}, {_F2}, {_F1})")
def mse_metric(p, t, rowval):
    """Mean over cols of (p-t)^2."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    s = float32(0.0)
    for c in range(p.shape[1]):
        d = p[r, c] - t[r, c]
        s += d * d
    rowval[r] = s / float32(p.shape[1])


@kernel(f"void({_F2}, {_F2}, {_F1})")
def mae_metric(p, t, rowval):
    """Mean over cols of |p-t|."""
    r = cuda.grid(1)
    if r >= p.shape[0]:
        return
    s = float32(0.0)
    for c in range(p.shape[1]):
        s += abs(p[r, c] - t[r, c])
    rowval[r] = s / float32(p.shape[1])


@kernel(f"void({_F1}, float64, float64[::1])", allow_f64=True)
def reduce_into_acc(vals, divisor, acc):
    """acc[0] += sum(vals) / divisor in float64, in a fixed order: thread t sums
    vals[t], vals[t+RT], ... in turn, then a fixed halving tree combines the
    RT partial sums. Launch: exactly one block of RT threads."""
    part = cuda.shared.array(RT, float64)
    t = cuda.threadIdx.x
    s = float64(0.0)
    for i in range(t, vals.shape[0], RT):
        s += float64(vals[i])
    part[t] = s
    cuda.syncthreads()
    half = RT // 2
    while half > 0:
        if t < half:
            part[t] += part[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        acc[0] += part[0] / divisor
