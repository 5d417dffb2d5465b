"""A shared runner's isolation: a bad artifact, a hanging model or an unreachable S3
fails only the model concerned, with a 503 naming it, and others keep serving."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from services.edge.http import error_response
from services.errors import ModelLoadError, ModelTimeoutError
from services.registry.stores import LocalStore, S3Store
from services.registry.versions import ModelRegistry, ModelVersion
from services.runner.backends import create_backend
from services.runner.pool import ModelPool
from services.settings import ModelLimits, MultiModelSettings, Settings
from tests.conftest import free_port
from tests.fixtures.onnx_models import (
    expected,
    mlp_onnx,
    mlp_schema,
    register_mlp,
    register_spin,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def x(rows: int = 1, d_in: int = 8) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, d_in), dtype=np.float32)}


def assert_503_naming(exc: ModelLoadError | ModelTimeoutError, model: str) -> None:
    resp = error_response(exc)
    assert resp.status == 503
    assert (b"retry-after", str(max(1, round(exc.retry_after))).encode()) in resp.headers
    assert f'"model":"{model}"'.encode() in resp.body
    assert model in exc.message


async def test_a_corrupt_artifact_fails_only_its_model_and_is_retried(tmp_path: Path) -> None:
    registry = ModelRegistry(LocalStore(tmp_path))
    good = register_mlp(registry, "good", 8, 16)
    bad = register_mlp(registry, "bad", 8, 16, seed=1)
    junk = registry.register("junk", b"not an onnx graph", schema=mlp_schema(8))
    original = registry.store.get("bad/1/model.onnx")
    registry.store.put("bad/1/model.onnx", mlp_onnx(8, 16, seed=2))  # sha256 mismatch
    clock = Clock()
    pool = ModelPool(
        registry, Settings(multimodel=MultiModelSettings(retry_backoff_s=2)), clock=clock
    )

    results = await asyncio.gather(
        pool.infer(good, x(), 1), pool.infer(bad, x(), 1), pool.infer(junk, x(), 1),
        return_exceptions=True,
    )  # fmt: skip
    np.testing.assert_allclose(results[0]["y"], expected(8, 16, x()["x"]), rtol=1e-4)
    assert isinstance(results[1], ModelLoadError) and "corrupt" in results[1].message
    assert isinstance(results[2], ModelLoadError) and "ONNX Runtime" in results[2].message
    assert_503_naming(results[1], "bad")
    assert_503_naming(results[2], "junk")

    # During the backoff the failure is answered at once, without a new load.
    with pytest.raises(ModelLoadError, match="1 failed attempt; next in 2 s") as err:
        await pool.infer(bad, x(), 1)
    assert err.value.retry_after == 2
    assert pool.stats.loads["error"] == 2
    clock.now += 2.5  # retried after the backoff: fails again, the backoff doubles
    with pytest.raises(ModelLoadError, match="corrupt"):
        await pool.infer(bad, x(), 1)
    assert pool.describe()[bad.key]["failed_attempts"] == 2
    with pytest.raises(ModelLoadError, match="next in 4 s"):
        await pool.infer(bad, x(), 1)

    registry.store.put("bad/1/model.onnx", original)  # repaired
    clock.now += 4.5
    out = await pool.infer(bad, x(), 1)
    np.testing.assert_allclose(out["y"], expected(8, 16, x()["x"], seed=1), rtol=1e-4)
    assert pool.describe()[bad.key]["loaded"] is True
    await pool.close()


async def test_a_hanging_model_does_not_stall_the_others(tmp_path: Path) -> None:
    """One model's backend hangs: its requests get 503 after its timeout and then fail
    fast; the other models' p99 stays far below that timeout; it recovers on return."""
    registry = ModelRegistry(LocalStore(tmp_path))
    fast = [register_mlp(registry, f"fast{i}", 8, 32, seed=i) for i in range(3)]
    slow = register_mlp(registry, "slow", 8, 32, seed=9)
    release = threading.Event()
    settings = Settings(
        multimodel=MultiModelSettings(
            threads=2, per_model={"slow": ModelLimits(timeout_s=0.3, max_concurrency=1)}
        )
    )

    def factory(mv: ModelVersion, data: bytes):  # type: ignore[no-untyped-def]
        backend = create_backend(mv, data, settings.serving)
        if mv.name == "slow":
            inner = backend.run

            def hang(feeds):  # type: ignore[no-untyped-def]
                release.wait(30)  # stuck until the test lets it go
                return inner(feeds)

            backend.run = hang  # type: ignore[method-assign]
            backend.stoppable = False  # a Python wait cannot be stopped: it keeps a thread
        return backend

    pool = ModelPool(registry, settings, backend_factory=factory)
    for mv in (*fast, slow):
        await pool.get(mv)

    async def hammer_slow() -> list[BaseException | None]:
        errors: list[BaseException | None] = []
        for _ in range(20):
            try:
                await pool.infer(slow, x(), 1)
                errors.append(None)
            except ModelTimeoutError as exc:
                errors.append(exc)
            await asyncio.sleep(0.02)  # a client's pacing, not a wait for the code under test
        return errors

    async def fast_traffic() -> list[float]:
        latencies = []
        for i in range(300):
            t0 = time.perf_counter()
            await pool.infer(fast[i % 3], x(), 1)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.001)
        return latencies

    slow_errors, latencies = await asyncio.gather(hammer_slow(), fast_traffic())
    p99 = float(np.percentile(latencies, 99))
    assert p99 < 0.1, f"fast models' p99 {p99 * 1000:.1f} ms with a hanging neighbour"
    assert all(isinstance(e, ModelTimeoutError) for e in slow_errors)
    assert_503_naming(slow_errors[0], "slow")  # type: ignore[arg-type]
    assert pool.describe()[slow.key]["healthy"] is False
    assert pool.stats.timeouts[slow.key] == 1  # one stuck call; the rest failed fast

    release.set()  # the stuck call returns: the model is healthy again
    for _ in range(100):
        if not pool.batcher.hung(slow.key):
            break
        await asyncio.sleep(0.01)
    out = await pool.infer(slow, x(), 1)
    np.testing.assert_allclose(out["y"], expected(8, 32, x()["x"], seed=9), rtol=1e-4)
    assert pool.describe()[slow.key]["healthy"] is True
    await pool.close()


