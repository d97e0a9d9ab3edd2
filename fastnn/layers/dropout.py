"""Dropout: inverted dropout in training, the identity in inference."""
from __future__ import annotations

from typing import Any, Optional

from ..utils import global_rng
from .base import Layer


class Dropout(Layer):
    """Args:
        rate: fraction of inputs to drop, in [0, 1).

    Raises:
        ValueError: for a rate outside [0, 1).
    """

    def __init__(self, rate: float, seed: Optional[int] = None, **kwargs: Any):
        super().__init__(**kwargs)
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        self.rate = rate
        self.seed = seed
        self._rng = None

    def _generator(self):
        if self.seed is None:
            return global_rng()
        if self._rng is None:
            import numpy as np
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def forward(self, x: Any, training: bool) -> Any:
        active = training and self.rate > 0.0
        self.ctx["mask"] = self.scratch("mask", x.shape) if active else None
        if not active:
            return x
        y = self.scratch("y", x.shape)
        self.backend.dropout_fwd(x, self.rate, self._generator(), self.ctx["mask"], y)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        if not need_dx:
            return None
        mask = self.ctx["mask"]
        if mask is None:
            return dy
        self.backend.mul(dy, mask, dy)
        return dy

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rate=self.rate, seed=self.seed)
        return config
