"""Exact resume: checkpoints, BackupAndRestore, and processes really killed with SIGKILL.

The subprocess tests train tests/scripts/train_digits.py (an MLP with Dropout on the
embedded digits set, shuffled, fixed seed), kill it mid-epoch, resume it, and
require the final weights to be bit-identical to an uninterrupted run's at the same
thread count. The kill-during-save test kills tests/scripts/save_loop.py at random
moments and requires the previous checkpoint to load every time.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import io as fio
from fastnn.callbacks import BackupAndRestore, Callback, ReduceLROnPlateau
from fastnn.checkpoint import read_training_state, restore_training_state, save_training_state
from fastnn.io import FileFormatError
from fastnn.layers import Dense, Dropout, Flatten
from fastnn.models import load_model

SCRIPTS = Path(__file__).parent / "scripts"
POSIX = os.name == "posix"


# ---------------------------------------------------------------------------- helpers


def _env(threads="1"):
    env = dict(os.environ)
    root = str(Path(fastnn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = threads
    return env


def _start(args, env):
    return subprocess.Popen([sys.executable, *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _run(args, env, timeout=300):
    proc = subprocess.run([sys.executable, *map(str, args)], env=env, capture_output=True,
                          timeout=timeout, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _wait_for(path, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"the child exited ({proc.returncode}) before {path.name}: "
                                 f"{err.decode()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {path}")
        time.sleep(0.005)


def _kill(proc):
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


def _kill_unless_finished(proc):
    """SIGKILLs proc; returns False when it had already finished cleanly (a race the
    random-moment test cannot rule out: a resumed run may end between poll and kill)."""
    os.kill(proc.pid, signal.SIGKILL)  # an exited, unreaped child is a zombie: no error
    _, err = proc.communicate()
    assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-3000:]
    return proc.returncode == -signal.SIGKILL


def _weights(path):
    tensors, _ = fio.read_tensors(path)
    return tensors


def _assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype == np.float32
        assert np.array_equal(a[key].view(np.uint32), b[key].view(np.uint32)), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (no BackupAndRestore at all) on one thread."""
    out = tmp_path_factory.mktemp("reference")
    _run([SCRIPTS / "train_digits.py", out], _env())
    return _weights(out / "weights.safetensors"), json.loads((out / "result.json").read_text())


# ------------------------------------------------------------- killed subprocesses


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_sigkill_mid_epoch_twice_then_resume_is_bit_identical(tmp_path, reference):
    env = _env()
    backup = tmp_path / "backup"
    # Kill 1 inside epoch 0 (batch 31 of 45, last checkpoint after batch 28), kill 2
    # inside epoch 1 of the resumed run; the third run finishes.
    stops = []
    for i, stall in enumerate((31, 40)):
        out = tmp_path / f"run{i}"
        proc = _start([SCRIPTS / "train_digits.py", out, "--backup", backup,
                       "--save-freq", "7", "--stall-after", stall], env)
        _wait_for(out / "stalled", proc)
        stops.append(json.loads((out / "stalled").read_text()))
        _kill(proc)
        assert (backup / "latest.safetensors").exists()
    assert stops[0] == [0, 31]
    out = tmp_path / "final"
    _run([SCRIPTS / "train_digits.py", out, "--backup", backup, "--save-freq", "7"], env)
    result = json.loads((out / "result.json").read_text())
    epoch, step = result["restored_from"]
    assert (epoch, step) != (0, 0) and 0 < step < 45  # it resumed mid-epoch
    _assert_bit_identical(_weights(out / "weights.safetensors"), reference[0])
    # The resumed epoch's logs continue the killed run's running sums.
    ref_hist = reference[1]["history"]
    for key, values in result["history"].items():
        np.testing.assert_allclose(values, ref_hist[key][-len(values):], rtol=1e-9)
    assert not (backup / "latest.safetensors").exists()  # deleted after success


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, reference):
    env = _env()
    backup = tmp_path / "backup"
    rng = random.Random(20240607)
    kills = 0
    for i in range(3):
        out = tmp_path / f"run{i}"
        proc = _start([SCRIPTS / "train_digits.py", out, "--backup", backup,
                       "--save-freq", "5", "--slow", "0.004"], env)
        _wait_for(out / "started", proc)
        time.sleep(rng.uniform(0.0, 0.4))
        if not _kill_unless_finished(proc):
            break  # finished before the kill: nothing left to interrupt
        kills += 1
    assert kills >= 1
    out = tmp_path / "final"
    _run([SCRIPTS / "train_digits.py", out, "--backup", backup, "--save-freq", "5"], env)
    _assert_bit_identical(_weights(out / "weights.safetensors"), reference[0])


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_epoch_checkpoints_resume_bit_identical(tmp_path, reference):
    env = _env()
    backup = tmp_path / "backup"
    out = tmp_path / "killed"
    proc = _start([SCRIPTS / "train_digits.py", out, "--backup", backup,
                   "--save-freq", "epoch", "--stall-after", 60], env)
    _wait_for(out / "stalled", proc)
    _kill(proc)
    out = tmp_path / "final"
    _run([SCRIPTS / "train_digits.py", out, "--backup", backup, "--save-freq", "epoch"], env)
    result = json.loads((out / "result.json").read_text())
    assert result["restored_from"] == [1, 0]  # the epoch-0 boundary
    assert result["epochs_run"] == [1, 2]
    _assert_bit_identical(_weights(out / "weights.safetensors"), reference[0])


