"""Shared pieces of the benchmarks: a closed-loop HTTP load generator, server processes,
server CPU accounting, and result writing (JSON + PNG)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


@dataclass
class LoadResult:
    """One closed-loop run at one concurrency."""

    label: str
    concurrency: int
    seconds: float
    ok: int
    errors: dict[str, int]
    throughput: float
    p50_ms: float
    p99_ms: float
    server_cpu_ms_per_req: float | None = None
    mean_batch_rows: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`bentoml serve services.service:Gateway` (or another ``target``) with extra
    environment, from ``root`` (a checkout of servekit: this one by default), ready once
    ``ready_path`` answers 200."""

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        root: Path = ROOT,
        *,
        target: str = "services.service:Gateway",
        ready_path: str = "/v2/health/ready",
        cpus: set[int] | None = None,
    ) -> None:
        self.port = free_port()
        self.cpus = cpus  # the cores its process tree may use (None: all)
        self.url = f"http://127.0.0.1:{self.port}"
        full = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", target,
             "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=root, env=full, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log}")
            try:
                with urllib.request.urlopen(f"{self.url}{ready_path}", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"server not ready; see {log}")

    def cpu_seconds(self) -> float:
        """User + system CPU of the server's whole process tree so far."""
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


async def closed_loop(
    url: str,
    bodies: Sequence[bytes],
    concurrency: int,
    seconds: float,
    *,
    headers: dict[str, str] | None = None,
    warmup_s: float = 0.5,
) -> tuple[list[float], int, dict[str, int], float]:
    """Run ``concurrency`` clients back to back for ``seconds``.

    Returns (latencies in seconds of OK requests, ok count, errors by status, elapsed).
    """
    hdrs = {"content-type": "application/json", **(headers or {})}
    conn = aiohttp.TCPConnector(limit=concurrency + 4, force_close=False)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    ok = 0
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=30)
    ) as session:
        warm_end = time.perf_counter() + warmup_s
        stop_at = warm_end + seconds

        async def client(k: int) -> None:
            nonlocal ok
            i = k
            while True:
                now = time.perf_counter()
                if now >= stop_at:
                    return
                body = bodies[i % len(bodies)]
                i += concurrency
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=hdrs) as resp:
                        await resp.read()
                        status = resp.status
                except (TimeoutError, aiohttp.ClientError) as exc:
                    status = type(exc).__name__  # type: ignore[assignment]
                t1 = time.perf_counter()
                if t0 < warm_end:
                    continue
                if status == 200:
                    ok += 1
                    latencies.append(t1 - t0)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1

        await asyncio.gather(*(client(k) for k in range(concurrency)))
    return latencies, ok, errors, seconds


async def open_loop_records(
    url: str,
    bodies: Sequence[bytes],
    rate: float,
    seconds: float,
    *,
    headers: dict[str, str] | None = None,
    timeout_s: float = 30.0,
) -> tuple[list[tuple[str, float]], float, float]:
    """Send ``rate`` requests per second for ``seconds`` without waiting for answers (open
    loop: arrivals do not slow down when the server does).

    Returns ((status, seconds) per request, in completion order: "200", "503", ... or the
    client exception's name; the send rate achieved, which a busy client may miss; the
    seconds from the first send to the last answer).
    """
    hdrs = {"content-type": "application/json", **(headers or {})}
    conn = aiohttp.TCPConnector(limit=2000)
    out: list[tuple[str, float]] = []
    async with aiohttp.ClientSession(
        connector=conn, timeout=aiohttp.ClientTimeout(total=timeout_s)
    ) as session:

        async def one(body: bytes) -> None:
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=hdrs) as resp:
                    await resp.read()
                    status = str(resp.status)
            except (TimeoutError, aiohttp.ClientError) as exc:
                status = type(exc).__name__
            out.append((status, time.perf_counter() - t0))

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(bodies[i % len(bodies)])))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
    return out, len(tasks) / max(sent_s, 1e-9), time.perf_counter() - start


def summarize(
    label: str,
    concurrency: int,
    latencies: list[float],
    ok: int,
    errors: dict[str, int],
    seconds: float,
) -> LoadResult:
    """A closed-loop run's latencies and counts as a ``LoadResult`` (p50, p99, rate)."""
    lat = sorted(latencies)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] * 1000 if lat else float("nan")
    return LoadResult(
        label, concurrency, seconds, ok, errors, ok / seconds, round(p50, 3), round(p99, 3)
    )


def scrape_batches(url: str) -> tuple[float, float]:
    """(batches, rows) summed over servekit_batch_rows in ``url``'s /metrics."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
        text = r.read().decode()
    count = total = 0.0
    for line in text.splitlines():
        if line.startswith("servekit_batch_rows_count"):
            count += float(line.rsplit(" ", 1)[1])
        elif line.startswith("servekit_batch_rows_sum"):
            total += float(line.rsplit(" ", 1)[1])
    return count, total


def portable_path(path: Path) -> str:
    """``path`` as results may record it: relative to the repository root, else its name
    alone, so that no result carries an absolute path of the machine that wrote it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return path.name


def pct(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (NaN when empty)."""
    return float(np.percentile(values, q)) if values else float("nan")


def progress(console: Console) -> Progress:
    """A progress bar with a count and the time elapsed."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def write_results(name: str, doc: dict[str, Any]) -> Path:
    """Write ``doc`` as ``benchmarks/results/NAME.json`` (dataclasses as dicts)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            doc,
            indent=2,
            default=lambda o: asdict(o) if hasattr(o, "__dataclass_fields__") else str(o),
        )
    )
    return path
