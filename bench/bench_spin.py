"""NumPy right after a fastnn kernel: does OpenMP's spin-waiting slow it down?

Runs, in fresh interpreters that differ only in the OpenMP wait settings, a loop of
(fastnn SGEMM on 2 threads, then a NumPy matmul of the same size) and reports the
median NumPy time next to NumPy alone. fastnn's default sets GOMP_SPINCOUNT=10000
when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set.

    python bench/bench_spin.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

CHILD = r"""
import json, time, numpy as np, fastnn
from fastnn import _C
fastnn.set_num_threads(2)
a = np.random.rand(256, 256).astype(np.float32); c = np.empty_like(a)
def med(f, n=200):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return sorted(ts)[n // 2] * 1e6
alone = med(lambda: a @ a)
def after():
    _C.sgemm(a, a, c)
    t = time.perf_counter(); a @ a; return time.perf_counter() - t
ts = sorted(after() for _ in range(200))
print(json.dumps({"numpy_alone_us": alone, "numpy_after_fastnn_us": ts[100] * 1e6}))
"""

SETTINGS = {
    "fastnn default (GOMP_SPINCOUNT=10000)": {},
    "libgomp default (GOMP_SPINCOUNT=300000)": {"GOMP_SPINCOUNT": "300000"},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "GOMP_SPINCOUNT=30000": {"GOMP_SPINCOUNT": "30000"},
    "GOMP_SPINCOUNT=3000": {"GOMP_SPINCOUNT": "3000"},
    "GOMP_SPINCOUNT=1000": {"GOMP_SPINCOUNT": "1000"},
    "OMP_WAIT_POLICY=active": {"OMP_WAIT_POLICY": "active"},
}


def main() -> int:
    print(f"{'setting':42s} {'numpy alone':>12s} {'after fastnn':>13s} {'slowdown':>9s}")
    for name, extra in SETTINGS.items():
        env = {k: v for k, v in os.environ.items()
               if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
        env.update(extra)
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                             text=True, check=True, cwd=os.path.dirname(__file__)).stdout
        r = json.loads(out)
        print(f"{name:42s} {r['numpy_alone_us']:10.1f}us {r['numpy_after_fastnn_us']:11.1f}us "
              f"{r['numpy_after_fastnn_us'] / r['numpy_alone_us']:8.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
