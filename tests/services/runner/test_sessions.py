"""Sessions: measured at creation (the artifact's bytes counted when the session keeps
them), estimated before a load from what earlier loads measured, freed when released."""

from __future__ import annotations

from pathlib import Path

from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry, ModelVersion
from services.runner.sessions import Released, SessionMaker
from services.settings import MultiModelSettings
from tests.fixtures.fake_backends import Heap, HeapBackend, heap_factory
from tests.fixtures.onnx_models import mlp_schema

KB = 1024


def register(root: Path, sizes: dict[str, int]) -> tuple[ModelRegistry, dict[str, ModelVersion]]:
    registry = ModelRegistry(LocalStore(root))
    return registry, {
        name: registry.register(name, bytes(size), schema=mlp_schema(1))
        for name, size in sizes.items()
    }


def maker(registry: ModelRegistry, heap: Heap, **mm: object) -> SessionMaker:
    settings = MultiModelSettings(**mm)  # type: ignore[arg-type]
    return SessionMaker(registry, heap_factory(heap, lambda mv: 3 * mv.size_bytes), heap, settings)


def test_create_measures_what_the_session_holds(tmp_path: Path) -> None:
    registry, mvs = register(tmp_path, {"a": 100 * KB})
    heap = Heap()
    fresh = maker(registry, heap).create(mvs["a"])
    assert fresh.measured == 300 * KB and fresh.seconds >= 0
    backend = fresh.take()
    assert isinstance(backend, HeapBackend) and fresh.backend is None


def test_a_session_that_keeps_the_artifact_is_charged_for_it(tmp_path: Path) -> None:
    registry, mvs = register(tmp_path, {"a": 10 * KB})
    heap = Heap()

    class Keeper(HeapBackend):
        def __init__(self, data: bytes) -> None:
            super().__init__(heap, 5 * KB)
            self.data = data

    sessions = SessionMaker(registry, lambda mv, data: Keeper(data), heap, MultiModelSettings())
    assert sessions.create(mvs["a"]).measured == 15 * KB


def test_estimates_learn_from_measurements(tmp_path: Path) -> None:
    registry, mvs = register(tmp_path, {"small": 10 * KB, "big": 100 * KB, "next": 200 * KB})
    sessions = maker(registry, Heap(), estimate_ratio=1.5, estimate_fixed_bytes=0)
    assert sessions.estimate(mvs["big"]) == 100 * KB + 150 * KB
    sessions.learn(mvs["small"], 10 * 10 * KB)  # too small to teach the ratio
    assert sessions.estimate(mvs["next"]) == 200 * KB + 300 * KB
    assert sessions.estimate(mvs["small"]) == 10 * KB + 100 * KB  # its own measurement
    sessions.learn(mvs["big"], 300 * KB)  # ratio 3
    assert sessions.estimate(mvs["next"]) == 200 * KB + 600 * KB
    sessions.learn(mvs["big"], 100 * 100 * KB)  # capped at 4x the configured ratio
    assert sessions.estimate(mvs["next"]) == 200 * KB + 6 * 200 * KB


def test_released_sessions_are_freed_by_release_now(tmp_path: Path) -> None:
    registry, mvs = register(tmp_path, {"a": 10 * KB})
    heap = Heap()
    sessions = maker(registry, heap)
    holder = Released(sessions.create(mvs["a"]).take())
    assert heap.used == 30 * KB
    sessions.release(holder)
    assert heap.used == 30 * KB  # queued, not yet freed
    sessions.release_now()
    assert heap.used == 0 and holder.backend is None
