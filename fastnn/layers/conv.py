"""Conv2D: 2-D convolution over NHWC images, Keras's kernel layout (kh, kw, C, F)."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from .. import activations, initializers
from ..backend.conv_shapes import conv_output_shape, normalize_pair, resolve_padding
from .base import Layer, Shape


class Conv2D(Layer):
    """A 2-D convolution (as keras.layers.Conv2D, channels_last).

    Args:
        filters: output channels.
        kernel_size: int or (kh, kw).
        strides: int or pair.
        padding: 'valid' or 'same' (TensorFlow's: odd padding at bottom/right).
        dilation_rate: int or pair.
        activation: activation name or None.
        use_bias: add a bias per filter.
        kernel_initializer, bias_initializer: initialisers.

    Raises:
        ValueError: for bad arguments or an input that is not (H, W, C).
    """

    def __init__(self, filters: int, kernel_size: Union[int, Sequence[int]],
                 strides: Union[int, Sequence[int]] = (1, 1), padding: str = "valid",
                 dilation_rate: Union[int, Sequence[int]] = (1, 1),
                 activation: Optional[str] = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 data_format: Optional[str] = None, **kwargs: Any):
        super().__init__(**kwargs)
        if data_format not in (None, "channels_last"):
            raise ValueError("Conv2D: only data_format='channels_last' (NHWC) is supported")
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"Conv2D: filters must be a positive int, got {filters!r}")
        if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(f"Conv2D: padding must be 'valid' or 'same', got {padding!r}")
        self.filters = filters
        self.kernel_size = normalize_pair(kernel_size, "kernel_size")
        self.strides = normalize_pair(strides, "strides")
        self.dilation_rate = normalize_pair(dilation_rate, "dilation_rate")
        if self.strides != (1, 1) and self.dilation_rate != (1, 1):
            raise ValueError("Conv2D: strides > 1 together with dilation_rate > 1 is not "
                             "supported (as in Keras)")
        self.padding = padding.lower()
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.emit_logits = False

    @property
    def activation_name(self) -> str:
        return "linear" if self.emit_logits else self.activation

    def build(self, input_shape: Shape) -> None:
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D {self.name!r} needs inputs of shape (H, W, C), got "
                             f"{input_shape}; add a Reshape((H, W, 1)) for single-channel "
                             "images")
        self._pads = resolve_padding(self.padding, input_shape[:2], self.kernel_size,
                                     self.strides, self.dilation_rate)
        self.add_weight("kernel", self.kernel_size + (input_shape[2], self.filters),
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return conv_output_shape((None,) + tuple(input_shape), self.kernel_size, self.filters,
                                 self.strides, self.padding, self.dilation_rate)[1:]

    def _geometry(self) -> dict:
        return {"strides": self.strides, "padding": self._pads, "dilation": self.dilation_rate}

    def forward(self, x: Any, training: bool) -> Any:
        y = self.scratch("y", (x.shape[0],) + self.output_shape_)
        self.backend.conv2d_fwd(x, self.param("kernel"), self._params.get("bias"), y,
                                act=self.activation_name, **self._geometry())
        ctx = self.ctx
        ctx["x"], ctx["y"] = x, y
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        ctx = self.ctx
        act = self.activation_name
        if act != "linear":
            rows = dy.reshape(-1, self.filters)
            self.backend.act_bwd(act, ctx["y"].reshape(-1, self.filters), rows, rows)
        dx = self.scratch("dx", tuple(ctx["x"].shape)) if need_dx else None
        self.backend.conv2d_bwd(ctx["x"], self.param("kernel"), dy, self.grad_out("kernel"),
                                self.grad_out("bias"), dx, **self._geometry())
        self.commit_grads()
        return dx

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=list(self.kernel_size),
                      strides=list(self.strides), padding=self.padding,
                      dilation_rate=list(self.dilation_rate), activation=self.activation,
                      use_bias=self.use_bias,
                      kernel_initializer=initializers.name_of(self.kernel_initializer),
                      bias_initializer=initializers.name_of(self.bias_initializer))
        return config
