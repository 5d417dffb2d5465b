"""Inference backends: one loaded model version that runs a batch of tensors.

ONNX Runtime on the CPU now; the CUDA and TensorRT execution providers are chosen by
settings where present. A backend is synchronous: the batcher calls it from a worker
thread, or inline on the event loop when it is tiny; one that can be stopped from another
thread (``stoppable = True``) takes a ``StopSwitch`` as ``run``'s second argument.
"""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Protocol

import numpy as np

from services.errors import ModelLoadError
from services.registry.schema import NUMPY_TO_OIP, TensorSpec
from services.runner.niceness import call_niced
from services.runner.watchdog import StopSwitch

if TYPE_CHECKING:
    from services.registry.versions import ModelVersion
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
    """An ONNX Runtime session; stoppable: a ``StopSwitch`` sets ``RunOptions.terminate``,
    which ends the call at its next graph node.

    Args:
        model_bytes: the ONNX model.
        providers: execution providers in order of preference; those not available here
            are dropped with a log line, and the CPU provider is always the last resort.
        threads: intra-op threads (1 is best for small models batched by servekit).
        spinning: let the intra- and inter-op threads spin after a run (ONNX Runtime's
            default): off, they sleep at once and leave the cores to the event loop.
        mem_arena: keep ONNX Runtime's CPU memory arena. Off on shared runners, so a
            session holds between runs only what it held after loading (what the model
            pool measures), not a grown arena of past activations.
        nice: the session's thread pool's nice value (see ``services.runner.niceness``).
    """

    stoppable = True

    def __init__(
        self,
        model_bytes: bytes,
        *,
        providers: list[str],
        threads: int = 1,
        mem_arena: bool = True,
        spinning: bool = True,
        nice: int = 0,
    ) -> None:
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
        if chosen[0] != "CPUExecutionProvider":
            logger.info("ONNX Runtime session on %s (fallback: %s)", chosen[0], chosen[1:])
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.enable_cpu_mem_arena = mem_arena
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spinning:
            opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
            opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            # Created from a niced thread, the session's thread pool is niced too.
            self.session = call_niced(
                lambda: ort.InferenceSession(
                    model_bytes, sess_options=opts, providers=_with_options(chosen)
                ),
                nice,
            )
        except Exception as exc:  # ORT raises its own untyped errors for bad graphs
            raise ModelLoadError(f"ONNX Runtime cannot load the model: {exc}") from exc
        self._ort = ort
        self.provider = self.session.get_providers()[0]
        self.inputs = [_spec(i) for i in self.session.get_inputs()]
        self.outputs = [_spec(o) for o in self.session.get_outputs()]
        self._output_names = [o.name for o in self.outputs]
        # The artifact's size until the model pool replaces it with the measured bytes.
        self.nbytes = len(model_bytes)

    def run(
        self, feeds: dict[str, np.ndarray], switch: StopSwitch | None = None
    ) -> dict[str, np.ndarray]:
        if switch is None:
            results = self.session.run(self._output_names, feeds)
        else:
            options = self._ort.RunOptions()
            options.log_severity_level = 4  # a stop is logged by the batcher, not as an error
            switch.bind(functools.partial(setattr, options, "terminate", True))
            results = self.session.run(self._output_names, feeds, options)
        return dict(zip(self._output_names, results, strict=True))


def _with_options(providers: list[str]) -> list[str | tuple[str, dict[str, str]]]:
    """CUDA and TensorRT providers with their options (fp16, engine cache)."""
    from services.runner.trt import ort_provider_options

    out: list[str | tuple[str, dict[str, str]]] = []
    for p in providers:
        options = ort_provider_options(p)
        out.append((p, options) if options else p)
    return out


def _spec(node: object) -> TensorSpec:
    shape = [d if isinstance(d, int) else -1 for d in node.shape]  # type: ignore[attr-defined]
    return TensorSpec(name=node.name, datatype=_ORT_TO_OIP.get(node.type, "FP32"), shape=shape)  # type: ignore[attr-defined]


def create_backend(
    mv: ModelVersion, artifact: bytes, settings: ServingSettings, *, mem_arena: bool = True
) -> Backend:
    """The backend for a registered version's artifact."""
    if mv.format == "onnx":
        return OnnxRuntimeBackend(
            artifact,
            providers=settings.providers,
            threads=settings.ort_threads,
            mem_arena=mem_arena,
            spinning=settings.ort_spinning,
            nice=settings.model_nice,
        )
    if mv.format == "tensorrt":
        # A TensorRT plan runs only where TensorRT and its GPU are: no CPU fallback exists
        # for it, so the error says why (serve the version's ONNX sibling instead).
        from services.runner.trt import TensorRTBackend

        logger.info("loading %s version %s as a TensorRT engine", mv.name, mv.version)
        return TensorRTBackend(artifact)
    raise ModelLoadError(
        f"{mv.name} version {mv.version}: the {mv.format} backend is not available in this build",
        model=mv.name,
    )


# An ONNX Identity model (61 bytes): creating its session initializes the runtime.
_WARM_UP_ONNX = (
    b'\x08\t:3\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x01wZ\r\n\x01x\x12\x08\n\x06\x08\x01'
    b"\x12\x02\n\x00b\r\n\x01y\x12\x08\n\x06\x08\x01\x12\x02\n\x00B\x04\n\x00\x10\x11"
)


def warm_up(settings: ServingSettings) -> None:
    """Initialize ONNX Runtime (its environment, thread pools, providers: ~9 MB on the CPU)
    with a trivial session, so that this one-off cost is not measured as a model's."""
    OnnxRuntimeBackend(
        _WARM_UP_ONNX,
        providers=settings.providers,
        threads=settings.ort_threads,
        spinning=settings.ort_spinning,
        nice=settings.model_nice,
    )


__all__ = ["NUMPY_TO_OIP", "Backend", "OnnxRuntimeBackend", "create_backend", "warm_up"]
