"""A lean asyncio Redis client for the serving path's one script call per request.

redis-py's asyncio client spends far more CPU per call (connection pool, retry wrapper,
response callbacks) than the round trip itself. :class:`RespClient` does only what the
feature read needs: one connection per event loop, every command written on it as soon
as it is issued (callers that share a loop turn already merge their reads upstream,
``services.state.coalesce``), replies matched to callers in order by a FIFO of futures, RESP2 parsed by ``hiredis`` (a small pure-Python parser where it is
missing). Replies decode as redis-py's do with ``decode_responses=False``, and errors are
redis-py's classes: ``NoScriptError``, ``ResponseError``; ``ConnectionError`` when the
connection drops and ``TimeoutError`` when the server stays silent past the timeout, both
failing every call in flight on that connection; the next call opens a new one.

TLS (``rediss://``), RESP3 and decoded replies are not spoken: :func:`lean_client_for`
answers None for such clients and callers keep redis-py.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any

from redis._parsers.base import BaseParser
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, InvalidResponse, RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.state.redis_clients import is_cluster

try:
    import hiredis
except ImportError:  # optional speed-up; the pure-Python parser below stands in
    hiredis = None  # type: ignore[assignment]


class _Incomplete(Exception):
    """The buffer ends inside a reply."""


class PyReader:
    """A RESP2 reply parser with hiredis.Reader's interface (``feed``, ``gets``)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def feed(self, data: bytes) -> None:
        self._buf += data

    def gets(self) -> Any:
        """The next whole reply (an error reply as a ResponseError), False if none yet."""
        try:
            reply, pos = self._parse(self._pos)
        except _Incomplete:
            return False
        if pos == len(self._buf) or pos > 65536:
            del self._buf[:pos]
            pos = 0
        self._pos = pos
        return reply

    def _parse(self, pos: int) -> tuple[Any, int]:
        buf = self._buf
        end = buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        kind, line, pos = buf[pos], bytes(buf[pos + 1 : end]), end + 2
        if kind == 43:  # + status
            return line, pos
        if kind == 45:  # - error
            return ResponseError(line.decode("utf-8", "replace")), pos
        if kind == 58:  # : integer
            return int(line), pos
        if kind == 36:  # $ bulk string
            n = int(line)
            if n < 0:
                return None, pos
            if pos + n + 2 > len(buf):
                raise _Incomplete
            return bytes(buf[pos : pos + n]), pos + n + 2
        if kind == 42:  # * array
            n = int(line)
            if n < 0:
                return None, pos
            items = []
            for _ in range(n):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise InvalidResponse(f"Protocol error, got {chr(kind)!r} as reply type byte")


def _reader() -> Any:
    if hiredis is None:
        return PyReader()
    return hiredis.Reader(
        protocolError=InvalidResponse, replyError=ResponseError, notEnoughData=False
    )


