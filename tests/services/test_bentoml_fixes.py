"""The TimeoutMiddleware patch: the per-request timer is cancelled when the request ends."""

from __future__ import annotations

import asyncio
from typing import Any

from bentoml._internal.server.http.traffic import TimeoutMiddleware

from services import bentoml_fixes


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
