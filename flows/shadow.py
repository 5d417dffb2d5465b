"""Shadow validation: mirror live traffic to a candidate, compare, gate.

The first stage of a rollout (the strategy is in docs/design.md): it puts ``candidate``
in shadow mode, lets the gateways mirror live traffic to it for the window (default
``SERVEKIT_ROLLOUT_SHADOW_WINDOW_S``), then compares the logged pairs
(``servekit:shadow:{model}``) with the primary's answers: latency p50/p99, error rate and
agreement (labels for classifiers, relative error for regressors). A markdown artifact
holds the table. On a failed gate the candidate is rolled back and the run fails with
``ShadowGateError``; on a pass the model stays in shadow mode for the next stage.

Run once: ``python -m flows.shadow MODEL CANDIDATE``.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time
from typing import NoReturn

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.artifacts import artifact_key, format_ms, format_percent
from flows.gates import ShadowGateError, ShadowGateResult, Thresholds, shadow_gate
from flows.hooks import ROLLBACK_HOOKS
from flows.parameters import Version, version_text
from flows.rollout_progress import Progress, report_progress
from flows.rollout_tasks import REDIS_RETRIES, rollback_rollout, same_artifact
from flows.shadow_comparison import compare_shadow
from services.rollout.prediction_log import PredictionLog, ShadowPair
from services.rollout.state import RolloutStore
from services.settings import get_settings
from services.state.redis_clients import connect
from services.state.redis_embedded import resolve_redis_url


def _gate_rows(result: ShadowGateResult) -> list[str]:
    c, t = result.comparison, result.thresholds
    pl, cl = c.primary_latency, c.candidate_latency
    d = c.drift
    return [
        f"| runner latency p50 (ms) | {format_ms(pl.p50_ms)} | {format_ms(cl.p50_ms)} "
        f"| {format_ms(c.p50_delta_ms)} | |",
        f"| runner latency p99 (ms) | {format_ms(pl.p99_ms)} | {format_ms(cl.p99_ms)} "
        f"| {format_ms(c.p99_delta_ms)} "
        f"| {t.shown('max_p99_latency_ratio', f'<= x{t.max_p99_latency_ratio:g}')} + "
        f"{t.shown('latency_slack_ms', f'{t.latency_slack_ms:g} ms')} |",
        f"| error rate | - | {format_percent(c.error_rate)} | "
        f"| {t.shown('max_error_rate', f'<= {t.max_error_rate:.2%}')} |",
        f"| agreement ({c.kind}) | | {format_percent(c.agreement)} | "
        f"| {t.shown('min_agreement', f'>= {t.min_agreement:.2%}')} |",
        f"| probability mean abs. difference | | {_num(c.probability_divergence)} | | |",
        f"| prediction drift PSI (labels / probabilities) | | {_num(d.label_psi)} / "
        f"{_num(d.probability_psi)}{'' if d.judged else ' (too few rows to judge)'} | "
        f"| {t.shown('max_drift_psi', f'<= {t.max_drift_psi:g}')} |",
        f"| mean relative error | | {c.mean_relative_error:.4g} | | |",
        f"| pairs | | {c.pairs} | | {t.shown('min_pairs', f'>= {t.min_pairs}')} |",
    ]


def _num(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"


def shadow_markdown(result: ShadowGateResult, *, action: str) -> str:
    """The shadow comparison as a markdown table, with the verdict and what was done."""
    c = result.comparison
    verdict = "PASSED" if result.passed else "FAILED"
    lines = [
        f"# Shadow validation of {result.model} version {result.candidate}: {verdict}",
        "",
        f"{c.pairs} mirrored requests ({c.rows} rows); comparison: {c.kind} on "
        f"`{c.output}`; identical: {'yes' if c.identical else 'no'}.",
        "",
        "| metric | primary | candidate | delta | gate |",
        "|---|---|---|---|---|",
        *_gate_rows(result),
        "",
    ]
    lines += [f"- FAILED: {f}" for f in result.failures] or ["- every gate passed"]
    lines += ["", f"Action: {action}"]
    return "\n".join(lines)


_READ_CHUNK = 1000


@task(**REDIS_RETRIES)
async def begin_shadow(model: str, candidate: str, redis_url: str) -> tuple[str, str]:
    """Put ``candidate`` in shadow mode; returns the pair stream's id to read after and
    the primary."""
    async with connect(redis_url) as client:
        since = await PredictionLog(client).last_id(model, shadow=True)
        state = await RolloutStore(client).start_shadow(
            model, candidate, reason="shadow validation started", actor="flow:shadow"
        )
    get_run_logger().info(
        "shadowing %s version %s (primary %s); pairs after %s",
        model,
        candidate,
        state.primary,
        since,
    )
    return since, state.primary


@task(**REDIS_RETRIES)
async def wait_for_pairs(
    model: str,
    candidate: str,
    since_id: str,
    window_s: float,
    stop_at_pairs: int | None,
    poll_s: float,
    redis_url: str,
    min_pairs: int = 0,
) -> int:
    """Wait out the window (or until ``stop_at_pairs`` pairs arrived); returns pairs seen.

    Every look logs and publishes the progress (pairs so far, time left).
    """
    logger = get_run_logger()
    deadline = time.monotonic() + window_s
    seen, cursor = 0, since_id
    async with connect(redis_url) as client:
        log = PredictionLog(client)
        while True:
            while True:
                batch = await log.read_shadow(model, cursor, _READ_CHUNK)
                if not batch:
                    break
                cursor = batch[-1][0]
                seen += sum(pair.candidate_version == candidate for _, pair in batch)
            if stop_at_pairs is not None and seen >= stop_at_pairs:
                logger.info("%d shadow pairs in: stopping the window early", seen)
                return seen
            left = deadline - time.monotonic()
            if left <= 0:
                logger.info("shadow window of %g s over with %d pairs", window_s, seen)
                return seen
            await report_progress(Progress(model, candidate, "shadow", 0.0, seen, min_pairs, left))
            await asyncio.sleep(min(poll_s, left))


@task(**REDIS_RETRIES)
async def read_pairs(
    model: str, candidate: str, since_id: str, limit: int | None, redis_url: str
) -> list[ShadowPair]:
    """The candidate's pairs logged after ``since_id`` (the first ``limit`` when given)."""
    pairs: list[ShadowPair] = []
    cursor = since_id
    async with connect(redis_url) as client:
        log = PredictionLog(client)
        while limit is None or len(pairs) < limit:
            batch = await log.read_shadow(model, cursor, _READ_CHUNK)
            if not batch:
                break
            cursor = batch[-1][0]
            pairs += [pair for _, pair in batch if pair.candidate_version == candidate]
    return pairs if limit is None else pairs[:limit]


