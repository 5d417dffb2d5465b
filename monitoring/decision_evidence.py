"""Collecting the decision report's evidence from a live deployment.

- the gateway: ``/metrics`` scraped ``scrapes`` times, evenly over ``window_s`` (rates are
  the increase from the first scrape to the last; one scrape when the window is 0), and
  ``GET /models`` (loaded versions, pinning, batching policy, execution provider);
- Redis: rollout state and history, the newest shadow pairs and prediction-stream entries,
  each feature view's freshness, and timed probes of a feature read and a cache lookup
  (the gateway exports no Redis latency);
- the model registry: the conversion (parity) report of every served model's versions.

Anything that cannot be read is recorded in ``Evidence.problems``; its rows then say
"not enough data". Only an unreachable gateway is an error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from collections import Counter
from typing import Any

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.exceptions import RedisError

from monitoring.decision_model import (
    Evidence,
    ParityFacts,
    RolloutFacts,
    ShadowFacts,
    ViewFacts,
)
from monitoring.scrape import Scrape, fetch_metrics
from services.errors import ServekitError, UnavailableError
from services.registry.stores import open_store
from services.registry.versions import ModelRegistry, ModelVersion
from services.rollout.prediction_log import PredictionLog, ShadowPair
from services.rollout.state import RolloutStore
from services.settings import Settings
from services.state import keys
from services.state.features import FeatureRegistry, FeatureStore
from services.state.redis_clients import connect
from services.state.redis_embedded import EmbeddedRedis

logger = logging.getLogger(__name__)


async def scrape_over(url: str, window_s: float, scrapes: int, timeout_s: float) -> list[Scrape]:
    """``scrapes`` scrapes of ``{url}/metrics`` spread evenly over ``window_s`` seconds.

    Raises:
        UnavailableError: the first scrape failed (the gateway does not answer).
    """
    count = 1 if window_s <= 0 else max(2, scrapes)
    step = window_s / (count - 1) if count > 1 else 0.0
    start = time.monotonic()
    out: list[Scrape] = []
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i * step - time.monotonic()))
        try:
            out.append(await asyncio.to_thread(fetch_metrics, url, timeout_s))
        except OSError as exc:
            if not out:
                raise UnavailableError(f"the gateway at {url} does not answer: {exc}") from exc
            logger.warning("scrape %d of %s failed: %s", i + 1, url, exc)
    return out


def fetch_models(url: str, timeout_s: float) -> list[dict[str, Any]]:
    """The ``models`` list of ``GET {url}/models``."""
    with urllib.request.urlopen(url.rstrip("/") + "/models", timeout=timeout_s) as response:  # noqa: S310
        return list(json.loads(response.read())["models"])


def redis_url_for(settings: Settings, explicit: str | None = None) -> str | None:
    """The Redis the gateway uses: given, configured, or the embedded one if it runs.

    The report never starts a Redis of its own: an empty one would only say "no data".
    """
    if explicit or settings.redis.url:
        return explicit or settings.redis.url
    embedded = EmbeddedRedis(settings.redis.embedded_dir)
    return embedded.url if embedded.ping() else None


async def gather(
    settings: Settings,
    *,
    url: str | None = None,
    window_s: float | None = None,
    redis_url: str | None = None,
) -> Evidence:
    """Everything the report judges, from the gateway at ``url``, its Redis and registry."""
    s = settings.decisions
    base = url or s.url
    window = s.window_s if window_s is None else window_s
    scrapes = await scrape_over(base, window, s.scrapes, s.http_timeout_s)
    ev = Evidence(scrapes=scrapes, batch=settings.batch, now=time.time())
    try:
        ev.models = await asyncio.to_thread(fetch_models, base, s.http_timeout_s)
    except (OSError, ValueError, KeyError) as exc:
        ev.problems.append(f"GET /models failed: {exc}")
    await _redis_evidence(ev, settings, redis_url_for(settings, redis_url))
    await asyncio.to_thread(_registry_evidence, ev, settings)
    return ev


async def _redis_evidence(ev: Evidence, settings: Settings, url: str | None) -> None:
    if url is None:
        ev.redis_ok = False
        ev.problems.append("no Redis: set SERVEKIT_REDIS_URL to the gateway's Redis")
        return
    client = connect(url, socket_timeout=5.0, socket_connect_timeout=2.0)
    try:
        await _rollouts(ev, client)
        models = sorted(set(ev.served_models()) | {r.model for r in ev.rollouts})
        log = PredictionLog(client)
        for model in models:
            await _streams(ev, log, client, model, settings.decisions.stream_entries)
        await _views(ev, client, settings)
        await _probes(ev, client, settings)
    except (RedisError, OSError, ServekitError) as exc:
        ev.redis_ok = False
        ev.problems.append(f"Redis at {url} failed: {exc}")
    finally:
        await client.aclose()


async def _rollouts(ev: Evidence, client: aioredis.Redis) -> None:
    store = RolloutStore(client)
    for model, state in sorted((await store.all()).items()):
        history = await store.history(model, n=100)
        promotions = [e for e in history if e.action == "promote"]
        ev.rollouts.append(
            RolloutFacts(
                model=model,
                mode=state.mode,
                primary=state.primary,
                candidate=state.candidate,
                percent=state.percent,
                promotions=len(promotions),
                blue_green=sum("blue-green" in e.reason for e in promotions),
            )
        )


async def _since_newest(client: aioredis.Redis, key: bytes, count: int) -> str:
    """The stream id after which the newest ``count`` entries of ``key`` follow."""
    ids: Any = await client.xrevrange(key, count=count + 1)
    if len(ids) <= count:
        return "0-0"
    entry_id = ids[-1][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def _streams(
    ev: Evidence, log: PredictionLog, client: aioredis.Redis, model: str, count: int
) -> None:
    """The model's newest prediction entries (their assignment units) and shadow pairs."""
    since = await _since_newest(client, keys.prediction_stream_key(model), count)
    events = await log.read(model, since, count)
    if events:
        ev.logged_units[model] = dict(Counter(e.unit for _, e in events))
    since = await _since_newest(client, keys.shadow_stream_key(model), count)
    pairs = [p for _, p in await log.read_shadow(model, since, count)]
    if pairs:
        state = next((r for r in ev.rollouts if r.model == model), None)
        candidate = (state.candidate if state else None) or pairs[-1].candidate_version
        ev.shadows.append(shadow_facts(model, candidate, pairs))


