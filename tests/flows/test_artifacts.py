"""Formatting of the rollout flows' markdown artifacts."""

from __future__ import annotations

from flows.artifacts import artifact_key, format_ms, format_percent


def test_artifact_key_is_lower_case_letters_digits_and_dashes() -> None:
    assert artifact_key("shadow", "Fraud_v2.onnx") == "shadow-fraud-v2-onnx"


def test_nan_cells_read_as_a_dash() -> None:
    assert (format_ms(1.234), format_ms(float("nan"))) == ("1.23", "-")
    assert (format_percent(0.5), format_percent(float("nan"))) == ("50.00%", "-")
