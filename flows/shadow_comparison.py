"""The candidate's shadow answers compared with the primary's (pure: no Redis, no Prefect).

Outputs are the JSON of the runner's output tensors (``{name: rows}``), as the gateway
logs them in shadow pairs: both sides log the same outputs (a classifier: ``label`` and
``probabilities``). A classifier is compared on its labels (agreement), with the mean
absolute difference of its probabilities as a secondary measure and the drift of its
prediction distribution (``flows.prediction_drift``); anything else on its first output with a
relative tolerance. Latency compares the primary's time in the runner with the
candidate's; pairs the primary answered from its cache carry no runner time (NaN) and
are left out of the latency summary. The shadow gate (``flows.gates``) judges the result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from flows.prediction_drift import PredictionDrift, prediction_drift
from services.rollout.prediction_log import ShadowPair
from services.rollout.statistics import LatencySummary, summarize_latencies

CompareKind = Literal["label", "regression"]


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """The candidate's shadow answers against the primary's.

    Attributes:
        pairs: mirrored requests compared.
        rows: rows in them.
        candidate_errors: pairs the candidate failed (errors and timeouts).
        error_rate: ``candidate_errors / pairs`` (NaN without pairs).
        kind: ``"label"`` (classifier: label agreement) or ``"regression"``.
        output: the output tensor compared.
        agreement: share of answered rows where the candidate agrees (NaN: none).
        mean_relative_error: mean relative error of answered rows (regression), or the
            share of flipped labels (classifier).
        identical: the candidate's artifact is the primary's (same sha256), or every
            pair answered with every output equal to the primary's.
        primary_latency, candidate_latency: time-in-the-runner summaries.
        probability_divergence: mean absolute difference of the class probabilities
            (NaN: no probabilities logged).
        drift: the candidate's prediction distribution against the primary's.
    """

    pairs: int
    rows: int
    candidate_errors: int
    error_rate: float
    kind: CompareKind
    output: str | None
    agreement: float
    mean_relative_error: float
    identical: bool
    primary_latency: LatencySummary
    candidate_latency: LatencySummary
    probability_divergence: float = math.nan
    drift: PredictionDrift = PredictionDrift(math.nan, math.nan, 0, 0)

    @property
    def p50_delta_ms(self) -> float:
        """Candidate p50 minus primary p50."""
        return self.candidate_latency.p50_ms - self.primary_latency.p50_ms

    @property
    def p99_delta_ms(self) -> float:
        """Candidate p99 minus primary p99."""
        return self.candidate_latency.p99_ms - self.primary_latency.p99_ms


def _choose_output(sample: Any, label_output: str | None) -> tuple[CompareKind, str | None]:
    if label_output is not None:
        return "label", label_output
    if not isinstance(sample, Mapping) or not sample:
        return "regression", None
    if "label" in sample:
        return "label", "label"
    for name, values in sample.items():
        flat = np.asarray(values).ravel()
        if flat.size and np.issubdtype(flat.dtype, np.integer):
            return "label", str(name)
    return "regression", str(next(iter(sample)))


def _select(output: Any, name: str | None) -> np.ndarray:
    value = output[name] if name is not None and isinstance(output, Mapping) else output
    array = np.asarray(value)
    return array.reshape(array.shape[0], -1) if array.ndim else array.reshape(1, 1)


def _all_equal(a: Any, b: Any) -> bool:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_all_equal(a[k], b[k]) for k in a)
    try:
        x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    except (TypeError, ValueError):
        return bool(a == b)
    return x.shape == y.shape and bool(np.allclose(x, y, rtol=1e-6, atol=1e-7, equal_nan=True))


def _row_scores(pair: ShadowPair, kind: CompareKind, name: str | None) -> list[float]:
    """Per row: 1.0/0.0 for a flipped/kept label, else the largest relative error.

    Outputs that cannot be compared (missing, other shape, not numbers) score 1.0 a row.
    """
    try:
        p, c = _select(pair.primary_output, name), _select(pair.candidate_output, name)
        if p.shape != c.shape:
            return [1.0] * len(p)
        if kind == "label":
            return (~np.all(p == c, axis=1)).astype(float).tolist()
        pf, cf = p.astype(float), c.astype(float)
        return np.max(np.abs(cf - pf) / np.maximum(np.abs(pf), 1e-12), axis=1).tolist()
    except (KeyError, TypeError, ValueError, IndexError):
        return [1.0] * pair.rows


def _side_rows(
    answered: Sequence[ShadowPair], name: str | None
) -> tuple[list[object], list[object], np.ndarray | None, np.ndarray | None]:
    """Each side's labels and probability rows over the answered pairs."""
    p_labels: list[object] = []
    c_labels: list[object] = []
    p_probs: list[np.ndarray] = []
    c_probs: list[np.ndarray] = []
    for pair in answered:
        try:
            p_lab, c_lab = _select(pair.primary_output, name), _select(pair.candidate_output, name)
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        p_labels += [tuple(r) for r in p_lab.tolist()]
        c_labels += [tuple(r) for r in c_lab.tolist()]
        try:
            p_pr = _select(pair.primary_output, "probabilities").astype(float)
            c_pr = _select(pair.candidate_output, "probabilities").astype(float)
        except (KeyError, TypeError, ValueError, IndexError):
            continue
        if p_pr.shape == c_pr.shape:
            p_probs.append(p_pr)
            c_probs.append(c_pr)
    if not p_probs:
        return p_labels, c_labels, None, None
    return p_labels, c_labels, np.vstack(p_probs), np.vstack(c_probs)


