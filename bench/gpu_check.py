"""One-shot check of the CUDA backend on a machine with an NVIDIA GPU.

    python bench/gpu_check.py                 # real GPU: under 5 minutes
    python bench/gpu_check.py --tiny          # tiny sizes; runs on the simulator
    python bench/gpu_check.py --json out.json

Prints, in order:
  1. every backend op on the GPU against the CPU backend at realistic sizes:
     max abs / max rel error, and the time per call on each side;
  2. SGEMM GFLOP/s at 4096^3 (and torch.matmul's, when PyTorch sees the GPU);
  3. the seed MLP (784-128-10, Adam, batch 128, 60000 synthetic MNIST-shaped
     samples): epoch time on cuda, on cpu, and in PyTorch CUDA when importable;
  4. LeNet-5 epoch time when fastnn.layers.Conv2D exists;
  5. whether any kernel was compiled for argument types outside its
     registered (PTX-tested) signatures.

Sections whose features do not exist yet are reported as skipped. With --tiny
everything runs at toy sizes, so the script finishes under Numba's CUDA
simulator (NUMBA_ENABLE_CUDASIM=1, set automatically with --tiny when no
GPU is visible) in a minute or two; its times are then not GPU times.
"""
from __future__ import annotations

import argparse
import importlib.machinery
import json
import math
import os
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# This checkout's fastnn when it has been built in place, else the installed one
# (an unbuilt checkout on the path would shadow a working installation).
if any((REPO / "fastnn" / ("_C" + suffix)).exists()
       for suffix in importlib.machinery.EXTENSION_SUFFIXES) and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS: Dict[str, Any] = {}


def say(msg: str = "") -> None:
    print(msg, flush=True)


def section(title: str) -> None:
    say()
    say(f"== {title} " + "=" * max(0, 70 - len(title)))


def skipped(key: str, why: str) -> None:
    say(f"  skipped: {why}")
    RESULTS[key] = {"skipped": why}


# ---------------------------------------------------------------- op cases

class Sizes:
    def __init__(self, tiny: bool):
        self.tiny = tiny
        if tiny:
            self.gemm = (5, 7, 3)
            self.batch, self.feat, self.hidden, self.classes = 6, 5, 4, 3
            self.flat = 300
            self.n_src = 20
        else:
            self.gemm = (512, 384, 256)
            self.batch, self.feat, self.hidden, self.classes = 128, 784, 128, 10
            self.flat = 101_770    # the seed MLP's parameter count
            self.n_src = 60_000


def _f32(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)