@pytest.mark.skipif(not POSIX, reason="SIGKILL")
def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    sys.path.insert(0, str(SCRIPTS))
    try:
        import save_loop
    finally:
        sys.path.remove(str(SCRIPTS))
    env = _env()
    path = tmp_path / "ckpt.safetensors"
    marker = tmp_path / "done"
    rng = random.Random(7)
    model = save_loop.build()
    model.train_on_batch(np.zeros((2, 512), np.float32), np.zeros((2, 16), np.float32))
    seen_versions = []
    for _ in range(6):
        before = int(marker.read_text()) if marker.exists() else 0
        proc = _start([SCRIPTS / "save_loop.py", path, marker], env)
        deadline = time.monotonic() + 120
        while not marker.exists() or int(marker.read_text() or 0) <= before:
            assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.25))
        _kill(proc)
        for tmp in tmp_path.glob(".ckpt.safetensors.*.tmp"):
            tmp.unlink()
        # The checkpoint is whole: one version throughout, at least the last confirmed.
        state = read_training_state(path)
        version = state["state"]["epoch"]
        assert version >= 1
        loaded = load_model(path)
        for w in loaded.get_weights():
            assert np.all(w == version)
        restore_training_state(model, path)
        assert all(np.all(w == version) for w in model.get_weights())
        seen_versions.append(version)
        marker.write_text(str(version))
    assert seen_versions == sorted(seen_versions)


# ---------------------------------------------------------------- in-process resume


class _Crash(Exception):
    pass


class _CrashAt(Callback):
    """Raises after the given global batch, like a process dying there."""

    def __init__(self, after):
        super().__init__()
        self.after, self.seen = after, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.after:
            raise _Crash()


def _mlp(seed_layer_dropout=None):
    return fastnn.Sequential([Flatten(input_shape=(4, 5)), Dense(12, activation="relu"),
                              Dropout(0.3, seed=seed_layer_dropout),
                              Dense(3, activation="softmax")])


def _data():
    rng = np.random.default_rng(3)
    return (rng.standard_normal((100, 4, 5)).astype(np.float32), rng.integers(0, 3, 100))


def _train(callbacks, epochs=3, seed_layer_dropout=None, optimizer="adam"):
    x, y = _data()
    fastnn.utils.set_random_seed(11)
    model = _mlp(seed_layer_dropout)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=epochs, verbose=0, callbacks=callbacks,
                        validation_data=(x[:20], y[:20]))
    return model, history


@pytest.mark.parametrize("save_freq, crash_after", [(3, 11), (3, 9), ("epoch", 10),
                                                    (1, 7), (7, 20)])
@pytest.mark.parametrize("dropout_seed", [None, 5])
def test_crash_and_resume_in_process_is_bit_identical(tmp_path, save_freq, crash_after,
                                                      dropout_seed):
    reference, ref_history = _train([], seed_layer_dropout=dropout_seed)
    with pytest.raises(_Crash):
        _train([BackupAndRestore(tmp_path, save_freq=save_freq), _CrashAt(crash_after)],
               seed_layer_dropout=dropout_seed)
    assert (tmp_path / "latest.safetensors").exists()
    backup = BackupAndRestore(tmp_path, save_freq=save_freq)
    resumed, history = _train([backup], seed_layer_dropout=dropout_seed)
    assert backup.restored_from is not None
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(a, b)
    assert resumed.optimizer.iterations == reference.optimizer.iterations
    for key, values in history.history.items():
        np.testing.assert_allclose(values, ref_history.history[key][-len(values):],
                                   rtol=1e-9)


