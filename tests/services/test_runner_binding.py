"""The split shape's ModelRunner accepts BentoML's service transport (pickled payloads,
no authentication), so it must listen only where its gateway reaches it: started by
`bentoml serve`, it serves on a Unix socket in a private (0700) directory (or on 127.0.0.1
where Unix sockets are unavailable), never on an outside address.

BentoML's arbiter opens every service's socket and each worker inherits all of them, but
serves only the one its ``--fd`` names: the runner's copy of the gateway's public socket
is never accepted on, which the last check shows from the outside."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ServerProcess


@pytest.fixture(scope="module")
def split_everywhere(fraud_store: Path, serving_redis_url: str) -> Iterator[ServerProcess]:
    """A split gateway bound to every interface: only the gateway may be reachable."""
    server = ServerProcess(
        {
            "SERVEKIT_SHAPE": "split",
            "SERVEKIT_MODEL_STORE": str(fraud_store),
            "SERVEKIT_REDIS_URL": serving_redis_url,
        },
        host="0.0.0.0",
    )
    yield server
    server.stop()


def runner_processes(server: ServerProcess) -> list[psutil.Process]:
    """The ModelRunner's worker processes in the server's process tree."""
    found = []
    for proc in psutil.Process(server.proc.pid).children(recursive=True):
        try:
            args = proc.cmdline()
        except psutil.NoSuchProcess:
            continue
        if "--service-name" in args and args[args.index("--service-name") + 1] == (
            "servekit-runner"
        ):
            found.append(proc)
    return found


def listening(proc: psutil.Process) -> tuple[list[tuple[str, int]], list[str]]:
    """The process's listening TCP addresses and bound Unix socket paths."""
    inet = [
        (c.laddr.ip, c.laddr.port)
        for c in proc.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    ]
    unix = [c.laddr for c in proc.net_connections(kind="unix") if c.laddr]
    return inet, unix


def served_socket(proc: psutil.Process) -> str:
    """The address a BentoML worker serves on: the socket its ``--fd`` argument names."""
    args = proc.cmdline()
    fd = int(args[args.index("--fd") + 1])
    for conn in proc.net_connections(kind="all"):
        if conn.fd == fd:
            laddr = conn.laddr
            return laddr if isinstance(laddr, str) else f"{laddr.ip}:{laddr.port}"
    raise AssertionError(f"worker {proc.pid} has no socket on fd {fd}")


@pytest.mark.slow
def test_the_split_runner_serves_only_on_a_private_unix_socket_or_loopback(
    split_everywhere: ServerProcess,
) -> None:
    url = split_everywhere.url
    record = {"amount": 1.0, "merchant_category": "grocery", "hour": 3, "channel": "online"}
    answer = httpx.post(f"{url}/predict", json={"model": "fraud", "inputs": [record]}, timeout=30)
    assert answer.status_code == 200, answer.text  # the gateway reaches the runner
    deadline = time.monotonic() + 30
    while not (runners := runner_processes(split_everywhere)):
        assert time.monotonic() < deadline, "no servekit-runner worker found"
        time.sleep(0.2)
    for runner in runners:
        address = served_socket(runner)
        if address.startswith("/"):
            folder = os.stat(os.path.dirname(address))
            assert stat.S_IMODE(folder.st_mode) == 0o700, address
            assert folder.st_uid == os.getuid(), address
            # It is the runner's live socket: its own route answers there.
            with httpx.Client(transport=httpx.HTTPTransport(uds=address)) as client:
                assert client.post("http://runner/loaded", json={}).status_code == 200
        else:
            assert address.rsplit(":", 1)[0] in ("127.0.0.1", "::1"), address
    # Across the whole tree only the gateway's port listens beyond the loopback.
    root = psutil.Process(split_everywhere.proc.pid)
    outside = {
        (ip, port)
        for proc in [root, *root.children(recursive=True)]
        for ip, port in listening(proc)[0]
        if ip not in ("127.0.0.1", "::1")
    }
    assert outside == {("0.0.0.0", split_everywhere.port)}
    # And that port is the gateway's alone: the runner's own routes are not found there.
    for _ in range(20):
        resp = httpx.post(f"{url}/loaded", json={}, timeout=10)
        assert resp.status_code == 404 and "no route" in resp.json()["error"], resp.text