def make_cases(sz: Sizes) -> List[Tuple[str, Callable, Callable]]:
    """(name, make host inputs from an rng, run on a backend -> outputs)."""
    cases: List[Tuple[str, Callable, Callable]] = []
    B, F, H, C = sz.batch, sz.feat, sz.hidden, sz.classes
    acts = ("linear", "relu", "sigmoid", "tanh", "softmax")

    for ta in (False, True):
        for tb in (False, True):
            def mk(rng, ta=ta, tb=tb):
                m, n, k = sz.gemm
                return {"a": _f32(rng, *((k, m) if ta else (m, k))),
                        "b": _f32(rng, *((n, k) if tb else (k, n))),
                        "c": _f32(rng, m, n)}

            def run(be, h, ta=ta, tb=tb):
                c = be.asarray(h["c"])
                a, b = be.asarray(h["a"]), be.asarray(h["b"])
                return (lambda: be.gemm(a, b, c, trans_a=ta, trans_b=tb, alpha=0.5, beta=0.25),
                        lambda: {"out": be.to_numpy(c)}, lambda: be.copy_(c, be.asarray(h["c"])))
            cases.append((f"gemm {'T' if ta else 'N'}{'T' if tb else 'N'}", mk, run))

    for act in acts:
        def mk(rng, act=act):
            n = C if act == "softmax" else H
            return {"x": _f32(rng, B, F), "w": _f32(rng, F, n) * np.float32(0.05),
                    "b": _f32(rng, n)}

        def run(be, h, act=act):
            x, w, b = be.asarray(h["x"]), be.asarray(h["w"]), be.asarray(h["b"])
            out = be.empty((h["x"].shape[0], h["w"].shape[1]))
            return (lambda: be.dense_fwd(x, w, b, act, out), lambda: {"out": be.to_numpy(out)},
                    None)
        cases.append((f"dense_fwd {act}", mk, run))

    def mk_db(rng):
        return {"x": _f32(rng, B, F), "w": _f32(rng, F, H), "dz": _f32(rng, B, H)}

    def run_db(be, h):
        x, w, dz = be.asarray(h["x"]), be.asarray(h["w"]), be.asarray(h["dz"])
        dw, db, dx = be.empty((F, H)), be.empty((H,)), be.empty((B, F))
        return (lambda: be.dense_bwd(x, w, dz, dw, db, dx),
                lambda: {"dw": be.to_numpy(dw), "db": be.to_numpy(db), "dx": be.to_numpy(dx)},
                None)
    cases.append(("dense_bwd", mk_db, run_db))

    for act in acts:
        def mk(rng, act=act):
            n = C if act == "softmax" else H
            return {"x": _f32(rng, B, n), "b": _f32(rng, n), "dy": _f32(rng, B, n)}

        def run_f(be, h, act=act):
            x, b = be.asarray(h["x"]), be.asarray(h["b"])
            out = be.empty(h["x"].shape)
            return (lambda: be.bias_act_fwd(x, b, act, out), lambda: {"out": be.to_numpy(out)},
                    None)

        def run_b(be, h, act=act):
            x = be.asarray(h["x"])
            y = be.empty(h["x"].shape)
            be.bias_act_fwd(x, None, act, y)
            dy = be.asarray(h["dy"])
            dx = be.empty(h["x"].shape)
            return (lambda: be.act_bwd(act, y, dy, dx), lambda: {"dx": be.to_numpy(dx)}, None)
        cases.append((f"bias_act_fwd {act}", mk, run_f))
        cases.append((f"act_bwd {act}", mk, run_b))

    def mk_bg(rng):
        return {"dz": _f32(rng, B, H)}

    def run_bg(be, h):
        dz = be.asarray(h["dz"])
        db = be.empty((H,))
        return (lambda: be.bias_grad(dz, db), lambda: {"db": be.to_numpy(db)}, None)
    cases.append(("bias_grad", mk_bg, run_bg))

    from fastnn.backend.base import LOSS_KINDS, METRIC_KINDS

    def loss_inputs(rng, kind):
        labels = rng.integers(0, C, B).astype(np.int32)
        onehot = np.eye(C, dtype=np.float32)[labels]
        if kind.endswith("_logits") or kind in ("mse", "mae"):
            pred = _f32(rng, B, C)
        else:
            pred = (rng.random((B, C)) * 0.98 + 0.01).astype(np.float32)
        if "sparse" in kind:
            target = labels
        elif "cce" in kind or "categorical" in kind:
            target = onehot
        else:
            target = rng.random((B, C)).astype(np.float32)
        return {"pred": pred, "target": target}

    for kind in LOSS_KINDS:
        def run(be, h, kind=kind):
            pred, target = be.asarray(h["pred"]), be.asarray(h["target"])
            grad = be.empty(h["pred"].shape)
            probs = be.empty(h["pred"].shape) if kind.endswith("_logits") else None
            acc = be.zeros((1,), "float64")

            def out():
                o = {"loss": be.to_numpy(acc).copy(), "grad": be.to_numpy(grad)}
                if probs is not None:
                    o["probs"] = be.to_numpy(probs)
                return o
            return (lambda: be.loss(kind, pred, target, grad, acc, probs), out,
                    lambda: be.fill_(acc, 0.0))
        cases.append((f"loss {kind}", lambda rng, kind=kind: loss_inputs(rng, kind), run))

    for kind in METRIC_KINDS:
        def mk(rng, kind=kind):
            h = loss_inputs(rng, kind)
            if kind == "binary_accuracy":
                h["pred"] = rng.random(h["pred"].shape).astype(np.float32)
            return h

        def run(be, h, kind=kind):
            pred, target = be.asarray(h["pred"]), be.asarray(h["target"])
            acc = be.zeros((1,), "float64")
            return (lambda: be.metric(kind, pred, target, acc),
                    lambda: {"acc": be.to_numpy(acc).copy()}, lambda: be.fill_(acc, 0.0))
        cases.append((f"metric {kind}", mk, run))

    n = sz.flat

    def mk_flat(rng):
        # s2 (a second moment) >= 1 > s3^2 (a mean gradient): centred RMSprop's
        # denominator stays positive, as it does in training.
        return {"p": _f32(rng, n), "g": _f32(rng, n), "s1": _f32(rng, n),
                "s2": np.abs(_f32(rng, n)) + np.float32(1.0),
                "s3": _f32(rng, n) * np.float32(0.1)}

    def run_sumsq(be, h):
        x = be.asarray(h["p"])
        box = {}
        return (lambda: box.__setitem__("v", be.sumsq(x)),
                lambda: {"sumsq": np.array([box["v"]])}, None)
    cases.append(("sumsq", mk_flat, run_sumsq))

    def run_scale(be, h):
        x = be.asarray(h["p"])
        return (lambda: be.scale_(x, 0.37), lambda: {"x": be.to_numpy(x)},
                lambda: be.copy_(x, be.asarray(h["p"])))
    cases.append(("scale_", mk_flat, run_scale))

    def optim_case(step_fn):
        def run(be, h):
            arrs = {k: be.asarray(v) for k, v in h.items()}

            def reset():
                for k, v in h.items():
                    be.copy_(arrs[k], be.asarray(v))
            return (lambda: step_fn(be, arrs),
                    lambda: {k: be.to_numpy(arrs[k]) for k in ("p", "s1", "s2", "s3")}, reset)
        return run

    cases.append(("sgd_step nesterov+wd+clip", mk_flat, optim_case(
        lambda be, a: be.sgd_step(a["p"], a["g"], a["s1"], lr=0.05, momentum=0.9, nesterov=True,
                                  weight_decay=0.01, grad_scale=0.5, clip_value=0.4))))
    cases.append(("adam_step step 3 +wd", mk_flat, optim_case(
        lambda be, a: be.adam_step(a["p"], a["g"], a["s1"], a["s2"], lr=1e-3, beta_1=0.9,
                                   beta_2=0.999, epsilon=1e-7, step=3, weight_decay=0.004,
                                   grad_scale=1.0, clip_value=0.0))))
    cases.append(("rmsprop_step centred+momentum", mk_flat, optim_case(
        lambda be, a: be.rmsprop_step(a["p"], a["g"], a["s2"], a["s1"], a["s3"], lr=1e-3,
                                      rho=0.9, momentum=0.5, epsilon=1e-7, weight_decay=0.0,
                                      grad_scale=1.0, clip_value=0.0))))

    def mk_gather(rng):
        return {"src": rng.random((sz.n_src, F), dtype=np.float32),
                "lab": rng.integers(0, C, sz.n_src).astype(np.int32),
                "idx": rng.permutation(sz.n_src)[:B].astype(np.int64)}

    def run_gather(be, h):
        src, lab = be.asarray(h["src"]), be.asarray(h["lab"])
        out, lout = be.empty((B, F)), be.empty((B,), "int32")

        def go():
            be.gather_rows(src, h["idx"], out)
            be.gather_rows(lab, h["idx"], lout)
        return go, lambda: {"x": be.to_numpy(out), "y": be.to_numpy(lout)}, None
    cases.append(("gather_rows f32+i32", mk_gather, run_gather))

    def mk_drop(rng):
        return {"x": _f32(rng, B, H)}

    def run_drop(be, h):
        x = be.asarray(h["x"])
        mask, out = be.empty((B, H)), be.empty((B, H))
        gen = {}

        def go():
            gen["g"] = np.random.default_rng(7)   # same draw on both sides
            be.dropout_fwd(x, 0.5, gen["g"], mask, out)
        return go, lambda: {"mask": be.to_numpy(mask), "out": be.to_numpy(out)}, None
    cases.append(("dropout_fwd (bit-exact)", mk_drop, run_drop))

    def mk_two(rng):
        return {"a": _f32(rng, B, H), "b": _f32(rng, B, H), "c": _f32(rng, B, C)}

    for name in ("mul", "add"):
        def run(be, h, name=name):
            a, b = be.asarray(h["a"]), be.asarray(h["b"])
            out = be.empty((B, H))
            return (lambda: getattr(be, name)(a, b, out), lambda: {"out": be.to_numpy(out)},
                    None)
        cases.append((name, mk_two, run))

    def run_concat(be, h):
        a, c = be.asarray(h["a"]), be.asarray(h["c"])
        out = be.empty((B, H + C))
        p1, p2 = be.empty((B, H)), be.empty((B, C))

        def go():
            be.concat_last([a, c], out)
            be.split_last(out, [p1, p2])
        return go, lambda: {"cat": be.to_numpy(out), "p1": be.to_numpy(p1),
                            "p2": be.to_numpy(p2)}, None
    cases.append(("concat_last+split_last", mk_two, run_concat))

    def run_fill_copy(be, h):
        a = be.asarray(h["a"])
        d1, d2 = be.empty((B, H)), be.empty((B, H))

        def go():
            be.fill_(d1, -1.25)
            be.copy_(d2, a)
        return go, lambda: {"fill": be.to_numpy(d1), "copy": be.to_numpy(d2)}, None
    cases.append(("fill_+copy_", mk_two, run_fill_copy))
    cases.extend(_conv_cases(sz))
    return cases


