"""Drift reports of the demo fraud model and of a text model (generated embeddings).

The fraud traffic is the synthetic generator's, assembled as the gateway assembles it and
written through the real prediction log; over HTTP and through the flow it is proved in
``tests/flows/test_drift.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import redis.asyncio as aioredis

from monitoring.drift import build_report, load_reference
from monitoring.reference import TEXT_LENGTH, ReferenceSample
from monitoring.traffic import VersionTraffic, read_window
from services.registry.schema import ModelSchema, TensorSpec
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry, ModelVersion
from services.rollout.prediction_log import PredictionLog
from services.settings import MonitoringSettings
from tests.monitoring.fraud_traffic import SHIFT, fraud_rows, log_traffic, served

SETTINGS = MonitoringSettings()
FEATURES = {"amount", "merchant_category", "hour", "channel", "avg_amount_30d",
            "txn_count_30d", "risk_score"}  # fmt: skip


@pytest.fixture(scope="module")
def fraud() -> tuple[ModelRegistry, ModelVersion]:
    import tempfile

    from flows.recipes.demo_models import ensure_demo_models

    registry = ModelRegistry(LocalStore(tempfile.mkdtemp(prefix="drift-")))
    ensure_demo_models(registry)
    return registry, registry.get("fraud")


async def _window(
    client: aioredis.Redis, registry: ModelRegistry, mv: ModelVersion, x: np.ndarray
) -> VersionTraffic:
    await log_traffic(client, mv.name, mv.version, x, served(registry, mv, x))
    traffic = await read_window(
        PredictionLog(client), mv.name, time.time() - 60, time.time() + 1, max_rows=10_000
    )
    return traffic.versions[mv.version]


async def test_unshifted_traffic_has_no_drift(
    aredis: aioredis.Redis, fraud: tuple[ModelRegistry, ModelVersion]
) -> None:
    registry, mv = fraud
    traffic = await _window(aredis, registry, mv, fraud_rows(2000, seed=11))
    report = build_report(
        mv, load_reference(registry, mv), traffic, start=0, end=1, settings=SETTINGS
    )
    result = report.result
    assert result.status == "ok", result.message
    assert (result.reference_rows, result.current_rows) == (SETTINGS.reference_rows, 2000)
    assert set(result.columns) == FEATURES | {"prediction", "proba_fraud"}
    assert result.drifted_columns == [] and result.drifted_share == 0.0
    assert not result.drift_detected and not result.prediction_drift
    amount = result.columns["amount"]
    assert amount.method == "Wasserstein distance (normed)" and amount.threshold == 0.1
    assert result.columns["channel"].method == "Jensen-Shannon distance"


async def test_shifted_traffic_flags_exactly_the_shifted_columns(
    aredis: aioredis.Redis, fraud: tuple[ModelRegistry, ModelVersion]
) -> None:
    registry, mv = fraud
    traffic = await _window(aredis, registry, mv, fraud_rows(2000, seed=12, shift=SHIFT))
    t0 = time.perf_counter()
    report = build_report(
        mv, load_reference(registry, mv), traffic, start=0, end=1, settings=SETTINGS
    )
    seconds = time.perf_counter() - t0
    result = report.result
    drifted = {n for n, c in result.columns.items() if c.drifted and c.role == "feature"}
    assert drifted == {"amount", "hour"}, result.columns
    assert result.drift_detected and result.drifted_share == pytest.approx(2 / 7)
    assert result.prediction_drift  # five times the amounts: more frauds predicted
    assert "amount, hour" in result.message
    data = result.to_dict()
    for key in ("model", "version", "reference_rows", "current_rows", "drift_detected",
                "drifted_share", "columns"):  # fmt: skip
        assert key in data
    assert set(data["columns"]["amount"]) >= {"method", "score", "threshold", "drifted"}
    assert report.html is not None and "<html" in report.html[:200]
    assert 'src="http' not in report.html  # self-contained: no script fetched
    assert report.evidently is not None and report.evidently["metrics"]
    assert seconds < 30


def test_a_version_without_reference_says_so(
    fraud: tuple[ModelRegistry, ModelVersion],
) -> None:
    registry, mv = fraud
    x = fraud_rows(300, seed=13)
    traffic = VersionTraffic(mv.version, [r.tolist() for r in x], served(registry, mv, x))
    report = build_report(mv, None, traffic, start=0, end=1, settings=SETTINGS)
    result = report.result
    assert result.status == "no_reference" and "no reference" in result.message
    assert not result.drift_detected and result.drifted_share is None and not result.columns
    assert report.html is not None  # a summary of the window alone
    assert result.to_dict()["status"] == "no_reference"


def test_no_traffic_and_too_little_traffic(fraud: tuple[ModelRegistry, ModelVersion]) -> None:
    registry, mv = fraud
    reference = load_reference(registry, mv)
    none = build_report(mv, reference, None, start=0, end=1, settings=SETTINGS).result
    assert none.status == "no_traffic" and "no logged traffic" in none.message
    x = fraud_rows(20, seed=14)
    few = VersionTraffic(mv.version, [r.tolist() for r in x], served(registry, mv, x))
    few.notes.append("the prediction stream is full")
    report = build_report(mv, reference, few, start=0, end=1, settings=SETTINGS)
    assert report.result.status == "too_little_traffic" and report.html is None
    assert report.result.notes == ["the prediction stream is full"]
    assert "SERVEKIT_MONITORING_MIN_ROWS" in report.result.message


def test_an_unreadable_reference_is_no_reference(
    tmp_path: Path, fraud: tuple[ModelRegistry, ModelVersion]
) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    mv = registry.register("m", b"x", schema=fraud[1].model_schema, reference=b"garbage")
    assert load_reference(registry, mv) is None


# -- a text model: drift on text length and on the embedding ---------------------------

TEXT_SCHEMA = ModelSchema(
    kind="text",
    inputs=[TensorSpec(name="input_ids", datatype="INT64", shape=[-1, -1])],
    outputs=[TensorSpec(name="embedding", datatype="FP32", shape=[-1, 384])],
)
TOPICS = np.random.default_rng(7).normal(size=(8, 384))


def _texts(n: int, seed: int, *, topic_shift: float = 0.0, longer: int = 0):
    """Generated embeddings (unit vectors around 8 latent topics) and token lengths."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 8)) * np.linspace(2.0, 0.5, 8)
    z[:, 0] += topic_shift
    emb = z @ TOPICS + rng.normal(scale=0.5, size=(n, 384))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    lengths = rng.poisson(12, size=(n, 1)) + 3 + longer
    return lengths.astype(np.float32), emb.astype(np.float32)


