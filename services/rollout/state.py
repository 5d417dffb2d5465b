"""Rollout state per model in Redis: primary, candidate, mode, percent, experiment salt.

Layout (keys built by ``services.state.keys``: bytes, a ``:`` inside a name escaped; the
script below touches three keys, so they share the ``{rollouts}`` hash tag and hence one
Redis Cluster slot)::

    servekit:{rollouts}:<model>         hash  rev -> int, state -> RolloutState JSON
    servekit:{rollouts}:<model>:history stream, capped: at, action, reason, actor,
                                        revision, state
    servekit:{rollouts}                 set of models that have a state
    servekit:rollout                    pub/sub channel: {"model", "revision", "state"}

Every change is read-modify-write with optimistic concurrency: the new state is computed
in Python from the state read at revision ``r``, and one Lua script writes it only if the
revision is still ``r`` (else the writer reads again and retries). The same script appends
the history entry and publishes the notice, so a change, its audit line and its notice are
never apart. ``RolloutFollower`` keeps an in-process copy fresh from the notices (and a
periodic full read) so the serving path reads rollout state from memory.

What a state holds (modes ``off``, ``shadow``, ``canary``, ``ab``) and how each action
changes it are in ``services.rollout.transitions``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from pydantic import BaseModel, ConfigDict

from services.errors import ConflictError, InvalidInputError
from services.rollout import transitions
from services.rollout.transitions import (
    Change,
    RolloutState,
    check_model_name,
    existing,
    validated,
)
from services.state import keys

logger = logging.getLogger(__name__)


def channel_for(redis: aioredis.Redis) -> str:
    """The notice channel of the database ``redis`` uses.

    Pub/sub channels are server-wide, not per database: deployments sharing one Redis in
    different databases would otherwise steer each other's gateways. Database 0 keeps the
    plain ``servekit:rollout``; a Redis Cluster has only database 0.
    """
    pool = getattr(redis, "connection_pool", None)  # a cluster client has none
    return keys.rollout_channel(int(pool.connection_kwargs.get("db") or 0) if pool else 0)


class RolloutEvent(BaseModel):
    """One entry of a model's rollout history: when, what, why, who, and the result."""

    model_config = ConfigDict(frozen=True)

    id: str
    at: float
    action: str
    reason: str
    actor: str
    revision: int
    state: RolloutState


# KEYS: state hash, history stream, models set.
# ARGV: expected revision, state JSON, model, history maxlen, channel, notice, then the
# history entry's field/value pairs.
_CAS_SCRIPT = """
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'rev', rev + 1, 'state', ARGV[2])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], '*', unpack(ARGV, 7))
redis.call('PUBLISH', ARGV[5], ARGV[6])
return 1
"""