def test_resume_restores_a_learning_rate_changed_by_a_callback(tmp_path):
    class Val(Callback):  # a val_loss that never improves: the rate drops every epoch
        def on_epoch_end(self, epoch, logs=None):
            logs["val_loss"] = 1.0

    class Rates(Callback):
        def __init__(self):
            super().__init__()
            self.rates = []

        def on_train_batch_begin(self, batch, logs=None):
            self.rates.append(self.model.optimizer.learning_rate)

    plateau = dict(monitor="val_loss", factor=0.5, patience=1, min_delta=0.0)
    ref_rates = Rates()
    reference, _ = _train([Val(), ReduceLROnPlateau(**plateau), ref_rates], epochs=3)
    assert ref_rates.rates[-1] == 0.0005  # lowered once before the last epoch
    with pytest.raises(_Crash):
        _train([Val(), ReduceLROnPlateau(**plateau), BackupAndRestore(tmp_path, save_freq=2),
                _CrashAt(16)], epochs=3)
    rates = Rates()
    # The callback's own patience counter is not part of the checkpoint (as in Keras),
    # but the rate it had set is, so the resumed steps use the same rates.
    resumed, _ = _train([Val(), ReduceLROnPlateau(**plateau),
                         BackupAndRestore(tmp_path, save_freq=2), rates], epochs=3)
    assert rates.rates == ref_rates.rates[-len(rates.rates):]
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(a, b)


def test_backup_keeps_checkpoint_when_asked_and_deletes_by_default(tmp_path):
    _train([BackupAndRestore(tmp_path / "a")], epochs=1)
    assert not (tmp_path / "a" / "latest.safetensors").exists()
    _train([BackupAndRestore(tmp_path / "b", delete_checkpoint=False)], epochs=2)
    state = read_training_state(tmp_path / "b" / "latest.safetensors")["state"]
    assert (state["epoch"], state["step"]) == (2, 0)
    # A finished run's checkpoint resumes at its end: nothing more to train.
    backup = BackupAndRestore(tmp_path / "b", delete_checkpoint=False)
    _, history = _train([backup], epochs=2)
    assert backup.restored_from == (2, 0) and history.epoch == []


