"""Saving and loading models: one safe file per model, no code in it.

A model file is a safetensors file (see fastnn.io) holding:

* tensors ``"<layer>/<weight>"``: every weight, in each layer's ``get_weights`` order;
* tensors ``"optimizer/<slot>"`` and ``"optimizer/iterations"``: the optimiser's state,
  when saved with ``include_optimizer=True`` after the optimiser has been built;
* metadata ``fastnn.format_version``, ``fastnn.kind`` (``model``, ``weights`` or
  ``checkpoint``), ``fastnn.model_config`` (the architecture as JSON),
  ``fastnn.compile_config`` (optimiser class and config, loss, metrics),
  ``fastnn.weights`` (which layer owns which tensors, in order) and
  ``fastnn.optimizer_state`` (which slots were saved).

Loading never imports, evaluates or unpickles anything named by the file. Layer
classes come from a fixed registry (the classes exported by ``fastnn.layers``, plus
classes the caller passes explicitly in ``custom_objects``); optimisers and losses
from their modules' name tables. Every config value is type-checked against the
constructor's annotations, every constructor failure becomes a
:class:`~fastnn.io.FileFormatError`, and weights declared by the architecture are
served from the file's tensors while layers build, so a hostile config cannot make
the loader allocate more than the file itself holds.
"""
from __future__ import annotations

import collections.abc
import hashlib
import json
import math
import os
import typing
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import io as fio
from .io import FileFormatError

PathLike = Union[str, "os.PathLike[str]"]

KIND_KEY = "fastnn.kind"
MODEL_CONFIG_KEY = "fastnn.model_config"
COMPILE_CONFIG_KEY = "fastnn.compile_config"
WEIGHTS_KEY = "fastnn.weights"
OPTIMIZER_KEY = "fastnn.optimizer_state"
TRAINING_KEY = "fastnn.training_state"

OPTIMIZER_PREFIX = "optimizer/"
TRAINING_PREFIX = "training/"

__all__ = ["load_model", "load_weights", "model_config", "model_from_config",
           "save_model", "save_weights"]


# ------------------------------------------------------------------ registries


def layer_registry(custom_objects: Optional[Mapping[str, type]] = None) -> Dict[str, type]:
    """Class name -> layer class for every class a file may name.

    The built-in part is the set of Layer subclasses exported by ``fastnn.layers``;
    nothing is ever imported by a name read from a file.

    Raises:
        TypeError: if ``custom_objects`` holds anything but Layer subclasses.
    """
    from . import layers as layers_mod
    from .layers.base import Layer
    registry: Dict[str, type] = {}
    for attr in getattr(layers_mod, "__all__", ()):
        obj = getattr(layers_mod, attr, None)
        if isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer:
            registry[obj.__name__] = obj
    for name, cls in (custom_objects or {}).items():
        if not isinstance(name, str) or not (isinstance(cls, type) and issubclass(cls, Layer)):
            raise TypeError(f"custom_objects must map class names to fastnn Layer "
                            f"subclasses, got {name!r}: {cls!r}")
        registry[name] = cls
    return registry


def _optimizer_table() -> Dict[str, type]:
    from . import optimizers as optimizers_mod
    return {cls.__name__: cls for cls in optimizers_mod._BY_NAME.values()}


def _loss_name(loss: Any) -> str:
    from . import losses as losses_mod
    for name, cls in losses_mod._BY_NAME.items():
        if type(loss) is cls:
            return name
    raise ValueError(f"cannot save loss {loss!r}: only fastnn's built-in losses can be "
                     "saved (use save_weights for models compiled with custom losses)")


# ------------------------------------------------------------------ describing


def model_config(model: Any) -> dict:
    """The architecture of ``model`` as JSON-ready data.

    Returns:
        ``{"class_name": "Sequential", "name", "input_shape", "layers"}`` for a
        Sequential model; for a functional ``Model`` also ``"nodes"`` (each node's
        layer and the ``[layer, call_index]`` references of its inputs, in execution
        order) and ``"output"`` (the reference of the model's output). Each layer is
        ``{"class_name", "config"}`` with the layer's ``get_config()``.

    Raises:
        ValueError: for a layer whose config cannot be expressed (custom initialiser).
    """
    from .model import Sequential
    input_shape = None if model._input_shape is None else [int(d) for d in model._input_shape]
    if isinstance(model, Sequential):
        return {"class_name": "Sequential", "name": model.name, "input_shape": input_shape,
                "layers": [_layer_entry(layer) for layer in model._compute_layers()]}
    if not model._nodes:
        raise ValueError(f"model {model.name!r} has no layers to describe")
    input_layer = model._input_layer
    refs: Dict[int, List[Any]] = {0: [input_layer.name, 0]}
    calls: Dict[int, int] = {}
    nodes = []
    for node in model._nodes:
        k = calls.get(id(node.layer), 0)
        calls[id(node.layer)] = k + 1
        nodes.append({"layer": node.layer.name, "inputs": [list(refs[s]) for s in node.ins]})
        refs[node.out] = [node.layer.name, k]
    return {"class_name": "Model", "name": model.name, "input_shape": input_shape,
            "layers": [_layer_entry(layer) for layer in model.layers],
            "nodes": nodes, "output": list(refs[model._output_slot])}


