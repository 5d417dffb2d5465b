"""The ``servekit`` CLI against a real Redis."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis
from typer.testing import CliRunner

from flows.cli import app
from services.rollout.feedback import FeedbackStore
from services.rollout.signing import AnsweredPrediction
from services.rollout.state import RolloutStore
from services.settings import get_settings

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # rich wraps tables to the terminal's width


@pytest.fixture
def configured(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    """Point the settings at the test Redis (flushed by ``redis_client``)."""
    monkeypatch.setenv("SERVEKIT_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield redis_url
    get_settings.cache_clear()


def invoke(*args: str):
    return runner.invoke(app, list(args), env=WIDE)


def test_without_a_redis_url_it_says_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVEKIT_REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        result = invoke("rollout", "status", "fraud")
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2
    assert "SERVEKIT_REDIS_URL" in result.output


def test_rollout_lifecycle(configured: str) -> None:
    result = invoke("rollout", "set-primary", "fraud", "v1", "--reason", "first", "--actor", "ci")
    assert result.exit_code == 0, result.output
    assert "v1" in result.output

    result = invoke("rollout", "shadow", "fraud", "v2", "-r", "validate latency")
    assert result.exit_code == 0, result.output
    assert "shadow" in result.output

    result = invoke("rollout", "canary", "fraud", "v2")  # first step of the settings: 5 %
    assert result.exit_code == 0, result.output

    result = invoke("rollout", "percent", "fraud", "25")
    assert result.exit_code == 0, result.output

    result = invoke("rollout", "status", "fraud")
    assert result.exit_code == 0, result.output
    assert "canary" in result.output and "25" in result.output
    assert "set_percent" in result.output and "validate latency" in result.output

    result = invoke("rollout", "promote", "fraud", "--reason", "gates passed", "--actor", "bob")
    assert result.exit_code == 0, result.output

    state = asyncio.run(_state(configured, "fraud"))
    assert (state.primary, state.candidate, state.mode) == ("v2", None, "off")

    result = invoke("rollout", "history", "fraud")
    assert result.exit_code == 0, result.output
    for text in ("promote", "gates passed", "bob", "canary", "shadow", "set_primary", "ci"):
        assert text in result.output


def test_rollback_and_errors(configured: str, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", str(tmp_path / "empty"))
    get_settings.cache_clear()
    result = invoke("rollout", "status", "fraud")  # unknown model, no state
    assert result.exit_code == 1
    assert "no rollout state" in result.output and "no model 'fraud'" in result.output

    assert invoke("rollout", "set-primary", "fraud", "v1").exit_code == 0
    result = invoke("rollout", "canary", "fraud", "v2", "--percent", "150")
    assert result.exit_code == 1
    assert "percent" in result.output

    assert invoke("rollout", "canary", "fraud", "v2", "-p", "10").exit_code == 0
    result = invoke("rollout", "canary", "fraud", "v3")
    assert result.exit_code == 1 and "in progress" in result.output

    result = invoke("rollout", "rollback", "fraud", "-r", "errors")
    assert result.exit_code == 0, result.output
    state = asyncio.run(_state(configured, "fraud"))
    assert (state.primary, state.candidate, state.mode) == ("v1", None, "off")


def test_experiment_report(configured: str) -> None:
    assert invoke("experiment", "report", "fraud").exit_code == 1  # nothing recorded yet

    experiment = asyncio.run(_run_ab(configured))
    result = invoke("experiment", "report", "fraud")
    assert result.exit_code == 0, result.output
    out = result.output
    assert experiment in out
    for text in ("primary", "candidate", "v1", "v2", "200", "30", "SRM check", "ok", "mSPRT"):
        assert text in out

    result = invoke("experiment", "report", "fraud", "--experiment-id", experiment, "-p", "5")
    assert result.exit_code == 0, result.output
    assert "MISMATCH" in result.output


async def _state(url: str, model: str):
    client = aioredis.Redis.from_url(url)
    try:
        return await RolloutStore(client).get(model)
    finally:
        await client.aclose()


async def _run_ab(url: str) -> str:
    """An A/B test at 50 % with 200 predictions per variant and some outcomes."""
    client = aioredis.Redis.from_url(url)
    try:
        rollout = RolloutStore(client)
        await rollout.set_primary("fraud", "v1")
        state = await rollout.start_ab("fraud", "v2", 50)
        assert state.experiment_id is not None
        feedback = FeedbackStore(client)
        now = int(time.time())
        for variant, version, converted in (("primary", "v1", 20), ("candidate", "v2", 30)):
            for i in range(200):
                await feedback.record_prediction(
                    "fraud", variant, version, state.experiment_id, 12.0
                )
                if i < converted:
                    answered = AnsweredPrediction(
                        f"{variant}-{i}", "fraud", variant, version, state.experiment_id, now
                    )
                    await feedback.record_outcome(answered, 1)
        return state.experiment_id
    finally:
        await client.aclose()


def test_status_without_state_says_off_with_the_served_version(
    configured: str, fraud_store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", str(fraud_store))
    get_settings.cache_clear()
    result = invoke("rollout", "status", "fraud")
    assert result.exit_code == 0, result.output
    assert "mode off" in result.output and "version 1" in result.output
    assert "set-primary fraud 1" in result.output

    asyncio.run(_ensure(configured, "fraud", "1"))
    result = invoke("rollout", "status", "fraud")
    assert result.exit_code == 0, result.output
    assert "off" in result.output and "init" in result.output


async def _ensure(url: str, model: str, version: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        await RolloutStore(client).ensure(model, version)
    finally:
        await client.aclose()
