"""Dense: y = activation(x @ kernel + bias), with Keras's weight layout."""
from __future__ import annotations

import math
from typing import Any, Optional

from .. import activations, initializers
from .base import Layer, Shape


class Dense(Layer):
    """A fully connected layer.

    Args:
        units: output features.
        activation: name of the activation (None or 'linear' for none).
        use_bias: whether to add a bias vector.
        kernel_initializer: initialiser of the (in, units) kernel.
        bias_initializer: initialiser of the bias.
        input_dim: shorthand for ``input_shape=(input_dim,)``.

    Inputs of rank > 2 are treated as Keras does: the kernel applies to the last axis.
    """

    def __init__(self, units: int, activation: Optional[str] = None, use_bias: bool = True,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros",
                 input_dim: Optional[int] = None, **kwargs: Any):
        if input_dim is not None:
            kwargs.setdefault("input_shape", (input_dim,))
        super().__init__(**kwargs)
        if isinstance(units, bool) or not isinstance(units, int) or units < 1:
            raise ValueError(f"Dense: units must be a positive int, got {units!r}")
        self.units = units
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        # Set by the model when the loss consumes this layer's logits directly.
        self.emit_logits = False

    @property
    def activation_name(self) -> str:
        return "linear" if self.emit_logits else self.activation

    def build(self, input_shape: Shape) -> None:
        if len(input_shape) < 1:
            raise ValueError(f"Dense {self.name!r} needs inputs with at least one feature axis")
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)
        super().build(input_shape)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x: Any, training: bool) -> Any:
        rows = math.prod(x.shape[:-1])
        x2 = x.reshape(rows, x.shape[-1])
        y = self.scratch("y", (rows, self.units))
        self.backend.dense_fwd(x2, self.param("kernel"), self._params.get("bias"),
                               self.activation_name, y)
        ctx = self.ctx
        ctx["x"], ctx["y"], ctx["x_shape"] = x2, y, x.shape
        return y.reshape(tuple(x.shape[:-1]) + (self.units,))

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        ctx = self.ctx
        dz = dy.reshape(ctx["y"].shape)
        # The activation's backward and the bias gradient share one pass over dz.
        self.backend.act_bias_bwd(self.activation_name, ctx["y"], dz, dz,
                                  self.grad_out("bias"))
        dx = self.scratch("dx", ctx["x"].shape) if need_dx else None
        self.backend.dense_bwd(ctx["x"], self.param("kernel"), dz, self.grad_out("kernel"),
                               None, dx)
        self.commit_grads()
        return None if dx is None else dx.reshape(ctx["x_shape"])

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                      kernel_initializer=initializers.name_of(self.kernel_initializer),
                      bias_initializer=initializers.name_of(self.bias_initializer))
        return config
