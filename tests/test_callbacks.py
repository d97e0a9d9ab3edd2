"""Callbacks (Keras names, arguments, defaults and semantics) and learning-rate
schedules against hand-written formulas."""
import csv
import math
import os

import numpy as np
import pytest

import fastnn
from fastnn import Sequential
from fastnn.callbacks import (CSVLogger, Callback, EarlyStopping, LambdaCallback,
                              LearningRateScheduler, ModelCheckpoint, ReduceLROnPlateau,
                              TerminateOnNaN)
from fastnn.io import read_tensors
from fastnn.layers import Dense, Flatten
from fastnn.models import load_model
from fastnn.optimizers import SGD, Adam
from fastnn.optimizers.schedules import CosineDecay, ExponentialDecay, PiecewiseConstantDecay
from fastnn.utils import set_random_seed

# ---------------------------------------------------------------------------- helpers


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 6)).astype(np.float32), rng.integers(0, 3, n)


def _model(optimizer="adam", seed=3):
    set_random_seed(seed)
    model = Sequential([Dense(5, activation="relu", input_shape=(6,)),
                        Dense(3, activation="softmax")])
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _fit(model, callbacks, epochs=6, batch_size=10, validation=True, **kwargs):
    x, y = _data()
    return model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
                     callbacks=callbacks,
                     validation_data=(x[:10], y[:10]) if validation else None, **kwargs)


