"""After Redis is killed and started again, no call of the gateway's clients fails on a
connection pooled before the restart: a dropped connection is retried once on a new one."""

from __future__ import annotations

import signal
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.fault_cases import RedisServer
from services.settings import RedisSettings, Settings
from services.state.runtime import RedisRuntime
from tests.conftest import free_port


async def test_pooled_connections_survive_a_restart(work: Path) -> None:
    server = RedisServer(free_port(), work / "redis")
    server.start()
    runtime = RedisRuntime(Settings(redis=RedisSettings(url=server.url)), CollectorRegistry())
    clients = [runtime.client, runtime.background_client, runtime.control_client]
    try:
        for client in clients:
            await client.set("k", "v")  # each pool now holds a connection
        server.signal(signal.SIGKILL)
        server.start()
        for client in clients:  # the pooled connection is dead: retried on a new one
            assert await client.get("k") == b"v"  # the append-only file kept it
    finally:
        await runtime.close()
        server.stop()
