"""Feature retrieval and cache lookups on a Redis Cluster beside a single Redis.

In one run, side by side and interleaved (rounds alternate the two backends, so machine
noise hits both alike): the feature store's read of the demo views (two batch views, one
real-time view) for 1 and 32 entities, and the prediction cache's lookup of 1 and 32 rows.
On the single Redis a feature read is one script call and a lookup one MGET; on the
cluster a read is one call per view and a lookup one MGET per slot, sent to the nodes at
once. Reports per side the median over rounds of each round's p50 and p99, and the
cluster / single ratio.

A three-master cluster is started on ``--cluster-port`` .. +2 (loopback, no persistence)
unless one already answers there; the single Redis must be running.

Writes benchmarks/results/redis_cluster/redis_cluster.json and redis_cluster.png.

    python benchmarks/redis_cluster.py --redis-url redis://127.0.0.1:6379/12 \
        --cluster-port 7000 [--rounds 5] [--iterations 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import redis
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, write_results  # noqa: E402
from benchmarks.redis_paths import WANTED, load_demo_views, pct  # noqa: E402
from flows.recipes.synthetic import MERCHANT_CATEGORIES  # noqa: E402
from services.settings import CacheSettings, FeatureSettings  # noqa: E402
from services.state.cache import PredictionCache  # noqa: E402
from services.state.features import FeatureRegistry  # noqa: E402
from services.state.realtime import Event, EventLog, RealtimeWorker  # noqa: E402
from services.state.redis_clients import connect, is_cluster  # noqa: E402

OUT = RESULTS / "redis_cluster"
PATHS = ["features_1", "features_32", "cache_lookup_1", "cache_lookup_32"]


def start_cluster(port: int) -> list[subprocess.Popen[bytes]]:
    """A three-master cluster on ``port`` .. ``port + 2``; none started if one answers."""
    ports = [port, port + 1, port + 2]
    try:
        if redis.Redis(port=port).cluster("info").get("cluster_state") == "ok":
            return []
    except redis.RedisError:
        pass
    root = Path(tempfile.mkdtemp(prefix="servekit-cluster-"))
    procs = [
        subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(p),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{p}.conf",
                "--dir",
                str(root),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        for p in ports
    ]
    for p in ports:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=p).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    subprocess.run(
        ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
        check=True, capture_output=True,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while any(redis.Redis(port=p).cluster("info").get("cluster_state") != "ok" for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not become ok in 30 s")
        time.sleep(0.1)
    return procs


async def prepare(r: Any) -> dict[str, Callable[[], Awaitable[Any]]]:
    """A flushed backend with the demo views (2,000 users, real-time state for 200), the
    cache holding 33 rows; the four timed calls."""
    await r.flushdb()
    store, _, _ = await load_demo_views(r)
    views = FeatureRegistry.from_settings(FeatureSettings())
    log = EventLog(r, FeatureSettings())
    now = time.time()
    for i in range(1000):
        user = f"u{i % 200:06d}"
        values = {"amount": float(i % 97)}
        event = Event(
            event_id=f"e{i}", timestamp=now - 300 + i * 0.1, entities={"user": user}, values=values
        )
        await log.append(event)
    worker = RealtimeWorker(r, views, FeatureSettings(), "bench")
    while (await worker.run_once(500)).read:
        pass
    cache = PredictionCache(r, CacheSettings(timeout_ms=5000))
    x1 = np.random.default_rng(0).random((1, 7), dtype=np.float32)
    x32 = np.random.default_rng(1).random((32, 7), dtype=np.float32)

    async def compute(rows_: np.ndarray) -> np.ndarray:
        return np.zeros((len(rows_), 2), dtype=np.float32)

    await cache.get_or_compute("fraud", "1-bench", x1, compute)
    await cache.get_or_compute("fraud", "1-bench", x32, compute)
    rng = random.Random(0)

    def rows(k: int) -> list[dict[str, str]]:
        return [
            {"user": f"u{rng.randrange(200):06d}", "merchant_category": rng.choice(MERCHANT_CATEGORIES)}
            for _ in range(k)
        ]  # fmt: skip

    return {
        "features_1": lambda: store.get_features(rows(1), WANTED),
        "features_32": lambda: store.get_features(rows(32), WANTED),
        "cache_lookup_1": lambda: cache.get_many("fraud", "1-bench", x1),
        "cache_lookup_32": lambda: cache.get_many("fraud", "1-bench", x32),
    }


async def time_round(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """(p50, p99) in ms of ``n`` sequential calls."""
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat) * 1000, pct(lat, 0.99)


async def measure(urls: dict[str, str], rounds: int, n: int, progress: Progress) -> dict[str, Any]:
    """Per backend and path: the rounds' (p50, p99), interleaved across backends."""
    clients = {name: connect(url) for name, url in urls.items()}
    calls = {name: await prepare(c) for name, c in clients.items()}
    assert is_cluster(clients["cluster"]) and not is_cluster(clients["single"])
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {
        name: {p: [] for p in PATHS} for name in urls
    }
    task = progress.add_task("rounds", total=rounds * len(urls) * len(PATHS))
    for _ in range(rounds):
        for path in PATHS:
            for name in urls:
                progress.update(task, description=f"{name}: {path}")
                await calls[name][path]()  # warm: connections, scripts
                runs[name][path].append(await time_round(calls[name][path], n))
                progress.advance(task)
    for c in clients.values():
        await c.flushdb()
        await c.aclose()
    return runs