@task(cache_policy=NO_CACHE)
def judge_shadow(
    model: str,
    candidate: str,
    pairs: list[ShadowPair],
    thresholds: Thresholds,
    label_output: str | None,
    identical_artifact: bool = False,
) -> ShadowGateResult:
    """Compare the pairs and apply the shadow gate."""
    comparison = compare_shadow(
        pairs,
        regression_rtol=thresholds.regression_rtol,
        label_output=label_output,
        same_artifact=identical_artifact,
    )
    result = shadow_gate(model, candidate, comparison, thresholds)
    logger = get_run_logger()
    logger.info(
        "shadow %s v%s: %d pairs, error rate %.2f%%, agreement %.2f%%, drift PSI %.3f, "
        "identical=%s",
        model,
        candidate,
        comparison.pairs,
        100 * comparison.error_rate,
        100 * comparison.agreement,
        comparison.drift.psi,
        comparison.identical,
    )
    for failure in result.failures:
        logger.warning("shadow gate: %s", failure)
    return result


@task(cache_policy=NO_CACHE)
async def publish_shadow_artifact(result: ShadowGateResult, action: str) -> None:
    """The comparison table as a markdown artifact."""
    await acreate_markdown_artifact(
        shadow_markdown(result, action=action),
        key=artifact_key("shadow", result.model),
        description=f"Shadow validation of {result.model} version {result.candidate}",
    )


