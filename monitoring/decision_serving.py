"""How the runner serves, judged from the gateway's /metrics and GET /models: adaptive
batching, dedicated server vs shared pool, and autoscaling (docs/design.md, sections 1,
2 and 7). Pure: evidence in, rows out.
"""

from __future__ import annotations

import math
import statistics

from monitoring.decision_model import Evidence, Row, Signal
from monitoring.scrape import Scrape, Window
from services.settings import BatchPolicy, DecisionSettings

LATENCY = "servekit_request_latency_seconds"
GPU = "servekit_gpu_utilization_percent"
TWO_SCRAPES = "a rate needs two scrapes: run the report over a window (--window 60s)"


def _policy(ev: Evidence, model: str) -> BatchPolicy:
    """The model's batching policy as the gateway reports it, else as configured here."""
    for runtime in ev.runtime(model):
        if isinstance(runtime.get("batching"), dict):
            return BatchPolicy.model_validate(runtime["batching"])
    return ev.batch.policy_for(model)


def _p99_target(s: DecisionSettings, model: str) -> float:
    return s.per_model_p99_target_ms.get(model, s.p99_target_ms)


# -- 1. adaptive batching ------------------------------------------------------------------
def batching_rows(ev: Evidence, s: DecisionSettings) -> list[Row]:
    """Arrivals per batching window, p99 vs its target, and the window vs the budget."""
    rows: list[Row] = []
    for model in ev.served_models():
        policy = _policy(ev, model)
        rows.append(_arrivals_row(ev, s, model, policy))
        rows.append(_p99_row(ev, s, model))
        rows.append(_window_budget_row(ev, s, model, policy))
    if not rows:
        sig = Signal("batching", "arrival rate vs batching window", "", "-")
        rows.append(sig.no_data("no model has served a request or is loaded", "no traffic"))
    return rows


def _arrivals_row(ev: Evidence, s: DecisionSettings, model: str, policy: BatchPolicy) -> Row:
    w = ev.window
    arrivals = w.delta("servekit_model_requests_total", model=model)
    source = "requests reaching the batcher (servekit_model_requests)"
    if arrivals is None:
        arrivals = w.delta(f"{LATENCY}_count", model=model)
        source = "gateway requests (remote runner: cache hits included)"
    window_ms = policy.max_wait_ms or 10.0
    sig = Signal(
        "batching", "arrival rate vs batching window", model,
        f"≥ {s.batch_min_arrivals:g} per {window_ms:g} ms", source,
    )  # fmt: skip
    if w.seconds is None:
        return sig.no_data(TWO_SCRAPES)
    if arrivals is None or arrivals < s.min_samples:
        return sig.no_data(f"fewer than {s.min_samples} requests", f"{arrivals or 0:.0f} requests")
    rps = arrivals / w.seconds
    per_window = rps * window_ms / 1000.0
    batch = w.histogram("servekit_batch_rows", model=model)
    mean_batch = f"{batch.mean:.1f} rows" if batch and batch.count else "-"
    value = f"{per_window:.2g} per {window_ms:g} ms ({rps:.3g} req/s, mean batch {mean_batch})"
    few = per_window < s.batch_min_arrivals
    if ev.batch.enabled and few:
        return sig.reconsider(
            value,
            "batches hardly form at this rate, so batching buys little (and, as a lone request "
            f"goes at once, costs little): keep it, or set max_wait_ms 0 for {model} in "
            "SERVEKIT_BATCH_PER_MODEL to rule out any wait",
            per_window,
        )
    if not ev.batch.enabled and not few:
        return sig.reconsider(
            value,
            "enough requests arrive to fill batches but batching is off: "
            "SERVEKIT_BATCH_ENABLED=true raises throughput on compute-bound models",
            per_window,
        )
    if ev.batch.enabled:
        return sig.fine(value, "batches can form: batching pays here", per_window)
    return sig.fine(value, "batching is off and too few requests arrive to batch", per_window)


