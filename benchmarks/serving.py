"""Serving benchmark through the gateway's /predict, servekit's shapes against plain BentoML.

In one run, side by side: servekit colocated on the production path (validation, the
feature-store read, the prediction-cache lookup and write, rollout routing and logging),
colocated lean (those three off), lean with batching off, the split shape (gateway
batching -> ModelRunner via bentoml.depends, one call per batch), the shared multi-model
pool, and a plain BentoML service over the same ONNX file as BentoML's documentation
shows it (``benchmarks/peers/bentoml_onnx.py``: ``@bentoml.api(batchable=True)`` calling
ONNX Runtime; it takes the finished feature vector); plus raw ONNX Runtime in-process at
batch 1 and 32 (the compute floor). Closed-loop aiohttp clients at concurrency 1, 8, 32,
64. All servers run at once and take turns: each concurrency is measured in ``--rounds``
rounds, every side once per round in a rotating order, so the machine's drift falls on
every side alike.

Every run gets inputs no earlier run sent (a continuing generator), so the prediction
cache never hits; the gateway's cache counters are read around each run and the hits
reported (they should be 0). Reports throughput (median of the rounds), p50 and p99 (over
all rounds), errors, server CPU per request, the mean batch the runner formed, cache
hits, and each side's throughput against "colocated, lean" (median of the per-round
ratios); writes benchmarks/results/NAME.json and NAME.png and prints the table.

    python benchmarks/serving.py [--seconds 5] [--rounds 5] [--concurrency 1 8 32 64]
    python benchmarks/serving.py --model text-embed --shapes "colocated, lean" \
        "split (depends), lean" --name serving_text
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
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, LoadResult, Server, closed_loop, summarize, write_results  # noqa: E402
from benchmarks.serving_report import plot, print_markdown, print_table  # noqa: E402
from flows.recipes.demo_models import ensure_demo_models, vectors  # noqa: E402
from flows.recipes.synthetic import TransactionGenerator  # noqa: E402
from services.registry.stores import LocalStore  # noqa: E402
from services.registry.versions import ModelRegistry  # noqa: E402

LEAN = {
    "SERVEKIT_CACHE_ENABLED": "false",
    "SERVEKIT_FEATURES_ENABLED": "false",
    "SERVEKIT_ROLLOUT_ENABLED": "false",
}
PEER = "plain BentoML (batchable API)"
SHAPES = {
    # Everything on: feature-store read, prediction cache, rollout routing and logging.
    "colocated, full path": {},
    # The serving path alone: no Redis on the request path.
    "colocated, lean": LEAN,
    "colocated, lean, no batching": {**LEAN, "SERVEKIT_BATCH_ENABLED": "false"},
    # The gateway batches; each batch is one ModelRunner call, tensors as raw bytes.
    "split (depends), lean": {**LEAN, "SERVEKIT_SHAPE": "split"},
    # The same model warm in the shared multi-model pool (not pinned, under a memory
    # budget: its own lane, inline under the watchdog): the long-tail shape against the
    # dedicated runner above.
    "multi-model pool, lean": {
        **LEAN,
        "SERVEKIT_MODELS": "[]",
        "SERVEKIT_MULTIMODEL_MEMORY_BUDGET_BYTES": str(1 << 30),
    },
    # BentoML as its documentation shows it, over the same ONNX file (fraud model only).
    PEER: {},
}
# Throughput ratios are taken against this side (the dedicated runner, serving path alone).
BASELINE = "colocated, lean"
# Inputs handed to one run: enough that no run wraps around (which would repeat inputs).
PER_RUN_RATE = 5000

Run = tuple[list[float], int, dict[str, int], float]
"""One closed-loop run: latencies (s) of OK requests, OK count, errors by status, seconds."""


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


class FreshInputs:
    """Request bodies no earlier run has sent: one continuing generator of records (or
    texts) for the whole benchmark, each run taking the next ones."""

    def __init__(self, model: str, seed: int) -> None:
        self.model = model
        self._records = _records(seed) if model == "fraud" else None
        self._texts = _texts(seed) if model != "fraud" else None

    def take(self, n: int, shape: str) -> list[bytes]:
        """``n`` new bodies, in the form ``shape`` takes."""
        if self._texts is not None:
            inputs = [{"text": next(self._texts)} for _ in range(n)]
            return [orjson.dumps({"model": self.model, "inputs": [i]}) for i in inputs]
        assert self._records is not None
        records = [next(self._records) for _ in range(n)]
        if shape == PEER:
            rows = vectors(records, {}, {}, unknown_share=0.0).tolist()
            return [orjson.dumps({"features": [row]}) for row in rows]
        return [orjson.dumps({"model": self.model, "inputs": [r]}) for r in records]


def _records(seed: int) -> Iterator[dict[str, object]]:
    """Transaction records from one running generator (each draw continues the last)."""
    gen = TransactionGenerator(seed=seed)
    while True:
        yield from gen.records(10_000)


def _texts(seed: int) -> Iterator[str]:
    """Distinct sentences of about 16 tokens (a counter from ``seed`` keeps every one
    unique)."""
    words = (
        "payment card merchant shipment order refund customer account balance transfer "
        "review delivery invoice warehouse weather border customs holiday report revenue"
    ).split()
    i = seed
    while True:
        picked = [words[(i * 7 + k * 3) % len(words)] for k in range(12)]
        yield " ".join(picked) + f" {i}"
        i += 1


def parse_args() -> argparse.Namespace:
    """The command line."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="per side and concurrency")
    ap.add_argument("--rounds", type=int, default=5, help="turns the seconds are split into")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--model", default="fraud", choices=["fraud", "text-embed"])
    ap.add_argument("--store", type=Path, help="model store (default: a fresh one)")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument(
        "--seed",
        type=int,
        default=time.time_ns() % 2**31,
        help="inputs' seed (default: the clock, so no earlier run's cache entries can hit)",
    )
    ap.add_argument("--name", default="serving", help="results/NAME.json and NAME.png")
    return ap.parse_args()


