"""Data-parallel training over MPI.

Launch one process per rank and let ``fit`` split every global batch across them::

    # train.py
    import fastnn
    model = ...; model.compile(...)
    model.fit(x, y, batch_size=256, epochs=5, distributed=True)

    $ mpiexec -n 4 python train.py

What happens in a distributed ``fit``:

* At the start, every rank checks that the others built the same model (architecture,
  parameter count, optimiser, loss) for the same training-set length and batch size;
  any difference is a ``ValueError`` naming the ranks and the values. Then rank 0's
  weights, state buffers, optimiser state and random-generator state are broadcast,
  so all ranks start identical and shuffle identically.
* ``batch_size`` is the *global* batch: each rank takes its contiguous share of every
  global batch (``numpy.array_split`` order), computes the mean gradient of its share,
  and the gradients are summed with allreduce, each weighted by its share of the rows.
  The result is the mean gradient of the global batch, so training matches one process
  with the same ``batch_size`` up to float rounding (the sum runs in a different order).
* The allreduce runs in buckets of the flat gradient buffer (``FASTNN_MPI_BUCKET_MB``,
  default 4): backward finishes layers from the last to the first, so the end of the
  buffer is final first; each full bucket starts a non-blocking ``Iallreduce`` while
  backward carries on with the layers in front of it.
* Every rank then takes the same fused optimiser step. Losses and metrics are summed
  over ranks before they are shown; validation data is split across ranks too. Only
  rank 0 prints; callbacks that write files should check ``model.replica.is_primary``
  (or ``fastnn.distributed.is_primary()``).

Threads: with OMP_NUM_THREADS unset, ranks that share a node's CPUs (no binding) split
them evenly at the start of ``fit``; set OMP_NUM_THREADS, or bind ranks to cores
(``mpiexec -bind-to core:4``), to choose yourself.

Results: the same rank count gives the same weights run after run and for any thread
count per rank; they differ from a single process, and from another rank count, only
by float rounding. With dropout, each rank draws its own masks, so dropout runs do not
reproduce a single process's (they are still repeatable for a given rank count).

Failures end the whole job instead of leaving the other ranks waiting: ``init()``
installs an exception hook that prints ``fastnn.distributed: rank R failed: ...`` and
calls ``MPI_Abort``. A rank killed by a signal is noticed by the launcher (mpiexec /
hydra ends the job; under Slurm use ``srun --kill-on-bad-exit=1``). Where a launcher
does not, ``FASTNN_MPI_TIMEOUT=<seconds>`` makes a rank abort the job when a gradient
or metric exchange waits longer than that.

mpi4py is imported on first use, never by ``import fastnn``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "MPIReplica", "abort", "barrier", "check_in_sync", "init", "is_primary", "rank",
    "replica", "world_size",
]

_DEFAULT_BUCKET_MB = 4.0
_hook_installed = False


# ----------------------------------------------------------------- MPI access
def _mpi() -> Any:
    """The mpi4py.MPI module (initialises MPI on first call)."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(
            "fastnn.distributed needs mpi4py and an MPI library: "
            "pip install 'fastnn[mpi]' (mpi4py plus the mpich runtime), or mpi4py "
            "built against the cluster's MPI") from exc
    return MPI


def init() -> Tuple[int, int]:
    """Starts MPI (if not yet started) and installs the abort-on-error hook.

    Safe to call more than once and on one rank only (it communicates with no one).

    Returns:
        (rank, world_size) of this process in MPI_COMM_WORLD.

    Raises:
        ImportError: when mpi4py is not installed.
    """
    MPI = _mpi()
    comm = MPI.COMM_WORLD
    _install_excepthook(comm)
    return comm.Get_rank(), comm.Get_size()


def rank() -> int:
    """This process's rank in MPI_COMM_WORLD (0 when not launched by mpiexec)."""
    return init()[0]


def world_size() -> int:
    """The number of ranks in MPI_COMM_WORLD (1 when not launched by mpiexec)."""
    return init()[1]


def is_primary() -> bool:
    """Whether this is rank 0: the rank that prints, logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Waits until every rank has called ``barrier``."""
    init()
    _mpi().COMM_WORLD.Barrier()


