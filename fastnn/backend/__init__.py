"""Backends: where the ops run. ``get_backend('cpu')`` or ``get_backend('cuda')``."""
from __future__ import annotations

import os

from .base import Backend

_backends: dict = {}

DEVICES = ("cpu", "cuda")


def default_device() -> str:
    """The device named by $FASTNN_DEVICE, else 'cpu'."""
    device = os.environ.get("FASTNN_DEVICE", "cpu").strip().lower() or "cpu"
    if device not in DEVICES:
        raise ValueError(f"FASTNN_DEVICE={device!r} is not one of {DEVICES}")
    return device


def get_backend(device: str | None = None) -> Backend:
    """The backend for ``device`` ('cpu' or 'cuda'; None means the default).

    Raises:
        ValueError: unknown device name.
        ImportError: 'cuda' without numba-cuda installed.
        RuntimeError: 'cuda' with no GPU and no simulator.
    """
    device = default_device() if device is None else str(device).strip().lower()
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; expected one of {DEVICES}")
    if device not in _backends:
        if device == "cpu":
            from .cpu import CPUBackend
            _backends[device] = CPUBackend()
        else:
            from .cuda import CUDABackend
            _backends[device] = CUDABackend()
    return _backends[device]