def summarize(runs: dict[str, Any]) -> dict[str, Any]:
    """Median over rounds of p50 and p99 per backend and path, and the cluster ratios."""
    out: dict[str, Any] = {}
    for path in PATHS:
        row: dict[str, Any] = {}
        for name in ("single", "cluster"):
            row[f"{name}_p50_ms"] = round(statistics.median(r[0] for r in runs[name][path]), 4)
            row[f"{name}_p99_ms"] = round(statistics.median(r[1] for r in runs[name][path]), 4)
        row["p50_ratio"] = round(row["cluster_p50_ms"] / row["single_p50_ms"], 2)
        row["p99_ratio"] = round(row["cluster_p99_ms"] / row["single_p99_ms"], 2)
        out[path] = row
    return out


def report(console: Console, summary: dict[str, Any]) -> None:
    """The console table and the README's markdown rows."""
    cols = ("single_p50_ms", "cluster_p50_ms", "p50_ratio", "single_p99_ms", "cluster_p99_ms",
            "p99_ratio")  # fmt: skip
    t = Table(title="single Redis vs 3-master Redis Cluster (ms, median of rounds)")
    t.add_column("path")
    for col in cols:
        t.add_column(col)
    for path, row in summary.items():
        t.add_row(path, *(f"{row[c]:g}" for c in cols))
    console.print(t)
    print("\n| path | single p50 | cluster p50 | ratio | single p99 | cluster p99 | ratio |")
    print("|---|---|---|---|---|---|---|")
    for path, row in summary.items():
        print(f"| {path} | " + " | ".join(f"{row[c]:g}" for c in cols) + " |")


def plot(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(summary))
    for i, (name, color) in enumerate((("single", "tab:blue"), ("cluster", "tab:orange"))):
        p99 = [row[f"{name}_p99_ms"] for row in summary.values()]
        p50 = [row[f"{name}_p50_ms"] for row in summary.values()]
        ax.bar(x + (i - 0.5) * 0.38, p99, 0.38, color=color, alpha=0.45, label=f"{name} p99")
        ax.bar(x + (i - 0.5) * 0.38, p50, 0.38, color=color, label=f"{name} p50")
    ax.set_xticks(x, list(summary))
    ax.set(ylabel="ms", title="feature reads and cache lookups: single Redis vs cluster")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--cluster-port", type=int, default=7000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iterations", type=int, default=1000)
    args = ap.parse_args()
    console = Console()
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    procs = start_cluster(args.cluster_port)
    urls = {"single": args.redis_url, "cluster": f"redis+cluster://127.0.0.1:{args.cluster_port}"}
    try:
        with Progress(console=console) as progress:
            runs = asyncio.run(measure(urls, args.rounds, args.iterations, progress))
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
    summary = summarize(runs)
    report(console, summary)
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "summary": summary,
        "rounds": runs,
        "iterations": args.iterations,
        "loadavg_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
    }
    write_results("redis_cluster/redis_cluster", doc)
    plot(summary, OUT / "redis_cluster.png")


if __name__ == "__main__":
    main()
