"""Data-parallel training over MPI (fastnn.distributed).

Two kinds of test:

* In-process: MPIReplica's bookkeeping (sharding, gradient buckets and weighting,
  the host-copy path of non-CPU backends, metric sums, start-up checks, the random
  streams, the timeout guard) driven through a fake set of collectives that plays
  the other ranks. These need neither mpi4py nor mpiexec.
* Launched: ``mpiexec -n 2 python tests/mpi_scripts/<script>.py`` with the mpiexec
  of this Python environment (pip's ``mpich``) or $FASTNN_MPIEXEC; skipped when
  mpi4py or mpiexec is missing. They check agreement with a single process, identical
  weights on every rank, and that a failing, dying or stalled rank ends the job.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import fastnn
from fastnn import distributed
from fastnn.distributed import MPIReplica
from fastnn.utils import get_rng_state, global_rng, set_random_seed, set_rng_state

# Ranks import the same fastnn as this process (the installed one in CI) and run
# outside the repository root, whose unbuilt sources would otherwise shadow it.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastnn.__file__)))
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mpi_scripts")


# ========================================================= in-process: fakes
class FakeRequest:
    def __init__(self, done: Any = None, never: bool = False):
        self._done, self._never, self.completed = done, never, False

    def Test(self) -> bool:
        if self._never:
            return False
        if not self.completed:
            if self._done is not None:
                self._done()
            self.completed = True
        return True

    def Wait(self) -> None:
        if self._never:
            raise AssertionError("waited forever on a request that never completes")
        self.Test()


class FakeCollectives:
    """Plays rank ``rank`` of ``size``; the other ranks are simulated.

    ``peer_grads``: what the other ranks together add to each gradient element.
    ``root``: what rank 0 broadcasts when this is not rank 0 (list of arrays, objects).
    """

    def __init__(self, rank: int = 0, size: int = 2, peer_grads: Optional[np.ndarray] = None,
                 peer_sums: Optional[np.ndarray] = None, others: Optional[List[Dict]] = None,
                 root_arrays: Optional[List[np.ndarray]] = None,
                 root_objects: Optional[List[Any]] = None, never_complete: bool = False):
        self.rank, self.size = rank, size
        self.peer_grads, self.peer_sums = peer_grads, peer_sums
        self.others = others
        self.root_arrays = list(root_arrays or [])
        self.root_objects = list(root_objects or [])
        self.never_complete = never_complete
        self.base: Optional[np.ndarray] = None  # the buffer buckets are views of
        self.buckets: List[Tuple[int, int]] = []
        self.aborted: Optional[int] = None

    def allgather(self, obj: Any) -> List[Any]:
        others = self.others if self.others is not None else [obj] * (self.size - 1)
        result = list(others)
        result.insert(self.rank, obj)
        return result

    def bcast(self, obj: Any) -> Any:
        return obj if self.rank == 0 else self.root_objects.pop(0)

    def bcast_array(self, arr: np.ndarray) -> None:
        if self.rank != 0:
            arr[...] = self.root_arrays.pop(0)

    def _offset(self, arr: np.ndarray) -> int:
        assert self.base is not None and np.shares_memory(arr, self.base)
        return (arr.ctypes.data - self.base.ctypes.data) // arr.itemsize

    def iallreduce_sum(self, arr: np.ndarray) -> FakeRequest:
        lo = self._offset(arr)
        self.buckets.append((lo, lo + arr.size))

        def done() -> None:
            if self.peer_grads is not None:
                arr[...] += self.peer_grads[lo:lo + arr.size]
        return FakeRequest(done, self.never_complete)

    def allreduce_sum(self, arr: np.ndarray) -> FakeRequest:
        def done() -> None:
            if self.peer_sums is not None:
                arr[...] += self.peer_sums
        return FakeRequest(done, self.never_complete)

    def abort(self, code: int) -> None:
        self.aborted = code


class HostBackend:
    """The backend operations MPIReplica uses, on NumPy arrays."""

    name = "fake-cpu"

    def scale_(self, x: np.ndarray, s: float) -> None:
        x *= np.float32(s)

    def to_numpy(self, arr: Any) -> np.ndarray:
        return arr

    def asarray(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True)

    def copy_(self, dst: np.ndarray, src: np.ndarray) -> None:
        dst[...] = src


class DeviceArray:
    """Stands for a device array: not a NumPy array, reachable only through the backend."""

    def __init__(self, data: np.ndarray):
        self._data = data
        self.shape = data.shape

    def __getitem__(self, key: Any) -> "DeviceArray":
        return DeviceArray(self._data[key])


class DeviceBackend:
    name = "fake-device"

    def __init__(self) -> None:
        self.uploads = 0

    def scale_(self, x: DeviceArray, s: float) -> None:
        x._data *= np.float32(s)

    def to_numpy(self, arr: DeviceArray) -> np.ndarray:
        return np.array(arr._data, copy=True)

    def asarray(self, host: np.ndarray) -> DeviceArray:
        self.uploads += 1
        return DeviceArray(np.array(host, copy=True))

    def copy_(self, dst: DeviceArray, src: DeviceArray) -> None:
        dst._data[...] = src._data


class FakeModel:
    def __init__(self, grads: Any, backend: Any):
        self.grads, self.backend = grads, backend


# A flat buffer of five weights, as a model lays them out (first layer first).
SEGMENTS = [(0, 5), (5, 300), (305, 7), (312, 1000), (1312, 3)]
TOTAL = 1315


def _grads(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=TOTAL).astype(np.float32)


def _replica(coll: FakeCollectives, bucket_elems: int) -> MPIReplica:
    rep = MPIReplica(coll, bucket_mb=bucket_elems * 4 / (1 << 20))
    assert rep.bucket_elems == bucket_elems
    rep._size = TOTAL
    return rep


def _run_step(rep: MPIReplica, model: Any, order: List[Tuple[int, int]],
              local: int, total: int) -> List[int]:
    """One step's hook calls; returns how many buckets were out after each segment."""
    rep.begin_step(model, local, total)
    out = []
    for offset, size in order:
        rep.gradients_ready(model, offset, size)
        out.append(len(rep._coll.buckets))
    rep.finish_gradients(model)
    return out


