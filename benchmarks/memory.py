"""Memory benchmark: what a gateway serving the fraud model holds, and what each import costs.

Two parts, in one run:

1. **The live gateway.** ``bentoml serve services.service:Gateway`` with the demo fraud
   model, warmed with ``--requests`` unique /predict calls, once with the production path
   (features, cache, rollout) and once lean. For each process of the tree (BentoML's
   arbiter, the worker) it reports RSS, PSS and USS (psutil); the tree's RSS is the sum
   the goal is set on (at most 250 MB), PSS the figure that does not count shared
   library pages twice.
2. **The import ladder.** A fresh interpreter imports the gateway's dependencies one group
   at a time, in the order the process does, and records its RSS after each: what each
   import adds, so that a regression names its cause.

Writes benchmarks/results/memory.json and memory.png and prints both tables.

    python benchmarks/memory.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import psutil
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, Server, progress, write_results  # noqa: E402
from flows.recipes.demo_models import ensure_demo_models  # noqa: E402
from flows.recipes.synthetic import TransactionGenerator  # noqa: E402
from services.registry.stores import LocalStore  # noqa: E402
from services.registry.versions import ModelRegistry  # noqa: E402

MB = 1 << 20
LEAN = {
    "SERVEKIT_CACHE_ENABLED": "false",
    "SERVEKIT_FEATURES_ENABLED": "false",
    "SERVEKIT_ROLLOUT_ENABLED": "false",
}
SIDES = {"full path": {}, "lean": LEAN}
# Cumulative import groups, in the order a gateway worker meets them.
LADDER: list[tuple[str, list[str]]] = [
    ("python interpreter", []),
    ("BentoML SDK", ["bentoml", "_bentoml_sdk"]),
    # All of servekit that BentoML's arbiter (`bentoml serve`) imports: the definitions.
    ("service definitions (services.service)", ["services.service"]),
    # From here on, the worker only.
    ("numpy", ["numpy"]),
    ("redis-py (asyncio)", ["redis.asyncio"]),
    ("prometheus_client + metrics", ["monitoring.metrics", "monitoring.collectors"]),
    ("HTTP edge (ASGI app, OIP, docs)", ["services.edge.http", "services.edge.docs"]),
    ("request path, rollout, state", ["services.request.predictor", "services.rollout.routing"]),
    ("gateway wiring (services.wiring)", ["services.wiring"]),
    ("ONNX Runtime", ["onnxruntime"]),
    ("BentoML server (uvicorn, starlette)", ["_bentoml_impl.server.app", "uvicorn"]),
]
_LADDER_SCRIPT = """
import importlib, json, sys, psutil
p = psutil.Process()
out = []
for label, mods in json.loads(sys.argv[1]):
    for m in mods:
        importlib.import_module(m)
    out.append([label, p.memory_info().rss])
print(json.dumps(out))
"""


def import_ladder() -> list[dict[str, Any]]:
    """RSS after each import group in a fresh interpreter, and what each group added."""
    proc = subprocess.run(
        [sys.executable, "-c", _LADDER_SCRIPT, json.dumps(LADDER)],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, check=True,
    )  # fmt: skip
    steps = json.loads(proc.stdout.strip().splitlines()[-1])
    rows, before = [], 0
    for label, rss in steps:
        rows.append(
            {"group": label, "rss_mb": round(rss / MB, 1), "adds_mb": round((rss - before) / MB, 1)}
        )
        before = rss
    return rows


def _role(p: psutil.Process, root: psutil.Process) -> str:
    return "arbiter (bentoml serve)" if p.pid == root.pid else f"worker {p.pid}"


def tree_memory(server: Server) -> list[dict[str, Any]]:
    """RSS, PSS and USS of every process in the server's tree."""
    root = psutil.Process(server.proc.pid)
    rows = []
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            info = p.memory_full_info()
            rows.append({
                "process": _role(p, root),
                "rss_mb": round(info.rss / MB, 1),
                "pss_mb": round(getattr(info, "pss", 0) / MB, 1),
                "uss_mb": round(info.uss / MB, 1),
            })  # fmt: skip
    return rows


def warm(server: Server, bodies: list[bytes]) -> int:
    """POST every body to /predict; the number answered 200."""
    ok = 0
    for body in bodies:
        req = urllib.request.Request(f"{server.url}/predict", data=body, method="POST",
                                     headers={"content-type": "application/json"})  # fmt: skip
        with contextlib.suppress(OSError), urllib.request.urlopen(req, timeout=10) as r:
            ok += r.status == 200
    return ok