def _conv_cases(sz: Sizes) -> List[Tuple[str, Callable, Callable]]:
    """Convolution, pooling and batch-norm ops, LeNet-sized unless tiny."""
    from fastnn.backend.base import Backend
    if not hasattr(Backend, "conv2d_fwd"):
        return []
    from fastnn.backend.conv_shapes import conv_output_shape, pool_output_shape
    cases: List[Tuple[str, Callable, Callable]] = []
    B = sz.batch
    convs = ([("conv 3x3 same relu", (B, 6, 5, 2), (3, 3, 2, 3), (1, 1), "same", (1, 1), "relu"),
              ("conv 2x2 s2 dil", (B, 7, 6, 3), (2, 2, 3, 2), (2, 1), "valid", (1, 2), "linear")]
             if sz.tiny else
             [("conv 5x5 same relu 28x28x1->6", (B, 28, 28, 1), (5, 5, 1, 6), (1, 1), "same",
               (1, 1), "relu"),
              ("conv 5x5 valid 14x14x6->16", (B, 14, 14, 6), (5, 5, 6, 16), (1, 1), "valid",
               (1, 1), "relu"),
              ("conv 3x3 s2 same 32x32x32->64", (64, 32, 32, 32), (3, 3, 32, 64), (2, 2), "same",
               (1, 1), "linear"),
              ("conv 1x1 16x16x64->32", (B, 16, 16, 64), (1, 1, 64, 32), (1, 1), "valid", (1, 1),
               "softmax")])
    for name, xs, ws, st, pad, dil, act in convs:
        os_ = conv_output_shape(xs, ws[:2], ws[3], st, pad, dil)

        def mk(rng, xs=xs, ws=ws, os_=os_):
            fan = ws[0] * ws[1] * ws[2]
            return {"x": _f32(rng, *xs), "w": _f32(rng, *ws) * np.float32(1 / math.sqrt(fan)),
                    "b": _f32(rng, ws[3]), "dz": _f32(rng, *os_)}

        def run_f(be, h, st=st, pad=pad, dil=dil, act=act, os_=os_):
            x, w, b = be.asarray(h["x"]), be.asarray(h["w"]), be.asarray(h["b"])
            out = be.empty(os_)
            return (lambda: be.conv2d_fwd(x, w, b, out, strides=st, padding=pad, dilation=dil,
                                          act=act),
                    lambda: {"out": be.to_numpy(out)}, None)

        def run_b(be, h, st=st, pad=pad, dil=dil):
            x, w, dz = be.asarray(h["x"]), be.asarray(h["w"]), be.asarray(h["dz"])
            dw, db, dx = be.empty(h["w"].shape), be.empty((h["w"].shape[3],)), \
                be.empty(h["x"].shape)
            return (lambda: be.conv2d_bwd(x, w, dz, dw, db, dx, strides=st, padding=pad,
                                          dilation=dil),
                    lambda: {"dw": be.to_numpy(dw), "db": be.to_numpy(db),
                             "dx": be.to_numpy(dx)}, None)
        cases.append((f"conv2d_fwd {name}", mk, run_f))
        cases.append((f"conv2d_bwd {name}", mk, run_b))

    xs = (B, 7, 6, 3) if sz.tiny else (B, 28, 28, 6)
    for pool, st, pad in (((2, 2), None, "valid"), ((3, 3), (2, 2), "same")):
        os_ = pool_output_shape(xs, pool, st, pad)

        def mk(rng, os_=os_):
            return {"x": _f32(rng, *xs), "dy": _f32(rng, *os_)}

        def run_max(be, h, pool=pool, st=st, pad=pad, os_=os_):
            x, dy = be.asarray(h["x"]), be.asarray(h["dy"])
            out, arg, dx = be.empty(os_), be.empty(os_, "int32"), be.empty(xs)

            def go():
                be.maxpool2d_fwd(x, out, arg, pool=pool, strides=st, padding=pad)
                be.maxpool2d_bwd(dy, arg, dx)
            return go, lambda: {"out": be.to_numpy(out), "arg": be.to_numpy(arg),
                                "dx": be.to_numpy(dx)}, None

        def run_avg(be, h, pool=pool, st=st, pad=pad, os_=os_):
            x, dy = be.asarray(h["x"]), be.asarray(h["dy"])
            out, dx = be.empty(os_), be.empty(xs)

            def go():
                be.avgpool2d_fwd(x, out, pool=pool, strides=st, padding=pad)
                be.avgpool2d_bwd(dy, dx, pool=pool, strides=st, padding=pad)
            return go, lambda: {"out": be.to_numpy(out), "dx": be.to_numpy(dx)}, None
        cases.append((f"maxpool2d fwd+bwd {pool} {pad}", mk, run_max))
        cases.append((f"avgpool2d fwd+bwd {pool} {pad}", mk, run_avg))

    def mk_g(rng):
        return {"x": _f32(rng, *xs), "dy": _f32(rng, xs[0], xs[3])}

    def run_global(be, h):
        x, dy = be.asarray(h["x"]), be.asarray(h["dy"])
        o1, o2, arg = be.empty((xs[0], xs[3])), be.empty((xs[0], xs[3])), \
            be.empty((xs[0], xs[3]), "int64")
        d1, d2 = be.empty(xs), be.empty(xs)

        def go():
            be.global_avgpool_fwd(x, o1)
            be.global_avgpool_bwd(dy, d1)
            be.global_maxpool_fwd(x, o2, arg)
            be.global_maxpool_bwd(dy, arg, d2)
        return go, lambda: {"avg": be.to_numpy(o1), "davg": be.to_numpy(d1),
                            "max": be.to_numpy(o2), "arg": be.to_numpy(arg),
                            "dmax": be.to_numpy(d2)}, None
    cases.append(("global avg/max pool fwd+bwd", mk_g, run_global))

    def run_pad(be, h):
        x = be.asarray(h["x"])
        pads = (1, 2, 0, 3)
        out = be.empty((xs[0], xs[1] + 3, xs[2] + 3, xs[3]))
        dx = be.empty(xs)

        def go():
            be.zeropad2d_fwd(x, out, padding=pads)
            be.zeropad2d_bwd(out, dx, padding=pads)
        return go, lambda: {"out": be.to_numpy(out), "dx": be.to_numpy(dx)}, None
    cases.append(("zeropad2d fwd+bwd", mk_g, run_pad))

    c = xs[3]

    def mk_bn(rng):
        return {"x": _f32(rng, *xs) * np.float32(3) + np.float32(2), "dy": _f32(rng, *xs),
                "g": _f32(rng, c), "b": _f32(rng, c), "mm": _f32(rng, c),
                "mv": np.abs(_f32(rng, c)) + np.float32(0.5)}

    def run_bn(be, h):
        a = {k: be.asarray(v) for k, v in h.items()}
        out, out2, dx = be.empty(xs), be.empty(xs), be.empty(xs)
        sm, si, dg, dbt = (be.empty((c,)) for _ in range(4))

        def go():
            be.batchnorm_fwd_train(a["x"], out, a["g"], a["b"], a["mm"], a["mv"], sm, si,
                                   momentum=0.9, epsilon=1e-3)
            be.batchnorm_bwd(a["x"], a["dy"], a["g"], sm, si, dx, dg, dbt)
            be.batchnorm_fwd_infer(a["x"], out2, a["g"], a["b"], a["mm"], a["mv"],
                                   epsilon=1e-3)

        def reset():
            be.copy_(a["mm"], be.asarray(h["mm"]))
            be.copy_(a["mv"], be.asarray(h["mv"]))
        return go, lambda: {"out": be.to_numpy(out), "mean": be.to_numpy(sm),
                            "invstd": be.to_numpy(si), "mm": be.to_numpy(a["mm"]),
                            "mv": be.to_numpy(a["mv"]), "dx": be.to_numpy(dx),
                            "dgamma": be.to_numpy(dg), "dbeta": be.to_numpy(dbt),
                            "infer": be.to_numpy(out2)}, reset
    cases.append(("batchnorm train+bwd+infer", mk_bn, run_bn))
    return cases


