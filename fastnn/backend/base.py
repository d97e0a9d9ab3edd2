"""The contract every backend fulfils.

Layers, losses, optimisers and the model call only these methods, so a model runs
unchanged on any backend. Arrays are the backend's own type (NumPy arrays on the
CPU, Numba device arrays on CUDA), float32 unless said otherwise, C-contiguous.

Conventions:
  * Every op writes into caller-provided output arrays (``out``, ``dx``, ...):
    the training loop allocates nothing after its first batch.
  * ``act`` is one of the names in ``ACTIVATIONS``.
  * Loss and metric ops ADD their result into a one-element float64 backend
    array ``acc`` instead of returning it, so a GPU backend never has to
    synchronise per step; read it with ``to_numpy(acc)[0]``.
  * Shapes: 2-D ops take (rows, cols) arrays; elementwise ops take any shape.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Tuple

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax")

# Loss kinds. "*_logits" kinds take raw scores and also write the activated
# predictions (softmax / sigmoid) into ``probs``.
LOSS_KINDS = (
    "softmax_cce_logits",         # target: one-hot float32 (rows, cols)
    "softmax_sparse_cce_logits",  # target: int32 labels (rows,)
    "cce_probs",                  # target: one-hot float32
    "sparse_cce_probs",           # target: int32 labels (rows,)
    "sigmoid_bce_logits",         # target: float32 (rows, cols) in [0, 1]
    "bce_probs",                  # target: float32 (rows, cols) in [0, 1]
    "mse",
    "mae",
)

# Metric kinds: acc[0] += sum over rows of the per-sample metric.
METRIC_KINDS = (
    "categorical_accuracy",         # target one-hot: argmax(pred) == argmax(target)
    "sparse_categorical_accuracy",  # target int32 labels
    "binary_accuracy",              # mean over cols of (pred > 0.5) == (target > 0.5)
    "mse",                          # mean over cols of (pred - target)^2
    "mae",                          # mean over cols of |pred - target|
)


class Backend:
    """Abstract backend. Subclasses implement every method below."""

    name: str = "abstract"

    # ---- memory ---------------------------------------------------------
    def empty(self, shape: Sequence[int], dtype: Any = "float32") -> Any:
        """Uninitialised array."""
        raise NotImplementedError

    def zeros(self, shape: Sequence[int], dtype: Any = "float32") -> Any:
        raise NotImplementedError

    def asarray(self, host: Any) -> Any:
        """A backend copy of a NumPy array (same dtype, C-contiguous)."""
        raise NotImplementedError

    def stage(self, host: Any) -> Any:
        """A backend array holding a NumPy array's values for reading only:
        the CPU shares memory when the dtype and layout already fit; a GPU
        uploads a copy. Used to place a whole data set once per fit."""
        return self.asarray(host)

    def to_numpy(self, arr: Any) -> Any:
        """A NumPy array with the values of ``arr`` (may share memory on CPU)."""
        raise NotImplementedError

    def copy_(self, dst: Any, src: Any) -> None:
        """dst[...] = src (same shape and dtype, both backend arrays)."""
        raise NotImplementedError

    def fill_(self, dst: Any, value: float) -> None:
        raise NotImplementedError

    def synchronize(self) -> None:
        """Wait for queued work (no-op on CPU)."""

    # ---- dense algebra --------------------------------------------------
    def gemm(self, a: Any, b: Any, out: Any, trans_a: bool = False,
             trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0) -> None:
        """out = alpha * op(a) @ op(b) + beta * out (2-D arrays)."""
        raise NotImplementedError

    def dense_fwd(self, x: Any, w: Any, b: Optional[Any], act: str, out: Any) -> None:
        """out = act(x @ w + b); x (B, K), w (K, N), b (N,) or None, out (B, N)."""
        raise NotImplementedError

    def dense_bwd(self, x: Any, w: Any, dz: Any, dw: Any, db: Optional[Any],
                  dx: Optional[Any]) -> None:
        """dw = x.T @ dz; db = column sums of dz (if db is not None);
        dx = dz @ w.T (if dx is not None). dz is the gradient w.r.t. the
        pre-activation. Overwrites (does not accumulate into) dw, db, dx."""
        raise NotImplementedError

    def bias_act_fwd(self, x: Any, b: Optional[Any], act: str, out: Any) -> None:
        """out = act(x + b) over (rows, cols); b may be None; out may be x."""
        raise NotImplementedError

    def act_bwd(self, act: str, y: Any, dy: Any, dx: Any) -> None:
        """dx = dy * act'(.), written via the forward output y; dx may be dy."""
        raise NotImplementedError

    def bias_grad(self, dz: Any, db: Any) -> None:
        """db = column sums of the (rows, cols) array dz, in row order."""
        raise NotImplementedError

    def act_bias_bwd(self, act: str, y: Any, dy: Any, dz: Any, db: Optional[Any]) -> None:
        """dz = dy * act'(.) via the forward output y (dz may be dy), then db =
        column sums of dz when db is not None. Backends fuse the two passes
        where they can; this default runs them one after the other."""
        if act != "linear":
            self.act_bwd(act, y, dy, dz)
        elif dz is not dy:
            self.copy_(dz, dy)
        if db is not None:
            self.bias_grad(dz, db)

    # ---- losses and metrics --------------------------------------------
    def loss(self, kind: str, pred: Any, target: Any, grad: Any,
             acc: Any, probs: Optional[Any] = None) -> None:
        """acc[0] += mean-over-rows loss; grad = d(mean loss)/d(pred).
        ``probs`` is required for "*_logits" kinds and receives the activated
        predictions."""
        raise NotImplementedError

    def metric(self, kind: str, pred: Any, target: Any, acc: Any) -> None:
        """acc[0] += sum over rows of the per-sample metric."""
        raise NotImplementedError

    # ---- optimisers (flat buffers) --------------------------------------
    def sumsq(self, x: Any) -> float:
        """Sum of squares of a flat array, as a Python float (float64 accumulation)."""
        raise NotImplementedError

    def scale_(self, x: Any, s: float) -> None:
        """x *= s in place."""
        raise NotImplementedError

    def sgd_step(self, p: Any, g: Any, velocity: Optional[Any], *, lr: float,
                 momentum: float, nesterov: bool, weight_decay: float,
                 grad_scale: float, clip_value: float) -> None:
        """See fnn_sgd_step in ext/fastnn.h (clip_value <= 0 means no clipping)."""
        raise NotImplementedError

    def adam_step(self, p: Any, g: Any, m: Any, v: Any, *, lr: float,
                  beta_1: float, beta_2: float, epsilon: float, step: int,
                  weight_decay: float, grad_scale: float, clip_value: float) -> None:
        """See fnn_adam_step in ext/fastnn.h (step is 1-based)."""
        raise NotImplementedError

    def rmsprop_step(self, p: Any, g: Any, vel: Any, mom: Optional[Any],
                     avg: Optional[Any], *, lr: float, rho: float, momentum: float,
                     epsilon: float, weight_decay: float, grad_scale: float,
                     clip_value: float) -> None:
        """See fnn_rmsprop_step in ext/fastnn.h."""
        raise NotImplementedError

    # ---- data movement and elementwise ----------------------------------
    def gather_rows(self, src: Any, idx: Any, out: Any) -> None:
        """out[i] = src[idx[i]]; src (N, ...) float32 or int32, idx int64 (B,)
        (a NumPy array on every backend), out (B, ...) of src's dtype."""
        raise NotImplementedError

    def dropout_fwd(self, x: Any, rate: float, rng: Any, mask: Any, out: Any) -> None:
        """mask = (u >= rate) / (1 - rate) with u ~ U[0,1) drawn from ``rng``
        (a numpy.random.Generator); out = x * mask."""
        raise NotImplementedError

    def mul(self, a: Any, b: Any, out: Any) -> None:
        raise NotImplementedError

    def add(self, a: Any, b: Any, out: Any) -> None:
        raise NotImplementedError

    def concat_last(self, xs: Sequence[Any], out: Any) -> None:
        """out = the arrays ``xs`` joined along their last axis."""
        raise NotImplementedError

    def split_last(self, x: Any, outs: Sequence[Any]) -> None:
        """The inverse of concat_last: outs[i] = consecutive last-axis slices of x."""
        raise NotImplementedError

    # ---- convolution ----------------------------------------------------
    # Images are NHWC (B, H, W, C) float32, kernels (kh, kw, C, F) as Keras.
    # ``strides`` / ``dilation`` / ``pool`` are (rows, cols) pairs; ``padding``
    # is explicit zero padding (top, bottom, left, right): layers compute it
    # with fastnn.backend.conv_shapes.resolve_padding ('same' puts the odd
    # element at the bottom / right, as TensorFlow). Padded positions never
    # take part in pooling. Outputs are overwritten, never accumulated into.
    def conv2d_fwd(self, x: Any, w: Any, b: Optional[Any], out: Any, *,
                   strides: Tuple[int, int] = (1, 1),
                   padding: Tuple[int, int, int, int] = (0, 0, 0, 0),
                   dilation: Tuple[int, int] = (1, 1), act: str = "linear") -> None:
        """out (B, Ho, Wo, F) = act(conv2d(x, w) + b); b (F,) or None; ``act``
        as ACTIVATIONS, softmax over the last (filter) axis of each pixel.
        Ho = (H + top + bottom - dilation_h*(kh-1) - 1) // stride_h + 1, and
        likewise Wo."""
        raise NotImplementedError

    def conv2d_bwd(self, x: Any, w: Any, dz: Any, dw: Any, db: Optional[Any],
                   dx: Optional[Any], *, strides: Tuple[int, int] = (1, 1),
                   padding: Tuple[int, int, int, int] = (0, 0, 0, 0),
                   dilation: Tuple[int, int] = (1, 1)) -> None:
        """From dz (B, Ho, Wo, F), the gradient w.r.t. the pre-activation
        output: dw (kh, kw, C, F), db (F,) if not None, dx like x if not None
        (pass None for a first layer)."""
        raise NotImplementedError

    def maxpool2d_fwd(self, x: Any, out: Any, argmax: Any, *,
                      pool: Tuple[int, int] = (2, 2),
                      strides: Optional[Tuple[int, int]] = None,
                      padding: Tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        """out = window max; argmax (int32 or int64, out's shape) = flat index
        (h*W + w)*C + c of the max within its image (first max in row-major
        window order; NaN propagates). strides None means ``pool``; every
        pad must be smaller than the window."""
        raise NotImplementedError

    def maxpool2d_bwd(self, dy: Any, argmax: Any, dx: Any) -> None:
        """dx = 0, then dx[b].flat[argmax[b]] += dy[b] (deterministic order)."""
        raise NotImplementedError

    def avgpool2d_fwd(self, x: Any, out: Any, *, pool: Tuple[int, int] = (2, 2),
                      strides: Optional[Tuple[int, int]] = None,
                      padding: Tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        """out = mean over each window's in-image elements (Keras 'same')."""
        raise NotImplementedError

    def avgpool2d_bwd(self, dy: Any, dx: Any, *, pool: Tuple[int, int] = (2, 2),
                      strides: Optional[Tuple[int, int]] = None,
                      padding: Tuple[int, int, int, int] = (0, 0, 0, 0)) -> None:
        """dx = 0, then each window's in-image elements += dy / their count."""
        raise NotImplementedError

    def global_avgpool_fwd(self, x: Any, out: Any) -> None:
        """out (B, C) = mean of x (B, H, W, C) over H and W."""
        raise NotImplementedError

    def global_avgpool_bwd(self, dy: Any, dx: Any) -> None:
        """dx (B, H, W, C) = dy (B, C) / (H*W)."""
        raise NotImplementedError

    def global_maxpool_fwd(self, x: Any, out: Any, argmax: Any) -> None:
        """out (B, C) = max over H and W; argmax (B, C) int32/int64 = flat
        index (h*W + w)*C + c within the image."""
        raise NotImplementedError

    def global_maxpool_bwd(self, dy: Any, argmax: Any, dx: Any) -> None:
        """dx = 0, then dx[b].flat[argmax[b]] += dy[b]."""
        raise NotImplementedError

    def zeropad2d_fwd(self, x: Any, out: Any, *,
                      padding: Tuple[int, int, int, int]) -> None:
        """out (B, H+top+bottom, W+left+right, C) = x surrounded by zeros."""
        raise NotImplementedError

    def zeropad2d_bwd(self, dy: Any, dx: Any, *,
                      padding: Tuple[int, int, int, int]) -> None:
        """dx = the interior of dy."""
        raise NotImplementedError

    def batchnorm_fwd_train(self, x: Any, out: Any, gamma: Optional[Any],
                            beta: Optional[Any], moving_mean: Any, moving_var: Any,
                            save_mean: Any, save_invstd: Any, *,
                            momentum: float = 0.99, epsilon: float = 1e-3) -> None:
        """Keras training-mode batch norm over the last axis of x (rows, C)
        or (B, H, W, C): batch mean m and biased variance v; out =
        (x - m) / sqrt(v + epsilon) * gamma + beta (gamma / beta None: 1 / 0);
        save_mean = m, save_invstd = 1 / sqrt(v + epsilon); in place,
        moving = moving*momentum + batch*(1 - momentum) for m and v."""
        raise NotImplementedError

    def batchnorm_fwd_infer(self, x: Any, out: Any, gamma: Optional[Any],
                            beta: Optional[Any], moving_mean: Any, moving_var: Any, *,
                            epsilon: float = 1e-3) -> None:
        """out = (x - moving_mean) / sqrt(moving_var + epsilon) * gamma + beta."""
        raise NotImplementedError

    def batchnorm_bwd(self, x: Any, dy: Any, gamma: Optional[Any], save_mean: Any,
                      save_invstd: Any, dx: Any, dgamma: Optional[Any],
                      dbeta: Optional[Any]) -> None:
        """Gradients of batchnorm_fwd_train (given its save_mean / save_invstd):
        dbeta = sum dy, dgamma = sum dy*xhat, dx = gamma*invstd*(dy -
        dbeta/n - xhat*dgamma/n) with n the rows; dgamma / dbeta may be None."""
        raise NotImplementedError


def check_kind(kind: str, allowed: Tuple[str, ...], what: str) -> None:
    if kind not in allowed:
        raise ValueError(f"unknown {what} {kind!r}; expected one of {allowed}")
