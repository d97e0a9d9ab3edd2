"""Data-parallel training over MPI on one machine: ranks against threads.

    python bench/bench_mpi.py [--samples 60000] [--repeat 2] [--rounds 1] [--bind core]
                              [--json PATH]

Runs, one after another and each in fresh processes:

  * one epoch of the wide MLP (784-1024-1024-10, Adam, batch 128) in one process with
    1 and with 2 threads (plain ``fit``);
  * the same epoch with 2 ranks x 1 thread (``fit(..., distributed=True)``, global
    batch 128 = 64 rows per rank), recording how long each step waited for the
    gradient exchange after backward had finished (the exposed communication);
  * the allreduce of a float32 buffer of the model's gradient size (1,863,690 values,
    7.45 MB) between the 2 ranks: blocking in one piece, and in 4 MiB non-blocking
    buckets as fit sends it; reported as time, algorithm bandwidth (bytes / time) and
    bus bandwidth (2(N-1)/N x bytes / time, the ring's traffic per rank).

Prints a table and writes JSON (default bench/results/mpi.json). MNIST is read from
../shared/datasets/mnist (or $FASTNN_DATA) when present, otherwise random data of the
same shape is used: the time per epoch does not depend on the values.

The launcher is the mpiexec next to this Python (pip's mpich) unless --mpiexec says.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BATCH = 128
LAYERS = (784, 1024, 1024, 10)


def n_params() -> int:
    return sum(a * b + b for a, b in zip(LAYERS[:-1], LAYERS[1:]))


# ---------------------------------------------------------------- workers
def _load(samples: int) -> tuple:
    from fastnn.datasets import mnist
    for path in (os.environ.get("FASTNN_DATA") and os.path.join(os.environ["FASTNN_DATA"],
                                                                  "mnist"),
                 str(ROOT.parent / "shared" / "datasets" / "mnist")):
        if path and os.path.isdir(path):
            try:
                (x, y), _ = mnist.load_data(path)
                x = (x.reshape(len(x), -1)[:samples] / 255.0).astype(np.float32)
                return x, y[:samples].astype(np.int64), f"MNIST ({path})"
            except (OSError, ValueError):
                pass
    rng = np.random.default_rng(0)
    x = rng.random((samples, 784), dtype=np.float32)
    return x, rng.integers(0, 10, samples), "random data of MNIST's shape"


def _wide_mlp() -> Any:
    import fastnn
    from fastnn.layers import Dense
    from fastnn.utils import set_random_seed
    set_random_seed(0)
    model = fastnn.Sequential([Dense(LAYERS[1], activation="relu", input_shape=(LAYERS[0],)),
                               Dense(LAYERS[2], activation="relu"),
                               Dense(LAYERS[3], activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def worker_train(args: argparse.Namespace) -> Dict[str, Any]:
    """One epoch, timed; under mpiexec with --distributed, data-parallel."""
    import fastnn
    from fastnn import distributed
    x, y, source = _load(args.samples)
    model = _wide_mlp()
    rank, size, dist = 0, 1, None
    waits: List[float] = []
    if args.distributed:
        rank, size = distributed.init()

        class TimedReplica(distributed.MPIReplica):
            """Records how long each step waits for its gradients after backward."""

            def finish_gradients(self, model: Any) -> None:
                t0 = time.perf_counter()
                super().finish_gradients(model)
                waits.append(time.perf_counter() - t0)

        dist = TimedReplica()
        comm = distributed._mpi().COMM_WORLD
    # Warm-up: workspaces for the batch shapes, thread pools, page faults.
    model.fit(x[:8 * BATCH], y[:8 * BATCH], batch_size=BATCH, epochs=1, verbose=0,
              distributed=dist if dist is not None else False)
    times = []
    loss = float("nan")
    for _ in range(args.repeat):
        waits.clear()
        if dist is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        hist = model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0,
                         distributed=dist if dist is not None else False)
        if dist is not None:
            comm.Barrier()
        times.append(time.perf_counter() - t0)
        loss = float(hist.history["loss"][-1])
    steps = -(-len(x) // BATCH)
    result = {"ranks": size, "threads": fastnn.get_num_threads(), "samples": len(x),
              "data": source, "steps": steps, "epoch_s": statistics.median(times),
              "epoch_samples_s": times, "loss": loss}
    if waits:
        result["exposed_comm_ms_per_step"] = 1e3 * statistics.median(waits)
        result["exposed_comm_ms_mean"] = 1e3 * statistics.fmean(waits)
    if dist is not None:
        all_waits = comm.gather(result.get("exposed_comm_ms_per_step"), root=0)
        if rank == 0:
            result["exposed_comm_ms_per_step_by_rank"] = all_waits
    return result if rank == 0 else {}


def worker_allreduce(args: argparse.Namespace) -> Dict[str, Any]:
    from fastnn import distributed
    rank, size = distributed.init()
    MPI = distributed._mpi()
    comm = MPI.COMM_WORLD
    n = n_params()
    buf = np.random.default_rng(rank).random(n, dtype=np.float32)
    bucket = (4 << 20) // 4
    nbytes = 4 * n

    def blocking() -> None:
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def bucketed() -> None:
        reqs = []
        hi = n
        while hi > 0:  # from the end, as backward finishes the layers
            lo = max(0, hi - bucket)
            reqs.append(comm.Iallreduce(MPI.IN_PLACE, buf[lo:hi], op=MPI.SUM))
            hi = lo
        MPI.Request.Waitall(reqs)

    def small() -> None:  # latency: the epoch-end metric sums
        comm.Allreduce(MPI.IN_PLACE, buf[:3], op=MPI.SUM)

    out: Dict[str, Any] = {"ranks": size, "floats": n, "bytes": nbytes,
                           "mpi": MPI.Get_library_version().splitlines()[0].strip()}
    for name, fn, reps in (("blocking", blocking, args.reps), ("bucketed_4MiB", bucketed,
                                                               args.reps),
                           ("latency_3_values", small, 200)):
        for _ in range(3):
            fn()
        samples = []
        for _ in range(reps):
            comm.Barrier()
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        t = max(comm.allgather(statistics.median(samples)))  # the slowest rank's median
        entry = {"median_s": t}
        if name != "latency_3_values":
            entry["algbw_GBps"] = nbytes / t / 1e9
            entry["busbw_GBps"] = 2 * (size - 1) / size * nbytes / t / 1e9
        out[name] = entry
    return out if rank == 0 else {}


# ---------------------------------------------------------------- driver
def find_mpiexec(given: Optional[str]) -> Optional[List[str]]:
    if given:
        return given.split()
    here = Path(sys.executable).parent / "mpiexec"
    if os.access(here, os.X_OK):
        return [str(here)]
    found = shutil.which("mpiexec")
    return [found] if found else None


def run_worker(cmd: List[str], threads: int, timeout: float) -> Dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), FASTNN_DEVICE="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"{' '.join(cmd)} printed no result:\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1])


def machine() -> Dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import common
    return {"cpu": common.cpu_model(), "cores": os.cpu_count(),
            "load_average": common.load_average()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=60000, help="samples per epoch")
    parser.add_argument("--repeat", type=int, default=2, help="timed epochs per run")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs of each setting, taken in turn (the median is reported)")
    parser.add_argument("--reps", type=int, default=20, help="allreduce repetitions")
    parser.add_argument("--bind", default="", help="mpiexec -bind-to value (e.g. core)")
    parser.add_argument("--mpiexec", default=None, help="launcher command")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "mpi.json"))
    parser.add_argument("--worker", choices=("train", "allreduce"), help=argparse.SUPPRESS)
    parser.add_argument("--distributed", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        result = worker_train(args) if args.worker == "train" else worker_allreduce(args)
        if result:
            print(json.dumps(result), flush=True)
        return 0

    mpiexec = find_mpiexec(args.mpiexec)
    if mpiexec is None:
        print("no mpiexec found: pip install mpi4py mpich", file=sys.stderr)
        return 1
    me = [sys.executable, str(Path(__file__).resolve())]
    common_args = ["--samples", str(args.samples), "--repeat", str(args.repeat),
                   "--reps", str(args.reps)]
    launch = mpiexec + ["-n", "2"] + (["-bind-to", args.bind] if args.bind else [])
    timeout = 600 + 0.01 * args.samples * (args.repeat + 1)
    results: Dict[str, Any] = {"machine": machine(), "batch": BATCH, "model": list(LAYERS),
                               "params": n_params()}
    print(f"wide MLP {'-'.join(map(str, LAYERS))}, Adam, batch {BATCH}, "
          f"{args.samples} samples per epoch", flush=True)
    settings = {"1x1": (me + ["--worker", "train"], 1),
                "1x2": (me + ["--worker", "train"], 2),
                "2x1": (launch + me + ["--worker", "train", "--distributed"], 1)}
    # Settings take turns, round after round, so that a neighbour's burst of work
    # on a shared machine lands on all of them rather than on one.
    rounds: Dict[str, List[Dict[str, Any]]] = {key: [] for key in settings}
    for _ in range(args.rounds):
        for key, (cmd, threads) in settings.items():
            rounds[key].append(run_worker(cmd + common_args, threads, timeout))
    for key, runs in rounds.items():
        best = sorted(runs, key=lambda r: r["epoch_s"])[len(runs) // 2]  # the median run
        results[key] = dict(best, epoch_s_by_round=[r["epoch_s"] for r in runs])
    results["allreduce"] = run_worker(launch + me + ["--worker", "allreduce"] + common_args,
                                      1, timeout)

    one, two, ar = results["1x2"], results["2x1"], results["allreduce"]
    steps = one["steps"]
    print(f"data: {one['data']}")
    print(f"{'setting':<22}{'epoch s':>10}{'ms/step':>10}{'samples/s':>12}"
          f"{'comm wait ms/step':>20}")
    for label, r in (("1 rank x 1 thread", results["1x1"]), ("1 rank x 2 threads", one),
                     ("2 ranks x 1 thread", two)):
        wait = r.get("exposed_comm_ms_per_step")
        print(f"{label:<22}{r['epoch_s']:>10.2f}{1e3 * r['epoch_s'] / steps:>10.2f}"
              f"{r['samples'] / r['epoch_s']:>12.0f}"
              f"{'-' if wait is None else f'{wait:.2f}':>20}")
    ratio = one["epoch_s"] / two["epoch_s"]
    results["speedup_2x1_over_1x2"] = ratio
    print(f"2 ranks x 1 thread is {ratio:.2f}x the speed of 1 rank x 2 threads")
    print(f"allreduce of {ar['floats']} floats ({ar['bytes'] / 1e6:.2f} MB), 2 ranks:")
    for name in ("blocking", "bucketed_4MiB"):
        e = ar[name]
        print(f"  {name:<16}{1e3 * e['median_s']:>8.2f} ms  algbw {e['algbw_GBps']:.2f} GB/s"
              f"  busbw {e['busbw_GBps']:.2f} GB/s")
    print(f"  {'3 values':<16}{1e6 * ar['latency_3_values']['median_s']:>8.1f} us")
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
