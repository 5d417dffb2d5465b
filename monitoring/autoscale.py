"""The autoscaling policy: desired replicas from GPU utilization, concurrency and inference rate.

servekit scales its GPU runners on GPU utilization: 80 % target, 5-minute moving average
(docs/design.md, auto-scaling). Utilization alone is a weak signal, since it saturates at
100 % whether a replica is slightly or hugely overloaded, so the combined policy also
reads the requests in flight per replica and takes the larger recommendation. Where no
GPU metric exists it falls back to the inference rate: requests x (1 - cache hit rate)
per replica against a measured per-replica capacity (cache hits never reach a GPU).

The arithmetic is the Kubernetes HPA's, so what ``servekit autoscale simulate`` replays is
what KEDA/HPA run with the shipped manifests: the ratio rule ``ceil(current * metric /
target)`` with a 10 % tolerance, the largest recommendation across metrics, scale-up and
scale-down stabilization windows (0 s and 300 s), rate limits per 15 s (up: 100 % or 4
pods, whichever is more; down: 100 %), and min/max replicas. Pure: time comes in with
each observation.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Mode = Literal["gpu", "requests", "combined"]
MODES: tuple[Mode, ...] = ("gpu", "requests", "combined")
# Tie-break when two signals ask for the same count: the design's primary signal first.
SIGNAL_ORDER = ("gpu", "inference_rate", "concurrency")


@dataclass(frozen=True)
class ScalingRule:
    """One HPA scaling policy: change by ``value`` pods or percent per ``period_s``."""

    kind: Literal["Pods", "Percent"]
    value: float
    period_s: float = 15.0


@dataclass(frozen=True)
class PolicySpec:
    """Targets, bounds and HPA behaviour of one policy.

    Args:
        mode: ``gpu`` (GPU utilization only), ``requests`` (inference rate only) or
            ``combined`` (GPU utilization and concurrency, inference rate without a GPU metric).
        target_percent: target GPU utilization; the inference rate aims at the same share
            of ``replica_capacity``.
        concurrency_target: requests in flight per replica.
        replica_capacity: rows per second one replica infers at saturation.
    """

    mode: Mode = "combined"
    min_replicas: int = 1
    max_replicas: int = 50
    target_percent: float = 80.0
    concurrency_target: float = 8.0
    replica_capacity: float = 500.0
    tolerance: float = 0.1
    scale_up_stabilization_s: float = 0.0
    scale_down_stabilization_s: float = 300.0
    scale_up: tuple[ScalingRule, ...] = (ScalingRule("Percent", 100), ScalingRule("Pods", 4))
    scale_down: tuple[ScalingRule, ...] = (ScalingRule("Percent", 100),)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need 1 <= min_replicas <= max_replicas")
        if min(self.target_percent, self.concurrency_target, self.replica_capacity) <= 0:
            raise ValueError("targets and capacity must be positive")
        if not 0 <= self.tolerance < 1:
            raise ValueError("tolerance must be in [0, 1)")


@dataclass(frozen=True)
class Observation:
    """What the policy sees at ``time_s``; None marks a metric that is missing.

    Args:
        replicas: the current replica count (starting replicas included).
        gpu_utilization: mean over the replicas' GPUs of the 5-minute average, in %.
        in_flight: requests queued or running, all replicas together.
        request_rate: requests (rows) per second, all replicas together.
        cache_hit_rate: share of requests answered from the prediction cache.
    """

    time_s: float
    replicas: int
    gpu_utilization: float | None = None
    in_flight: float | None = None
    request_rate: float | None = None
    cache_hit_rate: float = 0.0

    @property
    def inference_rate(self) -> float | None:
        """Rows per second that reach a model: requests less cache hits."""
        if self.request_rate is None:
            return None
        return self.request_rate * (1.0 - min(max(self.cache_hit_rate, 0.0), 1.0))


@dataclass(frozen=True)
class Decision:
    """One evaluation: the replicas it asks for and why.

    ``signal`` names what set ``desired``: a metric (``gpu``, ``concurrency``,
    ``inference_rate``), ``stabilization`` (the window held it), ``step_limit`` (a rate
    limit capped it), ``bounds`` (min/max replicas) or ``none`` (no metric at all: hold).
    """

    time_s: float
    current: int
    desired: int
    signal: str
    recommendations: dict[str, int]
    inputs: dict[str, float | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def ratio_rule(current: int, ratio: float, tolerance: float) -> int:
    """HPA's rule for a per-replica metric: ``ceil(current * ratio)`` outside the band."""
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(current * ratio)


def total_rule(current: int, total: float, per_replica: float, tolerance: float) -> int:
    """HPA's rule for a total (``AverageValue``) metric: ``ceil(total / per_replica)``."""
    if abs(1.0 - total / (per_replica * current)) <= tolerance:
        return current
    return math.ceil(total / per_replica)


