"""Shared fixtures.

The CUDA backend's op tests run under Numba's CUDA simulator unless the caller
set NUMBA_ENABLE_CUDASIM itself (e.g. =0 on a machine with a real GPU). The
variable must be set before numba is first imported, hence here, at the top.
"""
import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# Sizes that are not multiples of any block: the CPU backend runs all of them;
# the simulated GPU runs only the small ones (the simulator is ~1e5x slower).
CPU_SIZES = (1, 3, 17, 129, 1000)
CUDA_SIZES = (1, 3, 17, 33)


def _cuda_backend_or_skip():
    try:
        import numba.cuda  # noqa: F401
    except ImportError:
        pytest.skip("numba-cuda is not installed")
    from fastnn.backend import get_backend
    return get_backend("cuda")


@pytest.fixture(params=["cpu", "cuda"])
def backend(request):
    """Every backend the op tests run on."""
    if request.param == "cpu":
        from fastnn.backend import get_backend
        return get_backend("cpu")
    return _cuda_backend_or_skip()


@pytest.fixture
def op_sizes(backend):
    """Awkward sizes suitable for this backend."""
    return CUDA_SIZES if backend.name == "cuda" else CPU_SIZES


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