def spin_feeds(n: int, rows: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, 16), dtype=np.float32), "n": np.full((rows, 1), n, np.int64)}


async def test_a_tiny_model_runs_inline_and_is_stopped_when_it_hangs(tmp_path: Path) -> None:
    """A tiny ONNX Runtime model serves inline on the event loop (no thread hop). When a
    call of it hangs, the watchdog stops it at the inline deadline, so the loop - and every
    other model - is held for milliseconds, not for the model's timeout; the request re-runs
    on a worker thread, is stopped there at its timeout (503 naming the model), and the
    thread comes back, so the model is healthy again at once."""
    registry = ModelRegistry(LocalStore(tmp_path))
    spin = register_spin(registry, "spin")
    fast = [register_mlp(registry, f"fast{i}", 8, 32, seed=i) for i in range(2)]
    settings = Settings(
        multimodel=MultiModelSettings(
            inline_deadline_ms=5, per_model={"spin": ModelLimits(timeout_s=0.3)}
        )
    )
    pool = ModelPool(registry, settings)
    for mv in (spin, *fast):
        await pool.get(mv)
    for _ in range(50):  # learns that spin's calls are tiny
        out = await pool.infer(spin, spin_feeds(1), 1)
    np.testing.assert_allclose(out["y"], np.ones((1, 16)))
    inline_before = pool.batcher.stats.inline_batches
    await pool.infer(spin, spin_feeds(1), 1)
    assert pool.batcher.stats.inline_batches == inline_before + 1, "tiny model not inline"

    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:  # the event loop's responsiveness, seen from a task
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def fast_traffic() -> list[float]:
        latencies = []
        for i in range(200):
            t0 = time.perf_counter()
            await pool.infer(fast[i % 2], x(), 1)
            latencies.append(time.perf_counter() - t0)
            await asyncio.sleep(0.001)
        return latencies

    async def hang_once() -> BaseException | None:
        await asyncio.sleep(0.02)
        try:
            await pool.infer(spin, spin_feeds(10**9), 1)  # minutes of work
        except ModelTimeoutError as exc:
            return exc
        return None

    tick = asyncio.create_task(ticker())
    latencies, err = await asyncio.gather(fast_traffic(), hang_once())
    done.set()
    await tick

    assert isinstance(err, ModelTimeoutError)
    assert_503_naming(err, "spin")
    assert pool.batcher.stats.inline_stops == 1
    stall = max(gaps)
    assert stall < 0.1, f"the event loop stalled {stall * 1000:.1f} ms (inline deadline 5 ms)"
    p99 = float(np.percentile(latencies, 99))
    assert p99 < 0.1, f"other models' p99 {p99 * 1000:.1f} ms while spin hung"

    # The stopped call gave its thread back: spin is healthy and answers (on a worker
    # thread while it is off the inline path).
    for _ in range(100):
        if not pool.batcher.hung(spin.key):
            break
        await asyncio.sleep(0.01)
    assert not pool.batcher.hung(spin.key)
    out = await pool.infer(spin, spin_feeds(3, rows=2), 2)
    np.testing.assert_allclose(out["y"], np.ones((2, 16)))
    assert pool.describe()[spin.key]["healthy"] is True
    await pool.close()


# -- S3 (moto's server over HTTP) --------------------------------------------------------


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


async def test_s3_unreachable_at_load_time_fails_only_that_model(aws_env: None) -> None:
    from moto.server import ThreadedMotoServer

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    registry = ModelRegistry(S3Store(f"s3://{bucket}/servekit", endpoint_url=endpoint))
    warm = register_mlp(registry, "warm", 8, 16)
    cold = register_mlp(registry, "cold", 8, 16, seed=5)
    clock = Clock()
    settings = Settings(multimodel=MultiModelSettings(retry_backoff_s=1))
    pool = ModelPool(registry, settings, clock=clock)
    await pool.infer(warm, x(), 1)

    server.stop()  # S3 goes away (moto keeps the bucket in this process's memory)
    with pytest.raises(ModelLoadError) as err:
        await pool.infer(cold, x(), 1)
    assert "S3" in err.value.message
    assert_503_naming(err.value, "cold")
    out = await pool.infer(warm, x(), 1)  # the loaded model is unaffected
    np.testing.assert_allclose(out["y"], expected(8, 16, x()["x"]), rtol=1e-4)

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()  # S3 is back: after the backoff the model loads
    try:
        clock.now += 1.5
        out = await pool.infer(cold, x(), 1)
        np.testing.assert_allclose(out["y"], expected(8, 16, x()["x"], seed=5), rtol=1e-4)
    finally:
        server.stop()
        await pool.close()
