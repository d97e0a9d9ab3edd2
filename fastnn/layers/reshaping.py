"""Flatten and Reshape: views of the same memory, no copies."""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

from .base import Layer, Shape


class Flatten(Layer):
    """Flattens each sample to one axis (as keras.layers.Flatten)."""

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (math.prod(input_shape),)

    def forward(self, x: Any, training: bool) -> Any:
        self.ctx["x_shape"] = x.shape
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        return dy.reshape(self.ctx["x_shape"]) if need_dx else None


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (one entry may be -1).

    Raises:
        ValueError: when the sizes disagree.
    """

    def __init__(self, target_shape: Sequence[int], **kwargs: Any):
        super().__init__(**kwargs)
        target = tuple(int(d) for d in target_shape)
        if sum(d == -1 for d in target) > 1 or any(d == 0 or d < -1 for d in target):
            raise ValueError(f"Reshape: invalid target_shape {target_shape!r}")
        self.target_shape = target

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        size = math.prod(input_shape)
        known = math.prod(d for d in self.target_shape if d != -1)
        if -1 in self.target_shape:
            if size % known:
                raise ValueError(f"Reshape {self.name!r}: cannot reshape {input_shape} "
                                 f"into {self.target_shape}")
            return tuple(size // known if d == -1 else d for d in self.target_shape)
        if known != size:
            raise ValueError(f"Reshape {self.name!r}: cannot reshape {input_shape} "
                             f"({size} values) into {self.target_shape} ({known} values)")
        return self.target_shape

    def forward(self, x: Any, training: bool) -> Any:
        self.ctx["x_shape"] = x.shape
        return x.reshape((x.shape[0],) + self.output_shape_)

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        return dy.reshape(self.ctx["x_shape"]) if need_dx else None

    def get_config(self) -> dict:
        config = super().get_config()
        config["target_shape"] = list(self.target_shape)
        return config
