"""Flow fixtures: Prefect's test harness, and a rollout rig that serves the real fraud model.

The rig wires what the gateway wires (rollout follower, ``TrafficRouter``, ``ModelPool``
over a registry holding the demo fraud model as versions 1 and 2, ``PredictionLog``,
``FeedbackStore``) against the test Redis, and drives synthetic traffic through it the
way ``Predictor.predict`` does: decide, resolve, infer, record, shadow. A candidate is
made bad by wrapping the runner (flipped labels, errors, added latency): a fake runner
is passed in, Redis stays real.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis.asyncio as aioredis
from prefect.settings import PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW, temporary_settings
from prefect.testing.utilities import prefect_test_harness

from flows.recipes.synthetic import TransactionGenerator
from services.registry.catalog import ModelCatalog
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry, ModelVersion
from services.request.encoding import RecordEncoder
from services.rollout.feedback import FeedbackStore
from services.rollout.follower import RolloutFollower
from services.rollout.prediction_log import PredictionLog
from services.rollout.routing import TrafficRouter
from services.rollout.shadow_outputs import comparable_outputs
from services.rollout.signing import RequestSigner
from services.rollout.state import RolloutStore
from services.runner.feeds import Feeds
from services.runner.pool import ModelPool
from services.settings import BatchSettings, Settings

MODEL = "fraud"


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> str:
    """The flows' own database (the next one after ``--redis-url``'s): rollouts they run,
    promote and roll back must not reach the gateways other test modules keep serving."""
    from urllib.parse import urlsplit, urlunsplit

    import redis as sync_redis

    parts = urlsplit(request.config.getoption("--redis-url"))
    db = int(parts.path.strip("/") or 0)
    url = urlunsplit(parts._replace(path=f"/{(db + 1) % 16}"))
    sync_redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    return url


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """Every flow in this folder runs against a temporary local Prefect API.

    Tasks are also tested alone, outside any flow run: their logs stay local.
    """
    with (
        prefect_test_harness(server_startup_timeout=120),  # a loaded 2-core CI machine
        temporary_settings({PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}),
    ):
        yield


@pytest.fixture(scope="session")
def rollout_store_root(fraud_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo model store with version 2 of fraud: the same ONNX bytes."""
    root = tmp_path_factory.mktemp("rollout_store") / "store"
    shutil.copytree(fraud_store, root)
    registry = ModelRegistry(LocalStore(root))
    v1 = registry.get(MODEL, "1")
    registry.register(MODEL, registry.load_artifact(v1), schema=v1.model_schema, version="2")
    return root


