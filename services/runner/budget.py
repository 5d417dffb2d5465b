"""What a shared (multi-model) runner needs beyond a dedicated one: memory accounting,
load retry backoff and the pool's counters.

- ``heap_bytes`` measures the bytes the process's allocator holds in use (glibc's
  ``mallinfo2``): the model pool reads it before and after creating a session, with
  loads and releases serialized, so each model's resident bytes are what its session
  actually holds, not a guess from the file size (process RSS barely moves for small
  sessions: freed pages are reused without returning to the kernel).
- ``MemoryBudget`` keeps the books: measured bytes of loaded models plus reservations of
  loads in flight, never over the budget.
- ``LoadBackoff`` remembers failed loads and when each may be tried again.
- ``PoolStats`` counts loads, evictions and requests; ``monitoring.collectors`` exports
  them at scrape time.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

from monitoring.metrics import LOAD_BUCKETS

logger = logging.getLogger(__name__)

Key = tuple[str, str]


# -- measuring ------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    path = ctypes.util.find_library("c")
    try:
        fn = ctypes.CDLL(path).mallinfo2  # glibc >= 2.33
    except (OSError, AttributeError, TypeError):
        return None
    fn.restype = _MallInfo2
    fn.argtypes = []
    return fn  # type: ignore[no-any-return]


def heap_bytes() -> int:
    """Bytes in use from the C allocator (arenas + mmapped chunks); RSS where not glibc."""
    fn = _mallinfo2()
    if fn is not None:
        info = fn()
        return int(info.uordblks + info.hblkhd)
    import psutil

    _warn_rss()
    return int(psutil.Process().memory_info().rss)


@functools.cache
def _warn_rss() -> None:
    logger.warning(
        "glibc mallinfo2 is not available: model memory is measured from process RSS, "
        "which under-counts small sessions"
    )


class MeasureGate:
    """Keeps artifact fetches out of session measurements.

    Fetches (``shared``) run side by side; creating or releasing a session
    (``exclusive``) waits until no fetch is in progress and holds new ones back, so the
    allocator's in-use bytes change during the window only because of that session.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._fetching = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cv:
            while self._exclusive or self._waiting:
                self._cv.wait()
            self._fetching += 1
        try:
            yield
        finally:
            with self._cv:
                self._fetching -= 1
                self._cv.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cv:
            self._waiting += 1
            while self._exclusive or self._fetching:
                self._cv.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cv:
                self._exclusive = False
                self._cv.notify_all()


# -- accounting -----------------------------------------------------------------------


class MemoryBudget:
    """Bytes held by loaded models and reserved by loads in flight, against a budget.

    Args:
        budget: the most bytes; ``None``: unlimited (still counted).
    """

    def __init__(self, budget: int | None) -> None:
        self.budget = budget
        self.resident: dict[Hashable, int] = {}
        self.reserved: dict[Hashable, int] = {}
        self._resident_total = 0
        self._reserved_total = 0

    @property
    def used(self) -> int:
        """Resident plus reserved bytes."""
        return self._resident_total + self._reserved_total

    @property
    def resident_total(self) -> int:
        return self._resident_total

    @property
    def reserved_total(self) -> int:
        return self._reserved_total

    def free(self) -> int | None:
        """Bytes left under the budget (``None``: unlimited)."""
        return None if self.budget is None else self.budget - self.used

    def fits(self, nbytes: int) -> bool:
        return self.budget is None or self.used + nbytes <= self.budget

    def reserve(self, key: Hashable, nbytes: int) -> None:
        """Hold ``nbytes`` for a load of ``key`` (the caller checked ``fits``)."""
        if not self.fits(nbytes):
            raise ValueError(f"reserving {nbytes} bytes would pass the budget")
        self.reserved[key] = self.reserved.get(key, 0) + nbytes
        self._reserved_total += nbytes

    def unreserve(self, key: Hashable) -> None:
        self._reserved_total -= self.reserved.pop(key, 0)

    def commit(self, key: Hashable, nbytes: int) -> None:
        """Record ``key`` as resident with its measured bytes (the caller checked ``fits``)."""
        if not self.fits(nbytes):
            raise ValueError(f"{nbytes} resident bytes would pass the budget")
        self.release(key)
        self.resident[key] = nbytes
        self._resident_total += nbytes

    def release(self, key: Hashable) -> None:
        self._resident_total -= self.resident.pop(key, 0)


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    message: str


class LoadBackoff:
    """Failed loads and when each may be retried: ``base_s`` doubling up to ``max_s``.

    Args:
        base_s: wait after the first failure.
        max_s: longest wait.
        clock: monotonic seconds.
    """

    def __init__(
        self, base_s: float, max_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.base_s = base_s
        self.max_s = max_s
        self._clock = clock
        self._failures: dict[Hashable, _Failure] = {}

    def blocked(self, key: Hashable) -> tuple[str, int, float] | None:
        """(last error, attempts, seconds left) while ``key`` waits for its retry."""
        f = self._failures.get(key)
        if f is None:
            return None
        left = f.retry_at - self._clock()
        return (f.message, f.attempts, left) if left > 0 else None

    def failed(self, key: Hashable, message: str) -> float:
        """Record a failure; returns the seconds until the next attempt."""
        prev = self._failures.get(key)
        attempts = prev.attempts + 1 if prev else 1
        delay = min(self.max_s, self.base_s * 2 ** (attempts - 1))
        self._failures[key] = _Failure(attempts, self._clock() + delay, message)
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def failures(self) -> dict[Hashable, tuple[str, int, float]]:
        """Every remembered failure: (last error, attempts, seconds until retry, >= 0)."""
        now = self._clock()
        return {
            k: (f.message, f.attempts, max(0.0, f.retry_at - now))
            for k, f in self._failures.items()
        }


@dataclass
class PoolStats:
    """The pool's counters, read by ``monitoring.collectors.PoolCollector`` at scrape time."""

    loads: collections.Counter[str] = field(default_factory=collections.Counter)  # outcome
    evictions: collections.Counter[str] = field(default_factory=collections.Counter)  # reason
    load_buckets: list[int] = field(default_factory=lambda: [0] * len(LOAD_BUCKETS))
    load_count: int = 0
    load_sum: float = 0.0
    requests: collections.Counter[Key] = field(default_factory=collections.Counter)
    rows: collections.Counter[Key] = field(default_factory=collections.Counter)
    errors: collections.Counter[Key] = field(default_factory=collections.Counter)
    timeouts: collections.Counter[Key] = field(default_factory=collections.Counter)
    load_seconds: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=10_000)
    )

    def observe_load(self, seconds: float) -> None:
        i = bisect.bisect_left(LOAD_BUCKETS, seconds)
        if i < len(self.load_buckets):
            self.load_buckets[i] += 1
        self.load_count += 1
        self.load_sum += seconds
        self.load_seconds.append(seconds)
