"""The lean RESP client against a real Redis: replies decoded as redis-py decodes them,
pipelined calls, script errors, a killed or paused server, AUTH, SELECT, Unix sockets."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import hiredis
import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from benchmarks.fault_cases import RedisServer
from benchmarks.fault_load import wait_until
from services.state.redis_embedded import server_binary
from services.state.resp import PyReader, RespClient, lean_client_for, pack
from tests.conftest import free_port

COMMANDS: list[tuple[Any, ...]] = [
    ("SET", "s", "text"),  # status
    ("GET", "s"),  # bulk string
    ("GET", "absent"),  # nil
    ("INCRBY", "n", 41),  # integer
    ("SET", "bin", b"\x00\xff\r\n"),
    ("GET", "bin"),  # binary-safe bulk
    ("RPUSH", "l", "a", "", 3.5),
    ("LRANGE", "l", 0, -1),  # array, empty string, float argument
    ("LRANGE", "absent", 0, -1),  # empty array
    ("EVAL", "return {1, 'a', {2, false, {}}, {'b'}}", 0),  # nested arrays, nil inside
    ("EVAL", "return redis.status_reply('FINE')", 0),
    ("HMGET", "absent", "f", "g"),  # array of nils
]


@pytest.fixture
async def lean(redis_url: str, aredis: aioredis.Redis) -> AsyncIterator[RespClient]:
    client = RespClient.from_url(redis_url, timeout=5.0)
    yield client
    await client.aclose()


async def test_replies_decode_as_redis_py(lean: RespClient, aredis: aioredis.Redis) -> None:
    ours = [await lean.execute(*command) for command in COMMANDS]
    await aredis.flushdb()
    conn = await aredis.connection_pool.get_connection()  # raw replies, no command callbacks
    theirs = []
    for command in COMMANDS:
        await conn.send_command(*command)
        theirs.append(await conn.read_response())
    await aredis.connection_pool.release(conn)
    assert ours == theirs
    assert [type(r) for r in ours] == [type(r) for r in theirs]
    assert ours[1:4] == [b"text", None, 41] and ours[9] == [1, b"a", [2, None, []], [b"b"]]


async def test_errors_are_redis_py_classes(lean: RespClient, aredis: aioredis.Redis) -> None:
    await lean.execute("SET", "s", "text")
    with pytest.raises(ResponseError) as caught:
        await lean.execute("INCR", "s")
    assert type(caught.value) is ResponseError
    assert str(caught.value) == "value is not an integer or out of range"
    with pytest.raises(ResponseError, match="boom"):
        await lean.execute("EVAL", "return redis.error_reply('boom')", 0)
    assert await lean.execute("GET", "s") == b"text"  # the connection is still in step


async def test_noscript_then_load(lean: RespClient, aredis: aioredis.Redis) -> None:
    script = "return ARGV[1]"
    with pytest.raises(NoScriptError):
        await lean.evalsha("0" * 40, 0, "x")
    sha = await lean.script_load(script)
    assert sha == await aredis.script_load(script)
    assert await lean.evalsha(sha, 0, "x") == b"x"


async def test_many_concurrent_calls_share_one_connection(lean: RespClient) -> None:
    sha = await lean.script_load("return ARGV[1]")
    ids = [lean.execute("CLIENT", "ID") for _ in range(20)]
    calls = [lean.evalsha(sha, 0, i) for i in range(2000)]
    replies = await asyncio.gather(*ids[:10], *calls, *ids[10:])
    assert [int(value) for value in replies[10:-10]] == list(range(2000))
    assert len(set(replies[:10] + replies[-10:])) == 1


async def test_a_cancelled_call_keeps_the_replies_in_order(lean: RespClient) -> None:
    slow = asyncio.ensure_future(lean.execute("BLPOP", "q", 0.2))
    fast = asyncio.ensure_future(lean.execute("ECHO", "after"))
    await asyncio.sleep(0)
    slow.cancel()
    assert await fast == b"after"  # pipelined behind the blocked call
    assert await lean.execute("ECHO", "next") == b"next"


def _comparable(reply: Any) -> Any:
    if isinstance(reply, list):
        return [_comparable(r) for r in reply]
    return (type(reply), str(reply)) if isinstance(reply, Exception) else reply


def test_pure_python_reader_parses_as_hiredis() -> None:
    data = (
        b"+OK\r\n-ERR bad thing\r\n:-12\r\n$5\r\nab\r\nc\r\n$0\r\n\r\n$-1\r\n*-1\r\n*0\r\n"
        b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n$-1\r\n-NOSCRIPT gone\r\n"
    )
    replies = []
    for reader in (PyReader(), hiredis.Reader(replyError=ResponseError, notEnoughData=False)):
        got = []
        for i in range(len(data)):  # one byte at a time: every split point
            reader.feed(data[i : i + 1])
            while (reply := reader.gets()) is not False:
                got.append(reply)
        replies.append([_comparable(r) for r in got])
    assert replies[0] == replies[1]
    assert len(replies[0]) == 9


def test_pack_encodes_as_redis_py() -> None:
    assert pack(("EVALSHA", b"ab", 2, 1.5, "é")) == (
        b"*5\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n2\r\n$3\r\n1.5\r\n$2\r\n\xc3\xa9\r\n"
    )


def test_on_uvloop(redis_url: str) -> None:
    """The gateway's event loop: uvloop's transports are not asyncio's classes."""

    async def calls() -> list[Any]:
        lean = RespClient.from_url(redis_url, timeout=5.0)
        try:
            with pytest.raises(NoScriptError):
                await lean.evalsha("0" * 40, 0)
            return await asyncio.gather(*(lean.execute("ECHO", i) for i in range(100)))
        finally:
            await lean.aclose()

    assert uvloop.run(calls()) == [b"%d" % i for i in range(100)]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path / "redis")
    server.start()
    yield server
    server.stop()


