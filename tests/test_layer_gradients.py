"""Backward passes of layers and losses against central finite differences.

fastnn computes gradients in float32 through its kernels; the finite differences
are taken on an independent float64 forward written with tests/reference.py.
"""
import numpy as np
import pytest

import reference as ref
import reference_conv as rc
from fastnn import Input, Model, Sequential, losses
from fastnn.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate,
                           Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                           GlobalMaxPooling2D, MaxPooling2D, Multiply, Reshape, ZeroPadding2D)
from fastnn.utils import set_random_seed

H = 1e-6


def analytic_grads(model, x, y):
    """One forward/backward pass through fastnn (no optimiser step); per-weight grads."""
    model.compile("sgd", model.loss)
    x = model._prepare_x(x)
    y = model._prepare_y(y, len(x))
    backend = model.backend
    acc, macc = backend.zeros((1,), "float64"), backend.zeros((1,), "float64")
    out = model._forward(x, training=True)
    model._backward(model._loss_and_metrics(out, y, acc, macc))
    grads = []
    for layer in model._compute_layers():
        for spec in layer.weight_specs:
            g = layer.grad(spec.name)
            grads.append(None if g is None else np.array(g, dtype=np.float64))
    return grads, float(acc[0])


def check(model, x, y, reference_loss, order=None):
    """``order``: layer names in the order ``reference_loss`` takes their weights."""
    set_random_seed(0)
    model.get_weights()  # builds the model's flat buffers
    names = [l.name for l in model._compute_layers() if l.weight_specs]
    order = order or names
    weights = [w.astype(np.float64) for name in order for w in model.get_layer(name).get_weights()]
    got, loss = analytic_grads(model, x, y)
    by_layer = dict(zip(names, np.split(np.arange(len(got)), np.cumsum(
        [len(model.get_layer(n).weight_specs) for n in names])[:-1])))
    got = [got[i] for name in order for i in by_layer[name]]
    assert loss == pytest.approx(reference_loss(weights), rel=1e-4, abs=1e-6)
    want = ref.finite_differences(reference_loss, weights, [g is None for g in got], H)
    for g, w in zip(got, want):
        if g is None:  # non-trainable (moving statistics)
            continue
        scale = max(np.abs(w).max(), 1e-3)
        np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-4 * scale)


def _data(rows=5, features=4, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features))
    labels = rng.integers(0, classes, rows)
    return x, labels, ref.one_hot(labels, classes)


