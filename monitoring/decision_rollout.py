"""Rollouts and experiments, judged: user-level hashing and shadow-then-canary
(docs/design.md, sections 4 and 8). Pure: evidence in, rows out.
"""

from __future__ import annotations

from monitoring.decision_model import (
    Evidence,
    RolloutFacts,
    Row,
    ShadowFacts,
    Signal,
    percentile,
)
from services.settings import DecisionSettings, RolloutSettings

ASSIGNMENTS = "servekit_assignments_total"


# -- 4. sticky user-level assignment ---------------------------------------------------------
def hashing_rows(ev: Evidence, s: DecisionSettings) -> list[Row]:
    """The share of anonymous requests (assigned per request, not per user), per model."""
    counted = ev.window.last.has(ASSIGNMENTS)
    models = set(ev.window.last.by(ASSIGNMENTS, "model")) if counted else set(ev.logged_units)
    rows = [_anonymous_row(ev, s, model, counted) for model in sorted(models)]
    if not rows:
        sig = Signal("hashing", "anonymous share", "", f"≤ {s.max_anonymous_share:.0%}")
        rows.append(
            sig.no_data(
                "no request counted per assignment unit: rollout routing is off "
                "(SERVEKIT_ROLLOUT_ENABLED=false) or no POST /predict yet"
            )
        )
    return rows


def _anonymous_row(ev: Evidence, s: DecisionSettings, model: str, counted: bool) -> Row:
    w = ev.window
    if counted:
        units = w.delta_by(ASSIGNMENTS, "unit", model=model)
        basis = "servekit_assignments"
    else:
        units = {k: float(v) for k, v in ev.logged_units.get(model, {}).items()}
        basis = "newest prediction-stream entries (a sample outside rollouts)"
    sig = Signal(
        "hashing", "anonymous share (no user_id)", model,
        f"≤ {s.max_anonymous_share:.0%} of requests", basis,
    )  # fmt: skip
    total = sum(units.values())
    if total < s.min_samples:
        return sig.no_data(f"fewer than {s.min_samples} requests", f"{total:.0f} requests")
    share = units.get("request", 0.0) / total
    value = f"{share:.1%} of {total:.0f} requests"
    if share <= s.max_anonymous_share:
        return sig.fine(value, "requests carry user ids: each user stays on one variant", share)
    state = _state(ev, model)
    running = f" ({state.mode} running now)" if state and state.mode in ("canary", "ab") else ""
    return sig.reconsider(
        value,
        "most requests carry no user_id, so they are assigned one by one: experiments count "
        f"requests, not users, and a user may see both variants{running}; send a stable "
        "id (account, session, device) as user_id, or read the tests as request-level",
        share,
    )


def _state(ev: Evidence, model: str) -> RolloutFacts | None:
    return next((r for r in ev.rollouts if r.model == model), None)


# -- 8. shadow, then canary ----------------------------------------------------------------
def rollout_rows(ev: Evidence, s: DecisionSettings, gates: RolloutSettings) -> list[Row]:
    """Shadow queue drops, shadow latency vs primary, and the identical-answers shortcut."""
    rows = [_drop_row(ev, s)]
    shadowed = set()
    for facts in ev.shadows:
        shadowed.add(facts.model)
        rows.append(_latency_row(s, gates, facts))
        rows.append(_identical_row(ev, s, facts))
    for state in ev.rollouts:
        if state.mode in ("shadow", "canary") and state.model not in shadowed:
            sig = Signal("rollouts", "shadow answers identical", state.model, "all identical")
            rows.append(sig.no_data(f"{state.mode} running but no shadow pair logged yet"))
    return rows


