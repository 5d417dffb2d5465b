"""The Redis state on the serving path, judged: the prediction cache and the feature store
(docs/design.md, sections 3 and 5). Pure: evidence in, rows out.

The gateway exports no Redis latency, so the cost of a cache lookup and of a feature read
comes from probes the report times itself against the same Redis (``Evidence``'s
``cache_probe_ms`` and ``feature_probe_ms``), from wherever the report runs.
"""

from __future__ import annotations

import math

from monitoring.decision_model import Evidence, Row, Signal, Verdict, ViewFacts, percentile
from services.settings import DecisionSettings


# -- 3. prediction cache ---------------------------------------------------------------------
def cache_rows(ev: Evidence, s: DecisionSettings) -> list[Row]:
    """Hit rate per model, and what a lookup costs against the inference it saves."""
    last = ev.window.last
    models = set(last.by("servekit_cache_hits_total", "model"))
    models |= set(last.by("servekit_cache_misses_total", "model"))
    models |= set(last.by("servekit_cache_bypasses_total", "model"))
    rows: list[Row] = []
    for model in sorted(models):
        hit_row = _hit_rate_row(ev, s, model)
        rows += [hit_row, _cost_row(ev, s, model, hit_row)]
    if not rows:
        sig = Signal("cache", "hit rate", "", f"≥ {s.cache_min_hit_rate:.0%} hits")
        rows.append(sig.no_data("no cache metrics yet: the cache serves POST /predict only"))
    return rows


def _hit_rate_row(ev: Evidence, s: DecisionSettings, model: str) -> Row:
    w = ev.window
    sig = Signal(
        "cache", "hit rate", model, f"≥ {s.cache_min_hit_rate:.0%} hits",
        "servekit_cache_hits / _misses",
    )  # fmt: skip
    hits = w.delta("servekit_cache_hits_total", model=model) or 0.0
    lookups = hits + (w.delta("servekit_cache_misses_total", model=model) or 0.0)
    if lookups < s.min_samples:
        if w.delta_by("servekit_cache_bypasses_total", "reason", model=model).get("disabled"):
            return sig.no_data("SERVEKIT_CACHE_ENABLED=false on the gateway", "cache disabled")
        return sig.no_data(f"fewer than {s.min_samples} lookups", f"{lookups:.0f} lookups")
    rate = hits / lookups
    off = w.last.total("servekit_cache_enabled", model=model) == 0
    value = f"{rate:.1%} of {lookups:.0f} lookups" + (" (off by itself, probing)" if off else "")
    if rate >= s.cache_min_hit_rate:
        return sig.fine(value, "inputs repeat: the cache answers them from Redis", rate)
    state = (
        "it has turned itself off for this model and probes 2 % of inputs"
        if off
        else "it turns itself off under SERVEKIT_CACHE_MIN_HIT_RATE"
    )
    return sig.reconsider(
        value,
        f"inputs rarely repeat, so each request pays a Redis round trip for little: {state}; "
        "where no served model repeats inputs, set SERVEKIT_CACHE_ENABLED=false",
        rate,
    )


def _cost_row(ev: Evidence, s: DecisionSettings, model: str, hit_row: Row) -> Row:
    sig = Signal(
        "cache", "lookup cost vs inference saved", model, "hit rate × inference ≥ lookup",
        f"lookup: p50 of {len(ev.cache_probe_ms)} MGETs timed by the report; inference: "
        "mean backend call (servekit_batch_seconds)",
    )  # fmt: skip
    if not ev.cache_probe_ms:
        return sig.no_data("no lookups timed (Redis unreachable, or probes set to 0)")
    calls = ev.window.histogram("servekit_batch_seconds", model=model)
    if calls is None or calls.count < s.min_samples:
        return sig.no_data(
            f"fewer than {s.min_samples} backend calls measured (servekit_batch_seconds: "
            "colocated shape only)"
        )
    lookup_ms, infer_ms = percentile(ev.cache_probe_ms, 0.5), calls.mean * 1000.0
    break_even = lookup_ms / infer_ms if infer_ms > 0 else math.inf
    shown = f"{break_even:.0%}" if math.isfinite(break_even) else "never"
    value = f"lookup {lookup_ms:.2g} ms vs inference {infer_ms:.2g} ms: pays above {shown} hits"
    rate = hit_row.measured if hit_row.verdict is not Verdict.NO_DATA else None
    if rate is None:
        if break_even > 1:
            return sig.reconsider(
                value,
                "a lookup costs more than an inference: the cache cannot pay on this model "
                "even at 100 % hits",
                break_even,
            )
        return sig.no_data("hit rate unknown: too few lookups", value)
    if rate < break_even:
        return sig.reconsider(
            value,
            f"at {rate:.1%} hits a lookup costs more than the inference it saves: the cache "
            "pays on compute-bound models, or with more repeated inputs",
            break_even,
        )
    return sig.fine(value, f"at {rate:.1%} hits the cache saves more than it costs", break_even)


# -- 5. batch + real-time features -------------------------------------------------------
def feature_rows(ev: Evidence, s: DecisionSettings) -> list[Row]:
    """Freshness of every declared view, and feature retrieval p99."""
    return [_freshness_row(ev, s, view) for view in ev.views] + [_retrieval_row(ev, s)]


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"


def _freshness_row(ev: Evidence, s: DecisionSettings, view: ViewFacts) -> Row:
    batch = view.kind == "batch"
    limit = s.feature_max_age_s if batch else view.max_staleness_s
    sig = Signal(
        "features", "batch data age" if batch else "real-time worker heartbeat age", view.name,
        f"≤ {_age(limit)}",
        "Redis: the view's current-version pointer" if batch else "Redis: the worker heartbeat",
    )  # fmt: skip
    if view.age_s is None:
        if not ev.redis_ok:
            return sig.no_data("Redis unreachable")
        if batch:
            return sig.no_data(
                "never materialized (features take their defaults): run "
                "python -m flows.materialize, or the materialize-daily deployment",
                "no data",
            )
        return sig.no_data(
            "no heartbeat: the gateway's stream worker has not run yet", "no heartbeat"
        )
    value = _age(view.age_s)
    if view.age_s <= limit:
        return sig.fine(value, "fresh enough", view.age_s)
    if batch:
        action = (
            "the daily load is late: check the materialize-daily deployment; if this model "
            "needs fresher values, declare the view real-time (SERVEKIT_FEATURES_VIEWS)"
        )
    else:
        action = "the real-time worker has stalled: events are not applied; check the gateway"
    return sig.reconsider(value, action, view.age_s)


def _retrieval_row(ev: Evidence, s: DecisionSettings) -> Row:
    probes = ev.feature_probe_ms
    sig = Signal(
        "features", "retrieval p99", "", f"≤ {s.feature_p99_ms:g} ms",
        f"{len(probes)} reads of every declared view (one Lua call each), timed by the report",
    )  # fmt: skip
    if len(probes) < s.min_samples:
        return sig.no_data(f"fewer than {s.min_samples} reads timed (Redis unreachable?)")
    p99 = percentile(probes, 0.99)
    value = f"p99 {p99:.2g} ms (p50 {percentile(probes, 0.5):.2g} ms)"
    if p99 <= s.feature_p99_ms:
        return sig.fine(value, "one round trip keeps feature reads cheap", p99)
    return sig.reconsider(
        value,
        "feature reads take a large share of the latency budget: bring Redis closer to the "
        "gateway (same host or zone), or read fewer views per model",
        p99,
    )