def _compare(primary: Any, candidate: Any) -> tuple[bool, bool]:
    """(equal on every output both sides logged, both logged the same outputs)."""
    if isinstance(primary, dict) and isinstance(candidate, dict):
        shared = primary.keys() & candidate.keys()
        return bool(shared) and all(primary[k] == candidate[k] for k in shared), (
            primary.keys() == candidate.keys()
        )
    return primary == candidate, True


def shadow_facts(model: str, candidate: str, pairs: list[ShadowPair]) -> ShadowFacts:
    """The pairs of ``candidate``, reduced: errors, identical answers, latencies."""
    mine = [p for p in pairs if p.candidate_version == candidate]
    answered = [p for p in mine if not p.candidate_error and p.candidate_output is not None]
    compared = [_compare(p.primary_output, p.candidate_output) for p in answered]
    outputs = ""
    mismatched = [p for p, (_, same) in zip(answered, compared, strict=True) if not same]
    if mismatched:
        p = mismatched[0]
        outputs = f"primary: {_names(p.primary_output)}; candidate: {_names(p.candidate_output)}"
    return ShadowFacts(
        model=model,
        candidate=candidate,
        pairs=len(mine),
        errors=len(mine) - len(answered),
        identical=sum(equal for equal, _ in compared),
        primary_ms=tuple(p.primary_latency_ms for p in mine),
        candidate_ms=tuple(
            p.candidate_latency_ms for p in answered if p.candidate_latency_ms is not None
        ),
        mismatched=len(mismatched),
        outputs=outputs,
    )


def _names(output: Any) -> str:
    return ", ".join(sorted(output)) if isinstance(output, dict) else type(output).__name__


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


async def _views(ev: Evidence, client: aioredis.Redis, settings: Settings) -> None:
    for view in FeatureRegistry.from_settings(settings.features).views.values():
        if view.kind == "batch":
            at = _text(await client.hget(keys.view_pointer_key(view.name), "materialized_at"))
        else:
            at = _text(await client.get(keys.realtime_heartbeat_key(view.name)))
        age = ev.now - float(at) if at else None
        ev.views.append(ViewFacts(view.name, view.kind, view.max_staleness_s, age))


async def _probes(ev: Evidence, client: aioredis.Redis, settings: Settings) -> None:
    """Time ``probes`` feature reads (every view, one Lua call) and cache lookups (MGET)."""
    views = FeatureRegistry.from_settings(settings.features)
    store = FeatureStore(client, views, settings.features, registry=CollectorRegistry())
    entities = {entity: "decision-report-probe" for entity in views.entities}
    wanted = [f"{v.name}.{f.name}" for v in views.views.values() for f in v.features]
    cache_key = keys.prediction_key_from_digest("decision-report-probe", "0", bytes(16))
    for _ in range(settings.decisions.probes):
        t0 = time.perf_counter()
        await store.get_features([entities], wanted)
        t1 = time.perf_counter()
        await client.mget([cache_key])
        t2 = time.perf_counter()
        ev.feature_probe_ms.append((t1 - t0) * 1000.0)
        ev.cache_probe_ms.append((t2 - t1) * 1000.0)


def _registry_evidence(ev: Evidence, settings: Settings) -> None:
    try:
        registry = ModelRegistry(open_store(settings.serving))
        for model in ev.served_models():
            ev.parity.extend(parity_facts(v) for v in registry.list_versions(model))
    except Exception as exc:  # any store's failure (local, S3, BentoML): report it, go on
        ev.registry_ok = False
        ev.problems.append(f"the model registry could not be read: {exc}")


def parity_facts(mv: ModelVersion) -> ParityFacts:
    """A version's parity report: per format, passed and error as a share of tolerance."""
    if not mv.parity or not isinstance(mv.parity.get("formats"), dict):
        return ParityFacts(mv.name, mv.version, mv.format, None)
    formats = {}
    for fmt, result in mv.parity["formats"].items():
        tolerance = float(result.get("tolerance") or 0.0)
        error = float(result.get("max_scaled_err") or 0.0)
        formats[fmt] = (bool(result.get("passed")), error / tolerance if tolerance else 0.0)
    skipped = (mv.parity.get("tensorrt") or {}).get("skipped")
    return ParityFacts(mv.name, mv.version, mv.format, formats, skipped)
