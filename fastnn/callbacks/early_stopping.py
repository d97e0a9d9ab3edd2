"""EarlyStopping: stop when a monitored quantity stops improving (keras.callbacks)."""
from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional

import numpy as np

from .base import Callback, Logs


def resolve_mode(mode: str, monitor: str, owner: str) -> str:
    """'min' or 'max' for a monitor: 'auto' maximises accuracies, minimises the rest.

    Raises:
        ValueError: for a mode other than 'auto', 'min' or 'max'.
    """
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode != "auto":
        return mode
    name = monitor[4:] if monitor.startswith("val_") else monitor
    return "max" if ("acc" in name or name.startswith("fmeasure")) else "min"


def check_monitor(monitor: Any, owner: str) -> str:
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"{owner}: monitor must be the name of a logged quantity, "
                         f"got {monitor!r}")
    return monitor


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    Args:
        monitor: the logged quantity to watch ('val_loss' by default).
        min_delta: an improvement smaller than this does not count.
        patience: epochs without improvement after which training stops.
        verbose: 1 prints when training stops and when best weights are restored.
        mode: 'min', 'max', or 'auto' (maximise names containing 'acc', else minimise).
        baseline: training stops unless the monitor beats this within ``patience``.
        restore_best_weights: at the end of training, set the weights of the best
            epoch (Keras 3 semantics: also when training ran to the last epoch).
        start_from_epoch: epochs to wait before watching at all (warm-up).

    Attributes:
        stopped_epoch: the epoch at which training was stopped (0 if it was not).
        best, best_epoch: the best value seen and its epoch.

    Raises:
        ValueError: for a bad mode, a negative patience or start_from_epoch.
    """

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: Optional[float] = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0):
        super().__init__()
        self.monitor = check_monitor(monitor, "EarlyStopping")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) \
                or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be an int >= 0, got {patience!r}")
        if isinstance(start_from_epoch, bool) or not isinstance(
                start_from_epoch, (int, np.integer)) or start_from_epoch < 0:
            raise ValueError(f"EarlyStopping: start_from_epoch must be an int >= 0, got "
                             f"{start_from_epoch!r}")
        self.patience = int(patience)
        self.verbose = verbose
        self.baseline = baseline
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.mode = resolve_mode(mode, self.monitor, "EarlyStopping")
        self.monitor_op: Callable[[float, float], bool] = np.less if self.mode == "min" \
            else np.greater
        # Stored with the sign that makes "current - min_delta beats best" work both ways.
        self.min_delta = abs(float(min_delta)) * (1 if self.mode == "max" else -1)
        self._reset()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: Optional[float] = None
        self.best_weights: Optional[List[np.ndarray]] = None
        self.best_epoch = 0

    def on_train_begin(self, logs: Logs = None) -> None:
        self._reset()

    def _is_improvement(self, value: float, reference: Optional[float]) -> bool:
        if reference is None:
            return True
        return bool(self.monitor_op(value - self.min_delta, reference))

    def get_monitor_value(self, logs: Logs) -> Optional[float]:
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None:
            warnings.warn(f"EarlyStopping is conditioned on metric {self.monitor!r}, which "
                          f"is not available. Available metrics are: "
                          f"{','.join(logs.keys())}", stacklevel=2)
        return value

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        current = self.get_monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # Until something is better, the first watched epoch's weights are the best.
            self.best_weights = self.model.get_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Patience restarts only when the baseline is beaten too.
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: Logs = None) -> None:
        if self.stopped_epoch > 0 and self.verbose > 0:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose > 0:
                print(f"Restoring model weights from the end of the best epoch: "
                      f"{self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)
