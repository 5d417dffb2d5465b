"""Scrape-time Prometheus collectors: what changes on every request (queue depth, counters
of the batcher, the pool and the router) is read when ``/metrics`` is scraped, so the
request path pays nothing for it.

- ``PoolCollector``: everything about one model pool: the batcher's queue, inline calls
  and shed requests; the memory books; loads and evictions; requests, rows, errors and
  timeouts per model version.
- ``RouterCollector``: rollout routing: shadow requests, the prediction log, feedback
  writes, the candidate's share per model and requests per assignment unit.

Register them with ``ServingMetrics.add_collector``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from monitoring.metrics import LOAD_BUCKETS

if TYPE_CHECKING:
    from services.rollout.follower import RolloutFollower
    from services.rollout.prediction_log import PredictionLog
    from services.rollout.routing import TrafficRouter
    from services.runner.pool import ModelPool


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[])
    family.add_metric([], value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[])
    family.add_metric([], value)
    return family


def _admission(stats: Any) -> Iterator[Any]:
    """The batcher's admission: refusals and drops per model version and reason."""
    for name, doc, counts in (
        ("servekit_admission_refusals", _REFUSALS_HELP, stats.refused),
        ("servekit_admission_drops", _DROPS_HELP, stats.dropped),
    ):
        c = CounterMetricFamily(name, doc, labels=["model", "version", "reason"])
        for labels, n in sorted(counts.items()):
            c.add_metric(list(labels), n)
        yield c


_REFUSALS_HELP = (
    "Requests refused at admission with 503, by reason (queue_full; budget: expected wait "
    "over the queueing budget; deadline: the client's deadline passes first; at the HTTP "
    "entry, model unknown: loop, the event loop lags past the budget; in_flight)."
)
_DROPS_HELP = (
    "Queued requests answered 503 without running, by reason (budget: waited twice what "
    "they were admitted for; deadline: the client's passed; disconnected)."
)


class PoolCollector(Collector):
    """A model pool's metrics, computed at scrape time.

    Args:
        pool: the pool (its batcher, memory books and counters are read).
    """

    def __init__(self, pool: ModelPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        yield from self._batcher()
        yield from self._memory()
        yield from self._loads()
        yield from self._versions()

    def describe(self) -> Iterator[Any]:
        return iter(())

    def _batcher(self) -> Iterator[Any]:
        b = self.pool.batcher
        yield _gauge("servekit_queue_rows", "Rows waiting in the batcher's queue.", b.queued_rows)
        yield _counter(
            "servekit_inline_batches",
            "Backend calls run inline on the event loop (tiny models).",
            b.stats.inline_batches,
        )
        yield _counter(
            "servekit_inline_stops",
            "Inline calls stopped by the watchdog past the inline deadline (re-run on a "
            "worker thread).",
            b.stats.inline_stops,
        )
        yield _counter(
            "servekit_shed_requests",
            "Requests refused with 503 (queue full, or expected wait over the queueing budget).",
            b.stats.shed,
        )
        yield from _admission(b.admission.stats)

    def _memory(self) -> Iterator[Any]:
        mem = self.pool.budget
        if mem.budget is not None:
            g = GaugeMetricFamily("servekit_pool_budget_bytes", "The pool's memory budget.")
            g.add_metric([], mem.budget)
            yield g
        g = GaugeMetricFamily(
            "servekit_pool_bytes",
            "Bytes held by loaded models (resident) and reserved by loads in flight.",
            labels=["kind"],
        )
        g.add_metric(["resident"], mem.resident_total)
        g.add_metric(["reserved"], mem.reserved_total)
        yield g
        g = GaugeMetricFamily(
            "servekit_model_resident_bytes",
            "Bytes each loaded model's session holds, as measured at load.",
            labels=["model", "version"],
        )
        for (model, version), lm in self.pool.loaded().items():
            g.add_metric([model, version], lm.resident_bytes)
        yield g

    def _loads(self) -> Iterator[Any]:
        stats = self.pool.stats
        c = CounterMetricFamily(
            "servekit_model_loads", "Model loads by outcome (ok, error).", labels=["outcome"]
        )
        for outcome, n in sorted(stats.loads.items()):
            c.add_metric([outcome], n)
        yield c
        c = CounterMetricFamily(
            "servekit_model_evictions",
            "Models unloaded, by reason (budget, idle).",
            labels=["reason"],
        )
        for reason, n in sorted(stats.evictions.items()):
            c.add_metric([reason], n)
        yield c
        cumulative, running = [], 0
        for le, n in zip(LOAD_BUCKETS, stats.load_buckets, strict=True):
            running += n
            cumulative.append((repr(le), running))
        cumulative.append(("+Inf", stats.load_count))
        yield HistogramMetricFamily(
            "servekit_model_load_seconds",
            "Time to load a model: fetch the artifact and create its session.",
            buckets=cumulative,
            sum_value=stats.load_sum,
        )

    def _versions(self) -> Iterator[Any]:
        stats = self.pool.stats
        for name, doc, counter in (
            ("servekit_model_requests", "Requests per model version.", stats.requests),
            ("servekit_model_rows", "Rows per model version.", stats.rows),
            ("servekit_model_errors", "Failed requests per model version.", stats.errors),
            ("servekit_model_timeouts", "Backend calls past their timeout.", stats.timeouts),
        ):
            c = CounterMetricFamily(name, doc, labels=["model", "version"])
            for (model, version), n in sorted(counter.items()):
                c.add_metric([model, version], n)
            yield c


class RouterCollector(Collector):
    """Rollout routing's metrics, computed at scrape time.

    Args:
        router: the traffic router (shadow requests, feedback writes, assignment units).
        log: the prediction log (entries appended, written, dropped, buffered).
        follower: the rollout follower (each model's mode and candidate share).
    """

    def __init__(
        self, router: TrafficRouter, log: PredictionLog, follower: RolloutFollower
    ) -> None:
        self.router = router
        self.log = log
        self.follower = follower

    def collect(self) -> Iterator[Any]:
        router, log = self.router, self.log
        c = CounterMetricFamily(
            "servekit_shadow_requests", "Shadow requests by result.", labels=["result"]
        )
        for name in ("sent", "dropped", "completed", "errors", "timeouts"):
            c.add_metric([name], float(getattr(router, f"shadow_{name}")))
        yield c
        yield _gauge("servekit_shadow_queue_depth", "Shadow jobs waiting.", router.shadow_queued)
        c = CounterMetricFamily(
            "servekit_prediction_log_entries",
            "Prediction-stream entries by result.",
            labels=["result"],
        )
        for name in ("appended", "written", "dropped"):
            c.add_metric([name], float(getattr(log, name)))
        yield c
        yield _gauge(
            "servekit_prediction_log_buffered", "Entries waiting to be written.", log.buffered
        )
        yield _counter(
            "servekit_feedback_write_failures",
            "Feedback records that failed or were dropped.",
            float(router.feedback_errors + router.feedback_dropped),
        )
        g = GaugeMetricFamily(
            "servekit_rollout_percent",
            "Candidate share per model and mode.",
            labels=["mode", "model"],
        )
        for model, state in self.follower.states.items():
            g.add_metric([state.mode, model], float(state.percent))
        yield g
        c = CounterMetricFamily(
            "servekit_assignments",
            "Served requests by assignment unit (user: hashed by user id; request: anonymous).",
            labels=["model", "unit"],
        )
        for (model, unit), n in sorted(router.assignments.items()):
            c.add_metric([model, unit], float(n))
        yield c

    def describe(self) -> Iterator[Any]:
        return iter(())
