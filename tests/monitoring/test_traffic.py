"""Reading a window of logged traffic back from the real prediction stream."""

from __future__ import annotations

import time

import numpy as np
import pytest
import redis.asyncio as aioredis

from flows.recipes.demo_models import FRAUD_SCHEMA
from monitoring.traffic import VersionTraffic, read_window, window_bounds
from services.rollout.prediction_log import PredictionEvent, PredictionLog


def _event(version: str, rows: list[list[float]], ts: float, **kw: object) -> PredictionEvent:
    preds = [
        {"label": "legit", "probabilities": {"legit": 1 - r[0] / 10, "fraud": r[0] / 10}}
        for r in rows
    ]
    return PredictionEvent(
        model=str(kw.get("model", "fraud")),
        version=version,
        variant="primary",
        unit="request",
        request_id="r",
        latency_ms=1.0,
        error=bool(kw.get("error", False)),
        inputs=None if kw.get("error") else rows,
        output=None if kw.get("error") else preds,
        ts=ts,
    )


async def test_read_window_groups_rows_by_version(aredis: aioredis.Redis) -> None:
    log = PredictionLog(aredis)
    now = time.time()
    log.append(_event("1", [[1.0, 2.0]], now - 7200))  # before the window
    log.append(_event("1", [[1.0, 2.0], [2.0, 3.0]], now - 10))
    log.append(_event("2", [[3.0, 4.0]], now - 5))
    log.append(_event("2", [], now - 4, error=True))
    log.append(_event("1", [[4.0, 5.0]], now - 1))
    log.append(_event("other", [[9.0, 9.0]], now, model="other"))
    await log.flush()

    start, end = window_bounds(3600, end=now + 1)
    traffic = await read_window(log, "fraud", start - 7200, end, max_rows=100)
    assert traffic.versions["1"].rows == 4  # a wider window takes in the old request
    traffic = await read_window(log, "fraud", start, end, max_rows=100)
    assert traffic.served() == ["1", "2"]  # most rows first; "other" is another model
    v1, v2 = traffic.versions["1"], traffic.versions["2"]
    assert (v1.rows, v1.requests, v1.errors) == (3, 2, 0)
    assert (v2.rows, v2.requests, v2.errors) == (1, 1, 1)
    features = v1.features()
    assert features is not None and features.dtype == np.float32
    np.testing.assert_array_equal(features, [[1, 2], [2, 3], [4, 5]])
    np.testing.assert_allclose(v1.outputs(FRAUD_SCHEMA)[:, 1], [0.1, 0.2, 0.4], rtol=1e-6)

    newest = await read_window(log, "fraud", start, end, max_rows=2)
    assert newest.versions["1"].features().tolist() == [[2, 3], [4, 5]]  # type: ignore[union-attr]
    assert newest.versions["1"].notes == ["only the newest 2 of 3 rows were read"]
    assert traffic.versions["1"].notes == []


async def test_a_full_stream_is_noted(aredis: aioredis.Redis) -> None:
    log = PredictionLog(aredis)
    now = time.time()
    for _ in range(5):
        log.append(_event("1", [[1.0, 2.0]], now))
    await log.flush()
    traffic = await read_window(log, "fraud", now - 3600, now + 1, max_rows=10, stream_maxlen=5)
    (note,) = traffic.versions["1"].notes
    assert "SERVEKIT_REDIS_STREAM_MAXLEN=5" in note and "oldest entry" in note
    roomy = await read_window(log, "fraud", now - 3600, now + 1, max_rows=10, stream_maxlen=100)
    assert roomy.versions["1"].notes == []


async def test_an_empty_stream_is_no_traffic(aredis: aioredis.Redis) -> None:
    traffic = await read_window(PredictionLog(aredis), "fraud", 0, time.time(), max_rows=10)
    assert traffic.served() == [] and traffic.versions == {}


async def test_pages_through_long_windows(aredis: aioredis.Redis) -> None:
    log = PredictionLog(aredis, batch_size=500)
    now = time.time()
    for i in range(2500):
        log.append(_event("1", [[float(i % 7), 0.0]], now))
    await log.flush()
    traffic = await read_window(log, "fraud", now - 60, now + 1, max_rows=10_000)
    assert traffic.versions["1"].rows == 2500


def test_rows_without_logged_features() -> None:
    traffic = VersionTraffic("1")
    text = PredictionEvent("t", "1", "primary", "request", "r", 1.0, output=[{"embedding": [1.0]}])
    traffic.add(text)
    assert traffic.rows == 1 and traffic.features() is None
    mismatched = PredictionEvent(
        "t", "1", "primary", "request", "r", 1.0, inputs=[[1.0], [2.0]], output=[{"e": [1]}]
    )
    traffic.add(mismatched)  # two rows logged for one answer: the answer is kept alone
    assert traffic.rows == 2 and traffic.features() is None


@pytest.mark.parametrize("bad", [[[1.0]], [[1.0, 2.0], [3.0]]])
def test_features_need_one_width(bad: list[list[float]]) -> None:
    traffic = VersionTraffic("1")
    traffic.inputs = bad  # type: ignore[assignment]
    traffic.predictions = [{}] * len(bad)
    assert (traffic.features() is None) == (len(bad) == 2)
