"""Optimisers with Keras's names, formulas and defaults."""
from __future__ import annotations

from typing import Union

from . import schedules
from .adam import Adam, AdamW
from .base import Optimizer
from .rmsprop import RMSprop
from .sgd import SGD

_BY_NAME = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}

__all__ = ["Adam", "AdamW", "Optimizer", "RMSprop", "SGD", "get", "schedules"]


def get(identifier: Union[str, Optimizer]) -> Optimizer:
    """An optimiser from a Keras name ('adam', 'sgd', ...) or an Optimizer.

    Raises:
        ValueError: for an unknown name or object.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"unknown optimizer {identifier!r}; expected a fastnn.optimizers."
                     f"Optimizer or one of {sorted(_BY_NAME)}")


def from_config(class_name: str, config: dict) -> Optimizer:
    """Rebuilds an optimiser saved with ``get_config``."""
    cls = _BY_NAME.get(class_name.lower())
    if cls is None:
        raise ValueError(f"unknown optimizer class {class_name!r}")
    config = dict(config)
    config.pop("name", None)
    lr = config.get("learning_rate")
    if isinstance(lr, dict):
        config["learning_rate"] = schedules.from_config(lr)
    if cls is AdamW:
        config.setdefault("weight_decay", 0.004)
    return cls(**config)
