"""The serving-path faults, each run for real under ``SteadyLoad`` against a `bentoml serve`
gateway: Redis paused and killed, the embedded Redis killed, S3 unreachable while a model
loads, an artifact corrupted in the store, the split shape's ``ModelRunner`` killed.

Each case returns one row: requests, failed, 503s, answers neither successful nor a 503
with Retry-After ("unexplained"), events and feedback lost, and the seconds from the end
of the fault to the last failed answer (``recover_s``). The fault suite
(tests/services/faults/) asserts on the rows; ``benchmarks/faults.py`` tabulates them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import Server
from benchmarks.fault_load import SteadyLoad, events_lost, feedback_lost, summarize, wait_until
from services.state.redis_embedded import server_binary

Row = dict[str, Any]


class RedisServer:
    """A throwaway redis-server on ``port`` (append-only file in ``folder``, as a production
    Redis keeps one), that can be paused, killed and started again."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.folder = folder
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        import redis

        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.folder)],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )  # fmt: skip

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=0.5).ping())
            except (redis.RedisError, OSError):
                return False

        wait_until(answers, 10, f"redis-server on {self.port}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)


@contextmanager
def gateway(env: dict[str, str], log: Path) -> Iterator[Server]:
    """A `bentoml serve` gateway with ``env``, stopped on exit."""
    server = Server({"SERVEKIT_ROLLOUT_FEEDBACK_TTL_S": "3600", **env}, log)
    try:
        yield server
    finally:
        server.stop()


def run_fault(
    load: SteadyLoad,
    inject: Callable[[], None],
    repair: Callable[[], None] | None,
    *,
    fault_s: float,
    settle_s: float = 3.0,
    recover_timeout_s: float = 60.0,
) -> tuple[float, float]:
    """Under ``load``: a steady second, ``inject``, the fault for ``fault_s``, ``repair``,
    then load until a run of requests succeeds again and ``settle_s`` more. Returns the
    fault's (start, end) on the monotonic clock; with no ``repair`` (servekit or BentoML
    heals it) the fault ends when it is injected."""
    time.sleep(1.0)  # a steady baseline before the fault
    start = time.monotonic()
    inject()
    if repair is None:
        end = start
    else:
        time.sleep(fault_s)  # the fault lasts this long
        repair()
        end = time.monotonic()

    def healthy() -> bool:
        recent = [o for o in load.outcomes if o.start > time.monotonic() - 1.0]
        return len(recent) >= 5 and all(o.status in (200, 201, 202) for o in recent)

    wait_until(healthy, recover_timeout_s, "steady load answered again", 0.2)
    time.sleep(settle_s)  # keep the load on after recovery
    return start, end


def redis_fault(store: Path, work: Path, port: int, kind: str, fault_s: float = 3.0) -> Row:
    """Redis paused (``kind="pause"``: SIGSTOP, SIGCONT) or killed and started again."""
    redis_server = RedisServer(port, work / f"redis-{kind}")
    redis_server.start()
    env = {"SERVEKIT_MODEL_STORE": str(store), "SERVEKIT_REDIS_URL": redis_server.url}
    try:
        with gateway(env, work / f"gateway-redis-{kind}.log") as server:
            with SteadyLoad(server.url) as load:
                if kind == "pause":
                    inject = lambda: redis_server.signal(signal.SIGSTOP)  # noqa: E731
                    repair = lambda: redis_server.signal(signal.SIGCONT)  # noqa: E731
                else:
                    inject = lambda: redis_server.signal(signal.SIGKILL)  # noqa: E731
                    repair = redis_server.start
                start, end = run_fault(load, inject, repair, fault_s=fault_s)
            row = summarize(load.outcomes, end)
            row["feedback_lost"] = feedback_lost(server.url, load.outcomes)
        row["events_lost"] = events_lost(redis_server.url, load.outcomes)
    finally:
        redis_server.stop()
    return {
        "fault": f"Redis {'paused' if kind == 'pause' else 'killed'}",
        "fault_s": fault_s,
        **row,
    }


def embedded_redis_killed(store: Path, work: Path) -> Row:
    """The embedded Redis (no ``SERVEKIT_REDIS_URL``) killed with SIGKILL; the gateway
    starts it again, and its append-only file brings the state back."""
    import redis

    from services.state.keys import rollout_state_key
    from services.state.redis_embedded import EmbeddedRedis

    folder = work / "er"
    embedded = EmbeddedRedis(folder)
    env = {"SERVEKIT_MODEL_STORE": str(store), "SERVEKIT_REDIS_EMBEDDED_DIR": str(folder)}
    try:
        with gateway(env, work / "gateway-embedded.log") as server:
            client = redis.Redis(unix_socket_path=str(embedded.socket))
            with SteadyLoad(server.url) as load:
                # The gateway writes the served model's rollout state on its first request.
                state = rollout_state_key("fraud")
                wait_until(lambda: client.exists(state), 10, "fraud's rollout state")
                rollout_before = client.hgetall(state)
                pid = embedded.pid()
                assert pid is not None

                start, end = run_fault(
                    load, lambda: os.kill(pid, signal.SIGKILL), None, fault_s=0.0
                )
            row = summarize(load.outcomes, end)
            row["feedback_lost"] = feedback_lost(server.url, load.outcomes)
            row["events_lost"] = events_lost(embedded.url, load.outcomes)
            row["rollout_state_kept"] = client.hgetall(state) == rollout_before
            row["restarted_pid_differs"] = embedded.pid() != pid
    finally:
        embedded.stop()
    return {"fault": "embedded Redis killed", "fault_s": 0.0, **row}


def runner_process(server: Server) -> psutil.Process:
    """The split shape's ``ModelRunner`` worker process under ``server``."""
    for child in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            if "servekit-runner" in child.cmdline():
                return child
        except psutil.NoSuchProcess:
            continue
    raise LookupError("no servekit-runner process")


def runner_killed(store: Path, work: Path, redis_url: str) -> Row:
    """The split shape's ``ModelRunner`` killed with SIGKILL mid-traffic; BentoML starts
    it again. Recovery counts from the kill."""
    env = {"SERVEKIT_SHAPE": "split", "SERVEKIT_MODEL_STORE": str(store),
           "SERVEKIT_REDIS_URL": redis_url, "SERVEKIT_CACHE_ENABLED": "false"}  # fmt: skip
    with gateway(env, work / "gateway-runner.log") as server:
        # A request waits for a restarting runner up to its lane's timeout (30 s), then 503:
        # the client waits longer, so that it is the gateway's answer that is counted.
        with SteadyLoad(server.url, event_hz=0, feedback_hz=0, timeout_s=40) as load:
            runner = runner_process(server)
            start, end = run_fault(load, runner.kill, None, fault_s=0.0)
        row = summarize(load.outcomes, end)

        def restarted() -> bool:
            try:
                return runner_process(server).pid != runner.pid
            except LookupError:
                return False

        row["runner_restarted"] = restarted()
    return {"fault": "ModelRunner killed", "fault_s": 0.0, **row}


@contextmanager
def moto_s3(port: int, store: Path) -> Iterator[tuple[Any, str]]:
    """moto's S3 server on ``port`` holding ``store``'s models, plus version 2 of fraud (a
    copy of version 1); yields (the server, the store's s3:// URL). A restarted server
    keeps the objects (moto keeps them in this process)."""
    from moto.server import ThreadedMotoServer

    from services.registry.stores import LocalStore, S3Store
    from services.registry.versions import ModelRegistry

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(name, "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    s3 = S3Store("s3://servekit-models/store", endpoint_url=endpoint)
    s3.client.create_bucket(Bucket="servekit-models")
    local = LocalStore(store)
    for key in local.list():
        s3.put(key, local.get(key))
    registry = ModelRegistry(s3)
    v1 = registry.get("fraud", "1")
    registry.register("fraud", registry.load_artifact(v1), schema=v1.model_schema)
    try:
        yield server, s3.url
    finally:
        server.stop()


def served_version(url: str) -> str:
    """The version of fraud the gateway at ``url`` answers with."""
    import httpx

    body = {"model": "fraud", "inputs": [{"amount": 1.0, "merchant_category": "grocery",
                                          "hour": 3, "channel": "online"}]}  # fmt: skip
    return str(httpx.post(f"{url}/predict", json=body, timeout=30).json()["version"])


def s3_fault(store: Path, work: Path, redis_url: str, port: int, kind: str) -> Row:
    """A model version loaded on demand while S3 is unreachable (``kind="down"``: the
    endpoint stopped for 3 s) or while its artifact is corrupted (``"corrupt"``: restored
    after 3 s). The served version keeps answering; the other one answers 503 with
    Retry-After until it loads."""
    from services.registry.stores import S3Store

    with moto_s3(port, store) as (moto, url):
        endpoint = f"http://127.0.0.1:{port}"
        s3 = S3Store(url, endpoint_url=endpoint)
        env = {"SERVEKIT_MODEL_STORE": url, "SERVEKIT_S3_ENDPOINT_URL": endpoint,
               "SERVEKIT_REDIS_URL": redis_url, "SERVEKIT_CACHE_ENABLED": "false",
               **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                             "AWS_DEFAULT_REGION")}}  # fmt: skip
        with gateway(env, work / f"gateway-s3-{kind}.log") as server:
            # Of versions 1 and 2, the one the gateway does not serve loads under the fault.
            served = served_version(server.url)
            other = "1" if served == "2" else "2"
            artifact = next(k for k in s3.list(f"fraud/{other}/") if k.endswith(".onnx"))
            original = s3.get(artifact)
            with SteadyLoad(server.url, event_hz=0, feedback_hz=0) as load:

                def inject() -> None:
                    if kind == "down":
                        moto.stop()
                    else:
                        s3.put(artifact, original[: len(original) // 2] + b"corrupted")
                    load.second_version = other  # not loaded yet: loads now, from S3

                def repair() -> None:
                    if kind == "down":
                        moto.start()
                    else:
                        s3.put(artifact, original)

                start, end = run_fault(load, inject, repair, fault_s=3.0)
            row = summarize(load.outcomes, end)
            row["first_version_ok"] = all(
                o.status == 200 for o in load.outcomes if o.kind == "predict" and o.start < start
            )
    label = "S3 unreachable during a load" if kind == "down" else "artifact corrupted in S3"
    return {"fault": label, "fault_s": 3.0, **row}
