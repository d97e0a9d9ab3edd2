"""PyTorch's MLP epochs in a process of their own, driven by bench/run.py.

GNU OpenMP reads its wait policy once per process, and fastnn's libgomp and
PyTorch's bundled one share a soname, so in one process both libraries run under
whichever setting loaded first: fastnn's short spin (GOMP_SPINCOUNT=10000) made
PyTorch's seed-MLP epoch about 30 % slower at 2 threads than under PyTorch's
own default, and PyTorch loaded first made fastnn's slower by about as much.
run.py therefore times PyTorch's training epochs here, in a child started with
the environment the user gave run.py, never importing fastnn, while the
repetitions still alternate with fastnn's (each request is one epoch).

Protocol: one JSON object per line on stdin, one reply per line on stdout.
  {"op": "load", "x": PATH.npy, "y": PATH.npy}        -> {"ok": true}
  {"op": "epoch", "hidden": [128], "fused": false, "threads": 2, "n": 60000}
                                                      -> {"ok": true, "seconds": s}
  anything that fails                                 -> {"ok": false, "error": "..."}
End of input ends the process.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from typing import Any, Dict, List, Tuple

import numpy as np


def torch_mlp(torch: Any, hidden: List[int], fused: bool) -> Tuple[Any, Any]:
    """Flatten -> Linear/ReLU per hidden width -> Linear(10) (the loss applies
    the softmax), Adam at lr 1e-3, default or fused."""
    nn = torch.nn
    torch.manual_seed(0)
    mods: List[Any] = [nn.Flatten()]
    width = 784
    for h in hidden:
        mods += [nn.Linear(width, h), nn.ReLU()]
        width = h
    mods.append(nn.Linear(width, 10))
    model = nn.Sequential(*mods)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=bool(fused))
    return model, opt


def torch_train_epoch(torch: Any, model: Any, opt: Any, x: Any, y: Any, bs: int,
                      sched: Any = None) -> None:
    """A plain PyTorch training loop: shuffle, then per batch gather, forward,
    loss, backward, step (and the learning-rate schedule's step, if any).
    ``torch`` is the module, passed in so that importing this file does not
    load PyTorch."""
    f = torch.nn.functional
    model.train()
    perm = torch.randperm(x.shape[0])
    for start in range(0, x.shape[0], bs):
        idx = perm[start:start + bs]
        opt.zero_grad(set_to_none=True)
        loss = f.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()


class Worker:
    def __init__(self) -> None:
        import torch
        self.torch = torch
        self.x: Any = None
        self.y: Any = None
        self.models: Dict[Tuple[Any, ...], Tuple[Any, Any]] = {}

    def handle(self, req: Dict[str, Any]) -> Dict[str, Any]:
        torch = self.torch
        if req["op"] == "load":
            self.x = torch.from_numpy(np.load(req["x"]))
            self.y = torch.from_numpy(np.load(req["y"]).astype(np.int64))
            return {"ok": True, "torch": torch.__version__}
        if req["op"] == "epoch":
            torch.set_num_threads(int(req["threads"]))
            key = (tuple(req["hidden"]), bool(req["fused"]), int(req["threads"]))
            if key not in self.models:
                self.models[key] = torch_mlp(torch, list(req["hidden"]), req["fused"])
            model, opt = self.models[key]
            n = int(req["n"])
            t0 = time.perf_counter()
            torch_train_epoch(torch, model, opt, self.x[:n], self.y[:n], int(req.get("bs", 128)))
            return {"ok": True, "seconds": time.perf_counter() - t0}
        raise ValueError(f"unknown op {req['op']!r}")


def main() -> int:
    worker = None
    for line in sys.stdin:
        try:
            if worker is None:
                worker = Worker()
            reply = worker.handle(json.loads(line))
        except Exception as exc:  # noqa: BLE001 - the parent reports it
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}",
                     "trace": traceback.format_exc()[-2000:]}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
