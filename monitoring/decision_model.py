"""What the decision-health report is made of: the evidence it reads (pure data, so the
checks can be tested with hand-built samples) and the rows it writes.

Every serving decision of docs/design.md has signals that say when it stops paying off;
each row is one signal evaluated: the measured value, the threshold, a verdict and what
to do about it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from monitoring.scrape import Scrape, Window
from services.settings import BatchSettings


class Verdict(StrEnum):
    """A signal's verdict."""

    FINE = "fine"
    RECONSIDER = "reconsider"
    NO_DATA = "not enough data"


DECISIONS: dict[str, str] = {
    "batching": "Adaptive batching",
    "pools": "Dedicated server, shared pool",
    "cache": "Prediction cache in Redis",
    "hashing": "Sticky user-level assignment",
    "features": "Batch + real-time features",
    "format": "ONNX, TensorRT on GPU",
    "autoscaling": "GPU-utilisation autoscaling",
    "rollouts": "Shadow, then canary",
}
"""The eight decisions, keyed, in the order of docs/design.md."""


@dataclass(frozen=True, slots=True)
class Row:
    """One signal of one decision, evaluated.

    Attributes:
        decision: the decision's key (see ``DECISIONS``).
        signal: what is measured.
        subject: the model or feature view it concerns ("" for the whole gateway).
        value: the measured value, formatted.
        threshold: the threshold, formatted.
        verdict: fine, reconsider or not enough data.
        action: what to do (or why nothing is needed, or what data is missing).
        basis: how the value was measured (window, probes, stream, registry).
        measured: the value as a number, when it is one.
    """

    decision: str
    signal: str
    subject: str
    value: str
    threshold: str
    verdict: Verdict
    action: str
    basis: str = ""
    measured: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN and infinity become None)."""
        out = asdict(self)
        out["verdict"] = self.verdict.value
        out["title"] = DECISIONS.get(self.decision, self.decision)
        m = self.measured
        out["measured"] = None if m is None or not math.isfinite(m) else m
        return out


@dataclass(frozen=True, slots=True)
class Signal:
    """A signal about to be judged: what, of which subject, against what, measured how."""

    decision: str
    signal: str
    subject: str
    threshold: str
    basis: str = ""

    def _row(self, verdict: Verdict, value: str, action: str, measured: float | None) -> Row:
        return Row(
            self.decision, self.signal, self.subject, value, self.threshold, verdict, action,
            self.basis, measured,
        )  # fmt: skip

    def no_data(self, action: str, value: str = "-") -> Row:
        """Too little data to judge: ``action`` says what is missing."""
        return self._row(Verdict.NO_DATA, value, action, None)

    def fine(self, value: str, action: str, measured: float | None = None) -> Row:
        """The decision pays off on this signal."""
        return self._row(Verdict.FINE, value, action, measured)

    def reconsider(self, value: str, action: str, measured: float | None = None) -> Row:
        """The signal says the decision should be revisited: ``action`` says how."""
        return self._row(Verdict.RECONSIDER, value, action, measured)


@dataclass(frozen=True, slots=True)
class ShadowFacts:
    """A model's newest shadow pairs, reduced to what the report judges.

    ``identical`` counts pairs equal on every output both sides logged; ``mismatched``
    counts pairs whose two sides logged different outputs (``outputs`` names them).
    """

    model: str
    candidate: str
    pairs: int
    errors: int
    identical: int
    primary_ms: tuple[float, ...]
    candidate_ms: tuple[float, ...]
    mismatched: int = 0
    outputs: str = ""


@dataclass(frozen=True, slots=True)
class RolloutFacts:
    """A model's rollout state and what its history says about past rollouts."""

    model: str
    mode: str
    primary: str
    candidate: str | None
    percent: float
    promotions: int = 0
    blue_green: int = 0


@dataclass(frozen=True, slots=True)
class ViewFacts:
    """A feature view's freshness: data age (batch) or worker heartbeat age (real-time)."""

    name: str
    kind: str
    max_staleness_s: float
    age_s: float | None


@dataclass(frozen=True, slots=True)
class ParityFacts:
    """One registered version's conversion report (``formats`` None: none recorded).

    ``formats`` maps each converted format to (passed, error as a share of tolerance).
    """

    model: str
    version: str
    format: str
    formats: dict[str, tuple[bool, float]] | None
    tensorrt_skipped: str | None = None


@dataclass
class Evidence:
    """Everything the checks read: scrapes of /metrics, GET /models, Redis, the registry.

    Attributes:
        scrapes: /metrics scrapes, oldest first (one or more).
        models: the ``models`` list of ``GET /models``.
        batch: the batching settings (whether batching is on, policies of unloaded models).
        rollouts: rollout state per model.
        shadows: newest shadow pairs per model.
        logged_units: from the prediction stream: per model, entries per assignment unit.
        views: freshness of every declared feature view.
        feature_probe_ms: timed feature-store reads (one Lua call each).
        cache_probe_ms: timed cache lookups (one MGET each).
        parity: conversion reports of the registered versions.
        redis_ok: whether Redis could be read.
        registry_ok: whether the registry could be read.
        now: epoch seconds at collection.
        problems: what could not be read, in words.
    """

    scrapes: list[Scrape]
    models: list[dict[str, Any]] = field(default_factory=list)
    batch: BatchSettings = field(default_factory=BatchSettings)
    rollouts: list[RolloutFacts] = field(default_factory=list)
    shadows: list[ShadowFacts] = field(default_factory=list)
    logged_units: dict[str, dict[str, int]] = field(default_factory=dict)
    views: list[ViewFacts] = field(default_factory=list)
    feature_probe_ms: list[float] = field(default_factory=list)
    cache_probe_ms: list[float] = field(default_factory=list)
    parity: list[ParityFacts] = field(default_factory=list)
    redis_ok: bool = True
    registry_ok: bool = True
    now: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def window(self) -> Window:
        """First to last scrape."""
        return Window.over(self.scrapes)

    def runtime(self, model: str) -> list[dict[str, Any]]:
        """The ``runtime`` of each loaded version of ``model`` (from ``GET /models``)."""
        for m in self.models:
            if m.get("name") == model:
                return [
                    v["runtime"]
                    for v in m.get("versions", [])
                    if v.get("runtime", {}).get("loaded")
                ]
        return []

    def served_models(self) -> list[str]:
        """Models with traffic on /metrics or loaded on the gateway, sorted."""
        last = self.window.last
        seen = set(last.by("servekit_request_latency_seconds_count", "model"))
        seen |= set(last.by("servekit_model_requests_total", "model"))
        seen |= {str(m["name"]) for m in self.models if self.runtime(str(m["name"]))}
        return sorted(s for s in seen if s)


@dataclass
class DecisionReport:
    """The rows of every decision, with how they were measured."""

    gateway: str
    generated_at: float
    window: str
    rows: list[Row]
    problems: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Rows per verdict."""
        return {v.value: sum(r.verdict is v for r in self.rows) for v in Verdict}

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "gateway": self.gateway,
            "generated_at": self.generated_at,
            "window": self.window,
            "counts": self.counts(),
            "problems": self.problems,
            "rows": [r.as_dict() for r in self.rows],
        }


def percentile(values: list[float] | tuple[float, ...], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
