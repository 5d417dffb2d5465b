"""The conversion's ONNX graph steps: export, check, and offline optimization."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.native import NativeModel


@task(cache_policy=NO_CACHE)
def export_onnx(native: NativeModel, opset: int) -> bytes:
    """Export the native model to ONNX."""
    t0 = time.perf_counter()
    data = native.export(opset)
    get_run_logger().info(
        "exported %s model to ONNX opset %d: %.1f MB in %.1f s",
        native.framework,
        opset,
        len(data) / 1e6,
        time.perf_counter() - t0,
    )
    return data


@task(cache_policy=NO_CACHE)
def check_onnx(data: bytes, opset: int) -> None:
    """``onnx.checker`` with full checks, and an opset no newer than the one asked for.

    (skl2onnx takes the opset as a ceiling and emits the lowest one the model needs.)
    """
    import onnx

    model = onnx.load_from_string(data)
    onnx.checker.check_model(model, full_check=True)
    got = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if got is None or got > opset:
        raise ValueError(f"the exported model has opset {got}, above the requested {opset}")


@task(cache_policy=NO_CACHE)
def optimize_onnx(data: bytes) -> bytes:
    """ONNX Runtime's offline graph optimization at the basic level.

    Basic rewrites (constant folding, redundant nodes) stay standard ONNX, so the result
    runs on every execution provider; the extended fusions are applied at load time.
    """
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])
        optimized = out.read_bytes()
    onnx.checker.check_model(onnx.load_from_string(optimized))
    get_run_logger().info("optimized graph: %d -> %d bytes", len(data), len(optimized))
    return optimized
