"""Comparing the candidate's shadow answers with the primary's."""

from __future__ import annotations

import math
from typing import Any

from flows.shadow_comparison import compare_shadow
from services.rollout.prediction_log import ShadowPair


def pair(primary: Any, candidate: Any, *, error: str = "", ms: float = 1.0) -> ShadowPair:
    """A logged shadow pair (the candidate failed when ``error`` is set)."""
    return ShadowPair(
        request_id="r",
        model="m",
        primary_version="1",
        candidate_version="2",
        primary_output=primary,
        candidate_output=None if error else candidate,
        primary_latency_ms=1.0,
        candidate_latency_ms=None if error else ms,
        candidate_error=error,
    )


def test_compare_regression_outputs_with_relative_tolerance() -> None:
    pairs = [
        pair({"y": [[100.0], [2.0]]}, {"y": [[100.05], [2.5]]}),
        pair({"y": [[1.0]]}, None, error="timeout after 2 s"),
    ]
    c = compare_shadow(pairs, regression_rtol=1e-3)
    assert c.kind == "regression" and c.output == "y"
    assert (c.pairs, c.rows, c.candidate_errors) == (2, 2, 1)
    assert c.agreement == 0.5 and not c.identical
    assert math.isclose(c.mean_relative_error, (0.0005 + 0.25) / 2)


def test_classifiers_compare_labels_and_spot_identical_answers() -> None:
    same = {"label": [1, 0], "probabilities": [[0.1, 0.9], [0.8, 0.2]]}
    c = compare_shadow([pair(same, same), pair(same, same)], regression_rtol=1e-3)
    assert (c.kind, c.output, c.rows, c.agreement, c.identical) == ("label", "label", 4, 1.0, True)
    flipped = {"label": [0, 0], "probabilities": [[0.9, 0.1], [0.8, 0.2]]}
    c = compare_shadow([pair(same, flipped)], regression_rtol=1e-3)
    assert c.agreement == 0.5 and not c.identical


def test_integer_output_is_taken_as_the_label_and_other_shapes_disagree() -> None:
    c = compare_shadow([pair({"cls": [[3], [4]]}, {"cls": [[3], [4], [5]]})], regression_rtol=1e-3)
    assert (c.kind, c.output, c.rows, c.agreement) == ("label", "cls", 2, 0.0)


def test_no_pairs_compare_to_nan() -> None:
    c = compare_shadow([], regression_rtol=1e-3)
    assert c.pairs == 0 and math.isnan(c.error_rate) and math.isnan(c.agreement)
    assert not c.identical
