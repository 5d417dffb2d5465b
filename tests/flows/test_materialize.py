"""The materialize flow under Prefect's test harness, loading into the test Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis.asyncio as aioredis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.materialize import EmptySourceError, materialize, materialize_deployment
from services.settings import FeatureSettings
from services.state.features import FeatureRegistry, FeatureStore

AS_OF = datetime(2027, 1, 31, 2, 0, tzinfo=UTC)


def transactions() -> pd.DataFrame:
    day = timedelta(days=1)
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3", "u1"],
            "amount": [10.0, 30.0, 5.0, 100.0, 999.0],
            "merchant_category": ["grocery", "grocery", "crypto", "crypto", "grocery"],
            "hour": [10, 11, 3, 2, 9],
            "channel": ["pos", "pos", "online", "online", "pos"],
            # the last row is older than 30 days: outside the window
            "timestamp": [AS_OF - day, AS_OF - 2 * day, AS_OF - day, AS_OF - 3 * day, AS_OF - 40 * day],
            "is_fraud": [False, False, True, False, False],
        }
    )  # fmt: skip


def store(client: aioredis.Redis) -> FeatureStore:
    settings = FeatureSettings()
    return FeatureStore(client, FeatureRegistry.from_settings(settings), settings, lambda: 0.0)


async def test_loads_views_from_a_parquet_file(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    path = tmp_path / "txns.parquet"
    transactions().to_parquet(path)
    results = await materialize(source=str(path), as_of=AS_OF, redis_url=redis_url)
    assert results["user_stats"].rows == 3
    assert results["merchant_risk"].rows == 2

    values, flags = await store(aredis).get_features(
        [{"user": "u1", "merchant_category": "crypto"}, {"user": "u3"}],
        ["user_stats.avg_amount_30d", "user_stats.txn_count_30d", "merchant_risk.risk_score"],
    )
    overall = 1 / 4
    crypto = (1 + 50 * overall) / (2 + 50)
    np.testing.assert_allclose(values, [[20.0, 2.0, crypto], [100.0, 1.0, 0.03]], rtol=1e-6)
    assert flags[0].ok and flags[1].missing == {"merchant_risk"}

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["feature-materialization"])),
            sort=ArtifactSort.CREATED_DESC,
        )
    # The newest: other tests of the session materialize too.
    assert artifacts and results["user_stats"].version in str(artifacts[0].data)


async def test_second_run_swaps_versions(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    path = tmp_path / "txns.csv"
    transactions().to_csv(path, index=False)
    first = await materialize(source=str(path), as_of=AS_OF, redis_url=redis_url)
    second = await materialize(source=str(path), as_of=AS_OF, redis_url=redis_url)
    assert second["user_stats"].previous_version == first["user_stats"].version
    assert await store(aredis).current_version("user_stats") == second["user_stats"].version


async def test_synthetic_source(redis_url: str, aredis: aioredis.Redis) -> None:
    results = await materialize(as_of=AS_OF, redis_url=redis_url)
    assert results["user_stats"].rows > 500
    assert results["merchant_risk"].rows == 8
    values, flags = await store(aredis).get_features(
        [{"user": "u000001", "merchant_category": "crypto"}],
        ["user_stats.txn_count_30d", "merchant_risk.risk_score"],
    )
    assert flags[0].ok and values[0, 0] > 0 and 0 < values[0, 1] < 1


async def test_empty_window_fails_the_run(
    tmp_path: Path, redis_url: str, aredis: aioredis.Redis
) -> None:
    path = tmp_path / "txns.csv"
    transactions().to_csv(path, index=False)
    with pytest.raises(EmptySourceError):
        await materialize(source=str(path), as_of=AS_OF + timedelta(days=365), redis_url=redis_url)
    assert await store(aredis).current_version("user_stats") is None


def test_deployment_runs_daily_at_two() -> None:
    deployment = materialize_deployment()
    assert deployment.name == "daily"
    assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]


def test_command_line_help_and_missing_source(capsys: pytest.CaptureFixture[str]) -> None:
    from flows.materialize import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--source", "--days", "--as-of", "--redis-url", "--flow", "--serve"):
        assert option in out
    assert main(["--source", "/nonexistent.parquet"]) == 1
    assert "/nonexistent.parquet" in capsys.readouterr().err


def test_command_line_loads_directly_without_a_flow_run(
    tmp_path: Path,
    redis_url: str,
    aredis: aioredis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flows.materialize
    from flows.materialize import main

    def no_flow_run(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command line must not start a flow run (nor a Prefect server)")

    monkeypatch.setattr(flows.materialize, "materialize", no_flow_run)

    path = tmp_path / "txns.parquet"
    transactions().to_parquet(path)
    argv = ["--source", str(path), "--as-of", AS_OF.isoformat(), "--redis-url", redis_url]
    assert main(argv) == 0
    assert "user_stats: 3 rows" in capsys.readouterr().out


def test_make_serve_materializes_through_the_direct_command_line() -> None:
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    serve = makefile.split("\nserve:", 1)[1].split("\n\n", 1)[0]
    assert "-m flows.materialize " in serve and "--flow" not in serve
