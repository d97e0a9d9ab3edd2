"""Pooling layers over NHWC images: max, average, and their global forms."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from ..backend.conv_shapes import normalize_pair, pool_output_shape, resolve_padding
from .base import Layer, Shape


def _check_image(layer: Layer, input_shape: Shape) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"{type(layer).__name__} {layer.name!r} needs inputs of shape "
                         f"(H, W, C), got {input_shape}")


class _Pooling2D(Layer):
    def __init__(self, pool_size: Union[int, Sequence[int]] = (2, 2),
                 strides: Union[int, Sequence[int], None] = None, padding: str = "valid",
                 data_format: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__}: only channels_last is supported")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"{type(self).__name__}: padding must be 'valid' or 'same', "
                             f"got {padding!r}")
        self.pool_size = normalize_pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else normalize_pair(strides, "strides")
        self.padding = padding.lower()

    def build(self, input_shape: Shape) -> None:
        _check_image(self, input_shape)
        self._pads = resolve_padding(self.padding, input_shape[:2], self.pool_size,
                                     self.strides)
        super().build(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return pool_output_shape((None,) + tuple(input_shape), self.pool_size, self.strides,
                                 self.padding)[1:]

    def _geometry(self) -> dict:
        return {"pool": self.pool_size, "strides": self.strides, "padding": self._pads}

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(pool_size=list(self.pool_size), strides=list(self.strides),
                      padding=self.padding)
        return config


class MaxPooling2D(_Pooling2D):
    """Window maximum (as keras.layers.MaxPooling2D)."""

    def forward(self, x: Any, training: bool) -> Any:
        shape = (x.shape[0],) + self.output_shape_
        y = self.scratch("y", shape)
        argmax = self.scratch("argmax", shape, "int64")
        self.backend.maxpool2d_fwd(x, y, argmax, **self._geometry())
        self.ctx["argmax"], self.ctx["x_shape"] = argmax, tuple(x.shape)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        if not need_dx:
            return None
        dx = self.scratch("dx", self.ctx["x_shape"])
        self.backend.maxpool2d_bwd(dy, self.ctx["argmax"], dx)
        return dx


class AveragePooling2D(_Pooling2D):
    """Window mean over in-image elements (as keras.layers.AveragePooling2D)."""

    def forward(self, x: Any, training: bool) -> Any:
        y = self.scratch("y", (x.shape[0],) + self.output_shape_)
        self.backend.avgpool2d_fwd(x, y, **self._geometry())
        self.ctx["x_shape"] = tuple(x.shape)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        if not need_dx:
            return None
        dx = self.scratch("dx", self.ctx["x_shape"])
        self.backend.avgpool2d_bwd(dy, dx, **self._geometry())
        return dx


class _GlobalPooling2D(Layer):
    def build(self, input_shape: Shape) -> None:
        _check_image(self, input_shape)
        super().build(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return (input_shape[-1],)


class GlobalAveragePooling2D(_GlobalPooling2D):
    """Mean over height and width: (B, H, W, C) -> (B, C)."""

    def forward(self, x: Any, training: bool) -> Any:
        y = self.scratch("y", (x.shape[0], x.shape[3]))
        self.backend.global_avgpool_fwd(x, y)
        self.ctx["x_shape"] = tuple(x.shape)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        if not need_dx:
            return None
        dx = self.scratch("dx", self.ctx["x_shape"])
        self.backend.global_avgpool_bwd(dy, dx)
        return dx


class GlobalMaxPooling2D(_GlobalPooling2D):
    """Maximum over height and width: (B, H, W, C) -> (B, C)."""

    def forward(self, x: Any, training: bool) -> Any:
        y = self.scratch("y", (x.shape[0], x.shape[3]))
        argmax = self.scratch("argmax", (x.shape[0], x.shape[3]), "int64")
        self.backend.global_maxpool_fwd(x, y, argmax)
        self.ctx["argmax"], self.ctx["x_shape"] = argmax, tuple(x.shape)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        if not need_dx:
            return None
        dx = self.scratch("dx", self.ctx["x_shape"])
        self.backend.global_maxpool_bwd(dy, self.ctx["argmax"], dx)
        return dx
