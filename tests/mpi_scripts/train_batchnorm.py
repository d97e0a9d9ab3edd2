"""Trains a model with BatchNormalization data-parallel; rank 0 records every
rank's digest of weights AND moving statistics.

argv: OUT_DIR
"""
import json
import os
import sys

import common
import fastnn
from fastnn import distributed
from fastnn.layers import BatchNormalization, Dense

out_dir = sys.argv[1]
rank, size = distributed.init()
x, y = common.synthetic(96)
fastnn.utils.set_random_seed(4 + rank)  # different starts: the broadcast must fix them
model = fastnn.Sequential([Dense(16, input_shape=(20,)), BatchNormalization(momentum=0.8),
                           Dense(5, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
model.fit(x, y, batch_size=16, epochs=2, verbose=0, distributed=True)
digests = distributed._mpi().COMM_WORLD.allgather(common.digest(model))
if rank == 0:
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump({"digests": digests}, f)
