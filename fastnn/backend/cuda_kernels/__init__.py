"""Numba CUDA kernels of the GPU backend, one module per kernel family.

Importing this package imports numba (only fastnn.backend.cuda does). Nothing is
compiled at import time: each kernel compiles on its first launch, for the
argument types it is launched with; ``KERNELS`` lists every kernel with the
signatures the backend uses, for the PTX build test.
"""
from ._registry import DEVICE_FUNCTIONS, KERNELS, KernelSpec, unexpected_specialisations
from . import conv, data, elementwise, gemm, loss, optim  # noqa: F401  (registers kernels)

FAMILIES = (conv, data, elementwise, gemm, loss, optim)

__all__ = ["KERNELS", "DEVICE_FUNCTIONS", "KernelSpec", "FAMILIES", "unexpected_specialisations"]