def _layer_entry(layer: Any) -> dict:
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """A hash of an architecture that ignores layer and model names.

    Two models built by the same code get the same fingerprint even when the
    automatic layer names differ (``dense`` vs ``dense_3``).
    """
    layers = config.get("layers", [])
    index = {entry["config"].get("name"): i for i, entry in enumerate(layers)}

    def ref(r: Sequence[Any]) -> List[Any]:
        return [index.get(r[0], r[0]), r[1]]

    canon = {
        "class_name": config.get("class_name"),
        "input_shape": config.get("input_shape"),
        "layers": [{"class_name": e["class_name"],
                    "config": {k: v for k, v in e["config"].items() if k != "name"}}
                   for e in layers],
        "nodes": [{"layer": index.get(n["layer"], n["layer"]),
                   "inputs": [ref(r) for r in n["inputs"]]} for n in config.get("nodes", [])],
        "output": ref(config["output"]) if "output" in config else None,
    }
    text = json.dumps(canon, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def compile_config(model: Any, strict: bool = True) -> Optional[dict]:
    """The optimiser, loss and metrics given to ``compile`` (None if not compiled).

    Args:
        model: the model.
        strict: refuse optimisers and losses that load_model could not rebuild. A
            checkpoint passes False: it restores into a model compiled by the user's
            own code, so it only records the names.

    Raises:
        ValueError: (strict) for an optimiser or loss that is not fastnn's own.
    """
    compiled = model._compiled
    if compiled is None:
        return None
    opt, loss = compiled.optimizer, compiled.loss
    if _optimizer_table().get(type(opt).__name__) is not type(opt) and strict:
        raise ValueError(f"cannot save optimizer of class {type(opt).__name__}: only "
                         "fastnn's built-in optimizers can be saved (use save_weights)")
    try:
        loss_name = _loss_name(loss)
    except ValueError:
        if strict:
            raise
        loss_name = str(getattr(loss, "name", type(loss).__name__))
    return {"optimizer": {"class_name": type(opt).__name__, "config": opt.get_config()},
            "loss": {"name": loss_name, "from_logits": bool(getattr(loss, "from_logits", False))},
            "metrics": list(getattr(model, "_metric_names", []))}


# ------------------------------------------------------------------ writing


def _weights_payload(model: Any) -> Tuple[Dict[str, np.ndarray], List[dict]]:
    tensors: Dict[str, np.ndarray] = {}
    index: List[dict] = []
    for layer in model._compute_layers():
        if not layer.weight_specs:
            continue
        names = [spec.name for spec in layer.weight_specs]
        index.append({"layer": layer.name, "class_name": type(layer).__name__,
                      "weights": names})
        for name, value in zip(names, layer.get_weights()):
            key = f"{layer.name}/{name}"
            if key in tensors:
                raise ValueError(f"cannot save: two weights are both named {key!r}")
            tensors[key] = np.ascontiguousarray(value, dtype=np.float32)
    return tensors, index


def _optimizer_payload(model: Any) -> Tuple[Dict[str, np.ndarray], Optional[dict]]:
    opt = model.optimizer
    if opt is None or opt.backend is None:
        return {}, None  # never built: nothing beyond the config to save
    state = opt.get_state()
    slots = sorted(k for k in state if k != "iterations")
    tensors = {OPTIMIZER_PREFIX + k: np.ascontiguousarray(v, dtype=np.float32)
               for k, v in state.items() if k != "iterations"}
    tensors[OPTIMIZER_PREFIX + "iterations"] = np.asarray(state["iterations"],
                                                          dtype=np.int64).reshape(1)
    return tensors, {"slots": slots}


def model_payload(model: Any, include_optimizer: bool = True, kind: str = "model"
                  ) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """Tensors and metadata of a model file (used by save_model and checkpoints)."""
    model._require_built("save")
    tensors, index = _weights_payload(model)
    meta: Dict[str, Any] = {KIND_KEY: kind, MODEL_CONFIG_KEY: model_config(model),
                            WEIGHTS_KEY: index}
    compile_cfg = compile_config(model, strict=kind != "checkpoint")
    if compile_cfg is not None:
        meta[COMPILE_CONFIG_KEY] = compile_cfg
    if include_optimizer and compile_cfg is not None:
        opt_tensors, opt_meta = _optimizer_payload(model)
        clash = sorted(set(opt_tensors) & set(tensors))
        if clash:
            raise ValueError(f"cannot save: weight names {clash} collide with the optimizer "
                             "state's names; rename the layer")
        tensors.update(opt_tensors)
        if opt_meta is not None:
            meta[OPTIMIZER_KEY] = opt_meta
    return tensors, meta


def save_model(model: Any, path: PathLike, include_optimizer: bool = True) -> None:
    """Writes architecture, compile settings, weights and optimiser state to one file.

    The write is atomic: ``path`` holds either its previous content or the complete
    new file, whatever happens during the save.

    Args:
        model: a built fastnn model.
        path: destination file (conventionally ``*.safetensors``).
        include_optimizer: also store the optimiser's slots and iteration count, so
            training continues exactly where it stopped.

    Raises:
        RuntimeError: if the model is not built.
        ValueError: for layers, optimisers or losses that cannot be described.
        OSError: if the file cannot be written (``path`` is then unchanged).
    """
    tensors, meta = model_payload(model, include_optimizer=include_optimizer)
    fio.write_tensors(path, tensors, meta)


def save_weights(model: Any, path: PathLike) -> None:
    """Writes the model's weights alone (same format; read with load_weights).

    Raises:
        RuntimeError: if the model is not built.
        OSError: if the file cannot be written.
    """
    model._require_built("save_weights")
    tensors, index = _weights_payload(model)
    fio.write_tensors(path, tensors, {KIND_KEY: "weights", WEIGHTS_KEY: index})


# ------------------------------------------------------------------ reading helpers


def _bad(path: Optional[str], problem: str) -> FileFormatError:
    where = f"{path}: " if path is not None else ""
    return FileFormatError(f"{where}{problem}")


def _require(cond: bool, path: Optional[str], problem: str) -> None:
    if not cond:
        raise _bad(path, problem)


def _is_int(value: Any) -> bool:
    return type(value) is int


def read_model_file(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, str]]:
    """Reads and version-checks a fastnn file.

    Raises:
        FileFormatError: damaged file, or one from a newer fastnn.
        OSError: the file cannot be read.
    """
    tensors, meta = fio.read_tensors(path)
    fio.check_format_version(meta, path)
    return tensors, meta