def measure_sides(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Each side's gateway up, warmed, and its process tree measured."""
    store = Path(tempfile.mkdtemp(prefix="servekit-mem-"))
    ensure_demo_models(ModelRegistry(LocalStore(store)))
    records = TransactionGenerator(seed=5).records(args.requests)
    bodies = [orjson.dumps({"model": "fraud", "user_id": f"u{i % 1000:06d}", "inputs": [r]})
              for i, r in enumerate(records)]  # fmt: skip
    sides: dict[str, Any] = {}
    with progress(console) as bar:
        task = bar.add_task("gateways", total=len(SIDES) + 1)
        for side, env in SIDES.items():
            bar.update(task, description=f"{side}: start, warm, measure")
            log = RESULTS / f"server-memory-{side.split()[0]}.log"
            server = Server({"SERVEKIT_MODEL_STORE": str(store), "SERVEKIT_REDIS_URL": args.redis_url,
                             **env}, log)  # fmt: skip
            try:
                ok = warm(server, bodies)
                procs = tree_memory(server)
            finally:
                server.stop()
                log.unlink(missing_ok=True)
            sides[side] = {
                "requests_ok": ok,
                "processes": procs,
                "tree_rss_mb": round(sum(p["rss_mb"] for p in procs), 1),
                "tree_pss_mb": round(sum(p["pss_mb"] for p in procs), 1),
            }
            bar.advance(task)
        bar.update(task, description="import ladder")
        ladder = import_ladder()
        bar.advance(task)
    return {"sides": sides, "import_ladder": ladder, "goal_tree_rss_mb": 250}


def print_tables(console: Console, doc: dict[str, Any]) -> None:
    """The two tables, for the console and as README markdown."""
    t = Table(title="gateway process tree, fraud model")
    for col in ("side", "process", "RSS MB", "PSS MB", "USS MB"):
        t.add_column(col)
    md = ["| side | process | RSS MB | PSS MB | USS MB |", "|---|---|---|---|---|"]
    for side, s in doc["sides"].items():
        for p in [*s["processes"], {"process": "tree", "rss_mb": s["tree_rss_mb"],
                                    "pss_mb": s["tree_pss_mb"], "uss_mb": "-"}]:  # fmt: skip
            row = [side, p["process"], str(p["rss_mb"]), str(p["pss_mb"]), str(p["uss_mb"])]
            t.add_row(*row)
            md.append("| " + " | ".join(row) + " |")
    console.print(t)
    t2 = Table(title="import ladder (fresh interpreter)")
    md += ["", "| import | RSS after, MB | adds, MB |", "|---|---|---|"]
    for col in ("import", "RSS after MB", "adds MB"):
        t2.add_column(col)
    for r in doc["import_ladder"]:
        t2.add_row(r["group"], str(r["rss_mb"]), str(r["adds_mb"]))
        md.append(f"| {r['group']} | {r['rss_mb']} | {r['adds_mb']} |")
    console.print(t2)
    print("\n".join(md))


def plot(doc: dict[str, Any], path: Path) -> None:
    """Stacked process bars per side beside the import ladder's increments."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [1, 2]})
    for i, s in enumerate(doc["sides"].values()):
        bottom = 0.0
        for p in s["processes"]:
            ax1.bar(i, p["rss_mb"], bottom=bottom, label=p["process"].split()[0] if i == 0 else None,
                    color="tab:blue" if p["process"].startswith("arbiter") else "tab:orange")  # fmt: skip
            bottom += p["rss_mb"]
    ax1.axhline(doc["goal_tree_rss_mb"], color="red", linestyle="--", label="goal")
    ax1.set_xticks(range(len(doc["sides"])), labels=list(doc["sides"]))
    ax1.set(ylabel="RSS MB", title="gateway process tree")
    ax1.legend(fontsize=8)
    ladder = doc["import_ladder"]
    ax2.barh([r["group"] for r in ladder][::-1], [r["adds_mb"] for r in ladder][::-1])
    ax2.set(xlabel="MB added to RSS", title="what each import adds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--requests", type=int, default=2000, help="unique /predict calls before measuring"
    )
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    args = ap.parse_args()
    console = Console()
    doc = measure_sides(args, console)
    path = write_results("memory", doc)
    plot(doc, RESULTS / "memory.png")
    print_tables(console, doc)
    console.print(f"wrote {path} and {RESULTS / 'memory.png'}")


if __name__ == "__main__":
    main()
