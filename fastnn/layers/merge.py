"""Merge layers for functional graphs: Add, Multiply, Concatenate."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from .base import Layer, Shape


class _Merge(Layer):
    """Base of layers that take a list of tensors."""

    takes_list = True

    def build(self, input_shape: Sequence[Shape]) -> None:
        shapes = [tuple(s) for s in input_shape]
        if len(shapes) < 2:
            raise ValueError(f"{type(self).__name__} {self.name!r} needs at least 2 inputs")
        self._check_shapes(shapes)
        self.input_shape_ = tuple(shapes)
        self.output_shape_ = tuple(self.compute_output_shape(shapes))
        self.built = True

    def _check_shapes(self, shapes: List[Shape]) -> None:
        if any(s != shapes[0] for s in shapes):
            raise ValueError(f"{type(self).__name__} {self.name!r} needs inputs of one shape, "
                             f"got {shapes}")

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return tuple(input_shape[0])


class Add(_Merge):
    """Sums its inputs elementwise (residual connections)."""

    def forward(self, xs: List[Any], training: bool) -> Any:
        y = self.scratch("y", xs[0].shape)
        self.backend.add(xs[0], xs[1], y)
        for x in xs[2:]:
            self.backend.add(y, x, y)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[List[Any]]:
        if not need_dx:
            return None
        # Every input receives dy; each gets its own copy because the layers
        # upstream may overwrite their incoming gradient in place.
        grads = [dy]
        for i in range(1, len(self.input_shape_)):
            copy = self.scratch(f"dx{i}", dy.shape)
            self.backend.copy_(copy, dy)
            grads.append(copy)
        return grads


class Multiply(_Merge):
    """Multiplies its inputs elementwise."""

    def forward(self, xs: List[Any], training: bool) -> Any:
        y = self.scratch("y", xs[0].shape)
        self.backend.mul(xs[0], xs[1], y)
        for x in xs[2:]:
            self.backend.mul(y, x, y)
        self.ctx["xs"] = list(xs)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[List[Any]]:
        if not need_dx:
            return None
        xs = self.ctx["xs"]
        grads = []
        for i in range(len(xs)):
            g = self.scratch(f"dx{i}", dy.shape)
            self.backend.copy_(g, dy)
            for j, x in enumerate(xs):
                if j != i:
                    self.backend.mul(g, x, g)
            grads.append(g)
        return grads


class Concatenate(_Merge):
    """Joins its inputs along the last axis (channels, for NHWC images).

    Args:
        axis: only -1 (the last axis) is supported.
    """

    def __init__(self, axis: int = -1, **kwargs: Any):
        super().__init__(**kwargs)
        if axis != -1:
            raise ValueError("Concatenate: only axis=-1 is supported")
        self.axis = axis

    def _check_shapes(self, shapes: List[Shape]) -> None:
        if any(s[:-1] != shapes[0][:-1] for s in shapes):
            raise ValueError(f"Concatenate {self.name!r} needs inputs that agree on all but "
                             f"the last axis, got {shapes}")

    def compute_output_shape(self, input_shape: Sequence[Shape]) -> Shape:
        return tuple(input_shape[0][:-1]) + (sum(s[-1] for s in input_shape),)

    def forward(self, xs: List[Any], training: bool) -> Any:
        y = self.scratch("y", tuple(xs[0].shape[:-1]) + (self.output_shape_[-1],))
        self.backend.concat_last(xs, y)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[List[Any]]:
        if not need_dx:
            return None
        grads = [self.scratch(f"dx{i}", tuple(dy.shape[:-1]) + (shape[-1],))
                 for i, shape in enumerate(self.input_shape_)]
        self.backend.split_last(dy, grads)
        return grads

    def get_config(self) -> dict:
        config = super().get_config()
        config["axis"] = self.axis
        return config
