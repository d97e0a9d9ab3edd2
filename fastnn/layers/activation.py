"""Activation: applies a named activation elementwise (softmax over the last axis)."""
from __future__ import annotations

import math
from typing import Any, Optional

from .. import activations
from .base import Layer


class Activation(Layer):
    """Args:
        activation: name of the activation ('relu', 'sigmoid', 'tanh', 'softmax', 'linear').
    """

    def __init__(self, activation: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.emit_logits = False

    @property
    def activation_name(self) -> str:
        return "linear" if self.emit_logits else self.activation

    def _as_rows(self, arr: Any) -> Any:
        return arr.reshape(math.prod(arr.shape[:-1]), arr.shape[-1])

    def forward(self, x: Any, training: bool) -> Any:
        act = self.activation_name
        if act == "linear":
            return x
        y = self.scratch("y", x.shape)
        self.backend.bias_act_fwd(self._as_rows(x), None, act, self._as_rows(y))
        self.ctx["y"] = y
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        act = self.activation_name
        if not need_dx or act == "linear":
            return dy if need_dx else None
        dy2 = self._as_rows(dy)
        self.backend.act_bwd(act, self._as_rows(self.ctx["y"]), dy2, dy2)
        return dy

    def get_config(self) -> dict:
        config = super().get_config()
        config["activation"] = self.activation
        return config


class ReLU(Activation):
    def __init__(self, **kwargs: Any):
        super().__init__("relu", **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["activation"]
        return config


class Softmax(Activation):
    def __init__(self, **kwargs: Any):
        super().__init__("softmax", **kwargs)

    def get_config(self) -> dict:
        config = super().get_config()
        del config["activation"]
        return config