def _weight_index(meta: Mapping[str, str], path: Optional[str]) -> List[Tuple[str, List[str]]]:
    index = fio.json_metadata(meta, WEIGHTS_KEY, path=path)
    _require(isinstance(index, list), path, f"{WEIGHTS_KEY!r} must be a list")
    out: List[Tuple[str, List[str]]] = []
    seen = set()
    for i, entry in enumerate(index):
        _require(isinstance(entry, dict) and isinstance(entry.get("layer"), str)
                 and isinstance(entry.get("weights"), list)
                 and all(isinstance(w, str) for w in entry["weights"]),
                 path, f"{WEIGHTS_KEY!r} entry {i} must be {{'layer': str, 'weights': [str]}}")
        name = entry["layer"]
        _require(name not in seen, path, f"layer {name!r} appears twice in {WEIGHTS_KEY!r}")
        seen.add(name)
        weights = list(entry["weights"])
        _require(len(set(weights)) == len(weights), path,
                 f"layer {name!r} lists a weight name twice")
        out.append((name, weights))
    return out


def _collect_weights(tensors: Mapping[str, np.ndarray], index: List[Tuple[str, List[str]]],
                     path: Optional[str]) -> Dict[str, List[Tuple[str, np.ndarray]]]:
    """Layer name -> [(weight name, array)], every array float32 and finite."""
    out: Dict[str, List[Tuple[str, np.ndarray]]] = {}
    for layer, names in index:
        arrays = []
        for name in names:
            key = f"{layer}/{name}"
            arr = tensors.get(key)
            _require(arr is not None, path, f"weight tensor {key!r} is missing")
            _require(arr.dtype == np.float32, path,
                     f"weight tensor {key!r} has dtype {arr.dtype}, expected float32")
            _require(bool(np.isfinite(arr).all()), path,
                     f"weight tensor {key!r} holds NaN or infinity")
            arrays.append((name, arr))
        out[layer] = arrays
    return out


def _check_no_extra_tensors(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str],
                            index: List[Tuple[str, List[str]]], path: Optional[str]) -> None:
    known = {f"{layer}/{name}" for layer, names in index for name in names}
    for key in tensors:
        if key in known:
            continue
        if key.startswith(OPTIMIZER_PREFIX) and OPTIMIZER_KEY in meta:
            continue
        if key.startswith(TRAINING_PREFIX) and TRAINING_KEY in meta:
            continue
        raise _bad(path, f"unexpected tensor {key!r}: the file's weight index does not "
                         "list it")


