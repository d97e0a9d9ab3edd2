"""BackupAndRestore: continue an interrupted fit exactly where it stopped."""
from __future__ import annotations

import glob
import os
from typing import Any, Optional, Tuple, Union

import numpy as np

from .base import Callback, Logs

CHECKPOINT_NAME = "latest.safetensors"


class BackupAndRestore(Callback):
    """Checkpoints the whole training state so a killed run resumes bit for bit.

    At the start of ``fit`` it looks for a checkpoint in ``backup_dir``; if there is
    one it restores the weights, the optimiser state, the random generators, and
    the position in the epoch (with that epoch's sample order and running loss), and
    ``fit`` continues from there. A resumed run ends with the same weights, bit for
    bit, as one that was never interrupted (same data, batch size and thread count).

    Checkpoints are written at the end of every epoch (``save_freq='epoch'``) or every
    ``save_freq`` batches; each write is atomic, so a kill during a save leaves the
    previous checkpoint. When ``fit`` finishes, the checkpoint is deleted (unless
    ``delete_checkpoint=False``). Only the primary process writes.

    Put it last in the callback list, so the state it saves includes whatever the
    other callbacks changed at the same hook (e.g. ReduceLROnPlateau's rate).

    Args:
        backup_dir: a directory for this run's checkpoint (created when needed);
            use a different one for each run.
        save_freq: 'epoch' or a positive number of batches.
        delete_checkpoint: delete the checkpoint after a completed fit.

    Attributes:
        restored_from: ``(epoch, step)`` the last fit resumed from, or None.

    Raises:
        ValueError: for an empty backup_dir or a bad save_freq.
    """

    def __init__(self, backup_dir: Any, save_freq: Union[str, int] = "epoch",
                 delete_checkpoint: bool = True):
        super().__init__()
        if backup_dir is None or not os.fspath(backup_dir):
            raise ValueError("BackupAndRestore: backup_dir must be a directory path")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(
                save_freq, (int, np.integer)) or save_freq < 1):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive int "
                             f"number of batches, got {save_freq!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq if save_freq == "epoch" else int(save_freq)
        self.delete_checkpoint = bool(delete_checkpoint)
        self.restored_from: Optional[Tuple[int, int]] = None
        self._batches = 0
        self._pending = False

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.backup_dir, CHECKPOINT_NAME)

    def wants_batch_hooks(self) -> bool:
        return self.save_freq != "epoch"

    def _primary(self) -> bool:
        return bool(getattr(self.model.replica, "is_primary", True))

    def _remove_stale_temporaries(self) -> None:
        # A process killed mid-save leaves its temporary file beside the checkpoint.
        pattern = os.path.join(glob.escape(self.backup_dir), f".{CHECKPOINT_NAME}.*.tmp")
        for tmp in glob.glob(pattern):
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def on_train_begin(self, logs: Logs = None) -> None:
        from ..checkpoint import restore_training_state
        self._batches = 0
        self._pending = False
        self.restored_from = None
        if self._primary():
            os.makedirs(self.backup_dir, exist_ok=True)
            self._remove_stale_temporaries()
        if not os.path.exists(self.checkpoint_path):
            return
        info = restore_training_state(self.model, self.checkpoint_path)
        steps = self.params.get("steps")
        saved_steps = info.get("steps_per_epoch")
        if steps is not None and saved_steps is not None and saved_steps != steps:
            self.model._resume = None
            raise ValueError(f"BackupAndRestore: the checkpoint in {self.backup_dir!r} was "
                             f"written by a run with {saved_steps} steps per epoch, this fit "
                             f"has {steps}; resume with the same data and batch size, or "
                             "use another backup_dir")
        self.restored_from = (info["epoch"], info["step"])

    def _save(self, **where: Any) -> None:
        if not self._primary():
            return
        from ..checkpoint import save_training_state
        save_training_state(self.model, self.checkpoint_path,
                            steps_per_epoch=self.params.get("steps"), **where)

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        if self.save_freq == "epoch":
            return
        self._batches += 1
        if self._batches < self.save_freq:
            return
        self._batches = 0
        steps = self.params.get("steps")
        if steps is not None and batch + 1 >= steps:
            # The epoch's last batch: save at the epoch boundary instead, after
            # on_epoch_end, so a resume neither repeats nor skips that hook.
            self._pending = True
            return
        self._save()

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        if self.save_freq != "epoch" and not self._pending:
            return
        self._pending = False
        n_totals = len(self.model._compiled.metrics) + 2
        self._save(epoch=epoch + 1, step=0, order=None, totals=np.zeros(n_totals))

    def on_train_end(self, logs: Logs = None) -> None:
        if not (self.delete_checkpoint and self._primary()):
            return
        try:
            os.unlink(self.checkpoint_path)
        except FileNotFoundError:
            pass
        self._remove_stale_temporaries()
