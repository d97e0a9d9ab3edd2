"""Float64 NumPy references for the convolution, pooling and batch
normalisation ops (NHWC images, (kh, kw, C, F) kernels, explicit padding
(top, bottom, left, right)). Written for clarity, not speed: each op is a
loop over kernel taps or windows with whole-array NumPy inside.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

Pair = Tuple[int, int]
Pad = Tuple[int, int, int, int]


def out_size(n: int, k: int, stride: int, dilation: int, before: int, after: int) -> int:
    return (n + before + after - dilation * (k - 1) - 1) // stride + 1


def activation(z: np.ndarray, act: str) -> np.ndarray:
    if act == "linear":
        return z
    if act == "relu":
        return np.maximum(z, 0.0)
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if act == "tanh":
        return np.tanh(z)
    if act == "softmax":
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    raise ValueError(act)


def _tap(xp: np.ndarray, ki: int, kj: int, ho: int, wo: int, strides: Pair,
         dilation: Pair) -> np.ndarray:
    """The (B, ho, wo, C) input values that kernel tap (ki, kj) sees."""
    r0, c0 = ki * dilation[0], kj * dilation[1]
    return xp[:, r0:r0 + strides[0] * (ho - 1) + 1:strides[0],
              c0:c0 + strides[1] * (wo - 1) + 1:strides[1], :]


def conv2d_fwd(x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], strides: Pair,
               padding: Pad, dilation: Pair, act: str = "linear") -> np.ndarray:
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    bsz, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    pt, pb, pl, pr = padding
    ho = out_size(h, kh, strides[0], dilation[0], pt, pb)
    wo = out_size(wd, kw, strides[1], dilation[1], pl, pr)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    z = np.zeros((bsz, ho, wo, f))
    for ki in range(kh):
        for kj in range(kw):
            z += _tap(xp, ki, kj, ho, wo, strides, dilation) @ w[ki, kj]
    if b is not None:
        z += np.asarray(b, np.float64)
    return activation(z, act)


def conv2d_bwd(x: np.ndarray, w: np.ndarray, dz: np.ndarray, strides: Pair,
               padding: Pad, dilation: Pair):
    """(dw, db, dx) for dz = d(loss)/d(pre-activation output)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    dz = np.asarray(dz, np.float64)
    bsz, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    pt, pb, pl, pr = padding
    ho, wo = dz.shape[1:3]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for ki in range(kh):
        for kj in range(kw):
            tap = _tap(xp, ki, kj, ho, wo, strides, dilation)
            dw[ki, kj] = np.einsum("bhwc,bhwf->cf", tap, dz)
            r0, c0 = ki * dilation[0], kj * dilation[1]
            dxp[:, r0:r0 + strides[0] * (ho - 1) + 1:strides[0],
                c0:c0 + strides[1] * (wo - 1) + 1:strides[1], :] += dz @ w[ki, kj].T
    dx = dxp[:, pt:pt + h, pl:pl + wd, :]
    return dw, dz.sum(axis=(0, 1, 2)), dx


def _windows(h: int, wd: int, pool: Pair, strides: Pair, padding: Pad):
    """Yields (oh, ow, row slice, col slice) of each pooling window, clipped
    to the image (padded positions never take part)."""
    pt, pb, pl, pr = padding
    ho = out_size(h, pool[0], strides[0], 1, pt, pb)
    wo = out_size(wd, pool[1], strides[1], 1, pl, pr)
    for oh in range(ho):
        r0 = oh * strides[0] - pt
        rs = slice(max(r0, 0), min(r0 + pool[0], h))
        for ow in range(wo):
            c0 = ow * strides[1] - pl
            yield oh, ow, rs, slice(max(c0, 0), min(c0 + pool[1], wd))


def pool_out_shape(shape, pool: Pair, strides: Pair, padding: Pad):
    bsz, h, wd, c = shape
    pt, pb, pl, pr = padding
    return (bsz, out_size(h, pool[0], strides[0], 1, pt, pb),
            out_size(wd, pool[1], strides[1], 1, pl, pr), c)


def maxpool2d_fwd(x: np.ndarray, pool: Pair, strides: Pair, padding: Pad):
    """(out, argmax) with argmax the flat index (h*W + w)*C + c within the image."""
    x = np.asarray(x, np.float64)
    bsz, h, wd, c = x.shape
    out = np.empty(pool_out_shape(x.shape, pool, strides, padding))
    arg = np.empty(out.shape, np.int64)
    for oh, ow, rs, cs in _windows(h, wd, pool, strides, padding):
        win = x[:, rs, cs, :].reshape(bsz, -1, c)
        j = win.argmax(axis=1)  # first max, row-major over the window
        out[:, oh, ow, :] = np.take_along_axis(win, j[:, None, :], 1)[:, 0, :]
        ncol = cs.stop - cs.start
        r = rs.start + j // ncol
        q = cs.start + j % ncol
        arg[:, oh, ow, :] = (r * wd + q) * c + np.arange(c)
    return out, arg


