"""The model registry: versions of each model with their metadata and artifact.

Layout in the artifact store::

    <model>/<version>/meta.json       ModelVersion as JSON (written last: the commit mark)
    <model>/<version>/<artifact>      model.onnx or model.plan
    <model>/<version>/reference.npz   optional: the reference sample of drift reports (input
                                      features and predictions, written at registration)

Versions are increasing integers ("1", "2", ...), as in Triton's model repository. The
artifact's sha256 is recorded at registration and verified at every load. Only ONNX and
TensorRT artifacts are registered: nothing is unpickled at serving time.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from services.errors import (
    ArtifactIntegrityError,
    ConflictError,
    InvalidInputError,
    ModelNotFoundError,
)
from services.registry.schema import ModelSchema
from services.registry.stores import ArtifactStore, BentoModelStore

logger = logging.getLogger(__name__)

ModelFormat = Literal["onnx", "tensorrt"]
Stage = Literal["staging", "production", "archived"]
_ARTIFACT_FILE = {"onnx": "model.onnx", "tensorrt": "model.plan"}
REFERENCE_FILE = "reference.npz"
_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class ModelVersion(BaseModel):
    """One registered version of a model."""

    name: str
    version: str
    format: ModelFormat = "onnx"
    artifact: str = "model.onnx"
    sha256: str
    size_bytes: int
    model_schema: ModelSchema = Field(alias="schema")
    created: datetime
    stage: Stage = "staging"
    metrics: dict[str, Any] = Field(default_factory=dict)
    parity: dict[str, Any] | None = None
    description: str | None = None

    model_config = {"populate_by_name": True}

    @property
    def key(self) -> tuple[str, str]:
        """(model, version): the model pool's key."""
        return (self.name, self.version)

    def public(self) -> dict[str, Any]:
        """As shown by ``GET /models``."""
        return self.model_dump(mode="json", by_alias=True)


_ORT_TYPES = {
    "tensor(float)": "FP32",
    "tensor(float16)": "FP16",
    "tensor(double)": "FP64",
    "tensor(int64)": "INT64",
    "tensor(int32)": "INT32",
    "tensor(int8)": "INT8",
    "tensor(uint8)": "UINT8",
    "tensor(bool)": "BOOL",
    "tensor(string)": "BYTES",
}


