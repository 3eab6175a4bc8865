"""The array module every executor is written against: CuPy on a CUDA GPU, else NumPy.

Chosen once per process (the first call wins, later calls must agree), so the consumer, the
executors and the feature matrix never mix host and device arrays by accident.
"""

from __future__ import annotations

import types

from scoring.models.errors import DeviceError

__all__ = ["array_module", "gpu_available", "to_host", "is_gpu"]

_CHOSEN: types.ModuleType | None = None


def gpu_available() -> bool:
    """True when cupy imports and sees at least one CUDA device."""
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


def array_module(device: str = "auto") -> types.ModuleType:
    """``"auto"``: cupy when a GPU is present, else numpy; ``"cpu"``: numpy; ``"gpu"``: cupy or a
    one-line DeviceError. The choice is fixed for the process after the first call."""
    global _CHOSEN
    if device not in ("auto", "cpu", "gpu"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or gpu")
    if device == "gpu" and not gpu_available():
        raise DeviceError("device 'gpu' requested but no CUDA GPU with cupy is available: "
                          "install the gpu extra (cupy-cuda12x) on a GPU host, or use --device cpu")
    if _CHOSEN is not None:
        if device == "auto" or (device == "gpu") == is_gpu(_CHOSEN):
            return _CHOSEN
        raise DeviceError(f"this process already runs on {'gpu' if is_gpu(_CHOSEN) else 'cpu'}; "
                          f"device {device!r} cannot be chosen as well: use one device per process")
    if device == "cpu" or not gpu_available():
        import numpy as mod
    else:
        import cupy as mod
    _CHOSEN = mod
    return mod


def is_gpu(xp: types.ModuleType) -> bool:
    return xp.__name__ == "cupy"


def to_host(a):
    """A NumPy array from a NumPy or CuPy array (a copy only when on the device)."""
    get = getattr(a, "get", None)
    return get() if callable(get) and type(a).__module__.startswith("cupy") else a
