"""Input: the entry point of a model's graph."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .base import Layer, _check_shape
from .graph import Node, SymbolicTensor


class InputLayer(Layer):
    """Holds the per-sample input shape; computes nothing."""

    def __init__(self, shape: Sequence[int], name: Optional[str] = None, **kwargs: Any):
        super().__init__(name=name, **kwargs)
        shape = _check_shape(shape, "shape")
        self.input_spec_shape = shape
        self.build(shape)

    def forward(self, x: Any, training: bool) -> Any:
        return x

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        return dy if need_dx else None

    def get_config(self) -> dict:
        return {"name": self.name, "shape": list(self.input_spec_shape)}

    @classmethod
    def from_config(cls, config: dict) -> "InputLayer":
        return cls(shape=config["shape"], name=config.get("name"))


def Input(shape: Sequence[int], name: Optional[str] = None, **kwargs: Any) -> SymbolicTensor:
    """A symbolic input of per-sample ``shape`` (as keras.Input).

    Args:
        shape: shape of one sample, without the batch axis.
        name: optional layer name.

    Returns:
        A symbolic tensor to call layers on, or to start a Sequential model.
    """
    layer = InputLayer(shape, name=name, **kwargs)
    node = Node(layer, [])
    node.output = SymbolicTensor(layer.output_shape_, node)
    return node.output
