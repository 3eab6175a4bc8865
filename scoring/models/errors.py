"""Errors of models, the registry and training. One line each, naming the problem and the fix."""

from __future__ import annotations

from headwater.errors import HeadwaterError

__all__ = ["ModelError", "RegistryError", "SkewError", "DeviceError", "TrainError"]


class ModelError(HeadwaterError):
    """A model file cannot be imported or executed (unsupported dump, operator, shape)."""


class RegistryError(HeadwaterError):
    """Unknown model, version or alias; an attempt to modify an immutable version."""


class SkewError(RegistryError):
    """A model was trained on feature definitions that differ from the running plan."""


class DeviceError(HeadwaterError):
    """The requested device (GPU) is not available, or a kernel would silently fall back to CPU."""


class TrainError(HeadwaterError):
    """A training set cannot be used (missing label or feature columns, one class only, too few rows)."""
