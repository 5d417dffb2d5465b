"""Artifact stores behind the model registry: a local folder, S3 (boto3), BentoML's store.

A store holds opaque blobs under ``/``-separated keys. ``open_store`` picks one from the
``SERVEKIT_MODEL_STORE`` setting: a path, ``s3://bucket/prefix`` or ``bentoml``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.errors import StoreError, UnavailableError

if TYPE_CHECKING:
    from services.settings import ServingSettings

logger = logging.getLogger(__name__)


class StoreUnavailableError(StoreError, UnavailableError):
    """The store cannot be reached now (connection refused or timed out, S3 answering
    5xx): a 503 with Retry-After, not a 500, for whatever needed it."""

    error_code = UnavailableError.error_code


def _s3_failure(what: str, exc: Exception) -> StoreError:
    """A botocore failure as a ``StoreError``: unavailable (503) when it is transient."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, BotoCoreError):
        return StoreUnavailableError(f"S3 unreachable: {what}: {exc}", retry_after=2)
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if int(status) >= 500:
            return StoreUnavailableError(f"S3 failed: {what}: {exc}", retry_after=2)
    return StoreError(f"S3 {what} failed: {exc}")


class ArtifactStore(ABC):
    """Blobs under keys like ``fraud/3/model.onnx``."""

    url: str

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The blob at ``key``; ``KeyError`` if absent, ``StoreError`` if the store fails."""

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write ``data`` at ``key`` (atomically: readers see all or nothing)."""

    @abstractmethod
    def list(self, prefix: str = "") -> list[str]:
        """Keys under ``prefix``, sorted."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key`` if present."""

    def local_path(self, key: str) -> Path | None:
        """A filesystem path holding the blob, when the store has one (no copy needed)."""
        return None


class LocalStore(ArtifactStore):
    """A folder on disk. Writes go to a temporary file renamed into place."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise StoreError(f"key {key!r} escapes the store")
        return path

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise KeyError(key) from None
        except OSError as exc:
            raise StoreError(f"cannot read {key!r} from {self.url}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.exists():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in self.root.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        ]
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.exists() else None


class S3Store(ArtifactStore):
    """An S3 bucket (or any S3-compatible endpoint) through boto3."""

    def __init__(
        self,
        url: str,
        *,
        endpoint_url: str | None = None,
        client: Any = None,
        connect_timeout_s: float = 2.0,
        read_timeout_s: float = 10.0,
        max_attempts: int = 2,
    ) -> None:
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// url: {url}")
        bucket, _, prefix = url[5:].partition("/")
        self.url = url
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                config=Config(
                    connect_timeout=connect_timeout_s,
                    read_timeout=read_timeout_s,
                    retries={"max_attempts": max_attempts},
                ),
            )
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return bytes(resp["Body"].read())
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise KeyError(key) from None
            raise _s3_failure(f"get {key!r}", exc) from exc
        except BotoCoreError as exc:
            raise _s3_failure(f"get {key!r}", exc) from exc

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"S3 put {key!r} failed: {exc}") from exc

    def list(self, prefix: str = "") -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                keys.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise _s3_failure(f"list {prefix!r}", exc) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (ClientError, BotoCoreError) as exc:
            raise StoreError(f"S3 delete {key!r} failed: {exc}") from exc


class BentoModelStore(ArtifactStore):
    """Read-only view of BentoML's model store, as packed into a bento.

    ``registry.export_to_bentoml`` saves version ``v`` of model ``m`` as the BentoML model
    ``servekit-m:v`` holding the same files; ``bentoml build`` packs the ones the
    bentofile lists, and inside the bento this store serves them to the registry.
    """

    url = "bentoml"
    PREFIX = "servekit-"

    def _models(self) -> list[Any]:
        import bentoml

        return [m for m in bentoml.models.list() if m.tag.name.startswith(self.PREFIX)]

    def _split(self, key: str) -> tuple[str, str, str]:
        parts = key.split("/", 2)
        if len(parts) != 3:
            raise KeyError(key)
        return parts[0], parts[1], parts[2]

    def local_path(self, key: str) -> Path | None:
        import bentoml
        from bentoml.exceptions import NotFound

        name, version, file = self._split(key)
        try:
            model = bentoml.models.get(f"{self.PREFIX}{name}:{version}")
        except NotFound:
            return None
        path = Path(model.path_of(file))
        return path if path.exists() else None

    def get(self, key: str) -> bytes:
        path = self.local_path(key)
        if path is None:
            raise KeyError(key)
        return path.read_bytes()

    def put(self, key: str, data: bytes) -> None:
        raise StoreError("the BentoML model store is read-only here; use export_to_bentoml")

    def list(self, prefix: str = "") -> list[str]:
        keys = []
        for m in self._models():
            name = m.tag.name[len(self.PREFIX) :]
            root = Path(m.path)
            for p in root.rglob("*"):
                rel = p.relative_to(root).as_posix()
                if p.is_file() and not rel.startswith("model.yaml"):
                    keys.append(f"{name}/{m.tag.version}/{rel}")
        return sorted(k for k in keys if k.startswith(prefix))

    def delete(self, key: str) -> None:
        raise StoreError("the BentoML model store is read-only here")


def open_store(settings: ServingSettings) -> ArtifactStore:
    """The store named by ``settings.model_store``."""
    where = settings.model_store
    if where.startswith("s3://"):
        return S3Store(
            where,
            endpoint_url=settings.s3_endpoint_url,
            connect_timeout_s=settings.s3_connect_timeout_s,
            read_timeout_s=settings.s3_read_timeout_s,
            max_attempts=settings.s3_max_attempts,
        )
    if where == "bentoml":
        return BentoModelStore()
    return LocalStore(where)
