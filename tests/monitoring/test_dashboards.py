"""The Grafana dashboard against the metric catalog: an importable dashboard whose every
series is one servekit exports (or an allowed external one), with the labels it has; and a
real Prometheus scraping a live gateway that loads the alert rules (every group healthy)
and evaluates every dashboard expression."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import catalog, promql
from tests.conftest import ServerProcess
from tests.monitoring.prometheus import api, running_prometheus, stub_exporter, wait_for
from tests.monitoring.test_catalog import drive_traffic

MONITORING = Path(__file__).resolve().parents[2] / "monitoring"
DASHBOARD = MONITORING / "grafana" / "servekit.json"
RULES = MONITORING / "alerts" / "servekit-rules.yaml"

# The only series not servekit's own that the dashboard and rules may use, with their labels.
EXTERNAL: dict[str, set[str]] = {
    # NVIDIA dcgm-exporter, DCGM_EXPORTER_KUBERNETES=true
    "DCGM_FI_DEV_GPU_UTIL": {
        "gpu", "UUID", "device", "modelName", "Hostname", "container", "namespace", "pod",
    },
    # kube-state-metrics
    "kube_deployment_status_replicas": {"namespace", "deployment"},
    "kube_deployment_spec_replicas": {"namespace", "deployment"},
}  # fmt: skip
# Grafana's variables, as the checks substitute them: every model, every version.
VARIABLES = {"$__rate_interval": "1m", "$model": ".*", "$version": ".*"}


def substitute(expr: str) -> str:
    """A Grafana target expression as Prometheus would receive it."""
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    return expr


def problems(expr: str, recorded: Collection[str] = ()) -> list[str]:
    """What in ``expr`` (Grafana variables substituted) servekit does not export."""
    return promql.expression_problems(substitute(expr), EXTERNAL, recorded)


# -- the dashboard ------------------------------------------------------------------------


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def dashboard_expressions() -> dict[str, str]:
    """Every target expression, keyed by panel title and refId."""
    return {f"{p['title']} [{t['refId']}]": t["expr"] for p in panels() for t in p["targets"]}


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    d = dashboard()
    assert d["schemaVersion"] >= 41 and d["uid"] and d["title"] and d["id"] is None
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("model", "version"):
        var = variables[name]
        assert var["type"] == "query" and var["allValue"] == ".*", var
        assert var["definition"].startswith("label_values(servekit_"), var
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        assert g["x"] + g["w"] <= 24
        cells |= mine
    for p in panels():
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"] and p["description"], p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["refId"] and t["expr"], p["title"]
            # multi-value variables arrive as a regex (a|b): only =~ on their own label
            for label, op, var in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"\$\{?(\w+)', t["expr"]):
                assert (label, op) == (var, "=~"), f"{p['title']}: {label}{op}${var}"


def test_dashboard_has_the_panels_operators_need() -> None:
    used = {
        name
        for e in dashboard_expressions().values()
        for name in promql.promql_names(substitute(e)).series
    }
    for series in (
        "servekit_request_latency_seconds_count",
        "servekit_request_latency_seconds_bucket",
        "servekit_errors_total",
        "servekit_batch_rows_bucket",
        "servekit_queue_rows",
        "servekit_shed_requests_total",
        "servekit_cache_hits_total",
        "servekit_cache_enabled",
        "servekit_cache_breaker_state",
        "servekit_feature_age_seconds",
        "servekit_rollout_percent",
        "servekit_model_errors_total",
        "servekit_drift_share",
        "servekit_gpu_utilization_5m_percent",
        "DCGM_FI_DEV_GPU_UTIL",
        "kube_deployment_status_replicas",
    ):
        assert series in used, series


def test_every_dashboard_series_is_exported() -> None:
    found = {k: problems(e) for k, e in dashboard_expressions().items()}
    assert {k: v for k, v in found.items() if v} == {}
    for var in dashboard()["templating"]["list"][1:]:
        m = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert m is not None, var["definition"]
        metric, label = m.groups()
        assert problems(metric) == []
        (series,) = promql.promql_names(substitute(metric)).series
        family = catalog.for_series(series)
        assert family is not None and label in family.labels, var["definition"]


def test_legends_name_labels_the_series_carry() -> None:
    for p in panels():
        for t in p["targets"]:
            names = promql.promql_names(substitute(t["expr"]))
            carried = set(promql.TARGET_LABELS) | names.grouping
            for name in names.series:
                family = catalog.for_series(name)
                carried |= set(family.labels) if family else EXTERNAL.get(name, set())
            for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", t["legendFormat"]):
                assert label in carried, f"{p['title']}: legend names {label!r}"


# -- a real Prometheus scraping a live gateway -------------------------------------------

RUNNER_POD = "servekit-runner-7d9f8c6b4-x2x9z"


def rule_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(RULES.read_text())["groups"])


# What dcgm-exporter and kube-state-metrics serve beside servekit (one series each of
# another workload, which the selectors must leave out).
EXPORTERS = f"""# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{{gpu="0",UUID="GPU-0a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="runner",namespace="ml",pod="{RUNNER_POD}"}} 100
DCGM_FI_DEV_GPU_UTIL{{gpu="1",UUID="GPU-1b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="trainer",namespace="ml",pod="trainer-5f6d7-abcde"}} 5
# TYPE kube_deployment_status_replicas gauge
kube_deployment_status_replicas{{namespace="ml",deployment="servekit-gateway"}} 3
kube_deployment_status_replicas{{namespace="ml",deployment="servekit-runner"}} 2
kube_deployment_status_replicas{{namespace="ml",deployment="trainer"}} 1
# TYPE kube_deployment_spec_replicas gauge
kube_deployment_spec_replicas{{namespace="ml",deployment="servekit-gateway"}} 3
kube_deployment_spec_replicas{{namespace="ml",deployment="servekit-runner"}} 4
kube_deployment_spec_replicas{{namespace="ml",deployment="trainer"}} 1
"""  # noqa: E501


@pytest.fixture(scope="module")
def prometheus(gateway: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our own Prometheus (temporary config and data, a free loopback port, 1 s scrapes and
    evaluations) with servekit's rules, scraping the gateway and the stand-in exporters,
    after a few seconds of traffic."""
    root = tmp_path_factory.mktemp("prometheus-rules")
    with stub_exporter(EXPORTERS) as exporters:
        targets = {"servekit": gateway.url[len("http://") :], "exporters": exporters}
        with running_prometheus(root, targets, rule_files=[str(RULES)]) as url:
            up = "count(up == 1) == 2"  # Prometheus hands new targets to its scrapers every 5 s
            wait_for(lambda: bool(api(url, "query", query=up)["data"]["result"]), 60, "down")
            for _ in range(3):
                drive_traffic(gateway)
                time.sleep(1)  # one scrape interval of traffic per round
            rate = "sum(rate(servekit_request_latency_seconds_count[1m])) > 0"
            wait_for(lambda: bool(api(url, "query", query=rate)["data"]["result"]), 30, "no rates")
            yield url


@pytest.mark.slow
def test_prometheus_loads_every_rule_group_healthy(prometheus: str) -> None:
    def evaluated() -> bool:
        groups = api(prometheus, "rules")["data"]["groups"]
        return all(r["health"] != "unknown" for g in groups for r in g["rules"])

    wait_for(evaluated, 30, "rules not evaluated")
    groups = api(prometheus, "rules")["data"]["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in rule_groups())
    unhealthy = {
        r["name"]: r.get("lastError") for g in groups for r in g["rules"] if r["health"] != "ok"
    }
    assert unhealthy == {}
    assert sum(len(g["rules"]) for g in groups) == sum(len(g["rules"]) for g in rule_groups())


@pytest.mark.slow
def test_every_dashboard_expression_evaluates(prometheus: str) -> None:
    stored = set(api(prometheus, "label/__name__/values")["data"])
    with_data = []
    for key, expr in dashboard_expressions().items():
        answer = api(prometheus, "query", query=substitute(expr))
        assert answer["status"] == "success", f"{key}: {answer}"
        # where every series it reads is in Prometheus, the panel shows something
        if set(promql.promql_names(substitute(expr)).series) <= stored:
            assert answer["data"]["result"], f"{key}: no data from {expr}"
            with_data.append(key)
    # no GPU of servekit's, drift report, eviction or backend error here; these must show
    assert {
        "Request rate by model and version [A]",
        "Errors by route and status [A]",
        "Latency p50 / p99 by model and version [B]",
        "Batch size [A]",
        "Queue depth [A]",
        "Shed requests [A]",
        "Cache hit rate by model [A]",
        "Cache circuit breaker [A]",
        "Real-time events by outcome [A]",
        "Traffic share per version [A]",
        "GPU utilization [B]",
        "Replicas [A]",
        "Resident model memory [A]",
    } <= set(with_data)


@pytest.mark.slow
def test_variables_and_external_selectors_find_their_series(prometheus: str) -> None:
    for var in dashboard()["templating"]["list"][1:]:
        metric = re.fullmatch(r"label_values\((.+), (\w+)\)", var["definition"])
        assert metric is not None
        found = api(prometheus, "series", **{"match[]": substitute(metric.group(1))})["data"]
        assert found and all(metric.group(2) in s for s in found), var["name"]
    exprs = dashboard_expressions()
    (replicas,) = [e for k, e in exprs.items() if k.startswith("Replicas [A]")]
    result = api(prometheus, "query", query=replicas)["data"]["result"]
    assert {r["metric"]["deployment"] for r in result} == {"servekit-gateway", "servekit-runner"}
    (gpu,) = [e for k, e in exprs.items() if k.startswith("GPU utilization [B]")]
    result = api(prometheus, "query", query=gpu)["data"]["result"]
    assert [r["metric"]["pod"] for r in result] == [RUNNER_POD]


@pytest.mark.slow
def test_a_rule_sees_live_series(prometheus: str) -> None:
    """The runner's GPU at 100 % (stand-in DCGM): its saturation alert is pending."""

    def pending() -> list[dict[str, Any]]:
        alerts = api(prometheus, "alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ServekitRunnerGPUSaturated"]

    wait_for(lambda: bool(pending()), 30, "ServekitRunnerGPUSaturated never evaluated true")
    (alert,) = pending()
    assert alert["state"] == "pending" and alert["labels"]["pod"] == RUNNER_POD
