"""Timing, thread control and machine description shared by the benchmark suite.

Every figure the suite prints is the median of several timed repetitions taken
after a warm-up, so first-touch page faults, lazily allocated workspaces and
thread-pool start-up never land in a measurement. On a shared machine single
times wander; ratios taken side by side in one run are what we compare.
"""
from __future__ import annotations

import ctypes
import os
import platform
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

CONTENDERS = ("fastnn", "numpy", "torch", "torch_fused")


# ---------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------

@dataclass
class Timing:
    """Seconds per call: the median (what we report) and the spread behind it."""

    median: float
    best: float
    samples: List[float]
    calls_per_sample: int

    def as_dict(self) -> Dict[str, Any]:
        return {"median_s": self.median, "best_s": self.best,
                "samples_s": self.samples, "calls_per_sample": self.calls_per_sample}


def measure(fn: Callable[[], Any], *, repeat: int = 5, warmup: int = 1,
            min_sample_s: float = 0.0, max_total_s: float = float("inf"),
            min_repeat: int = 3, warmup_s: float = 0.0) -> Timing:
    """Times ``fn()``: warm-up calls, then the median of ``repeat`` samples.

    A sample runs ``fn`` back to back often enough to last ``min_sample_s``
    (short calls are otherwise dominated by timer and scheduling noise).
    Sampling stops early once ``max_total_s`` is spent, but never before
    ``min_repeat`` samples.

    Args:
        fn: the work, called without arguments.
        repeat: timed samples wanted.
        warmup: untimed calls first.
        min_sample_s: shortest acceptable sample.
        max_total_s: time budget for the timed samples.
        min_repeat: samples taken whatever the budget says.
        warmup_s: keep warming up until this long has passed. A core left
            idle for a while runs its first milliseconds of work slowly on
            this VM: a 2-thread GEMM timed in 15 ms right after a stretch of
            single-threaded work ran at half speed.

    Returns:
        A Timing in seconds per call.
    """
    first = None
    warm_start = time.perf_counter()
    calls = 0
    while calls < max(warmup, 1) or time.perf_counter() - warm_start < warmup_s:
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        calls += 1
    number = 1
    if min_sample_s > 0 and first is not None and first < min_sample_s:
        number = max(1, int(min_sample_s / max(first, 1e-7)))
    samples: List[float] = []
    spent = 0.0
    for i in range(max(repeat, 1)):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        dt = time.perf_counter() - t0
        samples.append(dt / number)
        spent += dt
        if i + 1 >= min_repeat and spent >= max_total_s:
            break
    return Timing(statistics.median(samples), min(samples), samples, number)


# ---------------------------------------------------------------------------
# threads
# ---------------------------------------------------------------------------

class Threads:
    """Puts every contender on the same thread count.

    fastnn through fastnn.set_num_threads, PyTorch through torch.set_num_threads,
    NumPy's BLAS through threadpoolctl. NumPy's OpenBLAS is held at one thread
    except while NumPy itself is measured (``numpy(n)``): its idle workers spin
    for about 0.1 s after each call, and on a 2-core machine a spinning worker
    would take a core from whichever contender runs next. threadpoolctl is told
    to touch NumPy's BLAS only: limiting "openmp" would also rewrite fastnn's
    and PyTorch's settings behind their own controls.
    """

    # How long OpenBLAS workers may keep spinning after a call (2^28 cycles).
    SETTLE_S = 0.2

    def __init__(self, fastnn: Any = None, torch: Any = None):
        self.fastnn = fastnn
        self.torch = torch
        self._blas: Any = None
        try:
            from threadpoolctl import ThreadpoolController
            ctl = ThreadpoolController().select(user_api="blas")
            paths = [lib.filepath for lib in ctl.lib_controllers if "torch" not in lib.filepath]
            if paths:
                self._blas = ThreadpoolController().select(filepath=paths)
                self._blas.limit(limits=1)
        except ImportError:
            pass

    @contextmanager
    def use(self, n: int) -> Iterator[None]:
        """Within the block fastnn and PyTorch run on ``n`` threads."""
        if self.fastnn is not None:
            self.fastnn.set_num_threads(n)
        if self.torch is not None:
            self.torch.set_num_threads(n)
        yield

    @contextmanager
    def numpy(self, n: int) -> Iterator[None]:
        """Within the block NumPy's BLAS runs on ``n`` threads; after it, the
        BLAS goes back to one thread and its spinning workers get time to park."""
        if self._blas is None:
            yield
            return
        self._blas.limit(limits=n)
        try:
            yield
        finally:
            self._blas.limit(limits=1)
            if n > 1:
                time.sleep(self.SETTLE_S)


