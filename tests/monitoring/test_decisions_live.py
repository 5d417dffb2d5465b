"""The decision report of a real gateway (``bentoml serve``) under real traffic: 200
``/predict`` requests, 40 % without a user id and half of them repeating an input, sent
while the report watches ``/metrics``."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitoring.decision_model import DecisionReport, Row, Verdict
from monitoring.decisions import collect_report, write_report
from services.settings import DecisionSettings, RedisSettings, ServingSettings, Settings
from tests.conftest import ServerProcess

REQUESTS = 200
CATEGORIES = ["grocery", "restaurant", "fuel", "travel", "electronics", "fashion", "crypto"]


def _send_traffic(url: str) -> None:
    rng = random.Random(7)
    repeated = {"amount": 42.0, "merchant_category": "fuel", "hour": 9, "channel": "pos"}
    for i in range(REQUESTS):
        record = repeated if i % 2 else {
            "amount": round(rng.uniform(1, 5000), 2),
            "merchant_category": rng.choice(CATEGORIES),
            "hour": rng.randrange(24),
            "channel": rng.choice(["pos", "online", "atm"]),
        }  # fmt: skip
        body: dict[str, object] = {"model": "fraud", "inputs": [record]}
        if i % 5 >= 2:  # 3 in 5 carry a user id: 40 % anonymous
            # One user for the repeated input: its feature values, part of the cache key,
            # stay the same.
            body["user_id"] = "u-repeat" if i % 2 else f"u{i % 17}"
        request = urllib.request.Request(
            f"{url}/predict", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200


def _row(report: DecisionReport, signal: str) -> Row:
    (row,) = [r for r in report.rows if r.signal.startswith(signal) and r.subject == "fraud"]
    return row


@pytest.fixture(scope="module")
def live_gateway(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    """A gateway of its own: its counters hold this module's traffic only."""
    server = ServerProcess(
        {"SERVEKIT_MODEL_STORE": str(fraud_store), "SERVEKIT_REDIS_URL": serving_redis_url}
    )
    yield server
    server.stop()


async def test_the_report_judges_a_live_gateway(
    live_gateway: ServerProcess, fraud_store: Path, serving_redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        decisions=DecisionSettings(scrapes=3, probes=50),
        serving=ServingSettings(model_store=str(fraud_store)),
        redis=RedisSettings(url=serving_redis_url),
    )
    started = time.monotonic()
    collecting = asyncio.create_task(collect_report(settings, url=live_gateway.url, window_s=8.0))
    await asyncio.sleep(0.5)  # the first scrape is taken before any request
    await asyncio.to_thread(_send_traffic, live_gateway.url)
    assert time.monotonic() - started < 8.0, "traffic outlasted the report's window"
    report = await collecting

    arrivals = _row(report, "arrival rate")
    assert arrivals.verdict is not Verdict.NO_DATA and arrivals.measured
    assert "req/s" in arrivals.value
    p99 = _row(report, "request p99")
    assert p99.verdict is not Verdict.NO_DATA and p99.measured and p99.measured > 0
    assert f"{REQUESTS} requests" in p99.value

    hits = _row(report, "hit rate")
    assert hits.verdict is Verdict.FINE and hits.measured is not None
    assert 0.3 < hits.measured < 0.6  # ~half the requests repeat one input
    cost = _row(report, "lookup cost")
    assert cost.verdict is not Verdict.NO_DATA and "lookup" in cost.value

    anonymous = _row(report, "anonymous share")
    assert anonymous.verdict is Verdict.FINE and anonymous.measured == pytest.approx(0.4)
    assert f"of {REQUESTS} requests" in anonymous.value

    paths = write_report(report, tmp_path)
    assert "reconsider" in paths["html"].read_text() or "fine" in paths["html"].read_text()
