"""Redis on the serving path: feature retrieval, cache lookups, and what caching buys.

In one run, side by side:
1. feature retrieval for 1 and 32 entities (two batch views + one real-time view, one
   round trip) against naive per-key reads (one HGET per feature, sequentially);
2. prediction-cache lookup overhead (one MGET) for 1 and 32 rows;
3. end-to-end /predict throughput at concurrency 32 with 0 %, 30 % and 90 % duplicate
   inputs (cache on), plus 0 % with the cache off, with the number of rows the runner
   actually inferred (from the gateway's own metrics).

Writes benchmarks/results/redis_paths.json and redis_paths.png.

    python benchmarks/redis_paths.py [--redis-url redis://127.0.0.1:6379/12] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import redis.asyncio as aioredis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, Server, closed_loop, scrape_batches, summarize, write_results  # noqa: E402
from flows.recipes.demo_models import ensure_demo_models  # noqa: E402
from flows.recipes.synthetic import MERCHANT_CATEGORIES, TransactionGenerator  # noqa: E402
from services.registry.stores import LocalStore  # noqa: E402
from services.registry.versions import ModelRegistry  # noqa: E402
from services.settings import CacheSettings, FeatureSettings  # noqa: E402
from services.state.cache import PredictionCache  # noqa: E402
from services.state.features import FeatureRegistry, FeatureStore  # noqa: E402
from services.state.keys import feature_key  # noqa: E402

WANTED = [
    "user_stats.avg_amount_30d",
    "user_stats.txn_count_30d",
    "merchant_risk.risk_score",
    "user_activity.last5_amount_mean",
    "user_activity.seconds_since_last_txn",
    "user_activity.txn_count_10m",
]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


async def time_calls(fn: Any, n: int) -> dict[str, float]:
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        lat.append(time.perf_counter() - t0)
    return {"p50_ms": round(statistics.median(lat) * 1000, 4), "p99_ms": round(pct(lat, 0.99), 4)}


async def load_demo_views(r: aioredis.Redis) -> tuple[FeatureStore, str, str]:
    """The demo batch views, loaded for 2,000 users; the store and both views' versions."""
    views = FeatureRegistry.from_settings(FeatureSettings())
    store = FeatureStore(r, views, FeatureSettings())
    users = {
        f"u{i:06d}": {"avg_amount_30d": 50.0 + i, "txn_count_30d": i % 40} for i in range(2000)
    }
    await store.load_batch_view("user_stats", users, time.time())
    await store.load_batch_view(
        "merchant_risk", {c: {"risk_score": 0.03} for c in MERCHANT_CATEGORIES}, time.time()
    )
    version_user = await store.current_version("user_stats")
    version_merchant = await store.current_version("merchant_risk")
    assert version_user is not None and version_merchant is not None
    return store, version_user, version_merchant


