"""Rollout state in a real Redis: transitions, atomicity, history, pub/sub followers."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis.asyncio as aioredis

from services.errors import ConflictError, InvalidInputError, NotFoundError
from services.rollout.follower import RolloutFollower
from services.rollout.state import RolloutStore, channel_for
from services.rollout.transitions import RolloutState
from services.state.keys import rollout_history_key


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(aredis: aioredis.Redis, clock: FakeClock) -> RolloutStore:
    return RolloutStore(aredis, clock)


async def test_missing_state(store: RolloutStore) -> None:
    assert await store.find("fraud") is None
    with pytest.raises(NotFoundError):
        await store.get("fraud")
    with pytest.raises(NotFoundError):
        await store.start_shadow("fraud", "v2")


async def test_lifecycle_shadow_canary_promote(store: RolloutStore, clock: FakeClock) -> None:
    created = await store.set_primary("fraud", "v1", reason="first deploy", actor="ci")
    assert (created.primary, created.mode, created.revision) == ("v1", "off", 1)
    assert created.salt

    clock.advance(10)
    shadow = await store.start_shadow("fraud", "v2", reason="validate latency")
    assert (shadow.mode, shadow.candidate, shadow.percent) == ("shadow", "v2", 0)
    assert shadow.started_at == clock.now and shadow.updated_at == clock.now

    clock.advance(86_400)
    canary = await store.start_canary("fraud", "v2", 5)
    assert (canary.mode, canary.percent) == ("canary", 5)
    assert canary.experiment_id and canary.salt == shadow.salt
    assert canary.started_at == shadow.started_at

    clock.advance(3600)
    step = await store.set_percent("fraud", 25)
    assert step.percent == 25
    assert (step.experiment_id, step.salt) == (canary.experiment_id, canary.salt)
    assert step.updated_at == clock.now

    promoted = await store.promote("fraud", reason="gates passed")
    assert (promoted.primary, promoted.candidate, promoted.mode) == ("v2", None, "off")
    assert (promoted.percent, promoted.experiment_id, promoted.started_at) == (0, None, None)
    assert promoted.revision == 5
    assert await store.get("fraud") == promoted
    assert await store.models() == ["fraud"]


async def test_rollback_keeps_the_primary(store: RolloutStore) -> None:
    await store.set_primary("fraud", "v1")
    await store.start_canary("fraud", "v2", 50)
    back = await store.rollback("fraud", reason="error rate")
    assert (back.primary, back.candidate, back.mode, back.percent) == ("v1", None, "off", 0)


async def test_ab_gets_a_fresh_salt_and_experiment(store: RolloutStore) -> None:
    await store.set_primary("fraud", "v1")
    canary = await store.start_canary("fraud", "v2", 50)
    ab = await store.start_ab("fraud", "v2", 50, experiment_id="exp-42")
    assert ab.mode == "ab" and ab.experiment_id == "exp-42"
    assert ab.salt != canary.salt
    again = await store.start_ab("fraud", "v2", 20)
    assert again.experiment_id not in (None, "exp-42")


@pytest.mark.parametrize("percent", [-1, 0, 100.5, float("nan")])
async def test_canary_percent_is_checked(store: RolloutStore, percent: float) -> None:
    await store.set_primary("fraud", "v1")
    with pytest.raises(InvalidInputError) as info:
        await store.start_canary("fraud", "v2", percent)
    assert info.value.field == "percent"


async def test_transitions_are_checked(store: RolloutStore) -> None:
    await store.set_primary("fraud", "v1")
    with pytest.raises(InvalidInputError) as info:
        await store.start_shadow("fraud", "v1")
    assert info.value.field == "candidate"
    with pytest.raises(InvalidInputError) as info:
        await store.promote("fraud")
    assert info.value.field == "candidate"
    with pytest.raises(InvalidInputError) as info:
        await store.rollback("fraud")
    assert info.value.field == "candidate"

    await store.start_shadow("fraud", "v2")
    with pytest.raises(InvalidInputError) as info:
        await store.set_percent("fraud", 10)
    assert info.value.field == "mode"
    with pytest.raises(ConflictError):
        await store.start_canary("fraud", "v3", 5)
    with pytest.raises(ConflictError):
        await store.set_primary("fraud", "v3")
    with pytest.raises(InvalidInputError) as info:
        await store.set_primary("", "v1")
    assert info.value.field == "model"

    # A refused change writes nothing.
    state = await store.get("fraud")
    assert (state.mode, state.candidate, state.revision) == ("shadow", "v2", 2)
    assert len(await store.history("fraud", 100)) == 2


async def test_concurrent_writers_lose_no_update(redis_url: str, aredis: aioredis.Redis) -> None:
    setup = RolloutStore(aredis)
    await setup.set_primary("fraud", "v1")
    await setup.start_canary("fraud", "v2", 1)
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(5)]
    stores = [RolloutStore(c) for c in clients]

    def bump(state: RolloutState | None, now: float) -> RolloutState:
        assert state is not None
        return state.model_copy(update={"percent": state.percent + 1})

    try:
        writes = [
            stores[i % len(stores)].update("fraud", bump, action="bump", reason=f"w{i}")
            for i in range(60)
        ]
        results = await asyncio.gather(*writes)
    finally:
        for c in clients:
            await c.aclose()

    final = await setup.get("fraud")
    assert final.percent == 61
    assert final.revision == 62
    assert sorted(r.revision for r in results) == list(range(3, 63))
    history = await setup.history("fraud", 1000)
    assert len(history) == 62
    assert sorted(e.reason for e in history if e.action == "bump") == sorted(
        f"w{i}" for i in range(60)
    )


async def test_history_says_when_what_why_who(store: RolloutStore, clock: FakeClock) -> None:
    await store.set_primary("fraud", "v1", reason="deploy", actor="ci")
    clock.advance(60)
    await store.start_canary("fraud", "v2", 5, reason="new model", actor="alice")
    clock.advance(60)
    await store.rollback("fraud", reason="p99 too high", actor="canary-flow")

    events = await store.history("fraud", 10)
    assert [e.action for e in events] == ["rollback", "canary", "set_primary"]
    assert [e.actor for e in events] == ["canary-flow", "alice", "ci"]
    assert [e.reason for e in events] == ["p99 too high", "new model", "deploy"]
    assert [e.at for e in events] == [clock.now, clock.now - 60, clock.now - 120]
    assert [e.revision for e in events] == [3, 2, 1]
    assert events[1].state.percent == 5 and events[1].state.candidate == "v2"
    assert len(await store.history("fraud", 2)) == 2


async def test_history_is_capped(aredis: aioredis.Redis) -> None:
    store = RolloutStore(aredis, history_maxlen=10)
    await store.set_primary("fraud", "v1")
    await store.start_canary("fraud", "v2", 1)
    for p in range(2, 16):
        await store.set_percent("fraud", p)
    assert await aredis.xlen(rollout_history_key("fraud")) == 10
    assert (await store.history("fraud", 1))[0].state.percent == 15


async def test_every_change_is_published(store: RolloutStore, aredis: aioredis.Redis) -> None:
    pubsub = aredis.pubsub()
    await pubsub.subscribe(channel_for(aredis))
    try:
        await store.set_primary("fraud", "v1")
        message = None
        while message is None or message["type"] != "message":
            # Generous: this checks that a notice is sent; the follower test checks timing.
            message = await pubsub.get_message(timeout=5.0)
            assert message is not None, "no notice within 5 s"
        notice = json.loads(message["data"])
        assert (notice["model"], notice["revision"]) == ("fraud", 1)
        assert notice["state"]["primary"] == "v1"
    finally:
        await pubsub.aclose()


async def test_follower_sees_changes_within_a_second(
    redis_url: str, aredis: aioredis.Redis
) -> None:
    writer = RolloutStore(aredis)
    await writer.set_primary("fraud", "v1")
    seen: list[RolloutState] = []
    follower_client = aioredis.Redis.from_url(redis_url)
    # An hour between full reads: only the pub/sub notices can bring the changes in time.
    follower = RolloutFollower(follower_client, refresh_seconds=3600, on_change=seen.append)
    try:
        async with follower:
            # The full read at start brought the existing state.
            assert follower.get("fraud") is not None
            assert follower.get("fraud").primary == "v1"

            await writer.start_canary("fraud", "v2", 10)
            await follower.wait_for(lambda states: states["fraud"].mode == "canary", timeout=1.0)
            assert follower.get("fraud").percent == 10

            await writer.set_primary("churn", "c1")
            await follower.wait_for(lambda states: "churn" in states, timeout=1.0)

            await writer.promote("fraud")
            await follower.wait_for(lambda states: states["fraud"].primary == "v2", timeout=1.0)

            # A full read never rolls a state back to an older revision.
            await follower.refresh()
            assert follower.get("fraud").revision == 3
            assert [s.revision for s in seen if s.model == "fraud"] == [1, 2, 3]
            assert follower.get("unknown") is None
    finally:
        await follower_client.aclose()


async def test_follower_wait_times_out(aredis: aioredis.Redis) -> None:
    follower = RolloutFollower(aredis, refresh_seconds=3600)
    async with follower:
        with pytest.raises(TimeoutError):
            await follower.wait_for(lambda states: "nothing" in states, timeout=0.05)


async def test_follower_catches_up_after_losing_its_connection(
    redis_url: str, aredis: aioredis.Redis
) -> None:
    writer = RolloutStore(aredis)
    await writer.set_primary("fraud", "v1")
    name = "servekit-test-follower"
    follower_client = aioredis.Redis.from_url(redis_url, client_name=name)
    follower = RolloutFollower(follower_client, refresh_seconds=3600)
    try:
        async with follower:
            # Kill only this test's subscriber connection (other users share the server).
            clients = await aredis.client_list(_type="pubsub")
            (victim,) = [c for c in clients if c.get("name") == name]
            await aredis.client_kill_filter(_id=victim["id"])
            # Published while the follower is (about to be) disconnected: the notice is
            # lost, the full read after resubscribing brings the change.
            await writer.start_canary("fraud", "v2", 5)
            await follower.wait_for(lambda states: states["fraud"].mode == "canary", timeout=5.0)
    finally:
        await follower_client.aclose()


async def test_notice_channel_is_per_database(redis_url: str) -> None:
    """Pub/sub is server-wide: two databases must not share a notice channel."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(redis_url)
    db0 = aioredis.Redis.from_url(urlunsplit(parts._replace(path="/0")))
    db5 = aioredis.Redis.from_url(urlunsplit(parts._replace(path="/5")))
    try:
        assert channel_for(db0) == "servekit:rollout"
        assert channel_for(db5) == "servekit:rollout:db5"
    finally:
        await db0.aclose()
        await db5.aclose()


async def test_ensure_creates_once_and_never_overwrites(
    redis_url: str, aredis: aioredis.Redis
) -> None:
    # Several replicas start at once: one creates the state, the others read it.
    clients = [aioredis.Redis.from_url(redis_url) for _ in range(5)]
    try:
        results = await asyncio.gather(
            *(RolloutStore(c).ensure("fraud", str(i + 1)) for i, c in enumerate(clients))
        )
    finally:
        for c in clients:
            await c.aclose()
    assert sum(created for _, created in results) == 1
    primaries = {state.primary for state, _ in results}
    assert len(primaries) == 1
    store = RolloutStore(aredis)
    state = await store.get("fraud")
    assert state.mode == "off" and state.primary in primaries and state.revision == 1
    assert (await store.history("fraud"))[0].action == "init"

    await store.start_shadow("fraud", "9")
    again, created = await store.ensure("fraud", "1")
    assert not created and again.mode == "shadow" and again.candidate == "9"
