"""Flow-side faults: what a killed flow or worker, or a paused Redis, costs, and how long
the recovery takes.

Each fault is a test that injects it for real (a child process killed with SIGKILL, a
redis-server of its own stopped with SIGSTOP) and records what it measured:

- ``canary_worker_sigkill``: the canary flow's process killed mid-step, the flow run again;
- ``canary_redis_outage``: the canary's Redis paused during an observation interval;
- ``materialize_sigkill_midload``: the materialize flow killed half-way through a load;
- ``realtime_worker_sigkill``: the real-time worker killed mid-stream, then restarted.

This script runs those tests (pytest, against a Redis they may flush) with
``SERVEKIT_FAULTS_RECORD`` pointing at the JSON file, and prints one row per fault:
what was lost (``lost`` with its ``lost_unit``) and the seconds to recover
(``recover_s``); each record keeps its details. :func:`load_flow_faults` reads the file
for other reports.

Run: ``python -m benchmarks.faults_flows --redis-url redis://127.0.0.1:6379/9``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "faults" / "flows.json"
TESTS = [
    "tests/flows/test_canary_faults.py",
    "tests/flows/test_materialize_faults.py",
    "tests/services/state/test_realtime_faults.py",
]


def load_flow_faults(path: Path = OUT) -> dict[str, dict[str, Any]]:
    """The recorded faults: name -> {fault, lost, lost_unit, recover_s, ...details}."""
    return json.loads(path.read_text()) if path.exists() else {}


def run_fault_tests(redis_url: str, out: Path) -> int:
    """Run the fault tests, recording into ``out`` (replaced); pytest's exit status."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    env = {**os.environ, "SERVEKIT_FAULTS_RECORD": str(out)}
    command = [sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider"]
    command += ["--redis-url", redis_url]
    return subprocess.run(command, cwd=ROOT, env=env, check=False).returncode


def table(records: dict[str, dict[str, Any]]) -> Table:
    """One row per fault: what was lost and the seconds to recover."""
    t = Table(title="Flow-side faults (one run each; a shared, noisy machine)")
    for column in ("fault", "lost", "recover s", "what"):
        t.add_column(column, justify="right" if column in ("lost", "recover s") else "left")
    for name, r in sorted(records.items()):
        t.add_row(name, f"{r['lost']} {r['lost_unit']}", f"{r['recover_s']:.2f}", r["fault"])
    return t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.faults_flows", description=__doc__)
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/9",
        help="a Redis database the tests may flush (and the next one)",
    )
    parser.add_argument("--out", type=Path, default=OUT, help=f"the JSON file (default {OUT})")
    args = parser.parse_args(argv)
    console = Console()
    with console.status("injecting the faults (about 5 minutes)"):
        status = run_fault_tests(args.redis_url, args.out)
    console.print(table(load_flow_faults(args.out)))
    console.print(f"records: {args.out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
