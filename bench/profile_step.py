"""Where a training step's time goes: kernels, framework Python, or neither.

    python bench/profile_step.py [--model seed|wide|tiny|all] [--threads N] [--steps K]
                                  [--zeros F | --data MNIST_DIR]

For each model it reports, per training step:

  1. ``fit``: the step as model.fit runs it (median over whole fit calls);
  2. ``floor``: the same step as a bare sequence of backend op calls with
     preallocated buffers (gather, dense forward, fused loss, activation and
     dense backward, one Adam step), each op also timed on its own;
  3. what ``fit - floor`` is made of: ``framework``, fit again with every
     kernel call replaced by a no-op (the model, layers and optimizer's own
     Python); ``input checks``, fit's one-off validation of x and y per call,
     spread over its steps; and the rest, kernels running slower inside fit
     than in the bare sequence (what else the step touches evicts their data;
     a few us either way are noise, and the no-op stubs' own calls);
  4. the top functions of a cProfile run over fit (tottime, per step), with the
     time inside compiled fastnn calls set against the rest.

cProfile inflates Python time, so (1)-(3) come from unprofiled runs.
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
from typing import Any, Callable, Dict, List, Optional, Tuple

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


def data(name: str, steps: int, zeros: float, mnist: Optional[str]
         ) -> Tuple[np.ndarray, np.ndarray]:
    """MNIST's first training images when `mnist` names their directory and
    the model takes 28x28 images; else uniform [0, 1) inputs with the
    fraction `zeros` of them set to 0."""
    shape, _, bs = MODELS[name]
    rng = np.random.default_rng(0)
    n = steps * bs
    if mnist and shape == (28, 28):
        from fastnn.datasets import mnist as mnist_files
        (x_train, y_train), _ = mnist_files.load_data(mnist)
        return (x_train[:n].astype(np.float32) / np.float32(255.0),
                y_train[:n].astype(np.int32))
    x = rng.random((n,) + shape, dtype=np.float32)
    x[x < zeros] = 0.0
    return x, rng.integers(0, 10, n).astype(np.int32)


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
    # The backend's allocator, as fit uses it (its arrays start on a cache line).
    p = be.asarray(rng.standard_normal(n_params, dtype=np.float32) * 0.05)
    g = be.zeros((n_params,))
    m = be.zeros((n_params,))
    v = be.zeros((n_params,))
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
    xb = be.empty((bs, widths[0]))
    yb = be.empty((bs,), "int32")
    acts = [be.empty((bs, w)) for w in widths[1:]]
    dacts = [be.empty((bs, w)) for w in widths[1:]]
    probs = be.empty((bs, 10))
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


# The backend methods a training step of these models calls into C.
KERNEL_METHODS = ("gather_rows", "dense_fwd", "dense_bwd", "act_bias_bwd", "adam_step",
                  "bias_act_fwd", "fill_")


def framework_per_step(model: Any, x: np.ndarray, y: np.ndarray, bs: int,
                       repeat: int) -> float:
    """fit's time per step with every kernel call a no-op: what the model,
    layers and optimizer cost in Python (their one-off input checks included)."""
    be = model.backend
    own = {name: be.__dict__[name] for name in KERNEL_METHODS if name in be.__dict__}
    losses = dict(be._losses)
    try:
        for name in KERNEL_METHODS:
            setattr(be, name, lambda *args, **kw: None)
        for kind in losses:
            be._losses[kind] = lambda *args: 0.0
        return fit_per_step(model, x, y, bs, repeat)
    finally:
        for name in KERNEL_METHODS:
            if name in own:
                setattr(be, name, own[name])
            else:
                delattr(be, name)
        be._losses.update(losses)


def input_checks_per_step(model: Any, x: np.ndarray, y: np.ndarray, bs: int,
                          repeat: int) -> float:
    """fit's validation of x and y (finiteness scan, label range) per step."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        xs = model._prepare_x(x)
        model._prepare_y(y, len(xs))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / (len(x) // bs)


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
    ap.add_argument("--zeros", type=float, default=0.0,
                    help="fraction of input values set to 0 (MNIST's pixels: 0.81); "
                         "the GEMM skips them when at most a quarter are nonzero")
    ap.add_argument("--data", default=None,
                    help="MNIST directory: the seed and wide models train on its images")
    args = ap.parse_args()
    fastnn.set_num_threads(args.threads)
    names = list(MODELS) if args.model == "all" else [args.model]
    inputs = (f"MNIST from {args.data}" if args.data
              else f"random inputs, {args.zeros:.0%} of them zero")
    print(f"fastnn {fastnn.__version__}, {args.threads} thread(s), {inputs}")
    for name in names:
        steps = args.steps or {"seed": 200, "wide": 30, "tiny": 2000}[name]
        bs = MODELS[name][2]
        x, y = data(name, steps, args.zeros, args.data)
        model = build(name)
        fit_s = fit_per_step(model, x, y, bs, repeat=3)
        floor_s, per_op = floor_per_step(name, x, y, steps)
        checks_s = input_checks_per_step(model, x, y, bs, repeat=3)
        python_s = framework_per_step(model, x, y, bs, repeat=3) - checks_s
        rest_s = fit_s - floor_s - python_s - checks_s
        print(f"\n{name}: batch {bs}, {steps} steps")
        print(f"  fit          {fit_s * 1e6:9.1f} us/step")
        print(f"  floor        {floor_s * 1e6:9.1f} us/step (the same ops as bare backend "
              f"calls, in the same order)")
        print(f"  fit - floor  {(fit_s - floor_s) * 1e6:9.1f} us/step "
              f"({(fit_s - floor_s) / fit_s:.0%} of fit), of which:")
        print(f"    framework  {python_s * 1e6:9.1f} us/step (fit with no-op kernels: model, "
              f"layer and optimizer Python)")
        print(f"    input checks{checks_s * 1e6:8.1f} us/step (fit's one-off scan of x and y, "
              f"spread over {steps} steps)")
        print(f"    rest       {rest_s * 1e6:9.1f} us/step (kernels slower inside fit than "
              f"in the bare sequence)")
        print("  floor by op (each op timed on its own):")
        for op, t in sorted(per_op.items(), key=lambda kv: -kv[1]):
            print(f"    {op:<14}{t * 1e6:9.1f} us")
        print(profile_fit(model, x, y, bs, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