def _p99_row(ev: Evidence, s: DecisionSettings, model: str) -> Row:
    w = ev.window
    target = _p99_target(s, model)
    sig = Signal(
        "batching", "request p99 vs target", model, f"≤ {target:g} ms",
        "p99 interpolated in the latency histogram's buckets",
    )  # fmt: skip
    hist = w.histogram(LATENCY, model=model)
    if hist is None or hist.count < s.min_samples:
        count = hist.count if hist else 0
        return sig.no_data(f"fewer than {s.min_samples} requests", f"{count:.0f} requests")
    p99, p50 = hist.quantile(0.99) * 1000.0, hist.quantile(0.5) * 1000.0
    value = f"p99 {p99:.3g} ms (p50 {p50:.3g} ms, {hist.count:.0f} requests)"
    if p99 <= target:
        return sig.fine(value, "within target", p99)
    policy = _policy(ev, model)
    if ev.batch.enabled and policy.max_wait_ms > 0:
        action = (
            f"over target: lower max_wait_ms (now {policy.max_wait_ms:g}) or max_batch_size "
            f"(now {policy.max_batch_size}) for {model} in SERVEKIT_BATCH_PER_MODEL, or add "
            "replicas"
        )
    else:
        action = "over target without batching waits: the runner is saturated or slow; add replicas"
    return sig.reconsider(value, action, p99)


def _window_budget_row(ev: Evidence, s: DecisionSettings, model: str, policy: BatchPolicy) -> Row:
    target = _p99_target(s, model)
    budget = s.window_budget_share * target
    wait = policy.max_wait_ms if ev.batch.enabled else 0.0
    sig = Signal(
        "batching", "batching window vs latency budget", model,
        f"≤ {budget:g} ms ({s.window_budget_share:.0%} of the p99 target)",
        "configuration: the batching policy on GET /models, SERVEKIT_BATCH_*",
    )  # fmt: skip
    value = f"max_wait {wait:g} ms = {wait / target:.0%} of {target:g} ms"
    if wait == 0:
        return sig.fine(value, "batching never waits for this model", 0.0)
    if wait > budget:
        return sig.reconsider(
            value,
            f"the latency budget is tiny next to the window: set max_wait_ms ≤ {budget:g} for "
            f"{model} in SERVEKIT_BATCH_PER_MODEL (0: never wait; max_batch_size 1: no batching)",
            wait / target,
        )
    return sig.fine(value, "the window leaves most of the budget to inference", wait / target)


# -- 2. dedicated server vs shared pool ------------------------------------------------------
def pool_rows(ev: Evidence, s: DecisionSettings) -> list[Row]:
    """Per-model traffic against its server kind, and the shared pool's churn."""
    return [_traffic_row(ev, s, model) for model in ev.served_models()] + [_churn_row(ev, s)]


def _traffic_row(ev: Evidence, s: DecisionSettings, model: str) -> Row:
    w = ev.window
    pinned = any(r.get("pinned") for r in ev.runtime(model))
    threshold = (
        f"≥ {s.dedicated_min_rps:g} req/s on a dedicated server"
        if pinned
        else f"≤ {s.shared_max_rps:g} req/s in the shared pool"
    )
    basis = "pinning from GET /models"
    sig = Signal("pools", "traffic vs server kind", model, threshold, basis)
    rps = w.rate(f"{LATENCY}_count", model=model)
    if rps is None:
        return sig.no_data(TWO_SCRAPES)
    value = f"{rps:.3g} req/s, {'dedicated (pinned)' if pinned else 'shared pool'}"
    if not ev.models:
        return sig.no_data("GET /models unavailable: whether the model is pinned is unknown", value)
    if pinned and rps < s.dedicated_min_rps:
        return sig.reconsider(
            value,
            f"a dedicated server idles for {model}: serve it from the shared pool (drop it "
            "from SERVEKIT_MODELS; bentos/multimodel)",
            rps,
        )
    if not pinned and rps > s.shared_max_rps:
        return sig.reconsider(
            value, f"{model} is busy enough for its own server: pin it (SERVEKIT_MODELS)", rps
        )
    return sig.fine(value, "the server kind fits the traffic", rps)


