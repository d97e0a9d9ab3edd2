"""CSVLogger: one CSV row of logs per epoch (keras.callbacks.CSVLogger)."""
from __future__ import annotations

import collections
import csv
import os
from typing import Any, List, Optional

import numpy as np

from .base import Callback, Logs


def _cell(value: Any) -> Any:
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) and value.ndim > 0:
        return f'"[{", ".join(map(str, value.reshape(-1)))}]"'
    if isinstance(value, (list, tuple)):
        return f'"[{", ".join(map(str, value))}]"'
    return value


class CSVLogger(Callback):
    """Streams each epoch's logs to a CSV file.

    The columns are ``epoch`` and the sorted log keys of the first epoch, plus
    ``val_`` forms of them when the first epoch had no validation keys (as Keras
    does); missing values are written as ``NA``. Only the primary process writes.

    Args:
        filename: the CSV file.
        separator: the field delimiter.
        append: append to an existing file (without repeating the header) instead of
            overwriting it; use it when resuming training.

    Raises:
        ValueError: for an empty separator.
    """

    def __init__(self, filename: Any, separator: str = ",", append: bool = False):
        super().__init__()
        if not isinstance(separator, str) or len(separator) != 1:
            raise ValueError(f"CSVLogger: separator must be one character, got {separator!r}")
        self.filename = os.fspath(filename)
        self.sep = separator
        self.append = bool(append)
        self.keys: Optional[List[str]] = None
        self.writer: Optional[csv.DictWriter] = None
        self.csv_file = None
        self.append_header = True

    def on_train_begin(self, logs: Logs = None) -> None:
        self.keys = None
        self.writer = None
        if not getattr(self.model.replica, "is_primary", True):
            return
        mode = "w"
        self.append_header = True
        if self.append:
            if os.path.exists(self.filename):
                with open(self.filename, newline="") as f:
                    self.append_header = not bool(len(f.readline()))
            mode = "a"
        self.csv_file = open(self.filename, mode, newline="")

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        if self.csv_file is None:
            return
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs.keys())
            if not any(key.startswith("val_") for key in self.keys):
                self.keys.extend(["val_" + key for key in self.keys])
        if self.writer is None:
            class Dialect(csv.excel):
                delimiter = self.sep

            self.writer = csv.DictWriter(self.csv_file, fieldnames=["epoch"] + self.keys,
                                         dialect=Dialect, extrasaction="ignore")
            if self.append_header:
                self.writer.writeheader()
        row = collections.OrderedDict({"epoch": epoch})
        row.update((key, _cell(logs.get(key, "NA"))) for key in self.keys)
        self.writer.writerow(row)
        self.csv_file.flush()

    def on_train_end(self, logs: Logs = None) -> None:
        if self.csv_file is not None:
            self.csv_file.close()
        self.csv_file = None
        self.writer = None
