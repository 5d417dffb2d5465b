"""Multi-model pool benchmark: 200 generated models, Zipf traffic, a memory budget.

Measures, in one run:

- resident hit ratio and cold-load latency (fetch + session) from a local folder and
  from S3 over HTTP (moto's ThreadedMotoServer), with the budget well under the models'
  total so that LRU eviction works throughout;
- memory held against the budget over time (the pool's books and the allocator's
  in-use bytes), plotted;
- warm per-request overhead of the shared pool over the dedicated single-model runner
  (the same model preloaded and pinned), side by side, in process: the shared pool as
  shipped (tiny models inline under the watchdog) and with every call on a worker thread
  (``inline_deadline_ms=0``: the thread hop that inline execution saves).

Run from the repository root: ``python benchmarks/multimodel.py`` (``--help`` for knobs).
Writes ``benchmarks/results/multimodel.json`` and ``multimodel.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flows.recipes.mlp import register_mlp  # noqa: E402
from services.registry.stores import ArtifactStore, LocalStore, S3Store  # noqa: E402
from services.registry.versions import ModelRegistry, ModelVersion, copy_tree  # noqa: E402
from services.runner.budget import heap_bytes  # noqa: E402
from services.runner.pool import ModelPool  # noqa: E402
from services.settings import MultiModelSettings, Settings  # noqa: E402

D_IN = 16
console = Console()
logger = logging.getLogger("benchmarks.multimodel")


def progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def generate(store: ArtifactStore, n: int, seed: int) -> list[ModelVersion]:
    """``n`` MLPs with hidden sizes log-uniform in [8, 32768] (~1 KB to ~2.5 MB)."""
    rng = np.random.default_rng(seed)
    hidden = np.exp(rng.uniform(np.log(8), np.log(32768), n)).astype(int)
    registry = ModelRegistry(store)
    out = []
    with progress() as bar:
        task = bar.add_task("generating models", total=n)
        for i, h in enumerate(hidden):
            out.append(register_mlp(registry, f"m{i:03d}", D_IN, int(h), seed=i))
            bar.advance(task)
    return out


def zipf_trace(n_models: int, n_requests: int, s: float, seed: int) -> np.ndarray:
    """Model indices of ``n_requests`` requests, Zipf(s) over a random popularity order."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, n_models + 1) ** s
    order = rng.permutation(n_models)  # popularity does not follow size
    return order[rng.choice(n_models, size=n_requests, p=weights / weights.sum())]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


async def traffic_phase(
    label: str,
    registry: ModelRegistry,
    versions: list[ModelVersion],
    trace: np.ndarray,
    budget: int,
    concurrency: int,
) -> dict[str, Any]:
    """Replay ``trace`` with ``concurrency`` closed-loop clients on a budgeted pool."""
    settings = Settings(multimodel=MultiModelSettings(memory_budget_bytes=budget))
    pool = ModelPool(registry, settings)
    feeds = {"x": np.ones((1, D_IN), dtype=np.float32)}
    base = heap_bytes()
    t_start = time.perf_counter()
    series: list[tuple[float, int, int, int]] = []
    hits = misses = errors = 0
    kinds: collections.Counter[str] = collections.Counter()
    cold_latency: list[float] = []
    warm_latency: list[float] = []
    peak_books = 0
    cursor = 0

    with progress() as bar:
        task = bar.add_task(f"{label}: Zipf traffic", total=len(trace))

        async def client() -> None:
            nonlocal cursor, hits, misses, errors, peak_books
            while cursor < len(trace):
                mv = versions[int(trace[cursor])]
                cursor += 1
                hit = mv.key in pool.loaded()
                t0 = time.perf_counter()
                try:
                    await pool.infer(mv, feeds, 1)
                except Exception as exc:  # counted and shown; the run goes on
                    errors += 1
                    kinds[type(exc).__name__] += 1
                    logger.warning("%s: %s", mv.name, exc)
                dt = time.perf_counter() - t0
                if hit:
                    hits += 1
                    warm_latency.append(dt)
                else:
                    misses += 1
                    cold_latency.append(dt)
                used = pool.budget.used
                peak_books = max(peak_books, used)
                series.append(
                    (
                        time.perf_counter() - t_start,
                        used,
                        pool.budget.resident_total,
                        heap_bytes() - base,
                    )
                )
                bar.advance(task)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    loads = list(pool.stats.load_seconds)
    await pool.close()
    return {
        "label": label,
        "requests": len(trace),
        "hit_ratio": hits / max(1, hits + misses),
        "errors": errors,
        "error_kinds": dict(kinds),
        "loads": pool.stats.loads.get("ok", 0),
        "evictions": dict(pool.stats.evictions),
        "load_p50_ms": pct(loads, 50) * 1000,
        "load_p99_ms": pct(loads, 99) * 1000,
        "cold_request_p50_ms": pct(cold_latency, 50) * 1000,
        "cold_request_p99_ms": pct(cold_latency, 99) * 1000,
        "warm_request_p50_ms": pct(warm_latency, 50) * 1000,
        "budget_bytes": budget,
        "peak_booked_bytes": peak_books,
        "over_budget_samples": sum(1 for s in series if s[1] > budget),
        "series": series,
    }


