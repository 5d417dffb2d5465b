"""servekit's Prometheus alert rules: every alert says how long, how bad and why; every
series they read is one servekit exports (or an allowed external one); promtool checks
them and unit-tests each alert on synthetic series. The tests that load them into a real
Prometheus scraping a live gateway are in test_dashboards.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring import promql
from tests.monitoring.test_dashboards import RULES, RUNNER_POD, problems, rule_groups

SEVERITIES = {"critical", "warning", "info"}


def recorded_names() -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}


def test_every_alert_has_for_severity_summary_and_description() -> None:
    alerts = [r for g in rule_groups() for r in g["rules"] if "alert" in r]
    assert {a["alert"] for a in alerts} >= {
        "ServekitAvailabilityBudgetBurnFast",
        "ServekitLatencyBudgetBurnFast",
        "ServekitSheddingRequests",
        "ServekitCacheBreakerOpen",
        "ServekitDriftDetected",
        "ServekitRolloutRolledBack",
        "ServekitGPUSaturated",
    }
    for a in alerts:
        assert re.fullmatch(r"\d+[smh]", a["for"]), a["alert"]
        assert a["labels"]["severity"] in SEVERITIES, a["alert"]
        assert a["annotations"]["summary"] and a["annotations"]["description"], a["alert"]
        if "Budget" in a["alert"]:
            assert "over 30 days" in a["annotations"]["slo"], a["alert"]


def test_every_rule_series_is_exported() -> None:
    recorded = recorded_names()
    found = {
        r.get("alert") or r["record"]: problems(r["expr"], recorded)
        for g in rule_groups()
        for r in g["rules"]
    }
    assert {k: v for k, v in found.items() if v} == {}
    used = {
        n for g in rule_groups() for r in g["rules"] for n in promql.promql_names(r["expr"]).series
    }
    assert recorded <= used  # no recording rule is left unused


def promtool() -> str:
    found = shutil.which("promtool") or shutil.which("/usr/bin/promtool")
    if found is None:
        pytest.skip("no promtool binary (Debian: apt-get install -y prometheus)")
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def _series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in {"job": "sk", **labels}.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def _alerts(at: str, name: str, *expected: dict[str, str]) -> dict[str, Any]:
    return {"eval_time": at, "alertname": name, "exp_alerts": [{"exp_labels": e} for e in expected]}


PREDICT = {"instance": "a", "model": "fraud", "version": "1", "route": "predict"}

# promtool unit tests: (input series, expected alerts), 1-minute samples.
RULE_CASES: dict[str, tuple[list[dict[str, str]], list[dict[str, Any]]]] = {
    "5 % of serving requests get a 503; 4xx do not count": (
        [
            _series("servekit_request_latency_seconds_count", PREDICT, "0+6000x120"),
            _series("servekit_request_latency_seconds_bucket", {**PREDICT, "le": "0.1"}, "0+6000x120"),
            _series("servekit_errors_total", {"instance": "a", "route": "/predict", "status": "503", "error": "OverloadedError"}, "0+300x120"),
            _series("servekit_errors_total", {"instance": "a", "route": "/predict", "status": "422", "error": "InvalidInputError"}, "0+3000x120"),
        ],
        [
            _alerts("70m", "ServekitAvailabilityBudgetBurnFast", {"severity": "critical", "slo": "availability", "job": "sk"}),
            _alerts("70m", "ServekitLatencyBudgetBurnFast"),
        ],
    ),
    "only client errors, half the requests slow": (
        [
            _series("servekit_request_latency_seconds_count", PREDICT, "0+6000x120"),
            _series("servekit_request_latency_seconds_bucket", {**PREDICT, "le": "0.1"}, "0+3000x120"),
            _series("servekit_errors_total", {"instance": "a", "route": "/predict", "status": "422", "error": "InvalidInputError"}, "0+3000x120"),
        ],
        [
            _alerts("70m", "ServekitAvailabilityBudgetBurnFast"),
            _alerts("70m", "ServekitLatencyBudgetBurnFast", {"severity": "critical", "slo": "latency", "job": "sk"}),
        ],
    ),
    "shedding, breaker open, model load failing": (
        [
            _series("servekit_request_latency_seconds_count", PREDICT, "0+100x20"),
            _series("servekit_shed_requests_total", {"instance": "a"}, "0+10x20"),
            _series("servekit_cache_breaker_state", {"instance": "a"}, "1x20"),
            _series("servekit_cache_breaker_state", {"instance": "b"}, "1 0 1 2 1 0 1 2 1 0 1 2 1 0 1 2 1 0 1 2"),
            _series("servekit_model_loads_total", {"instance": "a", "outcome": "error"}, "0 0 0 0 0 0 0 0 1 1 1 1"),
        ],
        [
            _alerts("15m", "ServekitSheddingRequests", {"severity": "warning", "job": "sk", "instance": "a"}),
            _alerts("15m", "ServekitCacheBreakerOpen", {"severity": "warning", "job": "sk", "instance": "a"}),
            _alerts("10m", "ServekitModelLoadFailing", {"severity": "warning", "job": "sk", "instance": "a"}),
        ],
    ),
    "a canary rolled back at 25 %; a full ramp promoted": (
        [
            _series("servekit_rollout_percent", {"instance": "a", "model": "fraud", "mode": "canary"}, "5x5 25x5 _x30"),
            _series("servekit_rollout_percent", {"instance": "a", "model": "fraud", "mode": "off"}, "_x10 0x30"),
            _series("servekit_rollout_percent", {"instance": "a", "model": "text", "mode": "canary"}, "50x5 100x5 _x30"),
            _series("servekit_rollout_percent", {"instance": "a", "model": "text", "mode": "off"}, "_x10 0x30"),
        ],
        [
            _alerts("13m", "ServekitRolloutRolledBack", {"severity": "warning", "job": "sk", "model": "fraud"}),
            _alerts("35m", "ServekitRolloutRolledBack"),
        ],
    ),
    "drift found, GPUs saturated": (
        [
            _series("servekit_drift_detected", {"instance": "a", "model": "fraud", "version": "1"}, "1x30"),
            _series("servekit_drift_detected", {"instance": "a", "model": "fraud", "version": "2"}, "0x30"),
            _series("servekit_gpu_utilization_5m_percent", {"instance": "a", "gpu": "0", "uuid": "GPU-0a", "name": "H100"}, "99x30"),
            _series("DCGM_FI_DEV_GPU_UTIL", {"namespace": "ml", "pod": RUNNER_POD, "gpu": "1"}, "100x30"),
            _series("DCGM_FI_DEV_GPU_UTIL", {"namespace": "ml", "pod": "trainer-5f6d7-abcde", "gpu": "2"}, "100x30"),
        ],
        [
            _alerts("20m", "ServekitDriftDetected", {"severity": "warning", "job": "sk", "model": "fraud", "version": "1"}),
            _alerts("25m", "ServekitGPUSaturated", {"severity": "warning", "job": "sk", "instance": "a", "gpu": "0"}),
            _alerts("25m", "ServekitRunnerGPUSaturated", {"severity": "warning", "namespace": "ml", "pod": RUNNER_POD, "gpu": "1"}),
        ],
    ),
}  # fmt: skip


def test_alerts_fire_on_what_they_describe_and_only_then(tmp_path: Path) -> None:
    """promtool's rule unit tests over synthetic series (annotations left out: promtool
    compares them whole, and ``check rules`` already validates their templates)."""
    groups = rule_groups()
    for g in groups:
        for r in g["rules"]:
            r.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = [
        {"name": name, "interval": "1m", "input_series": series, "alert_rule_test": alerts}
        for name, (series, alerts) in RULE_CASES.items()
    ]
    spec = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(spec))
    result = subprocess.run(
        [promtool(), "test", "rules", "tests.yaml"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
