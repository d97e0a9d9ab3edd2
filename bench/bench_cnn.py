"""LeNet-5 and a small ResNet on MNIST: fastnn against the same nets in PyTorch.

    python bench/bench_cnn.py [--quick] [--threads 1,2] [--epochs-lenet 5]
                              [--epochs-resnet 3] [--accuracy] [--profile]
                              [--nets lenet,resnet] [--wait-quiet S] [--data DIR]

For each thread count, in this one process, it times

  * a LeNet-5 training epoch (Adam, batch 128, shuffled, 60000 images);
  * a small-ResNet training epoch (same settings), as 60 steps scaled to the
    469 steps of a full epoch, because a full epoch takes 20-40 s per framework
    and thread count here (--resnet-steps 0 times full epochs);
  * inference of each net on the 10000 test images (batch 1000);

for fastnn (NHWC, fastnn.examples.cnn's models) and PyTorch (NCHW, its fast CPU
layout; the same layers, 'same' padding placed as TensorFlow/Keras place it,
Glorot-uniform kernels and zero biases as Keras initialises them, BatchNorm
momentum 0.1 = Keras 0.9 and eps 1e-3, Adam lr 1e-3 eps 1e-7). The contenders'
timed repetitions alternate (A B A B ...) so a burst of outside load lands on
both. It prints the medians and fastnn's speed-up (torch time / fastnn time:
above 1 means fastnn is faster) and writes bench/results/cnn.json.

With --accuracy it also trains each net in both frameworks for its epoch count
(at the largest thread count) and reports test accuracy and seconds per epoch;
there the ResNet uses the example's schedule in both (Adam, learning rate 2e-3
decayed to 0 along a cosine over the run, stepped per batch).
With --profile it breaks a training step down by op in both frameworks.

One process means one OpenMP runtime: PyTorch's bundled libgomp and fastnn's
share the soname, so whichever loads first serves both, with the wait policy
in the environment at that moment. fastnn is imported first, so both run with
fastnn's default wait (GOMP_SPINCOUNT=10000 since 2026-11-30, OMP_WAIT_POLICY=
PASSIVE before; unless the caller set a policy). Timed in separate processes with
each one's own defaults, PyTorch's LeNet epoch was the same within the noise of
this shared machine (4.4-5.0 s against 4.7-4.8 s when passive, 2 threads). The
figures in bench/README.md were taken under PASSIVE.
"""
from __future__ import annotations

import os
import sys

# A forced OpenBLAS core type would pin NumPy to a slower kernel family; it has
# to go before anything loads NumPy (as in bench/run.py).
os.environ.pop("OPENBLAS_CORETYPE", None)

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Tuple  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's fastnn, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import fastnn  # noqa: E402
from fastnn.examples.cnn import lenet5, resnet_optimizer, small_resnet  # noqa: E402
from torch_worker import torch_train_epoch  # noqa: E402

try:
    import torch
except ImportError:  # the fastnn column still prints
    torch = None

