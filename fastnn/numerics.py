"""Check mode: find the first layer whose numbers stopped being finite.

``enable_check_numerics()`` makes every model check, after each layer's forward,
that layer's output; after each layer's backward, its weight gradients and the
gradient it passes down; the loss gradient; and, after each optimiser step, the
updated weights. The first non-finite value raises ``FloatingPointError`` naming
the layer and what went wrong. It costs a host copy and a scan of every checked
array, so it is a debugging tool; ``disable_check_numerics()`` puts the model's
original methods back, so with the mode off the training loop runs unchanged.

Check mode is process-wide (it replaces methods on ``fastnn.model.Model``) and not
meant to be switched while another thread trains.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["check_numerics", "check_numerics_enabled", "disable_check_numerics",
           "enable_check_numerics"]

_PATCHED = ("_forward", "_backward", "_loss_and_metrics", "_train_step")
_originals: Dict[str, Callable] = {}
_lock = threading.Lock()


def check_numerics_enabled() -> bool:
    """Whether check mode is on."""
    return bool(_originals)


def _describe(host: np.ndarray) -> str:
    n_nan = int(np.isnan(host).sum())
    n_inf = int(np.isinf(host).sum())
    return f"{n_nan} NaN and {n_inf} infinite among {host.size} values"


def _check(model: Any, arr: Any, what: str) -> None:
    if arr is None:
        return
    if isinstance(arr, (list, tuple)):
        for i, a in enumerate(arr):
            _check(model, a, f"{what} #{i}")
        return
    host = np.asarray(model.backend.to_numpy(arr))
    if host.dtype.kind == "f" and not np.isfinite(host).all():
        raise FloatingPointError(f"check_numerics: {what} is not finite "
                                 f"({_describe(host)})")


def _layer_label(layer: Any) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _instrument(model: Any, method: str) -> List[Any]:
    """Shadows ``method`` on each of the model's layers with a checking version."""
    done = []
    for layer in model._compute_layers():
        if method in vars(layer):
            continue  # already instrumented (or overridden by the user): leave it
        inner = getattr(layer, method)
        if method == "forward":
            def wrapper(x: Any, training: bool, _layer: Any = layer, _inner: Any = inner) -> Any:
                y = _inner(x, training)
                _check(model, y, f"the forward output of {_layer_label(_layer)}")
                return y
        else:
            def wrapper(dy: Any, need_dx: bool, _layer: Any = layer,
                        _inner: Any = inner) -> Any:
                dx = _inner(dy, need_dx)
                for spec in _layer.weight_specs:
                    _check(model, _layer.grad(spec.name),
                           f"the gradient of weight {spec.name!r} of {_layer_label(_layer)}")
                _check(model, dx, f"the input gradient computed by {_layer_label(_layer)}")
                return dx
        setattr(layer, method, wrapper)
        done.append(layer)
    return done


def _uninstrument(layers: List[Any], method: str) -> None:
    for layer in layers:
        layer.__dict__.pop(method, None)


def _wrap_pass(method: str, original: Callable, layer_method: str) -> Callable:
    @functools.wraps(original)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        layers = _instrument(self, layer_method)
        try:
            return original(self, *args, **kwargs)
        finally:
            _uninstrument(layers, layer_method)
    return checked


def _wrap_loss(original: Callable) -> Callable:
    @functools.wraps(original)
    def checked(self: Any, out: Any, target: Any, loss_acc: Any, *args: Any, **kwargs: Any
                ) -> Any:
        grad = original(self, out, target, loss_acc, *args, **kwargs)
        _check(self, loss_acc, "the loss")
        _check(self, grad, "the loss gradient")
        return grad
    return checked


def _wrap_step(original: Callable) -> Callable:
    @functools.wraps(original)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        for layer in self._compute_layers():
            for spec in layer.weight_specs:
                _check(self, layer.param(spec.name),
                       f"weight {spec.name!r} of {_layer_label(layer)} after the optimizer "
                       "update")
        return result
    return checked


def enable_check_numerics() -> None:
    """Turns check mode on for every model in this process (idempotent).

    After it, a non-finite layer output, gradient, loss or updated weight raises
    ``FloatingPointError`` naming the first layer (and which of these) that went
    non-finite.
    """
    from .model import Model
    with _lock:
        if _originals:
            return
        originals = {name: vars(Model)[name] for name in _PATCHED}
        wrapped = {
            "_forward": _wrap_pass("_forward", originals["_forward"], "forward"),
            "_backward": _wrap_pass("_backward", originals["_backward"], "backward"),
            "_loss_and_metrics": _wrap_loss(originals["_loss_and_metrics"]),
            "_train_step": _wrap_step(originals["_train_step"]),
        }
        for name, func in wrapped.items():
            setattr(Model, name, func)
        _originals.update(originals)


def disable_check_numerics() -> None:
    """Turns check mode off, restoring the unchecked training loop (idempotent)."""
    from .model import Model
    with _lock:
        for name, func in _originals.items():
            setattr(Model, name, func)
        _originals.clear()


class check_numerics:
    """Context manager: check mode inside the ``with`` block only.

    Example:
        with fastnn.numerics.check_numerics():
            model.fit(x, y, epochs=1)
    """

    def __enter__(self) -> "check_numerics":
        self._was_on = check_numerics_enabled()
        enable_check_numerics()
        return self

    def __exit__(self, *exc: Optional[BaseException]) -> None:
        if not self._was_on:
            disable_check_numerics()
