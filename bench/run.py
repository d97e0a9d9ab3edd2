"""The fastnn benchmark suite: one command, every workload, side by side.

    python bench/run.py [--quick] [--threads 1,2] [--json out.json]

Runs, in one command and at the same thread counts for every contender, fastnn
against NumPy and against PyTorch (when importable); PyTorch's MLP epochs run in a
child process (bench/torch_worker.py, for its own OpenMP settings), alternating
with fastnn's, everything else in this process:

  * SGEMM at 256..2048 cubes and at the shapes an MLP's forward and backward make;
  * one epoch of the seed MLP (784-128-10) and of the wide MLP (784-1024-1024-10),
    Adam, batch 128, on MNIST (random data of the same shape when it is absent);
    the wide MLP's multi-thread row also times fastnn at the lowest thread count,
    for its speed-up over it side by side;
  * one Adam step on 10M parameters next to a STREAM-like triad;
  * one training step of a tiny model (Dense(10) on 10 inputs, batch 1);
  * MNIST inference (10000 images, batch 1000);

prints a table of median times with fastnn's speed-up over each contender
(> 1 means fastnn is faster), checks the performance targets of the speed
issue, and writes everything to JSON (default bench/results/latest.json).
"""
from __future__ import annotations

import os
import sys

# OpenBLAS reads OPENBLAS_CORETYPE once, when NumPy loads it: a value forced for
# another purpose would pin NumPy (and torch, where it uses OpenBLAS) to a slower
# kernel family, so it must go before anything imports numpy.
_CORETYPE = os.environ.pop("OPENBLAS_CORETYPE", None)
# The OpenMP wait settings as the user gave them, before importing fastnn adds
# its own: PyTorch's training epochs run in a child with these (torch_worker.py).
_USER_OMP_ENV = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}

import argparse  # noqa: E402
import contextlib  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable, Dict, List, Optional, Tuple  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the fastnn of this tree, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import Row, Threads, measure  # noqa: E402
from torch_worker import torch_mlp, torch_train_epoch  # noqa: E402

BATCH = 128
N_TRAIN = 60000
ADAM_N = 10_000_000


# ---------------------------------------------------------------------------
# settings per mode
# ---------------------------------------------------------------------------

class Settings:
    """Repetitions and per-measurement time budgets: the full run fits in 5
    minutes on 2 cores, --quick in about one."""

    def __init__(self, quick: bool):
        self.quick = quick
        self.gemm_cubes = (256, 512, 1024, 2048)
        self.gemm_repeat = 5 if quick else 9
        self.gemm_budget = 0.25 if quick else 0.6       # s of timed samples per cell
        self.gemm_max_call = 0.6 if quick else 2.5      # skip a call estimated longer
        self.gemm_core_retries = 1 if quick else 2     # see NO_SCALING
        # five timed epochs: single 60-step samples of the wide MLP varied by
        # +-25 % on this shared host, so medians of three were not enough
        self.epoch_repeat = 2 if quick else 5
        self.epoch_retries = 0 if quick else 2          # see EPOCH_SPREAD
        # before each multi-threaded MLP attempt, wait up to core_wait_s for the
        # host to give every core back (wait_for_cores), at most core_wait_total_s
        # in the whole run so that it still fits its 5 minutes
        self.core_wait_s = 5.0 if quick else 20.0
        self.core_wait_total_s = 10.0 if quick else 60.0
        self.seed_budget = 2.5 if quick else 8.0        # s per contender and thread count
        self.wide_steps = 8 if quick else 120
        self.wide_budget = 2.5 if quick else 16.0
        self.adam_repeat = 5 if quick else 11
        self.tiny_steps = 500 if quick else 2000
        self.tiny_repeat = 2 if quick else 3
        self.tiny_budget = 1.5 if quick else 4.0
        self.infer_repeat = 3 if quick else 7


# ---------------------------------------------------------------------------
# the contenders' libraries
# ---------------------------------------------------------------------------

class Libs:
    """fastnn and torch as found (either may be missing), with their errors."""

    def __init__(self, use_torch: bool):
        self.fastnn: Any = None
        self.fastnn_error = ""
        self.backend: Any = None
        self.torch: Any = None
        self.torch_error = ""
        try:
            import fastnn
            from fastnn.backend import get_backend
            self.fastnn = fastnn
            self.backend = get_backend("cpu")
        except Exception as exc:  # noqa: BLE001 - report whatever broke the import
            self.fastnn_error = f"{type(exc).__name__}: {exc}"
            self.fastnn = None
        if use_torch:
            try:
                import torch
                self.torch = torch
            except Exception as exc:  # noqa: BLE001
                self.torch_error = f"{type(exc).__name__}: {exc}"
        else:
            self.torch_error = "disabled by --no-torch"
        # Compiled up front so the compiler's CPU time never lands in a section.
        self.triad = common.CTriad()


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


