"""LambdaCallback: a callback made of plain functions (keras.callbacks.LambdaCallback)."""
from __future__ import annotations

from typing import Any, Callable, Optional

from .base import _BATCH_HOOKS, Callback

_HOOKS = tuple(name for name in vars(Callback) if name.startswith("on_"))


class LambdaCallback(Callback):
    """Calls the given functions at the matching hooks.

    Args:
        on_epoch_begin, on_epoch_end: ``f(epoch, logs)``.
        on_train_begin, on_train_end: ``f(logs)``.
        on_train_batch_begin, on_train_batch_end: ``f(batch, logs)``.
        **kwargs: any other hook by its Keras name (``on_batch_end``, ``on_test_begin``, ...).

    Raises:
        TypeError: for a keyword that is not a hook name, or a value that is not callable.
    """

    def __init__(self, on_epoch_begin: Optional[Callable] = None,
                 on_epoch_end: Optional[Callable] = None,
                 on_train_begin: Optional[Callable] = None,
                 on_train_end: Optional[Callable] = None,
                 on_train_batch_begin: Optional[Callable] = None,
                 on_train_batch_end: Optional[Callable] = None, **kwargs: Any):
        super().__init__()
        hooks = dict(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end,
                     on_train_begin=on_train_begin, on_train_end=on_train_end,
                     on_train_batch_begin=on_train_batch_begin,
                     on_train_batch_end=on_train_batch_end)
        for name, func in kwargs.items():
            if name not in _HOOKS:
                raise TypeError(f"LambdaCallback got an unknown hook {name!r}; hooks are "
                                f"{sorted(_HOOKS)}")
            hooks[name] = func
        self._given = set()
        for name, func in hooks.items():
            if func is None:
                continue
            if not callable(func):
                raise TypeError(f"LambdaCallback: {name} must be callable, got {func!r}")
            setattr(self, name, func)
            self._given.add(name)

    def wants_batch_hooks(self) -> bool:
        # The functions live on the instance, which the base class's check cannot see.
        return bool(self._given & set(_BATCH_HOOKS))
