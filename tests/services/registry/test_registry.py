"""The model registry on a local folder, on S3 (moto's server over HTTP) and BentoML's store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from services.errors import (
    ArtifactIntegrityError,
    ConflictError,
    InvalidInputError,
    ModelNotFoundError,
    StoreError,
)
from services.registry.stores import LocalStore, S3Store
from services.registry.versions import ModelRegistry, copy_tree
from tests.conftest import free_port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def s3_store(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Store:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    return S3Store(f"s3://{bucket}/servekit", endpoint_url=s3_endpoint)


@pytest.fixture(params=["local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "local":
        return ModelRegistry(LocalStore(tmp_path))
    return ModelRegistry(request.getfixturevalue("s3_store"))


def test_register_list_get(registry: ModelRegistry) -> None:
    v1 = registry.register("fraud", b"model-one", schema=FRAUD_SCHEMA, metrics={"auc": 0.8})
    v2 = registry.register("fraud", b"model-two", schema=FRAUD_SCHEMA)
    assert (v1.version, v2.version) == ("1", "2")
    assert registry.list_models() == ["fraud"]
    assert [v.version for v in registry.list_versions("fraud")] == ["1", "2"]
    got = registry.get("fraud", "1")
    assert got.metrics == {"auc": 0.8}
    assert got.model_schema.fields[1].categories == FRAUD_SCHEMA.fields[1].categories
    assert got.sha256 == v1.sha256
    assert registry.load_artifact(got) == b"model-one"


def test_default_version_prefers_production(registry: ModelRegistry) -> None:
    registry.register("fraud", b"a", schema=FRAUD_SCHEMA, stage="production")
    registry.register("fraud", b"b", schema=FRAUD_SCHEMA)
    assert registry.get("fraud").version == "1"
    registry.set_stage("fraud", "2", "production")
    assert registry.get("fraud").version == "2"
    assert registry.get("fraud", "1").stage == "archived"


def test_unknown_model_and_version(registry: ModelRegistry) -> None:
    with pytest.raises(ModelNotFoundError):
        registry.get("nope")
    registry.register("fraud", b"a", schema=FRAUD_SCHEMA)
    with pytest.raises(ModelNotFoundError) as err:
        registry.get("fraud", "9")
    assert err.value.version == "9"


def test_explicit_version_conflict_and_bad_name(registry: ModelRegistry) -> None:
    registry.register("fraud", b"a", schema=FRAUD_SCHEMA, version="7")
    with pytest.raises(ConflictError):
        registry.register("fraud", b"b", schema=FRAUD_SCHEMA, version="7")
    with pytest.raises(InvalidInputError):
        registry.register("../etc", b"b", schema=FRAUD_SCHEMA)


def test_corrupt_artifact_is_refused(registry: ModelRegistry) -> None:
    mv = registry.register("fraud", b"good bytes", schema=FRAUD_SCHEMA)
    registry.store.put("fraud/1/model.onnx", b"evil bytes")
    with pytest.raises(ArtifactIntegrityError) as err:
        registry.load_artifact(mv)
    assert "does not match" in err.value.message


def test_missing_artifact_is_refused(registry: ModelRegistry) -> None:
    mv = registry.register("fraud", b"good bytes", schema=FRAUD_SCHEMA)
    registry.store.delete("fraud/1/model.onnx")
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        registry.load_artifact(mv)


def test_s3_down_is_a_store_error() -> None:
    store = S3Store("s3://b/p", endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StoreError):
        store.get("fraud/1/meta.json")


def test_copy_local_to_s3(tmp_path: Path, s3_store: S3Store) -> None:
    local = ModelRegistry(LocalStore(tmp_path))
    local.register("fraud", b"abc", schema=FRAUD_SCHEMA, stage="production")
    assert copy_tree(local.store, s3_store) == 2
    remote = ModelRegistry(s3_store)
    assert remote.load_artifact(remote.get("fraud")) == b"abc"


def test_export_to_bentoml_and_read_back(tmp_path: Path, fraud_store: Path) -> None:
    import bentoml

    from services.registry.stores import BentoModelStore

    registry = ModelRegistry(LocalStore(fraud_store))
    tag = registry.export_to_bentoml("fraud")
    assert tag == "servekit-fraud:1"
    assert bentoml.models.get(tag).info.labels["sha256"] == registry.get("fraud").sha256
    assert registry.export_to_bentoml("fraud") == tag  # idempotent
    inside = ModelRegistry(BentoModelStore())
    mv = inside.get("fraud", "1")
    assert inside.load_artifact(mv) == registry.load_artifact(registry.get("fraud"))
