"""Rollout state, its followers, the prediction log and the feedback counters on a Redis
Cluster: the same tests, with ``aredis`` a cluster client, plus the cluster's own checks
of what those tests do with extra single-server clients."""

from __future__ import annotations

import asyncio

from redis.asyncio.cluster import RedisCluster

from services.rollout.feedback import FeedbackStore
from services.rollout.follower import RolloutFollower
from services.rollout.signing import AnsweredPrediction
from services.rollout.state import RolloutStore, channel_for
from services.rollout.transitions import RolloutState
from services.state.keys import (
    experiment_counters_key,
    outcome_key,
    rollout_models_key,
    rollout_state_key,
)
from services.state.redis_clients import connect, slot_of
from tests.services.rollout.test_feedback import *  # noqa: F403
from tests.services.rollout.test_routing import *  # noqa: F403
from tests.services.rollout.test_state import *  # noqa: F403
from tests.services.rollout.test_transitions import *  # noqa: F403
from tests.services.state import cluster_fixtures

aredis = cluster_fixtures.aredis  # this module's tests run on the cluster

# These open extra single-server clients from --redis-url (or pick its databases); their
# cluster counterparts are below.
del test_concurrent_writers_lose_no_update  # noqa: F821
del test_follower_sees_changes_within_a_second  # noqa: F821
del test_follower_catches_up_after_losing_its_connection  # noqa: F821
del test_notice_channel_is_per_database  # noqa: F821
del test_ensure_creates_once_and_never_overwrites  # noqa: F821


async def test_cluster_writers_on_many_clients_lose_no_update(
    redis_cluster_url: str, aredis: RedisCluster
) -> None:
    setup = RolloutStore(aredis)
    await setup.set_primary("fraud", "v1")
    await setup.start_canary("fraud", "v2", 1)
    clients = [connect(redis_cluster_url) for _ in range(4)]

    def bump(state: RolloutState | None, now: float) -> RolloutState:
        assert state is not None
        return state.model_copy(update={"percent": state.percent + 1})

    try:
        await asyncio.gather(
            *(
                RolloutStore(clients[i % 4]).update("fraud", bump, action="bump", reason=f"w{i}")
                for i in range(40)
            )
        )
    finally:
        for c in clients:
            await c.aclose()
    final = await setup.get("fraud")
    assert (final.percent, final.revision) == (41, 42)
    assert len(await setup.history("fraud", 1000)) == 42
    # The transition script's three keys share one slot.
    assert slot_of(rollout_state_key("fraud")) == slot_of(rollout_models_key())


async def test_cluster_follower_sees_changes_within_a_second(
    redis_cluster_url: str, aredis: RedisCluster
) -> None:
    assert channel_for(aredis) == "servekit:rollout"
    writer = RolloutStore(aredis)
    await writer.set_primary("fraud", "v1")
    follower_client = connect(redis_cluster_url)
    # An hour between full reads: only the notices can bring the changes in time.
    follower = RolloutFollower(follower_client, refresh_seconds=3600)
    try:
        async with follower:
            assert follower.get("fraud").primary == "v1"
            await writer.start_canary("fraud", "v2", 10)
            await follower.wait_for(lambda states: states["fraud"].mode == "canary", timeout=1.0)
            await writer.set_primary("churn", "c1")
            await follower.wait_for(lambda states: "churn" in states, timeout=1.0)
    finally:
        await follower_client.aclose()


async def test_cluster_outcome_is_claimed_and_counted_in_one_slot(
    aredis: RedisCluster,
) -> None:
    feedback = FeedbackStore(aredis, clock=lambda: 1_000.0)
    ids = [f"req-{i}" for i in range(20)]
    counters = experiment_counters_key("fraud", "exp1", "candidate")
    claims = {slot_of(outcome_key("fraud", "exp1", "candidate", r)) for r in ids}
    assert claims == {slot_of(counters)}
    answered = [AnsweredPrediction(r, "fraud", "candidate", "v2", "exp1", 1_000) for r in ids]
    for i, prediction in enumerate(answered):
        await feedback.record_outcome(prediction, i % 2)
    again = await asyncio.gather(
        *(feedback.record_outcome(p, 1) for p in answered[:5]), return_exceptions=True
    )
    assert all(type(e).__name__ == "ConflictError" for e in again)
    stored = await aredis.hgetall(counters)
    assert int(stored[b"outcomes"]) == 20
    assert int(stored[b"conversions"]) == 10