def maxpool2d_bwd(x_shape, dy: np.ndarray, argmax: np.ndarray) -> np.ndarray:
    bsz = x_shape[0]
    dx = np.zeros((bsz, int(np.prod(x_shape[1:]))))
    dyf = np.asarray(dy, np.float64).reshape(bsz, -1)
    af = np.asarray(argmax).reshape(bsz, -1)
    for b in range(bsz):
        np.add.at(dx[b], af[b], dyf[b])
    return dx.reshape(x_shape)


def avgpool2d_fwd(x: np.ndarray, pool: Pair, strides: Pair, padding: Pad) -> np.ndarray:
    x = np.asarray(x, np.float64)
    bsz, h, wd, c = x.shape
    out = np.empty(pool_out_shape(x.shape, pool, strides, padding))
    for oh, ow, rs, cs in _windows(h, wd, pool, strides, padding):
        out[:, oh, ow, :] = x[:, rs, cs, :].mean(axis=(1, 2))
    return out


def avgpool2d_bwd(x_shape, dy: np.ndarray, pool: Pair, strides: Pair,
                  padding: Pad) -> np.ndarray:
    dy = np.asarray(dy, np.float64)
    bsz, h, wd, c = x_shape
    dx = np.zeros(x_shape)
    for oh, ow, rs, cs in _windows(h, wd, pool, strides, padding):
        n = (rs.stop - rs.start) * (cs.stop - cs.start)
        dx[:, rs, cs, :] += dy[:, oh, ow, None, None, :] / n
    return dx


def global_avgpool_fwd(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, np.float64).mean(axis=(1, 2))


def global_avgpool_bwd(x_shape, dy: np.ndarray) -> np.ndarray:
    bsz, h, wd, c = x_shape
    return np.broadcast_to(np.asarray(dy, np.float64)[:, None, None, :] / (h * wd),
                           x_shape).copy()


def global_maxpool_fwd(x: np.ndarray):
    """(out (B, C), argmax (B, C) = pixel*C + c, first max)."""
    x = np.asarray(x, np.float64)
    bsz, h, wd, c = x.shape
    flat = x.reshape(bsz, h * wd, c)
    j = flat.argmax(axis=1)
    return flat.max(axis=1), j * c + np.arange(c)


def zeropad2d_fwd(x: np.ndarray, padding: Pad) -> np.ndarray:
    pt, pb, pl, pr = padding
    return np.pad(np.asarray(x, np.float64), ((0, 0), (pt, pb), (pl, pr), (0, 0)))


def zeropad2d_bwd(dy: np.ndarray, padding: Pad) -> np.ndarray:
    pt, pb, pl, pr = padding
    h = dy.shape[1] - pt - pb
    wd = dy.shape[2] - pl - pr
    return np.asarray(dy, np.float64)[:, pt:pt + h, pl:pl + wd, :].copy()


def batchnorm_fwd_train(x: np.ndarray, gamma, beta, moving_mean, moving_var,
                        momentum: float, epsilon: float):
    """(out, new_moving_mean, new_moving_var, mean, invstd); x is (rows, C)."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    var = x.var(axis=0)  # biased, as Keras normalises and tracks it
    invstd = 1.0 / np.sqrt(var + epsilon)
    g = np.ones(x.shape[1]) if gamma is None else np.asarray(gamma, np.float64)
    bt = np.zeros(x.shape[1]) if beta is None else np.asarray(beta, np.float64)
    out = (x - mean) * invstd * g + bt
    mm = np.asarray(moving_mean, np.float64) * momentum + mean * (1.0 - momentum)
    mv = np.asarray(moving_var, np.float64) * momentum + var * (1.0 - momentum)
    return out, mm, mv, mean, invstd


def batchnorm_fwd_infer(x, gamma, beta, moving_mean, moving_var, epsilon: float):
    x = np.asarray(x, np.float64)
    g = np.ones(x.shape[1]) if gamma is None else np.asarray(gamma, np.float64)
    bt = np.zeros(x.shape[1]) if beta is None else np.asarray(beta, np.float64)
    return ((x - np.asarray(moving_mean, np.float64))
            / np.sqrt(np.asarray(moving_var, np.float64) + epsilon) * g + bt)


def batchnorm_bwd(x, dy, gamma, epsilon: float):
    """(dx, dgamma, dbeta) of the training forward, from first principles:
    statistics recomputed in float64."""
    x = np.asarray(x, np.float64)
    dy = np.asarray(dy, np.float64)
    n = x.shape[0]
    mean = x.mean(axis=0)
    invstd = 1.0 / np.sqrt(x.var(axis=0) + epsilon)
    xhat = (x - mean) * invstd
    g = np.ones(x.shape[1]) if gamma is None else np.asarray(gamma, np.float64)
    dbeta = dy.sum(axis=0)
    dgamma = (dy * xhat).sum(axis=0)
    dx = g * invstd / n * (n * dy - dbeta - xhat * dgamma)
    return dx, dgamma, dbeta
