"""Thread control for the CPU kernels, and fork safety.

GNU OpenMP deadlocks in a child created by fork() once the parent has run a
parallel region; after a fork the child therefore runs every kernel on one
thread (results are identical: reductions never depend on the thread count).
"""
from __future__ import annotations

import os

from . import _C


def set_num_threads(n: int) -> None:
    """Sets how many threads the CPU kernels use.

    Args:
        n: a positive thread count.

    Raises:
        ValueError: if ``n`` is not a positive integer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    _C.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the CPU kernels use (honours OMP_NUM_THREADS)."""
    return _C.get_num_threads()


def _serial_after_fork() -> None:
    _C.force_serial(True)


os.register_at_fork(after_in_child=_serial_after_fork)
