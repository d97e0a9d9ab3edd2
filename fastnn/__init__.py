"""fastnn: fast neural-network training on CPUs, with a Keras-style API.

    from fastnn import Sequential
    from fastnn.layers import Flatten, Dense
    model = Sequential([Flatten(input_shape=(28, 28)), Dense(128, activation="relu"),
                        Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, epochs=10, batch_size=128)

``import fastnn`` loads NumPy and the compiled kernels only; numba (GPU) and
mpi4py (MPI) load on first use.
"""
from __future__ import annotations

from ._threads import get_num_threads, set_num_threads
from . import activations, callbacks, initializers, layers, losses, metrics, optimizers, utils
from . import models
from .layers import Input
from .model import Model, Sequential

__version__ = "0.1.0"

__all__ = [
    "Input", "Model", "Sequential", "activations", "callbacks", "get_num_threads",
    "initializers", "layers", "losses", "metrics", "optimizers", "set_num_threads",
    "utils", "__version__",
]
