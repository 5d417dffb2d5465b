"""The prediction-drift measure (PSI) and the canary's per-variant reader."""

from __future__ import annotations

import math

import numpy as np

from flows.canary_drift import prediction_rows
from flows.prediction_drift import prediction_drift, psi


def test_psi_is_zero_for_the_same_distribution_and_grows_with_the_shift() -> None:
    assert psi(np.array([50, 50]), np.array([50, 50])) == 0.0
    small = psi(np.array([900, 100]), np.array([880, 120]))
    large = psi(np.array([900, 100]), np.array([100, 900]))
    assert 0 < small < 0.05 < 1.0 < large


def test_flipped_labels_drift_and_a_close_model_does_not() -> None:
    rng = np.random.default_rng(0)
    p1 = rng.beta(0.3, 8, size=2000)  # a fraud score: mostly near 0
    primary = np.column_stack([1 - p1, p1])
    close = np.clip(primary + rng.normal(0, 0.01, primary.shape), 0, 1)
    labels, close_labels = primary.argmax(1).tolist(), close.argmax(1).tolist()
    assert prediction_drift(labels, close_labels, primary, close).psi < 0.05
    flipped = prediction_drift(labels, [1 - x for x in labels], primary, primary[:, ::-1])
    assert flipped.label_psi > 1.0 and flipped.probability_psi > 1.0


def test_nothing_to_compare_is_nan() -> None:
    d = prediction_drift([], [1, 0])
    assert math.isnan(d.psi) and math.isnan(d.probability_psi)


def test_prediction_rows_reads_answers_and_raw_outputs() -> None:
    answers = [{"label": "fraud", "probabilities": {"legit": 0.3, "fraud": 0.7}, "cached": False}]
    assert prediction_rows(answers) == [("fraud", [0.7, 0.3])]  # classes in name order
    raw = {"label": [0, 1], "probabilities": [[0.9, 0.1], [0.4, 0.6]]}
    assert prediction_rows(raw) == [(0, [0.9, 0.1]), (1, [0.4, 0.6])]
    assert prediction_rows({"embedding": [[0.1]]}) == [] and prediction_rows(None) == []


def test_drift_is_judged_from_100_rows_a_side() -> None:
    assert not prediction_drift([0] * 99, [1] * 500).judged
    assert prediction_drift([0] * 100, [1] * 100).judged
