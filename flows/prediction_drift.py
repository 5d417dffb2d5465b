"""Prediction drift between two versions on the same traffic (pure numpy).

The drift gate of shadow and canary compares the distribution of the candidate's
predictions with the primary's over the same window, before any outcome arrives: the
population stability index (PSI) of the predicted labels, and of each class's
probability histogram. PSI = sum((a - e) * ln(a / e)) over bins; under 0.1 is usually
read as no shift, over 0.25 as a large one. Counts are smoothed (half a count a bin) so
that an empty bin in a small window does not blow the index up.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBABILITY_BINS = 10
"""Equal-width bins of each class probability in [0, 1]."""

MIN_DRIFT_ROWS = 100
"""Fewest predictions a side before drift is judged: with fewer, the PSI of the
probability histograms is mostly sampling noise (about (bins - 1) / rows)."""


@dataclass(frozen=True, slots=True)
class PredictionDrift:
    """PSI of the candidate's predictions against the primary's (NaN: nothing to compare).

    Attributes:
        label_psi: PSI of the predicted-label frequencies.
        probability_psi: mean over classes of the PSI of the probability histograms.
        primary_rows, candidate_rows: predictions compared on each side.
    """

    label_psi: float
    probability_psi: float
    primary_rows: int
    candidate_rows: int

    @property
    def judged(self) -> bool:
        """Both sides have ``MIN_DRIFT_ROWS`` predictions: the index means something."""
        return min(self.primary_rows, self.candidate_rows) >= MIN_DRIFT_ROWS

    @property
    def psi(self) -> float:
        """The larger of the two indices (NaN when neither could be computed)."""
        known = [v for v in (self.label_psi, self.probability_psi) if not math.isnan(v)]
        return max(known) if known else math.nan


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins."""
    e = np.asarray(expected, dtype=float) + 0.5
    a = np.asarray(actual, dtype=float) + 0.5
    e, a = e / e.sum(), a / a.sum()
    return float(np.sum((a - e) * np.log(a / e)))


def _label_psi(primary: Sequence[object], candidate: Sequence[object]) -> float:
    if not primary or not candidate:
        return math.nan
    labels = sorted({str(x) for x in primary} | {str(x) for x in candidate})
    index = {label: i for i, label in enumerate(labels)}
    p = np.bincount([index[str(x)] for x in primary], minlength=len(labels))
    c = np.bincount([index[str(x)] for x in candidate], minlength=len(labels))
    return psi(p, c)


def _probability_psi(primary: np.ndarray, candidate: np.ndarray) -> float:
    if primary.size == 0 or candidate.size == 0 or primary.shape[1] != candidate.shape[1]:
        return math.nan
    edges = np.linspace(0.0, 1.0, PROBABILITY_BINS + 1)
    scores = [
        psi(np.histogram(primary[:, k], edges)[0], np.histogram(candidate[:, k], edges)[0])
        for k in range(primary.shape[1])
    ]
    return float(np.mean(scores))


def prediction_drift(
    primary_labels: Sequence[object],
    candidate_labels: Sequence[object],
    primary_probabilities: np.ndarray | None = None,
    candidate_probabilities: np.ndarray | None = None,
) -> PredictionDrift:
    """The drift of the candidate's predictions from the primary's.

    Args:
        primary_labels, candidate_labels: predicted labels, one per row.
        primary_probabilities, candidate_probabilities: class probabilities, a row per
            prediction and a column per class (None: labels only).
    """
    prob_psi = math.nan
    if primary_probabilities is not None and candidate_probabilities is not None:
        p = np.asarray(primary_probabilities, dtype=float)
        c = np.asarray(candidate_probabilities, dtype=float)
        if p.ndim == 2 and c.ndim == 2:
            prob_psi = _probability_psi(np.clip(p, 0, 1), np.clip(c, 0, 1))
    return PredictionDrift(
        _label_psi(primary_labels, candidate_labels),
        prob_psi,
        len(primary_labels),
        len(candidate_labels),
    )