def _optimizer_state(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str],
                     path: Optional[str]) -> Optional[Dict[str, np.ndarray]]:
    info = fio.json_metadata(meta, OPTIMIZER_KEY, None, path=path)
    if info is None:
        return None
    _require(isinstance(info, dict) and isinstance(info.get("slots"), list)
             and all(isinstance(s, str) for s in info["slots"]), path,
             f"{OPTIMIZER_KEY!r} must be {{'slots': [str]}}")
    state: Dict[str, np.ndarray] = {}
    for slot in info["slots"]:
        _require(slot != "iterations", path, "'iterations' is not a slot name")
        arr = tensors.get(OPTIMIZER_PREFIX + slot)
        _require(arr is not None, path, f"optimizer slot tensor {slot!r} is missing")
        _require(arr.dtype == np.float32 and arr.ndim == 1, path,
                 f"optimizer slot {slot!r} must be a 1-D float32 tensor")
        _require(bool(np.isfinite(arr).all()), path,
                 f"optimizer slot {slot!r} holds NaN or infinity")
        state[slot] = arr
    it = tensors.get(OPTIMIZER_PREFIX + "iterations")
    _require(it is not None and it.dtype == np.int64 and it.shape == (1,) and int(it[0]) >= 0,
             path, "optimizer/iterations must be one non-negative int64")
    state["iterations"] = it
    for key in tensors:
        if key.startswith(OPTIMIZER_PREFIX):
            _require(key[len(OPTIMIZER_PREFIX):] in state, path,
                     f"unexpected optimizer tensor {key!r}")
    return state


def check_optimizer_state(model: Any, state: Dict[str, np.ndarray], path: Optional[str]) -> None:
    """Checks that ``state`` fits the model's (built) optimiser, changing nothing else."""
    model._ensure_optimizer()
    opt = model.optimizer
    expected = set(opt.slots)
    given = set(state) - {"iterations"}
    _require(given == expected, path,
             f"the file's optimizer slots {sorted(given)} do not match the "
             f"{type(opt).__name__} optimizer's {sorted(expected)}")
    for name, arr in opt.slots.items():
        _require(tuple(state[name].shape) == tuple(arr.shape), path,
                 f"optimizer state does not fit the model: slot {name!r} has "
                 f"{state[name].size} values, the model has {arr.shape[0]} parameters")


def restore_optimizer_state(model: Any, state: Dict[str, np.ndarray],
                            path: Optional[str]) -> None:
    """Builds the model's optimiser and loads ``state`` into it."""
    check_optimizer_state(model, state, path)
    try:
        model.optimizer.set_state(state)
    except ValueError as exc:
        raise _bad(path, f"optimizer state does not fit the model: {exc}") from None


# ------------------------------------------------------------------ config checks


def _type_hints(func: Callable) -> Dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:  # noqa: BLE001 - unresolvable annotations: leave checks to the constructor
        return {}


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits an annotation (unknown annotations accept anything)."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return type(value) is int
    if hint is float:
        return type(value) in (int, float)
    if hint is str:
        return type(value) is str
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Union:
        return any(_conforms(value, a) for a in args)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, list):
            return False
        item = args[0] if args else Any
        return all(_conforms(v, item) for v in value)
    return True


def _check_config_types(cls: type, config: Mapping[str, Any], where: str) -> None:
    from .layers.base import Layer
    hints = dict(_type_hints(Layer.__init__))
    for klass in reversed(cls.__mro__):
        if klass is object or not issubclass(klass, Layer) or "__init__" not in vars(klass):
            continue
        hints.update(_type_hints(vars(klass)["__init__"]))
    for key, value in config.items():
        hint = hints.get(key)
        if hint is not None and not _conforms(value, hint):
            raise FileFormatError(f"{where}: config value {key}={value!r} does not have the "
                                  f"expected type {hint}")


def _make_layer(entry: Any, registry: Mapping[str, type], where: str) -> Tuple[type, dict]:
    if not isinstance(entry, dict) or set(entry) != {"class_name", "config"}:
        raise FileFormatError(f"{where} must be {{'class_name': str, 'config': dict}}")
    class_name, config = entry["class_name"], entry["config"]
    if not isinstance(class_name, str):
        raise FileFormatError(f"{where}: class_name must be a string")
    cls = registry.get(class_name)
    if cls is None:
        raise FileFormatError(f"{where}: unknown layer type {class_name!r}; this fastnn "
                              f"knows {sorted(registry)} (custom layers load only when "
                              "passed in custom_objects)")
    if not isinstance(config, dict):
        raise FileFormatError(f"{where}: config must be a JSON object")
    if not isinstance(config.get("name"), str) or not config["name"]:
        raise FileFormatError(f"{where}: config must name the layer")
    _check_config_types(cls, config, f"{where} ({class_name} {config['name']!r})")
    return cls, config


