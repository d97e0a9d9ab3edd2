"""The kernel registry: every CUDA kernel with the signatures it is compiled for.

Kernels are compiled lazily on their first launch, so nothing here needs a GPU.
Each kernel also lists the exact signatures the backend launches it with; the
PTX test (tests/test_cuda_ptx.py) compiles every one of them for sm_90 without a
GPU, and fails on a kernel defined without a signature, so a new kernel cannot
slip past it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Tuple

from numba import cuda


@dataclass(frozen=True)
class KernelSpec:
    """One registered kernel.

    Attributes:
        name: ``module.function``, for messages.
        py_func: the undecorated Python function (what compile_ptx takes).
        signatures: the launch signatures, as Numba signature strings.
        allow_f64: True for the few kernels that accumulate in float64 on
            purpose (reductions into float64 results); every other kernel must
            compile to PTX without a single float64 instruction.
        dispatcher: the launchable kernel (what the module exports).
    """

    name: str
    py_func: Callable
    signatures: Tuple[str, ...]
    allow_f64: bool
    dispatcher: Any


KERNELS: List[KernelSpec] = []
DEVICE_FUNCTIONS: List[str] = []


def kernel(*signatures: str, allow_f64: bool = False):
    """Decorator: a lazily compiled CUDA kernel, recorded with its signatures."""

    def wrap(fn: Callable):
        dispatcher = cuda.jit(fn)
        KERNELS.append(KernelSpec(f"{fn.__module__}.{fn.__name__}", fn,
                                  tuple(signatures), allow_f64, dispatcher))
        return dispatcher

    return wrap


def device_function(fn: Callable):
    """Decorator: a CUDA device function, compiled into the kernels that call it.

    Note for PTX builds without a GPU: Numba compiles a device function for the
    compute capability of the *current* device, even inside compile_ptx(cc=...);
    tests/test_cuda_ptx.py therefore stands in a device of the target capability.
    """
    DEVICE_FUNCTIONS.append(f"{fn.__module__}.{fn.__name__}")
    return cuda.jit(device=True)(fn)


def unexpected_specialisations() -> List[str]:
    """Kernels compiled (by a launch) for argument types outside their
    registered signatures, e.g. a Python float that made a float64 variant.

    Meaningful on a real GPU after some launches; the simulator compiles nothing
    and always gives an empty list.
    """
    from numba.core.sigutils import normalize_signature

    found = []
    for spec in KERNELS:
        compiled = getattr(spec.dispatcher, "overloads", None)
        if not compiled:
            continue
        expected = {tuple(normalize_signature(sig)[0]) for sig in spec.signatures}
        for argtypes in compiled:
            if tuple(argtypes) not in expected:
                found.append(f"{spec.name}{tuple(str(t) for t in argtypes)}")
    return found
