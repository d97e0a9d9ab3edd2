"""Rank 1 raises in the middle of an epoch; the job must end, not hang.

argv: OUT_DIR
"""
import sys

import common
from fastnn import distributed
from fastnn.callbacks import Callback

rank, _ = distributed.init()


class Boom(Callback):
    def on_train_batch_end(self, batch, logs=None):
        if rank == 1 and batch == 3:
            raise RuntimeError("deliberate failure on this rank")


x, y = common.synthetic(400)
model = common.mlp(seed=1)
model.fit(x, y, batch_size=32, epochs=50, verbose=0, callbacks=[Boom()], distributed=True)
print("rank", rank, "finished training, which it must not")
sys.exit(0)