BATCH = 128
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "mnist"


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def load_mnist(path: Optional[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """MNIST as NHWC float32 in [0, 1] with int32 labels, or random stand-ins
    of the same shape when the IDX files are not found (accuracy is then
    meaningless, and --accuracy refuses to run)."""
    from fastnn.datasets import mnist
    where = path or (str(DEFAULT_DATA) if DEFAULT_DATA.is_dir() else None)
    try:
        (xtr, ytr), (xte, yte) = mnist.load_data(where)
        source = f"MNIST from {where or mnist.find_data_dir()}"
    except Exception as exc:  # noqa: BLE001 - any failure falls back to random data
        rng = np.random.default_rng(0)
        xtr = rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8)
        ytr = rng.integers(0, 10, 60000, dtype=np.uint8)
        xte = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
        yte = rng.integers(0, 10, 10000, dtype=np.uint8)
        source = f"random data of MNIST's shape ({type(exc).__name__}: {exc})"
    def prep(a: np.ndarray) -> np.ndarray:
        return (a.astype(np.float32) / np.float32(255.0))[..., None]
    return prep(xtr), ytr.astype(np.int32), prep(xte), yte.astype(np.int32), source


# ---------------------------------------------------------------------------
# the nets
# ---------------------------------------------------------------------------

def fastnn_net(kind: str, seed: int = 0, total_steps: Optional[int] = None) -> Any:
    """fastnn.examples.cnn's LeNet-5 or small ResNet with Adam; given the run's
    length, the ResNet gets the example's cosine schedule (resnet_optimizer)."""
    fastnn.utils.set_random_seed(seed)
    model = lenet5() if kind == "lenet" else small_resnet()
    if kind == "resnet" and total_steps:
        opt = resnet_optimizer(total_steps)
    else:
        opt = fastnn.optimizers.Adam(learning_rate=1e-3, epsilon=1e-7)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def torch_cosine(opt: Any, peak: float, total_steps: int) -> Any:
    """PyTorch's twin of fastnn's CosineDecay(peak, total_steps), stepped per batch:
    update k (from 0) uses peak * (1 + cos(pi * min(k, T) / T)) / 2."""
    for group in opt.param_groups:
        group["lr"] = peak
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1.0 + math.cos(math.pi * min(k, total_steps) / total_steps)))


def _tf_same(k: int, stride: int, size: int) -> Tuple[int, int]:
    """TensorFlow's 'same' padding (before, after) of one axis: the odd pixel
    goes after, so a stride-2 3x3 conv on 28 pixels pads (0, 1), not (1, 1)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def torch_net(kind: str, seed: int = 0) -> Tuple[Any, Any]:
    """The same net in PyTorch (NCHW; logits out, the loss applies the softmax)
    and its Adam optimiser with Keras's settings."""
    nn = torch.nn
    torch.manual_seed(seed)

    def conv(cin: int, cout: int, k: int, stride: int, size: int, pad: str,
             bias: bool = True) -> List[Any]:
        mods: List[Any] = []
        if pad == "same":
            before, after = _tf_same(k, stride, size)
            if before == after:
                return [nn.Conv2d(cin, cout, k, stride, padding=before, bias=bias)]
            mods.append(nn.ZeroPad2d((before, after, before, after)))
        mods.append(nn.Conv2d(cin, cout, k, stride, bias=bias))
        return mods

    def bn(c: int) -> Any:
        # Keras's momentum 0.9 (moving = 0.9 moving + 0.1 batch) is PyTorch's 0.1.
        return nn.BatchNorm2d(c, eps=1e-3, momentum=0.1)

    if kind == "lenet":
        model = nn.Sequential(
            *conv(1, 6, 5, 1, 28, "same"), nn.ReLU(), nn.MaxPool2d(2),
            *conv(6, 16, 5, 1, 14, "valid"), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.ReLU(),
            nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10))
    else:
        filters = 32

        class Block(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(
                    *conv(filters, filters, 3, 1, 14, "same", bias=False), bn(filters),
                    nn.ReLU(), *conv(filters, filters, 3, 1, 14, "same", bias=False),
                    bn(filters))

            def forward(self, x: Any) -> Any:
                return torch.relu(x + self.body(x))

        model = nn.Sequential(
            *conv(1, filters, 3, 2, 28, "same", bias=False), bn(filters), nn.ReLU(),
            Block(), Block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(filters, 10))
    # Keras's initialisers: Glorot-uniform kernels, zero biases.
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
    return model, opt


def to_nchw(x: np.ndarray) -> Any:
    """NHWC images as a PyTorch NCHW tensor with standard strides.

    np.ascontiguousarray(x.transpose(0, 3, 1, 2)) would keep a one-channel
    array's odd strides (the size-1 axis is ignored by both contiguity checks),
    and PyTorch then picks a channels-last convolution path that runs LeNet
    10-25x slower here; a fresh copy has the plain NCHW strides."""
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def torch_predict(model: Any, x: Any, bs: int) -> Any:
    """Class probabilities for x, as fastnn's predict returns them."""
    model.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], bs):
            outs.append(torch.softmax(model(x[start:start + bs]), dim=1))
    return torch.cat(outs)


