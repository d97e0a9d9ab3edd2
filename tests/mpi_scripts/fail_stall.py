"""Rank 1 stalls (as a hung or unreachable rank would); with FASTNN_MPI_TIMEOUT set,
rank 0 must give up and abort the job.

argv: OUT_DIR
"""
import time

import common
from fastnn import distributed
from fastnn.callbacks import Callback

rank, _ = distributed.init()


class Stall(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if rank == 1 and batch == 2:
            time.sleep(120)


x, y = common.synthetic(400)
model = common.mlp(seed=1)
model.fit(x, y, batch_size=32, epochs=50, verbose=0, callbacks=[Stall()], distributed=True)
print("rank", rank, "finished training, which it must not")
