"""Convolution, pooling and batch-normalisation ops of the CPU backend.

A mixin: ``CPUBackend`` inherits ``CPUConvOps``. Every op maps the backend
contract (see the convolution section of ``fastnn.backend.base.Backend``)
onto ``fastnn._conv``, which checks the arguments and runs the C kernels.

Scratch space (conv and batch-norm workspaces) is allocated once per
(op, shapes, thread count, calling thread) and reused, so a training loop
allocates nothing after its first batch. The thread count comes from the
project's setting (``fastnn._C.get_num_threads``, which also drops to one
thread in a forked child) and is passed to the kernels explicitly.
"""
from __future__ import annotations

import threading
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

from .. import _conv
from .conv_shapes import PaddingArg, normalize_pair, resolve_padding

try:  # the project's thread setting lives in fastnn._C (threads.c)
    from .. import _C as _threads_owner
    _get_num_threads = _threads_owner.get_num_threads
except (ImportError, AttributeError):  # pragma: no cover - partial builds only
    _get_num_threads = None

# A model sees few distinct shapes (full batch, last batch, eval batch); the
# cap only guards against unbounded growth when shapes keep changing.
_MAX_WORKSPACES = 64

IntPair = Union[int, Sequence[int]]


def _nthreads() -> int:
    return _get_num_threads() if _get_num_threads is not None else 1


