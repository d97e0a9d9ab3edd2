"""The functional API: Input, layers called on tensors, Model(inputs, outputs).

Forward results are checked against plain float64 NumPy written here, weight
gradients against central finite differences of that NumPy forward, and the
graph executor against the Sequential one on the same network.
"""
import numpy as np
import pytest

import reference as ref

from fastnn import Input, Model, Sequential
from fastnn.layers import (Activation, Add, BatchNormalization, Concatenate, Conv2D, Dense,
                           Dropout, Flatten, GlobalAveragePooling2D, MaxPooling2D, Multiply)
from fastnn.optimizers import SGD
from fastnn.utils import set_random_seed

H = 1e-6


# ---------------------------------------------------------------------------
# float64 references
# ---------------------------------------------------------------------------

def act(name, z):
    return {"linear": lambda v: v, "relu": lambda v: np.maximum(v, 0.0), "tanh": np.tanh,
            "sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v))}[name](z)


def dense(x, w, b, activation="linear"):
    return act(activation, x @ w + b)


def mse(pred, target):
    return float(np.mean((pred - target) ** 2))


def model_grads(model, x, y):
    """Gradients of one SGD step (lr 0: weights unchanged), layer by layer in
    get_weights order, and the step's loss."""
    model.compile(SGD(learning_rate=0.0), "mse")
    loss = model.train_on_batch(x, y)
    grads = [np.array(layer.grad(spec.name), dtype=np.float64)
             for layer in model._compute_layers() for spec in layer.weight_specs
             if layer.grad(spec.name) is not None]
    return grads, float(loss)


def assert_grads_match(model, x, y, reference_loss):
    weights = [w.astype(np.float64) for w in model.get_weights()]
    expected = ref.finite_differences(reference_loss, weights, h=H)
    got, loss = model_grads(model, x, y)
    assert loss == pytest.approx(reference_loss(weights), rel=1e-5)
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-3, atol=2e-5)


# ---------------------------------------------------------------------------
# shared inputs and two-branch merges
# ---------------------------------------------------------------------------

MERGES = {
    "add": (Add, lambda a, b: a + b),
    "multiply": (Multiply, lambda a, b: a * b),
    "concatenate": (Concatenate, lambda a, b: np.concatenate([a, b], axis=-1)),
}


def branch_model(merge):
    """x -> h (Dense, tanh) -> two branches from the same tensor -> merge -> Dense.

    h feeds both branches, so its gradient is the sum of two contributions,
    and the first Dense's weight gradient checks that sum."""
    set_random_seed(11)
    inp = Input((5,))
    h = Dense(4, activation="tanh", name="h")(inp)
    a = Dense(3, activation="sigmoid", name="a")(h)
    b = Dense(3, activation="tanh", name="b")(h)
    m = MERGES[merge][0](name="merge")([a, b])
    out = Dense(2, name="out")(m)
    return Model(inp, out)


def branch_reference(merge, x):
    combine = MERGES[merge][1]

    def forward(w):
        wh, bh, wa, ba, wb, bb, wo, bo = w
        h = dense(x, wh, bh, "tanh")
        return dense(combine(dense(h, wa, ba, "sigmoid"), dense(h, wb, bb, "tanh")), wo, bo)
    return forward


@pytest.mark.parametrize("merge", sorted(MERGES))
def test_two_branch_merge_forward_matches_numpy(merge):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((7, 5))
    model = branch_model(merge)
    w = [v.astype(np.float64) for v in model.get_weights()]
    np.testing.assert_allclose(model.predict(x, verbose=0), branch_reference(merge, x)(w),
                               rtol=1e-5, atol=1e-6)
    width = 6 if merge == "concatenate" else 3
    assert model.get_layer("merge").output_shape_ == (width,)


@pytest.mark.parametrize("merge", sorted(MERGES))
def test_two_branch_merge_gradients_match_finite_differences(merge):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 5))
    y = rng.standard_normal((6, 2))
    model = branch_model(merge)
    forward = branch_reference(merge, x)
    assert_grads_match(model, x, y, lambda w: mse(forward(w), y))


