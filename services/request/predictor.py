"""The gateway's request logic, free of HTTP and BentoML: validate, resolve, infer, answer.

``Predictor`` takes a ``Runner`` (the colocated model pool, or a remote ModelRunner
service) so both deployment shapes share this code.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from monitoring.metrics import ServingMetrics
from services.errors import InvalidInputError, PayloadTooLargeError, ServekitError
from services.registry.catalog import ModelCatalog
from services.registry.versions import ModelVersion
from services.request.assembly import VectorAssembler
from services.request.encoding import decode_predictions
from services.request.tokenizer import TextEncoder
from services.rollout.routing import RouteDecision
from services.rollout.shadow_outputs import comparable_outputs
from services.rollout.signing import new_request_id
from services.rollout.transitions import RolloutState, served_stage
from services.runner.feeds import Feeds
from services.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from services.rollout.routing import TrafficRouter
    from services.rollout.signing import RequestSigner
    from services.state.cache import PredictionCache
    from services.state.features import FeatureStore

_PREDICT_KEYS = frozenset({"model", "version", "inputs", "user_id", "request_id"})


@dataclass
class _Answer:
    """A prediction's parts that routing needs: what to answer, and what to shadow/log."""

    predictions: list[dict[str, Any]]
    feeds: Feeds
    outputs: Feeds
    inputs: np.ndarray | None
    backend_ms: float = float("nan")
    """Time in the runner (NaN when every row came from the cache)."""


class Runner(Protocol):
    """Runs a batch of rows of one model version (colocated pool or remote service)."""

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds: ...

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]: ...


