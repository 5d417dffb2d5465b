"""Backend sessions and the memory they hold: creating a session and measuring it,
estimating a session's size before its load, and freeing sessions once unloaded.

A model's resident bytes are measured around the creation of its session (the
allocator's in-use bytes, ``services.runner.budget.heap_bytes``), with session creation
and release serialized (``MeasureGate``) so the difference belongs to that model alone.
Before a load, a session's size is its last measurement, or an estimate from the
artifact's size and the session bytes per artifact byte learned from earlier loads.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from services.registry.versions import ModelRegistry, ModelVersion
from services.runner.backends import Backend
from services.runner.budget import MeasureGate
from services.settings import MultiModelSettings

logger = logging.getLogger(__name__)

BackendFactory = Callable[[ModelVersion, bytes], Backend]
# Artifacts smaller than this teach nothing about the ratio: their sessions are all
# fixed overhead.
_LEARN_FROM_BYTES = 64 * 1024


class FreshSession:
    """A session just created, handed over once: futures and tracebacks that keep this
    box alive must not keep the session (and its memory) alive after an eviction."""

    __slots__ = ("backend", "measured", "seconds")

    def __init__(self, backend: Backend, measured: int, seconds: float) -> None:
        self.backend: Backend | None = backend
        self.measured = measured
        self.seconds = seconds

    def take(self) -> Backend:
        """The session; the box no longer holds it."""
        backend, self.backend = self.backend, None
        assert backend is not None
        return backend


class Released:
    """A session that was created but not published, queued for release like an
    evicted model's."""

    __slots__ = ("backend",)

    def __init__(self, backend: Backend) -> None:
        self.backend: Backend | None = backend


class SessionMaker:
    """Creates backend sessions one at a time, measures them, and frees released ones.

    Args:
        registry: where artifacts come from.
        factory: builds a backend from metadata and artifact bytes.
        probe: bytes the process holds, read around each session's creation.
        mm: the multi-model settings (the size estimate's ratio and fixed bytes).
        warm_up: run once before the first session is created (``None``: nothing).
    """

    def __init__(
        self,
        registry: ModelRegistry,
        factory: BackendFactory,
        probe: Callable[[], int],
        mm: MultiModelSettings,
        warm_up: Callable[[], None] | None = None,
    ) -> None:
        self.registry = registry
        self._factory = factory
        self._probe = probe
        self._mm = mm
        self._warm_up = warm_up
        self._gate = MeasureGate()  # fetches side by side; create/release one at a time
        self._lock = threading.Lock()
        self._to_release: list[Any] = []  # holders whose ``backend`` is to be dropped
        self._measured: dict[tuple[str, str], int] = {}  # kept across evictions
        self._ratio = mm.estimate_ratio  # learned: session bytes per artifact byte

    def create(self, mv: ModelVersion) -> FreshSession:
        """Fetch ``mv``'s artifact and create its session, measured (blocking: run it in
        a loader thread)."""
        t0 = time.perf_counter()
        with self._gate.shared():
            data = self.registry.load_artifact(mv)
        with self._gate.exclusive():
            self._drain()
            if self._warm_up is not None:
                self._warm_up()
                self._warm_up = None
            refs = sys.getrefcount(data)
            before = self._probe()
            backend = self._factory(mv, data)
            measured = max(0, self._probe() - before)
            # The artifact's bytes were allocated before the window; a backend that keeps
            # them (ONNX Runtime's InferenceSession does, when built from bytes) holds them.
            if sys.getrefcount(data) > refs:
                measured += len(data)
        return FreshSession(backend, measured, time.perf_counter() - t0)

    def estimate(self, mv: ModelVersion) -> int:
        """Bytes to reserve for loading ``mv``: its artifact plus its expected session."""
        session = self._measured.get(mv.key)
        if session is None:
            session = int(self._mm.estimate_fixed_bytes + self._ratio * mv.size_bytes)
        return mv.size_bytes + session

    def learn(self, mv: ModelVersion, measured: int) -> None:
        """Remember ``mv``'s measured session and learn the ratio from it."""
        self._measured[mv.key] = measured
        if mv.size_bytes >= _LEARN_FROM_BYTES:
            session_ratio = (measured - self._mm.estimate_fixed_bytes) / mv.size_bytes
            self._ratio = min(max(self._ratio, session_ratio), 4 * self._mm.estimate_ratio)

    def release(self, holder: Any) -> None:
        """Queue ``holder``'s session (its ``backend``) for release by the next loader
        step or ``release_now``."""
        with self._lock:
            self._to_release.append(holder)

    def release_now(self) -> None:
        """Free the queued sessions now."""
        with self._gate.exclusive():
            self._drain()

    def _drain(self) -> None:
        """Drop the queued sessions (inside ``_gate.exclusive()``, so no measurement sees
        a free that is not its own)."""
        with self._lock:
            gone, self._to_release = self._to_release, []
        for holder in gone:
            holder.backend = None
        del gone