@pytest.fixture(scope="session")
def retrained_store_root(fraud_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo model store whose fraud version 2 was retrained with seed 1."""
    from flows.recipes.demo_models import train_fraud

    root = tmp_path_factory.mktemp("retrained_store") / "store"
    shutil.copytree(fraud_store, root)
    registry = ModelRegistry(LocalStore(root))
    data, metrics = train_fraud(seed=1)
    schema = registry.get(MODEL, "1").model_schema
    registry.register(MODEL, data, schema=schema, version="2", metrics=metrics)
    return root


class FaultyRunner:
    """The pool's runner, with one version made bad: flipped labels, errors, latency.

    Args:
        pool: the real model pool.
        bad_version: the version the faults apply to (None: none).
        flip: swap the two classes in every answer.
        error_rate: share of calls that raise.
        extra_latency_s: added to every call (an asyncio sleep, as a slow backend).
        seed: of the error draw.
    """

    def __init__(
        self,
        pool: ModelPool,
        bad_version: str | None = None,
        *,
        flip: bool = False,
        error_rate: float = 0.0,
        extra_latency_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.pool = pool
        self.bad_version = bad_version
        self.flip = flip
        self.error_rate = error_rate
        self.extra_latency_s = extra_latency_s
        self._rng = random.Random(seed)

    async def infer(self, mv: ModelVersion, feeds: Feeds, rows: int) -> Feeds:
        outputs = await self.pool.infer(mv, feeds, rows)
        if mv.version != self.bad_version:
            return outputs
        if self.extra_latency_s:
            await asyncio.sleep(self.extra_latency_s)
        if self.error_rate and self._rng.random() < self.error_rate:
            raise RuntimeError("candidate backend failed")
        if self.flip:
            outputs = {
                "label": 1 - outputs["label"],
                "probabilities": outputs["probabilities"][:, ::-1].copy(),
            }
        return outputs

    def describe(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}


@dataclass
class TrafficStats:
    """What the callers saw."""

    requests: int = 0
    errors: int = 0
    outcomes: int = 0


class Rig:
    """The serving side of a rollout, on the test Redis, with a traffic driver."""

    def __init__(self, client: aioredis.Redis, registry: ModelRegistry, runner_kw: Any) -> None:
        self.redis = client
        self.registry = registry
        self.catalog = ModelCatalog(registry)
        # Batching off: a shadow copy queued behind a live request would add the batch
        # window to both latencies and make the latency gates noisy.
        # No queueing budget: the rig's traffic shares the loop with Prefect's server, whose
        # stalls would drop requests (admission is tested in tests/services/runner).
        settings = Settings(batch=BatchSettings(enabled=False, queue_budget_ms=0))
        self.pool = ModelPool(registry, settings, catalog=self.catalog)
        self.runner = FaultyRunner(self.pool, **runner_kw)
        self.store = RolloutStore(client)
        self.follower = RolloutFollower(client, refresh_seconds=1.0)
        self.log = PredictionLog(client, maxlen=100_000, flush_interval_s=0.01)
        self.feedback = FeedbackStore(client)
        self.router = TrafficRouter(
            self.follower,
            self.runner,
            self.log,
            self.feedback,
            self.catalog.resolve,
            shadow_timeout_s=2.0,
        )
        # The registered schema, not the module's constant: the rows must match the
        # artifact. Feature-store fields (after the request's) take their defaults.
        schema = registry.get(MODEL, "1").model_schema
        self.encoder = RecordEncoder(schema)
        self.feature_defaults = np.array(
            [[float(f.default or 0.0) for f in schema.fields if f.source != "request"]],
            dtype=np.float32,
        )
        self.generator = TransactionGenerator(seed=3)
        self.stats = TrafficStats()
        self.signer = RequestSigner(None)
        self._outcomes: list[tuple[str, bool]] = []

    async def start(self) -> None:
        for version in ("1", "2"):  # loaded up front: a first-use load is not latency
            await asyncio.to_thread(self.pool.load_sync, self.registry.get(MODEL, version))
        await self.store.set_primary(MODEL, "1", reason="test")
        await self.follower.start()
        await self.router.start()

    async def close(self) -> None:
        await self.router.close()
        await self.follower.stop()
        await self.pool.close()

    async def request(self, record: dict[str, Any]) -> None:
        """One /predict of one record, as ``Predictor.predict`` does it; then its outcome."""
        request_id = uuid.uuid4().hex
        decision = self.router.decide(MODEL, record["user_id"], request_id)
        mv = await self.catalog.resolve(MODEL, decision.version)
        request = self.encoder.encode([record], ignore=frozenset({"user_id", "is_fraud"}))
        matrix = np.hstack([request, self.feature_defaults])
        feeds = {"features": matrix}
        t0 = time.perf_counter()
        outputs: Feeds | None = None
        try:
            outputs = await self.runner.infer(mv, feeds, 1)
        except RuntimeError:
            self.stats.errors += 1
        latency_ms = (time.perf_counter() - t0) * 1000.0
        self.stats.requests += 1
        self.router.record(decision, mv, request_id, latency_ms, outputs is None, matrix, outputs)
        if outputs is None:
            return
        if decision.shadow_version is not None:
            self.router.shadow(
                mv,
                decision.shadow_version,
                feeds,
                1,
                request_id,
                comparable_outputs(mv, outputs),
                latency_ms,
            )
        # The business outcome: the fraud call was right. It arrives after the prediction
        # was counted (the feedback write is a background task), as a label would.
        correct = int(outputs["label"][0]) == int(record["is_fraud"])
        signed = self.signer.sign(
            request_id,
            model=mv.name,
            variant=decision.variant,
            version=mv.version,
            experiment_id=decision.experiment_id,
        )
        self._outcomes.append((signed, correct))

    async def drive(self, stop: asyncio.Event, batch: int = 50) -> None:
        """Send traffic until ``stop`` is set, recording outcomes batch by batch."""
        while not stop.is_set():
            self._outcomes = []
            for record in self.generator.records(batch, with_label=True):
                await self.request(record)
            await self.router.drain()
            for signed, correct in self._outcomes:  # what POST /feedback does
                await self.feedback.record_outcome(self.signer.verify(signed), correct)
                self.stats.outcomes += 1
            await asyncio.sleep(0)

    async def run_with_traffic(self, flow_call: Any) -> Any:
        """Await ``flow_call`` while traffic flows; returns its result (or raises)."""
        stop = asyncio.Event()
        driver = asyncio.create_task(self.drive(stop))
        try:
            return await flow_call
        finally:
            stop.set()
            await driver


@pytest.fixture
async def rig_factory(
    aredis: aioredis.Redis, rollout_store_root: Path, retrained_store_root: Path
) -> AsyncIterator[Callable[..., Awaitable[Rig]]]:
    """``await rig_factory(bad_version="2", flip=True)``: a started rig, closed after.

    ``retrained=True``: version 2 is the model retrained with another seed (else it is
    version 1's artifact).
    """
    rigs: list[Rig] = []

    async def make(*, retrained: bool = False, **runner_kw: Any) -> Rig:
        root = retrained_store_root if retrained else rollout_store_root
        rig = Rig(aredis, ModelRegistry(LocalStore(root)), runner_kw)
        await rig.start()
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        await rig.close()
