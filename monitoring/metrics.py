"""servekit's Prometheus metrics, kept cheap on the hot path.

BentoML's own metrics middleware is switched off (it costs ~1.5x in throughput; see
docs/design.md); these replace it. Label children are cached so a request pays a dict
lookup and an observe, and gauges that change often (queue depth, batcher counters) are
read at scrape time by the collectors of ``monitoring.collectors`` instead of being set
per request.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256)
LOAD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServingMetrics:
    """The gateway's and runner's metrics on their own registry.

    Args:
        registry: the Prometheus registry (a fresh one by default, so tests stay isolated).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.latency = Histogram(
            "servekit_request_latency_seconds",
            "Request latency inside the gateway, by model, version and route.",
            ["model", "version", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rows = Counter(
            "servekit_predicted_rows",
            "Rows predicted, by model and version.",
            ["model", "version"],
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "servekit_batch_rows",
            "Rows in each backend call the batcher made.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "servekit_batch_seconds",
            "Backend time of each batch.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "servekit_errors",
            "Requests answered with an error, by route, status and error class.",
            ["route", "status", "error"],
            registry=self.registry,
        )
        self.admin_auth_failures = _reason_counter(
            self.registry,
            "servekit_admin_auth_failures",
            "Admin requests refused for a missing or wrong token (invalid) or because their "
            "address failed too often (rate_limited).",
            ("invalid", "rate_limited"),
        )
        self.ingest_auth_failures = _reason_counter(
            self.registry,
            "servekit_ingest_auth_failures",
            "Ingest requests (/events, /feedback) refused for a missing or wrong token "
            "(invalid), because their address failed too often (rate_limited), or from a "
            "non-loopback client while no ingest token is configured (not_loopback).",
            ("invalid", "rate_limited", "not_loopback"),
        )
        self.feedback_rejected = _reason_counter(
            self.registry,
            "servekit_feedback_rejected",
            "Outcomes refused by POST /feedback: no signed_request_id (unsigned), a malformed "
            "or forged signature, expired, or counted already "
            "(duplicate).",
            ("unsigned", "malformed", "forged", "expired", "duplicate"),
        )
        self._children: dict[tuple[Any, ...], Any] = {}

    def observe_request(
        self, model: str, version: str, route: str, seconds: float, rows: int
    ) -> None:
        """One successful request."""
        key = ("req", model, version, route)
        child = self._children.get(key)
        if child is None:
            child = (self.latency.labels(model, version, route), self.rows.labels(model, version))
            self._children[key] = child
        child[0].observe(seconds)
        child[1].inc(rows)

    def observe_batch(self, key: Hashable, rows: int, seconds: float) -> None:
        """One backend call of ``rows`` rows (the batcher's ``on_batch`` hook)."""
        ckey = ("batch", key)
        child = self._children.get(ckey)
        if child is None:
            model, version = cast(tuple[str, str], key)
            child = (
                self.batch_rows.labels(model, version),
                self.batch_seconds.labels(model, version),
            )
            self._children[ckey] = child
        child[0].observe(rows)
        child[1].observe(seconds)

    def observe_error(self, route: str, status: int, error: str) -> None:
        """One request answered with an error."""
        self.errors.labels(route, str(status), error).inc()

    def observe_admin_auth_failure(self, reason: str) -> None:
        """One admin request refused by authentication ("invalid" or "rate_limited")."""
        self.admin_auth_failures.labels(reason).inc()

    def observe_ingest_auth_failure(self, reason: str) -> None:
        """One ingest request refused ("invalid", "rate_limited" or "not_loopback")."""
        self.ingest_auth_failures.labels(reason).inc()

    def observe_feedback_rejected(self, reason: str) -> None:
        """One outcome refused by ``POST /feedback``, by reason."""
        self.feedback_rejected.labels(reason).inc()

    def add_collector(self, collector: Collector) -> None:
        """Register a scrape-time collector (queue depth, pool state, ...)."""
        self.registry.register(collector)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)


def _reason_counter(
    registry: CollectorRegistry, name: str, help_: str, reasons: tuple[str, ...]
) -> Counter:
    """A counter labelled by ``reason``, every reason exported at 0 from the start."""
    counter = Counter(name, help_, ["reason"], registry=registry)
    for reason in reasons:
        counter.labels(reason)
    return counter
