"""Refusal at the ASGI entry: an inference request the gateway will refuse anyway is
answered 503 before its body is read or parsed.

Admission in the batcher (``services.runner.admission``) sees a request only after the
event loop has read it, parsed its JSON, validated and encoded it. ``IngressGate.check``
runs first and refuses, with Retry-After, when

- the request names its model in the path (``/v2/models/{m}/infer``) and a lane of that
  model is over its budget (``reason="budget"``): what admission would refuse, earlier;
- (opt-in) this worker holds ``max_in_flight`` inference requests (``reason="in_flight"``):
  a set number, or ``"lanes"``: the most the lanes hold within their budgets (per lane,
  the rows admission lets queue plus one batch per call slot running,
  ``admission.lane_capacity``) plus ``headroom`` for requests on their way to or from a
  lane; 0 refuses them all (a worker draining);
- (opt-in) the event loop has lagged past ``lag_s`` twice in a row: a request read now has
  already waited that long (``reason="loop"``). A task sleeps ``interval_s`` and measures
  how late it wakes; a wake-up that is due and has not come counts as a late one. One late
  turn is not enough: a single stall (the process descheduled, a collection) would
  otherwise refuse every request that arrived during it. ``"lanes"``: the least any lane
  tolerates, its budget or one call where a call outlasts it (``admission.lane_tolerance``).

Why the last two are off by default: a refusal here still costs the server's HTTP parsing
and the response, over half of what answering a tiny model's request costs (measured:
README, overload). When the HTTP front is the bottleneck, refusing in the process takes
the CPU that answering needed and goodput falls further than without refusing; the limit
that helps there sits in front of the gateway (a proxy's concurrency limit) or adds
capacity (workers, replicas).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Callable, Iterable
from typing import Literal

from services.errors import OverloadedError
from services.runner.admission import Admission, lane_capacity, lane_tolerance, over_budget
from services.runner.lanes import Lane


class IngressGate:
    """This worker's refusals at the HTTP entry.

    Args:
        lanes: the batcher's lanes now (empty before the first request).
        admission: the batcher's admission, which counts every refusal
            (``servekit_admission_refusals_total``; model "" where it is not known yet).
        budget_s: the queueing budget assumed before any lane has one (0: none).
        lag_s: refuse while the event loop lags more than this ("lanes": the least the
            lanes tolerate; 0: never).
        max_in_flight: most inference requests in flight in this worker ("lanes": derived
            from the lanes; 0: refuse them all, a worker draining; None: no limit).
        headroom: what the derived in-flight limit adds to the lanes' capacity.
        interval_s: how often the loop's lag is sampled.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        lanes: Callable[[], Iterable[Lane]],
        admission: Admission,
        *,
        budget_s: float,
        lag_s: float | Literal["lanes"] = 0.0,
        max_in_flight: int | Literal["lanes"] | None = None,
        headroom: int = 64,
        interval_s: float = 0.01,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._lanes = lanes
        self._admission = admission
        self.budget_s = budget_s
        self.lag_limit_s = lag_s
        self.max_in_flight = max_in_flight
        self.headroom = headroom
        self.interval_s = interval_s
        self._clock = clock
        self.in_flight = 0
        self.lag_s = 0.0  # how late the sampler woke last time
        self.prev_lag_s = 0.0  # ... and the time before
        self._due = math.inf  # when the sampler should wake next
        self._task: asyncio.Task[None] | None = None
        self.refused: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        """Start sampling the loop's lag (inside the server's loop; once)."""
        if self._task is None and self.lag_limit_s != 0:
            self._task = asyncio.get_running_loop().create_task(self._sample())

    async def _sample(self) -> None:
        clock, interval = self._clock, self.interval_s
        while True:
            self._due = clock() + interval
            await asyncio.sleep(interval)
            self.prev_lag_s, self.lag_s = self.lag_s, max(0.0, clock() - self._due)

    def lag(self) -> float:
        """The loop's sustained lag: the lesser of two readings in a row (the last two
        samples, or the last and how late the due one is now)."""
        late_now = self._clock() - self._due
        return max(min(self.prev_lag_s, self.lag_s), min(self.lag_s, late_now))

    def lag_limit(self) -> float:
        """The loop lag past which requests are refused now (0: none)."""
        if self.lag_limit_s != "lanes":
            return self.lag_limit_s
        tolerances = [t for lane in self._lanes() if (t := lane_tolerance(lane)) is not None]
        return min(tolerances) if tolerances else self.budget_s

    def limit(self) -> int | None:
        """The in-flight limit now (0: every inference request is refused; None: none)."""
        if self.max_in_flight != "lanes":
            return self.max_in_flight
        return self.headroom + sum(lane_capacity(lane) for lane in self._lanes())

    def check(self, model: str | None = None) -> None:
        """Raise ``OverloadedError`` if a request arriving now (for ``model``, when the
        path names it) is to be refused; else count it in flight (``leave`` when done)."""
        if (limit_s := self.lag_limit()) and (lag := self.lag()) > limit_s:
            self._refuse("loop", f"the server's event loop lags {lag:.3f} s", lag)
        limit = self.limit()
        if limit is not None and self.in_flight >= limit:
            self._refuse("in_flight", f"{self.in_flight} requests are in flight", 0.0)
        if model is not None:
            for lane in self._lanes():
                group = lane.group
                if isinstance(group, tuple) and group[0] == model and over_budget(lane):
                    self.refused["budget"] += 1
                    self._admission.refuse(lane, "budget", "its queue is over its budget")
        self.in_flight += 1

    def leave(self) -> None:
        """One request counted by ``check`` was answered."""
        self.in_flight -= 1

    def _refuse(self, reason: str, why: str, wait_s: float) -> None:
        self.refused[reason] += 1
        self._admission.count_entry_refusal(reason)
        raise OverloadedError(
            f"the gateway is overloaded: {why}; retry later",
            retry_after=max(1, math.ceil(wait_s)),
            reason=reason,
        )
