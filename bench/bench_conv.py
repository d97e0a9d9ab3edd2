"""LeNet-5 shaped convolution and pooling layers: fastnn vs PyTorch.

Times each layer's forward and backward on both libraries in one process, at
the same thread counts, alternating small blocks of calls so both see the
same machine load, and prints medians (and minima) and their ratios
(PyTorch time / fastnn time: above 1 means fastnn is faster). Results also
go to bench/results/bench_conv.json.

PyTorch runs in its native NCHW layout (its fast path); fastnn in NHWC. The
conv forward includes the ReLU on both sides (fused in fastnn). Backward is
the gradient w.r.t. weights and bias, plus the input for the second conv
(the first layer of a network needs no input gradient).

    python bench/bench_conv.py [--batch 32 128] [--threads 1 2] [--repeat 50]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastnn import _C  # noqa: E402
from fastnn.backend import get_backend  # noqa: E402
from fastnn.backend.conv_shapes import resolve_padding  # noqa: E402

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # the fastnn column still prints
    torch = None


def time_pair(fa: Callable[[], object], fb: Optional[Callable[[], object]], repeat: int,
              block: int = 5):
    """Per-call times (ms) of fa and fb, run in alternating blocks of `block`
    calls so both see the same machine load; returns (median_a, min_a,
    median_b, min_b)."""
    ta: List[float] = []
    tb: List[float] = []
    for f in (fa, fb):
        if f is not None:
            for _ in range(3):
                f()
    while len(ta) < repeat:
        for f, ts in ((fa, ta), (fb, tb)):
            if f is None:
                continue
            for _ in range(block):
                t0 = time.perf_counter()
                f()
                ts.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median
    return (med(ta), min(ta), med(tb) if tb else None, min(tb) if tb else None)


# name, input (H, W, C), filters, kernel, padding
CONVS = [("conv1 28x28x1->6 5x5 same", (28, 28, 1), 6, (5, 5), "same"),
         ("conv2 14x14x6->16 5x5 valid", (14, 14, 6), 16, (5, 5), "valid")]
POOLS = [("maxpool1 28x28x6 2x2", (28, 28, 6)), ("maxpool2 10x10x16 2x2", (10, 10, 16))]


def fastnn_ops(be, batch: int, rng) -> Dict[str, Callable[[], object]]:
    ops = {}
    for i, (name, (h, w, c), f, k, pad) in enumerate(CONVS):
        x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
        wt = rng.standard_normal(k + (c, f)).astype(np.float32)
        b = rng.standard_normal(f).astype(np.float32)
        p = resolve_padding(pad, (h, w), k)
        ho, wo = h + p[0] + p[1] - k[0] + 1, w + p[2] + p[3] - k[1] + 1
        out = np.empty((batch, ho, wo, f), np.float32)
        dz = rng.standard_normal(out.shape).astype(np.float32)
        dw, db = np.empty_like(wt), np.empty_like(b)
        dx = np.empty_like(x) if i > 0 else None
        ops[name + " fwd"] = (lambda x=x, wt=wt, b=b, out=out, p=p:
                              be.conv2d_fwd(x, wt, b, out, padding=p, act="relu"))
        ops[name + " bwd"] = (lambda x=x, wt=wt, dz=dz, dw=dw, db=db, dx=dx, p=p:
                              be.conv2d_bwd(x, wt, dz, dw, db, dx, padding=p))
    for name, (h, w, c) in POOLS:
        x = rng.standard_normal((batch, h, w, c)).astype(np.float32)
        out = np.empty((batch, h // 2, w // 2, c), np.float32)
        arg = np.empty(out.shape, np.int32)
        dx = np.empty_like(x)
        ops[name + " fwd"] = (lambda x=x, out=out, arg=arg:
                              be.maxpool2d_fwd(x, out, arg, pool=(2, 2), strides=(2, 2)))
        ops[name + " bwd"] = lambda out=out, arg=arg, dx=dx: be.maxpool2d_bwd(out, arg, dx)
    return ops


def torch_ops(batch: int, rng) -> Dict[str, Callable[[], object]]:
    ops = {}
    conv_bwd = torch.ops.aten.convolution_backward
    pool_bwd = torch.ops.aten.max_pool2d_with_indices_backward
    for i, (name, (h, w, c), f, k, pad) in enumerate(CONVS):
        x = torch.tensor(rng.standard_normal((batch, c, h, w)).astype(np.float32))
        wt = torch.tensor(rng.standard_normal((f, c) + k).astype(np.float32))
        b = torch.tensor(rng.standard_normal(f).astype(np.float32))
        p = [k[0] // 2, k[1] // 2] if pad == "same" else [0, 0]
        dz = torch.randn_like(TF.conv2d(x, wt, b, padding=p))
        mask = [i > 0, True, True]
        ops[name + " fwd"] = (lambda x=x, wt=wt, b=b, p=p:
                              TF.relu(TF.conv2d(x, wt, b, padding=p)))
        ops[name + " bwd"] = (lambda dz=dz, x=x, wt=wt, f=f, p=p, mask=mask:
                              conv_bwd(dz, x, wt, [f], [1, 1], p, [1, 1], False, [0, 0], 1,
                                       mask))
    for name, (h, w, c) in POOLS:
        x = torch.randn(batch, c, h, w)
        y, idx = TF.max_pool2d(x, 2, 2, return_indices=True)
        dy = torch.randn_like(y)
        ops[name + " fwd"] = lambda x=x: TF.max_pool2d(x, 2, 2, return_indices=True)
        ops[name + " bwd"] = (lambda dy=dy, x=x, idx=idx:
                              pool_bwd(dy, x, [2, 2], [2, 2], [0, 0], [1, 1], False, idx))
    return ops


def main(argv: List[str] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args(argv)
    be = get_backend("cpu")
    rng = np.random.default_rng(0)
    rows = []
    for nt in args.threads:
        _C.set_num_threads(nt)
        if torch is not None:
            torch.set_num_threads(nt)
        for batch in args.batch:
            ours = fastnn_ops(be, batch, rng)
            theirs = torch_ops(batch, rng) if torch is not None else {}
            ctx = torch.no_grad() if torch is not None else contextlib.nullcontext()
            with ctx:
                for op, fa in ours.items():
                    med_a, min_a, med_b, min_b = time_pair(fa, theirs.get(op), args.repeat)
                    rows.append({"threads": nt, "batch": batch, "op": op,
                                 "fastnn_ms": med_a, "fastnn_min_ms": min_a,
                                 "torch_ms": med_b, "torch_min_ms": min_b})
            done = [r for r in rows if r["threads"] == nt and r["batch"] == batch]
            total = {"threads": nt, "batch": batch, "op": "TOTAL conv+pool fwd+bwd"}
            for key in ("fastnn_ms", "fastnn_min_ms", "torch_ms", "torch_min_ms"):
                vals = [r[key] for r in done]
                total[key] = sum(vals) if None not in vals else None
            rows.append(total)
    print(f"{'thr':>3} {'batch':>5}  {'op':<34} {'fastnn ms':>10} {'torch ms':>10} "
          f"{'ratio':>6}  {'(min':>8} {'min':>8} {'ratio)':>6}")
    for r in rows:
        t, tm = r["torch_ms"], r["torch_min_ms"]
        ratio = f"{t / r['fastnn_ms']:6.2f}" if t else "     -"
        ratio_min = f"{tm / r['fastnn_min_ms']:6.2f}" if tm else "     -"
        ts = f"{t:10.3f}" if t else "         -"
        tms = f"{tm:8.3f}" if tm else "       -"
        print(f"{r['threads']:>3} {r['batch']:>5}  {r['op']:<34} {r['fastnn_ms']:10.3f} {ts} "
              f"{ratio}  {r['fastnn_min_ms']:8.3f} {tms} {ratio_min}")
        if r["op"].startswith("TOTAL"):
            per_epoch = r["fastnn_ms"] * 60000 / r["batch"] / 1e3
            line = f"{'':>10}  -> per 60000-image epoch (medians): fastnn {per_epoch:.2f} s"
            if t:
                line += f", torch {t * 60000 / r['batch'] / 1e3:.2f} s"
            print(line)
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "bench_conv.json"), "w") as fh:
        json.dump({"torch": getattr(torch, "__version__", None), "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
