"""The prediction cache's Prometheus metrics: lookups, state and breaker
(:class:`CacheMetrics`), and the CPU-cost policy's figures and switches (:class:`CostMetrics`)."""

from __future__ import annotations

import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class CacheMetrics:
    """The cache's Prometheus metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.hits = Counter(
            "servekit_cache_hits", "Cache lookups that hit.", ["model"], registry=registry
        )
        self.misses = Counter(
            "servekit_cache_misses", "Cache lookups that missed.", ["model"], registry=registry
        )
        self.bypasses = Counter(
            "servekit_cache_bypasses",
            "Rows not looked up (reason: disabled, off, breaker).",
            ["model", "reason"],
            registry=registry,
        )
        self.errors = Counter(
            "servekit_cache_errors",
            "Redis calls that failed or timed out, or values that did not decode.",
            ["model", "kind"],
            registry=registry,
        )
        self.joined = Counter(
            "servekit_cache_singleflight_joined",
            "Rows that joined an identical computation already in flight.",
            ["model"],
            registry=registry,
        )
        self.hit_rate = Gauge(
            "servekit_cache_hit_rate",
            "Hit rate over the sliding window (probes while off).",
            ["model"],
            registry=registry,
        )
        self.state = Gauge(
            "servekit_cache_enabled",
            "1 while the model's cache is on.",
            ["model"],
            registry=registry,
        )
        self.breaker = Gauge(
            "servekit_cache_breaker_state",
            "0 closed, 1 open, 2 half-open.",
            registry=registry,
        )


_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, CacheMetrics] = weakref.WeakKeyDictionary()


def cache_metrics(registry: CollectorRegistry | None = None) -> CacheMetrics:
    """The cache metrics of ``registry`` (default: prometheus_client's), created once."""
    registry = REGISTRY if registry is None else registry
    if registry not in _METRICS:
        _METRICS[registry] = CacheMetrics(registry)
    return _METRICS[registry]


class CostMetrics:
    """The cost policy's Prometheus metrics on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.spent_cpu = Gauge(
            "servekit_cache_lookup_cpu_seconds",
            "CPU seconds the cache spends per looked-up row (hashing, encoding, Redis client).",
            ["model"],
            registry=registry,
        )
        self.saved_cpu = Gauge(
            "servekit_cache_hit_saved_cpu_seconds",
            "CPU seconds one hit saves: the runner's per row plus the gateway's own work.",
            ["model"],
            registry=registry,
        )
        self.benefit = Gauge(
            "servekit_cache_cpu_benefit",
            "Expected saved / spent CPU per looked-up row at the current hit rate.",
            ["model"],
            registry=registry,
        )
        self.switches = Counter(
            "servekit_cache_switches",
            "A model's cache turned on or off (reason: hit_rate, cost, probes).",
            ["model", "state", "reason"],
            registry=registry,
        )


_COST_METRICS: weakref.WeakKeyDictionary[CollectorRegistry, CostMetrics] = (
    weakref.WeakKeyDictionary()
)


def cost_metrics(registry: CollectorRegistry | None = None) -> CostMetrics:
    """The cost metrics of ``registry`` (default: prometheus_client's), created once."""
    registry = REGISTRY if registry is None else registry
    if registry not in _COST_METRICS:
        _COST_METRICS[registry] = CostMetrics(registry)
    return _COST_METRICS[registry]
