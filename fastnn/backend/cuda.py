"""The GPU backend: every backend op as Numba CUDA kernels on device arrays.

Arrays are Numba device arrays (``numba.cuda.device_array`` and friends),
float32 unless an op says otherwise, C-contiguous. The kernels live in
``fastnn.backend.cuda_kernels``; this module checks arguments, picks launch
configurations and keeps the small device buffers the ops reuse (index uploads,
dropout draws, per-row loss scratch, reduction partials), so a training step
allocates nothing on the device after its first batch and never waits for the
GPU: losses and metrics are added into a device accumulator.

Importing this module imports numba; nothing else in fastnn does.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .base import ACTIVATIONS, LOSS_KINDS, METRIC_KINDS, Backend, check_kind
from .conv_shapes import conv_output_size, normalize_pair, resolve_padding

try:
    import numba
    from numba import cuda
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "the 'cuda' device needs numba-cuda, which is not installed: "
        "pip install fastnn[cuda]  (numba-cuda with the CUDA 12/13 wheels, "
        "e.g. pip install 'numba-cuda[cu13]')"
    ) from exc

from .cuda_kernels import conv as _kc
from .cuda_kernels import data as _kd
from .cuda_kernels import elementwise as _ke
from .cuda_kernels import gemm as _kg
from .cuda_kernels import loss as _kl
from .cuda_kernels import optim as _ko

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_I32 = np.dtype(np.int32)
_I64 = np.dtype(np.int64)

_TPB = _ke.TPB

_LOGITS_KINDS = ("softmax_cce_logits", "softmax_sparse_cce_logits", "sigmoid_bce_logits")
_SPARSE_KINDS = ("softmax_sparse_cce_logits", "sparse_cce_probs")
# Per-element losses scale the gradient by 1/(rows*cols); the others by 1/rows.
_PER_ELEMENT_KINDS = ("sigmoid_bce_logits", "bce_probs", "mse", "mae")
_LOSS_KERNELS = {
    "softmax_cce_logits": _kl.softmax_cce_logits,
    "softmax_sparse_cce_logits": _kl.softmax_sparse_cce_logits,
    "cce_probs": _kl.cce_probs,
    "sparse_cce_probs": _kl.sparse_cce_probs,
    "sigmoid_bce_logits": _kl.sigmoid_bce_logits,
    "bce_probs": _kl.bce_probs,
    "mse": _kl.mse,
    "mae": _kl.mae,
}
_METRIC_KERNELS = {
    "categorical_accuracy": _kl.categorical_accuracy,
    "sparse_categorical_accuracy": _kl.sparse_categorical_accuracy,
    "mse": _kl.mse_metric,
    "mae": _kl.mae_metric,
}


@lru_cache(maxsize=None)
def _blocks(n: int, per_block: int = _TPB) -> int:
    """Blocks of ``per_block`` threads covering n items."""
    return (n + per_block - 1) // per_block


# Rows per slice when a column sum or a GEMM's K is cut into slices (fixed,
# so results depend on shapes only).
_COLSUM_SLICE = 2048


def _splitk_chunk(k: int) -> int:
    """K per split-K slice: at least _COLSUM_SLICE, and at most 64 slices."""
    per = -(-k // 64)
    per = max(_COLSUM_SLICE, per)
    return -(-per // _kg.BK) * _kg.BK


def _pointwise(kh: int, kw: int, s: Tuple[int, int], p: Tuple[int, ...]) -> bool:
    """A 1x1 kernel at unit strides without padding: im2col(x) is x itself."""
    return kh == 1 and kw == 1 and tuple(s) == (1, 1) and not any(p)


@lru_cache(maxsize=None)
def _gemm_launch(m: int, n: int, large_min_blocks: int) -> Tuple[Any, Tuple[int, int],
                                                                 Tuple[int, int]]:
    """(kernel, grid, block) for an m x n output: the 128x128 tiles once they
    alone give every SM a block, else the 64x64 tiles (4x the blocks)."""
    big = _kg.LARGE
    big_grid = ((m + big.bm - 1) // big.bm, (n + big.bn - 1) // big.bn)
    if big_grid[0] * big_grid[1] >= large_min_blocks:
        return _kg.sgemm_128x128, big_grid, big.block
    small = _kg.SMALL
    return (_kg.sgemm_64x64, ((m + small.bm - 1) // small.bm, (n + small.bn - 1) // small.bn),
            small.block)


class CUDABackend(Backend):
    """Backend ops on an NVIDIA GPU through Numba CUDA kernels.

    Raises:
        RuntimeError: at construction, when no CUDA GPU is usable and the Numba
            simulator is not enabled.
    """

    name = "cuda"

    def __init__(self) -> None:
        self.simulated: bool = bool(numba.config.ENABLE_CUDASIM)
        if not cuda.is_available():
            raise RuntimeError(
                "no CUDA GPU found (numba.cuda.is_available() is False): check the "
                "NVIDIA driver, or set NUMBA_ENABLE_CUDASIM=1 before numba is "
                "imported to run the CUDA backend on Numba's (very slow) simulator")
        if self.simulated:
            _simulator_shapes_like_hardware()
        # Stands in for an absent optional array argument (bias, velocity, ...);
        # the kernels take a flag and never read it.
        self._dummy = cuda.device_array(1, dtype=_F32)
        self._dummy3 = cuda.device_array((1, 1, 1), dtype=_F32)
        # Device workspaces keyed by (purpose, shape): im2col buffers, split-K
        # partial sums, batch-norm statistics.
        self._work: Dict[Tuple[Any, ...], Any] = {}
        self._row_scratch: Dict[int, Any] = {}
        # Host-to-device feeds, cached per length: gather indices, dropout draws.
        self._stream = cuda.default_stream()
        self._idx_bufs: Dict[int, _Staged] = {}
        self._u_bufs: Dict[int, _Staged] = {}
        self._sumsq_bufs: Dict[int, Tuple[Any, Any, np.ndarray]] = {}
        # GEMMs with at least this many 128x128 output tiles use that tiling
        # (one per SM; the simulator has no SMs, so a fixed stand-in).
        self.large_gemm_min_blocks: int = (
            16 if self.simulated
            else int(cuda.get_current_device().MULTIPROCESSOR_COUNT))

    @property
    def device_name(self) -> str:
        """The GPU's name ('simulator' under NUMBA_ENABLE_CUDASIM=1)."""
        if self.simulated:
            return "simulator"
        name = cuda.get_current_device().name
        return name.decode() if isinstance(name, bytes) else str(name)

    # ---- argument checks -------------------------------------------------
    @staticmethod
    def _dev(arr: Any, name: str, dtype: np.dtype = _F32,
             ndim: Optional[int] = None) -> Any:
        """Checks that ``arr`` is a C-contiguous device array of ``dtype``."""
        if not getattr(arr, "__cuda_ndarray__", False):
            raise TypeError(
                f"{name} must be a CUDA device array (see CUDABackend.asarray), "
                f"got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype.name}, got {arr.dtype}")
        if ndim is not None and arr.ndim != ndim:
            raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
        if not arr.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous")
        return arr

    @staticmethod
    def _same_shape(arr: Any, name: str, shape: Tuple[int, ...]) -> None:
        if tuple(arr.shape) != tuple(shape):
            raise ValueError(f"{name} has shape {tuple(arr.shape)}, expected {tuple(shape)}")

    @staticmethod
    def _flat(arr: Any) -> Any:
        return arr if arr.ndim == 1 else arr.reshape(arr.size)

    @staticmethod
    def _rows_cols(arr: Any) -> Any:
        """``arr`` as a 2-D (rows, last-axis) view."""
        if arr.ndim == 2:
            return arr
        cols = arr.shape[arr.ndim - 1] if arr.ndim else 1
        return arr.reshape(arr.size // cols if cols else 0, cols)

    def _scratch(self, rows: int) -> Any:
        buf = self._row_scratch.get(rows)
        if buf is None:
            buf = self._row_scratch[rows] = cuda.device_array(rows, dtype=_F32)
        return buf

    # ---- memory ----------------------------------------------------------
    def empty(self, shape: Sequence[int], dtype: Any = "float32") -> Any:
        """Uninitialised device array."""
        return cuda.device_array(tuple(int(s) for s in _shape_tuple(shape)),
                                 dtype=np.dtype(dtype))

    def zeros(self, shape: Sequence[int], dtype: Any = "float32") -> Any:
        """Device array of zeros (filled on the device: no host buffer)."""
        arr = self.empty(shape, dtype)
        self.fill_(arr, 0)
        return arr

    def asarray(self, host: Any) -> Any:
        """A device copy of a NumPy array (same dtype, C-contiguous)."""
        if getattr(host, "__cuda_ndarray__", False):
            out = cuda.device_array(tuple(host.shape), dtype=host.dtype)
            out.copy_to_device(host)
            return out
        return cuda.to_device(np.ascontiguousarray(host))

    def to_numpy(self, arr: Any) -> np.ndarray:
        """A NumPy copy of a device array (waits for queued work)."""
        if not getattr(arr, "__cuda_ndarray__", False):
            return np.asarray(arr)
        return arr.copy_to_host()

    def copy_(self, dst: Any, src: Any) -> None:
        """dst[...] = src, device to device."""
        self._dev(dst, "dst", dst.dtype if hasattr(dst, "dtype") else _F32)
        self._dev(src, "src", dst.dtype)
        self._same_shape(src, "src", tuple(dst.shape))
        if dst.size:
            dst.copy_to_device(src)

    def fill_(self, dst: Any, value: float) -> None:
        """dst[...] = value, on the device."""
        self._dev(dst, "dst", dst.dtype if hasattr(dst, "dtype") else _F32)
        if dst.size == 0:
            return
        flat = self._flat(dst)
        if dst.dtype in (_F32, _I32, _F64):
            _ke.fill[_blocks(flat.size), _TPB](flat, dst.dtype.type(value))
        else:  # rare dtypes: a host round trip is fine
            flat.copy_to_device(np.full(flat.size, value, dtype=dst.dtype))

    def synchronize(self) -> None:
        """Waits until every queued kernel and copy has finished."""
        cuda.synchronize()

    # ---- dense algebra ---------------------------------------------------
    def _sgemm(self, a: Any, b: Any, out: Any, trans_a: bool, trans_b: bool,
               alpha: float, beta: float, bias: Optional[Any], act: int) -> None:
        m, n = out.shape
        if m == 0 or n == 0:
            return
        k = a.shape[0] if trans_a else a.shape[1]
        kern, grid, block = _gemm_launch(m, n, self.large_gemm_min_blocks)
        kern[grid, block](
            a, b, out, self._dummy if bias is None else bias, self._dummy3,
            np.int32(trans_a), np.int32(trans_b), np.float32(alpha), np.float32(beta),
            np.int32(bias is not None), np.int32(act), np.int64(max(k, 1)), np.int32(0))

    def _sgemm_splitk(self, a: Any, b: Any, out: Any, trans_a: bool, trans_b: bool,
                      kchunk: int) -> None:
        """out = op(a) @ op(b) with K cut into slices of kchunk (a multiple of
        the GEMM's slice depth), each slice's product summed by its own blocks,
        the slices then added in order: for small outputs with a long K."""
        m, n = out.shape
        k = a.shape[0] if trans_a else a.shape[1]
        splits = _blocks(k, kchunk)
        if splits <= 1 or m == 0 or n == 0:
            self._sgemm(a, b, out, trans_a, trans_b, 1.0, 0.0, None, _ke.ACT_LINEAR)
            return
        part = self._workspace(("splitk", splits, m, n), (splits, m, n))
        kern, grid, block = _gemm_launch(m, n, self.large_gemm_min_blocks)
        kern[(grid[0], grid[1], splits), block](
            a, b, out, self._dummy, part, np.int32(trans_a), np.int32(trans_b),
            np.float32(1.0), np.float32(0.0), np.int32(0), np.int32(_ke.ACT_LINEAR),
            np.int64(kchunk), np.int32(1))
        _kg.splitk_sum[_blocks(m * n), _TPB](part, out, np.float32(1.0), np.float32(0.0))

    def _workspace(self, key: Tuple[Any, ...], shape: Tuple[int, ...],
                   dtype: np.dtype = _F32) -> Any:
        buf = self._work.get(key)
        if buf is None:
            buf = self._work[key] = cuda.device_array(shape, dtype=dtype)
        return buf

    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool = False,
             trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0) -> None:
        """out = alpha * op(a) @ op(b) + beta * out; beta == 0 never reads out."""
        self._dev(a, "a", ndim=2)
        self._dev(b, "b", ndim=2)
        self._dev(out, "out", ndim=2)
        m, k = (a.shape[1], a.shape[0]) if trans_a else (a.shape[0], a.shape[1])
        k2, n = (b.shape[1], b.shape[0]) if trans_b else (b.shape[0], b.shape[1])
        if k != k2:
            raise ValueError(f"gemm: op(a) is {m}x{k} but op(b) is {k2}x{n}")
        self._same_shape(out, "out", (m, n))
        self._sgemm(a, b, out, bool(trans_a), bool(trans_b), alpha, beta, None,
                    _ke.ACT_LINEAR)

    def dense_fwd(self, x: Any, w: Any, b: Optional[Any], act: str, out: Any) -> None:
        """out = act(x @ w + b) with bias and activation fused into the GEMM
        (softmax, a per-row op, runs as a second kernel)."""
        check_kind(act, ACTIVATIONS, "activation")
        self._dev(x, "x", ndim=2)
        self._dev(w, "w", ndim=2)
        self._dev(out, "out", ndim=2)
        if x.shape[1] != w.shape[0]:
            raise ValueError(f"x has {x.shape[1]} features but w has {w.shape[0]} rows")
        self._same_shape(out, "out", (x.shape[0], w.shape[1]))
        if b is not None:
            self._dev(b, "b", ndim=1)
            self._same_shape(b, "b", (w.shape[1],))
        code = _ke.ACT_CODES[act]
        if code == _ke.ACT_SOFTMAX:
            self._sgemm(x, w, out, False, False, 1.0, 0.0, b, _ke.ACT_LINEAR)
            if out.size:
                _ke.bias_softmax_rows[_blocks(out.shape[0]), _TPB](
                    out, self._dummy, np.int32(0), out)
        else:
            self._sgemm(x, w, out, False, False, 1.0, 0.0, b, code)

    def dense_bwd(self, x: Any, w: Any, dz: Any, dw: Any, db: Optional[Any],
                  dx: Optional[Any]) -> None:
        """dw = x.T @ dz; db = column sums of dz; dx = dz @ w.T (overwrites)."""
        self._dev(x, "x", ndim=2)
        self._dev(w, "w", ndim=2)
        self._dev(dz, "dz", ndim=2)
        self._dev(dw, "dw", ndim=2)
        rows, k = x.shape
        n = w.shape[1]
        self._same_shape(w, "w", (k, n))
        self._same_shape(dz, "dz", (rows, n))
        self._same_shape(dw, "dw", (k, n))
        self._sgemm(x, dz, dw, True, False, 1.0, 0.0, None, _ke.ACT_LINEAR)
        if db is not None:
            self.bias_grad(dz, db)
        if dx is not None:
            self._dev(dx, "dx", ndim=2)
            self._same_shape(dx, "dx", (rows, k))
            self._sgemm(dz, w, dx, False, True, 1.0, 0.0, None, _ke.ACT_LINEAR)

    def bias_act_fwd(self, x: Any, b: Optional[Any], act: str, out: Any) -> None:
        """out = act(x + b) over (rows, cols) (softmax over each row's last
        axis); b may be None; out may be x."""
        check_kind(act, ACTIVATIONS, "activation")
        self._dev(x, "x")
        self._dev(out, "out")
        self._same_shape(out, "out", tuple(x.shape))
        x2 = self._rows_cols(x)
        out2 = self._rows_cols(out)
        if b is not None:
            self._dev(b, "b", ndim=1)
            self._same_shape(b, "b", (x2.shape[1],))
        if x.size == 0:
            return
        bias = self._dummy if b is None else b
        has_bias = np.int32(b is not None)
        code = _ke.ACT_CODES[act]
        if code == _ke.ACT_SOFTMAX:
            _ke.bias_softmax_rows[_blocks(x2.shape[0]), _TPB](x2, bias, has_bias, out2)
        else:
            _ke.bias_act_fwd[_blocks(x.size), _TPB](x2, bias, has_bias, np.int32(code), out2)

    def act_bwd(self, act: str, y: Any, dy: Any, dx: Any) -> None:
        """dx = dy * act'(.) through the forward output y; dx may be dy."""
        check_kind(act, ACTIVATIONS, "activation")
        self._dev(y, "y")
        self._dev(dy, "dy")
        self._dev(dx, "dx")
        self._same_shape(dy, "dy", tuple(y.shape))
        self._same_shape(dx, "dx", tuple(y.shape))
        if y.size == 0:
            return
        code = _ke.ACT_CODES[act]
        if code == _ke.ACT_SOFTMAX:
            y2 = self._rows_cols(y)
            _ke.softmax_bwd_rows[_blocks(y2.shape[0]), _TPB](
                y2, self._rows_cols(dy), self._rows_cols(dx))
        else:
            _ke.act_bwd[_blocks(y.size), _TPB](
                np.int32(code), self._flat(y), self._flat(dy), self._flat(dx))

    def bias_grad(self, dz: Any, db: Any) -> None:
        """db = column sums of dz, each summed in row order."""
        self._dev(dz, "dz", ndim=2)
        self._dev(db, "db", ndim=1)
        self._same_shape(db, "db", (dz.shape[1],))
        if dz.shape[1] == 0:
            return
        _ke.bias_grad[_blocks(dz.shape[1]), _TPB](dz, db)

    # ---- losses and metrics ----------------------------------------------
    def _check_acc(self, acc: Any) -> None:
        self._dev(acc, "acc", _F64)
        self._same_shape(acc, "acc", (1,))

    def _check_target(self, kind: str, sparse: bool, pred: Any, target: Any) -> None:
        if sparse:
            self._dev(target, "target", _I32, ndim=1)
            self._same_shape(target, "target", (pred.shape[0],))
        else:
            self._dev(target, "target", ndim=2)
            self._same_shape(target, "target", tuple(pred.shape))

    def loss(self, kind: str, pred: Any, target: Any, grad: Any,
             acc: Any, probs: Optional[Any] = None) -> None:
        """acc[0] += mean-over-rows loss (added on the device: no sync);
        grad = d(mean loss)/d(pred); probs receives softmax/sigmoid of the
        logits for the "*_logits" kinds."""
        check_kind(kind, LOSS_KINDS, "loss kind")
        self._dev(pred, "pred", ndim=2)
        self._check_target(kind, kind in _SPARSE_KINDS, pred, target)
        self._dev(grad, "grad", ndim=2)
        self._same_shape(grad, "grad", tuple(pred.shape))
        self._check_acc(acc)
        rows, cols = pred.shape
        if rows == 0 or cols == 0:
            raise ValueError(f"pred must have at least one row and column, got {tuple(pred.shape)}")
        scratch = self._scratch(rows)
        if kind in _PER_ELEMENT_KINDS:
            scale = np.float32(1.0 / (rows * cols))
        else:
            scale = np.float32(1.0 / rows)
        kern = _LOSS_KERNELS[kind]
        grid = _blocks(rows)
        if kind in _LOGITS_KINDS:
            if probs is None:
                raise ValueError(f"loss kind {kind!r} needs a probs array")
            self._dev(probs, "probs", ndim=2)
            self._same_shape(probs, "probs", tuple(pred.shape))
            kern[grid, _TPB](pred, target, probs, grad, scratch, scale)
        else:
            kern[grid, _TPB](pred, target, grad, scratch, scale)
        _kl.reduce_into_acc[1, _kl.RT](scratch, np.float64(rows), acc)

    def metric(self, kind: str, pred: Any, target: Any, acc: Any) -> None:
        """acc[0] += sum over rows of the per-sample metric (on the device)."""
        check_kind(kind, METRIC_KINDS, "metric kind")
        self._dev(pred, "pred", ndim=2)
        self._check_target(kind, kind == "sparse_categorical_accuracy", pred, target)
        self._check_acc(acc)
        rows, cols = pred.shape
        if rows == 0:
            return
        if cols == 0:
            raise ValueError("pred must have at least one column")
        scratch = self._scratch(rows)
        grid = _blocks(rows)
        if kind == "binary_accuracy":
            _kl.binary_accuracy[grid, _TPB](pred, target, np.float32(0.5), scratch)
        else:
            _METRIC_KERNELS[kind][grid, _TPB](pred, target, scratch)
        _kl.reduce_into_acc[1, _kl.RT](scratch, np.float64(1.0), acc)

    # ---- optimisers --------------------------------------------------------
    def sumsq(self, x: Any) -> float:
        """Sum of squares of x in float64, in a fixed two-stage order (the only
        op that waits for the GPU: it returns a host float)."""
        self._dev(x, "x")
        n = x.size
        if n == 0:
            return 0.0
        parts = _blocks(n, _ko.SUMSQ_CHUNK)
        bufs = self._sumsq_bufs.get(parts)
        if bufs is None:
            bufs = self._sumsq_bufs[parts] = (
                cuda.device_array(parts, dtype=_F64), cuda.device_array(1, dtype=_F64),
                cuda.pinned_array(1, dtype=_F64))
        part, total, host = bufs
        _ko.sumsq_partial[parts, _ko.RT](self._flat(x), part)
        _ko.sum_partials[1, _ko.RT](part, total)
        total.copy_to_host(host)
        return float(host[0])

    def scale_(self, x: Any, s: float) -> None:
        """x *= s."""
        self._dev(x, "x")
        if x.size:
            _ke.scale[_blocks(x.size), _TPB](self._flat(x), np.float32(s))

    def _check_flat_like(self, p: Any, arr: Any, name: str) -> Any:
        self._dev(arr, name)
        if arr.size != p.size:
            raise ValueError(f"{name} has {arr.size} elements, p has {p.size}")
        return self._flat(arr)

    def sgd_step(self, p: Any, g: Any, velocity: Optional[Any], *, lr: float,
                 momentum: float, nesterov: bool, weight_decay: float,
                 grad_scale: float, clip_value: float) -> None:
        """One fused SGD step (see fnn_sgd_step in ext/fastnn.h)."""
        self._dev(p, "p")
        g1 = self._check_flat_like(p, g, "g")
        if velocity is None:
            if momentum != 0:
                raise ValueError("velocity is required when momentum != 0")
            v1 = self._dummy
        else:
            v1 = self._check_flat_like(p, velocity, "velocity")
        if p.size == 0:
            return
        _ko.sgd_step[_blocks(p.size), _TPB](
            self._flat(p), g1, v1, np.float32(lr), np.float32(momentum),
            np.int32(bool(nesterov)), np.float32(weight_decay), np.float32(grad_scale),
            np.float32(clip_value), np.int32(velocity is not None))

    def adam_step(self, p: Any, g: Any, m: Any, v: Any, *, lr: float,
                  beta_1: float, beta_2: float, epsilon: float, step: int,
                  weight_decay: float, grad_scale: float, clip_value: float) -> None:
        """One fused Adam/AdamW step (see fnn_adam_step); step is 1-based."""
        step = int(step)
        if step < 1:
            raise ValueError(f"step must be >= 1 (1-based), got {step}")
        self._dev(p, "p")
        g1 = self._check_flat_like(p, g, "g")
        m1 = self._check_flat_like(p, m, "m")
        v1 = self._check_flat_like(p, v, "v")
        if p.size == 0:
            return
        # The bias correction is a per-step scalar: computed once here in
        # float64, rounded to float32 like every other kernel argument.
        lr_t = np.float32(lr * math.sqrt(1.0 - float(beta_2) ** step)
                          / (1.0 - float(beta_1) ** step))
        _ko.adam_step[_blocks(p.size), _TPB](
            self._flat(p), g1, m1, v1, np.float32(lr), lr_t, np.float32(beta_1),
            np.float32(beta_2), np.float32(epsilon), np.float32(weight_decay),
            np.float32(grad_scale), np.float32(clip_value))

    def rmsprop_step(self, p: Any, g: Any, vel: Any, mom: Optional[Any],
                     avg: Optional[Any], *, lr: float, rho: float, momentum: float,
                     epsilon: float, weight_decay: float, grad_scale: float,
                     clip_value: float) -> None:
        """One fused RMSprop step (see fnn_rmsprop_step); centred iff avg is given."""
        self._dev(p, "p")
        g1 = self._check_flat_like(p, g, "g")
        vel1 = self._check_flat_like(p, vel, "vel")
        has_mom = momentum > 0
        if has_mom:
            if mom is None:
                raise ValueError("mom is required when momentum > 0")
            mom1 = self._check_flat_like(p, mom, "mom")
        else:
            mom1 = self._dummy
        avg1 = self._dummy if avg is None else self._check_flat_like(p, avg, "avg")
        if p.size == 0:
            return
        _ko.rmsprop_step[_blocks(p.size), _TPB](
            self._flat(p), g1, vel1, mom1, avg1, np.float32(lr), np.float32(rho),
            np.float32(momentum), np.float32(epsilon), np.float32(weight_decay),
            np.float32(grad_scale), np.float32(clip_value), np.int32(has_mom),
            np.int32(avg is not None))

    # ---- data movement and elementwise ---------------------------------------
    def _upload_idx(self, idx: np.ndarray) -> Any:
        """idx in a device buffer cached per length: no allocation per batch, and
        no upload at all when the same indices were just uploaded (features and
        labels of one batch are gathered with the same idx)."""
        n = idx.shape[0]
        staged = self._idx_bufs.get(n)
        if staged is None:
            staged = self._idx_bufs[n] = _Staged(n, _I64, self._stream, self.simulated)
        elif staged.last is not None and np.array_equal(staged.last, idx):
            return staged.device
        staged.slot()[...] = idx
        return staged.upload()

    def gather_rows(self, src: Any, idx: Any, out: Any) -> None:
        """out[i] = src[idx[i]]; idx is a host (NumPy) integer array."""
        if getattr(idx, "__cuda_ndarray__", False):
            raise TypeError("idx must be a NumPy integer array (host), not a device array")
        idx = np.asarray(idx)
        if idx.ndim != 1 or not (idx.dtype.kind in "iu" or idx.size == 0):
            raise TypeError(f"idx must be a 1-D integer array, got {idx.dtype} shape {idx.shape}")
        idx = np.ascontiguousarray(idx, dtype=_I64)
        if not getattr(src, "__cuda_ndarray__", False):
            raise TypeError(f"src must be a CUDA device array, got {type(src).__name__}")
        if src.dtype not in (_F32, _I32):
            raise TypeError(f"src must be float32 or int32, got {src.dtype}")
        self._dev(src, "src", src.dtype)
        self._dev(out, "out", src.dtype)
        n_src = src.shape[0]
        self._same_shape(out, "out", (idx.shape[0],) + tuple(src.shape[1:]))
        if idx.size == 0:
            return
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= n_src:
            bad = lo if lo < 0 else hi
            raise IndexError(f"idx holds {bad}, outside [0, {n_src}) (src rows)")
        row_len = src.size // n_src if n_src else 0
        if row_len == 0:
            return
        d_idx = self._upload_idx(idx)
        _kd.gather_rows[_blocks(out.size), _TPB](
            src.reshape(n_src, row_len), d_idx, out.reshape(idx.shape[0], row_len))

    def dropout_fwd(self, x: Any, rate: float, rng: Any, mask: Any, out: Any) -> None:
        """mask = (u >= rate) / (1 - rate), u ~ U[0,1) float32 drawn on the host
        from ``rng`` (so the CPU and GPU backends draw the same masks); out = x * mask."""
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"rate must be in [0, 1), got {rate}")
        self._dev(x, "x")
        self._dev(mask, "mask")
        self._dev(out, "out")
        self._same_shape(mask, "mask", tuple(x.shape))
        self._same_shape(out, "out", tuple(x.shape))
        n = x.size
        if n == 0:
            return
        staged = self._u_bufs.get(n)
        if staged is None:
            staged = self._u_bufs[n] = _Staged(n, _F32, self._stream, self.simulated)
        rng.random(out=staged.slot(), dtype=np.float32)
        dev_u = staged.upload()
        rate32 = np.float32(rate)
        keep_scale = np.float32(1.0) / (np.float32(1.0) - rate32)
        _ke.dropout_fwd[_blocks(n), _TPB](self._flat(x), dev_u, rate32, keep_scale,
                                          self._flat(mask), self._flat(out))

    def _binary(self, kern: Any, a: Any, b: Any, out: Any) -> None:
        self._dev(a, "a")
        self._dev(b, "b")
        self._dev(out, "out")
        self._same_shape(b, "b", tuple(a.shape))
        self._same_shape(out, "out", tuple(a.shape))
        if a.size:
            kern[_blocks(a.size), _TPB](self._flat(a), self._flat(b), self._flat(out))

    def mul(self, a: Any, b: Any, out: Any) -> None:
        """out = a * b elementwise; out may be a or b."""
        self._binary(_ke.mul, a, b, out)

    def add(self, a: Any, b: Any, out: Any) -> None:
        """out = a + b elementwise; out may be a or b."""
        self._binary(_ke.add, a, b, out)

    def _check_concat(self, parts: Sequence[Any], parts_name: str, whole: Any,
                      whole_name: str) -> Tuple[Any, list]:
        self._dev(whole, whole_name)
        if whole.ndim == 0:
            raise ValueError(f"{whole_name} must have at least one axis")
        lead = tuple(whole.shape[:-1])
        views, total = [], 0
        for i, part in enumerate(parts):
            name = f"{parts_name}[{i}]"
            self._dev(part, name)
            if tuple(part.shape[:-1]) != lead:
                raise ValueError(f"{name} has shape {tuple(part.shape)}; all but the "
                                 f"last axis must match {whole_name}'s {tuple(whole.shape)}")
            total += part.shape[part.ndim - 1]
            views.append(self._rows_cols(part))
        if total != whole.shape[whole.ndim - 1]:
            raise ValueError(f"the last axes of {parts_name} add up to {total}, but "
                             f"{whole_name} has {whole.shape[whole.ndim - 1]}")
        return self._rows_cols(whole), views

    def concat_last(self, xs: Sequence[Any], out: Any) -> None:
        """out = the arrays ``xs`` joined along their last axis (one copy
        kernel per input)."""
        out2, views = self._check_concat(xs, "xs", out, "out")
        col = 0
        for v in views:
            width = v.shape[1]
            if width and v.shape[0]:
                _kd.copy_cols[_blocks(v.shape[0] * width), _TPB](
                    v, np.int64(0), out2, np.int64(col), np.int64(width))
            col += width

    def split_last(self, x: Any, outs: Sequence[Any]) -> None:
        """The inverse of concat_last: outs[i] = consecutive last-axis slices of x."""
        x2, views = self._check_concat(outs, "outs", x, "x")
        col = 0
        for v in views:
            width = v.shape[1]
            if width and v.shape[0]:
                _kd.copy_cols[_blocks(v.shape[0] * width), _TPB](
                    x2, np.int64(col), v, np.int64(0), np.int64(width))
            col += width

    # ---- convolution -------------------------------------------------------
    def _check_image(self, arr: Any, name: str) -> Tuple[int, int, int, int]:
        self._dev(arr, name, ndim=4)
        return tuple(int(v) for v in arr.shape)  # type: ignore[return-value]

    def _im2col(self, x: Any, kh: int, kw: int, s: Tuple[int, int], p: Tuple[int, ...],
                d: Tuple[int, int], ho: int, wo: int) -> Any:
        """The (B*Ho*Wo, kh*kw*C) im2col matrix of x: a view of x itself for a
        1x1 kernel with unit strides and no padding, else a cached workspace."""
        bsz, _h, _w, c = x.shape
        m, k = bsz * ho * wo, kh * kw * c
        if _pointwise(kh, kw, s, p):
            return x.reshape(m, k)
        col = self._workspace(("im2col", m, k), (m, k))
        if m * k:
            _kc.im2col[_blocks(m * k), _TPB](
                x, col, np.int64(kh), np.int64(kw), np.int64(s[0]), np.int64(s[1]),
                np.int64(d[0]), np.int64(d[1]), np.int64(p[0]), np.int64(p[2]),
                np.int64(ho), np.int64(wo))
        return col

    def _conv_geometry(self, x: Any, w: Any, strides: Any, padding: Any,
                       dilation: Any) -> Tuple[Tuple[int, int], Tuple[int, ...],
                                               Tuple[int, int], int, int]:
        bsz, h, wd, c = self._check_image(x, "x")
        kh, kw, wc, _f = self._check_image(w, "w")
        if wc != c:
            raise ValueError(f"w has {wc} input channels but x has {c}")
        s = normalize_pair(strides, "strides")
        d = normalize_pair(dilation, "dilation")
        p = resolve_padding(padding, (h, wd), (kh, kw), s, d)
        ho = conv_output_size(h, kh, s[0], d[0], p[0], p[1])
        wo = conv_output_size(wd, kw, s[1], d[1], p[2], p[3])
        if ho < 1 or wo < 1:
            raise ValueError(f"kernel {(kh, kw)} with dilation {d} does not fit input "
                             f"{(h, wd)} with padding {p}")
        return s, p, d, ho, wo

    def conv2d_fwd(self, x: Any, w: Any, b: Optional[Any], out: Any, *,
                   strides: Any = (1, 1), padding: Any = (0, 0, 0, 0),
                   dilation: Any = (1, 1), act: str = "linear") -> None:
        """out (B, Ho, Wo, F) = act(conv2d(x, w) + b): im2col, then the tiled
        SGEMM with bias and activation in its epilogue (softmax over F as a
        second kernel)."""
        check_kind(act, ACTIVATIONS, "activation")
        s, p, d, ho, wo = self._conv_geometry(x, w, strides, padding, dilation)
        kh, kw, c, f = w.shape
        self._dev(out, "out", ndim=4)
        self._same_shape(out, "out", (x.shape[0], ho, wo, f))
        if b is not None:
            self._dev(b, "b", ndim=1)
            self._same_shape(b, "b", (f,))
        if out.size == 0:
            return
        col = self._im2col(x, kh, kw, s, p, d, ho, wo)
        out2 = out.reshape(col.shape[0], f)
        w2 = w.reshape(kh * kw * c, f)
        code = _ke.ACT_CODES[act]
        if code == _ke.ACT_SOFTMAX:
            self._sgemm(col, w2, out2, False, False, 1.0, 0.0, b, _ke.ACT_LINEAR)
            _ke.bias_softmax_rows[_blocks(out2.shape[0]), _TPB](
                out2, self._dummy, np.int32(0), out2)
        else:
            self._sgemm(col, w2, out2, False, False, 1.0, 0.0, b, code)

    def _column_sums(self, dz2: Any, db: Any) -> None:
        """db = column sums of dz2: in row order for a batch-sized dz2, else
        over fixed row slices added in slice order (many more threads)."""
        rows, cols = dz2.shape
        if rows <= _COLSUM_SLICE:
            _ke.bias_grad[_blocks(cols), _TPB](dz2, db)
            return
        slices = _blocks(rows, _COLSUM_SLICE)
        part = self._workspace(("colsum", slices, cols), (slices, 1, cols))
        _kc.col_sums_partial[(_blocks(cols, 64), slices), 64](
            dz2, part, np.int64(_COLSUM_SLICE))
        _kg.splitk_sum[_blocks(cols), _TPB](part, db.reshape(1, cols), np.float32(1.0),
                                           np.float32(0.0))

    def conv2d_bwd(self, x: Any, w: Any, dz: Any, dw: Any, db: Optional[Any],
                   dx: Optional[Any], *, strides: Any = (1, 1),
                   padding: Any = (0, 0, 0, 0), dilation: Any = (1, 1)) -> None:
        """dw = col(x).T @ dz (split over the batch's pixels), db = column sums
        of dz, dx = col2im(dz @ w.T); dz is w.r.t. the pre-activation output."""
        if dw is None:
            raise ValueError("conv2d_bwd: argument 'dw' is required")
        s, p, d, ho, wo = self._conv_geometry(x, w, strides, padding, dilation)
        kh, kw, c, f = w.shape
        bsz = x.shape[0]
        self._dev(dz, "dz", ndim=4)
        self._same_shape(dz, "dz", (bsz, ho, wo, f))
        self._dev(dw, "dw", ndim=4)
        self._same_shape(dw, "dw", tuple(w.shape))
        if db is not None:
            self._dev(db, "db", ndim=1)
            self._same_shape(db, "db", (f,))
        if dx is not None:
            self._dev(dx, "dx", ndim=4)
            self._same_shape(dx, "dx", tuple(x.shape))
        m, k = bsz * ho * wo, kh * kw * c
        dz2 = dz.reshape(m, f)
        dw2 = dw.reshape(k, f)
        if m == 0:
            self.fill_(dw, 0.0)
            if db is not None:
                self.fill_(db, 0.0)
            if dx is not None:
                self.fill_(dx, 0.0)
            return
        col = self._im2col(x, kh, kw, s, p, d, ho, wo)
        self._sgemm_splitk(col, dz2, dw2, True, False, _splitk_chunk(m))
        if db is not None:
            self._column_sums(dz2, db)
        if dx is None or dx.size == 0:
            return
        if _pointwise(kh, kw, s, p):   # col is x itself: dx = dz @ w.T directly
            self._sgemm(dz2, w.reshape(k, f), dx.reshape(m, c), False, True, 1.0, 0.0,
                        None, _ke.ACT_LINEAR)
            return
        # dcol reuses the im2col workspace: the dw GEMM that read col runs first.
        dcol = col
        self._sgemm(dz2, w.reshape(k, f), dcol, False, True, 1.0, 0.0, None, _ke.ACT_LINEAR)
        _kc.col2im[_blocks(dx.size), _TPB](
            dcol, dx, np.int64(kh), np.int64(kw), np.int64(s[0]), np.int64(s[1]),
            np.int64(d[0]), np.int64(d[1]), np.int64(p[0]), np.int64(p[2]),
            np.int64(ho), np.int64(wo))

    # ---- pooling ---------------------------------------------------------------
    def _pool_geometry(self, x_shape: Tuple[int, ...], pool: Any, strides: Any,
                       padding: Any) -> Tuple[Tuple[int, int], Tuple[int, int],
                                              Tuple[int, ...], int, int]:
        k = normalize_pair(pool, "pool")
        s = k if strides is None else normalize_pair(strides, "strides")
        p = resolve_padding(padding, x_shape[1:3], k, s)
        if p[0] >= k[0] or p[1] >= k[0] or p[2] >= k[1] or p[3] >= k[1]:
            raise ValueError(f"padding {p} must be smaller than the pool window {k}")
        ho = conv_output_size(x_shape[1], k[0], s[0], 1, p[0], p[1])
        wo = conv_output_size(x_shape[2], k[1], s[1], 1, p[2], p[3])
        if ho < 1 or wo < 1:
            raise ValueError(f"pool window {k} does not fit input {tuple(x_shape[1:3])}")
        return k, s, p, ho, wo

    def _check_argmax(self, argmax: Any, shape: Tuple[int, ...]) -> None:
        if not getattr(argmax, "__cuda_ndarray__", False):
            raise TypeError(f"argmax must be a CUDA device array, got {type(argmax).__name__}")
        if argmax.dtype not in (_I32, _I64):
            raise TypeError(f"argmax must be int32 or int64, got {argmax.dtype}")
        self._dev(argmax, "argmax", argmax.dtype)
        self._same_shape(argmax, "argmax", shape)

    def maxpool2d_fwd(self, x: Any, out: Any, argmax: Any, *, pool: Any = (2, 2),
                      strides: Any = None, padding: Any = (0, 0, 0, 0)) -> None:
        """out = window max, argmax = its flat index (h*W + w)*C + c in the image."""
        shape = self._check_image(x, "x")
        k, s, p, ho, wo = self._pool_geometry(shape, pool, strides, padding)
        oshape = (shape[0], ho, wo, shape[3])
        self._dev(out, "out", ndim=4)
        self._same_shape(out, "out", oshape)
        self._check_argmax(argmax, oshape)
        if out.size:
            _kc.maxpool_fwd[_blocks(out.size), _TPB](
                x, out, argmax, np.int64(k[0]), np.int64(k[1]), np.int64(s[0]),
                np.int64(s[1]), np.int64(p[0]), np.int64(p[2]))

    def _maxpool_bwd(self, dy: Any, argmax: Any, dx: Any) -> None:
        self._dev(dy, "dy")
        self._dev(dx, "dx")
        self._check_argmax(argmax, tuple(dy.shape))
        bsz = dx.shape[0] if dx.ndim else 0
        c = dx.shape[dx.ndim - 1] if dx.ndim else 0
        if dy.ndim < 2 or dy.shape[0] != bsz or dy.shape[dy.ndim - 1] != c:
            raise ValueError(f"dy {tuple(dy.shape)} and dx {tuple(dx.shape)} must agree on "
                             f"the batch and channel axes")
        self.fill_(dx, 0.0)
        if dy.size == 0 or dx.size == 0:
            return
        _kc.maxpool_bwd[_blocks(bsz * c), _TPB](
            dy.reshape(bsz, dy.size // bsz), argmax.reshape(bsz, dy.size // bsz),
            dx.reshape(bsz, dx.size // bsz), np.int64(c))

    def maxpool2d_bwd(self, dy: Any, argmax: Any, dx: Any) -> None:
        """dx = 0, then dx[b].flat[argmax[b]] += dy[b], in output order."""
        self._check_image(dy, "dy")
        self._check_image(dx, "dx")
        self._maxpool_bwd(dy, argmax, dx)

    def avgpool2d_fwd(self, x: Any, out: Any, *, pool: Any = (2, 2), strides: Any = None,
                      padding: Any = (0, 0, 0, 0)) -> None:
        """out = mean over each window's in-image elements."""
        shape = self._check_image(x, "x")
        k, s, p, ho, wo = self._pool_geometry(shape, pool, strides, padding)
        self._dev(out, "out", ndim=4)
        self._same_shape(out, "out", (shape[0], ho, wo, shape[3]))
        if out.size:
            _kc.avgpool_fwd[_blocks(out.size), _TPB](
                x, out, np.int64(k[0]), np.int64(k[1]), np.int64(s[0]), np.int64(s[1]),
                np.int64(p[0]), np.int64(p[2]))

    def avgpool2d_bwd(self, dy: Any, dx: Any, *, pool: Any = (2, 2), strides: Any = None,
                      padding: Any = (0, 0, 0, 0)) -> None:
        """dx = sum over the windows holding each element of dy / window count."""
        shape = self._check_image(dx, "dx")
        k, s, p, ho, wo = self._pool_geometry(shape, pool, strides, padding)
        self._dev(dy, "dy", ndim=4)
        self._same_shape(dy, "dy", (shape[0], ho, wo, shape[3]))
        if dx.size:
            _kc.avgpool_bwd[_blocks(dx.size), _TPB](
                dy, dx, np.int64(k[0]), np.int64(k[1]), np.int64(s[0]), np.int64(s[1]),
                np.int64(p[0]), np.int64(p[2]))

    def global_avgpool_fwd(self, x: Any, out: Any) -> None:
        """out (B, C) = mean of x (B, H, W, C) over H and W."""
        bsz, h, w, c = self._check_image(x, "x")
        self._dev(out, "out", ndim=2)
        self._same_shape(out, "out", (bsz, c))
        if out.size == 0:
            return
        if h * w == 0:
            raise ValueError("x has no pixels to average")
        _kc.global_avgpool_fwd[_blocks(out.size), _TPB](x.reshape(bsz, h * w, c), out)

    def global_avgpool_bwd(self, dy: Any, dx: Any) -> None:
        """dx (B, H, W, C) = dy (B, C) / (H*W)."""
        bsz, h, w, c = self._check_image(dx, "dx")
        self._dev(dy, "dy", ndim=2)
        self._same_shape(dy, "dy", (bsz, c))
        if dx.size:
            _kc.global_avgpool_bwd[_blocks(dx.size), _TPB](dy, dx.reshape(bsz, h * w, c))

    def global_maxpool_fwd(self, x: Any, out: Any, argmax: Any) -> None:
        """out (B, C) = max over H and W; argmax = pixel*C + c (first max wins)."""
        bsz, h, w, c = self._check_image(x, "x")
        self._dev(out, "out", ndim=2)
        self._same_shape(out, "out", (bsz, c))
        self._check_argmax(argmax, (bsz, c))
        if out.size == 0:
            return
        if h * w == 0:
            raise ValueError("x has no pixels to take the maximum of")
        # One window covering the whole image, seen as (H*W, 1) pixels.
        _kc.maxpool_fwd[_blocks(out.size), _TPB](
            x.reshape(bsz, h * w, 1, c), out.reshape(bsz, 1, 1, c),
            argmax.reshape(bsz, 1, 1, c), np.int64(h * w), np.int64(1), np.int64(1),
            np.int64(1), np.int64(0), np.int64(0))

    def global_maxpool_bwd(self, dy: Any, argmax: Any, dx: Any) -> None:
        """dx = 0, then dx[b].flat[argmax[b]] += dy[b]."""
        self._check_image(dx, "dx")
        self._dev(dy, "dy", ndim=2)
        self._maxpool_bwd(dy, argmax, dx)

    def zeropad2d_fwd(self, x: Any, out: Any, *, padding: Any) -> None:
        """out (B, H+top+bottom, W+left+right, C) = x surrounded by zeros."""
        bsz, h, w, c = self._check_image(x, "x")
        pt, pb, pl, pr = resolve_padding(padding, (h, w), (1, 1))
        self._dev(out, "out", ndim=4)
        self._same_shape(out, "out", (bsz, h + pt + pb, w + pl + pr, c))
        if out.size:
            _kc.zeropad_fwd[_blocks(out.size), _TPB](
                x, out, np.int64(pt), np.int64(pb), np.int64(pl), np.int64(pr))

    def zeropad2d_bwd(self, dy: Any, dx: Any, *, padding: Any) -> None:
        """dx = the interior of dy."""
        bsz, h, w, c = self._check_image(dx, "dx")
        pt, pb, pl, pr = resolve_padding(padding, (h, w), (1, 1))
        self._dev(dy, "dy", ndim=4)
        self._same_shape(dy, "dy", (bsz, h + pt + pb, w + pl + pr, c))
        if dx.size:
            _kc.zeropad_bwd[_blocks(dx.size), _TPB](dy, dx, np.int64(pt), np.int64(pl))

    # ---- batch normalisation ---------------------------------------------------
    def _bn_view(self, x: Any, name: str) -> Any:
        self._dev(x, name)
        if x.ndim not in (2, 4):
            raise ValueError(f"{name} must be (rows, C) or (B, H, W, C), got {tuple(x.shape)}")
        x2 = self._rows_cols(x)
        if x2.shape[0] == 0:
            raise ValueError(f"{name} has no rows to normalise over")
        return x2

    def _bn_channel_arrays(self, c: int, **arrays: Any) -> None:
        for name, arr in arrays.items():
            if arr is not None:
                self._dev(arr, name, ndim=1)
                self._same_shape(arr, name, (c,))

    def _bn_part(self, rows: int, c: int) -> Tuple[Any, Any]:
        chunks = _blocks(rows, _kc.BN_CHUNK)
        part = self._workspace(("bn_part", chunks, c), (chunks, 2, c), _F64)
        coef = self._workspace(("bn_coef", c), (3, c))
        return part, coef

    def batchnorm_fwd_train(self, x: Any, out: Any, gamma: Optional[Any],
                            beta: Optional[Any], moving_mean: Any, moving_var: Any,
                            save_mean: Any, save_invstd: Any, *, momentum: float = 0.99,
                            epsilon: float = 1e-3) -> None:
        """Training-mode batch norm over the last axis (statistics in float64
        over fixed 256-row chunks added in chunk order, as the CPU kernels)."""
        x2 = self._bn_view(x, "x")
        self._dev(out, "out")
        self._same_shape(out, "out", tuple(x.shape))
        rows, c = x2.shape
        self._bn_channel_arrays(c, gamma=gamma, beta=beta, moving_mean=moving_mean,
                                moving_var=moving_var, save_mean=save_mean,
                                save_invstd=save_invstd)
        part, coef = self._bn_part(rows, c)
        # Shifted moments (by the first row) limit cancellation in the variance.
        shift = x2[0]
        _kc.bn_chunk_sums[(_blocks(c, 64), part.shape[0]), 64](x2, x2, shift, part, np.int32(1))
        _kc.bn_train_stats[_blocks(c), _TPB](
            part, shift, self._dummy if gamma is None else gamma, np.int32(gamma is not None),
            self._dummy if beta is None else beta, np.int32(beta is not None),
            moving_mean, moving_var, save_mean, save_invstd, coef, np.int64(rows),
            np.float32(momentum), np.float32(epsilon))
        _kc.bn_affine[_blocks(x2.size), _TPB](x2, save_mean, coef, self._rows_cols(out))

    def batchnorm_fwd_infer(self, x: Any, out: Any, gamma: Optional[Any],
                            beta: Optional[Any], moving_mean: Any, moving_var: Any, *,
                            epsilon: float = 1e-3) -> None:
        """out = (x - moving_mean) / sqrt(moving_var + epsilon) * gamma + beta."""
        x2 = self._bn_view(x, "x")
        self._dev(out, "out")
        self._same_shape(out, "out", tuple(x.shape))
        c = x2.shape[1]
        self._bn_channel_arrays(c, gamma=gamma, beta=beta, moving_mean=moving_mean,
                                moving_var=moving_var)
        _kc.bn_infer[_blocks(x2.size), _TPB](
            x2, self._dummy if gamma is None else gamma, np.int32(gamma is not None),
            self._dummy if beta is None else beta, np.int32(beta is not None),
            moving_mean, moving_var, np.float32(epsilon), self._rows_cols(out))

    def batchnorm_bwd(self, x: Any, dy: Any, gamma: Optional[Any], save_mean: Any,
                      save_invstd: Any, dx: Any, dgamma: Optional[Any],
                      dbeta: Optional[Any]) -> None:
        """Gradients of batchnorm_fwd_train from its save_mean / save_invstd."""
        x2 = self._bn_view(x, "x")
        self._dev(dy, "dy")
        self._same_shape(dy, "dy", tuple(x.shape))
        self._dev(dx, "dx")
        self._same_shape(dx, "dx", tuple(x.shape))
        rows, c = x2.shape
        self._bn_channel_arrays(c, gamma=gamma, save_mean=save_mean,
                                save_invstd=save_invstd, dgamma=dgamma, dbeta=dbeta)
        part, coef = self._bn_part(rows, c)
        dy2 = self._rows_cols(dy)
        _kc.bn_chunk_sums[(_blocks(c, 64), part.shape[0]), 64](
            dy2, x2, save_mean, part, np.int32(0))
        _kc.bn_bwd_coefs[_blocks(c), _TPB](
            part, self._dummy if gamma is None else gamma, np.int32(gamma is not None),
            save_invstd, self._dummy if dgamma is None else dgamma,
            np.int32(dgamma is not None), self._dummy if dbeta is None else dbeta,
            np.int32(dbeta is not None), coef, np.int64(rows))
        _kc.bn_bwd_apply[_blocks(x2.size), _TPB](x2, dy2, save_mean, coef,
                                                 self._rows_cols(dx))


class _Staged:
    """A device buffer fed from the host without making the host wait.

    Each upload is written into one of a small ring of pinned host buffers and
    copied asynchronously on the stream the kernels run on, so it is ordered
    before the kernels launched after it and after those launched before it.
    A pinned buffer is rewritten only once its previous copy has finished
    (an event per slot; by then normally long done), so a training step never
    synchronises with the GPU to feed it indices or dropout draws.
    """

    SLOTS = 3

    def __init__(self, n: int, dtype: np.dtype, stream: Any, simulated: bool) -> None:
        self.device = cuda.device_array(n, dtype=dtype)
        self._host = [cuda.pinned_array(n, dtype=dtype) for _ in range(self.SLOTS)]
        self._done: list = [None] * self.SLOTS
        self._next = 0
        self._stream = stream
        self._simulated = simulated
        self.last: Optional[np.ndarray] = None   # host copy of the latest upload

    def slot(self) -> np.ndarray:
        """The pinned buffer to fill for the next upload (free to overwrite)."""
        event = self._done[self._next]
        if event is not None:
            event.synchronize()
        return self._host[self._next]

    def upload(self) -> Any:
        """Queues the copy of the slot just filled; returns the device buffer."""
        i = self._next
        cuda.to_device(self._host[i], to=self.device, stream=self._stream)
        event = self._done[i]
        if event is None:
            # The simulator's events take no arguments.
            event = cuda.event() if self._simulated else cuda.event(timing=False)
            self._done[i] = event
        event.record(self._stream)
        self.last = self._host[i]
        self._next = (i + 1) % self.SLOTS
        return self.device


def _simulator_shapes_like_hardware() -> None:
    """Lets simulated device arrays' shapes take negative indices.

    A real DeviceNDArray's ``shape`` is a plain tuple, so layer code may write
    ``x.shape[-1]``; the simulator's host-side FakeShape refuses negative
    indices, which would make code that is correct on a GPU fail only under the
    simulator. Simulator only; a no-op if its internals move.
    """
    try:
        from numba.cuda.simulator.cudadrv import devicearray as sim_devicearray
    except ImportError:
        return
    fake_shape = getattr(sim_devicearray, "FakeShape", None)
    if fake_shape is not None and fake_shape.__getitem__ is not tuple.__getitem__:
        fake_shape.__getitem__ = tuple.__getitem__


def _shape_tuple(shape: Any) -> Tuple[int, ...]:
    if isinstance(shape, (int, np.integer)):
        return (int(shape),)
    return tuple(shape)