COVERED = {"empty", "zeros", "asarray", "stage", "to_numpy", "copy_", "fill_", "synchronize",
           "gemm", "dense_fwd", "dense_bwd", "bias_act_fwd", "act_bwd", "bias_grad", "loss",
           "metric", "sumsq", "scale_", "sgd_step", "adam_step", "rmsprop_step",
           "gather_rows", "dropout_fwd", "mul", "add", "concat_last", "split_last",
           "conv2d_fwd", "conv2d_bwd", "maxpool2d_fwd", "maxpool2d_bwd", "avgpool2d_fwd",
           "avgpool2d_bwd", "global_avgpool_fwd", "global_avgpool_bwd", "global_maxpool_fwd",
           "global_maxpool_bwd", "zeropad2d_fwd", "zeropad2d_bwd", "batchnorm_fwd_train",
           "batchnorm_fwd_infer", "batchnorm_bwd"}


def _time_calls(be: Any, fn: Callable, reset: Optional[Callable], reps: int) -> float:
    """Seconds per call of fn (after a warm-up that compiles), synchronised."""
    if reps <= 0:
        return float("nan")
    be.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    be.synchronize()
    dt = (time.perf_counter() - t0) / reps
    if reset is not None:
        reset()
    return dt


def check_ops(gpu: Any, ref: Optional[Any], sz: Sizes, reps: int) -> None:
    section("ops: cuda vs " + (ref.name if ref is not None else "nothing (no CPU backend)"))
    from fastnn.backend.base import Backend
    rows = []
    say(f"  {'op':34s} {'max abs err':>12s} {'max rel err':>12s} {'cuda us':>10s} "
        f"{'ref us':>10s}")
    for name, mk, run in make_cases(sz):
        seed = zlib.crc32(name.encode())
        entry: Dict[str, Any] = {"op": name}
        try:
            h = mk(np.random.default_rng(seed))
            fn, outs, reset = run(gpu, h)
            fn()
            got = outs()
            if reset is not None:
                reset()
            entry["cuda_us"] = _time_calls(gpu, fn, reset, reps) * 1e6
            if ref is not None:
                rfn, routs, rreset = run(ref, h)
                rfn()
                want = routs()
                if rreset is not None:
                    rreset()
                entry["ref_us"] = _time_calls(ref, rfn, rreset, reps) * 1e6
                abs_err, rel_err, exact = 0.0, 0.0, True
                for key, w in want.items():
                    g = np.asarray(got[key], np.float64)
                    w = np.asarray(w, np.float64)
                    exact &= bool(np.array_equal(g, w))
                    if not np.all(np.isfinite(g)) and np.all(np.isfinite(w)):
                        abs_err = rel_err = float("inf")
                        continue
                    d = float(np.max(np.abs(g - w))) if w.size else 0.0
                    abs_err = max(abs_err, d)
                    rel_err = max(rel_err, d / max(float(np.max(np.abs(w))) if w.size else 0.0,
                                                   1e-30))
                entry.update(max_abs=abs_err, max_rel=rel_err, bit_exact=exact)
            else:
                entry["finite"] = all(bool(np.all(np.isfinite(np.asarray(v, np.float64))))
                                      for v in got.values())
        except Exception as exc:  # report and go on: one broken op must not hide the rest
            entry["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(entry)
        if "error" in entry:
            say(f"  {name:34s} ERROR {entry['error'][:200]}")
        elif "max_abs" in entry:
            flag = "  (bit-exact)" if entry["bit_exact"] else ""
            say(f"  {name:34s} {entry['max_abs']:12.3e} {entry['max_rel']:12.3e} "
                f"{entry['cuda_us']:10.1f} {entry['ref_us']:10.1f}{flag}")
        else:
            say(f"  {name:34s} ran; finite outputs: {entry['finite']}")
    missing = sorted(n for n in vars(Backend)
                     if not n.startswith("_") and callable(getattr(Backend, n))
                     and n not in COVERED)
    if missing:
        say(f"  backend ops without a case here yet (not checked): {', '.join(missing)}")
    RESULTS["ops"] = rows
    RESULTS["ops_unchecked"] = missing


# ------------------------------------------------------------------ SGEMM

def sgemm_rate(gpu: Any, sz: Sizes, reps: int) -> None:
    n = 64 if sz.tiny else 4096
    section(f"SGEMM {n}x{n}x{n}")
    rng = np.random.default_rng(0)
    a, b = gpu.asarray(_f32(rng, n, n)), gpu.asarray(_f32(rng, n, n))
    c = gpu.empty((n, n))
    reps = max(1, reps if not sz.tiny else 1)
    default_min = gpu.large_gemm_min_blocks
    RESULTS["sgemm"] = {"n": n}
    # The default tiling choice first (the headline figure), then each tiling forced.
    for label, min_blocks in (("fastnn cuda", default_min), ("  64x64 tiles", 10 ** 9),
                              ("  128x128 tiles", 1)):
        gpu.large_gemm_min_blocks = min_blocks
        try:
            gpu.gemm(a, b, c)   # compile + warm up
            dt = _time_calls(gpu, lambda: gpu.gemm(a, b, c), None, reps)
        finally:
            gpu.large_gemm_min_blocks = default_min
        gflops = 2.0 * n ** 3 / dt / 1e9
        say(f"  {label:16s}: {dt * 1e3:9.2f} ms  {gflops:9.1f} GFLOP/s"
            + ("   (simulator: not a GPU figure)" if gpu.simulated else ""))
        RESULTS["sgemm"][label.strip()] = {"ms": dt * 1e3, "gflops": gflops}
        if sz.tiny:
            break   # one launch is enough to show it runs
    got = gpu.to_numpy(c)[:4, :4].astype(np.float64)
    want = gpu.to_numpy(a)[:4].astype(np.float64) @ gpu.to_numpy(b)[:, :4]
    say(f"  spot check of a 4x4 corner: max abs err {np.max(np.abs(got - want)):.2e}")
    dt = RESULTS["sgemm"]["fastnn cuda"]["ms"] / 1e3
    torch = _torch_cuda()
    if torch is None:
        say("  torch.matmul: skipped (PyTorch with CUDA not importable)")
        return
    ta = torch.randn(n, n, device="cuda")
    tb = torch.randn(n, n, device="cuda")
    torch.backends.cuda.matmul.allow_tf32 = False   # compare FP32 with FP32
    torch.matmul(ta, tb)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        torch.matmul(ta, tb)
    torch.cuda.synchronize()
    tdt = (time.perf_counter() - t0) / reps
    say(f"  torch.matmul    : {tdt * 1e3:9.2f} ms  {2.0 * n ** 3 / tdt / 1e9:9.1f} GFLOP/s "
        f"(fastnn/torch time ratio {dt / tdt:.2f})")
    RESULTS["sgemm"]["torch_ms"] = tdt * 1e3


def _torch_cuda():
    try:
        import torch
    except Exception:
        return None
    try:
        return torch if torch.cuda.is_available() else None
    except Exception:
        return None


# ------------------------------------------------------------------ models

def _synthetic_mnist(n: int, rng: np.random.Generator, side: int, image: bool):
    """MNIST-shaped random data: the epoch time does not depend on the values."""
    x = rng.random((n, side, side, 1) if image else (n, side * side), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return x, y


def _fit_epoch_times(build: Callable[[str], Any], device: str, x, y, batch: int,
                     epochs: int) -> List[float]:
    model = build(device)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)
        model.backend.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def model_epochs(sz: Sizes, cpu_ok: bool, deadline: float) -> None:
    try:
        import fastnn
        from fastnn import layers
        have_seq = hasattr(fastnn, "Sequential") and hasattr(layers, "Dense")
    except Exception as exc:
        have_seq, why = False, f"fastnn does not import: {type(exc).__name__}: {exc}"
    else:
        why = "fastnn.Sequential / fastnn.layers.Dense do not exist yet"
    # Tiny: 4 steps of a 16-8-10 MLP and one LeNet step on two 12x12 images
    # (the simulator runs a 784-deep GEMM at about 10 s per launch).
    side = 4 if sz.tiny else 28
    n = 64 if sz.tiny else 60_000
    batch = 16 if sz.tiny else 128
    hidden = 8 if sz.tiny else 128
    epochs = 1 if sz.tiny else 2
    rng = np.random.default_rng(1)

    section(f"MLP {side * side}-{hidden}-10, Adam, batch {batch}, {n} synthetic samples")
    if not have_seq:
        skipped("mlp", why)
    else:
        x, y = _synthetic_mnist(n, rng, side, image=False)

        def build(device):
            return fastnn.Sequential([
                layers.Dense(hidden, activation="relu", input_shape=(side * side,)),
                layers.Dense(10, activation="softmax")], device=device)
        _model_row("mlp", build, x, y, batch, epochs, cpu_ok, sz)
        _torch_mlp(x, y, batch, epochs, hidden)

    # Tiny: one step on two 12x12 images, every width cut (the simulator's time
    # grows with the parameter count: each optimiser step touches them all).
    side = 12 if sz.tiny else 28
    n_img = 2 if sz.tiny else n
    f1, f2, d1, d2 = (2, 4, 12, 8) if sz.tiny else (6, 16, 120, 84)
    section(f"LeNet-5 on {side}x{side}x1 (conv {f1}@5x5 same, pool, conv {f2}@5x5, pool, "
            f"{d1}, {d2}, 10), Adam, batch {batch if not sz.tiny else n_img}, "
            f"{n_img} samples")
    if not have_seq or not all(hasattr(layers, k) for k in ("Conv2D", "MaxPooling2D", "Flatten")):
        skipped("lenet", why if not have_seq else
                "fastnn.layers.Conv2D / MaxPooling2D do not exist yet")
        return
    if time.perf_counter() > deadline:
        skipped("lenet", "time budget spent (the script keeps to 5 minutes)")
        return
    x, y = _synthetic_mnist(n_img, rng, side, image=True)

    def build_lenet(device):
        return fastnn.Sequential([
            layers.Conv2D(f1, 5, activation="relu", padding="same",
                          input_shape=(side, side, 1)),
            layers.MaxPooling2D(2),
            layers.Conv2D(f2, 5, activation="relu"),
            layers.MaxPooling2D(2),
            layers.Flatten(),
            layers.Dense(d1, activation="relu"),
            layers.Dense(d2, activation="relu"),
            layers.Dense(10, activation="softmax")], device=device)
    # One CPU epoch: a LeNet epoch on the CPU is the slowest item here.
    _model_row("lenet", build_lenet, x, y, n_img if sz.tiny else batch, epochs, cpu_ok, sz,
               cpu_epochs=1)


def _model_row(key: str, build: Callable, x, y, batch: int, epochs: int, cpu_ok: bool,
               sz: Sizes, cpu_epochs: Optional[int] = None) -> None:
    row: Dict[str, Any] = {}
    for device in ("cuda", "cpu"):
        if device == "cpu" and not cpu_ok:
            say("  cpu : skipped (CPU backend unavailable)")
            continue
        n_epochs = epochs if device == "cuda" or cpu_epochs is None else cpu_epochs
        try:
            times = _fit_epoch_times(build, device, x, y, batch, n_epochs)
        except Exception as exc:
            row[device] = {"error": f"{type(exc).__name__}: {exc}"}
            say(f"  {device:4s}: ERROR {type(exc).__name__}: {str(exc)[:300]}")
            if os.environ.get("FASTNN_GPU_CHECK_TRACEBACK"):
                traceback.print_exc()
            continue
        row[device] = {"epoch_s": times}
        say(f"  {device:4s}: epoch times " + ", ".join(f"{t:.2f}s" for t in times)
            + ("  (first includes kernel compilation)" if device == "cuda" and len(times) > 1
               else ""))
    RESULTS[key] = row


def _torch_mlp(x, y, batch: int, epochs: int, hidden: int) -> None:
    torch = _torch_cuda()
    if torch is None:
        say("  torch: skipped (PyTorch with CUDA not importable)")
        return
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(),
                          nn.Linear(hidden, 10)).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
    lossf = nn.CrossEntropyLoss()
    xd = torch.from_numpy(x).cuda()
    yd = torch.from_numpy(y).cuda()
    times = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(len(xd), device="cuda")
        for s in range(0, len(xd), batch):
            idx = perm[s:s + batch]
            opt.zero_grad(set_to_none=True)
            loss = lossf(model(xd[idx]), yd[idx])
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    say("  torch: epoch times " + ", ".join(f"{t:.2f}s" for t in times))
    RESULTS.setdefault("mlp", {})["torch"] = {"epoch_s": times}


