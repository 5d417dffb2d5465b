"""The metric catalog against what servekit really exports: every exporter run in process
(each family with samples, so its labels show), and a live gateway's ``/metrics`` after a
little traffic of every kind."""

from __future__ import annotations

import json
import time
import types
import urllib.error
import urllib.request
from typing import Any

from prometheus_client import CollectorRegistry

from monitoring import catalog, promql
from monitoring.catalog import CATALOG, CONDITIONS, ExportedFamily, exported_families
from monitoring.collectors import PoolCollector, RouterCollector
from monitoring.gpu import GpuDevice, GpuReading, GpuSampler
from monitoring.metrics import LOAD_BUCKETS, ServingMetrics
from services.state.cache import cache_metrics
from services.state.cache_metrics import cost_metrics
from services.state.features import feature_metrics
from tests.conftest import INGEST, ServerProcess

# What the session's `gateway` fixture runs with: colocated, cache and rollouts on.
GATEWAY_CONDITIONS = {None, "colocated", "cache", "rollout"}
RECORD = {"amount": 120.0, "merchant_category": "crypto", "hour": 2, "channel": "online"}


def mismatches(exported: dict[str, ExportedFamily], *, help_text: bool = True) -> list[str]:
    """What in ``exported`` the catalog does not describe (name, type, labels, help)."""
    problems = []
    for name, got in sorted(exported.items()):
        if not name.startswith("servekit_"):
            continue
        try:
            want = catalog.family(name)
        except KeyError:
            problems.append(f"{name}: exported but not in the catalog")
            continue
        if got.type != want.type:
            problems.append(f"{name}: exported as {got.type}, catalog says {want.type}")
        for labels in got.label_sets:
            if set(labels) != set(want.labels):
                problems.append(f"{name}: labels {labels}, catalog says {want.labels}")
        if help_text and want.condition != "drift" and got.help != want.help:
            problems.append(f"{name}: help {got.help!r}, catalog says {want.help!r}")
    return problems


# -- the catalog itself ------------------------------------------------------------------


def test_catalog_is_well_formed() -> None:
    names = [f.name for f in CATALOG]
    assert len(names) == len(set(names))
    series = [s for f in CATALOG for s in f.series]
    assert len(series) == len(set(series)), "two families claim one series name"
    for f in CATALOG:
        assert f.name.startswith("servekit_"), f
        assert f.type in ("counter", "gauge", "histogram"), f
        assert f.condition is None or f.condition in CONDITIONS, f
        assert f.name.endswith("_total") == (f.type == "counter"), f
        assert "le" not in f.labels and f.help and f.source, f
    assert set(catalog.by_condition()) == {None, *CONDITIONS}


def test_drift_families_are_declared_as_the_drift_report_names_them() -> None:
    drift = {f.name: f.labels for f in CATALOG if f.condition == "drift"}
    assert drift == {
        "servekit_drift_share": ("model", "version"),
        "servekit_drift_detected": ("model", "version"),
        "servekit_drift_column_score": ("model", "version", "column"),
        "servekit_drift_report_age_seconds": ("model", "version"),
    }


def test_series_names_resolve_to_their_family() -> None:
    latency = catalog.family("servekit_request_latency_seconds")
    for suffix in ("_bucket", "_sum", "_count", "_created"):
        assert catalog.for_series(f"servekit_request_latency_seconds{suffix}") is latency
    errors = catalog.family("servekit_errors_total")
    assert catalog.for_series("servekit_errors_total") is errors
    assert catalog.for_series("servekit_errors_created") is errors
    assert catalog.for_series("servekit_errors") is None
    assert catalog.for_series("servekit_request_latency_seconds") is None  # no such series
    assert catalog.for_series("servekit_queue_rows") is catalog.family("servekit_queue_rows")


