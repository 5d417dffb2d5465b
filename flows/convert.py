"""The conversion flow: a native model in, a registered, parity-checked ONNX version out.

Steps (each a Prefect task; the flow only orchestrates)::

    export ONNX (skl2onnx / torch.onnx.export; dynamic batch, and sequence for text)
    -> onnx.checker -> ONNX Runtime graph optimization (basic level: portable to every
    execution provider) -> optional fp16 / int8 variants -> a TensorRT fp16 engine where
    TensorRT and a CUDA GPU are present, else a recorded skip saying why
    -> parity of every format against the native model on a held-out batch
    -> latency of every format at batch 1, 8, 32 -> register (with parity + latency).

A failed parity check raises ``flows.parity.ParityError`` (the run is Failed) and
registers nothing. The report is a Prefect markdown artifact ``convert-<model>``.
``python -m flows.convert text-embed`` runs it from the command line with a progress bar.
"""

from __future__ import annotations

import hashlib
import io
import logging
import re
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from flows.parity import ParityError, ParityResult, Task, compare
from services.errors import InvalidInputError, ModelLoadError
from services.registry.versions import ModelRegistry, ModelVersion, Stage
from services.request.schema import ModelSchema
from services.request.tokenizer import TOKENIZER_FILE
from services.settings import ConvertSettings, get_settings

if TYPE_CHECKING:
    from services.runner.trt import Profile

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
Progress = Callable[[str], None]
STEPS = ["export", "check", "optimize", "variants", "tensorrt", "parity", "latency", "register"]


# -- native models ------------------------------------------------------------------
@dataclass
class NativeModel:
    """A model in its training framework, with the held-out batch to check it on.

    Attributes:
        model: the scikit-learn estimator or ``torch.nn.Module``.
        schema: the served schema; its input and output names are the ONNX graph's.
        feeds: the held-out parity batch, by input name.
        task: classifier / regressor / embedding (how agreement is measured).
        metrics: training metrics, registered with the version.
        tokenizer: a text model's tokenizer.json, stored beside the artifact.
        description: registered with the version.
    """

    model: Any
    schema: ModelSchema
    feeds: Feeds
    task: Task = "classifier"
    metrics: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None
    description: str | None = None
    framework = "native"

    @property
    def primary_output(self) -> str:
        """The output agreement is measured on."""
        return self.schema.probability_output or self.schema.outputs[0].name

    def predict(self, feeds: Feeds) -> Feeds:
        """The native model's outputs, by the schema's output names."""
        raise NotImplementedError

    def export(self, opset: int) -> bytes:
        """The ONNX model's bytes."""
        raise NotImplementedError


@dataclass
class SklearnModel(NativeModel):
    """A scikit-learn estimator on one float32 input tensor (skl2onnx, no zipmap)."""

    framework = "sklearn"

    def predict(self, feeds: Feeds) -> Feeds:
        x = feeds[self.schema.inputs[0].name]
        names = [o.name for o in self.schema.outputs]
        if self.task == "classifier":
            proba = self.model.predict_proba(x).astype(np.float32)
            label = self.model.predict(x)
            prob_name = self.primary_output
            label_name = next((n for n in names if n != prob_name), "label")
            return {label_name: label, prob_name: proba}
        return {names[0]: np.asarray(self.model.predict(x), dtype=np.float32).reshape(len(x), -1)}

    def export(self, opset: int) -> bytes:
        try:
            from skl2onnx import convert_sklearn
            from skl2onnx.common.data_types import FloatTensorType
        except ImportError as exc:
            raise RuntimeError("exporting scikit-learn needs the 'demo' extra") from exc
        spec = self.schema.inputs[0]
        options = {id(self.model): {"zipmap": False}} if self.task == "classifier" else None
        onx = convert_sklearn(
            self.model,
            initial_types=[(spec.name, FloatTensorType([None, *spec.shape[1:]]))],
            options=options,
            target_opset={"": opset, "ai.onnx.ml": 3},
        )
        return onx.SerializeToString()


