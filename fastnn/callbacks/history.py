"""History: the per-epoch logs that fit returns, as keras.callbacks.History."""
from __future__ import annotations

from typing import Dict, List

from .base import Callback, Logs


class History(Callback):
    """Attributes:
        history: {'loss': [...], 'accuracy': [...], 'val_loss': [...], ...}
        epoch: the epoch indices recorded.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: Dict[str, List[float]] = {}
        self.epoch: List[int] = []

    def on_train_begin(self, logs: Logs = None) -> None:
        self.epoch = []
        self.history = {}

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)
