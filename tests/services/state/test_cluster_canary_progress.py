"""A canary step's saved progress on a Redis Cluster: the same tests, with ``aredis`` a
cluster client (the progress key shares the rollout keys' slot, so its script runs)."""

from __future__ import annotations

from services.state.keys import canary_progress_key, rollout_state_key
from services.state.redis_clients import slot_of
from tests.services.rollout.test_canary_progress import *  # noqa: F403
from tests.services.state import cluster_fixtures

aredis = cluster_fixtures.aredis  # this module's tests run on the cluster


def test_the_progress_key_shares_the_rollout_slot() -> None:
    assert slot_of(canary_progress_key("fraud")) == slot_of(rollout_state_key("fraud"))