@dataclass
class TorchModel(NativeModel):
    """A ``torch.nn.Module`` taking the schema's inputs in order (torch.onnx.export, dynamo=False).

    Attributes:
        dynamic_axes: per input, its dynamic axes (default: axis 0, "batch").
        output_axes: per output, its dynamic axes (default: axis 0, "batch").
    """

    dynamic_axes: dict[str, dict[int, str]] | None = None
    output_axes: dict[str, dict[int, str]] | None = None
    framework = "torch"

    def _torch(self) -> Any:
        try:
            import torch
        except ImportError as exc:
            raise RuntimeError("exporting PyTorch needs the 'convert' extra") from exc
        return torch

    def predict(self, feeds: Feeds) -> Feeds:
        torch = self._torch()
        args = [torch.from_numpy(np.ascontiguousarray(feeds[i.name])) for i in self.schema.inputs]
        with torch.inference_mode():
            out = self.model(*args)
        outs = out if isinstance(out, tuple | list) else (out,)
        return {
            spec.name: t.detach().cpu().numpy()
            for spec, t in zip(self.schema.outputs, outs, strict=True)
        }

    def export(self, opset: int) -> bytes:
        torch = self._torch()
        inputs = [i.name for i in self.schema.inputs]
        outputs = [o.name for o in self.schema.outputs]
        axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in inputs + outputs}
        axes.update(self.dynamic_axes or {})
        axes.update(self.output_axes or {})
        args = tuple(torch.from_numpy(np.ascontiguousarray(self.feeds[n])) for n in inputs)
        buf = io.BytesIO()
        with torch.inference_mode():
            torch.onnx.export(
                self.model,
                args,
                buf,
                input_names=inputs,
                output_names=outputs,
                dynamic_axes=axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,  # the dynamo exporter needs onnxscript and ran 12-30 % slower
            )
        return buf.getvalue()

    def profile(self, max_batch: int, max_sequence: int) -> Profile:
        """TensorRT (min, opt, max) shapes: batch 1..max_batch, sequence 1..max_sequence."""
        out: Profile = {}
        axes = self.dynamic_axes or {}
        for spec in self.schema.inputs:
            shape = self.feeds[spec.name].shape
            lo, opt, hi = [1, *shape[1:]], [min(8, max_batch), *shape[1:]], [max_batch, *shape[1:]]
            for ax in axes.get(spec.name, {}):
                if ax >= 1:
                    lo[ax], hi[ax] = 1, max(max_sequence, shape[ax])
            out[spec.name] = (tuple(lo), tuple(opt), tuple(hi))
        return out


# -- report -------------------------------------------------------------------------
@dataclass
class ConversionReport:
    """What a conversion produced: parity and latency per format, and what was registered."""

    model: str
    framework: str
    opset: int
    parity: dict[str, ParityResult] = field(default_factory=dict)
    latency: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    tensorrt: dict[str, Any] = field(default_factory=dict)
    registered: ModelVersion | None = None
    engine_version: ModelVersion | None = None
    seconds: float = 0.0

    def parity_dict(self) -> dict[str, Any]:
        """The parity report registered with the version."""
        rows = next(iter(self.parity.values())).rows if self.parity else 0
        return {
            "held_out_rows": rows,
            "formats": {k: v.as_dict() for k, v in self.parity.items()},
            "tensorrt": self.tensorrt,
        }

    def markdown(self) -> str:
        """The Prefect artifact: one table for parity, one for latency."""
        lines = [f"# Conversion of `{self.model}` ({self.framework}, opset {self.opset})", ""]
        lines += ["| format | max abs err | max rel err | agreement | tolerance | passed |"]
        lines += ["|---|---|---|---|---|---|"]
        for p in self.parity.values():
            agree = "-" if p.agreement is None else f"{p.agreement:.4f}"
            lines.append(
                f"| {p.format} | {p.max_abs_err:.3g} | {p.max_rel_err:.3g} | {agree} "
                f"| {p.tolerance:g} | {'yes' if p.passed else 'NO: ' + p.reason()} |"
            )
        if self.tensorrt.get("skipped"):
            lines += ["", f"TensorRT engine skipped: {self.tensorrt['skipped']}"]
        if self.latency:
            batches = sorted({b for per in self.latency.values() for b in per})
            lines += ["", "| format | " + " | ".join(f"batch {b} p50 ms" for b in batches) + " |"]
            lines += ["|---|" + "---|" * len(batches)]
            for fmt, per in self.latency.items():
                cells = [f"{per[b]['p50_ms']:.2f}" if b in per else "-" for b in batches]
                lines.append(f"| {fmt} | " + " | ".join(cells) + " |")
        if self.registered is not None:
            lines += ["", f"Registered {self.model} version {self.registered.version}."]
        return "\n".join(lines)


