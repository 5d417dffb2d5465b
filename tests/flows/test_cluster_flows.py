"""The flows and the CLI on a Redis Cluster (``redis+cluster://``): the daily
materialization loads the feature store the gateways read, the rollout tasks promote and
roll back, and ``servekit rollout`` drives a rollout, all against a real three-master
cluster."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prefect import flow
from redis.asyncio.cluster import RedisCluster
from typer.testing import CliRunner

from flows.cli import app
from flows.materialize import materialize
from flows.rollout_tasks import promote_rollout, rollback_rollout
from services.rollout.state import RolloutStore
from services.settings import FeatureSettings, get_settings
from services.state.features import FeatureRegistry, FeatureStore
from services.state.keys import rollout_models_key, rollout_state_key
from services.state.redis_clients import connect_sync
from tests.flows.test_materialize import AS_OF
from tests.services.state import cluster_fixtures

aredis = cluster_fixtures.aredis  # a client of the flushed cluster


async def test_materialize_loads_the_feature_store_of_a_cluster(
    redis_cluster_url: str, aredis: RedisCluster
) -> None:
    results = await materialize(as_of=AS_OF, redis_url=redis_cluster_url)
    assert results["user_stats"].rows > 500 and results["merchant_risk"].rows == 8
    settings = FeatureSettings()
    store = FeatureStore(aredis, FeatureRegistry.from_settings(settings), settings, lambda: 0.0)
    values, flags = await store.get_features(
        [{"user": "u000001", "merchant_category": "crypto"}],
        ["user_stats.txn_count_30d", "merchant_risk.risk_score"],
    )
    assert flags[0].ok and values[0, 0] > 0 and 0 < values[0, 1] < 1


@flow
async def _promote(redis_url: str) -> str:
    return await promote_rollout("fraud", "gates passed", redis_url, "test")


@flow
async def _roll_back(redis_url: str) -> None:
    await rollback_rollout("fraud", "gates failed", redis_url, "test")


async def test_rollout_tasks_on_a_cluster(redis_cluster_url: str, aredis: RedisCluster) -> None:
    store = RolloutStore(aredis)
    await store.set_primary("fraud", "1")
    await store.start_canary("fraud", "2", 10)
    assert await _promote(redis_cluster_url) == "2"
    await store.start_canary("fraud", "3", 10)
    await _roll_back(redis_cluster_url)
    state = await store.get("fraud")
    assert (state.primary, state.candidate, state.mode) == ("2", None, "off")
    assert [h.action for h in await store.history("fraud", 10)][:2] == ["rollback", "canary"]


@pytest.fixture
def cli_on_cluster(
    redis_cluster_url: str, aredis: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("SERVEKIT_REDIS_URL", redis_cluster_url)
    get_settings.cache_clear()
    yield redis_cluster_url
    get_settings.cache_clear()


def test_the_cli_drives_a_rollout_on_a_cluster(cli_on_cluster: str) -> None:
    runner = CliRunner()
    for args in (
        ["rollout", "set-primary", "fraud", "1", "--reason", "first"],
        ["rollout", "canary", "fraud", "2"],
        ["rollout", "promote", "fraud", "--reason", "looks good"],
    ):
        result = runner.invoke(app, args, env={"COLUMNS": "200"})
        assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["rollout", "status", "fraud"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "2" in result.output and "off" in result.output
    # The blocking client `servekit models` reads the rollout states with.
    sync = connect_sync(cli_on_cluster)
    try:
        assert sync.smembers(rollout_models_key()) == {b"fraud"}
        assert b'"primary":"2"' in sync.hget(rollout_state_key("fraud"), "state")
    finally:
        sync.close()
