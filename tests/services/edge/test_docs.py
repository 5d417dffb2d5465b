"""/docs.json is cached and rebuilt only when the models or routes it describes change;
/docs renders it with the Swagger UI files the installed BentoML bundles."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from services.edge.docs import ASSET_PREFIX, ASSETS, ApiDocs, swagger_ui_dir
from services.edge.http import GatewayApp
from services.registry.catalog import ModelCatalog
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Runner:
    def __init__(self) -> None:
        self.loaded: dict[tuple[str, str], dict[str, Any]] = {}

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]:
        return dict(self.loaded)


@pytest.fixture
def parts(tmp_path: Path) -> SimpleNamespace:
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.register("fraud", b"v1", schema=FRAUD_SCHEMA, stage="production")
    catalog = ModelCatalog(registry)
    catalog.pin(registry.get("fraud"))
    predictor = SimpleNamespace(catalog=catalog, runner=Runner(), settings=Settings())
    app = GatewayApp()
    rollouts: dict[str, Any] = {}
    clock = Clock()
    docs = ApiDocs(app, predictor, rollout_states=lambda: rollouts, ttl_s=10.0, clock=clock)  # type: ignore[arg-type]
    docs.register(app)
    return SimpleNamespace(
        registry=registry, catalog=catalog, predictor=predictor, app=app, docs=docs,
        rollouts=rollouts, clock=clock,
    )  # fmt: skip


async def served(docs: ApiDocs) -> dict[str, str]:
    doc = orjson.loads(await docs.document())
    predict = doc["components"]["schemas"]
    return {
        name.removeprefix("Predict."): schema["properties"]["version"]["enum"]
        for name, schema in predict.items()
        if name.startswith("Predict.")
    } | {"_info": doc["info"]["description"]}


async def test_the_document_is_cached_between_changes(parts: SimpleNamespace) -> None:
    docs = parts.docs
    first = await docs.document()
    assert await docs.document() is first and docs.builds == 1
    # The TTL passes with nothing changed: the registry is listed again, nothing rebuilt.
    parts.clock.now += 11
    assert await docs.document() is first and docs.builds == 1


async def test_a_new_version_loaded_or_pinned_rebuilds_it(parts: SimpleNamespace) -> None:
    docs = parts.docs
    await docs.document()
    parts.registry.register("fraud", b"v2", schema=FRAUD_SCHEMA)
    # Within the TTL and with nothing visible in memory, the cached document stands.
    assert (await served(docs))["fraud"] == ["1"] and docs.builds == 1
    parts.predictor.runner.loaded[("fraud", "2")] = {"loaded": True}  # a model was loaded
    after = await served(docs)
    assert after["fraud"] == ["1", "2"] and docs.builds == 2
    assert "| `fraud` | 1 |" in after["_info"]  # version 1 is still the one served


async def test_a_rollout_rebuilds_it_with_the_new_primary(parts: SimpleNamespace) -> None:
    docs = parts.docs
    parts.registry.register("fraud", b"v2", schema=FRAUD_SCHEMA)
    assert "| `fraud` | 1 |" in (await served(docs))["_info"]
    parts.rollouts["fraud"] = SimpleNamespace(primary="2", revision=3)
    assert "| `fraud` | 2 |" in (await served(docs))["_info"] and docs.builds == 2


async def test_a_model_registered_elsewhere_appears_after_the_ttl(parts: SimpleNamespace) -> None:
    docs = parts.docs
    await docs.document()
    parts.registry.register("fraud-eu", b"eu", schema=FRAUD_SCHEMA)
    assert "fraud-eu" not in await served(docs)
    parts.clock.now += 11
    assert (await served(docs))["fraud-eu"] == ["1"] and docs.builds == 2


async def test_a_new_route_rebuilds_it(parts: SimpleNamespace) -> None:
    docs = parts.docs
    doc = orjson.loads(await docs.document())
    assert "/gpu" not in doc["paths"] and "/docs.json" in doc["paths"]

    async def gpu(body: bytes, scope: dict[str, Any]) -> Any:
        return None

    parts.app.add_route("GET", "/gpu", gpu)
    assert "/gpu" in orjson.loads(await docs.document())["paths"]


async def test_a_registry_failure_serves_the_last_document(
    parts: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.errors import StoreError, UnavailableError

    docs = parts.docs
    first = await docs.document()

    def broken(*args: Any) -> list[str]:
        raise StoreError("store down")

    monkeypatch.setattr(parts.registry, "list_models", broken)
    parts.clock.now += 11
    assert await docs.document() == first
    fresh = ApiDocs(parts.app, parts.predictor, clock=parts.clock)
    with pytest.raises(UnavailableError, match="registry cannot be read"):
        await fresh.document()


def test_bentoml_ships_the_swagger_ui_files() -> None:
    """/docs renders with these; a BentoML without them would leave only the fallback."""
    folder = swagger_ui_dir()
    assert folder is not None
    bundle = (folder / "swagger-ui-bundle.js").read_text(errors="replace")
    major = int(bundle.split('PACKAGE_VERSION:"')[1].split(".")[0])
    assert major >= 5  # Swagger UI 5 renders OpenAPI 3.1


async def test_docs_page_and_assets(parts: SimpleNamespace) -> None:
    docs = parts.docs
    page = await docs.docs_page(b"", {})
    assert page.status == 200 and b"SwaggerUIBundle" in page.body
    assert b'url: "docs.json"' in page.body and b"http" not in page.body.split(b"<body>")[1]
    for name, media in ASSETS.items():
        resp = await parts.app._routes[("GET", ASSET_PREFIX + name)](b"", {})
        assert resp.status == 200 and len(resp.body) > 10_000
        assert (b"content-type", media) in resp.headers


async def test_docs_page_without_swagger_ui_links_the_json(
    parts: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import services.edge.docs as docs_module

    monkeypatch.setattr(docs_module, "swagger_ui_dir", lambda: None)
    page = await parts.docs.docs_page(b"", {})
    assert page.status == 200 and b'href="docs.json"' in page.body
