"""Model files: round trips of Sequential and functional models, and clean refusals
of damaged, hostile or newer-version files."""
import json
import struct
import tracemalloc

import numpy as np
import pytest

import fastnn
from fastnn import Input, Model, Sequential
from fastnn import io as fio
from fastnn import saving
from fastnn.io import FileFormatError
from fastnn.layers import (Activation, Add, AveragePooling2D, BatchNormalization, Concatenate,
                           Conv2D, Dense, Dropout, Flatten, GlobalAveragePooling2D,
                           GlobalMaxPooling2D, Layer, MaxPooling2D, Multiply, ReLU, Reshape,
                           Softmax, ZeroPadding2D)
from fastnn.models import load_model, model_from_config
from fastnn.optimizers import SGD, Adam, AdamW, RMSprop
from fastnn.optimizers.schedules import ExponentialDecay
from fastnn.utils import get_rng_state, set_random_seed

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test dependency
    given = None


# ---------------------------------------------------------------------------- models


def _data(n=48, shape=(4, 5), classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n,) + shape).astype(np.float32), rng.integers(0, classes, n)


def _sequential():
    return Sequential([Flatten(input_shape=(4, 5)), Dense(8, activation="relu"),
                       Dropout(0.2), Dense(6, activation="tanh", use_bias=False),
                       Dense(3, activation="softmax")])


def _functional():
    inp = Input((4, 5))
    flat = Flatten()(inp)
    h = Dense(8, activation="relu")(flat)
    shared = Dense(8, activation="tanh")
    a = shared(h)
    b = shared(a)  # one layer applied twice: its weights saved once
    s = Add()([a, b, h])
    c = Add()([s, Reshape((8,))(h)])
    out = Dense(3, activation="softmax")(Dropout(0.1)(c))
    return Model(inp, out, name="residual")


def _trained(build, optimizer="adam", epochs=2, seed=4):
    x, y = _data()
    set_random_seed(seed)
    model = build()
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return model


def _same_weights(a, b):
    wa, wb = a.get_weights(), b.get_weights()
    return len(wa) == len(wb) and all(
        x.shape == y.shape and np.array_equal(x.view(np.uint32), y.view(np.uint32))
        for x, y in zip(wa, wb))


def _same_optimizer_state(a, b):
    sa, sb = a.optimizer.get_state(), b.optimizer.get_state()
    return sa.keys() == sb.keys() and all(np.array_equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------- round trips


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_round_trip_keeps_predictions_weights_and_optimizer_state(tmp_path, build):
    model = _trained(build)
    path = tmp_path / "m.safetensors"
    model.save(path)
    rng_before = get_rng_state()
    loaded = load_model(path)
    assert get_rng_state() == rng_before  # loading draws nothing
    assert type(loaded) is type(model) and loaded.name == model.name
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    assert _same_weights(model, loaded)
    x, _ = _data(n=21, seed=9)
    assert np.array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert loaded.optimizer.iterations == model.optimizer.iterations == 6
    assert _same_optimizer_state(model, loaded)
    assert loaded.get_config() == model.get_config()
    assert loaded.loss.name == "sparse_categorical_crossentropy"
    x, y = _data()
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)


def _every_layer():
    """A functional model that uses every layer class fastnn exports."""
    inp = Input((6, 6, 2))
    c = Conv2D(3, 3, activation="relu")(ZeroPadding2D(1)(inp))
    b = BatchNormalization()(c)
    a = AveragePooling2D(pool_size=1)(MaxPooling2D()(b))
    g1, g2 = GlobalAveragePooling2D()(a), GlobalMaxPooling2D()(b)
    s = Add()([Dense(6)(Flatten()(a)), Concatenate()([g1, g2])])
    h = Dropout(0.1)(ReLU()(Activation("tanh")(s)))
    out = Softmax()(Add()([Dense(3)(h), Reshape((3,))(Multiply()([g1, g2]))]))
    return Model(inp, out)