async def feature_timings(r: aioredis.Redis, n: int) -> dict[str, Any]:
    """servekit's one-round-trip feature read against sequential per-feature reads."""
    store, version_user, version_merchant = await load_demo_views(r)
    rng = random.Random(0)
    out: dict[str, Any] = {}

    def rows(k: int) -> list[dict[str, str]]:
        return [
            {
                "user": f"u{rng.randrange(2000):06d}",
                "merchant_category": rng.choice(MERCHANT_CATEGORIES),
            }
            for _ in range(k)
        ]

    for k in (1, 32):

        async def servekit(k: int = k) -> None:
            await store.get_features(rows(k), WANTED)

        async def naive(k: int = k) -> None:
            # One read per feature per entity, in sequence: what a store without
            # pipelining does (batch views only: 3 HGETs per row).
            for row in rows(k):
                await r.hget(feature_key("user_stats", version_user, row["user"]), "avg_amount_30d")
                await r.hget(feature_key("user_stats", version_user, row["user"]), "txn_count_30d")
                await r.hget(
                    feature_key("merchant_risk", version_merchant, row["merchant_category"]),
                    "risk_score",
                )

        out[f"features_servekit_{k}"] = await time_calls(servekit, n)
        out[f"features_naive_{k}"] = await time_calls(naive, max(200, n // (4 * k)))
    return out


async def cache_timings(r: aioredis.Redis, n: int) -> dict[str, Any]:
    """Prediction-cache lookups (one MGET) of 1 and 32 rows, and the whole hit path."""
    cache = PredictionCache(r, CacheSettings())
    x1 = np.random.default_rng(0).random((1, 7), dtype=np.float32)
    x32 = np.random.default_rng(1).random((32, 7), dtype=np.float32)

    async def compute(rows_: np.ndarray) -> np.ndarray:
        return np.zeros((len(rows_), 2), dtype=np.float32)

    await cache.get_or_compute("fraud", "1-bench", x1, compute)
    await cache.get_or_compute("fraud", "1-bench", x32, compute)
    return {
        "cache_lookup_1": await time_calls(lambda: cache.get_many("fraud", "1-bench", x1), n),
        "cache_lookup_32": await time_calls(lambda: cache.get_many("fraud", "1-bench", x32), n),
        "cache_hit_path_1": await time_calls(
            lambda: cache.get_or_compute("fraud", "1-bench", x1, compute), n
        ),
    }


async def micro(url: str, n: int) -> dict[str, Any]:
    """The Redis micro-benchmarks on a flushed database (flushed again after)."""
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    out = await feature_timings(r, n)
    out.update(await cache_timings(r, n))
    await r.flushdb()
    await r.aclose()
    return out


def duplicate_bodies(share: float, n: int, seed: int) -> list[bytes]:
    """``n`` request bodies of which ``share`` repeat an earlier input."""
    gen = TransactionGenerator(seed=seed)
    fresh = gen.records(n)
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    k = 0
    for _ in range(n):
        if out and rng.random() < share:
            out.append(out[rng.randrange(max(0, len(out) - 2000), len(out))])
        else:
            out.append(fresh[k])
            k += 1
    return [orjson.dumps({"model": "fraud", "inputs": [rec]}) for rec in out]


WORDS = (
    "card payment declined at the airport lounge after a late flight from lisbon again today "
    "customer reports a duplicate charge on the grocery order and asks for a quick refund"
).split()


def text_bodies(share: float, n: int, seed: int) -> list[bytes]:
    """``n`` text-embed bodies (~16 tokens each) of which ``share`` repeat an earlier text."""
    rng = random.Random(seed)
    out: list[str] = []
    for i in range(n):
        if out and rng.random() < share:
            out.append(out[rng.randrange(max(0, len(out) - 2000), len(out))])
        else:
            out.append(f"{i} " + " ".join(rng.choice(WORDS) for _ in range(12)))
    return [orjson.dumps({"model": "text-embed", "inputs": [{"text": t}]}) for t in out]


Side = tuple[str, str, float, bool, int]
"""One end-to-end side: model, label, duplicate share, cache on, concurrency."""


def parse_args() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument(
        "--text",
        action="store_true",
        help="also run the text-embed sides (needs the convert extra)",
    )
    ap.add_argument("--text-concurrency", type=int, default=16)
    return ap.parse_args()


def end_to_end_sides(text: bool, text_concurrency: int) -> list[Side]:
    """The fraud sides at concurrency 32, and the text-embed sides when asked for."""
    shares = [("0 % duplicates, cache off", 0.0, False), ("0 % duplicates", 0.0, True),
              ("30 % duplicates", 0.3, True), ("90 % duplicates", 0.9, True)]  # fmt: skip
    sides = [("fraud", label, share, on, 32) for label, share, on in shares]
    if text:
        sides += [("text-embed", label, share, on, text_concurrency) for label, share, on in shares]
    return sides


def run_side(store: Path, side: Side, redis_url: str, seconds: float) -> dict[str, Any]:
    """One gateway for ``side`` on a flushed database, closed-loop /predict for ``seconds``."""
    model, label, share, cache_on, conc = side
    asyncio.run(_flush(redis_url))
    env = {
        "SERVEKIT_MODEL_STORE": str(store),
        "SERVEKIT_REDIS_URL": redis_url,
        "SERVEKIT_CACHE_ENABLED": "true" if cache_on else "false",
        "SERVEKIT_MODELS": f'["{model}"]',
        "SERVEKIT_ORT_THREADS": "2" if model == "text-embed" else "1",
    }
    server = Server(env, RESULTS / "server-redis-bench.log")
    try:
        bodies = (
            duplicate_bodies(share, 60_000, 5)
            if model == "fraud"
            else text_bodies(share, 20_000, 5)
        )
        b0, r0 = scrape_batches(server.url)
        lat, ok, errors, secs = asyncio.run(
            closed_loop(f"{server.url}/predict", bodies, conc, seconds, warmup_s=0.0)
        )
        b1, r1 = scrape_batches(server.url)
    finally:
        server.stop()
    res = summarize(f"{model}: {label}", conc, lat, ok, errors, secs)
    inferred = r1 - r0
    return {
        **res.__dict__,
        "rows_inferred": inferred,
        "inferred_per_request": round(inferred / max(ok, 1), 3),
    }


def print_tables(console: Console, micro_res: dict[str, Any], e2e: list[dict[str, Any]]) -> None:
    """The micro-benchmarks and the end-to-end sides as console tables."""
    t = Table(title="feature retrieval and cache lookup (ms)")
    for col in ("path", "p50", "p99"):
        t.add_column(col)
    for key, v in micro_res.items():
        t.add_row(key, f"{v['p50_ms']:.3f}", f"{v['p99_ms']:.3f}")
    console.print(t)
    t2 = Table(title="/predict, closed loop")
    for col in ("inputs", "conc.", "req/s", "p50 ms", "p99 ms", "errors",
                "rows inferred per request"):  # fmt: skip
        t2.add_column(col)
    for e in e2e:
        t2.add_row(e["label"], str(e["concurrency"]), f"{e['throughput']:,.0f}", f"{e['p50_ms']:.2f}", f"{e['p99_ms']:.2f}",
                   str(sum(e["errors"].values())), f"{e['inferred_per_request']:.3f}")  # fmt: skip
    console.print(t2)


def print_markdown(micro_res: dict[str, Any], e2e: list[dict[str, Any]]) -> None:
    """The README tables."""
    print("\n| path | p50 ms | p99 ms |\n|---|---|---|")
    for key, v in micro_res.items():
        print(f"| {key} | {v['p50_ms']:.3f} | {v['p99_ms']:.3f} |")
    print(
        "\n| model: inputs | concurrency | req/s | p50 ms | p99 ms | errors | rows inferred / request |\n|---|---|---|---|---|---|---|"
    )
    for e in e2e:
        print(
            f"| {e['label']} | {e['concurrency']} | {e['throughput']:,.0f} | {e['p50_ms']:.2f} | {e['p99_ms']:.2f} | {sum(e['errors'].values())} | {e['inferred_per_request']:.3f} |"
        )


def main() -> None:
    args = parse_args()
    console = Console()
    store = Path(tempfile.mkdtemp(prefix="servekit-bench-"))
    ensure_demo_models(ModelRegistry(LocalStore(store)))
    if args.text:
        from flows.recipes.text_model import ensure_text_model

        ensure_text_model(ModelRegistry(LocalStore(store)))
    sides = end_to_end_sides(args.text, args.text_concurrency)
    e2e: list[dict[str, Any]] = []
    with Progress(console=console) as progress:
        task = progress.add_task("micro-benchmarks", total=1 + len(sides))
        micro_res = asyncio.run(micro(args.redis_url, args.iterations))
        progress.advance(task)
        for side in sides:
            progress.update(task, description=f"{side[0]}: {side[1]}")
            e2e.append(run_side(store, side, args.redis_url, args.seconds))
            progress.advance(task)
    (RESULTS / "server-redis-bench.log").unlink(missing_ok=True)
    print_tables(console, micro_res, e2e)
    write_results("redis_paths", {"micro": micro_res, "e2e": e2e, "seconds": args.seconds})
    plot(micro_res, e2e, RESULTS / "redis_paths.png")
    print_markdown(micro_res, e2e)


async def _flush(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    await r.flushdb()
    await r.aclose()


def plot(micro_res: dict[str, Any], e2e: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    keys = list(micro_res)
    ax1.barh(keys, [micro_res[k]["p99_ms"] for k in keys], color="tab:orange", label="p99")
    ax1.barh(keys, [micro_res[k]["p50_ms"] for k in keys], color="tab:blue", label="p50")
    ax1.set(xscale="log", xlabel="ms", title="Redis paths")
    ax1.legend()
    labels = [e["label"] for e in e2e]
    ax2.bar(labels, [e["throughput"] for e in e2e], color="tab:green")
    for i, e in enumerate(e2e):
        ax2.text(
            i,
            e["throughput"],
            f"{e['inferred_per_request']:.2f} inf/req",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax2.set(ylabel="req/s at c=32", title="/predict throughput vs duplicate share")
    ax2.tick_params(axis="x", labelrotation=60, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