def torch_accuracy(model: Any, x: Any, y: Any) -> float:
    return float((torch_predict(model, x, 1000).argmax(1) == y).float().mean())


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

def time_interleaved(runs: Dict[str, Callable[[], Any]], repeat: int,
                     warmup: int = 1) -> Dict[str, List[float]]:
    """Seconds per call of each run, the contenders alternating (A B A B ...)
    after their warm-up calls, so outside load falls on all of them."""
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    samples: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    return samples


class Result:
    """One workload at one thread count."""

    def __init__(self, workload: str, threads: int, how: str, scale: float = 1.0):
        self.workload, self.threads, self.how, self.scale = workload, threads, how, scale
        self.samples: Dict[str, List[float]] = {}
        self.other_load: Optional[float] = None

    def median(self, name: str) -> Optional[float]:
        s = self.samples.get(name)
        return statistics.median(s) * self.scale if s else None

    def speedup(self) -> Optional[float]:
        a, b = self.median("fastnn"), self.median("torch")
        return b / a if a and b else None

    def as_dict(self) -> Dict[str, Any]:
        return {"workload": self.workload, "threads": self.threads, "measured_as": self.how,
                "seconds": {k: self.median(k) for k in self.samples},
                "raw_samples_s": self.samples, "scale": self.scale,
                "speedup_fastnn_over_torch": self.speedup(),
                "other_load_fraction": self.other_load}


def epoch_workload(kind: str, data: Tuple[np.ndarray, ...], t: int, steps: int,
                   repeat: int) -> Result:
    """Training time per full 60000-image epoch; ``steps`` > 0 times that many
    batches (an epoch over the first steps * 128 images) and scales up."""
    x, y = data[0], data[1]
    full_steps = math.ceil(len(x) / BATCH)
    if steps <= 0 or steps >= full_steps:
        n, how, scale = len(x), "full epoch", 1.0
    else:
        n, how, scale = steps * BATCH, f"{steps} steps x {full_steps / steps:.2f}", \
            full_steps / steps
    res = Result(f"{'LeNet-5' if kind == 'lenet' else 'small ResNet'} train epoch", t, how,
                 scale)
    model = fastnn_net(kind)
    xs, ys = x[:n], y[:n]  # views: step runs shuffle the first n images each time
    runs: Dict[str, Callable[[], Any]] = {
        "fastnn": lambda: model.fit(xs, ys, batch_size=BATCH, epochs=1, verbose=0)}
    if torch is not None:
        tm, opt = torch_net(kind)
        xt = to_nchw(xs)
        yt = torch.from_numpy(ys.astype(np.int64))
        runs["torch"] = lambda: torch_train_epoch(torch, tm, opt, xt, yt, BATCH)
    with common.OtherLoad() as load:
        res.samples = time_interleaved(runs, repeat)
    res.other_load = load.fraction
    return res


def inference_workload(kind: str, data: Tuple[np.ndarray, ...], t: int, repeat: int) -> Result:
    """predict on the 10000 test images, batch 1000 (softmax probabilities out)."""
    x = data[2]
    res = Result(f"{'LeNet-5' if kind == 'lenet' else 'small ResNet'} predict 10k", t,
                 "batch 1000")
    model = fastnn_net(kind)
    runs: Dict[str, Callable[[], Any]] = {
        "fastnn": lambda: model.predict(x, batch_size=1000, verbose=0)}
    if torch is not None:
        tm, _ = torch_net(kind)
        xt = to_nchw(x)
        runs["torch"] = lambda: torch_predict(tm, xt, 1000)
    with common.OtherLoad() as load:
        res.samples = time_interleaved(runs, repeat)
    res.other_load = load.fraction
    return res


# ---------------------------------------------------------------------------
# accuracy
# ---------------------------------------------------------------------------

