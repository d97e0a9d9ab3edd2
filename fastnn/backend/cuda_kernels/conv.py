"""Convolution, pooling, zero padding and batch normalisation over NHWC images.

A convolution is a GEMM over an im2col matrix: im2col writes, for every output
pixel p = (b, oh, ow) and kernel tap k = (ki, kj, c), the input value that tap
sees (zero in the padding) into col[p, k]; the tiled SGEMM then does the
arithmetic (forward: col @ w; filter gradient: col.T @ dz, split over K;
data gradient: dz @ w.T into the same buffer, folded back by col2im).
col2im and every backward pass here gather instead of scatter: each thread
owns one output element and adds its contributions in a fixed order, so no
atomics are needed and results never depend on scheduling.
"""
from __future__ import annotations

import math

from numba import cuda, float32, float64

from ._registry import kernel

_F4 = "float32[:, :, :, ::1]"
_F2 = "float32[:, ::1]"
_I64 = "int64"


@kernel(f"void({_F4}, {_F2}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64}, "
        f"{_I64}, {_I64}, {_I64}, {_I64})")
def im2col(x, col, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """col[(b*ho + oh)*wo + ow, (ki*kw + kj)*C + c] = x[b, oh*sh - pt + ki*dh,
    ow*sw - pl + kj*dw, c], or 0 outside the image. One thread per element of
    col; consecutive threads take consecutive channels (contiguous in x)."""
    i = cuda.grid(1)
    k_len = col.shape[1]
    if i >= col.shape[0] * k_len:
        return
    p = i // k_len
    k = i - p * k_len
    n_c = x.shape[3]
    tap = k // n_c
    c = k - tap * n_c
    ki = tap // kw
    kj = tap - ki * kw
    b = p // (ho * wo)
    rem = p - b * (ho * wo)
    oh = rem // wo
    ow = rem - oh * wo
    h = oh * sh - pt + ki * dh
    w = ow * sw - pl + kj * dw
    if h >= 0 and h < x.shape[1] and w >= 0 and w < x.shape[2]:
        col[p, k] = x[b, h, w, c]
    else:
        col[p, k] = float32(0.0)


@kernel(f"void({_F2}, {_F4}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64}, "
        f"{_I64}, {_I64}, {_I64}, {_I64})")
def col2im(dcol, dx, kh, kw, sh, sw, dh, dw, pt, pl, ho, wo):
    """dx[b, h, w, c] = sum of dcol[p, k] over the (p, k) that im2col read from
    (b, h, w, c), taps in (ki, kj) order. One thread per element of dx."""
    i = cuda.grid(1)
    n_h = dx.shape[1]
    n_w = dx.shape[2]
    n_c = dx.shape[3]
    if i >= dx.shape[0] * n_h * n_w * n_c:
        return
    c = i % n_c
    t = i // n_c
    w = t % n_w
    t = t // n_w
    h = t % n_h
    b = t // n_h
    s = float32(0.0)
    for ki in range(kh):
        num_h = h + pt - ki * dh
        if num_h < 0 or num_h % sh != 0:
            continue
        oh = num_h // sh
        if oh >= ho:
            continue
        for kj in range(kw):
            num_w = w + pl - kj * dw
            if num_w < 0 or num_w % sw != 0:
                continue
            ow = num_w // sw
            if ow >= wo:
                continue
            s += dcol[(b * ho + oh) * wo + ow, (ki * kw + kj) * n_c + c]
    dx[b, h, w, c] = s


@kernel(f"void({_F2}, float32[:, :, ::1], {_I64})")
def col_sums_partial(dz, part, rows_per_slice):
    """part[z, 0, c] = sum of dz[r, c] over the rows of slice z, in row order
    (slice z = rows [z*rows_per_slice, (z+1)*rows_per_slice)). Grid
    (ceil(C/TPB), slices); splitk_sum then adds the slices in order."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    z = cuda.blockIdx.y
    if c >= dz.shape[1]:
        return
    r0 = z * rows_per_slice
    r1 = min(r0 + rows_per_slice, dz.shape[0])
    s = float32(0.0)
    for r in range(r0, r1):
        s += dz[r, c]
    part[z, 0, c] = s


# ---- pooling -------------------------------------------------------------

@kernel(f"void({_F4}, {_F4}, int32[:, :, :, ::1], {_I64}, {_I64}, {_I64}, {_I64}, "
        f"{_I64}, {_I64})",
        f"void({_F4}, {_F4}, int64[:, :, :, ::1], {_I64}, {_I64}, {_I64}, {_I64}, "
        f"{_I64}, {_I64})")
def maxpool_fwd(x, out, argmax, ph, pw, sh, sw, pt, pl):
    """out = max over the window's in-image part (first maximum in row-major
    window order; a NaN replaces the running maximum, so it propagates);
    argmax = (h*W + w)*C + c of that element. One thread per output element."""
    i = cuda.grid(1)
    ho = out.shape[1]
    wo = out.shape[2]
    n_c = out.shape[3]
    if i >= out.shape[0] * ho * wo * n_c:
        return
    c = i % n_c
    t = i // n_c
    ow = t % wo
    t = t // wo
    oh = t % ho
    b = t // ho
    h0 = oh * sh - pt
    w0 = ow * sw - pl
    hs = max(h0, 0)
    ws = max(w0, 0)
    he = min(h0 + ph, x.shape[1])
    we = min(w0 + pw, x.shape[2])
    best = x[b, hs, ws, c]
    arg = (hs * x.shape[2] + ws) * n_c + c
    for h in range(hs, he):
        for w in range(ws, we):
            v = x[b, h, w, c]
            if v > best or (v != v and best == best):
                best = v
                arg = (h * x.shape[2] + w) * n_c + c
    out[b, oh, ow, c] = best
    argmax[b, oh, ow, c] = arg


@kernel(f"void({_F2}, int32[:, ::1], {_F2}, {_I64})",
        f"void({_F2}, int64[:, ::1], {_F2}, {_I64})")
def maxpool_bwd(dy, argmax, dx, n_c):
    """Per image b and channel c: dx[b, argmax[b, j]] += dy[b, j] for the
    outputs j of channel c, in j order (dx zeroed beforehand). An argmax of
    channel c points at channel c, so threads own disjoint elements of dx.
    dy, argmax: (B, n_out); dx: (B, n_in). One thread per (b, c)."""
    i = cuda.grid(1)
    if i >= dy.shape[0] * n_c:
        return
    b = i // n_c
    c = i - b * n_c
    for j in range(c, dy.shape[1], n_c):
        dx[b, argmax[b, j]] += dy[b, j]


@kernel(f"void({_F4}, {_F4}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64})")
def avgpool_fwd(x, out, ph, pw, sh, sw, pt, pl):
    """out = mean of the window's in-image elements (summed row-major, then
    times 1/count). One thread per output element."""
    i = cuda.grid(1)
    ho = out.shape[1]
    wo = out.shape[2]
    n_c = out.shape[3]
    if i >= out.shape[0] * ho * wo * n_c:
        return
    c = i % n_c
    t = i // n_c
    ow = t % wo
    t = t // wo
    oh = t % ho
    b = t // ho
    h0 = oh * sh - pt
    w0 = ow * sw - pl
    hs = max(h0, 0)
    ws = max(w0, 0)
    he = min(h0 + ph, x.shape[1])
    we = min(w0 + pw, x.shape[2])
    s = float32(0.0)
    for h in range(hs, he):
        for w in range(ws, we):
            s += x[b, h, w, c]
    out[b, oh, ow, c] = s * (float32(1.0) / float32((he - hs) * (we - ws)))


@kernel(f"void({_F4}, {_F4}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64}, {_I64})")
def avgpool_bwd(dy, dx, ph, pw, sh, sw, pt, pl):
    """dx[b, h, w, c] = sum over the windows holding (h, w), in (oh, ow)
    order, of dy * 1/count. One thread per element of dx."""
    i = cuda.grid(1)
    n_h = dx.shape[1]
    n_w = dx.shape[2]
    n_c = dx.shape[3]
    if i >= dx.shape[0] * n_h * n_w * n_c:
        return
    c = i % n_c
    t = i // n_c
    w = t % n_w
    t = t // n_w
    h = t % n_h
    b = t // n_h
    ho = dy.shape[1]
    wo = dy.shape[2]
    # Windows with oh*sh - pt <= h < oh*sh - pt + ph.
    oh_lo = max(0, (h + pt - ph) // sh + 1) if h + pt - ph >= 0 else 0
    oh_hi = min(ho - 1, (h + pt) // sh)
    ow_lo = max(0, (w + pl - pw) // sw + 1) if w + pl - pw >= 0 else 0
    ow_hi = min(wo - 1, (w + pl) // sw)
    s = float32(0.0)
    for oh in range(oh_lo, oh_hi + 1):
        h0 = oh * sh - pt
        cnt_h = min(h0 + ph, n_h) - max(h0, 0)
        for ow in range(ow_lo, ow_hi + 1):
            w0 = ow * sw - pl
            cnt_w = min(w0 + pw, n_w) - max(w0, 0)
            s += dy[b, oh, ow, c] * (float32(1.0) / float32(cnt_h * cnt_w))
    dx[b, h, w, c] = s


@kernel("void(float32[:, :, ::1], float32[:, ::1])")
def global_avgpool_fwd(x, out):
    """out[b, c] = (sum over pixels, in order, of x[b, p, c]) * 1/HW; x is
    (B, HW, C). One thread per (b, c)."""
    i = cuda.grid(1)
    n_c = out.shape[1]
    if i >= out.shape[0] * n_c:
        return
    b = i // n_c
    c = i - b * n_c
    s = float32(0.0)
    for p in range(x.shape[1]):
        s += x[b, p, c]
    out[b, c] = s * (float32(1.0) / float32(x.shape[1]))


@kernel("void(float32[:, ::1], float32[:, :, ::1])")
def global_avgpool_bwd(dy, dx):
    """dx[b, p, c] = dy[b, c] * 1/HW. One thread per element of dx."""
    i = cuda.grid(1)
    hw = dx.shape[1]
    n_c = dx.shape[2]
    if i >= dx.shape[0] * hw * n_c:
        return
    c = i % n_c
    b = i // (hw * n_c)
    p = (i // n_c) - b * hw
    dx[b, p, c] = dy[b, c] * (float32(1.0) / float32(hw))


@kernel(f"void({_F4}, {_F4}, {_I64}, {_I64}, {_I64}, {_I64})")
def zeropad_fwd(x, out, pt, pb, pl, pr):
    """out = x surrounded by zeros. One thread per element of out."""
    i = cuda.grid(1)
    n_h = out.shape[1]
    n_w = out.shape[2]
    n_c = out.shape[3]
    if i >= out.shape[0] * n_h * n_w * n_c:
        return
    c = i % n_c
    t = i // n_c
    w = t % n_w
    t = t // n_w
    h = t % n_h
    b = t // n_h
    hi = h - pt
    wi = w - pl
    if hi >= 0 and hi < x.shape[1] and wi >= 0 and wi < x.shape[2]:
        out[b, h, w, c] = x[b, hi, wi, c]
    else:
        out[b, h, w, c] = float32(0.0)


@kernel(f"void({_F4}, {_F4}, {_I64}, {_I64})")
def zeropad_bwd(dy, dx, pt, pl):
    """dx = the interior of dy. One thread per element of dx."""
    i = cuda.grid(1)
    n_h = dx.shape[1]
    n_w = dx.shape[2]
    n_c = dx.shape[3]
    if i >= dx.shape[0] * n_h * n_w * n_c:
        return
    c = i % n_c
    t = i // n_c
    w = t % n_w
    t = t // n_w
    h = t % n_h
    b = t // n_h
    dx[b, h, w, c] = dy[b, h + pt, w + pl, c]


# ---- batch normalisation over (rows, C) -------------------------------------

BN_CHUNK = 256   # rows per statistics chunk (the CPU kernels' chunking)


@kernel(f"void({_F2}, {_F2}, float32[::1], float64[:, :, ::1], int32)", allow_f64=True)
def bn_chunk_sums(a, b, shift, part, same):
    """For rows chunk z and channel c, in float64, rows in order:
    same:  part[z, 0, c] = sum (a - shift), part[z, 1, c] = sum (a - shift)^2
    else:  part[z, 0, c] = sum a,           part[z, 1, c] = sum a * (b - shift).
    Grid (ceil(C/blockDim), chunks)."""
    c = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    z = cuda.blockIdx.y
    if c >= a.shape[1]:
        return
    r0 = z * BN_CHUNK
    r1 = min(r0 + BN_CHUNK, a.shape[0])
    sh = float64(shift[c])
    s = float64(0.0)
    q = float64(0.0)
    if same:
        for r in range(r0, r1):
            v = float64(a[r, c]) - sh
            s += v
            q += v * v
    else:
        for r in range(r0, r1):
            av = float64(a[r, c])
            s += av
            q += av * (float64(b[r, c]) - sh)
    part[z, 0, c] = s
    part[z, 1, c] = q


@kernel("void(float64[:, :, ::1], float32[::1], float32[::1], int32, float32[::1], "
        "int32, float32[::1], float32[::1], float32[::1], float32[::1], float32[:, ::1], "
        "int64, float32, float32)", allow_f64=True)
def bn_train_stats(part, shift, gamma, has_gamma, beta, has_beta, moving_mean,
                   moving_var, save_mean, save_invstd, coef, rows, momentum, epsilon):
    """Per channel: folds the chunk sums in chunk order, then mean, biased
    variance, invstd, the moving statistics and the affine coefficients
    coef[0] = invstd*gamma, coef[1] = beta. One thread per channel."""
    c = cuda.grid(1)
    if c >= shift.shape[0]:
        return
    s = part[0, 0, c]
    q = part[0, 1, c]
    for z in range(1, part.shape[0]):
        s += part[z, 0, c]
        q += part[z, 1, c]
    n = float64(rows)
    d = s / n
    var = q / n - d * d
    if var < float64(0.0):
        var = float64(0.0)
    mean = float64(shift[c]) + d
    invstd = float64(1.0) / math.sqrt(var + float64(epsilon))
    save_mean[c] = float32(mean)
    save_invstd[c] = float32(invstd)
    g = float64(gamma[c]) if has_gamma else float64(1.0)
    coef[0, c] = float32(invstd * g)
    coef[1, c] = beta[c] if has_beta else float32(0.0)
    one = float32(1.0)
    moving_mean[c] = moving_mean[c] * momentum + float32(mean) * (one - momentum)
    moving_var[c] = moving_var[c] * momentum + float32(var) * (one - momentum)


@kernel(f"void({_F2}, float32[::1], {_F2}, {_F2})")
def bn_affine(x, mean, coef, out):
    """out[r, c] = (x[r, c] - mean[c]) * coef[0, c] + coef[1, c]; one thread
    per element."""
    i = cuda.grid(1)
    n_c = x.shape[1]
    if i < x.shape[0] * n_c:
        r = i // n_c
        c = i - r * n_c
        out[r, c] = (x[r, c] - mean[c]) * coef[0, c] + coef[1, c]


@kernel(f"void({_F2}, float32[::1], int32, float32[::1], int32, float32[::1], "
        f"float32[::1], float32, {_F2})")
def bn_infer(x, gamma, has_gamma, beta, has_beta, moving_mean, moving_var, epsilon, out):
    """out = (x - moving_mean) * (gamma / sqrt(moving_var + eps)) + beta."""
    i = cuda.grid(1)
    n_c = x.shape[1]
    if i < x.shape[0] * n_c:
        r = i // n_c
        c = i - r * n_c
        g = gamma[c] if has_gamma else float32(1.0)
        s = g / math.sqrt(moving_var[c] + epsilon)
        out[r, c] = (x[r, c] - moving_mean[c]) * s + (beta[c] if has_beta else float32(0.0))


@kernel("void(float64[:, :, ::1], float32[::1], int32, float32[::1], float32[::1], "
        "int32, float32[::1], int32, float32[:, ::1], int64)", allow_f64=True)
def bn_bwd_coefs(part, gamma, has_gamma, save_invstd, dgamma, has_dgamma, dbeta,
                 has_dbeta, coef, rows):
    """Per channel, from part (sum dy, sum dy*(x - mean)) folded in chunk order:
    dbeta, dgamma, and dx = coef[0]*dy + coef[1]*(x - mean) + coef[2]."""
    c = cuda.grid(1)
    if c >= save_invstd.shape[0]:
        return
    s = part[0, 0, c]
    q = part[0, 1, c]
    for z in range(1, part.shape[0]):
        s += part[z, 0, c]
        q += part[z, 1, c]
    n = float64(rows)
    inv = float64(save_invstd[c])
    dg = q * inv
    if has_dbeta:
        dbeta[c] = float32(s)
    if has_dgamma:
        dgamma[c] = float32(dg)
    ac = (float64(gamma[c]) if has_gamma else float64(1.0)) * inv
    coef[0, c] = float32(ac)
    coef[1, c] = float32(-ac * inv * dg / n)
    coef[2, c] = float32(-ac * s / n)


@kernel(f"void({_F2}, {_F2}, float32[::1], {_F2}, {_F2})")
def bn_bwd_apply(x, dy, mean, coef, dx):
    """dx = coef[0]*dy + coef[1]*(x - mean) + coef[2]; one thread per element."""
    i = cuda.grid(1)
    n_c = x.shape[1]
    if i < x.shape[0] * n_c:
        r = i // n_c
        c = i - r * n_c
        dx[r, c] = coef[0, c] * dy[r, c] + coef[1, c] * (x[r, c] - mean[c]) + coef[2, c]
