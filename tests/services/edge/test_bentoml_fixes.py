"""The TimeoutMiddleware patch: the per-request timer is cancelled when the request ends."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from bentoml._internal.server.http.traffic import TimeoutMiddleware

from services.edge import bentoml_fixes


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _silent_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    return None


async def _sent(mw: TimeoutMiddleware) -> list[Any]:
    out: list[Any] = []

    async def send(msg: Any) -> None:
        out.append(msg)

    await mw({"type": "http"}, None, send)
    return out


def _live_timers(loop: asyncio.AbstractEventLoop) -> int:
    return sum(1 for h in loop._scheduled if not h.cancelled())  # type: ignore[attr-defined]


async def test_timer_is_cancelled_after_response() -> None:
    bentoml_fixes.apply()
    loop = asyncio.get_running_loop()
    before = _live_timers(loop)
    mw = TimeoutMiddleware(_app, timeout=3600)
    for _ in range(50):
        assert (await _sent(mw))[0]["status"] == 200
    assert _live_timers(loop) == before  # unpatched: 50 live one-hour timers


async def test_app_that_sends_nothing_does_not_hang() -> None:
    bentoml_fixes.apply()
    mw = TimeoutMiddleware(_silent_app, timeout=3600)
    assert await asyncio.wait_for(_sent(mw), 2) == []


async def test_timeout_still_answers_504() -> None:
    bentoml_fixes.apply()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(10)

    out = await asyncio.wait_for(_sent(TimeoutMiddleware(slow, timeout=0.05)), 2)
    assert out[0]["status"] == 504


def test_servekit_metrics_use_in_process_values(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prometheus_client import values

    from monitoring.metrics import ServingMetrics

    # As inside a BentoML worker: multi-process (mmap) values are the default there.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.get_value_class())
    assert values.ValueClass is not values.MutexValue  # mmap-backed, as in a worker
    bentoml_fixes.apply()
    metrics = ServingMetrics()
    metrics.observe_request("fraud", "1", "predict", 0.001, 1)
    child = metrics.latency.labels("fraud", "1", "predict")
    assert isinstance(child._sum, values.MutexValue)  # type: ignore[attr-defined]
    assert (
        b'servekit_request_latency_seconds_count{model="fraud",route="predict",version="1"} 1.0'
        in metrics.render()
    )