def accuracy_runs(data: Tuple[np.ndarray, ...], epochs: Dict[str, int],
                  t: int) -> List[Dict[str, Any]]:
    """Trains each net in both frameworks for its epoch count; test accuracy and
    seconds per training epoch (evaluation excluded)."""
    x, y, xte, yte = data[:4]
    out = []
    for kind in ("lenet", "resnet"):
        n_ep = epochs[kind]
        if n_ep <= 0:
            continue
        row: Dict[str, Any] = {"net": kind, "epochs": n_ep, "threads": t}
        total_steps = n_ep * -(-len(x) // BATCH)
        model = fastnn_net(kind, total_steps=total_steps)
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=n_ep, verbose=0)
        row["fastnn_s_per_epoch"] = (time.perf_counter() - t0) / n_ep
        _, acc = model.evaluate(xte, yte, batch_size=1000, verbose=0)
        row["fastnn_test_accuracy"] = float(acc)
        print(f"  {kind}: fastnn {acc:.4f} ({row['fastnn_s_per_epoch']:.1f} s/epoch)",
              flush=True)
        if torch is not None:
            tm, opt = torch_net(kind)
            sched = torch_cosine(opt, 2e-3, total_steps) if kind == "resnet" else None
            xt = to_nchw(x)
            yt = torch.from_numpy(y.astype(np.int64))
            t0 = time.perf_counter()
            for _ in range(n_ep):
                torch_train_epoch(torch, tm, opt, xt, yt, BATCH, sched)
            row["torch_s_per_epoch"] = (time.perf_counter() - t0) / n_ep
            xtt = to_nchw(xte)
            row["torch_test_accuracy"] = torch_accuracy(tm, xtt,
                                                        torch.from_numpy(yte.astype(np.int64)))
            print(f"  {kind}: torch  {row['torch_test_accuracy']:.4f} "
                  f"({row['torch_s_per_epoch']:.1f} s/epoch)", flush=True)
        out.append(row)
    return out


# ---------------------------------------------------------------------------
# profile
# ---------------------------------------------------------------------------

def profile_fastnn(kind: str, data: Tuple[np.ndarray, ...], steps: int) -> Dict[str, Any]:
    """Per-step milliseconds of each backend op in a fastnn training epoch of
    ``steps`` batches, keyed by op and the shape of its first array argument
    (which tells the two convolutions apart), and the rest of the step: the
    framework's Python between the kernels."""
    model = fastnn_net(kind)
    x, y = data[0][:steps * BATCH], data[1][:steps * BATCH]
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)  # buffers, workspaces
    backend = model.backend
    spent: Dict[str, float] = {}
    calls: Dict[str, int] = {}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            shape = next((tuple(a.shape) for a in args if isinstance(a, np.ndarray)), ())
            key = f"{name} {shape}"
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[key] = spent.get(key, 0.0) + time.perf_counter() - t0
                calls[key] = calls.get(key, 0) + 1
        return timed

    names = [n for n in dir(type(backend)) if not n.startswith("_")
             and callable(getattr(backend, n)) and n not in ("synchronize",)]
    for n in names:
        setattr(backend, n, wrap(n, getattr(backend, n)))
    try:
        t0 = time.perf_counter()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        total = time.perf_counter() - t0
    finally:
        for n in names:  # the backend is shared: drop the instance overrides
            backend.__dict__.pop(n, None)
    ops = sorted(spent.items(), key=lambda kv: -kv[1])
    kernel = sum(spent.values())
    return {"steps": steps, "step_ms": 1e3 * total / steps,
            "ops_ms_per_step": {k: 1e3 * v / steps for k, v in ops},
            "calls_per_step": {k: calls[k] / steps for k, _ in ops},
            "kernels_ms_per_step": 1e3 * kernel / steps,
            "python_ms_per_step": 1e3 * (total - kernel) / steps}


