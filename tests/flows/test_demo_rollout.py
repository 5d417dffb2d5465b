"""The pieces of ``make demo-rollout`` that do not need a gateway or a Prefect server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from flows.demo_rollout import ensure_rollout_state, register_candidate, run_rollout
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.rollout.state import RolloutStore
from services.settings import get_settings


@pytest.fixture
def demo_env(
    fraud_store: Path, tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    store = tmp_path / "store"
    shutil.copytree(fraud_store, store)
    monkeypatch.setenv("SERVEKIT_MODEL_STORE", str(store))
    monkeypatch.setenv("SERVEKIT_REDIS_URL", redis_url)
    get_settings.cache_clear()
    yield store
    get_settings.cache_clear()


def test_registers_a_retrained_candidate(demo_env: Path) -> None:
    version = register_candidate("fraud", seed=1)
    registry = ModelRegistry(LocalStore(demo_env))
    assert version == "2"
    v1, v2 = registry.get("fraud", "1"), registry.get("fraud", "2")
    assert v2.sha256 != v1.sha256 and v2.model_schema == v1.model_schema
    assert v2.stage == "staging" and registry.get("fraud").version == "1"  # still served


async def test_gives_the_model_a_rollout_state_once(demo_env: Path, aredis: Any) -> None:
    state = await ensure_rollout_state("fraud")
    assert (state.primary, state.mode) == ("1", "off")
    await RolloutStore(aredis).start_shadow("fraud", "2", reason="test")
    assert (await ensure_rollout_state("fraud")).mode == "shadow"  # left as it is


def test_run_rollout_reads_the_run_id_and_final_state(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    out = (
        "Creating flow run for deployment 'rollout/rollout'...\n"
        "└── UUID: a6bb4ad7-ae03-4c59-8bed-92f5de520c74\n"
        "●         .460 d1c0664cf175 prefect.flow-run.Completed * tungsten-peacock\n"
        "Flow run finished successfully in 'Completed'.\n"
    )
    calls: list[list[str]] = []

    def fake_run(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return subprocess.CompletedProcess(args, 0, out, "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    run_id, final = run_rollout("fraud", "2", 600)
    assert run_id == "a6bb4ad7-ae03-4c59-8bed-92f5de520c74"
    assert final == "Flow run finished successfully in 'Completed'."
    assert calls[0][1:6] == ["deployment", "run", "rollout/rollout", "-p", "model=fraud"]
    assert "profile=demo" in calls[0] and "candidate=2" in calls[0]