async def _reject(result: ShadowGateResult, rollback: bool, redis_url: str) -> NoReturn:
    """Publish the failed comparison, roll the candidate back when asked, and raise."""
    reason = "shadow gate failed: " + "; ".join(result.failures)
    await publish_shadow_artifact(
        result, f"rolled back ({reason})" if rollback else "left in shadow mode"
    )
    if rollback:
        await rollback_rollout(result.model, reason, redis_url, "flow:shadow")
    error = ShadowGateError(
        reason, model=result.model, candidate=result.candidate, failures=result.failures
    )
    error.result = result
    raise error


async def _observe(
    model: str,
    candidate: str,
    window_s: float,
    thresholds: Thresholds,
    stop_at_pairs: int | None,
    poll_s: float,
    model_store: str | None,
    redis_url: str,
) -> tuple[list[ShadowPair], bool]:
    """Shadow for the window; the pairs logged, and whether the artifacts are identical."""
    since, primary = await begin_shadow(model, candidate, redis_url)
    identical = same_artifact(model, primary, candidate, model_store)
    await wait_for_pairs(
        model, candidate, since, window_s, stop_at_pairs, poll_s, redis_url, thresholds.min_pairs
    )
    return await read_pairs(model, candidate, since, stop_at_pairs, redis_url), identical


@flow(name="shadow-validation", **ROLLBACK_HOOKS)
async def shadow_validation(
    model: str,
    candidate: Version,
    window_s: float | None = None,
    *,
    min_pairs: int | None = None,
    stop_at_pairs: int | None = None,
    poll_s: float = 30.0,
    label_output: str | None = None,
    regression_rtol: float | None = None,
    latency_slack_ms: float | None = None,
    max_error_rate: float | None = None,
    max_p99_latency_ratio: float | None = None,
    min_agreement: float | None = None,
    max_drift_psi: float | None = None,
    rollback_on_failure: bool = True,
    model_store: str | None = None,
    redis_url: str | None = None,
) -> ShadowGateResult:
    """Shadow ``candidate`` for the window, compare it with the primary, gate.

    Args:
        model: the model whose candidate is validated (e.g. fraud).
        candidate: the version to validate (e.g. 2).
        window_s: how long to shadow, in seconds (empty: the rollout settings' window).
        min_pairs: fewest mirrored requests to judge (empty: settings).
        stop_at_pairs: end the window as soon as this many pairs arrived.
        poll_s: seconds between looks at the pair stream (each look logs the progress).
        label_output: the classifier output to compare (default: label).
        regression_rtol: relative error under which regression outputs agree (empty: settings).
        latency_slack_ms: milliseconds allowed on top of the p99 ratio (empty: settings).
        max_error_rate: most candidate errors per request (empty: settings).
        max_p99_latency_ratio: most candidate p99 runner time over the primary's (empty: settings).
        min_agreement: least share of rows where the candidate's label agrees (empty: settings).
        max_drift_psi: largest prediction-drift PSI against the primary (empty: settings).
        rollback_on_failure: roll the candidate back when a gate fails.
        model_store: the model store of both versions, to tell identical artifacts (empty: settings).
        redis_url: the Redis holding rollout state and streams (empty: settings).

    Returns the gate's result; raises ``ShadowGateError`` when it failed (rolled back).
    """
    candidate = version_text(candidate)
    settings = get_settings().rollout
    url = resolve_redis_url(redis_url)
    gates: dict[str, float | None] = {"min_pairs": min_pairs, "min_agreement": min_agreement}
    gates |= {"regression_rtol": regression_rtol, "latency_slack_ms": latency_slack_ms}
    gates |= {"max_error_rate": max_error_rate, "max_p99_latency_ratio": max_p99_latency_ratio}
    gates |= {"max_drift_psi": max_drift_psi}
    thresholds = Thresholds.from_settings(settings, **gates)
    window = settings.shadow_window_s if window_s is None else window_s
    pairs, identical = await _observe(
        model, candidate, window, thresholds, stop_at_pairs, poll_s, model_store, url
    )
    result = judge_shadow(model, candidate, pairs, thresholds, label_output, identical)
    if not result.passed:
        await _reject(result, rollback_on_failure, url)
    await publish_shadow_artifact(result, "kept in shadow mode for the next stage")
    return result


if __name__ == "__main__":
    asyncio.run(shadow_validation(sys.argv[1], sys.argv[2]))
