"""Check mode: the first non-finite layer output, gradient or update is named."""
import numpy as np
import pytest

import fastnn
from fastnn import Input, Model, Sequential
from fastnn.layers import Add, Dense, Flatten
from fastnn.model import Model as ModelClass
from fastnn.numerics import check_numerics, check_numerics_enabled
from fastnn.optimizers import SGD
from fastnn.utils import disable_check_numerics, enable_check_numerics, set_random_seed

_METHODS = ("_forward", "_backward", "_loss_and_metrics", "_train_step")


@pytest.fixture(autouse=True)
def _check_mode_off_afterwards():
    yield
    disable_check_numerics()


def _mlp():
    set_random_seed(0)
    model = Sequential([Flatten(input_shape=(2, 4)), Dense(4, name="first"),
                        Dense(3, name="second"), Dense(1, name="third")])
    model.compile(optimizer=SGD(0.01), loss="mse")
    model.get_weights()  # builds the flat buffers, so tests can poke weights directly
    return model


def _data(n=8, scale=1.0):
    rng = np.random.default_rng(0)
    x = (rng.uniform(0.5, 1.0, (n, 2, 4)) * scale).astype(np.float32)
    return x, np.zeros((n, 1), np.float32)


def test_forward_names_the_first_layer_with_a_non_finite_output():
    model = _mlp()
    model.layers[2].param("kernel")[0, 0] = np.inf  # 'second', bypassing set_weights
    enable_check_numerics()
    x, y = _data()
    with pytest.raises(FloatingPointError, match="forward output of layer 'second' \\(Dense\\)"):
        model.fit(x, y, epochs=1, verbose=0)
    with pytest.raises(FloatingPointError, match="'second'"):
        model.predict(x, verbose=0)


def test_gradient_overflow_is_named_with_the_weight():
    model = _mlp()
    # Every forward value and the loss stay finite, but the kernel gradient of 'third'
    # (its inputs ~1e22 times the loss gradient ~7e15, summed over 8 samples) overflows.
    model.layers[1].set_weights([np.full((8, 4), 1e21, np.float32), np.zeros(4, np.float32)])
    model.layers[2].set_weights([np.full((4, 3), 0.4, np.float32), np.zeros(3, np.float32)])
    model.layers[3].set_weights([np.full((3, 1), 1e-6, np.float32), np.zeros(1, np.float32)])
    enable_check_numerics()
    x, y = _data()
    with pytest.raises(FloatingPointError,
                       match="gradient of weight 'kernel' of layer 'third' \\(Dense\\)"):
        model.train_on_batch(x, y)


def test_an_overflowing_update_is_named():
    model = Sequential([Dense(2, input_shape=(3,), name="only")])
    model.compile(optimizer=SGD(1e38), loss="mse")
    enable_check_numerics()
    x = np.ones((4, 3), np.float32)
    with pytest.raises(FloatingPointError,
                       match="weight '(kernel|bias)' of layer 'only' .*optimizer update"):
        model.train_on_batch(x, np.full((4, 2), 100.0, np.float32))


def test_functional_models_are_checked_too():
    inp = Input((3,))
    a = Dense(3, name="a")(inp)
    b = Dense(3, name="b")(a)
    out = Dense(1, name="out")(Add(name="sum")([a, b]))
    model = Model(inp, out)
    model.compile(optimizer="sgd", loss="mse")
    model.get_weights()
    model.get_layer("b").param("bias")[1] = np.nan
    with check_numerics():
        assert check_numerics_enabled()
        with pytest.raises(FloatingPointError, match="layer 'b'"):
            model.predict(np.ones((2, 3), np.float32), verbose=0)
    assert not check_numerics_enabled()


def test_disabled_mode_restores_the_original_methods_and_finite_training_passes():
    originals = {name: vars(ModelClass)[name] for name in _METHODS}
    model = _mlp()
    enable_check_numerics()
    enable_check_numerics()  # idempotent
    assert all(vars(ModelClass)[name] is not originals[name] for name in _METHODS)
    x, y = _data()
    before = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)  # finite: nothing raised
    assert not all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert all("forward" not in vars(l) and "backward" not in vars(l) for l in model.layers)
    disable_check_numerics()
    disable_check_numerics()
    assert all(vars(ModelClass)[name] is originals[name] for name in _METHODS)
    model.layers[2].param("kernel")[0, 0] = np.inf
    model.fit(x, y, epochs=1, verbose=0)  # unchecked: no exception, just NaN
    assert not np.isfinite(model.evaluate(x, y, verbose=0))


def test_check_mode_does_not_change_results():
    x, y = _data()
    plain = _mlp()
    plain.fit(x, y, epochs=2, batch_size=4, verbose=0)
    enable_check_numerics()
    checked = _mlp()
    checked.fit(x, y, epochs=2, batch_size=4, verbose=0)
    for a, b in zip(plain.get_weights(), checked.get_weights()):
        assert np.array_equal(a, b)


def test_utils_exports():
    assert fastnn.utils.enable_check_numerics is enable_check_numerics
    assert fastnn.utils.disable_check_numerics is disable_check_numerics
