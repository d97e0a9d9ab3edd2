"""Tiled SGEMM with a fused alpha/beta + bias + activation epilogue.

Each block computes a BM x BN tile of C with TY x TX threads; each thread owns a
TM x TN register tile whose rows are ty + i*TY and columns tx + j*TX (strided,
so that shared-memory reads of B and global writes of C are consecutive across
tx). The K loop walks BK-deep slices of op(A) and op(B) staged in shared memory.
Transposes are handled by the index mapping in the tile loads: each load picks
the mapping under which consecutive threads read consecutive global addresses,
so no transposed copy is ever made. Every thread sums its K products in order,
so the result does not depend on the launch (the K loop is never split).

Two tile shapes are built from one template: 64x64 with a 4x4 register tile
(many blocks for the small GEMMs of a training step) and 128x128 with an 8x8
register tile (twice the arithmetic per shared-memory load, for GEMMs large
enough to fill the GPU with the bigger tiles).

Split-K: a GEMM with a small output and a very long K (a convolution's filter
gradient sums over every output pixel of the batch) would run on a handful of
blocks. With ``use_part`` set, block z of the grid sums only
K range [z*kchunk, (z+1)*kchunk) and writes its raw sums to part[z];
``splitk_sum`` then adds the slices in z order. kchunk depends on the shape
only, so the result is the same on every run and every GPU.
"""
from __future__ import annotations

from typing import NamedTuple

from numba import cuda, float32

from ._registry import kernel
from .elementwise import act_value

BK = 8      # depth of one shared-memory slice
PAD = 4     # shared row padding: the k-fastest tile stores hit distinct banks

_SIG = ("void(float32[:, ::1], float32[:, ::1], float32[:, ::1], float32[::1], "
        "float32[:, :, ::1], int32, int32, float32, float32, int32, int32, int64, int32)")