async def test_killed_server_fails_calls_in_flight_then_reconnects(
    own_server: RedisServer,
) -> None:
    lean = RespClient.from_url(own_server.url)  # no timeout: only the kill ends the wait
    await lean.execute("SET", "k", "v")
    blocked = [asyncio.ensure_future(lean.execute("BLPOP", "q", 0)) for _ in range(3)]
    await asyncio.sleep(0.05)  # the commands are on the wire
    own_server.signal(signal.SIGKILL)
    for call in blocked:
        with pytest.raises(RedisConnectionError):
            await call
    with pytest.raises(RedisConnectionError):
        await lean.execute("GET", "k")  # down: fails at once, never hangs
    own_server.start()
    assert await lean.execute("GET", "k") == b"v"  # the append-only file kept it
    await lean.aclose()


async def test_silent_server_times_out_then_recovers(own_server: RedisServer) -> None:
    lean = RespClient.from_url(own_server.url, timeout=0.2)
    assert await lean.execute("PING") == b"PONG"
    own_server.signal(signal.SIGSTOP)
    try:
        calls = [lean.execute("ECHO", i) for i in range(5)]
        for result in await asyncio.gather(*calls, return_exceptions=True):
            assert isinstance(result, RedisTimeoutError)
    finally:
        own_server.signal(signal.SIGCONT)
    assert await lean.execute("ECHO", "back") == b"back"
    await lean.aclose()


def _answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, password="pw", socket_timeout=0.5).ping())
    except (redis.RedisError, OSError):
        return False


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server with a password, on a TCP port and a Unix socket."""
    port, sock = free_port(), tmp_path / "redis.sock"
    proc = subprocess.Popen(
        [server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--requirepass", "pw", "--unixsocket", str(sock),
         "--unixsocketperm", "700"],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: _answers(port), 10, f"redis-server on {port}")
        yield port, sock
    finally:
        proc.kill()
        proc.wait(10)


async def test_auth_and_select(secured: tuple[int, Path]) -> None:
    port, sock = secured
    admin = aioredis.Redis(port=port, password="pw", db=3)
    await admin.acl_setuser("alice", enabled=True, passwords=["+s3"], keys="*", commands=["+@all"])
    for url in (
        f"redis://:pw@127.0.0.1:{port}/3",
        f"redis://alice:s3@127.0.0.1:{port}/3",
        f"unix://:pw@{sock}?db=3",
    ):
        lean = RespClient.from_url(url, timeout=5.0)
        await lean.execute("SET", "k", url)
        assert await admin.get("k") == url.encode()  # written to database 3
        await lean.aclose()
    for url in (f"redis://:wrong@127.0.0.1:{port}/3", f"redis://127.0.0.1:{port}/3"):
        lean = RespClient.from_url(url, timeout=5.0)
        with pytest.raises((AuthenticationError, ResponseError)):
            await lean.execute("GET", "k")
        await lean.aclose()
    await admin.aclose()


async def test_lean_client_for_redis_py_settings(secured: tuple[int, Path]) -> None:
    port, sock = secured
    client = aioredis.Redis.from_url(f"unix://:pw@{sock}?db=2", socket_timeout=0.5)
    lean = lean_client_for(client)
    assert lean is not None and lean.where == str(sock)
    await lean.execute("SET", "k", "v")
    assert await client.get("k") == b"v"
    await lean.aclose()
    await client.aclose()
    for unsupported in (
        aioredis.Redis.from_url(f"rediss://127.0.0.1:{port}"),
        aioredis.Redis.from_url(f"redis://127.0.0.1:{port}", decode_responses=True),
        aioredis.Redis.from_url(f"redis://127.0.0.1:{port}", protocol=3),
    ):
        assert lean_client_for(unsupported) is None
    with pytest.raises(ValueError, match="TLS"):
        RespClient.from_url(f"rediss://127.0.0.1:{port}")
