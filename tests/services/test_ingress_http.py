"""Refusal at the HTTP entry over real HTTP: a request the gateway refuses for its
in-flight limit, or for its model's lane being over budget (the v2 path names the model),
is answered 503 before its body is read. Every request here that should be refused at the
entry sends its headers and no body at all: an answer proves the body was never awaited."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from tests.conftest import ServerProcess
from tests.services.test_admission_http import (
    LONG,
    SHORT,
    _send_raw,
    _status,
    infer_body,
    infer_url,
    metric,
    post,
    spin_server,
)

MAX_IN_FLIGHT = 3
MEDIUM = 200_000  # loop trips: ~0.3-1 s, so that one queued row is over the 50 ms budget


@pytest.fixture(scope="module")
def gated_gateway(
    tmp_path_factory: pytest.TempPathFactory, serving_redis_url: str
) -> Iterator[ServerProcess]:
    server = spin_server(
        tmp_path_factory,
        serving_redis_url,
        SERVEKIT_INGRESS_MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
        # Only the limits under test: a loaded test machine may lag the loop.
        SERVEKIT_INGRESS_LAG_MS="0",
    )
    yield server
    server.stop()


def _send_head(sock: socket.socket, path: str, length: int = 200) -> None:
    """A POST's headers, announcing a body that is never sent."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    )
    sock.sendall(head.encode())


def _answer(sock: socket.socket) -> tuple[int, bytes]:
    """The status and the rest of what arrived (headers and body) within a few seconds."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += sock.recv(4096)
    return int(head[9:12]), head + b"\r\n\r\n" + rest


def _refused_headless(server: ServerProcess, path: str) -> dict[str, object]:
    """Send headers only to ``path``; assert a prompt 503 with Retry-After; its body."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        t0 = time.perf_counter()
        _send_head(sock, path)
        status, raw = _answer(sock)
        waited = time.perf_counter() - t0
    assert status == 503, raw
    assert b"\r\nretry-after: " in raw.lower(), raw
    assert waited < 2, waited
    body: dict[str, object] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return body


def test_refusals_at_the_entry_never_read_the_body(gated_gateway: ServerProcess) -> None:
    server = gated_gateway
    url = infer_url(server)
    assert post(url, infer_body(MEDIUM))[0] == 200  # the lane learns a call time over budget
    budget_before = metric(server, "servekit_admission_refusals_total", reason="budget")
    in_flight_before = metric(server, "servekit_admission_refusals_total", reason="in_flight")
    with (
        socket.create_connection(("127.0.0.1", server.port)) as running,
        socket.create_connection(("127.0.0.1", server.port)) as queued,
        socket.create_connection(("127.0.0.1", server.port)) as stalled,
    ):
        _send_raw(running, infer_body(LONG))  # holds the lane
        time.sleep(0.2)
        _send_raw(queued, infer_body(LONG))  # queued: a batch's worth of rows waits
        time.sleep(0.2)
        # The lane is over its budget: refused on the path's model alone.
        body = _refused_headless(server, "/v2/models/spin/infer")
        assert body["reason"] == "budget", body
        # A third request in flight (its body never comes) reaches the limit ...
        _send_head(stalled, "/predict")
        time.sleep(0.2)
        body = _refused_headless(server, "/predict")
        assert body["reason"] == "in_flight", body
        body = _refused_headless(server, "/v2/models/spin/infer")
        assert body["reason"] == "in_flight", body
        # ... while the other routes are served.
        with urllib.request.urlopen(f"{server.url}/v2/health/ready", timeout=5) as r:
            assert r.status == 200
        stalled.close()  # gone before its body: it leaves the count
        assert _status(running) == 200
        # The queued one runs, or is dropped unrun if the long call outlasted twice what
        # it was admitted for (admission's rule, not the gate's): answered either way.
        assert _status(queued) in (200, 503)
    assert metric(server, "servekit_admission_refusals_total", reason="budget") > budget_before
    assert (
        metric(server, "servekit_admission_refusals_total", reason="in_flight")
        == in_flight_before + 2
    )
    # Every request left the count: the limit admits again.
    for _ in range(MAX_IN_FLIGHT + 1):
        assert post(url, infer_body(SHORT))[0] == 200
