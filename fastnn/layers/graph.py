"""Symbolic tensors: what ``Input(...)`` and a layer called on a tensor return.

They carry only a per-sample shape and the node that produced them; a
``Model(inputs, outputs)`` walks these nodes to build its execution order.
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

Shape = Tuple[int, ...]


class Node:
    """One application of a layer to symbolic inputs."""

    def __init__(self, layer: Any, inputs: List["SymbolicTensor"]):
        self.layer = layer
        self.inputs = inputs
        self.output: Optional[SymbolicTensor] = None


class SymbolicTensor:
    """A placeholder for a batch of arrays of per-sample shape ``shape[1:]``."""

    def __init__(self, sample_shape: Shape, node: Node):
        self.sample_shape = tuple(sample_shape)
        self.node = node

    @property
    def shape(self) -> Tuple[Optional[int], ...]:
        return (None,) + self.sample_shape

    def __repr__(self) -> str:
        return f"<SymbolicTensor shape={self.shape} from {self.node.layer.name!r}>"


def _as_tensor_list(inputs: Any) -> Optional[List[SymbolicTensor]]:
    if isinstance(inputs, SymbolicTensor):
        return [inputs]
    if isinstance(inputs, (list, tuple)) and inputs and all(
            isinstance(t, SymbolicTensor) for t in inputs):
        return list(inputs)
    return None


def call_symbolic(layer: Any, inputs: Any) -> SymbolicTensor:
    """Applies ``layer`` to symbolic tensor(s), building it on first use.

    Raises:
        TypeError: when called on anything but symbolic tensors.
        ValueError: when the input shape disagrees with an earlier call.
    """
    tensors = _as_tensor_list(inputs)
    if tensors is None:
        raise TypeError(f"layer {layer.name!r} must be called on tensors from "
                        "fastnn.Input(...) or other layers; to compute on arrays "
                        "use model.predict")
    multi = getattr(layer, "takes_list", False)
    if multi != isinstance(inputs, (list, tuple)):
        raise TypeError(f"layer {layer.name!r} takes "
                        f"{'a list of tensors' if multi else 'a single tensor'}")
    shapes: Any = [t.sample_shape for t in tensors] if multi else tensors[0].sample_shape
    if not layer.built:
        layer.build(shapes)
    elif layer.input_shape_ != (tuple(shapes) if multi else shapes):
        raise ValueError(f"layer {layer.name!r} was built for input shape "
                         f"{layer.input_shape_} but is called on {shapes}")
    node = Node(layer, tensors)
    node.output = SymbolicTensor(layer.output_shape_, node)
    return node.output


def topological_nodes(inputs: Sequence[SymbolicTensor],
                      outputs: Sequence[SymbolicTensor]) -> List[Node]:
    """Nodes from ``inputs`` to ``outputs`` in an order where producers come first.

    Raises:
        ValueError: if an output depends on a tensor that is not among the inputs.
    """
    input_ids = {id(t) for t in inputs}
    order: List[Node] = []
    state: dict = {}

    def visit(tensor: SymbolicTensor) -> None:
        node = tensor.node
        mark = state.get(id(node))
        if mark == "done":
            return
        if mark == "active":
            raise ValueError("the layer graph has a cycle")
        if id(tensor) in input_ids:
            state[id(node)] = "done"
            return
        if not node.inputs:
            raise ValueError(f"output depends on input {node.layer.name!r} that is not "
                             "passed to Model(inputs=...)")
        state[id(node)] = "active"
        for t in node.inputs:
            visit(t)
        state[id(node)] = "done"
        order.append(node)

    for t in outputs:
        visit(t)
    return order
