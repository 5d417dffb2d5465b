"""Serving benchmark for the fraud model through the gateway's /predict.

Every request takes the production path: validation, the feature-store read (Redis), the
prediction-cache lookup and write (Redis; inputs are unique, so it never hits), the model.

In one run, side by side: servekit colocated with adaptive batching, colocated with
batching off, the split shape (gateway -> ModelRunner via bentoml.depends), and raw ONNX
Runtime in-process at batch 1 and 32 (the compute floor). Closed-loop aiohttp clients at
concurrency 1, 8, 32, 64. All servers run at once and take turns: each concurrency is
measured in ``--rounds`` rounds, every side once per round in a rotating order, so the
machine's drift falls on every side alike. Reports throughput (median of the
rounds), p50 and p99 (over all rounds), errors, server CPU per request, the mean batch the
runner formed and each side's throughput against "colocated, lean" (median of the
per-round ratios); writes benchmarks/results/serving.json and serving.png and prints the
table.

    python benchmarks/serving.py [--seconds 5] [--rounds 5] [--concurrency 1 8 32 64]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
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
from flows.recipes.demo_models import ensure_demo_models, vectors  # noqa: E402
from flows.recipes.synthetic import TransactionGenerator  # noqa: E402
from services.registry.stores import LocalStore  # noqa: E402
from services.registry.versions import ModelRegistry  # noqa: E402

LEAN = {
    "SERVEKIT_CACHE_ENABLED": "false",
    "SERVEKIT_FEATURES_ENABLED": "false",
    "SERVEKIT_ROLLOUT_ENABLED": "false",
}
SHAPES = {
    # Everything on: feature-store read, prediction cache, rollout routing and logging.
    "colocated, full path": {},
    # The serving path alone: no Redis on the request path.
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
# Throughput ratios are taken against this side (the dedicated runner, serving path alone).
BASELINE = "colocated, lean"


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


Run = tuple[list[float], int, dict[str, int], float]
"""One closed-loop run: latencies (s) of OK requests, OK count, errors by status, seconds."""


def parse_args() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="per side and concurrency")
    ap.add_argument("--rounds", type=int, default=5, help="turns the seconds are split into")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument("--name", default="serving", help="results/NAME.json and NAME.png")
    return ap.parse_args()


def start_servers(
    shapes: list[str],
    store: Path,
    redis_url: str,
    stack: contextlib.ExitStack,
    step: Callable[[str], None],
) -> dict[str, Server]:
    """One gateway per side, all up at once; ``stack`` stops them and removes their logs."""
    servers: dict[str, Server] = {}
    for i, shape in enumerate(shapes):
        step(f"starting {shape}")
        log = RESULTS / f"server-{shape.split()[0].strip(',')}-{i}.log"
        env = {"SERVEKIT_MODEL_STORE": str(store), "SERVEKIT_REDIS_URL": redis_url, **SHAPES[shape]}
        server = servers[shape] = Server(env, log)
        stack.callback(log.unlink, missing_ok=True)
        stack.callback(server.stop)
    return servers


def measure_concurrency(
    servers: dict[str, Server],
    bodies: list[bytes],
    c: int,
    rounds: int,
    per_round: float,
    step: Callable[[str], None],
) -> tuple[dict[str, list[Run]], dict[str, list[float]]]:
    """Every side at concurrency ``c`` for ``rounds`` rounds, in rotating order.

    Returns each side's runs and its usage: server CPU seconds, batches and rows formed.
    """
    shapes = list(servers)
    runs: dict[str, list[Run]] = {shape: [] for shape in shapes}
    usage = {shape: [0.0, 0.0, 0.0] for shape in shapes}  # cpu s, batches, rows
    for r in range(rounds):
        for shape in shapes[r % len(shapes) :] + shapes[: r % len(shapes)]:
            step(f"{shape}, concurrency {c}, round {r + 1}")
            server = servers[shape]
            cpu0, (b0, r0) = server.cpu_seconds(), scrape_batches(server.url)
            runs[shape].append(
                asyncio.run(closed_loop(f"{server.url}/predict", bodies, c, per_round))
            )
            cpu1, (b1, r1) = server.cpu_seconds(), scrape_batches(server.url)
            u = usage[shape]
            u[0], u[1], u[2] = u[0] + cpu1 - cpu0, u[1] + b1 - b0, u[2] + r1 - r0
    return runs, usage


def concurrency_results(
    c: int, runs: dict[str, list[Run]], usage: dict[str, list[float]], seconds: float
) -> list[LoadResult]:
    """One result per side: throughput the median of the rounds, latency over all rounds,
    the ratio to the baseline the median of the per-round ratios."""
    rates = {shape: [ok / secs for _, ok, _, secs in side] for shape, side in runs.items()}
    results = []
    for shape, side in runs.items():
        lat = [x for run in side for x in run[0]]
        ok = sum(run[1] for run in side)
        errors: dict[str, int] = {}
        for run in side:
            for k, v in run[2].items():
                errors[k] = errors.get(k, 0) + v
        res = summarize(shape, c, lat, ok, errors, seconds)
        res.throughput = statistics.median(rates[shape])
        cpu, batches, rows = usage[shape]
        res.server_cpu_ms_per_req = round(cpu * 1000 / max(ok, 1), 3)
        if batches > 0:
            res.mean_batch_rows = round(rows / batches, 2)
        if BASELINE in rates:
            ratios = (a / b for a, b in zip(rates[shape], rates[BASELINE], strict=True))
            res.extra["vs_baseline"] = round(statistics.median(ratios), 3)
        results.append(res)
    return results


def run_benchmark(args: argparse.Namespace, console: Console) -> list[LoadResult]:
    """The ONNX Runtime floor, then every side at every concurrency."""
    store = Path(tempfile.mkdtemp(prefix="servekit-bench-"))
    registry = ModelRegistry(LocalStore(store))
    ensure_demo_models(registry)
    gen = TransactionGenerator(seed=11)
    # Unique inputs (0 % duplicates): the cache never helps, every request pays its lookup.
    bodies = [orjson.dumps({"model": "fraud", "inputs": [r]}) for r in gen.records(80_000)]
    shapes = list(args.shapes)
    steps = len(shapes) + len(shapes) * len(args.concurrency) * args.rounds + 2
    results: list[LoadResult] = []
    with Progress(console=console) as progress, contextlib.ExitStack() as stack:
        task = progress.add_task("benchmark", total=steps)

        def step(description: str) -> None:
            progress.update(task, description=description)
            progress.advance(task)

        for batch in (1, 32):
            step(f"ONNX Runtime floor, batch {batch}")
            results.append(ort_floor(registry, batch, min(args.seconds, 3.0)))
        servers = start_servers(shapes, store, args.redis_url, stack, step)
        for c in args.concurrency:
            runs, usage = measure_concurrency(
                servers, bodies, c, args.rounds, args.seconds / args.rounds, step
            )
            results += concurrency_results(c, runs, usage, args.seconds)
    order = {shape: i for i, shape in enumerate(shapes)}
    results.sort(key=lambda r: (order.get(r.label, -1), r.concurrency))
    return results


def print_table(console: Console, results: list[LoadResult]) -> None:
    """The results as a console table."""
    table = Table(title="fraud model via /predict (1 record per request)")
    for col in ("side", "conc.", "req/s", "p50 ms", "p99 ms", "errors", "server CPU ms/req",
                "mean batch", "req/s vs lean"):  # fmt: skip
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
            f"{r.extra['vs_baseline']:.3f}" if "vs_baseline" in r.extra else "-",
        )
    console.print(table)


def main() -> None:
    args = parse_args()
    console = Console()
    results = run_benchmark(args, console)
    print_table(console, results)
    path = write_results(
        args.name,
        {
            "machine": {"cpus": os.cpu_count()},
            "seconds_per_step": args.seconds,
            "rounds": args.rounds,
            "baseline": BASELINE,
            "results": results,
        },
    )
    plot(results, RESULTS / f"{args.name}.png")
    console.print(f"wrote {path} and {RESULTS / f'{args.name}.png'}")
    print_markdown(results)


def print_markdown(results: list[LoadResult]) -> None:
    """The README table."""
    print(
        "\n| side | concurrency | req/s | p50 ms | p99 ms | errors | server CPU ms/req "
        f"| mean batch | req/s vs {BASELINE} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        unit = r.extra.get("unit")
        print(
            f"| {r.label} | {'-' if unit else r.concurrency} | {r.throughput:,.0f}{' rows/s' if unit else ''} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {sum(r.errors.values())} "
            f"| {r.server_cpu_ms_per_req if r.server_cpu_ms_per_req is not None else '-'} "
            f"| {r.mean_batch_rows if r.mean_batch_rows is not None else '-'} "
            f"| {r.extra.get('vs_baseline', '-')} |"
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