def abort(code: int = 1, message: Optional[str] = None) -> None:
    """Ends every rank of the job with exit status ``code`` (MPI_Abort).

    Use this instead of ``sys.exit`` to stop one rank in the middle of training:
    a plain exit leaves the other ranks waiting in the next gradient exchange.

    Args:
        code: the exit status of the job (non-zero).
        message: printed to stderr first, prefixed with this rank's number.
    """
    MPI = _mpi()
    if message:
        _tell(f"fastnn.distributed: rank {MPI.COMM_WORLD.Get_rank()}: {message}\n")
    MPI.COMM_WORLD.Abort(int(code))


# MPI_Abort tears the whole job down at once, while mpiexec forwards each rank's
# stderr through a pipe: in about one run in five the message that said why was
# lost (MPICH's launcher, two ranks on this machine). A moment's pause lets it through.
_ABORT_GRACE_S = 0.5


def _tell(message: str) -> None:
    """Writes message to stderr and gives the launcher time to forward it."""
    sys.stderr.write(message)
    sys.stderr.flush()
    time.sleep(_ABORT_GRACE_S)


def replica(bucket_mb: Optional[float] = None) -> "MPIReplica":
    """A replica over MPI_COMM_WORLD, as ``fit(..., distributed=True)`` uses.

    Args:
        bucket_mb: allreduce bucket size in MiB (default $FASTNN_MPI_BUCKET_MB, else 4).

    Returns:
        An MPIReplica; pass it as ``fit(..., distributed=replica)`` to choose settings.
    """
    init()
    return MPIReplica(None, bucket_mb=bucket_mb)


def _install_excepthook(comm: Any) -> None:
    """Makes an uncaught exception on any rank end the whole job."""
    global _hook_installed
    if _hook_installed:
        return
    previous = sys.excepthook
    rank_, size = comm.Get_rank(), comm.Get_size()

    def hook(exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            # The one line that matters goes first: the launcher may drop output
            # that is still in transit when the abort kills its forwarding.
            sys.stderr.write(f"fastnn.distributed: rank {rank_} failed: "
                             f"{exc_type.__name__}: {exc}\n")
            sys.stderr.flush()
            previous(exc_type, exc, tb)
            sys.stderr.flush()
            if size > 1:
                time.sleep(0.2)  # lets the launcher forward the traceback
        finally:
            if size > 1:
                comm.Abort(1)

    sys.excepthook = hook
    _hook_installed = True


# ---------------------------------------------------- the collectives we use
class _Collectives:
    """The few collectives MPIReplica needs, over an mpi4py communicator.

    Tests substitute an object with the same methods to run the replica logic
    in one process.
    """

    def __init__(self, comm: Any):
        self.MPI = _mpi()
        self.comm = comm
        self.rank = comm.Get_rank()
        self.size = comm.Get_size()

    def allgather(self, obj: Any) -> List[Any]:
        return self.comm.allgather(obj)

    def bcast(self, obj: Any) -> Any:
        return self.comm.bcast(obj, root=0)

    def bcast_array(self, arr: np.ndarray) -> None:
        self.comm.Bcast(arr, root=0)

    def iallreduce_sum(self, arr: np.ndarray) -> Any:
        """Starts an in-place sum of ``arr`` over ranks; returns a request."""
        return self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)

    def allreduce_sum(self, arr: np.ndarray) -> Any:
        """Starts the same for a small array (metrics); returns a request."""
        return self.comm.Iallreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)

    def node_affinities(self) -> List[Tuple[int, ...]]:
        """The CPU sets of the ranks on this node (for thread defaults)."""
        node = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED)
        try:
            mine = tuple(sorted(os.sched_getaffinity(0))) if hasattr(
                os, "sched_getaffinity") else tuple(range(os.cpu_count() or 1))
            return node.allgather(mine)
        finally:
            node.Free()

    def abort(self, code: int) -> None:
        self.comm.Abort(code)


