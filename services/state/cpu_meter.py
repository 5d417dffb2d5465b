"""CPU accounting on the event loop: the thread CPU a coroutine spends in its own steps.

Wall-clock time around an ``await`` on a busy event loop measures queueing: every other
task that runs while the coroutine waits is counted too. :class:`CpuMeter` instead drives
a coroutine step by step and adds up ``time.thread_time()`` over each step only, so what
it reports is the CPU of that coroutine's own Python work (hashing, encoding, a Redis
client packing a command and parsing its reply), however busy the loop is.

:class:`PerRow` keeps a decayed mean of CPU seconds per row over recent calls.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")


class CpuMeter:
    """Adds up the thread CPU seconds of the coroutines it runs (their steps only)."""

    __slots__ = ("cpu",)

    def __init__(self) -> None:
        self.cpu = 0.0

    def run(self, coro: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """``coro`` as an awaitable whose steps are metered into ``self.cpu`` (any other
        awaitable, a future say, is returned as it is, unmetered)."""
        if not inspect.iscoroutine(coro):
            return coro
        return _Metered(coro, self)


class _Metered(Awaitable[T]):
    __slots__ = ("_coro", "_meter")

    def __init__(self, coro: Coroutine[Any, Any, T], meter: CpuMeter) -> None:
        self._coro = coro
        self._meter = meter

    def __await__(self) -> Generator[Any, Any, T]:
        coro, meter, clock = self._coro, self._meter, time.thread_time
        value: Any = None
        error: BaseException | None = None
        while True:
            t0 = clock()
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                meter.cpu += clock() - t0
                return stop.value  # type: ignore[no-any-return]
            except BaseException:
                meter.cpu += clock() - t0
                raise
            meter.cpu += clock() - t0
            value, error = None, None
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation, timeouts: the coroutine handles them
                error = exc


class PerRow:
    """Decayed mean CPU seconds per row (each call's weight decays by ``decay``).

    Args:
        decay: how much of the past each new call keeps (0.98: about the last 50 calls).
    """

    __slots__ = ("_cpu", "_rows", "_decay", "rows_seen")

    def __init__(self, decay: float = 0.98) -> None:
        self._cpu = 0.0
        self._rows = 0.0
        self._decay = decay
        self.rows_seen = 0

    def add(self, cpu_s: float, rows: int) -> None:
        """One call that spent ``cpu_s`` CPU seconds on ``rows`` rows."""
        if rows <= 0:
            return
        self._cpu = self._cpu * self._decay + max(cpu_s, 0.0)
        self._rows = self._rows * self._decay + rows
        self.rows_seen += rows

    @property
    def value(self) -> float | None:
        """CPU seconds per row; None before any row."""
        return self._cpu / self._rows if self._rows > 0 else None