def _latencies(pairs: Sequence[ShadowPair]) -> tuple[LatencySummary, LatencySummary]:
    """Runner time of both sides over the pairs where both were measured."""
    both = [
        (x.primary_latency_ms, x.candidate_latency_ms)
        for x in pairs
        if x.candidate_latency_ms is not None and not math.isnan(x.primary_latency_ms)
    ]
    return (
        summarize_latencies([p for p, _ in both]),
        summarize_latencies([c for _, c in both]),
    )


def compare_shadow(
    pairs: Sequence[ShadowPair],
    *,
    regression_rtol: float,
    label_output: str | None = None,
    same_artifact: bool = False,
) -> ShadowComparison:
    """Compare the candidate's answers with the primary's over ``pairs``.

    Args:
        pairs: the logged shadow pairs.
        regression_rtol: relative error under which a regression output agrees.
        label_output: the classifier output to compare (default: ``"label"`` or the first
            integer output; without one, the first output as a regression).
        same_artifact: the candidate's artifact has the primary's sha256 (identical).

    A pair whose shapes differ counts every row as a disagreement.
    """
    answered = [p for p in pairs if not p.candidate_error and p.candidate_output is not None]
    errors = len(pairs) - len(answered)
    sample = answered[0].primary_output if answered else None
    kind, name = _choose_output(sample, label_output)
    rows = agree = 0
    rel_errors: list[float] = []
    identical = errors == 0 and bool(pairs)
    for pair in answered:
        identical = identical and _all_equal(pair.primary_output, pair.candidate_output)
        scores = _row_scores(pair, kind, name)
        rows += len(scores)
        agree += sum(
            score == 0.0 if kind == "label" else score <= regression_rtol for score in scores
        )
        rel_errors.extend(scores)
    drift = PredictionDrift(math.nan, math.nan, 0, 0)
    divergence = math.nan
    if kind == "label":
        p_labels, c_labels, p_probs, c_probs = _side_rows(answered, name)
        drift = prediction_drift(p_labels, c_labels, p_probs, c_probs)
        if p_probs is not None and c_probs is not None:
            divergence = float(np.mean(np.abs(p_probs - c_probs)))
    primary_latency, candidate_latency = _latencies(answered)
    return ShadowComparison(
        pairs=len(pairs),
        rows=rows,
        candidate_errors=errors,
        error_rate=errors / len(pairs) if pairs else math.nan,
        kind=kind,
        output=name,
        agreement=agree / rows if rows else math.nan,
        mean_relative_error=float(np.mean(rel_errors)) if rel_errors else math.nan,
        identical=(same_artifact and errors == 0 and bool(pairs)) or identical,
        primary_latency=primary_latency,
        candidate_latency=candidate_latency,
        probability_divergence=divergence,
        drift=drift,
    )
