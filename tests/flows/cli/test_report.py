"""``servekit report drift`` against a real Redis prediction stream and a model store."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from typer.testing import CliRunner

from flows.cli import app
from flows.cli.report import EXIT_DRIFT, EXIT_NOTHING_TO_COMPARE
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.settings import get_settings
from tests.monitoring.fraud_traffic import SHIFT, fraud_rows, log_traffic, served

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


@pytest.fixture
def store(tmp_path: Path, fraud_store: Path) -> ModelRegistry:
    """The demo store, plus version 2 of fraud registered without a reference sample."""
    root = tmp_path / "store"
    shutil.copytree(fraud_store, root)
    registry = ModelRegistry(LocalStore(root))
    v1 = registry.get("fraud", "1")
    registry.register("fraud", registry.load_artifact(v1), schema=v1.model_schema, version="2")
    return registry


@pytest.fixture
def configured(
    redis_url: str, redis_client: redis.Redis, store: ModelRegistry, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ModelRegistry]:
    monkeypatch.setenv("SERVEKIT_REDIS_URL", redis_url)
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", store.store.url)
    get_settings.cache_clear()
    yield store
    get_settings.cache_clear()


def _log(redis_url: str, registry: ModelRegistry, version: str, rows: int, **kw: object) -> None:
    mv = registry.get("fraud", version)
    x = fraud_rows(rows, seed=21, **kw)  # type: ignore[arg-type]

    async def write() -> None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await log_traffic(client, "fraud", version, x, served(registry, mv, x))
        finally:
            await client.aclose()

    asyncio.run(write())


def invoke(*args: str):
    return runner.invoke(app, ["report", "drift", *args], env=WIDE)


def test_drift_writes_html_and_json_and_fails_on_drift(
    configured: ModelRegistry, redis_url: str, tmp_path: Path
) -> None:
    _log(redis_url, configured, "1", 1500, shift=SHIFT)
    out = tmp_path / "report"
    result = invoke("fraud", "--window", "1h", "--out", str(out), "--fail-on-drift")
    assert result.exit_code == EXIT_DRIFT == 3, result.output
    assert (out / "drift.html").stat().st_size > 100_000
    data = orjson.loads((out / "drift.json").read_bytes())
    assert data["model"] == "fraud" and data["version"] == "1" and data["drift_detected"]
    assert data["current_rows"] == 1500 and data["reference_rows"] >= 1000
    assert {n for n, c in data["columns"].items() if c["drifted"] and c["role"] == "feature"} == {
        "amount",
        "hour",
    }
    assert "amount" in result.output and "drift in fraud v1" in result.output
    # Without --fail-on-drift the report is a success.
    again = invoke("fraud", "--version", "1", "--out", str(tmp_path / "again"))
    assert again.exit_code == 0, again.output


def test_no_traffic_no_reference_unknown_model_bad_window(
    configured: ModelRegistry, redis_url: str, tmp_path: Path
) -> None:
    result = invoke("fraud", "--out", str(tmp_path / "a"))
    assert result.exit_code == EXIT_NOTHING_TO_COMPARE == 4
    assert "no traffic" in result.output

    _log(redis_url, configured, "2", 1200)
    result = invoke("fraud", "--version", "2", "--out", str(tmp_path / "b"))
    assert result.exit_code == EXIT_NOTHING_TO_COMPARE, result.output
    assert "no reference" in result.output
    data = orjson.loads((tmp_path / "b" / "drift.json").read_bytes())
    assert data["status"] == "no_reference" and data["drift_detected"] is False
    assert (tmp_path / "b" / "drift.html").exists()  # a summary of the window alone

    result = invoke("nope", "--out", str(tmp_path / "c"))
    assert result.exit_code == 1 and "nope" in result.output

    result = invoke("fraud", "--window", "soon")
    assert result.exit_code == 2 and "not a duration" in result.output
