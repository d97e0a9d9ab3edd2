"""Training checkpoints: everything needed to continue a fit bit for bit.

A checkpoint is a model file (see fastnn.saving: architecture, compile settings,
weights, optimiser state) plus the state of the training loop:

* metadata ``fastnn.training_state``: epoch and step to continue from, the
  architecture's fingerprint (a checkpoint never restores into another model), the
  per-layer generator states of layers that own one (a Dropout with its own seed);
* metadata ``fastnn.rng_state``: the global generator's state as JSON text (its
  integers exceed 64 bits, so they travel as text, never as tensors);
* tensors ``training/epoch_order`` (the current epoch's sample order, when shuffled)
  and ``training/totals`` (the epoch's running loss and metric sums).

Writes are atomic (temporary file, fsync, rename): a process killed during a save
leaves the previous checkpoint intact. ``fastnn.models.load_model`` opens a
checkpoint like any model file.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional, Union

import numpy as np

from . import io as fio
from . import saving
from .io import FileFormatError
from .optimizers.schedules import LearningRateSchedule
from .utils import get_rng_state, set_rng_state

PathLike = Union[str, "os.PathLike[str]"]

RNG_KEY = "fastnn.rng_state"

__all__ = ["restore_training_state", "save_training_state"]


def _layer_generators(model: Any) -> Dict[str, Any]:
    """Position (as a string) -> generator state, for layers with their own generator."""
    out = {}
    for i, layer in enumerate(model._compute_layers()):
        rng = getattr(layer, "_rng", None)
        if isinstance(rng, np.random.Generator):
            out[str(i)] = rng.bit_generator.state
    return out


def save_training_state(model: Any, path: PathLike, *, epoch: Optional[int] = None,
                        step: Optional[int] = None, order: Any = "current",
                        totals: Optional[np.ndarray] = None,
                        steps_per_epoch: Optional[int] = None) -> None:
    """Writes a checkpoint of ``model``'s training, atomically.

    By default it records the loop's current position (``model.position``), the
    current epoch's order and running totals, as a callback does mid-epoch.

    Args:
        model: a built, compiled model whose optimiser has been built (inside fit).
        path: the checkpoint file.
        epoch, step: where training continues (default: ``model.position``).
        order: the current epoch's sample order (default: ``model.epoch_order``);
            None when the data is not shuffled or the epoch has not begun.
        totals: the epoch's running sums (default: ``model.training_totals()``).
        steps_per_epoch: recorded so a resume with other data or batch size is refused.

    Raises:
        RuntimeError: if the model is not built or not compiled.
        OSError: if the file cannot be written (the previous checkpoint stays).
    """
    if model.optimizer is None:
        raise RuntimeError("save_training_state: the model is not compiled")
    model._ensure_optimizer()
    tensors, meta = saving.model_payload(model, include_optimizer=True, kind="checkpoint")
    pos_epoch, pos_step = model.position
    epoch = int(pos_epoch if epoch is None else epoch)
    step = int(pos_step if step is None else step)
    if isinstance(order, str) and order == "current":
        order = model.epoch_order
    if totals is None:
        totals = model.training_totals()
    tensors[saving.TRAINING_PREFIX + "totals"] = np.asarray(totals, dtype=np.float64).reshape(-1)
    if order is not None:
        tensors[saving.TRAINING_PREFIX + "epoch_order"] = np.asarray(order, dtype=np.int64)
    meta[saving.TRAINING_KEY] = {
        "epoch": epoch, "step": step, "has_order": order is not None,
        "steps_per_epoch": None if steps_per_epoch is None else int(steps_per_epoch),
        "config_fingerprint": saving.config_fingerprint(meta[saving.MODEL_CONFIG_KEY]),
        "layer_rng": _layer_generators(model),
    }
    meta[RNG_KEY] = json.dumps(get_rng_state(), sort_keys=True)
    fio.write_tensors(path, tensors, meta)


def _int_field(state: Dict[str, Any], key: str, path: str) -> int:
    value = state.get(key)
    if type(value) is not int or value < 0:
        raise FileFormatError(f"{path}: training state {key!r} must be a non-negative int, "
                              f"got {value!r}")
    return value


def _check_generator_state(state: Any, what: str, path: str) -> Any:
    probe = np.random.default_rng()
    try:
        probe.bit_generator.state = state
    except Exception as exc:  # noqa: BLE001 - any malformed state
        raise FileFormatError(f"{path}: {what} is not a valid generator state: {exc}") from None
    return state


def read_training_state(path: PathLike) -> Dict[str, Any]:
    """Reads and validates a checkpoint without touching any model.

    Returns:
        ``{"tensors", "meta", "state", "rng", "order", "totals"}``.

    Raises:
        FileFormatError: for a damaged file or one that is not a checkpoint.
    """
    path = os.fspath(path)
    tensors, meta = saving.read_model_file(path)
    state = fio.json_metadata(meta, saving.TRAINING_KEY, None, path=path)
    if state is None:
        raise FileFormatError(f"{path}: not a training checkpoint (no "
                              f"{saving.TRAINING_KEY!r}); load it with load_model")
    if not isinstance(state, dict):
        raise FileFormatError(f"{path}: {saving.TRAINING_KEY!r} must be a JSON object")
    _int_field(state, "epoch", path)
    _int_field(state, "step", path)
    if state.get("steps_per_epoch") is not None:
        _int_field(state, "steps_per_epoch", path)
    if not isinstance(state.get("config_fingerprint"), str):
        raise FileFormatError(f"{path}: the checkpoint has no architecture fingerprint")
    layer_rng = state.get("layer_rng", {})
    if not isinstance(layer_rng, dict) or not all(k.isdigit() for k in layer_rng):
        raise FileFormatError(f"{path}: layer_rng must map layer positions to states")
    for key, value in layer_rng.items():
        _check_generator_state(value, f"the generator state of layer #{key}", path)
    text = meta.get(RNG_KEY)
    if not isinstance(text, str):
        raise FileFormatError(f"{path}: the checkpoint has no {RNG_KEY!r}")
    rng = _check_generator_state(fio.json_metadata(meta, RNG_KEY, path=path),
                                 "the global generator state", path)
    totals = tensors.get(saving.TRAINING_PREFIX + "totals")
    if totals is None or totals.dtype != np.float64 or totals.ndim != 1 or totals.size < 2 \
            or not np.isfinite(totals).all() or totals[-1] < 0:
        raise FileFormatError(f"{path}: training/totals must be a finite 1-D float64 tensor "
                              "ending with a non-negative sample count")
    order = tensors.get(saving.TRAINING_PREFIX + "epoch_order")
    if bool(state.get("has_order")) != (order is not None):
        raise FileFormatError(f"{path}: has_order disagrees with the training/epoch_order "
                              "tensor")
    if order is not None:
        if order.dtype != np.int64 or order.ndim != 1 or order.size == 0:
            raise FileFormatError(f"{path}: training/epoch_order must be a 1-D int64 tensor")
        # The order indexes the training data in the kernels: it must be a permutation.
        seen = np.zeros(order.size, dtype=bool)
        if order.min() < 0 or order.max() >= order.size:
            raise FileFormatError(f"{path}: training/epoch_order is not a permutation")
        seen[order] = True
        if not seen.all():
            raise FileFormatError(f"{path}: training/epoch_order is not a permutation")
    extra = sorted(k for k in tensors if k.startswith(saving.TRAINING_PREFIX)
                   and k not in (saving.TRAINING_PREFIX + "totals",
                                 saving.TRAINING_PREFIX + "epoch_order"))
    if extra:
        raise FileFormatError(f"{path}: unexpected training tensors {extra}")
    return {"tensors": tensors, "meta": meta, "state": state, "rng": rng,
            "order": order, "totals": totals}


def restore_training_state(model: Any, path: PathLike) -> Dict[str, Any]:
    """Loads a checkpoint into ``model`` and arms its next fit to continue from it.

    Restores the weights, the optimiser (slots, iteration count, learning rate), the
    global and per-layer random generators, and sets ``model._resume`` to
    ``{'epoch', 'step', 'order', 'totals'}``, which ``fit`` consumes right after
    ``on_train_begin``. Nothing is changed unless the whole file is valid.

    Args:
        model: a built and compiled model of the same architecture.
        path: the checkpoint.

    Returns:
        ``{"epoch", "step", "steps_per_epoch"}`` of the checkpoint.

    Raises:
        FileFormatError: a damaged file, or one written for another architecture or
            optimiser.
        RuntimeError: if the model is not built or not compiled.
    """
    path = os.fspath(path)
    ckpt = read_training_state(path)
    tensors, meta, state = ckpt["tensors"], ckpt["meta"], ckpt["state"]
    model._require_built("restore_training_state")
    model._require_compiled("restore_training_state")
    if state["config_fingerprint"] != saving.config_fingerprint(saving.model_config(model)):
        raise FileFormatError(f"{path}: the checkpoint was written by a model of another "
                              f"architecture than {model.name!r}; refusing to restore it")
    n_totals = len(model._compiled.metrics) + 2
    if ckpt["totals"].size != n_totals:
        raise FileFormatError(f"{path}: training/totals has {ckpt['totals'].size} values, "
                              f"the compiled model keeps {n_totals}")
    cc = fio.json_metadata(meta, saving.COMPILE_CONFIG_KEY, None, path=path)
    opt = model.optimizer
    saved_opt = cc.get("optimizer") if isinstance(cc, dict) else None
    saved_cfg = saved_opt.get("config") if isinstance(saved_opt, dict) else None
    saved_class = saved_opt.get("class_name") if isinstance(saved_opt, dict) else None
    if saved_class != type(opt).__name__ or not isinstance(saved_cfg, dict):
        raise FileFormatError(f"{path}: the checkpoint's optimizer is {saved_class!r}, the "
                              f"model's is {type(opt).__name__!r}")
    saved_lr = saved_cfg.get("learning_rate")
    if type(saved_lr) in (int, float) and not (math.isfinite(saved_lr) and saved_lr >= 0):
        raise FileFormatError(f"{path}: the saved learning rate {saved_lr!r} is not a "
                              "finite number >= 0")
    opt_state = saving._optimizer_state(tensors, meta, path)
    if opt_state is None:
        raise FileFormatError(f"{path}: the checkpoint holds no optimizer state")
    layers = model._compute_layers()
    layer_rng = state.get("layer_rng", {})
    if any(int(k) >= len(layers) or not hasattr(layers[int(k)], "_rng") for k in layer_rng):
        raise FileFormatError(f"{path}: layer_rng names a layer that has no generator")
    saving.check_optimizer_state(model, opt_state, path)
    # Everything is validated; now change the model (weights are checked again there).
    saving.assign_weights(model, tensors, meta, path)
    saving.restore_optimizer_state(model, opt_state, path)
    if type(saved_lr) in (int, float) and not isinstance(opt.learning_rate,
                                                         LearningRateSchedule):
        opt.learning_rate = float(saved_lr)  # e.g. lowered by ReduceLROnPlateau
    set_rng_state(ckpt["rng"])
    for i, layer in enumerate(layers):
        if not hasattr(layer, "_rng"):
            continue
        saved = layer_rng.get(str(i))
        if saved is None:
            layer._rng = None  # not drawn from yet: recreated from its seed on first use
        else:
            gen = np.random.default_rng()
            gen.bit_generator.state = saved
            layer._rng = gen
    model._resume = {"epoch": state["epoch"], "step": state["step"],
                     "order": ckpt["order"], "totals": ckpt["totals"]}
    return {"epoch": state["epoch"], "step": state["step"],
            "steps_per_epoch": state.get("steps_per_epoch")}
