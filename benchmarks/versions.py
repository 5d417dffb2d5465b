"""Did a change cost the serving path? This checkout against an earlier revision, side by side.

Checks the revision ``--ref`` out into a temporary git worktree, serves the same fraud
model from both checkouts at once (same venv, same model store, same Redis), and drives
them in rotating rounds with closed-loop clients at each ``--concurrency``: each round
gives every side the same seconds in turn, so the machine's drift falls on both alike.
Every run sends inputs no earlier run sent (on the full path nothing is answered from
the cache of an earlier run). Reports each side's throughput (median of the rounds),
p50/p99 latency, server CPU per request, and this checkout's throughput against the
revision's (median of the per-round ratios); writes benchmarks/results/versions.json and
versions.png.

Throughput on a shared machine moves by more than a small regression costs (the same
revision against itself can read 0.85x-1.15x). ``--calls N`` adds a measure that noise does
not move: each side answers N requests one after another while its event loop's Python
function calls are counted (``benchmarks/callcount/``), and the table gives calls per
request on each side and the functions whose per-request counts differ.

    python benchmarks/versions.py --ref REV [--path lean|full] [--seconds 10] [--rounds 5]
                                  [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.callcount.sitecustomize import stats_path  # noqa: E402
from benchmarks.common import (  # noqa: E402
    RESULTS,
    ROOT,
    Server,
    closed_loop,
    pct,
    progress,
    write_results,
)
from flows.recipes.demo_models import ensure_demo_models  # noqa: E402
from flows.recipes.synthetic import TransactionGenerator  # noqa: E402
from services.registry.stores import LocalStore  # noqa: E402
from services.registry.versions import ModelRegistry  # noqa: E402

PATHS = {
    "lean": {
        "SERVEKIT_CACHE_ENABLED": "false",
        "SERVEKIT_FEATURES_ENABLED": "false",
        "SERVEKIT_ROLLOUT_ENABLED": "false",
    },
    "full": {},
}


@contextlib.contextmanager
def checkout(ref: str):  # type: ignore[no-untyped-def]
    """A detached worktree of ``ref``, removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="servekit-ref-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(where), ref],
                   cwd=ROOT, check=True, capture_output=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(where)], cwd=ROOT, check=False)


def measure(
    servers: dict[str, Server], bodies: list[bytes], args: argparse.Namespace, console: Console
) -> list[dict[str, Any]]:
    """Every side at every concurrency, in rotating rounds."""
    sides = list(servers)
    rows = []
    offset = 0
    with progress(console) as bar:
        task = bar.add_task("rounds", total=len(args.concurrency) * args.rounds * len(sides))
        for c in args.concurrency:
            lat: dict[str, list[float]] = {s: [] for s in sides}
            rates: dict[str, list[float]] = {s: [] for s in sides}
            cpu: dict[str, float] = dict.fromkeys(sides, 0.0)
            ok: dict[str, int] = dict.fromkeys(sides, 0)
            for r in range(args.rounds):
                for side in sides[r % 2 :] + sides[: r % 2]:
                    bar.update(task, description=f"{side}, concurrency {c}, round {r + 1}")
                    server = servers[side]
                    cpu0 = server.cpu_seconds()
                    latencies, n, errors, secs = asyncio.run(
                        closed_loop(
                            f"{server.url}/predict",
                            bodies[offset:] + bodies[:offset],
                            c,
                            args.seconds / args.rounds,
                        )
                    )
                    # The next run starts past every body sent so far (and its warm-up's):
                    # on the full path no input is answered from the cache of an earlier one.
                    sent = n + sum(errors.values()) + int(n / secs)  # + the 0.5 s warm-up
                    offset = (offset + sent + c) % len(bodies)
                    cpu[side] += server.cpu_seconds() - cpu0
                    lat[side] += latencies
                    rates[side].append(n / secs)
                    ok[side] += n
                    bar.advance(task)
            ratio = statistics.median(
                a / b for a, b in zip(rates[sides[0]], rates[sides[1]], strict=True)
            )
            for side in sides:
                rows.append({
                    "side": side, "concurrency": c, "req_s": round(statistics.median(rates[side]), 1),
                    "p50_ms": round(pct(lat[side], 50) * 1000, 3), "p99_ms": round(pct(lat[side], 99) * 1000, 3),
                    "cpu_ms_per_req": round(cpu[side] * 1000 / max(ok[side], 1), 3),
                    "vs_ref": round(ratio, 3) if side == sides[0] else 1.0,
                })  # fmt: skip
    return rows


