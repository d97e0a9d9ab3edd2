"""Progress output: a redrawn bar on a terminal, one line per epoch elsewhere."""
from __future__ import annotations

import sys
import time
from typing import Dict, Optional, TextIO

from .base import Callback, Logs

_REDRAW_SECONDS = 0.1


def _format_logs(logs: Dict[str, float]) -> str:
    return " - ".join(f"{key}: {value:.4f}" for key, value in logs.items())


def _format_seconds(seconds: float) -> str:
    if seconds >= 3600:
        return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
    if seconds >= 60:
        return f"{int(seconds // 60)}:{int(seconds % 60):02d}"
    if seconds >= 1:
        return f"{seconds:.0f}s"
    # as Keras: a sub-millisecond step reads "447us", not "0ms"
    return f"{seconds * 1000:.0f}ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f}us"


class ProgbarLogger(Callback):
    """Prints training progress.

    Args:
        verbose: 1 redraws a bar per step (only when ``stream`` is a terminal;
            otherwise it behaves as 2); 2 prints one line per epoch.
        stream: where to print (stdout by default).
    """

    def __init__(self, verbose: int = 1, stream: Optional[TextIO] = None):
        super().__init__()
        self.stream = stream or sys.stdout
        self.live = verbose == 1 and getattr(self.stream, "isatty", lambda: False)()

    def wants_batch_hooks(self) -> bool:
        return self.live

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
        self._start = self._last_draw = time.perf_counter()
        self._epoch = epoch
        if self.live:
            self.stream.write(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}\n")

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        now = time.perf_counter()
        steps = self.params.get("steps") or 0
        if now - self._last_draw < _REDRAW_SECONDS and batch + 1 < steps:
            return
        self._last_draw = now
        done = batch + 1
        width = 30
        filled = int(width * done / steps) if steps else width
        bar = "=" * max(filled - 1, 0) + (">" if filled < width else "=") + "." * (width - filled)
        eta = (now - self._start) / done * (steps - done)
        self.stream.write(f"\r{done}/{steps} [{bar}] - ETA: {_format_seconds(eta)} - "
                          f"{_format_logs(logs or {})}\033[K")
        self.stream.flush()

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        elapsed = time.perf_counter() - self._start
        steps = self.params.get("steps") or 0
        per_step = _format_seconds(elapsed / steps) if steps else "-"
        line = f"{steps}/{steps} - {_format_seconds(elapsed)} - {per_step}/step - " \
               f"{_format_logs(logs or {})}"
        if self.live:
            self.stream.write(f"\r{line}\033[K\n")
        else:
            self.stream.write(f"Epoch {epoch + 1}/{self.params.get('epochs', '?')} - {line}\n")
        self.stream.flush()