def test_importing_fastnn_does_not_load_mpi4py():
    code = ("import sys, fastnn, fastnn.distributed; "
            "assert 'mpi4py' not in sys.modules, 'mpi4py was imported'")
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=SCRIPTS, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- sharding
@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_shard_matches_array_split(size):
    for n in (1, 2, 3, 17, 32, 33, 129, 1000):
        idx = np.random.default_rng(n).permutation(n)
        for r in range(size):
            rep = MPIReplica(FakeCollectives(rank=r, size=size))
            expected = np.array_split(idx, size)[r]
            lo, hi = rep.shard_range(n)
            np.testing.assert_array_equal(idx[lo:hi], expected)
            got = rep.shard(idx)
            rep.finish_gradients(FakeModel(np.zeros(0, np.float32), HostBackend()))
            if len(expected):
                np.testing.assert_array_equal(got, expected)
                assert not rep._phantom
            else:
                # An empty share trains on one row with weight zero.
                assert len(got) == 1 and got[0] == idx[-1] and rep._phantom


def test_empty_share_has_zero_weight():
    coll = FakeCollectives(rank=2, size=3, peer_grads=_grads(2))
    rep = _replica(coll, 10_000)
    grads = _grads(1)
    coll.base = grads
    assert len(rep.shard(np.arange(2))) == 1
    _run_step(rep, FakeModel(grads, HostBackend()), SEGMENTS[::-1], 1, 2)
    np.testing.assert_array_equal(grads, _grads(2))


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("bucket_elems", [1, 250, 1000, 1310, 100_000])
def test_buckets_cover_the_buffer_once_and_average(bucket_elems):
    mine, peers = _grads(1), _grads(2)
    coll = FakeCollectives(rank=1, size=3, peer_grads=peers)
    rep = _replica(coll, bucket_elems)
    grads = mine.copy()
    coll.base = grads
    out = _run_step(rep, FakeModel(grads, HostBackend()), SEGMENTS[::-1], 17, 50)

    expected = mine.astype(np.float64) * (17 / 50) + peers
    np.testing.assert_allclose(grads, expected, rtol=1e-6, atol=1e-6)
    # Buckets are contiguous, run from the end of the buffer to its start, and
    # together cover every element exactly once.
    hi = TOTAL
    for lo, top in coll.buckets:
        assert top == hi and lo < top
        hi = lo
    assert hi == 0
    if bucket_elems <= 1000:
        # Exchange starts before backward has finished: overlap.
        assert out[-2] >= 1
        for lo, top in coll.buckets[:-1]:
            assert top - lo >= bucket_elems
    if bucket_elems >= TOTAL:
        assert len(coll.buckets) == 1


