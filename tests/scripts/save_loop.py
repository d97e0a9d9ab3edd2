"""Saves training checkpoints in a loop until killed: the subject of the
kill-during-save test.

    python save_loop.py CHECKPOINT MARKER

Version i of the checkpoint has every weight equal to i and records i as its
epoch, so a reader can tell a complete file from a mixture of two saves. MARKER
receives the last version whose save returned.
"""
import os
import sys

import numpy as np

import fastnn
from fastnn.checkpoint import save_training_state
from fastnn.layers import Dense


def build():
    """The model the test rebuilds to restore the checkpoint (about 2.4M weights)."""
    model = fastnn.Sequential([Dense(1024, input_shape=(512,)), Dense(1024), Dense(16)])
    model.compile(optimizer="adam", loss="mse")
    return model


def main(path, marker):
    fastnn.utils.set_random_seed(0)
    model = build()
    model.train_on_batch(np.zeros((2, 512), np.float32), np.zeros((2, 16), np.float32))
    version = 0
    while True:
        version += 1
        model.set_weights([np.full(w.shape, version, np.float32) for w in model.get_weights()])
        save_training_state(model, path, epoch=version, step=0, order=None,
                            totals=np.zeros(2))
        tmp = marker + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(version))
        os.replace(tmp, marker)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