class RolloutStore:
    """Reads and changes rollout state in Redis, atomically, with history and notices.

    Args:
        redis: an asyncio Redis client.
        clock: seconds since the epoch; tests pass a fake one.
        history_maxlen: entries kept in each model's history stream.
        max_attempts: optimistic retries before a write gives up with ConflictError.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        clock: Callable[[], float] = time.time,
        *,
        history_maxlen: int = 1000,
        max_attempts: int = 200,
    ) -> None:
        self._redis = redis
        self._clock = clock
        self._history_maxlen = history_maxlen
        self._max_attempts = max_attempts
        self._cas = redis.register_script(_CAS_SCRIPT)

    async def get(self, model: str) -> RolloutState:
        """The state of ``model``; NotFoundError when it has none."""
        state, _ = await self._read(model)
        return existing(state, model)

    async def find(self, model: str) -> RolloutState | None:
        """The state of ``model``, or None when it has none."""
        state, _ = await self._read(model)
        return state

    async def models(self) -> list[str]:
        """Models that have a rollout state, sorted."""
        return sorted(_text(m) for m in await self._redis.smembers(keys.rollout_models_key()))

    async def all(self) -> dict[str, RolloutState]:
        """Every model's state, read in one pipelined round trip after the model list."""
        models = await self.models()
        if not models:
            return {}
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.hget(keys.rollout_state_key(model), "state")
            raws = await pipe.execute()
        return {
            model: RolloutState.model_validate_json(raw)
            for model, raw in zip(models, raws, strict=True)
            if raw is not None
        }

    async def update(
        self, model: str, change: Change, *, action: str, reason: str = "", actor: str = "servekit"
    ) -> RolloutState:
        """Apply ``change`` atomically: no concurrent writer's update is lost.

        Args:
            model: the model.
            change: computes the new state from the current one and the time now; it
                may raise (a ServekitError) to refuse the change.
            action: what was done, for the history (``"canary"``, ``"promote"``, ...).
            reason: why, for the history.
            actor: who, for the history.

        Returns:
            The state as written.
        """
        check_model_name(model)
        for _ in range(self._max_attempts):
            current, revision = await self._read(model)
            now = self._clock()
            new = validated(
                change(current, now), model=model, updated_at=now, revision=revision + 1
            )
            if await self._write(new, revision, now, action, reason, actor):
                logger.info(
                    "rollout %s: %s -> %s (%s, by %s)", model, action, _brief(new), reason, actor
                )
                return new
        raise ConflictError(
            f"rollout state of {model!r} changed {self._max_attempts} times while writing; "
            "try again",
            model=model,
        )

    async def _write(
        self, new: RolloutState, revision: int, now: float, action: str, reason: str, actor: str
    ) -> bool:
        """Write ``new``, its history entry and notice if still at ``revision``; else False."""
        state_json = new.model_dump_json()
        notice = json.dumps(
            {"model": new.model, "revision": new.revision, "state": new.model_dump(mode="json")}
        )
        entry = ["at", repr(now), "action", action, "reason", reason, "actor", actor]
        entry += ["revision", str(new.revision), "state", state_json]
        written = await self._cas(
            keys=[
                keys.rollout_state_key(new.model),
                keys.rollout_history_key(new.model),
                keys.rollout_models_key(),
            ],
            args=[
                revision,
                state_json,
                new.model,
                self._history_maxlen,
                channel_for(self._redis),
                notice,
                *entry,
            ],
        )
        return bool(written)

    async def set_primary(
        self, model: str, version: str, reason: str = "", actor: str = "servekit"
    ) -> RolloutState:
        """Create ``model``'s state, or replace its primary while no rollout runs."""
        change = transitions.set_primary(model, version)
        return await self.update(model, change, action="set_primary", reason=reason, actor=actor)

    async def ensure(
        self, model: str, primary: str, actor: str = "servekit"
    ) -> tuple[RolloutState, bool]:
        """Create ``model``'s state (mode off, ``primary``) unless it has one; never overwrites.

        Safe when several replicas start at once: the write only lands at revision 0's
        successor, so the first writer wins and every other one reads its state.

        Returns:
            The model's state and whether this call created it.
        """
        check_model_name(model)
        change = transitions.set_primary(model, primary)
        for _ in range(self._max_attempts):
            current, revision = await self._read(model)
            if current is not None:
                return current, False
            now = self._clock()
            new = validated(change(None, now), model=model, updated_at=now, revision=revision + 1)
            reason = "served model without rollout state"
            if await self._write(new, revision, now, "init", reason, actor):
                logger.info("rollout %s: initialised (%s)", model, _brief(new))
                return new, True
        raise ConflictError(f"rollout state of {model!r} kept changing; try again", model=model)

    async def start_shadow(
        self, model: str, candidate: str, reason: str = "", actor: str = "servekit"
    ) -> RolloutState:
        """Mirror traffic to ``candidate``; the primary keeps answering every request."""
        change = transitions.shadow(model, candidate)
        return await self.update(model, change, action="shadow", reason=reason, actor=actor)

    async def start_canary(
        self,
        model: str,
        candidate: str,
        percent: float = 5.0,
        reason: str = "",
        actor: str = "servekit",
    ) -> RolloutState:
        """Send ``percent`` of live traffic to ``candidate`` (sticky per user)."""
        change = transitions.canary(model, candidate, percent)
        return await self.update(model, change, action="canary", reason=reason, actor=actor)

    async def set_percent(
        self, model: str, percent: float, reason: str = "", actor: str = "servekit"
    ) -> RolloutState:
        """Change the candidate's share of a running canary or A/B test (same salt)."""
        change = transitions.set_percent(model, percent)
        return await self.update(model, change, action="set_percent", reason=reason, actor=actor)

    async def start_ab(
        self,
        model: str,
        candidate: str,
        percent: float = 50.0,
        reason: str = "",
        actor: str = "servekit",
        experiment_id: str | None = None,
    ) -> RolloutState:
        """Start an A/B experiment: fresh salt and experiment id, ``percent`` to candidate."""
        change = transitions.ab(model, candidate, percent, experiment_id)
        return await self.update(model, change, action="ab", reason=reason, actor=actor)

    async def promote(self, model: str, reason: str = "", actor: str = "servekit") -> RolloutState:
        """Make the candidate the primary and end the rollout."""
        change = transitions.promote(model)
        return await self.update(model, change, action="promote", reason=reason, actor=actor)

    async def rollback(self, model: str, reason: str = "", actor: str = "servekit") -> RolloutState:
        """Drop the candidate and end the rollout; the primary keeps serving."""
        change = transitions.rollback(model)
        return await self.update(model, change, action="rollback", reason=reason, actor=actor)

    async def history(self, model: str, n: int = 20) -> list[RolloutEvent]:
        """The last ``n`` changes of ``model``, newest first."""
        check_model_name(model)
        if n < 1:
            raise InvalidInputError(f"n must be >= 1, got {n}", field="n")
        entries: Any = await self._redis.xrevrange(keys.rollout_history_key(model), count=n)
        return [_event(entry_id, fields) for entry_id, fields in entries]

    async def _read(self, model: str) -> tuple[RolloutState | None, int]:
        check_model_name(model)
        raw_rev, raw_state = await self._redis.hmget(
            keys.rollout_state_key(model), ["rev", "state"]
        )
        revision = int(raw_rev or 0)
        if raw_state is None:
            return None, revision
        return RolloutState.model_validate_json(raw_state), revision


def _brief(state: RolloutState) -> str:
    return (
        f"mode={state.mode} primary={state.primary} candidate={state.candidate} "
        f"percent={state.percent:g} rev={state.revision}"
    )


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _event(entry_id: bytes | str, fields: Mapping[bytes | str, bytes | str]) -> RolloutEvent:
    f = {_text(k): _text(v) for k, v in fields.items()}
    return RolloutEvent(
        id=_text(entry_id),
        at=float(f["at"]),
        action=f["action"],
        reason=f["reason"],
        actor=f["actor"],
        revision=int(f["revision"]),
        state=RolloutState.model_validate_json(f["state"]),
    )