def _construct(cls: type, config: dict, where: str) -> Any:
    try:
        return cls(**config)
    except FileFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - any constructor failure means a bad file
        raise FileFormatError(f"{where}: cannot create {cls.__name__} from its config: "
                              f"{exc}") from None


class _WeightFeeder:
    """Serves a file's tensors to layers as they declare their weights.

    Installed as an instance attribute shadowing ``Layer.add_weight`` while the
    model is assembled: a layer that declares a weight the file does not hold, or
    holds with another shape, fails before anything is allocated or drawn from the
    random generator.
    """

    def __init__(self, weights: Optional[Dict[str, List[Tuple[str, np.ndarray]]]],
                 path: Optional[str]):
        # None: no file, the layers initialise their weights as usual.
        self.weights = weights
        self.path = path
        self.installed: List[Tuple[Any, List[int]]] = []

    def install(self, layer: Any) -> None:
        if self.weights is None:
            return
        entries = self.weights.get(layer.name, [])
        used = [0]
        original = type(layer).add_weight
        path = self.path

        def add_weight(name: str, shape: Sequence[int], initializer: Callable,
                       trainable: bool = True) -> Any:
            shape = tuple(int(d) for d in shape)
            i = used[0]
            if i >= len(entries):
                raise _bad(path, f"layer {layer.name!r} declares weight {name!r} of shape "
                                 f"{shape}, which the file does not hold")
            saved_name, arr = entries[i]
            if saved_name != name or tuple(arr.shape) != shape:
                raise _bad(path, f"layer {layer.name!r} declares weight {name!r} of shape "
                                 f"{shape}, but the file holds {saved_name!r} of shape "
                                 f"{tuple(arr.shape)}")
            used[0] = i + 1
            spec = original(layer, name, shape, lambda _shape: arr, trainable)
            spec.initializer = initializer  # the layer's own, for anyone re-initialising
            return spec

        layer.add_weight = add_weight
        self.installed.append((layer, used))

    def uninstall(self) -> None:
        for layer, _ in self.installed:
            layer.__dict__.pop("add_weight", None)

    def check_complete(self) -> None:
        if self.weights is None:
            return
        for layer, used in self.installed:
            held = len(self.weights.get(layer.name, []))
            if used[0] != held:
                raise _bad(self.path, f"the file holds {held} weights for layer "
                                      f"{layer.name!r}, the architecture declares {used[0]}")
        names = {layer.name for layer, _ in self.installed}
        stray = sorted(set(self.weights) - names)
        if stray:
            raise _bad(self.path, f"the file holds weights for layers {stray} that the "
                                  "architecture does not have")


def _ref(value: Any, where: str) -> Tuple[str, int]:
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)
            and _is_int(value[1]) and value[1] >= 0):
        raise FileFormatError(f"{where} must be a [layer name, call index] pair, got {value!r}")
    return value[0], value[1]


def _shape(value: Any, where: str) -> List[int]:
    if not (isinstance(value, list) and value and all(_is_int(d) and d > 0 for d in value)):
        raise FileFormatError(f"{where} must be a non-empty list of positive ints, "
                              f"got {value!r}")
    return value


def _build_sequential(config: dict, registry: Mapping[str, type], feeder: _WeightFeeder,
                      device: Optional[str], where: str) -> Any:
    from .layers.input_layer import InputLayer
    from .model import Sequential
    allowed = {"class_name", "name", "input_shape", "layers"}
    extra = sorted(set(config) - allowed)
    if extra:
        raise FileFormatError(f"{where}: unexpected keys {extra}")
    shape = _shape(config.get("input_shape"), f"{where}: input_shape")
    entries = config.get("layers")
    if not isinstance(entries, list) or not entries:
        raise FileFormatError(f"{where}: layers must be a non-empty list")
    specs = [_make_layer(e, registry, f"{where}: layers[{i}]") for i, e in enumerate(entries)]
    names = [cfg["name"] for _, cfg in specs]
    if len(set(names)) != len(names):
        raise FileFormatError(f"{where}: duplicate layer names "
                              f"{sorted({n for n in names if names.count(n) > 1})}")
    for (cls, _), i in zip(specs, range(len(specs))):
        if issubclass(cls, InputLayer):
            raise FileFormatError(f"{where}: layers[{i}] is an InputLayer; a Sequential "
                                  "config gives its input as input_shape")
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise FileFormatError(f"{where}: name must be a string")
    model = Sequential(name=name, device=device)
    model.add(_construct(InputLayer, {"shape": shape}, f"{where}: input_shape"))
    for i, (cls, cfg) in enumerate(specs):
        layer = _construct(cls, cfg, f"{where}: layers[{i}]")
        feeder.install(layer)
        try:
            model.add(layer)
        except FileFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - shape errors from a bad config
            raise FileFormatError(f"{where}: layers[{i}] ({cfg['name']!r}) does not fit: "
                                  f"{exc}") from None
    return model