def test_backup_refuses_other_data_size_and_other_architecture(tmp_path):
    with pytest.raises(_Crash):
        _train([BackupAndRestore(tmp_path, save_freq=2), _CrashAt(3)])
    x, y = _data()
    model = _mlp()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    with pytest.raises(ValueError, match="steps per epoch"):
        model.fit(x[:50], y[:50], batch_size=16, epochs=1, verbose=0,
                  callbacks=[BackupAndRestore(tmp_path)])
    other = fastnn.Sequential([Flatten(input_shape=(4, 5)), Dense(13, activation="relu"),
                               Dropout(0.3), Dense(3, activation="softmax")])
    other.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    with pytest.raises(FileFormatError, match="another architecture"):
        other.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[BackupAndRestore(tmp_path)])
    sgd = _mlp()
    sgd.compile(optimizer="sgd", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    with pytest.raises(FileFormatError, match="optimizer"):
        sgd.fit(x, y, batch_size=16, epochs=1, verbose=0, callbacks=[BackupAndRestore(tmp_path)])


def test_backup_and_restore_rejects_bad_arguments():
    with pytest.raises(ValueError, match="save_freq"):
        BackupAndRestore("x", save_freq=0)
    with pytest.raises(ValueError, match="save_freq"):
        BackupAndRestore("x", save_freq="batch")
    with pytest.raises(ValueError, match="backup_dir"):
        BackupAndRestore("")


def test_checkpoint_is_a_model_file_and_records_the_loop_state(tmp_path):
    class Save(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2 and self.model.position[0] == 1:
                save_training_state(self.model, tmp_path / "c.safetensors")
                self.weights = self.model.get_weights()
                self.order = self.model.epoch_order.copy()
                self.totals = self.model.training_totals()

    saver = Save()
    model, _ = _train([saver])
    state = read_training_state(tmp_path / "c.safetensors")
    assert (state["state"]["epoch"], state["state"]["step"]) == (1, 3)
    assert np.array_equal(state["order"], saver.order)
    assert np.array_equal(state["totals"], saver.totals)
    loaded = load_model(tmp_path / "c.safetensors")
    for a, b in zip(loaded.get_weights(), saver.weights):
        assert np.array_equal(a, b)
    assert loaded.optimizer.iterations == 7 + 3


def _rewrite(src, dst, tensors=None, meta=None):
    t, m = fio.read_tensors(src)
    t.update(tensors or {})
    for key, value in (meta or {}).items():
        if value is None:
            m.pop(key, None)
        else:
            m[key] = value
    m.pop("fastnn.format_version")
    fio.write_tensors(dst, {k: v for k, v in t.items() if v is not None}, m)


@pytest.mark.parametrize("change, match", [
    (dict(tensors={"training/epoch_order": np.zeros(100, np.int64)}), "permutation"),
    (dict(tensors={"training/epoch_order": np.arange(1, 101, dtype=np.int64)}), "permutation"),
    (dict(tensors={"training/epoch_order": np.arange(100, dtype=np.int32)}), "int64"),
    (dict(tensors={"training/totals": np.array([np.nan, 0, 1.0])}), "totals"),
    (dict(tensors={"training/totals": np.zeros(7)}), "totals"),
    (dict(tensors={"training/extra": np.zeros(1)}), "unexpected"),
    (dict(meta={"fastnn.rng_state": '{"bit_generator": "MT19937"}'}), "generator state"),
    (dict(meta={"fastnn.rng_state": None}), "rng_state"),
    (dict(meta={"fastnn.training_state": '{"epoch": -1}'}), "epoch"),
    (dict(meta={"fastnn.training_state": '[1, 2]'}), "JSON object"),
    (dict(meta={"fastnn.training_state": None}), "not a training checkpoint"),
])
def test_damaged_checkpoints_are_refused_without_changing_the_model(tmp_path, change, match):
    class Save(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                save_training_state(self.model, tmp_path / "c.safetensors")

    model, _ = _train([Save()], epochs=1)
    _rewrite(tmp_path / "c.safetensors", tmp_path / "bad.safetensors", **change)
    before = model.get_weights()
    rng_before = fastnn.utils.get_rng_state()
    with pytest.raises(FileFormatError, match=match):
        restore_training_state(model, tmp_path / "bad.safetensors")
    for a, b in zip(model.get_weights(), before):
        assert np.array_equal(a, b)
    assert fastnn.utils.get_rng_state() == rng_before
    assert model._resume is None


def test_checkpoints_work_with_a_custom_optimizer_subclass(tmp_path):
    class MyAdam(fastnn.optimizers.Adam):
        pass

    reference, _ = _train([], optimizer=MyAdam(0.01))
    with pytest.raises(_Crash):
        _train([BackupAndRestore(tmp_path, save_freq=4), _CrashAt(13)], optimizer=MyAdam(0.01))
    resumed, _ = _train([BackupAndRestore(tmp_path, save_freq=4)], optimizer=MyAdam(0.01))
    for a, b in zip(resumed.get_weights(), reference.get_weights()):
        assert np.array_equal(a, b)
    # load_model cannot rebuild a class it does not know, and says so.
    with pytest.raises(FileFormatError, match="unknown optimizer 'MyAdam'"):
        with pytest.raises(_Crash):
            _train([BackupAndRestore(tmp_path, save_freq=4), _CrashAt(5)],
                   optimizer=MyAdam(0.01))
        load_model(tmp_path / "latest.safetensors")


def test_a_checkpoint_with_a_wrong_optimizer_slot_changes_nothing(tmp_path):
    class Save(Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                save_training_state(self.model, tmp_path / "c.safetensors")

    model, _ = _train([Save()], epochs=1)
    t, _ = fio.read_tensors(tmp_path / "c.safetensors")
    _rewrite(tmp_path / "c.safetensors", tmp_path / "bad.safetensors",
             tensors={"optimizer/m": t["optimizer/m"][:-1]})
    before, iterations = model.get_weights(), model.optimizer.iterations
    with pytest.raises(FileFormatError, match="slot 'm'"):
        restore_training_state(model, tmp_path / "bad.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert model.optimizer.iterations == iterations