class CPUConvOps:
    """Conv / pool / batch-norm backend ops over NumPy arrays (NHWC, float32)."""

    def _conv_scratch(self, key: Tuple[Any, ...], size_fn) -> np.ndarray:
        """The uint8 workspace cached under ``key``, sized by ``size_fn()``
        on first use."""
        cache: Dict[Tuple[Any, ...], np.ndarray] = self.__dict__.setdefault(
            "_conv_workspaces", {})
        key = key + (threading.get_ident(),)
        work = cache.get(key)
        if work is None:
            if len(cache) >= _MAX_WORKSPACES:
                cache.pop(next(iter(cache)))
            work = np.empty(int(size_fn()), dtype=np.uint8)
            cache[key] = work
        return work

    @staticmethod
    def _conv_args(w_shape: Sequence[int], x_shape: Sequence[int], strides: IntPair,
                   padding: PaddingArg, dilation: IntPair):
        s = normalize_pair(strides, "strides")
        d = normalize_pair(dilation, "dilation")
        p = resolve_padding(padding, x_shape[1:3], w_shape[:2], s, d)
        return s, p, d

    # ---- convolution ----------------------------------------------------
    def conv2d_fwd(self, x: np.ndarray, w: np.ndarray, b: Optional[np.ndarray],
                   out: np.ndarray, *, strides: IntPair = (1, 1),
                   padding: PaddingArg = (0, 0, 0, 0), dilation: IntPair = (1, 1),
                   act: str = "linear") -> None:
        """out = act(conv2d(x, w) + b); see ``Backend.conv2d_fwd``."""
        s, p, d = self._conv_args(w.shape, x.shape, strides, padding, dilation)
        nt = _nthreads()
        work = self._conv_scratch(
            ("conv2d", x.shape, w.shape, s, p, d, nt),
            lambda: _conv.conv2d_workspace_bytes(x.shape, w.shape, s, p, d, nt))
        _conv.conv2d_fwd(x, w, b, out, s, p, d, act, work, nt)

    def conv2d_bwd(self, x: np.ndarray, w: np.ndarray, dz: np.ndarray,
                   dw: np.ndarray, db: Optional[np.ndarray], dx: Optional[np.ndarray],
                   *, strides: IntPair = (1, 1), padding: PaddingArg = (0, 0, 0, 0),
                   dilation: IntPair = (1, 1)) -> None:
        """dw, db, dx from dz; see ``Backend.conv2d_bwd``."""
        if dw is None:
            raise ValueError("conv2d_bwd: argument 'dw' is required")
        s, p, d = self._conv_args(w.shape, x.shape, strides, padding, dilation)
        nt = _nthreads()
        work = self._conv_scratch(
            ("conv2d", x.shape, w.shape, s, p, d, nt),
            lambda: _conv.conv2d_workspace_bytes(x.shape, w.shape, s, p, d, nt))
        _conv.conv2d_bwd(x, w, dz, dw, db, dx, s, p, d, work, nt)

    # ---- pooling --------------------------------------------------------
    @staticmethod
    def _pool_args(x_shape: Sequence[int], pool: IntPair, strides: Optional[IntPair],
                   padding: PaddingArg):
        k = normalize_pair(pool, "pool")
        s = k if strides is None else normalize_pair(strides, "strides")
        p = resolve_padding(padding, x_shape[1:3], k, s)
        return k, s, p

    def maxpool2d_fwd(self, x: np.ndarray, out: np.ndarray, argmax: np.ndarray, *,
                      pool: IntPair = (2, 2), strides: Optional[IntPair] = None,
                      padding: PaddingArg = (0, 0, 0, 0)) -> None:
        """See ``Backend.maxpool2d_fwd``."""
        k, s, p = self._pool_args(x.shape, pool, strides, padding)
        _conv.maxpool2d_fwd(x, out, argmax, k, s, p, _nthreads())

    def maxpool2d_bwd(self, dy: np.ndarray, argmax: np.ndarray, dx: np.ndarray) -> None:
        """See ``Backend.maxpool2d_bwd``."""
        _conv.maxpool_bwd(dy, argmax, dx, _nthreads())

    def avgpool2d_fwd(self, x: np.ndarray, out: np.ndarray, *, pool: IntPair = (2, 2),
                      strides: Optional[IntPair] = None,
                      padding: PaddingArg = (0, 0, 0, 0)) -> None:
        """See ``Backend.avgpool2d_fwd``."""
        k, s, p = self._pool_args(x.shape, pool, strides, padding)
        _conv.avgpool2d_fwd(x, out, k, s, p, _nthreads())

    def avgpool2d_bwd(self, dy: np.ndarray, dx: np.ndarray, *, pool: IntPair = (2, 2),
                      strides: Optional[IntPair] = None,
                      padding: PaddingArg = (0, 0, 0, 0)) -> None:
        """See ``Backend.avgpool2d_bwd``."""
        k, s, p = self._pool_args(dx.shape, pool, strides, padding)
        _conv.avgpool2d_bwd(dy, dx, k, s, p, _nthreads())

    def global_avgpool_fwd(self, x: np.ndarray, out: np.ndarray) -> None:
        """See ``Backend.global_avgpool_fwd``."""
        _conv.global_avgpool_fwd(x, out, _nthreads())

    def global_avgpool_bwd(self, dy: np.ndarray, dx: np.ndarray) -> None:
        """See ``Backend.global_avgpool_bwd``."""
        _conv.global_avgpool_bwd(dy, dx, _nthreads())

    def global_maxpool_fwd(self, x: np.ndarray, out: np.ndarray, argmax: np.ndarray) -> None:
        """See ``Backend.global_maxpool_fwd``."""
        _conv.global_maxpool_fwd(x, out, argmax, _nthreads())

    def global_maxpool_bwd(self, dy: np.ndarray, argmax: np.ndarray, dx: np.ndarray) -> None:
        """See ``Backend.global_maxpool_bwd``."""
        _conv.maxpool_bwd(dy, argmax, dx, _nthreads())

    def zeropad2d_fwd(self, x: np.ndarray, out: np.ndarray, *,
                      padding: Sequence[int]) -> None:
        """See ``Backend.zeropad2d_fwd``."""
        _conv.zeropad2d_fwd(x, out, resolve_padding(padding, x.shape[1:3], (1, 1)),
                            _nthreads())

    def zeropad2d_bwd(self, dy: np.ndarray, dx: np.ndarray, *,
                      padding: Sequence[int]) -> None:
        """See ``Backend.zeropad2d_bwd``."""
        _conv.zeropad2d_bwd(dy, dx, resolve_padding(padding, dx.shape[1:3], (1, 1)),
                            _nthreads())

    # ---- batch normalisation --------------------------------------------
    def _bn_work(self, x: np.ndarray) -> np.ndarray:
        channels = x.shape[-1] if x.ndim else 0
        rows = x.size // channels if channels else 0
        return self._conv_scratch(
            ("batchnorm", rows, channels),
            lambda: _conv.batchnorm_workspace_bytes(rows, channels))

    def batchnorm_fwd_train(self, x: np.ndarray, out: np.ndarray,
                            gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
                            moving_mean: np.ndarray, moving_var: np.ndarray,
                            save_mean: np.ndarray, save_invstd: np.ndarray, *,
                            momentum: float = 0.99, epsilon: float = 1e-3) -> None:
        """See ``Backend.batchnorm_fwd_train``."""
        _conv.batchnorm_fwd_train(x, out, gamma, beta, moving_mean, moving_var, save_mean,
                                  save_invstd, momentum, epsilon, self._bn_work(x),
                                  _nthreads())

    def batchnorm_fwd_infer(self, x: np.ndarray, out: np.ndarray,
                            gamma: Optional[np.ndarray], beta: Optional[np.ndarray],
                            moving_mean: np.ndarray, moving_var: np.ndarray, *,
                            epsilon: float = 1e-3) -> None:
        """See ``Backend.batchnorm_fwd_infer``."""
        _conv.batchnorm_fwd_infer(x, out, gamma, beta, moving_mean, moving_var, epsilon,
                                  _nthreads())

    def batchnorm_bwd(self, x: np.ndarray, dy: np.ndarray, gamma: Optional[np.ndarray],
                      save_mean: np.ndarray, save_invstd: np.ndarray, dx: np.ndarray,
                      dgamma: Optional[np.ndarray], dbeta: Optional[np.ndarray]) -> None:
        """See ``Backend.batchnorm_bwd``."""
        _conv.batchnorm_bwd(x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta,
                            self._bn_work(x), _nthreads())