def check_onnx_artifact(artifact: bytes, schema: ModelSchema) -> None:
    """Refuse an ONNX artifact whose graph does not take and give ``schema``'s tensors.

    Every input must match by name, datatype and rank, and each axis fixed on both sides
    must have the same size (-1, dynamic, matches any); every output the schema names
    must exist.

    Raises:
        InvalidInputError: not a loadable ONNX graph, or a mismatch, named in the message.
    """
    import onnxruntime as ort  # the serving backend: always installed

    try:
        session = ort.InferenceSession(artifact, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for a bad graph
        raise InvalidInputError(f"not a loadable ONNX model: {exc}", field="file") from exc
    graph = {i.name: i for i in session.get_inputs()}
    wanted = {t.name: t for t in schema.inputs}
    if set(graph) != set(wanted):
        raise InvalidInputError(
            f"the ONNX graph takes inputs {sorted(graph)}; the schema needs {sorted(wanted)}",
            field="file",
        )
    for name, spec in wanted.items():
        given = graph[name]
        dims = [d if isinstance(d, int) else -1 for d in given.shape]
        datatype = _ORT_TYPES.get(given.type, given.type)
        if (
            datatype != spec.datatype
            or len(dims) != len(spec.shape)
            or any(
                -1 not in (have, want) and have != want
                for have, want in zip(dims, spec.shape, strict=True)
            )
        ):
            raise InvalidInputError(
                f"input {name!r} of the ONNX graph is {datatype} {dims}; the schema's is "
                f"{spec.datatype} {spec.shape} (-1: any)",
                field="file",
            )
    outputs = {o.name for o in session.get_outputs()}
    missing = [t.name for t in schema.outputs if t.name not in outputs]
    if missing:
        raise InvalidInputError(
            f"the ONNX graph lacks outputs {missing} of the schema (it gives {sorted(outputs)})",
            field="file",
        )


def validate_model_name(name: str) -> str:
    """Model names: lower-case letters, digits, '-', '_', '.'; at most 64 characters."""
    if not name or len(name) > 64 or not set(name) <= _NAME_OK or name[0] in "-_.":
        raise InvalidInputError(
            f"invalid model name {name!r}: use lower-case letters, digits, '-', '_' or '.'",
            field="model",
        )
    return name


_VERSION_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")
MAX_VERSION_LENGTH = 64


def validate_version(version: str, *, field: str = "version") -> str:
    """Versions: letters, digits, '-', '_', '.'; at most 64 characters, not starting with '.'.

    A version is a path segment of the artifact store: nothing that could name another
    folder (a '/', '..', a NUL byte, control characters) reaches it.
    """
    if (
        not isinstance(version, str)
        or not version
        or len(version) > MAX_VERSION_LENGTH
        or not set(version) <= _VERSION_OK
        or version[0] in "-_."
    ):
        shown = version[:80] if isinstance(version, str) else version
        raise InvalidInputError(
            f"invalid version {shown!r}: use at most {MAX_VERSION_LENGTH} letters, digits, "
            "'-', '_' or '.'",
            field=field,
        )
    return version


class ModelRegistry:
    """Registers, lists and loads model versions in an ``ArtifactStore``.

    Args:
        store: where metadata and artifacts live.
    """

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store

    # -- writing -------------------------------------------------------------------
    def register(
        self,
        name: str,
        artifact: bytes,
        *,
        schema: ModelSchema,
        format: ModelFormat = "onnx",
        version: str | None = None,
        stage: Stage = "staging",
        metrics: dict[str, Any] | None = None,
        parity: dict[str, Any] | None = None,
        description: str | None = None,
        reference: bytes | None = None,
    ) -> ModelVersion:
        """Store ``artifact`` as a new version of ``name`` and return its metadata.

        ``reference``: the version's reference sample for drift reports (an opaque blob,
        ``monitoring.reference`` writes and reads it), stored beside the artifact.
        """
        validate_model_name(name)
        existing = self._versions(name)
        if version is None:
            version = str(max((int(v) for v in existing if v.isdigit()), default=0) + 1)
        elif version in existing:
            raise ConflictError(f"version {version!r} of model {name!r} exists already")
        art = _ARTIFACT_FILE[format]
        mv = ModelVersion(
            name=name,
            version=version,
            format=format,
            artifact=art,
            sha256=hashlib.sha256(artifact).hexdigest(),
            size_bytes=len(artifact),
            model_schema=schema,
            created=datetime.now(UTC),
            stage=stage,
            metrics=metrics or {},
            parity=parity,
            description=description,
        )
        self.store.put(f"{name}/{version}/{art}", artifact)
        if reference is not None:  # before the metadata, which commits the version
            self.store.put(f"{name}/{version}/{REFERENCE_FILE}", reference)
        self._write_meta(mv)
        logger.info("registered %s version %s (%s, %d bytes)", name, version, format, len(artifact))
        return mv

    def set_stage(self, name: str, version: str, stage: Stage) -> ModelVersion:
        """Move a version to ``stage``; promoting to production archives the previous one."""
        mv = self.get(name, version)
        if stage == "production":
            for other in self.list_versions(name):
                if other.stage == "production" and other.version != version:
                    self._write_meta(other.model_copy(update={"stage": "archived"}))
        mv = mv.model_copy(update={"stage": stage})
        self._write_meta(mv)
        return mv

    def _write_meta(self, mv: ModelVersion) -> None:
        self.store.put(
            f"{mv.name}/{mv.version}/meta.json",
            orjson.dumps(mv.model_dump(mode="json", by_alias=True)),
        )

    # -- reading -------------------------------------------------------------------
    def _versions(self, name: str) -> list[str]:
        return sorted(
            {k.split("/")[1] for k in self.store.list(f"{name}/") if k.endswith("/meta.json")},
            key=_version_order,
        )

    def list_models(self) -> list[str]:
        """Names of all registered models."""
        return sorted({k.split("/")[0] for k in self.store.list() if k.endswith("/meta.json")})

    def list_versions(self, name: str) -> list[ModelVersion]:
        """All versions of ``name``, oldest first."""
        return [self._read_meta(name, v) for v in self._versions(name)]

    def get(self, name: str, version: str | None = None) -> ModelVersion:
        """A version of ``name``; without ``version``, the newest production version,
        else the newest version. Raises ``ModelNotFoundError``."""
        if version is not None:
            return self._read_meta(name, version)
        versions = self.list_versions(name)
        if not versions:
            raise ModelNotFoundError(name)
        production = [v for v in versions if v.stage == "production"]
        return (production or versions)[-1]

    def _read_meta(self, name: str, version: str) -> ModelVersion:
        try:
            raw = self.store.get(f"{name}/{version}/meta.json")
        except KeyError:
            raise ModelNotFoundError(name, version) from None
        return ModelVersion.model_validate(orjson.loads(raw))

    def load_artifact(self, mv: ModelVersion) -> bytes:
        """The artifact's bytes, verified against the recorded sha256."""
        key = f"{mv.name}/{mv.version}/{mv.artifact}"
        try:
            data = self.store.get(key)
        except KeyError:
            raise ArtifactIntegrityError(
                f"artifact of {mv.name} version {mv.version} is missing from {self.store.url}",
                model=mv.name,
                version=mv.version,
            ) from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != mv.sha256:
            raise ArtifactIntegrityError(
                f"artifact of {mv.name} version {mv.version} is corrupt: sha256 {digest[:12]}... "
                f"does not match the registered {mv.sha256[:12]}...",
                model=mv.name,
                version=mv.version,
            )
        return data

    # -- reference samples -----------------------------------------------------------
    def put_reference(self, name: str, version: str, data: bytes) -> None:
        """Store (or replace) the reference sample of a registered version."""
        self._read_meta(name, version)  # ModelNotFoundError for an unknown version
        self.store.put(f"{name}/{version}/{REFERENCE_FILE}", data)

    def load_reference(self, mv: ModelVersion) -> bytes | None:
        """The version's reference sample, or None when it was registered without one."""
        try:
            return self.store.get(f"{mv.name}/{mv.version}/{REFERENCE_FILE}")
        except KeyError:
            return None

    # -- BentoML model store --------------------------------------------------------
    def export_to_bentoml(self, name: str, version: str | None = None) -> str:
        """Save a version into BentoML's model store as ``servekit-<name>:<version>``,
        so that ``bentoml build`` can pack it. Returns the BentoML tag."""
        import bentoml
        from bentoml.exceptions import NotFound

        mv = self.get(name, version)
        tag = f"{BentoModelStore.PREFIX}{mv.name}:{mv.version}"
        reference = self.load_reference(mv)
        labels = {
            "servekit": "true",
            "sha256": mv.sha256,
            "format": mv.format,
            # A reference sample stored after an export makes the next export redo it.
            "reference": "none" if reference is None else hashlib.sha256(reference).hexdigest(),
        }
        try:
            existing = bentoml.models.get(tag)
            current = existing.info.labels
            if all(current.get(k) == labels[k] for k in ("sha256", "reference")):
                return tag
            bentoml.models.delete(tag)
        except NotFound:
            pass
        data = self.load_artifact(mv)
        # Files beside the artifact (a text model's tokenizer.json, the reference sample)
        # travel with it.
        prefix = f"{mv.name}/{mv.version}/"
        extras = [
            k for k in self.store.list(prefix) if k[len(prefix) :] not in (mv.artifact, "meta.json")
        ]
        with bentoml.models.create(tag, labels=labels) as bm:
            root = Path(bm.path)
            for key in extras:
                target = root / key[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.store.get(key))
            (root / mv.artifact).write_bytes(data)
            (root / "meta.json").write_bytes(
                orjson.dumps(mv.model_dump(mode="json", by_alias=True))
            )
        return tag


def _version_order(v: str) -> tuple[int, str]:
    return (int(v), "") if v.isdigit() else (1 << 62, v)


def copy_tree(src: ArtifactStore, dst: ArtifactStore) -> int:
    """Copy every blob of ``src`` into ``dst`` (artifacts before metadata). Returns count."""
    keys = src.list()
    keys.sort(key=lambda k: k.endswith("meta.json"))
    for key in keys:
        dst.put(key, src.get(key))
    return len(keys)
