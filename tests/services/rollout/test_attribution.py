"""Attribution written before the answer leaves, time-ordered request ids, 404 vs 410."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.errors import NotFoundError
from services.rollout.attribution import AttributionWriter, issued_at, new_request_id
from services.rollout.feedback import AttributionExpiredError, FeedbackStore


def test_request_ids_are_time_ordered_and_unique() -> None:
    ids = [new_request_id(lambda: 1_800_000_000.123) for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert issued_at(ids[0]) == pytest.approx(1_800_000_000.123, abs=1e-3)
    assert issued_at("fb-1") is None
    assert issued_at("0" * 32) is None
    assert issued_at("f" * 32) is None  # version nibble is not 7


async def test_every_record_is_readable_once_its_wait_returns(aredis: aioredis.Redis) -> None:
    feedback = FeedbackStore(aredis)
    writer = AttributionWriter(feedback)

    async def request(i: int) -> str:
        rid = new_request_id()
        written = writer.submit((rid, "fraud", "primary", "1", None))
        await asyncio.sleep(0)  # the model runs
        await writer.wait(written)
        return rid

    ids = await asyncio.gather(*(request(i) for i in range(20)))
    outcomes = [await feedback.record_outcome(rid, 1) for rid in ids]  # no retry, no sleep
    assert [o.version for o in outcomes] == ["1"] * 20
    assert writer.written == 20 and writer.errors == 0


async def test_unknown_and_expired_ids_are_told_apart(aredis: aioredis.Redis) -> None:
    week = 7 * 86_400
    later = FeedbackStore(aredis, ttl_seconds=week, clock=lambda: time.time() + week + 60)
    with pytest.raises(AttributionExpiredError) as expired:
        await later.record_outcome(new_request_id(), 1)
    assert expired.value.error_code == 410 and "expired" in expired.value.message
    with pytest.raises(NotFoundError) as unknown:
        await FeedbackStore(aredis).record_outcome(new_request_id(), 1)
    assert not isinstance(unknown.value, AttributionExpiredError)
    assert unknown.value.error_code == 404 and "unknown request_id" in unknown.value.message
    with pytest.raises(NotFoundError, match="unknown request_id 'client-id'"):
        await later.record_outcome("client-id", 1)  # not time-ordered: cannot be dated


async def test_a_dead_redis_is_not_waited_for() -> None:
    dead = aioredis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    writer = AttributionWriter(FeedbackStore(dead), wait_s=0.05)
    t0 = time.perf_counter()
    await writer.wait(writer.submit(("r1", "m", "primary", "1", None)))
    assert time.perf_counter() - t0 < 0.2  # bounded by wait_s
    await writer.drain()
    assert writer.errors == 1 and not writer.healthy
    t0 = time.perf_counter()
    await writer.wait(writer.submit(("r2", "m", "primary", "1", None)))
    assert time.perf_counter() - t0 < 0.01  # unhealthy: answer at once
    await writer.drain()
    await dead.aclose()