# ---------------------------------------------------------------------------
# environment
# ---------------------------------------------------------------------------

def cpu_model() -> str:
    """The CPU's model name as /proc/cpuinfo (or platform) reports it."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> List[str]:
    """The SIMD features that matter for the kernels (avx2, fma, avx512f)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16") if f in have]
    except OSError:
        pass
    return []


def load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_times() -> Optional[List[int]]:
    try:
        with open("/proc/stat") as fh:
            return [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def cpu_busy(interval: float = 0.5) -> Optional[float]:
    """Fraction of all cores busy over the next ``interval`` seconds (from
    /proc/stat), or None where that cannot be read. Called while the suite
    itself idles, it measures what other processes are doing."""
    before = _cpu_times()
    time.sleep(interval)
    after = _cpu_times()
    if not before or not after:
        return None
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal
    idle = delta[3] + delta[4]
    return (total - idle) / total if total > 0 else None


# Processes the suite started to run contenders in (bench/torch_worker.py):
# their CPU time is ours, not other people's load.
HELPER_PIDS: List[int] = []
_ended_helpers_cpu_s = [0.0]


def helper_ended(pid: int, cpu_s: float) -> None:
    """Records the final CPU time of a helper that was reaped (os.wait4)."""
    if pid in HELPER_PIDS:
        HELPER_PIDS.remove(pid)
    _ended_helpers_cpu_s[0] += cpu_s


def _helpers_cpu_s() -> float:
    """CPU seconds (user + system) used so far by our helper processes."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total = _ended_helpers_cpu_s[0]
    for pid in HELPER_PIDS:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / hz  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total


class OtherLoad:
    """How busy other processes kept the cores while a block of ours ran.

    /proc/stat gives the machine's busy time, time.process_time() ours (all
    our threads, spinning OpenMP workers included) plus our helper processes';
    the difference, over the wall time and the core count, is everyone else's
    share.
    """

    def __enter__(self) -> "OtherLoad":
        self.fraction: Optional[float] = None
        self._stat = _cpu_times()
        self._own = time.process_time() + _helpers_cpu_s()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        stat, wall = _cpu_times(), time.perf_counter()
        own = time.process_time() + _helpers_cpu_s()
        if not self._stat or not stat:
            return
        delta = [b - a for a, b in zip(self._stat, stat)]
        busy_ticks = sum(delta[:8]) - delta[3] - delta[4]
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        cores = os.cpu_count() or 1
        others = busy_ticks / hz - (own - self._own)
        self.fraction = max(0.0, others / ((wall - self._wall) * cores))


def wait_quiet(max_wait_s: float, threshold: float = 0.1) -> Optional[float]:
    """Waits up to ``max_wait_s`` for the machine's other work to drop below
    ``threshold`` of its cores; returns the last busy fraction seen."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy(1.0)
    while busy is not None and busy > threshold and time.monotonic() < deadline:
        busy = cpu_busy(1.0)
    return busy


def numpy_blas() -> str:
    """Which BLAS NumPy runs, with its version and core type (via threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "unknown (threadpoolctl missing)"
    parts = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        path = info.get("filepath", "")
        # torch ships its own libraries; only NumPy's (and SciPy's) matter here.
        if "torch" in path:
            continue
        parts.append(f"{info.get('internal_api')} {info.get('version')} "
                     f"({info.get('architecture', '?')}, {info.get('threading_layer', '?')})")
    return "; ".join(parts) or "none found"


def torch_blas(torch: Any) -> str:
    """PyTorch's BLAS and threading as torch.__config__ reports them."""
    if torch is None:
        return "n/a"
    show = torch.__config__.show()
    found = re.search(r"BLAS_INFO=(\w+)", show)
    blas = found.group(1) if found else "?"
    mkl = ""
    for line in show.splitlines():
        if "Math Kernel Library" in line or "oneMKL" in line:
            mkl = line.strip().lstrip("- ")
            break
    cap = re.search(r"CPU capability usage: (\w+)", show)
    if cap:
        mkl += f"; CPU capability {cap.group(1)}"
    par = ""
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend"):
            par = line.split(":", 1)[1].strip()
    return f"BLAS_INFO={blas}" + (f"; {mkl}" if mkl else "") + (f"; ATen {par}" if par else "")