def _timeout_from_env() -> Optional[float]:
    value = os.environ.get("FASTNN_MPI_TIMEOUT", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError(f"FASTNN_MPI_TIMEOUT must be a number of seconds, got {value!r}") \
            from None
    return seconds if seconds > 0 else None


def _bucket_mb_from_env() -> float:
    value = os.environ.get("FASTNN_MPI_BUCKET_MB", "").strip()
    if not value:
        return _DEFAULT_BUCKET_MB
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"FASTNN_MPI_BUCKET_MB must be a number, got {value!r}") from None


# ------------------------------------------------------------ model signature
def _strip_names(obj: Any) -> Any:
    """A config without 'name' entries: auto-generated layer names (dense_3) depend on
    how many layers a process built before, not on the architecture."""
    if isinstance(obj, dict):
        return {k: _strip_names(v) for k, v in obj.items() if k != "name"}
    if isinstance(obj, (list, tuple)):
        return [_strip_names(v) for v in obj]
    return obj


def _digest(obj: Any) -> str:
    # Objects JSON cannot write are represented by their type: a repr could hold an
    # address that differs between processes.
    text = json.dumps(obj, sort_keys=True, default=lambda o: type(o).__name__)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _architecture(model: Any) -> str:
    """A digest of each layer's type, config (names left out) and weight shapes."""
    layers = []
    for layer in model._compute_layers():
        try:
            config = _strip_names(layer.get_config())
        except Exception:  # noqa: BLE001 - a layer without a config still has weights
            config = None
        weights = [(spec.name, list(spec.shape), bool(spec.trainable))
                   for spec in layer.weight_specs]
        layers.append([type(layer).__name__, config, weights])
    return _digest(layers)


def _compile_settings(model: Any) -> Tuple[str, str]:
    opt, loss = model.optimizer, model.loss
    opt_sig = type(opt).__name__
    try:
        opt_sig += ":" + _digest(_strip_names(opt.get_config()))
    except Exception:  # noqa: BLE001
        pass
    loss_sig = type(loss).__name__
    try:
        loss_sig += ":" + _digest(_strip_names(loss.get_config()))
    except Exception:  # noqa: BLE001
        pass
    return opt_sig, loss_sig


def _signature(model: Any, n_samples: int, batch_size: int) -> Dict[str, Any]:
    """What every rank must agree on, with the words an error message uses."""
    opt_sig, loss_sig = _compile_settings(model)
    opt = model.optimizer
    if getattr(opt, "backend", None) is not None and getattr(opt, "slots", None):
        opt_state = {name: int(arr.shape[0]) for name, arr in sorted(opt.slots.items())}
    else:
        opt_state = "not built"
    return {
        "number of parameters": int(model.params.shape[0]),
        "number of non-trainable values": int(model.state.shape[0]),
        "architecture (layer types, configs and weight shapes)": _architecture(model),
        "sample shape": list(model._input_shape or ()),
        "optimizer": opt_sig,
        "optimizer state (slot sizes)": opt_state,
        "loss": loss_sig,
        "training-set length": int(n_samples),
        "batch size": int(batch_size),
    }


