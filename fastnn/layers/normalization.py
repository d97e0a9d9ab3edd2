"""BatchNormalization over the last axis, with Keras's defaults and statistics."""
from __future__ import annotations

from typing import Any, Optional

from .. import initializers
from .base import Layer, Shape


class BatchNormalization(Layer):
    """Normalises each channel with batch statistics in training and moving
    statistics in inference (as keras.layers.BatchNormalization).

    Args:
        axis: only -1 (channels last).
        momentum: moving = moving * momentum + batch * (1 - momentum); Keras's 0.99.
        epsilon: added to the variance; Keras's 1e-3.
        center: learn a shift (beta).
        scale: learn a scale (gamma).
    """

    def __init__(self, axis: int = -1, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True,
                 beta_initializer: Any = "zeros", gamma_initializer: Any = "ones",
                 moving_mean_initializer: Any = "zeros",
                 moving_variance_initializer: Any = "ones", **kwargs: Any):
        super().__init__(**kwargs)
        if axis != -1:
            raise ValueError("BatchNormalization: only axis=-1 (channels last) is supported")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"BatchNormalization: momentum must be in [0, 1], got {momentum!r}")
        if not float(epsilon) > 0:
            raise ValueError(f"BatchNormalization: epsilon must be > 0, got {epsilon!r}")
        self.axis = axis
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self._inits = {name: initializers.get(init) for name, init in (
            ("gamma", gamma_initializer), ("beta", beta_initializer),
            ("moving_mean", moving_mean_initializer),
            ("moving_variance", moving_variance_initializer))}

    def build(self, input_shape: Shape) -> None:
        channels = (input_shape[-1],)
        if self.scale:
            self.add_weight("gamma", channels, self._inits["gamma"])
        if self.center:
            self.add_weight("beta", channels, self._inits["beta"])
        self.add_weight("moving_mean", channels, self._inits["moving_mean"], trainable=False)
        self.add_weight("moving_variance", channels, self._inits["moving_variance"],
                        trainable=False)
        super().build(input_shape)

    def forward(self, x: Any, training: bool) -> Any:
        y = self.scratch("y", tuple(x.shape))
        backend = self.backend
        gamma, beta = self._params.get("gamma"), self._params.get("beta")
        mean, var = self.param("moving_mean"), self.param("moving_variance")
        ctx = self.ctx
        ctx["training"] = training
        if training:
            channels = (x.shape[-1],)
            ctx["mean"] = self.scratch("save_mean", channels)
            ctx["invstd"] = self.scratch("save_invstd", channels)
            backend.batchnorm_fwd_train(x, y, gamma, beta, mean, var, ctx["mean"], ctx["invstd"],
                                        momentum=self.momentum, epsilon=self.epsilon)
            ctx["x"] = x
        else:
            backend.batchnorm_fwd_infer(x, y, gamma, beta, mean, var, epsilon=self.epsilon)
        return y

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        ctx = self.ctx
        if not ctx.get("training"):
            raise RuntimeError(f"BatchNormalization {self.name!r}: backward needs a "
                               "training-mode forward")
        dx = self.scratch("dx", tuple(dy.shape))
        self.backend.batchnorm_bwd(ctx["x"], dy, self._params.get("gamma"), ctx["mean"],
                                   ctx["invstd"], dx, self.grad_out("gamma"),
                                   self.grad_out("beta"))
        self.commit_grads()
        return dx if need_dx else None

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon,
                      center=self.center, scale=self.scale)
        return config
