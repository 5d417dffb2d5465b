"""The scrape-time collectors: one for a model pool (batcher, memory books, loads,
per-version counters), one for rollout routing; names and labels as served on /metrics."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitoring.collectors import PoolCollector, RouterCollector
from services.errors import ModelLoadError
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.runner.pool import ModelPool
from services.settings import MultiModelSettings, Settings
from tests.fixtures.fake_backends import Heap, feeds, heap_factory
from tests.fixtures.onnx_models import mlp_schema

KB = 1000


def scrape(*collectors: object) -> str:
    prom = CollectorRegistry()
    for c in collectors:
        prom.register(c)  # type: ignore[arg-type]
    return generate_latest(prom).decode()


def families(text: str) -> list[tuple[str, str]]:
    return [
        (line.split()[2], line.split()[3])
        for line in text.splitlines()
        if line.startswith("# TYPE")
    ]


@pytest.fixture
def fake_pool(tmp_path: Path) -> ModelPool:
    """A pool on a 100 KB budget of fake sessions twice their artifact's size."""
    registry = ModelRegistry(LocalStore(tmp_path))
    for name in ("a", "gone"):
        registry.register(name, bytes(5 * KB), schema=mlp_schema(1))
    registry.store.delete("gone/1/model.onnx")
    heap = Heap()
    settings = Settings(
        multimodel=MultiModelSettings(
            memory_budget_bytes=100 * KB, estimate_ratio=2.0, estimate_fixed_bytes=0
        )
    )
    return ModelPool(
        registry,
        settings,
        backend_factory=heap_factory(heap, lambda mv: 2 * mv.size_bytes),
        memory_probe=heap,
    )


async def test_pool_metrics(fake_pool: ModelPool) -> None:
    pool = fake_pool
    for _ in range(2):
        await pool.infer(pool.registry.get("a"), feeds(1.0), 1)
    with pytest.raises(ModelLoadError, match="gone"):
        await pool.infer(pool.registry.get("gone"), feeds(1.0), 1)
    text = scrape(PoolCollector(pool))
    assert 'servekit_model_resident_bytes{model="a",version="1"} 10000.0' in text
    assert 'servekit_model_loads_total{outcome="ok"} 1.0' in text
    assert 'servekit_model_loads_total{outcome="error"} 1.0' in text
    assert 'servekit_model_requests_total{model="a",version="1"} 2.0' in text
    assert 'servekit_model_errors_total{model="gone",version="1"} 1.0' in text
    assert "servekit_model_load_seconds_count 1.0" in text
    assert "servekit_pool_budget_bytes 100000.0" in text
    assert 'servekit_pool_bytes{kind="resident"} 10000.0' in text
    assert "servekit_queue_rows 0.0" in text
    assert "servekit_shed_requests_total 0.0" in text
    assert "servekit_inline_batches_total " in text and "servekit_inline_stops_total 0.0" in text
    await pool.close()


async def test_one_collector_exports_everything_about_a_pool(fake_pool: ModelPool) -> None:
    assert families(scrape(PoolCollector(fake_pool))) == [
        ("servekit_queue_rows", "gauge"),
        ("servekit_inline_batches_total", "counter"),
        ("servekit_inline_stops_total", "counter"),
        ("servekit_shed_requests_total", "counter"),
        ("servekit_admission_refusals_total", "counter"),
        ("servekit_admission_drops_total", "counter"),
        ("servekit_pool_budget_bytes", "gauge"),
        ("servekit_pool_bytes", "gauge"),
        ("servekit_model_resident_bytes", "gauge"),
        ("servekit_model_loads_total", "counter"),
        ("servekit_model_evictions_total", "counter"),
        ("servekit_model_load_seconds", "histogram"),
        ("servekit_model_requests_total", "counter"),
        ("servekit_model_rows_total", "counter"),
        ("servekit_model_errors_total", "counter"),
        ("servekit_model_timeouts_total", "counter"),
    ]
    await fake_pool.close()


def router_parts(states: dict[str, object]) -> tuple[object, object, object]:
    router = types.SimpleNamespace(
        shadow_sent=1,
        shadow_dropped=2,
        shadow_completed=3,
        shadow_errors=4,
        shadow_timeouts=5,
        shadow_queued=6,
        feedback_errors=1,
        feedback_dropped=2,
        assignments={("fraud", "user"): 11, ("fraud", "request"): 12},
    )
    log = types.SimpleNamespace(appended=7, written=8, dropped=9, buffered=10)
    return router, log, types.SimpleNamespace(states=states)


def test_router_metrics() -> None:
    state = types.SimpleNamespace(mode="canary", percent=5)
    text = scrape(RouterCollector(*router_parts({"fraud": state})))  # type: ignore[arg-type]
    samples = [line for line in text.splitlines() if not line.startswith("#")]
    assert samples == [
        'servekit_shadow_requests_total{result="sent"} 1.0',
        'servekit_shadow_requests_total{result="dropped"} 2.0',
        'servekit_shadow_requests_total{result="completed"} 3.0',
        'servekit_shadow_requests_total{result="errors"} 4.0',
        'servekit_shadow_requests_total{result="timeouts"} 5.0',
        "servekit_shadow_queue_depth 6.0",
        'servekit_prediction_log_entries_total{result="appended"} 7.0',
        'servekit_prediction_log_entries_total{result="written"} 8.0',
        'servekit_prediction_log_entries_total{result="dropped"} 9.0',
        "servekit_prediction_log_buffered 10.0",
        "servekit_feedback_write_failures_total 3.0",
        'servekit_rollout_percent{mode="canary",model="fraud"} 5.0',
        'servekit_assignments_total{model="fraud",unit="request"} 12.0',
        'servekit_assignments_total{model="fraud",unit="user"} 11.0',
    ]


def test_rollout_percent_without_rollouts_has_no_samples() -> None:
    text = scrape(RouterCollector(*router_parts({})))  # type: ignore[arg-type]
    assert "# TYPE servekit_rollout_percent gauge" in text
    assert "servekit_rollout_percent{" not in text
