"""Rank 1 has one sample fewer; fit must stop with a clear error on every rank.

argv: OUT_DIR
"""
import common
from fastnn import distributed

rank, _ = distributed.init()
x, y = common.synthetic(300 - rank)
model = common.mlp(seed=1)
model.fit(x, y, batch_size=32, epochs=1, verbose=0, distributed=True)
print("rank", rank, "trained despite mismatched data")
