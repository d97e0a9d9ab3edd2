"""TerminateOnNaN: stop training when the loss becomes NaN or infinite."""
from __future__ import annotations

import math
import sys
from typing import Optional, Tuple

from .base import Callback, Logs


class TerminateOnNaN(Callback):
    """Stops training at the first batch whose running loss is not finite.

    The message names the epoch and step (both counted from 1, as the progress
    output does), e.g. ``Epoch 3/10, step 17/45: invalid loss nan, terminating
    training``.

    Attributes:
        stopped_at: ``(epoch, batch)`` (0-based) where training was stopped, or None.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stopped_at: Optional[Tuple[int, int]] = None

    def on_train_begin(self, logs: Logs = None) -> None:
        self.stopped_at = None

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is None or math.isfinite(float(loss)):
            return
        epoch = int(self.model.position[0])
        self.stopped_at = (epoch, int(batch))
        epochs = self.params.get("epochs", "?")
        steps = self.params.get("steps", "?")
        if getattr(self.model.replica, "is_primary", True):
            print(f"Epoch {epoch + 1}/{epochs}, step {batch + 1}/{steps}: invalid loss "
                  f"{float(loss)}, terminating training", file=sys.stdout, flush=True)
        self.model.stop_training = True