def profile_torch(kind: str, data: Tuple[np.ndarray, ...], steps: int) -> Dict[str, Any]:
    """Per-step milliseconds of PyTorch's top operators (self CPU time) over
    ``steps`` training batches, from torch.profiler."""
    tm, opt = torch_net(kind)
    xt = to_nchw(data[0][:steps * BATCH])
    yt = torch.from_numpy(data[1][:steps * BATCH].astype(np.int64))
    torch_train_epoch(torch, tm, opt, xt, yt, BATCH)
    t0 = time.perf_counter()
    torch_train_epoch(torch, tm, opt, xt, yt, BATCH)
    plain = time.perf_counter() - t0
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch_train_epoch(torch, tm, opt, xt, yt, BATCH)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    return {"steps": steps, "step_ms": 1e3 * plain / steps,
            "ops_ms_per_step": {e.key: e.self_cpu_time_total / 1e3 / steps for e in rows[:15]}}


def print_profile(name: str, prof: Dict[str, Any], top: int = 15) -> None:
    print(f"{name}: {prof['step_ms']:.2f} ms per step (unprofiled for torch; "
          f"with timers for fastnn)")
    for key, ms in list(prof["ops_ms_per_step"].items())[:top]:
        print(f"  {ms:8.3f} ms  {key}")
    if "python_ms_per_step" in prof:
        print(f"  kernels {prof['kernels_ms_per_step']:.3f} ms, framework Python "
              f"{prof['python_ms_per_step']:.3f} ms per step")


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------

def fmt(s: Optional[float]) -> str:
    return "-" if s is None else (f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.1f} ms")


