"""The Layer base class: weight declaration, per-batch-shape scratch, the call protocol.

A layer declares its weights in ``build``; the model then allocates one flat
parameter buffer and one flat gradient buffer for all layers and hands each
layer views into them (``bind``). ``forward`` and ``backward`` call only the
backend's ops and write into scratch arrays that are allocated the first time a
batch shape is seen and reused afterwards.
"""
from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

Shape = Tuple[int, ...]

_name_counters: Dict[str, itertools.count] = defaultdict(itertools.count)


def _auto_name(prefix: str) -> str:
    n = next(_name_counters[prefix])
    return prefix if n == 0 else f"{prefix}_{n}"


def _snake_case(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (not name[i - 1].isupper() or
                                    (i + 1 < len(name) and name[i + 1].islower())):
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


@dataclass
class WeightSpec:
    """One weight a layer owns: its place in the flat buffers is set by the model."""
    name: str
    shape: Shape
    initializer: Callable
    trainable: bool = True
    # Drawn when the layer is built (as Keras does), so the random stream does
    # not depend on when the model allocates its flat buffers.
    initial_value: Any = None

    @property
    def size(self) -> int:
        return math.prod(self.shape)


class Layer:
    """Base class of every layer.

    Args:
        name: unique name; generated from the class name when omitted.
        input_shape: shape of one sample (without the batch axis), for the first
            layer of a Sequential model, as in Keras.
        trainable: whether the optimiser updates this layer's weights.
    """

    def __init__(self, name: Optional[str] = None, input_shape: Optional[Sequence[int]] = None,
                 trainable: bool = True, **kwargs: Any):
        dtype = kwargs.pop("dtype", None)
        if dtype not in (None, "float32"):
            raise ValueError(f"{type(self).__name__}: only dtype='float32' is supported, "
                             f"got {dtype!r}")
        if "batch_input_shape" in kwargs:
            input_shape = tuple(kwargs.pop("batch_input_shape"))[1:]
        if kwargs:
            raise TypeError(f"{type(self).__name__} got unexpected keyword arguments "
                            f"{sorted(kwargs)}")
        if name is not None and (not isinstance(name, str) or not name):
            raise ValueError(f"layer name must be a non-empty string, got {name!r}")
        self.name = name or _auto_name(_snake_case(type(self).__name__))
        self.trainable = bool(trainable)
        self.input_spec_shape: Optional[Shape] = (
            _check_shape(input_shape, "input_shape") if input_shape is not None else None)
        self.built = False
        self.input_shape_: Optional[Shape] = None
        self.output_shape_: Optional[Shape] = None
        self.weight_specs: List[WeightSpec] = []
        self.backend: Any = None
        self._params: Dict[str, Any] = {}
        self._grads: Dict[str, Any] = {}
        self._scratch: Dict[Tuple[Any, ...], Any] = {}
        # A layer applied at several places in a graph keeps one context per
        # place (its "call slot"); the executor selects the slot before each call.
        self.call_slot = 0
        self._contexts: Dict[int, Dict[str, Any]] = {}
        self._grad_calls = 0
        self._pending_grads: list = []

    # ---- building -----------------------------------------------------
    def build(self, input_shape: Shape) -> None:
        """Declares weights for a per-sample ``input_shape``; sets output shape."""
        self.input_shape_ = tuple(input_shape)
        self.output_shape_ = tuple(self.compute_output_shape(self.input_shape_))
        self.built = True

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def add_weight(self, name: str, shape: Sequence[int], initializer: Callable,
                   trainable: bool = True) -> WeightSpec:
        import numpy as np
        shape = tuple(int(d) for d in shape)
        value = np.asarray(initializer(shape), dtype=np.float32)
        if value.shape != shape:
            raise ValueError(f"initializer of {self.name}/{name} returned shape "
                             f"{value.shape}, expected {shape}")
        spec = WeightSpec(name, shape, initializer, trainable and self.trainable, value)
        self.weight_specs.append(spec)
        return spec

    def bind(self, backend: Any, params: Dict[str, Any], grads: Dict[str, Any]) -> None:
        """Receives views into the model's flat buffers; drops cached scratch."""
        self.backend = backend
        self._params = params
        self._grads = grads
        self._scratch = {}
        self._contexts = {}

    def param(self, name: str) -> Any:
        return self._params[name]

    def grad(self, name: str) -> Any:
        return self._grads.get(name)

    def scratch(self, key: str, shape: Shape, dtype: str = "float32") -> Any:
        """A backend array reused for every batch of this shape (per call slot)."""
        slot = (self.call_slot, key, tuple(shape), dtype)
        arr = self._scratch.get(slot)
        if arr is None:
            arr = self.backend.empty(slot[2], dtype)
            self._scratch[slot] = arr
        return arr

    @property
    def ctx(self) -> Dict[str, Any]:
        """What forward saves for backward, kept apart per call slot."""
        ctx = self._contexts.get(self.call_slot)
        if ctx is None:
            ctx = self._contexts[self.call_slot] = {}
        return ctx

    # ---- gradient accumulation for layers used more than once ---------------
    def begin_backward_pass(self) -> None:
        """Called by the executor once per training step before any backward."""
        self._grad_calls = 0

    def grad_out(self, name: str) -> Any:
        """Where backward writes the gradient of weight ``name``.

        The first backward call of a step writes the model's gradient buffer
        directly; later calls (a layer shared by several graph nodes) write a
        scratch array that ``commit_grads`` adds in.
        """
        target = self._grads.get(name)
        if target is None or self._grad_calls == 0:
            return target
        tmp = self.scratch("grad_" + name, tuple(target.shape))
        self._pending_grads.append((target, tmp))
        return tmp

    def commit_grads(self) -> None:
        """Ends one backward call: accumulates what ``grad_out`` redirected."""
        for target, tmp in self._pending_grads:
            self.backend.add(target, tmp, target)
        self._pending_grads = []
        self._grad_calls += 1

    # ---- computing ----------------------------------------------------
    def forward(self, x: Any, training: bool) -> Any:
        raise NotImplementedError

    def backward(self, dy: Any, need_dx: bool) -> Optional[Any]:
        """Writes this layer's weight gradients; returns dL/dx when ``need_dx``.

        May overwrite ``dy``."""
        raise NotImplementedError

    @property
    def activation_name(self) -> str:
        """The activation applied last by this layer ('linear' if none)."""
        return "linear"

    # ---- Keras-style API -------------------------------------------------
    def __call__(self, inputs: Any) -> Any:
        from .graph import call_symbolic
        return call_symbolic(self, inputs)

    def count_params(self) -> int:
        return sum(spec.size for spec in self.weight_specs)

    def get_weights(self) -> list:
        """Host copies of this layer's weights, in Keras's order.

        Raises:
            RuntimeError: before the layer belongs to a built model.
        """
        if self.weight_specs and not self._params:
            raise RuntimeError(f"layer {self.name!r} has no weights yet: build its model first")
        import numpy as np
        return [np.array(self.backend.to_numpy(self._params[s.name]), copy=True)
                for s in self.weight_specs]

    def set_weights(self, weights: list) -> None:
        """Sets this layer's weights from arrays of the shapes ``get_weights`` gives.

        Raises:
            ValueError: wrong count or shapes, or non-finite values.
            RuntimeError: before the layer belongs to a built model.
        """
        import numpy as np
        if self.weight_specs and not self._params:
            raise RuntimeError(f"layer {self.name!r} has no weights yet: build its model first")
        if len(weights) != len(self.weight_specs):
            raise ValueError(f"layer {self.name!r} expects {len(self.weight_specs)} weight "
                             f"arrays, got {len(weights)}")
        values = []
        for spec, w in zip(self.weight_specs, weights):
            w = np.asarray(w)
            if tuple(w.shape) != spec.shape:
                raise ValueError(f"layer {self.name!r} weight {spec.name!r} has shape "
                                 f"{spec.shape}, got {tuple(w.shape)}")
            if not np.issubdtype(w.dtype, np.number) or not np.all(np.isfinite(w)):
                raise ValueError(f"layer {self.name!r} weight {spec.name!r} must be finite numbers")
            values.append(np.ascontiguousarray(w, dtype=np.float32))
        for spec, w in zip(self.weight_specs, values):
            self.backend.copy_(self._params[spec.name], self.backend.asarray(w))

    def get_config(self) -> dict:
        config = {"name": self.name, "trainable": self.trainable}
        if self.input_spec_shape is not None:
            config["input_shape"] = list(self.input_spec_shape)
        return config

    @classmethod
    def from_config(cls, config: dict) -> "Layer":
        return cls(**config)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r}>"


def _check_shape(shape: Any, what: str) -> Shape:
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"{what} must be a tuple of positive ints, got {shape!r}") from None
    for d in dims:
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{what} must be a tuple of positive ints, got {shape!r}")
    return dims
