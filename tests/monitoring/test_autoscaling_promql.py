"""Every PromQL expression the autoscaling manifests ship, evaluated by a real Prometheus
scraping a live servekit gateway (and a stand-in DCGM exporter for the GPU series)."""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ServerProcess
from tests.monitoring.prometheus import api, running_prometheus, stub_exporter, wait_for

pytestmark = pytest.mark.slow

COMPONENT = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "components" / "autoscaling"

# What dcgm-exporter serves with DCGM_EXPORTER_KUBERNETES=true: two runner GPUs and one GPU
# of another workload, which the query must leave out.
DCGM = """# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-0a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="runner",namespace="ml",pod="servekit-runner-7d9f8c6b4-x2x9z"} 60
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-1b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="runner",namespace="ml",pod="servekit-runner-7d9f8c6b4-q8r2m"} 100
DCGM_FI_DEV_GPU_UTIL{gpu="2",UUID="GPU-2c",device="nvidia2",modelName="NVIDIA H100 80GB HBM3",Hostname="node-1",container="trainer",namespace="ml",pod="trainer-5f6d7-abcde"} 5
"""


@pytest.fixture(scope="module")
def prometheus(gateway: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Our own Prometheus (temporary config and data, a free loopback port), 1 s scrapes of
    the gateway and a stand-in DCGM exporter."""
    root = tmp_path_factory.mktemp("prometheus")
    with stub_exporter(DCGM) as dcgm:
        targets = {"servekit": gateway.url[len("http://") :], "dcgm": dcgm}
        with running_prometheus(root, targets) as url:
            yield url


def query(prometheus: str, expr: str, at: float | None = None) -> dict[str, Any]:
    """The HTTP API's answer to an instant query (errors come back as status "error")."""
    params = {"query": expr} | ({} if at is None else {"time": f"{at:.3f}"})
    return api(prometheus, "query", **params)


def predict(gateway: ServerProcess, amount: float) -> None:
    body = {
        "model": "fraud",
        "user_id": "u-autoscale",
        "inputs": [
            {"amount": amount, "merchant_category": "crypto", "hour": 2, "channel": "online"}
        ],
    }
    request = urllib.request.Request(
        f"{gateway.url}/predict", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        assert r.status == 200


class Scraped:
    """Prometheus after the traffic; queries evaluate at one instant, so they agree."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.at = time.time()

    def query(self, expr: str) -> dict[str, Any]:
        return query(self.url, expr, self.at)


@pytest.fixture(scope="module")
def scraped(prometheus: str, gateway: ServerProcess) -> Scraped:
    """Prometheus after a few seconds of /predict traffic (repeated inputs: cache hits)."""
    # Prometheus hands discovered targets to its scrapers every 5 s: wait for both up.
    wait_for(lambda: len(query(prometheus, "up == 1")["data"]["result"]) == 2, 60, "targets down")
    end = time.monotonic() + 4
    k = 0
    while time.monotonic() < end:
        predict(gateway, 100.0 + k % 5)
        k += 1
        time.sleep(0.02)

    def has_rates() -> bool:
        answer = query(prometheus, "sum(rate(servekit_cache_hits_total[2m])) > 0")
        return bool(answer["data"]["result"])

    wait_for(has_rates, 30, "no servekit request rates in Prometheus")
    return Scraped(prometheus)


def shipped_queries() -> dict[str, str]:
    """Every PromQL expression in the component, by trigger name or adapter rule."""
    so = yaml.safe_load((COMPONENT / "runner-scaledobject.yaml").read_text())
    out = {t["name"]: t["metadata"]["query"] for t in so["spec"]["triggers"]}
    rules = yaml.safe_load((COMPONENT / "prometheus-adapter-rules.yaml").read_text())
    for rule in rules["rules"]["custom"]:
        series = rule["name"]["matches"].strip("^$")
        out[rule["name"]["as"]] = (
            rule["metricsQuery"]
            .replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'job="servekit"')
            .replace("<<.GroupBy>>", "instance")
        )
        out[f"{rule['name']['as']} (series)"] = rule["seriesQuery"]
    return out


def value(answer: dict[str, Any]) -> float:
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    # KEDA's prometheus scaler takes exactly one element and fails on more
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_every_shipped_expression_parses(scraped: Scraped) -> None:
    queries = shipped_queries()
    assert {"gpu", "inference", "concurrency", "servekit_rows_per_second"} <= set(queries)
    for name, expr in queries.items():
        answer = scraped.query(expr)
        assert answer["status"] == "success", f"{name}: {answer}"


def test_servekit_expressions_return_a_series(scraped: Scraped) -> None:
    queries = shipped_queries()
    rows = value(scraped.query("sum(rate(servekit_predicted_rows_total[2m]))"))
    hits = value(scraped.query("sum(rate(servekit_cache_hits_total[2m]))"))
    inference = value(scraped.query(queries["inference"]))
    assert rows > 0 and hits > 0
    assert inference == pytest.approx(rows - hits)  # cache hits never reach a model
    assert value(scraped.query(queries["concurrency"])) > 0  # Little's law: in flight
    per_pod = scraped.query(queries["servekit_rows_per_second"])
    assert value(per_pod) == pytest.approx(rows)


def test_gpu_expression_sums_the_runners_5_minute_means(scraped: Scraped) -> None:
    gpu = shipped_queries()["gpu"]
    assert value(scraped.query(gpu)) == pytest.approx(160.0)  # 60 + 100, not the trainer's 5
    # no runner GPU series at all (no DCGM exporter): an empty answer, which the trigger's
    # ignoreNullValues "false" turns into a failure and the formula into the fallback
    missing = gpu.replace("servekit-runner-", "servekit-absent-")
    answer = scraped.query(missing)
    assert answer["status"] == "success" and answer["data"]["result"] == []


def test_a_broken_expression_is_reported(scraped: Scraped) -> None:
    assert scraped.query("sum(rate(servekit_predicted_rows_total[2m])")["status"] == "error"
