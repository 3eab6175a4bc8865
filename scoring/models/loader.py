"""Model kind -> executor. Each executor is built once per (version, array module)."""

from __future__ import annotations

from pathlib import Path

from scoring.models.errors import ModelError

__all__ = ["load_executor"]


def load_executor(meta, directory: Path, xp):
    """An object with ``predict(X, xp) -> 1-D scores`` for the version in ``directory``."""
    if meta.kind in ("logreg", "mlp"):
        from scoring.models.dense import DenseModel
        return DenseModel.load(directory).executor(xp)
    if meta.kind == "gbdt":
        from scoring.models.forest import load_forest
        return load_forest(directory).executor(xp)
    if meta.kind == "onnx":
        from scoring.models.onnx import OnnxExecutor
        return OnnxExecutor(directory, xp)
    raise ModelError(f"model {meta.spec} has unknown kind {meta.kind!r}: this Headwater cannot run it; upgrade")
