"""Model and Sequential: compile, fit, evaluate, predict, weights and summary.

Both run the same executor: an ordered list of nodes (layer, input slots,
output slot). A Sequential model is a chain; a functional ``Model(inputs,
outputs)`` is any acyclic graph of layers, with gradients summed where a
tensor feeds several layers.

All trainable weights live in one flat float32 buffer and their gradients in
another; layers hold views. The loss kernel returns the loss and its gradient in
one pass, backward fills the gradient buffer, and the optimiser updates the
parameter buffer with one fused kernel call.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod
from ._C import first_nonfinite as _first_nonfinite
from .backend import get_backend
from .callbacks import Callback, CallbackList, History, ProgbarLogger
from .layers.base import Layer, WeightSpec
from .layers.graph import SymbolicTensor, topological_nodes
from .layers.input_layer import InputLayer
from .replica import LocalReplica
from .utils import global_rng


@dataclass
class _Node:
    layer: Layer
    ins: List[int]
    out: int
    need_dx: bool = True
    # Set on the last node (in backward order) that uses a layer with trainable
    # weights: (offset, size) of those weights in the flat buffer, now final.
    grads_final: Optional[Tuple[int, int]] = None


@dataclass
class _Compiled:
    optimizer: Any
    loss: Any
    loss_kind: str
    fused: bool
    metrics: List[Tuple[str, str]]


class Model:
    """A functional model: ``Model(inputs, outputs)`` as in Keras.

    Args:
        inputs: a symbolic tensor from ``fastnn.Input`` (one input).
        outputs: a symbolic tensor computed from ``inputs`` by layers (one output).
        device: 'cpu' or 'cuda'; defaults to $FASTNN_DEVICE, else 'cpu'.
        name: the model's name.

    Raises:
        TypeError / ValueError: when inputs/outputs are not connected tensors.
    """

    def __init__(self, inputs: Any = None, outputs: Any = None, device: Optional[str] = None,
                 name: Optional[str] = None):
        self.name = name or type(self).__name__.lower()
        self.backend = get_backend(device)
        self.stop_training = False
        self.history: Optional[History] = None
        self._compiled: Optional[_Compiled] = None
        self._nodes: List[_Node] = []
        self._n_slots = 0
        self._built_flat = False
        self.params: Any = None
        self.grads: Any = None
        self.state: Any = None
        self._offsets: Dict[Tuple[int, str], Tuple[str, int]] = {}
        self._scratch: Dict[Tuple[Any, ...], Any] = {}
        self._input_shape: Optional[Tuple[int, ...]] = None
        self.replica: Any = LocalReplica()
        # Set by a restoring callback (BackupAndRestore) in on_train_begin:
        # {'epoch', 'step', 'order', 'totals'} of an interrupted fit.
        self._resume: Optional[Dict[str, Any]] = None
        self.epoch_order: Optional[np.ndarray] = None
        self.position: Tuple[int, int] = (0, 0)
        if inputs is not None or outputs is not None:
            self._init_graph(inputs, outputs)

    # ------------------------------------------------------------------ graph
    def _init_graph(self, inputs: Any, outputs: Any) -> None:
        ins = [inputs] if isinstance(inputs, SymbolicTensor) else list(inputs or [])
        outs = [outputs] if isinstance(outputs, SymbolicTensor) else list(outputs or [])
        if len(ins) != 1 or len(outs) != 1 or not all(
                isinstance(t, SymbolicTensor) for t in ins + outs):
            raise ValueError("Model(inputs, outputs) takes one input tensor from "
                             "fastnn.Input and one output tensor")
        order = topological_nodes(ins, outs)
        slots = {id(ins[0]): 0}
        self._nodes = []
        for node in order:
            slots[id(node.output)] = len(slots)
            self._nodes.append(_Node(node.layer, [slots[id(t)] for t in node.inputs],
                                     slots[id(node.output)]))
        self._n_slots = len(slots)
        self._input_shape = ins[0].sample_shape
        self._output_slot = slots[id(outs[0])]
        self._input_layer = ins[0].node.layer

    @property
    def layers(self) -> List[Layer]:
        """Each layer once, in execution order (the input layer first)."""
        seen, result = set(), []
        first = getattr(self, "_input_layer", None)
        for layer in ([first] if first is not None else []) + [n.layer for n in self._nodes]:
            if id(layer) not in seen:
                seen.add(id(layer))
                result.append(layer)
        return result

    def _compute_layers(self) -> List[Layer]:
        return [l for l in self.layers if not isinstance(l, InputLayer)]

    def get_layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f"no layer named {name!r} in model {self.name!r}")

    @property
    def built(self) -> bool:
        return self._built_flat

    def _ensure_built(self, sample_shape: Optional[Tuple[int, ...]] = None) -> None:
        if not self._built_flat:
            self._build_graph(sample_shape)
            self._allocate_weights()
        self._resolve_loss()

    def _build_graph(self, sample_shape: Optional[Tuple[int, ...]]) -> None:
        if not self._nodes:
            raise ValueError(f"model {self.name!r} has no layers")

    def _mark_need_dx(self) -> None:
        """A node needs dL/dx only if something upstream has trainable weights."""
        upstream_trainable = [False] * self._n_slots
        for node in self._nodes:
            node.need_dx = any(upstream_trainable[s] for s in node.ins)
            has_weights = any(s.trainable for s in node.layer.weight_specs) and \
                node.layer.trainable
            upstream_trainable[node.out] = node.need_dx or has_weights
        segments = {}
        for layer, spec in self._weight_entries():
            buffer, offset = self._offsets[(id(layer), spec.name)]
            if buffer == "params":
                lo, size = segments.get(id(layer), (offset, 0))
                segments[id(layer)] = (min(lo, offset), size + spec.size)
        done = set()
        for node in reversed(self._nodes):
            node.grads_final = None
        for node in self._nodes:  # forward order: the first use is the last in backward
            key = id(node.layer)
            if key in segments and key not in done:
                node.grads_final = segments[key]
                done.add(key)

    # -------------------------------------------------------------- weights
    def _weight_entries(self) -> List[Tuple[Layer, WeightSpec]]:
        return [(layer, spec) for layer in self._compute_layers() for spec in layer.weight_specs]

    def _allocate_weights(self) -> None:
        """One flat buffer for trainable weights (plus gradients), one for the rest."""
        names = [l.name for l in self.layers]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"layer names must be unique within a model; repeated: "
                             f"{sorted(dupes)}")
        sizes = {"params": 0, "state": 0}
        self._offsets = {}
        host_values = {"params": [], "state": []}
        for layer, spec in self._weight_entries():
            buffer = "params" if (spec.trainable and layer.trainable) else "state"
            self._offsets[(id(layer), spec.name)] = (buffer, sizes[buffer])
            sizes[buffer] += spec.size
            value = spec.initial_value
            if value is None:
                # The layer already lives in another model: start from a copy of
                # its current weights (models never share weight memory).
                value = np.asarray(layer.backend.to_numpy(layer.param(spec.name)))
            host_values[buffer].append(np.array(value, dtype=np.float32).reshape(-1))
            spec.initial_value = None  # the flat buffer owns the values from now on
        flat = {key: (np.concatenate(vals) if vals else np.zeros(0, np.float32))
                for key, vals in host_values.items()}
        self._place_buffers(flat["params"], flat["state"])
        self._built_flat = True
        self._mark_need_dx()

    def _place_buffers(self, params_host: np.ndarray, state_host: np.ndarray) -> None:
        backend = self.backend
        self.params = backend.asarray(np.ascontiguousarray(params_host, dtype=np.float32))
        self.state = backend.asarray(np.ascontiguousarray(state_host, dtype=np.float32))
        self.grads = backend.zeros((int(params_host.size),))
        self._scratch = {}
        for layer in self._compute_layers():
            params, grads = {}, {}
            for spec in layer.weight_specs:
                buffer, offset = self._offsets[(id(layer), spec.name)]
                flat = self.params if buffer == "params" else self.state
                params[spec.name] = flat[offset:offset + spec.size].reshape(spec.shape)
                if buffer == "params":
                    grads[spec.name] = self.grads[offset:offset + spec.size].reshape(spec.shape)
            layer.bind(backend, params, grads)

    def _param_segments(self) -> List[Tuple[int, int]]:
        """(offset, size) of each trainable weight in the flat buffer."""
        return [(self._offsets[(id(l), s.name)][1], s.size) for l, s in self._weight_entries()
                if self._offsets[(id(l), s.name)][0] == "params"]

    def _require_built(self, what: str) -> None:
        if not self._built_flat and self._input_shape is not None:
            self._ensure_built()
        if not self._built_flat:
            raise RuntimeError(f"{what}: model {self.name!r} is not built yet; give the "
                               "first layer an input_shape or call fit/predict first")

    def get_weights(self) -> List[np.ndarray]:
        """Host copies of every weight, layer by layer in Keras's order."""
        self._require_built("get_weights")
        return [w for layer in self._compute_layers() for w in layer.get_weights()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Sets every weight from a list shaped like ``get_weights()``.

        Raises:
            ValueError: wrong number of arrays, wrong shapes or non-finite values.
        """
        self._require_built("set_weights")
        weights = list(weights)
        expected = sum(len(l.weight_specs) for l in self._compute_layers())
        if len(weights) != expected:
            raise ValueError(f"set_weights: model {self.name!r} has {expected} weight arrays, "
                             f"got {len(weights)}")
        i = 0
        for layer in self._compute_layers():
            n = len(layer.weight_specs)
            layer.set_weights(weights[i:i + n])
            i += n

    def count_params(self) -> int:
        self._require_built("count_params")
        return sum(l.count_params() for l in self._compute_layers())

    # --------------------------------------------------------------- device
    @property
    def device(self) -> str:
        return self.backend.name

    def to(self, device: str) -> "Model":
        """Moves the model (weights and optimiser state) to 'cpu' or 'cuda'.

        Returns:
            The model itself.
        """
        backend = get_backend(device)
        if backend is self.backend:
            return self
        if self._built_flat:
            params = np.array(self.backend.to_numpy(self.params), copy=True)
            state = np.array(self.backend.to_numpy(self.state), copy=True)
            old = self.backend
            self.backend = backend
            self._place_buffers(params, state)
            if self._compiled is not None and self._compiled.optimizer.backend is old:
                self._compiled.optimizer.to(backend)
        else:
            self.backend = backend
        return self

    # -------------------------------------------------------------- compile
    def compile(self, optimizer: Any = "rmsprop", loss: Any = None,
                metrics: Optional[Sequence[str]] = None) -> None:
        """Configures training (as keras.Model.compile).

        Args:
            optimizer: name or fastnn.optimizers.Optimizer.
            loss: name or fastnn.losses.Loss.
            metrics: metric names ('accuracy', 'mae', ...).

        Raises:
            ValueError: for unknown names, a missing loss, or metrics that do not
                fit the loss's targets.
        """
        if loss is None:
            raise ValueError("compile: a loss is required")
        loss_obj = losses_mod.get(loss)
        opt = optimizers_mod.get(optimizer)
        if isinstance(metrics, str):
            metrics = [metrics]
        self._compiled = _Compiled(opt, loss_obj, "", False, [])
        self._metric_names = list(metrics or [])
        self._resolve_loss()

    def _output_layer(self) -> Layer:
        return self._nodes[-1].layer if self._nodes else None

    def _output_units(self) -> int:
        layer = self._output_layer()
        shape = layer.output_shape_ if layer is not None and layer.built else None
        return shape[-1] if shape else 0

    def _resolve_loss(self) -> None:
        """Chooses the loss kernel, folding the output activation in when possible."""
        c = self._compiled
        if c is None or not self._nodes:
            return
        last = self._output_layer()
        for node in self._nodes:
            if hasattr(node.layer, "emit_logits"):
                node.layer.emit_logits = False
        act = getattr(last, "activation", "linear") if hasattr(last, "emit_logits") else "linear"
        c.loss_kind, c.fused = c.loss.kernel(act)
        last_uses = sum(n.layer is last for n in self._nodes)
        if c.fused and last_uses != 1:
            c.loss_kind, c.fused = c.loss.kernel("linear")
        if c.fused:
            last.emit_logits = True
        if last is not None and last.built:
            c.metrics = metrics_mod.resolve(self._metric_names, c.loss, self._output_units())

    def _require_compiled(self, what: str) -> _Compiled:
        if self._compiled is None:
            raise RuntimeError(f"{what}: call model.compile(optimizer, loss, ...) first")
        return self._compiled

    @property
    def optimizer(self) -> Any:
        return None if self._compiled is None else self._compiled.optimizer

    @property
    def loss(self) -> Any:
        return None if self._compiled is None else self._compiled.loss

    # ---------------------------------------------------------- input checks
    def _prepare_x(self, x: Any, what: str = "x") -> np.ndarray:
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as exc:  # noqa: BLE001 - anything unconvertible
                raise TypeError(f"{what} must be a NumPy array, got {type(x).__name__}") from exc
        # bool, integer or real floating kinds only: timedelta64 counts as an
        # integer to issubdtype, and complex would lose its imaginary part
        if x.dtype.kind not in "biuf":
            raise TypeError(f"{what} must hold numbers, got dtype {x.dtype}")
        if x.ndim < 2:
            raise ValueError(f"{what} must have a batch axis and at least one feature axis, "
                             f"got shape {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{what} is empty (shape {x.shape})")
        self._ensure_built(tuple(x.shape[1:]))
        if tuple(x.shape[1:]) != self._input_shape:
            raise ValueError(f"{what} has samples of shape {tuple(x.shape[1:])}, but model "
                             f"{self.name!r} expects {self._input_shape}")
        # aligned too: ascontiguousarray passes a misaligned view through, and the
        # kernels (the finiteness scan first) refuse one
        x = np.require(x, dtype=np.float32, requirements="CA")
        # one pass in C over the whole data set, without a temporary mask
        bad = _first_nonfinite(x)
        if bad >= 0:
            raise ValueError(f"{what} contains NaN or infinity (first in sample "
                             f"{bad // max(1, x.size // len(x))})")
        return x

    def _prepare_y(self, y: Any, n: int, what: str = "y") -> np.ndarray:
        c = self._require_compiled("fit/evaluate")
        y = np.asarray(y)
        if y.dtype.kind not in "biuf":  # as in _prepare_x
            raise TypeError(f"{what} must hold numbers, got dtype {y.dtype}")
        if y.ndim == 0 or y.shape[0] != n:
            raise ValueError(f"x and {what} have different lengths: {n} samples vs "
                             f"{y.shape[0] if y.ndim else 'a scalar'}")
        out_shape = self._output_layer().output_shape_
        units = out_shape[-1]
        if c.loss.sparse_labels:
            return self._prepare_labels(y, out_shape, what)
        expected = (n,) + tuple(out_shape)
        if y.shape != expected:
            if y.ndim == 1 and units > 1 and np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"{what} holds integer labels of shape {y.shape} but loss "
                                 f"{c.loss.name!r} needs one-hot targets of shape {expected}: "
                                 "use fastnn.utils.to_categorical(y) or "
                                 "loss='sparse_categorical_crossentropy'")
            if y.size == math.prod(expected):
                y = y.reshape(expected)
            else:
                raise ValueError(f"{what} has shape {y.shape}, expected {expected}")
        y = np.ascontiguousarray(y, dtype=np.float32)
        if not np.isfinite(y).all():
            raise ValueError(f"{what} contains NaN or infinity")
        return y

    def _prepare_labels(self, y: np.ndarray, out_shape: Tuple[int, ...], what: str) -> np.ndarray:
        units = out_shape[-1]
        rows_per_sample = math.prod(out_shape[:-1])
        if y.ndim >= 2 and y.shape[-1] == 1:
            y = y.reshape(y.shape[:-1])
        if y.size != y.shape[0] * rows_per_sample:
            raise ValueError(f"{what} must hold one integer label per sample (shape "
                             f"({y.shape[0]},)), got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if not (np.all(np.isfinite(y)) and np.all(y == np.round(y))):
                raise ValueError(f"{what}: labels must be integers for sparse "
                                 "categorical cross-entropy")
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= units:
            raise ValueError(f"{what}: labels must be in [0, {units}) for an output of "
                             f"{units} classes, found {lo if lo < 0 else hi}")
        return np.ascontiguousarray(y.reshape(-1), dtype=np.int32).reshape(
            (y.shape[0],) + tuple(out_shape[:-1]))

    # -------------------------------------------------------------- executor
    def _model_scratch(self, key: str, shape: Tuple[int, ...], dtype: str = "float32") -> Any:
        slot = (key, tuple(shape), dtype)
        arr = self._scratch.get(slot)
        if arr is None:
            arr = self.backend.empty(slot[1], dtype)
            self._scratch[slot] = arr
        return arr

    def _forward(self, x: Any, training: bool) -> Any:
        values: List[Any] = [None] * self._n_slots
        values[0] = x
        for i, node in enumerate(self._nodes):
            layer = node.layer
            layer.call_slot = i
            inp = [values[s] for s in node.ins] if getattr(layer, "takes_list", False) \
                else values[node.ins[0]]
            values[node.out] = layer.forward(inp, training)
        return values[self._output_slot]

    def _backward(self, d_out: Any) -> None:
        for layer in self._compute_layers():
            layer.begin_backward_pass()
        grads: List[Any] = [None] * self._n_slots
        grads[self._output_slot] = d_out
        for i in range(len(self._nodes) - 1, -1, -1):
            node = self._nodes[i]
            dy = grads[node.out]
            if dy is None:
                continue
            node.layer.call_slot = i
            dx = node.layer.backward(dy, node.need_dx)
            if node.grads_final is not None:
                self.replica.gradients_ready(self, *node.grads_final)
            if not node.need_dx:
                continue
            dxs = dx if getattr(node.layer, "takes_list", False) else [dx]
            for slot, d in zip(node.ins, dxs):
                self._accumulate(grads, slot, d)

    def _accumulate(self, grads: List[Any], slot: int, d: Any) -> None:
        if d is None:
            return
        if grads[slot] is None:
            grads[slot] = d
            return
        total = self._model_scratch(f"dsum{slot}", tuple(d.shape))
        self.backend.add(grads[slot], d, total)
        grads[slot] = total

    def _predictions(self, out: Any) -> Any:
        """The model's output as predict returns it (activating fused logits)."""
        c = self._compiled
        if c is None or not c.fused:
            return out
        rows = out.reshape(-1, out.shape[-1])
        probs = self._model_scratch("pred", tuple(rows.shape))
        self.backend.bias_act_fwd(rows, None, self._output_layer().activation, probs)
        return probs.reshape(out.shape)

    def _loss_and_metrics(self, out: Any, target: Any, loss_acc: Any,
                          metric_acc: Any, need_grad: bool = True) -> Any:
        c = self._compiled
        backend = self.backend
        pred = out.reshape(-1, out.shape[-1])
        grad = self._model_scratch("dout", tuple(pred.shape))
        probs = (self._model_scratch("probs", tuple(pred.shape))
                 if c.loss_kind.endswith("_logits") else None)
        tgt = target.reshape(-1) if c.loss.sparse_labels else target.reshape(pred.shape)
        backend.loss(c.loss_kind, pred, tgt, grad, loss_acc, probs)
        shown = probs if c.fused else pred
        for i, (_, kind) in enumerate(c.metrics):
            backend.metric(kind, shown, tgt, metric_acc[i:i + 1])
        return grad.reshape(out.shape)

    def _train_step(self, xb: Any, yb: Any, loss_acc: Any, metric_acc: Any,
                    global_rows: Optional[int] = None) -> None:
        out = self._forward(xb, training=True)
        grad = self._loss_and_metrics(out, yb, loss_acc, metric_acc)
        replica = self.replica
        replica.begin_step(self, int(xb.shape[0]), global_rows or int(xb.shape[0]))
        self._backward(grad)
        replica.finish_gradients(self)
        self._compiled.optimizer.apply(self.params, self.grads)

    # ------------------------------------------------------------ batching
    def _batch_buffers(self, x: Any, y: Any, rows: int) -> Tuple[Any, Any]:
        xb = self._model_scratch("xb", (rows,) + tuple(x.shape[1:]))
        yb = self._model_scratch("yb", (rows,) + tuple(y.shape[1:]),
                                 "int32" if y.dtype == np.int32 else "float32")
        return xb, yb

    def _ensure_optimizer(self) -> None:
        opt = self._compiled.optimizer
        if opt.backend is not self.backend or any(
                tuple(a.shape) != (int(self.params.shape[0]),) for a in opt.slots.values()):
            opt.build(self.backend, int(self.params.shape[0]), self._param_segments())
        elif not opt._segments:
            opt._segments = self._param_segments()

    class _Tracker:
        """Running loss and metric sums, read from the backend's accumulators.

        The loss kernels add each batch's MEAN loss; to turn those into a sum
        over samples, batches of the common size add into slot 0 and the one
        batch of another size an epoch can have (the last) into slot 1, each
        later weighted by its row count. Sharded batches (MPI) work the same.
        """

        def __init__(self, model: "Model", prefix: str = ""):
            self.model, self.prefix = model, prefix
            n = len(model._compiled.metrics)
            self.loss_acc = model.backend.zeros((2,), "float64")
            self.metric_acc = model.backend.zeros((max(n, 1),), "float64")
            self.reset()

        def reset(self) -> None:
            backend = self.model.backend
            backend.fill_(self.loss_acc, 0.0)
            backend.fill_(self.metric_acc, 0.0)
            self.slot_rows = [0, 0]
            self.seen = 0
            # Sums carried over from an interrupted epoch (see restore).
            self.base = np.zeros(len(self.model._compiled.metrics) + 1)

        def acc_for(self, rows: int) -> Any:
            if self.slot_rows[0] in (0, rows):
                self.slot_rows[0], slot = rows, 0
            elif self.slot_rows[1] in (0, rows):
                self.slot_rows[1], slot = rows, 1
            else:
                raise RuntimeError("internal: more than two batch sizes in one epoch")
            self.seen += rows
            return self.loss_acc[slot:slot + 1]

        def totals(self) -> np.ndarray:
            """[sum of sample losses, sum of each metric, samples seen] (float64)."""
            model = self.model
            loss_sums = model.backend.to_numpy(self.loss_acc)
            loss_total = loss_sums[0] * self.slot_rows[0] + loss_sums[1] * self.slot_rows[1]
            n = len(model._compiled.metrics)
            metric_sums = np.asarray(model.backend.to_numpy(self.metric_acc))[:n]
            sums = np.concatenate([[loss_total], metric_sums]) + self.base
            return np.concatenate([sums, [self.seen]]).astype(np.float64)

        def restore(self, totals: np.ndarray) -> None:
            """Continues from ``totals()`` of an interrupted epoch."""
            self.reset()
            totals = np.asarray(totals, dtype=np.float64)
            self.base = totals[:-1].copy()
            self.seen = int(totals[-1])

        def logs(self, reduce: bool = False) -> Dict[str, float]:
            totals = self.totals()
            if reduce:
                totals = self.model.replica.reduce_sums(totals)
            seen = totals[-1]
            if not seen:
                return {}
            logs = {self.prefix + "loss": float(totals[0] / seen)}
            for i, (name, _) in enumerate(self.model._compiled.metrics):
                logs[self.prefix + name] = float(totals[1 + i] / seen)
            return logs

    # ------------------------------------------------------------------ fit
    def fit(self, x: Any = None, y: Any = None, batch_size: Optional[int] = None,
            epochs: int = 1, verbose: Union[str, int] = "auto",
            callbacks: Optional[Sequence[Callback]] = None, validation_split: float = 0.0,
            validation_data: Optional[Tuple[Any, Any]] = None, shuffle: bool = True,
            initial_epoch: int = 0, validation_batch_size: Optional[int] = None,
            distributed: Any = False) -> History:
        """Trains the model (as keras.Model.fit).

        Args:
            x: inputs, a NumPy array of shape (samples, *input_shape).
            y: targets: one-hot / real-valued arrays, or integer labels for sparse losses.
            batch_size: samples per step (default 32).
            epochs: index of the last epoch (training runs from ``initial_epoch``).
            verbose: 'auto', 0 (silent), 1 (progress bar on a terminal) or 2 (a line
                per epoch).
            callbacks: fastnn.callbacks.Callback instances.
            validation_split: fraction of the data, taken from the end before
                shuffling, held out for validation.
            validation_data: (x_val, y_val) evaluated at the end of each epoch.
            shuffle: reshuffle the training samples every epoch.
            initial_epoch: epoch to start from (for resuming).
            validation_batch_size: batch size for validation (default batch_size).
            distributed: True to train data-parallel over MPI (see
                fastnn.distributed): each global batch is split across the ranks and
                gradients are averaged, so the result matches one process up to rounding.

        Returns:
            A History whose ``.history`` maps 'loss', metric names and their
            'val_' forms to per-epoch values.

        Raises:
            RuntimeError: if the model is not compiled.
            TypeError / ValueError: for unusable data or arguments.
        """
        c = self._require_compiled("fit")
        batch_size = _check_batch_size(batch_size)
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 0:
            raise ValueError(f"fit: epochs must be a non-negative int, got {epochs!r}")
        if x is None or y is None:
            raise ValueError("fit: x and y are required")
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"fit: validation_split must be in [0, 1), got {validation_split!r}")
        x = self._prepare_x(x)
        self._resolve_loss()
        y = self._prepare_y(y, len(x))
        if validation_data is None and validation_split > 0:
            n_train = int(len(x) * (1.0 - float(validation_split)))
            if n_train == 0 or n_train == len(x):
                raise ValueError(f"fit: validation_split={validation_split} leaves "
                                 f"{n_train} of {len(x)} samples for training")
            validation_data = (x[n_train:], y[n_train:])
            x, y = x[:n_train], y[:n_train]
        val = self._prepare_validation(validation_data)
        replica = self._replica_for(distributed)
        replica.begin_fit(self, len(x), batch_size)
        history = History()
        cb_list = list(callbacks or [])
        verbose_level = _verbose_level(verbose) if replica.is_primary else 0
        if verbose_level:
            cb_list.append(ProgbarLogger(verbose_level))
        cb_list.append(history)
        steps = math.ceil(len(x) / batch_size)
        cbs = CallbackList(cb_list, self, {"epochs": epochs, "steps": steps,
                                           "verbose": verbose_level})
        self._ensure_optimizer()
        backend = self.backend
        x_dev, y_dev = backend.stage(x), backend.stage(y)
        tracker = self._Tracker(self)
        self._active_tracker = tracker
        self.stop_training = False
        self.history = history
        self._resume = None
        logs: Dict[str, float] = {}
        try:
            cbs.call("on_train_begin", None)
            resume, self._resume = self._resume, None
            first_epoch = int(resume["epoch"]) if resume else int(initial_epoch)
            for epoch in range(first_epoch, int(epochs)):
                first_step = 0
                # A checkpoint at step 0 is an epoch boundary: that epoch starts afresh.
                if resume and epoch == first_epoch and int(resume["step"]) > 0:
                    order = resume["order"]
                    first_step = int(resume["step"])
                    tracker.restore(resume["totals"])
                else:
                    tracker.reset()
                    cbs.call("on_epoch_begin", epoch, None)
                    order = global_rng().permutation(len(x)) if shuffle else None
                self.epoch_order = order
                self._run_epoch(x_dev, y_dev, order, batch_size, tracker, cbs, epoch, first_step)
                logs = tracker.logs(reduce=True)
                if val is not None:
                    logs.update(self._evaluate_arrays(val[0], val[1],
                                                      validation_batch_size or batch_size,
                                                      prefix="val_"))
                cbs.call("on_epoch_end", epoch, logs)
                if self.stop_training:
                    break
            cbs.call("on_train_end", logs)
        finally:
            self.replica = LocalReplica()
        return history

    def _replica_for(self, distributed: Any) -> Any:
        if distributed is None or distributed is False:
            return LocalReplica()
        if distributed is True:
            from . import distributed as dist_mod  # loads mpi4py only when asked
            self.replica = dist_mod.replica()
            return self.replica
        self.replica = distributed
        return distributed

    def _run_epoch(self, x_dev: Any, y_dev: Any, order: Optional[np.ndarray],
                   batch_size: int, tracker: "_Tracker", cbs: CallbackList,
                   epoch: int, first_step: int = 0) -> None:
        backend = self.backend
        replica = self.replica
        n = x_dev.shape[0]
        sharded = replica.world_size > 1
        if sharded and order is None:
            order = np.arange(n)
        for step in range(first_step, math.ceil(n / batch_size)):
            start = step * batch_size
            stop = min(start + batch_size, n)
            if cbs.batch_hooks:
                cbs.call("on_train_batch_begin", step, None)
            if order is None:
                xb, yb = x_dev[start:stop], y_dev[start:stop]
            else:
                idx = replica.shard(order[start:stop]) if sharded else order[start:stop]
                xb, yb = self._batch_buffers(x_dev, y_dev, len(idx))
                backend.gather_rows(x_dev, idx, xb)
                backend.gather_rows(y_dev, idx, yb)
            self._train_step(xb, yb, tracker.acc_for(int(xb.shape[0])), tracker.metric_acc,
                             stop - start)
            self.position = (epoch, step + 1)
            if cbs.batch_hooks:
                cbs.call("on_train_batch_end", step, tracker.logs())
            if self.stop_training:
                break

    def training_totals(self) -> np.ndarray:
        """Running sums of the current epoch (for checkpoints); see _Tracker.totals."""
        return self._active_tracker.totals()

    def _prepare_validation(self, validation_data: Any) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
            raise ValueError("validation_data must be a tuple (x_val, y_val)")
        xv = self._prepare_x(validation_data[0], "validation x")
        return xv, self._prepare_y(validation_data[1], len(xv), "validation y")

    # -------------------------------------------------------- evaluate / predict
    def _evaluate_arrays(self, x: np.ndarray, y: np.ndarray, batch_size: int,
                         prefix: str = "") -> Dict[str, float]:
        backend = self.backend
        lo, hi = self.replica.shard_range(len(x))
        x_dev, y_dev = backend.stage(x[lo:hi]), backend.stage(y[lo:hi])
        n = hi - lo
        tracker = self._Tracker(self, prefix)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            out = self._forward(x_dev[start:stop], training=False)
            self._loss_and_metrics(out, y_dev[start:stop], tracker.acc_for(stop - start),
                                   tracker.metric_acc)
        return tracker.logs(reduce=True)

    def evaluate(self, x: Any = None, y: Any = None, batch_size: Optional[int] = None,
                 verbose: Union[str, int] = "auto", return_dict: bool = False) -> Any:
        """Loss and metrics on data (as keras.Model.evaluate).

        Returns:
            The loss alone when no metrics are compiled, else [loss, *metrics]
            (a dict when ``return_dict``).

        Raises:
            RuntimeError: if the model is not compiled.
            TypeError / ValueError: for unusable data.
        """
        self._require_compiled("evaluate")
        batch_size = _check_batch_size(batch_size)
        x = self._prepare_x(x)
        self._resolve_loss()
        y = self._prepare_y(y, len(x))
        logs = self._evaluate_arrays(x, y, batch_size)
        if _verbose_level(verbose):
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values[0] if len(values) == 1 else values

    def predict(self, x: Any, batch_size: Optional[int] = None,
                verbose: Union[str, int] = "auto") -> np.ndarray:
        """The model's outputs for ``x`` (as keras.Model.predict).

        Returns:
            A float32 NumPy array of shape (samples, *output_shape).

        Raises:
            TypeError / ValueError: for unusable data.
        """
        batch_size = _check_batch_size(batch_size)
        x = self._prepare_x(x)
        backend = self.backend
        x_dev = backend.stage(x)
        result = np.empty((len(x),) + tuple(self._output_layer().output_shape_), np.float32)
        for start in range(0, len(x), batch_size):
            stop = min(start + batch_size, len(x))
            out = self._predictions(self._forward(x_dev[start:stop], training=False))
            result[start:stop] = backend.to_numpy(out)
        return result

    def train_on_batch(self, x: Any, y: Any) -> Any:
        """One optimiser step on one batch.

        Returns:
            The batch loss, or [loss, *metrics] when metrics are compiled.
        """
        self._require_compiled("train_on_batch")
        x = self._prepare_x(x)
        self._resolve_loss()
        y = self._prepare_y(y, len(x))
        self._ensure_optimizer()
        tracker = self._Tracker(self)
        backend = self.backend
        self._train_step(backend.stage(x), backend.stage(y), tracker.acc_for(len(x)),
                         tracker.metric_acc)
        values = list(tracker.logs().values())
        return values[0] if len(values) == 1 else values

    def test_on_batch(self, x: Any, y: Any) -> Any:
        """Loss (and metrics) on one batch without updating weights."""
        return self.evaluate(x, y, batch_size=len(x), verbose=0)

    def predict_on_batch(self, x: Any) -> np.ndarray:
        return self.predict(x, batch_size=len(x), verbose=0)

    # --------------------------------------------------------------- saving
    def save(self, filepath: str, include_optimizer: bool = True) -> None:
        """Writes architecture, compile settings and weights to one safe file.

        See fastnn.saving for the format; load it with fastnn.models.load_model.
        """
        from .saving import save_model
        save_model(self, filepath, include_optimizer=include_optimizer)

    def save_weights(self, filepath: str) -> None:
        """Writes the weights alone (same safe format)."""
        from .saving import save_weights
        save_weights(self, filepath)

    def load_weights(self, filepath: str) -> None:
        """Loads weights written by ``save_weights`` or ``save`` into this model.

        Raises:
            fastnn.io.FileFormatError: for a damaged or mismatching file.
        """
        from .saving import load_weights
        load_weights(self, filepath)

    def get_config(self) -> dict:
        """The architecture as JSON-ready data (layers and their configs)."""
        from .saving import model_config
        return model_config(self)

    # -------------------------------------------------------------- summary
    def summary(self, print_fn: Any = None) -> None:
        """Prints each layer's type, output shape and parameter count."""
        self._require_built("summary")
        print_fn = print_fn or print
        rows = [("Layer (type)", "Output Shape", "Param #")]
        for layer in self._compute_layers():
            rows.append((f"{layer.name} ({type(layer).__name__})",
                         str((None,) + tuple(layer.output_shape_)), str(layer.count_params())))
        widths = [max(len(r[i]) for r in rows) + 2 for i in range(3)]
        rule = "-" * sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn(rule)
        for i, row in enumerate(rows):
            print_fn("".join(cell.ljust(w) for cell, w in zip(row, widths)))
            print_fn("=" * sum(widths) if i == 0 else rule)
        total = self.count_params()
        trainable = int(self.params.shape[0])
        print_fn(f"Total params: {total}")
        print_fn(f"Trainable params: {trainable}")
        print_fn(f"Non-trainable params: {total - trainable}")


