"""Weight initialisers with Keras's names and formulas.

Each initialiser maps a shape to a float32 NumPy array, drawing from the global
generator in fastnn.utils so that ``set_random_seed`` makes runs repeatable.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence, Tuple, Union

import numpy as np

from .utils import global_rng


def _fans(shape: Sequence[int]) -> Tuple[float, float]:
    """Keras's fan_in / fan_out: dense (in, out); conv (*kernel, in, out)."""
    if len(shape) == 0:
        return 1.0, 1.0
    if len(shape) == 1:
        return float(shape[0]), float(shape[0])
    receptive = math.prod(shape[:-2]) if len(shape) > 2 else 1
    return float(shape[-2] * receptive), float(shape[-1] * receptive)


def _truncated_normal(shape, stddev: float) -> np.ndarray:
    """Normal(0, stddev) redrawn outside two standard deviations."""
    rng = global_rng()
    out = rng.standard_normal(size=shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.standard_normal(size=int(bad.sum()))
        bad = np.abs(out) > 2.0
    return (out * stddev).astype(np.float32)


class Initializer:
    """Base class: ``init(shape) -> float32 ndarray``."""

    def __call__(self, shape: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def get_config(self) -> dict:
        return {}


class Zeros(Initializer):
    def __call__(self, shape):
        return np.zeros(shape, dtype=np.float32)


class Ones(Initializer):
    def __call__(self, shape):
        return np.ones(shape, dtype=np.float32)


class Constant(Initializer):
    def __init__(self, value: float = 0.0):
        self.value = float(value)

    def __call__(self, shape):
        return np.full(shape, self.value, dtype=np.float32)

    def get_config(self):
        return {"value": self.value}


class RandomNormal(Initializer):
    def __init__(self, mean: float = 0.0, stddev: float = 0.05):
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape):
        return (global_rng().normal(self.mean, self.stddev, size=shape)).astype(np.float32)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


class RandomUniform(Initializer):
    def __init__(self, minval: float = -0.05, maxval: float = 0.05):
        self.minval, self.maxval = float(minval), float(maxval)

    def __call__(self, shape):
        return global_rng().uniform(self.minval, self.maxval, size=shape).astype(np.float32)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval}


class _VarianceScaling(Initializer):
    """Keras VarianceScaling with the scale/mode/distribution fixed by subclasses."""

    scale = 1.0
    mode = "fan_avg"
    distribution = "uniform"

    def __call__(self, shape):
        fan_in, fan_out = _fans(shape)
        denom = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        variance = self.scale / max(1.0, denom)
        if self.distribution == "uniform":
            limit = math.sqrt(3.0 * variance)
            return global_rng().uniform(-limit, limit, size=shape).astype(np.float32)
        # The constant undoes the variance lost by truncating at two sigmas.
        return _truncated_normal(shape, math.sqrt(variance) / 0.87962566103423978)


class GlorotUniform(_VarianceScaling):
    pass


class GlorotNormal(_VarianceScaling):
    distribution = "truncated_normal"


class HeUniform(_VarianceScaling):
    scale, mode = 2.0, "fan_in"


class HeNormal(_VarianceScaling):
    scale, mode, distribution = 2.0, "fan_in", "truncated_normal"


class LecunUniform(_VarianceScaling):
    mode = "fan_in"


class LecunNormal(_VarianceScaling):
    mode, distribution = "fan_in", "truncated_normal"


_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "constant": Constant, "random_normal": RandomNormal,
    "random_uniform": RandomUniform, "glorot_uniform": GlorotUniform,
    "glorot_normal": GlorotNormal, "he_uniform": HeUniform, "he_normal": HeNormal,
    "lecun_uniform": LecunUniform, "lecun_normal": LecunNormal,
}


def get(identifier: Union[str, Initializer, Callable]) -> Callable:
    """An initialiser from a Keras name, an Initializer, or a callable(shape).

    Raises:
        ValueError: for an unknown name or an unusable object.
    """
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown initializer {identifier!r}; expected one of "
                             f"{sorted(_BY_NAME)}")
        return _BY_NAME[key]()
    if callable(identifier):
        return identifier
    raise ValueError(f"unusable initializer {identifier!r}")


def name_of(init: Callable) -> str:
    """The Keras name of a built-in initialiser (for saved configs)."""
    for name, cls in _BY_NAME.items():
        if type(init) is cls:
            return name
    raise ValueError(f"initializer {init!r} has no registered name and cannot be saved")
