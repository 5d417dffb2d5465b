"""The prediction cache and the feature store, judged on hand-built samples."""

from __future__ import annotations

from monitoring.decision_model import Evidence, Row, Verdict, ViewFacts
from monitoring.decision_state import cache_rows, feature_rows
from monitoring.scrape import Sample
from services.settings import DecisionSettings
from tests.monitoring.samples import histogram, sample, scrape

S = DecisionSettings()


def _cache(hits: int, misses: int, *, enabled: int = 1, calls_s: float = 0.0) -> list[Sample]:
    out = [
        sample("servekit_cache_hits_total", hits, model="m"),
        sample("servekit_cache_misses_total", misses, model="m"),
        sample("servekit_cache_enabled", enabled, model="m"),
    ]
    if calls_s:
        out += histogram("servekit_batch_seconds", [calls_s] * misses, model="m", version="1")
    return out


def _ev(last: list[Sample], **kw: object) -> Evidence:
    return Evidence(scrapes=[scrape(0.0), scrape(10.0, last)], **kw)  # type: ignore[arg-type]


def _hit(rows: list[Row]) -> Row:
    return next(r for r in rows if r.signal == "hit rate")


def _cost(rows: list[Row]) -> Row:
    return next(r for r in rows if r.signal.startswith("lookup cost"))


def test_a_low_hit_rate_says_the_cache_costs_more() -> None:
    row = _hit(cache_rows(_ev(_cache(1, 99)), S))
    assert row.verdict is Verdict.RECONSIDER and row.measured == 0.01
    assert "SERVEKIT_CACHE_ENABLED=false" in row.action
    off = _hit(cache_rows(_ev(_cache(1, 99, enabled=0)), S))
    assert "off by itself" in off.value and "turned itself off" in off.action


def test_a_good_hit_rate_is_fine_and_few_lookups_are_not_enough() -> None:
    assert _hit(cache_rows(_ev(_cache(50, 50)), S)).verdict is Verdict.FINE
    assert _hit(cache_rows(_ev(_cache(1, 4)), S)).verdict is Verdict.NO_DATA
    disabled = [sample("servekit_cache_bypasses_total", 300, model="m", reason="disabled")]
    row = _hit(cache_rows(_ev(disabled), S))
    assert row.verdict is Verdict.NO_DATA and row.value == "cache disabled"


def test_lookup_cost_against_the_inference_it_saves() -> None:
    probes = [0.2] * 50
    # A 0.05 ms inference: a 0.2 ms lookup never pays.
    cheap = cache_rows(_ev(_cache(50, 50, calls_s=0.00005), cache_probe_ms=probes), S)
    row = _cost(cheap)
    assert row.verdict is Verdict.RECONSIDER and row.measured and row.measured > 1
    # A 2 ms inference at 50 % hits: pays above 10 %.
    dear = cache_rows(_ev(_cache(50, 50, calls_s=0.002), cache_probe_ms=probes), S)
    assert _cost(dear).verdict is Verdict.FINE and "10%" in _cost(dear).value
    # ...but not at 2 % hits.
    rare = cache_rows(_ev(_cache(2, 98, calls_s=0.002), cache_probe_ms=probes), S)
    assert _cost(rare).verdict is Verdict.RECONSIDER


def test_lookup_cost_needs_probes_and_backend_calls() -> None:
    no_probes = cache_rows(_ev(_cache(50, 50, calls_s=0.002)), S)
    assert _cost(no_probes).verdict is Verdict.NO_DATA
    no_calls = cache_rows(_ev(_cache(50, 50), cache_probe_ms=[0.2] * 50), S)
    assert "colocated" in _cost(no_calls).action


def test_no_cache_metrics_at_all() -> None:
    (row,) = cache_rows(_ev([]), S)
    assert row.verdict is Verdict.NO_DATA


def _views(
    *views: ViewFacts, probes: list[float] | None = None, redis_ok: bool = True
) -> list[Row]:
    ev = Evidence(scrapes=[scrape(0.0)], views=list(views), redis_ok=redis_ok)
    ev.feature_probe_ms = probes or []
    return feature_rows(ev, S)


def test_batch_feature_age_against_a_day() -> None:
    old, fresh = ViewFacts("a", "batch", 36 * 3600, 30 * 3600), ViewFacts("b", "batch", 3600, 600)
    rows = _views(old, fresh)
    assert rows[0].verdict is Verdict.RECONSIDER and rows[0].value == "30 h"
    assert "materialize-daily" in rows[0].action
    assert rows[1].verdict is Verdict.FINE  # judged on a day, not on the view's own limit
    never = _views(ViewFacts("c", "batch", 3600, None))[0]
    assert never.verdict is Verdict.NO_DATA and "flows.materialize" in never.action
    down = _views(ViewFacts("c", "batch", 3600, None), redis_ok=False)[0]
    assert down.action == "Redis unreachable"


def test_real_time_heartbeat_against_the_views_staleness() -> None:
    stalled = _views(ViewFacts("rt", "realtime", 60.0, 300.0))[0]
    assert stalled.verdict is Verdict.RECONSIDER and "stalled" in stalled.action
    assert _views(ViewFacts("rt", "realtime", 60.0, 2.0))[0].verdict is Verdict.FINE
    assert _views(ViewFacts("rt", "realtime", 60.0, None))[0].value == "no heartbeat"


def test_retrieval_p99_against_5_ms() -> None:
    slow = _views(probes=[1.0] * 95 + [9.0] * 5)[-1]
    assert slow.verdict is Verdict.RECONSIDER and slow.measured == 9.0
    fast = _views(probes=[0.3] * 100)[-1]
    assert fast.verdict is Verdict.FINE and fast.signal == "retrieval p99"
    assert _views(probes=[0.3] * 3)[-1].verdict is Verdict.NO_DATA