class Autoscaler:
    """Turns observations into replica decisions with the HPA's arithmetic and memory.

    Call ``decide`` once per sync period (15 s in Kubernetes) with the replica count the
    previous decisions produced; the scaler remembers recommendations (stabilization) and
    scale events (rate limits).
    """

    def __init__(self, spec: PolicySpec) -> None:
        self.spec = spec
        self._recommendations: deque[tuple[float, int]] = deque()
        self._started = False
        self._ups: deque[tuple[float, int]] = deque()
        self._downs: deque[tuple[float, int]] = deque()

    def recommend(self, obs: Observation) -> dict[str, int]:
        """Each signal's replica count for ``obs`` (only the signals the mode reads)."""
        spec, cur = self.spec, max(obs.replicas, 1)
        out: dict[str, int] = {}
        gpu = obs.gpu_utilization if spec.mode in ("gpu", "combined") else None
        if gpu is not None:
            out["gpu"] = ratio_rule(cur, gpu / spec.target_percent, spec.tolerance)
        rate = obs.inference_rate
        if rate is not None and (
            spec.mode == "requests" or (spec.mode == "combined" and gpu is None)
        ):
            per_replica = spec.replica_capacity * spec.target_percent / 100.0
            out["inference_rate"] = total_rule(cur, rate, per_replica, spec.tolerance)
        if spec.mode == "combined" and obs.in_flight is not None:
            out["concurrency"] = total_rule(
                cur, obs.in_flight, spec.concurrency_target, spec.tolerance
            )
        return out

    def decide(self, obs: Observation) -> Decision:
        """The replica count for ``obs`` and the signal that set it."""
        spec, now, current = self.spec, obs.time_s, obs.replicas
        if not self._started:
            # As the HPA controller does when it first sees an autoscaler: the current count
            # opens the scale-down window, so a (re)start never scales down at once.
            self._recommendations.append((now, current))
            self._started = True
        recs = self.recommend(obs)
        inputs = self._inputs(obs)
        if current < spec.min_replicas or current > spec.max_replicas:
            desired = min(max(current, spec.min_replicas), spec.max_replicas)
            return self._record(Decision(now, current, desired, "bounds", recs, inputs))
        if not recs:
            return Decision(now, current, current, "none", recs, inputs)
        driver = max(SIGNAL_ORDER, key=lambda s: (recs.get(s, -1), -SIGNAL_ORDER.index(s)))
        raw = recs[driver]
        stabilized = self._stabilize(now, current, raw)
        desired, limit = self._limit(now, current, stabilized)
        signal = limit if desired != stabilized else driver
        if desired == stabilized and stabilized != raw:
            signal = "stabilization"
        return self._record(Decision(now, current, desired, signal, recs, inputs))

    def _inputs(self, obs: Observation) -> dict[str, float | None]:
        return {
            "gpu_utilization": obs.gpu_utilization,
            "in_flight": obs.in_flight,
            "request_rate": obs.request_rate,
            "cache_hit_rate": obs.cache_hit_rate,
            "inference_rate": obs.inference_rate,
        }

    def _stabilize(self, now: float, current: int, raw: int) -> int:
        """HPA: scale up to the lowest, down to the highest recommendation of each window."""
        spec = self.spec
        up_cut = now - spec.scale_up_stabilization_s
        down_cut = now - spec.scale_down_stabilization_s
        keep = now - max(spec.scale_up_stabilization_s, spec.scale_down_stabilization_s)
        while self._recommendations and self._recommendations[0][0] <= keep:
            self._recommendations.popleft()
        up = down = raw
        for ts, replicas in self._recommendations:
            if ts > up_cut:
                up = min(up, replicas)
            if ts > down_cut:
                down = max(down, replicas)
        self._recommendations.append((now, raw))
        return min(max(current, up), down)

    def _limit(self, now: float, current: int, desired: int) -> tuple[int, str]:
        """Cap ``desired`` by the rate limits and the bounds; also say which capped it."""
        spec = self.spec
        added = self._changed(self._ups, now, spec.scale_up + spec.scale_down)
        deleted = self._changed(self._downs, now, spec.scale_up + spec.scale_down)
        if desired > current:
            limit = max(_up_limit(r, current, added, deleted) for r in spec.scale_up)
            limit = max(limit, current)
            if spec.max_replicas > limit:
                return min(desired, limit), "step_limit"
            return min(desired, spec.max_replicas), "bounds"
        if desired < current:
            limit = min(_down_limit(r, current, added, deleted) for r in spec.scale_down)
            limit = min(limit, current)
            if spec.min_replicas < limit:
                return max(desired, limit), "step_limit"
            return max(desired, spec.min_replicas), "bounds"
        return desired, "none"

    @staticmethod
    def _changed(
        events: deque[tuple[float, int]], now: float, rules: tuple[ScalingRule, ...]
    ) -> dict[float, int]:
        """Replicas changed within each rule's period: ``{period_s: count}``."""
        longest = max(r.period_s for r in rules)
        while events and events[0][0] <= now - longest:
            events.popleft()
        return {r.period_s: sum(n for ts, n in events if ts > now - r.period_s) for r in rules}

    def _record(self, decision: Decision) -> Decision:
        change = decision.desired - decision.current
        if change > 0:
            self._ups.append((decision.time_s, change))
        elif change < 0:
            self._downs.append((decision.time_s, -change))
        return decision


def _up_limit(
    rule: ScalingRule, current: int, added: dict[float, int], deleted: dict[float, int]
) -> int:
    start = current - added[rule.period_s] + deleted[rule.period_s]
    if rule.kind == "Pods":
        return int(start + rule.value)
    return math.ceil(start * (1 + rule.value / 100.0))


def _down_limit(
    rule: ScalingRule, current: int, added: dict[float, int], deleted: dict[float, int]
) -> int:
    start = current + deleted[rule.period_s] - added[rule.period_s]
    if rule.kind == "Pods":
        return int(start - rule.value)
    return int(start * (1 - rule.value / 100.0))