def test_one_input_feeding_two_branches_directly():
    """The Input itself feeds two layers; the graph runs both and merges them."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((9, 4))
    y = rng.standard_normal((9, 3))
    set_random_seed(3)
    inp = Input((4,))
    out = Add()([Dense(3, name="p")(inp), Dense(3, activation="relu", name="q")(inp)])
    model = Model(inp, out)

    def forward(w):
        wp, bp, wq, bq = w
        return dense(x, wp, bp) + dense(x, wq, bq, "relu")
    w = [v.astype(np.float64) for v in model.get_weights()]
    np.testing.assert_allclose(model.predict(x, verbose=0), forward(w), rtol=1e-5, atol=1e-6)
    assert_grads_match(model, x, y, lambda w: mse(forward(w), y))


def test_three_input_merges():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((5, 3))
    set_random_seed(4)
    inp = Input((3,))
    branches = [Dense(2, name=f"d{i}")(inp) for i in range(3)]
    out = Concatenate()([Add()(branches), Multiply()(branches), Concatenate()(branches)])
    model = Model(inp, out)
    w = [v.astype(np.float64) for v in model.get_weights()]
    d = [dense(x, w[2 * i], w[2 * i + 1]) for i in range(3)]
    want = np.concatenate([d[0] + d[1] + d[2], d[0] * d[1] * d[2], *d], axis=-1)
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------
# a layer used twice
# ---------------------------------------------------------------------------

def test_layer_reused_in_sequence_shares_weights_and_sums_gradients():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 4))
    y = rng.standard_normal((6, 2))
    set_random_seed(5)
    shared = Dense(4, activation="tanh", name="shared")
    inp = Input((4,))
    out = Dense(2, name="out")(shared(shared(inp)))
    model = Model(inp, out)
    # One copy of the weights, however often the layer is called.
    assert model.count_params() == (4 * 4 + 4) + (4 * 2 + 2)
    assert [l.name for l in model.layers if l.weight_specs] == ["shared", "out"]

    def forward(w):
        ws, bs, wo, bo = w
        return dense(dense(dense(x, ws, bs, "tanh"), ws, bs, "tanh"), wo, bo)
    w = [v.astype(np.float64) for v in model.get_weights()]
    np.testing.assert_allclose(model.predict(x, verbose=0), forward(w), rtol=1e-5, atol=1e-6)
    assert_grads_match(model, x, y, lambda w: mse(forward(w), y))


def test_layer_reused_in_parallel_gradient_is_the_sum_of_both_uses():
    """out = D(x) + D(2x) with a linear D: dL/dW = x^T g + (2x)^T g, worked out by hand."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8, 3))
    y = rng.standard_normal((8, 2))
    set_random_seed(6)
    inp = Input((3,))
    doubled = Dense(3, use_bias=False, kernel_initializer="zeros", trainable=False,
                    name="double")(inp)
    shared = Dense(2, name="shared")
    model = Model(inp, Add()([shared(inp), shared(doubled)]))
    model.get_weights()  # allocates the model's weights: layers can then be set
    model.get_layer("double").set_weights([2.0 * np.eye(3)])
    w, b = (v.astype(np.float64) for v in model.get_layer("shared").get_weights())
    pred = x @ w + b + (2 * x) @ w + b
    g = 2.0 * (pred - y) / pred.size  # dL/dpred of the mean squared error
    want_dw = x.T @ g + (2 * x).T @ g
    want_db = 2 * g.sum(axis=0)
    got, _ = model_grads(model, x, y)
    np.testing.assert_allclose(got[0], want_dw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want_db, rtol=1e-5, atol=1e-6)
    # The frozen layer has no gradient buffer: only the shared layer's two arrays.
    assert len(got) == 2 and model.count_params() == 9 + 8


def test_shared_layer_is_one_set_of_weights_after_training():
    set_random_seed(7)
    shared = Dense(3, activation="tanh", name="shared")
    inp = Input((3,))
    model = Model(inp, Dense(1, name="out")(Add()([shared(inp), shared(shared(inp))])))
    model.compile("adam", "mse")
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((32, 3)), rng.standard_normal((32, 1))
    before = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    after = model.get_weights()
    assert len(after) == 4
    assert not np.allclose(before[0], after[0])
    # The layer object and the model see the same (updated) weights.
    np.testing.assert_array_equal(model.get_layer("shared").get_weights()[0], after[0])


