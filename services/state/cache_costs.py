"""The prediction cache's CPU accounting, outside the lookup code: metering one request's
cache work, and each model's decision and costs as metrics and for ``GET /models``.

The policy itself (what the costs decide) is ``services.state.cache_policy``; the meter
is ``services.state.cpu_meter``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from services.state.cache_metrics import cost_metrics
from services.state.cache_policy import AutoDisable, CacheState
from services.state.cpu_meter import CpuMeter

Compute = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Counts:
    """Rows one request looked up, wrote back and computed."""

    __slots__ = ("looked", "written", "computed")

    def __init__(self) -> None:
        self.looked = self.written = self.computed = 0


def metered(compute: Compute, meter: CpuMeter, counts: Counts) -> Compute:
    """``compute`` with its gateway-side CPU metered into ``meter`` and its rows counted."""

    def run(x: np.ndarray) -> Awaitable[np.ndarray]:
        counts.computed += len(x)
        return meter.run(compute(x))  # type: ignore[arg-type]

    return run


class CostReport:
    """Each model's cache decision and CPU figures: gauges, switch counts, a summary.

    Args:
        policy: the cache's auto-disable policy (its ``costs`` are the figures).
        clock: monotonic seconds (the gauges are refreshed at most once a second).
        registry: where the metrics go.
    """

    def __init__(
        self,
        policy: AutoDisable,
        clock: Callable[[], float],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self.metrics = cost_metrics(registry)
        self._exported_at: dict[str, float] = {}

    def switched(self, model: str, state: CacheState) -> None:
        """Count a switch (not the state a model starts in)."""
        reason = self._policy.reason(model)
        if reason != "start":
            self.metrics.switches.labels(model, state.value, reason).inc()

    def metered(self, model: str, own_cpu_s: float, counts: Counts, compute_cpu_s: float) -> None:
        """One metered request: its cache work and its computed rows."""
        costs = self._policy.costs
        if counts.computed:
            costs.add_compute(model, compute_cpu_s, counts.computed)
        if counts.looked:
            costs.add_lookup(model, own_cpu_s, counts.looked, counts.written)
            self.export(model)

    def export(self, model: str) -> None:
        """The model's costs and benefit as gauges (at most once a second)."""
        now = self._clock()
        if now - self._exported_at.get(model, -1e9) < 1.0:
            return
        self._exported_at[model] = now
        costs = self._policy.costs
        for gauge, value in (
            (self.metrics.spent_cpu, costs.spent_per_row(model)),
            (self.metrics.saved_cpu, costs.saved_per_hit(model)),
            (self.metrics.benefit, self._policy.benefit(model)),
        ):
            gauge.labels(model).set(float("nan") if value is None else value)

    def describe(self, model: str) -> dict[str, Any]:
        """The model's cache decision and the figures behind it (for ``GET /models``)."""
        policy, costs = self._policy, self._policy.costs

        def rounded(v: float | None, digits: int = 9) -> float | None:
            return None if v is None else round(v, digits)

        return {
            "state": policy.state(model).value,
            "reason": policy.reason(model),
            "hit_rate": rounded(policy.hit_rate(model), 4),
            "lookup_cpu_s_per_row": rounded(costs.spent_per_row(model)),
            "hit_saved_cpu_s": rounded(costs.saved_per_hit(model)),
            "cpu_benefit": rounded(policy.benefit(model), 3),
        }