def _build_functional(config: dict, registry: Mapping[str, type], feeder: _WeightFeeder,
                      device: Optional[str], where: str) -> Any:
    from .layers.input_layer import Input, InputLayer
    from .model import Model
    allowed = {"class_name", "name", "input_shape", "layers", "nodes", "output"}
    extra = sorted(set(config) - allowed)
    if extra:
        raise FileFormatError(f"{where}: unexpected keys {extra}")
    entries = config.get("layers")
    if not isinstance(entries, list) or not entries:
        raise FileFormatError(f"{where}: layers must be a non-empty list")
    specs = [_make_layer(e, registry, f"{where}: layers[{i}]") for i, e in enumerate(entries)]
    names = [cfg["name"] for _, cfg in specs]
    if len(set(names)) != len(names):
        raise FileFormatError(f"{where}: duplicate layer names "
                              f"{sorted({n for n in names if names.count(n) > 1})}")
    inputs = [i for i, (cls, _) in enumerate(specs) if issubclass(cls, InputLayer)]
    if len(inputs) != 1:
        raise FileFormatError(f"{where}: a functional model needs exactly one InputLayer, "
                              f"found {len(inputs)}")
    produced: Dict[Tuple[str, int], Any] = {}
    layers: Dict[str, Any] = {}
    for i, (cls, cfg) in enumerate(specs):
        here = f"{where}: layers[{i}]"
        if i == inputs[0]:
            extra = sorted(set(cfg) - {"name", "shape"})
            if extra:
                raise FileFormatError(f"{here}: unexpected InputLayer config keys {extra}")
            shape = _shape(cfg.get("shape"), f"{here}: shape")
            try:
                produced[(cfg["name"], 0)] = Input(shape=shape, name=cfg["name"])
            except Exception as exc:  # noqa: BLE001
                raise FileFormatError(f"{here}: bad InputLayer config: {exc}") from None
            continue
        layer = _construct(cls, cfg, here)
        feeder.install(layer)
        layers[cfg["name"]] = layer
    nodes = config.get("nodes")
    if not isinstance(nodes, list) or not nodes:
        raise FileFormatError(f"{where}: nodes must be a non-empty list")
    calls: Dict[str, int] = {}
    for j, node in enumerate(nodes):
        here = f"{where}: nodes[{j}]"
        if not isinstance(node, dict) or set(node) != {"layer", "inputs"}:
            raise FileFormatError(f"{here} must be {{'layer': str, 'inputs': [refs]}}")
        layer = layers.get(node["layer"]) if isinstance(node["layer"], str) else None
        if layer is None:
            raise FileFormatError(f"{here}: layer {node['layer']!r} is not among the "
                                  "model's (non-input) layers")
        refs = node["inputs"]
        if not isinstance(refs, list) or not refs:
            raise FileFormatError(f"{here}: inputs must be a non-empty list")
        tensors = []
        for r in refs:
            key = _ref(r, f"{here}: input")
            if key not in produced:
                raise FileFormatError(f"{here}: input {list(key)} is not produced by an "
                                      "earlier node")
            tensors.append(produced[key])
        takes_list = getattr(layer, "takes_list", False)
        if not takes_list and len(tensors) != 1:
            raise FileFormatError(f"{here}: layer {layer.name!r} takes one input, the "
                                  f"config gives {len(tensors)}")
        try:
            out = layer(tensors if takes_list else tensors[0])
        except FileFormatError:
            raise
        except Exception as exc:  # noqa: BLE001 - shape errors from a bad config
            raise FileFormatError(f"{here}: cannot apply layer {layer.name!r}: {exc}") from None
        k = calls.get(layer.name, 0)
        calls[layer.name] = k + 1
        produced[(layer.name, k)] = out
    unused = sorted(set(layers) - set(calls))
    if unused:
        raise FileFormatError(f"{where}: layers {unused} are not connected to the graph")
    out_key = _ref(config.get("output"), f"{where}: output")
    if out_key not in produced or out_key[0] not in layers:
        raise FileFormatError(f"{where}: output {list(out_key)} is not produced by a node")
    name = config.get("name")
    if name is not None and not isinstance(name, str):
        raise FileFormatError(f"{where}: name must be a string")
    input_key = (specs[inputs[0]][1]["name"], 0)
    try:
        return Model(inputs=produced[input_key], outputs=produced[out_key], name=name,
                     device=device)
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(f"{where}: the node graph is invalid: {exc}") from None


