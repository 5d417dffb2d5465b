"""The rollout flow's reports, its profiles, and the progress it publishes."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort

from flows.gates import ShadowGateError
from flows.rollout import rollout
from flows.rollout_profile import DEMO, profile_values
from flows.rollout_progress import Progress
from tests.flows.conftest import MODEL

SHADOW = {"stop_at_pairs": 120, "poll_s": 0.05, "latency_slack_ms": 40.0}


async def _artifact(key: str) -> str:
    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
            sort=ArtifactSort.CREATED_DESC,
            limit=1,
        )
    assert found, f"no artifact {key}"
    return str(found[0].data)


async def test_a_failed_shadow_stage_leaves_a_rollout_report(
    rig_factory: Any, redis_url: str
) -> None:
    rig = await rig_factory(bad_version="2", flip=True)
    with pytest.raises(ShadowGateError):
        await rig.run_with_traffic(
            rollout(MODEL, 2, shadow_window_s=20.0, shadow_options=SHADOW, redis_url=redis_url)
        )
    text = await _artifact("rollout-fraud")
    assert "FAILED" in text and "shadow gate failed" in text and "rolled back" in text
    assert "| shadow | FAILED" in text and "agreement" in text
    assert (await rig.store.get(MODEL)).mode == "off"


async def test_the_demo_profile_sets_the_gates_and_explicit_values_win(
    rig_factory: Any, redis_url: str
) -> None:
    rig = await rig_factory()
    report = await rig.run_with_traffic(
        rollout(
            MODEL,
            "2",
            profile="demo",
            shadow_window_s=20.0,  # wins over the demo's 60 s
            # Not a latency test: a loaded machine's stall must not fail the shadow gate.
            shadow_options={**SHADOW, "latency_slack_ms": 250.0},
            redis_url=redis_url,
        )
    )
    assert report.profile == "demo" and report.path == "blue-green" and report.promoted
    assert report.shadow is not None and report.shadow.thresholds.min_pairs == 50
    shadow = await _artifact("shadow-fraud")
    assert ">= 50 (overridden)" in shadow  # the demo's min_pairs is not the setting
    assert "Profile: demo" in await _artifact("rollout-fraud")
    async with get_client() as client:  # published at every look, closed at the end
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["rollout-progress-fraud"])),
            sort=ArtifactSort.CREATED_DESC,
            limit=100,
        )
    texts = [str(a.data) for a in found]
    assert "PROMOTED" in texts[0] and "Finished" in texts[0]
    assert any("| stage | shadow |" in t and "gate needs 50" in t for t in texts[1:])


def test_profiles() -> None:
    assert profile_values("production").shadow_window_s is None  # the settings decide
    assert DEMO.shadow_window_s == 60.0 and DEMO.step_duration_s == 30.0
    with pytest.raises(ValueError, match="unknown rollout profile"):
        profile_values("fast")  # type: ignore[arg-type]


def test_progress_says_where_the_stage_stands() -> None:
    p = Progress("fraud", "2", "canary step 2/3", 50.0, 120, 50, 12.4, ["drift PSI 0.004"])
    line = p.line()
    assert "canary step 2/3" in line and "50 % of traffic" in line
    assert "120/50 observed" in line and "12 s left" in line and "drift PSI 0.004" in line
    text = p.markdown()
    assert "| candidate traffic | 50 % |" in text and "| time left in stage | 12 s |" in text
