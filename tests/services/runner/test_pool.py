"""The model pool: load once on first use, measured memory, LRU under a budget, idle
unload with an injected clock, pinned models kept."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.errors import ModelLoadError
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry, ModelVersion
from services.runner.budget import heap_bytes
from services.runner.pool import ModelPool
from services.settings import MultiModelSettings, Settings
from tests.fixtures.fake_backends import Heap, feeds, heap_factory
from tests.fixtures.onnx_models import expected, mlp_schema, register_mlp

KB = 1000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_settings(**mm: object) -> Settings:
    return Settings(multimodel=MultiModelSettings(**mm))  # type: ignore[arg-type]


def fake_registry(root: Path, sizes: dict[str, int]) -> ModelRegistry:
    """Models whose artifact is ``size // 2`` bytes; their fake session holds ``size``."""
    registry = ModelRegistry(LocalStore(root))
    for name, size in sizes.items():
        registry.register(name, bytes(size // 2), schema=mlp_schema(1))
    return registry


def fake_pool(
    registry: ModelRegistry, heap: Heap, clock: Clock | None = None, **mm: object
) -> ModelPool:
    mm.setdefault("estimate_ratio", 2.0)
    mm.setdefault("estimate_fixed_bytes", 0)
    return ModelPool(
        registry,
        make_settings(**mm),
        backend_factory=heap_factory(heap, lambda mv: 2 * mv.size_bytes),
        memory_probe=heap,
        clock=clock or Clock(),
    )


async def use(pool: ModelPool, name: str, value: float = 1.0) -> float:
    mv = pool.registry.get(name)
    out = await pool.infer(mv, feeds(value), 1)
    return float(out["y"][0, 0])


def resident(pool: ModelPool) -> set[str]:
    return {k[0] for k in pool.loaded()}


# -- real ONNX Runtime sessions ----------------------------------------------------------


async def test_concurrent_first_requests_load_once(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    mv = register_mlp(registry, "mlp", 8, 64, seed=3)
    pool = ModelPool(registry, make_settings(memory_budget_bytes=50_000_000))
    x = np.arange(16, dtype=np.float32).reshape(2, 8)
    outs = await asyncio.gather(*(pool.infer(mv, {"x": x}, 2) for _ in range(20)))
    assert pool.stats.loads == {"ok": 1}
    for out in outs:
        np.testing.assert_allclose(out["y"], expected(8, 64, x, seed=3), rtol=1e-4)
    await pool.close()


async def test_resident_bytes_are_measured_not_the_file_size(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    big = register_mlp(registry, "big", 512, 1024)  # 2 MiB of weights
    tiny = register_mlp(registry, "tiny", 4, 4)  # a few hundred bytes on disk
    pool = ModelPool(registry, make_settings(memory_budget_bytes=100_000_000, idle_timeout_s=1))
    base = heap_bytes()
    await pool.get(big)
    await pool.get(tiny)
    lm_big, lm_tiny = pool.loaded()[big.key], pool.loaded()[tiny.key]
    # The weights, plus the artifact's bytes, which ONNX Runtime keeps for its session.
    assert 1.8 * big.size_bytes <= lm_big.resident_bytes <= 2.5 * big.size_bytes
    # The session's own structures dwarf a tiny file: a file-size guess would be far off.
    assert lm_tiny.resident_bytes > 10 * tiny.size_bytes
    assert lm_big.backend.nbytes == lm_big.resident_bytes
    assert pool.budget.resident_total == lm_big.resident_bytes + lm_tiny.resident_bytes
    # Unloading returns what was measured to the allocator.
    held = heap_bytes() - base
    lm_big_bytes, lm_tiny_bytes = lm_big.resident_bytes, lm_tiny.resident_bytes
    assert held >= 0.9 * (lm_big_bytes + lm_tiny_bytes)
    for lm in (lm_big, lm_tiny):
        lm.last_used = -1e9
    del lm_big, lm_tiny
    assert len(pool.evict_idle()) == 2
    pool.release_unloaded()
    freed = held - (heap_bytes() - base)
    assert freed >= 0.9 * (lm_big_bytes + lm_tiny_bytes)
    assert pool.budget.used == 0
    await pool.close()


# -- memory budget, LRU, idle, pinned (fake backends on a counted heap) ------------------


async def test_lru_eviction_keeps_the_budget(tmp_path: Path) -> None:
    heap = Heap()
    registry = fake_registry(tmp_path, {"a": 30 * KB, "b": 30 * KB, "c": 30 * KB, "d": 30 * KB})
    # Each load reserves artifact (15 KB) + estimated session (30 KB): 45 KB.
    pool = fake_pool(registry, heap, memory_budget_bytes=110 * KB)
    for name in "abc":
        assert await use(pool, name) == 2.0
    assert resident(pool) == {"a", "b", "c"}
    await use(pool, "a")  # b is now the least recently used
    await use(pool, "d")
    assert resident(pool) == {"a", "c", "d"}
    assert pool.stats.evictions == {"budget": 1}
    pool.release_unloaded()
    assert heap.used == pool.budget.resident_total == 90 * KB
    await pool.close()


async def test_pinned_models_are_never_evicted(tmp_path: Path) -> None:
    heap = Heap()
    clock = Clock()
    registry = fake_registry(tmp_path, {"p": 40 * KB, "a": 30 * KB, "b": 30 * KB})
    pool = fake_pool(registry, heap, clock, memory_budget_bytes=100 * KB)
    pool.preload(["p"])
    await use(pool, "a")
    await use(pool, "b")  # needs a's room, not p's
    assert resident(pool) == {"p", "b"}
    clock.now += 10 * 3600
    assert pool.evict_idle() == [("b", "1")]
    assert resident(pool) == {"p"}
    await pool.close()


async def test_idle_models_are_unloaded_after_the_timeout(tmp_path: Path) -> None:
    heap = Heap()
    clock = Clock()
    registry = fake_registry(tmp_path, {"a": 10 * KB, "b": 10 * KB})
    pool = fake_pool(registry, heap, clock)  # default idle timeout: 1 h
    await use(pool, "a")
    await use(pool, "b")
    clock.now += 3599
    assert pool.evict_idle() == []
    await use(pool, "a")
    clock.now += 2
    assert pool.evict_idle() == [("b", "1")]
    assert resident(pool) == {"a"}
    pool.release_unloaded()
    assert heap.used == 10 * KB  # a's session only
    assert pool.stats.evictions == {"idle": 1}
    # b comes back on its next use.
    assert await use(pool, "b", 4.0) == 8.0
    await pool.close()


async def test_a_session_larger_than_its_estimate_evicts_more(tmp_path: Path) -> None:
    heap = Heap()
    registry = fake_registry(tmp_path, {"a": 40 * KB, "b": 40 * KB, "fat": 10 * KB})
    pool = ModelPool(
        registry,
        make_settings(memory_budget_bytes=100 * KB, estimate_ratio=1.0, estimate_fixed_bytes=0),
        backend_factory=heap_factory(heap, lambda mv: 50 * KB if mv.name == "fat" else 40 * KB),
        memory_probe=heap,
    )
    await use(pool, "a")
    await use(pool, "b")
    # fat reserves 5 KB + 5 KB, measures 50 KB: a is evicted before fat is published.
    await use(pool, "fat")
    assert resident(pool) == {"b", "fat"}
    assert pool.budget.used <= 100 * KB
    pool.release_unloaded()
    assert heap.used == 90 * KB
    await pool.close()


async def test_a_model_over_the_budget_fails_only_its_own_requests(tmp_path: Path) -> None:
    heap = Heap()
    registry = fake_registry(tmp_path, {"ok": 10 * KB, "huge": 200 * KB})
    pool = fake_pool(registry, heap, memory_budget_bytes=100 * KB)
    with pytest.raises(ModelLoadError) as err:
        await use(pool, "huge")
    assert err.value.context["model"] == "huge"
    assert "memory budget" in err.value.message
    assert await use(pool, "ok") == 2.0
    assert heap.used == 10 * KB
    await pool.close()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    budget=st.integers(60 * KB, 250 * KB),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("use"), st.integers(0, 7)),
            st.tuples(st.just("burst"), st.lists(st.integers(0, 7), min_size=2, max_size=6)),
            st.tuples(st.just("tick"), st.sampled_from([1.0, 1800.0, 3601.0])),
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_budget_is_never_exceeded(
    budget: int, ops: list[tuple[str, object]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    sizes = [4, 10, 20, 34, 50, 62, 80, 110]  # KB of session; artifacts are half that
    registry = _budget_registry(tmp_path_factory, sizes)
    asyncio.run(_run_budget_ops(registry, budget, ops))


_REGISTRIES: dict[str, ModelRegistry] = {}


def _budget_registry(factory: pytest.TempPathFactory, sizes: list[int]) -> ModelRegistry:
    key = repr(sizes)
    if key not in _REGISTRIES:
        _REGISTRIES[key] = fake_registry(
            factory.mktemp("budget"), {f"m{i}": s * KB for i, s in enumerate(sizes)}
        )
    return _REGISTRIES[key]


async def _run_budget_ops(
    registry: ModelRegistry, budget: int, ops: list[tuple[str, object]]
) -> None:
    heap = Heap()
    clock = Clock()
    violations: list[str] = []
    pool: ModelPool

    def session_bytes(mv: ModelVersion) -> int:
        # Checked while the load is in flight, inside the loader thread.
        if heap.used + 2 * mv.size_bytes > budget:
            violations.append(f"{mv.name}: heap {heap.used} + {2 * mv.size_bytes} > {budget}")
        if pool.budget.used > budget:
            violations.append(f"books {pool.budget.used} > {budget}")
        return 2 * mv.size_bytes

    pool = ModelPool(
        registry,
        make_settings(
            memory_budget_bytes=budget,
            estimate_ratio=2.0,
            estimate_fixed_bytes=0,
            load_timeout_s=5,
            retry_backoff_s=0.001,
        ),
        backend_factory=heap_factory(heap, session_bytes),
        memory_probe=heap,
        clock=clock,
    )
    versions = [registry.get(f"m{i}") for i in range(8)]

    async def one(i: int) -> None:
        try:
            out = await pool.infer(versions[i], feeds(float(i)), 1)
            assert out["y"][0, 0] == 2.0 * i
        except ModelLoadError as exc:  # too big for the budget, or no room at the moment
            assert exc.context["model"] == f"m{i}"

    for op, arg in ops:
        if op == "use":
            await one(arg)  # type: ignore[arg-type]
        elif op == "burst":
            await asyncio.gather(*(one(i) for i in arg))  # type: ignore[union-attr]
        else:
            clock.now += arg  # type: ignore[operator]
            pool.evict_idle()
        assert pool.budget.used <= budget
        pool.release_unloaded()
        assert heap.used == pool.budget.resident_total <= budget
    assert not violations, violations
    await pool.close()


# -- what GET /models shows (/metrics: tests/monitoring/test_collectors.py) ------------


async def test_describe(tmp_path: Path) -> None:
    heap = Heap()
    registry = fake_registry(tmp_path, {"a": 10 * KB, "gone": 10 * KB})
    registry.store.delete("gone/1/model.onnx")
    pool = fake_pool(registry, heap, memory_budget_bytes=100 * KB)
    await use(pool, "a")
    await use(pool, "a")
    with pytest.raises(ModelLoadError, match="gone"):
        await use(pool, "gone")
    info = pool.describe()
    a = info[("a", "1")]
    assert a["loaded"] and a["resident_bytes"] == 10 * KB and a["requests"] == 2
    assert {"last_used", "loaded_at", "load_seconds", "healthy"} <= a.keys()
    gone = info[("gone", "1")]
    assert gone["loaded"] is False and gone["state"] == "failed" and "missing" in gone["error"]
    await pool.close()
