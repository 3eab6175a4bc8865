"""Model executors written once against an array module (NumPy or CuPy), and ONNX Runtime."""

from scoring.models.dense import DenseModel
from scoring.models.errors import DeviceError, ModelError, RegistryError, SkewError, TrainError
from scoring.models.loader import load_executor

__all__ = ["DenseModel", "load_executor", "ModelError", "RegistryError", "SkewError", "DeviceError", "TrainError"]
