"""Logistic regression and MLPs as one executor: impute -> standardize -> dense layers -> sigmoid.

A logistic regression is a network with no hidden layer, so both kinds share one file format
(``dense.npz``) and one forward pass written against the array module ``xp`` (NumPy or CuPy).
NaN (no feature data) is replaced by the imputation value stored with the model, exactly as the
training pipeline's imputer did, so online and offline see the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoring.models.errors import ModelError

__all__ = ["DenseModel", "FILE"]

FILE = "dense.npz"


@dataclass(frozen=True)
class DenseModel:
    """``layers``: (W (in, out), b (out,)) pairs; relu between layers, sigmoid on the single output."""

    impute: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __post_init__(self) -> None:
        n = self.impute.shape[0]
        if self.mean.shape != (n,) or self.scale.shape != (n,) or not self.layers:
            raise ModelError(f"dense model: impute/mean/scale must all have shape ({n},) and at least one layer")
        width = n
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or w.shape[0] != width or b.shape != (w.shape[1],):
                raise ModelError(f"dense model: layer {i} has W {w.shape}, b {b.shape}; expected ({width}, k), (k,)")
            width = w.shape[1]
        if width != 1:
            raise ModelError(f"dense model: the last layer has {width} outputs; a binary scorer needs 1")

    @property
    def n_features(self) -> int:
        return int(self.impute.shape[0])

    @classmethod
    def from_sklearn(cls, estimator, *, impute=None, mean=None, scale=None) -> "DenseModel":
        """From a fitted binary ``LogisticRegression`` or ``MLPClassifier`` (relu, logistic output)."""
        if hasattr(estimator, "coefs_"):
            if getattr(estimator, "activation", "relu") != "relu" or estimator.out_activation_ != "logistic":
                raise ModelError("MLPClassifier must use activation='relu' with a binary target (logistic output)")
            layers = tuple((np.asarray(w, np.float64), np.asarray(b, np.float64))
                           for w, b in zip(estimator.coefs_, estimator.intercepts_))
        elif hasattr(estimator, "coef_"):
            if estimator.coef_.shape[0] != 1:
                raise ModelError("LogisticRegression must be binary (one coefficient row)")
            layers = ((np.asarray(estimator.coef_, np.float64).T, np.asarray(estimator.intercept_, np.float64)),)
        else:
            raise ModelError(f"cannot convert {type(estimator).__name__}: expected LogisticRegression or MLPClassifier")
        n = layers[0][0].shape[0]
        return cls(
            impute=np.zeros(n) if impute is None else np.asarray(impute, np.float64),
            mean=np.zeros(n) if mean is None else np.asarray(mean, np.float64),
            scale=np.ones(n) if scale is None else np.asarray(scale, np.float64),
            layers=layers,
        )

    def save(self, directory: Path) -> Path:
        arrays = {"impute": self.impute, "mean": self.mean, "scale": self.scale}
        for i, (w, b) in enumerate(self.layers):
            arrays[f"W{i}"], arrays[f"b{i}"] = w, b
        path = Path(directory) / FILE
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, directory: Path) -> "DenseModel":
        with np.load(Path(directory) / FILE) as z:
            n = sum(1 for k in z.files if k.startswith("W"))
            return cls(z["impute"], z["mean"], z["scale"], tuple((z[f"W{i}"], z[f"b{i}"]) for i in range(n)))

    def executor(self, xp, dtype="float32") -> "DenseExecutor":
        return DenseExecutor(self, xp, dtype)


class DenseExecutor:
    """Parameters moved to ``xp`` once; ``predict`` is a few GEMMs. Standardization is folded into
    the first layer (W' = W / scale, b' = b - (mean / scale) @ W), so the hot path is one GEMM per layer."""

    def __init__(self, model: DenseModel, xp, dtype: str = "float32") -> None:
        self.xp = xp
        w0, b0 = model.layers[0]
        w0f = w0 / model.scale[:, None]
        b0f = b0 - (model.mean / model.scale) @ w0
        layers = ((w0f, b0f),) + model.layers[1:]
        self.impute = xp.asarray(model.impute.astype(dtype))
        self.layers = tuple((xp.asarray(w.astype(dtype)), xp.asarray(b.astype(dtype))) for w, b in layers)
        self.dtype = dtype

    def predict(self, X, xp=None):
        xp = xp or self.xp
        h = xp.where(xp.isnan(X), self.impute[None, :], X).astype(self.dtype, copy=False)
        last = len(self.layers) - 1
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < last:
                h = xp.maximum(h, 0)
        z = h[:, 0].astype(xp.float64)
        return 1.0 / (1.0 + xp.exp(-z))
