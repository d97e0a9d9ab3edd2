"""ModelCheckpoint: save the model (or its weights) during training."""
from __future__ import annotations

import os
import warnings
from typing import Any, Optional, Union

import numpy as np

from .base import Callback, Logs
from .early_stopping import check_monitor, resolve_mode


class ModelCheckpoint(Callback):
    """Saves the model at the end of every epoch, or every ``save_freq`` batches.

    Args:
        filepath: where to save; may hold ``str.format`` fields ``{epoch}`` (counted
            from 1), ``{batch}`` (from 1, for batch-frequency saves) and any log key,
            e.g. ``"ckpt/model-{epoch:02d}-{val_loss:.2f}.safetensors"``.
        monitor: the logged quantity for ``save_best_only``.
        verbose: 1 prints a line per save decision.
        save_best_only: save only when ``monitor`` improves on the best seen so far.
        save_weights_only: write ``model.save_weights`` files instead of full models.
        mode: 'min', 'max' or 'auto' (maximise names containing 'acc').
        save_freq: 'epoch', or a number of batches between saves.
        initial_value_threshold: a best value to beat before the first save.

    Every write is atomic; only the primary process writes.

    Raises:
        ValueError: for a bad mode or save_freq.
    """

    def __init__(self, filepath: Any, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto", save_freq: Union[str, int] = "epoch",
                 initial_value_threshold: Optional[float] = None):
        super().__init__()
        self.filepath = os.fspath(filepath)
        self.monitor = check_monitor(monitor, "ModelCheckpoint")
        self.verbose = verbose
        self.save_best_only = bool(save_best_only)
        self.save_weights_only = bool(save_weights_only)
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(
                save_freq, (int, np.integer)) or save_freq < 1):
            raise ValueError(f"ModelCheckpoint: save_freq must be 'epoch' or a positive int "
                             f"number of batches, got {save_freq!r}")
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.mode = resolve_mode(mode, self.monitor, "ModelCheckpoint")
        self.monitor_op = np.less if self.mode == "min" else np.greater
        self.initial_value_threshold = initial_value_threshold
        self.best = initial_value_threshold if initial_value_threshold is not None else (
            np.inf if self.mode == "min" else -np.inf)
        self._batches_seen_since_last_saving = 0
        self._last_batch_seen = 0

    def wants_batch_hooks(self) -> bool:
        return self.save_freq != "epoch"

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        if self.save_freq == "epoch":
            return
        # Counts across epochs; a batch index going back means a new epoch began.
        if batch <= self._last_batch_seen:
            added = batch + 1
        else:
            added = batch - self._last_batch_seen
        self._batches_seen_since_last_saving += added
        self._last_batch_seen = batch
        if self._batches_seen_since_last_saving >= self.save_freq:
            self._batches_seen_since_last_saving = 0
            self._save_model(int(self.model.position[0]), batch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        if self.save_freq == "epoch":
            self._save_model(epoch, None, logs)

    def _file_path(self, epoch: int, batch: Optional[int], logs: dict) -> str:
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint: cannot format filepath {self.filepath!r} "
                             f"with epoch, batch and the logs {sorted(logs)}: {exc!r}") from None

    def _write(self, filepath: str) -> None:
        if not getattr(self.model.replica, "is_primary", True):
            return
        directory = os.path.dirname(filepath)
        if directory:
            os.makedirs(directory, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(filepath)
        else:
            self.model.save(filepath)

    def _save_model(self, epoch: int, batch: Optional[int], logs: Logs) -> None:
        logs = dict(logs or {})
        filepath = self._file_path(epoch, batch, logs)
        if not self.save_best_only:
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: saving model to {filepath}")
            self._write(filepath)
            return
        current = logs.get(self.monitor)
        if current is None:
            warnings.warn(f"Can save best model only with {self.monitor} available, "
                          "skipping.", stacklevel=2)
            return
        if self.monitor_op(current, self.best):
            if self.verbose > 0:
                print(f"\nEpoch {epoch + 1}: {self.monitor} improved from {self.best:.5f} "
                      f"to {current:.5f}, saving model to {filepath}")
            self.best = current
            self._write(filepath)
        elif self.verbose > 0:
            print(f"\nEpoch {epoch + 1}: {self.monitor} did not improve from "
                  f"{self.best:.5f}")