def test_promql_names_skip_functions_keywords_labels_and_durations() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, model) (rate(servekit_batch_rows_bucket"
        '{model=~"a|b", version!="x{y}"}[5m] offset 1h))) / ignoring (version) group_left '
        'sum without (job) (increase(servekit_errors_total{status=~"5.."}[1h:5m]))'
        ' > bool 0 and on (model) absent(up) or label_replace(vector(1), "dst", "$1", "s", "(.*)")'
    )
    names = promql.promql_names(expr)
    assert names.series == {
        "servekit_batch_rows_bucket": {"model", "version"},
        "servekit_errors_total": {"status"},
        "up": set(),
    }
    assert names.grouping == {"le", "model", "version", "job"}
    assert promql.expression_problems("sum by (model) (rate(servekit_errors_total[5m]))") == [
        "grouping by 'model', which no series here has"
    ]
    assert promql.expression_problems('servekit_errors_total{model="x"} + servekit_nope') == [
        "servekit_errors_total: no label 'model'",
        "servekit_nope: not in the catalog nor the external allow-list",
    ]
    assert promql.expression_problems("rate(servekit_request_latency_seconds[5m])") == [
        "servekit_request_latency_seconds: not in the catalog nor the external allow-list"
    ]  # a histogram is read through _bucket, _sum and _count
    dcgm = {"DCGM_FI_DEV_GPU_UTIL": {"gpu", "pod"}}
    assert promql.expression_problems("avg by (pod) (DCGM_FI_DEV_GPU_UTIL)", dcgm) == []
    assert promql.expression_problems("job:x:ratio > 0", recorded={"job:x:ratio"}) == []


def test_the_autoscaling_queries_read_exported_series() -> None:
    """KEDA's triggers and prometheus-adapter's rule, against the catalog (their scrape
    runs in Kubernetes, whose service discovery adds namespace and pod)."""
    from tests.monitoring.test_autoscaling_promql import shipped_queries

    dcgm = {"DCGM_FI_DEV_GPU_UTIL": {"gpu", "UUID", "pod", "namespace"}}
    found = {
        name: promql.expression_problems(
            expr, dcgm, target_labels={"job", "instance", "namespace", "pod"}
        )
        for name, expr in shipped_queries().items()
    }
    assert {k: v for k, v in found.items() if v} == {}
    assert len(found) >= 4


# -- every exporter, in process -----------------------------------------------------------


def _fake_pool() -> Any:
    """What PoolCollector reads, with one entry in every counter (so labels show)."""
    mv = ("fraud", "1")
    stats = types.SimpleNamespace(
        loads={"ok": 2, "error": 1},
        evictions={"budget": 1},
        load_buckets=[1] * len(LOAD_BUCKETS),
        load_count=len(LOAD_BUCKETS),
        load_sum=3.0,
        requests={mv: 5},
        rows={mv: 9},
        errors={mv: 1},
        timeouts={mv: 1},
    )
    batch_stats = types.SimpleNamespace(inline_batches=3, inline_stops=1, shed=2)
    admission = types.SimpleNamespace(
        stats=types.SimpleNamespace(
            refused={("fraud", "1", "budget"): 2}, dropped={("fraud", "1", "deadline"): 1}
        )
    )
    return types.SimpleNamespace(
        batcher=types.SimpleNamespace(queued_rows=4, stats=batch_stats, admission=admission),
        budget=types.SimpleNamespace(budget=10**6, resident_total=5000, reserved_total=0),
        loaded=lambda: {mv: types.SimpleNamespace(resident_bytes=5000)},
        stats=stats,
    )


def _fake_router() -> tuple[Any, Any, Any]:
    router = types.SimpleNamespace(
        **{f"shadow_{k}": 1 for k in ("sent", "dropped", "completed", "errors", "timeouts")},
        shadow_queued=0,
        feedback_errors=0,
        feedback_dropped=0,
        assignments={("fraud", "user"): 3, ("fraud", "request"): 1},
    )
    log = types.SimpleNamespace(appended=1, written=1, dropped=0, buffered=0)
    state = types.SimpleNamespace(mode="canary", percent=5.0)
    return router, log, types.SimpleNamespace(states={"fraud": state})


class _OneGpu:
    def devices(self) -> list[GpuDevice]:
        return [GpuDevice(0, "GPU-0a", "NVIDIA H100")]

    def read(self, index: int) -> GpuReading:
        return GpuReading(50.0, 1e9, 8e10, 300.0)

    def close(self) -> None:
        pass


def _touch_children(*groups: object) -> None:
    """One child per labelled client metric, labelled as the code declares it."""
    for group in groups:
        for metric in vars(group).values():
            names = getattr(metric, "_labelnames", ())
            if names:
                metric.labels(*["x"] * len(names)).inc()


def test_every_exporter_in_process_matches_the_catalog() -> None:
    metrics = ServingMetrics(CollectorRegistry())
    metrics.observe_request("fraud", "1", "predict", 0.003, 2)
    metrics.observe_batch(("fraud", "1"), 2, 0.001)
    metrics.observe_error("/predict", 422, "InvalidInputError")
    _touch_children(
        cache_metrics(metrics.registry),
        cost_metrics(metrics.registry),
        feature_metrics(metrics.registry),
    )
    metrics.add_collector(PoolCollector(_fake_pool()))
    metrics.add_collector(RouterCollector(*_fake_router()))
    sampler = GpuSampler(_OneGpu(), window_s=300.0)
    assert sampler.open()
    sampler.sample_once()
    metrics.add_collector(sampler)

    exported = exported_families(metrics.render().decode())
    assert mismatches(exported) == []
    assert [n for n, f in exported.items() if f.samples == 0] == []
    declared = {f.name for f in CATALOG if f.condition != "drift"}
    assert set(exported) == declared


# -- a live gateway -----------------------------------------------------------------------


def _post(gateway: ServerProcess, path: str, body: object) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"{gateway.url}{path}",
        json.dumps(body).encode(),
        {"Content-Type": "application/json", **INGEST},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(json.load(r))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.load(exc))


