"""A real Prometheus for tests: its own process, temporary config and data, a loopback port.

Also a stand-in exporter (a fixed exposition text on a loopback port) for series servekit
does not export itself (DCGM, kube-state-metrics), and the HTTP API's query call.
"""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import free_port


def prometheus_binary() -> str:
    """The prometheus server binary; the calling test is skipped where there is none."""
    found = shutil.which("prometheus") or shutil.which("/usr/bin/prometheus")
    if found is None:
        pytest.skip("no prometheus binary (Debian: apt-get install -y prometheus)")
    return found


@contextmanager
def stub_exporter(text: str) -> Iterator[str]:
    """Serve ``text`` as a Prometheus exposition on a loopback port; yields host:port."""
    body = text.encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextmanager
def running_prometheus(
    root: Path, targets: dict[str, str], rule_files: list[str] | None = None
) -> Iterator[str]:
    """Prometheus scraping ``targets`` (job -> host:port) every second; yields its URL."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    if rule_files:
        config["rule_files"] = rule_files
    (root / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    log = (root / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [prometheus_binary(), f"--config.file={root / 'prometheus.yml'}",
         f"--storage.tsdb.path={root / 'data'}", f"--web.listen-address={address}",
         "--log.level=warn"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://{address}"
    try:
        wait_for(lambda: _ready(url), 60, "prometheus not ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def api(prometheus: str, path: str, **params: str) -> dict[str, Any]:
    """The HTTP API's answer (errors, e.g. an expression that does not parse, included)."""
    url = f"{prometheus}/api/v1/{path}?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return dict(json.load(r))
    except urllib.error.HTTPError as exc:  # 400: the expression did not parse
        return dict(json.load(exc))


def wait_for(ready: Callable[[], bool], timeout_s: float, message: str) -> None:
    """Poll ``ready`` until it holds; fail the test with ``message`` past ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.2)


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False