def gcc_version() -> str:
    try:
        out = subprocess.run(["gcc", "--version"], capture_output=True, text=True, timeout=10)
        return out.stdout.splitlines()[0] if out.returncode == 0 else "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


# ---------------------------------------------------------------------------
# a STREAM-like triad in C
# ---------------------------------------------------------------------------

_TRIAD_SRC = r"""
#include <stdint.h>
/* a[i] = b[i] + s * c[i], the STREAM triad, split statically over threads. */
void bench_triad(int64_t n, float *a, const float *b, const float *c, float s,
                 int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < n; i++)
        a[i] = b[i] + s * c[i];
}

/* a[i] += s * c[i]: every line written was read first, as in an optimiser
 * step, so no write-allocate traffic hides in the byte count. */
void bench_axpy(int64_t n, float *a, const float *c, float s, int nthreads)
{
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t i = 0; i < n; i++)
        a[i] += s * c[i];
}

/* FMA peak: each thread runs iters x 12 independent 16-float multiply-adds
 * (enough chains to cover the FMA latency); 384 flops per iteration. */
typedef float vec16 __attribute__((vector_size(64)));
double bench_fma_peak(int64_t iters, int nthreads)
{
    double total = 0.0;
    #pragma omp parallel num_threads(nthreads) reduction(+:total)
    {
        vec16 acc[12];
        const vec16 mul = (vec16){0} + 0.9999999f, add = (vec16){0} + 1e-7f;
        for (int i = 0; i < 12; i++)
            acc[i] = (vec16){0} + (float)i;
        for (int64_t k = 0; k < iters; k++)
            for (int i = 0; i < 12; i++)
                acc[i] = acc[i] * mul + add;
        for (int i = 0; i < 12; i++)
            for (int j = 0; j < 16; j++)
                total += acc[i][j];
    }
    return total;
}
"""


class CTriad:
    """The STREAM triad (and an in-place variant), and an FMA-peak probe, compiled
    at run time with gcc -O3 -march=native -fopenmp.

    The bandwidth reference for the Adam step: one vectorised pass over the
    arrays at an explicit thread count. Unavailable (``ok`` False) without gcc.
    """

    def __init__(self) -> None:
        self.ok = False
        self.error = ""
        workdir = tempfile.mkdtemp(prefix="fastnn-bench-")
        try:
            self._build(workdir)
        finally:
            # The loaded library stays mapped after its file is gone.
            shutil.rmtree(workdir, ignore_errors=True)

    def _build(self, workdir: str) -> None:
        src = os.path.join(workdir, "triad.c")
        lib = os.path.join(workdir, "triad.so")
        with open(src, "w") as fh:
            fh.write(_TRIAD_SRC)
        cmd = ["gcc", "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", src, "-o", lib]
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            self.error = f"gcc failed to run: {exc}"
            return
        if res.returncode != 0:
            self.error = "gcc: " + res.stderr.strip()[:200]
            return
        self._lib = ctypes.CDLL(lib)
        self._fn = self._lib.bench_triad
        self._fn.restype = None
        self._fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_float, ctypes.c_int]
        self._axpy = self._lib.bench_axpy
        self._axpy.restype = None
        self._axpy.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_float, ctypes.c_int]
        self._peak = self._lib.bench_fma_peak
        self._peak.restype = ctypes.c_double
        self._peak.argtypes = [ctypes.c_int64, ctypes.c_int]
        self.ok = True

    def __call__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray, s: float,
                 threads: int) -> None:
        """a = b + s * c."""
        self._fn(a.size, a.ctypes.data, b.ctypes.data, c.ctypes.data, s, threads)

    def axpy(self, a: np.ndarray, c: np.ndarray, s: float, threads: int) -> None:
        """a += s * c."""
        self._axpy(a.size, a.ctypes.data, c.ctypes.data, s, threads)

    def fma_peak_gflops(self, threads: int, repeat: int = 5, warmup_s: float = 1.0) -> float:
        """The measured float32 FMA rate on ``threads`` threads (best of ``repeat``
        runs of ~0.1 s, after ``warmup_s`` of the same work): what a GEMM can
        reach at most. The warm-up matters after a stretch of single-threaded
        work: the second core then gave nothing for about a second (one full
        run measured 128 GFLOP/s at 2 threads, and its first 2-thread cells ran
        at one core's speed)."""
        iters = 2_000_000
        t_end = time.perf_counter() + warmup_s
        while time.perf_counter() < t_end:
            self._peak(iters, threads)
        best = 0.0
        for _ in range(repeat):
            t0 = time.perf_counter()
            self._peak(iters, threads)
            best = max(best, threads * iters * 384 / (time.perf_counter() - t0) / 1e9)
        return best

    def core_share(self, threads: int, iters: int = 4_000_000) -> float:
        """The FMA probe's rate on ``threads`` threads over ``threads`` times its
        rate on one, just measured (~25 ms): about 1 when every core is there,
        about 1/threads when the host has taken all but one."""
        rates = []
        for t in (1, threads):
            t0 = time.perf_counter()
            self._peak(iters, t)
            rates.append(t * iters / (time.perf_counter() - t0))
        return rates[1] / rates[0] / threads


