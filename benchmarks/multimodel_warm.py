"""Warm per-request cost of one model: the dedicated runner against the shared pool.

Three runners hold the same model: the dedicated one (preloaded and pinned), the shared
pool as shipped (a tiny model runs inline on the event loop under the watchdog) and the
shared pool with every call on a worker thread (``inline_deadline_ms=0``: the thread hop
that inline execution saves). Rounds interleave the runners so that the machine's drift
falls on each alike; overheads are medians of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from rich.console import Console

from benchmarks.common import pct, progress
from services.registry.versions import ModelRegistry, ModelVersion
from services.runner.feeds import Feeds
from services.runner.pool import ModelPool
from services.settings import MultiModelSettings, Settings

WARM_SIDES = ("dedicated", "shared", "shared_threads")
BURST_CLIENTS = 32


@dataclass
class WarmSide:
    """One runner's timings over the warm rounds."""

    seq: list[float] = field(default_factory=list)
    round_means: list[float] = field(default_factory=list)
    round_rates: list[float] = field(default_factory=list)
    burst_latency: list[float] = field(default_factory=list)
    burst_walls: list[float] = field(default_factory=list)


async def warm_pools(
    registry: ModelRegistry, mv: ModelVersion, budget: int
) -> dict[str, ModelPool]:
    """``mv`` loaded in the three runners compared: dedicated (pinned), shared pool as
    shipped (inline under the watchdog), shared pool with worker threads only."""
    dedicated = ModelPool(registry, Settings())
    dedicated.preload([mv.name])
    shared = ModelPool(
        registry, Settings(multimodel=MultiModelSettings(memory_budget_bytes=budget))
    )
    await shared.get(mv)
    threads = ModelPool(
        registry,
        Settings(multimodel=MultiModelSettings(memory_budget_bytes=budget, inline_deadline_ms=0)),
    )
    await threads.get(mv)
    return dict(zip(WARM_SIDES, (dedicated, shared, threads), strict=True))


async def warm_round(
    pool: ModelPool,
    mv: ModelVersion,
    feeds: Feeds,
    n: int,
    side: WarmSide,
    advance: Callable[[], None],
) -> None:
    """One round of one runner: ``n`` sequential requests, then a burst of 32 clients."""

    async def one(out: list[float]) -> None:
        t0 = time.perf_counter()
        await pool.infer(mv, feeds, 1)
        out.append(time.perf_counter() - t0)

    async def client(k: int) -> None:
        for _ in range(k):  # one closed-loop client of the burst
            await one(side.burst_latency)

    for _ in range(100):  # warm the lane's timings
        await pool.infer(mv, feeds, 1)
    this: list[float] = []
    for _ in range(n):
        await one(this)
    side.seq += this
    side.round_means.append(float(np.mean(this)))
    advance()
    per_client = n // BURST_CLIENTS
    t0 = time.perf_counter()
    await asyncio.gather(*(client(per_client) for _ in range(BURST_CLIENTS)))
    wall = time.perf_counter() - t0
    side.burst_walls.append(wall)
    side.round_rates.append(per_client * BURST_CLIENTS / wall)
    advance()


def warm_summary(mv: ModelVersion, sides: dict[str, WarmSide], n: int) -> dict[str, Any]:
    """Each runner's figures, and the shared pool's overheads over the dedicated runner
    (medians of the per-round ratios)."""
    burst_rows = n // BURST_CLIENTS * BURST_CLIENTS
    out: dict[str, Any] = {"model": mv.name, "artifact_bytes": mv.size_bytes}
    for name, side in sides.items():
        out[name] = {
            "seq_mean_us": float(np.mean(side.seq)) * 1e6,
            "seq_p50_us": pct(side.seq, 50) * 1e6,
            "seq_p99_us": pct(side.seq, 99) * 1e6,
            "burst_p50_us": pct(side.burst_latency, 50) * 1e6,
            "burst_rows_per_s": burst_rows * len(side.burst_walls) / sum(side.burst_walls),
        }

    def median_ratio(name: str, of: str) -> float:
        ratios = np.array(getattr(sides[name], of)) / np.array(getattr(sides["dedicated"], of))
        return float(np.median(ratios))

    out["seq_mean_overhead"] = median_ratio("shared", "round_means") - 1
    out["seq_mean_overhead_threads"] = median_ratio("shared_threads", "round_means") - 1
    out["burst_throughput_overhead"] = 1 / median_ratio("shared", "round_rates") - 1
    out["burst_throughput_overhead_threads"] = 1 / median_ratio("shared_threads", "round_rates") - 1
    return out


async def warm_overhead(
    registry: ModelRegistry,
    mv: ModelVersion,
    feeds: Feeds,
    budget: int,
    n: int,
    rounds: int,
    console: Console,
) -> dict[str, Any]:
    """Per-request latency of one warm model: dedicated (pinned) vs shared pool, as shipped
    and with worker threads only. Rounds interleave the sides; overheads are the median of
    the per-round ratios."""
    pools = await warm_pools(registry, mv, budget)
    sides = {name: WarmSide() for name in pools}
    with progress(console) as bar:
        task = bar.add_task("warm overhead (dedicated vs shared)", total=rounds * 2 * len(pools))
        names = list(pools)
        for r in range(rounds):  # interleaved, in turn first, so drift hits every side
            for name in names[r % len(names) :] + names[: r % len(names)]:
                await warm_round(pools[name], mv, feeds, n, sides[name], lambda: bar.advance(task))
    for pool in pools.values():
        await pool.close()
    out = warm_summary(mv, sides, n)
    out["inline_stops"] = pools["shared"].batcher.stats.inline_stops
    return out