class TileConfig(NamedTuple):
    bm: int   # block tile rows (of C)
    bn: int   # block tile cols
    tm: int   # register tile rows per thread
    tn: int   # register tile cols per thread

    @property
    def block(self):
        """Threads per block as (x, y)."""
        return (self.bn // self.tn, self.bm // self.tm)


def _make_sgemm(cfg: TileConfig):
    """The SGEMM kernel for one tile shape (the sizes are compile-time constants:
    Numba freezes the closure's integers)."""
    BM, BN, TM, TN = cfg
    TY = BM // TM
    TX = BN // TN
    NT = TX * TY
    A_LOADS = (BM * BK) // NT   # elements of the A slice each thread loads
    B_LOADS = (BN * BK) // NT
    A_S_COLS = BM + PAD
    B_S_COLS = BN + PAD
    assert (BM * BK) % NT == 0 and (BN * BK) % NT == 0

    def sgemm(a, b, c, bias, part, trans_a, trans_b, alpha, beta, has_bias, act,
              kchunk, use_part):
        """c = act(alpha * op(a) @ op(b) + beta * c + bias); beta == 0 never reads c.

        op(a) is (M, K): a itself, or a.T when trans_a with a stored (K, M); op(b)
        likewise (K, N). act is an elementwise activation code (not softmax).
        With use_part: part[z] = op(a)[:, Kz] @ op(b)[Kz, :] for the K slice
        Kz = [z*kchunk, (z+1)*kchunk), and c is not touched.
        Launch: grid (ceil(M/BM), ceil(N/BN), ceil(K/kchunk)), block (TX, TY).
        """
        a_s = cuda.shared.array((BK, A_S_COLS), float32)
        b_s = cuda.shared.array((BK, B_S_COLS), float32)
        acc = cuda.local.array((TM, TN), float32)
        ra = cuda.local.array(TM, float32)
        rb = cuda.local.array(TN, float32)

        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        # Row tiles on grid x (no 65535 limit: M is B*Ho*Wo for a convolution).
        row0 = cuda.blockIdx.x * BM
        col0 = cuda.blockIdx.y * BN
        m_rows = c.shape[0]
        n_cols = c.shape[1]
        k_depth = a.shape[0] if trans_a else a.shape[1]
        k_lo = cuda.blockIdx.z * kchunk
        k_hi = min(k_lo + kchunk, k_depth)

        for i in range(TM):
            for j in range(TN):
                acc[i, j] = float32(0.0)

        for k0 in range(k_lo, k_hi, BK):
            for l in range(A_LOADS):
                e = tid + l * NT
                if trans_a:
                    # a is (K, M): consecutive threads take consecutive m.
                    mm = e % BM
                    kk = e // BM
                    gm = row0 + mm
                    gk = k0 + kk
                    v = a[gk, gm] if (gm < m_rows and gk < k_hi) else float32(0.0)
                else:
                    # a is (M, K): consecutive threads take consecutive k.
                    kk = e % BK
                    mm = e // BK
                    gm = row0 + mm
                    gk = k0 + kk
                    v = a[gm, gk] if (gm < m_rows and gk < k_hi) else float32(0.0)
                a_s[kk, mm] = v
            for l in range(B_LOADS):
                e = tid + l * NT
                if trans_b:
                    # b is (N, K): consecutive threads take consecutive k.
                    kk = e % BK
                    nn = e // BK
                    gn = col0 + nn
                    gk = k0 + kk
                    v = b[gn, gk] if (gn < n_cols and gk < k_hi) else float32(0.0)
                else:
                    # b is (K, N): consecutive threads take consecutive n.
                    nn = e % BN
                    kk = e // BN
                    gn = col0 + nn
                    gk = k0 + kk
                    v = b[gk, gn] if (gn < n_cols and gk < k_hi) else float32(0.0)
                b_s[kk, nn] = v
            cuda.syncthreads()

            for kk in range(BK):
                for i in range(TM):
                    ra[i] = a_s[kk, ty + i * TY]
                for j in range(TN):
                    rb[j] = b_s[kk, tx + j * TX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()

        if use_part:
            z = cuda.blockIdx.z
            for i in range(TM):
                gm = row0 + ty + i * TY
                if gm < m_rows:
                    for j in range(TN):
                        gn = col0 + tx + j * TX
                        if gn < n_cols:
                            part[z, gm, gn] = acc[i, j]
            return

        for i in range(TM):
            gm = row0 + ty + i * TY
            if gm < m_rows:
                for j in range(TN):
                    gn = col0 + tx + j * TX
                    if gn < n_cols:
                        v = alpha * acc[i, j]
                        if beta != float32(0.0):
                            v += beta * c[gm, gn]
                        if has_bias:
                            v += bias[gn]
                        c[gm, gn] = act_value(v, act)

    sgemm.__name__ = sgemm.__qualname__ = f"sgemm_{BM}x{BN}"
    return kernel(_SIG)(sgemm)


SMALL = TileConfig(64, 64, 4, 4)      # 256 threads, 16 results each
LARGE = TileConfig(128, 128, 8, 8)    # 256 threads, 64 results each
sgemm_64x64 = _make_sgemm(SMALL)
sgemm_128x128 = _make_sgemm(LARGE)


@kernel("void(float32[:, :, ::1], float32[:, ::1], float32, float32)")
def splitk_sum(part, c, alpha, beta):
    """c = alpha * (part[0] + part[1] + ...) + beta * c, the slices added in
    order; beta == 0 never reads c. One thread per element of c."""
    i = cuda.grid(1)
    n_cols = c.shape[1]
    if i < c.shape[0] * n_cols:
        r = i // n_cols
        col = i - r * n_cols
        s = part[0, r, col]
        for z in range(1, part.shape[0]):
            s += part[z, r, col]
        v = alpha * s
        if beta != float32(0.0):
            v += beta * c[r, col]
        c[r, col] = v