def pack(args: Sequence[Any]) -> bytes:
    """One command in RESP: an array of bulk strings, arguments encoded as redis-py does."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, int) and not isinstance(arg, bool):
            data = b"%d" % arg
        elif isinstance(arg, float):
            data = repr(float(arg)).encode()
        else:
            raise DataError(
                f"Invalid input of type: {type(arg).__name__!r}. "
                "Convert to a bytes, string, int or float first."
            )
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    """One connection: sends commands, resolves their futures in reply order."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float | None) -> None:
        self.loop = loop
        self.timeout = timeout
        self.closed = False
        self.transport: asyncio.Transport | None = None
        # (future, deadline) per command in flight, oldest first: replies come in order.
        self.pending: collections.deque[tuple[asyncio.Future[Any], float]] = collections.deque()
        self._reader = _reader()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f"Connection lost: {exc}" if exc else "Connection closed by server."
        self.fail(RedisConnectionError(reason))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = self._reader.gets()
            except InvalidResponse as exc:
                self.fail(RedisConnectionError(f"Protocol error: {exc}"))
                return
            if reply is False:
                return
            if not pending:
                self.fail(RedisConnectionError("Protocol error: a reply nobody asked for"))
                return
            future = pending.popleft()[0]
            if future.done():  # its caller was cancelled
                continue
            if isinstance(reply, ResponseError):
                future.set_exception(BaseParser.parse_error(str(reply)))
            else:
                future.set_result(reply)

    def send(self, command: bytes) -> asyncio.Future[Any]:
        """Write ``command`` now; the future of its reply."""
        future = self.loop.create_future()
        if self.closed or self.transport is None:
            future.set_exception(RedisConnectionError("Connection closed."))
            return future
        deadline = 0.0
        if self.timeout is not None:
            deadline = self.loop.time() + self.timeout
            if self._timer is None:
                self._timer = self.loop.call_at(deadline, self._check_deadline)
        self.pending.append((future, deadline))
        self.transport.write(command)
        return future

    def _check_deadline(self) -> None:
        """Fail the connection if its oldest command is past its deadline, else re-arm."""
        self._timer = None
        if self.closed or not self.pending:
            return
        deadline = self.pending[0][1]
        if self.loop.time() >= deadline:
            self.fail(RedisTimeoutError("Timeout reading from redis"))
        else:
            self._timer = self.loop.call_at(deadline, self._check_deadline)

    def fail(self, error: RedisError) -> None:
        """Close the connection and fail every command in flight with ``error``'s class."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.abort()
        while self.pending:
            future = self.pending.popleft()[0]
            if not future.done():
                future.set_exception(type(error)(*error.args))


class RespClient:
    """Commands to one Redis server over one pipelined connection per event loop.

    Args:
        host: the server's host (ignored when ``path`` is given).
        port: its port.
        path: a Unix socket to connect to instead.
        db: the database to SELECT.
        username: the ACL user to AUTH as (with ``password``).
        password: the password to AUTH with.
        timeout: seconds a command may wait for its reply (None: no limit); past it the
            connection is dropped and its commands fail with ``TimeoutError``.
        connect_timeout: seconds to connect and authenticate (None: ``timeout``).
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        *,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self._host, self._port, self._path = host, port, path
        self._db, self._username, self._password = db, username, password
        self._timeout = timeout
        self._connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._conns: dict[asyncio.AbstractEventLoop, _Connection] = {}
        self._opening: dict[asyncio.AbstractEventLoop, asyncio.Task[_Connection]] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> RespClient:
        """A client for a ``redis://`` or ``unix://`` URL; ``kwargs``: the timeouts."""
        parsed: dict[str, Any] = dict(parse_url(url))
        if parsed.pop("connection_class", None) is SSLConnection:
            raise ValueError("TLS (rediss://) is not supported; use redis-py")
        allowed = {"host", "port", "path", "db", "username", "password"}
        return cls(**{k: v for k, v in parsed.items() if k in allowed}, **kwargs)

    @property
    def where(self) -> str:
        return self._path or f"{self._host}:{self._port}"

    async def execute(self, *args: Any) -> Any:
        """Send one command; its reply (bytes, int, list, None), or its error raised."""
        command = pack(args)
        loop = asyncio.get_running_loop()
        conn = self._conns.get(loop)
        if conn is None or conn.closed:
            conn = await self._connection(loop)
        return await conn.send(command)

    async def evalsha(self, sha: str | bytes, numkeys: int, *keys_and_args: Any) -> Any:
        """``EVALSHA``; ``NoScriptError`` when the server does not hold the script."""
        return await self.execute("EVALSHA", sha, numkeys, *keys_and_args)

    async def script_load(self, script: str | bytes) -> str:
        """``SCRIPT LOAD``: the script's SHA1, as redis-py returns it."""
        sha = await self.execute("SCRIPT", "LOAD", script)
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def aclose(self) -> None:
        """Close this client's connections (the calls in flight fail)."""
        conns, self._conns = self._conns, {}
        running = asyncio.get_running_loop()
        for conn in conns.values():
            if conn.loop is running:
                conn.fail(RedisConnectionError("Client closed."))
            elif not conn.loop.is_closed():
                conn.loop.call_soon_threadsafe(conn.fail, RedisConnectionError("Client closed."))

    async def _connection(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        """This loop's connection, opened once however many calls wait for it."""
        opening = self._opening.get(loop)
        if opening is None:
            for other in [lp for lp in self._conns if lp.is_closed()]:
                del self._conns[other]
            opening = self._opening[loop] = loop.create_task(self._open(loop))
            opening.add_done_callback(lambda task: self._opened(loop, task))
        return await asyncio.shield(opening)

    def _opened(self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[_Connection]) -> None:
        self._opening.pop(loop, None)
        if not task.cancelled() and task.exception() is None:
            self._conns[loop] = task.result()

    async def _open(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        conn = _Connection(loop, self._timeout)
        try:
            async with asyncio.timeout(self._connect_timeout):
                if self._path:
                    await loop.create_unix_connection(lambda: conn, self._path)
                else:
                    await loop.create_connection(lambda: conn, self._host, self._port)
                handshake = []
                if self._password is not None:
                    user = () if self._username is None else (self._username,)
                    handshake.append(conn.send(pack(("AUTH", *user, self._password))))
                if self._db:
                    handshake.append(conn.send(pack(("SELECT", self._db))))
                for reply in await asyncio.gather(*handshake, return_exceptions=True):
                    if isinstance(reply, BaseException):
                        raise reply
        except TimeoutError as exc:
            conn.fail(RedisTimeoutError("Timeout connecting"))
            raise RedisTimeoutError(f"Timeout connecting to {self.where}") from exc
        except OSError as exc:
            conn.fail(RedisConnectionError("Connect failed"))
            raise RedisConnectionError(f"Error connecting to {self.where}: {exc}") from exc
        except BaseException:
            conn.fail(RedisConnectionError("Connection setup failed"))
            raise
        return conn


def lean_client_for(client: Any) -> RespClient | None:
    """A :class:`RespClient` to the server of redis-py asyncio ``client``, with its
    address, database, credentials and timeouts; None where it cannot stand in (a Redis
    Cluster, TLS, RESP3, decoded replies, a credential provider)."""
    pool = getattr(client, "connection_pool", None)
    if pool is None or is_cluster(client):
        return None
    kwargs = pool.connection_kwargs
    if (
        issubclass(pool.connection_class, SSLConnection)
        or kwargs.get("credential_provider") is not None
        or kwargs.get("decode_responses")
        or kwargs.get("protocol") in (3, "3")
    ):
        return None
    unix = issubclass(pool.connection_class, UnixDomainSocketConnection)
    return RespClient(
        host=kwargs.get("host", "localhost"),
        port=int(kwargs.get("port", 6379)),
        path=kwargs.get("path") if unix else None,
        db=int(kwargs.get("db", 0)),
        username=kwargs.get("username"),
        password=kwargs.get("password"),
        timeout=kwargs.get("socket_timeout"),
        connect_timeout=kwargs.get("socket_connect_timeout"),
    )
