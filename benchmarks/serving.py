"""Serving benchmark for the fraud model through the gateway's /predict.

Every request takes the production path: validation, the feature-store read (Redis), the
prediction-cache lookup and write (Redis; inputs are unique, so it never hits), the model.

In one run, side by side: servekit colocated with adaptive batching, colocated with
batching off, the split shape (gateway -> ModelRunner via bentoml.depends), and raw ONNX
Runtime in-process at batch 1 and 32 (the compute floor). Closed-loop aiohttp clients at
concurrency 1, 8, 32, 64 for a fixed duration each. Reports throughput, p50, p99, errors,
server CPU per request and the mean batch the runner formed; writes
benchmarks/results/serving.json and serving.png and prints the table.

    python benchmarks/serving.py [--seconds 5] [--concurrency 1 8 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    RESULTS,
    LoadResult,
    Server,
    closed_loop,
    scrape_batches,
    summarize,
    write_results,
)  # noqa: E402
from services.demo_models import ensure_demo_models, vectors  # noqa: E402
from services.registry import ModelRegistry  # noqa: E402
from services.stores import LocalStore  # noqa: E402
from services.synthetic import TransactionGenerator  # noqa: E402

LEAN = {
    "SERVEKIT_CACHE_ENABLED": "false",
    "SERVEKIT_FEATURES_ENABLED": "false",
    "SERVEKIT_ROLLOUT_ENABLED": "false",
}
SHAPES = {
    # Everything on: feature-store read, prediction cache, rollout routing and logging.
    "colocated, full path": {},
    # The serving path alone (no Redis on the request path): what issue 2 specified.
    "colocated, lean": LEAN,
    "colocated, lean, no batching": {**LEAN, "SERVEKIT_BATCH_ENABLED": "false"},
    "split (depends), lean": {**LEAN, "SERVEKIT_SHAPE": "split"},
    # The same model warm in the shared multi-model pool (not pinned, under a memory
    # budget: its own lane, inline under the watchdog): the long-tail shape against the
    # dedicated runner above.
    "multi-model pool, lean": {
        **LEAN,
        "SERVEKIT_MODELS": "[]",
        "SERVEKIT_MULTIMODEL_MEMORY_BUDGET_BYTES": str(1 << 30),
    },
}


def ort_floor(registry: ModelRegistry, batch: int, seconds: float) -> LoadResult:
    """Raw ONNX Runtime, one thread, in-process: rows per second at ``batch``."""
    import onnxruntime as ort

    mv = registry.get("fraud")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(registry.load_artifact(mv), sess_options=opts)
    x = vectors(TransactionGenerator(3).records(batch), {}, {})
    lat = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        sess.run(None, {"features": x})
        lat.append(time.perf_counter() - t0)
    total = sum(lat)
    res = summarize(f"ONNX Runtime in-process, batch {batch}", batch, lat, len(lat), {}, total)
    res.throughput = len(lat) * batch / total  # rows/s
    res.extra["unit"] = "rows/s"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = ap.parse_args()
    console = Console()

    store = Path(tempfile.mkdtemp(prefix="servekit-bench-"))
    registry = ModelRegistry(LocalStore(store))
    ensure_demo_models(registry)
    gen = TransactionGenerator(seed=11)
    # Unique inputs (0 % duplicates): the cache never helps, every request pays its lookup.
    bodies = [orjson.dumps({"model": "fraud", "inputs": [r]}) for r in gen.records(80_000)]

    results: list[LoadResult] = []
    steps = len(args.shapes) * len(args.concurrency) + 2
    with Progress(console=console) as progress:
        task = progress.add_task("benchmark", total=steps)
        for batch in (1, 32):
            progress.update(task, description=f"ONNX Runtime floor, batch {batch}")
            results.append(ort_floor(registry, batch, min(args.seconds, 3.0)))
            progress.advance(task)
        for shape in args.shapes:
            progress.update(task, description=f"starting {shape}")
            log = RESULTS / f"server-{shape.split()[0].strip(',')}-{len(results)}.log"
            env = {
                "SERVEKIT_MODEL_STORE": str(store),
                "SERVEKIT_REDIS_URL": args.redis_url,
                **SHAPES[shape],
            }
            server = Server(env, log)
            try:
                for c in args.concurrency:
                    progress.update(task, description=f"{shape}, concurrency {c}")
                    cpu0, (b0, r0) = server.cpu_seconds(), scrape_batches(server.url)
                    lat, ok, errors, secs = asyncio.run(
                        closed_loop(f"{server.url}/predict", bodies, c, args.seconds)
                    )
                    cpu1, (b1, r1) = server.cpu_seconds(), scrape_batches(server.url)
                    res = summarize(shape, c, lat, ok, errors, secs)
                    res.server_cpu_ms_per_req = round((cpu1 - cpu0) * 1000 / max(ok, 1), 3)
                    if b1 > b0:
                        res.mean_batch_rows = round((r1 - r0) / (b1 - b0), 2)
                    results.append(res)
                    progress.advance(task)
            finally:
                server.stop()
                log.unlink(missing_ok=True)

    table = Table(title="fraud model via /predict (1 record per request)")
    for col in (
        "side",
        "conc.",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "server CPU ms/req",
        "mean batch",
    ):
        table.add_column(col)
    for r in results:
        unit = r.extra.get("unit")
        table.add_row(
            r.label,
            str(r.concurrency) if not unit else "-",
            f"{r.throughput:,.0f}" + (" rows/s" if unit else ""),
            f"{r.p50_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(sum(r.errors.values())) if r.errors else "0",
            f"{r.server_cpu_ms_per_req:.3f}" if r.server_cpu_ms_per_req is not None else "-",
            f"{r.mean_batch_rows:.1f}" if r.mean_batch_rows is not None else "-",
        )
    console.print(table)
    path = write_results(
        "serving",
        {"machine": {"cpus": os.cpu_count()}, "seconds_per_step": args.seconds, "results": results},
    )
    plot(results, RESULTS / "serving.png")
    console.print(f"wrote {path} and {RESULTS / 'serving.png'}")
    print_markdown(results)


def print_markdown(results: list[LoadResult]) -> None:
    """The README table."""
    print(
        "\n| side | concurrency | req/s | p50 ms | p99 ms | errors | server CPU ms/req | mean batch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        unit = r.extra.get("unit")
        print(
            f"| {r.label} | {'-' if unit else r.concurrency} | {r.throughput:,.0f}{' rows/s' if unit else ''} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {sum(r.errors.values())} "
            f"| {r.server_cpu_ms_per_req if r.server_cpu_ms_per_req is not None else '-'} "
            f"| {r.mean_batch_rows if r.mean_batch_rows is not None else '-'} |"
        )


def plot(results: list[LoadResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for label in dict.fromkeys(r.label for r in results if not r.extra.get("unit")):
        rs = [r for r in results if r.label == label]
        xs = [r.concurrency for r in rs]
        ax1.plot(xs, [r.throughput for r in rs], marker="o", label=label)
        ax2.plot(xs, [r.p99_ms for r in rs], marker="o", label=label)
    ax1.set(xscale="log", xlabel="concurrency", ylabel="requests/s", title="throughput")
    ax2.set(xscale="log", yscale="log", xlabel="concurrency", ylabel="p99 ms", title="p99 latency")
    for ax in (ax1, ax2):
        ax.set_xticks([1, 8, 32, 64], labels=["1", "8", "32", "64"])
        ax.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