def _post_many(server: Server, bodies: list[bytes], n: int) -> None:
    """``n`` requests one after another on one keep-alive connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        for i in range(n):
            conn.request(
                "POST", "/predict", bodies[i % len(bodies)], {"content-type": "application/json"}
            )
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{server.url}/predict answered {resp.status}")
    finally:
        conn.close()


def _function(key: tuple[str, int, str], roots: list[str]) -> str:
    """A pstats key without what differs between checkouts (root folder, line number)."""
    filename, _, name = key
    for root in roots:
        if filename.startswith(root):
            filename = filename[len(root) :].lstrip("/")
            break
    if "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    return f"{filename}:{name}"


def count_calls(
    servers: dict[str, Server], roots: dict[str, Path], bodies: list[bytes], n: int
) -> dict[str, Any]:
    """Python calls per request on each side's event loop over ``n`` sequential requests."""
    per_side: dict[str, dict[str, float]] = {}
    totals: dict[str, float] = {}
    for side, server in servers.items():
        _post_many(server, bodies, 200)  # warm: first-request set-up is not counted
        procs = psutil.Process(server.proc.pid).children(recursive=True)
        for proc in procs:
            os.kill(proc.pid, signal.SIGUSR1)
        time.sleep(0.5)
        _post_many(server, bodies, n)
        for proc in procs:
            os.kill(proc.pid, signal.SIGUSR2)
        time.sleep(1.0)
        best: pstats.Stats | None = None
        for proc in procs:
            path = stats_path(proc.pid)
            if path.exists():
                stats = pstats.Stats(str(path))
                path.unlink()
                if best is None or stats.total_calls > best.total_calls:  # type: ignore[attr-defined]
                    best = stats
        if best is None:
            raise RuntimeError(f"{side}: no call counts were written")
        counts: dict[str, float] = {}
        for key, (_, ncalls, *_rest) in best.stats.items():  # type: ignore[attr-defined]
            name = _function(key, [str(r) for r in roots.values()])
            counts[name] = counts.get(name, 0.0) + ncalls / n
        per_side[side] = counts
        totals[side] = best.total_calls / n  # type: ignore[attr-defined]
    a, b = list(per_side)
    names = set(per_side[a]) | set(per_side[b])
    diffs = sorted(
        ((f, per_side[a].get(f, 0.0), per_side[b].get(f, 0.0)) for f in names),
        key=lambda t: -abs(t[1] - t[2]),
    )
    return {
        "requests": n,
        "calls_per_request": {side: round(v, 2) for side, v in totals.items()},
        "differences": [
            {"function": f, a: round(x, 2), b: round(y, 2)}
            for f, x, y in diffs
            if abs(x - y) >= 0.5
        ][:25],
    }


def report_calls(console: Console, calls: dict[str, Any]) -> None:
    """Calls per request on each side and the functions that differ."""
    sides = list(calls["calls_per_request"])
    table = Table(
        title=f"Python calls per request on the event loop ({calls['requests']} requests)"
    )
    table.add_column("function")
    for side in sides:
        table.add_column(side)
    table.add_row("all calls", *(str(calls["calls_per_request"][s]) for s in sides))
    for row in calls["differences"]:
        table.add_row(row["function"], *(str(row[s]) for s in sides))
    console.print(table)


def report(
    console: Console,
    rows: list[dict[str, Any]],
    args: argparse.Namespace,
    calls: dict[str, Any] | None = None,
) -> None:
    """Console table, README markdown, JSON and PNG."""
    table = Table(title=f"fraud model, {args.path} path: this checkout vs {args.ref}")
    cols = ["side", "concurrency", "req_s", "p50_ms", "p99_ms", "cpu_ms_per_req", "vs_ref"]
    for col in cols:
        table.add_column(col)
    for row in rows:
        table.add_row(*(str(row[c]) for c in cols))
    console.print(table)
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    path = write_results(
        "versions", {"ref": args.ref, "path": args.path, "rows": rows, "calls": calls}
    )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for side in dict.fromkeys(r["side"] for r in rows):
        rs = [r for r in rows if r["side"] == side]
        ax1.plot(
            [str(r["concurrency"]) for r in rs], [r["req_s"] for r in rs], marker="o", label=side
        )
        ax2.plot(
            [str(r["concurrency"]) for r in rs],
            [r["cpu_ms_per_req"] for r in rs],
            marker="o",
            label=side,
        )
    ax1.set(xlabel="concurrency", ylabel="req/s (median of rounds)", title="throughput")
    ax2.set(xlabel="concurrency", ylabel="server CPU ms/request", title="CPU per request")
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "versions.png", dpi=110)
    plt.close(fig)
    console.print(f"wrote {path} and {RESULTS / 'versions.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--ref", required=True, help="the git revision to compare against")
    ap.add_argument("--path", choices=list(PATHS), default="lean")
    ap.add_argument("--seconds", type=float, default=10.0, help="per side and concurrency")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    ap.add_argument(
        "--calls", type=int, default=0, help="also count Python calls over this many requests"
    )
    args = ap.parse_args()
    console = Console()
    store = Path(tempfile.mkdtemp(prefix="servekit-versions-"))
    ensure_demo_models(ModelRegistry(LocalStore(store)))
    bodies = [
        orjson.dumps({"model": "fraud", "inputs": [r]})
        for r in TransactionGenerator(seed=3).records(200_000)
    ]
    env = {
        "SERVEKIT_MODEL_STORE": str(store),
        "SERVEKIT_REDIS_URL": args.redis_url,
        **PATHS[args.path],
    }
    if args.calls:
        env["PYTHONPATH"] = str(ROOT / "benchmarks" / "callcount")
    calls = None
    with checkout(args.ref) as ref_root, contextlib.ExitStack() as stack:
        servers: dict[str, Server] = {}
        roots = {"this checkout": ROOT, args.ref: ref_root}
        for side, root in roots.items():
            log = RESULTS / f"server-versions-{len(servers)}.log"
            servers[side] = Server(env, log, root=root)
            stack.callback(log.unlink, missing_ok=True)
            stack.callback(servers[side].stop)
        if args.calls:
            calls = count_calls(servers, roots, bodies, args.calls)
        rows = measure(servers, bodies, args, console) if args.rounds else []
    if calls is not None:
        report_calls(console, calls)
    if rows:
        report(console, rows, args, calls)


if __name__ == "__main__":
    main()
