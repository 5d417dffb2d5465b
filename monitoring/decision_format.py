"""The model format, judged: conversion parity in the registry and whether the serving
runtime is CPU-only (docs/design.md, section 6). Pure: evidence in, rows out.
"""

from __future__ import annotations

from collections import defaultdict

from monitoring.decision_model import Evidence, ParityFacts, Row, Signal


def format_rows(ev: Evidence) -> list[Row]:
    """Parity failures per served model, and the serving runtime's providers."""
    per_model: dict[str, list[ParityFacts]] = defaultdict(list)
    for facts in ev.parity:
        per_model[facts.model].append(facts)
    served = set(ev.served_models())
    rows = [_parity_row(m, versions) for m, versions in sorted(per_model.items()) if m in served]
    if not ev.registry_ok:
        sig = Signal("format", "conversion parity failures", "", "0 failed formats")
        rows.append(sig.no_data("the model registry could not be read (SERVEKIT_MODEL_STORE)"))
    return rows + [_runtime_row(ev)]


def _parity_row(model: str, versions: list[ParityFacts]) -> Row:
    reported = [v for v in versions if v.formats is not None]
    skipped = sorted({v.tensorrt_skipped for v in reported if v.tensorrt_skipped})
    basis = f"registry: parity reports of {len(reported)} of {len(versions)} versions"
    if skipped:
        basis += f"; TensorRT skipped: {skipped[0]}"
    sig = Signal("format", "conversion parity failures", model, "0 failed formats", basis)
    if not reported:
        return sig.no_data(
            "registered without the convert flow: parity against the native model was never "
            "checked (python -m flows.convert records it)",
            "no conversion report",
        )
    results = [
        (v.version, fmt, ok, margin)
        for v in reported
        for fmt, (ok, margin) in (v.formats or {}).items()
    ]
    failed = [f"v{version} {fmt}" for version, fmt, ok, _ in results if not ok]
    worst = max((margin for *_, margin in results), default=0.0)
    value = f"{len(failed)} of {len(results)} formats failed; worst error {worst:.0%} of tolerance"
    if failed:
        return sig.reconsider(
            value,
            f"conversion changed numerics ({', '.join(failed)}): serve the fp32 ONNX variant "
            "(SERVEKIT_CONVERT_SERVE_VARIANT) and fix the export before serving these",
            float(len(failed)),
        )
    return sig.fine(value, "every converted format matches the native model", 0.0)


def _runtime_row(ev: Evidence) -> Row:
    sig = Signal(
        "format", "serving runtime", "", "CPU-only: ONNX on CPU",
        "GET /models: execution provider of each loaded version",
    )  # fmt: skip
    providers, engines = set(), 0
    for model in ev.models:
        for version in model.get("versions", []):
            runtime = version.get("runtime") or {}
            if runtime.get("loaded") and runtime.get("provider"):
                providers.add(str(runtime["provider"]))
            engines += version.get("format") == "tensorrt"
    if not providers:
        return sig.no_data("no loaded model on GET /models")
    gpu = any(p != "CPUExecutionProvider" for p in providers)
    value = ", ".join(sorted(providers)) + (
        f"; {engines} TensorRT engines registered" if engines else ""
    )
    if gpu:
        return sig.fine(value, "a GPU provider serves: TensorRT engines and fp16 pay here", 1.0)
    if engines:
        return sig.reconsider(
            value,
            "TensorRT engines are registered but this runtime is CPU-only, where they cannot "
            "run: serve the ONNX versions and stop registering engines "
            "(SERVEKIT_CONVERT_REGISTER_ENGINE=false)",
            0.0,
        )
    return sig.fine(
        value,
        "CPU-only: ONNX Runtime on the CPU is the sane choice; TensorRT would buy nothing here",
        0.0,
    )
