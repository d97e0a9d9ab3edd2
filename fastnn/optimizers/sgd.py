"""SGD with optional (Nesterov) momentum, Keras's formulation."""
from __future__ import annotations

from typing import Any

from .base import Optimizer


class SGD(Optimizer):
    """Args:
        learning_rate: default 0.01 as in Keras.
        momentum: in [0, 1).
        nesterov: use Nesterov momentum.
        (and the clipping / weight_decay arguments of Optimizer)
    """

    name = "SGD"
    slot_names = ("velocity",)

    def __init__(self, learning_rate: Any = 0.01, momentum: float = 0.0,
                 nesterov: bool = False, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        momentum = float(momentum)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.nesterov = bool(nesterov)

    def active_slots(self):
        return self.slot_names if self.momentum > 0 else ()

    def _step(self, params, grads, lr, grad_scale, clip_value):
        self.backend.sgd_step(params, grads, self.slots.get("velocity"), lr=lr,
                              momentum=self.momentum, nesterov=self.nesterov,
                              weight_decay=float(self.weight_decay or 0.0),
                              grad_scale=grad_scale, clip_value=clip_value)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(momentum=self.momentum, nesterov=self.nesterov)
        return config
