"""What a conversion produced, and its Prefect markdown artifact ``convert-<model>``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key
from flows.parity import ParityResult
from services.registry.versions import ModelVersion


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


@task(retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def publish_report(report: ConversionReport) -> None:
    """The report as a Prefect markdown artifact, keyed ``convert-<model>``."""
    create_markdown_artifact(
        markdown=report.markdown(),
        key=artifact_key("convert", report.model),
        description=f"conversion of {report.model}",
    )
