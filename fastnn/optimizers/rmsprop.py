"""RMSprop, Keras's formulation (optionally centred, with momentum)."""
from __future__ import annotations

from typing import Any

from .base import Optimizer


class RMSprop(Optimizer):
    """Args:
        learning_rate: default 0.001.
        rho: decay of the squared-gradient average (0.9).
        momentum: in [0, 1).
        epsilon: 1e-7.
        centered: normalise by the gradient's estimated variance.
    """

    name = "rmsprop"
    slot_names = ("velocity", "momentum", "average_gradient")

    def __init__(self, learning_rate: Any = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if not 0.0 <= float(rho) < 1.0:
            raise ValueError(f"RMSprop: rho must be in [0, 1), got {rho!r}")
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"RMSprop: momentum must be in [0, 1), got {momentum!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"RMSprop: epsilon must be > 0, got {epsilon!r}")
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered = bool(centered)

    def active_slots(self):
        slots = ["velocity"]
        if self.momentum > 0:
            slots.append("momentum")
        if self.centered:
            slots.append("average_gradient")
        return tuple(slots)

    def _step(self, params, grads, lr, grad_scale, clip_value):
        self.backend.rmsprop_step(params, grads, self.slots["velocity"],
                                  self.slots.get("momentum"), self.slots.get("average_gradient"),
                                  lr=lr, rho=self.rho, momentum=self.momentum,
                                  epsilon=self.epsilon,
                                  weight_decay=float(self.weight_decay or 0.0),
                                  grad_scale=grad_scale, clip_value=clip_value)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon,
                      centered=self.centered)
        return config