def _assemble(config: Any, weights: Optional[Dict[str, List[Tuple[str, np.ndarray]]]],
              registry: Mapping[str, type], device: Optional[str], path: Optional[str]) -> Any:
    from .utils import get_rng_state, set_rng_state
    where = f"{path}: model config" if path is not None else "model config"
    if not isinstance(config, dict):
        raise FileFormatError(f"{where} must be a JSON object, got {type(config).__name__}")
    kind = config.get("class_name")
    if kind not in ("Sequential", "Model"):
        raise FileFormatError(f"{where}: class_name must be 'Sequential' or 'Model', "
                              f"got {kind!r}")
    feeder = _WeightFeeder(weights, path)
    # With a file, layers draw nothing (the file supplies every weight), and the
    # loader leaves the global random stream exactly as it found it.
    rng_state = get_rng_state() if weights is not None else None
    try:
        build = _build_sequential if kind == "Sequential" else _build_functional
        model = build(config, registry, feeder, device, where)
        feeder.check_complete()
        try:
            model._ensure_built()
        except Exception as exc:  # noqa: BLE001 - e.g. duplicate names caught by the model
            raise FileFormatError(f"{where}: cannot build the model: {exc}") from None
    finally:
        feeder.uninstall()
        if rng_state is not None:
            set_rng_state(rng_state)
    return model


def _compile_from_config(model: Any, cc: Any, path: Optional[str]) -> None:
    from . import losses as losses_mod
    from . import optimizers as optimizers_mod
    where = f"{path}: compile config" if path is not None else "compile config"
    if not (isinstance(cc, dict) and set(cc) == {"optimizer", "loss", "metrics"}):
        raise FileFormatError(f"{where} must be {{'optimizer', 'loss', 'metrics'}}")
    opt_cfg, loss_cfg, metrics = cc["optimizer"], cc["loss"], cc["metrics"]
    if not (isinstance(opt_cfg, dict) and set(opt_cfg) == {"class_name", "config"}
            and isinstance(opt_cfg["class_name"], str) and isinstance(opt_cfg["config"], dict)):
        raise FileFormatError(f"{where}: optimizer must be {{'class_name': str, 'config': {{}}}}")
    cls = _optimizer_table().get(opt_cfg["class_name"])
    if cls is None:
        raise FileFormatError(f"{where}: unknown optimizer {opt_cfg['class_name']!r}; "
                              f"expected one of {sorted(_optimizer_table())}")
    opt_config = opt_cfg["config"]
    lr = opt_config.get("learning_rate", 0.0)
    if not (isinstance(lr, dict) or (type(lr) in (int, float) and math.isfinite(lr)
                                     and lr >= 0)):
        raise FileFormatError(f"{where}: optimizer learning_rate must be a number >= 0 or a "
                              f"schedule config, got {lr!r}")
    hints: Dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is not object and "__init__" in vars(klass):
            hints.update(_type_hints(vars(klass)["__init__"]))
    for key, value in opt_config.items():
        hint = hints.get(key)
        if key != "learning_rate" and hint is not None and not _conforms(value, hint):
            raise FileFormatError(f"{where}: optimizer config value {key}={value!r} does not "
                                  f"have the expected type {hint}")
    try:
        optimizer = optimizers_mod.from_config(cls.__name__, opt_cfg["config"])
    except Exception as exc:  # noqa: BLE001 - unknown keys, bad values, bad schedules
        raise FileFormatError(f"{where}: cannot create {cls.__name__}: {exc}") from None
    if not (isinstance(loss_cfg, dict) and set(loss_cfg) == {"name", "from_logits"}
            and isinstance(loss_cfg["name"], str) and type(loss_cfg["from_logits"]) is bool):
        raise FileFormatError(f"{where}: loss must be {{'name': str, 'from_logits': bool}}")
    loss_cls = losses_mod._BY_NAME.get(loss_cfg["name"])
    if loss_cls is None:
        raise FileFormatError(f"{where}: unknown loss {loss_cfg['name']!r}")
    if not (isinstance(metrics, list) and all(isinstance(m, str) for m in metrics)):
        raise FileFormatError(f"{where}: metrics must be a list of names")
    try:
        model.compile(optimizer=optimizer, loss=loss_cls(from_logits=loss_cfg["from_logits"]),
                      metrics=metrics)
    except Exception as exc:  # noqa: BLE001
        raise FileFormatError(f"{where}: cannot compile: {exc}") from None


# ------------------------------------------------------------------ loading