def test_every_exported_layer_class_round_trips(tmp_path):
    model = _every_layer()
    covered = {type(l).__name__ for l in model.layers}
    assert set(saving.layer_registry()) <= covered  # a new layer class needs a place here
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6, 6, 2)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    set_random_seed(1)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # moves BatchNormalization's stats
    model.save(tmp_path / "all.safetensors")
    loaded = load_model(tmp_path / "all.safetensors")
    assert loaded.get_config() == model.get_config()
    assert _same_weights(model, loaded) and _same_optimizer_state(model, loaded)
    assert np.array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


@pytest.mark.parametrize("build", [_sequential, _functional])
def test_training_continues_identically_after_load(tmp_path, build):
    model = _trained(build)
    model.save(tmp_path / "m.safetensors")
    state = get_rng_state()
    x, y = _data(seed=1)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    loaded = load_model(tmp_path / "m.safetensors")
    fastnn.utils.set_rng_state(state)
    loaded.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert _same_weights(model, loaded)
    assert _same_optimizer_state(model, loaded)


@pytest.mark.parametrize("optimizer", [
    lambda: SGD(0.05, momentum=0.9, nesterov=True),
    lambda: RMSprop(0.01, momentum=0.5, centered=True),
    lambda: AdamW(0.01, weight_decay=0.01, clipnorm=1.0),
    lambda: Adam(ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5, staircase=True)),
    lambda: SGD(0.1),  # no slots at all
], ids=["sgd-nesterov", "rmsprop-centered", "adamw", "adam-schedule", "sgd-plain"])
def test_every_optimizer_round_trips_its_config_and_state(tmp_path, optimizer):
    model = _trained(_sequential, optimizer=optimizer())
    model.save(tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert _same_optimizer_state(model, loaded)
    state = get_rng_state()
    x, y = _data(seed=2)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    fastnn.utils.set_rng_state(state)
    loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert _same_weights(model, loaded)


def test_include_optimizer_false_and_uncompiled_models(tmp_path):
    model = _trained(_sequential)
    model.save(tmp_path / "a.safetensors", include_optimizer=False)
    tensors, meta = fio.read_tensors(tmp_path / "a.safetensors")
    assert not any(k.startswith("optimizer/") for k in tensors)
    loaded = load_model(tmp_path / "a.safetensors")
    assert loaded.optimizer is not None and loaded.optimizer.iterations == 0
    assert _same_weights(model, loaded)
    assert load_model(tmp_path / "a.safetensors", compile=False).optimizer is None
    plain = _sequential()
    plain.save(tmp_path / "b.safetensors")  # never compiled
    again = load_model(tmp_path / "b.safetensors")
    assert again.optimizer is None and _same_weights(plain, again)


def test_file_layout_names_weights_by_layer_and_holds_the_configs(tmp_path):
    model = _trained(_sequential)
    model.save(tmp_path / "m.safetensors")
    tensors, meta = fio.read_tensors(tmp_path / "m.safetensors")
    names = [l.name for l in model.layers if l.weight_specs]
    expected = {f"{names[0]}/kernel", f"{names[0]}/bias", f"{names[1]}/kernel",
                f"{names[2]}/kernel", f"{names[2]}/bias", "optimizer/m", "optimizer/v",
                "optimizer/iterations"}
    assert set(tensors) == expected
    assert meta["fastnn.format_version"] == str(fio.FORMAT_VERSION)
    assert json.loads(meta["fastnn.model_config"])["class_name"] == "Sequential"
    compiled = json.loads(meta["fastnn.compile_config"])
    assert compiled["optimizer"]["class_name"] == "Adam"
    assert compiled["loss"] == {"name": "sparse_categorical_crossentropy", "from_logits": False}
    assert compiled["metrics"] == ["accuracy"]
    assert tensors["optimizer/iterations"].tolist() == [6]


def test_functional_config_lists_nodes_with_call_indices():
    config = _functional().get_config()
    assert config["class_name"] == "Model"
    shared = config["nodes"][2]["layer"]
    assert config["nodes"][3] == {"layer": shared, "inputs": [[shared, 0]]}
    assert config["layers"][0]["class_name"] == "InputLayer"


def test_save_weights_and_load_weights_match_by_position(tmp_path):
    model = _trained(_sequential)
    model.save_weights(tmp_path / "w.safetensors")
    other = _sequential()  # same code, other automatic layer names
    assert [l.name for l in other.layers] != [l.name for l in model.layers]
    other.load_weights(tmp_path / "w.safetensors")
    assert _same_weights(model, other)
    with pytest.raises(FileFormatError, match="weights only"):
        load_model(tmp_path / "w.safetensors")
    model.save(tmp_path / "full.safetensors")  # a full model file feeds load_weights too
    third = _sequential()
    third.load_weights(tmp_path / "full.safetensors")
    assert _same_weights(model, third)


def test_load_weights_into_a_different_model_changes_nothing(tmp_path):
    _trained(_sequential).save_weights(tmp_path / "w.safetensors")
    other = Sequential([Flatten(input_shape=(4, 5)), Dense(8, activation="relu"),
                        Dense(6, use_bias=False), Dense(4)])
    before = other.get_weights()
    with pytest.raises(FileFormatError, match="has weights"):
        other.load_weights(tmp_path / "w.safetensors")
    assert all(np.array_equal(a, b) for a, b in zip(before, other.get_weights()))
    fewer = Sequential([Flatten(input_shape=(4, 5)), Dense(3)])
    with pytest.raises(FileFormatError, match="layers with weights"):
        fewer.load_weights(tmp_path / "w.safetensors")


def test_model_from_config_builds_the_same_architecture():
    model = _functional()
    clone = model_from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert [w.shape for w in clone.get_weights()] == [w.shape for w in model.get_weights()]


def test_custom_layers_load_only_when_passed_explicitly(tmp_path):
    class Scale(Layer):
        def __init__(self, factor: float = 2.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def build(self, input_shape):
            self.add_weight("s", (input_shape[-1],), lambda shape: np.full(shape, 3.0, np.float32))
            super().build(input_shape)

        def forward(self, x, training):
            return x

        def backward(self, dy, need_dx):
            return dy if need_dx else None

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    model = Sequential([Dense(4, input_shape=(5,)), Scale(1.5, name="scale")])
    model.save(tmp_path / "c.safetensors")
    with pytest.raises(FileFormatError, match="unknown layer type 'Scale'"):
        load_model(tmp_path / "c.safetensors")
    loaded = load_model(tmp_path / "c.safetensors", custom_objects={"Scale": Scale})
    assert _same_weights(model, loaded)
    with pytest.raises(TypeError, match="custom_objects"):
        load_model(tmp_path / "c.safetensors", custom_objects={"Scale": dict})


def test_unsavable_optimizer_is_refused_at_save_time(tmp_path):
    class MyAdam(Adam):
        pass

    model = _trained(_sequential, optimizer=MyAdam())
    with pytest.raises(ValueError, match="MyAdam"):
        model.save(tmp_path / "m.safetensors")
    model.save_weights(tmp_path / "w.safetensors")  # weights alone always save


# ------------------------------------------------------------------- hostile files


@pytest.fixture(scope="module")
def good_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "m.safetensors"
    _trained(_sequential).save(path)
    return path


@pytest.fixture(scope="module")
def good_functional(tmp_path_factory):
    path = tmp_path_factory.mktemp("goodf") / "f.safetensors"
    _trained(_functional).save(path)
    return path


def _variant(src, dst, config=None, compile_config=None, tensors=None, meta=None):
    """A copy of ``src`` with parts replaced (None values delete)."""
    t, m = fio.read_tensors(src)
    m = dict(m)
    m.pop("fastnn.format_version")
    if config is not None:
        cfg = json.loads(m["fastnn.model_config"])
        config(cfg)
        m["fastnn.model_config"] = json.dumps(cfg)
    if compile_config is not None:
        cc = json.loads(m["fastnn.compile_config"])
        compile_config(cc)
        m["fastnn.compile_config"] = json.dumps(cc)
    for key, value in (tensors or {}).items():
        if value is None:
            t.pop(key)
        else:
            t[key] = value
    for key, value in (meta or {}).items():
        if value is None:
            m.pop(key)
        else:
            m[key] = value
    fio.write_tensors(dst, t, m)
    return dst


def _raw_file(path, header, data=b""):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def _set(path, value):
    def change(cfg):
        node = cfg
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


def _dense_name(good_file):
    return json.loads(fio.read_tensors(good_file)[1]["fastnn.model_config"])["layers"][1][
        "config"]["name"]


CONFIG_ATTACKS = [
    (_set(["layers", 1, "class_name"], "Lambda"), "unknown layer type 'Lambda'"),
    (_set(["layers", 1, "class_name"], "os.system"), "unknown layer type"),
    (_set(["layers", 1, "class_name"], "Layer"), "unknown layer type 'Layer'"),
    (_set(["layers", 1, "class_name"], ["Dense"]), "class_name must be a string"),
    (_set(["layers", 1, "config", "units"], "8"), "units"),
    (_set(["layers", 1, "config", "units"], 8.0), "units"),
    (_set(["layers", 1, "config", "units"], True), "units"),
    (_set(["layers", 1, "config", "units"], -3), "units"),
    (_set(["layers", 1, "config", "trainable"], "yes"), "trainable"),
    (_set(["layers", 1, "config", "use_bias"], 1), "use_bias"),
    (_set(["layers", 1, "config", "activation"], "__import__"), "activation"),
    (_set(["layers", 1, "config", "activation"], {"a": 1}), "activation"),
    (_set(["layers", 1, "config", "kernel_initializer"], "os.system"), "initializer"),
    (_set(["layers", 1, "config", "__class__"], "x"), "__class__"),
    (_set(["layers", 1, "config", "kernel_regularizer"], None), "kernel_regularizer"),
    (_set(["layers", 2, "config", "rate"], 5.0), "rate"),
    (_set(["layers", 2, "config", "rate"], 1e400), "rate"),
    (_set(["layers", 1, "config", "name"], 7), "name the layer"),
    (_set(["layers", 1, "config"], [1, 2]), "config must be"),
    (_set(["layers", 1], "Dense"), "must be"),
    (_set(["layers"], {}), "layers must be"),
    (_set(["layers"], []), "layers must be"),
    (_set(["input_shape"], [0, 5]), "input_shape"),
    (_set(["input_shape"], "4,5"), "input_shape"),
    (_set(["input_shape"], [4, 6]), "shape"),
    (_set(["class_name"], "Functional"), "class_name must be"),
    (_set(["class_name"], None), "class_name must be"),
    (_set(["name"], ["x"]), "name must be"),
    (_set(["extra"], 1), "unexpected keys"),
]


@pytest.mark.parametrize("attack, match", CONFIG_ATTACKS)
def test_hostile_model_configs_raise_file_format_error(tmp_path, good_file, attack, match):
    bad = _variant(good_file, tmp_path / "bad.safetensors", config=attack)
    with pytest.raises(FileFormatError, match=match):
        load_model(bad)


def test_duplicate_layer_names_are_refused(tmp_path, good_file):
    def dup(cfg):
        cfg["layers"][3]["config"]["name"] = cfg["layers"][1]["config"]["name"]
    with pytest.raises(FileFormatError, match="duplicate layer names"):
        load_model(_variant(good_file, tmp_path / "bad.safetensors", config=dup))


@pytest.mark.parametrize("value", [[1, 2], "text", 3, None, True])
def test_a_config_that_is_not_an_object_is_refused(tmp_path, good_file, value):
    bad = _variant(good_file, tmp_path / "bad.safetensors",
                   meta={"fastnn.model_config": json.dumps(value)})
    with pytest.raises(FileFormatError, match="must be a JSON object"):
        load_model(bad)


@pytest.mark.parametrize("text", ["{", "{'a': 1}", '{"a": 1, "a": 2}', "NaN"])
def test_config_that_is_not_json_is_refused(tmp_path, good_file, text):
    bad = _variant(good_file, tmp_path / "bad.safetensors", meta={"fastnn.model_config": text})
    with pytest.raises(FileFormatError):
        load_model(bad)


def test_huge_declared_shapes_fail_before_allocating(tmp_path, good_file):
    bad = _variant(good_file, tmp_path / "bad.safetensors",
                   config=_set(["layers", 1, "config", "units"], 10**12))
    tracemalloc.start()
    try:
        with pytest.raises(FileFormatError, match="shape"):
            load_model(bad)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path, good_file):
    name = _dense_name(good_file)
    t, _ = fio.read_tensors(good_file)
    kernel = t[f"{name}/kernel"]
    cases = [
        (dict(tensors={f"{name}/kernel": None}), "missing"),
        (dict(tensors={f"{name}/kernel": np.zeros((kernel.shape[0] + 1, kernel.shape[1]),
                                                  np.float32)}), "shape"),
        (dict(tensors={f"{name}/kernel": kernel.astype(np.float64)}), "dtype"),
        (dict(tensors={f"{name}/kernel": kernel.astype(np.float16)}), "dtype"),
        (dict(tensors={"extra/kernel": kernel}), "unexpected tensor"),
        (dict(tensors={f"{name}/kernel": np.where(np.arange(kernel.size).reshape(kernel.shape)
                                                   == 3, np.nan, kernel).astype(np.float32)}),
         "NaN or infinity"),
        (dict(tensors={f"{name}/bias": np.full(8, np.inf, np.float32)}), "NaN or infinity"),
    ]
    for change, match in cases:
        with pytest.raises(FileFormatError, match=match):
            load_model(_variant(good_file, tmp_path / "bad.safetensors", **change))


def test_weight_index_attacks_are_refused(tmp_path, good_file):
    index = json.loads(fio.read_tensors(good_file)[1]["fastnn.weights"])
    name = index[0]["layer"]
    variants = [
        ([{"layer": name, "weights": ["kernel"]}] + index[1:], "unexpected tensor"),
        (index + [index[0]], "appears twice"),
        ([{"layer": name, "weights": ["kernel", "kernel"]}] + index[1:], "twice"),
        ({"a": 1}, "must be a list"),
        ([{"layer": 3, "weights": []}], "entry 0"),
        (index[:1] + [{"layer": "ghost", "weights": []}] + index[1:], "ghost"),
    ]
    for value, match in variants:
        bad = _variant(good_file, tmp_path / "bad.safetensors",
                       meta={"fastnn.weights": json.dumps(value)})
        with pytest.raises(FileFormatError, match=match):
            load_model(bad)
    # A layer whose weights the index leaves out: the architecture declares them.
    t, _ = fio.read_tensors(good_file)
    bad = _variant(good_file, tmp_path / "bad.safetensors",
                   meta={"fastnn.weights": json.dumps(index[1:])},
                   tensors={f"{name}/kernel": None, f"{name}/bias": None})
    with pytest.raises(FileFormatError, match="does not hold"):
        load_model(bad)


def test_optimizer_state_attacks_are_refused(tmp_path, good_file):
    t, _ = fio.read_tensors(good_file)
    cases = [
        (dict(tensors={"optimizer/m": t["optimizer/m"][:-1]}), "optimizer"),
        (dict(tensors={"optimizer/m": None}), "missing"),
        (dict(tensors={"optimizer/iterations": np.array([-1], np.int64)}), "iterations"),
        (dict(tensors={"optimizer/iterations": np.array([1.0], np.float32)}), "iterations"),
        (dict(tensors={"optimizer/iterations": None}), "iterations"),
        (dict(tensors={"optimizer/v": np.full_like(t["optimizer/v"], np.nan)}), "NaN"),
        (dict(tensors={"optimizer/evil": np.zeros(3, np.float32)}), "unexpected"),
        (dict(meta={"fastnn.optimizer_state": json.dumps({"slots": ["m"]})}), "unexpected"),
        (dict(meta={"fastnn.optimizer_state": json.dumps({"slots": "m"})}), "slots"),
        (dict(meta={"fastnn.optimizer_state": None}), "unexpected tensor"),
    ]
    for change, match in cases:
        with pytest.raises(FileFormatError, match=match):
            load_model(_variant(good_file, tmp_path / "bad.safetensors", **change))


COMPILE_ATTACKS = [
    (_set(["optimizer", "class_name"], "Pickle"), "unknown optimizer"),
    (_set(["optimizer", "class_name"], "adam"), "unknown optimizer"),
    (_set(["optimizer", "config", "learning_rate"], "abc"), "learning_rate"),
    (_set(["optimizer", "config", "learning_rate"], -1.0), "learning_rate"),
    (_set(["optimizer", "config", "learning_rate"], [0.1]), "learning_rate"),
    (_set(["optimizer", "config", "learning_rate"], {"class_name": "Evil", "config": {}}),
     "schedule"),
    (_set(["optimizer", "config", "learning_rate"],
          {"class_name": "ExponentialDecay", "config": {"initial_learning_rate": 0.1,
                                                        "decay_steps": 1, "os": 1}}), "os"),
    (_set(["optimizer", "config", "beta_1"], 2.0), "beta_1"),
    (_set(["optimizer", "config", "__dict__"], 1), "__dict__"),
    (_set(["optimizer", "config"], []), "optimizer must be"),
    (_set(["loss", "name"], "eval"), "unknown loss"),
    (_set(["loss", "from_logits"], "no"), "loss must be"),
    (_set(["metrics"], ["exec"]), "metric"),
    (_set(["metrics"], "accuracy"), "metrics must be"),
    (_set(["extra"], 1), "compile config"),
]


@pytest.mark.parametrize("attack, match", COMPILE_ATTACKS)
def test_hostile_compile_configs_raise_file_format_error(tmp_path, good_file, attack, match):
    bad = _variant(good_file, tmp_path / "bad.safetensors", compile_config=attack)
    with pytest.raises(FileFormatError, match=match):
        load_model(bad)


def _node_attack(fn):
    def change(cfg):
        fn(cfg)
    return change


FUNCTIONAL_ATTACKS = [
    (lambda c: c["nodes"].reverse(), "not produced by an earlier node"),
    (lambda c: c["nodes"][0].update(inputs=[["nowhere", 0]]), "not produced"),
    (lambda c: c["nodes"][0].update(inputs=[[c["nodes"][0]["inputs"][0][0], 1]]),
     "not produced"),
    (lambda c: c["nodes"][0].update(inputs=[["x", "0"]]), "call index"),
    (lambda c: c["nodes"][0].update(inputs=[]), "non-empty"),
    (lambda c: c["nodes"][0].update(layer=c["layers"][0]["config"]["name"]), "non-input"),
    (lambda c: c["nodes"].pop(), "not connected"),
    (lambda c: c.update(output=["ghost", 0]), "output"),
    (lambda c: c.update(output=[c["layers"][0]["config"]["name"], 0]), "output"),
    (lambda c: c["layers"].append(dict(c["layers"][0], config={"name": "in2",
                                                               "shape": [3]})),
     "exactly one InputLayer"),
    (lambda c: c["layers"][0]["config"].update(shape=[4, 5, -1]), "shape"),
    (lambda c: c["layers"][0]["config"].update(evil=1), "InputLayer config keys"),
    (lambda c: c["nodes"][0].update(extra=1), "nodes\\[0\\]"),
    (lambda c: c["nodes"][4].update(inputs=c["nodes"][4]["inputs"][:1]), "at least 2"),
    (lambda c: c["nodes"][1].update(inputs=c["nodes"][1]["inputs"] * 2), "takes one input"),
]


@pytest.mark.parametrize("attack, match", FUNCTIONAL_ATTACKS)
def test_hostile_functional_graphs_raise_file_format_error(tmp_path, good_functional,
                                                          attack, match):
    bad = _variant(good_functional, tmp_path / "bad.safetensors", config=attack)
    with pytest.raises(FileFormatError, match=match):
        load_model(bad)


def test_inputlayer_inside_a_sequential_config_is_refused(tmp_path, good_file, good_functional):
    inp = json.loads(fio.read_tensors(good_functional)[1]["fastnn.model_config"])["layers"][0]
    bad = _variant(good_file, tmp_path / "bad.safetensors",
                   config=lambda c: c["layers"].insert(0, inp))
    with pytest.raises(FileFormatError, match="InputLayer"):
        load_model(bad)


def test_newer_format_version_is_refused_with_a_clear_message(tmp_path, good_file):
    tensors, meta = fio.read_tensors(good_file)
    header = {"__metadata__": dict(meta, **{"fastnn.format_version":
                                            str(fio.FORMAT_VERSION + 1)})}
    data = b""
    for name, arr in tensors.items():
        header[name] = {"dtype": {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}[arr.dtype],
                        "shape": list(arr.shape), "data_offsets": [len(data),
                                                                   len(data) + arr.nbytes]}
        data += arr.tobytes()
    path = _raw_file(tmp_path / "new.safetensors", header, data)
    with pytest.raises(FileFormatError, match="newer fastnn"):
        load_model(path)
    with pytest.raises(FileFormatError, match="newer fastnn"):
        _sequential().load_weights(path)


def test_damaged_and_foreign_files_raise_file_format_error(tmp_path, good_file):
    raw = good_file.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    (tmp_path / "noise.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))
    _raw_file(tmp_path / "plain.safetensors", {"w": {"dtype": "F32", "shape": [1],
                                                     "data_offsets": [0, 4]}}, b"\0" * 4)
    flipped = bytearray(raw)
    flipped[20] ^= 0xFF
    (tmp_path / "flip.safetensors").write_bytes(bytes(flipped))
    for name in ("trunc", "empty", "noise", "plain", "flip"):
        with pytest.raises(FileFormatError):
            load_model(tmp_path / f"{name}.safetensors")


def test_load_model_never_unpickles(tmp_path):
    import pickle

    (tmp_path / "p.safetensors").write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(FileFormatError):
        load_model(tmp_path / "p.safetensors")


if given is not None:
    _leaves = st.one_of(st.none(), st.booleans(), st.integers(-3, 2**40),
                        st.floats(allow_nan=True), st.text(max_size=12),
                        st.lists(st.integers(-2, 9), max_size=3), st.just({}))

    @settings(max_examples=150, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(data=st.data())
    def test_fuzzed_configs_load_or_raise_file_format_error(tmp_path_factory, data):
        """Any single-leaf mutation of a valid config: a model or FileFormatError."""
        src = tmp_path_factory.getbasetemp() / "fuzz-src.safetensors"
        if not src.exists():
            _trained(_functional, epochs=1).save(src)
        t, meta = fio.read_tensors(src)
        section = data.draw(st.sampled_from(["fastnn.model_config", "fastnn.compile_config",
                                             "fastnn.weights"]))
        doc = json.loads(meta[section])
        paths = []

        def walk(node, path):
            paths.append(path)
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, path + [k])
            elif isinstance(node, list):
                for i, v in enumerate(node):
                    walk(v, path + [i])
        walk(doc, [])
        path = data.draw(st.sampled_from(paths[1:]))
        value = data.draw(_leaves)
        node = doc
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        meta = dict(meta, **{section: json.dumps(doc)})
        meta.pop("fastnn.format_version")
        dst = tmp_path_factory.getbasetemp() / "fuzz.safetensors"
        fio.write_tensors(dst, t, meta)
        try:
            model = load_model(dst)
        except FileFormatError:
            return
        x, _ = _data(n=5)
        assert model.predict(x, verbose=0).shape[0] == 5