def test_out_of_order_and_unreported_segments():
    # A functional graph can finish a shared layer late; a layer backward never
    # reaches reports nothing. Both still end up weighted and summed.
    mine, peers = _grads(3), _grads(4)
    coll = FakeCollectives(rank=0, size=2, peer_grads=peers)
    rep = _replica(coll, 200)
    grads = mine.copy()
    coll.base = grads
    order = [SEGMENTS[4], SEGMENTS[1], SEGMENTS[3], SEGMENTS[0]]  # (305, 7) never
    _run_step(rep, FakeModel(grads, HostBackend()), order, 3, 7)
    np.testing.assert_allclose(grads, mine.astype(np.float64) * (3 / 7) + peers,
                               rtol=1e-6, atol=1e-6)
    covered = sorted(coll.buckets)
    assert covered[0][0] == 0 and covered[-1][1] == TOTAL
    assert all(a[1] == b[0] for a, b in zip(covered, covered[1:]))


def test_non_numpy_backend_goes_through_a_host_buffer():
    mine, peers = _grads(5), _grads(6)
    backend = DeviceBackend()
    coll = FakeCollectives(rank=1, size=2, peer_grads=peers)
    rep = _replica(coll, 400)
    device_grads = DeviceArray(mine.copy())
    rep._host = np.full(TOTAL, np.nan, np.float32)
    coll.base = rep._host
    _run_step(rep, FakeModel(device_grads, backend), SEGMENTS[::-1], 5, 9)
    np.testing.assert_allclose(device_grads._data, mine.astype(np.float64) * (5 / 9) + peers,
                               rtol=1e-6, atol=1e-6)
    assert backend.uploads == 1  # one upload per step, not one per bucket


def test_second_step_starts_afresh():
    coll = FakeCollectives(rank=0, size=2, peer_grads=np.zeros(TOTAL, np.float32))
    rep = _replica(coll, 300)
    grads = _grads(7)
    coll.base = grads
    model = FakeModel(grads, HostBackend())
    _run_step(rep, model, SEGMENTS[::-1], 1, 2)
    first = len(coll.buckets)
    grads[...] = _grads(8)
    _run_step(rep, model, SEGMENTS[::-1], 1, 2)
    assert len(coll.buckets) == 2 * first
    np.testing.assert_allclose(grads, _grads(8) * 0.5, rtol=1e-6)


def test_single_rank_leaves_gradients_alone():
    coll = FakeCollectives(rank=0, size=1)
    rep = _replica(coll, 100)
    grads = _grads(9)
    coll.base = grads
    _run_step(rep, FakeModel(grads, HostBackend()), SEGMENTS[::-1], 32, 32)
    np.testing.assert_array_equal(grads, _grads(9))
    assert coll.buckets == []
    np.testing.assert_array_equal(rep.reduce_sums(np.array([1.5, 2.0])), [1.5, 2.0])


def test_reduce_sums_adds_the_other_ranks():
    coll = FakeCollectives(rank=0, size=4, peer_sums=np.array([10.25, -3.0, 7.0]))
    rep = MPIReplica(coll)
    values = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    out = rep.reduce_sums(values)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [11.25, -1.0, 10.0])
    np.testing.assert_array_equal(values, [1.0, 2.0, 3.0])


def test_timeout_aborts_the_job():
    coll = FakeCollectives(rank=1, size=2, never_complete=True)
    rep = MPIReplica(coll, timeout=0.05)
    with pytest.raises(RuntimeError, match="timed out"):
        rep.reduce_sums(np.array([1.0]))
    assert coll.aborted == 1