class Errors:
    """Collects contender failures so one broken kernel does not stop the suite."""

    def __init__(self) -> None:
        self.items: List[str] = []

    def run(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            msg = f"{label}: {_err(exc)}"
            self.items.append(msg)
            print(f"  ! {msg}", flush=True)
            if os.environ.get("BENCH_TRACEBACK"):
                traceback.print_exc()
            return None


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------

def load_mnist(path: Optional[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """MNIST as float32 images in [0, 1] and int32 labels, or random stand-ins.

    The IDX reader is loaded from this tree's source file directly, so real data
    is used even when the compiled extension is missing.
    """
    where = Path(path) if path else ROOT.parent / "shared" / "datasets" / "mnist"
    try:
        spec = importlib.util.spec_from_file_location(
            "_bench_mnist", ROOT / "fastnn" / "datasets" / "mnist.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)  # type: ignore[union-attr]
        (xtr, ytr), (xte, yte) = mod.load_data(str(where))
        source = f"MNIST from {where}"
    except Exception as exc:  # noqa: BLE001
        rng = np.random.default_rng(0)
        xtr = rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8)
        ytr = rng.integers(0, 10, N_TRAIN, dtype=np.uint8)
        xte = rng.integers(0, 256, (10000, 28, 28), dtype=np.uint8)
        yte = rng.integers(0, 10, 10000, dtype=np.uint8)
        source = f"random data of MNIST's shape (MNIST not loaded: {_err(exc)})"
    f32 = lambda a: (a.astype(np.float32) / np.float32(255.0))  # noqa: E731
    return f32(xtr), ytr.astype(np.int32), f32(xte), yte.astype(np.int32), source


# ---------------------------------------------------------------------------
# SGEMM
# ---------------------------------------------------------------------------

def fastnn_gemm(libs: Libs) -> Tuple[Optional[Callable[..., None]], str]:
    """A callable (a_stored, b_stored, c, trans_a, trans_b) running fastnn's SGEMM.

    Prefers the extension's own entry point (least overhead) and checks it on
    a small product first; falls back to the backend's ``gemm`` op.
    """
    if libs.fastnn is None:
        return None, "fastnn not importable"
    from fastnn import _C
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 7), dtype=np.float32)
    b = rng.standard_normal((3, 7), dtype=np.float32)
    want = a.astype(np.float64) @ b.astype(np.float64).T
    candidates = []
    if hasattr(_C, "sgemm"):
        candidates.append(("fastnn._C.sgemm", lambda A, B, C, ta, tb:
                           _C.sgemm(A, B, C, trans_a=ta, trans_b=tb)))
        candidates.append(("fastnn._C.sgemm", lambda A, B, C, ta, tb:
                           _C.sgemm(A, B, C, ta, tb)))
    be = libs.backend
    candidates.append(("backend.gemm", lambda A, B, C, ta, tb:
                       be.gemm(A, B, C, trans_a=ta, trans_b=tb)))
    for name, fn in candidates:
        c = np.full((5, 3), np.nan, np.float32)
        try:
            fn(a, b, c, False, True)
        except Exception:  # noqa: BLE001 - try the next way of calling it
            continue
        if np.allclose(c, want, rtol=1e-4, atol=1e-4):
            return fn, name
    return None, "no working fastnn SGEMM entry point"


# A multi-threaded cell in which a contender ran at most this much faster than
# on one thread, on work long enough to use more threads, was timed while a
# core was taken from this guest: in one full run all three libraries ran
# 512^3 and 1024^3 at their 1-thread speed on 2 threads (and 1.6-2.0x right
# after), which no library does on idle cores; in another (12:16 UTC,
# 2026-11-30) fastnn alone ran the wide forward slower on 2 threads than on 1
# (3.05 against 2.54 ms; NumPy's and PyTorch's samples, taken after it,
# scaled 1.5x and 1.4x), against 1.34-1.62 ms in four other runs. Such a cell is
# timed again.
NO_SCALING = 1.25
SCALING_MIN_S = 1e-3  # 1-thread time below which threads need not pay off


def _speedups(times: Dict[str, float], single: Dict[str, float]) -> List[float]:
    """Each contender's speed-up over its 1-thread time, where that is long
    enough (SCALING_MIN_S) for more threads to pay off."""
    return [single[n] / times[n] for n in times
            if n in single and single[n] >= SCALING_MIN_S]


def _scaling(times: Dict[str, float], single: Dict[str, float]) -> float:
    """The worst-scaling contender's speed-up (inf when none counts)."""
    return min(_speedups(times, single), default=math.inf)


def _no_contender_scaled(times: Dict[str, float], single: Dict[str, float]) -> bool:
    ups = _speedups(times, single)
    return bool(ups) and max(ups) < NO_SCALING


def _timed_with_all_cores(time_cell: Callable[[], Dict[str, float]],
                          single: Dict[str, float], retries: int, row: Row) -> Dict[str, float]:
    """time_cell()'s medians; timed again, up to `retries` times, while some
    contender did not beat its own 1-thread time (`single`) by NO_SCALING,
    keeping the attempt whose worst-scaling contender scaled best. Records on
    `row` how many times it re-measured and whether the cell never scaled."""
    times = time_cell()
    for attempt in range(retries):
        if _scaling(times, single) >= NO_SCALING:
            break
        row.extra["remeasured"] = attempt + 1
        again = time_cell()
        if _scaling(again, single) > _scaling(times, single):
            times = again
    if _no_contender_scaled(times, single):
        row.extra["no_contender_scaled"] = True
    return times


def bench_gemm(libs: Libs, threads: Threads, thread_counts: List[int], cfg: Settings,
               errors: Errors) -> List[Row]:
    rows: List[Row] = []
    fgemm, fname = fastnn_gemm(libs)
    print(f"  fastnn SGEMM via {fname}", flush=True)
    torch = libs.torch
    shapes: List[Tuple[str, bool, bool, int, int, int]] = [
        (f"sgemm {n}^3", False, False, n, n, n) for n in cfg.gemm_cubes]
    shapes += [
        ("sgemm 128x784 @ 784x128 (fwd, NN)", False, False, 128, 128, 784),
        ("sgemm x^T@dz -> 784x128, K=128 (dW, TN)", True, False, 784, 128, 128),
        ("sgemm dz@W^T -> 128x784, K=128 (dX, NT)", False, True, 128, 784, 128),
        ("sgemm 128x128 @ 128x10 (out fwd, NN)", False, False, 128, 10, 128),
        ("sgemm h^T@dz -> 128x10, K=128 (out dW, TN)", True, False, 128, 10, 128),
        ("sgemm dz@W^T -> 128x128, K=10 (out dX, NT)", False, True, 128, 128, 10),
        ("sgemm 128x1024 @ 1024x1024 (wide fwd, NN)", False, False, 128, 1024, 1024),
    ]
    rng = np.random.default_rng(2)
    one_thread: Dict[str, Dict[str, float]] = {}  # label -> contender -> 1-thread median
    for t in thread_counts:
        rate: Dict[str, float] = {}  # last cube's GFLOP/s, to skip hopeless calls
        peak = libs.triad.fma_peak_gflops(t) if libs.triad.ok else None
        if peak is not None:
            print(f"   measured FMA peak at {t} thread(s): {peak:.0f} GFLOP/s", flush=True)
        with threads.use(t):
            for label, ta, tb, M, N, K in shapes:
                a = rng.standard_normal((K, M) if ta else (M, K), dtype=np.float32)
                b = rng.standard_normal((N, K) if tb else (K, N), dtype=np.float32)
                opa, opb = (a.T if ta else a), (b.T if tb else b)
                flops = 2.0 * M * N * K
                row = Row("sgemm", label, t, extra={"M": M, "N": N, "K": K,
                                                    "trans_a": ta, "trans_b": tb})
                kw = dict(repeat=cfg.gemm_repeat, warmup=1, warmup_s=0.1,
                          min_sample_s=0.003, max_total_s=cfg.gemm_budget)
                c_np = np.empty((M, N), np.float32)
                fns: Dict[str, Callable[[], Any]] = {
                    "numpy": lambda: np.matmul(opa, opb, out=c_np)}
                if fgemm is not None:
                    c_fn = np.full((M, N), np.nan, np.float32)
                    fns["fastnn"] = lambda: fgemm(a, b, c_fn, ta, tb)
                if torch is not None:
                    ta_t, tb_t = torch.from_numpy(a), torch.from_numpy(b)
                    opa_t = ta_t.t() if ta else ta_t
                    opb_t = tb_t.t() if tb else tb_t
                    c_t = torch.empty((M, N), dtype=torch.float32)
                    fns["torch"] = lambda: torch.mm(opa_t, opb_t, out=c_t)
                def time_cell() -> Dict[str, float]:
                    times: Dict[str, float] = {}
                    for name in ("fastnn", "numpy", "torch"):
                        if name not in fns:
                            continue
                        if name in rate and flops / (rate[name] * 1e9) > cfg.gemm_max_call:
                            row.extra[f"{name}_skipped"] = (
                                f"estimated {flops / (rate[name] * 1e9):.1f} s per call")
                            continue
                        with (threads.numpy(t) if name == "numpy"
                              else contextlib.nullcontext()):
                            timing = errors.run(f"{label} [{name}, {t} thr]",
                                                lambda: measure(fns[name], **kw))
                        if timing is not None:
                            times[name] = timing.median
                    return times

                times = _timed_with_all_cores(time_cell, one_thread.get(label, {}),
                                              cfg.gemm_core_retries, row)
                for name, median in times.items():
                    row.times[name] = median
                    row.extra[f"{name}_gflops"] = flops / median / 1e9
                    if label.endswith("^3"):
                        rate[name] = flops / median / 1e9
                if t == 1:
                    one_thread[label] = dict(times)
                if "fastnn" in row.times:
                    ref = opa.astype(np.float64) @ opb.astype(np.float64)
                    err = float(np.max(np.abs(c_fn - ref)) / max(np.max(np.abs(ref)), 1e-30))
                    row.extra["fastnn_max_rel_err"] = err
                    if not err < 1e-4:
                        errors.items.append(f"{label}: fastnn result off by {err:.2e}")
                gf = [f"{short} {row.extra[k + '_gflops']:.0f}"
                      for k, short in (("fastnn", "fnn"), ("numpy", "np"), ("torch", "torch"))
                      if k + "_gflops" in row.extra]
                skipped = [k for k in ("fastnn", "numpy", "torch") if k + "_skipped" in row.extra]
                row.note = "GFLOP/s " + " / ".join(gf) + (
                    f" (skipped: {', '.join(skipped)})" if skipped else "")
                if row.extra.get("remeasured"):
                    row.note += f"; re-measured x{row.extra['remeasured']}"
                if row.extra.get("no_contender_scaled"):
                    row.note += "; no contender used the extra threads (a core was busy)"
                if peak is not None and "fastnn_gflops" in row.extra:
                    row.extra["fma_peak_gflops"] = peak
                    row.note += f"; fnn {row.extra['fastnn_gflops'] / peak:.0%} of FMA peak"
                rows.append(row)
                print(common.table([row]).splitlines()[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------
# MLP training epochs
# ---------------------------------------------------------------------------

def fastnn_mlp(libs: Libs, hidden: List[int]) -> Any:
    """Flatten(28x28) -> Dense(h, relu)... -> Dense(10, softmax), Adam, sparse CCE."""
    fnn = libs.fastnn
    from fastnn.layers import Dense, Flatten
    fnn.utils.set_random_seed(0)
    layers = [Flatten(input_shape=(28, 28))]
    layers += [Dense(h, activation="relu") for h in hidden]
    layers.append(Dense(10, activation="softmax"))
    model = fnn.Sequential(layers)
    model.compile(optimizer=fnn.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    return model


class TorchEpochs:
    """PyTorch's MLP training epochs, run in bench/torch_worker.py.

    One OpenMP runtime serves a whole process, under the wait policy of the
    library that loaded it first (see torch_worker.py), so PyTorch's epochs run
    in a child that never imports fastnn and has the user's OpenMP settings; the
    parent sends one epoch per request, so the repetitions still alternate.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        env = {k: v for k, v in os.environ.items() if k not in _USER_OMP_ENV}
        env.update({k: v for k, v in _USER_OMP_ENV.items() if v is not None})
        self._dir = tempfile.TemporaryDirectory(prefix="fastnn-bench-")
        xp, yp = os.path.join(self._dir.name, "x.npy"), os.path.join(self._dir.name, "y.npy")
        np.save(xp, x)
        np.save(yp, y)
        self._proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve().parent / "torch_worker.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        common.HELPER_PIDS.append(self._proc.pid)
        try:
            self._call({"op": "load", "x": xp, "y": yp})
        except Exception:
            self.close()  # no child left behind when PyTorch cannot start there
            raise

    def _call(self, req: Dict[str, Any]) -> Dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(req) + "\n")
        self._proc.stdin.flush()
        line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"torch_worker exited (code {self._proc.poll()})")
        reply = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"torch_worker: {reply.get('error')}")
        return reply

    def epoch(self, hidden: List[int], fused: bool, threads: int, n: int) -> None:
        self._call({"op": "epoch", "hidden": hidden, "fused": fused, "threads": threads,
                    "n": n, "bs": BATCH})

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        # wait4 rather than wait: the child's CPU time still counts as ours
        _, status, usage = os.wait4(self._proc.pid, 0)
        self._proc.returncode = os.waitstatus_to_exitcode(status)
        common.helper_ended(self._proc.pid, usage.ru_utime + usage.ru_stime)
        self._dir.cleanup()


def time_epochs(runs: Dict[str, Callable[[int], None]], n_full: int, bs: int, repeat: int,
                budget: float, steps: Optional[int], errors: Errors, label: str
                ) -> Dict[str, Tuple[float, str, List[float]]]:
    """Seconds per epoch of ``n_full`` samples for each contender's ``run(n)``,
    which trains one epoch over the first ``n`` samples.

    Each contender times whole epochs when they fit its budget and ``steps``
    is None, else epochs of fewer batches scaled per step to the full epoch.
    The timed repetitions interleave the contenders (A B C A B C ...), so a
    burst of outside load lands on all of them rather than on one.

    Returns:
        {name: (seconds per full epoch, how it was measured, raw samples)}
        for every contender that ran without an error.
    """
    steps_full = n_full / bs
    plans: Dict[str, Tuple[int, float, str]] = {}
    for name, run in runs.items():
        def plan(run: Callable[[int], None] = run) -> Tuple[int, float, str]:
            probe = 2
            run(probe * bs)  # builds the model and its per-batch buffers
            t0 = time.perf_counter()
            run(probe * bs)
            per_step = (time.perf_counter() - t0) / probe
            if steps is None and per_step * steps_full * (repeat + 1) <= budget:
                run(n_full)  # warm-up, including the last partial batch's shapes
                return n_full, 1.0, "full epoch"
            want = steps if steps is not None else int(steps_full)
            fit = int(budget / ((repeat + 1) * max(per_step, 1e-9)))
            k = max(2, min(want, fit, int(steps_full)))
            run(k * bs)
            how = f"{k} steps x {steps_full:.1f}" + (" (budget-cut)" if k < want else "")
            return k * bs, steps_full / k, how
        got = errors.run(f"{label} [{name}]", plan)
        if got is not None:
            plans[name] = got
    samples: Dict[str, List[float]] = {name: [] for name in plans}
    for _ in range(repeat):
        for name in list(samples):
            n, _, _ = plans[name]

            def once(run: Callable[[int], None] = runs[name], n: int = n) -> float:
                t0 = time.perf_counter()
                run(n)
                return time.perf_counter() - t0
            dt = errors.run(f"{label} [{name}]", once)
            if dt is None:
                del samples[name]
            else:
                samples[name].append(dt)
    return {name: (statistics.median(ts) * plans[name][1], plans[name][2], ts)
            for name, ts in samples.items() if ts}


def describe_modes(hows: Dict[str, str]) -> str:
    """How each contender's epoch was timed, in a few words."""
    if len(set(hows.values())) <= 1:
        return next(iter(hows.values()), "")
    short = {"fastnn": "fnn", "fastnn_dense": "fnn zero-skipping off", "torch": "torch",
             "torch_fused": "fused"}
    return "; ".join(f"{short.get(k, k)}: {v}" for k, v in hows.items())


def bench_mlp(libs: Libs, threads: Threads, thread_counts: List[int], cfg: Settings,
              errors: Errors, data: Tuple[np.ndarray, ...], hidden: List[int],
              label: str, budget: float, steps: Optional[int],
              scaling_alongside: bool = False) -> List[Row]:
    """One row per thread count. With `scaling_alongside`, the rows above the
    lowest thread count also time fastnn at that count among their contenders."""
    x, y = data[0], data[1]
    rows = []
    worker = None
    if libs.torch is not None:
        worker = errors.run(f"{label} [torch worker]", lambda: TorchEpochs(x, y))
    tmin = min(thread_counts)
    try:
        for t in thread_counts:
            single = rows[0].extra.get("epoch_medians_s", {}) if rows else {}
            base = tmin if scaling_alongside and t > tmin else None
            rows.append(_mlp_row(libs, threads, cfg, errors, x, y, hidden, label, budget,
                                 steps, worker, t, single, base))
    finally:
        if worker is not None:
            worker.close()
    return rows


def _sparse_density(libs: Libs) -> Optional[float]:
    """fastnn's threshold for skipping zeros of a GEMM's A (read, unchanged)."""
    if libs.fastnn is None:
        return None
    value = libs.fastnn._C.sgemm_set_sparse_density(0.0)
    libs.fastnn._C.sgemm_set_sparse_density(value)
    return value


def _fit_without_zero_skipping(libs: Libs, model: Any, x: np.ndarray, y: np.ndarray) -> None:
    """fit with the GEMM's path for mostly-zero inputs turned off (MNIST's pixels
    are 81 % zeros): what the same epoch costs on dense data."""
    sparse = libs.fastnn._C.sgemm_set_sparse_density(0.0)
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    finally:
        libs.fastnn._C.sgemm_set_sparse_density(sparse)


# The row's contender name for fastnn's epochs at the lowest thread count,
# timed among the others so that its speed-up over them is side by side.
# Taken from the lowest count's own row instead, a minute earlier, the wide
# MLP's 2-over-1-thread ratio followed the host's drift between the rows
# (13:19: fastnn 1.67x, PyTorch 1.51x; 1.83x and 1.86x three minutes before).
BASE_THREADS_RUN = "fastnn_base_threads"


def _fit_on_threads(libs: Libs, model: Any, x: np.ndarray, y: np.ndarray,
                    n_threads: int, restore: int) -> None:
    """fit on `n_threads` threads, then back to `restore`."""
    libs.fastnn.set_num_threads(n_threads)
    try:
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    finally:
        libs.fastnn.set_num_threads(restore)


def _base_threads_note(row: Row) -> str:
    """fastnn's epoch at the lowest thread count timed alongside, for the note."""
    base = row.extra.get("fastnn_base_threads_s")
    fnn = row.times.get("fastnn")
    if base is None or not fnn:
        return ""
    return (f"; fnn at {row.extra['fastnn_base_threads']} thr alongside: "
            f"{common.fmt_time(base)} ({base / fnn:.2f}x)")


def _dense_note(row: Row) -> str:
    """fastnn's epoch with zero-skipping off, and its ratios, for the note."""
    dense = row.extra.get("fastnn_dense_s")
    if dense is None:
        return ""
    ratios = [f"{row.times[name] / dense:.2f}x vs {short}"
              for name, short in (("torch", "torch"), ("torch_fused", "fused"))
              if row.times.get(name)]
    return (f"; zero-skipping off: fnn {common.fmt_time(dense)}"
            + (f" ({', '.join(ratios)})" if ratios else ""))


# An MLP row is timed again when outside load the guest cannot see (see
# bench/README.md, "A core taken from the guest") overlapped it, which shows
# two ways. A burst: every contender's 2-thread epochs ran 1.3-1.6x slower for
# two or three of the five rounds, and the medians mixed slowed and normal
# rounds differently for each contender; so a row whose contenders' samples
# spread by more than EPOCH_SPREAD (slowest over fastest, the median over the
# contenders; undisturbed rows spread by 1.04-1.15x) counts as disturbed. A
# core gone for the whole row: no contender's 2-thread epoch beat its 1-thread
# one by NO_SCALING (fastnn's seed epoch took 0.27 s at 2 threads against
# 0.18 s at 1, PyTorch's 0.71 against 0.62), as in the GEMM cells.
EPOCH_SPREAD = 1.25

EpochResults = Dict[str, Tuple[float, str, List[float]]]


def _epoch_spread(res: EpochResults) -> float:
    """The median over the contenders of their slowest sample over their fastest."""
    spreads = [max(raw) / min(raw) for _, _, raw in res.values() if raw and min(raw) > 0]
    return statistics.median(spreads) if spreads else 1.0


def _epoch_disturbance(res: EpochResults, single: Dict[str, float]) -> Tuple[int, float]:
    """(1 if no contender beat its 1-thread epoch `single` by NO_SCALING else 0,
    the samples' spread): lower is less disturbed; (0, <= EPOCH_SPREAD) is fine."""
    medians = {name: sec for name, (sec, _, _) in res.items()}
    return int(_no_contender_scaled(medians, single)), _epoch_spread(res)


def _epochs_disturbed(res: EpochResults, single: Dict[str, float]) -> bool:
    stuck, spread = _epoch_disturbance(res, single)
    return bool(stuck) or spread > EPOCH_SPREAD


def _wait_for_cores(libs: Libs, cfg: Settings, t: int, row: Row) -> None:
    """Before an attempt at t > 1 threads: wait_for_cores, within the run's
    budget; what it saw goes to row.extra["core_checks"]."""
    if t <= 1 or not libs.triad.ok or cfg.core_wait_s <= 0:
        return
    budget = max(0.0, min(cfg.core_wait_s, cfg.core_wait_total_s))
    waited, share = common.wait_for_cores(libs.triad, t, budget)
    cfg.core_wait_total_s -= waited
    row.extra.setdefault("core_checks", []).append(
        {"waited_s": round(waited, 2), "core_share": round(share, 3)})


def _core_note(row: Row) -> str:
    """What the waits for every core found, for the row's note ("" if nothing)."""
    checks = row.extra.get("core_checks", [])
    if not checks:
        return ""
    waited = sum(c["waited_s"] for c in checks)
    kept = checks[min(row.extra.get("core_check_kept", 0), len(checks) - 1)]
    if waited < 1.0 and kept["core_share"] >= 0.85:
        return ""
    return (f"; waited {waited:.0f} s for every core (FMA probe at "
            f"{kept['core_share']:.2f} of {row.threads} cores before the attempt kept)")


def _mlp_row(libs: Libs, threads: Threads, cfg: Settings, errors: Errors, x: np.ndarray,
             y: np.ndarray, hidden: List[int], label: str, budget: float,
             steps: Optional[int], worker: Optional[TorchEpochs], t: int,
             single: Dict[str, float], base_threads: Optional[int] = None) -> Row:
    """One thread count's row: fastnn's fit against the worker's PyTorch epochs;
    `single` holds the 1-thread row's epoch times (empty for that row). With
    `base_threads`, fastnn's epoch at that thread count is timed among the
    contenders too (BASE_THREADS_RUN), for a speed-up over it side by side."""
    row = Row("mlp", label, t)
    runs: Dict[str, Callable[[int], None]] = {}
    with threads.use(t):
        if libs.fastnn is not None:
            model = errors.run(f"{label} [fastnn, {t} thr]",
                               lambda: fastnn_mlp(libs, hidden))
            if model is not None:
                runs["fastnn"] = (lambda n, model=model: model.fit(
                    x[:n], y[:n], batch_size=BATCH, epochs=1, verbose=0))
            dense = errors.run(f"{label} [fastnn dense, {t} thr]",
                               lambda: fastnn_mlp(libs, hidden))
            if dense is not None:
                runs["fastnn_dense"] = (lambda n, model=dense: _fit_without_zero_skipping(
                    libs, model, x[:n], y[:n]))
            if base_threads is not None:
                fewer = errors.run(f"{label} [fastnn, {base_threads} thr alongside]",
                                   lambda: fastnn_mlp(libs, hidden))
                if fewer is not None:
                    runs[BASE_THREADS_RUN] = (lambda n, model=fewer: _fit_on_threads(
                        libs, model, x[:n], y[:n], base_threads, t))
        if worker is not None:
            for name, fused in (("torch", False), ("torch_fused", True)):
                runs[name] = (lambda n, fused=fused: worker.epoch(hidden, fused, t, n))
        _wait_for_cores(libs, cfg, t, row)
        res = time_epochs(runs, len(x), BATCH, cfg.epoch_repeat, budget, steps, errors,
                          f"{label}, {t} thr")
        # One retry at 1 thread, where a core taken away does not stall a barrier:
        # with every row retried twice the suite could run past its 5 minutes.
        retries = cfg.epoch_retries if t > 1 else min(1, cfg.epoch_retries)
        attempts, kept = [res], 0
        for _ in range(retries):
            if not _epochs_disturbed(res, single):
                break
            _wait_for_cores(libs, cfg, t, row)
            again = time_epochs(runs, len(x), BATCH, cfg.epoch_repeat, budget, steps,
                                errors, f"{label}, {t} thr")
            attempts.append(again)
            if _epoch_disturbance(again, single) < _epoch_disturbance(res, single):
                res, kept = again, len(attempts) - 1
        if len(attempts) > 1:
            row.extra["remeasured"] = len(attempts) - 1
            row.extra["core_check_kept"] = kept
            row.extra["rejected_attempts"] = [
                {name: raw for name, (_, _, raw) in attempt.items()}
                for i, attempt in enumerate(attempts) if i != kept]
        row.extra["epoch_spread"] = _epoch_spread(res)
        row.extra["epoch_medians_s"] = {name: sec for name, (sec, _, _) in res.items()}
    hows = {}
    for name, (sec, how, raw) in res.items():
        if name == "fastnn_dense":
            row.extra["fastnn_dense_s"] = sec
        elif name == BASE_THREADS_RUN:
            row.extra["fastnn_base_threads"] = base_threads
            row.extra["fastnn_base_threads_s"] = sec
        else:
            row.times[name] = sec
        hows[name] = how
        row.extra[f"{name}_samples_s"] = raw
    row.extra["measured_as"] = hows
    row.note = describe_modes(hows) + _dense_note(row) + _base_threads_note(row)
    if row.extra.get("remeasured"):
        row.note += (f"; re-measured x{row.extra['remeasured']} (epochs spread "
                     f"{row.extra['epoch_spread']:.2f}x in the attempt kept)")
        if _no_contender_scaled(row.extra["epoch_medians_s"], single):
            row.note += "; no contender used the extra threads"
    row.note += _core_note(row)

    print(common.table([row]).splitlines()[-1], flush=True)
    return row


# ---------------------------------------------------------------------------
# the Adam step next to a triad
# ---------------------------------------------------------------------------

def bench_adam(libs: Libs, threads: Threads, thread_counts: List[int], cfg: Settings,
               errors: Errors) -> List[Row]:
    n = ADAM_N
    rng = np.random.default_rng(3)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    m = np.zeros(n, np.float32)
    v = np.zeros(n, np.float32)
    tmp = np.empty(n, np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    c = rng.standard_normal(n, dtype=np.float32)
    a = np.zeros(n, np.float32)
    s = np.float32(0.5)
    triad_c = libs.triad
    if not triad_c.ok:
        errors.items.append(f"C triad unavailable ({triad_c.error}); numpy/torch triads used")
    torch = libs.torch
    kw = dict(repeat=cfg.adam_repeat, warmup=2, max_total_s=2.0)
    adam_bytes = 28.0 * n   # read p, g, m, v; write p, m, v (each read first)
    # Bytes each reference pass really moves per element. A store to a line not
    # read before costs a read for ownership too (no streaming stores here), so
    # a=b+s*c moves 16 B, not STREAM's nominal 12. NumPy's triad takes two
    # passes whose temporary partly stays in the L3, so its traffic is unknown:
    # it gets the nominal 12 B and is never the reference.
    traffic = {"c_openmp": 16.0, "c_openmp_inplace": 12.0, "torch": 16.0,
               "fastnn_add": 16.0, "numpy": 12.0}
    rows = []
    for t in thread_counts:
        with threads.use(t):
            tri: Dict[str, float] = {}
            if triad_c.ok:
                r = errors.run(f"C triad [{t} thr]",
                               lambda: measure(lambda: triad_c(a, b, c, float(s), t), **kw))
                if r:
                    tri["c_openmp"] = r.median
                r = errors.run(f"C in-place triad [{t} thr]",
                               lambda: measure(lambda: triad_c.axpy(a, c, 1e-9, t), **kw))
                if r:
                    tri["c_openmp_inplace"] = r.median
            r = errors.run(f"numpy triad [{t} thr]", lambda: measure(
                lambda: (np.multiply(c, s, out=tmp), np.add(b, tmp, out=a)), **kw))
            if r:
                tri["numpy"] = r.median
            if torch is not None:
                at, bt, ct = torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(c)
                r = errors.run(f"torch triad [{t} thr]", lambda: measure(
                    lambda: torch.add(bt, ct, alpha=float(s), out=at), **kw))
                if r:
                    tri["torch"] = r.median
            if libs.backend is not None:
                be = libs.backend
                r = errors.run(f"fastnn add [{t} thr]",
                               lambda: measure(lambda: be.add(b, c, a), **kw))
                if r:
                    tri["fastnn_add"] = r.median
            bw = {k: traffic[k] * n / v_ / 1e9 for k, v_ in tri.items()}
            # The reference is the C triad the issue asks for, at the bytes it
            # really moves; torch.add stands in without a compiler. The other
            # passes are context (they differ by cache and store effects).
            ref_name = next((k for k in ("c_openmp", "torch", "fastnn_add") if k in bw), None)
            trow = Row("adam", "triad a=b+s*c, 10M f32 (reference)", t)
            trow.times["numpy"] = tri.get("numpy")
            trow.times["torch"] = tri.get("torch")
            trow.extra.update(triad_s=tri, triad_gbs=bw, reference=ref_name,
                              bytes_per_elem=traffic,
                              stream_convention_gbs={k: 12.0 * n / v_ / 1e9
                                                     for k, v_ in tri.items()})
            labels = {"c_openmp": "C", "c_openmp_inplace": "C a+=s*c", "numpy": "numpy(12 B)",
                      "torch": "torch", "fastnn_add": "fastnn a=b+c"}

            row = Row("adam", "Adam step, 10M params", t)
            if libs.backend is not None:
                be = libs.backend
                state = {"step": 0}

                def fnn_adam() -> None:
                    state["step"] += 1
                    be.adam_step(p, g, m, v, lr=1e-3, beta_1=0.9, beta_2=0.999,
                                 epsilon=1e-7, step=state["step"], weight_decay=0.0,
                                 grad_scale=1.0, clip_value=0.0)
                if triad_c.ok:
                    # The target compares these two, so they are timed in
                    # alternation: outside load then hits both alike.
                    def pair() -> Tuple[float, float]:
                        run_triad = lambda: triad_c(a, b, c, float(s), t)  # noqa: E731
                        for fn in (run_triad, fnn_adam, run_triad, fnn_adam):
                            fn()
                        ts: Dict[str, List[float]] = {"triad": [], "adam": []}
                        for _ in range(cfg.adam_repeat):
                            for key, fn in (("triad", run_triad), ("adam", fnn_adam)):
                                t0 = time.perf_counter()
                                fn()
                                ts[key].append(time.perf_counter() - t0)
                        return statistics.median(ts["triad"]), statistics.median(ts["adam"])
                    got = errors.run(f"fastnn adam + C triad [{t} thr]", pair)
                    if got:
                        tri["c_openmp"], row.times["fastnn"] = got
                        bw["c_openmp"] = traffic["c_openmp"] * n / got[0] / 1e9
                else:
                    r = errors.run(f"fastnn adam [{t} thr]", lambda: measure(fnn_adam, **kw))
                    if r:
                        row.times["fastnn"] = r.median
            np_state = {"step": 0}

            def numpy_adam() -> None:
                # What a NumPy user writes: in-place ufuncs, one temporary, many passes.
                np_state["step"] += 1
                k = np_state["step"]
                lr_t = 1e-3 * math.sqrt(1 - 0.999 ** k) / (1 - 0.9 ** k)
                np.multiply(m, 0.9, out=m)
                np.multiply(g, 0.1, out=tmp)
                np.add(m, tmp, out=m)
                np.multiply(v, 0.999, out=v)
                np.multiply(g, g, out=tmp)
                np.multiply(tmp, 0.001, out=tmp)
                np.add(v, tmp, out=v)
                np.sqrt(v, out=tmp)
                np.add(tmp, 1e-7, out=tmp)
                np.divide(m, tmp, out=tmp)
                np.multiply(tmp, lr_t, out=tmp)
                np.subtract(p, tmp, out=p)
            r = errors.run(f"numpy adam [{t} thr]", lambda: measure(numpy_adam, **kw))
            if r:
                row.times["numpy"] = r.median
            if torch is not None:
                for name, fused in (("torch", False), ("torch_fused", True)):
                    def torch_adam(fused: bool = fused) -> Any:
                        param = torch.nn.Parameter(torch.from_numpy(p.copy()))
                        param.grad = torch.from_numpy(g.copy())
                        opt = torch.optim.Adam([param], lr=1e-3, fused=fused) if fused \
                            else torch.optim.Adam([param], lr=1e-3)
                        return measure(opt.step, **kw)
                    r = errors.run(f"{name} adam [{t} thr]", torch_adam)
                    if r:
                        row.times[name] = r.median
            ab = {k: adam_bytes / v_ / 1e9 for k, v_ in row.times.items() if v_}
            row.extra.update(adam_gbs=ab, bytes_counted_per_param=28,
                             triad_reference=ref_name)
            if ref_name and "fastnn" in ab:
                frac = ab["fastnn"] / bw[ref_name]
                row.extra["fastnn_fraction_of_triad"] = frac
                row.extra["fastnn_fraction_of_fastest_pass"] = ab["fastnn"] / max(
                    x for k, x in bw.items() if k != "numpy")
                row.extra["fastnn_fraction_of_triad_stream_12B"] = (
                    ab["fastnn"] / (bw[ref_name] * 12.0 / traffic[ref_name]))
                row.note = (f"fastnn {ab['fastnn']:.1f} GB/s = {frac:.2f} of the "
                            f"{labels[ref_name]} triad's {bw[ref_name]:.1f} GB/s")
            elif ab:
                row.note = "GB/s (28 B/param) " + " / ".join(f"{k} {x:.1f}" for k, x in ab.items())
            if "torch_fused" in ab:
                row.note += f"; torch fused {ab['torch_fused']:.1f} GB/s"
            trow.extra["stream_convention_gbs"] = {k: 12.0 * n / v_ / 1e9
                                                   for k, v_ in tri.items()}
            trow.note = "GB/s moved: " + " / ".join(
                f"{labels[k]} {v_:.1f}" for k, v_ in bw.items())
        rows += [trow, row]
        for r_ in (trow, row):
            print(common.table([r_]).splitlines()[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------
# the tiny model: per-step overhead
# ---------------------------------------------------------------------------

def bench_tiny(libs: Libs, threads: Threads, thread_counts: List[int], cfg: Settings,
               errors: Errors) -> List[Row]:
    steps = cfg.tiny_steps
    rng = np.random.default_rng(4)
    x = rng.standard_normal((steps, 10), dtype=np.float32)
    y = rng.integers(0, 10, steps).astype(np.int32)
    torch = libs.torch
    label = "train step Dense(10) on 10 inputs, batch 1"
    rows = []
    for t in thread_counts:
        row = Row("tiny", label, t)
        runs: Dict[str, Callable[[int], None]] = {}
        model = None
        with threads.use(t):
            if libs.fastnn is not None:
                def build() -> Any:
                    fnn = libs.fastnn
                    from fastnn.layers import Dense
                    fnn.utils.set_random_seed(0)
                    m = fnn.Sequential([Dense(10, input_dim=10, activation="softmax")])
                    m.compile(optimizer=fnn.optimizers.Adam(),
                              loss="sparse_categorical_crossentropy")
                    return m
                model = errors.run(f"tiny [fastnn, {t} thr]", build)
                if model is not None:
                    runs["fastnn"] = (lambda n, model=model: model.fit(
                        x[:n], y[:n], batch_size=1, epochs=1, verbose=0))
            if torch is not None:
                xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
                for name, fused in (("torch", False), ("torch_fused", True)):
                    torch.manual_seed(0)
                    lin = torch.nn.Linear(10, 10)
                    opt = torch.optim.Adam(lin.parameters(), lr=1e-3, fused=True) if fused \
                        else torch.optim.Adam(lin.parameters(), lr=1e-3)
                    runs[name] = (lambda n, lin=lin, opt=opt: torch_train_epoch(
                        torch, lin, opt, xt[:n], yt[:n], 1))
            # An "epoch" of n one-sample batches is n steps.
            res = time_epochs(runs, steps, 1, cfg.tiny_repeat, cfg.tiny_budget, steps, errors,
                              f"tiny, {t} thr")
            if model is not None:
                i = {"k": 0}

                def one() -> None:
                    k = i["k"] = (i["k"] + 1) % steps
                    model.train_on_batch(x[k:k + 1], y[k:k + 1])
                tob = errors.run(f"tiny train_on_batch [{t} thr]", lambda: measure(
                    one, repeat=cfg.tiny_repeat, warmup=20, min_sample_s=0.1))
                if tob is not None:
                    row.extra["fastnn_train_on_batch_s"] = tob.median
        hows = {}
        for name, (sec, how, raw) in res.items():
            row.times[name] = sec / steps
            hows[name] = how.split(" x ")[0]
        row.extra["measured_as"] = hows
        parts = ["per step of fit over 1-sample batches"]
        if "fastnn_train_on_batch_s" in row.extra:
            parts.append(f"fastnn train_on_batch "
                         f"{common.fmt_time(row.extra['fastnn_train_on_batch_s'])}")
        parts.append("timed over " + describe_modes(hows))
        row.note = "; ".join(parts)
        rows.append(row)
        print(common.table([row]).splitlines()[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------
# inference
# ---------------------------------------------------------------------------

def bench_inference(libs: Libs, threads: Threads, thread_counts: List[int], cfg: Settings,
                    errors: Errors, data: Tuple[np.ndarray, ...]) -> List[Row]:
    x = data[2]
    bs = 1000
    torch = libs.torch
    rng = np.random.default_rng(5)
    w1 = (rng.standard_normal((784, 128)) * 0.05).astype(np.float32)
    b1 = np.zeros(128, np.float32)
    w2 = (rng.standard_normal((128, 10)) * 0.1).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    xf = x.reshape(len(x), -1)
    out_np = np.empty((len(x), 10), np.float32)

    def numpy_predict() -> np.ndarray:
        for s in range(0, len(x), bs):
            h = xf[s:s + bs] @ w1
            h += b1
            np.maximum(h, 0, out=h)
            z = h @ w2
            z += b2
            z -= z.max(axis=1, keepdims=True)
            np.exp(z, out=z)
            z /= z.sum(axis=1, keepdims=True)
            out_np[s:s + bs] = z
        return out_np

    rows = []
    for t in thread_counts:
        row = Row("inference", "MNIST predict 10000, batch 1000 (seed MLP)", t)
        kw = dict(repeat=cfg.infer_repeat, warmup=2, max_total_s=2.0)
        with threads.use(t):
            if libs.fastnn is not None:
                def fastnn_cell() -> float:
                    model = fastnn_mlp(libs, [128])
                    model.fit(data[0][:BATCH], data[1][:BATCH], batch_size=BATCH, epochs=1,
                              verbose=0)
                    return measure(lambda: model.predict(x, batch_size=bs, verbose=0),
                                   **kw).median
                res = errors.run(f"inference [fastnn, {t} thr]", fastnn_cell)
                if res:
                    row.times["fastnn"] = res
            with threads.numpy(t):
                res = errors.run(f"inference [numpy, {t} thr]",
                                 lambda: measure(numpy_predict, **kw).median)
            if res:
                row.times["numpy"] = res
            if torch is not None:
                def torch_cell() -> float:
                    model, _ = torch_mlp(torch, [128], False)
                    model.eval()
                    xt = torch.from_numpy(x)
                    out = torch.empty((len(x), 10))

                    def predict() -> Any:
                        with torch.no_grad():
                            for s in range(0, len(x), bs):
                                out[s:s + bs] = torch.softmax(model(xt[s:s + bs]), dim=1)
                        return out.numpy()
                    return measure(predict, **kw).median
                res = errors.run(f"inference [torch, {t} thr]", torch_cell)
                if res:
                    row.times["torch"] = res
        rows.append(row)
        print(common.table([row]).splitlines()[-1], flush=True)
    return rows


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------

def find(rows: List[Row], workload_prefix: str, threads: int) -> Optional[Row]:
    for r in rows:
        if r.workload.startswith(workload_prefix) and r.threads == threads:
            return r
    return None


def _scaling_target(rows: List[Row], tmin: int, tmax: int,
                    verdict: Callable[[str, str, Optional[float], float], None],
                    lines: List[str], out: Dict[str, Any]) -> None:
    """The wide MLP's tmax-over-tmin target, from fastnn's epochs at both counts
    timed side by side in the tmax row (BASE_THREADS_RUN) when there are such;
    the ratios across the two rows follow for comparison."""
    r1, r2 = find(rows, "wide MLP", tmin), find(rows, "wide MLP", tmax)
    across: Dict[str, Optional[float]] = {}
    for name in ("fastnn", "torch", "torch_fused"):
        t1 = r1.times.get(name) if r1 else None
        t2 = r2.times.get(name) if r2 else None
        across[name] = t1 / t2 if (t1 and t2) else None
    base = r2.extra.get("fastnn_base_threads_s") if r2 else None
    fnn = r2.times.get("fastnn") if r2 else None
    alongside = base / fnn if (base and fnn) else None
    how = "side by side" if alongside is not None else "across rows"
    verdict("wide_scaling", f"wide MLP {tmax} thr over {tmin} thr (fastnn, {how})",
            alongside if alongside is not None else across["fastnn"], 1.8)
    if alongside is not None and across["fastnn"] is not None:
        lines.append(f"        (fastnn across the {tmin}- and {tmax}-thread rows: "
                     f"{across['fastnn']:.2f}x)")
        out["wide_scaling_fastnn_across_rows"] = across["fastnn"]
    for name in ("torch", "torch_fused"):
        if across[name] is not None:
            lines.append(f"        (for comparison, {name} across the rows: {across[name]:.2f}x)")
            out[f"wide_scaling_{name}"] = across[name]


def check_targets(rows: List[Row], thread_counts: List[int]) -> Tuple[List[str], Dict[str, Any]]:
    """Each target of the speed issue: measured value, met or missed, by how much.

    Judged at the highest thread count measured (the issue's "2 threads unless
    said"); the scaling target compares the lowest and the highest.
    """
    tmax, tmin = max(thread_counts), min(thread_counts)
    lines: List[str] = []
    out: Dict[str, Any] = {}

    def verdict(key: str, what: str, value: Optional[float], goal: float) -> None:
        if value is None:
            lines.append(f"[ n/a ] {what}: not measured (target >= {goal:g}x)")
            out[key] = {"value": None, "target": goal, "met": None}
            return
        met = value >= goal
        tag = "[ MET ]" if met else "[MISSED]"
        # A miss that rounds to the goal at 2 decimals ("1.80x, missed") gets
        # a third one, so the line shows why it missed.
        digits = 3 if round(value, 2) >= goal > value else 2
        gap = "" if met else f"; short by {(goal / value - 1) * 100:.1f} %"
        lines.append(f"{tag} {what}: {value:.{digits}f}x (target >= {goal:g}x{gap})")
        out[key] = {"value": value, "target": goal, "met": met}

    for cube in (1024, 2048):
        r = find(rows, f"sgemm {cube}^3", tmax)
        sp = r.speedups() if r else {}
        verdict(f"sgemm{cube}_vs_openblas", f"SGEMM {cube}^3 vs OpenBLAS ({tmax} thr)",
                sp.get("numpy"), 0.95)
        verdict(f"sgemm{cube}_vs_mkl", f"SGEMM {cube}^3 vs MKL/torch ({tmax} thr)",
                sp.get("torch"), 0.95)
    for r in rows:
        if r.section == "sgemm" and r.threads == tmax and not r.workload.endswith("^3"):
            verdict("mlpshape:" + r.workload, f"{r.workload} vs MKL/torch ({tmax} thr)",
                    r.speedups().get("torch"), 1.0)
    for prefix, key, goals in (("seed MLP", "seed", (3.0, 2.5)), ("wide MLP", "wide", (2.0, 1.5))):
        r = find(rows, prefix, tmax)
        sp = r.speedups() if r else {}
        verdict(f"{key}_vs_torch", f"{prefix} epoch vs torch Adam ({tmax} thr)",
                sp.get("torch"), goals[0])
        verdict(f"{key}_vs_torch_fused", f"{prefix} epoch vs torch Adam(fused) ({tmax} thr)",
                sp.get("torch_fused"), goals[1])
    r = find(rows, "Adam step", tmax)
    frac = r.extra.get("fastnn_fraction_of_triad") if r else None
    if frac is None:
        lines.append("[ n/a ] Adam step bandwidth: not measured (target >= 0.90 of triad)")
        out["adam_vs_triad"] = {"value": None, "target": 0.9, "met": None}
    else:
        met = frac >= 0.9
        lines.append(f"{'[ MET ]' if met else '[MISSED]'} Adam step 10M ({tmax} thr): "
                     f"{frac:.2f} of the triad's bandwidth (target >= 0.90; "
                     f"bytes really moved, see bench/README.md)")
        out["adam_vs_triad"] = {"value": frac, "target": 0.9, "met": met}
    r = find(rows, "train step", tmax)
    sp = r.speedups() if r else {}
    verdict("tiny_vs_torch", f"tiny-model step vs torch ({tmax} thr)", sp.get("torch"), 5.0)
    verdict("tiny_vs_torch_fused", f"tiny-model step vs torch fused ({tmax} thr)",
            sp.get("torch_fused"), 5.0)
    if tmax > tmin:
        _scaling_target(rows, tmin, tmax, verdict, lines, out)
    return lines, out


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

SECTIONS = ("sgemm", "seed", "wide", "adam", "tiny", "inference")


def run_section(section: str, libs: Libs, threads: Threads, thread_counts: List[int],
                cfg: Settings, errors: Errors, data: Tuple[Any, ...]) -> List[Row]:
    if section == "sgemm":
        return bench_gemm(libs, threads, thread_counts, cfg, errors)
    if section == "seed":
        return bench_mlp(libs, threads, thread_counts, cfg, errors, data, [128],
                         "seed MLP 784-128-10 epoch", cfg.seed_budget, None)
    if section == "wide":
        return bench_mlp(libs, threads, thread_counts, cfg, errors, data, [1024, 1024],
                         "wide MLP 784-1024-1024-10 epoch", cfg.wide_budget, cfg.wide_steps,
                         scaling_alongside=True)
    if section == "adam":
        return bench_adam(libs, threads, thread_counts, cfg, errors)
    if section == "tiny":
        return bench_tiny(libs, threads, thread_counts, cfg, errors)
    return bench_inference(libs, threads, thread_counts, cfg, errors, data)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a ~1 minute smoke run")
    ap.add_argument("--threads", default=None,
                    help="comma-separated thread counts (default: 1 and os.cpu_count())")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "latest.json"),
                    help="where to write the results")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--data", default=None, help="MNIST directory "
                    "(default: <repo>/../shared/datasets/mnist)")
    ap.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
    ap.add_argument("--retries", type=int, default=0, metavar="N",
                    help="run a section up to N more times while other processes took more "
                    "than --retry-above of the cores during it; the table keeps the attempt "
                    "they disturbed least")
    ap.add_argument("--retry-above", type=float, default=0.1, metavar="F",
                    help="outside load (fraction of all cores) that triggers a retry")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="S",
                    help="before each section wait up to S seconds for other processes "
                    "to leave the cores idle (a shared machine)")
    ap.add_argument("--wait-cores", type=float, default=None, metavar="S",
                    help="before each multi-threaded MLP attempt wait up to S seconds (60 "
                    "in all) for an FMA probe to get every core (default 20, 5 with --quick; "
                    "0: off)")
    args = ap.parse_args(argv)

    cpus = os.cpu_count() or 1
    if args.threads:
        try:
            thread_counts = sorted({int(s) for s in args.threads.split(",") if s.strip()})
        except ValueError:
            ap.error(f"--threads must be comma-separated integers, got {args.threads!r}")
        if not thread_counts or min(thread_counts) < 1:
            ap.error("--threads needs positive counts")
    else:
        thread_counts = sorted({1, cpus})
    sections = SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        ap.error(f"--only: unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    cfg = Settings(args.quick)
    if args.wait_cores is not None:
        cfg.core_wait_s = max(0.0, args.wait_cores)
    started = time.perf_counter()

    libs = Libs(use_torch=not args.no_torch)
    threads = Threads(libs.fastnn, libs.torch)
    errors = Errors()
    meta: Dict[str, Any] = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "thread_counts": thread_counts,
        "cpu": common.cpu_model(),
        "cpu_flags": common.cpu_flags(),
        "cores": cpus,
        "load_average_start": common.load_average(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "numpy_blas": common.numpy_blas(),
        "fastnn": getattr(libs.fastnn, "__version__", None) if libs.fastnn else
        f"unavailable ({libs.fastnn_error})",
        "torch": libs.torch.__version__ if libs.torch else f"unavailable ({libs.torch_error})",
        "torch_blas": common.torch_blas(libs.torch),
        "gcc": common.gcc_version(),
        "openblas_coretype_unset": _CORETYPE,
        "fastnn_sparse_density": _sparse_density(libs),
    }
    print(f"fastnn benchmark suite  {meta['date']}  ({'quick' if args.quick else 'full'} run)")
    print(f"machine : {meta['cpu']}, {cpus} cores, {' '.join(meta['cpu_flags'])}; "
          f"load average {meta['load_average_start']}")
    print(f"fastnn  : {meta['fastnn']}")
    print(f"numpy   : {meta['numpy']}, BLAS {meta['numpy_blas']}")
    print(f"torch   : {meta['torch']}" + (f", {meta['torch_blas']}" if libs.torch else ""))
    if _CORETYPE is not None:
        print(f"note    : OPENBLAS_CORETYPE={_CORETYPE} was unset for this run")
    print(f"threads : {thread_counts} for every contender; times are medians after warm-up; "
          "speed-ups are other/fastnn (> 1: fastnn faster)\n", flush=True)

    data: Tuple[Any, ...] = ()
    if {"seed", "wide", "inference"} & set(sections):
        *arrays, source = load_mnist(args.data)
        data = tuple(arrays)
        meta["data"] = source
        print(f"data    : {source}\n", flush=True)

    rows: List[Row] = []
    busy_log: Dict[str, Optional[float]] = {}
    during_log: Dict[str, Optional[float]] = {}
    attempts_log: Dict[str, List[Optional[float]]] = {}
    waited = 0.0
    for section in sections:
        t_wait = time.perf_counter()
        busy = (common.wait_quiet(args.wait_quiet) if args.wait_quiet > 0
                else common.cpu_busy(0.5))
        waited += time.perf_counter() - t_wait
        busy_log[section] = busy
        shown = "?" if busy is None else f"{busy:.0%}"
        print(f"== {section} (other processes kept {shown} of the cores busy just before)",
              flush=True)
        best: Optional[Tuple[float, List[Row], Optional[float]]] = None
        loads: List[Optional[float]] = []
        for attempt in range(1 + max(0, args.retries)):
            if attempt:
                t_wait = time.perf_counter()
                if args.wait_quiet > 0:
                    common.wait_quiet(args.wait_quiet)
                waited += time.perf_counter() - t_wait
                print(f"   again: attempt {attempt + 1} of {section}", flush=True)
            with common.OtherLoad() as during:
                got = run_section(section, libs, threads, thread_counts, cfg, errors, data)
            frac = during.fraction
            loads.append(frac)
            if frac is not None:
                print(f"   other processes used {frac:.0%} of the cores during {section}",
                      flush=True)
            key = frac if frac is not None else 1.0
            if best is None or key < best[0]:
                best = (key, got, frac)
            if frac is None or frac <= args.retry_above:
                break
        assert best is not None
        rows += best[1]
        during_log[section] = best[2]
        attempts_log[section] = loads

    meta["load_average_end"] = common.load_average()
    meta["cores_busy_before_section"] = busy_log
    meta["cores_busy_by_others_during_section"] = during_log
    meta["others_load_per_attempt"] = attempts_log
    meta["wall_s"] = round(time.perf_counter() - started, 1)
    meta["waiting_for_quiet_s"] = round(waited, 1)
    print("\n" + common.table(rows))
    target_lines, targets = check_targets(rows, thread_counts)
    print("\ntargets (speed-up of fastnn, side by side in this run):")
    for line in target_lines:
        print("  " + line)
    if errors.items:
        print("\nproblems:")
        for item in errors.items:
            print("  - " + item)
    busy_txt = ", ".join(f"{k} {'?' if v is None else f'{v:.0%}'}/"
                         f"{'?' if during_log.get(k) is None else format(during_log[k], '.0%')}"
                         for k, v in busy_log.items())
    print(f"\nload average at start {meta['load_average_start']}, at end "
          f"{meta['load_average_end']}; cores busy with other work before/during each section: "
          f"{busy_txt}; whole run {meta['wall_s']} s, of which {meta['waiting_for_quiet_s']} s "
          "spent checking/waiting for idle cores")
    if any(v is not None and v > 0.1 for v in list(busy_log.values()) + list(during_log.values())):
        print("warning: other processes were using the cores; multi-threaded figures "
              "(every contender's) suffer most, so treat the >1-thread ratios with care")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as fh:
        json.dump({"meta": meta, "rows": [r.as_dict() for r in rows], "targets": targets,
                   "target_lines": target_lines, "problems": errors.items,
                   "table_markdown": common.table(rows, markdown=True)}, fh, indent=1)
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
