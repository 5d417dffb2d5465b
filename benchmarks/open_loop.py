"""A lean open-loop HTTP/1.1 load generator: raw asyncio protocols on keep-alive
connections, requests pre-encoded, responses parsed only for their status and length.

aiohttp's client spends about a core at ~2,000 requests/s, which on a small machine takes
the very cores the server under test needs. This one sends the same traffic for several
times less CPU (``client_cpu_s`` in its results says how much). Latency is measured from
each request's scheduled send time, so a request that waits for a free connection (or for
the generator itself) is not under-counted.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Sequence
from urllib.parse import urlsplit


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[str] | None = None
        self.closed = False
        self._buf = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self._buf[:end]).lower()
        at = head.find(b"content-length:")
        length = 0
        if at >= 0:
            eol = head.find(b"\r\n", at)
            length = int(head[at + 15 : eol if eol >= 0 else None])
        if len(self._buf) < end + 4 + length:
            return
        del self._buf[: end + 4 + length]
        if b"connection: close" in head:
            self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(head[9:12].decode())

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result("ServerDisconnectedError")


def _time_out(waiter: asyncio.Future[str]) -> None:
    if not waiter.done():
        waiter.set_result("TimeoutError")


def _request_bytes(host: str, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _ConnectionPool:
    """Keep-alive connections to one server, at most ``limit`` open at once; requests that
    find none free wait their turn, first come first served."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host, self.port, self.limit = host, port, limit
        self.loop = asyncio.get_running_loop()
        self.idle: collections.deque[_Connection] = collections.deque()
        self.queued: collections.deque[asyncio.Future[_Connection]] = collections.deque()
        self.opened = 0

    async def get(self) -> _Connection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.opened -= 1
        if self.opened >= self.limit:
            turn: asyncio.Future[_Connection] = self.loop.create_future()
            self.queued.append(turn)
            return await turn
        return await self._open()

    def release(self, conn: _Connection) -> None:
        if conn.closed:
            if conn.transport is not None:
                conn.transport.close()
            self.opened -= 1
            if self.queued:  # a closed connection frees a slot: the next waiter opens one
                self.loop.create_task(self._hand_new(self.queued.popleft()))
        elif self.queued:
            self.queued.popleft().set_result(conn)
        else:
            self.idle.append(conn)

    async def _open(self) -> _Connection:
        self.opened += 1
        try:
            _, conn = await self.loop.create_connection(_Connection, self.host, self.port)
        except OSError:
            self.opened -= 1
            raise
        return conn

    async def _hand_new(self, turn: asyncio.Future[_Connection]) -> None:
        try:
            conn = await self._open()
        except OSError as exc:
            turn.set_exception(exc)
        else:
            turn.set_result(conn)

    def close(self) -> None:
        for conn in self.idle:
            if conn.transport is not None:
                conn.transport.close()


async def open_loop_lean(
    url: str,
    bodies: Sequence[bytes],
    rate: float,
    seconds: float,
    *,
    timeout_s: float = 30.0,
    max_connections: int = 2000,
) -> tuple[list[tuple[str, float]], float, float]:
    """Send ``rate`` POSTs per second to ``url`` for ``seconds`` (open loop).

    Returns the same as ``benchmarks.common.open_loop_records``: (status, seconds) per
    request ("200", "503", or "TimeoutError" / "ServerDisconnectedError" /
    "ClientConnectorError"), the send rate achieved, and the seconds from the first send to
    the last answer.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    payloads = [_request_bytes(f"{host}:{port}", parts.path, b) for b in bodies]
    loop = asyncio.get_running_loop()
    pool = _ConnectionPool(host, port, max_connections)
    out: list[tuple[str, float]] = []

    async def one(payload: bytes, scheduled: float) -> None:
        try:
            conn = await pool.get()
        except OSError:
            out.append(("ClientConnectorError", time.perf_counter() - scheduled))
            return
        waiter = conn.waiter = loop.create_future()
        assert conn.transport is not None
        conn.transport.write(payload)
        timer = loop.call_later(
            max(0.0, scheduled + timeout_s - time.perf_counter()), _time_out, waiter
        )
        status = await waiter
        timer.cancel()
        out.append((status, time.perf_counter() - scheduled))
        if status == "TimeoutError":
            conn.closed = True  # its answer may still come: never reuse it
        pool.release(conn)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(payloads[i % len(payloads)], scheduled)))
    sent_s = time.perf_counter() - start
    await asyncio.gather(*tasks)
    pool.close()
    return out, len(tasks) / max(sent_s, 1e-9), time.perf_counter() - start
