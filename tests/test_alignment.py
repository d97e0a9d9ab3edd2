"""The CPU backend starts every array of 4 KiB or more on a 64-byte
(cache-line) boundary.

NumPy starts large arrays 16 bytes past a page boundary, where each 64-byte
vector load straddles two cache lines; the kernels read weights, gradients,
optimiser state and activations with such loads. Alignment is a speed
property, but losing it is silent, so it is checked here rather than left to
the benchmarks.
"""
from __future__ import annotations

import numpy as np
import pytest

import fastnn
from fastnn.backend import get_backend
from fastnn.backend.cpu import ALIGNED_MIN_BYTES
from fastnn.layers import Dense
from fastnn.utils import set_random_seed

LINE = 64
SHAPES = [(0,), (1,), (17,), (3, 17), (1000, 1023), (2, 3, 5), (300_000,)]
DTYPES = [np.float32, np.int32, np.int64, np.uint8, np.float64]


def aligned(a: np.ndarray) -> bool:
    """On a line boundary, or too small for the backend to align."""
    return a.nbytes < ALIGNED_MIN_BYTES or a.ctypes.data % LINE == 0


def test_the_shapes_below_include_aligned_ones():
    big = [s for s in SHAPES if np.prod(s) * 4 >= ALIGNED_MIN_BYTES]
    assert len(big) >= 2


@pytest.fixture(scope="module")
def cpu():
    return get_backend("cpu")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_and_zeros_are_aligned_with_the_asked_shape(cpu, shape, dtype):
    for arr in (cpu.empty(shape, dtype), cpu.zeros(shape, dtype)):
        assert arr.shape == shape and arr.dtype == np.dtype(dtype)
        assert arr.flags.c_contiguous and arr.flags.writeable
        assert aligned(arr)
    assert not np.any(cpu.zeros(shape, dtype))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_asarray_is_an_aligned_copy(cpu, shape, dtype):
    src = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    src_view = np.asfortranarray(src) if src.ndim > 1 else src
    out = cpu.asarray(src_view)
    assert aligned(out) and out.flags.c_contiguous and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, src)
    if out.size:
        out.reshape(-1)[0] += 1  # a copy: the source does not change
        assert src.reshape(-1)[0] == 0


def test_asarray_takes_python_sequences(cpu):
    out = cpu.asarray([[1.5, 2.5], [3.5, 4.5]])
    assert aligned(out) and out.shape == (2, 2)
    np.testing.assert_array_equal(out, [[1.5, 2.5], [3.5, 4.5]])


def test_a_trained_models_buffers_and_scratch_are_aligned():
    set_random_seed(0)
    model = fastnn.Sequential([Dense(64, input_dim=48, activation="relu"),
                               Dense(32, activation="relu"), Dense(10, activation="softmax")])
    model.compile(optimizer=fastnn.optimizers.Adam(),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 48)).astype(np.float32)
    y = rng.integers(0, 10, 200).astype(np.int32)
    model.fit(x, y, batch_size=64, epochs=1, verbose=0)

    assert model.params.nbytes >= ALIGNED_MIN_BYTES
    assert aligned(model.params) and aligned(model.grads)
    for name, slot in model.optimizer.slots.items():
        assert aligned(slot), name
    # Views into the flat buffer are not allocated, so no size exemption:
    # every weight here starts at a multiple of 16 floats (0, 3072, 3136,
    # 5184, 5216, 5536), so each must start on a line.
    for layer in model.layers:
        for spec in layer.weight_specs:
            view = layer.param(spec.name)
            assert view.ctypes.data % LINE == 0, (layer.name, spec.name)
    scratch = [a for a in model._scratch.values() if a.nbytes >= ALIGNED_MIN_BYTES]
    assert scratch, "fit allocated no scratch array large enough to align"
    assert all(aligned(a) for a in scratch)
