"""Data movement: gathering a batch's rows by index on the device."""
from __future__ import annotations

from numba import cuda

from ._registry import kernel


@kernel("void(float32[:, ::1], int64[::1], float32[:, ::1])",
        "void(int32[:, ::1], int64[::1], int32[:, ::1])")
def gather_rows(src, idx, dst):
    """dst[i, :] = src[idx[i], :]; one thread per element of dst, so that
    consecutive threads copy consecutive addresses of a row. The host has
    checked every index against src.shape[0]."""
    k = cuda.grid(1)
    row_len = dst.shape[1]
    if k < dst.shape[0] * row_len:
        i = k // row_len
        c = k - i * row_len
        dst[i, c] = src[idx[i], c]


@kernel("void(float32[:, ::1], int64, float32[:, ::1], int64, int64)")
def copy_cols(src, src_col, dst, dst_col, width):
    """dst[r, dst_col + c] = src[r, src_col + c] for c < width, every row r:
    one input of a last-axis concatenation (or one output of a split)."""
    k = cuda.grid(1)
    if k < dst.shape[0] * width:
        r = k // width
        c = k - r * width
        dst[r, dst_col + c] = src[r, src_col + c]
