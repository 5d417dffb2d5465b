"""The whole rollout of a candidate: shadow validation -> canary -> promotion.

The rollout strategy (docs/design.md) as one parent flow: shadow first (zero user
impact), then a traffic canary with metric gates, then promotion. A candidate whose
shadow answers were identical to the primary's on every mirrored request gains nothing
from a canary: with ``skip_canary_if_identical`` (default on) it skips the canary and is
promoted at once (a blue-green switch). Which path was taken is written to a markdown
artifact.

Run once: ``python -m flows.rollout MODEL CANDIDATE``.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key
from flows.canary import CanaryReport, canary_promotion
from flows.gates import ShadowGateResult
from flows.rollout_tasks import promote_rollout
from flows.shadow import shadow_validation
from services.state.redis_embedded import resolve_redis_url

RolloutPath = Literal["canary", "blue-green"]


@dataclass(frozen=True, slots=True)
class RolloutReport:
    """The shadow result, the canary's (None when skipped) and the path taken."""

    model: str
    candidate: str
    shadow: ShadowGateResult
    canary: CanaryReport | None
    path: RolloutPath
    promoted: bool


@task(cache_policy=NO_CACHE)
async def publish_rollout_artifact(report: RolloutReport, skip_canary_if_identical: bool) -> None:
    """The path taken and why, as a markdown artifact."""
    c = report.shadow.comparison
    if report.path == "blue-green":
        why = (
            "shadow outputs were identical to the primary's on all "
            f"{c.pairs} mirrored requests: canary skipped (blue-green switch)"
        )
    elif skip_canary_if_identical:
        why = "shadow outputs differed from the primary's: full canary"
    else:
        why = "skip_canary_if_identical is off: full canary"
    steps = (
        ", ".join(f"{s.percent:g} %" for s in report.canary.steps) if report.canary else "skipped"
    )
    lines = [
        f"# Rollout of {report.model} version {report.candidate}",
        "",
        "| stage | result |",
        "|---|---|",
        f"| shadow | passed: {c.pairs} pairs, agreement {c.agreement:.2%}, "
        f"identical: {'yes' if c.identical else 'no'} |",
        f"| canary | {steps} |",
        f"| promoted | {'yes' if report.promoted else 'no'} |",
        "",
        f"Path: **{report.path}**: {why}.",
        f"skip_canary_if_identical = {skip_canary_if_identical}.",
    ]
    await acreate_markdown_artifact(
        "\n".join(lines),
        key=artifact_key("rollout", report.model),
        description=f"Rollout of {report.model} version {report.candidate}",
    )


@flow(name="rollout")
async def rollout(
    model: str,
    candidate: str,
    *,
    skip_canary_if_identical: bool = True,
    shadow_window_s: float | None = None,
    canary_steps: list[float] | None = None,
    step_duration_s: float | None = None,
    promote: bool = True,
    shadow_options: dict[str, Any] | None = None,
    canary_options: dict[str, Any] | None = None,
    redis_url: str | None = None,
) -> RolloutReport:
    """Shadow ``candidate``, then canary it (unless its answers were identical), promote.

    Args:
        model, candidate: the model and the version to roll out.
        skip_canary_if_identical: promote straight after the shadow stage when every
            mirrored answer equalled the primary's (blue-green).
        shadow_window_s: the shadow window (default: settings).
        canary_steps: the canary's steps (default: settings).
        step_duration_s: time at each canary step (default: settings).
        promote: promote at the end (False: stop after the canary's last step).
        shadow_options: further keyword arguments of ``shadow_validation``.
        canary_options: further keyword arguments of ``canary_promotion``.
        redis_url: the Redis holding rollout state (default: settings).

    Raises:
        ShadowGateError, CanaryGateError: a stage failed; the candidate was rolled back.
    """
    url = resolve_redis_url(redis_url)
    shadow = await shadow_validation(
        model, candidate, shadow_window_s, redis_url=url, **(shadow_options or {})
    )
    canary: CanaryReport | None = None
    if skip_canary_if_identical and shadow.comparison.identical:
        get_run_logger().info(
            "%s version %s answered identically in shadow: skipping the canary", model, candidate
        )
        path: RolloutPath = "blue-green"
        if promote:
            await promote_rollout(
                model, "shadow outputs identical: blue-green switch", url, "flow:rollout"
            )
    else:
        path = "canary"
        canary = await canary_promotion(
            model,
            candidate,
            canary_steps,
            step_duration_s,
            promote=promote,
            redis_url=url,
            **(canary_options or {}),
        )
    report = RolloutReport(model, candidate, shadow, canary, path, promote)
    await publish_rollout_artifact(report, skip_canary_if_identical)
    return report


if __name__ == "__main__":
    asyncio.run(rollout(sys.argv[1], sys.argv[2]))
