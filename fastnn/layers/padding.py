"""ZeroPadding2D: zeros around NHWC images."""
from __future__ import annotations

from typing import Any, Optional

from .base import Layer, Shape


def _parse_padding(padding: Any) -> tuple:
    """Keras forms: n, (rows, cols), ((top, bottom), (left, right))."""
    try:
        if isinstance(padding, int) and not isinstance(padding, bool):
            pads = (padding,) * 4
        elif len(padding) == 2 and all(isinstance(p, int) for p in padding):
            pads = (padding[0], padding[0], padding[1], padding[1])
        elif len(padding) == 2 and all(len(p) == 2 for p in padding):
            pads = (padding[0][0], padding[0][1], padding[1][0], padding[1][1])
        elif len(padding) == 4:
            pads = tuple(padding)
        else:
            raise TypeError
        pads = tuple(int(p) for p in pads)
    except (TypeError, ValueError):
        raise ValueError(f"ZeroPadding2D: padding must be an int, (rows, cols) or "
                         f"((top, bottom), (left, right)), got {padding!r}") from None
    if min(pads) < 0:
        raise ValueError(f"ZeroPadding2D: padding must be non-negative, got {padding!r}")
    return pads


class ZeroPadding2D(Layer):
    """Args:
        padding: int, (rows, cols) or ((top, bottom), (left, right)).
    """

    def __init__(self, padding: Any = (1, 1), **kwargs: Any):
        super().__init__(**kwargs)
        self.padding = _parse_padding(padding)

    def build(self, input_shape: Shape) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"ZeroPadding2D {self.name!r} needs (H, W, C) inputs, got "
                             f"{input_shape}")
        super().build(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        t, b, l, r = self.padding
        return (input_shape[0] + t + b, input_shape[1] + l + r, input_shape[2])

    def forward(self, x: Any, training: bool) -> Any:
        y = self.scratch("y", (x.shape[0],) + self.output_shape_)
        self.backend.zeropad2d_fwd(x, y, padding=self.padding)
        self.ctx["x_shape"] = tuple(x.shape)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        if not need_dx:
            return None
        dx = self.scratch("dx", self.ctx["x_shape"])
        self.backend.zeropad2d_bwd(dy, dx, padding=self.padding)
        return dx

    def get_config(self) -> dict:
        config = super().get_config()
        t, b, l, r = self.padding
        config["padding"] = [[t, b], [l, r]]
        return config