def wait_for_cores(triad: CTriad, threads: int, max_wait_s: float,
                   need: float = 0.85) -> Tuple[float, float]:
    """Runs the FMA probe (keeping the cores busy, so an idle one is woken)
    until ``threads`` threads get at least ``need`` of ``threads`` cores twice
    in a row or ``max_wait_s`` has passed; returns (seconds spent, the lowest
    share of the last two probes).

    Load that other processes put on the guest shows in /proc/stat (see
    wait_quiet); a core the host gives to another guest does not, and took a
    core away for whole benchmark rows (see bench/README.md). Twice, because
    a core shared by time slices passes a single 25 ms probe now and then (a
    busy loop pinned to the second core: 0.43-0.74 of 2 cores, once 1.0)."""
    start = time.perf_counter()
    last = [triad.core_share(threads)]
    while time.perf_counter() - start < max_wait_s:
        last = [last[-1], triad.core_share(threads)]
        if min(last) >= need:
            break
    return time.perf_counter() - start, min(last)


# ---------------------------------------------------------------------------
# results and the table
# ---------------------------------------------------------------------------

@dataclass
class Row:
    """One workload at one thread count: each contender's median seconds."""

    section: str
    workload: str
    threads: int
    times: Dict[str, Optional[float]] = field(default_factory=dict)
    note: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def speedups(self) -> Dict[str, Optional[float]]:
        """fastnn's speed-up over each other contender (> 1: fastnn faster)."""
        base = self.times.get("fastnn")
        out: Dict[str, Optional[float]] = {}
        for name in CONTENDERS[1:]:
            other = self.times.get(name)
            out[name] = other / base if (base and other) else None
        return out

    def as_dict(self) -> Dict[str, Any]:
        return {"section": self.section, "workload": self.workload, "threads": self.threads,
                "times_s": self.times, "speedup_fastnn_over": self.speedups(),
                "note": self.note, **self.extra}


def fmt_time(s: Optional[float]) -> str:
    """Seconds in a readable unit, or '-' for a missing figure."""
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_ratio(r: Optional[float]) -> str:
    return "-" if r is None else f"{r:.2f}x"


def table(rows: List[Row], markdown: bool = False) -> str:
    """The results as an aligned text table (or a Markdown one)."""
    head = ["workload", "thr", "fastnn", "numpy", "torch", "torch fused",
            "vs numpy", "vs torch", "vs fused", "note"]
    body = []
    for r in rows:
        sp = r.speedups()
        body.append([r.workload, str(r.threads), fmt_time(r.times.get("fastnn")),
                     fmt_time(r.times.get("numpy")), fmt_time(r.times.get("torch")),
                     fmt_time(r.times.get("torch_fused")), fmt_ratio(sp["numpy"]),
                     fmt_ratio(sp["torch"]), fmt_ratio(sp["torch_fused"]), r.note])
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in body]
    return "\n".join(lines)
