"""Thread control for the CPU kernels, and fork safety.

GNU OpenMP deadlocks in a child created by fork() once the parent has run a
parallel region; after a fork the child therefore runs every kernel on one
thread (results are identical: reductions never depend on the thread count).
"""
from __future__ import annotations

import os

# libgomp reads its wait policy once, when it loads (with _C below). Its default
# spins idle workers for 300000 iterations (~4 ms here) after every parallel
# region, which steals the cores from whatever runs next: NumPy's own BLAS
# threads, the Python loop, other processes; PASSIVE (no spin) instead pays a
# futex wake-up at each of the ~10-25 regions of a training step. A short spin
# covers the gaps between one step's kernels and then sleeps. Measured on 2 cores
# (bench/bench_spin.py, and a seed-MLP MNIST epoch at 2 threads):
#   GOMP_SPINCOUNT  NumPy matmul right after a fastnn kernel  epoch
#   300000          20x slower                               237 ms
#   10000           1.07x                                    224 ms
#   0 (PASSIVE)     0.94x                                    336-368 ms
# Users who set either variable themselves keep their choice.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "10000"

import warnings  # noqa: E402

from . import _C  # noqa: E402

if not _C.has_openmp():
    # pip hides build output, so the build's warning may never have been seen.
    warnings.warn("fastnn was built without OpenMP: every kernel runs on one thread. "
                  "Rebuild with an OpenMP-capable compiler (gcc, or clang with libomp).",
                  RuntimeWarning, stacklevel=2)


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
