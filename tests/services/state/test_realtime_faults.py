"""The real-time worker killed (SIGKILL) in the middle of the event stream.

Events read but not acknowledged stay pending in the consumer group; the restarted
worker (a new consumer) reclaims them with XAUTOCLAIM once idle, and the per-event
marker applied in the same script as the state change makes a re-delivered event change
nothing. So after kills at random points every event is applied exactly once.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from services.settings import FeatureSettings
from services.state import keys
from services.state.realtime import Event, EventLog
from tests.flows.faults import kill, record_fault, spawn, wait_for

USERS = 4000
PER_USER = 4  # the last-5 list holds all of a user's events and room for a double
CLAIM_IDLE_MS = 1000


async def _group(client: aioredis.Redis, group: str) -> dict[str, Any]:
    for info in await client.xinfo_groups(keys.event_stream_key()):
        name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
        if name == group:
            return dict(info)
    return {}


def _amount(user: int, k: int) -> float:
    return float(user * 10 + k)


async def _append_all(client: aioredis.Redis, settings: FeatureSettings) -> None:
    log, now = EventLog(client, settings), time.time()
    events = [
        Event(f"e{u}-{k}", now - 300 + k, {"user": f"u{u}"}, {"amount": _amount(u, k)})
        for k in range(PER_USER)
        for u in range(USERS)
    ]
    for start in range(0, len(events), 50):
        await asyncio.gather(*(log.append(e) for e in events[start : start + 50]))


async def test_a_killed_worker_loses_no_event_and_applies_none_twice(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    settings = FeatureSettings()
    total = USERS * PER_USER
    await _append_all(aredis, settings)
    env = {
        "SERVEKIT_REDIS_URL": redis_url,
        "SERVEKIT_FEATURES_CLAIM_MIN_IDLE_MS": str(CLAIM_IDLE_MS),
    }
    kills: list[int] = []  # entries pending (read, not acknowledged) at each kill
    read = 0
    for attempt in range(6):  # kill at random points until one cut a batch mid-way
        log = tmp_path / f"worker-{attempt}.log"
        child = spawn(["tests.services.state.realtime_child"], log, env)
        try:

            async def further(after: int = read) -> int | None:
                entries_read = int(
                    (await _group(aredis, settings.consumer_group)).get("entries-read") or 0
                )
                return entries_read if entries_read >= after + 1500 else None

            read = await wait_for(
                further, timeout_s=90, what="1500 more events read", proc=child, log=log
            )
        finally:
            kill(child)
        kills.append(int((await _group(aredis, settings.consumer_group))["pending"]))
        if kills[-1] > 0:
            break
    assert kills[-1] > 0, f"no kill left pending events: {kills}"
    restarted = time.monotonic()
    log = tmp_path / "worker-final.log"
    child = spawn(["tests.services.state.realtime_child"], log, env)
    try:

        async def reclaimed() -> float | None:
            consumers = await aredis.xinfo_consumers(
                keys.event_stream_key(), settings.consumer_group
            )
            mine = f"{socket.gethostname()}-{child.pid}".encode()
            left = sum(int(c["pending"]) for c in consumers if c["name"] != mine)
            return time.monotonic() - restarted if left == 0 else None

        reclaimed_s = await wait_for(
            reclaimed, timeout_s=120, what="the reclaim", proc=child, log=log
        )

        async def drained() -> float | None:
            group = await _group(aredis, settings.consumer_group)
            done = group.get("lag") == 0 and group.get("pending") == 0
            return time.monotonic() - restarted if done else None

        recovered_s = await wait_for(
            drained, timeout_s=180, what="a drained group", proc=child, log=log
        )
    finally:
        kill(child)

    async with aredis.pipeline(transaction=False) as pipe:
        for u in range(USERS):
            pipe.lrange(keys.realtime_last_key("user_activity", f"u{u}", "amount"), 0, -1)
            pipe.zcard(keys.realtime_window_key("user_activity", f"u{u}"))
        replies = await pipe.execute()
    lost = doubled = 0
    for u in range(USERS):
        values = sorted(float(v) for v in replies[2 * u])
        expected = sorted(_amount(u, k) for k in range(PER_USER))
        lost += len(set(expected) - set(values))
        doubled += len(values) - len(set(values) & set(expected))
        assert replies[2 * u + 1] == PER_USER
    seen = [k async for k in aredis.scan_iter(match=b"servekit:evseen:*", count=1000)]
    assert (lost, doubled, len(seen)) == (0, 0, total)
    record_fault(
        "realtime_worker_sigkill",
        fault="the real-time worker's process SIGKILLed mid-stream, then started again",
        lost=lost,
        lost_unit="events",
        recover_s=round(reclaimed_s, 3),
        events=total,
        kills=len(kills),
        events_pending_at_kills=kills,
        events_lost=lost,
        events_applied_twice=doubled,
        claim_min_idle_ms=CLAIM_IDLE_MS,
        seconds_from_restart_to_pending_reclaimed=round(reclaimed_s, 3),
        seconds_from_restart_to_all_applied=round(recovered_s, 3),
    )
