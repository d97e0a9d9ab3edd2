"""Losses with Keras's names, defaults and reduction (mean over the batch).

A loss here does not compute anything itself: it names the fused kernel that
computes the loss value and its gradient in one pass, choosing the logits form
when the model's last activation can be folded into it (softmax + categorical
cross-entropy, sigmoid + binary cross-entropy), which is both faster and free
of log(0).
"""
from __future__ import annotations

from typing import Any, Tuple, Union

import numpy as np


class Loss:
    """Base class.

    Attributes:
        name: the Keras name.
        sparse_labels: True when targets are integer class labels.
    """

    name = "loss"
    sparse_labels = False

    def __init__(self, from_logits: bool = False, name: str | None = None):
        self.from_logits = bool(from_logits)
        if name is not None:
            self.name = name

    def kernel(self, output_activation: str) -> Tuple[str, bool]:
        """(loss kernel kind, whether the model's output activation is folded in)."""
        raise NotImplementedError

    def get_config(self) -> dict:
        return {"from_logits": self.from_logits, "name": self.name}

    def __call__(self, y_true: Any, y_pred: Any) -> float:
        """The mean loss of NumPy predictions (for inspection, not training)."""
        from .backend import get_backend
        backend = get_backend("cpu")
        pred = np.ascontiguousarray(y_pred, dtype=np.float32)
        if pred.ndim == 1:
            pred = pred.reshape(-1, 1)
        target = (np.ascontiguousarray(y_true, dtype=np.int32).reshape(-1)
                  if self.sparse_labels else
                  np.ascontiguousarray(y_true, dtype=np.float32).reshape(pred.shape))
        kind, _ = self.kernel("linear")
        acc = np.zeros(1)
        grad = np.empty_like(pred)
        probs = np.empty_like(pred) if kind.endswith("_logits") else None
        backend.loss(kind, pred, target, grad, acc, probs)
        return float(acc[0])


class _CrossEntropy(Loss):
    _logits_kind = ""
    _probs_kind = ""
    _fusable = ""

    def kernel(self, output_activation: str) -> Tuple[str, bool]:
        if self.from_logits:
            return self._logits_kind, False
        if output_activation == self._fusable:
            return self._logits_kind, True
        return self._probs_kind, False


class CategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy for one-hot targets."""
    name = "categorical_crossentropy"
    _logits_kind, _probs_kind, _fusable = "softmax_cce_logits", "cce_probs", "softmax"


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy for integer class labels."""
    name = "sparse_categorical_crossentropy"
    sparse_labels = True
    _logits_kind, _probs_kind, _fusable = ("softmax_sparse_cce_logits", "sparse_cce_probs",
                                           "softmax")


class BinaryCrossentropy(_CrossEntropy):
    """Cross-entropy for targets in [0, 1], averaged over the last axis."""
    name = "binary_crossentropy"
    _logits_kind, _probs_kind, _fusable = "sigmoid_bce_logits", "bce_probs", "sigmoid"


class MeanSquaredError(Loss):
    name = "mean_squared_error"

    def kernel(self, output_activation: str) -> Tuple[str, bool]:
        return "mse", False


class MeanAbsoluteError(Loss):
    name = "mean_absolute_error"

    def kernel(self, output_activation: str) -> Tuple[str, bool]:
        return "mae", False


_BY_NAME = {
    "categorical_crossentropy": CategoricalCrossentropy,
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
    "mean_absolute_error": MeanAbsoluteError, "mae": MeanAbsoluteError,
}


def get(identifier: Union[str, Loss]) -> Loss:
    """A Loss from a Keras name or a Loss instance.

    Raises:
        ValueError: for an unknown name or object.
    """
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"unknown loss {identifier!r}; expected a fastnn.losses.Loss or one "
                     f"of {sorted(_BY_NAME)}")


def from_config(config: dict) -> Loss:
    cls = _BY_NAME.get(config.get("class_name", "").lower()) or _BY_NAME.get(
        config.get("name", ""))
    if cls is None:
        raise ValueError(f"unknown loss in config {config!r}")
    return cls(from_logits=bool(config.get("from_logits", False)))
