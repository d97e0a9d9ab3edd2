"""Activation names as Keras spells them, resolved to the kernels' names."""
from __future__ import annotations

from typing import Optional

from .backend.base import ACTIVATIONS

_ALIASES = {None: "linear", "linear": "linear", "relu": "relu", "sigmoid": "sigmoid",
            "tanh": "tanh", "softmax": "softmax"}


def get(identifier: Optional[str]) -> str:
    """Canonical activation name for ``identifier`` (None means linear).

    Raises:
        ValueError: for an activation fastnn does not implement.
    """
    key = identifier.lower() if isinstance(identifier, str) else identifier
    if key not in _ALIASES:
        raise ValueError(f"unknown activation {identifier!r}; expected one of "
                         f"{ACTIVATIONS} or None")
    return _ALIASES[key]
