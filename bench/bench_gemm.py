"""SGEMM throughput: fastnn's fnn_sgemm against NumPy's BLAS, side by side.

Each case runs the two libraries by turns in one process at the same thread
count and reports the median and the best GFLOP/s of 6-15 samples each, and
their ratios.  Run on a quiet machine: on a shared 2-core machine any other
busy process wrecks 2-thread medians (the best column then still says what
the code can do).  Ratios measured side by side are the figures to trust.

    env -u OPENBLAS_CORETYPE python bench/bench_gemm.py [--threads 1 2] [--json out.json]
        [--lib path/to/libgemm.so] [--quick] [--only cubes|mlp] [--sizes N ...]

By default the built extension (``fastnn._C``) is used; ``--lib`` instead
loads a standalone shared library exporting ``fnn_sgemm`` and
``fnn_set_num_threads`` (handy while the extension is not built).
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover - optional
    threadpool_limits = None

# Pause before each run of samples so the other library's threads sleep.
SETTLE_S = 0.25

# (name, trans_a, trans_b, M, N, K)
CUBES = [(f"{n}^3", 0, 0, n, n, n) for n in (256, 512, 1024, 2048)]
MLP = [
    ("x@W 128x784 @ 784x128", 0, 0, 128, 128, 784),
    ("x^T@dz 784x128, K=128", 1, 0, 784, 128, 128),
    ("dz@W^T 128x784, K=128", 0, 1, 128, 784, 128),
    ("h@W2 128x128 @ 128x10", 0, 0, 128, 10, 128),
    ("h^T@dz 128x10, K=128", 1, 0, 128, 10, 128),
    ("dz@W2^T 128x128, K=10", 0, 1, 128, 128, 10),
]


class CtypesGemm:
    """fnn_sgemm from a standalone shared library."""

    def __init__(self, path: str) -> None:
        lib = ctypes.CDLL(path)
        f = lib.fnn_sgemm
        f.restype = None
        f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64,
                      ctypes.c_int64, ctypes.c_int64, ctypes.c_float,
                      ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                      ctypes.c_int64, ctypes.c_float, ctypes.c_void_p,
                      ctypes.c_int64]
        self._f = f
        self._set = lib.fnn_set_num_threads
        self._set.argtypes = [ctypes.c_int]

    def set_threads(self, n: int) -> None:
        self._set(n)

    def call(self, ta: int, tb: int, a: np.ndarray, b: np.ndarray,
             c: np.ndarray) -> Callable[[], None]:
        M, N = c.shape
        K = a.shape[0] if ta else a.shape[1]
        args = (ta, tb, M, N, K, 1.0, a.ctypes.data, a.shape[1],
                b.ctypes.data, b.shape[1], 0.0, c.ctypes.data, c.shape[1])
        f = self._f
        return lambda: f(*args)


class ExtGemm:
    """fnn_sgemm through the Cython extension."""

    def __init__(self) -> None:
        try:
            from fastnn import _C
        except ImportError:
            # Run from a source tree built in place: bench/.. holds fastnn/.
            sys.path.insert(0, os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))))
            from fastnn import _C
        self._C = _C

    def set_threads(self, n: int) -> None:
        self._C.set_num_threads(n)

    def call(self, ta: int, tb: int, a: np.ndarray, b: np.ndarray,
             c: np.ndarray) -> Callable[[], None]:
        f = self._C.sgemm
        ta, tb = bool(ta), bool(tb)
        return lambda: f(a, b, c, trans_a=ta, trans_b=tb)


def _time_pair(f1: Callable[[], None], f2: Callable[[], None],
               budget: float) -> Tuple[List[float], List[float]]:
    """Seconds per call of f1 and f2: one list of samples each.

    Each sample is a batch of calls lasting >= 50 ms.  The libraries take
    turns in runs of several samples (three turns each), with a pause before
    every run: both keep idle worker threads spinning for a while after a
    call (OpenBLAS for ~0.1 s), and on a 2-core machine sample-by-sample
    alternation measurably upset the thread placement of whichever library
    ran next, sometimes for whole runs.
    """
    f1(), f2()
    t0 = time.perf_counter()
    f1()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(0.05 / once))
    per = max(2, min(5, int(budget / (2 * 3 * once * inner))))
    t1: List[float] = []
    t2: List[float] = []
    for _ in range(3):
        for f, ts in ((f1, t1), (f2, t2)):
            time.sleep(SETTLE_S)
            f()                       # wake this library's threads
            for _ in range(per):
                s = time.perf_counter()
                for _ in range(inner):
                    f()
                ts.append((time.perf_counter() - s) / inner)
    return t1, t2


Case = Tuple[str, int, int, int, int, int]


def run(gemm: "CtypesGemm | ExtGemm", threads: List[int], cases: List[Case],
        budget: float) -> List[Dict]:
    """Times every case at every thread count and prints one row each.

    Args:
        gemm: the fastnn side.
        threads: thread counts, applied to both libraries.
        cases: (name, trans_a, trans_b, M, N, K).
        budget: rough seconds of timed calls per library and row.

    Returns:
        One dict per printed row (the JSON records).
    """
    rng = np.random.default_rng(0)
    operands = []
    for name, ta, tb, M, N, K in cases:
        a = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
        b = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
        operands.append((a, b))
    rows = []
    # One thread count at a time: changing OpenBLAS's thread count between
    # cases upset its next runs.
    for nt in threads:
        gemm.set_threads(nt)
        limits = (threadpool_limits(limits=nt, user_api="blas")
                  if threadpool_limits is not None else contextlib.nullcontext())
        with limits:
            for (name, ta, tb, M, N, K), (a, b) in zip(cases, operands):
                rows.append(_run_case(gemm, nt, name, ta, tb, M, N, K, a, b,
                                      budget))
    return rows


def _run_case(gemm: "CtypesGemm | ExtGemm", nt: int, name: str, ta: int,
              tb: int, M: int, N: int, K: int, a: np.ndarray, b: np.ndarray,
              budget: float) -> Dict:
    c1 = np.empty((M, N), np.float32)
    c2 = np.empty((M, N), np.float32)
    opa = a.T if ta else a
    opb = b.T if tb else b
    flops = 2.0 * M * N * K
    fnn = gemm.call(ta, tb, a, b, c1)

    def npy() -> None:
        np.matmul(opa, opb, out=c2)

    s1, s2 = _time_pair(fnn, npy, budget)
    tf, tn = statistics.median(s1), statistics.median(s2)
    err = float(np.max(np.abs(c1 - c2)) /
                max(1e-30, float(np.max(np.abs(c2)))))
    row = dict(case=name, trans_a=ta, trans_b=tb, M=M, N=N, K=K,
               threads=nt, fastnn_us=tf * 1e6, numpy_us=tn * 1e6,
               fastnn_gflops=flops / tf / 1e9,
               numpy_gflops=flops / tn / 1e9, ratio=tn / tf,
               fastnn_best_gflops=flops / min(s1) / 1e9,
               numpy_best_gflops=flops / min(s2) / 1e9,
               best_ratio=min(s2) / min(s1), samples=len(s1),
               max_rel_diff=err)
    print(f"{name:30s} {nt:>2d} {row['fastnn_gflops']:7.1f} "
          f"{row['numpy_gflops']:7.1f} {row['ratio']:6.2f}   "
          f"{row['fastnn_best_gflops']:7.1f} "
          f"{row['numpy_best_gflops']:7.1f} {row['best_ratio']:6.2f}",
          flush=True)
    return row


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--lib", help="standalone libgemm.so instead of fastnn._C")
    p.add_argument("--json", help="write results here")
    p.add_argument("--quick", action="store_true",
                   help="less time per case, no 2048^3")
    p.add_argument("--only", choices=["cubes", "mlp"], help="one group only")
    p.add_argument("--sizes", type=int, nargs="+",
                   help="cube sizes to run (default 256 512 1024 2048)")
    args = p.parse_args(argv)

    if "OPENBLAS_CORETYPE" in os.environ:
        print("note: OPENBLAS_CORETYPE is set; unset it for a fair comparison",
              file=sys.stderr)
    if threadpool_limits is None:
        print("note: threadpoolctl missing; NumPy uses its default threads",
              file=sys.stderr)
    gemm = CtypesGemm(args.lib) if args.lib else ExtGemm()
    cases = []
    if args.only != "mlp":
        if args.sizes:
            cases += [(f"{n}^3", 0, 0, n, n, n) for n in args.sizes]
        else:
            cases += [c for c in CUBES if not (args.quick and c[3] == 2048)]
    if args.only != "cubes":
        cases += MLP
    budget = 0.3 if args.quick else 1.0
    print("GFLOP/s; ratio = numpy time / fastnn time (> 1: fastnn faster)")
    print(f"{'':30s} {'':2s} {'median':^22s}   {'best':^22s}")
    print(f"{'case':30s} {'thr':>2s} {'fastnn':>7s} {'numpy':>7s} {'ratio':>6s}   "
          f"{'fastnn':>7s} {'numpy':>7s} {'ratio':>6s}")
    rows = run(gemm, args.threads, cases, budget)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(machine=platform.processor() or platform.machine(),
                           numpy=np.__version__, results=rows), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
