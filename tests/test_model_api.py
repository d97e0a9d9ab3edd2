"""The Keras-style model API: construction, compile, fit/evaluate/predict, weights,
and clear errors for bad input."""
import io

import numpy as np
import pytest

import fastnn
from fastnn import Input, Model, Sequential
from fastnn.layers import Activation, Dense, Dropout, Flatten, Reshape
from fastnn.utils import set_random_seed, to_categorical


def _data(n=64, shape=(4, 5), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + shape).astype(np.float32)
    y = rng.integers(0, classes, n)
    return x, y


def _mlp(classes=3, shape=(4, 5), **kwargs):
    return Sequential([Flatten(input_shape=shape), Dense(8, activation="relu"),
                       Dense(classes, activation="softmax")], **kwargs)


def test_keras_example_shape_of_api():
    x, y = _data()
    model = _mlp()
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, to_categorical(y), epochs=2, batch_size=16, verbose=0,
                        validation_data=(x, to_categorical(y)))
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 2 for v in history.history.values())
    loss, acc = model.evaluate(x, to_categorical(y), verbose=0)
    assert np.isfinite(loss) and 0.0 <= acc <= 1.0
    pred = model.predict(x, verbose=0)
    assert pred.shape == (64, 3) and pred.dtype == np.float32
    np.testing.assert_allclose(pred.sum(axis=1), 1.0, rtol=1e-5)


def test_weights_follow_keras_layout_and_round_trip():
    model = _mlp()
    weights = model.get_weights()
    assert [w.shape for w in weights] == [(20, 8), (8,), (8, 3), (3,)]
    assert model.count_params() == 20 * 8 + 8 + 8 * 3 + 3
    new = [np.full_like(w, i + 0.5) for i, w in enumerate(weights)]
    model.set_weights(new)
    for got, want in zip(model.get_weights(), new):
        np.testing.assert_array_equal(got, want)


def test_predict_matches_numpy_forward():
    x, _ = _data()
    model = _mlp()
    w1, b1, w2, b2 = [w.astype(np.float64) for w in model.get_weights()]
    h = np.maximum(x.reshape(64, -1) @ w1 + b1, 0)
    z = h @ w2 + b2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(x, verbose=0), p, rtol=1e-4, atol=1e-6)


def test_evaluate_loss_is_sample_weighted_mean_over_uneven_batches():
    x, y = _data(n=50)
    model = _mlp()
    model.compile("sgd", "sparse_categorical_crossentropy")
    p = model.predict(x, verbose=0).astype(np.float64)
    expected = -np.mean(np.log(p[np.arange(50), y]))
    assert model.evaluate(x, y, batch_size=16, verbose=0) == pytest.approx(expected, rel=1e-5)


def test_same_seed_same_weights_bit_for_bit():
    x, y = _data()

    def run():
        set_random_seed(7)
        model = Sequential([Flatten(input_shape=(4, 5)), Dense(8, activation="relu"),
                            Dropout(0.25), Dense(3, activation="softmax")])
        model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        model.fit(x, y, epochs=2, batch_size=10, verbose=0)
        return model.get_weights()

    for a, b in zip(run(), run()):
        np.testing.assert_array_equal(a, b)


def test_functional_model_with_shared_layer_and_merge_free_graph():
    x, y = _data()
    set_random_seed(1)
    inp = Input((4, 5))
    h = Dense(6, activation="tanh")(Flatten()(inp))
    shared = Dense(6, activation="tanh")
    out = Dense(3, activation="softmax")(shared(shared(h)))
    model = Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    before = model.get_weights()
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = model.get_weights()
    assert len(before) == 6
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))


def test_non_tty_output_is_one_line_per_epoch(capsys):
    x, y = _data()
    model = _mlp()
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    model.fit(x, y, epochs=3, batch_size=8, verbose="auto")
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    assert len(lines) == 3 and all(l.startswith(f"Epoch {i + 1}/3") for i, l in enumerate(lines))
    assert "\r" not in "".join(lines)


def test_summary_lists_layers_and_totals():
    out = io.StringIO()
    _mlp().summary(print_fn=lambda s: out.write(s + "\n"))
    text = out.getvalue()
    assert "Dense" in text and "Total params: 195" in text


def test_train_on_batch_changes_weights_and_returns_loss():
    x, y = _data(n=16)
    model = _mlp()
    model.compile("sgd", "sparse_categorical_crossentropy", ["accuracy"])
    before = model.get_weights()[0]
    loss, acc = model.train_on_batch(x, y)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert not np.array_equal(before, model.get_weights()[0])


