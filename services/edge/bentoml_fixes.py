"""Small, documented workarounds for BentoML 1.4 defects that cost servekit latency.

``TimeoutMiddleware`` (bentoml/_internal/server/http/traffic.py) arms
``loop.call_later(timeout, ...)`` per request and never cancels it, so every request's
future, context and span stay alive for ``traffic.timeout`` seconds: the heap grows with
the request rate, and gen-2 GC pauses of 85-210 ms land on p99.
``apply()`` replaces its ``__call__`` with the same logic plus ``handle.cancel()`` once the
response has started or the app has finished.

BentoML also sets ``PROMETHEUS_MULTIPROC_DIR`` for its own multi-process metrics, which turns
every prometheus_client value created afterwards into an mmap'd file with a pid check on
each update. servekit turns BentoML's metrics off and serves its own per-process registry
on ``/metrics``, so ``apply()`` makes new values plain in-process ones (measured: the pid
check alone was ~2 % of the gateway's CPU at concurrency 32).

Idempotent; applied when ``services.service`` is imported, before BentoML builds the ASGI
app.
"""

from __future__ import annotations

import asyncio
from typing import Any

_APPLIED = False


async def _timeout_call(self: Any, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    handle = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: Any) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)

    # The app may finish without sending anything; release the waiter then too.
    def _release(_: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    fut.add_done_callback(_release)
    try:
        await waiter
    except TimeoutError:
        if fut.cancel():
            from starlette.responses import JSONResponse

            resp = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"},
                status_code=504,
            )
            await resp(scope, receive, send)
    else:
        handle.cancel()
        await fut
    finally:
        handle.cancel()


def apply() -> None:
    """Patch BentoML's TimeoutMiddleware to cancel its per-request timer."""
    global _APPLIED
    from prometheus_client import values

    values.ValueClass = values.MutexValue
    if _APPLIED:
        return
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware.__call__ = _timeout_call  # type: ignore[method-assign,assignment]
    _APPLIED = True