def _churn_row(ev: Evidence, s: DecisionSettings) -> Row:
    w = ev.window
    sig = Signal(
        "pools", "shared-pool churn (loads + evictions)", "", f"≤ {s.max_churn_per_hour:g}/h",
        "servekit_model_loads, servekit_model_evictions",
    )  # fmt: skip
    if not w.last.has("servekit_model_loads_total"):
        return sig.no_data("no pool metrics on this gateway (split shape: read the runner's)")
    if w.seconds is None:
        return sig.no_data(TWO_SCRAPES)
    loads = w.delta_by("servekit_model_loads_total", "outcome").get("ok", 0.0)
    evictions = w.delta_by("servekit_model_evictions_total", "reason")
    churn = (loads + sum(evictions.values())) / w.seconds * 3600.0
    detail = ", ".join(f"{n:.0f} {r}" for r, n in sorted(evictions.items())) or "none"
    value = f"{churn:.3g}/h ({loads:.0f} loads; evictions: {detail})"
    if churn > s.max_churn_per_hour:
        return sig.reconsider(
            value,
            "the memory budget holds too little of the working set: raise "
            "SERVEKIT_MULTIMODEL_MEMORY_BUDGET_BYTES, or give the most-loaded models a "
            "dedicated server",
            churn,
        )
    return sig.fine(value, "models stay resident: cold loads are rare", churn)


# -- 7. autoscaling ----------------------------------------------------------------------
def autoscaling_rows(ev: Evidence, s: DecisionSettings) -> list[Row]:
    """GPU utilisation against latency where GPU metrics exist; the request-based
    fallback's signals (shed requests, queue depth) everywhere."""
    return [_gpu_row(ev, s), _load_row(ev)]


def _gpu_points(scrapes: list[Scrape]) -> list[tuple[float, float]]:
    """(mean GPU utilisation at an interval's end, mean request latency in it) per pair of
    consecutive scrapes that saw requests."""
    points = []
    for a, b in zip(scrapes, scrapes[1:], strict=False):
        hist = Window(a, b).histogram(LATENCY)
        gpu = [x.value for x in b.select(GPU, {})]
        if hist is not None and hist.count > 0 and gpu:
            points.append((statistics.fmean(gpu), hist.mean * 1000.0))
    return points


def _gpu_row(ev: Evidence, s: DecisionSettings) -> Row:
    sig = Signal(
        "autoscaling", "GPU utilisation vs latency", "",
        f"correlation ≥ {s.min_gpu_latency_correlation:g}",
        f"{len(ev.scrapes)} scrapes; {GPU} against mean latency per interval",
    )  # fmt: skip
    if not any(sc.has(GPU) for sc in ev.scrapes):
        return sig.no_data(
            f"no GPU metrics ({GPU} absent): a CPU-only gateway, so utilisation-based scaling "
            "does not apply; scale on request load (next row)",
            "no GPU",
        )
    points = _gpu_points(ev.scrapes)
    if len(points) < 4:
        return sig.no_data(
            "fewer than 4 scrape intervals with traffic: widen --window or raise "
            "SERVEKIT_DECISIONS_SCRAPES",
            f"{len(points)} intervals",
        )
    util, latency = zip(*points, strict=True)
    try:
        r = statistics.correlation(util, latency)
    except statistics.StatisticsError:
        return sig.no_data("utilisation or latency did not vary in the window")
    value = f"r = {r:.2f} over {len(points)} intervals (GPU {min(util):.0f}-{max(util):.0f} %)"
    if math.isnan(r) or r < s.min_gpu_latency_correlation:
        return sig.reconsider(
            value,
            "GPU utilisation does not track latency here: scale on request load (inferred "
            "rows, queue depth) instead",
            r,
        )
    return sig.fine(
        value, "utilisation tracks latency: a sound scaling signal (no policy is built yet)", r
    )


def _load_row(ev: Evidence) -> Row:
    w = ev.window
    sig = Signal(
        "autoscaling", "requests shed (request-based fallback)", "", "0 refused with 503",
        "servekit_shed_requests, servekit_queue_rows at each scrape",
    )  # fmt: skip
    shed = w.delta("servekit_shed_requests_total")
    if shed is None:
        return sig.no_data("no batcher metrics on this gateway (split shape: read the runner's)")
    requests = w.delta(f"{LATENCY}_count") or 0.0
    peak = max((sc.total("servekit_queue_rows") or 0.0) for sc in ev.scrapes)
    value = f"{shed:.0f} shed of {requests:.0f} requests; queue peak {peak:.0f} rows"
    if shed > 0:
        return sig.reconsider(
            value,
            "the runner refused requests: add replicas; a request-based policy would scale "
            "on inferred rows (servekit_batch_rows) and queue depth (servekit_queue_rows)",
            shed,
        )
    return sig.fine(value, "no request refused: capacity keeps up", shed)