def open_registry(args: argparse.Namespace) -> ModelRegistry:
    """The model store holding ``--model`` (the fraud model trained, text-embed converted,
    when missing)."""
    store = args.store or Path(tempfile.mkdtemp(prefix="servekit-bench-"))
    registry = ModelRegistry(LocalStore(store))
    if args.model == "fraud":
        ensure_demo_models(registry)
    else:
        from flows.recipes.text_model import ensure_text_model

        ensure_text_model(registry)
    return registry


def start_servers(
    args: argparse.Namespace,
    registry: ModelRegistry,
    stack: contextlib.ExitStack,
    step: Callable[[str], None],
) -> dict[str, Server]:
    """One server per side, all up at once; ``stack`` stops them and removes their logs."""
    servers: dict[str, Server] = {}
    store = str(registry.store.root)  # type: ignore[attr-defined]
    model_env = {"SERVEKIT_MODELS": orjson.dumps([args.model]).decode()}
    for i, shape in enumerate(args.shapes):
        step(f"starting {shape}")
        log = RESULTS / f"server-{shape.split()[0].strip(',')}-{i}.log"
        stack.callback(log.unlink, missing_ok=True)
        if shape == PEER:
            onnx = Path(store) / "peer-fraud.onnx"
            onnx.write_bytes(registry.load_artifact(registry.get(args.model)))
            server = Server(
                {"PEER_ONNX_MODEL": str(onnx)},
                log,
                target="benchmarks.peers.bentoml_onnx:FraudOnnx",
                ready_path="/readyz",
            )
        else:
            env = {"SERVEKIT_MODEL_STORE": store, "SERVEKIT_REDIS_URL": args.redis_url}
            server = Server({**env, **model_env, **SHAPES[shape]}, log)
        servers[shape] = server
        stack.callback(server.stop)
    return servers


COUNTERS = ("servekit_batch_rows_count", "servekit_batch_rows_sum", "servekit_cache_hits_total",
            "servekit_cache_misses_total")  # fmt: skip


def scrape(url: str) -> list[float]:
    """The ``COUNTERS`` summed over their labels from ``url``'s /metrics (0 where a
    server exports none of them: the BentoML peer)."""
    totals = dict.fromkeys(COUNTERS, 0.0)
    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
            text = r.read().decode()
    except urllib.error.URLError:
        return list(totals.values())
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return list(totals.values())


