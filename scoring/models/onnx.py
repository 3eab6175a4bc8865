"""ONNX models through ONNX Runtime, and export of our trained models to ONNX.

CPU: the CPU execution provider on NumPy arrays. GPU: the CUDA provider only, with
``session.disable_cpu_ep_fallback=1`` so a graph holding an operator without a CUDA kernel fails
at load with a one-line DeviceError instead of silently running that node on the host; inputs and
outputs are bound to CuPy device buffers (IO binding), so no batch goes through host memory.
Note: ONNX-ML's TreeEnsemble operators have no CUDA kernel in ONNX Runtime, so on a GPU an
exported GBDT is refused; register the ``gbdt`` kind (CuPy kernel) for GPUs.

Export (at training time, from the fitted objects): scikit-learn pipelines through skl2onnx,
XGBoost / LightGBM boosters through onnxmltools; the probability output is column 1 of the
classifier's probability tensor (ZipMap disabled).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scoring.models.errors import DeviceError, ModelError

__all__ = ["OnnxExecutor", "export_onnx", "FILE", "OPSET"]

FILE = "model.onnx"
OPSET = 15
_ONNX_ML_OPSET = 3


def export_onnx(model, n_features: int) -> bytes:
    """Serialized ONNX for a fitted sklearn estimator/pipeline, xgboost.Booster or lightgbm.Booster."""
    kind = type(model).__module__.split(".")[0]
    try:
        if kind in ("xgboost", "lightgbm"):
            from onnxmltools.convert.common.data_types import FloatTensorType
        else:
            from skl2onnx.common.data_types import FloatTensorType
        types = [("X", FloatTensorType([None, n_features]))]
        if kind == "xgboost":
            import onnxmltools
            proto = onnxmltools.convert_xgboost(model, initial_types=types, target_opset=OPSET)
        elif kind == "lightgbm":
            import onnxmltools
            proto = onnxmltools.convert_lightgbm(model, initial_types=types, target_opset=OPSET, zipmap=False)
        elif kind == "sklearn":
            from skl2onnx import convert_sklearn
            proto = convert_sklearn(model, initial_types=types, options={"zipmap": False},
                                    target_opset={"": OPSET, "ai.onnx.ml": _ONNX_ML_OPSET})
        else:
            raise ModelError(f"cannot export {type(model).__name__} to ONNX: use a scikit-learn, XGBoost or LightGBM model")
    except ModelError:
        raise
    except Exception as exc:  # converter errors are long; keep the first line
        raise ModelError(f"ONNX export of {type(model).__name__} failed: {str(exc).splitlines()[0]}") from exc
    return proto.SerializeToString()


def _probability_output(sess) -> tuple[str, int]:
    """(name, column) of the positive-class score: the 2-column probability tensor, else the only
    1-column float output (a raw score model)."""
    outs = sess.get_outputs()
    for o in outs:
        if o.type == "tensor(float)" and len(o.shape) == 2 and o.shape[1] in (2, "2"):
            return o.name, 1
    floats = [o for o in outs if o.type in ("tensor(float)", "tensor(double)")]
    if len(floats) == 1:
        return floats[0].name, 0
    raise ModelError(f"ONNX model outputs {[o.name for o in outs]} hold no (n, 2) probability tensor: "
                     f"export the classifier with ZipMap disabled")


class OnnxExecutor:
    """One InferenceSession per (version, device); ``predict(X, xp)`` -> positive-class scores."""

    def __init__(self, directory_or_bytes, xp, threads: int | None = None) -> None:
        import onnxruntime as ort
        data = directory_or_bytes if isinstance(directory_or_bytes, bytes) else (Path(directory_or_bytes) / FILE).read_bytes()
        self.xp = xp
        self.gpu = xp.__name__ == "cupy"
        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = threads
        if self.gpu:
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise DeviceError("onnxruntime has no CUDA provider: install onnxruntime-gpu (the gpu extra) or run on cpu")
            so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
            providers = [("CUDAExecutionProvider", {"device_id": int(xp.cuda.Device().id)})]
        else:
            providers = ["CPUExecutionProvider"]
        try:
            self.sess = ort.InferenceSession(data, so, providers=providers)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if self.gpu:
                raise DeviceError(f"ONNX model cannot run entirely on the CUDA provider ({first}): an operator "
                                  f"would fall back to CPU; use the gbdt kind for tree models on GPU") from exc
            raise ModelError(f"ONNX model cannot be loaded: {first}") from exc
        if self.gpu and self.sess.get_providers()[0] != "CUDAExecutionProvider":
            raise DeviceError(f"ONNX session runs on {self.sess.get_providers()}, not CUDA: install onnxruntime-gpu")
        inputs = self.sess.get_inputs()
        if len(inputs) != 1:
            raise ModelError(f"ONNX model has {len(inputs)} inputs; Headwater feeds one float matrix")
        self.input = inputs[0].name
        self.output, self.column = _probability_output(self.sess)
        self.other_outputs = [o.name for o in self.sess.get_outputs() if o.name != self.output]

    def predict(self, X, xp=None):
        xp = xp or self.xp
        if not self.gpu:
            out = self.sess.run([self.output], {self.input: np.ascontiguousarray(X, dtype=np.float32)})[0]
            out = np.asarray(out)
            return (out[:, self.column] if out.ndim == 2 else out).astype(np.float64)
        return self._predict_gpu(xp.ascontiguousarray(X, dtype=xp.float32), xp)

    def _predict_gpu(self, X, xp):
        """IO binding on CuPy buffers: input and probability output stay on the device."""
        dev = int(X.device.id)
        io = self.sess.io_binding()
        io.bind_input(self.input, "cuda", dev, np.float32, list(X.shape), X.data.ptr)
        shape = self.sess.get_outputs()[[o.name for o in self.sess.get_outputs()].index(self.output)].shape
        out = xp.empty((X.shape[0], 2) if len(shape) == 2 and self.column == 1 else (X.shape[0], 1), xp.float32)
        io.bind_output(self.output, "cuda", dev, np.float32, list(out.shape), out.data.ptr)
        for name in self.other_outputs:
            io.bind_output(name, "cuda", dev)
        self.sess.run_with_iobinding(io)
        return out[:, self.column].astype(xp.float64)