# ---------------------------------------------------------------- the replica
class MPIReplica:
    """One rank of a data-parallel ``fit`` (the protocol of fastnn.replica.LocalReplica).

    Args:
        comm: an mpi4py communicator (default MPI_COMM_WORLD), or an object with the
            methods of ``_Collectives`` (tests use one to play the other ranks).
        bucket_mb: allreduce bucket size in MiB (default $FASTNN_MPI_BUCKET_MB, else 4).
            Buckets change when the exchange starts, never the result.
        timeout: seconds a rank may wait for a gradient or metric exchange before it
            aborts the job (default $FASTNN_MPI_TIMEOUT; None waits forever).

    Raises:
        ValueError: for a non-positive bucket size or timeout.
    """

    def __init__(self, comm: Any = None, bucket_mb: Optional[float] = None,
                 timeout: Optional[float] = None):
        if comm is None or not hasattr(comm, "iallreduce_sum"):
            init()  # a real communicator: failures must abort the job
            comm = _Collectives(_mpi().COMM_WORLD if comm is None else comm)
        self._coll = comm
        self.rank = int(self._coll.rank)
        self.world_size = int(self._coll.size)
        bucket_mb = _bucket_mb_from_env() if bucket_mb is None else float(bucket_mb)
        if not (math.isfinite(bucket_mb) and bucket_mb > 0):
            raise ValueError(f"bucket_mb must be a positive number, got {bucket_mb!r}")
        self.bucket_elems = max(1, int(bucket_mb * (1 << 20)) // 4)
        self.timeout = _timeout_from_env() if timeout is None else float(timeout)
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self._size = 0
        self._host: Optional[np.ndarray] = None  # host copy of the gradients (non-CPU)
        self._requests: List[Any] = []
        self._launched: List[Tuple[int, int]] = []
        self._ready: Dict[int, int] = {}  # end -> start of final segments below the frontier
        self._frontier = 0                # [frontier, size) is final and scaled
        self._bucket_hi = 0               # [frontier, bucket_hi) is not yet exchanged
        self._weight = 1.0
        self._phantom = False
        self._shared_rng: Optional[dict] = None
        self._threads_checked = False

    @property
    def is_primary(self) -> bool:
        """Whether this rank prints, logs and writes files (rank 0)."""
        return self.rank == 0

    # -------------------------------------------------------------- start
    def begin_fit(self, model: Any, n_samples: int, batch_size: int) -> None:
        """Checks that all ranks agree, then copies rank 0's weights and RNG to all.

        Raises:
            ValueError: when ranks differ in model, data size or batch size, or when
                the batch is smaller than the number of ranks.
        """
        coll = self._coll
        signatures = coll.allgather(_signature(model, n_samples, batch_size))
        problems = []
        for key, ours in signatures[0].items():
            others = [(r, sig.get(key)) for r, sig in enumerate(signatures)
                      if sig.get(key) != ours]
            if others:
                shown = ", ".join(f"rank {r} has {v}" for r, v in others[:4])
                more = f" (and {len(others) - 4} more ranks)" if len(others) > 4 else ""
                problems.append(f"{key}: rank 0 has {ours}, {shown}{more}")
        if problems:
            raise ValueError("fastnn.distributed: the ranks disagree on "
                             + "; ".join(problems)
                             + ". Every rank must call fit with the same model, compile "
                             "settings, training-set length and batch size.")
        if batch_size < self.world_size:
            raise ValueError(f"fit: batch_size={batch_size} is smaller than the number of "
                             f"ranks ({self.world_size}); batch_size is the global batch, "
                             f"split across ranks, so it must be at least {self.world_size}")
        if self.world_size > 1:
            self._broadcast_model(model)
            from .utils import get_rng_state, set_rng_state
            state = coll.bcast(get_rng_state() if self.rank == 0 else None)
            set_rng_state(state)
        self._size = int(model.params.shape[0])
        self._host = None if isinstance(model.grads, np.ndarray) else \
            np.empty(self._size, dtype=np.float32)
        if not self._threads_checked:
            self._threads_checked = True
            self._default_threads()

    def _broadcast_model(self, model: Any) -> None:
        backend = model.backend
        for buf in (model.params, model.state):
            self._bcast_backend_array(backend, buf)
        opt = model.optimizer
        slots = getattr(opt, "slots", None) or {}
        if getattr(opt, "backend", None) is not None:
            for name in sorted(slots):
                self._bcast_backend_array(opt.backend, slots[name])
        iterations = self._coll.bcast(int(getattr(opt, "iterations", 0)))
        if opt is not None:
            opt.iterations = iterations

    def _bcast_backend_array(self, backend: Any, buf: Any) -> None:
        if isinstance(buf, np.ndarray) and buf.flags.c_contiguous and buf.dtype == np.float32:
            self._coll.bcast_array(buf)
            return
        host = np.array(backend.to_numpy(buf), dtype=np.float32, copy=True, order="C")
        self._coll.bcast_array(host)
        if self.rank != 0:
            backend.copy_(buf, backend.asarray(host))

    def _default_threads(self) -> None:
        """With OMP_NUM_THREADS unset, stops ranks on one node from oversubscribing it:
        ranks sharing a CPU set split it evenly."""
        if self.world_size == 1 or "OMP_NUM_THREADS" in os.environ or \
                not hasattr(self._coll, "node_affinities"):
            return
        affinities = self._coll.node_affinities()
        try:
            mine = tuple(sorted(os.sched_getaffinity(0)))
        except AttributeError:
            return
        sharing = sum(1 for a in affinities if a == mine)
        threads = max(1, len(mine) // max(1, sharing))
        try:
            from ._threads import get_num_threads, set_num_threads
            if get_num_threads() > threads:
                set_num_threads(threads)
        except ImportError:
            pass

    # ------------------------------------------------------------- batches
    @staticmethod
    def _bounds(n: int, parts: int, index: int) -> Tuple[int, int]:
        """[start, stop) of part ``index`` of ``n`` items split as numpy.array_split."""
        q, r = divmod(n, parts)
        start = index * q + min(index, r)
        return start, start + q + (1 if index < r else 0)

    def shard(self, idx: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of one global batch of sample indices.

        A rank whose share of a short last batch is empty trains on one repeated row
        with weight zero, so every rank runs the same collectives.
        """
        self._enter_rank_stream()
        start, stop = self._bounds(len(idx), self.world_size, self.rank)
        self._phantom = stop == start
        if self._phantom:
            return idx[len(idx) - 1:]
        return idx[start:stop]

    def shard_range(self, n: int) -> Tuple[int, int]:
        """This rank's contiguous part [start, stop) of n samples (validation)."""
        return self._bounds(int(n), self.world_size, self.rank)

    def _enter_rank_stream(self) -> None:
        """Dropout draws from a stream of its own on each rank during a step.

        The global generator must stay identical on all ranks (it shuffles each
        epoch), but dropout masks must differ between ranks, and ranks with shares
        of different sizes draw different amounts. So during a step each rank draws
        from a generator seeded by (shared state, rank), and finish_gradients puts
        the shared state back untouched.
        """
        from .utils import get_rng_state, global_rng, set_rng_state
        if self._shared_rng is not None:
            set_rng_state(self._shared_rng)
        shared = get_rng_state()
        entropy = [v for v in _ints(shared) if v >= 0] + [self.rank, 0x5EED]
        bitgen = type(global_rng().bit_generator)(np.random.SeedSequence(entropy))
        self._shared_rng = shared
        set_rng_state(bitgen.state)

    def _leave_rank_stream(self) -> None:
        if self._shared_rng is not None:
            from .utils import set_rng_state
            set_rng_state(self._shared_rng)
            self._shared_rng = None

    # ----------------------------------------------------------- gradients
    def begin_step(self, model: Any, local_rows: int, global_rows: int) -> None:
        """Remembers this rank's weight in the global mean: local_rows / global_rows."""
        self._weight = 0.0 if self._phantom else float(local_rows) / float(global_rows)
        self._phantom = False
        self._ready = {}
        self._frontier = self._size
        self._bucket_hi = self._size
        self._requests = []
        self._launched = []

    def gradients_ready(self, model: Any, offset: int, size: int) -> None:
        """Scales the final segment [offset, offset+size) and sends full buckets."""
        if self.world_size == 1 or size <= 0:
            return
        if self._weight != 1.0:
            model.backend.scale_(model.grads[offset:offset + size], self._weight)
        self._ready[offset + size] = offset
        while self._frontier in self._ready:
            self._frontier = self._ready.pop(self._frontier)
        if self._bucket_hi - self._frontier >= self.bucket_elems or \
                (self._frontier == 0 and self._bucket_hi > 0):
            self._launch(model, self._frontier, self._bucket_hi)
            self._bucket_hi = self._frontier
        elif self._requests:
            # MPI moves a non-blocking collective only inside MPI calls; a test
            # between layers lets it progress while backward runs. (The newest
            # request: a completed one is tested without entering MPI.)
            self._requests[-1].Test()

    def _launch(self, model: Any, lo: int, hi: int) -> None:
        if self._host is None:
            buf = model.grads[lo:hi]
        else:
            buf = self._host[lo:hi]
            buf[...] = model.backend.to_numpy(model.grads[lo:hi])
        self._requests.append(self._coll.iallreduce_sum(buf))
        self._launched.append((lo, hi))

    def finish_gradients(self, model: Any) -> None:
        """Sends what is left, waits for every bucket: grads hold the global mean."""
        self._leave_rank_stream()
        if self.world_size == 1:
            return
        if self._bucket_hi > 0:
            # Segments never reported final (layers that backward did not reach)
            # are still scaled, so every rank contributes its weighted share.
            self._scale_unreported(model)
            self._frontier = 0
            self._launch(model, 0, self._bucket_hi)
            self._bucket_hi = 0
        self._wait(self._requests, "the gradient exchange")
        self._requests = []
        if self._host is not None:
            model.backend.copy_(model.grads, model.backend.asarray(self._host))
        self._average_state(model)

    def _average_state(self, model: Any) -> None:
        """Averages non-trainable state (BatchNormalization's moving statistics).

        Each rank normalises with its own shard's batch statistics (as PyTorch's
        DistributedDataParallel without SyncBatchNorm does); averaging the moving
        statistics every step keeps all ranks' models identical.
        """
        state = getattr(model, "state", None)
        if state is None or int(state.shape[0]) == 0:
            return
        summed = self.reduce_sums(np.asarray(model.backend.to_numpy(state)))
        model.backend.copy_(state, model.backend.asarray(
            (summed / self.world_size).astype(np.float32)))

    def _scale_unreported(self, model: Any) -> None:
        if self._weight == 1.0:
            return
        pos = self._frontier
        for end in sorted(self._ready, reverse=True):
            start = self._ready[end]
            if end < pos:
                model.backend.scale_(model.grads[end:pos], self._weight)
            pos = start
        if pos > 0:
            model.backend.scale_(model.grads[0:pos], self._weight)
        self._ready = {}

    def reduce_sums(self, values: np.ndarray) -> np.ndarray:
        """Element-wise sum of ``values`` over all ranks (float64)."""
        out = np.array(values, dtype=np.float64, copy=True, order="C")
        if self.world_size == 1:
            return out
        self._wait([self._coll.allreduce_sum(out)], "the metric exchange")
        return out

    def _wait(self, requests: Sequence[Any], what: str) -> None:
        if self.timeout is None:
            for req in requests:
                req.Wait()
            return
        deadline = time.monotonic() + self.timeout
        pending = list(requests)
        while pending:
            pending = [r for r in pending if not r.Test()]
            if pending:
                if time.monotonic() > deadline:
                    _tell(f"fastnn.distributed: rank {self.rank} waited more than "
                          f"{self.timeout:g} s for {what}; another rank has probably "
                          "died. Aborting the job.\n")
                    self._coll.abort(1)
                    raise RuntimeError(f"rank {self.rank}: {what} timed out")
                time.sleep(0.0005)


def _ints(obj: Any) -> List[int]:
    """Every int in a nested generator-state dict, in a fixed order."""
    if isinstance(obj, dict):
        return [v for k in sorted(obj) for v in _ints(obj[k])]
    if isinstance(obj, (list, tuple)):
        return [v for item in obj for v in _ints(item)]
    if isinstance(obj, (bool, np.bool_)):
        return [int(obj)]
    if isinstance(obj, (int, np.integer)):
        return [int(obj)]
    if isinstance(obj, np.ndarray) and obj.dtype.kind in "iu":
        return [int(v) for v in obj.reshape(-1)]
    return []


# ------------------------------------------------------------------ checks
def check_in_sync(model: Any, comm: Any = None) -> str:
    """Checks that every rank holds bit-identical parameters and state.

    Returns:
        The SHA-256 of this rank's parameters and state (the same on every rank).

    Raises:
        RuntimeError: naming the ranks whose weights differ from rank 0's.
    """
    if comm is None:
        init()
        comm = _mpi().COMM_WORLD
    coll = comm if hasattr(comm, "iallreduce_sum") else _Collectives(comm)
    backend = model.backend
    h = hashlib.sha256()
    for buf in (model.params, model.state):
        h.update(np.ascontiguousarray(backend.to_numpy(buf), dtype=np.float32).tobytes())
    digest = h.hexdigest()
    digests = coll.allgather(digest)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(f"fastnn.distributed: the weights of ranks {differ} differ "
                           "from rank 0's")
    return digest