@pytest.mark.parametrize("kwargs", [{"bucket_mb": 0}, {"bucket_mb": -1.0},
                                    {"bucket_mb": float("nan")}, {"timeout": -2.0}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        MPIReplica(FakeCollectives(), **kwargs)


def test_bad_environment_settings(monkeypatch):
    monkeypatch.setenv("FASTNN_MPI_BUCKET_MB", "lots")
    with pytest.raises(ValueError, match="FASTNN_MPI_BUCKET_MB"):
        MPIReplica(FakeCollectives())
    monkeypatch.setenv("FASTNN_MPI_BUCKET_MB", "0.5")
    assert MPIReplica(FakeCollectives()).bucket_elems == (1 << 19) // 4
    monkeypatch.setenv("FASTNN_MPI_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="FASTNN_MPI_TIMEOUT"):
        MPIReplica(FakeCollectives())


# ----------------------------------------------------------- random streams
def test_steps_draw_from_rank_streams_and_leave_the_shared_one_alone():
    set_random_seed(11)
    before = get_rng_state()
    draws = []
    for r in range(2):
        set_rng_state(before)
        rep = MPIReplica(FakeCollectives(rank=r, size=2))
        rep.shard(np.arange(8))
        draws.append(global_rng().random(6))
        rep.finish_gradients(FakeModel(np.zeros(0, np.float32), HostBackend()))
        # The shared generator is exactly where it was: shuffles agree across ranks.
        assert get_rng_state() == before
    assert not np.allclose(draws[0], draws[1])
    # Reproducible: the same shared state and rank give the same stream.
    set_rng_state(before)
    rep = MPIReplica(FakeCollectives(rank=1, size=2))
    rep.shard(np.arange(8))
    np.testing.assert_array_equal(global_rng().random(6), draws[1])
    rep.finish_gradients(FakeModel(np.zeros(0, np.float32), HostBackend()))


# ------------------------------------------------------- start-up checks
def _small_model(seed: int = 1, units: int = 6):
    import fastnn
    from fastnn.layers import Dense
    set_random_seed(seed)
    model = fastnn.Sequential([Dense(units, activation="relu", input_shape=(4,)),
                               Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model._ensure_built()
    return model


def test_begin_fit_names_what_differs_and_where():
    model = _small_model()
    sig = distributed._signature(model, 300, 32)
    other = dict(sig)
    other["training-set length"] = 299
    rep = MPIReplica(FakeCollectives(rank=0, size=3, others=[sig, other]))
    with pytest.raises(ValueError, match=r"training-set length: rank 0 has 300, rank 2 has 299"):
        rep.begin_fit(model, 300, 32)


def test_signature_tells_architectures_apart_but_not_names():
    a, b, c = _small_model(1), _small_model(2), _small_model(1, units=7)
    sa, sb, sc = (distributed._signature(m, 10, 2) for m in (a, b, c))
    assert sa == sb  # other weights and auto-generated layer names: same model
    differing = {k for k in sa if sa[k] != sc[k]}
    assert "number of parameters" in differing
    assert "architecture (layer types, configs and weight shapes)" in differing
    import fastnn
    d = _small_model(1)
    d.compile(optimizer=fastnn.optimizers.Adam(learning_rate=0.5),
              loss="sparse_categorical_crossentropy")
    assert distributed._signature(d, 10, 2)["optimizer"] != sa["optimizer"]
    assert distributed._signature(a, 10, 3)["batch size"] != sa["batch size"]


def test_batch_smaller_than_world_is_refused():
    model = _small_model()
    rep = MPIReplica(FakeCollectives(rank=0, size=4))
    with pytest.raises(ValueError, match="batch_size=3 is smaller than the number of ranks"):
        rep.begin_fit(model, 100, 3)


def test_begin_fit_takes_rank0_weights_and_generator():
    root = _small_model(1)
    model = _small_model(2)
    assert not np.array_equal(root.params, model.params)
    set_random_seed(99)
    root_rng = get_rng_state()
    set_random_seed(5)
    coll = FakeCollectives(rank=1, size=2,
                           root_arrays=[np.array(root.params), np.array(root.state)],
                           root_objects=[0, root_rng])
    rep = MPIReplica(coll)
    rep.begin_fit(model, 64, 16)
    np.testing.assert_array_equal(model.params, root.params)
    assert get_rng_state() == root_rng
    assert not coll.root_arrays and not coll.root_objects


# ================================================================ launched
def _mpiexec() -> Optional[List[str]]:
    env = os.environ.get("FASTNN_MPIEXEC")
    if env:
        return env.split()
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    path = here if os.access(here, os.X_OK) else shutil.which("mpiexec")
    if path is None:
        return None
    cmd = [path]
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    if "Open MPI" in version or "OpenRTE" in version:
        cmd += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return cmd


def _have_mpi4py() -> bool:
    try:
        return importlib.util.find_spec("mpi4py") is not None
    except (ImportError, ValueError):
        return False


MPIEXEC = _mpiexec() if _have_mpi4py() else None
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="mpi4py or mpiexec is not installed "
                               "(pip install mpi4py mpich)")


def _launch(script: str, args: List[str], timeout: float = 120.0,
            env: Optional[Dict[str, str]] = None) -> Tuple[int, str, str, float]:
    """Runs a 2-rank job; kills its whole process group if it outlives ``timeout``."""
    full_env = dict(os.environ)
    full_env.update({"OMP_NUM_THREADS": "1", "FASTNN_DEVICE": "cpu",
                     "PYTHONPATH": PACKAGE_PARENT + os.pathsep + full_env.get("PYTHONPATH", "")})
    full_env.update(env or {})
    cmd = MPIEXEC + ["-n", "2", sys.executable, os.path.join(SCRIPTS, script)] + args
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=full_env, cwd=SCRIPTS, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script}: the job hung for {timeout:.0f} s\nstdout:\n{out}\n"
                    f"stderr:\n{err}")
    return proc.returncode, out, err, time.monotonic() - t0


def _compare(tmp_path, n: int, batch: int, epochs: int = 2,
             dropout: float = 0.0) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    rc, out, err, _ = _launch("train_compare.py",
                              [str(tmp_path), str(n), str(batch), str(epochs), str(dropout)])
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    with np.load(tmp_path / "result.npz") as f:
        arrays = dict(f)
    with open(tmp_path / "result.json") as f:
        info = json.load(f)
    assert info["size"] == 2
    # Every rank ends with bit-identical weights.
    assert len(set(info["digests"])) == 1 and info["digests"][0] == info["in_sync"]
    return arrays, info


def _assert_weights_match(arrays: Dict[str, np.ndarray]) -> None:
    n = sum(k.startswith("single_") for k in arrays)
    assert n == 6
    for i in range(n):
        np.testing.assert_allclose(arrays[f"dist_{i}"], arrays[f"single_{i}"],
                                   rtol=1e-4, atol=1e-5, err_msg=f"weight {i}")


@needs_mpi
@pytest.mark.parametrize("n,batch", [
    (600, 32),   # every global batch splits evenly (16 + 16; last 12 + 12)
    (601, 27),   # uneven shares (14 + 13; last 4 + 3)
    (577, 32),   # the last global batch has one row: rank 1's share is empty
])
def test_two_ranks_match_one_process(tmp_path, n, batch):
    arrays, info = _compare(tmp_path, n, batch)
    # Rank 1 built its model from another seed: matching the single-process run
    # means rank 0's weights and generator state reached it.
    _assert_weights_match(arrays)


@needs_mpi
@pytest.mark.parametrize("n,batch", [(600, 32), (601, 27)])
def test_two_ranks_report_the_same_losses(tmp_path, n, batch):
    _, info = _compare(tmp_path, n, batch)
    single, dist = info["single_history"], info["dist_history"]
    assert set(single) == set(dist) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    for key in single:
        np.testing.assert_allclose(dist[key], single[key], rtol=1e-4, atol=1e-6, err_msg=key)


@needs_mpi
def test_repeatable_for_any_thread_count(tmp_path):
    # Same rank count: the same weights, bit for bit, run after run and whatever
    # the threads per rank (kernel reductions do not depend on the thread count).
    digests = []
    for i, threads in enumerate(("1", "1", "2")):
        out = tmp_path / f"run{i}"
        out.mkdir()
        rc, _, err, _ = _launch("train_compare.py", [str(out), "601", "27", "1"],
                                env={"OMP_NUM_THREADS": threads})
        assert rc == 0, err
        with open(out / "result.json") as f:
            digests += json.load(f)["digests"]
    assert len(set(digests)) == 1


@needs_mpi
def test_dropout_trains_in_sync(tmp_path):
    arrays, info = _compare(tmp_path, 300, 32, epochs=1, dropout=0.3)
    losses = info["dist_history"]["loss"]
    assert len(losses) == 1 and np.isfinite(losses[0])


@needs_mpi
def test_a_rank_that_raises_ends_the_job(tmp_path):
    rc, out, err, _ = _launch("fail_raise.py", [str(tmp_path)], timeout=90)
    assert rc != 0
    assert "fastnn.distributed: rank 1 failed: RuntimeError: deliberate failure" in err
    assert "finished training" not in out


@needs_mpi
def test_mismatched_data_sizes_are_refused(tmp_path):
    rc, out, err, _ = _launch("mismatch.py", [str(tmp_path)], timeout=90)
    assert rc != 0
    assert "training-set length: rank 0 has 300, rank 1 has 299" in err
    assert "trained despite" not in out


@needs_mpi
def test_a_killed_rank_ends_the_job(tmp_path):
    rc, out, err, _ = _launch("fail_kill.py", [str(tmp_path)], timeout=90)
    assert rc != 0
    assert "finished training" not in out


@needs_mpi
def test_a_stalled_rank_trips_the_timeout(tmp_path):
    rc, out, err, elapsed = _launch("fail_stall.py", [str(tmp_path)], timeout=90,
                                    env={"FASTNN_MPI_TIMEOUT": "3"})
    assert rc != 0
    assert "rank 0 waited more than 3 s" in err
    assert "finished training" not in out


def test_batchnorm_moving_statistics_stay_identical_across_ranks(tmp_path):
    rc, out, err, _ = _launch("train_batchnorm.py", [str(tmp_path)])
    assert rc == 0, f"stdout:\n{out}\nstderr:\n{err}"
    with open(tmp_path / "result.json") as f:
        digests = json.load(f)["digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
