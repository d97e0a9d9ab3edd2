"""Callbacks with Keras's names and hooks."""
from .base import Callback, CallbackList
from .history import History
from .progbar import ProgbarLogger

__all__ = ["Callback", "CallbackList", "History", "ProgbarLogger"]