def measure_concurrency(
    servers: dict[str, Server],
    inputs: FreshInputs,
    c: int,
    rounds: int,
    per_round: float,
    step: Callable[[str], None],
) -> tuple[dict[str, list[Run]], dict[str, list[float]]]:
    """Every side at concurrency ``c`` for ``rounds`` rounds, in rotating order, each run
    on fresh inputs. Returns each side's runs and its usage: server CPU seconds, then the
    ``COUNTERS`` (batches, rows, cache hits, cache misses) over its runs."""
    shapes = list(servers)
    runs: dict[str, list[Run]] = {shape: [] for shape in shapes}
    usage = {shape: [0.0] * (1 + len(COUNTERS)) for shape in shapes}
    n = int(PER_RUN_RATE * (per_round + 0.5)) + 4 * c  # the run and its 0.5 s warm-up
    for r in range(rounds):
        for shape in shapes[r % len(shapes) :] + shapes[: r % len(shapes)]:
            step(f"{shape}, concurrency {c}, round {r + 1}")
            server = servers[shape]
            bodies = inputs.take(n, shape)
            before = [server.cpu_seconds(), *scrape(server.url)]
            run = asyncio.run(closed_loop(f"{server.url}/predict", bodies, c, per_round))
            after = [server.cpu_seconds(), *scrape(server.url)]
            runs[shape].append(run)
            usage[shape] = [u + b - a for u, a, b in zip(usage[shape], before, after, strict=True)]
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
        cpu, batches, rows, hits, misses = usage[shape]
        res.server_cpu_ms_per_req = round(cpu * 1000 / max(ok, 1), 3)
        if batches > 0:
            res.mean_batch_rows = round(rows / batches, 2)
        if shape != PEER:
            res.extra["cache_hits"], res.extra["cache_misses"] = int(hits), int(misses)
        if BASELINE in rates:
            ratios = (a / b for a, b in zip(rates[shape], rates[BASELINE], strict=True))
            res.extra["vs_baseline"] = round(statistics.median(ratios), 3)
        results.append(res)
    return results


def run_benchmark(args: argparse.Namespace, console: Console) -> list[LoadResult]:
    """The ONNX Runtime floor (fraud), then every side at every concurrency."""
    registry = open_registry(args)
    if args.model != "fraud" and PEER in args.shapes:
        args.shapes.remove(PEER)  # the peer serves the fraud model's vectors only
    inputs = FreshInputs(args.model, args.seed)
    floors = (1, 32) if args.model == "fraud" else ()
    steps = len(floors) + len(args.shapes) * (1 + len(args.concurrency) * args.rounds)
    results: list[LoadResult] = []
    with Progress(console=console) as progress, contextlib.ExitStack() as stack:
        task = progress.add_task("benchmark", total=steps)

        def step(description: str) -> None:
            progress.update(task, description=description)
            progress.advance(task)

        for batch in floors:
            step(f"ONNX Runtime floor, batch {batch}")
            results.append(ort_floor(registry, batch, min(args.seconds, 3.0)))
        servers = start_servers(args, registry, stack, step)
        for c in args.concurrency:
            runs, usage = measure_concurrency(
                servers, inputs, c, args.rounds, args.seconds / args.rounds, step
            )
            results += concurrency_results(c, runs, usage, args.seconds)
    order = {shape: i for i, shape in enumerate(args.shapes)}
    results.sort(key=lambda r: (order.get(r.label, -1), r.concurrency))
    return results


def main() -> None:
    args = parse_args()
    console = Console()
    results = run_benchmark(args, console)
    print_table(console, results, args.model)
    path = write_results(
        args.name,
        {
            "machine": {"cpus": os.cpu_count()},
            "model": args.model,
            "seconds_per_step": args.seconds,
            "rounds": args.rounds,
            "seed": args.seed,
            "baseline": BASELINE,
            "results": results,
        },
    )
    plot(results, RESULTS / f"{args.name}.png")
    console.print(f"wrote {path} and {RESULTS / f'{args.name}.png'}")
    print_markdown(results, BASELINE)


if __name__ == "__main__":
    main()
