"""Outcome attribution written before the answer leaves: every answered request's id is
kept (a small hash with a TTL) so that ``POST /feedback`` finds it at once.

``AttributionWriter`` batches the records of one event-loop turn into one pipelined write,
issued as soon as the request yields to the loop (while its features are read and its
model runs), so the request waits for it only when Redis is slower than the inference.
A failing Redis is never waited for again until a write succeeds (fail open).

Request ids the gateway generates are time-ordered (UUIDv7 layout: the first 48 bits are
the Unix time in milliseconds), so an id whose record is gone can be told apart: older
than the TTL means its attribution expired, otherwise it was never answered here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from services.errors import ServekitError

if TYPE_CHECKING:
    from services.rollout.feedback import AttributionIn, FeedbackStore

logger = logging.getLogger(__name__)

_RANDOM_BITS = (1 << 62) - 1


def new_request_id(clock: Callable[[], float] = time.time) -> str:
    """A fresh request id: 32 hex digits, UUIDv7 layout (time-ordered, 74 random bits)."""
    ms = int(clock() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms << 80) | (0x7 << 76) | (((rand >> 62) & 0xFFF) << 64)
    value |= (0b10 << 62) | (rand & _RANDOM_BITS)
    return f"{value:032x}"


def issued_at(request_id: str) -> float | None:
    """When a time-ordered request id was issued (seconds since the epoch), else None."""
    if len(request_id) != 32 or request_id[12] != "7" or request_id[16] not in "89ab":
        return None
    try:
        return int(request_id[:12], 16) / 1000.0
    except ValueError:
        return None


class AttributionWriter:
    """Writes attribution records in pipelined batches, one per event-loop turn.

    Args:
        feedback: where the records go.
        wait_s: longest a request waits for its batch's write (then it answers anyway):
            a write normally lands while the model runs, so this bounds only a slow Redis.
    """

    def __init__(self, feedback: FeedbackStore, *, wait_s: float = 0.05) -> None:
        self._feedback = feedback
        self._wait_s = wait_s
        self._buffer: list[AttributionIn] = []
        self._pending: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.healthy = True
        """False after a failed write, until one succeeds: requests do not wait then."""
        self.written = 0
        """Records written."""
        self.errors = 0
        """Records whose write failed."""

    def submit(self, record: AttributionIn) -> asyncio.Future[None]:
        """Queue one record; the future completes when its batch is written (or failed)."""
        self._buffer.append(record)
        if self._pending is None:
            loop = asyncio.get_running_loop()
            self._pending = loop.create_future()
            loop.call_soon(self._flush)
        return self._pending

    async def wait(self, written: asyncio.Future[None]) -> None:
        """Wait, at most ``wait_s`` and only while Redis is healthy, for ``written``."""
        if written.done() or not self.healthy:
            return
        try:
            await asyncio.wait_for(asyncio.shield(written), self._wait_s)
        except TimeoutError:
            logger.debug("attribution write slower than %.3f s; answering", self._wait_s)

    def _flush(self) -> None:
        batch, self._buffer = self._buffer, []
        done, self._pending = self._pending, None
        if done is None or not batch:
            return
        task = asyncio.get_running_loop().create_task(self._write(batch, done))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, batch: list[AttributionIn], done: asyncio.Future[None]) -> None:
        try:
            await self._feedback.attribute(batch)
        except (RedisError, OSError, ServekitError) as exc:
            self.errors += len(batch)
            self.healthy = False
            logger.warning("attribution of %d requests failed (fail-open): %s", len(batch), exc)
        else:
            self.written += len(batch)
            self.healthy = True
        finally:
            if not done.done():
                done.set_result(None)

    async def drain(self) -> None:
        """Write what is queued and wait for every write in flight."""
        self._flush()
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
