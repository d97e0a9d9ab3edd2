"""Adam and AdamW (decoupled weight decay), Keras's formulas and defaults."""
from __future__ import annotations

from typing import Any

from .base import Optimizer


class Adam(Optimizer):
    """Args:
        learning_rate: default 0.001.
        beta_1, beta_2: moment decay rates (0.9, 0.999).
        epsilon: 1e-7 as in Keras.
        amsgrad: not supported (raises ValueError when True).
    """

    name = "adam"
    slot_names = ("m", "v")

    def __init__(self, learning_rate: Any = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, amsgrad: bool = False, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, **kwargs)
        if amsgrad:
            raise ValueError("Adam: amsgrad=True is not supported")
        for key, value in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not 0.0 <= float(value) < 1.0:
                raise ValueError(f"Adam: {key} must be in [0, 1), got {value!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"Adam: epsilon must be > 0, got {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _step(self, params, grads, lr, grad_scale, clip_value):
        self.backend.adam_step(params, grads, self.slots["m"], self.slots["v"], lr=lr,
                               beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon,
                               step=self.iterations,
                               weight_decay=float(self.weight_decay or 0.0),
                               grad_scale=grad_scale, clip_value=clip_value)

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return config


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras default weight_decay=0.004)."""

    name = "adamw"

    def __init__(self, learning_rate: Any = 0.001, weight_decay: float = 0.004, **kwargs: Any):
        super().__init__(learning_rate=learning_rate, weight_decay=weight_decay, **kwargs)
