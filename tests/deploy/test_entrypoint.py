"""The images' entry point: secrets from mounted files, the HEALTHCHECK, pass-through."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

ENTRYPOINT = ROOT / "deploy" / "image" / "entrypoint.sh"


def entrypoint(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SERVEKIT_")}
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args], env={**base, **env},
        capture_output=True, text=True, timeout=20,
    )  # fmt: skip


def test_secret_files_set_the_settings(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://secret-host:6379/3\n")
    (tmp_path / "token").write_text("s3cret")
    (tmp_path / "ingest").write_text("ingest-s3cret\n")
    (tmp_path / "signing").write_text("signing-s3cret")
    env = {
        "SERVEKIT_REDIS_URL_FILE": str(tmp_path / "url"),
        "SERVEKIT_ADMIN_TOKEN_FILE": str(tmp_path / "token"),
        "SERVEKIT_INGEST_TOKEN_FILE": str(tmp_path / "ingest"),
        "SERVEKIT_REQUEST_ID_SECRET_FILE": str(tmp_path / "signing"),
    }
    out = entrypoint("env", env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "SERVEKIT_REDIS_URL=redis://secret-host:6379/3" in lines
    assert "SERVEKIT_ADMIN_TOKEN=s3cret" in lines
    assert "SERVEKIT_INGEST_TOKEN=ingest-s3cret" in lines
    assert "SERVEKIT_REQUEST_ID_SECRET=signing-s3cret" in lines
    assert not any(line.startswith("SERVEKIT_REDIS_URL_FILE=") for line in lines)


def test_a_set_setting_wins_over_its_file(tmp_path: Path) -> None:
    (tmp_path / "url").write_text("redis://from-file/0")
    env = {
        "SERVEKIT_REDIS_URL": "redis://from-env/0",
        "SERVEKIT_REDIS_URL_FILE": str(tmp_path / "url"),
    }
    out = entrypoint("env", env=env)
    assert "SERVEKIT_REDIS_URL=redis://from-env/0" in out.stdout.splitlines()
    assert "SERVEKIT_REDIS_URL_FILE is ignored" in out.stderr


def test_an_unreadable_secret_file_stops_the_start(tmp_path: Path) -> None:
    out = entrypoint("env", env={"SERVEKIT_REDIS_URL_FILE": str(tmp_path / "missing")})
    assert out.returncode == 64
    assert "cannot be read" in out.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "rc_zero"), [(200, True), (503, False)])
def test_health_follows_readiness(
    health_server: http.server.HTTPServer, status: int, rc_zero: bool
) -> None:
    _Health.status = status
    out = entrypoint("health", env={"BENTOML_PORT": str(health_server.server_address[1])})
    assert (out.returncode == 0) is rc_zero


def test_health_fails_when_nothing_listens() -> None:
    from tests.conftest import free_port

    assert entrypoint("health", env={"BENTOML_PORT": str(free_port())}).returncode != 0
