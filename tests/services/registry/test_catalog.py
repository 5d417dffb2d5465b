"""The catalog's cache of version lookups: bounded, misses cached for a short time."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from services.errors import InvalidInputError, ModelNotFoundError
from services.registry.catalog import ModelCatalog
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry


class CountingStore(LocalStore):
    """A real local store that counts reads per key."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.reads: dict[str, int] = {}

    def get(self, key: str) -> bytes:
        self.reads[key] = self.reads.get(key, 0) + 1
        return super().get(key)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> CountingStore:
    store = CountingStore(tmp_path)
    ModelRegistry(store).register("fraud", b"model-one", schema=FRAUD_SCHEMA)
    return store


def test_random_versions_leave_the_cache_at_its_bound(store: CountingStore) -> None:
    catalog = ModelCatalog(ModelRegistry(store), max_entries=256)

    async def main() -> None:
        for _ in range(50_000):
            with pytest.raises(ModelNotFoundError):
                await catalog.resolve("fraud", uuid.uuid4().hex)
        assert (await catalog.resolve("fraud", "1")).version == "1"

    asyncio.run(main())
    assert catalog.cached_entries() == 256


def test_a_repeated_miss_reads_the_store_once_per_negative_ttl(store: CountingStore) -> None:
    clock = FakeClock()
    catalog = ModelCatalog(ModelRegistry(store), ttl_s=10.0, negative_ttl_s=2.0, clock=clock)
    key = "fraud/77/meta.json"

    async def miss_many() -> None:
        for _ in range(100):
            with pytest.raises(ModelNotFoundError):
                await catalog.resolve("fraud", "77")

    asyncio.run(miss_many())
    assert store.reads[key] == 1
    clock.now += 1.9
    asyncio.run(miss_many())
    assert store.reads[key] == 1
    clock.now += 0.2  # past the negative TTL: read again, once
    asyncio.run(miss_many())
    assert store.reads[key] == 2


def test_hits_stay_for_the_positive_ttl_and_the_lru_keeps_recent_ones(
    store: CountingStore,
) -> None:
    clock = FakeClock()
    catalog = ModelCatalog(ModelRegistry(store), ttl_s=10.0, max_entries=16, clock=clock)
    key = "fraud/1/meta.json"

    async def main() -> None:
        await catalog.resolve("fraud", "1")
        for i in range(100):  # misses, interleaved with the hot version
            with pytest.raises(ModelNotFoundError):
                await catalog.resolve("fraud", f"x{i}")
            await catalog.resolve("fraud", "1")

    asyncio.run(main())
    assert store.reads[key] == 1
    clock.now += 10.1
    asyncio.run(catalog.resolve("fraud", "1"))
    assert store.reads[key] == 2


@pytest.mark.parametrize(
    "version", ["../1", "1/../../x", "a\x00b", "1\n", "\x7f", "", ".", "..", "v" * 65, "é"]
)
def test_malformed_versions_are_refused_without_a_store_read(
    store: CountingStore, version: str
) -> None:
    catalog = ModelCatalog(ModelRegistry(store))
    before = dict(store.reads)
    with pytest.raises(InvalidInputError) as err:
        asyncio.run(catalog.resolve("fraud", version))
    assert err.value.context["field"] == "version"
    assert store.reads == before
    assert catalog.cached_entries() == 0
