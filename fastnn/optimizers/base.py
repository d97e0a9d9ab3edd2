"""The Optimizer base: learning rate (or schedule), gradient clipping, state.

Every optimiser updates the model's one flat parameter buffer from its one flat
gradient buffer with a single fused kernel call per step.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .schedules import LearningRateSchedule

Segment = Tuple[int, int]  # (offset, size) of one weight in the flat buffer


class Optimizer:
    """Base class.

    Args:
        learning_rate: a float or a LearningRateSchedule.
        weight_decay: decoupled decay p -= p * weight_decay * lr (Keras's form).
        clipnorm: clip each weight's gradient to this L2 norm.
        clipvalue: clip each gradient element to [-clipvalue, clipvalue].
        global_clipnorm: clip all gradients together to this L2 norm.

    Raises:
        ValueError: for more than one clipping option or a non-positive value.
    """

    name = "optimizer"
    slot_names: Tuple[str, ...] = ()

    def __init__(self, learning_rate: Union[float, LearningRateSchedule] = 0.001,
                 weight_decay: Optional[float] = None, clipnorm: Optional[float] = None,
                 clipvalue: Optional[float] = None, global_clipnorm: Optional[float] = None,
                 name: Optional[str] = None):
        given = [k for k, v in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                                ("global_clipnorm", global_clipnorm)) if v is not None]
        if len(given) > 1:
            raise ValueError(f"only one of clipnorm, clipvalue, global_clipnorm may be set, "
                             f"got {given}")
        for key, value in (("clipnorm", clipnorm), ("clipvalue", clipvalue),
                           ("global_clipnorm", global_clipnorm)):
            if value is not None and not float(value) > 0:
                raise ValueError(f"{key} must be > 0, got {value!r}")
        if weight_decay is not None and not float(weight_decay) >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.clipnorm = clipnorm
        self.clipvalue = clipvalue
        self.global_clipnorm = global_clipnorm
        if name is not None:
            self.name = name
        self.iterations = 0
        self.backend: Any = None
        self.slots: Dict[str, Any] = {}
        self._segments: List[Segment] = []

    # ---- learning rate ---------------------------------------------------
    @property
    def learning_rate(self) -> Union[float, LearningRateSchedule]:
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: Union[float, LearningRateSchedule]) -> None:
        if not isinstance(value, LearningRateSchedule):
            value = float(value)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"learning_rate must be a finite number >= 0, got {value!r}")
        self._learning_rate = value

    def current_learning_rate(self) -> float:
        lr = self._learning_rate
        return float(lr(self.iterations)) if isinstance(lr, LearningRateSchedule) else lr

    # ---- state -------------------------------------------------------------
    def active_slots(self) -> Tuple[str, ...]:
        """Slots this configuration needs (e.g. no velocity without momentum)."""
        return self.slot_names

    def build(self, backend: Any, size: int, segments: Sequence[Segment]) -> None:
        """Allocates zeroed state for a flat buffer of ``size`` parameters."""
        self.backend = backend
        self._segments = list(segments)
        self.slots = {name: backend.zeros((size,)) for name in self.active_slots()}

    def get_state(self) -> Dict[str, np.ndarray]:
        """Host copies of the iteration count and every slot."""
        state = {name: np.array(self.backend.to_numpy(arr), copy=True)
                 for name, arr in self.slots.items()}
        state["iterations"] = np.array([self.iterations], dtype=np.int64)
        return state

    def set_state(self, state: Dict[str, np.ndarray]) -> None:
        """Restores ``get_state``'s result.

        Raises:
            ValueError: if slots are missing or have the wrong size.
        """
        for name, arr in self.slots.items():
            if name not in state:
                raise ValueError(f"optimizer state lacks slot {name!r}")
            value = np.asarray(state[name], dtype=np.float32).reshape(-1)
            if value.shape != tuple(arr.shape):
                raise ValueError(f"optimizer slot {name!r} has {value.size} values, "
                                 f"the model has {arr.shape[0]} parameters")
            self.backend.copy_(arr, self.backend.asarray(value))
        self.iterations = int(np.asarray(state["iterations"]).reshape(-1)[0])

    def to(self, backend: Any) -> None:
        """Moves the state to another backend."""
        self.slots = {name: backend.asarray(np.ascontiguousarray(self.backend.to_numpy(arr)))
                      for name, arr in self.slots.items()}
        self.backend = backend

    # ---- the step ------------------------------------------------------------
    def _grad_transform(self, grads: Any) -> Tuple[float, float]:
        """(grad_scale, clip_value) for the fused kernel; clipnorm rescales in place."""
        backend = self.backend
        if self.global_clipnorm is not None:
            norm = math.sqrt(backend.sumsq(grads))
            limit = float(self.global_clipnorm)
            return (limit / norm if norm > limit else 1.0), 0.0
        if self.clipnorm is not None:
            limit = float(self.clipnorm)
            for offset, size in self._segments:
                segment = grads[offset:offset + size]
                norm = math.sqrt(backend.sumsq(segment))
                if norm > limit:
                    backend.scale_(segment, limit / norm)
        return 1.0, float(self.clipvalue or 0.0)

    def apply(self, params: Any, grads: Any) -> None:
        """One update of the flat ``params`` from the flat ``grads``."""
        lr = self.current_learning_rate()
        grad_scale, clip_value = self._grad_transform(grads)
        self.iterations += 1
        self._step(params, grads, lr, grad_scale, clip_value)

    def _step(self, params: Any, grads: Any, lr: float, grad_scale: float,
              clip_value: float) -> None:
        raise NotImplementedError

    # ---- config -------------------------------------------------------------
    def get_config(self) -> dict:
        lr = self._learning_rate
        if isinstance(lr, LearningRateSchedule):
            lr = {"class_name": type(lr).__name__, "config": lr.get_config()}
        return {"name": self.name, "learning_rate": lr, "weight_decay": self.weight_decay,
                "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                "global_clipnorm": self.global_clipnorm}
