"""Every code block of README.md runs, against a live gateway set up as `make serve` sets it
up: the demo fraud model, batch features materialized by ``python -m flows.materialize``,
admin routes on, and the test's Redis instead of the embedded one.

Blocks run in README order, each in its own process (shell blocks in bash, Python blocks in
the venv's interpreter) from the checkout, with ``localhost:3000`` pointing at the test's
gateway. A block passes when it exits 0 and its output shows what its comments say it
shows (``tests/readme/expect.py``). A block marked ``<!-- readme-test: skip (reason) -->``
is reported as skipped with its reason; one marked ``<!-- readme-test: fixture -->`` starts
what the fixture stands for. An unmarked block that fails names its README line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import ROOT, ServerProcess
from tests.readme.blocks import Block, parse
from tests.readme.expect import unmet
from tests.readme.run import expectations, run_block

README = ROOT / "README.md"
PARSED = parse(README)
ADMIN_TOKEN = "readme-test-token-0123456789abcdef"
INGEST_TOKEN = "readme-test-ingest-token-0123456789"
BLOCK_TIMEOUT_S = 180.0
MARK_IT = (
    "If it needs what this test cannot have (a GPU, a cluster, its own environment, a long "
    "run), mark it in README.md on the line before the block: "
    "<!-- readme-test: skip (the reason) -->"
)


@dataclass(frozen=True)
class Live:
    """The gateway the blocks talk to and the environment they run in."""

    server: ServerProcess
    env: dict[str, str]
    workdir: Path


def _block_env(tmp: Path, store: Path, redis_url: str) -> dict[str, str]:
    """The environment of `make serve` and of a user's shell beside it."""
    venv_bin = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        # The checkout's code, whatever the venv's editable install points at.
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "SERVEKIT_MODEL_STORE": str(store),
        "SERVEKIT_REDIS_URL": redis_url,
        "SERVEKIT_ADMIN_TOKEN": ADMIN_TOKEN,
        "SERVEKIT_INGEST_TOKEN": INGEST_TOKEN,
        "PREFECT_HOME": str(tmp / "prefect"),
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "BENTOML_DO_NOT_TRACK": "true",
    }


@pytest.fixture(scope="module")
def live(
    fraud_store: Path, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """`make serve`: the demo model, materialized features and a gateway, on the test's
    Redis; the model store is a copy, since README's examples register versions."""
    tmp = tmp_path_factory.mktemp("readme")
    store = tmp / "model_store"
    shutil.copytree(fraud_store, store)
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    env = _block_env(tmp, store, redis_url)
    log = tmp / "materialize.log"
    # The daily materialization, run once as `make serve` runs it, while the gateway starts.
    with log.open("wb") as out:
        materialize = subprocess.Popen(
            [sys.executable, "-m", "flows.materialize"], cwd=ROOT, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        server = ServerProcess({**env, "SERVEKIT_TEST_LOG": str(tmp / "gateway.log")})
    except BaseException:
        _kill_session(materialize)
        raise
    try:
        code = materialize.wait(timeout=240)
        assert code == 0, f"python -m flows.materialize failed:\n{log.read_text()[-3000:]}"
        env["SERVEKIT_DECISIONS_URL"] = server.url  # the report's default gateway is :3000
        yield Live(server, env, tmp)
    finally:
        _kill_session(materialize)
        server.stop()
        client.flushdb()
        client.close()


def _kill_session(proc: subprocess.Popen[bytes]) -> None:
    """Stop ``proc`` and what it started (the flow's temporary Prefect server)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_readme_markers_are_well_formed() -> None:
    assert not PARSED.problems, "README.md readme-test markers:\n" + "\n".join(PARSED.problems)


def _checked(blocks: list[Block]) -> list[Block]:
    """The blocks the test runs or reports: code, and anything marked."""
    return [b for b in blocks if not b.text_only or b.marker]


@pytest.mark.parametrize("block", _checked(PARSED.blocks), ids=lambda b: b.id)
def test_readme_block(block: Block, request: pytest.FixtureRequest) -> None:
    where = f"README.md line {block.line} ({block.language or 'plain'} block)"
    if block.marker == "skip":
        pytest.skip(f"{where}: {block.reason}")
    live: Live = request.getfixturevalue("live")
    if block.marker == "fixture":
        with urllib.request.urlopen(f"{live.server.url}/v2/health/ready", timeout=5) as r:
            assert r.status == 200, f"{where}: the fixture's gateway is not ready"
        return
    if not block.runnable:
        pytest.fail(
            f"{where}: the test cannot run a {block.language!r} block. {MARK_IT}", pytrace=False
        )
    outcome = run_block(
        block, live.server.url, live.env, cwd=ROOT, workdir=live.workdir,
        timeout_s=BLOCK_TIMEOUT_S,
    )  # fmt: skip
    shown = f"\n--- stdout ---\n{outcome.stdout[-3000:]}\n--- stderr ---\n{outcome.stderr[-3000:]}"
    if outcome.returncode is None:
        pytest.fail(f"{where} ran past {BLOCK_TIMEOUT_S:.0f} s. {MARK_IT}{shown}", pytrace=False)
    if outcome.returncode != 0:
        pytest.fail(f"{where} exited {outcome.returncode}. {MARK_IT}{shown}", pytrace=False)
    failures = unmet(expectations(block), outcome.stdout)
    if failures:
        report = "\n".join(failures)
        pytest.fail(
            f"{where}: the output is not what README shows:\n{report}{shown}", pytrace=False
        )