def test_builds_on_first_data_without_input_shape():
    x, y = _data()
    model = Sequential([Flatten(), Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, verbose=0)
    assert model.get_weights()[0].shape == (20, 3)


@pytest.mark.parametrize("loss,target", [
    ("binary_crossentropy", "binary"), ("mse", "real"), ("mae", "real")])
def test_other_losses_train(loss, target):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = (x[:, :2] > 0).astype(np.float32) if target == "binary" else x[:, :2] * 0.5
    act = "sigmoid" if target == "binary" else None
    model = Sequential([Dense(8, activation="tanh", input_shape=(6,)), Dense(2, activation=act)])
    model.compile(fastnn.optimizers.Adam(0.01), loss, ["mae"])
    h = model.fit(x, y, epochs=30, batch_size=8, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]


class TestBadInput:
    def setup_method(self):
        self.model = _mlp()
        self.model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
        self.x, self.y = _data()

    def test_wrong_sample_shape(self):
        with pytest.raises(ValueError, match=r"expects \(4, 5\)"):
            self.model.fit(self.x.reshape(64, 5, 4), self.y, verbose=0)

    def test_wrong_rank(self):
        with pytest.raises(ValueError, match="batch axis"):
            self.model.predict(np.zeros(20, np.float32))

    def test_nan_and_inf_in_x(self):
        x = self.x.copy()
        x[5, 1, 1] = np.nan
        with pytest.raises(ValueError, match="NaN or infinity.*sample 5"):
            self.model.fit(x, self.y, verbose=0)
        x[5, 1, 1] = np.inf
        with pytest.raises(ValueError, match="NaN or infinity"):
            self.model.predict(x)

    def test_labels_out_of_range(self):
        with pytest.raises(ValueError, match=r"labels must be in \[0, 3\).*found 3"):
            self.model.fit(self.x, self.y + 1, verbose=0)
        with pytest.raises(ValueError, match="found -1"):
            self.model.fit(self.x, self.y - 1, verbose=0)

    def test_non_integer_labels(self):
        with pytest.raises(ValueError, match="integers"):
            self.model.fit(self.x, self.y + 0.5, verbose=0)

    def test_mismatched_lengths(self):
        with pytest.raises(ValueError, match="different lengths: 64 samples vs 63"):
            self.model.fit(self.x, self.y[:-1], verbose=0)

    def test_empty(self):
        with pytest.raises(ValueError, match="empty"):
            self.model.fit(self.x[:0], self.y[:0], verbose=0)

    def test_object_dtype(self):
        with pytest.raises(TypeError, match="numbers"):
            self.model.predict(np.array([[None] * 20] * 2, dtype=object).reshape(2, 4, 5))

    def test_one_hot_loss_given_integer_labels(self):
        model = _mlp()
        model.compile("adam", "categorical_crossentropy")
        with pytest.raises(ValueError, match="to_categorical"):
            model.fit(self.x, self.y, verbose=0)

    def test_non_contiguous_and_float64_input_is_accepted(self):
        x64 = np.asfortranarray(self.x.astype(np.float64))
        np.testing.assert_allclose(self.model.predict(x64, verbose=0),
                                   self.model.predict(self.x, verbose=0), rtol=1e-6)

    def test_fit_before_compile(self):
        with pytest.raises(RuntimeError, match="compile"):
            _mlp().fit(self.x, self.y, verbose=0)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="batch_size"):
            self.model.fit(self.x, self.y, batch_size=0, verbose=0)
        with pytest.raises(ValueError, match="epochs"):
            self.model.fit(self.x, self.y, epochs=-1, verbose=0)
        with pytest.raises(ValueError, match="unknown loss"):
            self.model.compile("adam", "hinge_of_doom")
        with pytest.raises(ValueError, match="unknown optimizer"):
            self.model.compile("adamax_plus", "mse")
        with pytest.raises(ValueError, match="unknown metric"):
            self.model.compile("adam", "sparse_categorical_crossentropy", ["f1"])
        with pytest.raises(ValueError, match="unknown activation"):
            Dense(3, activation="swishy")
        with pytest.raises(ValueError, match="units"):
            Dense(0)
        with pytest.raises(TypeError, match="unexpected keyword"):
            Dense(3, activaton="relu")

    def test_set_weights_checks(self):
        weights = self.model.get_weights()
        with pytest.raises(ValueError, match="4 weight arrays, got 3"):
            self.model.set_weights(weights[:3])
        weights[0] = weights[0].T
        with pytest.raises(ValueError, match="shape"):
            self.model.set_weights(weights)
        weights = self.model.get_weights()
        weights[1][0] = np.nan
        with pytest.raises(ValueError, match="finite"):
            self.model.set_weights(weights)

    def test_reshape_size_mismatch(self):
        with pytest.raises(ValueError, match="cannot reshape"):
            Sequential([Reshape((7,), input_shape=(4, 5))])


def test_fused_softmax_and_explicit_activation_layer_agree():
    x, y = _data()
    set_random_seed(3)
    a = Sequential([Flatten(input_shape=(4, 5)), Dense(3, activation="softmax")])
    set_random_seed(3)
    b = Sequential([Flatten(input_shape=(4, 5)), Dense(3), Activation("softmax")])
    for m in (a, b):
        m.compile("sgd", "sparse_categorical_crossentropy")
        m.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-5, atol=1e-6)
