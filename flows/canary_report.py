"""The canary's markdown report: a row per step, then the last step's variants."""

from __future__ import annotations

import math

from flows.artifacts import format_ms, format_percent
from flows.gates import CanaryCheck, Thresholds
from services.rollout.statistics import VariantStats


def _variant_row(name: str, v: VariantStats | None) -> str:
    if v is None:
        return f"| {name} | - | 0 | - | - | - | - | - |"
    rate = v.conversions / v.outcomes if v.outcomes else math.nan
    return (
        f"| {name} | {v.version or '-'} | {v.predictions} | {format_percent(v.error_rate)} "
        f"| {format_ms(v.latency.p50_ms)} | {format_ms(v.latency.p99_ms)} | {v.outcomes} "
        f"| {format_percent(rate)} |"
    )


def drift_cell(check: CanaryCheck) -> str:
    """The step's drift PSI for a table cell ("-" until both variants have enough rows)."""
    d = check.drift
    if d is None or math.isnan(d.psi):
        return "-"
    if not d.judged:
        return f"- ({min(d.primary_rows, d.candidate_rows)} rows)"
    return f"{d.psi:.3f}"


def _step_row(number: int, check: CanaryCheck, action: str) -> str:
    c = check.candidate
    mspr = "waiting" if check.sequential is None else f"p={check.sequential.p_value:.3g}"
    verdict = "passed" if check.passed else "FAILED: " + "; ".join(check.failures)
    return (
        f"| {number} | {check.percent:g} % | {check.step_predictions} "
        f"| {format_percent(c.error_rate) if c else '-'} "
        f"| {format_ms(c.latency.p99_ms) if c else '-'} | {drift_cell(check)} | {mspr} "
        f"| {verdict} | {action} |"
    )


def canary_markdown(
    model: str,
    candidate: str,
    steps: list[tuple[CanaryCheck, str]],
    thresholds: Thresholds,
) -> str:
    """Every step so far as a row (its final look and the action taken), then the last
    step's variants in full."""
    check = steps[-1][0]
    verdict = "PASSED" if all(c.passed for c, _ in steps) else "FAILED"
    t = thresholds
    lines = [
        f"# Canary of {model} version {candidate}, step {len(steps)}: "
        f"{check.percent:g} %: {verdict}",
        "",
        "| step | traffic | candidate predictions | error rate | p99 ms | drift PSI | mSPRT "
        "| verdict | action |",
        "|---|---|---|---|---|---|---|---|---|",
        *[_step_row(n, c, a) for n, (c, a) in enumerate(steps, start=1)],
        "",
        f"Gates: error rate {t.shown('max_error_rate', f'<= {t.max_error_rate:.2%}')}, "
        f"p99 {t.shown('max_p99_latency_ratio', f'<= x{t.max_p99_latency_ratio:g}')} + "
        f"{t.shown('latency_slack_ms', f'{t.latency_slack_ms:g} ms')}, drift PSI "
        f"{t.shown('max_drift_psi', f'<= {t.max_drift_psi:g}')}, predictions "
        f"{t.shown('min_predictions', f'>= {t.min_predictions}')}, mSPRT alpha {t.alpha:g} "
        f"after {t.shown('min_outcomes', str(t.min_outcomes))} outcomes.",
        "",
        f"Step {len(steps)} ({check.percent:g} %):",
        "",
        "| variant | version | predictions | error rate | p50 ms | p99 ms | outcomes "
        "| positive rate |",
        "|---|---|---|---|---|---|---|---|",
        _variant_row("primary", check.primary),
        _variant_row("candidate", check.candidate),
        "",
    ]
    s = check.sequential
    if s is None:
        lines.append("mSPRT: waiting for outcomes.")
    else:
        lines.append(
            f"mSPRT: {s.decision}, p={s.p_value:.3g}, diff {s.diff:+.4f} "
            f"[{s.ci_low:+.4f}, {s.ci_high:+.4f}]."
        )
    lines += ["", f"Action: {steps[-1][1]}"]
    return "\n".join(lines)
