"""The whole rollout of a candidate: shadow validation -> canary -> promotion.

The rollout strategy (docs/design.md) as one parent flow: shadow first (zero user
impact), then a traffic canary with metric gates, then promotion. A candidate whose
shadow answers were identical to the primary's on every mirrored request gains nothing
from a canary, and neither does one whose artifact is the primary's (same sha256): with
``skip_canary_if_identical`` (default on) it skips the canary and is promoted at once (a
blue-green switch). Which path was taken, or which stage failed, is written to the
``rollout-{model}`` markdown artifact; a cancelled or crashed run is rolled back by the
flow's state hooks (``flows.hooks``). A run whose process was killed during the canary
leaves the canary standing: running the rollout again resumes the canary's saved step
(``flows.canary_step``) without a second shadow stage. ``profile="demo"`` shortens every
window (``flows.rollout_profile``).

Run once: ``python -m flows.rollout MODEL CANDIDATE``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sys
from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key, format_percent
from flows.canary import CanaryReport, canary_promotion
from flows.canary_step import canary_under_way
from flows.gates import RolloutGateError, ShadowGateError, ShadowGateResult
from flows.hooks import ROLLBACK_HOOKS
from flows.parameters import Version, version_text
from flows.rollout_profile import Profile, profile_values
from flows.rollout_progress import finish_progress
from flows.rollout_tasks import promote_rollout
from flows.shadow import shadow_validation
from services.state.redis_embedded import resolve_redis_url

RolloutPath = Literal["canary", "blue-green"]


@dataclass(frozen=True, slots=True)
class RolloutReport:
    """The shadow result, the canary's (None when skipped or not reached), the path taken.

    ``failure`` says why the rollout stopped (empty when it did not); ``resumed``: the
    run took up a canary that an earlier run of this rollout had begun (no shadow stage).
    """

    model: str
    candidate: str
    profile: Profile
    shadow: ShadowGateResult | None
    canary: CanaryReport | None
    path: RolloutPath
    promoted: bool
    failure: str = ""
    resumed: bool = False


def _stage_rows(report: RolloutReport) -> list[str]:
    rows = []
    if report.shadow is not None:
        c = report.shadow.comparison
        rows.append(
            f"| shadow | {'passed' if report.shadow.passed else 'FAILED'}: {c.pairs} pairs, "
            f"{c.kind} agreement {format_percent(c.agreement)}, drift PSI "
            f"{'-' if math.isnan(c.drift.psi) else f'{c.drift.psi:.3f}'}, "
            f"identical: {'yes' if c.identical else 'no'} |"
        )
    elif report.resumed:
        rows.append("| shadow | passed in an earlier run (canary resumed) |")
    if report.canary is not None:
        steps = ", ".join(f"{s.percent:g} %" for s in report.canary.steps)
        rows.append(f"| canary | {steps} |")
    elif report.path == "blue-green":
        rows.append("| canary | skipped |")
    rows.append(f"| promoted | {'yes' if report.promoted else 'no'} |")
    return rows


def _why(report: RolloutReport, skip_canary_if_identical: bool) -> str:
    if report.failure:
        return f"{report.failure}; the candidate was rolled back"
    if report.resumed:
        return "resumed the canary an earlier run had begun after its shadow stage passed"
    if report.path == "blue-green" and report.shadow is not None:
        return (
            "the candidate is identical to the primary (same artifact or the same outputs "
            f"on all {report.shadow.comparison.pairs} mirrored requests): canary skipped "
            "(blue-green switch)"
        )
    if skip_canary_if_identical:
        return "shadow outputs differed from the primary's: full canary"
    return "skip_canary_if_identical is off: full canary"


@task(cache_policy=NO_CACHE)
async def publish_rollout_artifact(report: RolloutReport, skip_canary_if_identical: bool) -> None:
    """The path taken and why (or the stage that failed), as a markdown artifact."""
    verdict = "FAILED" if report.failure else ("PROMOTED" if report.promoted else "DONE")
    lines = [
        f"# Rollout of {report.model} version {report.candidate}: {verdict}",
        "",
        f"Profile: {report.profile}.",
        "",
        "| stage | result |",
        "|---|---|",
        *_stage_rows(report),
        "",
        f"Path: **{report.path}**: {_why(report, skip_canary_if_identical)}.",
        f"skip_canary_if_identical = {skip_canary_if_identical}.",
        "",
        "Details: the shadow-* and canary-* artifacts of this run.",
    ]
    await acreate_markdown_artifact(
        "\n".join(lines),
        key=artifact_key("rollout", report.model),
        description=f"Rollout of {report.model} version {report.candidate}",
    )
    await finish_progress(report.model, report.candidate, verdict)


@flow(name="rollout", **ROLLBACK_HOOKS)
async def rollout(
    model: str,
    candidate: Version,
    *,
    profile: Profile = "production",
    skip_canary_if_identical: bool = True,
    shadow_window_s: float | None = None,
    canary_steps: list[float] | None = None,
    step_duration_s: float | None = None,
    promote: bool = True,
    shadow_options: dict[str, Any] | None = None,
    canary_options: dict[str, Any] | None = None,
    redis_url: str | None = None,
) -> RolloutReport:
    """Shadow ``candidate``, then canary it (unless it is identical to the primary), promote.

    Args:
        model: the model to roll out a new version of (e.g. fraud).
        candidate: the registered version to roll out (e.g. 2).
        profile: production (SERVEKIT_ROLLOUT_ settings: days) or demo (minutes).
        skip_canary_if_identical: promote right after shadow when identical (blue-green).
        shadow_window_s: seconds of shadow (empty: the profile's).
        canary_steps: candidate traffic percent of each canary step (empty: the profile's).
        step_duration_s: seconds at each canary step (empty: the profile's).
        promote: promote at the end (false: stop after the canary's last step).
        shadow_options: further options of the shadow-validation flow (e.g. min_pairs).
        canary_options: further options of the canary-promotion flow (e.g. poll_s).
        redis_url: the Redis holding rollout state (empty: settings).

    Raises ``ShadowGateError`` or ``CanaryGateError`` when a stage failed (rolled back).
    """
    candidate = version_text(candidate)
    url = resolve_redis_url(redis_url)
    p = profile_values(profile)
    report = RolloutReport(model, candidate, profile, None, None, "canary", False)
    try:
        window = p.shadow_window_s if shadow_window_s is None else shadow_window_s
        options = {**(p.shadow_options or {}), **(shadow_options or {})}
        report = await _shadow_stage(report, window, options, url)
        report = await _after_shadow(
            report,
            skip_canary_if_identical=skip_canary_if_identical,
            canary_steps=p.canary_steps if canary_steps is None else canary_steps,
            step_duration_s=p.step_duration_s if step_duration_s is None else step_duration_s,
            promote=promote,
            canary_options={**(p.canary_options or {}), **(canary_options or {})},
            redis_url=url,
        )
    except RolloutGateError as exc:
        shadow_result = report.shadow or _failed_shadow(exc)
        report = dataclasses.replace(report, shadow=shadow_result, failure=str(exc))
        await publish_rollout_artifact(report, skip_canary_if_identical)
        raise
    await publish_rollout_artifact(report, skip_canary_if_identical)
    return report


async def _shadow_stage(
    report: RolloutReport, window_s: float | None, options: dict[str, Any], redis_url: str
) -> RolloutReport:
    """The shadow stage; skipped when an earlier run of this rollout died mid-canary (the
    canary is then resumed)."""
    if await canary_under_way(report.model, report.candidate, redis_url):
        return dataclasses.replace(report, resumed=True)
    shadow = await shadow_validation(
        report.model, report.candidate, window_s, redis_url=redis_url, **options
    )
    return dataclasses.replace(report, shadow=shadow)


def _failed_shadow(exc: RolloutGateError) -> ShadowGateResult | None:
    return exc.result if isinstance(exc, ShadowGateError) else None


async def _after_shadow(
    report: RolloutReport,
    *,
    skip_canary_if_identical: bool,
    canary_steps: list[float] | None,
    step_duration_s: float | None,
    promote: bool,
    canary_options: dict[str, Any],
    redis_url: str,
) -> RolloutReport:
    """The blue-green switch or the canary, after a passed shadow stage (none when a
    canary is resumed)."""
    model, candidate = report.model, report.candidate
    identical = report.shadow is not None and report.shadow.comparison.identical
    if skip_canary_if_identical and identical:
        get_run_logger().info(
            "%s version %s is identical to the primary: skipping the canary", model, candidate
        )
        if promote:
            await promote_rollout(
                model,
                "candidate identical to the primary: blue-green switch",
                redis_url,
                "flow:rollout",
            )
        return dataclasses.replace(report, path="blue-green", promoted=promote)
    canary = await canary_promotion(
        model,
        candidate,
        canary_steps,
        step_duration_s,
        promote=promote,
        redis_url=redis_url,
        **canary_options,
    )
    return dataclasses.replace(report, canary=canary, promoted=canary.promoted)


if __name__ == "__main__":
    asyncio.run(rollout(sys.argv[1], sys.argv[2]))
