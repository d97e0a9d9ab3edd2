"""Trains the same MLP single-process and data-parallel; rank 0 saves both.

argv: OUT_DIR N_SAMPLES BATCH_SIZE EPOCHS [dropout]
Writes OUT_DIR/result.npz: single_i / dist_i weight arrays, the per-rank digests of
the data-parallel weights, and both loss histories.
"""
import json
import os
import sys

import numpy as np

import common
from fastnn import distributed

out_dir, n, batch, epochs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
dropout = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
rank, size = distributed.init()

x, y = common.synthetic(n)
xv, yv = common.synthetic(77, seed=8)

# The single-process reference: every rank computes it the same way.
single = common.mlp(seed=3, dropout=dropout)
h_single = single.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                      validation_data=(xv, yv))

# Rank 1 starts from different weights and generator state: begin_fit must
# replace both with rank 0's.
dist = common.mlp(seed=3 + rank, dropout=dropout)
h_dist = dist.fit(x, y, batch_size=batch, epochs=epochs, shuffle=True, verbose=0,
                  validation_data=(xv, yv), distributed=True)

digests = distributed._mpi().COMM_WORLD.allgather(common.digest(dist))
in_sync = distributed.check_in_sync(dist)
if rank == 0:
    arrays = {f"single_{i}": w for i, w in enumerate(common.weights(single))}
    arrays.update({f"dist_{i}": w for i, w in enumerate(common.weights(dist))})
    np.savez(os.path.join(out_dir, "result.npz"), **arrays)
    with open(os.path.join(out_dir, "result.json"), "w") as f:
        json.dump({"digests": digests, "in_sync": in_sync, "size": size,
                   "single_history": h_single.history, "dist_history": h_dist.history}, f)
