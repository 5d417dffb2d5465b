"""Drift results on the gateway's ``/metrics``, through Redis.

The drift flow exports each report's verdict as a small JSON in one Redis hash
(``services.state.keys.drift_results_key``, a field per model version). Every gateway
reads that hash in the background (``DriftCollector.start``) and serves what it read last
when ``/metrics`` is scraped: the scrape and the request path never touch Redis, and the
gateway never imports Evidently or pandas. Gauges, labelled ``model`` and ``version``:

- ``servekit_drift_share``: share of the judged columns that drifted;
- ``servekit_drift_detected``: 1 when the report found drift;
- ``servekit_drift_column_score{column}``: each column's drift score;
- ``servekit_drift_report_age_seconds``: how old the report is.

Results older than ``SERVEKIT_MONITORING_RESULT_TTL_S`` are dropped by the flow's next
export and are not served by the gateways.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis.asyncio as aioredis
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from services.state.keys import drift_field, drift_results_key

if TYPE_CHECKING:
    from monitoring.drift import DriftResult
    from services.settings import MonitoringSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DriftSummary:
    """What a gateway shows of one report."""

    model: str
    version: str
    drifted_share: float
    drift_detected: bool
    created: float
    columns: dict[str, float] = field(default_factory=dict)
    location: str | None = None

    @classmethod
    def of(cls, result: DriftResult) -> DriftSummary:
        """The summary of a report's result."""
        return cls(
            model=result.model,
            version=result.version,
            drifted_share=float(result.drifted_share or 0.0),
            drift_detected=result.drift_detected,
            created=result.created,
            columns={name: float(c.score) for name, c in result.columns.items()},
            location=result.location,
        )

    def to_json(self) -> bytes:
        """The exported JSON."""
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> DriftSummary:
        """Read an exported JSON; ``ValueError`` when it is not one."""
        try:
            data = orjson.loads(raw)
            return cls(
                model=str(data["model"]),
                version=str(data["version"]),
                drifted_share=float(data["drifted_share"]),
                drift_detected=bool(data["drift_detected"]),
                created=float(data["created"]),
                columns={str(k): float(v) for k, v in dict(data.get("columns", {})).items()},
                location=data.get("location"),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a drift summary: {exc}") from exc


async def export_summary(
    client: aioredis.Redis, summary: DriftSummary, *, ttl_s: float, now: float | None = None
) -> int:
    """Write ``summary`` as its version's latest result and drop results older than
    ``ttl_s``; returns how many were dropped."""
    key = drift_results_key()
    await client.hset(key, drift_field(summary.model, summary.version), summary.to_json())
    oldest = (time.time() if now is None else now) - ttl_s
    stale = [
        name
        for name, raw in (await client.hgetall(key)).items()  # type: ignore[misc]
        if _created(raw) < oldest
    ]
    if stale:
        await client.hdel(key, *stale)
    return len(stale)


def _created(raw: bytes | str) -> float:
    try:
        return DriftSummary.from_json(raw).created
    except ValueError:
        return -math.inf  # unreadable: dropped as stale


async def read_summaries(
    client: aioredis.Redis, *, ttl_s: float, now: float | None = None
) -> list[DriftSummary]:
    """Every exported result younger than ``ttl_s``, sorted by model and version."""
    oldest = (time.time() if now is None else now) - ttl_s
    out = []
    for raw in (await client.hgetall(drift_results_key())).values():  # type: ignore[misc]
        try:
            summary = DriftSummary.from_json(raw)
        except ValueError:
            continue
        if summary.created >= oldest:
            out.append(summary)
    return sorted(out, key=lambda s: (s.model, s.version))


class DriftCollector(Collector):
    """Serves the exported drift results as gauges; a background task refreshes them.

    Args:
        client: an asyncio Redis client with a short timeout (the gateway's background
            client).
        settings: the monitoring settings (refresh interval, result lifetime).
        clock: seconds since the epoch (the reports' age).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        settings: MonitoringSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._client = client
        self._refresh_s = settings.metrics_refresh_s
        self._ttl_s = settings.result_ttl_s
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.summaries: list[DriftSummary] = []
        """What the last successful read found."""

    def start(self) -> None:
        """Start the background refresh (call from inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="servekit-drift-metrics"
            )

    async def stop(self) -> None:
        """Stop the background refresh."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def refresh(self) -> None:
        """Read the exported results now (fail-open: a Redis error keeps the last ones)."""
        try:
            self.summaries = await read_summaries(
                self._client, ttl_s=self._ttl_s, now=self._clock()
            )
            self._failures = 0
        except (RedisError, OSError) as exc:
            self._failures += 1
            if self._failures in (1, 10) or self._failures % 100 == 0:
                logger.warning("drift results unreadable (%d in a row): %s", self._failures, exc)

    async def _run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._refresh_s)

    def collect(self) -> Iterator[Any]:
        labels = ["model", "version"]
        share = GaugeMetricFamily(
            "servekit_drift_share", "Share of the judged columns that drifted.", labels=labels
        )
        detected = GaugeMetricFamily(
            "servekit_drift_detected", "1 when the latest drift report found drift.", labels=labels
        )
        age = GaugeMetricFamily(
            "servekit_drift_report_age_seconds",
            "Age of the latest drift report.",
            labels=labels,
        )
        scores = GaugeMetricFamily(
            "servekit_drift_column_score",
            "Drift score of each column in the latest report (a distance, or a p-value for "
            "small references).",
            labels=[*labels, "column"],
        )
        now = self._clock()
        for s in self.summaries:
            share.add_metric([s.model, s.version], s.drifted_share)
            detected.add_metric([s.model, s.version], 1.0 if s.drift_detected else 0.0)
            age.add_metric([s.model, s.version], max(0.0, now - s.created))
            for column, score in sorted(s.columns.items()):
                scores.add_metric([s.model, s.version, column], score)
        yield from (share, detected, scores, age)

    def describe(self) -> Iterator[Any]:
        return iter(())