class Sequential(Model):
    """A linear stack of layers (as keras.Sequential).

    Args:
        layers: layers in order; the first may be ``fastnn.Input(shape)`` or carry
            ``input_shape=``. Without either, the model builds on first data.
        device: 'cpu' or 'cuda' (default $FASTNN_DEVICE, else 'cpu').
        name: the model's name.
    """

    def __init__(self, layers: Optional[Sequence[Any]] = None, device: Optional[str] = None,
                 name: Optional[str] = None):
        super().__init__(device=device, name=name or "sequential")
        self._stack: List[Layer] = []
        self._input_layer: Optional[Layer] = None
        for layer in layers or []:
            self.add(layer)

    def add(self, layer: Any) -> None:
        """Appends a layer (or, first, an ``Input``).

        Raises:
            TypeError: for anything that is not a layer.
            RuntimeError: after the model has been built.
        """
        if self._built_flat:
            raise RuntimeError("cannot add layers to a built Sequential model")
        if isinstance(layer, SymbolicTensor) and isinstance(layer.node.layer, InputLayer):
            if self._stack or self._input_layer is not None:
                raise ValueError("Input must be the first element of a Sequential model")
            self._input_layer = layer.node.layer
            self._input_shape = self._input_layer.input_spec_shape
            return
        if isinstance(layer, InputLayer) and not self._stack:
            self._input_layer = layer
            self._input_shape = layer.input_spec_shape
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential takes fastnn layers, got {type(layer).__name__}")
        if not self._stack and self._input_layer is None and layer.input_spec_shape:
            self._input_shape = layer.input_spec_shape
        self._stack.append(layer)
        self._nodes = [_Node(l, [i], i + 1) for i, l in enumerate(self._stack)]
        self._n_slots = len(self._stack) + 1
        self._output_slot = len(self._stack)
        if self._input_shape is not None:
            self._build_graph(None)

    def _build_graph(self, sample_shape: Optional[Tuple[int, ...]]) -> None:
        if not self._stack:
            raise ValueError(f"Sequential model {self.name!r} has no layers")
        if self._input_shape is None:
            if sample_shape is None:
                raise RuntimeError(f"model {self.name!r} has no input shape yet")
            self._input_shape = tuple(sample_shape)
        shape = self._input_shape
        for layer in self._stack:
            if not layer.built:
                layer.build(shape)
            elif layer.input_shape_ != shape:
                raise ValueError(f"layer {layer.name!r} was built for input shape "
                                 f"{layer.input_shape_}, but receives {shape}")
            shape = layer.output_shape_
        self._resolve_loss()

    def build(self, input_shape: Optional[Sequence[Optional[int]]] = None) -> None:
        """Builds the model for inputs of ``input_shape`` (batch axis first, as Keras)."""
        shape = None if input_shape is None else tuple(input_shape)[1:]
        self._ensure_built(shape)

    @property
    def layers(self) -> List[Layer]:
        return list(self._stack)

    def _compute_layers(self) -> List[Layer]:
        return list(self._stack)


def _check_batch_size(batch_size: Any) -> int:
    if batch_size is None:
        return 32
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _verbose_level(verbose: Union[str, int]) -> int:
    if verbose == "auto":
        return 1 if sys.stdout.isatty() else 2
    if verbose in (0, 1, 2):
        return int(verbose)
    raise ValueError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
