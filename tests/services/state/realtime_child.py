"""The gateway's real-time worker loop alone in a child process (``python -m
tests.services.state.realtime_child``), for the test that kills it: the same
``RedisRuntime`` the gateway starts, configured by ``SERVEKIT_*`` variables."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry

from services.settings import get_settings
from services.state.runtime import RedisRuntime


async def _main() -> None:
    runtime = RedisRuntime(get_settings(), CollectorRegistry())
    runtime.start()
    await asyncio.Event().wait()  # until killed


if __name__ == "__main__":
    asyncio.run(_main())
