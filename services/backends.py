"""Inference backends: one loaded model version that runs a batch of tensors.

ONNX Runtime on the CPU now; the CUDA and TensorRT execution providers are chosen by
settings where present. A backend is synchronous: the batcher calls it from a thread.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from services.errors import ModelLoadError
from services.schema import NUMPY_TO_OIP, TensorSpec

if TYPE_CHECKING:
    from services.registry import ModelVersion
    from services.settings import ServingSettings

logger = logging.getLogger(__name__)

_ORT_TO_OIP = {
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(float16)": "FP16",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int16)": "INT16",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


class Backend(Protocol):
    """A loaded model that runs batches."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    provider: str
    nbytes: int

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; every array's first axis is the batch."""
        ...


class OnnxRuntimeBackend:
    """An ONNX Runtime session.

    Args:
        model_bytes: the ONNX model.
        providers: execution providers in order of preference; those not available here
            are dropped with a log line, and the CPU provider is always the last resort.
        threads: intra-op threads (1 is best for small models batched by servekit).
    """

    def __init__(self, model_bytes: bytes, *, providers: list[str], threads: int = 1) -> None:
        import onnxruntime as ort

        available = set(ort.get_available_providers())
        chosen = [p for p in providers if p in available]
        missing = [p for p in providers if p not in available]
        if missing:
            logger.warning(
                "execution providers %s are not available here (have %s); using %s",
                missing,
                sorted(available),
                chosen or ["CPUExecutionProvider"],
            )
        if "CPUExecutionProvider" not in chosen:
            chosen.append("CPUExecutionProvider")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(model_bytes, sess_options=opts, providers=chosen)
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc
        self.provider = self.session.get_providers()[0]
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        self.nbytes = len(model_bytes)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = self.session.run(self._output_names, feeds)
        return dict(zip(self._output_names, results, strict=True))


def _spec(node: object) -> TensorSpec:
    shape = [d if isinstance(d, int) else -1 for d in node.shape]  # type: ignore[attr-defined]
    return TensorSpec(name=node.name, datatype=_ORT_TO_OIP.get(node.type, "FP32"), shape=shape)  # type: ignore[attr-defined]


def create_backend(mv: ModelVersion, artifact: bytes, settings: ServingSettings) -> Backend:
    """The backend for a registered version's artifact."""
    if mv.format == "onnx":
        return OnnxRuntimeBackend(
            artifact, providers=settings.providers, threads=settings.ort_threads
        )
    raise ModelLoadError(
        f"{mv.name} version {mv.version}: the {mv.format} backend is not available in this build",
        model=mv.name,
    )


__all__ = ["NUMPY_TO_OIP", "Backend", "OnnxRuntimeBackend", "create_backend"]
