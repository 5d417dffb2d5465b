"""The split shape's wire: frames carry tensors as raw bytes; ModelRunner's FrameServer
runs a batch frame on its pool and answers outputs or an error frame; the gateway's
RemoteRunner batches requests with servekit's batcher, sends one frame per batch and
raises the runner's errors as the same servekit classes (503 for anything else)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import numpy as np
import pytest

from services.errors import (
    BadRequestError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
)
from services.registry.stores import LocalStore
from services.registry.versions import ModelRegistry
from services.runner import wire
from services.runner.pool import ModelPool
from services.runner.split import (
    FrameServer,
    RemoteRunner,
    error_header,
    remote_error,
    resident_versions,
)
from services.settings import Settings
from tests.fixtures.fake_backends import Heap, feeds, heap_factory
from tests.fixtures.onnx_models import mlp_schema


@pytest.fixture
def pool(tmp_path: Path) -> ModelPool:
    registry = ModelRegistry(LocalStore(tmp_path))
    for name in ("a", "b"):
        registry.register(name, bytes(1000), schema=mlp_schema(1))
    return ModelPool(
        registry,
        Settings(),
        backend_factory=heap_factory(Heap(), lambda mv: 1000),
        memory_probe=Heap(),
    )


def test_frames_carry_tensors_as_raw_bytes() -> None:
    tensors: dict[str, np.ndarray] = {
        "f": np.arange(12, dtype=np.float32).reshape(4, 3),
        "ids": np.array([[101, 7, 102]], dtype=np.int64),
        "mask": np.zeros((0, 5), dtype=np.bool_),
        "text": np.array(["héllo", "x"], dtype=object),
        "half": np.ones((2, 2), dtype=np.float16)[:, :1],  # not contiguous
    }
    frame = wire.encode({"model": "m", "version": "3"}, tensors)
    assert b"pickle" not in frame and frame.startswith(wire.MAGIC)
    header, back = wire.decode(frame)
    assert header == {"model": "m", "version": "3"}
    for name, a in tensors.items():
        assert back[name].dtype == a.dtype and back[name].shape == a.shape
        assert back[name].tolist() == a.tolist()
    assert back["f"].base is not None  # a view of the frame, not a copy


@pytest.mark.parametrize(
    "frame, message",
    [
        (b"SKW", "too short"),
        (b"NOPE\x00\x00\x00\x00", "not a servekit frame"),
        (wire.encode({}, {"x": np.ones(3)})[:-1], "past the frame's end"),
        (wire.encode({}, {"x": np.ones(3)}) + b"!", "bytes past its last tensor"),
        (wire.MAGIC + b"\x05\x00\x00\x00{oops", "malformed frame header"),
    ],
)
def test_a_malformed_frame_is_a_bad_request(frame: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        wire.decode(frame)


def test_object_tensors_other_than_strings_are_refused() -> None:
    with pytest.raises(BadRequestError, match="dtype"):
        wire.encode({}, {"x": np.array([np.datetime64("2020-01-01")])})


async def test_frame_server_runs_a_batch_and_answers_errors_as_frames(pool: ModelPool) -> None:
    server = FrameServer(pool)
    reply = await server.serve(wire.encode({"model": "a", "version": "1"}, feeds(1.0, 2.0)))
    header, out = wire.decode(reply)
    assert header == {} and out["y"].tolist() == [[2.0], [4.0]]
    assert set(resident_versions(pool)) == {"a:1"}  # loaded on first use
    header, out = wire.decode(
        await server.serve(wire.encode({"model": "a", "version": "9"}, feeds(1.0)))
    )
    assert out == {}
    assert header["type"] == "ModelNotFoundError" and header["status"] == 404
    header, _ = wire.decode(await server.serve(b"garbage"))
    assert header["type"] == "BadRequestError" and header["status"] == 400
    header, _ = wire.decode(await server.serve(wire.encode({"model": "a", "version": "1"})))
    assert header["error"] == "a batch frame without tensors"
    await pool.close()


def test_remote_errors_keep_their_class_status_and_context() -> None:
    exc = remote_error(error_header(OverloadedError("full", retry_after=3, limit=8)), "a", "1")
    assert type(exc) is OverloadedError and exc.retry_after == 3 and exc.context["limit"] == 8
    exc = remote_error(error_header(InvalidInputError("bad", field="x")), "a", "1")
    assert type(exc) is InvalidInputError and exc.field == "x" and int(exc.error_code) == 422
    exc = remote_error(error_header(ModelNotFoundError("a", "9")), "a", "9")
    assert (
        type(exc) is ModelNotFoundError
        and exc.to_dict()["error"] == "unknown version '9' of model 'a'"
    )
    # Anything that is not a servekit error: a 503 naming the model, as before.
    exc = remote_error({"error": "ORT failed", "type": "Fail"}, "a", "1")
    assert type(exc) is ModelLoadError and exc.message == "runner failed on a version 1: ORT failed"


class InProcessProxy:
    """``ModelRunner`` in this process: ``to_async.call("run_batch", frame)`` serves the
    frame with a real ``FrameServer``; counts the frames it gets."""

    def __init__(self, server: FrameServer | None, fail: Exception | None = None) -> None:
        self.server = server
        self.fail = fail
        self.frames: list[bytes] = []
        self.to_async = self

    async def call(self, name: str, frame: bytes) -> bytes:
        assert name == "run_batch" and isinstance(frame, bytes)
        self.frames.append(frame)
        if self.fail is not None:
            raise self.fail
        assert self.server is not None
        return await self.server.serve(frame)


async def test_remote_runner_sends_one_frame_per_batch(pool: ModelPool) -> None:
    proxy = InProcessProxy(FrameServer(pool))
    runner = RemoteRunner(proxy, Settings())
    mv = pool.registry.get("a")
    outs = await asyncio.gather(*(runner.infer(mv, feeds(float(i)), 1) for i in range(40)))
    assert [o["y"].tolist() for o in outs] == [[[2.0 * i]] for i in range(40)]
    assert len(proxy.frames) < 40  # batched: fewer calls than requests
    rows = sum(len(wire.decode(f)[1]["x"]) for f in proxy.frames)
    assert rows == 40
    assert runner.describe() == {}
    await runner.close()
    await pool.close()


async def test_remote_runner_raises_the_runners_errors(pool: ModelPool) -> None:
    runner = RemoteRunner(InProcessProxy(FrameServer(pool)), Settings())
    gone = pool.registry.get("a").model_copy(update={"version": "9"})
    with pytest.raises(ModelNotFoundError, match="unknown version '9'"):
        await runner.infer(gone, feeds(1.0), 1)
    down = RemoteRunner(
        InProcessProxy(None, aiohttp.ClientConnectionError("connection refused")), Settings()
    )
    with pytest.raises(ModelLoadError, match="the model runner did not answer for a version 1"):
        await down.infer(pool.registry.get("a"), feeds(1.0), 1)
    await runner.close()
    await down.close()
    await pool.close()