# ---------------------------------------------------------------------------
# a residual network trains
# ---------------------------------------------------------------------------

def stripes(n, rng):
    """8x8 images with a faint horizontal stripe (class 0), a vertical one (1)
    or neither (2), in noise."""
    y = rng.integers(0, 3, n)
    x = 0.3 * rng.standard_normal((n, 8, 8, 1))
    pos = rng.integers(1, 7, n)
    for i in range(n):
        if y[i] == 0:
            x[i, pos[i], :, 0] += 1.0
        elif y[i] == 1:
            x[i, :, pos[i], 0] += 1.0
    return x.astype(np.float32), y


def test_residual_block_with_batchnorm_trains():
    rng = np.random.default_rng(8)
    x, y = stripes(384, rng)
    x_test, y_test = stripes(192, rng)
    set_random_seed(8)
    inp = Input((8, 8, 1))
    h = Conv2D(8, 3, padding="same", use_bias=False)(inp)
    h = Activation("relu")(BatchNormalization(momentum=0.9)(h))
    r = Conv2D(8, 3, padding="same", use_bias=False)(h)
    r = Activation("relu")(BatchNormalization(momentum=0.9)(r))
    r = BatchNormalization(momentum=0.9)(Conv2D(8, 3, padding="same", use_bias=False)(r))
    h = Activation("relu")(Add()([h, r]))
    out = Dense(3, activation="softmax")(GlobalAveragePooling2D()(h))
    model = Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x, y, epochs=8, batch_size=32, verbose=0).history
    assert history["loss"][-1] < 0.5 * history["loss"][0]
    loss, accuracy = model.evaluate(x_test, y_test, batch_size=64, verbose=0)
    assert accuracy > 0.8  # chance is 1/3
    assert np.all(np.isfinite(model.predict(x_test, verbose=0)))


# ---------------------------------------------------------------------------
# the graph behaves as a Sequential model
# ---------------------------------------------------------------------------

def lenet_like_layers():
    return [Conv2D(3, 3, padding="same", activation="relu", name="c1"),
            MaxPooling2D(2, name="p1"), Flatten(name="f"), Dense(5, activation="relu", name="d1"),
            Dense(3, activation="softmax", name="d2")]