def drive_traffic(gateway: ServerProcess) -> None:
    """A little of everything, so lazily created series exist: predictions (cache misses,
    then hits), a rejected request, a v2 inference, an event and an outcome."""
    request_id = ""
    for k in range(6):
        body = {"model": "fraud", "user_id": f"u-catalog-{k % 2}", "inputs": [RECORD]}
        status, answer = _post(gateway, "/predict", body)
        assert status == 200, answer
        request_id = answer["signed_request_id"]
    assert _post(gateway, "/predict", {"model": "fraud", "inputs": []})[0] == 422
    v2 = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 7], "data": [1.0] * 7}]}
    assert _post(gateway, "/v2/models/fraud/infer", v2)[0] == 200
    event = {"timestamp": time.time(), "entities": {"user": "u-catalog-0"}, "amount": 5.0}
    assert _post(gateway, "/events", event)[0] == 202
    assert _post(gateway, "/feedback", {"signed_request_id": request_id, "outcome": 1})[0] == 201


def scrape(gateway: ServerProcess) -> str:
    with urllib.request.urlopen(f"{gateway.url}/metrics", timeout=10) as r:
        return bytes(r.read()).decode()


def test_live_gateway_exports_exactly_what_the_catalog_says(gateway: ServerProcess) -> None:
    drive_traffic(gateway)
    exported = exported_families(scrape(gateway))
    assert mismatches(exported) == []
    required = {f.name for f in CATALOG if f.condition in GATEWAY_CONDITIONS}
    assert sorted(required - set(exported)) == []
    with urllib.request.urlopen(f"{gateway.url}/gpu", timeout=10) as r:
        gpu_available = json.load(r)["available"]
    gpu = {f.name for f in CATALOG if f.condition == "gpu"} & set(exported)
    assert bool(gpu) == gpu_available  # GPU series exactly where the sampler sees a GPU
    assert "servekit_pool_budget_bytes" not in exported  # a dedicated pool has no budget


def test_live_traffic_fills_the_request_path_series(gateway: ServerProcess) -> None:
    drive_traffic(gateway)
    exported = exported_families(scrape(gateway))
    for name in (
        "servekit_request_latency_seconds",
        "servekit_predicted_rows_total",
        "servekit_batch_rows",
        "servekit_errors_total",
        "servekit_cache_hits_total",
        "servekit_cache_misses_total",
        "servekit_feature_missing_rows_total",
        "servekit_feature_events_total",
        "servekit_model_requests_total",
    ):
        assert exported[name].samples > 0, name