async def warm_overhead(
    registry: ModelRegistry, mv: ModelVersion, budget: int, n: int, rounds: int
) -> dict[str, Any]:
    """Per-request latency of one warm model: dedicated (pinned) vs shared pool, as shipped
    and with worker threads only. Rounds interleave the sides; overheads are the median of
    the per-round ratios."""
    feeds = {"x": np.ones((1, D_IN), dtype=np.float32)}
    dedicated = ModelPool(registry, Settings())
    dedicated.preload([mv.name])
    shared = ModelPool(
        registry, Settings(multimodel=MultiModelSettings(memory_budget_bytes=budget))
    )
    await shared.get(mv)
    threads = ModelPool(
        registry,
        Settings(multimodel=MultiModelSettings(memory_budget_bytes=budget, inline_deadline_ms=0)),
    )
    await threads.get(mv)
    pools = {"dedicated": dedicated, "shared": shared, "shared_threads": threads}
    seq: dict[str, list[float]] = {k: [] for k in pools}
    round_means: dict[str, list[float]] = {k: [] for k in pools}
    round_rates: dict[str, list[float]] = {k: [] for k in pools}
    conc: dict[str, list[float]] = {k: [] for k in pools}

    async def one(pool: ModelPool, out: list[float]) -> None:
        t0 = time.perf_counter()
        await pool.infer(mv, feeds, 1)
        out.append(time.perf_counter() - t0)

    async def clients(pool: ModelPool, out: list[float], k: int) -> None:
        for _ in range(k):  # one closed-loop client of 32
            await one(pool, out)

    with progress() as bar:
        task = bar.add_task("warm overhead (dedicated vs shared)", total=rounds * 2 * len(pools))
        names = list(pools)
        for r in range(rounds):  # interleaved, in turn first, so drift hits every side
            for name in names[r % len(names) :] + names[: r % len(names)]:
                pool = pools[name]
                for _ in range(100):  # warm the lane's timings
                    await pool.infer(mv, feeds, 1)
                this: list[float] = []
                for _ in range(n):
                    await one(pool, this)
                seq[name] += this
                round_means[name].append(float(np.mean(this)))
                bar.advance(task)
                t0 = time.perf_counter()
                await asyncio.gather(*(clients(pool, conc[name], n // 32) for _ in range(32)))
                wall = time.perf_counter() - t0
                conc[name].append(-wall)  # marker: wall time of a run
                round_rates[name].append((n // 32 * 32) / wall)
                bar.advance(task)
    for pool in pools.values():
        await pool.close()
    out: dict[str, Any] = {"model": mv.name, "artifact_bytes": mv.size_bytes}
    for name in pools:
        walls = [-v for v in conc[name] if v < 0]
        lat = [v for v in conc[name] if v >= 0]
        out[name] = {
            "seq_mean_us": float(np.mean(seq[name])) * 1e6,
            "seq_p50_us": pct(seq[name], 50) * 1e6,
            "seq_p99_us": pct(seq[name], 99) * 1e6,
            "burst_p50_us": pct(lat, 50) * 1e6,
            "burst_rows_per_s": (n // 32 * 32) * len(walls) / sum(walls),
        }

    def median_ratio(side: str, of: dict[str, list[float]]) -> float:
        return float(np.median(np.array(of[side]) / np.array(of["dedicated"])))

    out["seq_mean_overhead"] = median_ratio("shared", round_means) - 1
    out["seq_mean_overhead_threads"] = median_ratio("shared_threads", round_means) - 1
    out["burst_throughput_overhead"] = 1 / median_ratio("shared", round_rates) - 1
    out["burst_throughput_overhead_threads"] = 1 / median_ratio("shared_threads", round_rates) - 1
    out["inline_stops"] = shared.batcher.stats.inline_stops
    return out


def plot(phases: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(phases), 1, figsize=(10, 3.6 * len(phases)), squeeze=False)
    for ax, ph in zip(axes[:, 0], phases, strict=True):
        t = [s[0] for s in ph["series"]]
        mib = 1 / 2**20
        ax.plot(t, [s[1] * mib for s in ph["series"]], label="booked (resident + reserved)")
        ax.plot(t, [s[2] * mib for s in ph["series"]], label="resident (measured)", alpha=0.8)
        ax.plot(
            t, [s[3] * mib for s in ph["series"]], label="allocator in use, whole process",
            alpha=0.5, linewidth=0.8,
        )  # fmt: skip
        ax.axhline(ph["budget_bytes"] * mib, color="red", linestyle="--", label="budget")
        ax.set_title(f"{ph['label']}: memory held against the budget")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MiB")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--s3-requests", type=int, default=2000)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--budget-fraction", type=float, default=0.25)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--warm-n", type=int, default=2000)
    parser.add_argument("--warm-rounds", type=int, default=9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    logger.setLevel(logging.WARNING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(var, value)

    tmp = Path(tempfile.mkdtemp(prefix="servekit-mm-"))
    local = LocalStore(tmp / "store")
    versions = generate(local, args.models, args.seed)
    # Resident bytes of an ORT session built from bytes: weights + the kept artifact.
    expected_total = sum(2 * v.size_bytes for v in versions)
    budget = int(expected_total * args.budget_fraction)
    trace = zipf_trace(args.models, args.requests, args.zipf, args.seed)
    phases = [
        asyncio.run(
            traffic_phase(
                "local folder", ModelRegistry(local), versions, trace, budget, args.concurrency
            )
        )
    ]

    from moto.server import ThreadedMotoServer

    from benchmarks.common import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        import boto3

        bucket = f"models-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        s3 = S3Store(f"s3://{bucket}/servekit", endpoint_url=endpoint)
        with console.status("copying the models to S3 (moto)"):
            copy_tree(local, s3)
        s3_registry = ModelRegistry(s3)
        s3_versions = [s3_registry.get(v.name, v.version) for v in versions]
        s3_trace = zipf_trace(args.models, args.s3_requests, args.zipf, args.seed + 1)
        phases.append(
            asyncio.run(
                traffic_phase(
                    "S3 (moto over HTTP)",
                    s3_registry,
                    s3_versions,
                    s3_trace,
                    budget,
                    args.concurrency,
                )
            )
        )
    finally:
        server.stop()

    popular = versions[int(np.bincount(trace).argmax())]
    warm = asyncio.run(
        warm_overhead(ModelRegistry(local), popular, budget, args.warm_n, args.warm_rounds)
    )

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "multimodel.png"
    plot(phases, png)
    result = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "models_total_artifact_bytes": sum(v.size_bytes for v in versions),
        "budget_bytes": budget,
        "phases": [{k: v for k, v in ph.items() if k != "series"} for ph in phases],
        "warm": warm,
        "targets": {
            "cold_load_p99_local_ms<=200": phases[0]["load_p99_ms"] <= 200,
            "warm_overhead<=10%": warm["seq_mean_overhead"] <= 0.10,
            "warm_burst_overhead<=10%": warm["burst_throughput_overhead"] <= 0.10,
            "never_over_budget": all(ph["over_budget_samples"] == 0 for ph in phases),
        },
        "plot": png.name,
    }
    (args.out / "multimodel.json").write_text(json.dumps(result, indent=2))

    table = Table(title=f"multi-model pool: {args.models} models, budget {budget / 2**20:.1f} MiB")
    for col in ("store", "hit ratio", "loads", "evictions", "load p50/p99 ms",
                "cold req p50/p99 ms", "warm req p50 ms", "peak booked / budget", "errors"):  # fmt: skip
        table.add_column(col, justify="right")
    for ph in phases:
        table.add_row(
            ph["label"],
            f"{ph['hit_ratio']:.3f}",
            str(ph["loads"]),
            str(sum(ph["evictions"].values())),
            f"{ph['load_p50_ms']:.1f} / {ph['load_p99_ms']:.1f}",
            f"{ph['cold_request_p50_ms']:.1f} / {ph['cold_request_p99_ms']:.1f}",
            f"{ph['warm_request_p50_ms']:.3f}",
            f"{ph['peak_booked_bytes'] / budget:.3f}",
            str(ph["errors"]),
        )
    console.print(table)
    wt = Table(title=f"warm per-request cost, model {warm['model']} ({warm['artifact_bytes']} B)")
    for col in ("runner", "seq mean µs", "seq p50 µs", "seq p99 µs", "burst rows/s"):
        wt.add_column(col, justify="right")
    for name in ("dedicated", "shared", "shared_threads"):
        w = warm[name]
        wt.add_row(
            name,
            f"{w['seq_mean_us']:.1f}",
            f"{w['seq_p50_us']:.1f}",
            f"{w['seq_p99_us']:.1f}",
            f"{w['burst_rows_per_s']:.0f}",
        )
    console.print(wt)
    console.print(
        f"warm overhead over dedicated (median of rounds), shared: sequential "
        f"{warm['seq_mean_overhead']:+.1%}, burst {warm['burst_throughput_overhead']:+.1%}; "
        f"worker threads only: sequential {warm['seq_mean_overhead_threads']:+.1%}, burst "
        f"{warm['burst_throughput_overhead_threads']:+.1%}"
    )
    console.print(result["targets"])
    console.print(f"wrote {args.out / 'multimodel.json'} and {png}")


if __name__ == "__main__":
    main()