def test_graph_runs_exactly_as_sequential():
    rng = np.random.default_rng(9)
    x = rng.random((40, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 40)

    set_random_seed(9)
    seq = Sequential([Input((6, 6, 2))] + lenet_like_layers())
    inp = Input((6, 6, 2))
    t = inp
    for layer in lenet_like_layers():
        t = layer(t)
    graph = Model(inp, t)
    for m in (seq, graph):
        m.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    # Same weights in the same order and layouts.
    ws, wg = seq.get_weights(), graph.get_weights()
    assert [w.shape for w in ws] == [w.shape for w in wg] == \
        [(3, 3, 2, 3), (3,), (27, 5), (5,), (5, 3), (3,)]
    graph.set_weights(ws)
    for a, b in zip(graph.get_weights(), ws):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(seq.predict(x, batch_size=16, verbose=0),
                                  graph.predict(x, batch_size=16, verbose=0))

    histories = []
    for m in (seq, graph):
        set_random_seed(99)  # the same shuffles
        histories.append(m.fit(x, y, epochs=2, batch_size=16, verbose=0).history)
    assert histories[0] == histories[1]
    for a, b in zip(seq.get_weights(), graph.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert seq.evaluate(x, y, verbose=0) == graph.evaluate(x, y, verbose=0)
    assert graph.evaluate(x, y, verbose=0, return_dict=True).keys() == {"loss", "accuracy"}

    def rows(model):
        lines = []
        model.summary(print_fn=lines.append)
        return lines
    s_rows, g_rows = rows(seq), rows(graph)
    assert s_rows[1:] == g_rows[1:]  # all but the title line ('Model: "..."')
    assert any("c1 (Conv2D)" in r and "(None, 6, 6, 3)" in r and "57" in r for r in g_rows)
    assert "Total params: 215" in g_rows


def test_graph_summary_lists_merge_layers_and_counts():
    set_random_seed(10)
    inp = Input((4,))
    a, b = Dense(3, name="a")(inp), Dense(3, name="b")(inp)
    model = Model(inp, Concatenate(name="cat")([a, b]), name="two_branch")
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert 'Model: "two_branch"' in text
    assert "cat (Concatenate)" in text and "(None, 6)" in text
    assert "Total params: 30" in text


def test_graph_set_weights_checks_count_and_shapes():
    model = branch_model("add")
    weights = model.get_weights()
    with pytest.raises(ValueError, match="weight arrays"):
        model.set_weights(weights[:-1])
    bad = list(weights)
    bad[0] = np.zeros((5, 5), np.float32)
    with pytest.raises(ValueError, match="shape"):
        model.set_weights(bad)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_output_not_reachable_from_the_input_is_rejected():
    inp, other = Input((3,)), Input((3,))
    out = Dense(2)(other)
    with pytest.raises(ValueError, match="not passed to Model"):
        Model(inp, out)
    # Partly connected: one branch of a merge comes from another Input.
    merged = Add()([Dense(2)(inp), Dense(2)(other)])
    with pytest.raises(ValueError, match="not passed to Model"):
        Model(inp, merged)


def test_model_needs_symbolic_tensors():
    inp = Input((3,))
    with pytest.raises(ValueError):
        Model(inp, np.zeros((1, 3)))
    with pytest.raises(ValueError):
        Model([inp, Input((3,))], Dense(1)(inp))


def test_calling_layers_on_wrong_shapes():
    img = Input((6, 6, 2))
    vec = Input((4,))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        Conv2D(2, 3)(vec)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        MaxPooling2D(2)(vec)
    with pytest.raises(ValueError, match="one shape"):
        Add()([vec, Dense(5)(vec)])
    with pytest.raises(ValueError, match="one shape"):
        Multiply()([vec, Dense(5)(vec)])
    with pytest.raises(ValueError, match="all but the last axis"):
        Concatenate()([img, Conv2D(2, 3)(img)])  # (6, 6, 2) vs (4, 4, 2)
    d = Dense(3, name="built_for_4")
    d(vec)
    with pytest.raises(ValueError, match="built_for_4.*built for input shape"):
        d(Input((5,)))
    with pytest.raises(TypeError, match="list of tensors"):
        Add()(vec)
    with pytest.raises(TypeError, match="single tensor"):
        Dense(2)([vec, vec])
    with pytest.raises(TypeError, match="model.predict"):
        Dense(2)(np.zeros((1, 4), np.float32))


def test_graph_rejects_data_of_the_wrong_shape():
    model = branch_model("add")
    model.compile("sgd", "mse")
    with pytest.raises(ValueError, match=r"expects \(5,\)"):
        model.predict(np.zeros((2, 4), np.float32), verbose=0)
    with pytest.raises(ValueError, match="different lengths"):
        model.fit(np.zeros((3, 5), np.float32), np.zeros((2, 2), np.float32), verbose=0)


# ---------------------------------------------------------------------------
# batch normalisation: training vs inference
# ---------------------------------------------------------------------------

def bn_model(momentum):
    inp = Input((3, 4, 5))
    model = Model(inp, BatchNormalization(momentum=momentum, name="bn")(inp))
    model.get_weights()  # allocates the model's weights: layers can then be set
    return model


def test_batchnorm_predict_uses_moving_statistics():
    rng = np.random.default_rng(12)
    x = rng.standard_normal((6, 3, 4, 5)).astype(np.float32) * 2 + 1
    model = bn_model(0.99)
    gamma, beta = rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    mean, var = rng.standard_normal(5), rng.uniform(0.2, 3, 5)
    model.get_layer("bn").set_weights([gamma, beta, mean, var])
    want = (x.astype(np.float64) - mean) / np.sqrt(var + 1e-3) * gamma + beta
    np.testing.assert_allclose(model.predict(x, verbose=0), want, rtol=1e-5, atol=1e-5)
    # Inference leaves the moving statistics alone.
    model.compile("sgd", "mse")
    model.evaluate(x, np.zeros_like(x), verbose=0)
    np.testing.assert_allclose(model.get_layer("bn").get_weights()[2], mean, rtol=1e-6)
    np.testing.assert_allclose(model.get_layer("bn").get_weights()[3], var, rtol=1e-6)


@pytest.mark.parametrize("momentum", [0.99, 0.9])
def test_batchnorm_fit_normalises_with_batch_statistics_and_updates_moving_ones(momentum):
    rng = np.random.default_rng(13)
    x = (rng.standard_normal((7, 3, 4, 5)) * rng.uniform(0.5, 3, 5)
         + rng.standard_normal(5)).astype(np.float32)
    model = bn_model(momentum)
    mean0, var0 = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    model.get_layer("bn").set_weights([np.ones(5), np.zeros(5), mean0, var0])
    model.compile(SGD(learning_rate=0.0), "mse")
    # Training mode: each channel normalised by the batch's own mean and
    # biased variance, so the loss against zero is mean(var / (var + eps)).
    loss = model.fit(x, np.zeros_like(x), batch_size=7, epochs=1, shuffle=False,
                     verbose=0).history["loss"][0]
    x64 = x.astype(np.float64).reshape(-1, 5)
    batch_mean, batch_var = x64.mean(axis=0), x64.var(axis=0)
    assert loss == pytest.approx(np.mean(batch_var / (batch_var + 1e-3)), rel=1e-5)
    # Keras: moving = moving * momentum + batch * (1 - momentum), biased variance.
    _, _, mean1, var1 = model.get_layer("bn").get_weights()
    np.testing.assert_allclose(mean1, mean0 * momentum + batch_mean * (1 - momentum),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var1, var0 * momentum + batch_var * (1 - momentum),
                               rtol=1e-5, atol=1e-6)
    # ... and inference now uses those updated statistics.
    want = (x64 - mean1) / np.sqrt(var1.astype(np.float64) + 1e-3)
    np.testing.assert_allclose(model.predict(x, verbose=0).reshape(-1, 5), want,
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# dropout: training vs inference
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.25, 0.6])
def test_dropout_is_inverted_in_training_and_the_identity_in_inference(rate):
    d = 1000
    rng = np.random.default_rng(14)
    x = rng.uniform(0.5, 2.0, (1, d)).astype(np.float32)
    inp = Input((d,))
    dense_layer = Dense(d, use_bias=False, name="eye")
    model = Model(inp, Dropout(rate, seed=3)(dense_layer(inp)))
    with pytest.raises(RuntimeError, match="build its model first"):
        dense_layer.set_weights([np.eye(d, dtype=np.float32)])
    model.get_weights()
    dense_layer.set_weights([np.eye(d, dtype=np.float32)])
    # Inference: the identity, in predict and evaluate.
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
    model.compile(SGD(learning_rate=0.0), "mse")
    assert model.evaluate(x, np.zeros_like(x), verbose=0) == pytest.approx(
        np.mean(x.astype(np.float64) ** 2), rel=1e-6)
    # Training: y = mask * h / (1 - rate) with h = x. With L = mean(y^2), the
    # kernel's diagonal gradient is 2 * mask * x^2 / ((1 - rate)^2 * d), which
    # recovers the mask element by element.
    loss = model.train_on_batch(x, np.zeros_like(x))
    diag = np.diag(np.array(dense_layer.grad("kernel"), dtype=np.float64))
    x64 = x[0].astype(np.float64)
    mask = diag * (1 - rate) ** 2 * d / (2 * x64 ** 2)
    kept = mask > 0.5
    np.testing.assert_allclose(mask[kept], 1.0, rtol=1e-4)
    np.testing.assert_allclose(mask[~kept], 0.0, atol=1e-6)
    assert abs(kept.mean() - (1 - rate)) < 0.06  # ~4 standard deviations at d = 1000
    assert loss == pytest.approx(np.sum(x64[kept] ** 2) / (1 - rate) ** 2 / d, rel=1e-5)
    # Inference again after training: still the identity.
    np.testing.assert_array_equal(model.predict(x, verbose=0), x)