class Script(Callback):
    """Overwrites a logged value with a scripted sequence (placed before the callback
    under test, which sees the same logs dict)."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values = key, list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]


class Snapshots(Callback):
    """Records the weights at every epoch end."""

    def __init__(self):
        super().__init__()
        self.weights = []

    def on_epoch_end(self, epoch, logs=None):
        self.weights.append(self.model.get_weights())


def _equal(ws1, ws2):
    return all(np.array_equal(a, b) for a, b in zip(ws1, ws2))


# ---------------------------------------------------------------------- EarlyStopping


def test_early_stopping_defaults_are_keras():
    es = EarlyStopping()
    assert (es.monitor, es.patience, es.min_delta, es.mode, es.baseline,
            es.restore_best_weights, es.start_from_epoch, es.verbose) == \
        ("val_loss", 0, 0, "min", None, False, 0, 0)


@pytest.mark.parametrize("values, patience, stopped", [
    ([1.0, 0.9, 0.95, 0.96, 0.97, 0.98], 2, 3),   # best at 1, two worse epochs
    ([1.0, 0.9, 0.95, 0.85, 0.96, 0.97], 2, 5),   # improvement at 3 restarts patience
    ([1.0, 1.1, 0.9, 0.8, 0.7, 0.6], 0, 1),       # patience 0: first non-improvement
    ([1.0, 0.9, 0.8, 0.7, 0.6, 0.5], 1, None),    # always improving: runs to the end
])
def test_early_stopping_patience(values, patience, stopped):
    es = EarlyStopping(patience=patience)
    history = _fit(_model(), [Script("val_loss", values), es])
    epochs = 6 if stopped is None else stopped + 1
    assert history.epoch == list(range(epochs))
    assert es.stopped_epoch == (stopped or 0)


def test_early_stopping_min_delta_and_mode_max():
    es = EarlyStopping(monitor="val_loss", min_delta=0.05, patience=1)
    history = _fit(_model(), [Script("val_loss", [1.0, 0.97, 0.5, 0.49, 0.1, 0.1]), es])
    assert history.epoch == [0, 1]  # 0.97 is not 0.05 better than 1.0
    es = EarlyStopping(monitor="val_accuracy", patience=1)  # 'auto' maximises accuracy
    assert es.mode == "max"
    history = _fit(_model(), [Script("val_accuracy", [0.5, 0.6, 0.7, 0.65, 0.9, 0.9]), es])
    assert history.epoch == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="maximum")


def test_early_stopping_baseline_and_start_from_epoch():
    # Improvements that do not beat the baseline do not restart patience (Keras 3).
    values = [1.0, 0.9, 0.95, 0.96, 0.6, 0.5]
    history = _fit(_model(), [Script("val_loss", values), EarlyStopping(patience=2)])
    assert history.epoch == [0, 1, 2, 3]
    es = EarlyStopping(patience=2, baseline=0.5)
    history = _fit(_model(), [Script("val_loss", values), es])
    assert history.epoch == [0, 1, 2] and es.best == 0.9
    # The first two epochs are ignored entirely (a warm-up).
    es = EarlyStopping(patience=0, start_from_epoch=2)
    history = _fit(_model(), [Script("val_loss", [1.0, 2.0, 3.0, 2.5, 2.6, 1.0]), es])
    assert history.epoch == [0, 1, 2, 3, 4]


def test_early_stopping_restores_best_weights():
    snaps = Snapshots()
    es = EarlyStopping(patience=2, restore_best_weights=True)
    model = _model()
    _fit(model, [snaps, Script("val_loss", [1.0, 0.5, 0.7, 0.8, 0.2, 0.1]), es])
    assert es.best_epoch == 1 and es.stopped_epoch == 3
    assert _equal(model.get_weights(), snaps.weights[1])
    assert not _equal(model.get_weights(), snaps.weights[3])
    # Without restore_best_weights the last weights stay.
    snaps, model = Snapshots(), _model()
    _fit(model, [snaps, Script("val_loss", [1.0, 0.5, 0.7, 0.8, 0.2, 0.1]),
                 EarlyStopping(patience=2)])
    assert _equal(model.get_weights(), snaps.weights[-1])


def test_early_stopping_warns_when_the_monitor_is_missing():
    es = EarlyStopping(monitor="val_nothing")
    with pytest.warns(UserWarning, match="val_nothing"):
        history = _fit(_model(), [es], epochs=2)
    assert history.epoch == [0, 1]


# -------------------------------------------------------------------- ModelCheckpoint


def test_model_checkpoint_save_best_only_keeps_the_best_epoch(tmp_path):
    path = tmp_path / "best.safetensors"
    times = []

    class Stat(Callback):
        def on_epoch_end(self, epoch, logs=None):
            st = os.stat(path) if path.exists() else None
            # Every save renames a new file into place: a new inode.
            times.append(None if st is None else (st.st_ino, st.st_mtime_ns))

    snaps = Snapshots()
    ckpt = ModelCheckpoint(path, save_best_only=True)
    values = [1.0, 0.8, 0.9, 0.7, 0.75, 0.95]
    _fit(_model(), [snaps, Script("val_loss", values), ckpt, Stat()])
    assert ckpt.best == 0.7
    # Rewritten only at epochs 0, 1 and 3.
    assert None not in times and len({times[0], times[1], times[3]}) == 3
    assert times[2] == times[1] and times[4] == times[5] == times[3]
    loaded = load_model(path)
    assert _equal(loaded.get_weights(), snaps.weights[3])


def test_model_checkpoint_formats_epoch_and_logs_into_the_file_name(tmp_path):
    ckpt = ModelCheckpoint(str(tmp_path / "m-{epoch:02d}-{val_loss:.2f}.safetensors"),
                           save_best_only=True)
    _fit(_model(), [Script("val_loss", [1.0, 0.8, 0.9, 0.7]), ckpt], epochs=4)
    assert sorted(os.listdir(tmp_path)) == ["m-01-1.00.safetensors", "m-02-0.80.safetensors",
                                            "m-04-0.70.safetensors"]
    ckpt = ModelCheckpoint(str(tmp_path / "every-{epoch}.safetensors"))
    _fit(_model(), [ckpt], epochs=3)
    assert all((tmp_path / f"every-{e}.safetensors").exists() for e in (1, 2, 3))
    with pytest.raises(ValueError, match="cannot format"):
        _fit(_model(), [ModelCheckpoint(str(tmp_path / "{nothing}.safetensors"))], epochs=1)


def test_model_checkpoint_weights_only_mode_max_and_batch_frequency(tmp_path):
    snaps = Snapshots()
    ckpt = ModelCheckpoint(tmp_path / "w.safetensors", monitor="val_accuracy",
                           save_best_only=True, save_weights_only=True)
    assert ckpt.mode == "max"
    model = _model()
    _fit(model, [snaps, Script("val_accuracy", [0.2, 0.6, 0.4, 0.5]), ckpt], epochs=4)
    _, meta = read_tensors(tmp_path / "w.safetensors")
    assert meta["fastnn.kind"] == "weights"
    other = _model()
    other.load_weights(tmp_path / "w.safetensors")
    assert _equal(other.get_weights(), snaps.weights[1])
    # Every 3 batches, counted across epochs (4 batches per epoch): after global
    # batches 3, 6, 9 and 12, i.e. (epoch, batch) = (1, 3), (2, 2), (3, 1), (3, 4).
    ckpt = ModelCheckpoint(str(tmp_path / "b-{epoch}-{batch}.safetensors"), save_freq=3)
    _fit(_model(), [ckpt], epochs=3)
    assert sorted(f for f in os.listdir(tmp_path) if f.startswith("b-")) == \
        ["b-1-3.safetensors", "b-2-2.safetensors", "b-3-1.safetensors", "b-3-4.safetensors"]
    with pytest.raises(ValueError, match="save_freq"):
        ModelCheckpoint("x", save_freq="batch")


def test_model_checkpoint_only_the_primary_process_writes(tmp_path):
    class Secondary(fastnn.replica.LocalReplica):
        rank = 1

    model = _model()
    x, y = _data()
    model.fit(x, y, epochs=2, verbose=0, distributed=Secondary(),
              callbacks=[ModelCheckpoint(tmp_path / "m.safetensors", monitor="loss"),
                         CSVLogger(tmp_path / "log.csv")])
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------- ReduceLROnPlateau


def test_reduce_lr_on_plateau_follows_keras_rules():
    default = ReduceLROnPlateau()
    assert (default.monitor, default.factor, default.patience, default.min_delta,
            default.cooldown, default.min_lr, default.mode) == \
        ("val_loss", 0.1, 10, 1e-4, 0, 0.0, "min")
    rates = []

    class Rate(Callback):
        def on_epoch_end(self, epoch, logs=None):
            rates.append(self.model.optimizer.learning_rate)

    model = _model(optimizer=SGD(0.1))
    values = [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5]
    rlr = ReduceLROnPlateau(factor=0.5, patience=1, cooldown=2, min_lr=0.02)
    history = _fit(model, [Script("val_loss", values), rlr, Rate()], epochs=8)
    # Epoch 0 sets the best; 1: wait 1 -> 0.05, cooldown 2; 2: in cooldown; 3: cooldown
    # ends, wait 1 -> 0.025; 4: in cooldown; 5: improvement; 6: wait 1 -> max(0.0125,
    # min_lr 0.02); 7: in cooldown.
    assert rates == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02, 0.02])
    # The rate in force during each epoch is logged, as Keras does.
    assert history.history["learning_rate"] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025, 0.02])
    with pytest.raises(ValueError, match="factor"):
        ReduceLROnPlateau(factor=1.0)


def test_reduce_lr_on_plateau_refuses_schedules():
    model = _model(optimizer=Adam(ExponentialDecay(0.1, 10, 0.5)))
    with pytest.raises(TypeError, match="schedule"):
        _fit(model, [ReduceLROnPlateau(monitor="loss")], epochs=1)


# ------------------------------------------------------------- LearningRateScheduler


def test_learning_rate_scheduler_sets_each_epochs_rate_before_its_batches():
    seen = []

    class Rate(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(self.model.optimizer.learning_rate)

    sched = LearningRateScheduler(lambda epoch, lr: lr if epoch < 2 else lr * 0.5)
    history = _fit(_model(optimizer=SGD(0.08)), [sched, Rate()], epochs=4)
    assert seen == [0.08] * 8 + [0.04] * 4 + [0.02] * 4
    assert history.history["learning_rate"] == [0.08, 0.08, 0.04, 0.02]
    seen.clear()
    one_arg = LearningRateScheduler(lambda epoch: 0.1 / (epoch + 1))
    _fit(_model(optimizer=SGD(0.08)), [one_arg, Rate()], epochs=2)
    assert seen == [0.1] * 4 + [0.05] * 4


def test_learning_rate_scheduler_rejects_bad_rates():
    with pytest.raises(TypeError, match="float"):
        _fit(_model(), [LearningRateScheduler(lambda e, lr: "fast")], epochs=1)
    with pytest.raises(ValueError, match="finite"):
        _fit(_model(), [LearningRateScheduler(lambda e, lr: math.nan)], epochs=1)
    with pytest.raises(TypeError, match="callable"):
        LearningRateScheduler(0.1)


def test_learning_rate_actually_used_by_the_step():
    """SGD on a linear least-squares model: the first update uses exactly the rate."""
    x = np.random.default_rng(1).standard_normal((8, 3)).astype(np.float32)
    y = np.random.default_rng(2).standard_normal((8, 1)).astype(np.float32)
    model = Sequential([Dense(1, use_bias=False, input_shape=(3,))])
    model.compile(optimizer=SGD(0.5), loss="mse")
    w0 = model.get_weights()[0].astype(np.float64)
    model.optimizer.learning_rate = 0.125  # what the callbacks do
    model.train_on_batch(x, y)
    grad = 2.0 / 8 * x.astype(np.float64).T @ (x.astype(np.float64) @ w0 - y)
    np.testing.assert_allclose(model.get_weights()[0], w0 - 0.125 * grad, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ CSVLogger


def test_csv_logger_writes_keras_columns_and_appends(tmp_path):
    path = tmp_path / "log.csv"
    history = _fit(_model(), [CSVLogger(path)], epochs=3)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert [int(r[0]) for r in rows[1:]] == [0, 1, 2]
    for i, row in enumerate(rows[1:]):
        assert float(row[2]) == history.history["loss"][i]
        assert float(row[4]) == history.history["val_loss"][i]
    # append: no second header, rows continue.
    _fit(_model(), [CSVLogger(path, append=True)], epochs=2)
    rows = list(csv.reader(path.open()))
    assert len(rows) == 1 + 3 + 2 and rows[4][0] == "0"
    # Without validation Keras still reserves val_ columns, filled with NA.
    _fit(_model(), [CSVLogger(path, separator=";")], epochs=1, validation=False)
    rows = list(csv.reader(path.open(), delimiter=";"))
    assert rows[0] == ["epoch", "accuracy", "loss", "val_accuracy", "val_loss"]
    assert rows[1][3:] == ["NA", "NA"]
    with pytest.raises(ValueError, match="separator"):
        CSVLogger(path, separator="")


# -------------------------------------------------------------------- TerminateOnNaN


def test_terminate_on_nan_stops_on_a_diverging_loss(capsys):
    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32) * 100
    y = np.random.default_rng(1).standard_normal((64, 1)).astype(np.float32)
    model = Sequential([Dense(16, input_shape=(6,)), Dense(1)])
    model.compile(optimizer=SGD(1e12), loss="mse")
    stop = TerminateOnNaN()
    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[stop])
    assert stop.stopped_at is not None and stop.stopped_at[0] == 0
    assert history.epoch == [0]
    batch = stop.stopped_at[1]
    assert model.optimizer.iterations == batch + 1  # not one step more
    assert f"Epoch 1/5, step {batch + 1}/8: invalid loss" in capsys.readouterr().out


def test_terminate_on_nan_names_epoch_and_step_of_injected_infinity(capsys):
    class Inject(Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if self.model.position == (1, 2):  # after epoch 1's second batch
                self.model.layers[-1].param("kernel")[0, 0] = np.inf  # bypass set_weights

    model = _model()
    stop = TerminateOnNaN()
    history = _fit(model, [Inject(), stop], epochs=4)
    assert stop.stopped_at == (1, 2)
    assert history.epoch == [0, 1]
    assert "Epoch 2/4, step 3/4: invalid loss" in capsys.readouterr().out


# -------------------------------------------------------------------- LambdaCallback


def test_lambda_callback_calls_each_given_function():
    calls = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch)),
        on_train_batch_begin=lambda batch, logs: calls.append(("batch_begin", batch)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch, "loss" in logs)),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, sorted(logs))),
        on_train_end=lambda logs: calls.append("train_end"))
    _fit(_model(), [cb], epochs=1, batch_size=20, validation=False)
    assert calls == ["train_begin", ("epoch_begin", 0), ("batch_begin", 0),
                     ("batch_end", 0, True), ("batch_begin", 1), ("batch_end", 1, True),
                     ("epoch_end", 0, ["accuracy", "loss"]), "train_end"]
    batches = []
    _fit(_model(), [LambdaCallback(on_batch_end=lambda b, logs: batches.append(b))],
         epochs=1, batch_size=20)
    assert batches == [0, 1]
    with pytest.raises(TypeError, match="unknown hook"):
        LambdaCallback(on_everything=print)
    with pytest.raises(TypeError, match="callable"):
        LambdaCallback(on_epoch_end=3)


# -------------------------------------------------------------------- subclass hooks


def test_user_subclass_hooks_run_in_keras_order():
    class Recorder(Callback):
        def __init__(self):
            super().__init__()
            self.calls = []

        def on_train_begin(self, logs=None):
            self.calls.append("on_train_begin")

        def on_epoch_begin(self, epoch, logs=None):
            self.calls.append(f"on_epoch_begin {epoch}")

        def on_train_batch_begin(self, batch, logs=None):
            self.calls.append(f"on_train_batch_begin {batch}")

        def on_train_batch_end(self, batch, logs=None):
            self.calls.append(f"on_train_batch_end {batch}")

        def on_epoch_end(self, epoch, logs=None):
            self.calls.append(f"on_epoch_end {epoch} {sorted(logs)}")

        def on_train_end(self, logs=None):
            self.calls.append("on_train_end")

    rec = Recorder()
    _fit(_model(), [rec], epochs=2, batch_size=20)
    epoch = ["on_train_batch_begin 0", "on_train_batch_end 0", "on_train_batch_begin 1",
             "on_train_batch_end 1"]
    keys = "['accuracy', 'loss', 'val_accuracy', 'val_loss']"
    assert rec.calls == ["on_train_begin", "on_epoch_begin 0", *epoch,
                         f"on_epoch_end 0 {keys}", "on_epoch_begin 1", *epoch,
                         f"on_epoch_end 1 {keys}", "on_train_end"]
    assert rec.params == {"epochs": 2, "steps": 2, "verbose": 0}
    assert rec.model is not None


def test_keras2_batch_hook_names_still_fire_and_stop_training_works():
    class Old(Callback):
        def __init__(self):
            super().__init__()
            self.ends = 0

        def on_batch_end(self, batch, logs=None):
            self.ends += 1
            if self.ends == 3:
                self.model.stop_training = True

    old = Old()
    history = _fit(_model(), [old], epochs=5)
    assert old.ends == 3 and history.epoch == [0]


# ---------------------------------------------------------------------- schedules


def test_exponential_decay_matches_the_formula():
    s = ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5)
    for step in (0, 1, 3, 4, 7, 100):
        assert s(step) == pytest.approx(0.1 * 0.5 ** (step / 4), rel=1e-12)
    s = ExponentialDecay(0.1, decay_steps=4, decay_rate=0.5, staircase=True)
    assert [s(k) for k in (0, 3, 4, 7, 8)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_piecewise_constant_decay_boundaries_are_inclusive_on_the_left_value():
    s = PiecewiseConstantDecay([10, 20], [1.0, 0.5, 0.1])
    expected = {0: 1.0, 10: 1.0, 11: 0.5, 20: 0.5, 21: 0.1, 1000: 0.1}
    assert {k: s(k) for k in expected} == expected
    with pytest.raises(ValueError):
        PiecewiseConstantDecay([10], [1.0])


def test_cosine_decay_with_and_without_warmup_matches_the_formula():
    def hand(step, initial, decay_steps, alpha=0.0, target=None, warmup=0):
        if target is None:
            t = min(step, decay_steps) / decay_steps
            return initial * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)
        if step < warmup:
            return initial + (target - initial) * step / warmup
        t = min(step - warmup, decay_steps) / decay_steps
        return target * ((1 - alpha) * 0.5 * (1 + math.cos(math.pi * t)) + alpha)

    s = CosineDecay(0.2, decay_steps=10, alpha=0.1)
    for step in (0, 1, 5, 9, 10, 50):
        assert s(step) == pytest.approx(hand(step, 0.2, 10, 0.1), rel=1e-12)
    assert s(10) == pytest.approx(0.02)
    s = CosineDecay(0.0, decay_steps=10, warmup_target=0.4, warmup_steps=5)
    for step in (0, 1, 4, 5, 6, 14, 15, 40):
        assert s(step) == pytest.approx(hand(step, 0.0, 10, 0.0, 0.4, 5), rel=1e-12, abs=1e-15)
    assert s(5) == pytest.approx(0.4) and s(15) == pytest.approx(0.0, abs=1e-15)


def test_optimizer_uses_schedule_at_its_iteration_count():
    """Step k of training uses schedule(k): checked on plain SGD and a linear model."""
    sched = PiecewiseConstantDecay([0, 1], [0.5, 0.25, 0.125])
    x = np.random.default_rng(3).standard_normal((8, 3)).astype(np.float32)
    y = np.random.default_rng(4).standard_normal((8, 1)).astype(np.float32)
    model = Sequential([Dense(1, use_bias=False, input_shape=(3,))])
    model.compile(optimizer=SGD(sched), loss="mse")
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    for k in range(3):
        w = model.get_weights()[0].astype(np.float64)
        assert model.optimizer.current_learning_rate() == sched(k)
        model.train_on_batch(x, y)
        grad = 2.0 / 8 * xd.T @ (xd @ w - yd)
        np.testing.assert_allclose(model.get_weights()[0], w - sched(k) * grad, rtol=1e-5,
                                   atol=1e-6)


def test_progress_times_read_like_keras():
    from fastnn.callbacks.progbar import _format_seconds
    assert _format_seconds(0.000447) == "447us"
    assert _format_seconds(0.0123) == "12ms"
    assert _format_seconds(3.4) == "3s"
    assert _format_seconds(75) == "1:15"
    assert _format_seconds(3725) == "1:02:05"
