"""The fault table: each serving-path fault run for real under steady load against a
`bentoml serve` gateway (benchmarks/fault_cases.py), one row each.

Load: 20 predictions, 10 events and 5 feedbacks per second, open loop (the runner and S3
cases send predictions only). Per fault: requests sent, failed (not 2xx), 503s (with
Retry-After), unexplained answers (neither), events and feedback accepted and then lost,
feedback refused for predictions answered during the fault (their attribution was never
written), and the seconds from the end of the fault to the last failed answer.

Rows that other fault scripts wrote as JSON under benchmarks/results/faults/ (a list of
rows, or ``{"rows": [...]}``, with the same keys) are added to the table.

    .venv/bin/python benchmarks/faults.py [--only redis-pause,runner-kill] [--redis-port 6390]

Writes benchmarks/results/faults/faults.json and faults.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, progress  # noqa: E402
from benchmarks.fault_cases import (  # noqa: E402
    RedisServer,
    Row,
    embedded_redis_killed,
    redis_fault,
    runner_killed,
    s3_fault,
)

OUT = RESULTS / "faults"
COLUMNS = [
    ("fault", "fault"),
    ("requests", "requests"),
    ("failed", "failed"),
    ("503", "503 + Retry-After"),
    ("unexplained", "other errors"),
    ("events_lost", "events lost"),
    ("feedback_lost", "feedback lost"),
    ("slowest_ms", "slowest answer ms"),
    ("failing_s", "failures span s"),
    ("recover_s", "recovery s"),
]


def cases(store: Path, work: Path, port: int) -> dict[str, Callable[[], Row]]:
    """Every fault by name; ``port`` and the next few are free for redis and moto."""
    shared = RedisServer(port + 2, work / "redis-shared")

    def with_shared(run: Callable[[str], Row]) -> Callable[[], Row]:
        def go() -> Row:
            shared.start()
            try:
                return run(shared.url)
            finally:
                shared.stop()

        return go

    return {
        "redis-pause": lambda: redis_fault(store, work, port, "pause"),
        "redis-kill": lambda: redis_fault(store, work, port + 1, "kill"),
        "embedded-redis-kill": lambda: embedded_redis_killed(store, work),
        "s3-down": with_shared(lambda url: s3_fault(store, work, url, port + 3, "down")),
        "artifact-corrupt": with_shared(
            lambda url: s3_fault(store, work, url, port + 4, "corrupt")
        ),
        "runner-kill": with_shared(lambda url: runner_killed(store, work, url)),
    }


def other_rows(folder: Path = OUT) -> list[Row]:
    """Rows written by other fault scripts under benchmarks/results/faults/."""
    rows: list[Row] = []
    for path in sorted(folder.glob("*.json")):
        if path.name == "faults.json":
            continue
        doc = json.loads(path.read_text())
        found = doc.get("rows", []) if isinstance(doc, dict) else doc
        rows.extend({**row, "source": path.name} for row in found if isinstance(row, dict))
    return rows


def cell(row: Row, key: str) -> str:
    value = row.get(key, "")
    return f"{value:.1f}" if isinstance(value, float) else str(value)


def print_table(console: Console, rows: list[Row]) -> None:
    table = Table(title="faults under steady load")
    for _, title in COLUMNS:
        table.add_column(title)
    for row in rows:
        table.add_row(*(cell(row, key) for key, _ in COLUMNS))
    console.print(table)


def markdown(rows: list[Row]) -> str:
    """The README table."""
    lines = ["| " + " | ".join(t for _, t in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row, k) for k, _ in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [str(r["fault"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    ax1.barh(labels, [float(r.get("recover_s", 0)) for r in rows], color="tab:blue")
    ax1.set(xlabel="seconds from the end of the fault to the last failed answer",
            title="time to recover")  # fmt: skip
    ok = [int(r.get("requests", 0)) - int(r.get("failed", 0)) for r in rows]
    ax2.barh(labels, ok, color="tab:green", label="answered 2xx")
    ax2.barh(labels, [int(r.get("503", 0)) for r in rows], left=ok, color="tab:orange",
             label="503 + Retry-After")  # fmt: skip
    ax2.set(xlabel="requests", title="answers under the fault's run")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", default="", help="comma-separated fault names (default: all)")
    ap.add_argument("--redis-port", type=int, default=6390, help="first of 5 free ports")
    args = ap.parse_args()
    from flows.recipes.demo_models import ensure_demo_models
    from services.registry.stores import LocalStore
    from services.registry.versions import ModelRegistry

    console = Console()
    work = Path(tempfile.mkdtemp(prefix="sk-faults-"))
    store = work / "store"
    ensure_demo_models(ModelRegistry(LocalStore(store)))
    todo = cases(store, work, args.redis_port)
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(",")}
    rows: list[Row] = []
    with progress(console) as bar:
        task = bar.add_task("faults", total=len(todo))
        for name, run in todo.items():
            bar.update(task, description=name)
            rows.append({"case": name, **run()})
            bar.advance(task)
    everything = rows + other_rows()
    print_table(console, everything)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "faults.json").write_text(json.dumps({"rows": rows}, indent=2, default=str))
    plot(everything, OUT / "faults.png")
    print(markdown(everything))


if __name__ == "__main__":
    main()