# -- tasks --------------------------------------------------------------------------
@task(cache_policy=NONE)
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


@task(cache_policy=NONE)
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


@task(cache_policy=NONE)
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


@task(cache_policy=NONE)
def build_variant(data: bytes, variant: str, *, reduce_range: bool = True) -> bytes:
    """An fp16 (inputs/outputs kept fp32) or dynamic int8 (per-channel) variant; int8 with
    7-bit weights when ``reduce_range`` (see ``ConvertSettings.int8_reduce_range``)."""
    import onnx

    if variant == "fp16":
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(onnx.load_from_string(data), keep_io_types=True)
        return model.SerializeToString()
    if variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(data)
            quantize_dynamic(
                src,
                dst,
                per_channel=True,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
            )
            return dst.read_bytes()
    raise ValueError(f"unknown variant {variant!r}")


@task(cache_policy=NONE)
def build_tensorrt(data: bytes, native: NativeModel, settings: ConvertSettings) -> bytes | str:
    """A TensorRT fp16 engine, or the reason it was not built (logged)."""
    log = get_run_logger()
    from services.runner import trt

    reason = None if settings.tensorrt else "disabled (SERVEKIT_CONVERT_TENSORRT=false)"
    if reason is None and not isinstance(native, TorchModel):
        reason = f"{native.framework} graphs use ai.onnx.ml operators, which TensorRT lacks"
    reason = reason or trt.unavailable_reason()
    if reason is not None:
        log.warning("TensorRT engine skipped: %s", reason)
        return reason
    assert isinstance(native, TorchModel)
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


def _session(data: bytes, threads: int) -> Any:
    from services.runner.backends import OnnxRuntimeBackend

    return OnnxRuntimeBackend(data, providers=["CPUExecutionProvider"], threads=threads)


def _engine(plan: bytes) -> Any:
    from services.runner.trt import TensorRTBackend

    return TensorRTBackend(plan)


@task(cache_policy=NONE)
def check_parity(
    fmt: str, artifact: bytes, native: NativeModel, reference: Feeds, settings: ConvertSettings
) -> ParityResult:
    """Run the held-out batch through one format and compare with the native outputs."""
    backend = _engine(artifact) if fmt == "tensorrt" else _session(artifact, settings.ort_threads)
    outputs = backend.run(native.feeds)
    tolerance = {
        "fp32": settings.fp32_tolerance,
        "int8": settings.int8_tolerance,
    }.get(fmt, settings.fp16_tolerance)
    result = compare(
        fmt,
        reference,
        outputs,
        task=native.task,
        tolerance=tolerance,
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


@task(cache_policy=NONE)
def measure_latency(
    fmt: str, artifact: bytes, feeds: Feeds, settings: ConvertSettings
) -> dict[int, dict[str, float]]:
    """p50/p90 milliseconds and rows/s per batch size, each timed for ``latency_seconds``."""
    backend = _engine(artifact) if fmt == "tensorrt" else _session(artifact, settings.ort_threads)
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


@task(retries=3, retry_delay_seconds=[1, 5, 15], cache_policy=NONE)
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
) -> ModelVersion:
    """Register the artifact (and a text model's tokenizer) with its parity and latency."""
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
    )
    get_run_logger().info("registered %s version %s (%s)", name, mv.version, variant)
    return mv