def model_from_payload(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str],
                       path: Optional[str] = None, compile: bool = True,
                       custom_objects: Optional[Mapping[str, type]] = None,
                       device: Optional[str] = None) -> Any:
    """Rebuilds a model from a file's tensors and metadata (see load_model)."""
    registry = layer_registry(custom_objects)
    config = fio.json_metadata(meta, MODEL_CONFIG_KEY, path=path)
    index = _weight_index(meta, path)
    _check_no_extra_tensors(tensors, meta, index, path)
    weights = _collect_weights(tensors, index, path)
    opt_state = _optimizer_state(tensors, meta, path)
    model = _assemble(config, weights, registry, device, path)
    cc = fio.json_metadata(meta, COMPILE_CONFIG_KEY, None, path=path)
    if cc is not None and compile:
        _compile_from_config(model, cc, path)
        if opt_state is not None:
            restore_optimizer_state(model, opt_state, path)
    return model


def model_from_config(config: Mapping[str, Any],
                      custom_objects: Optional[Mapping[str, type]] = None,
                      device: Optional[str] = None) -> Any:
    """A new model from ``model_config(model)``'s output, with fresh weights.

    The weights are drawn by the layers' initialisers from the global generator,
    as for a model built in code.

    Raises:
        FileFormatError: for an invalid or unknown architecture.
    """
    registry = layer_registry(custom_objects)
    # A round trip through JSON keeps only plain data, whatever the caller passed.
    try:
        config = json.loads(json.dumps(config))
    except (TypeError, ValueError) as exc:
        raise FileFormatError(f"model config is not JSON data: {exc}") from None
    return _assemble(config, None, registry, device, None)


def load_model(path: PathLike, compile: bool = True,
               custom_objects: Optional[Mapping[str, type]] = None,
               device: Optional[str] = None) -> Any:
    """Loads a model written by ``model.save`` (or a training checkpoint).

    Nothing in the file is executed or imported: layer types are looked up in a
    fixed registry of fastnn's layers, and every value is checked before use.

    Args:
        path: the file.
        compile: recompile with the saved optimiser, loss and metrics, and restore
            the optimiser's state when the file holds it.
        custom_objects: ``{class name: Layer subclass}`` for your own layer classes.
        device: 'cpu' or 'cuda' (default: $FASTNN_DEVICE, else 'cpu').

    Returns:
        The model, built, with the saved weights (and compiled when asked).

    Raises:
        FileFormatError: a truncated, corrupt, hostile or newer-version file, an
            unknown layer type, or a config/weights mismatch. The message says which.
        OSError: the file cannot be read.
    """
    path_str = os.fspath(path)
    tensors, meta = read_model_file(path_str)
    if MODEL_CONFIG_KEY not in meta:
        raise _bad(path_str, "the file holds weights only (written by save_weights); "
                             "build the model and call model.load_weights(path)")
    return model_from_payload(tensors, meta, path_str, compile=compile,
                              custom_objects=custom_objects, device=device)


def assign_weights(model: Any, tensors: Mapping[str, np.ndarray], meta: Mapping[str, str],
                   path: Optional[str] = None) -> None:
    """Sets a built model's weights from a file's tensors, all or nothing.

    Layers are matched by name when every name matches; otherwise position by
    position among the layers that have weights (so a model rebuilt by the same code,
    whose automatic names differ, still loads), checking weight names and shapes.
    """
    index = _weight_index(meta, path)
    _check_no_extra_tensors(tensors, meta, index, path)
    weights = _collect_weights(tensors, index, path)
    targets = [layer for layer in model._compute_layers() if layer.weight_specs]
    by_name = {layer.name: layer for layer in targets}
    if set(by_name) == set(weights) and len(targets) == len(weights):
        pairs = [(by_name[name], weights[name]) for name, _ in index]
    else:
        if len(targets) != len(index):
            raise _bad(path, f"the file holds weights for {len(index)} layers, model "
                             f"{model.name!r} has {len(targets)} layers with weights")
        pairs = [(layer, weights[name]) for layer, (name, _) in zip(targets, index)]
    plan = []
    for layer, saved in pairs:
        specs = layer.weight_specs
        got = [(n, tuple(a.shape)) for n, a in saved]
        want = [(s.name, tuple(s.shape)) for s in specs]
        if got != want:
            raise _bad(path, f"layer {layer.name!r} has weights {want}, the file holds {got}")
        plan.append((layer, [a for _, a in saved]))
    for layer, arrays in plan:
        layer.set_weights(arrays)


def load_weights(model: Any, path: PathLike) -> None:
    """Loads weights written by ``save_weights``, ``save`` or a checkpoint into ``model``.

    Raises:
        FileFormatError: for a damaged file or one whose weights do not fit the model
            (nothing is changed then).
        RuntimeError: if the model cannot be built yet (no input shape).
        OSError: the file cannot be read.
    """
    path_str = os.fspath(path)
    tensors, meta = read_model_file(path_str)
    model._require_built("load_weights")
    assign_weights(model, tensors, meta, path_str)


