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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import free_port, pct, portable_path, progress  # noqa: E402
from benchmarks.multimodel_report import plot, print_report  # noqa: E402
from benchmarks.multimodel_warm import warm_overhead  # noqa: E402
from flows.recipes.mlp import register_mlp  # noqa: E402
from services.registry.stores import ArtifactStore, LocalStore, S3Store  # noqa: E402
from services.registry.versions import ModelRegistry, ModelVersion, copy_tree  # noqa: E402
from services.runner.budget import heap_bytes  # noqa: E402
from services.runner.feeds import Feeds  # noqa: E402
from services.runner.pool import ModelPool  # noqa: E402
from services.settings import MultiModelSettings, Settings  # noqa: E402

D_IN = 16
console = Console()
logger = logging.getLogger("benchmarks.multimodel")


def generate(store: ArtifactStore, n: int, seed: int) -> list[ModelVersion]:
    """``n`` MLPs with hidden sizes log-uniform in [8, 32768] (~1 KB to ~2.5 MB)."""
    rng = np.random.default_rng(seed)
    hidden = np.exp(rng.uniform(np.log(8), np.log(32768), n)).astype(int)
    registry = ModelRegistry(store)
    out = []
    with progress(console) as bar:
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


@dataclass
class PhaseRecord:
    """What one traffic phase observed, request by request."""

    t_start: float
    base_heap: int
    hits: int = 0
    misses: int = 0
    errors: int = 0
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    cold_latency: list[float] = field(default_factory=list)
    warm_latency: list[float] = field(default_factory=list)
    # (seconds since start, booked bytes, resident bytes, allocator bytes in use)
    series: list[tuple[float, int, int, int]] = field(default_factory=list)
    peak_books: int = 0

    def request(self, hit: bool, seconds: float) -> None:
        """One request's latency, warm (resident model) or cold (loaded for it)."""
        if hit:
            self.hits += 1
            self.warm_latency.append(seconds)
        else:
            self.misses += 1
            self.cold_latency.append(seconds)

    def memory(self, pool: ModelPool) -> None:
        """The pool's books and the allocator's bytes in use, now."""
        used = pool.budget.used
        self.peak_books = max(self.peak_books, used)
        self.series.append(
            (
                time.perf_counter() - self.t_start,
                used,
                pool.budget.resident_total,
                heap_bytes() - self.base_heap,
            )
        )

    def summary(
        self, label: str, requests: int, pool: ModelPool, loads: list[float], budget: int
    ) -> dict[str, Any]:
        """The phase's figures (the memory series included, for the plot)."""
        return {
            "label": label,
            "requests": requests,
            "hit_ratio": self.hits / max(1, self.hits + self.misses),
            "errors": self.errors,
            "error_kinds": dict(self.kinds),
            "loads": pool.stats.loads.get("ok", 0),
            "evictions": dict(pool.stats.evictions),
            "load_p50_ms": pct(loads, 50) * 1000,
            "load_p99_ms": pct(loads, 99) * 1000,
            "cold_request_p50_ms": pct(self.cold_latency, 50) * 1000,
            "cold_request_p99_ms": pct(self.cold_latency, 99) * 1000,
            "warm_request_p50_ms": pct(self.warm_latency, 50) * 1000,
            "budget_bytes": budget,
            "peak_booked_bytes": self.peak_books,
            "over_budget_samples": sum(1 for s in self.series if s[1] > budget),
            "series": self.series,
        }


async def replay_one(pool: ModelPool, mv: ModelVersion, feeds: Feeds, record: PhaseRecord) -> None:
    """One request of the trace: timed, counted warm or cold, memory sampled after it."""
    hit = mv.key in pool.loaded()
    t0 = time.perf_counter()
    try:
        await pool.infer(mv, feeds, 1)
    except Exception as exc:  # counted and shown; the run goes on
        record.errors += 1
        record.kinds[type(exc).__name__] += 1
        logger.warning("%s: %s", mv.name, exc)
    record.request(hit, time.perf_counter() - t0)
    record.memory(pool)


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
    record = PhaseRecord(time.perf_counter(), base)
    pending = iter(trace)  # shared by the clients: each takes the next request

    with progress(console) as bar:
        task = bar.add_task(f"{label}: Zipf traffic", total=len(trace))

        async def client() -> None:
            for index in pending:
                await replay_one(pool, versions[int(index)], feeds, record)
                bar.advance(task)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    loads = list(pool.stats.load_seconds)
    await pool.close()
    return record.summary(label, len(trace), pool, loads, budget)


def parse_args() -> argparse.Namespace:
    """The command line."""
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
    return parser.parse_args()


def s3_phase(
    args: argparse.Namespace, local: LocalStore, versions: list[ModelVersion], budget: int
) -> dict[str, Any]:
    """The same models copied to S3 (moto's server, over HTTP), replayed with a new trace."""
    from moto.server import ThreadedMotoServer

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
        return asyncio.run(
            traffic_phase(
                "S3 (moto over HTTP)", s3_registry, s3_versions, s3_trace, budget, args.concurrency
            )
        )
    finally:
        server.stop()


def result_doc(
    args: argparse.Namespace,
    versions: list[ModelVersion],
    budget: int,
    phases: list[dict[str, Any]],
    warm: dict[str, Any],
    png: Path,
) -> dict[str, Any]:
    """The JSON written to ``multimodel.json`` (paths relative to the repository)."""
    config = {k: (portable_path(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    return {
        "config": config,
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


def main() -> None:
    args = parse_args()
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
    local_phase = traffic_phase(
        "local folder", ModelRegistry(local), versions, trace, budget, args.concurrency
    )
    phases = [asyncio.run(local_phase), s3_phase(args, local, versions, budget)]
    popular = versions[int(np.bincount(trace).argmax())]
    feeds = {"x": np.ones((1, D_IN), dtype=np.float32)}
    warm = asyncio.run(
        warm_overhead(
            ModelRegistry(local), popular, feeds, budget, args.warm_n, args.warm_rounds, console
        )
    )

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "multimodel.png"
    plot(phases, png)
    result = result_doc(args, versions, budget, phases, warm, png)
    (args.out / "multimodel.json").write_text(json.dumps(result, indent=2))
    print_report(console, args.models, budget, phases, warm)
    console.print(result["targets"])
    console.print(f"wrote {args.out / 'multimodel.json'} and {png}")


if __name__ == "__main__":
    main()
