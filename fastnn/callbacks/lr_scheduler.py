"""LearningRateScheduler: set the learning rate at each epoch's start."""
from __future__ import annotations

import inspect
import math
from typing import Any, Callable

import numpy as np

from .base import Callback, Logs


def current_lr(model: Any, owner: str) -> float:
    """The optimiser's learning rate as a float.

    Raises:
        RuntimeError: if the model is not compiled.
        TypeError: if the learning rate is a schedule (it cannot also be set per epoch).
    """
    from ..optimizers.schedules import LearningRateSchedule
    opt = model.optimizer
    if opt is None:
        raise RuntimeError(f"{owner}: the model is not compiled")
    if isinstance(opt.learning_rate, LearningRateSchedule):
        raise TypeError(f"{owner}: the optimizer's learning rate is a "
                        f"{type(opt.learning_rate).__name__} schedule, which cannot be "
                        "changed by a callback; use a float learning rate")
    return float(opt.learning_rate)


def _takes_two(schedule: Callable) -> bool:
    try:
        params = inspect.signature(schedule).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class LearningRateScheduler(Callback):
    """Sets the learning rate to ``schedule(epoch, lr)`` before each epoch.

    Args:
        schedule: ``f(epoch, lr) -> new lr`` (epoch counted from 0); a function of the
            epoch alone is accepted too.
        verbose: 1 prints each change.

    Raises:
        TypeError: if ``schedule`` is not callable, or returns something not a number.
        ValueError: if it returns a negative or non-finite rate.
    """

    def __init__(self, schedule: Callable, verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"LearningRateScheduler: schedule must be callable, got "
                            f"{schedule!r}")
        self.schedule = schedule
        self.verbose = verbose
        self._two_args = _takes_two(schedule)

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
        lr = current_lr(self.model, "LearningRateScheduler")
        new = self.schedule(epoch, lr) if self._two_args else self.schedule(epoch)
        if isinstance(new, (bool, np.bool_)) or not isinstance(
                new, (int, float, np.floating, np.integer)):
            raise TypeError(f"LearningRateScheduler: the schedule must return a float, got "
                            f"{new!r} for epoch {epoch}")
        new = float(new)
        if not (math.isfinite(new) and new >= 0):
            raise ValueError(f"LearningRateScheduler: the schedule returned {new!r} for "
                             f"epoch {epoch}; a learning rate must be finite and >= 0")
        self.model.optimizer.learning_rate = new
        if self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to "
                  f"{new}.")

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)
