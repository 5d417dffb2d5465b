"""The conversion flow: a native model in, a registered, parity-checked ONNX version out.

Steps (each a Prefect task; the flow only orchestrates)::

    export ONNX (skl2onnx / torch.onnx.export; dynamic batch, and sequence for text)
    -> onnx.checker -> ONNX Runtime graph optimization (basic level: portable to every
    execution provider) -> optional fp16 / int8 variants -> a TensorRT fp16 engine where
    TensorRT and a CUDA GPU are present, else a recorded skip saying why
    -> parity of every format against the native model on a held-out batch
    -> latency of every format at batch 1, 8, 32 -> reference sample for drift reports
    (the served variant's answers on the reference inputs) -> register (with parity,
    latency and the reference).

A failed parity check raises ``flows.parity.ParityError`` (the run is Failed) and
registers nothing. The report is a Prefect markdown artifact ``convert-<model>``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.conversion_report import ConversionReport, publish_report
from flows.engine import build_tensorrt
from flows.measure import check_parity, measure_latency, run_native
from flows.native import NativeModel
from flows.onnx_graph import check_onnx, export_onnx, optimize_onnx
from flows.parity import ParityError
from flows.variants import build_variant
from monitoring.reference import ReferenceSample, reference_from_artifact, summarize
from services.registry.versions import ModelRegistry, ModelVersion, Stage
from services.request.tokenizer import TOKENIZER_FILE
from services.runner.feeds import Feeds
from services.settings import ConvertSettings, get_settings

Progress = Callable[[str], None]
STEPS = ["export", "check", "optimize", "variants", "tensorrt", "parity", "latency", "register"]


@task(cache_policy=NO_CACHE)
def take_reference(
    native: NativeModel, artifact: bytes, feeds: Feeds, rows: int
) -> ReferenceSample | None:
    """The reference sample of drift reports: up to ``rows`` rows of ``feeds`` and the
    served artifact's answers on them (None for a raw tensor model, whose traffic is not
    logged)."""
    sample = reference_from_artifact(native.schema, artifact, feeds, rows=rows, source="convert")
    if sample is not None:
        get_run_logger().info("reference sample: %d rows", sample.rows)
    return sample


@task(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NO_CACHE)
def register_version(
    registry: ModelRegistry,
    name: str,
    artifact: bytes,
    *,
    fmt: str,
    native: NativeModel,
    report: ConversionReport,
    stage: Stage,
    variant: str,
    reference: ReferenceSample | None = None,
) -> ModelVersion:
    """Register the artifact (and a text model's tokenizer, and the reference sample) with
    its parity and latency."""
    versions = [int(v.version) for v in registry.list_versions(name) if v.version.isdigit()]
    version = str(max(versions, default=0) + 1)
    metrics: dict[str, Any] = dict(native.metrics)
    metrics["conversion"] = {
        "framework": native.framework,
        "opset": report.opset,
        "variant": variant,
        "seconds": round(report.seconds, 1),
    }
    metrics["latency_ms"] = {
        f: {str(b): v for b, v in per.items()} for f, per in report.latency.items()
    }
    if native.tokenizer is not None:
        raw = native.tokenizer.encode()
        # Written before the metadata, which commits the version: a reader never sees a
        # text model without its tokenizer.
        registry.store.put(f"{name}/{version}/{TOKENIZER_FILE}", raw)
        metrics["tokenizer"] = {"file": TOKENIZER_FILE, "sha256": hashlib.sha256(raw).hexdigest()}
    if reference is not None:
        metrics["reference"] = summarize(reference)
    mv = registry.register(
        name,
        artifact,
        schema=native.schema,
        format="tensorrt" if fmt == "tensorrt" else "onnx",
        version=version,
        stage=stage,
        metrics=metrics,
        parity=report.parity_dict(),
        description=native.description,
        reference=None if reference is None else reference.to_bytes(),
    )
    get_run_logger().info("registered %s version %s (%s)", name, mv.version, variant)
    return mv


def _no_progress(step: str) -> None:
    """Progress callback of a run nobody watches."""


def _build_formats(
    native: NativeModel, s: ConvertSettings, report: ConversionReport, done: Progress
) -> dict[str, bytes]:
    """Export, check and optimize the graph, build the variants and the engine, by format."""
    raw = export_onnx(native, s.opset)
    done("export")
    check_onnx(raw, s.opset)
    done("check")
    artifacts = {"fp32": optimize_onnx(raw)}
    done("optimize")
    for variant in s.variants:
        artifacts[variant] = build_variant(raw, variant, reduce_range=s.int8_reduce_range)
    done("variants")
    engine = build_tensorrt(raw, native, s)
    if isinstance(engine, bytes):
        artifacts["tensorrt"] = engine
        report.tensorrt = {"built": True, "bytes": len(engine)}
    else:
        report.tensorrt = {"built": False, "skipped": engine}
    done("tensorrt")
    return artifacts


def _register(
    registry: ModelRegistry,
    native: NativeModel,
    artifacts: dict[str, bytes],
    report: ConversionReport,
    s: ConvertSettings,
    stage: Stage,
    reference: ReferenceSample | None,
) -> None:
    """Register the served variant, and the TensorRT engine when asked to (both with the
    reference sample)."""
    name = report.model
    report.registered = register_version(
        registry,
        name,
        artifacts[s.serve_variant],
        fmt="onnx",
        native=native,
        report=report,
        stage=stage,
        variant=s.serve_variant,
        reference=reference,
    )
    if "tensorrt" in artifacts and s.register_engine:
        report.engine_version = register_version(
            registry,
            name,
            artifacts["tensorrt"],
            fmt="tensorrt",
            native=native,
            report=report,
            stage="staging",
            variant="tensorrt-fp16",
            reference=reference,
        )


@flow(name="convert-model", validate_parameters=False)
def convert_flow(
    name: str,
    native: NativeModel,
    registry: ModelRegistry,
    *,
    settings: ConvertSettings | None = None,
    stage: Stage = "staging",
    progress: Progress | None = None,
    reference_feeds: Feeds | None = None,
    reference_rows: int | None = None,
) -> ConversionReport:
    """Convert ``native`` to ONNX (and TensorRT where possible), check parity, register.

    Args:
        name: the model's registered name.
        native: the model in its framework with its held-out batch.
        registry: where the version is registered.
        settings: opset, tolerances, variants, TensorRT, latency probe.
        stage: the registered version's stage.
        progress: called with each finished step's name (the CLI's progress bar).
        reference_feeds: inputs of the reference sample stored for drift reports
            (default: the held-out batch); a few thousand representative rows make the
            reports meaningful.
        reference_rows: most rows of the sample (default: the monitoring settings').

    Raises:
        ParityError: a format is outside its tolerance; nothing is registered.
    """
    s = settings or get_settings().convert
    done = progress or _no_progress
    t0 = time.perf_counter()
    report = ConversionReport(model=name, framework=native.framework, opset=s.opset)
    artifacts = _build_formats(native, s, report, done)
    reference = run_native(native)
    for fmt, data in artifacts.items():
        report.parity[fmt] = check_parity(fmt, data, native, reference, s)
    done("parity")
    failures = [p for p in report.parity.values() if not p.passed]
    if failures:
        report.seconds = time.perf_counter() - t0
        publish_report(report)
        detail = "; ".join(f"{p.format}: {p.reason()}" for p in failures)
        raise ParityError(
            f"{name}: parity failed, nothing registered ({detail})", model=name, failures=failures
        )
    for fmt, data in artifacts.items():
        report.latency[fmt] = measure_latency(fmt, data, native.feeds, s)
    done("latency")
    sample = take_reference(
        native,
        artifacts[s.serve_variant],
        native.feeds if reference_feeds is None else reference_feeds,
        reference_rows or get_settings().monitoring.reference_rows,
    )
    report.seconds = time.perf_counter() - t0
    _register(registry, native, artifacts, report, s, stage, sample)
    done("register")
    publish_report(report)
    get_run_logger().info("converted %s in %.1f s", name, report.seconds)
    return report
