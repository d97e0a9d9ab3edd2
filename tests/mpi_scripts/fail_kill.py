"""Rank 1 is killed by SIGKILL in the middle of training; the job must end.

argv: OUT_DIR
"""
import os
import signal

import common
from fastnn import distributed
from fastnn.callbacks import Callback

rank, _ = distributed.init()


class Die(Callback):
    def on_train_batch_begin(self, batch, logs=None):
        if rank == 1 and batch == 2:
            os.kill(os.getpid(), signal.SIGKILL)


x, y = common.synthetic(400)
model = common.mlp(seed=1)
model.fit(x, y, batch_size=32, epochs=50, verbose=0, callbacks=[Die()], distributed=True)
print("rank", rank, "finished training, which it must not")