@pytest.mark.parametrize("hidden_act", ["relu", "sigmoid", "tanh", "linear"])
def test_dense_stack_with_fused_softmax_cce(hidden_act):
    x, _, t = _data()
    model = Sequential([Dense(6, activation=hidden_act, input_shape=(4,)),
                        Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")

    def f(w):
        h = ref.dense(x, w[0], w[1], hidden_act)
        return ref.softmax_cce_logits(h @ w[2] + w[3], t)[0]

    check(model, x, t, f)


def test_sparse_labels_and_activation_layer_softmax():
    x, labels, _ = _data()
    model = Sequential([Dense(6, activation="tanh", input_shape=(4,)), Dense(3),
                        Activation("softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")

    def f(w):
        h = ref.dense(x, w[0], w[1], "tanh")
        return ref.softmax_sparse_cce_logits(h @ w[2] + w[3], labels)[0]

    check(model, x, labels, f)


@pytest.mark.parametrize("sparse", [False, True])
def test_cross_entropy_from_probabilities_when_not_fusable(sparse):
    # A trailing Dropout(0) hides the softmax from the loss: the probability kernel runs.
    x, labels, t = _data()
    model = Sequential([Dense(3, activation="softmax", input_shape=(4,)), Dropout(0.0)])
    model.compile("sgd", "sparse_categorical_crossentropy" if sparse else
                  "categorical_crossentropy")
    probs_loss = ref.sparse_cce_probs if sparse else ref.cce_probs
    target = labels if sparse else t
    assert model._compiled.loss_kind == ("sparse_cce_probs" if sparse else "cce_probs")

    def f(w):
        return probs_loss(ref.dense(x, w[0], w[1], "softmax"), target)[0]

    check(model, x, target, f)


def test_from_logits_cross_entropy():
    x, _, t = _data()
    model = Sequential([Dense(3, input_shape=(4,))])
    model.compile("sgd", losses.CategoricalCrossentropy(from_logits=True))

    def f(w):
        return ref.softmax_cce_logits(x @ w[0] + w[1], t)[0]

    check(model, x, t, f)


@pytest.mark.parametrize("fused", [True, False])
def test_binary_cross_entropy(fused):
    x, _, _ = _data()
    t = (np.random.default_rng(1).random((5, 2)) > 0.5).astype(np.float64)
    layers = [Dense(2, activation="sigmoid", input_shape=(4,))]
    if not fused:
        layers.append(Dropout(0.0))
    model = Sequential(layers)
    model.compile("sgd", "binary_crossentropy")

    def f(w):
        z = x @ w[0] + w[1]
        return (ref.sigmoid_bce_logits(z, t) if fused else ref.bce_probs(ref.sigmoid(z), t))[0]

    check(model, x, t, f)


@pytest.mark.parametrize("loss,ref_loss", [("mse", ref.mse), ("mae", ref.mae)])
def test_regression_losses(loss, ref_loss):
    x, _, _ = _data()
    t = np.random.default_rng(2).standard_normal((5, 2))
    model = Sequential([Dense(5, activation="sigmoid", input_shape=(4,)), Dense(2)])
    model.compile("sgd", loss)

    def f(w):
        return ref_loss(ref.dense(ref.dense(x, w[0], w[1], "sigmoid"), w[2], w[3], "linear"), t)[0]

    check(model, x, t, f)


def test_dropout_mask_is_applied_in_backward():
    x, labels, _ = _data(rows=6)
    model = Sequential([Dense(8, activation="relu", input_shape=(4,)), Dropout(0.5),
                        Dense(3, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    set_random_seed(0)
    analytic_grads(model, x, labels)
    mask = np.array(model.layers[1].ctx["mask"], dtype=np.float64)
    assert set(np.unique(mask)) <= {0.0, 2.0} and 0 < (mask == 0).sum() < mask.size

    def f(w):
        h = ref.dense(x, w[0], w[1], "relu") * mask
        return ref.softmax_sparse_cce_logits(h @ w[2] + w[3], labels)[0]

    check(model, x, labels, f)  # check() reseeds to 0, so the same mask is drawn


def test_flatten_and_reshape_pass_gradients_through():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 3))
    labels = rng.integers(0, 2, 4)
    model = Sequential([Flatten(input_shape=(2, 3)), Reshape((3, 2)), Flatten(),
                        Dense(2, activation="softmax")])
    model.compile("sgd", "sparse_categorical_crossentropy")

    def f(w):
        return ref.softmax_sparse_cce_logits(x.reshape(4, 6) @ w[0] + w[1], labels)[0]

    check(model, x, labels, f)


def test_functional_merges_and_a_shared_layer():
    x, labels, _ = _data(rows=5, features=4)
    set_random_seed(4)
    inp = Input((4,))
    a = Dense(3, activation="tanh", name="a")(inp)
    b = Dense(3, activation="sigmoid", name="b")(inp)
    shared = Dense(3, activation="tanh", name="shared")
    s1, s2 = shared(a), shared(b)
    merged = Concatenate()([Add()([s1, s2]), Multiply()([a, s2])])
    out = Dense(3, activation="softmax", name="out")(merged)
    model = Model(inp, out)
    model.compile("sgd", "sparse_categorical_crossentropy")

    def f(w):
        wa, ba, wb, bb, ws, bs, wo, bo = w
        ha = ref.dense(x, wa, ba, "tanh")
        hb = ref.dense(x, wb, bb, "sigmoid")
        h1, h2 = ref.dense(ha, ws, bs, "tanh"), ref.dense(hb, ws, bs, "tanh")
        m = np.concatenate([h1 + h2, ha * h2], axis=1)
        return ref.softmax_sparse_cce_logits(m @ wo + bo, labels)[0]

    check(model, x, labels, f, order=["a", "b", "shared", "out"])


def test_first_layer_skips_input_gradient():
    model = Sequential([Flatten(input_shape=(2, 2)), Dense(3), Dense(2)])
    model.compile("sgd", "mse")
    model.get_weights()
    assert [n.need_dx for n in model._nodes] == [False, False, True]


def test_convolutional_stack():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 6, 5, 2))
    labels = rng.integers(0, 3, 3)
    model = Sequential([
        Conv2D(3, 3, padding="same", activation="tanh", input_shape=(6, 5, 2)),
        BatchNormalization(momentum=0.9),
        MaxPooling2D(2),                                   # -> (3, 2, 3)
        ZeroPadding2D(((1, 0), (0, 1))),                   # -> (4, 3, 3)
        Conv2D(4, (2, 2), strides=(1, 1), dilation_rate=2, activation="sigmoid"),  # (2, 1, 4)
        AveragePooling2D((2, 1)),                          # -> (1, 1, 4)
        Flatten(),
        Dense(3, activation="softmax"),
    ])
    model.compile("sgd", "sparse_categorical_crossentropy")

    def f(w):
        w1, b1, gamma, beta, mm, mv, w2, b2, w3, b3 = w
        h = rc.conv2d_fwd(x, w1, b1, (1, 1), (1, 1, 1, 1), (1, 1), "tanh")
        h = rc.batchnorm_fwd_train(h.reshape(-1, 3), gamma, beta, mm, mv, 0.9, 1e-3)[0]
        h = rc.maxpool2d_fwd(h.reshape(3, 6, 5, 3), (2, 2), (2, 2), (0, 0, 0, 0))[0]
        h = rc.zeropad2d_fwd(h, (1, 0, 0, 1))
        h = rc.conv2d_fwd(h, w2, b2, (1, 1), (0, 0, 0, 0), (2, 2), "sigmoid")
        h = rc.avgpool2d_fwd(h, (2, 1), (2, 1), (0, 0, 0, 0))
        return ref.softmax_sparse_cce_logits(h.reshape(3, 4) @ w3 + b3, labels)[0]

    check(model, x, labels, f)


@pytest.mark.parametrize("pool", [GlobalAveragePooling2D, GlobalMaxPooling2D])
def test_global_pooling_and_strided_valid_conv(pool):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 7, 6, 1))
    t = rng.standard_normal((2, 2))
    model = Sequential([Conv2D(3, (3, 2), strides=2, activation="relu", input_shape=(7, 6, 1)),
                        pool(), Dense(2)])
    model.compile("sgd", "mse")

    def f(w):
        h = rc.conv2d_fwd(x, w[0], w[1], (2, 2), (0, 0, 0, 0), (1, 1), "relu")
        h = rc.global_avgpool_fwd(h) if pool is GlobalAveragePooling2D else \
            rc.global_maxpool_fwd(h)[0]
        return ref.mse(h @ w[2] + w[3], t)[0]

    check(model, x, t, f)