def table(results: List[Result]) -> str:
    head = ["workload", "thr", "fastnn", "torch", "speed-up", "measured as", "other load"]
    body = []
    for r in results:
        sp = r.speedup()
        body.append([r.workload, str(r.threads), fmt(r.median("fastnn")),
                     fmt(r.median("torch")), "-" if sp is None else f"{sp:.2f}x", r.how,
                     "-" if r.other_load is None else f"{100 * r.other_load:.0f}%"])
    widths = [max(len(row[i]) for row in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="LeNet as 120 scaled steps, ResNet as 20, fewer repeats")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--epochs-lenet", type=int, default=5)
    ap.add_argument("--epochs-resnet", type=int, default=3)
    ap.add_argument("--accuracy", action="store_true",
                    help="also train both nets to their epoch counts in both frameworks")
    ap.add_argument("--lenet-steps", type=int, default=None,
                    help="time this many steps per LeNet epoch sample (0: full epochs)")
    ap.add_argument("--resnet-steps", type=int, default=None,
                    help="time this many steps per ResNet epoch sample (0: full epochs)")
    ap.add_argument("--repeat", type=int, default=None, help="timed samples per workload")
    ap.add_argument("--profile", action="store_true",
                    help="also break a training step of each net down by op in both "
                         "frameworks (at the largest thread count)")
    ap.add_argument("--nets", default="lenet,resnet",
                    help="comma-separated subset of lenet,resnet to time and profile")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each workload, wait up to S seconds for other "
                         "processes to leave the cores (below 10%% busy)")
    ap.add_argument("--data", default=None, help="directory with the MNIST IDX files")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "cnn.json"))
    args = ap.parse_args(argv)
    try:
        thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    except ValueError:
        ap.error(f"--threads must be comma-separated ints, got {args.threads!r}")
    if not thread_counts or min(thread_counts) < 1:
        ap.error("--threads needs at least one positive count")
    lenet_steps = args.lenet_steps if args.lenet_steps is not None else (120 if args.quick else 0)
    resnet_steps = args.resnet_steps if args.resnet_steps is not None else \
        (20 if args.quick else 60)
    repeat = args.repeat or (2 if args.quick else 3)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    if not nets or set(nets) - {"lenet", "resnet"}:
        ap.error(f"--nets takes lenet and/or resnet, got {args.nets!r}")

    def settle() -> None:
        if args.wait_quiet > 0:
            common.wait_quiet(args.wait_quiet)

    data = load_mnist(args.data)
    threads = common.Threads(fastnn=fastnn, torch=torch)
    print(f"fastnn {fastnn.__version__}, torch {getattr(torch, '__version__', 'not importable')}")
    print(f"CPU: {common.cpu_model()} ({os.cpu_count()} cores), load {common.load_average()}")
    print(f"data: {data[4]}")
    print(f"epoch = 60000 images, batch {BATCH}, Adam; speed-up = torch time / fastnn time "
          f"(> 1: fastnn faster)\n", flush=True)
    results: List[Result] = []
    for t in thread_counts:
        with threads.use(t):
            for kind, steps in (("lenet", lenet_steps), ("resnet", resnet_steps)):
                if kind not in nets:
                    continue
                settle()
                results.append(epoch_workload(kind, data, t, steps, repeat))
                print(table(results[-1:]).splitlines()[-1], flush=True)
            for kind in nets:
                settle()
                results.append(inference_workload(kind, data, t, max(repeat, 3)))
                print(table(results[-1:]).splitlines()[-1], flush=True)
    print("\n" + table(results))
    if any((r.other_load or 0.0) > 0.1 for r in results):
        print("note: other processes kept the cores busy during some rows ('other load'); "
              "their times, and ratios with them, are less trustworthy (--wait-quiet helps)")

    targets = []
    lenet2 = [r for r in results if r.workload.startswith("LeNet-5 train") and r.threads == 2]
    if lenet2 and lenet2[0].speedup() is not None:
        sp = lenet2[0].speedup()
        targets.append({"target": "LeNet-5 epoch >= 2x faster than PyTorch at 2 threads",
                        "speedup": sp, "met": sp >= 2.0})
    profiles: Dict[str, Any] = {}
    if args.profile:
        t = max(thread_counts)
        for kind in nets:
            steps = 100 if kind == "lenet" else 20
            print(f"\n{kind} training step by op ({t} threads, {steps} steps):")
            with threads.use(t):
                settle()
                profiles[f"{kind}_fastnn"] = profile_fastnn(kind, data, steps)
                print_profile("fastnn", profiles[f"{kind}_fastnn"])
                if torch is not None:
                    profiles[f"{kind}_torch"] = profile_torch(kind, data, steps)
                    print_profile("torch", profiles[f"{kind}_torch"])
    accuracy: List[Dict[str, Any]] = []
    if args.accuracy:
        if data[4].startswith("random"):
            print("\n--accuracy skipped: MNIST not found (pass --data DIR)")
        else:
            t = max(thread_counts)
            print(f"\naccuracy runs ({t} threads):", flush=True)
            with threads.use(t):
                epochs = {"lenet": args.epochs_lenet, "resnet": args.epochs_resnet}
                accuracy = accuracy_runs(data, {k: (v if k in nets else 0)
                                                for k, v in epochs.items()}, t)
            for row in accuracy:
                acc = row["fastnn_test_accuracy"]
                if row["net"] == "lenet" and row["epochs"] == 5:
                    targets.append({"target": "LeNet-5 >= 98.6% after 5 epochs",
                                    "value": acc, "met": acc >= 0.986})
                if row["net"] == "resnet" and row["epochs"] == 3:
                    targets.append({"target": "small ResNet >= 98.5% after 3 epochs",
                                    "value": acc, "met": acc >= 0.985})
                    if "torch_test_accuracy" in row:
                        gap = row["torch_test_accuracy"] - acc
                        targets.append({"target": "small ResNet within 0.3 points of PyTorch",
                                        "gap_points": 100 * gap, "met": gap <= 0.003})
    if targets:
        print("\ntargets:")
        for tg in targets:
            detail = ", ".join(f"{k} {v:.4f}" for k, v in tg.items()
                               if isinstance(v, float))
            print(f"  [{'met' if tg['met'] else 'MISSED'}] {tg['target']} ({detail})")

    report = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpu": common.cpu_model(), "cores": os.cpu_count(),
                    "flags": common.cpu_flags(), "python": platform.python_version(),
                    "load_average_end": common.load_average(),
                    "torch_blas": common.torch_blas(torch)},
        "versions": {"fastnn": fastnn.__version__,
                     "torch": getattr(torch, "__version__", None),
                     "numpy": np.__version__},
        "data": data[4], "batch": BATCH, "quick": bool(args.quick),
        "results": [r.as_dict() for r in results], "accuracy": accuracy, "targets": targets,
        "profiles": profiles,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
