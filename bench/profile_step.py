"""Where a training step's time goes: kernels, framework Python, or neither.

    python bench/profile_step.py [--model seed|wide|tiny|all] [--threads N] [--steps K]

For each model it reports, per training step:

  1. ``fit``: the step as model.fit runs it (median over whole fit calls);
  2. ``floor``: the same step as a bare sequence of backend op calls with
     preallocated buffers (gather, dense forward, fused loss, activation and
     dense backward, one Adam step), each op timed on its own, so the sum is
     what the current kernels cost and ``fit - floor`` is the framework's
     per-step Python overhead;
  3. the top functions of a cProfile run over fit (tottime, per step), with the
     time inside compiled fastnn calls set against the rest.

cProfile inflates Python time, so (1) and (2) come from unprofiled runs.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

os.environ.pop("OPENBLAS_CORETYPE", None)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fastnn  # noqa: E402
from fastnn.backend import get_backend  # noqa: E402
from fastnn.layers import Dense, Flatten  # noqa: E402

MODELS: Dict[str, Tuple[Tuple[int, ...], List[int], int]] = {
    # input sample shape, hidden widths, batch size
    "seed": ((28, 28), [128], 128),
    "wide": ((28, 28), [1024, 1024], 128),
    "tiny": ((10,), [], 1),
}


def build(name: str) -> Any:
    """The model as a user writes it: Adam, sparse CCE, softmax output."""
    shape, hidden, _ = MODELS[name]
    fastnn.utils.set_random_seed(0)
    if len(shape) == 1:
        layers: List[Any] = [Dense(10, input_dim=shape[0], activation="softmax")]
    else:
        layers = [Flatten(input_shape=shape)]
        layers += [Dense(h, activation="relu") for h in hidden]
        layers.append(Dense(10, activation="softmax"))
    model = fastnn.Sequential(layers)
    model.compile(optimizer=fastnn.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    return model


def data(name: str, steps: int) -> Tuple[np.ndarray, np.ndarray]:
    shape, _, bs = MODELS[name]
    rng = np.random.default_rng(0)
    n = steps * bs
    return (rng.random((n,) + shape, dtype=np.float32),
            rng.integers(0, 10, n).astype(np.int32))


def fit_per_step(model: Any, x: np.ndarray, y: np.ndarray, bs: int, repeat: int) -> float:
    steps = len(x) // bs
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=bs, epochs=1, verbose=0)
        times.append((time.perf_counter() - t0) / steps)
    return statistics.median(times)


def floor_per_step(name: str, x: np.ndarray, y: np.ndarray, steps: int
                   ) -> Tuple[float, Dict[str, float]]:
    """The bare op sequence of one step, each op timed; returns (sum, per op)."""
    be = get_backend("cpu")
    shape, hidden, bs = MODELS[name]
    widths = [int(np.prod(shape))] + hidden + [10]
    rng = np.random.default_rng(1)
    n_params = sum(widths[i] * widths[i + 1] + widths[i + 1] for i in range(len(widths) - 1))
    p = (rng.standard_normal(n_params, dtype=np.float32) * 0.05)
    g = np.zeros(n_params, np.float32)
    m = np.zeros(n_params, np.float32)
    v = np.zeros(n_params, np.float32)
    ws, bs_, dws, dbs = [], [], [], []
    off = 0
    for i in range(len(widths) - 1):
        k, n = widths[i], widths[i + 1]
        ws.append(p[off:off + k * n].reshape(k, n))
        dws.append(g[off:off + k * n].reshape(k, n))
        off += k * n
        bs_.append(p[off:off + n])
        dbs.append(g[off:off + n])
        off += n
    xf = x.reshape(len(x), -1)
    xb = np.empty((bs, widths[0]), np.float32)
    yb = np.empty(bs, np.int32)
    acts = [np.empty((bs, w), np.float32) for w in widths[1:]]
    dacts = [np.empty((bs, w), np.float32) for w in widths[1:]]
    probs = np.empty((bs, 10), np.float32)
    acc = np.zeros(1, np.float64)
    spent: Dict[str, float] = {}

    per_op_timers = [True]

    def timed(label: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> None:
        if not per_op_timers[0]:
            fn(*args, **kw)
            return
        t0 = time.perf_counter()
        fn(*args, **kw)
        spent[label] = spent.get(label, 0.0) + time.perf_counter() - t0

    order = np.random.default_rng(2).permutation(len(x))
    layers = len(widths) - 1
    total = 0.0
    # Pass 1 warms up, pass 2 times each op, pass 3 times the bare step whole
    # (without the per-op timers' own cost).
    for rep in range(3):
        if rep < 2:
            spent.clear()
        per_op_timers[0] = rep < 2
        t_start = time.perf_counter()
        for s in range(steps):
            idx = order[s * bs:(s + 1) * bs]
            timed("gather", be.gather_rows, xf, idx, xb)
            timed("gather", be.gather_rows, y, idx, yb)
            h = xb
            for i in range(layers):
                act = "relu" if i < layers - 1 else "linear"
                timed(f"dense_fwd {i}", be.dense_fwd, h, ws[i], bs_[i], act, acts[i])
                h = acts[i]
            timed("loss", be.loss, "softmax_sparse_cce_logits", acts[-1], yb, dacts[-1],
                  acc, probs)
            for i in range(layers - 1, -1, -1):
                # as Dense.backward: activation backward and bias gradient in one pass
                act = "relu" if i < layers - 1 else "linear"
                timed(f"act_bias_bwd {i}", be.act_bias_bwd, act, acts[i], dacts[i], dacts[i],
                      dbs[i])
                below = acts[i - 1] if i > 0 else xb
                dx = dacts[i - 1] if i > 0 else None
                timed(f"dense_bwd {i}", be.dense_bwd, below, ws[i], dacts[i], dws[i], None, dx)
            timed("adam_step", be.adam_step, p, g, m, v, lr=1e-3, beta_1=0.9, beta_2=0.999,
                  epsilon=1e-7, step=s + 1, weight_decay=0.0, grad_scale=1.0, clip_value=0.0)
        total = time.perf_counter() - t_start
    per_op = {k: t / steps for k, t in spent.items()}
    return total / steps, per_op


def profile_fit(model: Any, x: np.ndarray, y: np.ndarray, bs: int, top: int) -> str:
    steps = len(x) // bs
    prof = cProfile.Profile()
    prof.enable()
    model.fit(x, y, batch_size=bs, epochs=1, verbose=0)
    prof.disable()
    stats = pstats.Stats(prof)
    total = 0.0
    rows = []
    for (file, line, func), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tt
        where = func if file == "~" else f"{Path(file).name}:{line}({func})"
        rows.append((tt, nc, where))
    rows.sort(reverse=True)
    out = io.StringIO()
    # Cython functions are invisible to cProfile: a kernel's time shows up as
    # the own time of the Python function that called it (backend/cpu.py).
    out.write(f"  cProfile over fit ({steps} steps, profiler overhead included): "
              f"{total / steps * 1e6:.1f} us/step; own time per function, compiled kernels "
              f"counted in their Python caller:\n")
    out.write(f"  {'us/step':>9}  {'calls/step':>10}  function\n")
    for tt, nc, where in rows[:top]:
        out.write(f"  {tt / steps * 1e6:9.1f}  {nc / steps:10.1f}  {where}\n")
    return out.getvalue()


def main() -> int:
    ap = argparse.ArgumentParser(description="per-step time breakdown of fastnn training")
    ap.add_argument("--model", default="all", choices=list(MODELS) + ["all"])
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--steps", type=int, default=0, help="steps per fit (default per model)")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    fastnn.set_num_threads(args.threads)
    names = list(MODELS) if args.model == "all" else [args.model]
    print(f"fastnn {fastnn.__version__}, {args.threads} thread(s)")
    for name in names:
        steps = args.steps or {"seed": 200, "wide": 30, "tiny": 2000}[name]
        bs = MODELS[name][2]
        x, y = data(name, steps)
        model = build(name)
        fit_s = fit_per_step(model, x, y, bs, repeat=3)
        floor_s, per_op = floor_per_step(name, x, y, steps)
        print(f"\n{name}: batch {bs}, {steps} steps")
        print(f"  fit     {fit_s * 1e6:9.1f} us/step")
        print(f"  floor   {floor_s * 1e6:9.1f} us/step (the same ops as bare backend calls)")
        print(f"  overhead{(fit_s - floor_s) * 1e6:9.1f} us/step of model/layer/optimizer "
              f"Python ({(fit_s - floor_s) / fit_s:.0%} of fit)")
        print("  floor by op (each op timed on its own):")
        for op, t in sorted(per_op.items(), key=lambda kv: -kv[1]):
            print(f"    {op:<14}{t * 1e6:9.1f} us")
        print(profile_fit(model, x, y, bs, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
