"""Helpers of the fault tests: child processes, a private Redis server to pause, polling,
and the figures each fault test records.

A fault test records what the fault cost (requests or events lost, work redone, time to
recover) with :func:`record_fault`; the records go to the JSON file named by
``SERVEKIT_FAULTS_RECORD`` when it is set (``benchmarks/faults_flows.py`` sets it) and
nowhere otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def record_fault(name: str, **figures: Any) -> None:
    """Add (or replace) the record of fault ``name`` in the ``SERVEKIT_FAULTS_RECORD`` file."""
    target = os.environ.get("SERVEKIT_FAULTS_RECORD")
    if not target:
        return
    path = Path(target)
    records = json.loads(path.read_text()) if path.exists() else {}
    records[name] = figures
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=2, sort_keys=True) + "\n")


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``python -m ARGS`` from the repository root in its own session, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child (no handler, no clean-up runs) and reap it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


async def wait_for(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float,
    what: str,
    proc: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None (or False)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await probe()
        if value is not None and value is not False:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None else ""
            raise AssertionError(f"child exited ({proc.returncode}) before {what}:\n{tail}")
        await asyncio.sleep(0.05)
    tail = log.read_text()[-3000:] if log is not None else ""
    raise AssertionError(f"no {what} within {timeout_s} s\n{tail}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def private_redis(tmp: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A redis-server of the test's own on a free port (safe to SIGSTOP): (url, process)."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp)],
        stdout=(tmp / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0", proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        proc.wait(timeout=10)
