"""Metrics by Keras name, resolved to the kernels that accumulate them."""
from __future__ import annotations

from typing import List, Tuple

from .losses import BinaryCrossentropy, Loss

_KINDS = {
    "categorical_accuracy": "categorical_accuracy",
    "sparse_categorical_accuracy": "sparse_categorical_accuracy",
    "binary_accuracy": "binary_accuracy",
    "mse": "mse", "mean_squared_error": "mse",
    "mae": "mae", "mean_absolute_error": "mae",
}


def _accuracy_kind(loss: Loss, output_units: int) -> str:
    """Keras's choice of accuracy for a plain 'accuracy' metric."""
    if loss.sparse_labels:
        return "sparse_categorical_accuracy"
    if isinstance(loss, BinaryCrossentropy) or output_units == 1:
        return "binary_accuracy"
    return "categorical_accuracy"


def resolve(names: List[str], loss: Loss, output_units: int) -> List[Tuple[str, str]]:
    """(history key, kernel kind) for each requested metric.

    Raises:
        ValueError: for unknown metrics, or ones the targets cannot feed (a
            categorical metric with integer labels, or the reverse).
    """
    resolved = []
    for name in names:
        if not isinstance(name, str):
            raise ValueError(f"metrics must be given by name, got {name!r}")
        key = name.lower()
        if key in ("accuracy", "acc"):
            kind = _accuracy_kind(loss, output_units)
        elif key in _KINDS:
            kind = _KINDS[key]
        else:
            raise ValueError(f"unknown metric {name!r}; expected 'accuracy' or one of "
                             f"{sorted(_KINDS)}")
        if (kind == "sparse_categorical_accuracy") != loss.sparse_labels:
            raise ValueError(f"metric {name!r} does not fit loss {loss.name!r}: integer "
                             "labels need sparse metrics, one-hot targets dense ones")
        resolved.append((name, kind))
    return resolved
