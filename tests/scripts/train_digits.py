"""Trains a small MLP on the embedded digits set: the subject of the kill/resume tests.

    python train_digits.py OUT_DIR [--backup DIR] [--save-freq N|epoch]
                           [--stall-after N] [--slow SECONDS] [--epochs E]

Seed, data, shuffling and Dropout are fixed, so two runs with the same thread count
end with the same weights. At the end it writes OUT_DIR/weights.safetensors and
OUT_DIR/result.json (where it resumed from, and its history).

--backup DIR      train with BackupAndRestore(DIR, save_freq=...) (resumes from DIR)
--stall-after N   after this process's N-th batch, write OUT_DIR/stalled and sleep
                  forever (the test kills it there)
--slow SECONDS    sleep this long after every batch (so a test can kill it at random
                  moments); OUT_DIR/started appears after the first batch
"""
import argparse
import json
import os
import sys
import time

import fastnn
from fastnn.callbacks import BackupAndRestore, Callback
from fastnn.datasets import digits
from fastnn.layers import Dense, Dropout, Flatten


class _Pace(Callback):
    """Slows, marks or stalls training from outside its numerics."""

    def __init__(self, out_dir, stall_after, slow):
        super().__init__()
        self.out_dir, self.stall_after, self.slow = out_dir, stall_after, slow
        self.batches = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches += 1
        if self.batches == 1:
            open(os.path.join(self.out_dir, "started"), "w").close()
        if self.slow:
            time.sleep(self.slow)
        if self.stall_after and self.batches == self.stall_after:
            with open(os.path.join(self.out_dir, "stalled"), "w") as f:
                f.write(json.dumps(list(self.model.position)))
            while True:
                time.sleep(60)


def main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--backup")
    parser.add_argument("--save-freq", default="7")
    parser.add_argument("--stall-after", type=int, default=0)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)

    (x, y), (x_val, y_val) = digits.load_data()
    fastnn.utils.set_random_seed(1234)
    model = fastnn.Sequential([Flatten(input_shape=(8, 8)), Dense(32, activation="relu"),
                               Dropout(0.25), Dense(16, activation="relu"),
                               Dense(10, activation="softmax")])
    model.compile(optimizer=fastnn.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    callbacks = []
    backup = None
    if args.backup:
        freq = args.save_freq if args.save_freq == "epoch" else int(args.save_freq)
        backup = BackupAndRestore(args.backup, save_freq=freq)
        callbacks.append(backup)
    callbacks.append(_Pace(args.out_dir, args.stall_after, args.slow))
    history = model.fit(x, y, batch_size=32, epochs=args.epochs, shuffle=True, verbose=0,
                        validation_data=(x_val, y_val), callbacks=callbacks)
    model.save_weights(os.path.join(args.out_dir, "weights.safetensors"))
    result = {"restored_from": None if backup is None or backup.restored_from is None
              else list(backup.restored_from),
              "history": history.history, "epochs_run": history.epoch}
    with open(os.path.join(args.out_dir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1:])
