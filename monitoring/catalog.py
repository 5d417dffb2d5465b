"""Every metric family servekit exports, in one place: name, type, labels, help, and the
condition under which it exists at all.

Dashboards, alert rules and autoscaling queries are checked against this catalog
(``monitoring.promql`` reads the names a PromQL expression uses), and a live gateway's
``/metrics`` is checked against it in turn (``exported_families``), so a renamed metric
breaks a test instead of a dashboard.

Names are the ones PromQL selects: a counter's name carries its ``_total`` suffix; a
histogram is stored under its base name and selected through ``_bucket``, ``_sum`` and
``_count``. prometheus_client also exports a ``<base>_created`` gauge beside each counter
and histogram child it creates; those belong to their family.

A family with ``condition=None`` is on every gateway's ``/metrics``. The others exist only
when their condition holds (``CONDITIONS`` says when); the split shape's runner serves no
``/metrics`` at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, cast, get_args

from prometheus_client.parser import text_string_to_metric_families

MetricType = Literal["counter", "gauge", "histogram"]

CONDITIONS: dict[str, str] = {
    "colocated": "the model pool runs in the gateway's process (SERVEKIT_SHAPE=colocated, "
    "the default); a split gateway exports none of these",
    "budget": "a multi-model pool with a memory budget (SERVEKIT_MULTIMODEL_MEMORY_BUDGET_BYTES)",
    "cache": "the prediction cache is on (SERVEKIT_CACHE_ENABLED, the default)",
    "rollout": "rollout routing is on (SERVEKIT_ROLLOUT_ENABLED, the default)",
    "gpu": "a colocated gateway that sees NVML and a GPU, with the sampler on "
    "(SERVEKIT_AUTOSCALE_GPU_SAMPLER); power only where the board reports it",
    "drift": "a drift report has run for the model version",
}


@dataclass(frozen=True)
class MetricFamily:
    """One exported metric family.

    Attributes:
        name: the name PromQL selects (counters end in ``_total``; histograms: base name).
        type: counter, gauge or histogram.
        labels: label names of its series (a histogram's ``le`` excluded).
        help: the HELP text as exported.
        condition: None when always exported, else a key of ``CONDITIONS``.
        source: the module that exports it.
    """

    name: str
    type: MetricType
    labels: tuple[str, ...]
    help: str
    condition: str | None
    source: str

    @property
    def base(self) -> str:
        """The name without a counter's ``_total`` (what ``_created`` is appended to)."""
        return self.name.removesuffix("_total") if self.type == "counter" else self.name

    @property
    def series(self) -> tuple[str, ...]:
        """The series names PromQL can select for this family."""
        if self.type == "histogram":
            return tuple(f"{self.name}{s}" for s in ("_bucket", "_sum", "_count", "_created"))
        if self.type == "counter":
            return (self.name, f"{self.base}_created")
        return (self.name,)


def _family(
    name: str,
    type_: str,
    labels: Iterable[str],
    help_: str,
    source: str,
    condition: str | None = None,
) -> MetricFamily:
    if type_ not in get_args(MetricType):
        raise ValueError(f"{name}: unknown metric type {type_!r}")
    return MetricFamily(name, cast(MetricType, type_), tuple(labels), help_, condition, source)


_METRICS = "monitoring.metrics"
_COLLECTORS = "monitoring.collectors"
_GPU = "monitoring.gpu"
_CACHE = "services.state.cache_metrics"
_FEATURES = "services.state.features"
_DRIFT = "drift reports"
_MV = ("model", "version")
_GPU_LABELS = ("gpu", "uuid", "name")

_GATEWAY = (
    _family("servekit_request_latency_seconds", "histogram", ("model", "version", "route"),
            "Request latency inside the gateway, by model, version and route.", _METRICS),
    _family("servekit_predicted_rows_total", "counter", _MV,
            "Rows predicted, by model and version.", _METRICS),
    _family("servekit_batch_rows", "histogram", _MV,
            "Rows in each backend call the batcher made.", _METRICS),
    _family("servekit_batch_seconds", "histogram", _MV, "Backend time of each batch.", _METRICS),
    _family("servekit_errors_total", "counter", ("route", "status", "error"),
            "Requests answered with an error, by route, status and error class.", _METRICS),
    _family("servekit_admin_auth_failures_total", "counter", ("reason",),
            "Admin requests refused for a missing or wrong token (invalid) or because their "
            "address failed too often (rate_limited).", _METRICS),
    _family("servekit_ingest_auth_failures_total", "counter", ("reason",),
            "Ingest requests (/events, /feedback) refused for a missing or wrong token "
            "(invalid), because their address failed too often (rate_limited), or from a "
            "non-loopback client while no ingest token is configured (not_loopback).",
            _METRICS),
    _family("servekit_feedback_rejected_total", "counter", ("reason",),
            "Outcomes refused by POST /feedback: no signed_request_id (unsigned), a malformed "
            "or forged signature, expired, or counted already "
            "(duplicate).", _METRICS),
)  # fmt: skip

_FEATURE_STORE = (
    _family("servekit_feature_missing_rows_total", "counter", ("view",),
            "Rows served defaults because the entity had no data.", _FEATURES),
    _family("servekit_feature_stale_rows_total", "counter", ("view",),
            "Rows served from data older than the view's max staleness.", _FEATURES),
    _family("servekit_feature_age_seconds", "gauge", ("view",),
            "Age of the view's data at the last read (batch: materialization; real-time: "
            "worker heartbeat).", _FEATURES),
    _family("servekit_feature_events_total", "counter", ("outcome",),
            "Events handled by the real-time worker (outcome: applied, duplicate, invalid).",
            _FEATURES),
)  # fmt: skip

_PREDICTION_CACHE = tuple(
    _family(name, type_, labels, help_, _CACHE, "cache")
    for name, type_, labels, help_ in (
        ("servekit_cache_hits_total", "counter", ("model",), "Cache lookups that hit."),
        ("servekit_cache_misses_total", "counter", ("model",), "Cache lookups that missed."),
        ("servekit_cache_bypasses_total", "counter", ("model", "reason"),
         "Rows not looked up (reason: disabled, off, breaker)."),
        ("servekit_cache_errors_total", "counter", ("model", "kind"),
         "Redis calls that failed or timed out, or values that did not decode."),
        ("servekit_cache_singleflight_joined_total", "counter", ("model",),
         "Rows that joined an identical computation already in flight."),
        ("servekit_cache_hit_rate", "gauge", ("model",),
         "Hit rate over the sliding window (probes while off)."),
        ("servekit_cache_enabled", "gauge", ("model",), "1 while the model's cache is on."),
        ("servekit_cache_breaker_state", "gauge", (), "0 closed, 1 open, 2 half-open."),
        ("servekit_cache_lookup_cpu_seconds", "gauge", ("model",),
         "CPU seconds the cache spends per looked-up row (hashing, encoding, Redis client)."),
        ("servekit_cache_hit_saved_cpu_seconds", "gauge", ("model",),
         "CPU seconds one hit saves: the runner's per row plus the gateway's own work."),
        ("servekit_cache_cpu_benefit", "gauge", ("model",),
         "Expected saved / spent CPU per looked-up row at the current hit rate."),
        ("servekit_cache_switches_total", "counter", ("model", "state", "reason"),
         "A model's cache turned on or off (reason: hit_rate, cost, probes)."),
    )
)  # fmt: skip

_POOL = tuple(
    _family(name, type_, labels, help_, _COLLECTORS, condition)
    for name, type_, labels, help_, condition in (
        ("servekit_queue_rows", "gauge", (), "Rows waiting in the batcher's queue.",
         "colocated"),
        ("servekit_inline_batches_total", "counter", (),
         "Backend calls run inline on the event loop (tiny models).", "colocated"),
        ("servekit_inline_stops_total", "counter", (),
         "Inline calls stopped by the watchdog past the inline deadline (re-run on a worker "
         "thread).", "colocated"),
        ("servekit_shed_requests_total", "counter", (),
         "Requests refused with 503 (queue full, or expected wait over the queueing budget).",
         "colocated"),
        ("servekit_admission_refusals_total", "counter", (*_MV, "reason"),
         "Requests refused at admission with 503, by reason (queue_full; budget: expected wait "
         "over the queueing budget; deadline: the client's deadline passes first; at the HTTP "
         "entry, model unknown: loop, the event loop lags past the budget; in_flight).",
         "colocated"),
        ("servekit_admission_drops_total", "counter", (*_MV, "reason"),
         "Queued requests answered 503 without running, by reason (budget: waited twice what "
         "they were admitted for; deadline: the client's passed; disconnected).", "colocated"),
        ("servekit_pool_budget_bytes", "gauge", (), "The pool's memory budget.", "budget"),
        ("servekit_pool_bytes", "gauge", ("kind",),
         "Bytes held by loaded models (resident) and reserved by loads in flight.", "colocated"),
        ("servekit_model_resident_bytes", "gauge", _MV,
         "Bytes each loaded model's session holds, as measured at load.", "colocated"),
        ("servekit_model_loads_total", "counter", ("outcome",),
         "Model loads by outcome (ok, error).", "colocated"),
        ("servekit_model_evictions_total", "counter", ("reason",),
         "Models unloaded, by reason (budget, idle).", "colocated"),
        ("servekit_model_load_seconds", "histogram", (),
         "Time to load a model: fetch the artifact and create its session.", "colocated"),
        ("servekit_model_requests_total", "counter", _MV, "Requests per model version.",
         "colocated"),
        ("servekit_model_rows_total", "counter", _MV, "Rows per model version.", "colocated"),
        ("servekit_model_errors_total", "counter", _MV, "Failed requests per model version.",
         "colocated"),
        ("servekit_model_timeouts_total", "counter", _MV, "Backend calls past their timeout.",
         "colocated"),
    )
)  # fmt: skip

_ROUTER = tuple(
    _family(name, type_, labels, help_, _COLLECTORS, "rollout")
    for name, type_, labels, help_ in (
        ("servekit_shadow_requests_total", "counter", ("result",), "Shadow requests by result."),
        ("servekit_shadow_queue_depth", "gauge", (), "Shadow jobs waiting."),
        ("servekit_prediction_log_entries_total", "counter", ("result",),
         "Prediction-stream entries by result."),
        ("servekit_prediction_log_buffered", "gauge", (), "Entries waiting to be written."),
        ("servekit_feedback_write_failures_total", "counter", (),
         "Feedback records that failed or were dropped."),
        ("servekit_rollout_percent", "gauge", ("mode", "model"),
         "Candidate share per model and mode."),
        ("servekit_assignments_total", "counter", ("model", "unit"),
         "Served requests by assignment unit (user: hashed by user id; request: anonymous)."),
    )
)  # fmt: skip

_GPUS = tuple(
    _family(name, "gauge", _GPU_LABELS, help_, _GPU, "gpu")
    for name, help_ in (
        ("servekit_gpu_utilization_percent", "GPU busy time, last sample (%)."),
        ("servekit_gpu_utilization_5m_percent",
         "GPU busy time, moving average over 300 s (%); the autoscaling signal."),
        ("servekit_gpu_memory_used_bytes", "GPU memory in use."),
        ("servekit_gpu_memory_total_bytes", "GPU memory in all."),
        ("servekit_gpu_power_watts", "GPU board power draw."),
    )
)  # fmt: skip

# Declared ahead of their exporter: the names and labels are the contract, the help text
# is the drift report's to word.
_DRIFT_REPORTS = tuple(
    _family(name, "gauge", labels, help_, _DRIFT, "drift")
    for name, labels, help_ in (
        ("servekit_drift_share", _MV, "Share of the model's input columns that drifted."),
        ("servekit_drift_detected", _MV, "1 when the last drift report found drift."),
        ("servekit_drift_column_score", (*_MV, "column"),
         "Drift score of each input column in the last report."),
        ("servekit_drift_report_age_seconds", _MV, "Seconds since the last drift report."),
    )
)  # fmt: skip

CATALOG: tuple[MetricFamily, ...] = (
    *_GATEWAY,
    *_FEATURE_STORE,
    *_PREDICTION_CACHE,
    *_POOL,
    *_ROUTER,
    *_GPUS,
    *_DRIFT_REPORTS,
)

_BY_NAME = {f.name: f for f in CATALOG}
_BY_SERIES = {s: f for f in CATALOG for s in f.series}


def family(name: str) -> MetricFamily:
    """The catalog entry named ``name``; KeyError when servekit exports no such family."""
    return _BY_NAME[name]


def for_series(series: str) -> MetricFamily | None:
    """The family a series name belongs to (``x_bucket`` -> histogram ``x``), or None."""
    return _BY_SERIES.get(series)


def by_condition() -> dict[str | None, list[str]]:
    """Family names grouped by condition (None: always exported)."""
    out: dict[str | None, list[str]] = {}
    for f in CATALOG:
        out.setdefault(f.condition, []).append(f.name)
    return out


@dataclass
class ExportedFamily:
    """One family as a ``/metrics`` text exports it, named as the catalog names it."""

    name: str
    type: str
    help: str
    label_sets: set[tuple[str, ...]] = field(default_factory=set)
    samples: int = 0


def exported_families(text: str) -> dict[str, ExportedFamily]:
    """The families of a Prometheus text exposition, keyed by their catalog-style name.

    Counters get their ``_total`` back (the parser strips it) and the ``_created`` gauges
    of counters and histograms are folded into their family. Label sets exclude ``le``.
    """
    parsed = list(text_string_to_metric_families(text))
    owners = {f.name for f in parsed if f.type in ("counter", "histogram")}
    out: dict[str, ExportedFamily] = {}
    for f in parsed:
        if f.type == "gauge" and f.name.endswith("_created") and f.name[:-8] in owners:
            continue
        name = f"{f.name}_total" if f.type == "counter" else f.name
        exported = out.setdefault(name, ExportedFamily(name, f.type, f.documentation))
        for sample in f.samples:
            exported.samples += 1
            exported.label_sets.add(tuple(sorted(k for k in sample.labels if k != "le")))
    return out
