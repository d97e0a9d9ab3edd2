"""Threads: results independent of the thread count, fork safety, pool control."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import Sequential
from fastnn.layers import Dense, Dropout, Flatten
from fastnn.utils import set_random_seed


def _train(threads, zeros=0.0):
    """Weights after one epoch; `zeros`: the fraction of input pixels set to
    0 (MNIST has 81 %, enough for the first layer's products to skip them)."""
    fastnn.set_num_threads(threads)
    rng = np.random.default_rng(0)
    x = rng.random((3000, 784), dtype=np.float32)
    x[x < zeros] = 0.0
    y = rng.integers(0, 10, 3000)
    set_random_seed(11)
    model = Sequential([Dense(256, activation="relu", input_shape=(784,)), Dropout(0.2),
                        Dense(128, activation="tanh"), Dense(10, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=1, batch_size=128, verbose=0)
    return model.get_weights()


@pytest.mark.parametrize("zeros", [0.0, 0.8])
def test_weights_after_an_epoch_are_bit_identical_at_1_and_2_threads(zeros):
    before = fastnn.get_num_threads()
    try:
        one, two = _train(1, zeros), _train(2, zeros)
    finally:
        fastnn.set_num_threads(before)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


def test_skipping_zero_inputs_leaves_the_weights_bit_identical():
    """The GEMM path that skips zeros of a mostly-zero input is a speed-up
    only: training with it turned off ends on the same bits."""
    from fastnn import _C
    before = fastnn.get_num_threads()
    saved = _C.sgemm_set_sparse_density(0.0)
    try:
        dense = _train(2, 0.8)
        _C.sgemm_set_sparse_density(saved)
        sparse = _train(2, 0.8)
    finally:
        _C.sgemm_set_sparse_density(saved)
        fastnn.set_num_threads(before)
    for a, b in zip(dense, sparse):
        assert a.tobytes() == b.tobytes()


def test_set_num_threads_validates_and_round_trips():
    before = fastnn.get_num_threads()
    try:
        fastnn.set_num_threads(1)
        assert fastnn.get_num_threads() == 1
    finally:
        fastnn.set_num_threads(before)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError):
            fastnn.set_num_threads(bad)


def _run(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Runs code in a fresh interpreter that imports the same fastnn as this one."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=os.path.dirname(__file__), env=env)


def test_fork_after_training_does_not_hang():
    result = _run("""
        import multiprocessing as mp, numpy as np, fastnn
        from fastnn.layers import Dense
        fastnn.set_num_threads(2)
        x = np.random.rand(512, 64).astype(np.float32); y = np.random.randint(0, 4, 512)
        m = fastnn.Sequential([Dense(64, activation="relu", input_shape=(64,)),
                               Dense(4, activation="softmax")])
        m.compile("adam", "sparse_categorical_crossentropy")
        m.fit(x, y, epochs=1, batch_size=64, verbose=0)

        def child(q):
            q.put((fastnn.get_num_threads(), float(m.predict(x[:256], verbose=0).sum())))

        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        threads, total = q.get(timeout=60)
        p.join(60)
        assert p.exitcode == 0, p.exitcode
        assert threads == 1, threads
        assert abs(total - float(m.predict(x[:256], verbose=0).sum())) < 1e-3
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_threadpoolctl_sees_and_limits_the_openmp_pool():
    pytest.importorskip("threadpoolctl")
    result = _run("""
        import fastnn
        from threadpoolctl import threadpool_info, threadpool_limits
        assert any(i["user_api"] == "openmp" for i in threadpool_info()), threadpool_info()
        with threadpool_limits(limits=1, user_api="openmp"):
            print(fastnn.get_num_threads())
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_import_is_light():
    result = _run("""
        import sys, fastnn
        heavy = [m for m in ("numba", "mpi4py", "torch") if m in sys.modules]
        print(heavy)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def _spin_setting(env_extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra)
    env["PYTHONPATH"] = str(Path(fastnn.__file__).resolve().parent.parent)
    code = ("import json, os, fastnn; print(json.dumps({k: os.environ.get(k) for k in "
            "('OMP_WAIT_POLICY', 'GOMP_SPINCOUNT')}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).parent, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_import_sets_a_short_openmp_spin_unless_the_user_chose():
    assert _spin_setting({}) == {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}
    assert _spin_setting({"OMP_WAIT_POLICY": "active"}) == {"OMP_WAIT_POLICY": "active",
                                                            "GOMP_SPINCOUNT": None}
    assert _spin_setting({"GOMP_SPINCOUNT": "5"}) == {"OMP_WAIT_POLICY": None,
                                                      "GOMP_SPINCOUNT": "5"}
