"""The conversion's TensorRT step: an fp16 engine where TensorRT and a CUDA GPU exist.

Where the engine cannot be built, the step returns the reason, which the conversion
report records, instead of failing the conversion.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.native import NativeModel, TorchModel
from services.errors import ModelLoadError
from services.runner import trt
from services.settings import ConvertSettings


def skip_reason(native: NativeModel, settings: ConvertSettings) -> str | None:
    """Why no engine is built for ``native`` here, or None when one can be."""
    if not settings.tensorrt:
        return "disabled (SERVEKIT_CONVERT_TENSORRT=false)"
    if not isinstance(native, TorchModel):
        return f"{native.framework} graphs use ai.onnx.ml operators, which TensorRT lacks"
    return trt.unavailable_reason()


@task(cache_policy=NO_CACHE)
def build_tensorrt(data: bytes, native: NativeModel, settings: ConvertSettings) -> bytes | str:
    """A TensorRT fp16 engine, or the reason it was not built (logged)."""
    log = get_run_logger()
    reason = skip_reason(native, settings)
    if reason is not None:
        log.warning("TensorRT engine skipped: %s", reason)
        return reason
    assert isinstance(native, TorchModel)  # skip_reason refuses the others
    t0 = time.perf_counter()
    try:
        plan = trt.build_engine(
            data,
            native.profile(settings.trt_max_batch, settings.trt_max_sequence),
            workspace_mb=settings.trt_workspace_mb,
        )
    except ModelLoadError as exc:
        log.warning("TensorRT engine build failed: %s", exc.message)
        return f"build failed: {exc.message}"
    log.info(
        "built a TensorRT fp16 engine (%d bytes) in %.1f s", len(plan), time.perf_counter() - t0
    )
    return plan
