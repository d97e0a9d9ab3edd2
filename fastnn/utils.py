"""Seeding, label encoding and small helpers shared by the API."""
from __future__ import annotations

import random
from typing import Optional

import numpy as np

_rng = np.random.default_rng()


def set_random_seed(seed: int) -> None:
    """Seeds every random source fastnn uses (as keras.utils.set_random_seed).

    Weight initialisation, shuffling and dropout all draw from one generator, so
    the same seed and thread count give bit-identical training.

    Args:
        seed: a non-negative integer.

    Raises:
        ValueError: if ``seed`` is not a non-negative integer.
    """
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: seed must be a non-negative int, got {seed!r}")
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    _rng = np.random.default_rng(seed)


def global_rng() -> np.random.Generator:
    """The generator behind initialisers, shuffling and dropout."""
    return _rng


def get_rng_state() -> dict:
    """The global generator's state (for checkpoints)."""
    return _rng.bit_generator.state


def set_rng_state(state: dict) -> None:
    """Restores a state returned by ``get_rng_state``."""
    _rng.bit_generator.state = state


def to_categorical(y, num_classes: Optional[int] = None, dtype: str = "float32") -> np.ndarray:
    """One-hot encodes integer class labels (as keras.utils.to_categorical).

    Args:
        y: array-like of non-negative integer labels.
        num_classes: number of classes; defaults to ``max(y) + 1``.
        dtype: dtype of the result.

    Returns:
        An array of shape ``y.shape + (num_classes,)`` (a trailing axis of size 1
        in ``y`` is dropped first, as Keras does).

    Raises:
        ValueError: for non-integer, negative or out-of-range labels.
    """
    y = np.asarray(y)
    if y.size and not (np.issubdtype(y.dtype, np.integer) or
                       (np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y))
                        and np.all(y == np.round(y)))):
        raise ValueError("to_categorical: labels must be integers")
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    y = y.astype(np.int64)
    if y.size and y.min() < 0:
        raise ValueError(f"to_categorical: labels must be >= 0, found {int(y.min())}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and y.max() >= num_classes:
        raise ValueError(f"to_categorical: label {int(y.max())} is out of range for "
                         f"num_classes={num_classes}")
    out = np.zeros(y.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, y[..., None], 1, axis=-1)
    return out


from .numerics import disable_check_numerics, enable_check_numerics  # noqa: E402,F401
