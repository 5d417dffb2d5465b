"""``RolloutFollower``: every replica's in-memory copy of the rollout states, so the
serving path reads them with a dict lookup and follows changes within a second."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from services.rollout.state import RolloutStore, _brief, channel_for
from services.rollout.transitions import RolloutState

logger = logging.getLogger(__name__)


class RolloutFollower:
    """An in-process copy of every model's rollout state, kept fresh from pub/sub.

    ``get`` is a dict lookup, for the serving path. Notices carry the full state, so a
    change costs no read; a full read runs at start, after every (re)subscription (notices
    sent while disconnected are lost), and every ``refresh_seconds`` as a safety net.
    A notice only replaces a state with a higher revision (a late notice never rolls the
    copy back); a full read is authoritative (see ``refresh``).

    Args:
        redis: an asyncio Redis client.
        refresh_seconds: period of the full read.
        on_change: called with each new state (on the event loop; keep it quick).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        refresh_seconds: float = 30.0,
        on_change: Callable[[RolloutState], None] | None = None,
    ) -> None:
        self._redis = redis
        self._store = RolloutStore(redis)
        self._refresh_seconds = refresh_seconds
        self._on_change = on_change
        self._states: dict[str, RolloutState] = {}
        self._changed = asyncio.Condition()
        self._pubsub: Any = None
        self._tasks: list[asyncio.Task[None]] = []

    def get(self, model: str) -> RolloutState | None:
        """The latest known state of ``model``, or None when it has none."""
        return self._states.get(model)

    @property
    def states(self) -> Mapping[str, RolloutState]:
        """A snapshot of every known state."""
        return dict(self._states)

    async def start(self) -> None:
        """Subscribe, read everything once, then follow notices in the background."""
        if self._tasks:
            return
        self._pubsub = self._redis.pubsub()
        await self._pubsub.subscribe(channel_for(self._redis))
        # Wait for the confirmation so no notice published after the full read is missed.
        while True:
            message = await self._pubsub.get_message(timeout=None)
            if message is not None and message["type"] == "subscribe":
                break
        await self.refresh()
        self._tasks = [
            asyncio.create_task(self._listen(), name="rollout-follower-listen"),
            asyncio.create_task(self._refresh_periodically(), name="rollout-follower-refresh"),
        ]
        logger.info("rollout follower started with %d model(s)", len(self._states))

    async def stop(self) -> None:
        """Stop following and close the subscription."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None

    async def __aenter__(self) -> RolloutFollower:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def refresh(self) -> None:
        """Read every model's state from Redis; Redis is authoritative.

        A state whose revision went backwards (Redis restarted without persistence, or was
        flushed, and the state was written anew) replaces the remembered one; a model no
        longer in Redis is forgotten, so its requests go to its default version again.
        """
        snapshot = await self._store.all()
        for model in [m for m in self._states if m not in snapshot]:
            del self._states[model]
        for state in snapshot.values():
            known = self._states.get(state.model)
            if known is not None and state.revision < known.revision:
                del self._states[state.model]
            await self._apply(state)

    async def wait_for(
        self, predicate: Callable[[Mapping[str, RolloutState]], bool], timeout: float
    ) -> None:
        """Wait until ``predicate(states)`` holds; TimeoutError after ``timeout`` seconds."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: predicate(self._states)), timeout)

    async def _apply(self, state: RolloutState) -> bool:
        known = self._states.get(state.model)
        if known is not None and known.revision >= state.revision:
            return False
        self._states[state.model] = state
        if self._on_change is not None:
            try:
                self._on_change(state)
            except Exception:  # a faulty callback must not stop the following
                logger.exception("rollout follower's on_change failed for %s", state.model)
        async with self._changed:
            self._changed.notify_all()
        return True

    async def _listen(self) -> None:
        backoff = 0.0
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except RedisError as exc:
                # redis-py reconnects and resubscribes on the next read; the "subscribe"
                # confirmation that follows triggers a full read.
                backoff = min(max(backoff * 2, 0.05), 5.0)
                logger.warning(
                    "rollout follower lost its subscription (retry in %gs): %s", backoff, exc
                )
                await asyncio.sleep(backoff)
                continue
            backoff = 0.0
            if message is None:
                continue
            if message["type"] == "subscribe":
                logger.info("rollout follower resubscribed; reading every state again")
                await self._refresh_logged()
            elif message["type"] == "message":
                await self._on_notice(message["data"])

    async def _on_notice(self, data: bytes | str) -> None:
        try:
            state = RolloutState.model_validate(json.loads(data)["state"])
        except (ValueError, KeyError, TypeError, ValidationError) as exc:
            logger.warning("ignoring malformed rollout notice %r: %s", data[:200], exc)
            return
        if await self._apply(state):
            logger.info("rollout %s followed: %s", state.model, _brief(state))

    async def _refresh_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_seconds)
            await self._refresh_logged()

    async def _refresh_logged(self) -> None:
        try:
            await self.refresh()
        except RedisError as exc:
            logger.warning("rollout follower could not refresh (keeps its copy): %s", exc)
