"""How fit shares work with other processes: the single-process case.

``fit`` calls these hooks at fixed points of every step. ``LocalReplica`` is the
ordinary run, where each hook is trivial; fastnn.distributed provides the MPI
data-parallel replica with the same methods.
"""
from __future__ import annotations

from typing import Any, Tuple

import numpy as np


class LocalReplica:
    """One process trains on all the data."""

    rank = 0
    world_size = 1

    @property
    def is_primary(self) -> bool:
        """Whether this process prints, logs and writes files."""
        return self.rank == 0

    def begin_fit(self, model: Any, n_samples: int, batch_size: int) -> None:
        """Called once before training: replicas agree on weights and data sizes."""

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This process's part of one global batch of sample indices."""
        return idx

    def shard_range(self, n: int) -> Tuple[int, int]:
        """This process's contiguous part [start, stop) of n samples (validation)."""
        return 0, n

    def begin_step(self, model: Any, local_rows: int, global_rows: int) -> None:
        """Called before a step's backward pass."""

    def gradients_ready(self, model: Any, offset: int, size: int) -> None:
        """The gradients in flat[offset:offset+size] are final for this step."""

    def finish_gradients(self, model: Any) -> None:
        """Called after backward, before the optimiser step."""

    def reduce_sums(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``values`` over all replicas (float64)."""
        return values