@task(retries=2, retry_delay_seconds=2, cache_policy=NONE)
def publish_report(report: ConversionReport) -> None:
    """The report as a Prefect markdown artifact, keyed ``convert-<model>``."""
    key = "convert-" + re.sub(r"[^a-z0-9-]", "-", report.model.lower())
    create_markdown_artifact(
        markdown=report.markdown(), key=key, description=f"conversion of {report.model}"
    )


# -- the flow -----------------------------------------------------------------------
@flow(name="convert-model", validate_parameters=False)
def convert_flow(
    name: str,
    native: NativeModel,
    registry: ModelRegistry,
    *,
    settings: ConvertSettings | None = None,
    stage: Stage = "staging",
    progress: Progress | None = None,
) -> ConversionReport:
    """Convert ``native`` to ONNX (and TensorRT where possible), check parity, register.

    Args:
        name: the model's registered name.
        native: the model in its framework with its held-out batch.
        registry: where the version is registered.
        settings: opset, tolerances, variants, TensorRT, latency probe.
        stage: the registered version's stage.
        progress: called with each finished step's name (the CLI's progress bar).

    Raises:
        ParityError: a format is outside its tolerance; nothing is registered.
    """
    log = get_run_logger()
    s = settings or get_settings().convert
    done = progress or (lambda step: None)
    t0 = time.perf_counter()
    report = ConversionReport(model=name, framework=native.framework, opset=s.opset)

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

    reference = native.predict(native.feeds)
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
    report.seconds = time.perf_counter() - t0
    report.registered = register_version(
        registry,
        name,
        artifacts[s.serve_variant],
        fmt="onnx",
        native=native,
        report=report,
        stage=stage,
        variant=s.serve_variant,
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
        )
    done("register")
    publish_report(report)
    log.info("converted %s in %.1f s", name, report.seconds)
    return report


@flow(name="convert")
def convert(model: str = "text-embed", stage: str = "staging") -> dict[str, Any]:
    """The deployable conversion (prefect.yaml): convert a known model into the configured
    registry as a new version, with JSON parameters only. Supported: ``text-embed``."""
    from flows.recipes.text_model import TEXT_MODEL, build_text_model
    from services.registry.stores import open_store

    if model != TEXT_MODEL:
        raise InvalidInputError(
            f"no native loader for {model!r}; deployable conversions: {TEXT_MODEL}", field="model"
        )
    if stage not in ("staging", "production"):
        raise InvalidInputError("stage must be 'staging' or 'production'", field="stage")
    settings = get_settings()
    registry = ModelRegistry(open_store(settings.serving))
    mv = build_text_model(registry, settings.convert, stage=stage)  # type: ignore[arg-type]
    return {"model": model, "version": mv.version if mv else None, "store": registry.store.url}


def main(argv: list[str] | None = None) -> int:
    """``python -m flows.convert text-embed``: build text-embed into the configured store."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from flows.recipes.text_model import TEXT_MODEL, ensure_text_model
    from services.registry.stores import open_store

    args = sys.argv[1:] if argv is None else argv
    if args != [TEXT_MODEL]:
        Console(stderr=True).print(f"usage: python -m flows.convert {TEXT_MODEL}")
        return 2
    settings = get_settings()
    registry = ModelRegistry(open_store(settings.serving))
    console = Console()
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        job = bar.add_task(f"converting {TEXT_MODEL}", total=len(STEPS))

        def step(name: str) -> None:
            bar.update(job, advance=1, description=f"{TEXT_MODEL}: {name} done")

        mv = ensure_text_model(registry, settings.convert, progress=step)
    if mv is None:
        console.print(f"{TEXT_MODEL} is already in {registry.store.url}")
    else:
        console.print(f"registered {TEXT_MODEL} version {mv.version} in {registry.store.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
