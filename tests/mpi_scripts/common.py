"""Shared by the scripts that tests/test_distributed.py launches under mpiexec.

Each script is run as ``mpiexec -n 2 python tests/mpi_scripts/<name>.py OUT_DIR ...``
with PYTHONPATH naming the fastnn under test; rank 0 writes results under OUT_DIR.
"""
from __future__ import annotations

import hashlib
from typing import List, Tuple

import numpy as np

import fastnn
from fastnn.layers import Dense
from fastnn.utils import set_random_seed


def synthetic(n: int, features: int = 20, classes: int = 5, seed: int = 7
              ) -> Tuple[np.ndarray, np.ndarray]:
    """A learnable problem: labels from a fixed random linear teacher with noise;
    ``seed`` chooses the samples."""
    teacher = np.random.default_rng(1234).normal(size=(features, classes))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, features)).astype(np.float32)
    logits = x @ teacher + 0.5 * rng.normal(size=(n, classes))
    return x, logits.argmax(axis=1).astype(np.int64)


def mlp(seed: int, features: int = 20, classes: int = 5, dropout: float = 0.0) -> fastnn.Model:
    """A small MLP, initialised from ``seed``, compiled with Adam."""
    set_random_seed(seed)
    layers = [Dense(48, activation="relu", input_shape=(features,))]
    if dropout:
        from fastnn.layers import Dropout
        layers.append(Dropout(dropout))
    layers += [Dense(32, activation="tanh"), Dense(classes, activation="softmax")]
    model = fastnn.Sequential(layers)
    model.compile(optimizer=fastnn.optimizers.Adam(learning_rate=3e-3),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def weights(model: fastnn.Model) -> List[np.ndarray]:
    return [np.array(w, dtype=np.float32, copy=True) for w in model.get_weights()]


def digest(model: fastnn.Model) -> str:
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w, dtype=np.float32).tobytes())
    return h.hexdigest()
