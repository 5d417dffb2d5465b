"""Reference samples beside the artifact: local folder, S3 (moto over HTTP), BentoML's store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from flows.recipes.demo_models import FRAUD_SCHEMA
from services.errors import ModelNotFoundError
from services.registry.stores import LocalStore, S3Store
from services.registry.versions import REFERENCE_FILE, ModelRegistry
from tests.conftest import free_port


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(params=["local", "s3"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> ModelRegistry:
    if request.param == "local":
        return ModelRegistry(LocalStore(tmp_path))
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch = request.getfixturevalue("monkeypatch")
    for name, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        monkeypatch.setenv(name, value)
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return ModelRegistry(S3Store(f"s3://{bucket}/servekit", endpoint_url=endpoint))


def test_reference_is_stored_beside_the_artifact(registry: ModelRegistry) -> None:
    mv = registry.register("fraud", b"model", schema=FRAUD_SCHEMA, reference=b"sample")
    assert registry.load_reference(mv) == b"sample"
    assert f"fraud/1/{REFERENCE_FILE}" in registry.store.list("fraud/1/")
    # The version list is unchanged by the extra file.
    assert [v.version for v in registry.list_versions("fraud")] == ["1"]


def test_a_version_without_reference_says_none(registry: ModelRegistry) -> None:
    mv = registry.register("fraud", b"model", schema=FRAUD_SCHEMA)
    assert registry.load_reference(mv) is None
    registry.put_reference("fraud", "1", b"later")
    assert registry.load_reference(mv) == b"later"
    with pytest.raises(ModelNotFoundError):
        registry.put_reference("fraud", "9", b"no such version")


def test_reference_travels_into_bentoml_store(tmp_path: Path) -> None:
    import bentoml

    from services.registry.stores import BentoModelStore

    name = f"ref-{uuid.uuid4().hex[:8]}"
    registry = ModelRegistry(LocalStore(tmp_path))
    registry.register(name, b"model", schema=FRAUD_SCHEMA)
    tag = registry.export_to_bentoml(name)
    try:
        inside = ModelRegistry(BentoModelStore())
        assert inside.load_reference(inside.get(name, "1")) is None
        # A reference stored after the export: the next export carries it.
        registry.put_reference(name, "1", b"sample")
        assert registry.export_to_bentoml(name) == tag
        assert inside.load_reference(inside.get(name, "1")) == b"sample"
        assert bentoml.models.get(tag).info.labels["reference"] != "none"
    finally:
        bentoml.models.delete(tag)
