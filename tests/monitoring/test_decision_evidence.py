"""Collecting the report's evidence: a stub gateway over HTTP, a real Redis seeded with
rollout state, streams and feature data, and a registry with a conversion report."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from monitoring.decision_evidence import gather, parity_facts, scrape_over, shadow_facts
from services.errors import UnavailableError
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.rollout.prediction_log import PredictionEvent, PredictionLog, ShadowPair
from services.rollout.state import RolloutStore
from services.settings import (
    DecisionSettings,
    FeatureSettings,
    RedisSettings,
    ServingSettings,
    Settings,
)
from services.state import keys
from services.state.features import FeatureRegistry, FeatureStore
from tests.fixtures.onnx_models import mlp_schema
from tests.monitoring.samples import exposition, histogram, model_entry, sample, stub_gateway


def _pair(i: int, candidate_output: object, version: str = "2") -> ShadowPair:
    return ShadowPair(
        request_id=f"r{i}", model="fraud", primary_version="1", candidate_version=version,
        primary_output={"label": [1]}, candidate_output=candidate_output,
        primary_latency_ms=1.0, candidate_latency_ms=2.0,
    )  # fmt: skip


def test_shadow_facts_count_identical_answers_of_the_candidate_only() -> None:
    pairs = [_pair(0, {"label": [1]}), _pair(1, {"label": [0]}), _pair(2, {"label": [1]}, "3")]
    pairs.append(ShadowPair("r4", "fraud", "1", "2", {"label": [1]}, None, 1.0, None, "boom"))
    facts = shadow_facts("fraud", "2", pairs)
    assert (facts.pairs, facts.errors, facts.identical) == (3, 1, 1)
    assert facts.candidate_ms == (2.0, 2.0) and len(facts.primary_ms) == 3
    assert facts.mismatched == 0


def test_shadow_facts_compare_the_outputs_both_sides_logged() -> None:
    # The gateway logs the primary's served output; the candidate's pair holds all of them.
    pairs = [_pair(i, {"label": [1], "probabilities": [[0.2, 0.8]]}) for i in range(3)]
    facts = shadow_facts("fraud", "2", pairs)
    assert (facts.identical, facts.mismatched) == (3, 3)
    assert facts.outputs == "primary: label; candidate: label, probabilities"


def test_parity_facts_read_the_registered_report(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    plain = registry.register("m", b"x", schema=mlp_schema(1))
    report = {
        "held_out_rows": 64,
        "formats": {"onnx": {"passed": True, "max_scaled_err": 2e-5, "tolerance": 1e-4}},
        "tensorrt": {"skipped": "no CUDA GPU"},
    }
    converted = registry.register("m", b"y", schema=mlp_schema(1), parity=report)
    assert parity_facts(plain).formats is None
    facts = parity_facts(registry.get("m", converted.version))
    assert facts.formats == {"onnx": (True, pytest.approx(0.2))}
    assert facts.tensorrt_skipped == "no CUDA GPU"


async def test_an_unreachable_gateway_is_an_error() -> None:
    with pytest.raises(UnavailableError, match="does not answer"):
        await scrape_over("http://127.0.0.1:9", 0.0, 2, 0.5)


async def _seed(client: aioredis.Redis, now: float) -> None:
    store = RolloutStore(client)
    await store.set_primary("fraud", "1")
    await store.start_shadow("fraud", "2", reason="test")
    log = PredictionLog(client)
    for i in range(30):
        log.append(_pair(i, {"label": [1]}))
        unit = "request" if i % 3 == 0 else "user"
        log.append(PredictionEvent("fraud", "1", "primary", unit, f"r{i}", 1.0))
    await log.flush()
    views = FeatureRegistry.from_settings(FeatureSettings())
    features = FeatureStore(client, views, FeatureSettings())
    await features.load_batch_view("user_stats", {"u1": {"avg_amount_30d": 1.0}}, now - 7200)
    await client.set(keys.realtime_heartbeat_key("user_activity"), repr(now - 5))


async def test_gather_reads_the_gateway_redis_and_registry(
    aredis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    now = time.time()
    await _seed(aredis, now)
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.register("fraud", b"x", schema=mlp_schema(1))
    traffic = [
        sample("servekit_model_requests_total", 40, model="fraud", version="1"),
        *histogram("servekit_request_latency_seconds", [0.002] * 40, model="fraud", version="1", route="predict"),
    ]  # fmt: skip
    settings = Settings(
        decisions=DecisionSettings(scrapes=3, probes=5),
        serving=ServingSettings(model_store=str(tmp_path)),
        redis=RedisSettings(url=redis_url),
    )
    with stub_gateway(["", exposition(traffic)], [model_entry("fraud")]) as url:
        ev = await gather(settings, url=url, window_s=0.2)
    assert len(ev.scrapes) == 3 and ev.window.delta("servekit_model_requests_total") == 40
    assert ev.models[0]["name"] == "fraud" and ev.problems == []
    (state,) = ev.rollouts
    assert (state.mode, state.candidate) == ("shadow", "2")
    (shadow,) = ev.shadows
    assert (shadow.pairs, shadow.identical, shadow.candidate) == (30, 30, "2")
    assert ev.logged_units == {"fraud": {"request": 10, "user": 20}}
    ages = {v.name: v.age_s for v in ev.views}
    assert ages["user_stats"] == pytest.approx(7200, abs=60) and ages["merchant_risk"] is None
    assert ages["user_activity"] == pytest.approx(5, abs=60)
    assert len(ev.feature_probe_ms) == 5 and len(ev.cache_probe_ms) == 5
    assert [(p.model, p.formats) for p in ev.parity] == [("fraud", None)]


async def test_without_redis_and_registry_the_problems_are_recorded(tmp_path: Path) -> None:
    settings = Settings(
        decisions=DecisionSettings(probes=5),
        serving=ServingSettings(model_store="s3://no-such-bucket/x", s3_endpoint_url="http://127.0.0.1:9"),
        redis=RedisSettings(url=None, embedded_dir=tmp_path / "none"),
    )  # fmt: skip
    traffic = [sample("servekit_model_requests_total", 4, model="fraud", version="1")]
    with stub_gateway([exposition(traffic)], [model_entry("fraud")]) as url:
        ev = await gather(settings, url=url, window_s=0)
    assert not ev.redis_ok and not ev.registry_ok and len(ev.problems) == 2
    assert "SERVEKIT_REDIS_URL" in ev.problems[0]
