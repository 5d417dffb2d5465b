"""Measuring each converted format: parity against the native model, and latency.

Every format runs through the backend that serves it (ONNX Runtime on CPU for the ONNX
variants, ``TensorRTBackend`` for an engine), so what is measured is what is served.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.native import NativeModel
from flows.parity import ParityResult, compare
from services.runner.backends import OnnxRuntimeBackend
from services.runner.feeds import Feeds
from services.runner.trt import TensorRTBackend
from services.settings import ConvertSettings


def _backend(fmt: str, artifact: bytes, threads: int) -> Any:
    if fmt == "tensorrt":
        return TensorRTBackend(artifact)
    return OnnxRuntimeBackend(artifact, providers=["CPUExecutionProvider"], threads=threads)


def tolerance(fmt: str, settings: ConvertSettings) -> float:
    """Most scaled error per element allowed for ``fmt``."""
    if fmt == "fp32":
        return settings.fp32_tolerance
    if fmt == "int8":
        return settings.int8_tolerance
    return settings.fp16_tolerance  # fp16 and the TensorRT fp16 engine


@task(cache_policy=NO_CACHE)
def run_native(native: NativeModel) -> Feeds:
    """The native model's outputs on its held-out batch: the parity reference."""
    return native.predict(native.feeds)


@task(cache_policy=NO_CACHE)
def check_parity(
    fmt: str, artifact: bytes, native: NativeModel, reference: Feeds, settings: ConvertSettings
) -> ParityResult:
    """Run the held-out batch through one format and compare with the native outputs."""
    outputs = _backend(fmt, artifact, settings.ort_threads).run(native.feeds)
    result = compare(
        fmt,
        reference,
        outputs,
        task=native.task,
        tolerance=tolerance(fmt, settings),
        min_agreement=settings.min_agreement,
        primary=native.primary_output,
    )
    get_run_logger().info(
        "parity %s: max abs %.3g, max rel %.3g, agreement %s -> %s",
        fmt,
        result.max_abs_err,
        result.max_rel_err,
        "-" if result.agreement is None else f"{result.agreement:.4f}",
        "passed" if result.passed else f"FAILED ({result.reason()})",
    )
    return result


def _tile(feeds: Feeds, rows: int) -> Feeds:
    n = len(next(iter(feeds.values())))
    idx = np.arange(rows) % n
    return {k: np.ascontiguousarray(v[idx]) for k, v in feeds.items()}


@task(cache_policy=NO_CACHE)
def measure_latency(
    fmt: str, artifact: bytes, feeds: Feeds, settings: ConvertSettings
) -> dict[int, dict[str, float]]:
    """p50/p90 milliseconds and rows/s per batch size, each timed for ``latency_seconds``."""
    backend = _backend(fmt, artifact, settings.ort_threads)
    out: dict[int, dict[str, float]] = {}
    for b in settings.latency_batches:
        batch = _tile(feeds, b)
        backend.run(batch)  # warm-up: first runs allocate
        times: list[float] = []
        deadline = time.perf_counter() + settings.latency_seconds
        while len(times) < 3 or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            backend.run(batch)
            times.append(time.perf_counter() - t0)
        p50 = float(np.percentile(times, 50))
        out[b] = {
            "p50_ms": round(p50 * 1000, 3),
            "p90_ms": round(float(np.percentile(times, 90)) * 1000, 3),
            "rows_per_s": round(b / p50, 1),
            "runs": len(times),
        }
    get_run_logger().info(
        "latency %s: %s", fmt, ", ".join(f"b={b} {v['p50_ms']:.2f} ms" for b, v in out.items())
    )
    return out