def _drop_row(ev: Evidence, s: DecisionSettings) -> Row:
    w = ev.window
    sig = Signal(
        "rollouts", "shadow queue drops", "", f"≤ {s.max_shadow_drop_rate:.0%} of jobs",
        "servekit_shadow_requests",
    )  # fmt: skip
    if not w.last.has("servekit_shadow_requests_total"):
        return sig.no_data("rollout routing is off on this gateway (SERVEKIT_ROLLOUT_ENABLED)")
    by = w.delta_by("servekit_shadow_requests_total", "result")
    jobs = by.get("sent", 0.0) + by.get("dropped", 0.0)
    if jobs < s.min_samples:
        modes = ", ".join(f"{r.model}: {r.mode}" for r in ev.rollouts) or "no rollout state"
        return sig.no_data(f"no model mirrored enough requests ({modes})", f"{jobs:.0f} jobs")
    rate = by.get("dropped", 0.0) / jobs
    failed = by.get("errors", 0.0) + by.get("timeouts", 0.0)
    value = f"{rate:.1%} of {jobs:.0f} jobs dropped; {failed:.0f} failed or timed out"
    if rate <= s.max_shadow_drop_rate:
        return sig.fine(value, "mirroring keeps up with live traffic", rate)
    return sig.reconsider(
        value,
        "the shadow queue overflows: the comparison misses traffic and mirrored calls compete "
        "with live ones; raise SERVEKIT_ROLLOUT_SHADOW_QUEUE or _SHADOW_CONCURRENCY, or "
        "shadow on a replica with headroom",
        rate,
    )


def _latency_row(s: DecisionSettings, gates: RolloutSettings, facts: ShadowFacts) -> Row:
    ratio, slack = gates.max_p99_latency_ratio, gates.latency_slack_ms
    sig = Signal(
        "rollouts", "shadow latency vs primary", facts.model,
        f"candidate p99 ≤ {ratio:g} × primary + {slack:g} ms (the shadow gate)",
        f"newest {facts.pairs} shadow pairs (candidate {facts.candidate}), latencies as logged",
    )  # fmt: skip
    if len(facts.candidate_ms) < s.min_samples:
        return sig.no_data(
            f"fewer than {s.min_samples} answered pairs", f"{len(facts.candidate_ms)} pairs"
        )
    primary = percentile(facts.primary_ms, 0.99)
    candidate = percentile(facts.candidate_ms, 0.99)
    value = f"p99 {candidate:.3g} ms vs {primary:.3g} ms"
    if candidate <= ratio * primary + slack:
        return sig.fine(
            value, "the candidate costs no more latency than the gate allows", candidate
        )
    return sig.reconsider(
        value,
        "the candidate is slower than the gate allows: the shadow stage will reject it; "
        "profile or re-convert it before any canary",
        candidate,
    )


def _identical_row(ev: Evidence, s: DecisionSettings, facts: ShadowFacts) -> Row:
    state = _state(ev, facts.model)
    history = (
        f"; history: {state.promotions} promotions, {state.blue_green} blue-green" if state else ""
    )
    sig = Signal(
        "rollouts", "shadow answers identical", facts.model,
        "all identical: skip the canary",
        f"newest {facts.pairs} shadow pairs (candidate {facts.candidate}){history}",
    )  # fmt: skip
    if facts.pairs < s.min_samples:
        return sig.no_data(f"fewer than {s.min_samples} pairs", f"{facts.pairs} pairs")
    share = facts.identical / facts.pairs
    value = f"{facts.identical} of {facts.pairs} identical ({facts.errors} failed)"
    if facts.identical < facts.pairs or facts.errors:
        return sig.fine(value, "answers differ: a canary measures what they change", share)
    if facts.mismatched:
        return sig.reconsider(
            value,
            "identical on every output both sides log, but the two sides log different "
            f"outputs ({facts.outputs}), so the rollout flow's identical check fails and it "
            "runs the full canary: once the shadow gate passes, promote by hand "
            f"(servekit rollout promote {facts.model})",
            share,
        )
    if state is not None and state.mode == "canary" and state.candidate == facts.candidate:
        return sig.reconsider(
            value,
            "the candidate answered identically in shadow yet runs a canary, which can teach "
            f"nothing: promote it (servekit rollout promote {facts.model})",
            share,
        )
    return sig.fine(
        value, "identical answers: the rollout flow skips the canary (blue-green)", share
    )