class Predictor:
    """Serves ``/predict``, ``/models`` and the Open Inference Protocol routes.

    Args:
        catalog: resolves model names and versions.
        runner: runs inference.
        settings: servekit's settings (limits).
        metrics: where request metrics go.
        cache: the Redis prediction cache (``None``: off).
        features: the feature store (``None``: feature fields take their defaults).
        router: rollout routing, shadowing and prediction logging (``None``: off).
    """

    def __init__(
        self,
        catalog: ModelCatalog,
        runner: Runner,
        settings: Settings,
        metrics: ServingMetrics,
        *,
        cache: PredictionCache | None = None,
        features: FeatureStore | None = None,
        router: TrafficRouter | None = None,
    ) -> None:
        self.catalog = catalog
        self.runner = runner
        self.settings = settings
        self.metrics = metrics
        self.max_records = settings.serving.max_records
        self._encoders: dict[tuple[str, str], VectorAssembler | TextEncoder] = {}
        self.cache = cache
        self.features = features
        self.router = router
        self.signer: RequestSigner | None = None
        """Signs each answer's request id, with what its outcome is counted for, for
        ``POST /feedback`` (``None``: unsigned)."""
        self.rollout_states: Callable[[], Mapping[str, RolloutState]] | None = None
        """Every model's rollout state (the follower's copy): what ``/models`` calls served."""
        self.ready = False

    async def resolve(self, model: Any, version: Any = None) -> ModelVersion:
        """The version a request names (default: the served one)."""
        if not isinstance(model, str):
            raise InvalidInputError("'model' must be a string naming a model", field="model")
        if version is not None and not isinstance(version, str):
            raise InvalidInputError("'version' must be a string", field="version")
        cached = self.catalog.resolve_cached(model, version)
        return cached if cached is not None else await self.catalog.resolve(model, version)

    def _encoder(self, mv: ModelVersion) -> VectorAssembler | TextEncoder:
        enc = self._encoders.get(mv.key)
        if enc is None:
            if mv.model_schema.kind == "text":
                # Tokenization happens here, in the gateway: the runner sees token tensors.
                text_enc = TextEncoder.for_version(self.catalog.registry, mv)
                self._encoders[mv.key] = text_enc
                return text_enc
            if mv.model_schema.kind != "tabular":
                raise InvalidInputError(
                    f"model {mv.name!r} takes {mv.model_schema.kind} input; "
                    f"use POST /v2/models/{mv.name}/infer",
                    field="model",
                )
            enc = VectorAssembler(mv.model_schema, self.features)
            self._encoders[mv.key] = enc
        return enc

    async def predict(self, body: Any) -> dict[str, Any]:
        """``POST /predict``: records in, one prediction per record out."""
        t0 = time.perf_counter()
        inputs, request_id, user_id = self._check_body(body)
        model, explicit = body.get("model"), body.get("version")
        if self.router is not None and explicit is None and isinstance(model, str):
            decision = self.router.decide(model, user_id, request_id)
        else:
            decision = RouteDecision(explicit, "primary", "user" if user_id else "request")
        mv = await self.resolve(model, decision.version)
        encoder = self._encoder(mv)
        try:
            if isinstance(encoder, TextEncoder):
                answer = await self._predict_text(mv, encoder, inputs)
            else:
                answer = await self._predict_tabular(mv, encoder, inputs, user_id)
        except Exception as exc:
            # Only the server's failures count against the variant: a client's bad records
            # (4xx) must not be able to roll back a good candidate.
            if self.router is not None and server_fault(exc):
                ms = (time.perf_counter() - t0) * 1000
                self.router.record(decision, mv, request_id, ms, True, None, None)
            raise
        elapsed = time.perf_counter() - t0
        self.metrics.observe_request(mv.name, mv.version, "predict", elapsed, len(inputs))
        if self.router is not None:
            self._record_and_shadow(decision, mv, request_id, elapsed * 1000, answer, len(inputs))
        out = {
            "model": mv.name,
            "version": mv.version,
            "predictions": answer.predictions,
            "request_id": request_id,
            "variant": decision.variant,
            "assignment": decision.unit,
        }
        if self.signer is not None:
            # The id carries its attribution: an outcome needs nothing written here.
            out["signed_request_id"] = self.signer.sign(
                request_id,
                model=mv.name,
                variant=decision.variant,
                version=mv.version,
                experiment_id=decision.experiment_id,
            )
        return out

    def _check_body(self, body: Any) -> tuple[list[Any], str, str | None]:
        """The records, the request id (given or new) and the user id of a ``/predict`` body."""
        if not isinstance(body, dict):
            raise InvalidInputError("the request must be a JSON object", field="body")
        extra = body.keys() - _PREDICT_KEYS
        if extra:
            name = sorted(extra)[0]
            raise InvalidInputError(
                f"unknown field {name!r} (expected: model, inputs, user_id, request_id, version)",
                field=name,
            )
        inputs = body.get("inputs")
        if not isinstance(inputs, list):
            raise InvalidInputError("'inputs' must be a list of records", field="inputs")
        if not inputs:
            raise InvalidInputError("'inputs' is empty", field="inputs")
        if len(inputs) > self.max_records:
            raise PayloadTooLargeError(
                f"{len(inputs)} records is over the limit of {self.max_records} per request",
                limit=self.max_records,
                field="inputs",
            )
        for key in ("user_id", "request_id"):
            value = body.get(key)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 200):
                raise InvalidInputError(
                    f"'{key}' must be a string of 1 to 200 characters", field=key
                )
        return inputs, body.get("request_id") or new_request_id(), body.get("user_id")

    def _record_and_shadow(
        self,
        decision: RouteDecision,
        mv: ModelVersion,
        request_id: str,
        elapsed_ms: float,
        answer: _Answer,
        rows: int,
    ) -> None:
        """Count and log the answer for its variant; send the input to a shadow candidate."""
        assert self.router is not None
        self.router.record(
            decision,
            mv,
            request_id,
            elapsed_ms,
            False,
            answer.inputs,
            answer.predictions,
        )
        if decision.shadow_version:
            self.router.shadow(
                mv,
                decision.shadow_version,
                answer.feeds,
                rows,
                request_id,
                comparable_outputs(mv, answer.outputs),
                answer.backend_ms,
            )

    async def _predict_tabular(
        self, mv: ModelVersion, assembler: VectorAssembler, records: list[Any], user_id: str | None
    ) -> _Answer:
        """Assemble the vectors (request + features), answer from the cache or the runner."""
        schema = mv.model_schema
        x, flags = await assembler.assemble(records, user_id=user_id)
        input_name = schema.inputs[0].name
        output_name = schema.probability_output or schema.outputs[0].name
        backend_ms: list[float] = []

        async def compute(rows: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            outputs = await self.runner.infer(mv, {input_name: rows}, len(rows))
            backend_ms.append((time.perf_counter() - t0) * 1000.0)
            return np.asarray(outputs[output_name], dtype=np.float32)

        if self.cache is not None:
            # The artifact's digest is part of the key: two registries (or a re-registered
            # version) that reuse a version number never share entries.
            cache_version = f"{mv.version}-{mv.sha256[:16]}"
            y, cached = await self.cache.get_or_compute(mv.name, cache_version, x, compute)
        else:
            y, cached = await compute(x), np.zeros(len(records), dtype=bool)
        predictions = decode_predictions(schema, {output_name: y})
        for pred, hit, flag in zip(predictions, cached, flags, strict=True):
            pred["cached"] = bool(hit)
            if not flag.ok:
                pred["features"] = flag.public()
        # The shadow latency gate compares runner time with the candidate's runner time.
        backend = sum(backend_ms) if backend_ms else float("nan")
        return _Answer(predictions, {input_name: x}, {output_name: y}, x, backend)

    async def _predict_text(
        self, mv: ModelVersion, encoder: TextEncoder, records: list[Any]
    ) -> _Answer:
        """Tokenize, answer each text from the cache or the runner (one batch for misses)."""
        texts = encoder.texts(records)

        backend_ms: list[float] = []
        encoded: list[tuple[list[str], Feeds]] = []

        async def compute_texts(batch: list[str]) -> np.ndarray:
            feeds = encoder.encode(batch)
            encoded.append((batch, feeds))
            t0 = time.perf_counter()
            outputs = await self.runner.infer(mv, feeds, len(batch))
            backend_ms.append((time.perf_counter() - t0) * 1000.0)
            return encoder.embeddings(outputs, feeds)

        if self.cache is None:
            embeddings, cached = await compute_texts(texts), np.zeros(len(texts), dtype=bool)
        else:
            # A text's canonical input bytes are its UTF-8 text (tokenization is fixed per
            # version): its 128-bit digest, viewed as 4 float32, is the cache's key row.
            digests = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
            key_rows = np.frombuffer(b"".join(digests), dtype="<f4").reshape(len(texts), 4)
            text_of = dict(zip(digests, texts, strict=True))

            async def compute(rows: np.ndarray) -> np.ndarray:
                return await compute_texts([text_of[r.astype("<f4").tobytes()] for r in rows])

            cache_version = f"{mv.version}-{mv.sha256[:16]}"
            embeddings, cached = await self.cache.get_or_compute(
                mv.name, cache_version, key_rows, compute
            )
        predictions = [
            {"embedding": row.tolist(), "cached": bool(hit)}
            for row, hit in zip(embeddings, cached, strict=True)
        ]
        # For a shadow candidate: the token feeds and the primary's pooled embeddings.
        # (Tokenized once: the runner's feeds when every text went to the runner together.)
        feeds: Feeds = {}
        if self.router is not None:
            feeds = encoded[0][1] if encoded and encoded[0][0] == texts else encoder.encode(texts)
        output = mv.model_schema.outputs[0].name
        backend = sum(backend_ms) if backend_ms else float("nan")
        return _Answer(predictions, feeds, {output: embeddings}, None, backend)

    async def models(self) -> dict[str, Any]:
        """``GET /models``: every registered model, its versions and their schemas."""
        import asyncio

        registry = self.catalog.registry
        names = await asyncio.to_thread(registry.list_models)
        loaded = self.runner.describe()
        served = {mv.name: mv.version for mv in self.catalog.pinned()}
        states = self.rollout_states() if self.rollout_states is not None else {}
        out = []
        for name in names:
            versions = await asyncio.to_thread(registry.list_versions, name)
            state = states.get(name)
            out.append(
                {
                    "name": name,
                    "served_version": state.primary
                    if state is not None
                    else served.get(name) or (versions[-1].version if versions else None),
                    "rollout": _rollout_summary(state),
                    "cache": self.cache.describe(name) if self.cache is not None else None,
                    "versions": [
                        {
                            "version": v.version,
                            "format": v.format,
                            "stage": served_stage(v.version, v.stage, state),
                            "registry_stage": v.stage,
                            "created": v.created.isoformat(),
                            "sha256": v.sha256,
                            "metrics": v.metrics,
                            "input_schema": v.model_schema.public(),
                            "runtime": loaded.get(v.key, {"loaded": False}),
                        }
                        for v in versions
                    ],
                }
            )
        return {"models": out}


def server_fault(exc: BaseException) -> bool:
    """Whether a failed request is the server's fault (5xx, a runner error, a timeout)."""
    if isinstance(exc, ServekitError):
        return exc.error_code >= 500
    return True


def _rollout_summary(state: RolloutState | None) -> dict[str, Any] | None:
    if state is None:
        return None
    return {"mode": state.mode, "candidate": state.candidate, "percent": state.percent}


class LocalRunner:
    """The colocated shape: the model pool lives in the gateway's process."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        return await self.pool.infer(mv, feeds, rows)

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.pool.describe()
