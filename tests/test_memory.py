"""Training for many epochs does not grow memory.

Each model trains in a fresh subprocess (so nothing else the test session
did shows in its memory) for 60 epochs with validation, predict and evaluate
after every epoch. The child reports its resident set size after every
epoch; the growth from epoch 5 to the end must stay under a generous bound.
A second, finer check runs under tracemalloc after a warm-up epoch: the
memory Python and NumPy hold must not grow over further epochs (a leak of
even one small array per step would), and for the MLP the transient memory
a training step allocates must stay below the size of any batch-shaped
array, i.e. the step allocates no new arrays (activations and workspaces
are allocated once per batch shape and reused).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import fastnn

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads the resident set size from /proc/self/statm")

EPOCHS = 60
RSS_GROWTH_LIMIT_MB = 20.0
# Live traced memory may grow by this much over the traced epochs (noise:
# logs dicts, the history lists); one leaked (32, 10) float32 array per step
# would add more than 20 times this.
TRACED_GROWTH_LIMIT = 64 * 1024
# Smaller than any float32 array with a batch axis in the traced MLP step
# (batch 256: the smallest is (256, 10), 10 KiB).
STEP_TRANSIENT_LIMIT = 8 * 1024

CHILD = r"""
import gc, json, os, sys, time, tracemalloc
import numpy as np
import fastnn
from fastnn.callbacks import Callback
from fastnn.layers import (BatchNormalization, Conv2D, Dense, Dropout, Flatten,
                           MaxPooling2D)
from fastnn.utils import set_random_seed

kind, epochs = sys.argv[1], int(sys.argv[2])
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * PAGE


rng = np.random.default_rng(0)
set_random_seed(0)
if kind == "mlp":
    x = rng.standard_normal((2048, 64)).astype(np.float32)
    model = fastnn.Sequential([Dense(64, activation="relu", input_shape=(64,)), Dropout(0.2),
                               Dense(10, activation="softmax")])
else:
    x = rng.standard_normal((512, 12, 12, 1)).astype(np.float32)
    model = fastnn.Sequential([Conv2D(8, 3, activation="relu", input_shape=(12, 12, 1)),
                               BatchNormalization(), MaxPooling2D(2), Flatten(), Dropout(0.2),
                               Dense(10, activation="softmax")])
y = rng.integers(0, 10, len(x))
xv, yv = x[:300], y[:300]
model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])

samples = []


class Probe(Callback):
    def on_epoch_end(self, epoch, logs=None):
        # odd batch sizes: predict/evaluate meet new batch shapes every epoch
        model.predict(xv, batch_size=37, verbose=0)
        model.evaluate(xv, yv, batch_size=41, verbose=0)
        gc.collect()
        samples.append(rss())


start = time.perf_counter()
model.fit(x, y, epochs=epochs, batch_size=32, validation_data=(xv, yv),
          callbacks=[Probe()], verbose=0)
seconds = time.perf_counter() - start


class StepPeak(Callback):
    def __init__(self):
        super().__init__()
        self.peaks = []

    def on_train_batch_begin(self, batch, logs=None):
        self.base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()

    def on_train_batch_end(self, batch, logs=None):
        self.peaks.append(tracemalloc.get_traced_memory()[1] - self.base)


batch = 256 if kind == "mlp" else 32
tracemalloc.start()
model.fit(x, y, epochs=1, batch_size=batch, verbose=0)  # warm-up: every batch shape
gc.collect()
before = tracemalloc.get_traced_memory()[0]
probe = StepPeak()
model.fit(x, y, epochs=5, batch_size=batch, verbose=0, callbacks=[probe])
del probe.base
gc.collect()
after = tracemalloc.get_traced_memory()[0]
tracemalloc.stop()
print(json.dumps({"rss": samples, "seconds": seconds, "traced_growth": after - before,
                  "step_peak_max": max(probe.peaks), "steps_traced": len(probe.peaks)}))
"""


def _run_child(kind: str) -> dict:
    # The child imports the same fastnn as this process, from outside the
    # repository root (whose unbuilt sources would shadow an installed build).
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)),
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(CHILD), kind, str(EPOCHS)],
                          capture_output=True, text=True, timeout=600, env=env,
                          cwd=os.path.dirname(os.path.abspath(__file__)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_memory_is_flat_over_many_epochs(kind):
    r = _run_child(kind)
    mb = [s / 2**20 for s in r["rss"]]
    growth = mb[-1] - mb[4]
    print(f"\n{kind}: {EPOCHS} epochs in {r['seconds']:.1f} s; RSS after epoch 1 "
          f"{mb[0]:.1f} MB, after epoch 5 {mb[4]:.1f} MB, at the end {mb[-1]:.1f} MB "
          f"(max {max(mb):.1f} MB), growth {growth:+.2f} MB; traced growth over 5 more "
          f"epochs {r['traced_growth']} B; largest transient per step "
          f"{r['step_peak_max']} B over {r['steps_traced']} steps")
    assert len(mb) == EPOCHS
    assert growth < RSS_GROWTH_LIMIT_MB, (
        f"{kind}: resident memory grew by {growth:.1f} MB from epoch 5 to epoch {EPOCHS}")
    assert r["traced_growth"] < TRACED_GROWTH_LIMIT, (
        f"{kind}: Python/NumPy memory grew by {r['traced_growth']} B over 5 epochs")
    if kind == "mlp":
        assert r["step_peak_max"] < STEP_TRANSIENT_LIMIT, (
            f"a training step allocated {r['step_peak_max']} B transiently: "
            "a new array per step?")