# ------------------------------------------------------------------ main

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true",
                    help="toy sizes, for the simulator (NUMBA_ENABLE_CUDASIM=1)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--reps", type=int, default=None,
                    help="timed repetitions per op (default 20; 0 with --tiny)")
    ap.add_argument("--ref-device", default="cpu",
                    help="backend the GPU results are compared against (default cpu)")
    args = ap.parse_args(argv)
    reps = args.reps if args.reps is not None else (0 if args.tiny else 20)
    t_start = time.perf_counter()

    if args.tiny and "NUMBA_ENABLE_CUDASIM" not in os.environ:
        # Decide before numba is imported: the simulator only when no GPU shows.
        if not Path("/dev/nvidia0").exists() and not Path("/dev/nvidiactl").exists():
            os.environ["NUMBA_ENABLE_CUDASIM"] = "1"

    section("environment")
    try:
        from fastnn.backend import get_backend
        gpu = get_backend("cuda")
    except Exception as exc:
        say(f"  the CUDA backend is unavailable: {type(exc).__name__}: {exc}")
        RESULTS["error"] = str(exc)
        _write(args.json)
        return 1
    import numba
    import numba.cuda
    sim = bool(numba.config.ENABLE_CUDASIM)
    say(f"  device: {gpu.device_name}   simulator: {sim}   numba {numba.__version__}")
    RESULTS["env"] = {"device": gpu.device_name, "simulator": sim, "tiny": args.tiny,
                      "numba": numba.__version__}
    try:
        ref = get_backend(args.ref_device)
        cpu_ok = True
    except Exception as exc:
        say(f"  reference backend {args.ref_device!r} unavailable: {type(exc).__name__}: {exc}")
        ref, cpu_ok = None, False
    try:
        import fastnn
        say(f"  fastnn threads: {fastnn.get_num_threads()}")
    except Exception:
        pass
    torch = _torch_cuda()
    say(f"  PyTorch CUDA: {'yes, torch ' + torch.__version__ if torch else 'not available'}")

    sz = Sizes(args.tiny)
    check_ops(gpu, ref, sz, reps)
    sgemm_rate(gpu, sz, 10 if not args.tiny else 1)
    model_epochs(sz, cpu_ok and args.ref_device == "cpu", t_start + 200.0)

    section("kernel specialisations")
    from fastnn.backend.cuda_kernels import unexpected_specialisations
    extra = unexpected_specialisations()
    if sim:
        say("  not checked: the simulator compiles nothing")
    elif extra:
        say("  kernels compiled for types outside their registered signatures:")
        for e in extra:
            say(f"    {e}")
    else:
        say("  every launch used a registered (PTX-tested) signature")
    RESULTS["unexpected_specialisations"] = extra
    total = time.perf_counter() - t_start
    say()
    say(f"total time {total:.1f}s")
    RESULTS["total_s"] = total
    _write(args.json)
    return 0


def _write(path: Optional[str]) -> None:
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=2, default=float))


if __name__ == "__main__":
    sys.exit(main())
