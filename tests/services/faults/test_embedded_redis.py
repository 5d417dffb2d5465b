"""The embedded Redis killed with SIGKILL: rollout state, experiment assignments, features
and unconsumed events are all there once it is started again (append-only file)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from services.errors import ConflictError
from services.rollout.feedback import FeedbackStore
from services.rollout.signing import AnsweredPrediction
from services.rollout.state import RolloutStore
from services.state import keys
from services.state.redis_embedded import EmbeddedRedis


def wait_gone(pid: int, timeout_s: float = 10.0) -> None:
    """Poll until process ``pid`` no longer exists."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still exists after {timeout_s} s")


@pytest.fixture
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    # Unix socket paths are limited to ~100 bytes: keep the folder short.
    server = EmbeddedRedis(tmp_path_factory.mktemp("er"))
    yield server
    server.stop()
    pid = server.pid()
    if pid is not None and server.running():
        os.kill(pid, signal.SIGKILL)


async def test_state_survives_sigkill(embedded: EmbeddedRedis) -> None:
    url = embedded.start()
    client = aioredis.Redis.from_url(url)
    store = RolloutStore(client)
    await store.set_primary("fraud", "1")
    canary = await store.start_canary("fraud", "2", 10.0)
    feedback = FeedbackStore(client)
    await feedback.record_prediction("fraud", "candidate", "2", canary.experiment_id, 3.0)
    answered = AnsweredPrediction("req-1", "fraud", "candidate", "2", canary.experiment_id, 0)
    await FeedbackStore(client, clock=lambda: 1.0).record_outcome(answered, 1.0)
    await client.hset(keys.feature_key("user_stats", "v1", "u42"), "avg_amount_30d", "12.5")
    stream = keys.event_stream_key()
    await client.xgroup_create(stream, "realtime", id="0", mkstream=True)
    ids = [await client.xadd(stream, {"e": f"event-{i}".encode()}) for i in range(5)]
    # Two are delivered to a consumer and not acknowledged; three are not delivered yet.
    await client.xreadgroup("realtime", "worker-1", {stream: ">"}, count=2)
    await client.aclose()

    pid = embedded.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert not embedded.ping()
    embedded.start()

    client = aioredis.Redis.from_url(url)
    try:
        state = await RolloutStore(client).get("fraud")
        assert state.model_dump() == canary.model_dump()
        stats = await FeedbackStore(client).variant_stats("fraud", canary.experiment_id)
        assert stats["candidate"].predictions == 1
        assert stats["candidate"].outcomes == 1
        with pytest.raises(ConflictError):  # its claim survived too
            await FeedbackStore(client, clock=lambda: 1.0).record_outcome(answered, 1.0)
        feature = keys.feature_key("user_stats", "v1", "u42")
        assert await client.hget(feature, "avg_amount_30d") == b"12.5"
        assert [e[0] for e in await client.xrange(stream)] == ids
        pending = await client.xpending(stream, "realtime")
        assert pending["pending"] == 2
        unread = await client.xreadgroup("realtime", "worker-2", {stream: ">"})
        assert [e[0] for e in unread[0][1]] == ids[2:]
    finally:
        await client.aclose()


def test_a_paused_server_is_not_started_twice(embedded: EmbeddedRedis) -> None:
    embedded.start()
    pid = embedded.pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(RuntimeError, match="does not answer"):
            embedded.start()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert embedded.ping() and embedded.pid() == pid
    assert redis.Redis(unix_socket_path=str(embedded.socket)).config_get("appendonly") == {
        "appendonly": "yes"
    }


def test_start_survives_a_stale_socket_and_pidfile(embedded: EmbeddedRedis) -> None:
    embedded.start()
    pid = embedded.pid()
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert Path(embedded.socket).exists()  # left behind by the killed server
    assert embedded.start() == embedded.url and embedded.pid() != pid
