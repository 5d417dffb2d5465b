"""The conversion report: what is registered with the version, and its markdown."""

from __future__ import annotations

from flows.conversion_report import ConversionReport
from flows.parity import ParityResult


def parity(fmt: str, *, passed: bool) -> ParityResult:
    return ParityResult(
        format=fmt,
        rows=200,
        max_abs_err=1e-6 if passed else 0.5,
        max_rel_err=1e-5,
        max_scaled_err=1e-6 if passed else 0.5,
        agreement=1.0,
        tolerance=1e-4,
        min_agreement=0.995,
        passed=passed,
        worst_output="probabilities",
    )


def test_parity_dict_holds_every_format_and_the_tensorrt_outcome() -> None:
    report = ConversionReport("gbt", "sklearn", 17, tensorrt={"built": False, "skipped": "no GPU"})
    assert report.parity_dict()["held_out_rows"] == 0
    report.parity = {"fp32": parity("fp32", passed=True)}
    registered = report.parity_dict()
    assert registered["held_out_rows"] == 200 and registered["formats"]["fp32"]["passed"]
    assert registered["tensorrt"] == {"built": False, "skipped": "no GPU"}


def test_markdown_tables_parity_latency_and_the_skip() -> None:
    report = ConversionReport("gbt", "sklearn", 17, tensorrt={"built": False, "skipped": "no GPU"})
    report.parity = {"fp32": parity("fp32", passed=True), "fp16": parity("fp16", passed=False)}
    report.latency = {
        "fp32": {1: {"p50_ms": 0.1}, 8: {"p50_ms": 0.25}},
        "fp16": {1: {"p50_ms": 0.2}},
    }
    text = report.markdown()
    assert text.startswith("# Conversion of `gbt` (sklearn, opset 17)")
    assert "| fp32 | 1e-06 | 1e-05 | 1.0000 | 0.0001 | yes |" in text
    assert "| fp16 | 0.5 |" in text and "NO: error 0.5 on 'probabilities'" in text
    assert "TensorRT engine skipped: no GPU" in text
    assert "| fp32 | 0.10 | 0.25 |" in text and "| fp16 | 0.20 | - |" in text
    assert "Registered" not in text