def _text_traffic(lengths: np.ndarray, emb: np.ndarray) -> VersionTraffic:
    return VersionTraffic(
        "1",
        [r.tolist() for r in lengths],
        [{"embedding": e.tolist(), "cached": False} for e in emb],
    )


def test_text_model_drifts_on_length_and_embedding() -> None:
    mv = ModelVersion(name="text-embed", version="1", sha256="0" * 64, size_bytes=1,
                      schema=TEXT_SCHEMA, created=time.time())  # fmt: skip
    lengths, emb = _texts(2000, 0)
    reference = ReferenceSample(lengths, (TEXT_LENGTH,), emb, time.time(), "test")
    same = build_report(
        mv, reference, _text_traffic(*_texts(1000, 1)), start=0, end=1, settings=SETTINGS
    ).result
    assert same.status == "ok" and not same.drift_detected, same.columns
    assert set(same.columns) == {TEXT_LENGTH, "embedding_norm"} | {
        f"embedding_pc{i}" for i in range(1, SETTINGS.components + 1)
    }
    moved = build_report(
        mv,
        reference,
        _text_traffic(*_texts(1000, 2, topic_shift=3.0, longer=10)),
        start=0,
        end=1,
        settings=SETTINGS,
    ).result
    assert moved.drift_detected and moved.columns[TEXT_LENGTH].drifted
    assert moved.prediction_drift and moved.columns["embedding_pc1"].drifted


def test_text_traffic_without_logged_lengths_is_judged_on_the_embedding() -> None:
    mv = ModelVersion(name="text-embed", version="1", sha256="0" * 64, size_bytes=1,
                      schema=TEXT_SCHEMA, created=time.time())  # fmt: skip
    lengths, emb = _texts(2000, 0)
    reference = ReferenceSample(lengths, (TEXT_LENGTH,), emb, time.time(), "test")
    _, moved = _texts(1000, 3, topic_shift=3.0)
    traffic = VersionTraffic("1", [None] * 1000, [{"embedding": e.tolist()} for e in moved])
    result = build_report(mv, reference, traffic, start=0, end=1, settings=SETTINGS).result
    assert TEXT_LENGTH not in result.columns and "not in the prediction stream" in result.notes[0]
    assert result.drift_detected and result.columns["embedding_pc1"].drifted
