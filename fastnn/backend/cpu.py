"""The CPU backend: NumPy arrays in, the C kernels of ext/ (through fastnn._C) do the work.

Every op writes into caller-provided arrays. Argument checking (dtypes,
shapes, contiguity, aliasing) happens in ``fastnn._C``; this module only maps
the backend contract onto the kernel wrappers.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .. import _C
from .base import ACTIVATIONS, LOSS_KINDS, METRIC_KINDS, Backend, check_kind
from .cpu_conv import CPUConvOps

_ACT_CODES: Dict[str, int] = {name: _C.ACTIVATION_CODES[name] for name in ACTIVATIONS}

# Dropout's uniform draws are kept per shape so a training step allocates
# nothing; a model sees few distinct batch shapes (full batch, last batch).
_MAX_SCRATCH_SHAPES = 16


# Start of every array the backend allocates from ALIGNED_MIN_BYTES up: a
# cache line.  NumPy hands large arrays out 16 bytes past a page boundary, so
# every 64-byte vector load from them straddles two lines; the GEMM's sparse
# path reads a 1024-wide weight in place and took about 25 % longer that way.
# Smaller arrays come straight from NumPy: a few lines are cached either way,
# and the extra steps cost train_on_batch, which allocates its two
# accumulators per call, about 7 us.
_ALIGN = 64
ALIGNED_MIN_BYTES = 4096


def _aligned_array(shape: Sequence[int], dtype: Any, zeroed: bool) -> np.ndarray:
    """np.empty or np.zeros(shape, dtype), starting on an ``_ALIGN``-byte
    boundary when it takes at least ``ALIGNED_MIN_BYTES``."""
    dt = np.dtype(dtype)
    shape = tuple(shape)
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes < ALIGNED_MIN_BYTES:
        return np.zeros(shape, dtype=dt) if zeroed else np.empty(shape, dtype=dt)
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % _ALIGN
    out = raw[start:start + nbytes].view(dt).reshape(shape)
    if zeroed:
        out.fill(0)
    return out


def _act_code(act: str) -> int:
    try:
        return _ACT_CODES[act]
    except (KeyError, TypeError):
        raise ValueError(f"unknown activation {act!r}; expected one of {ACTIVATIONS}") from None


class CPUBackend(CPUConvOps, Backend):
    """Backend over NumPy arrays and the OpenMP C kernels.

    Convolution, pooling and batch-norm ops come from ``CPUConvOps``
    (fastnn/backend/cpu_conv.py, over fastnn._conv); the rest is here.
    """

    name = "cpu"

    def __init__(self) -> None:
        self._uniform: Dict[Tuple[int, ...], np.ndarray] = {}
        self._gathers = {np.dtype(np.float32): _C.gather_rows_f32,
                         np.dtype(np.int32): _C.gather_rows_i32}
        self._losses = {
            "softmax_cce_logits": lambda p, t, g, pr: _C.softmax_cce_logits(p, t, pr, g),
            "softmax_sparse_cce_logits":
                lambda p, t, g, pr: _C.softmax_sparse_cce_logits(p, t, pr, g),
            "cce_probs": lambda p, t, g, pr: _C.cce_probs(p, t, g),
            "sparse_cce_probs": lambda p, t, g, pr: _C.sparse_cce_probs(p, t, g),
            "sigmoid_bce_logits": lambda p, t, g, pr: _C.sigmoid_bce_logits(p, t, pr, g),
            "bce_probs": lambda p, t, g, pr: _C.bce_probs(p, t, g),
            "mse": lambda p, t, g, pr: _C.mse(p, t, g),
            "mae": lambda p, t, g, pr: _C.mae(p, t, g),
        }
        self._metrics = {
            "categorical_accuracy": _C.categorical_accuracy_sum,
            "sparse_categorical_accuracy": _C.sparse_categorical_accuracy_sum,
            "binary_accuracy": _C.binary_accuracy_sum,
            "mse": _C.mse_sum,
            "mae": _C.mae_sum,
        }
        assert set(self._losses) == set(LOSS_KINDS)
        assert set(self._metrics) == set(METRIC_KINDS)

    # ---- memory ---------------------------------------------------------
    def empty(self, shape: Sequence[int], dtype: Any = "float32") -> np.ndarray:
        return _aligned_array(shape, dtype, zeroed=False)

    def zeros(self, shape: Sequence[int], dtype: Any = "float32") -> np.ndarray:
        return _aligned_array(shape, dtype, zeroed=True)

    def asarray(self, host: Any) -> np.ndarray:
        src = np.asarray(host)
        if src.dtype.hasobject:
            return np.array(src, copy=True, order="C")
        out = _aligned_array(src.shape, src.dtype, zeroed=False)
        np.copyto(out, src)
        return out

    def stage(self, host: Any) -> np.ndarray:
        """The data set as the kernels want it, sharing memory when it already fits.

        float32 and int32 arrays are kept as they are (made C-contiguous if
        needed); other integer arrays become int32 (labels), anything else
        float32.
        """
        arr = np.asarray(host)
        if arr.dtype == np.float32 or arr.dtype == np.int32:
            # aligned too: ascontiguousarray passes a misaligned view through,
            # and the kernels refuse one
            return np.require(arr, requirements="CA")
        if arr.dtype.kind in "iu":
            return np.ascontiguousarray(arr, dtype=np.int32)
        return np.ascontiguousarray(arr, dtype=np.float32)

    def to_numpy(self, arr: Any) -> np.ndarray:
        return np.asarray(arr)

    def copy_(self, dst: np.ndarray, src: np.ndarray) -> None:
        if dst.shape != src.shape or dst.dtype != src.dtype:
            raise ValueError(f"copy_: 'dst' {dst.shape} {dst.dtype} and 'src' "
                             f"{src.shape} {src.dtype} must have the same shape and dtype")
        np.copyto(dst, src)

    def fill_(self, dst: np.ndarray, value: float) -> None:
        dst.fill(value)

    def synchronize(self) -> None:
        return None

    # ---- dense algebra --------------------------------------------------
    def gemm(self, a: np.ndarray, b: np.ndarray, out: np.ndarray, trans_a: bool = False,
             trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0) -> None:
        _C.sgemm(a, b, out, trans_a, trans_b, alpha, beta)

    def dense_fwd(self, x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray], act: str,
                  out: np.ndarray) -> None:
        _C.dense_fwd(_act_code(act), x, w, b, out)

    def dense_bwd(self, x: np.ndarray, w: np.ndarray, dz: np.ndarray, dw: np.ndarray,
                  db: Optional[np.ndarray], dx: Optional[np.ndarray]) -> None:
        _C.sgemm(x, dz, dw, True, False)
        if db is not None:
            _C.bias_grad(dz, db)
        if dx is not None:
            _C.sgemm(dz, w, dx, False, True)

    def bias_act_fwd(self, x: np.ndarray, b: Optional[np.ndarray], act: str,
                     out: np.ndarray) -> None:
        _C.bias_act_fwd(_act_code(act), x, b, out)

    def act_bwd(self, act: str, y: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> None:
        _C.act_bwd(_act_code(act), y, dy, dx)

    def bias_grad(self, dz: np.ndarray, db: np.ndarray) -> None:
        _C.bias_grad(dz, db)

    def act_bias_bwd(self, act: str, y: np.ndarray, dy: np.ndarray, dz: np.ndarray,
                     db: Optional[np.ndarray]) -> None:
        _C.act_bias_bwd(_act_code(act), y, dy, dz, db)

    # ---- losses and metrics --------------------------------------------
    def loss(self, kind: str, pred: np.ndarray, target: np.ndarray, grad: np.ndarray,
             acc: np.ndarray, probs: Optional[np.ndarray] = None) -> None:
        fn = self._losses.get(kind)
        if fn is None:
            check_kind(kind, LOSS_KINDS, "loss kind")
        if probs is None and kind.endswith("_logits"):
            raise ValueError(f"loss: kind {kind!r} needs the 'probs' output array")
        acc[0] += fn(pred, target, grad, probs)

    def metric(self, kind: str, pred: np.ndarray, target: np.ndarray,
               acc: np.ndarray) -> None:
        fn = self._metrics.get(kind)
        if fn is None:
            check_kind(kind, METRIC_KINDS, "metric kind")
        acc[0] += fn(pred, target)

    # ---- optimisers (flat buffers) --------------------------------------
    def sumsq(self, x: np.ndarray) -> float:
        return _C.sumsq(x)

    def scale_(self, x: np.ndarray, s: float) -> None:
        _C.scale(x, s)

    def sgd_step(self, p: np.ndarray, g: np.ndarray, velocity: Optional[np.ndarray], *,
                 lr: float, momentum: float, nesterov: bool, weight_decay: float,
                 grad_scale: float, clip_value: float) -> None:
        _C.sgd_step(p, g, velocity, lr, momentum, nesterov, weight_decay, grad_scale,
                    clip_value)

    def adam_step(self, p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *,
                  lr: float, beta_1: float, beta_2: float, epsilon: float, step: int,
                  weight_decay: float, grad_scale: float, clip_value: float) -> None:
        _C.adam_step(p, g, m, v, lr, beta_1, beta_2, epsilon, step, weight_decay,
                     grad_scale, clip_value)

    def rmsprop_step(self, p: np.ndarray, g: np.ndarray, vel: np.ndarray,
                     mom: Optional[np.ndarray], avg: Optional[np.ndarray], *, lr: float,
                     rho: float, momentum: float, epsilon: float, weight_decay: float,
                     grad_scale: float, clip_value: float) -> None:
        _C.rmsprop_step(p, g, vel, mom, avg, lr, rho, momentum, epsilon, weight_decay,
                        grad_scale, clip_value)

    # ---- data movement and elementwise ----------------------------------
    def gather_rows(self, src: np.ndarray, idx: np.ndarray, out: np.ndarray) -> None:
        """out[i] = src[idx[i]] for src (N, ...) float32 or int32 and idx int64 (B,)."""
        # Called twice per training step: the common case (C-contiguous arrays
        # of matching row shape) takes a few attribute reads before the kernel,
        # and the full diagnosis runs only when something is off.
        gather = self._gathers.get(getattr(src, "dtype", None))
        if (gather is None or type(out) is not np.ndarray or type(src) is not np.ndarray
                or src.ndim < 1 or out.ndim < 1 or not src.flags.c_contiguous
                or not out.flags.c_contiguous or out.shape[1:] != src.shape[1:]):
            self._gather_rows_diagnose(src, out)
        if src.ndim == 1:  # labels
            src, out = src[:, None], out[:, None]
        elif src.ndim != 2:
            row_len = math.prod(src.shape[1:])
            src = src.reshape(src.shape[0], row_len)
            out = out.reshape(out.shape[0], row_len)
        gather(src, idx, out)

    def _gather_rows_diagnose(self, src: Any, out: Any) -> None:
        for name, arr in (("src", src), ("out", out)):
            if not isinstance(arr, np.ndarray):
                raise TypeError(f"gather_rows: argument '{name}' must be a numpy.ndarray, "
                                f"got {type(arr).__name__}")
            if arr.ndim < 1:
                raise ValueError(f"gather_rows: argument '{name}' must have a leading "
                                 f"row axis, got shape {arr.shape}")
            # A reshape of a non-contiguous array would be a copy: writes to
            # 'out' would be lost and reads of 'src' would copy the data set.
            if not arr.flags.c_contiguous:
                raise ValueError(f"gather_rows: argument '{name}' must be C-contiguous")
        if out.shape[1:] != src.shape[1:]:
            raise ValueError(f"gather_rows: argument 'out' has shape {out.shape} but rows "
                             f"of 'src' {src.shape} have shape {src.shape[1:]}")
        raise TypeError(f"gather_rows: argument 'src' must have dtype float32 or int32, "
                        f"got {src.dtype}")

    def dropout_fwd(self, x: np.ndarray, rate: float, rng: Any, mask: np.ndarray,
                    out: np.ndarray) -> None:
        u = self._uniform_scratch(np.shape(x))
        rng.random(dtype=np.float32, out=u)
        _C.dropout_fwd(x, u, rate, mask, out)

    def _uniform_scratch(self, shape: Tuple[int, ...]) -> np.ndarray:
        u = self._uniform.get(shape)
        if u is None:
            if len(self._uniform) >= _MAX_SCRATCH_SHAPES:
                self._uniform.clear()
            u = self._uniform[shape] = _aligned_array(shape, np.float32, zeroed=False)
        return u

    @staticmethod
    def _check_last_axis_parts(fn: str, parts: Sequence[np.ndarray], parts_name: str,
                               whole: np.ndarray, whole_name: str) -> None:
        """The parts share whole's leading axes and their last axes add up to it."""
        if not isinstance(whole, np.ndarray) or whole.ndim < 1:
            raise TypeError(f"{fn}: argument '{whole_name}' must be a numpy.ndarray "
                            f"with at least one axis")
        total = 0
        for i, part in enumerate(parts):
            if not isinstance(part, np.ndarray):
                raise TypeError(f"{fn}: {parts_name}[{i}] must be a numpy.ndarray, "
                                f"got {type(part).__name__}")
            if part.shape[:-1] != whole.shape[:-1] or part.dtype != whole.dtype:
                raise ValueError(f"{fn}: {parts_name}[{i}] has shape {part.shape} and "
                                 f"dtype {part.dtype}; '{whole_name}' {whole.shape} "
                                 f"{whole.dtype} needs leading axes "
                                 f"{whole.shape[:-1]} and its dtype")
            if np.shares_memory(part, whole):
                raise ValueError(f"{fn}: {parts_name}[{i}] overlaps '{whole_name}'")
            total += part.shape[-1]
        if total != whole.shape[-1]:
            raise ValueError(f"{fn}: the last axes of '{parts_name}' add up to {total}, "
                             f"but '{whole_name}' has {whole.shape[-1]}")

    def concat_last(self, xs: Sequence[np.ndarray], out: np.ndarray) -> None:
        """out = the arrays ``xs`` joined along their last axis (copies only)."""
        self._check_last_axis_parts("concat_last", xs, "xs", out, "out")
        col = 0
        for x in xs:
            width = x.shape[-1]
            out[..., col:col + width] = x
            col += width

    def split_last(self, x: np.ndarray, outs: Sequence[np.ndarray]) -> None:
        """The inverse of concat_last: outs[i] = consecutive last-axis slices of x."""
        self._check_last_axis_parts("split_last", outs, "outs", x, "x")
        col = 0
        for o in outs:
            width = o.shape[-1]
            o[...] = x[..., col:col + width]
            col += width

    def mul(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        _C.mul(a, b, out)

    def add(self, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
        _C.add(a, b, out)
